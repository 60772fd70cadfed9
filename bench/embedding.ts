// Throughput of the embedding sum (forward, backward) and of the three losses.
//
// Timed with the shared adaptive loop (bench/timing.ts); GB/s counts the bytes each launch must
// move at least. The losses at these batch sizes are tiny, so their figures are dominated by the
// per-submit cost divided by R.

import type { Gpu } from "../kernels/device.ts";
import { bceWithLogitsBackward, bceWithLogitsForward } from "../kernels/bce_with_logits.ts";
import {
  buildEmbeddingPlan,
  createEmbeddingPlanTensors,
  embeddingBackward,
  embeddingForward,
} from "../kernels/embedding.ts";
import { mseBackward, mseForward } from "../kernels/mse.ts";
import type { Recorder } from "../kernels/recorder.ts";
import {
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from "../kernels/softmax_cross_entropy.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import { type BenchRow, benchRow, measure, timeOp } from "./timing.ts";
import { uniformValues } from "./values.ts";

export async function benchEmbedding(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const owned: Tensor[] = [];
  const keep = (t: Tensor) => (owned.push(t), t);

  // ---- embeddings: BERT-ish batch of 32 sequences of 128 tokens ----
  const n = 4096;
  const h = 256;
  const v = 30522;
  const positions = 512;
  const seq = 128;
  const ids = Uint32Array.from(uniformValues(n, 1), (x) => Math.floor(((x + 1) / 2) * v) % v);
  const pids = Uint32Array.from({ length: n }, (_, t) => t % seq);
  const tids = Uint32Array.from({ length: n }, (_, t) => (t % seq < seq / 2 ? 0 : 1));
  const args = {
    ids: keep(tensorFromArray(gpu, ids, [n], "ids")),
    positionIds: keep(tensorFromArray(gpu, pids, [n], "positionIds")),
    typeIds: keep(tensorFromArray(gpu, tids, [n], "typeIds")),
    word: keep(tensorFromArray(gpu, uniformValues(v * h, 2), [v, h], "word")),
    position: keep(
      tensorFromArray(gpu, uniformValues(positions * h, 3), [positions, h], "position"),
    ),
    tokenType: keep(tensorFromArray(gpu, uniformValues(2 * h, 4), [2, h], "tokenType")),
    out: keep(createTensor(gpu, [n, h], "f32", "out")),
  };
  const fields = { tokens: n, hidden: h, vocab: v };
  const shape = `N=${n} H=${h} V=${v}`;
  const rowBytes = h * 4;
  // ids ×3 read, three table rows gathered and one output row written per token.
  const fwdBytes = n * 12 + n * rowBytes * 4;
  const fwd = await timeOp(gpu, (rec) => embeddingForward(rec, args), reps);
  rows.push(benchRow("embedding_forward", fields, fwd, { bytes: fwdBytes }, shape));

  // The backward's plan is built on the host (a sort of the batch's ids). Bytes: the ids read,
  // the plan (unique ids, offsets, token order) written.
  const plan = buildEmbeddingPlan(ids);
  const planBytes = n * 4 + (2 * plan.uniqueIds.length + 1) * 4 + n * 4;
  const planTiming = await measure((r) => {
    const start = performance.now();
    for (let i = 0; i < r; i++) buildEmbeddingPlan(ids);
    return (performance.now() - start) / 1000;
  }, reps);
  rows.push(
    benchRow(
      "embedding_plan_host",
      { tokens: n, vocab: v },
      planTiming,
      { bytes: planBytes },
      `N=${n} V=${v} (CPU)`,
    ),
  );

  const plans = [ids, pids, tids].map((x, i) => {
    const p = createEmbeddingPlanTensors(gpu, n, `plan ${i}`);
    p.update(x);
    return p;
  });
  const dOut = keep(tensorFromArray(gpu, uniformValues(n * h, 5), [n, h], "dOut"));
  const dWord = keep(createTensor(gpu, [v, h], "f32", "dWord"));
  const dPosition = keep(createTensor(gpu, [positions, h], "f32", "dPosition"));
  const dTokenType = keep(createTensor(gpu, [2, h], "f32", "dTokenType"));
  const uniques = plans.reduce((s, p) => s + p.plan.uniqueIds.length, 0);
  const bwd = (accumulate: boolean) => (rec: Recorder) =>
    embeddingBackward(rec, {
      dOut,
      wordPlan: plans[0],
      positionPlan: plans[1],
      typePlan: plans[2],
      dWord,
      dPosition,
      dTokenType,
      accumulate,
    });
  // dOut read once per table, plus the plans; each touched gradient row read and written.
  const scatterBytes = 3 * (n * rowBytes + n * 8) + uniques * rowBytes * 2;
  // Overwrite also zero-fills the three whole gradients.
  const fillBytes = (v + positions + 2) * rowBytes;
  for (const accumulate of [true, false]) {
    const timing = await timeOp(gpu, bwd(accumulate), reps);
    const bytes = scatterBytes + (accumulate ? 0 : fillBytes);
    rows.push(
      benchRow(
        "embedding_backward",
        { ...fields, unique: uniques, accumulate },
        timing,
        { bytes },
        `${shape} unique=${uniques} ${accumulate ? "accumulate" : "overwrite+zero fill"}`,
      ),
    );
  }
  for (const p of plans) p.destroy();

  // ---- losses ----
  const classes = 3;
  for (const b of [32, 4096]) {
    const logits = keep(
      tensorFromArray(gpu, uniformValues(b * classes, 6), [b, classes], "logits"),
    );
    const targets = keep(
      tensorFromArray(gpu, Uint32Array.from({ length: b }, (_, i) => i % classes), [b], "t"),
    );
    const single = keep(tensorFromArray(gpu, uniformValues(b, 7), [b, 1], "single"));
    const y = keep(tensorFromArray(gpu, uniformValues(b, 8).map((x) => (x + 1) / 2), [b], "y"));
    const loss = keep(createTensor(gpu, [1], "f32", "loss"));
    const dLogits = keep(createTensor(gpu, [b, classes], "f32", "dLogits"));
    const dSingle = keep(createTensor(gpu, [b, 1], "f32", "dSingle"));
    const ce = { batch: b, classes };
    const one = { batch: b };
    const cases: [string, Record<string, number>, number, (rec: Recorder) => void][] = [
      [
        "softmax_cross_entropy_forward",
        ce,
        b * (classes + 1) * 4,
        (rec) => softmaxCrossEntropyForward(rec, { logits, targets, loss }),
      ],
      [
        "softmax_cross_entropy_backward",
        ce,
        b * (2 * classes + 1) * 4,
        (rec) => softmaxCrossEntropyBackward(rec, { logits, targets, dLogits }),
      ],
      [
        "bce_with_logits_forward",
        one,
        b * 8,
        (rec) => bceWithLogitsForward(rec, { logits: single, targets: y, loss }),
      ],
      [
        "bce_with_logits_backward",
        one,
        b * 12,
        (rec) => bceWithLogitsBackward(rec, { logits: single, targets: y, dLogits: dSingle }),
      ],
      [
        "mse_forward",
        one,
        b * 8,
        (rec) => mseForward(rec, { logits: single, targets: y, loss }),
      ],
      [
        "mse_backward",
        one,
        b * 12,
        (rec) => mseBackward(rec, { logits: single, targets: y, dLogits: dSingle }),
      ],
    ];
    for (const [kernel, fields, bytes, record] of cases) {
      // Launch-bound at these sizes: a short budget is enough.
      const timing = await timeOp(gpu, record, reps, { budgetS: 0.3 });
      rows.push(benchRow(kernel, fields, timing, { bytes }));
    }
  }
  for (const t of owned) t.destroy();
  return rows;
}
