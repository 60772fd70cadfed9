import { assert, assertClose, assertEquals, AssertionError, assertThrows } from "./assert.ts";
import { gpuTest, outputTensor, withLimits } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { attentionBackward, attentionForward, setAttentionRowLanes } from "../kernels/attention.ts";
import type { DropoutConfig } from "../kernels/dropout.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { isF16MathVariant } from "../kernels/matmul.ts";
import { matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import {
  createTensor,
  type DType,
  type HostArray,
  type Tensor,
  tensorFromArray,
} from "../kernels/tensor.ts";
import {
  type Dims,
  dropFactor,
  type Inputs,
  makeInputs,
  referenceBackward,
  referenceForward,
} from "./attention_reference.ts";

interface GpuRun {
  probs: HostArray;
  context: HostArray;
  dQ: HostArray;
  dK: HostArray;
  dV: HostArray;
  dPK?: HostArray;
  dPV?: HostArray;
}

/** The storage of the [B, S, H·D] tensors, which may each be f16 (the rest are f32 always). */
type SeqName = "q" | "k" | "v" | "dContext" | "context" | "dQ" | "dK" | "dV";
type Storage = Record<SeqName, DType>;

const ALL_F32: Storage = {
  q: "f32",
  k: "f32",
  v: "f32",
  dContext: "f32",
  context: "f32",
  dQ: "f32",
  dK: "f32",
  dV: "f32",
};

async function runGpu(
  gpu: Gpu,
  x: Inputs,
  dC: Float64Array,
  dims: Dims,
  drop: DropoutConfig,
  prefixInit?: { dPK: Float64Array; dPV: Float64Array },
  storage: Storage = ALL_F32,
  f16Math = false,
): Promise<GpuRun> {
  const { B, S, H, D, P } = dims;
  const up = (a: Float64Array, shape: number[], label: string, dtype: DType = "f32") =>
    tensorFromArray(
      gpu,
      dtype === "f16" ? Float16Array.from(a) : Float32Array.from(a),
      shape,
      label,
    );
  const seq = [B, S, H * D];
  const q = up(x.q, seq, "q", storage.q);
  const k = up(x.k, seq, "k", storage.k);
  const v = up(x.v, seq, "v", storage.v);
  const mask = up(x.mask, [B, S], "mask");
  const dContext = up(dC, seq, "dContext", storage.dContext);
  const prefix = P > 0
    ? {
      prefixKey: up(x.pk, [H, P, D], "prefixKey"),
      prefixValue: up(x.pv, [H, P, D], "prefixValue"),
    }
    : {};
  const rec = new Recorder(gpu);
  const probs = outputTensor(rec, [B, H, S, P + S], "probs");
  // Every output poisoned with NaN (f16 ones too: `fill` writes f16's NaN, 0x7e00).
  const seqOut = (name: SeqName) => {
    const t = createTensor(gpu, seq, storage[name], name);
    fill(rec, t, NaN);
    return t;
  };
  const context = seqOut("context");
  const dQ = seqOut("dQ");
  const dK = seqOut("dK");
  const dV = seqOut("dV");
  let dPrefix = {};
  if (P > 0) {
    const init = (a?: Float64Array) => a && Float32Array.from(a);
    dPrefix = {
      dPrefixKey: outputTensor(rec, [H, P, D], "dPrefixKey", init(prefixInit?.dPK)),
      dPrefixValue: outputTensor(rec, [H, P, D], "dPrefixValue", init(prefixInit?.dPV)),
    };
  }
  attentionForward(rec, {
    q,
    k,
    v,
    mask,
    ...prefix,
    probs,
    context,
    heads: H,
    dropout: drop,
    f16Math,
  });
  attentionBackward(rec, {
    q,
    k,
    v,
    probs,
    dContext,
    dQ,
    dK,
    dV,
    ...prefix,
    ...dPrefix,
    accumulatePrefix: prefixInit !== undefined,
    heads: H,
    dropout: drop,
    f16Math,
  });
  await rec.submit();
  const get = (t: Tensor) => t.download();
  const out: GpuRun = {
    probs: await get(probs),
    context: await get(context),
    dQ: await get(dQ),
    dK: await get(dK),
    dV: await get(dV),
  };
  if (P > 0) {
    const { dPrefixKey, dPrefixValue } = dPrefix as { dPrefixKey: Tensor; dPrefixValue: Tensor };
    out.dPK = await get(dPrefixKey);
    out.dPV = await get(dPrefixValue);
  }
  const all = [q, k, v, mask, dContext, probs, context, dQ, dK, dV];
  for (const t of [...all, ...Object.values(prefix), ...Object.values(dPrefix)]) {
    (t as Tensor).destroy();
  }
  return out;
}

const NO_DROPOUT: DropoutConfig = { p: 0, seed: 0, stream: 0 };

const CASES: { dims: Dims; drop: DropoutConfig; seed: number }[] = [
  { dims: { B: 3, S: 7, H: 2, D: 5, P: 3 }, drop: NO_DROPOUT, seed: 1 },
  { dims: { B: 3, S: 13, H: 3, D: 16, P: 0 }, drop: { p: 0.2, seed: 99, stream: 9 }, seed: 2 },
  { dims: { B: 1, S: 1, H: 1, D: 8, P: 3 }, drop: { p: 0.5, seed: 3, stream: 0 }, seed: 3 },
  { dims: { B: 3, S: 7, H: 3, D: 8, P: 3 }, drop: { p: 0.3, seed: 12345, stream: 17 }, seed: 4 },
  { dims: { B: 1, S: 13, H: 2, D: 16, P: 0 }, drop: NO_DROPOUT, seed: 5 },
  { dims: { B: 3, S: 1, H: 2, D: 5, P: 0 }, drop: { p: 0.1, seed: 8, stream: 1 }, seed: 6 },
  // T = 70 > 64 keys and D = 130 > 2·64 columns: several chunks and all three accumulators.
  { dims: { B: 3, S: 67, H: 1, D: 130, P: 3 }, drop: { p: 0.1, seed: 4, stream: 4 }, seed: 7 },
  // Aligned shapes (S, D ≥ 64, every stride and the prefix offset a multiple of 4) take the
  // GEMM's vec4 register-tiled variants, as BERT's shapes do; the odd ones above the fallbacks.
  { dims: { B: 3, S: 68, H: 2, D: 64, P: 4 }, drop: { p: 0.1, seed: 5, stream: 2 }, seed: 8 },
  { dims: { B: 3, S: 72, H: 2, D: 64, P: 0 }, drop: { p: 0.1, seed: 6, stream: 3 }, seed: 9 },
  // Rows longer than 128 keys: the dropout passes' quads of the 32-lane kernels wrap round (lane l
  // takes 4l … 4l + 3, then 4l + 128 …), at T = 133 (odd: quads straddle Philox blocks) and 261.
  { dims: { B: 1, S: 130, H: 1, D: 8, P: 3 }, drop: { p: 0.2, seed: 21, stream: 5 }, seed: 10 },
  { dims: { B: 1, S: 261, H: 1, D: 4, P: 0 }, drop: { p: 0.3, seed: 22, stream: 6 }, seed: 11 },
];

// float32 against float64 at the brief's 1e-5: sums run over at most a few hundred products of
// O(1) terms (measured worst 6.4e-7 on lavapipe, gradients included, before the T = 261 case).
const TOL = 1e-5;

/** Runs `body` with attention's row kernels in the given form (kernels/attention.ts). */
async function withRowLanes<T>(gpu: Gpu, lanes: boolean, body: () => Promise<T>): Promise<T> {
  setAttentionRowLanes(gpu, lanes);
  try {
    return await body();
  } finally {
    setAttentionRowLanes(gpu, undefined);
  }
}

// Each case with the row kernels (mask, softmax, dropout) in both forms: one invocation per row
// (a CPU adapter's default) and 32 per row (a GPU's).
for (
  const [{ dims, drop, seed }, lanes] of CASES.flatMap((c) => [[c, false], [c, true]] as const)
) {
  const { B, S, H, D, P } = dims;
  gpuTest(
    `attention: forward and backward match float64 HF semantics at B=${B} S=${S} H=${H} D=${D} ` +
      `P=${P} dropout=${drop.p}${lanes ? ", 32 lanes a row" : ""}`,
    (gpu) =>
      withRowLanes(gpu, lanes, async () => {
        const x = makeInputs(dims, seed * 10);
        const dC = Float64Array.from(
          Float32Array.from(randomValues(B * S * H * D, seed * 10 + 7)),
        );
        const ref = referenceForward(x, dims, drop);
        const grads = referenceBackward(x, ref.probs, dC, dims, drop);
        const run = await runGpu(gpu, x, dC, dims, drop);
        assertClose("probs", run.probs, ref.probs, TOL);
        assertClose("context", run.context, ref.context, TOL);
        assertClose("dQ", run.dQ, grads.dQ, TOL);
        assertClose("dK", run.dK, grads.dK, TOL);
        assertClose("dV", run.dV, grads.dV, TOL);
        if (P > 0) {
          assertClose("dPrefixKey", run.dPK!, grads.dPK, TOL);
          assertClose("dPrefixValue", run.dPV!, grads.dPV, TOL);
        }
        // A fully padded sequence without prefix rows attends uniformly over its padding.
        if (P === 0 && B >= 3) {
          const T = S;
          for (let r = 2 * H * S; r < 3 * H * S; r++) {
            for (let j = 0; j < T; j++) {
              assert(Math.abs(run.probs[r * T + j] - 1 / T) <= 1e-6, `uniform row ${r}`);
            }
          }
        }
        if (drop.p > 0 && ref.probs.length >= 16) {
          // The case exercises dropout: the TS twin's mask drops some weights and keeps others.
          let dropped = 0;
          for (let i = 0; i < ref.probs.length; i++) if (dropFactor(drop, i) === 0) dropped++;
          assert(dropped > 0 && dropped < ref.probs.length, `dropped ${dropped}`);
        }
      }),
  );
}

/**
 * An f16 output against float64 on the f16 inputs, per element: the f32 bound (TOL, as
 * assertClose measures it) plus the rounding to f16 when the result is stored, at most 2^-11 of
 * the value. `partial` is a share of the sum that a first product stores to f16 and a second
 * one accumulates onto (the prefix rows' share of context and dQ): its own rounding, 2^-11 of
 * it, comes on top. (The products of the rounded values, 2^-22 relative, are inside TOL.)
 */
function assertCloseF16(
  name: string,
  got: ArrayLike<number>,
  want: Float64Array,
  partial?: Float64Array,
): void {
  assertEquals(got.length, want.length, `${name}: length`);
  const meanAbs = want.reduce((s, v) => s + Math.abs(v), 0) / Math.max(1, want.length);
  for (let i = 0; i < want.length; i++) {
    const bound = 2 ** -11 * (Math.abs(want[i]) + Math.abs(partial?.[i] ?? 0)) +
      TOL * (Math.abs(want[i]) + meanAbs);
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= bound)) {
      throw new AssertionError(
        `${name}: element ${i} is ${got[i]}, expected ${want[i]} (error ${err.toExponential(2)}, ` +
          `bound ${bound.toExponential(2)})`,
      );
    }
  }
}

// f16 q, k, v and dContext (and f16 outputs), each on its own as attention allows: the float64
// reference takes the f16-rounded inputs, which the kernels load exactly, so f32 outputs keep
// the f32 bound and f16 ones add their store's rounding (assertCloseF16). [3, 7, 3·8] with prefix
// rows and dropout takes the GEMM's scalar fallbacks; [3, 68, 2·64] its vec4<f16> loads.
const F16_STORAGES: [string, Storage][] = [
  ["f16 inputs, f32 outputs", { ...ALL_F32, q: "f16", k: "f16", v: "f16", dContext: "f16" }],
  ["f16 inputs and outputs", {
    q: "f16",
    k: "f16",
    v: "f16",
    dContext: "f16",
    context: "f16",
    dQ: "f16",
    dK: "f16",
    dV: "f16",
  }],
  ["mixed", { ...ALL_F32, q: "f16", v: "f16", context: "f16", dK: "f16" }],
];
for (
  const { dims, drop, seed } of [
    { dims: { B: 3, S: 7, H: 3, D: 8, P: 3 }, drop: { p: 0.3, seed: 123, stream: 7 }, seed: 11 },
    { dims: { B: 3, S: 68, H: 2, D: 64, P: 4 }, drop: { p: 0.1, seed: 5, stream: 2 }, seed: 12 },
  ]
) {
  const { B, S, H, D, P } = dims;
  gpuTest(
    `attention f16: forward and backward against float64 at B=${B} S=${S} H=${H} D=${D} P=${P}`,
    async (gpu) => {
      assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
      const x32 = makeInputs(dims, seed * 10);
      const dC32 = Float64Array.from(Float32Array.from(randomValues(B * S * H * D, seed * 10 + 7)));
      const f16 = (a: Float64Array) => Float64Array.from(Float16Array.from(a));
      for (const [what, storage] of F16_STORAGES) {
        // The inputs as stored: f16 ones rounded (the prefix rows stay f32).
        const x: Inputs = {
          ...x32,
          q: storage.q === "f16" ? f16(x32.q) : x32.q,
          k: storage.k === "f16" ? f16(x32.k) : x32.k,
          v: storage.v === "f16" ? f16(x32.v) : x32.v,
        };
        const dC = storage.dContext === "f16" ? f16(dC32) : dC32;
        const ref = referenceForward(x, dims, drop);
        const grads = referenceBackward(x, ref.probs, dC, dims, drop);
        // The prefix rows' shares of context and dQ, stored before the sequence's is added: the
        // reference without the sequence's values (context), or keys (dQ; dS does not use k).
        const zeros = new Float64Array(x.v.length);
        const prefixContext = referenceForward({ ...x, v: zeros }, dims, drop).context;
        const prefixDQ = referenceBackward({ ...x, k: zeros }, ref.probs, dC, dims, drop).dQ;
        const run = await runGpu(gpu, x, dC, dims, drop, undefined, storage);
        const check = (name: SeqName, got: HostArray, want: Float64Array, part?: Float64Array) =>
          storage[name] === "f16"
            ? assertCloseF16(`${what}: ${name}`, got, want, part)
            : assertClose(`${what}: ${name}`, got, want, TOL);
        assertClose(`${what}: probs`, run.probs, ref.probs, TOL);
        check("context", run.context, ref.context, prefixContext);
        check("dQ", run.dQ, grads.dQ, prefixDQ);
        check("dK", run.dK, grads.dK);
        check("dV", run.dV, grads.dV);
        assertClose(`${what}: dPrefixKey`, run.dPK!, grads.dPK, TOL);
        assertClose(`${what}: dPrefixValue`, run.dPV!, grads.dPV, TOL);
      }
    },
  );
}

gpuTest(
  "attention: rows spread over a 2-D grid (more rows than one dimension holds)",
  async (gpu) => {
    // 42 query rows in 12 blocks of four with at most 5 workgroups per dimension: a 5×3 grid
    // with 3 spare workgroups; the backward's columns, 12 + 2·1 prefix blocks, also 5×3.
    const dims = { B: 3, S: 7, H: 2, D: 5, P: 3 };
    const drop = { p: 0.2, seed: 31, stream: 3 };
    const x = makeInputs(dims, 60);
    const dC = Float64Array.from(Float32Array.from(randomValues(3 * 7 * 10, 61)));
    const ref = referenceForward(x, dims, drop);
    const grads = referenceBackward(x, ref.probs, dC, dims, drop);
    const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 5 });
    // And with 32 lanes a row: 42 rows in 6 workgroups of 8, a 5 × 2 grid with 4 spare.
    for (const lanes of [false, true]) {
      const run = await withRowLanes(small, lanes, () => runGpu(small, x, dC, dims, drop));
      assertClose("probs", run.probs, ref.probs, TOL);
      assertClose("context", run.context, ref.context, TOL);
      assertClose("dQ", run.dQ, grads.dQ, TOL);
      assertClose("dK", run.dK, grads.dK, TOL);
      assertClose("dV", run.dV, grads.dV, TOL);
      assertClose("dPrefixKey", run.dPK!, grads.dPK, TOL);
      assertClose("dPrefixValue", run.dPV!, grads.dPV, TOL);
    }
  },
);

gpuTest(
  "attention: the prefix gradients' batch sum on a 2-D grid (H·P·D past one grid row)",
  async (gpu) => {
    // The sum over the batch is one invocation per prefix element: 2 · 4 · 64 = 512 of them,
    // 8 workgroups of 64, a 4 × 2 grid at a limit of 5 (the test above has only 30).
    const dims = { B: 2, S: 5, H: 2, D: 64, P: 4 };
    const x = makeInputs(dims, 90);
    const dC = Float64Array.from(Float32Array.from(randomValues(2 * 5 * 128, 91)));
    const ref = referenceForward(x, dims, NO_DROPOUT);
    const grads = referenceBackward(x, ref.probs, dC, dims, NO_DROPOUT);
    const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 5 });
    const run = await runGpu(small, x, dC, dims, NO_DROPOUT);
    assertClose("dPrefixKey", run.dPK!, grads.dPK, TOL);
    assertClose("dPrefixValue", run.dPV!, grads.dPV, TOL);
  },
);

gpuTest("attention: prefix gradients accumulate into the existing ones", async (gpu) => {
  const dims = { B: 3, S: 7, H: 2, D: 5, P: 3 };
  const drop = { p: 0.25, seed: 5, stream: 2 };
  const x = makeInputs(dims, 70);
  const dC = Float64Array.from(Float32Array.from(randomValues(3 * 7 * 10, 71)));
  const init = {
    dPK: Float64Array.from(Float32Array.from(randomValues(30, 72))),
    dPV: Float64Array.from(Float32Array.from(randomValues(30, 73))),
  };
  const ref = referenceForward(x, dims, drop);
  const grads = referenceBackward(x, ref.probs, dC, dims, drop);
  const run = await runGpu(gpu, x, dC, dims, drop, init);
  assertClose("dPrefixKey", run.dPK!, grads.dPK.map((g, i) => g + init.dPK[i]), TOL);
  assertClose("dPrefixValue", run.dPV!, grads.dPV.map((g, i) => g + init.dPV[i]), TOL);
  assertClose("dQ", run.dQ, grads.dQ, TOL);
});

gpuTest("attention: two runs are bitwise identical", async (gpu) => {
  const dims = { B: 3, S: 13, H: 3, D: 8, P: 3 };
  const drop = { p: 0.1, seed: 42, stream: 5 };
  const x = makeInputs(dims, 80);
  const dC = Float64Array.from(Float32Array.from(randomValues(3 * 13 * 24, 81)));
  for (const lanes of [false, true]) {
    const a = await withRowLanes(gpu, lanes, () => runGpu(gpu, x, dC, dims, drop));
    const b = await withRowLanes(gpu, lanes, () => runGpu(gpu, x, dC, dims, drop));
    assertEquals(b, a);
  }
});

gpuTest("attention: without the gradient tensors the prefix is treated as frozen", async (gpu) => {
  const dims = { B: 1, S: 7, H: 1, D: 5, P: 3 };
  const x = makeInputs(dims, 90);
  const dC = Float64Array.from(Float32Array.from(randomValues(35, 91)));
  const ref = referenceForward(x, dims, NO_DROPOUT);
  const grads = referenceBackward(x, ref.probs, dC, dims, NO_DROPOUT);
  const up = (a: Float64Array, shape: number[]) =>
    tensorFromArray(gpu, Float32Array.from(a), shape, "t");
  const [q, k, v, dContext] = [x.q, x.k, x.v, dC].map((a) => up(a, [1, 7, 5]));
  const prefixKey = up(x.pk, [1, 3, 5]), prefixValue = up(x.pv, [1, 3, 5]);
  const probs = up(ref.probs, [1, 1, 7, 10]);
  const [dQ, dK, dV] = [0, 1, 2].map(() => createTensor(gpu, [1, 7, 5], "f32", "grad"));
  const rec = new Recorder(gpu);
  for (const t of [dQ, dK, dV]) fill(rec, t, NaN);
  attentionBackward(rec, {
    q,
    k,
    v,
    probs,
    dContext,
    dQ,
    dK,
    dV,
    prefixKey,
    prefixValue,
    heads: 1,
    dropout: NO_DROPOUT,
  });
  await rec.submit();
  assertClose("dQ", await dQ.download(), grads.dQ, TOL);
  assertClose("dK", await dK.download(), grads.dK, TOL);
  assertClose("dV", await dV.download(), grads.dV, TOL);
});

Deno.test("attention: the float64 reference backward matches central differences", () => {
  // Dropout off. Without prefix rows the fully padded sequence is left out: its scores are
  // −FLT_MAX whatever q and k are, so its true derivative is 0 while autograd (HF, and this
  // backward) passes the softmax gradient through the mask addition.
  const configs: { dims: Dims; mask?: number[] }[] = [
    { dims: { B: 3, S: 4, H: 2, D: 3, P: 2 } },
    { dims: { B: 2, S: 5, H: 1, D: 5, P: 0 }, mask: [1, 1, 1, 1, 1, 1, 1, 0, 0, 0] },
  ];
  for (const [c, { dims, mask }] of configs.entries()) {
    const { B, S, H, D } = dims;
    const x = makeInputs(dims, 200 + c, mask ? Float64Array.from(mask) : undefined);
    const g = randomValues(B * S * H * D, 300 + c);
    const loss = () => {
      const { context } = referenceForward(x, dims, NO_DROPOUT);
      let l = 0;
      for (let i = 0; i < context.length; i++) l += context[i] * g[i];
      return l;
    };
    const { probs } = referenceForward(x, dims, NO_DROPOUT);
    const grads = referenceBackward(x, probs, g, dims, NO_DROPOUT);
    const pairs: [string, Float64Array, Float64Array][] = [
      ["dQ", x.q, grads.dQ],
      ["dK", x.k, grads.dK],
      ["dV", x.v, grads.dV],
      ["dPrefixKey", x.pk, grads.dPK],
      ["dPrefixValue", x.pv, grads.dPV],
    ];
    for (const [name, param, grad] of pairs) {
      const numeric = finiteDifferences(loss, param, 1e-5);
      assertClose(`config ${c} ${name}`, grad, numeric, 1e-6);
    }
  }
});

gpuTest("attention: wrong shapes, heads and settings are refused naming op and tensor", (gpu) => {
  const t = (shape: number[], label: string) => createTensor(gpu, shape, "f32", label);
  const q = t([3, 7, 10], "q"), k = t([3, 7, 10], "k"), v = t([3, 7, 10], "v");
  const mask = t([3, 7], "mask"), probs = t([3, 2, 7, 10], "probs"), context = t([3, 7, 10], "c");
  const pk = t([2, 3, 5], "pk"), pv = t([2, 3, 5], "pv");
  const bad = t([3, 7, 9], "bad");
  const rec = new Recorder(gpu);
  const fwd = { q, k, v, mask, prefixKey: pk, prefixValue: pv, probs, context, heads: 2 };
  const dropout = NO_DROPOUT;
  attentionForward(rec, { ...fwd, dropout }); // the good call records
  // With a prefix: two score products, the softmax, two context products.
  assertEquals(rec.length, 5);
  const cases: [Record<string, unknown>, string][] = [
    [{ k: bad }, 'attentionForward: k ("bad")'],
    [{ v: bad }, 'attentionForward: v ("bad")'],
    [{ context: bad }, 'attentionForward: context ("bad")'],
    [{ mask: t([3, 8], "m8") }, 'attentionForward: mask ("m8")'],
    [{ probs: t([3, 2, 7, 7], "p7") }, 'attentionForward: probs ("p7")'],
    [{ prefixValue: t([2, 4, 5], "pv4") }, 'attentionForward: prefixValue ("pv4")'],
    [{ prefixKey: t([2, 3, 4], "pk4") }, 'attentionForward: prefixKey ("pk4")'],
    [{ prefixValue: undefined }, "attentionForward: prefixKey and prefixValue"],
    [{ heads: 3 }, "attentionForward: heads 3"],
    [{ dropout: { p: 1, seed: 0, stream: 0 } }, "attentionForward: dropout probability"],
    [{ dropout: { p: 0.1, seed: -1, stream: 0 } }, "attentionForward: dropout seed"],
  ];
  for (const [change, message] of cases) {
    assertThrows(
      () =>
        attentionForward(
          rec,
          { ...fwd, dropout, ...change } as typeof fwd & { dropout: DropoutConfig },
        ),
      GpuError,
      message,
    );
  }
  const dQ = t([3, 7, 10], "dQ"), dK = t([3, 7, 10], "dK"), dV = t([3, 7, 10], "dV");
  const bwd = {
    q,
    k,
    v,
    probs,
    dContext: context,
    dQ,
    dK,
    dV,
    prefixKey: pk,
    prefixValue: pv,
    dPrefixKey: t([2, 3, 5], "dpk"),
    dPrefixValue: t([2, 3, 5], "dpv"),
    heads: 2,
    dropout,
  };
  attentionBackward(rec, bwd);
  // 7 launches plus a product and a batch sum for each prefix gradient (no dropout).
  assertEquals(rec.length, 5 + 7 + 2 * 2);
  const bwdCases: [Record<string, unknown>, string][] = [
    [{ dQ: bad }, 'attentionBackward: dQ ("bad")'],
    [{ dK: bad }, 'attentionBackward: dK ("bad")'],
    [{ dContext: bad }, 'attentionBackward: dContext ("bad")'],
    [{ probs: t([3, 2, 7, 7], "p7") }, 'attentionBackward: probs ("p7")'],
    [{ dPrefixKey: t([2, 2, 5], "dpk2") }, 'attentionBackward: dPrefixKey ("dpk2")'],
    [{ dPrefixValue: undefined }, "attentionBackward: dPrefixKey and dPrefixValue"],
    [
      { prefixKey: undefined, prefixValue: undefined, probs: t([3, 2, 7, 7], "p77") },
      "attentionBackward: dPrefixKey given without prefixKey",
    ],
    [{ heads: 20 }, "attentionBackward: heads 20"],
    [{ dScores: t([3, 2, 7, 7], "ds") }, 'attentionBackward: dScores ("ds")'],
    // Outputs of different launches meeting, which WebGPU cannot see.
    [{ dK: dQ }, 'attentionBackward: dQ ("dQ") shares GPU memory with dK ("dQ")'],
    [{ dQ: q }, 'attentionBackward: dQ ("q") shares GPU memory with q ("q")'],
  ];
  for (const [change, message] of bwdCases) {
    assertThrows(
      () => attentionBackward(rec, { ...bwd, ...change } as typeof bwd),
      GpuError,
      message,
    );
  }
  assertThrows(
    () =>
      attentionForward(rec, {
        ...fwd,
        q: t([1, 1, 300], "wide"),
        k: t([1, 1, 300], "wide"),
        v: t([1, 1, 300], "wide"),
        context: t([1, 1, 300], "wide"),
        mask: t([1, 1], "m"),
        prefixKey: undefined,
        prefixValue: undefined,
        probs: t([1, 1, 1, 1], "p"),
        heads: 1,
        dropout,
      }),
    GpuError,
    "head dimension 300",
  );
  assertEquals(rec.length, 5 + 7 + 2 * 2); // the refused calls recorded nothing
});

gpuTest(
  "attention f16Math: the per-head products in f16 arithmetic, close to float64, with a prefix",
  async (gpu) => {
    // Aligned (the f16 kernels run; misaligned products would sum in f32), prefix rows and
    // dropout, f16 storage as the encoder's precision "f16" keeps it. Error as the norm of the
    // difference over the reference's norm, per output. Measured on lavapipe: probabilities 4.3e-4,
    // context 6.6e-4, dQ 1.0e-3, dK 1.1e-3, dV 8.9e-4, the prefix gradients 1.1e-3 and 7.0e-4 (f32
    // sums: 1.3e-7 to 2.1e-4, the f16 outputs' rounding); asserted within 5e-3.
    const dims = { B: 3, S: 68, H: 2, D: 64, P: 4 };
    const drop = { p: 0.1, seed: 5, stream: 2 };
    const storage = F16_STORAGES[1][1];
    const f16 = (a: Float64Array) => Float64Array.from(Float16Array.from(a));
    const x32 = makeInputs(dims, 130);
    const x: Inputs = { ...x32, q: f16(x32.q), k: f16(x32.k), v: f16(x32.v) };
    const dC = f16(Float64Array.from(randomValues(3 * 68 * 128, 137)));
    const ref = referenceForward(x, dims, drop);
    const grads = referenceBackward(x, ref.probs, dC, dims, drop);
    const math = await runGpu(gpu, x, dC, dims, drop, undefined, storage, true);
    const plain = await runGpu(gpu, x, dC, dims, drop, undefined, storage, false);
    const rel = (got: ArrayLike<number>, want: Float64Array) => {
      let d = 0, w = 0;
      for (let i = 0; i < want.length; i++) (d += (got[i] - want[i]) ** 2, w += want[i] ** 2);
      return Math.sqrt(d / w);
    };
    const pairs: [string, keyof GpuRun, Float64Array][] = [
      ["probs", "probs", ref.probs],
      ["context", "context", ref.context],
      ["dQ", "dQ", grads.dQ],
      ["dK", "dK", grads.dK],
      ["dV", "dV", grads.dV],
      ["dPrefixKey", "dPK", grads.dPK],
      ["dPrefixValue", "dPV", grads.dPV],
    ];
    for (const [name, key, want] of pairs) {
      const e = rel(math[key]!, want);
      assert(e <= 5e-3, `${name}: relative error ${e}`);
      assert(rel(math[key]!, plain[key]! as unknown as Float64Array) > 0, `${name}: as f32 sums`);
    }
  },
);

gpuTest("attention f16Math: every per-head product runs an f16-arithmetic kernel", (gpu) => {
  // Aligned sequence and prefix lengths (a multiple of 4: otherwise the products that read the
  // probabilities at an offset of P or with a row of P + S keys sum in f32, as documented).
  const [B, S, H, D, P] = [2, 68, 2, 64, 4];
  const seq = (label: string) => createTensor(gpu, [B, S, H * D], "f16", label);
  const t = {
    q: seq("q"),
    k: seq("k"),
    v: seq("v"),
    context: seq("context"),
    dContext: seq("dContext"),
    dQ: seq("dQ"),
    dK: seq("dK"),
    dV: seq("dV"),
    mask: createTensor(gpu, [B, S], "f32", "mask"),
    probs: createTensor(gpu, [B, H, S, P + S], "f32", "probs"),
    prefixKey: createTensor(gpu, [H, P, D], "f32", "prefixKey"),
    prefixValue: createTensor(gpu, [H, P, D], "f32", "prefixValue"),
    dPrefixKey: createTensor(gpu, [H, P, D], "f32", "dPrefixKey"),
    dPrefixValue: createTensor(gpu, [H, P, D], "f32", "dPrefixValue"),
  };
  for (const f16Math of [true, false]) {
    const used = matmulVariantsUsed(gpu, (rec) => {
      const common = { heads: H, dropout: NO_DROPOUT, f16Math };
      attentionForward(rec, { ...t, ...common });
      attentionBackward(rec, { ...t, ...common });
    });
    // Forward: prefix scores, scores, prefix context, context; backward: dV, dPrefixValue, prefix
    // dP, dP, dQ from the prefix and the sequence, dK, dPrefixKey.
    assertEquals(used.length, 12);
    assertEquals(used.filter((v) => isF16MathVariant(v)).length, f16Math ? 12 : 0);
  }
  for (const x of Object.values(t)) x.destroy();
});
