// Throughput of the embedding sum (forward, backward) and of the three losses.
//
// Each timing is the median over `reps` submits (after 2 warm-up submits) of R = 5 launches
// recorded into one submit, divided by R: lavapipe spends ~12 ms per submit, which would
// otherwise dominate the small kernels. GB/s counts the bytes each launch must move at least.

import type { Gpu } from "../kernels/device.ts";
import { bceWithLogitsBackward, bceWithLogitsForward } from "../kernels/bce_with_logits.ts";
import {
  buildEmbeddingPlan,
  createEmbeddingPlanTensors,
  embeddingBackward,
  embeddingForward,
} from "../kernels/embedding.ts";
import { mseBackward, mseForward } from "../kernels/mse.ts";
import { Recorder } from "../kernels/recorder.ts";
import {
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from "../kernels/softmax_cross_entropy.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

export interface BenchRow {
  kernel: string;
  shape: string;
  ms: number;
  gflops?: number;
  gbps?: number;
  [k: string]: unknown;
}

const R = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Per-launch milliseconds of `record`, R launches per submit. */
async function timeOp(gpu: Gpu, reps: number, record: (rec: Recorder) => void): Promise<number> {
  const rec = new Recorder(gpu);
  const times: number[] = [];
  for (let i = 0; i < reps + 2; i++) {
    for (let r = 0; r < R; r++) record(rec);
    const start = performance.now();
    await rec.submit();
    await gpu.device.queue.onSubmittedWorkDone();
    if (i >= 2) times.push((performance.now() - start) / R);
  }
  return median(times);
}

function random(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out[i] = a / 2 ** 31 - 1;
  }
  return out;
}

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
  const ids = Uint32Array.from(random(n, 1), (x) => Math.floor(((x + 1) / 2) * v) % v);
  const pids = Uint32Array.from({ length: n }, (_, t) => t % seq);
  const tids = Uint32Array.from({ length: n }, (_, t) => (t % seq < seq / 2 ? 0 : 1));
  const args = {
    ids: keep(tensorFromArray(gpu, ids, [n], "ids")),
    positionIds: keep(tensorFromArray(gpu, pids, [n], "positionIds")),
    typeIds: keep(tensorFromArray(gpu, tids, [n], "typeIds")),
    word: keep(tensorFromArray(gpu, random(v * h, 2), [v, h], "word")),
    position: keep(tensorFromArray(gpu, random(positions * h, 3), [positions, h], "position")),
    tokenType: keep(tensorFromArray(gpu, random(2 * h, 4), [2, h], "tokenType")),
    out: keep(createTensor(gpu, [n, h], "f32", "out")),
  };
  const shape = `N=${n} H=${h} V=${v}`;
  const rowBytes = h * 4;
  // ids ×3 read, three table rows gathered and one output row written per token.
  const fwdBytes = n * 12 + n * rowBytes * 4;
  const fwdMs = await timeOp(gpu, reps, (rec) => embeddingForward(rec, args));
  rows.push({ kernel: "embeddingForward", shape, ms: fwdMs, gbps: fwdBytes / (fwdMs * 1e6) });

  const planStart = performance.now();
  for (let i = 0; i < 10; i++) buildEmbeddingPlan(ids);
  rows.push({
    kernel: "buildEmbeddingPlan (host)",
    shape,
    ms: (performance.now() - planStart) / 10,
  });

  const plans = [ids, pids, tids].map((x, i) => {
    const p = createEmbeddingPlanTensors(gpu, n, `plan ${i}`);
    p.update(x);
    return p;
  });
  const dOut = keep(tensorFromArray(gpu, random(n * h, 5), [n, h], "dOut"));
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
  const accMs = await timeOp(gpu, reps, bwd(true));
  rows.push({
    kernel: "embeddingBackward accumulate",
    shape: `${shape} unique=${uniques}`,
    ms: accMs,
    gbps: scatterBytes / (accMs * 1e6),
  });
  // Overwrite also zero-fills the three whole gradients.
  const fillBytes = (v + positions + 2) * rowBytes;
  const owMs = await timeOp(gpu, reps, bwd(false));
  rows.push({
    kernel: "embeddingBackward overwrite (incl. zero fill)",
    shape: `${shape} unique=${uniques}`,
    ms: owMs,
    gbps: (scatterBytes + fillBytes) / (owMs * 1e6),
  });
  for (const p of plans) p.destroy();

  // ---- losses ----
  const classes = 3;
  for (const b of [32, 4096]) {
    const logits = keep(tensorFromArray(gpu, random(b * classes, 6), [b, classes], "logits"));
    const targets = keep(
      tensorFromArray(gpu, Uint32Array.from({ length: b }, (_, i) => i % classes), [b], "t"),
    );
    const single = keep(tensorFromArray(gpu, random(b, 7), [b, 1], "single"));
    const y = keep(tensorFromArray(gpu, random(b, 8).map((x) => (x + 1) / 2), [b], "y"));
    const loss = keep(createTensor(gpu, [1], "f32", "loss"));
    const dLogits = keep(createTensor(gpu, [b, classes], "f32", "dLogits"));
    const dSingle = keep(createTensor(gpu, [b, 1], "f32", "dSingle"));
    const cases: [string, string, number, (rec: Recorder) => void][] = [
      [
        "softmaxCrossEntropyForward",
        `B=${b} C=${classes}`,
        b * (classes + 1) * 4,
        (rec) => softmaxCrossEntropyForward(rec, { logits, targets, loss }),
      ],
      [
        "softmaxCrossEntropyBackward",
        `B=${b} C=${classes}`,
        b * (2 * classes + 1) * 4,
        (rec) => softmaxCrossEntropyBackward(rec, { logits, targets, dLogits }),
      ],
      [
        "bceWithLogitsForward",
        `B=${b}`,
        b * 8,
        (rec) => bceWithLogitsForward(rec, { logits: single, targets: y, loss }),
      ],
      [
        "bceWithLogitsBackward",
        `B=${b}`,
        b * 12,
        (rec) => bceWithLogitsBackward(rec, { logits: single, targets: y, dLogits: dSingle }),
      ],
      [
        "mseForward",
        `B=${b}`,
        b * 8,
        (rec) => mseForward(rec, { logits: single, targets: y, loss }),
      ],
      [
        "mseBackward",
        `B=${b}`,
        b * 12,
        (rec) => mseBackward(rec, { logits: single, targets: y, dLogits: dSingle }),
      ],
    ];
    for (const [kernel, s, bytes, record] of cases) {
      const ms = await timeOp(gpu, reps, record);
      rows.push({ kernel, shape: s, ms, gbps: bytes / (ms * 1e6) });
    }
  }
  for (const t of owned) t.destroy();
  return rows;
}
