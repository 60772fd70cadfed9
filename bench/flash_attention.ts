// Flash attention (kernels/flash_attention.ts) beside the GEMM-based attention
// (kernels/attention.ts), forward and backward with attention-probability dropout 0.1, at the
// bench's BERT-mini shape (B=8, S=128, H=4, D=64, as bench/attention.ts) and at a long sequence
// (B=2, S=512). Each row also names the bytes the kernel needs besides q, k, v, the context and
// their gradients: the [B, H, S, T] probabilities and workspace of attention.ts, the per-row
// statistics and workspace of the flash kernels.
//
//   XDG_RUNTIME_DIR=/tmp deno run -A bench/flash_attention.ts [--reps N] [--json]

import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../kernels/device.ts";
import { attentionBackward, attentionForward } from "../kernels/attention.ts";
import { fill } from "../kernels/fill.ts";
import {
  flashAttentionBackward,
  flashAttentionForward,
  flashAttentionStatsShape,
} from "../kernels/flash_attention.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { type BenchRow, benchRow, timeOp } from "./timing.ts";

/** The shapes timed: the bench's attention shape and a long sequence. */
export const FLASH_BENCH_SHAPES = [
  { B: 8, S: 128, H: 4, D: 64 },
  { B: 2, S: 512, H: 4, D: 64 },
];

export async function benchFlashAttention(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const { B, S, H, D } of FLASH_BENCH_SHAPES) {
    const P = 0, T = P + S;
    const seq = [B, S, H * D];
    const tensors: Tensor[] = [];
    const t = (shape: number[], label: string) => {
      const x = createTensor(gpu, shape, "f32", label);
      tensors.push(x);
      return x;
    };
    const q = t(seq, "q"), k = t(seq, "k"), v = t(seq, "v"), dContext = t(seq, "dContext");
    const mask = t([B, S], "mask"), context = t(seq, "context");
    const dQ = t(seq, "dQ"), dK = t(seq, "dK"), dV = t(seq, "dV");
    const probs = t([B, H, S, T], "probs"), dScores = t([B, H, S, T], "dScores");
    const stats = t(flashAttentionStatsShape(B, H, S), "stats");
    const rowWorkspace = t([B, H, S, 4], "rowWorkspace");
    const init = new Recorder(gpu);
    // Constant inputs, as bench/attention.ts: the kernels do the same work whatever the values.
    fill(init, q, 0.5);
    fill(init, k, -0.25);
    fill(init, v, 1);
    fill(init, dContext, 0.125);
    fill(init, mask, 1);
    await init.submit();

    const dropout = { p: 0.1, seed: 1234, stream: 5 };
    const heads = H;
    const common = { q, k, v, heads, dropout };
    const grads = { dContext, dQ, dK, dV };
    const fields = { batch: B, seq: S, heads: H, head_dim: D, prefix: P, dropout: dropout.p };
    const shape = `B=${B} S=${S} H=${H} D=${D} P=${P} dropout=${dropout.p}`;
    const macs = B * H * S * T * D;
    const f32 = 4;
    // attention.ts: probs and one more [B, H, S, T] (P̃ in the forward with dropout; the score
    // gradients in the backward). Flash: stats [B, H, S, 2] and the backward's [B, H, S, 4].
    const currentBytes = 2 * B * H * S * T * f32;
    const flashBytes = { forward: B * H * S * 2 * f32, backward: B * H * S * 6 * f32 };
    const ops: [string, (rec: Recorder) => void, number, number][] = [
      [
        "attention_forward",
        (rec) => attentionForward(rec, { ...common, mask, probs, context }),
        4 * macs,
        currentBytes,
      ],
      [
        "attention_backward",
        (rec) => attentionBackward(rec, { ...common, ...grads, probs, dScores }),
        8 * macs,
        currentBytes,
      ],
      [
        "flash_attention_forward",
        (rec) => flashAttentionForward(rec, { ...common, mask, context, stats }),
        4 * macs,
        flashBytes.forward,
      ],
      [
        "flash_attention_backward",
        (rec) =>
          flashAttentionBackward(rec, {
            ...common,
            ...grads,
            mask,
            context,
            stats,
            rowWorkspace,
          }),
        8 * macs,
        flashBytes.backward,
      ],
    ];
    for (const [kernel, record, flops, bytes] of ops) {
      const timing = await timeOp(gpu, record, reps);
      rows.push(benchRow(kernel, { ...fields, extra_bytes: bytes }, timing, { flops }, shape));
    }
    for (const x of tensors) x.destroy();
  }
  return rows;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { reps: { type: "string", default: "5" }, json: { type: "boolean", default: false } },
  });
  const gpu = await getGpu();
  const rows = await benchFlashAttention(gpu, Number(values.reps));
  for (const r of rows) {
    if (values.json) console.log(JSON.stringify(r));
    else {
      console.log(
        `${r.kernel.padEnd(26)} ${r.shape.padEnd(38)} ${r.ms.toFixed(1).padStart(8)} ms ` +
          `${r.gflops!.toFixed(2).padStart(6)} GFLOP/s  extra ${
            (Number(r.extra_bytes) / 1024).toFixed(0)
          } KiB  (${r.timed_submits} timed × ${r.per_submit})`,
      );
    }
  }
  gpu.destroy();
}
