// Dynamic loss scaling (kernels/loss_scale.ts, the loss-scaled finish of kernels/grad_norm.ts,
// AdamW's skip flag, and the Trainer's precision "f16").
//
// References and bounds. The scale is a power of two, so multiplying by it and dividing by it are
// exact in f32 (no overflow, no subnormals in these values): the scaled kernels must agree BIT
// FOR BIT with the unscaled ones (norm, clip coefficient / S, AdamW's update, and a whole training
// step of the tiny model, whose backward is linear in the loss gradient, so each of its f32 ops
// commutes exactly with a power-of-two factor). The norm itself is also checked against float64
// within grad_norm_test's bound.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { type ReferenceTraining, referenceTraining as fixture } from "./train_fixture.ts";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/device.ts";
import { type AdamwHyper, adamwStep, biasCorrectionTable } from "../kernels/adamw.ts";
import { gradNormClip, gradNormPartialsLength, LOSS_SCALED_NORM } from "../kernels/grad_norm.ts";
import {
  checkLossScaleSettings,
  createLossScaleState,
  LOSS_SCALE_DEFAULTS,
  lossScaleValues,
  type LossScaling,
  scaleByLossScale,
} from "../kernels/loss_scale.ts";
import { Recorder, submittedCounts } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import { AdamW, ADAMW_DEFAULTS } from "../train/optimizer.ts";
import { type StepStats, Trainer, type TrainerOptions } from "../train/trainer.ts";
import {
  readTrainingCheckpoint,
  type TrainingState,
  writeTrainingCheckpoint,
} from "../train/training_checkpoint.ts";

const S16 = 2 ** 16;

/** grad_norm_test's bound on the norm's relative error for n elements. */
function normBound(n: number): number {
  return (37 + Math.ceil(n / 2 ** 22)) * 2 ** -24 / 2 + 2 ** -24;
}

function bits(x: ArrayLike<number>): number[] {
  return Array.from(new Uint32Array(Float32Array.from(x).buffer));
}

gpuTest("scaleByLossScale: x *= S read from the state, views at any offset", async (gpu) => {
  const host = Float32Array.from(randomValues(3 * 7 + 5, 1));
  const buffer = tensorFromArray(gpu, host, [host.length], "dLogits arena");
  const x = buffer.view(5 * 4, [3, 7], "dLogits");
  const stateArena = createTensor(gpu, [9], "f32", "state arena");
  const state = stateArena.view(3 * 4, [4], "state");
  for (const scale of [S16, 3.7]) {
    buffer.upload(host);
    state.upload(Float32Array.from([scale, 5, 6, 7]));
    const rec = new Recorder(gpu);
    scaleByLossScale(rec, { x, state });
    assertEquals(rec.length, 1);
    await rec.submit();
    const got = (await buffer.download()) as Float32Array;
    const s = Math.fround(scale);
    const want = Float32Array.from(host, (v, i) => (i < 5 ? v : Math.fround(v * s)));
    assertEquals(bits(got), bits(want), `scale ${scale}`);
    assertEquals(Array.from(await state.download()), [s, 5, 6, 7], "the state is only read");
  }
  const rec = new Recorder(gpu);
  assertThrows(
    () => scaleByLossScale(rec, { x, state: stateArena }),
    GpuError,
    'scaleByLossScale: loss-scale state ("state arena") has shape [9], expected [4]',
  );
  assertThrows(() => createLossScaleState(gpu, 0), GpuError, "initScale");
  const fresh = createLossScaleState(gpu);
  assertEquals(Array.from(await fresh.download()), [S16, 0, 0, 0]);
  assertEquals(LOSS_SCALE_DEFAULTS, {
    initScale: 65536,
    growthFactor: 2,
    backoffFactor: 0.5,
    growthInterval: 2000,
  });
  for (const t of [buffer, stateArena, fresh]) t.destroy();
});

gpuTest("scaleByLossScale: a 2-D grid scales every element once", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const n = 600; // 3 workgroups of 256: a 2 × 2 grid
  const host = Float32Array.from(randomValues(n, 2));
  const x = tensorFromArray(small, host, [n], "dLogits");
  const state = createLossScaleState(small, 8);
  const rec = new Recorder(small);
  scaleByLossScale(rec, { x, state });
  await rec.submit();
  assertEquals(bits(await x.download()), bits(host.map((v) => 8 * v)));
  for (const t of [x, state]) t.destroy();
});

/** Runs gradNormClip with or without loss scaling; returns `out`. */
async function normOf(
  gpu: Gpu,
  grads: Tensor[],
  maxNorm: number,
  lossScale?: LossScaling,
  kept?: Tensor,
): Promise<Float32Array> {
  const partials = createTensor(gpu, [gradNormPartialsLength(gpu, grads)], "f32", "partials");
  const out = kept ?? createTensor(gpu, [lossScale ? LOSS_SCALED_NORM.length : 2], "f32", "out");
  const rec = new Recorder(gpu);
  gradNormClip(rec, { grads, partials, maxNorm, out, lossScale });
  await rec.submit();
  const values = (await out.download()) as Float32Array;
  partials.destroy();
  if (!kept) out.destroy();
  return values;
}

const SHAPES = [[7], [13, 10], [3, 1, 5471]];

function hostGrads(seed: number): Float32Array[] {
  return SHAPES.map((s, i) =>
    Float32Array.from(randomValues(s.reduce((a, b) => a * b, 1), seed + i), (x) => 0.01 * x)
  );
}

function upload(gpu: Gpu, host: Float32Array[], factor: number): Tensor[] {
  return host.map((h, i) =>
    tensorFromArray(gpu, Float32Array.from(h, (x) => x * factor), SHAPES[i], `g${i}`)
  );
}

gpuTest(
  "gradNormClip with a loss scale: unscaled norm, coef / S, counts, growth every interval",
  async (gpu) => {
    const host = hostGrads(10);
    const n = host.reduce((a, h) => a + h.length, 0);
    const plain = upload(gpu, host, 1);
    const scaled = upload(gpu, host, S16);
    let ref = 0;
    for (const h of host) for (const x of h) ref += x * x;
    ref = Math.sqrt(ref);
    const state = createLossScaleState(gpu, S16);
    const scaling = { state, growthFactor: 2, backoffFactor: 0.5, growthInterval: 3 };
    for (const maxNorm of [0.1 * ref, 0]) {
      state.upload(Float32Array.from([S16, 0, 0, 0]));
      const [norm, coef] = await normOf(gpu, plain, maxNorm);
      for (let k = 1; k <= 3; k++) {
        const out = await normOf(gpu, scaled, maxNorm, scaling);
        assertEquals(bits([out[0]]), bits([norm]), `unscaled norm, maxNorm ${maxNorm}`);
        assert(Math.abs(out[0] - ref) <= normBound(n) * ref, `norm ${out[0]} vs ${ref}`);
        assertEquals(bits([out[1]]), bits([coef / S16]), `coef / S, maxNorm ${maxNorm}`);
        assertEquals(Array.from(out.subarray(2)), [0, S16, 1], "not skipped, the scale used");
        const after = lossScaleValues(await state.download());
        // The third good step in a row grows the scale and restarts the count.
        const want = k < 3
          ? { scale: S16, goodSteps: k, skippedTotal: 0, lastSkipped: false }
          : { scale: 2 * S16, goodSteps: 0, skippedTotal: 0, lastSkipped: false };
        assertEquals(after, want, `step ${k}`);
      }
    }
    // As torch, the scale does not grow past f32's range (2^128 = inf); zero gradients keep
    // every value finite at this scale.
    const zeros = [createTensor(gpu, [5], "f32", "zero grads")];
    state.upload(Float32Array.from([2 ** 127, 0, 0, 0]));
    const oneStep = { ...scaling, growthInterval: 1 };
    const out = await normOf(gpu, zeros, 1, oneStep);
    assertEquals([out[0], out[2], out[3]], [0, 0, 2 ** 127]);
    assertEquals(Array.from(await state.download()), [2 ** 127, 0, 0, 0]);
    for (const t of [...plain, ...scaled, ...zeros, state]) t.destroy();
  },
);

gpuTest(
  "gradNormClip with a loss scale: inf, NaN and overflowing squares skip and back off",
  async (gpu) => {
    const host = hostGrads(20);
    const state = createLossScaleState(gpu, S16);
    const scaling = { state, growthFactor: 2, backoffFactor: 0.5, growthInterval: 3 };
    const cases: [string, number, (o: number) => boolean][] = [
      ["inf", Infinity, (o) => o === Infinity],
      ["NaN", NaN, (o) => Number.isNaN(o)],
      // Finite, but its square (1e40) overflows f32: the sum of squares is inf.
      ["1e20", 1e20, (o) => o === Infinity],
    ];
    let scale = S16;
    state.upload(Float32Array.from([S16, 2, 0, 0])); // two good steps already counted
    for (const [k, [what, value, rawOk]] of cases.entries()) {
      const bad = host.map((h) => h.slice());
      bad[2][1234] = value;
      const grads = upload(gpu, bad, S16 / 2 ** k);
      const out = await normOf(gpu, grads, 1, scaling);
      assert(rawOk(out[0]), `${what}: the raw norm ${out[0]} is logged`);
      assertEquals(Array.from(out.subarray(1)), [0, 1, scale, 0], `${what}: skipped`);
      scale /= 2;
      assertEquals(
        lossScaleValues(await state.download()),
        { scale, goodSteps: 0, skippedTotal: k + 1, lastSkipped: true },
        `${what}: backed off`,
      );
      grads.forEach((t) => t.destroy());
    }
    const good = upload(gpu, host, scale);
    const out = await normOf(gpu, good, 1, scaling);
    assertEquals(out[2], 0);
    assertEquals(lossScaleValues(await state.download()), {
      scale,
      goodSteps: 1,
      skippedTotal: 3,
      lastSkipped: false,
    });
    // An `out` kept from step to step counts the updates made: the skipped step is not one.
    const kept = createTensor(gpu, [LOSS_SCALED_NORM.length], "f32", "kept out");
    const bad = host.map((h) => h.slice());
    bad[0][3] = Infinity;
    const badGrads = upload(gpu, bad, scale);
    const applied = [];
    for (const grads of [good, good, badGrads, good]) {
      applied.push((await normOf(gpu, grads, 1, scaling, kept))[LOSS_SCALED_NORM.applied]);
    }
    assertEquals(applied, [1, 2, 2, 3]);
    [...good, ...badGrads, kept].forEach((t) => t.destroy());
    state.destroy();
  },
);

/** Mid-training p, m, v and S16-scaled gradients of n elements, from seeds seed..seed + 3. */
function adamwInputs(n: number, seed: number) {
  return {
    p: Float32Array.from(randomValues(n, seed)),
    m: Float32Array.from(randomValues(n, seed + 1), (x) => 0.1 * x),
    v: Float32Array.from(randomValues(n, seed + 2), (x) => 0.01 * x * x),
    g: Float32Array.from(randomValues(n, seed + 3), (x) => S16 * x),
  };
}

/** p, m and v after one adamwStep on copies of `x`, its gradient scale `out` (element 1). */
async function adamwOnce(
  gpu: Gpu,
  x: ReturnType<typeof adamwInputs>,
  h: AdamwHyper & { weightDecay: number },
  out: number[],
  more: Partial<AdamwHyper>,
): Promise<Float32Array[]> {
  const n = x.p.length;
  const t = [x.p, x.g, x.m, x.v].map((a, i) => tensorFromArray(gpu, a, [n], `t${i}`));
  const gradScale = tensorFromArray(gpu, Float32Array.from(out), [out.length], "norm out");
  const rec = new Recorder(gpu);
  adamwStep(rec, {
    ...h,
    param: t[0],
    grad: t[1],
    m: t[2],
    v: t[3],
    gradScale,
    gradScaleIndex: 1,
    ...more,
  });
  await rec.submit();
  const got = await Promise.all([t[0], t[2], t[3]].map((a) => a.download()));
  [...t, gradScale].forEach((a) => a.destroy());
  return got as Float32Array[];
}

gpuTest("adamw: a set skip flag leaves p, m and v bitwise unchanged; a clear one does not", async (
  gpu,
) => {
  // 1037 elements: the vec4 kernel and the scalar tail.
  const n = 1037;
  const x = adamwInputs(n, 31);
  const { p: p0, m: m0, v: v0 } = x;
  const h = { lr: 0.01, beta1: 0.9, beta2: 0.98, eps: 1e-6, step: 5, weightDecay: 0.1 };
  const run = async (out: number[], skipIndex?: number) =>
    (await adamwOnce(gpu, x, h, out, { skipIndex })).map(bits);
  const skipped = await run([Infinity, 0, 1, S16], LOSS_SCALED_NORM.skipped);
  assertEquals(skipped, [p0, m0, v0].map(bits), "skipped: untouched");
  const factor = 0.25 / S16;
  const flagged = await run([1, factor, 0, S16], LOSS_SCALED_NORM.skipped);
  const unflagged = await run([1, factor, 0, S16]);
  assertEquals(flagged, unflagged, "a clear flag: the same update as without one");
  assert(flagged[0].some((b, i) => b !== bits(p0)[i]), "the clear-flag step moved p");
  const rec = new Recorder(gpu);
  const t = tensorFromArray(gpu, p0, [n], "p");
  assertThrows(
    () => adamwStep(rec, { ...h, param: t, grad: t, m: t, v: t, gradScale: t, skipIndex: n }),
    GpuError,
    "skipIndex",
  );
  assertThrows(
    () => adamwStep(rec, { ...h, param: t, grad: t, m: t, v: t, skipIndex: 0 }),
    GpuError,
    "adamwStep: skipIndex 0 needs a gradScale tensor",
  );
  t.destroy();
});

gpuTest("adamw: an update count behind `step` takes the count's bias correction", async (gpu) => {
  // As torch under GradScaler: two of five steps skipped leave state["step"] at 3, so the fifth
  // step's update is corrected for t = 3 (the host's lr stays the fifth step's).
  const n = 1037;
  const x = adamwInputs(n, 41);
  const { p: p0, g: g0, m: m0, v: v0 } = x;
  const h = { lr: 0.01, beta1: 0.9, beta2: 0.98, eps: 1e-6, step: 5, weightDecay: 0.1 };
  const factor = 0.25 / S16;
  const table = tensorFromArray(gpu, biasCorrectionTable(h.beta1, h.beta2, 8), [16], "table");
  const run = (applied?: number) =>
    adamwOnce(gpu, x, h, [1, factor, 0, S16, applied ?? 0], {
      skipIndex: LOSS_SCALED_NORM.skipped,
      ...(applied === undefined
        ? {}
        : { appliedIndex: LOSS_SCALED_NORM.applied, biasCorrections: table }),
    });
  const uncounted = await run();
  assertEquals((await run(5)).map(bits), uncounted.map(bits), "count = step: the same bits");
  const [p, m, v] = await run(3);
  // The float64 replica with t = 3.
  const bc1 = 1 - h.beta1 ** 3, bc2Sqrt = Math.sqrt(1 - h.beta2 ** 3);
  let worst = 0, scaleOf = 0;
  for (let i = 0; i < n; i++) {
    const g = g0[i] * Math.fround(factor);
    const mi = h.beta1 * m0[i] + (1 - h.beta1) * g;
    const vi = h.beta2 * v0[i] + (1 - h.beta2) * g * g;
    const pi = p0[i] * (1 - h.lr * h.weightDecay) -
      (h.lr / bc1) * mi / (Math.sqrt(vi) / bc2Sqrt + h.eps);
    // A few f32 roundings of the terms (m's may cancel).
    const mTerms = Math.abs(h.beta1 * m0[i]) + Math.abs((1 - h.beta1) * g);
    assert(Math.abs(m[i] - mi) <= 1e-6 * mTerms, `m[${i}] ${m[i]} vs ${mi}`);
    assert(Math.abs(v[i] - vi) <= 1e-6 * vi, `v[${i}] ${v[i]} vs ${vi}`);
    worst = Math.max(worst, Math.abs((p[i] - p0[i]) - (pi - p0[i])));
    scaleOf = Math.max(scaleOf, Math.abs(pi - p0[i]));
  }
  assert(worst <= 1e-5 * scaleOf, `displacement off by ${worst} of ${scaleOf}`);
  assert(p.some((x, i) => x !== uncounted[0][i]), "t = 3 moved p otherwise than t = 5");
  // A table, a skip flag and room for the step are required.
  const rec = new Recorder(gpu);
  const t = tensorFromArray(gpu, p0, [n], "p");
  const norm = tensorFromArray(gpu, new Float32Array(5), [5], "out");
  const base = { ...h, param: t, grad: t, m: t, v: t, gradScale: norm, skipIndex: 2 };
  assertThrows(
    () => adamwStep(rec, { ...base, appliedIndex: 4 }),
    GpuError,
    "adamwStep: appliedIndex 4 needs a biasCorrections table",
  );
  assertThrows(
    () =>
      adamwStep(rec, { ...base, skipIndex: undefined, appliedIndex: 4, biasCorrections: table }),
    GpuError,
    "needs a gradScale and a skipIndex",
  );
  assertThrows(
    () => adamwStep(rec, { ...base, step: 9, appliedIndex: 4, biasCorrections: table }),
    GpuError,
    'biasCorrections ("table") has 16 elements, step 9 needs 18',
  );
  [t, norm, table].forEach((x) => x.destroy());
});

gpuTest(
  "AdamW with loss scaling: the table grows past 1024 steps; resumeAt; destroy frees all",
  async (
    gpu,
  ) => {
    const n = 37;
    const p = tensorFromArray(gpu, Float32Array.from(randomValues(n, 51)), [n], "p");
    const g = tensorFromArray(
      gpu,
      Float32Array.from(randomValues(n, 52), (x) => S16 * x),
      [n],
      "g",
    );
    const state = createLossScaleState(gpu, S16);
    const { initScale: _, ...policy } = LOSS_SCALE_DEFAULTS;
    const lossScale = { state, ...policy };
    const make = () =>
      new AdamW(gpu, [{ name: "p", param: p, grad: g, decay: true }], ADAMW_DEFAULTS, {
        lossScale,
      });
    const step = async (opt: AdamW) => {
      const rec = new Recorder(gpu);
      opt.record(rec, 1e-3);
      await rec.submit();
    };
    // The same launches once before measuring: the recorder's shared uniform buffer is sized.
    const warm = make();
    await step(warm);
    warm.resumeAt(1100);
    await step(warm);
    warm.destroy();
    const before = gpu.liveBytes;
    const opt = make();
    await step(opt);
    assertEquals([opt.step, await opt.appliedSteps()], [1, 1]);
    // Past the first table's 1024 steps, two updates behind (two skips).
    opt.resumeAt(1100, 1098);
    await step(opt);
    assertEquals([opt.step, await opt.appliedSteps()], [1101, 1099]);
    opt.destroy();
    assertEquals(gpu.liveBytes, before, "every table freed");
    assertThrows(
      () => opt.resumeAt(3, 4),
      Error,
      "AdamW.resumeAt: 4 updates is not a count in [0, 3]",
    );
    const plain = new AdamW(gpu, [{ name: "p", param: p, grad: g, decay: true }], ADAMW_DEFAULTS);
    assertThrows(() => plain.resumeAt(3, 2), Error, "without loss scaling no step is skipped");
    plain.resumeAt(3);
    assertEquals(await plain.appliedSteps(), 3);
    plain.destroy();
    [p, g, state].forEach((t) => t.destroy());
  },
);

// ---------------------------------------------------------------------------------------------
// The Trainer: loss scaling on f32 activations must train exactly as without it (the scale is a
// power of two); precision "f16" (f16 activations, scaling on) must train close to f32; and a
// non-finite step must leave everything untouched.

const ALL = { head: true, backbone: "all", peft: false } as const;

async function snapshot(trainer: Trainer): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const [name, t] of trainer.trainableParameters()) out.set(name, bits(await t.download()));
  for (const [name, { m, v }] of trainer.optimizer!.moments()) {
    out.set(`m ${name}`, bits(await m.download()));
    out.set(`v ${name}`, bits(await v.download()));
  }
  return out;
}

/** The f32 values of `bits`' patterns. */
function floats(bits: number[]): Float32Array {
  return new Float32Array(Uint32Array.from(bits).buffer);
}

/** Throws naming the first tensor whose bits differ (a deep-equal diff of these is too slow). */
function assertSameBits(
  actual: Map<string, number[]>,
  expected: Map<string, number[]>,
  what: string,
): void {
  assertEquals([...actual.keys()], [...expected.keys()], `${what}: tensors`);
  for (const [name, want] of expected) {
    const got = actual.get(name)!;
    const differ = want.filter((w, i) => got[i] !== w).length;
    if (differ > 0) {
      throw new Error(`${what}: ${name}: ${differ} of ${want.length} elements differ`);
    }
  }
}

/** Trains `steps` steps at lr 1e-3; returns the stats and every parameter and moment's bits. */
async function train(
  gpu: Gpu,
  f: ReferenceTraining,
  extra: Partial<TrainerOptions>,
): Promise<
  { stats: StepStats[]; before: Map<string, number[]>; after: Map<string, number[]> }
> {
  const trainer = new Trainer(gpu, { ...f.options, ...extra });
  try {
    await f.load(trainer);
    trainer.beginStage(ALL, f.adamw);
    const before = await snapshot(trainer);
    for (const [k, batch] of f.batches.entries()) await trainer.step(batch, 1e-3, k);
    return { stats: await trainer.takeStats(), before, after: await snapshot(trainer) };
  } finally {
    trainer.destroy();
  }
}

gpuTest("Trainer loss scaling in f32: the same parameters as without, bit for bit", async (gpu) => {
  const f = await fixture();
  try {
    const base = await train(gpu, f, {});
    // Growth every 2 steps: the third step runs at 2^17.
    const scaled = await train(gpu, f, { lossScaling: true, lossScale: { growthInterval: 2 } });
    assertEquals(base.stats.map((s) => s.lossScale), base.stats.map(() => undefined));
    assertEquals(scaled.stats.map((s) => s.lossScale), [S16, S16, 2 * S16]);
    assertEquals(scaled.stats.map((s) => s.skipped), [false, false, false]);
    assertEquals(
      bits(scaled.stats.map((s) => s.loss)),
      bits(base.stats.map((s) => s.loss)),
      "losses",
    );
    assertEquals(
      bits(scaled.stats.map((s) => s.gradNorm)),
      bits(base.stats.map((s) => s.gradNorm)),
      "unscaled norms",
    );
    assert(base.stats.every((s) => s.gradNorm > f.adamw.maxGradNorm), "clipping is active");
    assertSameBits(scaled.after, base.after, "f16 vs f32 parameters and moments");
  } finally {
    f.close();
  }
});

gpuTest(
  "Trainer: steps handed to the GPU a layer at a time are bit for bit the same",
  async (gpu) => {
    const f = await fixture();
    try {
      const counted = async (flushEvery: number) => {
        const before = submittedCounts(gpu).submits;
        const r = await train(gpu, f, { flushEvery });
        return { ...r, submits: submittedCounts(gpu).submits - before };
      };
      const whole = await counted(Infinity);
      const parted = await counted(1); // a part after every layer, forward and backward
      const extra = f.batches.length * 2 * (f.options.config.numLayers - 1);
      assert(parted.submits >= whole.submits + extra, `${parted.submits} vs ${whole.submits}`);
      for (const key of ["loss", "gradNorm"] as const) {
        assertEquals(
          bits(parted.stats.map((s) => s[key])),
          bits(whole.stats.map((s) => s[key])),
          key,
        );
      }
      assertSameBits(parted.after, whole.after, "parameters and moments");
      const halfWhole = await train(gpu, f, { precision: "f16", flushEvery: Infinity });
      const halfParted = await train(gpu, f, { precision: "f16", flushEvery: 1 });
      assertSameBits(halfParted.after, halfWhole.after, "f16: parameters and moments");
    } finally {
      f.close();
    }
  },
);

gpuTest("Trainer precision f16: three steps close to f32, none skipped", async (gpu) => {
  const f = await fixture();
  try {
    const base = await train(gpu, f, {});
    const half = await train(gpu, f, { precision: "f16" });
    assertEquals(half.stats.map((s) => s.skipped), [false, false, false]);
    assertEquals(half.stats.map((s) => s.lossScale), [S16, S16, S16]);
    // Measured on lavapipe: losses within 1.6e-4 relative of f32's, gradient norms 2.8e-4, and
    // the three steps' parameter updates 2.1% apart (norm of the difference over the f32
    // update's norm; Adam's normalised update amplifies the noise of near-zero gradients, so
    // single elements differ by up to 3.5e-3 after three steps of about 1e-3 each).
    for (const [i, s] of half.stats.entries()) {
      const b = base.stats[i];
      const lossErr = Math.abs(s.loss - b.loss) / Math.abs(b.loss);
      const normErr = Math.abs(s.gradNorm - b.gradNorm) / b.gradNorm;
      assert(lossErr <= 2e-3, `step ${i}: loss ${s.loss} vs f32 ${b.loss}`);
      assert(normErr <= 5e-3, `step ${i}: gradient norm ${s.gradNorm} vs f32 ${b.gradNorm}`);
    }
    // Parameters: the f16 run's update against the f32 run's, as one vector over all tensors.
    let diff = 0, update = 0;
    for (const [name, want] of base.after) {
      if (name.startsWith("m ") || name.startsWith("v ")) continue;
      const a = new Float32Array(Uint32Array.from(half.after.get(name)!).buffer);
      const e = new Float32Array(Uint32Array.from(want).buffer);
      const b = new Float32Array(Uint32Array.from(base.before.get(name)!).buffer);
      for (let i = 0; i < e.length; i++) {
        diff += (a[i] - e[i]) ** 2;
        update += (e[i] - b[i]) ** 2;
      }
    }
    const rel = Math.sqrt(diff / update);
    assert(rel <= 0.1, `parameter updates: ${rel} of the f32 update's norm apart`);
    assert(rel > 0, "f16 trained bitwise as f32: the f16 path did not run");
  } finally {
    f.close();
  }
});

gpuTest(
  "Trainer precision f16: a non-finite step is skipped, the state survives stages and checkpoints",
  async (gpu) => {
    const f = await fixture();
    const trainer = new Trainer(gpu, { ...f.options, precision: "f16" });
    const dir = await Deno.makeTempDir();
    try {
      await f.load(trainer);
      trainer.beginStage(ALL, f.adamw);
      const state = trainer.lossScaleState!;
      await trainer.step(f.batches[0], 1e-3, 0);
      const before = await snapshot(trainer);
      // A huge finite scale: the scaled gradients' squares overflow. Then an infinite one.
      for (const [k, scale] of [3e38, Infinity].entries()) {
        state.upload(Float32Array.from([scale, 7, k, 0]));
        await trainer.step(f.batches[1], 1e-3, 1 + k);
        const [stats] = await trainer.takeStats().then((s) => s.slice(-1));
        assertEquals(stats.skipped, true, `scale ${scale}`);
        assertEquals(stats.lossScale, Math.fround(scale));
        assert(!Number.isFinite(stats.gradNorm), `logged norm ${stats.gradNorm}`);
        assertSameBits(await snapshot(trainer), before, `scale ${scale}: nothing may move`);
        assertEquals(await trainer.readLossScale(), {
          scale: Math.fround(scale) / 2,
          goodSteps: 0,
          skippedTotal: k + 1,
          lastSkipped: true,
        });
      }
      assertEquals(trainer.optimizer!.step, 3, "skipped steps still count on the host");
      assertEquals(await trainer.optimizer!.appliedSteps(), 1, "...but not as updates");

      // Back to a sane scale: the next step trains again.
      trainer.restoreLossScale(Float32Array.from([S16, 0, 2, 1]));
      await trainer.step(f.batches[2], 1e-3, 3);
      const [good] = (await trainer.takeStats()).slice(-1);
      assertEquals([good.skipped, good.lossScale], [false, S16]);
      assert(Number.isFinite(good.gradNorm));
      const moved = await snapshot(trainer);
      assert([...moved].some(([name, b]) => b.join() !== before.get(name)!.join()), "moved");
      const now = { scale: S16, goodSteps: 1, skippedTotal: 2, lastSkipped: false };
      assertEquals(await trainer.readLossScale(), now);
      assertEquals(await trainer.optimizer!.appliedSteps(), 2);

      // The same two updates without the skips between them (as torch's, whose skipped
      // optimizer.step() leaves state["step"] alone): m and v bit for bit, the parameters within
      // a rounding of the step size (t = 2's bias correction divides on the GPU here, on the host
      // there).
      const plain = new Trainer(gpu, { ...f.options, precision: "f16" });
      try {
        await f.load(plain);
        plain.beginStage(ALL, f.adamw);
        await plain.step(f.batches[0], 1e-3, 0);
        await plain.step(f.batches[2], 1e-3, 3);
        const want = await snapshot(plain);
        assertEquals([...moved.keys()], [...want.keys()]);
        for (const [name, w] of want) {
          const got = moved.get(name)!;
          if (name.startsWith("m ") || name.startsWith("v ")) {
            assertEquals(got.filter((b, i) => b !== w[i]).length, 0, `${name}: bit for bit`);
            continue;
          }
          const [a, b, p0] = [got, w, before.get(name)!].map(floats);
          const moves = b.reduce((x, y, i) => Math.max(x, Math.abs(y - p0[i])), 0);
          const off = a.reduce((x, y, i) => Math.max(x, Math.abs(y - b[i])), 0);
          assert(off <= 1e-5 * moves, `${name}: off by ${off} of a ${moves} update`);
        }
      } finally {
        plain.destroy();
      }

      // A new stage's optimizer shares the state.
      trainer.beginStage({ head: true, backbone: "none", peft: false }, f.adamw);
      assert(trainer.optimizer!.lossScale!.state === state);
      assertEquals(await trainer.readLossScale(), now);

      // Checkpoints carry the state; an f32 checkpoint carries none.
      const info: TrainingState = {
        stage: 0,
        stageStep: 1,
        step: 1,
        adamStep: 1,
        adamApplied: 1,
        best: {},
        last: null,
        logLines: 0,
      };
      const path = `${dir}/checkpoint.safetensors`;
      const params = trainer.headParameters();
      await writeTrainingCheckpoint(path, info, {
        params,
        moments: trainer.optimizer!.moments(),
        lossScale: trainer.lossScaleState,
      });
      const loaded = (await readTrainingCheckpoint(path))!;
      assertEquals(Array.from(loaded.lossScale!), [S16, 1, 2, 0]);
      state.upload(Float32Array.from([1, 1, 1, 1]));
      trainer.restoreLossScale(loaded.lossScale);
      assertEquals(await trainer.readLossScale(), now);
      assertThrows(() => trainer.restoreLossScale(null), Error, "needs a loss-scale state");
      await writeTrainingCheckpoint(path, info, { params, moments: new Map() });
      assertEquals((await readTrainingCheckpoint(path))!.lossScale, null);
    } finally {
      trainer.destroy();
      f.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test("loss-scale settings: out of range is refused, an interval past f32's exact counts too", () => {
  // The good-step count is an f32 on the GPU: from 2^24 on it stops counting, and the scale would
  // never grow again.
  checkLossScaleSettings("t", { growthInterval: 2 ** 24, initScale: 1, growthFactor: 2 });
  for (
    const [bad, what] of [
      [{ growthInterval: 2 ** 24 + 1 }, "growthInterval (an integer in [1, 2^24])"],
      [{ growthInterval: 0 }, "growthInterval"],
      [
        { initScale: Infinity },
        "initScale (> 0, at most f32's largest, 3.4e38) is out of range (Infinity)",
      ],
      [{ growthFactor: NaN }, "growthFactor (finite, > 1) is out of range (NaN)"],
      // Finite in float64, ∞ as the GPU's f32: every step would be skipped.
      [
        { initScale: 1e39 },
        "initScale (> 0, at most f32's largest, 3.4e38) is out of range (1e+39)",
      ],
      [{ growthFactor: 1 }, "growthFactor"],
      [{ backoffFactor: 1 }, "backoffFactor"],
      [{ backoffFactor: "0.5" }, 'loss-scale backoffFactor is "0.5", not a number'],
      [{ growthFactor: "2" }, 'loss-scale growthFactor is "2", not a number'],
    ] as const
  ) {
    assertThrows(
      () => checkLossScaleSettings("t", bad as Record<string, unknown>),
      GpuError,
      what,
    );
  }
});

gpuTest(
  "Trainer f16Math: three steps close to f32, none skipped, bitwise repeatable",
  async (gpu) => {
    const f = await fixture();
    try {
      const base = await train(gpu, f, {});
      const half = await train(gpu, f, { precision: "f16" });
      const math = await train(gpu, f, { precision: "f16", f16Math: true });
      const again = await train(gpu, f, { precision: "f16", f16Math: true });
      assertSameBits(again.after, math.after, "f16Math twice: parameters and moments");
      assertEquals(math.stats.map((s) => s.skipped), [false, false, false]);
      // Measured on lavapipe: losses within 6.8e-5, 7.8e-4, 3.5e-4 relative of f32's, gradient
      // norms 4.3e-5, 1.1e-3, 1.0e-2 (the third after two updates, which Adam's normalised steps
      // make of the products' f16 rounding; f16 storage alone stays within 2.8e-4).
      for (const [i, s] of math.stats.entries()) {
        const b = base.stats[i];
        const lossErr = Math.abs(s.loss - b.loss) / Math.abs(b.loss);
        const normErr = Math.abs(s.gradNorm - b.gradNorm) / b.gradNorm;
        assert(lossErr <= 2e-3, `step ${i}: loss ${s.loss} vs f32 ${b.loss}`);
        assert(normErr <= 2e-2, `step ${i}: gradient norm ${s.gradNorm} vs f32 ${b.gradNorm}`);
      }
      let differ = 0;
      for (const [name, want] of half.after) {
        const got = math.after.get(name)!;
        for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) differ++;
      }
      assert(differ > 0, "f16Math trained bitwise as f16: its kernels did not run");
    } finally {
      f.close();
    }
  },
);
