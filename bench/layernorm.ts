// Throughput of LayerNorm and GELU, forward and backward, at BERT-like activation shapes.
// GB/s counts the bytes each op must move at least (every input read once, every output written
// once); LayerNorm reads x more than once, so its true traffic is higher.

import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { geluBackward, geluForward } from "../kernels/gelu.ts";
import { layerNormBackward, layerNormForward } from "../kernels/layernorm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";

export interface BenchRow {
  kernel: string;
  shape: string;
  ms: number;
  gflops?: number;
  gbps?: number;
  [k: string]: unknown;
}

/** Ops recorded per submit, to amortise the per-submit overhead (~12 ms on lavapipe). */
const PER_SUBMIT = 5;

/** Median ms per op over `reps` submits of PER_SUBMIT ops each, after 2 warm-up submits. */
async function timeOp(gpu: Gpu, record: (rec: Recorder) => void, reps: number): Promise<number> {
  const rec = new Recorder(gpu);
  const times: number[] = [];
  for (let i = 0; i < reps + 2; i++) {
    for (let k = 0; k < PER_SUBMIT; k++) record(rec);
    const start = performance.now();
    await rec.submit();
    await gpu.device.queue.onSubmittedWorkDone();
    if (i >= 2) times.push((performance.now() - start) / PER_SUBMIT);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

export async function benchLayerNorm(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const [n, h] of [[4096, 256], [1024, 1024]]) {
    const shape = `${n}x${h}`;
    const made: Tensor[] = [];
    const make = (s: number[], label: string) => {
      const t = createTensor(gpu, s, "f32", label);
      made.push(t);
      return t;
    };
    const x = make([n, h], "x");
    const gamma = make([h], "gamma");
    const beta = make([h], "beta");
    const out = make([n, h], "out");
    const mean = make([n], "mean");
    const rstd = make([n], "rstd");
    const dOut = make([n, h], "dOut");
    const dX = make([n, h], "dX");
    const dGamma = make([h], "dGamma");
    const dBeta = make([h], "dBeta");
    const init = new Recorder(gpu);
    fill(init, x, 0.5);
    fill(init, gamma, 1);
    fill(init, beta, 0);
    fill(init, dOut, 0.25);
    layerNormForward(init, { x, gamma, beta, out, mean, rstd, eps: 1e-12 });
    await init.submit();

    const elems = n * h;
    const cases: [string, number, (rec: Recorder) => void][] = [
      [
        "layerNormForward",
        4 * (2 * elems + 2 * h + 2 * n),
        (rec) => layerNormForward(rec, { x, gamma, beta, out, mean, rstd, eps: 1e-12 }),
      ],
      [
        "layerNormBackward",
        4 * (3 * elems + 3 * h + 2 * n),
        (rec) => layerNormBackward(rec, { x, gamma, mean, rstd, dOut, dX, dGamma, dBeta }),
      ],
      ["geluForward", 4 * 2 * elems, (rec) => geluForward(rec, { x, out })],
      ["geluBackward", 4 * 3 * elems, (rec) => geluBackward(rec, { x, dOut, dX })],
    ];
    for (const [kernel, bytes, record] of cases) {
      const ms = await timeOp(gpu, record, reps);
      rows.push({ kernel, shape, ms, gbps: bytes / (ms * 1e6) });
    }
    for (const t of made) t.destroy();
  }
  return rows;
}
