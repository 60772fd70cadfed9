// Throughput of the optimizer side: one fused AdamW step (reads p, g, m, v and writes p, m, v:
// 28 bytes per element) and the global gradient norm with its clip coefficient (reads g: 4 bytes
// per element), on 1M and 11M (BERT-mini-sized) parameters laid out as one arena.

import type { Gpu } from "../kernels/device.ts";
import { adamwStep } from "../kernels/adamw.ts";
import { fill } from "../kernels/fill.ts";
import { gradNormClip, gradNormPartialsLength } from "../kernels/grad_norm.ts";
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

/**
 * Median ms of one op: `record` records `perSubmit` ops (amortising the ~12 ms per-submit overhead
 * of lavapipe); 2 warm-up submits, then `reps`.
 */
async function timeOp(
  gpu: Gpu,
  perSubmit: number,
  record: (rec: Recorder) => void,
  reps: number,
): Promise<number> {
  const rec = new Recorder(gpu);
  const times: number[] = [];
  for (let i = 0; i < reps + 2; i++) {
    record(rec);
    const start = performance.now();
    await rec.submit();
    await gpu.device.queue.onSubmittedWorkDone();
    if (i >= 2) times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] / perSubmit;
}

export async function benchAdamw(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  // 11M elements take ~0.25 s per AdamW step on lavapipe: fewer ops per submit keep the whole
  // bench near 10 s there, and the submit overhead is negligible at that size anyway.
  for (const [n, perSubmit] of [[1 << 20, 5], [11_000_000, 2]]) {
    const [p, g, m, v] = ["p", "g", "m", "v"].map((r) => createTensor(gpu, [n], "f32", r));
    const partials = createTensor(gpu, [gradNormPartialsLength(gpu, [g])], "f32", "partials");
    const normCoef = createTensor(gpu, [2], "f32", "normCoef");
    const init = new Recorder(gpu);
    fill(init, p, 0.5);
    fill(init, g, 1e-3);
    await init.submit();

    let step = 0;
    const adamwMs = await timeOp(gpu, perSubmit, (rec) => {
      for (let k = 0; k < perSubmit; k++) {
        adamwStep(rec, {
          param: p,
          grad: g,
          m,
          v,
          lr: 1e-4,
          beta1: 0.9,
          beta2: 0.999,
          eps: 1e-8,
          weightDecay: 0.01,
          step: ++step,
          gradScale: normCoef,
          gradScaleIndex: 1,
        });
      }
    }, reps);
    rows.push({
      kernel: "adamwStep",
      shape: `[${n}]`,
      ms: adamwMs,
      gbps: (28 * n) / (adamwMs * 1e6),
    });

    const normMs = await timeOp(gpu, perSubmit, (rec) => {
      for (let k = 0; k < perSubmit; k++) {
        gradNormClip(rec, { grads: [g], partials, maxNorm: 1, out: normCoef });
      }
    }, reps);
    rows.push({
      kernel: "gradNormClip",
      shape: `[${n}]`,
      ms: normMs,
      gbps: (4 * n) / (normMs * 1e6),
    });

    for (const t of [p, g, m, v, partials, normCoef]) t.destroy();
  }
  return rows;
}
