// Attention forward and backward at a BERT-mini-like shape (B=8, S=128, H=4, D=64), with
// attention-probability dropout on as in training.

import type { Gpu } from "../kernels/device.ts";
import { attentionBackward, attentionForward } from "../kernels/attention.ts";
import { fill } from "../kernels/fill.ts";
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

/** Seconds of timed submits per op at most; slow devices (lavapipe) get fewer repetitions. */
const BUDGET_MS = 7000;
/** A submit should last at least this long, so that its fixed overhead is noise. */
const MIN_SUBMIT_MS = 50;

async function submitMs(gpu: Gpu, rec: Recorder): Promise<number> {
  const start = performance.now();
  await rec.submit();
  await gpu.device.queue.onSubmittedWorkDone();
  return performance.now() - start;
}

/**
 * Per-op milliseconds: 2 warm-up submits, then the median of up to `reps` submits of the op
 * recorded R times each. R is picked from the warm-up so a submit lasts ≥ 50 ms (1 on lavapipe,
 * where one op takes far longer than the ~12 ms submit overhead).
 */
async function timeOp(
  gpu: Gpu,
  record: (rec: Recorder) => void,
  reps: number,
): Promise<{ ms: number; reps: number; perSubmit: number }> {
  const rec = new Recorder(gpu);
  let single = Infinity;
  for (let i = 0; i < 2; i++) {
    record(rec);
    single = Math.min(single, await submitMs(gpu, rec));
  }
  const perSubmit = Math.max(1, Math.min(20, Math.ceil(MIN_SUBMIT_MS / single)));
  const n = Math.max(3, Math.min(reps, Math.floor(BUDGET_MS / (single * perSubmit))));
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    for (let r = 0; r < perSubmit; r++) record(rec);
    times.push((await submitMs(gpu, rec)) / perSubmit);
  }
  times.sort((a, b) => a - b);
  return { ms: times[Math.floor(times.length / 2)], reps: n, perSubmit };
}

export async function benchAttention(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const B = 8, S = 128, H = 4, D = 64, P = 0;
  const T = P + S;
  const seq = [B, S, H * D];
  const tensors: Tensor[] = [];
  const t = (shape: number[], label: string) => {
    const x = createTensor(gpu, shape, "f32", label);
    tensors.push(x);
    return x;
  };
  const q = t(seq, "q"), k = t(seq, "k"), v = t(seq, "v"), dContext = t(seq, "dContext");
  const mask = t([B, S], "mask"), probs = t([B, H, S, T], "probs"), context = t(seq, "context");
  const dQ = t(seq, "dQ"), dK = t(seq, "dK"), dV = t(seq, "dV");
  const dScores = t([B, H, S, T], "dScores");
  const init = new Recorder(gpu);
  fill(init, q, 0.5);
  fill(init, k, -0.25);
  fill(init, v, 1);
  fill(init, dContext, 0.125);
  fill(init, mask, 1);
  await init.submit();

  const dropout = { p: 0.1, seed: 1234, stream: 5 };
  const heads = H;
  const forward = (rec: Recorder) =>
    attentionForward(rec, { q, k, v, mask, probs, context, heads, dropout });
  const backward = (rec: Recorder) =>
    attentionBackward(rec, {
      q,
      k,
      v,
      probs,
      dContext,
      dQ,
      dK,
      dV,
      heads,
      dropout,
      dScores,
    });

  const shape = `B=${B} S=${S} H=${H} D=${D} P=${P} dropout=${dropout.p}`;
  const macs = B * H * S * T * D;
  const rows: BenchRow[] = [];
  const fwd = await timeOp(gpu, forward, reps);
  rows.push({
    kernel: "attentionForward",
    shape,
    ms: fwd.ms,
    gflops: (4 * macs) / (fwd.ms * 1e6),
    reps: fwd.reps,
    perSubmit: fwd.perSubmit,
  });
  const bwd = await timeOp(gpu, backward, reps);
  rows.push({
    kernel: "attentionBackward",
    shape,
    ms: bwd.ms,
    gflops: (8 * macs) / (bwd.ms * 1e6),
    reps: bwd.reps,
    perSubmit: bwd.perSubmit,
  });
  for (const x of tensors) x.destroy();
  return rows;
}
