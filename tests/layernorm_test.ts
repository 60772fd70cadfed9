import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import {
  layerNormBackward,
  layerNormForward,
  layerNormParamGrads,
  PARAM_BLOCK_ROWS,
} from "../kernels/layernorm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// Error bound: 1e-5 (assertClose) everywhere. The row statistics are two-pass sums of at most
// h/256 terms per invocation plus an 8-level tree, so their float32 error is a few ulps; the
// column sums of dGamma/dBeta add at most 64 terms per slice in order, then 4 slices, and from
// 2·PARAM_BLOCK_ROWS rows on the blocks' sums, a quarter of them per slice, likewise.

// ---- float64 reference -------------------------------------------------------------------

interface Forward {
  out: Float64Array;
  mean: Float64Array;
  rstd: Float64Array;
}

function refForward(
  x: ArrayLike<number>,
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  rows: number,
  h: number,
  eps: number,
): Forward {
  const out = new Float64Array(rows * h);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let j = 0; j < h; j++) s += x[r * h + j];
    const m = s / h;
    let q = 0;
    for (let j = 0; j < h; j++) q += (x[r * h + j] - m) ** 2;
    const rs = 1 / Math.sqrt(q / h + eps);
    for (let j = 0; j < h; j++) out[r * h + j] = (x[r * h + j] - m) * rs * gamma[j] + beta[j];
    mean[r] = m;
    rstd[r] = rs;
  }
  return { out, mean, rstd };
}

interface Backward {
  dX: Float64Array;
  dGamma: Float64Array;
  dBeta: Float64Array;
}

function refBackward(
  x: ArrayLike<number>,
  gamma: ArrayLike<number>,
  dOut: ArrayLike<number>,
  rows: number,
  h: number,
  eps: number,
): Backward {
  const { mean, rstd } = refForward(x, gamma, new Float64Array(h), rows, h, eps);
  const dX = new Float64Array(rows * h);
  const dGamma = new Float64Array(h);
  const dBeta = new Float64Array(h);
  for (let r = 0; r < rows; r++) {
    let sg = 0;
    let sgx = 0;
    for (let j = 0; j < h; j++) {
      const i = r * h + j;
      const xhat = (x[i] - mean[r]) * rstd[r];
      const g = dOut[i] * gamma[j];
      sg += g;
      sgx += g * xhat;
      dGamma[j] += dOut[i] * xhat;
      dBeta[j] += dOut[i];
    }
    for (let j = 0; j < h; j++) {
      const i = r * h + j;
      const xhat = (x[i] - mean[r]) * rstd[r];
      dX[i] = rstd[r] * (dOut[i] * gamma[j] - sg / h - (xhat * sgx) / h);
    }
  }
  return { dX, dGamma, dBeta };
}

// ---- inputs ---------------------------------------------------------------------------------

interface Case {
  shape: number[];
  rows: number;
  h: number;
  x: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
  dOut: Float32Array;
}

/** x with a row-dependent offset (so that E[x²] − E[x]² would cancel), gamma near 1. */
function makeCase(shape: number[], seed: number): Case {
  const h = shape[shape.length - 1];
  const n = shape.reduce((a, b) => a * b, 1);
  const rows = n / h;
  const noise = randomValues(n, seed);
  const x = Float32Array.from(noise, (v, i) => 2 * v + 3 * Math.sin(Math.floor(i / h)) + 1);
  const gamma = Float32Array.from(randomValues(h, seed + 1), (v) => 1 + 0.5 * v);
  const beta = Float32Array.from(randomValues(h, seed + 2), (v) => 0.3 * v);
  const dOut = Float32Array.from(randomValues(n, seed + 3));
  return { shape, rows, h, x, gamma, beta, dOut };
}

const SHAPES = [[1, 1], [5, 1], [7, 33], [130, 7], [3, 5, 130], [2, 1024], [33], [2, 1537]];
const EPS = [1e-12, 1e-5];

/** Uploads a case; `leading` gives mean/rstd x's leading shape instead of [rows]. */
function upload(gpu: Gpu, c: Case, leading = false) {
  const statShape = leading ? c.shape.slice(0, -1) : [c.rows];
  return {
    x: tensorFromArray(gpu, c.x, c.shape, "x"),
    gamma: tensorFromArray(gpu, c.gamma, [c.h], "gamma"),
    beta: tensorFromArray(gpu, c.beta, [c.h], "beta"),
    dOut: tensorFromArray(gpu, c.dOut, c.shape, "dOut"),
    out: createTensor(gpu, c.shape, "f32", "out"),
    mean: createTensor(gpu, statShape, "f32", "mean"),
    rstd: createTensor(gpu, statShape, "f32", "rstd"),
    dX: createTensor(gpu, c.shape, "f32", "dX"),
    dGamma: createTensor(gpu, [c.h], "f32", "dGamma"),
    dBeta: createTensor(gpu, [c.h], "f32", "dBeta"),
  };
}

function destroyAll(ts: Record<string, Tensor>): void {
  for (const t of Object.values(ts)) t.destroy();
}

// ---- the reference itself -----------------------------------------------------------------

Deno.test("layernorm reference: backward matches central differences of the forward", () => {
  for (const [shape, eps] of [[[3, 7], 1e-5], [[2, 33], 1e-12], [[4, 1], 1e-5]] as const) {
    const c = makeCase([...shape], 40 + shape[1]);
    const { rows, h } = c;
    const x = Float64Array.from(c.x);
    const gamma = Float64Array.from(c.gamma);
    const beta = Float64Array.from(c.beta);
    // L = Σ dOut · LayerNorm(x), whose gradients the backward gives.
    const loss = (x: Float64Array, gamma: Float64Array, beta: Float64Array) =>
      refForward(x, gamma, beta, rows, h, eps).out.reduce((s, v, i) => s + v * c.dOut[i], 0);
    const grads = refBackward(x, gamma, c.dOut, rows, h, eps);
    const fdX = finiteDifferences((v) => loss(v, gamma, beta), x);
    const fdGamma = finiteDifferences((v) => loss(x, v, beta), gamma);
    const fdBeta = finiteDifferences((v) => loss(x, gamma, v), beta);
    // With h = 1 every gradient but dBeta is 0 (exactly, and to ~1e-10 by differences).
    const tol = h === 1 ? 1e-4 : 1e-6;
    assertClose(`dX [${shape}]`, grads.dX, fdX, tol);
    assertClose(`dGamma [${shape}]`, grads.dGamma, fdGamma, tol);
    assertClose(`dBeta [${shape}]`, grads.dBeta, fdBeta, 1e-6);
    if (h === 1) assert(grads.dX.every((v) => v === 0) && grads.dGamma.every((v) => v === 0));
  }
});

// ---- the kernels ---------------------------------------------------------------------------

gpuTest("layerNormForward matches the float64 reference", async (gpu) => {
  for (const [s, shape] of SHAPES.entries()) {
    for (const eps of EPS) {
      const c = makeCase(shape, 10 * s);
      const t = upload(gpu, c, s % 2 === 1);
      const rec = new Recorder(gpu);
      for (const o of [t.out, t.mean, t.rstd]) fill(rec, o, NaN);
      layerNormForward(rec, { ...t, eps });
      await rec.submit();
      const want = refForward(c.x, c.gamma, c.beta, c.rows, c.h, eps);
      const name = `[${shape}] eps ${eps}`;
      assertClose(`out ${name}`, await t.out.download(), want.out, 1e-5);
      assertClose(`mean ${name}`, await t.mean.download(), want.mean, 1e-5);
      assertClose(`rstd ${name}`, await t.rstd.download(), want.rstd, 1e-5);
      destroyAll(t);
    }
  }
});

gpuTest("layernorm keeps its accuracy for a large mean and a small spread", async (gpu) => {
  // Mean 1000, standard deviation ~0.003: E[x²] − E[x]² would lose every digit, and even the
  // float32 mean is uncertain by ~1% of the spread (its ulp is 6e-5). The corrected two-pass
  // scheme keeps out, rstd and dX within 1e-5 all the same.
  const rows = 9;
  const h = 130;
  const x = Float32Array.from(randomValues(rows * h, 3), (v) => 1000 + 0.005 * v);
  const gamma = Float32Array.from(randomValues(h, 4), (v) => 1 + 0.5 * v);
  const beta = Float32Array.from(randomValues(h, 5));
  const dOut = Float32Array.from(randomValues(rows * h, 6));
  const c: Case = { shape: [rows, h], rows, h, x, gamma, beta, dOut };
  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  for (const o of [t.out, t.mean, t.rstd, t.dX, t.dBeta]) fill(rec, o, NaN);
  layerNormForward(rec, { ...t, eps: 1e-12 });
  layerNormBackward(rec, { ...t, dGamma: undefined });
  await rec.submit();
  const f = refForward(x, gamma, beta, rows, h, 1e-12);
  const b = refBackward(x, gamma, dOut, rows, h, 1e-12);
  assertClose("out", await t.out.download(), f.out, 1e-5);
  assertClose("mean", await t.mean.download(), f.mean, 1e-5);
  assertClose("rstd", await t.rstd.download(), f.rstd, 1e-5);
  assertClose("dX", await t.dX.download(), b.dX, 1e-5);
  assertClose("dBeta", await t.dBeta.download(), b.dBeta, 1e-5);
  destroyAll(t);
});

gpuTest("layernorm: the saved mean is within an ulp for a large mean", async (gpu) => {
  // The first pass's float32 mean can be more than an ulp of 1000 off; the saved one must carry
  // the second pass's correction, as dGamma's column sums use x − mean as saved.
  const rows = 64;
  const h = 130;
  const c = makeCase([rows, h], 7);
  c.x = Float32Array.from(randomValues(rows * h, 3), (v) => 1000 + 0.005 * v);
  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  for (const o of [t.out, t.mean, t.rstd]) fill(rec, o, NaN);
  layerNormForward(rec, { ...t, eps: 1e-12 });
  await rec.submit();
  const want = refForward(c.x, c.gamma, c.beta, rows, h, 1e-12).mean;
  const got = await t.mean.download();
  const ulp = 2 ** -14; // of values in [512, 1024)
  for (let r = 0; r < rows; r++) {
    assert(Math.abs(got[r] - want[r]) <= ulp, `row ${r}: mean ${got[r]}, expected ${want[r]}`);
  }
  destroyAll(t);
});

gpuTest("layerNormBackward matches the float64 reference", async (gpu) => {
  for (const [s, shape] of SHAPES.entries()) {
    for (const eps of EPS) {
      const c = makeCase(shape, 10 * s + 1);
      const t = upload(gpu, c, s % 2 === 0);
      const rec = new Recorder(gpu);
      for (const o of [t.dX, t.dGamma, t.dBeta]) fill(rec, o, NaN);
      layerNormForward(rec, { ...t, eps });
      layerNormBackward(rec, t);
      await rec.submit();
      const want = refBackward(c.x, c.gamma, c.dOut, c.rows, c.h, eps);
      const name = `[${shape}] eps ${eps}`;
      // With h = 1 the exact dX and dGamma are 0 while float32 gives x − mean = 0 exactly too.
      assertClose(`dX ${name}`, await t.dX.download(), want.dX, 1e-5);
      assertClose(`dGamma ${name}`, await t.dGamma.download(), want.dGamma, 1e-5);
      assertClose(`dBeta ${name}`, await t.dBeta.download(), want.dBeta, 1e-5);
      destroyAll(t);
    }
  }
});

gpuTest("layerNormBackward: accumulate, accumulateDX and optional dGamma/dBeta", async (gpu) => {
  const c = makeCase([37, 33], 77);
  const eps = 1e-5;
  const want = refBackward(c.x, c.gamma, c.dOut, c.rows, c.h, eps);
  const prior = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));
  const dX0 = prior(c.x.length, 1);
  const dGamma0 = prior(c.h, 2);
  const dBeta0 = prior(c.h, 3);
  const plus = (a: Float64Array, b: Float32Array) => a.map((v, i) => v + b[i]);

  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  layerNormForward(rec, { ...t, eps });
  t.dX.upload(dX0);
  t.dGamma.upload(dGamma0);
  t.dBeta.upload(dBeta0);
  layerNormBackward(rec, { ...t, accumulate: true, accumulateDX: true });
  await rec.submit();
  assertClose("dX accumulated", await t.dX.download(), plus(want.dX, dX0), 1e-5);
  assertClose("dGamma accumulated", await t.dGamma.download(), plus(want.dGamma, dGamma0), 1e-5);
  assertClose("dBeta accumulated", await t.dBeta.download(), plus(want.dBeta, dBeta0), 1e-5);

  // Only dGamma, overwriting; dBeta is left alone.
  fill(rec, t.dGamma, NaN);
  fill(rec, t.dX, NaN);
  fill(rec, t.dBeta, 7);
  layerNormBackward(rec, { ...t, dBeta: undefined });
  await rec.submit();
  assertClose("dX", await t.dX.download(), want.dX, 1e-5);
  assertClose("dGamma alone", await t.dGamma.download(), want.dGamma, 1e-5);
  assert((await t.dBeta.download()).every((v) => v === 7), "dBeta untouched");

  // Only dBeta, accumulating into it.
  fill(rec, t.dGamma, 7);
  layerNormBackward(rec, { ...t, dGamma: undefined, accumulate: true });
  await rec.submit();
  assertClose("dBeta alone", await t.dBeta.download(), want.dBeta.map((v) => v + 7), 1e-5);
  assert((await t.dGamma.download()).every((v) => v === 7), "dGamma untouched");

  // Neither: a single dX launch.
  layerNormBackward(rec, { ...t, dGamma: undefined, dBeta: undefined });
  assertEquals(rec.labels, ["layerNormBackward dX"]);
  await rec.submit();
  destroyAll(t);
});

gpuTest("layernorm: a grid past the per-dimension limit spreads over x and y", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 7 });
  assertEquals(small.limits.maxComputeWorkgroupsPerDimension, 7);
  // [100, 130]: 8 rows per workgroup, 13 workgroups on a 7 x 2 grid (one past the end);
  // [301, 33]: 32 rows per workgroup, 10 workgroups on 5 x 2, and dGamma/dBeta in two launches
  // (3 blocks of rows); [3, 1200]: 19 groups of 64 dGamma/dBeta columns on 7 x 3.
  for (const shape of [[100, 130], [301, 33], [3, 1200]]) {
    const c = makeCase(shape, shape[0]);
    const eps = 1e-5;
    const t = upload(gpu, c);
    const rec = new Recorder(small);
    for (const o of [t.out, t.mean, t.rstd, t.dX, t.dGamma, t.dBeta]) fill(rec, o, NaN);
    layerNormForward(rec, { ...t, eps });
    layerNormBackward(rec, t);
    await rec.submit();
    const f = refForward(c.x, c.gamma, c.beta, c.rows, c.h, eps);
    const b = refBackward(c.x, c.gamma, c.dOut, c.rows, c.h, eps);
    assertClose(`out [${shape}]`, await t.out.download(), f.out, 1e-5);
    assertClose(`mean [${shape}]`, await t.mean.download(), f.mean, 1e-5);
    assertClose(`rstd [${shape}]`, await t.rstd.download(), f.rstd, 1e-5);
    assertClose(`dX [${shape}]`, await t.dX.download(), b.dX, 1e-5);
    assertClose(`dGamma [${shape}]`, await t.dGamma.download(), b.dGamma, 1e-5);
    assertClose(`dBeta [${shape}]`, await t.dBeta.download(), b.dBeta, 1e-5);
    destroyAll(t);
  }
});

gpuTest("layernorm: dGamma and dBeta sum 20001 rows", async (gpu) => {
  const c = makeCase([20001, 33], 6);
  const eps = 1e-12;
  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  for (const o of [t.dX, t.dGamma, t.dBeta]) fill(rec, o, NaN);
  layerNormForward(rec, { ...t, eps });
  layerNormBackward(rec, t);
  await rec.submit();
  const b = refBackward(c.x, c.gamma, c.dOut, c.rows, c.h, eps);
  assertClose("dX", await t.dX.download(), b.dX, 1e-5);
  // Two launches: 157 blocks of 128 rows (32 terms per slice), then 39 or 40 blocks per slice.
  assertClose("dGamma", await t.dGamma.download(), b.dGamma, 1e-5);
  assertClose("dBeta", await t.dBeta.download(), b.dBeta, 1e-5);
  destroyAll(t);
});

// ---- layerNormParamGrads: one launch and two --------------------------------------------

/** Inputs of layerNormParamGrads: dOut, x with a mean and rstd per row, and a saved x̂. */
function paramCase(rows: number, h: number, seed: number) {
  const x = Float32Array.from(randomValues(rows * h, seed), (v, i) => 2 * v + Math.sin(i));
  const mean = Float32Array.from(randomValues(rows, seed + 1), (v) => 0.5 * v);
  const rstd = Float32Array.from(randomValues(rows, seed + 2), (v) => 1.5 + v);
  const xhat = Float32Array.from(randomValues(rows * h, seed + 3), (v) => 2 * v);
  const dOut = Float32Array.from(randomValues(rows * h, seed + 4));
  return { x, mean, rstd, xhat, dOut };
}

/** Σ_rows dOut · x̂ and Σ_rows dOut in float64, x̂ = (x − mean) · rstd or the given one. */
function refParamGrads(
  c: ReturnType<typeof paramCase>,
  rows: number,
  h: number,
  savedXhat: boolean,
): { dGamma: Float64Array; dBeta: Float64Array } {
  const dGamma = new Float64Array(h);
  const dBeta = new Float64Array(h);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < h; j++) {
      const i = r * h + j;
      const xhat = savedXhat ? c.xhat[i] : (c.x[i] - c.mean[r]) * c.rstd[r];
      dGamma[j] += c.dOut[i] * xhat;
      dBeta[j] += c.dOut[i];
    }
  }
  return { dGamma, dBeta };
}

gpuTest("layerNormParamGrads: one launch and two, at sizes off the tiles", async (gpu) => {
  // Below 2·PARAM_BLOCK_ROWS rows one launch; from there on a launch per block of rows into a
  // workspace, then one over the blocks. 2·B + 29 rows: 3 blocks, the last of 29 rows (not a
  // multiple of the 4 slices or of the 8-row unrolled batches); 2·B: exactly 2 blocks. 70 and
  // 1030 columns: the last group of 64 columns partial. Both sources (x with mean and rstd, or a
  // saved x̂), both outputs, accumulated onto priors, dGamma alone and dBeta alone.
  const B = PARAM_BLOCK_ROWS;
  const cases = [[2 * B + 29, 70], [2 * B + 29, 1030], [2 * B, 70], [2 * B - 1, 70], [37, 1030]];
  for (const [s, [rows, h]] of cases.entries()) {
    const c = paramCase(rows, h, 500 + 10 * s);
    const ts = {
      x: tensorFromArray(gpu, c.x, [rows, h], "x"),
      mean: tensorFromArray(gpu, c.mean, [rows], "mean"),
      rstd: tensorFromArray(gpu, c.rstd, [rows], "rstd"),
      xhat: tensorFromArray(gpu, c.xhat, [rows, h], "xhat"),
      dOut: tensorFromArray(gpu, c.dOut, [rows, h], "dOut"),
      dGamma: createTensor(gpu, [h], "f32", "dGamma"),
      dBeta: createTensor(gpu, [h], "f32", "dBeta"),
    };
    const launches = rows < 2 * B
      ? ["T dGamma/dBeta"]
      : ["T dGamma/dBeta blocks", "T dGamma/dBeta"];
    const dGamma0 = Float32Array.from(randomValues(h, 600 + s));
    const dBeta0 = Float32Array.from(randomValues(h, 700 + s));
    const plus = (a: Float64Array, b: Float32Array) => a.map((v, i) => v + b[i]);
    for (const savedXhat of [false, true]) {
      const name = `[${rows}, ${h}]${savedXhat ? " from x̂" : ""}`;
      const source = savedXhat ? { xhat: ts.xhat } : { x: ts.x, mean: ts.mean, rstd: ts.rstd };
      const want = refParamGrads(c, rows, h, savedXhat);
      const common = { source, dOut: ts.dOut, rows, h };
      const rec = new Recorder(gpu);
      const run = async (args: { dGamma?: Tensor; dBeta?: Tensor; accumulate: boolean }) => {
        const before = rec.length;
        layerNormParamGrads(rec, "T", { ...common, ...args });
        assertEquals(rec.labels.slice(before), launches);
        await rec.submit();
      };

      // Both, accumulated onto what was there.
      ts.dGamma.upload(dGamma0);
      ts.dBeta.upload(dBeta0);
      await run({ dGamma: ts.dGamma, dBeta: ts.dBeta, accumulate: true });
      assertClose(
        `dGamma ${name} accumulated`,
        await ts.dGamma.download(),
        plus(want.dGamma, dGamma0),
      );
      assertClose(`dBeta ${name} accumulated`, await ts.dBeta.download(), plus(want.dBeta, dBeta0));

      // dGamma alone, overwriting; dBeta left alone.
      fill(rec, ts.dGamma, NaN);
      fill(rec, ts.dBeta, 7);
      await run({ dGamma: ts.dGamma, accumulate: false });
      assertClose(`dGamma ${name} alone`, await ts.dGamma.download(), want.dGamma);
      assert((await ts.dBeta.download()).every((v) => v === 7), `dBeta ${name} untouched`);

      // dBeta alone, accumulated; dGamma left alone.
      fill(rec, ts.dGamma, 7);
      ts.dBeta.upload(dBeta0);
      await run({ dBeta: ts.dBeta, accumulate: true });
      assertClose(`dBeta ${name} alone`, await ts.dBeta.download(), plus(want.dBeta, dBeta0));
      assert((await ts.dGamma.download()).every((v) => v === 7), `dGamma ${name} untouched`);

      // Both, overwriting, twice: the second call's blocks do not add onto the first's (the
      // workspace is overwritten), and the sums are bitwise the same.
      const got: Float32Array[] = [];
      for (let again = 0; again < 2; again++) {
        fill(rec, ts.dGamma, NaN);
        fill(rec, ts.dBeta, NaN);
        await run({ dGamma: ts.dGamma, dBeta: ts.dBeta, accumulate: false });
        got.push(
          await ts.dGamma.download() as Float32Array,
          await ts.dBeta.download() as Float32Array,
        );
      }
      assertClose(`dGamma ${name}`, got[0], want.dGamma);
      assertClose(`dBeta ${name}`, got[1], want.dBeta);
      assertEquals(got.slice(2), got.slice(0, 2), `${name}: a second run is bitwise the first`);
    }
    destroyAll(ts);
  }
});

gpuTest("layerNormParamGrads: two launches on a grid past the per-dimension limit", async (gpu) => {
  // 2·B + 29 rows of 1030: 17 column groups × 3 blocks = 51 workgroups on 7 x 8 (five past the
  // end) for the blocks, then 17 on 6 x 3 over them.
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 7 });
  const rows = 2 * PARAM_BLOCK_ROWS + 29, h = 1030;
  const c = paramCase(rows, h, 800);
  const want = refParamGrads(c, rows, h, false);
  const ts = {
    x: tensorFromArray(gpu, c.x, [rows, h], "x"),
    mean: tensorFromArray(gpu, c.mean, [rows], "mean"),
    rstd: tensorFromArray(gpu, c.rstd, [rows], "rstd"),
    dOut: tensorFromArray(gpu, c.dOut, [rows, h], "dOut"),
    dGamma: createTensor(gpu, [h], "f32", "dGamma"),
    dBeta: createTensor(gpu, [h], "f32", "dBeta"),
  };
  const rec = new Recorder(small);
  fill(rec, ts.dGamma, NaN);
  fill(rec, ts.dBeta, NaN);
  const { x, mean, rstd, dOut, dGamma, dBeta } = ts;
  layerNormParamGrads(rec, "T", {
    source: { x, mean, rstd },
    dOut,
    dGamma,
    dBeta,
    rows,
    h,
    accumulate: false,
  });
  await rec.submit();
  assertClose("dGamma", await dGamma.download(), want.dGamma);
  assertClose("dBeta", await dBeta.download(), want.dBeta);
  destroyAll(ts);
});

gpuTest("layernorm: two runs give bitwise-identical outputs", async (gpu) => {
  const c = makeCase([130, 257], 9);
  const t = upload(gpu, c);
  const runs: Float32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    const rec = new Recorder(gpu);
    for (const o of [t.out, t.mean, t.rstd, t.dX, t.dGamma, t.dBeta]) fill(rec, o, NaN);
    layerNormForward(rec, { ...t, eps: 1e-12 });
    layerNormBackward(rec, t);
    await rec.submit();
    const outs: Float32Array[] = [];
    for (const o of [t.out, t.mean, t.rstd, t.dX, t.dGamma, t.dBeta]) {
      outs.push((await o.download()) as Float32Array);
    }
    runs.push(outs);
  }
  assertEquals(runs[0], runs[1]);
  destroyAll(t);
});

gpuTest("layernorm: wrong shapes are refused naming the op and the tensor", (gpu) => {
  const c = makeCase([4, 6], 1);
  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  const eps = 1e-5;
  const wrong = (shape: number[], label = "wrong") => createTensor(gpu, shape, "f32", label);
  const fwd = "layerNormForward";
  const bwd = "layerNormBackward";
  assertThrows(
    () => layerNormForward(rec, { ...t, gamma: wrong([5]), eps }),
    GpuError,
    `${fwd}: gamma`,
  );
  assertThrows(
    () => layerNormForward(rec, { ...t, beta: wrong([6, 1]), eps }),
    GpuError,
    `${fwd}: beta`,
  );
  assertThrows(
    () => layerNormForward(rec, { ...t, out: wrong([6, 4]), eps }),
    GpuError,
    `${fwd}: out`,
  );
  assertThrows(
    () => layerNormForward(rec, { ...t, mean: wrong([5]), eps }),
    GpuError,
    `${fwd}: mean`,
  );
  assertThrows(
    () => layerNormForward(rec, { ...t, rstd: wrong([4, 1]), eps }),
    GpuError,
    `${fwd}: rstd`,
  );
  assertThrows(
    () => layerNormForward(rec, { ...t, x: createTensor(gpu, [4, 6], "i32", "ints"), eps }),
    GpuError,
    `${fwd}: x`,
  );
  assertThrows(() => layerNormForward(rec, { ...t, eps: NaN }), GpuError, `${fwd}: eps`);
  // In place: refused at the launch, not as WebGPU's usage conflict at the submit.
  assertThrows(
    () => layerNormForward(rec, { ...t, out: t.x, eps }),
    GpuError,
    `${fwd}: out ("${t.x.label}") shares a GPU buffer with x ("${t.x.label}")`,
  );
  assertThrows(
    () => layerNormBackward(rec, { ...t, dX: t.dOut }),
    GpuError,
    `${bwd}: dX ("${t.dOut.label}") shares a GPU buffer with dOut ("${t.dOut.label}")`,
  );
  assertThrows(
    () => layerNormBackward(rec, { ...t, dOut: wrong([4, 5]) }),
    GpuError,
    `${bwd}: dOut`,
  );
  assertThrows(() => layerNormBackward(rec, { ...t, dX: wrong([24]) }), GpuError, `${bwd}: dX`);
  assertThrows(
    () => layerNormBackward(rec, { ...t, dGamma: wrong([4]) }),
    GpuError,
    `${bwd}: dGamma`,
  );
  assertThrows(
    () => layerNormBackward(rec, { ...t, dBeta: wrong([7]) }),
    GpuError,
    `${bwd}: dBeta`,
  );
  assertThrows(() => layerNormBackward(rec, { ...t, rstd: wrong([3]) }), GpuError, `${bwd}: rstd`);
  assertThrows(
    () => layerNormForward(rec, { ...t, x: wrong([4, 0]), eps }),
    GpuError,
    `${fwd}: x ("wrong") has an empty last dimension`,
  );
  assertEquals(rec.length, 0);
  destroyAll(t);
});
