// Allocation accounting (Gpu.liveBytes / peakBytes) and the Recorder's submitted-command counts.

import { assertEquals } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder, submittedCounts } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

gpuTest("allocation: tensors count while alive, the peak stays after destroy", (gpu) => {
  const base = gpu.liveBytes;
  gpu.resetPeak();
  assertEquals(gpu.peakBytes, base);
  const a = createTensor(gpu, [7, 33], "f32", "a"); // 924 bytes
  const b = createTensor(gpu, [5], "f16", "b"); // 10 bytes, rounded up to 12
  const c = tensorFromArray(gpu, Int32Array.from([1, 2, 3]), [3], "c"); // 12 bytes
  assertEquals(gpu.liveBytes - base, 924 + 12 + 12);
  assertEquals(gpu.peakBytes - base, 924 + 12 + 12);
  a.destroy();
  assertEquals(gpu.liveBytes - base, 24);
  assertEquals(gpu.peakBytes - base, 948);
  b.destroy();
  c.destroy();
  assertEquals(gpu.liveBytes, base);
  assertEquals(gpu.peakBytes - base, 948);
  gpu.resetPeak();
  assertEquals(gpu.peakBytes, base);
});

gpuTest("allocation: views do not count, destroying twice or via a view frees once", (gpu) => {
  const base = gpu.liveBytes;
  gpu.resetPeak();
  const t = createTensor(gpu, [130], "f32", "t");
  const v1 = t.view(0, [64]);
  const v2 = t.view(256, [33]);
  assertEquals(v1.numel + v2.numel, 97);
  assertEquals(gpu.liveBytes - base, 520);
  v2.destroy(); // frees the whole buffer
  assertEquals(gpu.liveBytes, base);
  t.destroy();
  v1.destroy();
  assertEquals(gpu.liveBytes, base);
  assertEquals(gpu.peakBytes - base, 520);
});

gpuTest("allocation: a download's staging buffer counts only while it lives", async (gpu) => {
  const t = tensorFromArray(gpu, Float32Array.from([1, 2, 3, 4, 5, 6, 7]), [7], "t");
  const base = gpu.liveBytes;
  gpu.resetPeak();
  assertEquals(await t.download(), Float32Array.from([1, 2, 3, 4, 5, 6, 7]));
  assertEquals(gpu.liveBytes, base);
  assertEquals(gpu.peakBytes - base, 28);
  t.destroy();
});

gpuTest("recorder: submittedCounts counts dispatches, copies and submits", async (gpu) => {
  const a = createTensor(gpu, [33], "f32", "a");
  const b = createTensor(gpu, [33], "f32", "b");
  const before = submittedCounts(gpu);
  const rec = new Recorder(gpu);
  fill(rec, a, 1);
  fill(rec, b, 2);
  rec.copy("copy", a, b);
  assertEquals(rec.length, 3);
  await rec.submit();
  await new Recorder(gpu).submit(); // empty: nothing submitted
  const after = submittedCounts(gpu);
  assertEquals(after.submits - before.submits, 1);
  assertEquals(after.dispatches - before.dispatches, 2);
  assertEquals(after.copies - before.copies, 1);
  assertEquals(await b.download(), new Float32Array(33).fill(1));
  a.destroy();
  b.destroy();
});
