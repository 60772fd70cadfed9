// Vocabulary-sized softmax cross-entropy (kernels/vocab_cross_entropy.ts), forward and backward,
// against float64 references, and the llvmpipe loop budget that made it necessary.

import { assert, assertClose, assertEquals, AssertionError } from "./assert.ts";
import { gpuTest, outputTensor, withLimits } from "./gpu_fixture.ts";
import { randomValues, rng } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { getPipeline } from "../kernels/pipeline.ts";
import { Recorder } from "../kernels/recorder.ts";
import { softmaxCrossEntropyForward } from "../kernels/softmax_cross_entropy.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import {
  vocabCrossEntropyBackward,
  vocabCrossEntropyForward,
} from "../kernels/vocab_cross_entropy.ts";

// ---- float64 reference ----

interface Result {
  loss: number;
  lse: ArrayLike<number>;
  rowLoss: ArrayLike<number>;
  argmax: ArrayLike<number>;
  dLogits: ArrayLike<number>;
}

/**
 * Per row: m = max at the first column a, rest = Σ_{j≠a} exp(x[j] − m), lse = m + log1p(rest),
 * rowLoss = (m − x[t]) + log1p(rest) (NaN for t ≥ V), and the gradient with softmax(a) − 1 =
 * −rest / (1 + rest) written without cancellation.
 */
function reference(x: Float32Array, targets: Uint32Array, v: number, gradScale = 1): Result {
  const m = targets.length;
  const lse = new Float64Array(m);
  const rowLoss = new Float64Array(m);
  const argmax = new Uint32Array(m);
  const dLogits = new Float64Array(m * v);
  let sum = 0;
  for (let r = 0; r < m; r++) {
    const base = r * v;
    let a = 0;
    for (let j = 1; j < v; j++) if (x[base + j] > x[base + a]) a = j;
    const max = x[base + a];
    let rest = 0;
    for (let j = 0; j < v; j++) if (j !== a) rest += Math.exp(x[base + j] - max);
    const t = targets[r];
    lse[r] = max + Math.log1p(rest);
    argmax[r] = a;
    rowLoss[r] = t < v ? max - x[base + t] + Math.log1p(rest) : NaN;
    sum += rowLoss[r];
    const total = 1 + rest;
    for (let j = 0; j < v; j++) {
      const y = j === t ? 1 : 0;
      const d = t >= v
        ? NaN
        : j === a && y === 1
        ? -rest / total
        : Math.exp(x[base + j] - max) / total - y;
      dLogits[base + j] = (d * gradScale) / m;
    }
  }
  return { loss: sum / m, lse, rowLoss, argmax, dLogits };
}

// ---- inputs ----

/**
 * Logits [m, v] with no zeros, each row one of five kinds by r % 5: uniform in [−4, 4); ±80
 * (uniform in [−80, 80)); a maximum tied at three columns (two of them 256 apart, so that one
 * invocation sees both, and one elsewhere); one column at +80 over a row with half its columns at
 * −80; and a constant row of 2.5 (all tied). Targets are uniform, except that the +80 rows alternate
 * between targeting their peak (confidently right) and a random column (confidently wrong), and
 * tied rows target one of their maxima.
 */
function inputs(m: number, v: number, seed: number): [Float32Array, Uint32Array] {
  const x = Float32Array.from(randomValues(m * v, seed), (u) => 4 * u);
  const next = rng(seed + 1);
  const column = () => Math.floor(next() * v);
  const targets = Uint32Array.from({ length: m }, column);
  for (let r = 0; r < m; r++) {
    const row = x.subarray(r * v, (r + 1) * v);
    switch (r % 5) {
      case 1:
        for (let j = 0; j < v; j++) row[j] *= 20;
        break;
      case 2: {
        const a = column();
        const ties = [a, a + 256 < v ? a + 256 : a, column()];
        for (const j of ties) row[j] = 6.25;
        targets[r] = ties[r % 3];
        break;
      }
      case 3: {
        for (let j = 0; j < v; j += 2) row[j] = -80;
        const peak = column();
        row[peak] = 80;
        if (r % 2 === 1) targets[r] = peak;
        break;
      }
      case 4:
        row.fill(2.5);
        break;
    }
  }
  return [x, targets];
}

// ---- running ----

/** Forward and backward on poisoned outputs. */
async function run(
  gpu: Gpu,
  x: Float32Array,
  targets: Uint32Array,
  v: number,
  gradScale?: number,
): Promise<Result> {
  const m = targets.length;
  const logits = tensorFromArray(gpu, x, [m, v], "logits");
  const t = tensorFromArray(gpu, targets, [m], "targets");
  const rec = new Recorder(gpu);
  const loss = outputTensor(rec, [1], "loss");
  const state = {
    lse: outputTensor(rec, [m], "lse"),
    rowLoss: outputTensor(rec, [m], "rowLoss"),
    argmax: createTensor(gpu, [m], "u32", "argmax"),
  };
  fill(rec, state.argmax, 0xdeadbeef);
  const dLogits = outputTensor(rec, [m, v], "dLogits");
  vocabCrossEntropyForward(rec, { logits, targets: t, loss, state });
  vocabCrossEntropyBackward(rec, { logits, targets: t, lse: state.lse, dLogits, gradScale });
  await rec.submit();
  const result = {
    loss: (await loss.download())[0],
    lse: await state.lse.download() as Float32Array,
    rowLoss: await state.rowLoss.download() as Float32Array,
    argmax: await state.argmax.download() as Uint32Array,
    dLogits: await dLogits.download() as Float32Array,
  };
  for (const b of [logits, t, loss, state.lse, state.rowLoss, state.argmax, dLogits]) b.destroy();
  return result;
}

// lse = m + log(s) in float32 with s a 256-way strided sum and an 8-level tree: a few ulps of
// lse, and a row loss lse − x[t] inherits that absolute error (≈ 1e-5 at lse ≈ 80, well inside
// the bound below as the row losses' mean is ≈ 40). On lavapipe these cases pass at 3e-6.
const TOL = 1e-5;

/**
 * dLogits = scale · (exp(x − lse) − onehot) / M: each element's error is relative to its softmax
 * (through lse) plus a few ulps of the 1 it may subtract, so the bound is tol · (|e| + scale/M).
 */
function assertGradClose(
  name: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  unit: number,
) {
  for (let i = 0; i < want.length; i++) {
    const bound = TOL * (Math.abs(want[i]) + unit);
    const nan = Number.isNaN(want[i]);
    if (nan ? !Number.isNaN(got[i]) : !(Math.abs(got[i] - want[i]) <= bound)) {
      throw new AssertionError(
        `${name}: element ${i} is ${got[i]}, expected ${want[i]} (bound ${bound.toExponential(2)})`,
      );
    }
  }
}

function check(what: string, got: Result, want: Result, gradScale = 1) {
  const m = want.argmax.length;
  assertClose(`${what} loss`, [got.loss], [want.loss], TOL);
  assertClose(`${what} lse`, got.lse, want.lse, TOL);
  assertClose(`${what} rowLoss`, got.rowLoss, want.rowLoss, TOL);
  assertEquals(got.argmax, want.argmax as Uint32Array, `${what} argmax`);
  assertGradClose(`${what} dLogits`, got.dLogits, want.dLogits, Math.abs(gradScale) / m);
}

const CASES: [number, number][] = [[1, 1], [3, 7], [37, 1001], [5, 70001]];

gpuTest("vocab cross-entropy matches float64 at odd shapes, ±80 logits and ties", async (gpu) => {
  for (const [i, [m, v]] of CASES.entries()) {
    const [x, targets] = inputs(m, v, 100 + 10 * i);
    const gradScale = i % 2 === 0 ? undefined : 1024;
    const got = await run(gpu, x, targets, v, gradScale);
    check(`[${m}, ${v}]`, got, reference(x, targets, v, gradScale), gradScale);
  }
});

gpuTest(
  "vocab cross-entropy on a 2-D grid (rows past maxComputeWorkgroupsPerDimension)",
  async (gpu) => {
    // 37 rows over at most 7 workgroups a dimension: a 7 × 6 forward grid with 5 idle workgroups,
    // and a 2-D backward grid too.
    const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 7 });
    const [x, targets] = inputs(37, 1001, 200);
    check("2-D grid", await run(small, x, targets, 1001, 3), reference(x, targets, 1001, 3), 3);
  },
);

gpuTest(
  "vocab cross-entropy: a target >= V gives a NaN loss and a NaN gradient row",
  async (gpu) => {
    const m = 4;
    const v = 300;
    const [x, targets] = inputs(m, v, 300);
    targets.set([v, 0xffffffff], 1);
    const got = await run(gpu, x, targets, v);
    const want = reference(x, targets, v);
    assert(Number.isNaN(got.loss), `loss ${got.loss}`);
    assert(Number.isNaN(got.rowLoss[1]) && Number.isNaN(got.rowLoss[2]), "row losses not NaN");
    // lse, argmax and the other rows are still right.
    assertClose("lse", got.lse, want.lse, TOL);
    assertEquals(got.argmax, want.argmax as Uint32Array, "argmax");
    assertClose("valid row losses", [got.rowLoss[0], got.rowLoss[3]], [
      want.rowLoss[0],
      want.rowLoss[3],
    ], TOL);
    assertGradClose("dLogits", got.dLogits, want.dLogits, 1 / m);
    assert(got.dLogits.length === m * v);
  },
);

gpuTest("vocab cross-entropy is bitwise deterministic", async (gpu) => {
  const [x, targets] = inputs(5, 70001, 400);
  const first = await run(gpu, x, targets, 70001, 7);
  const second = await run(gpu, x, targets, 70001, 7);
  assertEquals(second, first);
});

// ---- the llvmpipe loop budget ----

// One invocation counting to n: llvmpipe (lavapipe) stops every invocation after 65,535 loop
// iterations in all (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, shared by all its loops, a fixed-count
// tree reduction included), then runs each later loop once, and returns what it has: 65535 here.
const COUNT_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
struct Params { n: u32 }
@group(0) @binding(1) var<uniform> p: Params;
@compute @workgroup_size(1)
fn main() {
  var c = 0u;
  for (var i = 0u; i < p.n; i++) { c += 1u; }
  out[0] = c;
}
`;

gpuTest(
  "vocab cross-entropy is right where llvmpipe's loop budget broke the row kernel",
  async (gpu) => {
    const n = 100000;
    const count = createTensor(gpu, [1], "u32", "count");
    let rec = new Recorder(gpu);
    rec.dispatch(
      "loop count",
      getPipeline(gpu, "loop count", COUNT_WGSL),
      [count],
      1,
      new Uint32Array([n]),
    );
    await rec.submit();
    const counted = (await count.download())[0];
    count.destroy();
    assert(counted === n || counted === 65535, `a ${n}-iteration loop ran ${counted} times`);

    // 547 rows of 16016 (an MLM batch's masked tokens over a pruned vocabulary): the row kernel's
    // invocations own 2 or 3 rows and walk each twice, 64064 or 96096 iterations. Under the budget it
    // returned 0.07 instead of 11.7 (its 8-step tree then ran one step); it is right where loops are
    // not cut, and the vocab kernel (V/256 + 8 iterations a pass) is right either way. Every row is
    // a rotation of one base row, so the float64 reference costs one row, not 547.
    const m = 547;
    const v = 16016;
    const base = Float32Array.from(randomValues(v, 500), (u) => 4 * u);
    const x = new Float32Array(m * v);
    const shift = (r: number) => (r * 7919) % v;
    for (let r = 0; r < m; r++) {
      const s = shift(r);
      x.set(base.subarray(s), r * v);
      x.set(base.subarray(0, s), r * v + v - s);
    }
    const next = rng(501);
    const targets = Uint32Array.from({ length: m }, () => Math.floor(next() * v));
    const one = reference(base, new Uint32Array([0]), v);
    const a = one.argmax[0];
    const lse = one.lse[0];
    const rowLoss = Float64Array.from(targets, (t, r) => lse - x[r * v + t]);
    const argmax = Uint32Array.from({ length: m }, (_, r) => (a - shift(r) + v) % v);
    const loss = rowLoss.reduce((s, l) => s + l, 0) / m;

    const logits = tensorFromArray(gpu, x, [m, v], "logits");
    const t = tensorFromArray(gpu, targets, [m], "targets");
    rec = new Recorder(gpu);
    const vocabLoss = outputTensor(rec, [1], "vocab loss");
    const rowKernelLoss = outputTensor(rec, [1], "row kernel loss");
    const state = {
      lse: outputTensor(rec, [m], "lse"),
      rowLoss: outputTensor(rec, [m], "rowLoss"),
      argmax: createTensor(gpu, [m], "u32", "argmax"),
    };
    fill(rec, state.argmax, 0xdeadbeef);
    vocabCrossEntropyForward(rec, { logits, targets: t, loss: vocabLoss, state });
    softmaxCrossEntropyForward(rec, { logits, targets: t, loss: rowKernelLoss });
    await rec.submit();
    assertClose("vocab loss", [(await vocabLoss.download())[0]], [loss], TOL);
    assertClose("lse", await state.lse.download(), new Float64Array(m).fill(lse), TOL);
    assertClose("rowLoss", await state.rowLoss.download(), rowLoss, TOL);
    assertEquals(await state.argmax.download() as Uint32Array, argmax, "argmax");
    const old = (await rowKernelLoss.download())[0];
    if (counted === n) assertClose("row kernel loss (no loop budget)", [old], [loss], TOL);
    for (const b of [logits, t, vocabLoss, rowKernelLoss, state.lse, state.rowLoss, state.argmax]) {
      b.destroy();
    }
  },
);
