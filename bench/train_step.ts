// Whole training steps through the real engine (train/trainer.ts's Trainer.step: one Recorder,
// handed to the GPU in parts as it is recorded), on a random-weight encoder of a configurable shape with the EH-FT head (width
// 2048, one output, BCE), random token ids, dropout on (the config's 0.1).
//
// Modes: `ft` trains everything (full fine-tuning, and Stage 2 of EH-FT); `bitfit`, `lora` and
// `prefix` are Stage 1 of EH-FT with that PEFT method (the head and the method's tensors train).
// Prefix-tuning takes its P = 16 rows out of the sequence budget, as the engine does, so its
// rows carry `seq` − 16.
//
// Each mode runs in every precision asked for ("f32"; "f16": f16 weight copies and activations
// around the matrix products with dynamic loss scaling, model/encoder.ts), one row each.
//
// Per mode: a fresh Trainer (so `peak_bytes` is that mode's own peak), one untimed warm-up step
// (pipeline compilation, first touches), then timed steps, each until the GPU has finished, as
// many as fit `budgetS` (at least 1, at most `reps`); `ms` is their median. `dispatches`,
// `copies` and `submits` are what one step submitted; `peak_bytes` is the most our allocator held
// (Gpu.peakBytes: every tensor, see kernels/device.ts) from building the Trainer to its last step.

import { uniformGenerator as generator } from "../model/init.ts";
import type { Gpu } from "../kernels/device.ts";
import { profileDispatches, submittedCounts } from "../kernels/recorder.ts";
import { type ModelConfig, parseConfig } from "../model/config.ts";
import { encoderParameters } from "../model/encoder.ts";
import { type BenchPrecision, f16Math, precisionLabel, storagePrecision } from "./precision.ts";
import { createPeft, PEFT_DEFAULTS, type PeftName } from "../peft/method.ts";
import type { TrainBatch } from "../train/batches.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import { FULL_FINETUNE_LR, STAGE1_LR, type StageTrains } from "../train/strategy.ts";
import { Trainer } from "../train/trainer.ts";
import type { BenchRow } from "./timing.ts";

export type TrainStepMode = "ft" | PeftName;
export const TRAIN_STEP_MODES: readonly TrainStepMode[] = ["ft", "bitfit", "lora", "prefix"];

/** The model shape and batch of the training-step rows. Defaults: BERT-mini, batch 32 × 128. */
export interface TrainStepShape {
  layers: number;
  hidden: number;
  heads: number;
  intermediate: number;
  vocab: number;
  maxPositions: number;
  batch: number;
  seq: number;
}

export const BERT_MINI_STEP: TrainStepShape = {
  layers: 4,
  hidden: 256,
  heads: 4,
  intermediate: 1024,
  vocab: 30522,
  maxPositions: 512,
  batch: 32,
  seq: 128,
};

/**
 * What `deno task bench` measures without --batch/--seq: BERT-mini at the batch of
 * 32 × 128 tokens (about 15 s per full fine-tuning step on lavapipe, 2 cores, after the speed
 * work; `--batch 8 --seq 32` for a quick look).
 */
export const BENCH_DEFAULT_STEP: TrainStepShape = { ...BERT_MINI_STEP };

export interface TrainStepOptions {
  shape?: TrainStepShape;
  modes?: readonly TrainStepMode[];
  /** Timed steps of a mode stop after about this many seconds (default 10). */
  budgetS?: number;
  /** After the timed steps, one more step with per-dispatch timestamps, printed to stderr. */
  profile?: boolean;
  /** The precisions to time each mode in (default ["f32"]). */
  precisions?: readonly BenchPrecision[];
}

/** The config.json of the shape, through the same parser a downloaded model goes through. */
export function stepConfig(s: TrainStepShape): ModelConfig {
  return parseConfig({
    model_type: "bert",
    vocab_size: s.vocab,
    hidden_size: s.hidden,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    intermediate_size: s.intermediate,
    hidden_act: "gelu",
    hidden_dropout_prob: 0.1,
    attention_probs_dropout_prob: 0.1,
    max_position_embeddings: s.maxPositions,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
    pad_token_id: 0,
  }, "bench train_step config");
}

/** BERT's initialisation: weights N(0, 0.02) (uniform of the same spread here), LayerNorm 1, biases 0. */
function randomizeBackbone(trainer: Trainer, seed: number): void {
  const next = generator(seed);
  const bound = 0.02 * Math.sqrt(3);
  for (const [name, t] of encoderParameters(trainer.encoder.params)) {
    const values = new Float32Array(t.numel);
    if (name.includes("LayerNorm.weight")) values.fill(1);
    else if (!name.endsWith(".bias")) {
      for (let i = 0; i < values.length; i++) values[i] = (2 * next() - 1) * bound;
    }
    t.upload(values);
  }
}

/** A batch of random token ids (no padding) and random binary targets. */
export function randomBatch(
  examples: number,
  seq: number,
  vocab: number,
  seed: number,
): TrainBatch {
  const next = generator(seed);
  const first = Math.min(5, vocab - 1); // BERT's special tokens sit below 5
  const inputIds = Uint32Array.from(
    { length: examples * seq },
    () => first + Math.floor(next() * (vocab - first)),
  );
  return {
    examples,
    encoder: { inputIds, batch: examples, seqLen: seq },
    targets: Float32Array.from({ length: examples }, () => (next() < 0.5 ? 0 : 1)),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * GPU time by op label, largest first, as text: one line per label with milliseconds, share of
 * the total, dispatches and milliseconds per dispatch.
 */
export function profileTable(byLabel: Map<string, [number, number]>, title: string): string {
  const rows = [...byLabel].sort((a, b) => b[1][0] - a[1][0]);
  const total = rows.reduce((s, [, [ns]]) => s + ns, 0);
  const lines = [
    `${title}: ${(total / 1e6).toFixed(1)} ms of GPU time in ${
      rows.reduce((s, [, [, n]]) => s + n, 0)
    } dispatches`,
  ];
  for (const [label, [ns, n]] of rows) {
    lines.push(
      `  ${(ns / 1e6).toFixed(2).padStart(9)} ms ${(100 * ns / total).toFixed(1).padStart(5)}%` +
        ` ${String(n).padStart(4)}× ${(ns / n / 1e6).toFixed(3).padStart(8)} ms  ${label}`,
    );
  }
  return lines.join("\n");
}

/**
 * The Trainer of a mode's rows, its stage begun: the shape's random-weight encoder (seeded) with
 * the EH-FT head, `seq` the tokens a row carries (Prefix-tuning's P rows taken out), `lr` the
 * mode's learning rate.
 */
export function stepTrainer(
  gpu: Gpu,
  mode: TrainStepMode,
  shape: TrainStepShape,
  precision: BenchPrecision,
): { trainer: Trainer; seq: number; lr: number } {
  const config = stepConfig(shape);
  const peft = mode === "ft" ? null : createPeft(mode, gpu, config, PEFT_DEFAULTS);
  const seq = shape.seq - (peft?.prefixLength ?? 0);
  if (seq < 1) throw new Error(`train_step ${mode}: --seq ${shape.seq} leaves no tokens`);
  const trainer = new Trainer(gpu, {
    config,
    loss: "bce",
    headClasses: 1,
    maxExamples: shape.batch,
    maxSeq: seq,
    headSeed: 1,
    dropoutSeed: 2,
    peft,
    adamw: ADAMW_DEFAULTS,
    precision: storagePrecision(precision),
    f16Math: f16Math(precision),
  });
  try {
    randomizeBackbone(trainer, 3);
    const trains: StageTrains = mode === "ft"
      ? { head: true, backbone: "all", peft: false }
      : { head: true, backbone: "peft", peft: true };
    trainer.beginStage(trains, ADAMW_DEFAULTS);
  } catch (e) {
    trainer.destroy();
    throw e;
  }
  return { trainer, seq, lr: mode === "ft" ? FULL_FINETUNE_LR : STAGE1_LR[mode] };
}

async function benchMode(
  gpu: Gpu,
  mode: TrainStepMode,
  shape: TrainStepShape,
  reps: number,
  budgetS: number,
  profile: boolean,
  precision: BenchPrecision,
): Promise<BenchRow> {
  const base = gpu.liveBytes;
  gpu.resetPeak();
  const { trainer, seq, lr } = stepTrainer(gpu, mode, shape, precision);
  try {
    const batches = [0, 1].map((i) => randomBatch(shape.batch, seq, shape.vocab, 10 + i));
    let step = 0;
    // Host time: recording, encoding and submitting a step (in parts, at layer boundaries: the GPU
    // starts on the first layers while the host records the rest); the rest of a step's time is
    // the GPU's.
    const hostTimes: number[] = [];
    const oneStep = async () => {
      const start = performance.now();
      await trainer.step(batches[step % 2], lr, step);
      hostTimes.push(performance.now() - start);
      step++;
      await gpu.device.queue.onSubmittedWorkDone();
    };
    const warmStart = performance.now();
    await oneStep();
    const warmS = (performance.now() - warmStart) / 1000;
    const before = submittedCounts(gpu);
    const times: number[] = [];
    let spent = 0;
    let counts = before;
    while (times.length < reps && (times.length === 0 || spent + times.at(-1)! <= budgetS)) {
      const start = performance.now();
      await oneStep();
      const s = (performance.now() - start) / 1000;
      if (times.length === 0) counts = submittedCounts(gpu);
      times.push(s);
      spent += s;
    }
    // The same number of steps back to back, waiting only after the last, as the training loop
    // runs them (it reads the stats back every few steps): the host records a step while the
    // GPU still runs the one before.
    const pipeStart = performance.now();
    for (let i = 0; i < times.length; i++) {
      await trainer.step(batches[step % 2], lr, step);
      step++;
    }
    await gpu.device.queue.onSubmittedWorkDone();
    const pipelinedMs = (performance.now() - pipeStart) / times.length;
    // The stats are read back as the training loop does when it logs; a NaN loss would mean
    // the step measured is not a real one.
    // An f16 step skipped by the loss scaler (gradients overflowed at its scale) still ran its
    // forward and backward passes; it is counted, but every step skipped means none is real.
    const stats = await trainer.takeStats();
    if (!stats.every((s) => Number.isFinite(s.loss)) || stats.every((s) => s.skipped)) {
      throw new Error(
        `train_step ${mode} ${precision}: non-finite loss or every step skipped ${
          JSON.stringify(stats)
        }`,
      );
    }
    if (profile && gpu.hasTimestampQuery) {
      const p = profileDispatches(gpu)!;
      try {
        await oneStep();
      } finally {
        profileDispatches(gpu, false);
      }
      console.error(profileTable(p.byLabel, `bench: train_step ${mode} ${precision} profile`));
    } else if (profile) {
      console.error(`bench: --profile: ${gpu.description} has no timestamp-query`);
    }
    const ms = median(times) * 1000;
    const hostMs = median(hostTimes.slice(1, 1 + times.length));
    const dispatches = counts.dispatches - before.dispatches;
    const peak = gpu.peakBytes - base;
    return {
      kernel: "train_step",
      mode,
      precision,
      layers: shape.layers,
      hidden: shape.hidden,
      heads: shape.heads,
      intermediate: shape.intermediate,
      vocab: shape.vocab,
      batch: shape.batch,
      seq,
      ms,
      host_ms: hostMs,
      pipelined_ms: pipelinedMs,
      samples_per_s: shape.batch / (ms / 1000),
      dispatches,
      copies: counts.copies - before.copies,
      submits: counts.submits - before.submits,
      peak_bytes: peak,
      per_submit: 1,
      timed_submits: times.length,
      warmup_submits: 1,
      warmup_ms: warmS * 1000,
      // The warm-up step's loss and gradient norm: the same weights, batch and dropout masks in
      // every precision, so f16 and f32 should agree closely; bench/gpu.ts compares them.
      first_loss: stats[0].loss,
      first_grad_norm: stats[0].gradNorm,
      skipped_steps: stats.filter((s) => s.skipped).length,
      shape:
        `${mode}${
          precisionLabel(precision).replace(",", "")
        } L${shape.layers} H${shape.hidden} I${shape.intermediate} V${shape.vocab} ` +
        `B${shape.batch}×${seq}: ${(shape.batch / (ms / 1000)).toFixed(2)} samples/s, ` +
        `${dispatches} dispatches (host ${hostMs.toFixed(1)} ms a step), ` +
        `peak ${(peak / 2 ** 20).toFixed(1)} MiB`,
    };
  } finally {
    trainer.destroy();
  }
}

/** One row per mode. */
export async function benchTrainStep(
  gpu: Gpu,
  reps: number,
  options: TrainStepOptions = {},
): Promise<BenchRow[]> {
  const shape = options.shape ?? BERT_MINI_STEP;
  const rows: BenchRow[] = [];
  for (const precision of options.precisions ?? ["f32"]) {
    for (const mode of options.modes ?? TRAIN_STEP_MODES) {
      const start = performance.now();
      const budget = options.budgetS ?? 10;
      rows.push(
        await benchMode(gpu, mode, shape, reps, budget, options.profile ?? false, precision),
      );
      const s = ((performance.now() - start) / 1000).toFixed(1);
      console.error(`bench: train_step ${mode} ${precision}: ${s} s`);
    }
  }
  return rows;
}
