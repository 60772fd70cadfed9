// GEMM throughput at the linear-layer shapes of a BERT-mini (hidden 256, intermediate 1024):
// the forward product and the two backward products (dX, dW), through the linear launchers.

import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { linearBackward, linearForward } from "../kernels/linear.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor } from "../kernels/tensor.ts";

export interface BenchRow {
  kernel: string;
  shape: string;
  ms: number;
  gflops?: number;
  gbps?: number;
  [k: string]: unknown;
}

/** Each submit should hold about this much work, so that per-submit overhead stays small. */
const SUBMIT_TARGET_S = 0.2;
/** Timed repetitions stop at about this much time per op (heavy shapes on a CPU adapter). */
const TIMED_BUDGET_S = 1;
const MAX_PER_SUBMIT = 100;

type Record = (rec: Recorder) => void;

async function timeSubmit(gpu: Gpu, rec: Recorder, record: Record, n: number) {
  for (let i = 0; i < n; i++) record(rec);
  const start = performance.now();
  await rec.submit();
  await gpu.device.queue.onSubmittedWorkDone();
  return (performance.now() - start) / 1000;
}

/**
 * Times one op: two warm-up submits, then the median of up to `reps` submits of R recorded ops
 * each, R chosen from the warm-up time. An op whose first submit already takes over 0.5 s (the
 * 4096-token shapes on a CPU adapter) is timed by that one submit alone, to keep the bench short;
 * the smaller shapes before it have compiled the pipelines.
 */
async function timeOp(gpu: Gpu, record: Record, reps: number) {
  const rec = new Recorder(gpu);
  const first = await timeSubmit(gpu, rec, record, 1);
  if (first > 0.5) return { ms: first * 1000, perSubmit: 1, timed: 1, warmups: 0 };
  await timeSubmit(gpu, rec, record, 1);
  const single = await timeSubmit(gpu, rec, record, 1);
  const perSubmit = Math.max(1, Math.min(MAX_PER_SUBMIT, Math.round(SUBMIT_TARGET_S / single)));
  const timed = Math.max(1, Math.min(reps, Math.floor(TIMED_BUDGET_S / (perSubmit * single))));
  const times: number[] = [];
  for (let i = 0; i < timed; i++) times.push(await timeSubmit(gpu, rec, record, perSubmit));
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  return { ms: (median * 1000) / perSubmit, perSubmit, timed, warmups: 2 };
}

export async function benchMatmul(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const inF = 256;
  for (const tokens of [512, 4096]) {
    for (const outF of [256, 1024]) {
      const t = (shape: number[], label: string) => createTensor(gpu, shape, "f32", label);
      const x = t([tokens, inF], "x");
      const w = t([outF, inF], "w");
      const bias = t([outF], "bias");
      const y = t([tokens, outF], "y");
      const dX = t([tokens, inF], "dX");
      const dW = t([outF, inF], "dW");
      const init = new Recorder(gpu);
      for (const [i, tensor] of [x, w, bias, y].entries()) fill(init, tensor, 0.01 * (i + 1));
      await init.submit();

      const flops = 2 * tokens * inF * outF;
      const ops: [string, string, Record][] = [
        [
          "linear forward",
          `X[${tokens},${inF}]·W[${outF},${inF}]ᵀ+b`,
          (rec) => linearForward(rec, { x, weight: w, bias, out: y }),
        ],
        [
          "linear dX",
          `dY[${tokens},${outF}]·W[${outF},${inF}]`,
          (rec) => linearBackward(rec, { x, weight: w, dOut: y, dX }),
        ],
        [
          "linear dW",
          `dY[${tokens},${outF}]ᵀ·X[${tokens},${inF}]`,
          (rec) => linearBackward(rec, { x, weight: w, dOut: y, dWeight: dW }),
        ],
      ];
      for (const [kernel, shape, op] of ops) {
        const r = await timeOp(gpu, op, reps);
        rows.push({
          kernel,
          shape,
          ms: r.ms,
          gflops: flops / (r.ms * 1e6),
          opsPerSubmit: r.perSubmit,
          timedSubmits: r.timed,
          warmups: r.warmups,
        });
      }
      for (const tensor of [x, w, bias, y, dX, dW]) tensor.destroy();
    }
  }
  return rows;
}
