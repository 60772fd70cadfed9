// Attention forward and backward at a BERT-mini-like shape (B=8, S=128, H=4, D=64), with
// attention-probability dropout on as in training.

import type { Gpu } from "../kernels/device.ts";
import { attentionBackward, attentionForward } from "../kernels/attention.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { type BenchRow, benchRow, timeOp } from "./timing.ts";

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

  const fields = { batch: B, seq: S, heads: H, head_dim: D, prefix: P, dropout: dropout.p };
  const shape = `B=${B} S=${S} H=${H} D=${D} P=${P} dropout=${dropout.p}`;
  // Scores Q·Kᵀ and context P·V are B·H·S·T·D multiply-adds each; the backward has four such
  // products (dP, dV, dQ, dK).
  const macs = B * H * S * T * D;
  const fwd = await timeOp(gpu, forward, reps);
  const bwd = await timeOp(gpu, backward, reps);
  const rows = [
    benchRow("attention_forward", fields, fwd, { flops: 4 * macs }, shape),
    benchRow("attention_backward", fields, bwd, { flops: 8 * macs }, shape),
  ];
  for (const x of tensors) x.destroy();
  return rows;
}
