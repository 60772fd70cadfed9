import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import {
  type Dims,
  dropFactor,
  type Inputs,
  makeInputs,
  NEG_MAX,
  referenceBackward,
  referenceForward,
} from "./attention_reference.ts";
import { gpuTest, outputTensor, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { attentionBackward, attentionForward } from "../kernels/attention.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import type { DropoutConfig } from "../kernels/dropout.ts";
import {
  flashAttentionBackward,
  flashAttentionForward,
  flashAttentionStatsShape,
  type FlashAttentionTiling,
  flashAttentionTiling,
} from "../kernels/flash_attention.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// float32 against float64, as tests/attention_test.ts.
const TOL = 1e-5;

const NO_DROPOUT: DropoutConfig = { p: 0, seed: 0, stream: 0 };

/** Float64 per-row statistics (score maximum, Σ exp(score − maximum)) as [B, H, S, 2]. */
function referenceStats(x: Inputs, dims: Dims): Float64Array {
  const { B, S, H, D, P } = dims;
  const T = P + S, HD = H * D, scale = 1 / Math.sqrt(D);
  const stats = new Float64Array(B * H * S * 2);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < S; i++) {
        const s = new Float64Array(T);
        for (let j = 0; j < T; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) {
            const key = j < P ? x.pk[(h * P + j) * D + d] : x.k[(b * S + j - P) * HD + h * D + d];
            dot += x.q[(b * S + i) * HD + h * D + d] * key;
          }
          // float32 rounding of the masked sum, as the GPU's: −FLT_MAX exactly.
          s[j] = j >= P && x.mask[b * S + j - P] === 0 ? NEG_MAX : dot * scale;
        }
        const m = Math.max(...s);
        let sum = 0;
        for (let j = 0; j < T; j++) sum += Math.exp(s[j] - m);
        const r = ((b * H + h) * S + i) * 2;
        stats[r] = m;
        stats[r + 1] = sum;
      }
    }
  }
  return stats;
}

interface Run {
  context: Float32Array;
  stats?: Float32Array;
  dQ: Float32Array;
  dK: Float32Array;
  dV: Float32Array;
  dPK?: Float32Array;
  dPV?: Float32Array;
}

interface RunOptions {
  /** Prefix gradients to accumulate into (accumulatePrefix); default: overwritten. */
  prefixInit?: { dPK: Float64Array; dPV: Float64Array };
  /** Whether to ask for prefix gradients at all; default true. */
  prefixGrad?: boolean;
  /** Run kernels/attention.ts instead (same inputs, same dropout bits). */
  current?: boolean;
  /** Commands recorded per forward and per backward call, for the caller to check. */
  counts?: number[];
  /** The flash kernels' work split; default: the adapter's. */
  tiling?: FlashAttentionTiling;
}

async function run(
  gpu: Gpu,
  x: Inputs,
  dC: Float64Array,
  dims: Dims,
  drop: DropoutConfig,
  options: RunOptions = {},
): Promise<Run> {
  const { B, S, H, D, P } = dims;
  const { prefixInit, prefixGrad = true, current = false } = options;
  const up = (a: Float64Array, shape: number[], label: string) =>
    tensorFromArray(gpu, Float32Array.from(a), shape, label);
  const seq = [B, S, H * D];
  const q = up(x.q, seq, "q"), k = up(x.k, seq, "k"), v = up(x.v, seq, "v");
  const mask = up(x.mask, [B, S], "mask");
  const dContext = up(dC, seq, "dContext");
  const prefix = P > 0
    ? {
      prefixKey: up(x.pk, [H, P, D], "prefixKey"),
      prefixValue: up(x.pv, [H, P, D], "prefixValue"),
    }
    : {};
  const rec = new Recorder(gpu);
  const stats = outputTensor(rec, flashAttentionStatsShape(B, H, S), "stats");
  const probs = current ? outputTensor(rec, [B, H, S, P + S], "probs") : stats;
  const context = outputTensor(rec, seq, "context");
  const dQ = outputTensor(rec, seq, "dQ");
  const dK = outputTensor(rec, seq, "dK");
  const dV = outputTensor(rec, seq, "dV");
  let dPrefix = {};
  if (P > 0 && prefixGrad) {
    const init = (a?: Float64Array) => a && Float32Array.from(a);
    dPrefix = {
      dPrefixKey: outputTensor(rec, [H, P, D], "dPrefixKey", init(prefixInit?.dPK)),
      dPrefixValue: outputTensor(rec, [H, P, D], "dPrefixValue", init(prefixInit?.dPV)),
    };
  }
  const common = { q, k, v, ...prefix, heads: H, dropout: drop };
  const tiling = options.tiling;
  const grads = {
    dContext,
    dQ,
    dK,
    dV,
    ...dPrefix,
    accumulatePrefix: prefixInit !== undefined,
  };
  let before = rec.length;
  if (current) attentionForward(rec, { ...common, mask, probs, context });
  else flashAttentionForward(rec, { ...common, mask, context, stats, tiling });
  options.counts?.push(rec.length - before);
  before = rec.length;
  if (current) attentionBackward(rec, { ...common, ...grads, probs });
  else flashAttentionBackward(rec, { ...common, ...grads, mask, context, stats, tiling });
  options.counts?.push(rec.length - before);
  await rec.submit();
  const get = async (t: Tensor) => (await t.download()) as Float32Array;
  const out: Run = {
    context: await get(context),
    dQ: await get(dQ),
    dK: await get(dK),
    dV: await get(dV),
  };
  if (!current) out.stats = await get(stats);
  if (P > 0 && prefixGrad) {
    const { dPrefixKey, dPrefixValue } = dPrefix as { dPrefixKey: Tensor; dPrefixValue: Tensor };
    out.dPK = await get(dPrefixKey);
    out.dPV = await get(dPrefixValue);
  }
  const all = [q, k, v, mask, dContext, stats, probs, context, dQ, dK, dV];
  for (const t of new Set([...all, ...Object.values(prefix), ...Object.values(dPrefix)])) {
    (t as Tensor).destroy();
  }
  return out;
}

function gradient(dims: Dims, seed: number): Float64Array {
  const { B, S, H, D } = dims;
  return Float64Array.from(Float32Array.from(randomValues(B * S * H * D, seed)));
}

/** Checks a flash run against the float64 reference (all outputs it has). */
function checkAgainstReference(
  runOut: Run,
  x: Inputs,
  dC: Float64Array,
  dims: Dims,
  drop: DropoutConfig,
): void {
  const ref = referenceForward(x, dims, drop);
  const grads = referenceBackward(x, ref.probs, dC, dims, drop);
  assertClose("context", runOut.context, ref.context, TOL);
  if (runOut.stats) assertClose("stats", runOut.stats, referenceStats(x, dims), TOL);
  if (dims.P + dims.S === 1) {
    // One key: the softmax is constant, dS = P ⊙ (dP − Σ P⊙dP) is exactly 0 in float64. The
    // kernel forms Σ P⊙dP as dO·O (FlashAttention-2), whose float32 rounding differs from dP's,
    // so it leaves a residue of a few ulps of the O(1) terms instead of an exact 0.
    for (const [name, got] of [["dQ", runOut.dQ], ["dK", runOut.dK]] as const) {
      for (const g of got) assert(Math.abs(g) <= TOL, `${name}: ${g} is not ≈ 0`);
    }
  } else {
    assertClose("dQ", runOut.dQ, grads.dQ, TOL);
    assertClose("dK", runOut.dK, grads.dK, TOL);
  }
  assertClose("dV", runOut.dV, grads.dV, TOL);
  if (runOut.dPK) {
    assertClose("dPrefixKey", runOut.dPK, grads.dPK, TOL);
    assertClose("dPrefixValue", runOut.dPV!, grads.dPV, TOL);
  }
}

// Odd shapes: D = 5 takes the scalar bindings, D = 16 and 64 the vec4 ones; T = P + S not a
// multiple of 4 takes the two-Philox-block dropout path; P = 3 makes a block of four keys
// straddle prefix and sequence; S = 67 spreads a head's rows over several invocations and
// workgroups, S = 131 its keys over several dK/dV workgroups. Batch element 2 (where B = 3) is
// entirely padding. D = 64 (BERT's) only without prefix: its kernels are the largest to compile
// (seconds each on lavapipe, once per machine), and the prefix code does not depend on D.
const CASES: { dims: Dims; drop: DropoutConfig; seed: number }[] = [
  { dims: { B: 3, S: 7, H: 2, D: 5, P: 3 }, drop: NO_DROPOUT, seed: 1 },
  { dims: { B: 3, S: 13, H: 3, D: 16, P: 0 }, drop: { p: 0.2, seed: 99, stream: 9 }, seed: 2 },
  { dims: { B: 1, S: 1, H: 1, D: 5, P: 3 }, drop: { p: 0.5, seed: 3, stream: 0 }, seed: 3 },
  { dims: { B: 3, S: 13, H: 2, D: 16, P: 3 }, drop: { p: 0.3, seed: 12345, stream: 17 }, seed: 4 },
  { dims: { B: 3, S: 1, H: 2, D: 16, P: 0 }, drop: { p: 0.1, seed: 8, stream: 1 }, seed: 5 },
  { dims: { B: 2, S: 67, H: 1, D: 16, P: 3 }, drop: { p: 0.1, seed: 4, stream: 4 }, seed: 6 },
  { dims: { B: 3, S: 67, H: 2, D: 64, P: 0 }, drop: { p: 0.1, seed: 11, stream: 2 }, seed: 7 },
  { dims: { B: 3, S: 12, H: 2, D: 16, P: 4 }, drop: { p: 0.1, seed: 5, stream: 2 }, seed: 8 },
  { dims: { B: 1, S: 131, H: 1, D: 16, P: 0 }, drop: { p: 0.1, seed: 6, stream: 3 }, seed: 9 },
  { dims: { B: 3, S: 7, H: 1, D: 5, P: 0 }, drop: NO_DROPOUT, seed: 10 },
];

for (const { dims, drop, seed } of CASES) {
  const { B, S, H, D, P } = dims;
  gpuTest(
    `flash attention: forward and backward match float64 HF semantics at B=${B} S=${S} H=${H} ` +
      `D=${D} P=${P} dropout=${drop.p}`,
    async (gpu) => {
      const x = makeInputs(dims, seed * 10);
      const dC = gradient(dims, seed * 10 + 7);
      const counts: number[] = [];
      const out = await run(gpu, x, dC, dims, drop, { counts });
      checkAgainstReference(out, x, dC, dims, drop);
      // One forward launch; dQ pass, dK/dV pass and (with a prefix) the prefix pass.
      assertEquals(counts, [1, P > 0 ? 3 : 2]);
      if (P === 0 && B >= 3) {
        // The fully padded sequence: every score is −FLT_MAX, the T keys weigh 1 each.
        for (let r = 2 * H * S; r < 3 * H * S; r++) {
          assertEquals([out.stats![2 * r], out.stats![2 * r + 1]], [Math.fround(NEG_MAX), S]);
        }
      }
      if (drop.p > 0) {
        // The case exercises dropout: the mask drops some weights and keeps others.
        const n = B * H * S * (P + S);
        let dropped = 0;
        for (let i = 0; i < n; i++) if (dropFactor(drop, i) === 0) dropped++;
        assert(dropped > 0 && dropped < n, `dropped ${dropped} of ${n}`);
      }
    },
  );
}

gpuTest("flash attention: left padding and scattered padding", async (gpu) => {
  // Rows whose first blocks of keys are all padding weigh those keys 1 each until the first
  // real key, whose maximum then scales them by exp(−FLT_MAX − m) = 0.
  const dims = { B: 2, S: 13, H: 2, D: 16, P: 0 };
  const mask = new Float64Array(26);
  for (let i = 6; i < 13; i++) mask[i] = 1; // example 0: the first 6 keys are padding
  for (const i of [1, 4, 5, 9, 12]) mask[13 + i] = 1; // example 1: scattered keys
  const drop = { p: 0.2, seed: 21, stream: 4 };
  const x = makeInputs(dims, 130, mask);
  const dC = gradient(dims, 131);
  checkAgainstReference(await run(gpu, x, dC, dims, drop), x, dC, dims, drop);
});

gpuTest(
  "flash attention: agrees with kernels/attention.ts on the same inputs and dropout bits",
  async (gpu) => {
    for (
      const [dims, drop] of [
        [{ B: 3, S: 13, H: 2, D: 16, P: 3 }, { p: 0.2, seed: 77, stream: 3 }],
        [{ B: 2, S: 9, H: 2, D: 5, P: 0 }, { p: 0.4, seed: 78, stream: 11 }],
      ] as [Dims, DropoutConfig][]
    ) {
      const x = makeInputs(dims, 110);
      const dC = gradient(dims, 111);
      const flash = await run(gpu, x, dC, dims, drop);
      const current = await run(gpu, x, dC, dims, drop, { current: true });
      for (const name of ["context", "dQ", "dK", "dV", "dPK", "dPV"] as const) {
        if (current[name]) assertClose(name, flash[name]!, current[name]!, TOL);
      }
    }
  },
);

gpuTest("flash attention: prefix gradients accumulate into the existing ones", async (gpu) => {
  const dims = { B: 3, S: 7, H: 2, D: 5, P: 3 };
  const drop = { p: 0.25, seed: 5, stream: 2 };
  const x = makeInputs(dims, 70);
  const dC = gradient(dims, 71);
  const init = {
    dPK: Float64Array.from(Float32Array.from(randomValues(30, 72))),
    dPV: Float64Array.from(Float32Array.from(randomValues(30, 73))),
  };
  const ref = referenceForward(x, dims, drop);
  const grads = referenceBackward(x, ref.probs, dC, dims, drop);
  const out = await run(gpu, x, dC, dims, drop, { prefixInit: init });
  assertClose("dPrefixKey", out.dPK!, grads.dPK.map((g, i) => g + init.dPK[i]), TOL);
  assertClose("dPrefixValue", out.dPV!, grads.dPV.map((g, i) => g + init.dPV[i]), TOL);
  assertClose("dQ", out.dQ, grads.dQ, TOL);
  assertClose("dK", out.dK, grads.dK, TOL);
});

gpuTest(
  "flash attention: without the gradient tensors the prefix is treated as frozen",
  async (gpu) => {
    const dims = { B: 2, S: 7, H: 1, D: 16, P: 3 };
    const drop = { p: 0.1, seed: 9, stream: 1 };
    const x = makeInputs(dims, 90);
    const dC = gradient(dims, 91);
    const counts: number[] = [];
    const out = await run(gpu, x, dC, dims, drop, { prefixGrad: false, counts });
    assertEquals(counts, [1, 2]); // no prefix pass
    checkAgainstReference(out, x, dC, dims, drop);
  },
);

gpuTest("flash attention: workgroups spread over a 2-D grid", async (gpu) => {
  // 3·2 row workgroups, 3·2 column workgroups and 2 prefix workgroups, at most 4 per dimension.
  const dims = { B: 3, S: 7, H: 2, D: 16, P: 3 };
  const drop = { p: 0.2, seed: 31, stream: 3 };
  const x = makeInputs(dims, 60);
  const dC = gradient(dims, 61);
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 4 });
  checkAgainstReference(await run(small, x, dC, dims, drop), x, dC, dims, drop);
});

gpuTest("flash attention: two runs are bitwise identical", async (gpu) => {
  const dims = { B: 3, S: 13, H: 3, D: 8, P: 3 };
  const drop = { p: 0.1, seed: 42, stream: 5 };
  const x = makeInputs(dims, 80);
  const dC = gradient(dims, 81);
  const a = await run(gpu, x, dC, dims, drop);
  const b = await run(gpu, x, dC, dims, drop);
  assertEquals(b, a);
});

gpuTest(
  "flash attention: wrong shapes, heads and settings are refused naming op and tensor",
  (gpu) => {
    const t = (shape: number[], label: string) => createTensor(gpu, shape, "f32", label);
    const q = t([3, 7, 10], "q"), k = t([3, 7, 10], "k"), v = t([3, 7, 10], "v");
    const mask = t([3, 7], "mask"), stats = t([3, 2, 7, 2], "stats"), context = t([3, 7, 10], "c");
    const pk = t([2, 3, 5], "pk"), pv = t([2, 3, 5], "pv");
    const bad = t([3, 7, 9], "bad");
    const rec = new Recorder(gpu);
    const dropout = NO_DROPOUT;
    const fwd = { q, k, v, mask, prefixKey: pk, prefixValue: pv, context, stats, heads: 2 };
    flashAttentionForward(rec, { ...fwd, dropout }); // the good call records
    assertEquals(rec.length, 1);
    const op = "flashAttentionForward";
    const cases: [Record<string, unknown>, string][] = [
      [{ q: t([3, 7], "q2") }, `${op}: q ("q2")`],
      [{ k: bad }, `${op}: k ("bad")`],
      [{ v: bad }, `${op}: v ("bad")`],
      [{ context: bad }, `${op}: context ("bad")`],
      [{ mask: t([3, 8], "m8") }, `${op}: mask ("m8")`],
      [{ stats: t([3, 2, 7, 1], "s1") }, `${op}: stats ("s1")`],
      [{ prefixValue: t([2, 4, 5], "pv4") }, `${op}: prefixValue ("pv4")`],
      [{ prefixKey: t([2, 3, 4], "pk4") }, `${op}: prefixKey ("pk4")`],
      [{ prefixValue: undefined }, `${op}: prefixKey and prefixValue`],
      [{ heads: 3 }, `${op}: heads 3`],
      [{ dropout: { p: 1, seed: 0, stream: 0 } }, `${op}: dropout probability`],
      [{ dropout: { p: 0.1, seed: -1, stream: 0 } }, `${op}: dropout seed`],
      [{ tiling: { forwardRows: 3, backwardRows: 1, keyBlocks: 1 } }, `${op}: tiling`],
    ];
    for (const [change, message] of cases) {
      assertThrows(
        () =>
          flashAttentionForward(
            rec,
            { ...fwd, dropout, ...change } as typeof fwd & { dropout: DropoutConfig },
          ),
        GpuError,
        message,
      );
    }
    const dQ = t([3, 7, 10], "dQ"), dK = t([3, 7, 10], "dK"), dV = t([3, 7, 10], "dV");
    const bwd = {
      ...fwd,
      dContext: t([3, 7, 10], "dC"),
      dQ,
      dK,
      dV,
      dPrefixKey: t([2, 3, 5], "dpk"),
      dPrefixValue: t([2, 3, 5], "dpv"),
      dropout,
    };
    flashAttentionBackward(rec, bwd);
    assertEquals(rec.length, 1 + 3);
    const bop = "flashAttentionBackward";
    const bwdCases: [Record<string, unknown>, string][] = [
      [{ dQ: bad }, `${bop}: dQ ("bad")`],
      [{ dK: bad }, `${bop}: dK ("bad")`],
      [{ dV: bad }, `${bop}: dV ("bad")`],
      [{ context: bad }, `${bop}: context ("bad")`],
      [{ dContext: bad }, `${bop}: dContext ("bad")`],
      [{ mask: t([2, 7], "m2") }, `${bop}: mask ("m2")`],
      [{ stats: t([3, 2, 7], "s3") }, `${bop}: stats ("s3")`],
      [{ dPrefixKey: t([2, 2, 5], "dpk2") }, `${bop}: dPrefixKey ("dpk2")`],
      [{ dPrefixValue: t([2, 3, 4], "dpv4") }, `${bop}: dPrefixValue ("dpv4")`],
      [{ dPrefixValue: undefined }, `${bop}: dPrefixKey and dPrefixValue`],
      [
        { prefixKey: undefined, prefixValue: undefined },
        `${bop}: dPrefixKey given without prefixKey`,
      ],
      [{ heads: 20 }, `${bop}: heads 20`],
      [{ rowWorkspace: t([3, 2, 7, 2], "ws") }, `${bop}: rowWorkspace ("ws")`],
      [{ dropout: { p: 0.1, seed: 0, stream: 2 ** 32 } }, `${bop}: dropout stream`],
      [{ dK: dQ }, `${bop}: dQ ("dQ") shares GPU memory with dK ("dQ")`],
      [{ dV: fwd.v }, `${bop}: dV ("v") shares GPU memory with v ("v")`],
    ];
    for (const [change, message] of bwdCases) {
      assertThrows(
        () => flashAttentionBackward(rec, { ...bwd, ...change } as typeof bwd),
        GpuError,
        message,
      );
    }
    const wide = t([1, 1, 300], "wide");
    assertThrows(
      () =>
        flashAttentionForward(rec, {
          q: wide,
          k: wide,
          v: wide,
          context: wide,
          mask: t([1, 1], "m"),
          stats: t([1, 1, 1, 2], "s"),
          heads: 1,
          dropout,
        }),
      GpuError,
      `${op}: head dimension 300`,
    );
    assertThrows(
      () =>
        flashAttentionForward(
          new Recorder(withLimits(gpu, { maxStorageBuffersPerShaderStage: 7 })),
          { ...fwd, dropout },
        ),
      GpuError,
      `${op}: needs 8 storage buffers per shader stage, this adapter allows 7`,
    );
    // 65537² score elements: past the 32-bit flat index that draws the dropout words.
    const long = t([1, 65537, 1], "long");
    const longArgs = {
      q: long,
      k: long,
      v: long,
      context: long,
      mask: t([1, 65537], "m"),
      stats: t([1, 1, 65537, 2], "s"),
      heads: 1,
    };
    assertThrows(
      () => flashAttentionForward(rec, { ...longArgs, dropout: { p: 0.1, seed: 0, stream: 0 } }),
      GpuError,
      `${op}: 4295098369 score elements exceed the 32-bit index of the dropout mask`,
    );
    assertEquals(rec.length, 1 + 3); // the refused calls recorded nothing
  },
);

gpuTest(
  "flash attention: prefix gradients over more rows than lavapipe's per-invocation loop budget",
  async (gpu) => {
    // The prefix kernel walks every example's rows, B·(S + 1) loop iterations, and lavapipe
    // stops an invocation after 65,535 of them, silently: here 4400 · 16 = 70,400, which the
    // launcher cuts into launches resuming each other's sums.
    const dims = { B: 4400, S: 15, H: 1, D: 5, P: 3 };
    const drop = { p: 0.1, seed: 3, stream: 7 };
    const x = makeInputs(dims, 140);
    const dC = gradient(dims, 141);
    const init = {
      dPK: Float64Array.from(Float32Array.from(randomValues(15, 142))),
      dPV: Float64Array.from(Float32Array.from(randomValues(15, 143))),
    };
    const out = await run(gpu, x, dC, dims, drop, { prefixInit: init });
    const ref = referenceForward(x, dims, drop);
    const grads = referenceBackward(x, ref.probs, dC, dims, drop);
    assertClose("dPrefixKey", out.dPK!, grads.dPK.map((g, i) => g + init.dPK[i]), TOL);
    assertClose("dPrefixValue", out.dPV!, grads.dPV.map((g, i) => g + init.dPV[i]), TOL);
    assertClose("dK", out.dK, grads.dK, TOL);
  },
);

gpuTest("flash attention: every tiling gives bitwise the same results", async (gpu) => {
  const dims = { B: 2, S: 13, H: 2, D: 8, P: 3 };
  const drop = { p: 0.2, seed: 7, stream: 1 };
  const x = makeInputs(dims, 120);
  const dC = gradient(dims, 121);
  const one = { forwardRows: 1, backwardRows: 1, keyBlocks: 1 } as const;
  const base = await run(gpu, x, dC, dims, drop, { tiling: one });
  checkAgainstReference(base, x, dC, dims, drop);
  const tilings: FlashAttentionTiling[] = [
    { forwardRows: 2, backwardRows: 8, keyBlocks: 2 },
    { forwardRows: 4, backwardRows: 2, keyBlocks: 1 },
    flashAttentionTiling(gpu, dims.D),
  ];
  for (const tiling of tilings) {
    const out = await run(gpu, x, dC, dims, drop, { tiling });
    assertEquals(out, base, JSON.stringify(tiling));
  }
});
