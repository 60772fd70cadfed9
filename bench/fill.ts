// The simplest memory-bound kernel, `fill` (writes 4 bytes per element), and a whole-tensor
// download (GPU -> host through a staging buffer), at 64 Ki, 1 Mi and 16 Mi float32 elements:
// the floor every other kernel's GB/s should be read against.

import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { createTensor } from "../kernels/tensor.ts";
import { type BenchRow, benchRow, measure, timeOp } from "./timing.ts";

export async function benchFill(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const n of [1 << 16, 1 << 20, 1 << 24]) {
    const t = createTensor(gpu, [n], "f32", "bench");
    const filled = await timeOp(gpu, (rec) => fill(rec, t, 1), reps);
    rows.push(benchRow("fill", { elements: n }, filled, { bytes: 4 * n }));
    // A download waits for its own copy and map, so r of them run back to back.
    const downloaded = await measure(async (r) => {
      const start = performance.now();
      for (let i = 0; i < r; i++) await t.download();
      return (performance.now() - start) / 1000;
    }, reps);
    rows.push(benchRow("download", { elements: n }, downloaded, { bytes: 4 * n }));
    t.destroy();
  }
  return rows;
}
