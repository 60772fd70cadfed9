// Softmax cross-entropy, binary cross-entropy with logits and mean squared error, forward and
// backward, against float64 references.

import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues, rng } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { bceWithLogitsBackward, bceWithLogitsForward } from "../kernels/bce_with_logits.ts";
import { fill } from "../kernels/fill.ts";
import { mseBackward, mseForward } from "../kernels/mse.ts";
import { Recorder } from "../kernels/recorder.ts";
import {
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from "../kernels/softmax_cross_entropy.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// ---- float64 references ----

/** Row max and its first column, and r = Σ_{c≠argmax} exp(x[c] − max). */
function rowStats(x: ArrayLike<number>, base: number, c: number) {
  let m = x[base];
  let a = 0;
  for (let j = 1; j < c; j++) {
    if (x[base + j] > m) {
      m = x[base + j];
      a = j;
    }
  }
  let rest = 0;
  for (let j = 0; j < c; j++) if (j !== a) rest += Math.exp(x[base + j] - m);
  return { m, a, rest };
}

// log-sum-exp as m + log1p(r): a confident row's tiny loss keeps its digits in float64 too.
function ceLoss(x: ArrayLike<number>, targets: Uint32Array, c: number): number {
  const b = targets.length;
  let s = 0;
  for (let r = 0; r < b; r++) {
    const { m, rest } = rowStats(x, r * c, c);
    s += m - x[r * c + targets[r]] + Math.log1p(rest);
  }
  return s / b;
}

function ceGrad(x: ArrayLike<number>, targets: Uint32Array, c: number, scale = 1): Float64Array {
  const b = targets.length;
  const g = new Float64Array(b * c);
  for (let r = 0; r < b; r++) {
    const { m, a, rest } = rowStats(x, r * c, c);
    const total = 1 + rest;
    for (let j = 0; j < c; j++) {
      const y = j === targets[r] ? 1 : 0;
      // softmax(a) − 1 = −rest/total, without cancellation.
      const d = j === a && y === 1 ? -rest / total : Math.exp(x[r * c + j] - m) / total - y;
      g[r * c + j] = (d * scale) / b;
    }
  }
  return g;
}

function bceLoss(x: ArrayLike<number>, y: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) {
    s += Math.max(x[i], 0) - x[i] * y[i] + Math.log1p(Math.exp(-Math.abs(x[i])));
  }
  return s / y.length;
}

function bceGrad(x: ArrayLike<number>, y: ArrayLike<number>, scale = 1): Float64Array {
  const b = y.length;
  return Float64Array.from(y, (yi, i) => {
    const z = Math.exp(-Math.abs(x[i]));
    // sigmoid(x) − y; for x >= 0, 1 − sigmoid(x) = z/(1+z) keeps y = 1's tiny gradient.
    const d = x[i] >= 0 ? (1 - yi) - z / (1 + z) : z / (1 + z) - yi;
    return (d * scale) / b;
  });
}

function mseLoss(x: ArrayLike<number>, y: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += (x[i] - y[i]) ** 2;
  return s / y.length;
}

function mseGrad(x: ArrayLike<number>, y: ArrayLike<number>, scale = 1): Float64Array {
  return Float64Array.from(y, (yi, i) => (2 * (x[i] - yi) * scale) / y.length);
}

// ---- helpers ----

function classTargets(b: number, c: number, seed: number): Uint32Array {
  const next = rng(seed);
  return Uint32Array.from({ length: b }, () => Math.floor(next() * c));
}

type Forward = (rec: Recorder, args: { logits: Tensor; targets: Tensor; loss: Tensor }) => void;
type Backward = (
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; dLogits: Tensor; gradScale?: number },
) => void;
const LOSSES: Record<"ce" | "bce" | "mse", [Forward, Backward]> = {
  ce: [softmaxCrossEntropyForward, softmaxCrossEntropyBackward],
  bce: [bceWithLogitsForward, bceWithLogitsBackward],
  mse: [mseForward, mseBackward],
};

/** Runs forward and backward of one loss on poisoned outputs; returns [loss, dLogits]. */
async function run(
  gpu: Gpu,
  kind: "ce" | "bce" | "mse",
  logits: Tensor,
  targets: Tensor,
  gradScale?: number,
): Promise<[number, Float32Array]> {
  const loss = createTensor(gpu, [1], "f32", "loss");
  const dLogits = createTensor(gpu, logits.shape, "f32", "dLogits");
  const rec = new Recorder(gpu);
  fill(rec, loss, NaN);
  fill(rec, dLogits, NaN);
  const [forward, backward] = LOSSES[kind];
  forward(rec, { logits, targets, loss });
  backward(rec, { logits, targets, dLogits, gradScale });
  await rec.submit();
  const result: [number, Float32Array] = [
    (await loss.download())[0],
    await dLogits.download() as Float32Array,
  ];
  loss.destroy();
  dLogits.destroy();
  return result;
}

// The losses are means of up to 4099 non-negative float32 terms (no cancellation): a few ulps
// per term plus a 256-way strided sum and an 8-level tree stay far inside 1e-5.
const TOL = 1e-5;

const CE_CASES: [number, number][] = [
  [1, 1],
  [1, 7],
  [7, 2],
  [7, 3],
  [33, 5],
  [130, 2],
  [130, 33],
  [
    4099,
    3,
  ],
];
const BATCHES = [1, 7, 33, 130, 4099];

gpuTest("softmax cross-entropy matches float64 at odd shapes", async (gpu) => {
  for (const [i, [b, c]] of CE_CASES.entries()) {
    const x = Float32Array.from(randomValues(b * c, 10 + i), (v) => 4 * v);
    const targets = classTargets(b, c, 20 + i);
    const logits = tensorFromArray(gpu, x, [b, c], "logits");
    const t = tensorFromArray(gpu, targets, [b], "targets");
    const scale = i % 2 === 0 ? undefined : 1024;
    const [loss, dLogits] = await run(gpu, "ce", logits, t, scale);
    assertClose(`loss B=${b} C=${c}`, [loss], [ceLoss(x, targets, c)], TOL);
    assertClose(`dLogits B=${b} C=${c}`, dLogits, ceGrad(x, targets, c, scale ?? 1), TOL);
    logits.destroy();
    t.destroy();
  }
});

gpuTest("binary cross-entropy with logits matches float64 at odd shapes", async (gpu) => {
  for (const [i, b] of BATCHES.entries()) {
    for (const soft of [false, true]) {
      const x = Float32Array.from(randomValues(b, 30 + i), (v) => 6 * v);
      const next = rng(40 + i);
      const y = Float32Array.from({ length: b }, () => (soft ? next() : next() < 0.5 ? 0 : 1));
      // Both accepted logits shapes: [B, 1] (a head's output) and [B].
      const logits = tensorFromArray(gpu, x, soft ? [b] : [b, 1], "logits");
      const targets = tensorFromArray(gpu, y, [b], "targets");
      const scale = soft ? 0.5 : undefined;
      const [loss, dLogits] = await run(gpu, "bce", logits, targets, scale);
      const what = `B=${b} ${soft ? "soft" : "hard"}`;
      assertClose(`loss ${what}`, [loss], [bceLoss(x, y)], TOL);
      assertClose(`dLogits ${what}`, dLogits, bceGrad(x, y, scale ?? 1), TOL);
      logits.destroy();
      targets.destroy();
    }
  }
});

gpuTest("mean squared error matches float64 at odd shapes", async (gpu) => {
  for (const [i, b] of BATCHES.entries()) {
    const x = Float32Array.from(randomValues(b, 50 + i), (v) => 5 * v);
    const y = Float32Array.from(randomValues(b, 60 + i), (v) => 2.5 + 2.5 * v);
    const logits = tensorFromArray(gpu, x, i % 2 ? [b, 1] : [b], "predictions");
    const targets = tensorFromArray(gpu, y, [b], "targets");
    const scale = i % 2 ? 8 : undefined;
    const [loss, dLogits] = await run(gpu, "mse", logits, targets, scale);
    assertClose(`loss B=${b}`, [loss], [mseLoss(x, y)], TOL);
    assertClose(`dLogits B=${b}`, dLogits, mseGrad(x, y, scale ?? 1), TOL);
    logits.destroy();
    targets.destroy();
  }
});

gpuTest("loss gradients on a 2-D grid (past maxComputeWorkgroupsPerDimension)", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 3 });
  const b = 1037, c = 3; // one invocation per example: 5 workgroups of 256, a 3 × 2 grid
  const x = Float32Array.from(randomValues(b * c, 70), (v) => 4 * v);
  const classes = classTargets(b, c, 71);
  const y = Float32Array.from(randomValues(b, 72), (v) => 0.5 + 0.5 * v);
  const logits = tensorFromArray(small, x, [b, c], "logits");
  const classT = tensorFromArray(small, classes, [b], "targets");
  const [, ceG] = await run(small, "ce", logits, classT);
  assertClose("ce dLogits", ceG, ceGrad(x, classes, c), TOL);
  const x1 = x.subarray(0, b);
  const logits1 = tensorFromArray(small, x1, [b], "logits");
  const yT = tensorFromArray(small, y, [b], "targets");
  const [, bceG] = await run(small, "bce", logits1, yT);
  assertClose("bce dLogits", bceG, bceGrad(x1, y), TOL);
  const [, mseG] = await run(small, "mse", logits1, yT);
  assertClose("mse dLogits", mseG, mseGrad(x1, y), TOL);
  for (const t of [logits, classT, logits1, yT]) t.destroy();
});

gpuTest("losses at extreme logits (±50, ±100) stay finite and match float64", async (gpu) => {
  const check = (
    what: string,
    loss: number,
    dLogits: Float32Array,
    wantLoss: number,
    want: Float64Array,
  ) => {
    assert(Number.isFinite(loss) && dLogits.every(Number.isFinite), `${what}: not finite`);
    assertClose(`${what} loss`, [loss], [wantLoss], TOL);
    assertClose(`${what} dLogits`, dLogits, want, TOL);
  };
  // Cross-entropy: confidently right and wrong rows, ties at the maximum, and all-equal rows.
  const ceRows: [number[], number][] = [
    [[100, -100, 0], 0],
    [[100, -100, 0], 1],
    [[-50, 50, 0], 1],
    [[50, 50, -100], 0],
    [[-100, -100, -100], 2],
    [[1e-3, 100, -50], 2],
    [[-50, -100, 50], 0],
  ];
  const ceX = Float32Array.from(ceRows.flatMap(([r]) => r));
  const ceT = Uint32Array.from(ceRows, ([, t]) => t);
  // A batch where every row is right by a margin of 50: the loss is ~1.9e-22, not 0.
  const sureX = Float32Array.from({ length: 7 * 2 }, (_, i) => (i % 2 === (i >> 1) % 2 ? 50 : 0));
  const sureT = Uint32Array.from({ length: 7 }, (_, r) => r % 2);
  for (
    const [what, x, targets] of [["ce mixed", ceX, ceT], ["ce confident", sureX, sureT]] as const
  ) {
    const b = targets.length;
    const c = x.length / b;
    const logits = tensorFromArray(gpu, x, [b, c], "logits");
    const t = tensorFromArray(gpu, targets, [b], "targets");
    const [loss, dLogits] = await run(gpu, "ce", logits, t);
    check(what, loss, dLogits, ceLoss(x, targets, c), ceGrad(x, targets, c));
    if (what === "ce confident") assert(loss > 1e-22 && loss < 3e-22, `${loss}`);
  }
  // Binary cross-entropy and MSE on ±50, ±100 with both targets.
  const bx = Float32Array.from([50, -50, 100, -100, 50, -50, 100, -100, 0.25]);
  const by = Float32Array.from([1, 0, 1, 0, 0, 1, 0, 1, 1]);
  const sure = Float32Array.from([50, -50, 50, -50, 50]);
  const sureY = Float32Array.from([1, 0, 1, 0, 1]);
  for (const [what, x, y] of [["bce mixed", bx, by], ["bce confident", sure, sureY]] as const) {
    const logits = tensorFromArray(gpu, x, [x.length, 1], "logits");
    const targets = tensorFromArray(gpu, y, [x.length], "targets");
    const [loss, dLogits] = await run(gpu, "bce", logits, targets);
    check(what, loss, dLogits, bceLoss(x, y), bceGrad(x, y));
    if (what === "bce confident") assert(loss > 1e-22 && loss < 3e-22, `${loss}`);
    const [mLoss, mGrad] = await run(gpu, "mse", logits, targets);
    check(`mse ${what}`, mLoss, mGrad, mseLoss(x, y), mseGrad(x, y));
    logits.destroy();
    targets.destroy();
  }
});

gpuTest("losses are bitwise deterministic", async (gpu) => {
  const b = 4099;
  const c = 3;
  const x = Float32Array.from(randomValues(b * c, 70), (v) => 8 * v);
  const targets = classTargets(b, c, 71);
  const y = Float32Array.from(randomValues(b, 72), (v) => (v + 1) / 2);
  const ceLogits = tensorFromArray(gpu, x, [b, c], "logits");
  const ceTargets = tensorFromArray(gpu, targets, [b], "targets");
  const single = tensorFromArray(gpu, x.slice(0, b), [b, 1], "single logits");
  const soft = tensorFromArray(gpu, y, [b], "soft targets");
  const results = [];
  for (let k = 0; k < 2; k++) {
    results.push([
      await run(gpu, "ce", ceLogits, ceTargets, 3),
      await run(gpu, "bce", single, soft, 3),
      await run(gpu, "mse", single, soft, 3),
    ]);
  }
  assertEquals(results[0], results[1]);
  for (const t of [ceLogits, ceTargets, single, soft]) t.destroy();
});

gpuTest("cross-entropy with a target outside [0, C) gives NaN, not a wild read", async (gpu) => {
  const x = Float32Array.from(randomValues(3 * 4, 80));
  const logits = tensorFromArray(gpu, x, [3, 4], "logits");
  const targets = tensorFromArray(gpu, new Uint32Array([1, 4, 0]), [3], "targets");
  const [loss, dLogits] = await run(gpu, "ce", logits, targets);
  assert(Number.isNaN(loss));
  assert(dLogits.slice(4, 8).every(Number.isNaN));
  const others = [...dLogits.slice(0, 4), ...dLogits.slice(8)];
  const ok = ceGrad(x, new Uint32Array([1, 0, 0]), 4);
  assertClose("valid rows", others, [...ok.slice(0, 4), ...ok.slice(8)].map((v) => v), TOL);
  logits.destroy();
  targets.destroy();
});

Deno.test("loss references: backward matches finite differences of forward", () => {
  const b = 7;
  const c = 5;
  const x = Float64Array.from(randomValues(b * c, 90), (v) => 3 * v);
  const targets = classTargets(b, c, 91);
  const fdCe = finiteDifferences((z) => ceLoss(z, targets, c), x);
  assertClose("cross-entropy", fdCe, ceGrad(x, targets, c), 1e-6);

  const s = Float64Array.from(randomValues(33, 92), (v) => 6 * v);
  const y = Float64Array.from(randomValues(33, 93), (v) => (v + 1) / 2);
  const fdBce = finiteDifferences((z) => bceLoss(z, y), s);
  assertClose("bce", fdBce, bceGrad(s, y), 1e-6);
  const fdMse = finiteDifferences((z) => mseLoss(z, y), s);
  assertClose("mse", fdMse, mseGrad(s, y), 1e-6);
});

gpuTest("loss shape errors name the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const t = (shape: number[], dtype: "f32" | "u32" = "f32", label = "bad") =>
    createTensor(gpu, shape, dtype, label);
  const logits = t([7, 3], "f32", "logits");
  const targets = t([7], "u32", "targets");
  const loss = t([1], "f32", "loss");
  const dLogits = t([7, 3], "f32", "dLogits");
  assertThrows(
    () => softmaxCrossEntropyForward(rec, { logits: t([7]), targets, loss }),
    GpuError,
    'softmaxCrossEntropyForward: logits ("bad")',
  );
  assertThrows(
    () => softmaxCrossEntropyForward(rec, { logits, targets: t([7]), loss }),
    GpuError,
    'softmaxCrossEntropyForward: targets ("bad") is f32',
  );
  assertThrows(
    () => softmaxCrossEntropyForward(rec, { logits, targets: t([6], "u32"), loss }),
    GpuError,
    "softmaxCrossEntropyForward: targets",
  );
  assertThrows(
    () => softmaxCrossEntropyForward(rec, { logits, targets, loss: t([2]) }),
    GpuError,
    "softmaxCrossEntropyForward: loss",
  );
  assertThrows(
    () => softmaxCrossEntropyBackward(rec, { logits, targets: t([7]), dLogits }),
    GpuError,
    'softmaxCrossEntropyBackward: targets ("bad") is f32',
  );
  assertThrows(
    () => softmaxCrossEntropyBackward(rec, { logits, targets, dLogits: t([7, 4]) }),
    GpuError,
    "softmaxCrossEntropyBackward: dLogits",
  );
  assertThrows(
    () => softmaxCrossEntropyForward(rec, { logits: t([0, 3]), targets: t([0], "u32"), loss }),
    GpuError,
    "empty",
  );
  const single = t([7, 1], "f32", "single");
  const y = t([7], "f32", "y");
  for (
    const [name, forward, backward] of [
      ["bceWithLogits", bceWithLogitsForward, bceWithLogitsBackward],
      ["mse", mseForward, mseBackward],
    ] as const
  ) {
    assertThrows(
      () => forward(rec, { logits, targets: y, loss }),
      GpuError,
      `${name}Forward: logits ("logits") has shape [7, 3], expected [B] or [B, 1]`,
    );
    assertThrows(
      () => forward(rec, { logits: single, targets: t([7, 1]), loss }),
      GpuError,
      `${name}Forward: targets ("bad")`,
    );
    assertThrows(
      () => forward(rec, { logits: single, targets, loss }),
      GpuError,
      `${name}Forward: targets ("targets") is u32`,
    );
    assertThrows(
      () => backward(rec, { logits: single, targets: y, dLogits: t([7]) }),
      GpuError,
      `${name}Backward: dLogits ("bad")`,
    );
    assertThrows(
      () => forward(rec, { logits: t([0]), targets: t([0]), loss }),
      GpuError,
      "empty batch",
    );
    assertThrows(
      () => backward(rec, { logits: single, targets: y, dLogits: t([7, 1]), gradScale: NaN }),
      GpuError,
      `${name}Backward: gradScale must be a finite number, got NaN`,
    );
  }
  assertThrows(
    () => softmaxCrossEntropyBackward(rec, { logits, targets, dLogits, gradScale: Infinity }),
    GpuError,
    "softmaxCrossEntropyBackward: gradScale must be a finite number, got Infinity",
  );
  assertEquals(rec.length, 0);
});
