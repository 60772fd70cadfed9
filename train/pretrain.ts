// Masked-language-model pretraining of an encoder with its MLM head (model/mlm_head.ts). One step
// is recorded into one recorder and submitted once:
//
//   setBatch → encoder forward (dropout on) → gather the masked rows (kernels/gather_rows.ts) →
//   MLM head forward → cross-entropy over the vocabulary at the masked rows, and its gradient →
//   MLM head backward → scatter back into dHidden → encoder backward → the decoder's gradient
//   added into the word-embedding gradient (the decoder is tied to the table) → global-norm clip
//   → AdamW → the step's loss and gradient norm copied into a stats buffer
//
// Held-out evaluation: a fixed set of masked sequences (the same masks at every evaluation),
// dropout off; the loss is the mean over all masked tokens and the accuracy counts argmax hits.
//
// Checkpoints (train/training_checkpoint.ts): every parameter, AdamW's moments and the step, so
// `resume` continues bit for bit (a step's batch and masks depend on (seed, step) alone); in the
// metadata also what a resumed run could not rebuild: the losses and token counts of the steps
// since the last log line (the next line averages them) and the last held-out evaluation (the
// result of a run stopped after its last checkpoint). A resumed run's log and result are those
// of a run that was never stopped.

import { addInPlace, scale } from "../kernels/add.ts";
import type { Gpu } from "../kernels/device.ts";
import { gatherRowsBackward, gatherRowsForward, selectionSlots } from "../kernels/gather_rows.ts";
import { BindGroupCache, Recorder, STEP_FLUSH_EVERY } from "../kernels/recorder.ts";
import {
  vocabCrossEntropyBackward,
  vocabCrossEntropyForward,
  type VocabCrossEntropyState,
} from "../kernels/vocab_cross_entropy.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { isJsonObject, removeStaleTemporaries, writeFileAtomic } from "../model/atomic_write.ts";
import { RunLog } from "./run_log.ts";
import { readUtf8File } from "../model/utf8.ts";
import type { ModelConfig } from "../model/config.ts";
import { createEncoder, type Encoder, encoderParameters } from "../model/encoder.ts";
import { MlmHead, type MlmHeadParams } from "../model/mlm_head.ts";
import { writeSafetensors } from "../model/safetensors.ts";
import {
  batchIndices,
  generator,
  maskBatch,
  type MaskingIds,
  type MlmBatch,
  splitMlmBatch,
  streamSeed,
} from "./mlm_data.ts";
import { AdamW, type AdamwSettings, isNoDecayName, type TrainableTensor } from "./optimizer.ts";
import { Progress } from "./progress.ts";
import { setStepLoop, signalTurn, stopRequested } from "./run_faults.ts";
import { learningRate, type Schedule } from "./schedule.ts";
import {
  CHECKPOINT_FILE,
  checkWholeCheckpoint,
  downloadTensors,
  readTrainingCheckpoint,
  type TrainingState,
  uploadByName,
  writeTrainingCheckpoint,
} from "./training_checkpoint.ts";

/** What `pretrain` needs: the model, its data, the budget, the optimizer and the run folder. */
export interface PretrainOptions {
  /** The model's architecture (BERT or RoBERTa family: the MLM head needs one). */
  config: ModelConfig;
  /** Starting values: encoder tensors (names relative to the prefix) and the MLM head. */
  initial: {
    encoder: ReadonlyMap<string, Float32Array>;
    head: MlmHeadParams<Float32Array>;
  };
  /** The special token ids and vocabulary size masking uses. */
  ids: MaskingIds;
  /** Packed training sequences (token ids without [CLS]/[SEP]), each ≤ maxSeq − 2 tokens. */
  train: readonly Uint32Array[];
  /** Packed held-out sequences. */
  heldOut: readonly Uint32Array[];
  /** The run folder: log.jsonl, the checkpoint and `model/`. */
  out: string;
  /** Optimizer steps of the whole run. */
  steps: number;
  /** Sequences per step. */
  batchSize: number;
  /** Parts each step's batch runs in, one at a time, their gradients summed (default 1). */
  gradAccum?: number;
  /** Tokens per row, [CLS] and [SEP] included. */
  maxSeq: number;
  /** The learning-rate schedule over `steps`. */
  schedule: Schedule;
  /** AdamW's settings (e.g. PRETRAIN_ADAMW). */
  adamw: AdamwSettings;
  /** Seed of the batches, masks and dropout (a step's batch depends on seed and step alone). */
  seed: number;
  /** Steps between held-out evaluations (and at the end). */
  evalEvery: number;
  /** Steps between checkpoints (and at the end). */
  checkpointEvery: number;
  /** Steps between log lines. */
  logEvery: number;
  /** Held-out sequences evaluated (the first ones); 0 for all of them. */
  evalSequences: number;
  /** Continue from `out`'s checkpoint, if there is one. */
  resume: boolean;
  /** The saved model's weights (`<out>/model`): F32, or F16 for a small file. */
  modelDtype: "F32" | "F16";
  /** No progress output. */
  quiet?: boolean;
  /** Called with each log record, after it is written (tests, the CLI). */
  onLog?: (record: Record<string, unknown>) => void;
  /**
   * Called once this call's first step has run on the GPU (its stats read back: a failure of
   * its GPU work surfaces before, not after).
   */
  onTrainingStart?: () => void;
}

/** What a `pretrain` run did: steps, tokens, time and the last held-out evaluation. */
export interface PretrainResult {
  /** Steps of the whole run (`PretrainOptions.steps`). */
  steps: number;
  /** Real tokens ([CLS], [SEP] included) of the steps this call trained. */
  tokens: number;
  /** Real tokens of every step of the run, those before a resume included. */
  totalTokens: number;
  /** Wall-clock seconds of this call. */
  seconds: number;
  /** The last held-out evaluation (the one at the last step), restored by a resume. */
  heldOut: { loss: number; accuracy: number; tokens: number } | null;
}

/**
 * The most masked rows a batch of B sequences of at most S − 2 tokens can have: every token can
 * be chosen. (A bound below it is reached: at --batch-size 1 --max-length 8, one batch in about
 * 170 has 4 or more of its 6 tokens chosen.)
 */
export function maxMaskedRows(batch: number, seq: number): number {
  return batch * Math.max(1, seq - 2);
}

/**
 * Every batch a run draws, looked at once on the CPU (a step's batch depends on (seed, step)
 * alone): the most masked rows of any of them (of any of its `gradAccum` parts), which sizes the
 * MLM head exactly (the worst case, maxMaskedRows, would be ~6× a typical batch at 32 × 128), and
 * each step's real tokens.
 */
export function planBatches(
  train: readonly Uint32Array[],
  ids: MaskingIds,
  batchSize: number,
  seed: number,
  steps: number,
  evalBatches: readonly MlmBatch[],
  gradAccum = 1,
): { maxRows: number; stepTokens: Float64Array } {
  let maxRows = 1;
  const fit = (b: MlmBatch) => {
    for (const part of splitMlmBatch(b, gradAccum)) {
      maxRows = Math.max(maxRows, part.positions.length);
    }
  };
  for (const b of evalBatches) fit(b);
  const stepTokens = new Float64Array(steps);
  for (let step = 0; step < steps; step++) {
    const b = trainingBatch(train, ids, batchSize, seed, step);
    fit(b);
    stepTokens[step] = realTokens(b);
  }
  return { maxRows, stepTokens };
}

function realTokens(b: MlmBatch): number {
  let real = 0;
  for (const x of b.attentionMask) real += x;
  return real;
}

/** One step's training statistics. */
export interface StepStats {
  /** The global step. */
  step: number;
  /** Mean loss over the step's masked tokens. */
  loss: number;
  /** The global gradient norm before clipping. */
  gradNorm: number;
}

/**
 * A pretraining checkpoint's state: the common one plus what the log and the result need. Both
 * additions are optional: checkpoints written before them resume as they did.
 */
export interface PretrainState extends TrainingState {
  /** The steps since the last log line: their stats (in step order) and token counts. */
  pending?: {
    steps: number[];
    /** Non-finite values are written as null (JSON), and read back as NaN. */
    loss: (number | null)[];
    grad_norm: (number | null)[];
    tokens: number;
    masked: number;
  };
  /** The last held-out evaluation, or null. */
  held_out?: { loss: number; accuracy: number; tokens: number } | null;
}

/** How a pretraining run whose files cannot be resumed starts again (it has no --overwrite). */
const START_AGAIN = "start the run again in a new --out";

/**
 * Throws, naming the checkpoint and the key, unless its training state is one a pretraining run
 * of `steps` steps writes: after a step of its one stage (AdamW's count the same), the pending
 * log block's steps and stats of that shape, the held-out evaluation a result. A damaged one
 * resumed as it said: a step past the end saved an untrained model as finished, an earlier one
 * trained steps again over later weights, a string of tokens was added as text.
 */
export function checkPretrainState(path: string, state: PretrainState, steps: number): void {
  const fail = (key: string, what: string) => {
    const shown = JSON.stringify((state as unknown as Record<string, unknown>)[key]) ?? "missing";
    throw new Error(
      `${path}: training state ${key} is ${shown.slice(0, 40)}, not ${what} (the checkpoint ` +
        `is damaged: ${START_AGAIN})`,
    );
  };
  const count = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0;
  if (state.stage !== 0) fail("stage", "0 (pretraining has one stage)");
  if (!(state.step >= 1 && state.step <= steps)) fail("step", `a step of the run's 1-${steps}`);
  if (state.stageStep !== state.step) fail("stageStep", `its step (${state.step})`);
  if (state.adamStep !== state.step) fail("adamStep", `its step (${state.step})`);
  const p = state.pending as unknown;
  if (p !== undefined) {
    const ok = isJsonObject(p) && Array.isArray(p.steps) && Array.isArray(p.loss) &&
      Array.isArray(p.grad_norm) && p.loss.length === p.steps.length &&
      p.grad_norm.length === p.steps.length && count(p.tokens) && count(p.masked) &&
      // The steps' 0-based indices (a checkpoint in the first log block holds step 0).
      p.steps.every((s, i) =>
        Number.isSafeInteger(s) && s >= 0 && s < state.step &&
        (i === 0 || s > (p.steps as number[])[i - 1])
      ) &&
      [...p.loss, ...p.grad_norm].every((x) => x === null || typeof x === "number");
    if (!ok) {
      fail("pending", "the steps since the last log line, their loss and grad_norm, and counts");
    }
  }
  const h = state.held_out as unknown;
  if (
    h !== undefined && h !== null &&
    !(isJsonObject(h) && Number.isFinite(h.loss) && typeof h.accuracy === "number" &&
      h.accuracy >= 0 && h.accuracy <= 1 && count(h.tokens))
  ) {
    fail("held_out", "null or a held-out evaluation's loss, accuracy and tokens");
  }
}

/**
 * The first `keep` lines of the log at `path`, each a JSON object, as --resume continues them:
 * a log missing or shorter than its checkpoint says, or a damaged line, is refused (they were
 * taken as they were: a new log began mid-run, and ship_model's card counted its tokens); so is
 * a kept line past the checkpoint's `step`, which says the checkpoint (at `checkpoint`) is not
 * this run's (one copied from another run went on, splicing two histories into the log).
 */
async function keptLogLines(
  path: string,
  keep: number,
  step: number,
  checkpoint: string,
): Promise<string[]> {
  if (keep === 0) return [];
  let text: string;
  try {
    text = await readUtf8File(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? `missing, and the checkpoint keeps its first ${keep} lines`
      : (e as Error).message;
    throw new Error(`${path}: ${why} (${START_AGAIN})`);
  }
  // Line by line as RunLog.open keeps them (a blank line is a damaged one, not skipped).
  const all = text.split("\n");
  if (all[all.length - 1] === "") all.pop();
  const lines = all.slice(0, keep);
  if (lines.length < keep) {
    throw new Error(
      `${path}: fewer lines than the checkpoint's ${keep} (the log was cut short or edited): ` +
        START_AGAIN,
    );
  }
  lines.forEach((line, i) => {
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      record = null;
    }
    if (!isJsonObject(record)) {
      throw new Error(
        `${path}: line ${i + 1} is not a JSON object (the log is damaged: ${START_AGAIN})`,
      );
    }
    if (typeof record.step === "number" && record.step > step) {
      throw new Error(
        `${checkpoint}: its step ${step} is before the step of the log's line ${i + 1} ` +
          `(${record.step}), which it keeps: it is not this run's checkpoint (put the run's ` +
          `own back, or ${START_AGAIN})`,
      );
    }
  });
  return lines;
}

/** Steps whose stats wait on the GPU before a download. */
const STATS_CAPACITY = 64;

export const PRETRAIN_LOG = "log.jsonl";

/** The files a pretraining run writes in its folder itself (pretrain.ts writes the two JSONs). */
const PRETRAIN_FILES = ["pretrain.json", "result.json", PRETRAIN_LOG, CHECKPOINT_FILE];

/** Tensors of the training state under checkpoint names. */
function namedParameters(config: ModelConfig, encoder: Encoder, head: MlmHead) {
  const params = new Map<string, Tensor>();
  for (const [n, t] of encoderParameters(encoder.params)) params.set(`${config.prefix}.${n}`, t);
  for (const [n, t] of head.parameters()) params.set(n, t);
  return params;
}

/**
 * An encoder and its MLM head being pretrained, with AdamW over every tensor; `pretrain` drives
 * it. destroy() frees every GPU buffer (encoder, head, optimizer).
 */
export class Pretrainer {
  /** The device everything is allocated on. */
  readonly gpu: Gpu;
  /** The model's architecture. */
  readonly config: ModelConfig;
  /** The encoder, every parameter trainable (owned). */
  readonly encoder: Encoder;
  /** The MLM head, tied to the encoder's word table (owned). */
  readonly head: MlmHead;
  /** AdamW over the encoder's and the head's parameters (owned). */
  readonly optimizer: AdamW;
  private readonly maxRows: number;
  private readonly rows: Tensor;
  private readonly gathered: Tensor;
  private readonly slots: Tensor;
  private readonly targets: Tensor;
  private readonly dLogits: Tensor;
  private readonly dHidden: Tensor;
  private readonly loss: Tensor;
  /** With parts: the step's loss, the parts' weighted sum, and one weighted part. */
  private readonly lossSum: Tensor;
  private readonly lossPart: Tensor;
  /** The most parts a step's batch runs in (the constructor's gradAccum). */
  readonly gradAccum: number;
  /** Per masked row: log-sum-exp, loss and predicted token (kernels/vocab_cross_entropy.ts). */
  private readonly ce: VocabCrossEntropyState;
  private readonly dropoutSeed: number;
  private readonly stats: Tensor;
  private readonly wordGrad: Tensor;
  private statsOnGpu = 0;
  /** The bind groups of the steps, which bind the same buffers every time. */
  private readonly bindGroups = new BindGroupCache();
  private readonly flushEvery: number;
  private statsSteps: number[] = [];

  /**
   * Allocates encoder (zeroed), head and optimizer for batches up to maxBatch × maxSeq, run in
   * `gradAccum` parts of ⌈maxBatch / gradAccum⌉ sequences (the GPU holds one part at once);
   * throws when the logits of maxRows masked tokens (of one part) exceed one storage binding.
   */
  constructor(
    gpu: Gpu,
    config: ModelConfig,
    opts: {
      maxBatch: number;
      maxSeq: number;
      adamw: AdamwSettings;
      dropout?: number;
      /** Seed of the dropout masks (mixed with the step). */
      dropoutSeed?: number;
      /** Room for masked rows per part (default maxMaskedRows: room for any part). */
      maxRows?: number;
      /** Parts each step's batch runs in, their gradients summed (default 1: the whole batch). */
      gradAccum?: number;
      /** A step's commands go to the GPU in parts of at least this many, at layer boundaries
       * (Recorder's `flushEvery`); default STEP_FLUSH_EVERY. Never changes what is computed. */
      flushEvery?: number;
    },
  ) {
    this.gpu = gpu;
    this.config = config;
    this.flushEvery = opts.flushEvery ?? STEP_FLUSH_EVERY;
    if (!(this.flushEvery >= 1)) throw new Error(`Pretrainer: flushEvery ${this.flushEvery} < 1`);
    this.gradAccum = opts.gradAccum ?? 1;
    if (!Number.isSafeInteger(this.gradAccum) || this.gradAccum < 1) {
      throw new Error(`Pretrainer: gradAccum ${this.gradAccum} is not an integer ≥ 1`);
    }
    const maxBatch = Math.ceil(opts.maxBatch / this.gradAccum);
    this.encoder = createEncoder(gpu, config, {
      maxBatch,
      maxSeq: opts.maxSeq,
      trainable: () => true,
      dropout: opts.dropout,
    });
    this.dropoutSeed = opts.dropoutSeed ?? 0;
    this.maxRows = opts.maxRows ?? maxMaskedRows(maxBatch, opts.maxSeq);
    const logitBytes = 4 * this.maxRows * config.vocabSize;
    const bindable = gpu.limits.maxStorageBufferBindingSize;
    if (logitBytes > bindable) {
      throw new Error(
        `the MLM logits of a batch (up to ${this.maxRows} masked tokens × ` +
          `${config.vocabSize} words) take ${logitBytes} bytes, more than one storage binding ` +
          `(${bindable}); use a --grad-accum, a smaller --batch-size or --max-length, or a ` +
          "pruned vocabulary",
      );
    }
    this.head = new MlmHead(gpu, config, this.maxRows);
    const h = config.hiddenSize;
    const t = (label: string, shape: number[], dtype: "f32" | "u32" = "f32") =>
      createTensor(gpu, shape, dtype, label);
    this.rows = t("mlm rows", [this.maxRows], "u32");
    this.gathered = t("mlm gathered hidden", [this.maxRows, h]);
    const tokens = maxBatch * opts.maxSeq;
    this.slots = t("mlm slots", [tokens], "u32");
    this.targets = t("mlm targets", [this.maxRows], "u32");
    this.dLogits = t("mlm dLogits", [this.maxRows * config.vocabSize]);
    this.dHidden = t("mlm dHidden", [tokens, h]);
    this.loss = t("mlm loss", [1]);
    this.lossSum = t("mlm loss of the parts", [1]);
    this.lossPart = t("mlm loss of a part, weighted", [1]);
    this.ce = {
      lse: t("mlm log-sum-exp", [this.maxRows]),
      rowLoss: t("mlm row loss", [this.maxRows]),
      argmax: t("mlm predicted", [this.maxRows], "u32"),
    };
    this.stats = t("mlm step stats", [STATS_CAPACITY, 2]);
    const grads = this.encoder.gradients();
    const word = grads.get("embeddings.word_embeddings.weight");
    if (!word) throw new Error("Pretrainer: the word embeddings must train");
    this.wordGrad = word;
    const tensors: TrainableTensor[] = [];
    const params = encoderParameters(this.encoder.params);
    for (const [name, grad] of grads) {
      tensors.push({
        name: `${config.prefix}.${name}`,
        param: params.get(name)!,
        grad,
        decay: !isNoDecayName(name),
      });
    }
    const headGrads = this.head.gradients();
    for (const [name, param] of this.head.parameters()) {
      tensors.push({ name, param, grad: headGrads.get(name)!, decay: !isNoDecayName(name) });
    }
    this.optimizer = new AdamW(gpu, tensors, opts.adamw);
  }

  /** Every trained tensor under its checkpoint name. */
  parameters(): Map<string, Tensor> {
    return namedParameters(this.config, this.encoder, this.head);
  }

  /** Uploads a batch; returns the masked rows' count. */
  private setBatch(b: MlmBatch): number {
    this.encoder.setBatch({
      inputIds: b.inputIds,
      attentionMask: b.attentionMask,
      batch: b.batch,
      seqLen: b.seqLen,
    });
    const m = b.positions.length;
    if (m < 1) throw new Error("Pretrainer: a batch with no masked token");
    if (m > this.maxRows) {
      throw new Error(`Pretrainer: ${m} masked tokens in one batch, more than ${this.maxRows}`);
    }
    this.rows.view(0, [m]).upload(b.positions);
    this.targets.view(0, [m]).upload(b.targets);
    return m;
  }

  /**
   * Records forward, loss and (when training) backward for one batch or part of one: with
   * `weight` (its share of the batch's masked tokens) its loss and gradients are weighted and
   * summed into the others' (`accumulate` for all but the first part). The `last` part
   * completes the gradients and, with an `lr` (null: the gradients alone), updates.
   */
  private record(
    rec: Recorder,
    b: MlmBatch,
    m: number,
    train: {
      lr: number | null;
      step: number;
      last: boolean;
      part?: { first: boolean; weight: number };
    } | null,
  ) {
    const h = this.config.hiddenSize, v = this.config.vocabSize;
    const n = b.batch * b.seqLen;
    const hidden = this.encoder.forward(rec, {
      training: train !== null,
      seed: this.dropoutSeed,
      step: train?.step ?? 0,
    });
    const flat = hidden.view(0, [n, h]);
    const rows = this.rows.view(0, [m]);
    const gathered = this.gathered.view(0, [m, h]);
    gatherRowsForward(rec, { x: flat, rows, out: gathered });
    const logits = this.head.forward(rec, gathered, this.encoder.params.embeddings.word);
    const targets = this.targets.view(0, [m]);
    const ce = {
      lse: this.ce.lse.view(0, [m]),
      rowLoss: this.ce.rowLoss.view(0, [m]),
      argmax: this.ce.argmax.view(0, [m]),
    };
    vocabCrossEntropyForward(rec, { logits, targets, loss: this.loss, state: ce });
    if (!train) return;
    const part = train.part;
    if (part) {
      // A part's loss is the mean over its own masked tokens: weighted by its share of the
      // batch's, the parts' losses and gradients sum to the whole batch's.
      if (part.first) scale(rec, { x: this.loss, out: this.lossSum, alpha: part.weight });
      else {
        scale(rec, { x: this.loss, out: this.lossPart, alpha: part.weight });
        addInPlace(rec, { x: this.lossPart, into: this.lossSum });
      }
    }
    const accumulate = part !== undefined && !part.first;
    const dLogits = this.dLogits.view(0, [m, v]);
    vocabCrossEntropyBackward(rec, {
      logits,
      targets,
      lse: ce.lse,
      dLogits,
      gradScale: part?.weight,
    });
    const dRows = this.head.backward(rec, dLogits, { accumulate });
    const dHidden = this.dHidden.view(0, [n, h]);
    gatherRowsBackward(rec, { dOut: dRows, slot: this.slots.view(0, [n]), dX: dHidden });
    this.encoder.backward(rec, dHidden.view(0, [b.batch, b.seqLen, h]), { accumulate });
    // The decoder's share (summed over the parts) goes in once the table's own is complete.
    if (!train.last) return;
    addInPlace(rec, { x: this.head.dWordDecoder, into: this.wordGrad });
    if (train.lr === null) return;
    this.optimizer.record(rec, train.lr);
    const row = this.statsOnGpu++ * 8;
    rec.copy("mlm step loss", part ? this.lossSum : this.loss, this.stats.view(row, [1]));
    rec.copy(
      "mlm step norm",
      this.optimizer.normTensor.view(0, [1]),
      this.stats.view(row + 4, [1]),
    );
  }

  /**
   * One training step on `b` at `lr`; `step` (global) seeds the dropout masks. The batch runs in
   * gradAccum parts (splitMlmBatch), each submitted in turn with the masks of step · gradAccum +
   * its index (with gradAccum 1, the step itself), their gradients summed, then one update.
   */
  async step(b: MlmBatch, lr: number, step: number): Promise<void> {
    if (this.statsOnGpu === STATS_CAPACITY) await this.flushStats();
    this.statsSteps.push(step);
    await this.run(b, lr, step);
  }

  /**
   * The loss of `b` (returned) and the gradients of every parameter (the encoder's
   * `gradients()`, the head's `gradients()`; the word table's includes the decoder's share), with
   * no update: what tests compare against PyTorch. Dropout follows the constructor's setting.
   */
  async lossAndGradients(b: MlmBatch, step = 0): Promise<number> {
    const loss = await this.run(b, null, step);
    return (await loss.download())[0];
  }

  /**
   * Runs `b`'s parts: gradients summed, and with an `lr` the update. Returns the tensor that
   * holds the batch's loss.
   */
  private async run(b: MlmBatch, lr: number | null, step: number): Promise<Tensor> {
    const parts = splitMlmBatch(b, this.gradAccum);
    const total = b.positions.length;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i];
      // Uploads are queued in order with the submits, so each part reads its own inputs.
      const m = this.setBatch(part);
      const n = part.batch * part.seqLen;
      this.slots.view(0, [n]).upload(selectionSlots(part.positions, n));
      // Handed to the GPU in parts at layer boundaries, as the Trainer's steps.
      const rec = new Recorder(this.gpu, this.bindGroups, this.flushEvery);
      this.record(rec, part, m, {
        lr,
        step: step * this.gradAccum + i,
        last: i === parts.length - 1,
        part: parts.length > 1 ? { first: i === 0, weight: m / total } : undefined,
      });
      await rec.submit();
    }
    return parts.length > 1 ? this.lossSum : this.loss;
  }

  private pending: StepStats[] = [];

  /** Reads the steps' loss and norm kept on the GPU since the last flush into `pending`. */
  private async flushStats(): Promise<void> {
    if (this.statsOnGpu === 0) return;
    const values = await this.stats.view(0, [this.statsOnGpu, 2]).download();
    for (let i = 0; i < this.statsOnGpu; i++) {
      this.pending.push({
        step: this.statsSteps[i],
        loss: values[2 * i],
        gradNorm: values[2 * i + 1],
      });
    }
    this.statsOnGpu = 0;
    this.statsSteps = [];
  }

  /** The loss and gradient norm of every step since the last call. */
  async takeStats(): Promise<StepStats[]> {
    await this.flushStats();
    const out = this.pending;
    this.pending = [];
    return out;
  }

  /** What takeStats would return now, left in place (for a checkpoint). */
  async peekStats(): Promise<StepStats[]> {
    await this.flushStats();
    return this.pending.map((s) => ({ ...s }));
  }

  /** Puts back the stats a checkpoint held, ahead of every step trained since (a resume). */
  restoreStats(stats: readonly StepStats[]): void {
    this.pending = [...stats.map((s) => ({ ...s })), ...this.pending];
  }

  /** Loss (summed over tokens) and correct predictions of one held-out batch. */
  async evaluate(b: MlmBatch): Promise<{ lossSum: number; correct: number; tokens: number }> {
    let lossSum = 0, correct = 0;
    // In the training's parts: the GPU holds one part at once.
    for (const part of splitMlmBatch(b, this.gradAccum)) {
      const m = this.setBatch(part);
      const rec = new Recorder(this.gpu, this.bindGroups);
      this.record(rec, part, m, null);
      await rec.submit();
      const [loss] = await this.loss.download();
      const predicted = await this.ce.argmax.view(0, [m]).download();
      for (let i = 0; i < m; i++) if (predicted[i] === part.targets[i]) correct++;
      lossSum += loss * m;
    }
    return { lossSum, correct, tokens: b.positions.length };
  }

  /** Frees every GPU buffer: encoder, head, optimizer and step buffers. */
  destroy(): void {
    this.bindGroups.clear();
    this.encoder.destroy();
    this.head.destroy();
    this.optimizer.destroy();
    for (
      const t of [
        this.rows,
        this.gathered,
        this.slots,
        this.targets,
        this.dLogits,
        this.dHidden,
        this.loss,
        this.lossSum,
        this.lossPart,
        this.ce.lse,
        this.ce.rowLoss,
        this.ce.argmax,
        this.stats,
      ]
    ) t.destroy();
  }
}

/** BERT's pretraining optimizer (weight decay 0.01, ε 1e-6), with gradients clipped at norm 1. */
export const PRETRAIN_ADAMW: AdamwSettings = {
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-6,
  weightDecay: 0.01,
  maxGradNorm: 1,
};

/** The held-out batches: the same masks at every evaluation (a seed of their own). */
export function heldOutBatches(
  sequences: readonly Uint32Array[],
  ids: MaskingIds,
  batchSize: number,
  seed: number,
): MlmBatch[] {
  const out: MlmBatch[] = [];
  for (let i = 0; i < sequences.length; i += batchSize) {
    const random = generator(streamSeed(seed, i, 3));
    out.push(maskBatch(sequences.slice(i, i + batchSize), ids, random));
  }
  return out;
}

/** The training batch of global step `step`. */
export function trainingBatch(
  sequences: readonly Uint32Array[],
  ids: MaskingIds,
  batchSize: number,
  seed: number,
  step: number,
): MlmBatch {
  const picked = [...batchIndices(sequences.length, batchSize, seed, step)].map((i) =>
    sequences[i]
  );
  return maskBatch(picked, ids, generator(streamSeed(seed, step, 2)));
}

async function evaluateHeldOut(trainer: Pretrainer, batches: readonly MlmBatch[]) {
  let lossSum = 0, correct = 0, tokens = 0;
  for (const b of batches) {
    const r = await trainer.evaluate(b);
    lossSum += r.lossSum;
    correct += r.correct;
    tokens += r.tokens;
  }
  return { loss: lossSum / tokens, accuracy: correct / tokens, tokens };
}

/** Saves the model as a Hugging Face *ForMaskedLM checkpoint (config.json, model.safetensors). */
export async function saveMlmModel(
  dir: string,
  trainer: Pretrainer,
  dtype: "F32" | "F16",
  metadata: Record<string, string> = {},
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const params = trainer.parameters();
  const names = [...params.keys()];
  const data = await downloadTensors(names.map((n) => params.get(n)!));
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  names.forEach((n, i) => {
    // F16 rounds a finite value from 65520 up to infinity: a model every loader refuses.
    const past = dtype === "F16" ? data[i].findIndex((v) => Math.abs(v) >= 65520) : -1;
    if (past >= 0) {
      throw new Error(
        `${dir}/model.safetensors: "${n}" holds ${data[i][past]} (element ${past}), beyond ` +
          "F16's range (±65504): such a model is saved with --model-dtype f32 (the run's last " +
          "checkpoint is kept)",
      );
    }
    tensors[n] = { dtype, shape: [...params.get(n)!.shape], data: data[i] };
  });
  await writeSafetensors(`${dir}/model.safetensors`, tensors, { format: "pt", ...metadata });
  const masked = {
    bert: "BertForMaskedLM",
    roberta: "RobertaForMaskedLM",
    electra: "ElectraForMaskedLM",
  };
  const architecture = trainer.config.modelType === "xlm-roberta"
    ? "XLMRobertaForMaskedLM"
    : masked[trainer.config.prefix];
  const raw = { ...trainer.config.raw, architectures: [architecture] };
  await writeFileAtomic(`${dir}/config.json`, JSON.stringify(raw, null, 2) + "\n");
}

/** Runs (or resumes) pretraining; writes log.jsonl, checkpoints and `<out>/model`. */
export async function pretrain(gpu: Gpu, o: PretrainOptions): Promise<PretrainResult> {
  const started = performance.now();
  const evalBatches = heldOutBatches(
    o.evalSequences > 0 ? o.heldOut.slice(0, o.evalSequences) : o.heldOut,
    o.ids,
    o.batchSize,
    o.seed,
  );
  const plan = planBatches(
    o.train,
    o.ids,
    o.batchSize,
    o.seed,
    o.steps,
    evalBatches,
    o.gradAccum,
  );
  const trainer = new Pretrainer(gpu, o.config, {
    maxBatch: o.batchSize,
    maxSeq: o.maxSeq,
    adamw: o.adamw,
    dropoutSeed: streamSeed(o.seed, 0, 4),
    maxRows: plan.maxRows,
    gradAccum: o.gradAccum,
  });
  let log: RunLog | null = null;
  try {
    await Deno.mkdir(o.out, { recursive: true });
    const checkpointPath = `${o.out}/${CHECKPOINT_FILE}`;
    const logPath = `${o.out}/${PRETRAIN_LOG}`;
    // Kept by the checkpoint's line count on --resume, then appended to (it was rewritten whole,
    // and synced, at every line: quadratic in the run's length).
    let keptLines: string[] = [];
    let start = 0;
    let lastEval: PretrainResult["heldOut"] = null;
    let pendingTokens = 0, pendingMasked = 0;
    const params = trainer.parameters();
    const checkpoint = o.resume ? await readTrainingCheckpoint(checkpointPath) : null;
    if (o.resume) await removeStaleTemporaries(o.out, PRETRAIN_FILES, ["model"]);
    if (checkpoint) {
      const names = trainer.optimizer.moments().keys();
      checkWholeCheckpoint(checkpointPath, checkpoint, params.keys(), names, START_AGAIN);
      uploadByName("resume", checkpoint.params, params);
      const moments = trainer.optimizer.moments();
      for (const [name, { m, v }] of checkpoint.moments) {
        const target = moments.get(name);
        if (!target) throw new Error(`resume: "${name}" has moments but does not train`);
        target.m.upload(m);
        target.v.upload(v);
      }
      // Uploaded: the host copies go (held for the whole run, they were weights and moments).
      checkpoint.params.clear();
      checkpoint.moments.clear();
      const state = checkpoint.state as PretrainState;
      checkPretrainState(checkpointPath, state, o.steps);
      trainer.optimizer.resumeAt(state.adamStep);
      start = state.step;
      keptLines = await keptLogLines(logPath, state.logLines, state.step, checkpointPath);
      if (state.pending) {
        const p = state.pending;
        const value = (x: number | null) => x ?? NaN;
        trainer.restoreStats(
          p.steps.map((step, i) => ({
            step,
            loss: value(p.loss[i]),
            gradNorm: value(p.grad_norm[i]),
          })),
        );
        pendingTokens = p.tokens;
        pendingMasked = p.masked;
      }
      if (state.held_out !== undefined) lastEval = state.held_out;
      else if (state.last && evalBatches.length > 0) {
        // A checkpoint from before held_out: the loss and accuracy of the last evaluation, and
        // its masked tokens (the held-out masks are fixed).
        lastEval = {
          loss: state.last.loss!,
          accuracy: state.last.accuracy!,
          tokens: evalBatches.reduce((a, b) => a + b.positions.length, 0),
        };
      }
    } else {
      for (const [name, data] of o.initial.encoder) {
        const t = params.get(`${o.config.prefix}.${name}`);
        if (!t) throw new Error(`initial tensor "${name}" is not the encoder's`);
        t.upload(data);
      }
      trainer.head.upload(o.initial.head);
    }
    log = await RunLog.open(logPath, keptLines.length);
    const runLog = log;
    const writeLog = async (record: Record<string, unknown>) => {
      await runLog.write([record]);
      o.onLog?.(record);
    };
    const progress = new Progress({ total: o.steps, done: start, quiet: o.quiet });
    if (checkpoint) progress.line(`pretrain: resumed at step ${start} of ${o.steps}`);
    // Killed before its first checkpoint: said, as its log begins again.
    else if (o.resume) {
      progress.line(`pretrain: --resume: no checkpoint in ${o.out} yet: starting at step 0`);
    }
    let tokens = 0;
    const notFinite = (step: number) =>
      new Error(
        `the loss is not finite at step ${step}; the last checkpoint is ${checkpointPath} ` +
          `(--resume goes on from it with the same settings; --lr is one of them: a lower one ` +
          `is a new run, in another --out)`,
      );
    const logStats = async (step: number) => {
      const stats = await trainer.takeStats();
      if (stats.length === 0) return;
      const loss = stats.reduce((a, s) => a + s.loss, 0) / stats.length;
      const gradNorm = stats.reduce((a, s) => a + s.gradNorm, 0) / stats.length;
      if (!Number.isFinite(loss)) throw notFinite(step);
      await writeLog({
        step,
        loss,
        grad_norm: gradNorm,
        lr: learningRate(o.schedule, step - 1),
        tokens: pendingTokens,
        masked: pendingMasked,
        seconds: (performance.now() - started) / 1000,
      });
      progress.logged("pretrain", step, loss);
      pendingTokens = 0;
      pendingMasked = 0;
    };
    const evaluate = async (step: number) => {
      if (evalBatches.length === 0) return;
      lastEval = await evaluateHeldOut(trainer, evalBatches);
      await writeLog({
        step,
        held_out_loss: lastEval.loss,
        held_out_accuracy: lastEval.accuracy,
        held_out_tokens: lastEval.tokens,
      });
      progress.line(
        `pretrain step ${step}: held-out MLM loss ${lastEval.loss.toFixed(4)}, accuracy ` +
          `${(100 * lastEval.accuracy).toFixed(2)}% (${lastEval.tokens} masked tokens)`,
      );
    };
    // `owed`: a SIGTERM's stop before the step's held-out evaluation, which the resumed run does.
    const saveCheckpoint = async (step: number, owed = false) => {
      const pending = await trainer.peekStats();
      // A diverged step waiting for its log line: keep the last checkpoint, which did not.
      if (pending.some((s) => !Number.isFinite(s.loss))) throw notFinite(step);
      const finite = (x: number) => Number.isFinite(x) ? x : null;
      const state: PretrainState = {
        stage: 0,
        stageStep: step,
        step,
        adamStep: trainer.optimizer.step,
        best: {},
        last: lastEval ? { loss: lastEval.loss, accuracy: lastEval.accuracy } : null,
        logLines: runLog.lines,
        pending: {
          steps: pending.map((s) => s.step),
          loss: pending.map((s) => finite(s.loss)),
          grad_norm: pending.map((s) => finite(s.gradNorm)),
          tokens: pendingTokens,
          masked: pendingMasked,
        },
        held_out: lastEval,
        ...(owed ? { owed } : {}),
      };
      // The log's lines on disk before the checkpoint that counts them.
      await runLog.sync();
      await writeTrainingCheckpoint(checkpointPath, state, {
        params,
        moments: trainer.optimizer.moments(),
      });
    };
    if (start === 0) await evaluate(0);
    else if (checkpoint?.state.owed) {
      await evaluate(start);
      // The run's last step: its checkpoint as the run would have left it, the evaluation in.
      if (start === o.steps) await saveCheckpoint(start);
    }
    setStepLoop(true);
    try {
      for (let step = start; step < o.steps; step++) {
        const b = trainingBatch(o.train, o.ids, o.batchSize, o.seed, step);
        const signals = signalTurn();
        await trainer.step(b, learningRate(o.schedule, step), step);
        await signals();
        if (step === start && o.onTrainingStart) {
          // A read waits for the GPU to finish the step (a submit only hands it over).
          await trainer.peekStats();
          o.onTrainingStart();
        }
        const real = realTokens(b);
        tokens += real;
        pendingTokens += real;
        pendingMasked += b.positions.length;
        const done = step + 1;
        progress.step("pretrain", done, null);
        if (done % o.logEvery === 0 || done === o.steps) await logStats(done);
        const evaluates = evalBatches.length > 0 && (done % o.evalEvery === 0 || done === o.steps);
        // A SIGTERM's stop: a checkpoint at this step first, so the resumed run loses none. The
        // step's evaluation is left to the resumed run (it could outlast a scheduler's grace
        // period before its SIGKILL). The step's GPU work is waited for first, as the evaluation
        // would: a signal during it reached its listener only inside the evaluation.
        if (evaluates) await trainer.peekStats();
        const early = stopRequested();
        if (early && evaluates) {
          await saveCheckpoint(done, true);
          await early();
        }
        if (evaluates) await evaluate(done);
        const periodic = done % o.checkpointEvery === 0 || done === o.steps;
        if (periodic) await saveCheckpoint(done);
        // Asked for before or during that write: the checkpoint kept is this step's.
        const stop = done < o.steps ? stopRequested() : null;
        if (stop && !periodic) await saveCheckpoint(done);
        if (stop) await stop();
      }
    } finally {
      setStepLoop(false);
    }
    progress.finish();
    await saveMlmModel(`${o.out}/model`, trainer, o.modelDtype, {
      ehft_pretrain_steps: String(o.steps),
    });
    return {
      steps: o.steps,
      tokens,
      totalTokens: plan.stepTokens.reduce((a, x) => a + x, 0),
      seconds: (performance.now() - started) / 1000,
      heldOut: lastEval,
    };
  } finally {
    log?.close();
    trainer.destroy();
  }
}
