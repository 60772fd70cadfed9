// kernels/fill.ts: every element of every dtype, odd sizes (an f16 tensor of odd length shares its
// last word with nothing), and the values an integer tensor cannot hold refused, not wrapped.

import { assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type DType, tensorFromArray } from "../kernels/tensor.ts";

gpuTest("fill writes the value into every element, each dtype, odd sizes", async (gpu) => {
  const cases: [DType, number, number][] = [
    ["f32", 37, -2.75],
    ["f16", 37, 0.5],
    ["i32", 5, -7],
    ["u32", 263, 4294967295],
  ];
  for (const [dtype, n, value] of cases) {
    const t = createTensor(gpu, [n], dtype, `t ${dtype}`);
    const rec = new Recorder(gpu);
    fill(rec, t, value);
    await rec.submit();
    assertEquals(Array.from(await t.download()), Array(n).fill(value), dtype);
    t.destroy();
  }
});

gpuTest(
  "fill refuses a value an integer tensor cannot hold, or a float one rounds to ∞",
  async (gpu) => {
    const cases: [DType, number][] = [
      ["i32", 0.5],
      ["i32", 2 ** 31],
      ["u32", -1],
      ["u32", NaN],
      ["f32", 1e40],
      ["f32", -1e39],
      ["f16", 70000],
    ];
    for (const [dtype, value] of cases) {
      const t = createTensor(gpu, [3], dtype, "counts");
      assertThrows(
        () => fill(new Recorder(gpu), t, value),
        GpuError,
        `fill: tensor "counts" is ${dtype}, which cannot hold ${value}`,
      );
      t.destroy();
    }
    // ∞ itself (a mask's -∞, say) and f16's largest are held as they are.
    const h = createTensor(gpu, [3], "f16", "h");
    const rec = new Recorder(gpu);
    fill(rec, h, 65504);
    await rec.submit();
    assertEquals([...await h.download()], [65504, 65504, 65504]);
    fill(rec, h, -Infinity);
    await rec.submit();
    assertEquals([...await h.download()], [-Infinity, -Infinity, -Infinity]);
    h.destroy();
  },
);

gpuTest("upload names host data of another kind (a Float64Array), not as u32", (gpu) => {
  const t = createTensor(gpu, [4], "f32", "x");
  assertThrows(
    () => t.upload(new Float64Array(4) as unknown as Float32Array),
    GpuError,
    "host data must be a Float32Array, Float16Array, Int32Array or Uint32Array, not Float64Array",
  );
  assertThrows(
    () => tensorFromArray(gpu, [1, 2] as unknown as Float32Array, [2], "y"),
    GpuError,
    "not Array",
  );
  t.destroy();
});
