import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues } from "./random.ts";
import { add } from "../kernels/add.ts";
import { addLayerNormBackward, addLayerNormForward } from "../kernels/add_layernorm.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import {
  type DropoutConfig,
  dropoutForward,
  dropoutKeep,
  dropoutScale,
} from "../kernels/dropout.ts";
import { fill } from "../kernels/fill.ts";
import { layerNormForward } from "../kernels/layernorm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// Error bound: 1e-5 (assertClose) everywhere, as for kernels/layernorm.ts, whose reductions the
// fused kernels share: row statistics a few ulps, dGamma/dBeta column sums of at most 64 terms
// per invocation, then of the slices and row blocks. The dropout scale is 1/(1 − p) in float64 here and its float32 rounding on the GPU
// (6e-8 relative).

// ---- float64 reference -------------------------------------------------------------------

/** The keep mask of dropout `d` over n elements (all kept without dropout). */
function keepMask(n: number, d: DropoutConfig | undefined): boolean[] {
  return Array.from(
    { length: n },
    (_, i) => !d || d.p === 0 || dropoutKeep(d.seed, d.stream, i, d.p),
  );
}

interface Forward {
  out: Float64Array;
  xhat: Float64Array;
  rstd: Float64Array;
}

/**
 * out = LayerNorm(mask ⊙ dense / (1 − p) + residual). With `f32Sum` the sum is the float32 that
 * the kernels (fused or not) form, products and sum rounded as on the GPU; the rest in float64.
 */
function refForward(
  dense: ArrayLike<number>,
  residual: ArrayLike<number>,
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  rows: number,
  h: number,
  eps: number,
  d?: DropoutConfig,
  f32Sum = false,
): Forward {
  const keep = keepMask(rows * h, d);
  const scale = d ? 1 / (1 - d.p) : 1;
  const scale32 = d ? dropoutScale(d.p) : 1;
  const out = new Float64Array(rows * h);
  const xhat = new Float64Array(rows * h);
  const rstd = new Float64Array(rows);
  const x = new Float64Array(h);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < h; j++) {
      const i = r * h + j;
      x[j] = f32Sum
        ? Math.fround(Math.fround(keep[i] ? dense[i] * scale32 : 0) + residual[i])
        : (keep[i] ? dense[i] * scale : 0) + residual[i];
    }
    const m = x.reduce((s, v) => s + v, 0) / h;
    const variance = x.reduce((s, v) => s + (v - m) ** 2, 0) / h;
    const rs = 1 / Math.sqrt(variance + eps);
    for (let j = 0; j < h; j++) {
      xhat[r * h + j] = (x[j] - m) * rs;
      out[r * h + j] = xhat[r * h + j] * gamma[j] + beta[j];
    }
    rstd[r] = rs;
  }
  return { out, xhat, rstd };
}

interface Backward {
  dDense: Float64Array;
  dResidual: Float64Array;
  dGamma: Float64Array;
  dBeta: Float64Array;
}

function refBackward(
  dense: ArrayLike<number>,
  residual: ArrayLike<number>,
  gamma: ArrayLike<number>,
  dOut: ArrayLike<number>,
  rows: number,
  h: number,
  eps: number,
  d?: DropoutConfig,
  f32Sum = false,
): Backward {
  const zero = new Float64Array(h);
  const { xhat, rstd } = refForward(dense, residual, gamma, zero, rows, h, eps, d, f32Sum);
  const keep = keepMask(rows * h, d);
  const scale = d ? 1 / (1 - d.p) : 1;
  const dResidual = new Float64Array(rows * h);
  const dDense = new Float64Array(rows * h);
  const dGamma = new Float64Array(h);
  const dBeta = new Float64Array(h);
  for (let r = 0; r < rows; r++) {
    let sg = 0, sgx = 0;
    for (let j = 0; j < h; j++) {
      const i = r * h + j;
      const g = dOut[i] * gamma[j];
      sg += g;
      sgx += g * xhat[i];
      dGamma[j] += dOut[i] * xhat[i];
      dBeta[j] += dOut[i];
    }
    for (let j = 0; j < h; j++) {
      const i = r * h + j;
      const dx = rstd[r] * (dOut[i] * gamma[j] - sg / h - (xhat[i] * sgx) / h);
      dResidual[i] = dx;
      dDense[i] = keep[i] ? dx * scale : 0;
    }
  }
  return { dDense, dResidual, dGamma, dBeta };
}

// ---- inputs ---------------------------------------------------------------------------------

interface Case {
  shape: number[];
  rows: number;
  h: number;
  dense: Float32Array;
  residual: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
  dOut: Float32Array;
}

/** A residual with a row-dependent offset (a large mean for the two-pass statistics), gamma ~1. */
function makeCase(shape: number[], seed: number): Case {
  const h = shape[shape.length - 1];
  const n = shape.reduce((a, b) => a * b, 1);
  const rows = n / h;
  const dense = Float32Array.from(randomValues(n, seed), (v) => 1.5 * v);
  const residual = Float32Array.from(
    randomValues(n, seed + 1),
    (v, i) => v + 3 * Math.sin(Math.floor(i / h)) + 1,
  );
  const gamma = Float32Array.from(randomValues(h, seed + 2), (v) => 1 + 0.5 * v);
  const beta = Float32Array.from(randomValues(h, seed + 3), (v) => 0.3 * v);
  const dOut = Float32Array.from(randomValues(n, seed + 4));
  return { shape, rows, h, dense, residual, gamma, beta, dOut };
}

// Rows 1, 7, 33, 130 and hidden sizes 1, 5, 31, 257 (below and above the 64 that switches from
// 8 to 32 invocations per row), none a multiple of a workgroup's rows.
const SHAPES = [[1, 5], [7, 31], [33, 257], [130, 5], [3, 11, 31], [2, 1], [1, 257], [130, 65]];
const DROPOUTS: (DropoutConfig | undefined)[] = [
  undefined,
  { p: 0.1, seed: 1234567, stream: 33 },
  { p: 0.5, seed: 0xffffffff, stream: 2 },
];

/** Uploads a case; `leading` gives rstd dense's leading shape instead of [rows]. */
function upload(gpu: Gpu, c: Case, leading = false) {
  const statShape = leading ? c.shape.slice(0, -1) : [c.rows];
  return {
    dense: tensorFromArray(gpu, c.dense, c.shape, "dense"),
    residual: tensorFromArray(gpu, c.residual, c.shape, "residual"),
    gamma: tensorFromArray(gpu, c.gamma, [c.h], "gamma"),
    beta: tensorFromArray(gpu, c.beta, [c.h], "beta"),
    dOut: tensorFromArray(gpu, c.dOut, c.shape, "dOut"),
    out: createTensor(gpu, c.shape, "f32", "out"),
    xhat: createTensor(gpu, c.shape, "f32", "xhat"),
    rstd: createTensor(gpu, statShape, "f32", "rstd"),
    dDense: createTensor(gpu, c.shape, "f32", "dDense"),
    dResidual: createTensor(gpu, c.shape, "f32", "dResidual"),
    dGamma: createTensor(gpu, [c.h], "f32", "dGamma"),
    dBeta: createTensor(gpu, [c.h], "f32", "dBeta"),
  };
}
type Tensors = ReturnType<typeof upload>;

function destroyAll(ts: Record<string, Tensor>): void {
  for (const t of Object.values(ts)) t.destroy();
}

/** Records the forward (saving x̂, rstd) and the full backward, every output poisoned first. */
function recordBoth(rec: Recorder, t: Tensors, eps: number, dropout?: DropoutConfig): void {
  for (const o of [t.out, t.xhat, t.rstd, t.dDense, t.dResidual, t.dGamma, t.dBeta]) {
    fill(rec, o, NaN);
  }
  addLayerNormForward(rec, { ...t, eps, dropout });
  addLayerNormBackward(rec, { ...t, dropout });
}

const name = (shape: number[], eps: number, d?: DropoutConfig) =>
  `[${shape}] eps ${eps} p ${d?.p ?? 0}`;

// ---- the reference itself -----------------------------------------------------------------

Deno.test("add_layernorm reference: backward matches central differences of the forward", () => {
  const d = { p: 0.3, seed: 99, stream: 5 };
  for (const [shape, eps, drop] of [[[3, 7], 1e-5, d], [[2, 33], 1e-12, undefined]] as const) {
    const c = makeCase([...shape], 50 + shape[1]);
    const { rows, h } = c;
    const dense = Float64Array.from(c.dense);
    const residual = Float64Array.from(c.residual);
    const gamma = Float64Array.from(c.gamma);
    const beta = Float64Array.from(c.beta);
    // L = Σ dOut · out, whose gradients the backward gives.
    const loss = (dn: Float64Array, rs: Float64Array, g: Float64Array, b: Float64Array) =>
      refForward(dn, rs, g, b, rows, h, eps, drop).out.reduce((s, v, i) => s + v * c.dOut[i], 0);
    const grads = refBackward(dense, residual, gamma, c.dOut, rows, h, eps, drop);
    const n = name([...shape], eps, drop);
    const fd = (f: (v: Float64Array) => number, at: Float64Array) => finiteDifferences(f, at);
    assertClose(
      `dDense ${n}`,
      grads.dDense,
      fd((v) => loss(v, residual, gamma, beta), dense),
      1e-6,
    );
    assertClose(
      `dResidual ${n}`,
      grads.dResidual,
      fd((v) => loss(dense, v, gamma, beta), residual),
      1e-6,
    );
    assertClose(
      `dGamma ${n}`,
      grads.dGamma,
      fd((v) => loss(dense, residual, v, beta), gamma),
      1e-6,
    );
    assertClose(`dBeta ${n}`, grads.dBeta, fd((v) => loss(dense, residual, gamma, v), beta), 1e-6);
    if (drop) assert(grads.dDense.some((v) => v === 0), "some elements are dropped");
  }
});

// ---- the kernels ---------------------------------------------------------------------------

gpuTest("addLayerNormForward matches the float64 reference", async (gpu) => {
  for (const [s, shape] of SHAPES.entries()) {
    for (const [k, dropout] of DROPOUTS.entries()) {
      const eps = k === 1 ? 1e-12 : 1e-5;
      const c = makeCase(shape, 10 * s + k);
      const t = upload(gpu, c, s % 2 === 1);
      const rec = new Recorder(gpu);
      for (const o of [t.out, t.xhat, t.rstd]) fill(rec, o, NaN);
      addLayerNormForward(rec, { ...t, eps, dropout });
      await rec.submit();
      const want = refForward(c.dense, c.residual, c.gamma, c.beta, c.rows, c.h, eps, dropout);
      const n = name(shape, eps, dropout);
      assertClose(`out ${n}`, await t.out.download(), want.out, 1e-5);
      assertClose(`xhat ${n}`, await t.xhat.download(), want.xhat, 1e-5);
      assertClose(`rstd ${n}`, await t.rstd.download(), want.rstd, 1e-5);
      destroyAll(t);
    }
  }
});

gpuTest(
  "addLayerNormForward is bitwise dropoutForward, add and layerNormForward in one launch",
  async (gpu) => {
    for (const [s, shape] of [[33, 257], [7, 31], [130, 5]].entries()) {
      for (const dropout of DROPOUTS) {
        const c = makeCase(shape, 100 + s);
        const t = upload(gpu, c);
        const dropped = createTensor(gpu, shape, "f32", "dropped");
        const sum = createTensor(gpu, shape, "f32", "sum");
        const mean = createTensor(gpu, [c.rows], "f32", "mean");
        const unfusedRstd = createTensor(gpu, [c.rows], "f32", "unfused rstd");
        const unfused = createTensor(gpu, shape, "f32", "unfused out");
        const rec = new Recorder(gpu);
        const d = dropout ?? { p: 0, seed: 0, stream: 0 };
        dropoutForward(rec, { x: t.dense, out: dropped, ...d });
        add(rec, { a: dropped, b: t.residual, out: sum });
        layerNormForward(rec, {
          x: sum,
          gamma: t.gamma,
          beta: t.beta,
          out: unfused,
          mean,
          rstd: unfusedRstd,
          eps: 1e-12,
        });
        // Saving x̂ or not changes nothing in out.
        addLayerNormForward(rec, { ...t, xhat: undefined, rstd: undefined, eps: 1e-12, dropout });
        await rec.submit();
        const n = name(shape, 1e-12, dropout);
        assertEquals(await t.out.download(), await unfused.download(), `out ${n}`);
        fill(rec, t.out, NaN);
        addLayerNormForward(rec, { ...t, eps: 1e-12, dropout });
        await rec.submit();
        assertEquals(await t.out.download(), await unfused.download(), `out ${n}, saving`);
        assertEquals(await t.rstd.download(), await unfusedRstd.download(), `rstd ${n}`);
        destroyAll({ ...t, dropped, sum, mean, unfusedRstd, unfused });
      }
    }
  },
);

gpuTest("addLayerNormBackward matches the float64 reference", async (gpu) => {
  for (const [s, shape] of SHAPES.entries()) {
    for (const [k, dropout] of DROPOUTS.entries()) {
      const eps = k === 2 ? 1e-12 : 1e-5;
      const c = makeCase(shape, 10 * s + k + 5);
      const t = upload(gpu, c, s % 2 === 0);
      const rec = new Recorder(gpu);
      recordBoth(rec, t, eps, dropout);
      await rec.submit();
      const want = refBackward(c.dense, c.residual, c.gamma, c.dOut, c.rows, c.h, eps, dropout);
      const n = name(shape, eps, dropout);
      const dDense = await t.dDense.download();
      assertClose(`dDense ${n}`, dDense, want.dDense, 1e-5);
      assertClose(`dResidual ${n}`, await t.dResidual.download(), want.dResidual, 1e-5);
      assertClose(`dGamma ${n}`, await t.dGamma.download(), want.dGamma, 1e-5);
      assertClose(`dBeta ${n}`, await t.dBeta.download(), want.dBeta, 1e-5);
      // The regenerated mask: exactly the dropped elements have a zero gradient (with h = 1
      // every dX is 0, mask or not).
      if (dropout && c.h > 1) {
        const keep = keepMask(dDense.length, dropout);
        for (let i = 0; i < dDense.length; i++) {
          assert((dDense[i] !== 0) === keep[i], `${n}: element ${i} against the mask`);
        }
      }
      destroyAll(t);
    }
  }
});

gpuTest("add_layernorm keeps its accuracy for a large mean and a small spread", async (gpu) => {
  // Mean 1000, spread ~0.005: the statistics are those of kernels/layernorm.ts (corrected two
  // passes) and the backward works from the saved x̂, so nothing cancels. The float32 sum itself
  // is what the unfused kernels form too (its rounding, 6e-5, is 1% of the spread), so the
  // reference takes that sum and is float64 from there on.
  const rows = 9, h = 130;
  const dropout = { p: 0.1, seed: 8, stream: 1 };
  const c: Case = {
    shape: [rows, h],
    rows,
    h,
    dense: Float32Array.from(randomValues(rows * h, 3), (v) => 0.003 * v),
    residual: Float32Array.from(randomValues(rows * h, 4), (v) => 1000 + 0.004 * v),
    gamma: Float32Array.from(randomValues(h, 5), (v) => 1 + 0.5 * v),
    beta: Float32Array.from(randomValues(h, 6)),
    dOut: Float32Array.from(randomValues(rows * h, 7)),
  };
  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  recordBoth(rec, t, 1e-12, dropout);
  await rec.submit();
  const { dense, residual, gamma, beta, dOut } = c;
  const f = refForward(dense, residual, gamma, beta, rows, h, 1e-12, dropout, true);
  const b = refBackward(dense, residual, gamma, dOut, rows, h, 1e-12, dropout, true);
  assertClose("out", await t.out.download(), f.out, 1e-5);
  assertClose("xhat", await t.xhat.download(), f.xhat, 1e-5);
  assertClose("rstd", await t.rstd.download(), f.rstd, 1e-5);
  assertClose("dDense", await t.dDense.download(), b.dDense, 1e-5);
  assertClose("dResidual", await t.dResidual.download(), b.dResidual, 1e-5);
  assertClose("dGamma", await t.dGamma.download(), b.dGamma, 1e-5);
  assertClose("dBeta", await t.dBeta.download(), b.dBeta, 1e-5);
  destroyAll(t);
});

gpuTest(
  "addLayerNormBackward: accumulate, accumulateResidual and optional outputs",
  async (gpu) => {
    const c = makeCase([37, 33], 77);
    const eps = 1e-5;
    const dropout = { p: 0.2, seed: 5, stream: 9 };
    const want = refBackward(c.dense, c.residual, c.gamma, c.dOut, c.rows, c.h, eps, dropout);
    const prior = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));
    const dResidual0 = prior(c.dense.length, 1);
    const dGamma0 = prior(c.h, 2);
    const dBeta0 = prior(c.h, 3);
    const plus = (a: Float64Array, b: Float32Array) => a.map((v, i) => v + b[i]);

    const t = upload(gpu, c);
    const rec = new Recorder(gpu);
    addLayerNormForward(rec, { ...t, eps, dropout });
    t.dResidual.upload(dResidual0);
    t.dGamma.upload(dGamma0);
    t.dBeta.upload(dBeta0);
    fill(rec, t.dDense, NaN);
    addLayerNormBackward(rec, { ...t, dropout, accumulate: true, accumulateResidual: true });
    await rec.submit();
    // dDense is the fresh gradient through the mask, not the accumulated one.
    assertClose("dDense", await t.dDense.download(), want.dDense, 1e-5);
    assertClose("dResidual added", await t.dResidual.download(), plus(want.dResidual, dResidual0));
    assertClose("dGamma added", await t.dGamma.download(), plus(want.dGamma, dGamma0));
    assertClose("dBeta added", await t.dBeta.download(), plus(want.dBeta, dBeta0));

    // Only dDense: the residual's gradient is left alone, and so are dGamma/dBeta.
    for (const o of [t.dResidual, t.dGamma, t.dBeta]) fill(rec, o, 7);
    fill(rec, t.dDense, NaN);
    addLayerNormBackward(rec, {
      ...t,
      dResidual: undefined,
      dGamma: undefined,
      dBeta: undefined,
      dropout,
    });
    assertEquals(rec.labels.slice(-1), ["addLayerNormBackward dX"]);
    await rec.submit();
    assertClose("dDense alone", await t.dDense.download(), want.dDense, 1e-5);
    for (const o of [t.dResidual, t.dGamma, t.dBeta]) {
      assert((await o.download()).every((v) => v === 7), `${o.label} untouched`);
    }

    // Only dResidual and dBeta, overwriting.
    fill(rec, t.dResidual, NaN);
    fill(rec, t.dBeta, NaN);
    fill(rec, t.dDense, 7);
    addLayerNormBackward(rec, { ...t, dDense: undefined, dGamma: undefined, dropout });
    await rec.submit();
    assertClose("dResidual alone", await t.dResidual.download(), want.dResidual, 1e-5);
    assertClose("dBeta alone", await t.dBeta.download(), want.dBeta, 1e-5);
    assert((await t.dDense.download()).every((v) => v === 7), "dDense untouched");
    assert((await t.dGamma.download()).every((v) => v === 7), "dGamma untouched");

    // Neither row output: only the column sums.
    const before = rec.length;
    addLayerNormBackward(rec, { ...t, dDense: undefined, dResidual: undefined, dropout });
    assertEquals(rec.labels.slice(before), ["addLayerNormBackward dGamma/dBeta"]);
    await rec.submit();
    destroyAll(t);
  },
);

gpuTest("add_layernorm: a grid past the per-dimension limit spreads over x and y", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 7 });
  // [100, 130]: 8 rows per workgroup, 13 workgroups on 7 x 2; [301, 33]: 32 rows per
  // workgroup, 10 workgroups on 5 x 2; [3, 1200]: 19 groups of 64 dGamma/dBeta columns.
  const dropout = { p: 0.25, seed: 3, stream: 4 };
  for (const shape of [[100, 130], [301, 33], [3, 1200]]) {
    const c = makeCase(shape, shape[0]);
    const eps = 1e-5;
    const t = upload(gpu, c);
    const rec = new Recorder(small);
    recordBoth(rec, t, eps, dropout);
    await rec.submit();
    const f = refForward(c.dense, c.residual, c.gamma, c.beta, c.rows, c.h, eps, dropout);
    const b = refBackward(c.dense, c.residual, c.gamma, c.dOut, c.rows, c.h, eps, dropout);
    assertClose(`out [${shape}]`, await t.out.download(), f.out, 1e-5);
    assertClose(`rstd [${shape}]`, await t.rstd.download(), f.rstd, 1e-5);
    assertClose(`dDense [${shape}]`, await t.dDense.download(), b.dDense, 1e-5);
    assertClose(`dResidual [${shape}]`, await t.dResidual.download(), b.dResidual, 1e-5);
    assertClose(`dGamma [${shape}]`, await t.dGamma.download(), b.dGamma, 1e-5);
    assertClose(`dBeta [${shape}]`, await t.dBeta.download(), b.dBeta, 1e-5);
    destroyAll(t);
  }
});

gpuTest(
  "add_layernorm: dGamma and dBeta sum 1537 rows (13 row blocks, the last of one row)",
  async (gpu) => {
    // kernels/layernorm.ts's column sums (from the saved x̂ here): a first launch sums blocks of
    // PARAM_BLOCK_ROWS (128) rows, 4 interleaved slices each, so 1537 rows make 13 blocks, the
    // last of one row; a second adds the blocks. Hidden size 7 (8 invocations per row, 32 rows per row-kernel workgroup: 1537 is
    // not a multiple of it); dropout on, so that dDense has zeros where the mask drops.
    const c = makeCase([1537, 7], 21);
    const eps = 1e-5;
    const dropout = { p: 0.1, seed: 77, stream: 6 };
    const t = upload(gpu, c);
    const rec = new Recorder(gpu);
    recordBoth(rec, t, eps, dropout);
    await rec.submit();
    const b = refBackward(c.dense, c.residual, c.gamma, c.dOut, c.rows, c.h, eps, dropout);
    assertClose("dDense", await t.dDense.download(), b.dDense, 1e-5);
    assertClose("dResidual", await t.dResidual.download(), b.dResidual, 1e-5);
    // 96 or 97 float32 terms per lane (two blocks), then the 16-lane tree.
    assertClose("dGamma", await t.dGamma.download(), b.dGamma, 1e-5);
    assertClose("dBeta", await t.dBeta.download(), b.dBeta, 1e-5);
    destroyAll(t);
  },
);

gpuTest("add_layernorm: two runs give bitwise-identical outputs", async (gpu) => {
  const c = makeCase([130, 257], 9);
  const t = upload(gpu, c);
  const dropout = { p: 0.1, seed: 11, stream: 17 };
  const runs: Float32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    const rec = new Recorder(gpu);
    recordBoth(rec, t, 1e-12, dropout);
    await rec.submit();
    const outs: Float32Array[] = [];
    for (const o of [t.out, t.xhat, t.rstd, t.dDense, t.dResidual, t.dGamma, t.dBeta]) {
      outs.push((await o.download()) as Float32Array);
    }
    runs.push(outs);
  }
  assertEquals(runs[0], runs[1]);
  destroyAll(t);
});

gpuTest("add_layernorm: wrong shapes and settings are refused naming the op and tensor", (gpu) => {
  const c = makeCase([4, 6], 1);
  const t = upload(gpu, c);
  const rec = new Recorder(gpu);
  const eps = 1e-5;
  const wrong = (shape: number[], label = "wrong") => createTensor(gpu, shape, "f32", label);
  const fwd = "addLayerNormForward";
  const bwd = "addLayerNormBackward";
  const refusals: [() => void, string][] = [
    [() => addLayerNormForward(rec, { ...t, residual: wrong([6, 4]), eps }), `${fwd}: residual`],
    [() => addLayerNormForward(rec, { ...t, gamma: wrong([5]), eps }), `${fwd}: gamma`],
    [() => addLayerNormForward(rec, { ...t, beta: wrong([6, 1]), eps }), `${fwd}: beta`],
    [() => addLayerNormForward(rec, { ...t, out: wrong([24]), eps }), `${fwd}: out`],
    [() => addLayerNormForward(rec, { ...t, xhat: wrong([4, 5]), eps }), `${fwd}: xhat`],
    [() => addLayerNormForward(rec, { ...t, rstd: wrong([3]), eps }), `${fwd}: rstd`],
    [() => addLayerNormForward(rec, { ...t, rstd: undefined, eps }), `${fwd}: xhat is given`],
    [
      () =>
        addLayerNormForward(rec, { ...t, dense: createTensor(gpu, [4, 6], "i32", "ints"), eps }),
      `${fwd}: dense ("ints") is i32`,
    ],
    [
      () => addLayerNormForward(rec, { ...t, dense: wrong([4, 0]), eps }),
      `${fwd}: dense ("wrong") has an empty last dimension`,
    ],
    [() => addLayerNormForward(rec, { ...t, eps: -1 }), `${fwd}: eps`],
    [
      () => addLayerNormForward(rec, { ...t, eps, dropout: { p: 1, seed: 0, stream: 0 } }),
      `${fwd}: dropout probability`,
    ],
    [
      () => addLayerNormForward(rec, { ...t, out: t.residual, eps }),
      `${fwd}: out ("residual") shares a GPU buffer with residual`,
    ],
    [() => addLayerNormBackward(rec, { ...t, dOut: wrong([4, 5]) }), `${bwd}: dOut`],
    [() => addLayerNormBackward(rec, { ...t, rstd: wrong([6]) }), `${bwd}: rstd`],
    [() => addLayerNormBackward(rec, { ...t, gamma: wrong([4]) }), `${bwd}: gamma`],
    [() => addLayerNormBackward(rec, { ...t, dDense: wrong([6, 4]) }), `${bwd}: dDense`],
    [() => addLayerNormBackward(rec, { ...t, dResidual: wrong([4, 7]) }), `${bwd}: dResidual`],
    [() => addLayerNormBackward(rec, { ...t, dGamma: wrong([7]) }), `${bwd}: dGamma`],
    [() => addLayerNormBackward(rec, { ...t, dBeta: wrong([4]) }), `${bwd}: dBeta`],
    [
      () => addLayerNormBackward(rec, { ...t, dResidual: t.dDense }),
      `${bwd}: dDense ("dDense") shares a GPU buffer with dResidual`,
    ],
    [
      () => addLayerNormBackward(rec, { ...t, dropout: { p: 0.1, seed: -1, stream: 0 } }),
      `${bwd}: dropout seed`,
    ],
  ];
  for (const [f, message] of refusals) assertThrows(f, GpuError, message);
  assertEquals(rec.length, 0);
  destroyAll(t);
});
