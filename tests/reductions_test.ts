// rowNorms (kernels/row_norm.ts), rowDistances and distance (kernels/distance.ts).

import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { beyondOneBinding, slicedValues } from "./binding_slices.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/device.ts";
import { distance, distancePartialsLength, rowDistances } from "../kernels/distance.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { rowNorms } from "../kernels/row_norm.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// Error bounds. Row reductions: each of 64 threads adds ⌈cols/64⌉ squares in order, then 6 tree
// levels: relative error ≤ (cols/64 + 8) · 2^-24 ≈ 1e-6 for cols = 1037, well inside the brief's
// 1e-5. Total distance, sum of squares: with partials (37 + ⌈n/2^22⌉) · 2^-24 as gradNormClip;
// without partials one workgroup adds ⌈n/4096⌉ chunk sums per thread in order: (26 + n/4096) ·
// 2^-24. The tests assert these sum bounds (plus 2 roundings) on the norm, which errs half as much.
const TOL = 1e-5;
const ROW_SHAPES = [[1, 1], [7, 33], [130, 7], [33, 1037], [3, 130], [70, 1]];

function hostMatrix(shape: number[], seed: number): Float32Array {
  return Float32Array.from(randomValues(shape[0] * shape[1], seed));
}

function refRowDistances(a: ArrayLike<number>, b: ArrayLike<number> | null, shape: number[]) {
  const [rows, cols] = shape;
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) {
      const d = a[r * cols + c] - (b ? b[r * cols + c] : 0);
      s += d * d;
    }
    out[r] = Math.sqrt(s);
  }
  return out;
}

function refDistance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
}

async function poisoned(gpu: Gpu, shape: number[], label: string): Promise<Tensor> {
  const t = createTensor(gpu, shape, "f32", label);
  const rec = new Recorder(gpu);
  fill(rec, t, NaN);
  await rec.submit();
  return t;
}

/**
 * Records `distance` of a and b (with `partials` or without) into a poisoned `out`, checks the
 * number of launches if given, and that the relative error against `expected` is at most
 * bound · 2^-24.
 */
async function checkDistance(
  gpu: Gpu,
  args: { a: Tensor; b: Tensor; partials?: Tensor },
  expected: number,
  bound: number,
  launches?: number,
): Promise<void> {
  const out = await poisoned(gpu, [1], "out");
  const rec = new Recorder(gpu);
  distance(rec, { ...args, out });
  if (launches !== undefined) assertEquals(rec.length, launches);
  await rec.submit();
  const got = (await out.download())[0];
  const err = Math.abs(got - expected) / expected;
  const what = args.partials ? "with" : "without";
  assert(err <= bound * 2 ** -24, `${what} partials: ${got} vs ${expected}`);
  out.destroy();
}

gpuTest("rowNorms: odd shapes match float64", async (gpu) => {
  const rec = new Recorder(gpu);
  for (const [s, shape] of ROW_SHAPES.entries()) {
    const host = hostMatrix(shape, s);
    const x = tensorFromArray(gpu, host, shape, "x");
    const out = await poisoned(gpu, [shape[0]], "norms");
    rowNorms(rec, { x, out });
    assertEquals(rec.length, 1);
    await rec.submit();
    const got = await out.download();
    assertClose(`rowNorms [${shape}]`, got, refRowDistances(host, null, shape), TOL);
    rowNorms(rec, { x, out });
    await rec.submit();
    assertEquals(await out.download(), got, "bitwise identical rerun");
    x.destroy();
    out.destroy();
  }
});

gpuTest("rowDistances: odd shapes match float64", async (gpu) => {
  const rec = new Recorder(gpu);
  for (const [s, shape] of ROW_SHAPES.entries()) {
    const ha = hostMatrix(shape, 10 + s);
    const hb = hostMatrix(shape, 20 + s);
    const a = tensorFromArray(gpu, ha, shape, "a");
    const b = tensorFromArray(gpu, hb, shape, "b");
    const out = await poisoned(gpu, [shape[0]], "dists");
    rowDistances(rec, { a, b, out });
    await rec.submit();
    const got = await out.download();
    assertClose(`rowDistances [${shape}]`, got, refRowDistances(ha, hb, shape), TOL);
    rowDistances(rec, { a, b, out });
    await rec.submit();
    assertEquals(await out.download(), got, "bitwise identical rerun");
    for (const t of [a, b, out]) t.destroy();
  }
});

gpuTest("rowNorms, rowDistances: more rows than one grid row (a 2-D grid)", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const shape = [3, 33]; // one workgroup per row: a 2 × 2 grid
  const ha = hostMatrix(shape, 40), hb = hostMatrix(shape, 41);
  const a = tensorFromArray(small, ha, shape, "a");
  const b = tensorFromArray(small, hb, shape, "b");
  const norms = await poisoned(small, [3], "norms");
  const dists = await poisoned(small, [3], "dists");
  const rec = new Recorder(small);
  rowNorms(rec, { x: a, out: norms });
  rowDistances(rec, { a, b, out: dists });
  await rec.submit();
  assertClose("rowNorms", await norms.download(), refRowDistances(ha, null, shape), TOL);
  assertClose("rowDistances", await dists.download(), refRowDistances(ha, hb, shape), TOL);
  for (const t of [a, b, norms, dists]) t.destroy();
});

gpuTest("rowNorms, rowDistances: views at unaligned offsets, guards untouched", async (gpu) => {
  const shape = [13, 29];
  const n = 13 * 29;
  const hx = Float32Array.from(randomValues(n + 10, 30));
  const arena = tensorFromArray(gpu, hx, [n + 10], "arena");
  const x = arena.view(3 * 4, shape, "x");
  const y = arena.view(7 * 4, shape, "y"); // overlapping read-only views are fine
  const outArena = await poisoned(gpu, [13 + 6], "out arena");
  const out = outArena.view(5 * 4, [13], "out");
  const rec = new Recorder(gpu);
  rowNorms(rec, { x, out });
  await rec.submit();
  let got = await outArena.download();
  assertClose(
    "rowNorms view",
    got.subarray(5, 18),
    refRowDistances(hx.subarray(3), null, shape),
    TOL,
  );
  assert([0, 1, 2, 3, 4, 18].every((i) => Number.isNaN(got[i])), "guards untouched");
  rowDistances(rec, { a: x, b: y, out });
  await rec.submit();
  got = await outArena.download();
  const expected = refRowDistances(hx.subarray(3), hx.subarray(7), shape);
  assertClose("rowDistances view", got.subarray(5, 18), expected, TOL);
  assert([0, 1, 2, 3, 4, 18].every((i) => Number.isNaN(got[i])), "guards untouched");
  arena.destroy();
  outArena.destroy();
});

gpuTest("rowNorms: empty rows have norm 0", async (gpu) => {
  const x = createTensor(gpu, [5, 0], "f32", "x");
  const out = await poisoned(gpu, [5], "out");
  const rec = new Recorder(gpu);
  rowNorms(rec, { x, out });
  await rec.submit();
  assertEquals(Array.from(await out.download()), [0, 0, 0, 0, 0]);
  x.destroy();
  out.destroy();
});

gpuTest("distance: odd shapes with and without partials match float64", async (gpu) => {
  const rec = new Recorder(gpu);
  const shapes = [[1], [7], [33, 1], [130, 7], [1037], [3, 4099], [5, 4099]]; // 3, 5 chunks
  for (const [s, shape] of shapes.entries()) {
    const n = shape.reduce((p, q) => p * q, 1);
    const ha = Float32Array.from(randomValues(n, 40 + s));
    const hb = Float32Array.from(randomValues(n, 50 + s));
    const a = tensorFromArray(gpu, ha, shape, "a");
    const b = tensorFromArray(gpu, hb, shape, "b");
    const expected = refDistance(ha, hb);
    const partials = await poisoned(gpu, [distancePartialsLength(gpu, n)], "partials");
    const results: number[] = [];
    for (const p of [partials, undefined]) {
      for (let rerun = 0; rerun < 2; rerun++) {
        const out = await poisoned(gpu, [1], "out");
        distance(rec, { a, b, partials: p, out });
        assertEquals(rec.length, p ? 2 : 1);
        await rec.submit();
        results.push((await out.download())[0]);
        out.destroy();
      }
    }
    assertClose(`distance [${shape}] with partials`, [results[0]], [expected], TOL);
    assertClose(`distance [${shape}] without`, [results[2]], [expected], TOL);
    assertEquals(results[1], results[0], "bitwise identical rerun with partials");
    assertEquals(results[3], results[2], "bitwise identical rerun without");
    for (const t of [a, b, partials]) t.destroy();
  }
});

gpuTest("distance: θ close to θ₀ over a million elements keeps its precision", async (gpu) => {
  const n = 1_000_003;
  const h0 = Float32Array.from(randomValues(n, 60));
  const step = randomValues(n, 61);
  const h1 = Float32Array.from(h0, (x, i) => x + 1e-4 * step[i]); // fine-tuning-sized moves
  const a = tensorFromArray(gpu, h1, [n], "theta");
  const b = tensorFromArray(gpu, h0, [n], "theta0");
  const partials = await poisoned(gpu, [distancePartialsLength(gpu, n)], "partials");
  const expected = refDistance(h1, h0);
  for (const [p, bound] of [[partials, 40], [undefined, 28 + n / 4096]] as const) {
    await checkDistance(gpu, { a, b, partials: p }, expected, bound);
  }
  for (const t of [a, b, partials]) t.destroy();
});

gpuTest("distance: empty tensors are at distance 0", async (gpu) => {
  const a = createTensor(gpu, [0], "f32", "a");
  const out = await poisoned(gpu, [1], "out");
  const rec = new Recorder(gpu);
  distance(rec, { a, b: a, out });
  await rec.submit();
  assertEquals((await out.download())[0], 0);
  a.destroy();
  out.destroy();
});

gpuTest("reductions: wrong shapes name the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const x = createTensor(gpu, [7, 3], "f32", "x");
  const flat = createTensor(gpu, [21], "f32", "flat");
  const out7 = createTensor(gpu, [7], "f32", "out7");
  const out3 = createTensor(gpu, [3], "f32", "out3");
  const one = createTensor(gpu, [1], "f32", "one");
  assertThrows(
    () => rowNorms(rec, { x: flat, out: out7 }),
    GpuError,
    'rowNorms: x ("flat") has shape [21], expected [*, *]',
  );
  assertThrows(
    () => rowNorms(rec, { x, out: out3 }),
    GpuError,
    'rowNorms: out ("out3") has shape [3], expected [7]',
  );
  assertThrows(
    () => rowDistances(rec, { a: x, b: flat, out: out7 }),
    GpuError,
    'rowDistances: b ("flat") has shape [21], expected [7, 3]',
  );
  assertThrows(
    () => distance(rec, { a: x, b: flat, out: one }),
    GpuError,
    'distance: b ("flat")',
  );
  assertThrows(
    () => distance(rec, { a: x, b: x, out: out3 }),
    GpuError,
    'distance: out ("out3") has shape [3], expected [1]',
  );
  const big = createTensor(gpu, [16385], "f32", "big");
  assertThrows(
    () => distance(rec, { a: big, b: big, partials: one, out: one }),
    GpuError,
    'distance: partials ("one") has 1 elements, 16385 elements need 2',
  );
  assertEquals(rec.length, 0);
  for (const t of [x, flat, out7, out3, one, big]) t.destroy();
});

gpuTest(
  "distance: tensors larger than one storage binding, with and without partials",
  async (gpu) => {
    const n = beyondOneBinding(gpu);
    if (n === null) return;
    const host = slicedValues(n);
    const a = tensorFromArray(gpu, host, [n], "huge a");
    const b = createTensor(gpu, [n], "f32", "huge b");
    const partials = await poisoned(gpu, [distancePartialsLength(gpu, n)], "partials");
    const rec = new Recorder(gpu);
    fill(rec, b, 0.125);
    await rec.submit();
    let s = 0;
    for (let i = 0; i < n; i++) s += (host[i] - 0.125) ** 2;
    const expected = Math.sqrt(s);
    // The second slice's elements are 100× larger, so a lost or doubled slice would show.
    for (
      const [p, launches, bound] of [[partials, 3, 48], [undefined, 2, 28 + n / 4096]] as const
    ) {
      await checkDistance(gpu, { a, b, partials: p }, expected, bound, launches);
    }
    for (const t of [a, b, partials]) t.destroy();
  },
);

gpuTest(
  "rowNorms: a matrix larger than one storage binding is read in blocks of rows",
  async (gpu) => {
    const cols = 1024;
    const n = beyondOneBinding(gpu, cols);
    if (n === null) return;
    const rows = n / cols;
    const rowValue = (r: number) => ((r * 37) % 97 + 1) / 64; // exact in f32, distinct per row
    const host = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) host.fill(rowValue(r), r * cols, (r + 1) * cols);
    const x = tensorFromArray(gpu, host, [rows, cols], "huge x");
    const out = await poisoned(gpu, [rows], "norms");
    const rec = new Recorder(gpu);
    rowNorms(rec, { x, out });
    assertEquals(rec.length, 2);
    await rec.submit();
    const expected = Float64Array.from({ length: rows }, (_, r) => rowValue(r) * Math.sqrt(cols));
    assertClose("huge rowNorms", await out.download(), expected, TOL);
    x.destroy();
    out.destroy();
  },
);
