import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { GpuError } from "../kernels/device.ts";
import { add, addInPlace, scale } from "../kernels/add.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { elementwiseKernel, recordElementwise } from "../kernels/elementwise.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// One float32 rounding per element: against the float64 reference the relative error is at most
// 2^-24 ≈ 6e-8 of the result (assertClose's tol 1e-5 also covers sums that cancel to near 0,
// through its mean-magnitude term).

const SHAPES = [[1], [7], [33, 5], [130, 7], [3, 1, 11]];

gpuTest("add, addInPlace and scale match the float64 reference at odd shapes", async (gpu) => {
  for (const [s, shape] of SHAPES.entries()) {
    const n = shape.reduce((p, d) => p * d, 1);
    const as = Float32Array.from(randomValues(n, 3 * s + 1), (v) => 4 * v);
    const bs = Float32Array.from(randomValues(n, 3 * s + 2));
    const a = tensorFromArray(gpu, as, shape, "a");
    const b = tensorFromArray(gpu, bs, shape, "b");
    const sum = createTensor(gpu, shape, "f32", "sum");
    const into = tensorFromArray(gpu, bs, shape, "into");
    const scaled = createTensor(gpu, shape, "f32", "scaled");
    const rec = new Recorder(gpu);
    fill(rec, sum, NaN);
    fill(rec, scaled, NaN);
    add(rec, { a, b, out: sum });
    addInPlace(rec, { x: a, into });
    addInPlace(rec, { x: a, into }); // into = b + 2a
    scale(rec, { x: a, out: scaled, alpha: -0.37 });
    await rec.submit();
    const name = `[${shape}]`;
    assertClose(`add ${name}`, await sum.download(), Array.from(as, (v, i) => v + bs[i]), 1e-5);
    assertClose(
      `addInPlace ${name}`,
      await into.download(),
      Array.from(as, (v, i) => 2 * v + bs[i]),
      1e-5,
    );
    assertClose(`scale ${name}`, await scaled.download(), Array.from(as, (v) => -0.37 * v), 1e-5);
    for (const t of [a, b, sum, into, scaled]) t.destroy();
  }
});

gpuTest("add: more than 65535 workgroups use a 2-D grid and reach every element", async (gpu) => {
  const n = 256 * 65535 + 257;
  if (n * 4 > gpu.limits.maxStorageBufferBindingSize) return;
  const as = new Float32Array(n);
  const bs = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    as[i] = i % 1021;
    bs[i] = 0.5 * (i % 7);
  }
  const a = tensorFromArray(gpu, as, [n], "a");
  const b = tensorFromArray(gpu, bs, [n], "b");
  const out = createTensor(gpu, [n], "f32", "out");
  const rec = new Recorder(gpu);
  fill(rec, out, NaN);
  add(rec, { a, b, out });
  addInPlace(rec, { x: b, into: a });
  await rec.submit();
  const got = await out.download();
  const inPlace = await a.download();
  // Small integers and halves: every sum is exact in float32.
  for (let i = 0; i < n; i++) {
    const want = (i % 1021) + 0.5 * (i % 7);
    if (got[i] !== want || inPlace[i] !== want) {
      assert(false, `element ${i}: add ${got[i]}, addInPlace ${inPlace[i]}, expected ${want}`);
    }
  }
  for (const t of [a, b, out]) t.destroy();
});

gpuTest("add, addInPlace, scale: a grid past the per-dimension limit uses x and y", async (gpu) => {
  // 1037 elements are 5 workgroups of 256: a 3 x 2 grid, one workgroup past the end.
  const n = 1037;
  const as = Float32Array.from(randomValues(n, 41));
  const bs = Float32Array.from(randomValues(n, 42));
  const a = tensorFromArray(gpu, as, [n], "a");
  const b = tensorFromArray(gpu, bs, [n], "b");
  const out = createTensor(gpu, [n], "f32", "out");
  const scaled = createTensor(gpu, [n], "f32", "scaled");
  const rec = new Recorder(withLimits(gpu, { maxComputeWorkgroupsPerDimension: 3 }));
  fill(rec, out, NaN);
  fill(rec, scaled, NaN);
  add(rec, { a, b, out });
  scale(rec, { x: a, out: scaled, alpha: 3 });
  addInPlace(rec, { x: a, into: b });
  await rec.submit();
  const sum = Array.from(as, (v, i) => v + bs[i]);
  assertClose("add", await out.download(), sum, 1e-5);
  assertClose("scale", await scaled.download(), Array.from(as, (v) => 3 * v), 1e-5);
  assertClose("addInPlace", await b.download(), sum, 1e-5);
  for (const t of [a, b, out, scaled]) t.destroy();
});

gpuTest("add: two runs give bitwise-identical outputs", async (gpu) => {
  const n = 1037;
  const a = tensorFromArray(gpu, Float32Array.from(randomValues(n, 1)), [n], "a");
  const b = tensorFromArray(gpu, Float32Array.from(randomValues(n, 2)), [n], "b");
  const runs = [];
  for (let run = 0; run < 2; run++) {
    const out = createTensor(gpu, [n], "f32", "out");
    const into = tensorFromArray(gpu, Float32Array.from(randomValues(n, 3)), [n], "into");
    const scaled = createTensor(gpu, [n], "f32", "scaled");
    const rec = new Recorder(gpu);
    fill(rec, out, NaN);
    fill(rec, scaled, NaN);
    add(rec, { a, b, out });
    addInPlace(rec, { x: a, into });
    scale(rec, { x: b, out: scaled, alpha: 1 / 3 });
    await rec.submit();
    runs.push([await out.download(), await into.download(), await scaled.download()]);
  }
  assertEquals(runs[0], runs[1]);
});

gpuTest("add: wrong shapes are refused naming the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const x = createTensor(gpu, [4, 5], "f32", "x");
  const bad = createTensor(gpu, [5, 4], "f32", "bad");
  assertThrows(() => add(rec, { a: x, b: bad, out: x }), GpuError, 'add: b ("bad")');
  assertThrows(() => add(rec, { a: x, b: x, out: bad }), GpuError, 'add: out ("bad")');
  assertThrows(() => addInPlace(rec, { x: bad, into: x }), GpuError, 'addInPlace: x ("bad")');
  assertThrows(() => scale(rec, { x, out: bad, alpha: 2 }), GpuError, 'scale: out ("bad")');
  assertThrows(
    () => add(rec, { a: x, b: createTensor(gpu, [4, 5], "i32", "ints"), out: x }),
    GpuError,
    "add: b",
  );
  assertThrows(
    () => scale(rec, { x, out: createTensor(gpu, [4, 5], "f32", "y"), alpha: NaN }),
    GpuError,
    "scale: alpha must be a finite number, got NaN",
  );
  assertEquals(rec.length, 0);
});

gpuTest(
  "elementwise: a kernel of one's own takes exactly its tensors and parameters",
  async (gpu) => {
    const axpby = elementwiseKernel({
      inputs: ["x", "y"],
      output: "out",
      params: "alpha: f32, beta: f32",
      body: "out[i] = params.alpha * x[i] + params.beta * y[i];",
    });
    const rec = new Recorder(gpu);
    const x = tensorFromArray(gpu, new Float32Array([1, 2, 3]), [3], "x");
    const y = tensorFromArray(gpu, new Float32Array([10, 20, 30]), [3], "y");
    const out = createTensor(gpu, [3], "f32", "out");
    const cases: [Record<string, Tensor>, number[], string][] = [
      [{ x, y, out }, [2], "axpby: 1 parameters given, the kernel takes alpha, beta"],
      [{ x, y, out }, [], "axpby: 0 parameters given, the kernel takes alpha, beta"],
      [{ x, y, out }, [2, 0.5, 7], "axpby: 3 parameters given"],
      [{ x, y, out }, [2, NaN], "axpby: beta must be a finite number, got NaN"],
      [{ x, out }, [2, 0.5], "axpby: tensor y not given"],
      [{}, [2, 0.5], "axpby: tensor x not given"],
      [{ x, y, out, z: x }, [2, 0.5], "axpby: the kernel has no tensor z (it takes x, y, out)"],
    ];
    for (const [tensors, params, message] of cases) {
      assertThrows(
        () => recordElementwise(rec, "axpby", axpby, tensors, params),
        GpuError,
        message,
      );
    }
    assertEquals(rec.length, 0);
    recordElementwise(rec, "axpby", axpby, { x, y, out }, [2, 0.5]);
    await rec.submit();
    assertEquals([...await out.download()], [7, 14, 21]);
    for (const t of [x, y, out]) t.destroy();
  },
);
