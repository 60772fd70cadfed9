// thinMatmul (kernels/thin_matmul.ts): C = alpha · X·op(W) for outputs up to 16 columns wide,
// against float64, at odd sizes (rows not a multiple of a workgroup's rows, k not a multiple of
// its 64 invocations), both layouts of W, f16 X; bitwise the same on a second run; a grid wider
// than the workgroup limit; bad arguments.

import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, outputTensor, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import { THIN_MAX_N, thinMatmul } from "../kernels/thin_matmul.ts";

interface Case {
  m: number;
  n: number;
  k: number;
  transW: boolean;
  alpha?: number;
  f16?: boolean;
}

/** alpha · x·op(w) in float64; w is [n, k] when transW, else [k, n]. */
function reference(x: ArrayLike<number>, w: ArrayLike<number>, c: Case): Float64Array {
  const out = new Float64Array(c.m * c.n);
  for (let i = 0; i < c.m; i++) {
    for (let j = 0; j < c.n; j++) {
      let s = 0;
      for (let p = 0; p < c.k; p++) {
        s += x[i * c.k + p] * (c.transW ? w[j * c.k + p] : w[p * c.n + j]);
      }
      out[i * c.n + j] = (c.alpha ?? 1) * s;
    }
  }
  return out;
}

/** Runs one case twice; returns both outputs and the float64 reference. */
async function run(gpu: Gpu, c: Case, seed: number) {
  const xs = randomValues(c.m * c.k, seed);
  const xHost = c.f16 ? Float16Array.from(xs) : Float32Array.from(xs);
  const wHost = Float32Array.from(randomValues(c.n * c.k, seed + 1));
  const x = tensorFromArray(gpu, xHost, [c.m, c.k], "x");
  const w = tensorFromArray(gpu, wHost, c.transW ? [c.n, c.k] : [c.k, c.n], "w");
  const outs: Float32Array[] = [];
  for (let i = 0; i < 2; i++) {
    const rec = new Recorder(gpu);
    const out = outputTensor(rec, [c.m, c.n], "c");
    thinMatmul(rec, { x, w, c: out, m: c.m, n: c.n, k: c.k, transW: c.transW, alpha: c.alpha });
    await rec.submit();
    outs.push((await out.download()) as Float32Array);
    out.destroy();
  }
  x.destroy();
  w.destroy();
  // The reference multiplies the values the kernel reads (f16 X rounded as stored).
  return { outs, want: reference(xHost, wHost, c) };
}

gpuTest("thinMatmul: against float64 at odd sizes, both layouts of W, alpha", async (gpu) => {
  const cases: Case[] = [
    { m: 1, n: 1, k: 1, transW: true },
    { m: 37, n: 5, k: 1029, transW: true, alpha: 0.7 },
    { m: 37, n: 5, k: 1029, transW: false },
    { m: 131, n: 8, k: 259, transW: true },
    { m: 131, n: 8, k: 259, transW: false, alpha: -1.3 },
    { m: 19, n: THIN_MAX_N, k: 130, transW: false },
    { m: 6, n: 5, k: 65, transW: false },
  ];
  for (const [i, c] of cases.entries()) {
    const { outs, want } = await run(gpu, c, 100 + 10 * i);
    assertClose(`thinMatmul ${JSON.stringify(c)}`, outs[0], want, 1e-5);
    // A fixed summation order: the second run is bitwise the first.
    assertEquals(outs[1], outs[0], `thinMatmul ${JSON.stringify(c)}: second run`);
  }
});

gpuTest("thinMatmul: f16 X against float64", async (gpu) => {
  assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
  for (
    const c of [
      { m: 29, n: 8, k: 515, transW: true, f16: true },
      { m: 29, n: 8, k: 515, transW: false, f16: true, alpha: 2 },
    ]
  ) {
    const { outs, want } = await run(gpu, c, 300);
    assertClose(`thinMatmul f16 ${JSON.stringify(c)}`, outs[0], want, 1e-5);
  }
});

gpuTest("thinMatmul: more rows than one grid dimension's workgroups", async (gpu) => {
  // 4 workgroups per dimension: 45 rows at 4 per workgroup are a 4×3 grid, one workgroup idle.
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 4 });
  const c: Case = { m: 45, n: 8, k: 70, transW: true };
  const xHost = Float32Array.from(randomValues(c.m * c.k, 500));
  const wHost = Float32Array.from(randomValues(c.n * c.k, 501));
  const x = tensorFromArray(small, xHost, [c.m, c.k], "x");
  const w = tensorFromArray(small, wHost, [c.n, c.k], "w");
  const rec = new Recorder(small);
  const out = outputTensor(rec, [c.m, c.n], "c");
  thinMatmul(rec, { x, w, c: out, m: c.m, n: c.n, k: c.k, transW: true });
  await rec.submit();
  assertClose("thinMatmul 4×3 grid", await out.download(), reference(xHost, wHost, c), 1e-5);
  const tooSmall = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 3 });
  assertThrows(
    () =>
      thinMatmul(new Recorder(tooSmall), { x, w, c: out, m: c.m, n: c.n, k: c.k, transW: true }),
    GpuError,
    "45 rows need more than 3² workgroups",
  );
  for (const t of [x, w, out]) t.destroy();
});

gpuTest("thinMatmul: bad arguments throw a GpuError naming the op and tensor", (gpu) => {
  const x = createTensor(gpu, [6, 10], "f32", "inputs");
  const w = createTensor(gpu, [4, 10], "f32", "lora_A");
  const c = createTensor(gpu, [6, 4], "f32", "hidden");
  const wide = createTensor(gpu, [17, 10], "f32", "wide");
  const rec = new Recorder(gpu);
  const base = { op: "loraForward (hidden)", x, w, c, m: 6, n: 4, k: 10, transW: true };
  try {
    assertThrows(() => thinMatmul(rec, { ...base, k: 9 }), GpuError, `x ("inputs") has 60`);
    assertThrows(() => thinMatmul(rec, { ...base, n: 17, w: wide }), GpuError, "outside 1..16");
    assertThrows(() => thinMatmul(rec, { ...base, c: x }), GpuError, 'c ("inputs") has 60');
    assertThrows(() => thinMatmul(rec, { ...base, alpha: NaN }), GpuError, "alpha must be finite");
    assertThrows(() => thinMatmul(rec, { ...base, m: -1 }), GpuError, "loraForward (hidden): m");
    assertEquals(rec.length, 0);
  } finally {
    for (const t of [x, w, c, wide]) t.destroy();
  }
});
