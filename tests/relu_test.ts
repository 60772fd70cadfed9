import { assert, assertEquals, assertThrows } from "./assert.ts";
import { runUnary } from "./elementwise.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { reluBackward, reluForward } from "../kernels/relu.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

// ReLU is exact in float32 (a copy or a zero), so the checks are for equality with the float64
// reference rounded to float32.

function refForward(x: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v) => (v > 0 ? v : 0));
}

/** torch's gradient: dOut where x > 0, else 0 (including at x = 0). */
function refBackward(x: ArrayLike<number>, dOut: ArrayLike<number>): Float32Array {
  return Float32Array.from(x, (v, i) => (v > 0 ? dOut[i] : 0));
}

/** Random values with some exact zeros, ±tiny values and a negative zero mixed in. */
function inputs(n: number, seed: number): Float32Array {
  const x = Float32Array.from(randomValues(n, seed), (v) => 3 * v);
  for (let i = 0; i < n; i += 5) x[i] = [0, -0, 1e-30, -1e-30, 0][(i / 5) % 5];
  return x;
}

/** Maps −0 to 0, which compare unequal under assertEquals (torch gives either). */
const noNegZero = (a: ArrayLike<number>) => Array.from(a, (v) => v + 0);

gpuTest("reluForward and reluBackward match the reference at odd shapes", async (gpu) => {
  for (const [s, shape] of [[1], [7], [33, 5], [130, 7], [3, 1, 11]].entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    const xs = inputs(n, s + 1);
    const dOuts = Float32Array.from(randomValues(n, 50 + s));
    const x = tensorFromArray(gpu, xs, shape, "x");
    const dOut = tensorFromArray(gpu, dOuts, shape, "dOut");
    const out = createTensor(gpu, shape, "f32", "out");
    const dX = createTensor(gpu, shape, "f32", "dX");
    const dXFromOut = createTensor(gpu, shape, "f32", "dX from out");
    const rec = new Recorder(gpu);
    for (const t of [out, dX, dXFromOut]) fill(rec, t, NaN);
    reluForward(rec, { x, out });
    reluBackward(rec, { x, dOut, dX });
    reluBackward(rec, { x: out, dOut, dX: dXFromOut }); // the output gives the same mask
    await rec.submit();
    assertEquals(noNegZero(await out.download()), noNegZero(refForward(xs)), `out [${shape}]`);
    const want = noNegZero(refBackward(xs, dOuts));
    assertEquals(noNegZero(await dX.download()), want, `dX [${shape}]`);
    assertEquals(noNegZero(await dXFromOut.download()), want, `dX from out [${shape}]`);
    for (const t of [x, dOut, out, dX, dXFromOut]) t.destroy();
  }
});

gpuTest("relu: the gradient at exactly 0 is 0", async (gpu) => {
  const x = tensorFromArray(gpu, Float32Array.from([0, -0, 1e-30, -1e-30]), [4], "x");
  const dOut = tensorFromArray(gpu, Float32Array.from([5, 5, 5, 5]), [4], "dOut");
  const dX = createTensor(gpu, [4], "f32", "dX");
  const rec = new Recorder(gpu);
  fill(rec, dX, NaN);
  reluBackward(rec, { x, dOut, dX });
  await rec.submit();
  assertEquals(noNegZero(await dX.download()), [0, 0, 5, 0]);
});

const RELU = { forward: reluForward, backward: reluBackward };

gpuTest("relu: a grid past the per-dimension limit spreads over x and y", async (gpu) => {
  // 1037 elements are 5 workgroups of 256: a 3 x 2 grid, one workgroup past the end.
  const n = 1037;
  const xs = inputs(n, 31);
  const dOuts = Float32Array.from(randomValues(n, 32));
  const { out, dX } = await runUnary(gpu, RELU, xs, dOuts, { maxComputeWorkgroupsPerDimension: 3 });
  assertEquals(noNegZero(out), noNegZero(refForward(xs)));
  assertEquals(noNegZero(dX), noNegZero(refBackward(xs, dOuts)));
});

gpuTest("relu: two runs give bitwise-identical outputs", async (gpu) => {
  const n = 1037;
  const xs = inputs(n, 9);
  const dOuts = Float32Array.from(randomValues(n, 10));
  const runs = [await runUnary(gpu, RELU, xs, dOuts), await runUnary(gpu, RELU, xs, dOuts)];
  assertEquals(runs[0], runs[1]);
  assert(!runs[0].out.some(Number.isNaN));
});

gpuTest("relu: wrong shapes are refused naming the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const x = createTensor(gpu, [4, 5], "f32", "x");
  const bad = createTensor(gpu, [20], "f32", "bad");
  assertThrows(() => reluForward(rec, { x, out: bad }), GpuError, "reluForward: out");
  assertThrows(() => reluBackward(rec, { x, dOut: bad, dX: x }), GpuError, "reluBackward: dOut");
  assertThrows(() => reluBackward(rec, { x, dOut: x, dX: bad }), GpuError, "reluBackward: dX");
  assertThrows(
    () => reluForward(rec, { x: createTensor(gpu, [4, 5], "u32", "u"), out: x }),
    GpuError,
    "reluForward: x",
  );
  assertEquals(rec.length, 0);
});
