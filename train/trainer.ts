// One model being trained: the encoder, the EH-FT head, an optional PEFT method, the loss and
// the optimizer of the current stage. A training step is recorded into one recorder, which hands
// it to the GPU in parts as it goes (STEP_FLUSH_EVERY), and submitted at the end:
//
//   setBatch → encoder forward (dropout seeded by the run and the step) → head forward → loss
//   forward and backward → head backward → encoder backward (only what trains) → global-norm clip
//   → AdamW → the step's loss and gradient norm copied into a small stats buffer
//
// and nothing is read back: the stats buffer is downloaded only when the loop logs (every few
// dozen steps, before an evaluation or a checkpoint).
//
// Precision "f16" runs the encoder's matrix products on f16 copies and activations
// (EncoderOptions.precision) and adds dynamic loss scaling (kernels/loss_scale.ts), since the
// activations' gradients are f16 too: the loss gradient is multiplied by the scale S right after
// the loss backward, the norm kernel unscales, detects non-finite gradients and updates S, and
// AdamW skips a step whose gradients were not finite, all on the GPU. The state lives as long as the Trainer (stages share it, checkpoints save it);
// each step's S and skip flag join its stats.
//
// Several encoder inputs per example (COPA: one per choice, one logit each): the k inputs of an
// example are consecutive rows, the head's [B·k, 1] logits are read as [B, k], and
// cross-entropy over the k choices applies.
//
// WiC (`wic`): the head pools the target word's tokens of each text, at the token ranges each
// batch carries (`TrainBatch.spans`, uploaded by head.setSpans before the head's forward).
//
// Tensor names, here and in checkpoints: backbone `<prefix>.<Hugging Face name>`, the head
// `head.*`, the PEFT method's own names (`lora.*`, `prefix.*`).

import type { Gpu } from "../kernels/device.ts";
import { bceWithLogitsBackward, bceWithLogitsForward } from "../kernels/bce_with_logits.ts";
import { LOSS_SCALED_NORM } from "../kernels/grad_norm.ts";
import {
  checkLossScaleSettings,
  createLossScaleState,
  LOSS_SCALE_DEFAULTS,
  LOSS_SCALE_STATE,
  type LossScaleSettings,
  type LossScaleValues,
  lossScaleValues,
  type LossScaling,
  scaleByLossScale,
} from "../kernels/loss_scale.ts";
import { mseBackward, mseForward } from "../kernels/mse.ts";
import { addInPlace, scale } from "../kernels/add.ts";
import { BindGroupCache, Recorder, STEP_FLUSH_EVERY } from "../kernels/recorder.ts";
import {
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from "../kernels/softmax_cross_entropy.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { loadBackbone } from "../model/checkpoint.ts";
import type { ModelConfig } from "../model/config.ts";
import {
  checkDropoutCounter,
  createEncoder,
  type Encoder,
  encoderParameters,
  type Precision,
} from "../model/encoder.ts";
import { createHead, type Head, HEAD_WIDTH, headGradients, headParameters } from "../model/head.ts";
import type { SafetensorsReader } from "../model/safetensors.ts";
import type { PeftMethod } from "../peft/method.ts";
import type { TrainBatch } from "./batches.ts";
import {
  AdamW,
  type AdamwSettings,
  checkAdamwSettings,
  isNoDecayName,
  type TrainableTensor,
} from "./optimizer.ts";
import type { Stage, StageTrains } from "./strategy.ts";
import type { LossKind } from "./task.ts";

/** A Trainer's model, loss and head, capacity, seeds, PEFT method, AdamW settings and precision. */
export interface TrainerOptions {
  /** The backbone's architecture. */
  config: ModelConfig;
  /** The task's loss (ce needs class ids; bce and mse a 1-output head). */
  loss: LossKind;
  /** Head outputs per encoder input (1 for binary tasks, regression and multiple choice). */
  headClasses: number;
  /**
   * The head reads WiC features [h0; w1; w2; |w1 − w2|; w1 ⊙ w2] (F = 5·hidden): every batch
   * then carries its target-word `spans`, one encoder input per example.
   */
  wic?: boolean;
  /** Encoder inputs per example (k > 1: multiple choice, cross-entropy over the k logits). */
  inputsPerExample?: number;
  /** Largest batch in examples; the arena holds maxExamples · inputsPerExample rows. */
  maxExamples: number;
  /** Longest row (tokens) of any batch. */
  maxSeq: number;
  /** The most rows × tokens of one forward, when known (EncoderOptions.maxRows). */
  maxRows?: number;
  /** Prefix rows the encoder must make room for (the PEFT method's prefixLength). */
  maxPrefix?: number;
  /** Dropout of both kinds; default the model config's (0 turns it off). */
  dropout?: number;
  /** The head's hidden units (default 2048). */
  headWidth?: number;
  /** Seed of the head's initialisation. */
  headSeed: number;
  /** Seed of the dropout masks (mixed with the global step). */
  dropoutSeed: number;
  /**
   * The most micro-batches `step` takes (default 1): their gradients are summed into one update,
   * and micro-batch i of step t draws the dropout masks of t · gradAccum + i.
   */
  gradAccum?: number;
  /** The PEFT method, made by the caller and owned by the Trainer from then on; default none. */
  peft?: PeftMethod | null;
  /**
   * Not read by the Trainer (`beginStage` takes each stage's AdamW settings, e.g.
   * ADAMW_DEFAULTS); optional, and kept for callers that pass it.
   */
  adamw?: AdamwSettings;
  /**
   * "f16": the encoder's f16 weight copies and activations (EncoderOptions.precision) and
   * dynamic loss scaling of the gradients; default "f32".
   */
  precision?: Precision;
  /**
   * With precision "f16": the encoder's matrix products (linear layers, attention) multiply and
   * sum in f16 (EncoderOptions.f16Math); default false.
   */
  f16Math?: boolean;
  /**
   * Dynamic loss scaling; default: on with precision "f16" only. (On in f32, it must change
   * nothing: a power-of-two scale and its inverse are exact. tests/loss_scale_test.ts checks it.)
   */
  lossScaling?: boolean;
  /** The loss scaler's policy; default LOSS_SCALE_DEFAULTS (torch's). */
  lossScale?: Partial<LossScaleSettings>;
  /**
   * No stage will run the encoder's backward (linear probing: the head alone trains): the
   * encoder's layers then share one set of activations, as for inference (at RoBERTa-large,
   * batch 32 × 128, 6.75 GiB less), with dropout as in training. A stage that trains the backbone
   * or a PEFT method is refused.
   */
  frozenBackbone?: boolean;
  /**
   * A step's commands go to the GPU in parts of at least this many, at layer boundaries
   * (Recorder's `flushEvery`); default STEP_FLUSH_EVERY. Changes when the GPU starts, never what
   * it computes.
   */
  flushEvery?: number;
}

/** One step's logged values. */
export interface StepStats {
  /** The step's mean loss over the batch. */
  loss: number;
  /** The unscaled global gradient norm (a skipped step's raw, non-finite value). */
  gradNorm: number;
  /** With loss scaling (precision "f16"): the scale this step's gradients were multiplied by. */
  lossScale?: number;
  /** With loss scaling: whether the step was skipped (non-finite gradients). */
  skipped?: boolean;
}

/** Steps whose stats wait on the GPU before a download. */
const STATS_CAPACITY = 64;

const LOSS_KINDS: readonly LossKind[] = ["bce", "ce", "mse"];
const BACKBONE_TRAINS: readonly StageTrains["backbone"][] = ["all", "none", "peft"];

/**
 * One model being trained: encoder, EH-FT head, optional PEFT method, loss and the current
 * stage's optimizer. The encoder starts zeroed (load it, e.g. with loadBackbone); `beginStage`
 * before `step`. destroy() frees every GPU buffer, the PEFT method's included.
 */
export class Trainer {
  /** The device everything is allocated on. */
  readonly gpu: Gpu;
  /** The backbone's architecture. */
  readonly config: ModelConfig;
  /** The encoder (owned by the Trainer). */
  readonly encoder: Encoder;
  /** The EH-FT head (owned by the Trainer). */
  readonly head: Head;
  /** The task's loss. */
  readonly loss: LossKind;
  /** Encoder rows per example (k > 1: multiple choice). */
  readonly inputsPerExample: number;
  /** Largest batch, in examples. */
  readonly maxExamples: number;
  /** Outputs the loss sees per example: k for multiple choice, else the head's classes. */
  readonly outputs: number;
  /** Seed of the dropout masks (mixed with each step). */
  readonly dropoutSeed: number;
  /** The most micro-batches a step takes (TrainerOptions.gradAccum). */
  readonly gradAccum: number;
  /** The PEFT method, or null (none, or dropped by `dropPeft`). */
  peft: PeftMethod | null;
  /** The current stage's optimizer; null before `beginStage`. */
  optimizer: AdamW | null = null;
  /** What the current stage trains; null before `beginStage`. */
  trains: StageTrains | null = null;

  private readonly lossTensor: Tensor;
  /** With micro-batches: the step's loss, its parts' weighted sum, and one weighted part. */
  private readonly lossSum: Tensor;
  private readonly lossPart: Tensor;
  /** With micro-batches: a part's dLogits weighted by its share of the batch. */
  private readonly dLogitsPart: Tensor;
  private readonly targetsF32: Tensor;
  private readonly targetsU32: Tensor;
  private readonly dLogits: Tensor;
  private readonly stats: Tensor;
  /** Floats per step in `stats`: [loss, norm], or [loss, ...the optimizer's LOSS_SCALED_NORM]. */
  private readonly statsWidth: number;
  private readonly lossScaling: LossScaling | null;
  /** The encoder's precision (TrainerOptions.precision). */
  readonly precision: Precision;
  private statsOnGpu = 0;
  /** The bind groups of the steps and evaluations, which bind the same buffers every time. */
  private readonly bindGroups = new BindGroupCache();
  private readonly flushEvery: number;
  private statsOnHost: StepStats[] = [];
  /** Set by destroy(): every later use is refused, naming the call. */
  private destroyed = false;

  /** Allocates encoder, head and loss buffers; throws when loss, head and inputs do not fit. */
  constructor(gpu: Gpu, opts: TrainerOptions) {
    const k = opts.inputsPerExample ?? 1;
    if (!Number.isSafeInteger(k) || k < 1) throw new Error(`Trainer: inputsPerExample ${k}`);
    const precision = opts.precision ?? "f32";
    if (precision !== "f32" && precision !== "f16") {
      throw new Error(`Trainer: precision "${precision}" is not "f32" or "f16"`);
    }
    const policy = { ...LOSS_SCALE_DEFAULTS, ...opts.lossScale };
    checkLossScaleSettings("Trainer", policy);
    // "false" would read as true.
    for (const key of ["f16Math", "lossScaling"] as const) {
      if (opts[key] !== undefined && typeof opts[key] !== "boolean") {
        throw new Error(`Trainer: ${key} is ${JSON.stringify(opts[key])}, not true or false`);
      }
    }
    if (!LOSS_KINDS.includes(opts.loss)) {
      throw new Error(`Trainer: loss "${opts.loss}" is not one of ${LOSS_KINDS.join(", ")}`);
    }
    if (!Number.isSafeInteger(opts.headClasses) || opts.headClasses < 1) {
      throw new Error(`Trainer: headClasses ${opts.headClasses} is not a positive integer`);
    }
    // Softmax over one output is 1 whatever it is: a loss and gradient of 0, nothing trains.
    if (opts.loss === "ce" && opts.headClasses === 1 && k === 1) {
      throw new Error(
        "Trainer: cross-entropy over a 1-output head needs inputsPerExample > 1 (the choices " +
          "of a multiple-choice task); with one input, give headClasses ≥ 2, or loss bce",
      );
    }
    if (k > 1 && (opts.headClasses !== 1 || opts.loss !== "ce")) {
      throw new Error(
        `Trainer: ${k} inputs per example need a 1-output head and cross-entropy over the ` +
          `inputs (got ${opts.headClasses} outputs, loss ${opts.loss})`,
      );
    }
    if (opts.wic && k !== 1) {
      throw new Error(`Trainer: the WiC head takes one encoder input per example, not ${k}`);
    }
    if (opts.loss !== "ce" && opts.headClasses !== 1) {
      throw new Error(`Trainer: loss ${opts.loss} needs a 1-output head, not ${opts.headClasses}`);
    }
    this.gpu = gpu;
    this.config = opts.config;
    this.loss = opts.loss;
    this.inputsPerExample = k;
    this.maxExamples = opts.maxExamples;
    this.outputs = k > 1 ? k : opts.headClasses;
    checkDropoutCounter("Trainer", opts.dropoutSeed, 0);
    this.dropoutSeed = opts.dropoutSeed;
    const gradAccum = opts.gradAccum ?? 1;
    if (!Number.isSafeInteger(gradAccum) || gradAccum < 1) {
      throw new Error(`Trainer: gradAccum ${gradAccum} is not a positive integer`);
    }
    this.gradAccum = gradAccum;
    this.flushEvery = opts.flushEvery ?? STEP_FLUSH_EVERY;
    if (!(this.flushEvery >= 1)) throw new Error(`Trainer: flushEvery ${this.flushEvery} < 1`);
    this.peft = opts.peft ?? null;
    const maxRows = opts.maxExamples * k;
    this.encoder = createEncoder(gpu, opts.config, {
      maxBatch: maxRows,
      maxSeq: opts.maxSeq,
      maxRows: opts.maxRows,
      maxPrefix: Math.max(opts.maxPrefix ?? 0, this.peft?.prefixLength ?? 0),
      dropout: opts.dropout,
      trainable: () => false,
      precision,
      f16Math: opts.f16Math,
      inference: opts.frozenBackbone ?? false,
    });
    this.head = createHead(gpu, {
      hiddenSize: opts.config.hiddenSize,
      numClasses: opts.headClasses,
      wic: opts.wic ?? false,
      width: opts.headWidth ?? HEAD_WIDTH,
      maxBatch: maxRows,
      maxSeq: opts.maxSeq,
      seed: opts.headSeed,
    });
    const t = (label: string, shape: number[], dtype: "f32" | "u32" = "f32") =>
      createTensor(gpu, shape, dtype, label);
    this.lossTensor = t("loss", [1]);
    this.targetsF32 = t("targets f32", [opts.maxExamples]);
    this.targetsU32 = t("targets u32", [opts.maxExamples], "u32");
    this.dLogits = t("dLogits", [maxRows * opts.headClasses]);
    this.lossSum = t("loss of the micro-batches", [1]);
    this.lossPart = t("loss of a micro-batch, weighted", [1]);
    this.dLogitsPart = t("dLogits of a micro-batch, weighted", [
      gradAccum > 1 ? maxRows * opts.headClasses : 1,
    ]);
    this.precision = precision;
    this.lossScaling = (opts.lossScaling ?? precision === "f16")
      ? {
        state: createLossScaleState(gpu, policy.initScale),
        growthFactor: policy.growthFactor,
        backoffFactor: policy.backoffFactor,
        growthInterval: policy.growthInterval,
      }
      : null;
    this.statsWidth = this.lossScaling ? 1 + LOSS_SCALED_NORM.length : 2;
    this.stats = t("step stats", [STATS_CAPACITY, this.statsWidth]);
  }

  /** Backbone parameters under their full names (`bert.embeddings...`). */
  backboneParameters(): Map<string, Tensor> {
    const prefix = this.config.prefix;
    return new Map(
      [...encoderParameters(this.encoder.params)].map(([n, t]) => [`${prefix}.${n}`, t]),
    );
  }

  /** The head's parameters under their checkpoint names (`head.dense.weight`, ...). */
  headParameters(): Map<string, Tensor> {
    return headParameters(this.head);
  }

  /** The PEFT method's own parameters by name; empty without one. */
  peftParameters(): Map<string, Tensor> {
    return this.peft?.parameters() ?? new Map();
  }

  /** Every tensor the current stage trains, by name (what the optimizer updates). */
  trainableParameters(): Map<string, Tensor> {
    return new Map(this.optimizer?.tensors.map((t) => [t.name, t.param]) ?? []);
  }

  /**
   * Starts a stage: sets what trains, installs or removes the PEFT hooks, and gives the stage a
   * fresh optimizer (zero moments, step 0).
   */
  beginStage(trains: StageTrains, adamw: AdamwSettings): void {
    this.assertNotDestroyed("beginStage");
    // Checked before anything changes: a refused stage leaves the trainer as it was.
    checkAdamwSettings("Trainer.beginStage", adamw);
    if (!BACKBONE_TRAINS.includes(trains.backbone)) {
      throw new Error(
        `Trainer.beginStage: backbone "${trains.backbone}" is not one of ` +
          BACKBONE_TRAINS.join(", "),
      );
    }
    // The last stage's bind groups name its optimizer's buffers, destroyed below.
    this.bindGroups.clear();
    if (trains.peft && !this.peft) throw new Error("Trainer: the stage trains a PEFT method");
    if (this.encoder.inference && (trains.peft || trains.backbone !== "none")) {
      throw new Error("Trainer: built with frozenBackbone, a stage may train the head only");
    }
    const peft = this.peft;
    const backbone = trains.backbone === "all"
      ? () => true
      : trains.backbone === "peft" && peft
      ? peft.trainsBackbone
      : () => false;
    this.encoder.setTrainable(backbone);
    this.encoder.setHooks(trains.peft ? peft!.hooks() ?? null : null);
    this.trains = trains;

    const prefix = this.config.prefix;
    const tensors: TrainableTensor[] = [];
    const params = encoderParameters(this.encoder.params);
    for (const [name, grad] of this.encoder.gradients()) {
      tensors.push({
        name: `${prefix}.${name}`,
        param: params.get(name)!,
        grad,
        decay: !isNoDecayName(name),
      });
    }
    if (trains.peft && peft) {
      const grads = peft.gradients();
      for (const [name, param] of peft.parameters()) {
        tensors.push({
          name,
          param,
          grad: grads.get(name)!,
          decay: !isNoDecayName(name) && !peft.noDecay(name),
        });
      }
    }
    const headGrads = headGradients(this.head);
    for (const [name, param] of headParameters(this.head)) {
      tensors.push({ name, param, grad: headGrads.get(name)!, decay: !isNoDecayName(name) });
    }
    this.optimizer?.destroy();
    this.optimizer = new AdamW(this.gpu, tensors, adamw, {
      lossScale: this.lossScaling ?? undefined,
    });
  }

  /** Removes the PEFT method: its hooks from the encoder, then its tensors. */
  dropPeft(): void {
    if (!this.peft) return;
    this.bindGroups.clear();
    this.encoder.setHooks(null);
    this.peft.destroy();
    this.peft = null;
  }

  /**
   * Re-reads the backbone from the pretrained checkpoint, bitwise, except the tensors (names
   * relative to the prefix) for which `keep` is true. The upload is queued before the next
   * submit.
   */
  async restoreBackbone(
    reader: SafetensorsReader,
    keep: (name: string) => boolean = () => false,
  ): Promise<void> {
    const params = encoderParameters(this.encoder.params);
    await loadBackbone(
      reader,
      this.config,
      new Map([...params].filter(([name]) => !keep(name))),
    );
  }

  /**
   * The hand-off before `stage` (train/strategy.ts): with `restoreBackbone`, the backbone
   * re-read from `pretrained` (the tensors the PEFT method trains kept, unless it is dropped);
   * with `dropPeft`, the PEFT method removed.
   */
  async handOff(
    stage: Pick<Stage, "restoreBackbone" | "dropPeft">,
    pretrained: SafetensorsReader,
  ): Promise<void> {
    if (stage.restoreBackbone) {
      const keep = !stage.dropPeft && this.peft ? this.peft.trainsBackbone : () => false;
      await this.restoreBackbone(pretrained, keep);
    }
    if (stage.dropPeft) this.dropPeft();
  }

  /** Whether anything below the head needs the encoder's backward this stage. */
  private encoderTrains(): boolean {
    if (this.encoder.gradients().size > 0) return true;
    return (this.trains?.peft ?? false) && (this.peft?.parameters().size ?? 0) > 0;
  }

  /** The head's logits per example: COPA-like tasks' rows regrouped, one row per example. */
  private logitsView(rowLogits: Tensor, examples: number): Tensor {
    return this.inputsPerExample > 1 ? rowLogits.view(0, [examples, this.outputs]) : rowLogits;
  }

  /**
   * Records and submits one training step on `batch` at learning rate `lr`; `step` is the global
   * step (it seeds the dropout masks). Its loss and gradient norm are kept for `takeStats`. Given
   * micro-batches (at most `gradAccum`, the batch's examples in parts), each is run and submitted
   * in turn, their gradients summed, each weighted by its share of the examples, and the update is
   * made once: the step of the whole batch, with less memory (up to the order of the sums, and
   * each part's own dropout masks). One micro-batch is exactly the step of that batch when
   * gradAccum is 1 (or dropout is off: with gradAccum K it draws the masks of step · K).
   */
  async step(batch: TrainBatch | readonly TrainBatch[], lr: number, step: number): Promise<void> {
    this.assertNotDestroyed("step");
    const optimizer = this.optimizer;
    if (!optimizer) throw new Error("Trainer.step: no stage begun");
    // Before anything is recorded: the step seeds dropout, and lr reaches AdamW last.
    checkDropoutCounter("Trainer.step", this.dropoutSeed, step);
    if (!(lr >= 0 && Number.isFinite(lr))) {
      throw new Error(`Trainer.step: lr ${lr} is not a finite number ≥ 0`);
    }
    const parts: readonly TrainBatch[] = Array.isArray(batch) ? batch : [batch as TrainBatch];
    if (parts.length < 1 || parts.length > this.gradAccum) {
      throw new Error(
        `Trainer.step: ${parts.length} micro-batches, not in [1, ${this.gradAccum}] (gradAccum)`,
      );
    }
    for (const part of parts) {
      this.checkBatch(part);
      this.checkTargets(part);
    }
    if (this.statsOnGpu === STATS_CAPACITY) await this.flushStats();
    const total = parts.reduce((n, part) => n + part.examples, 0);
    const whole = parts.length === 1;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i], E = part.examples;
      // Uploads are queued in order with the submits, so each part reads its own inputs.
      this.encoder.setBatch(part.encoder);
      this.setSpans(part);
      const targets = this.uploadTargets(part);
      const rec = new Recorder(this.gpu, this.bindGroups, this.flushEvery);
      const hidden = this.encoder.forward(rec, {
        training: true,
        seed: this.dropoutSeed,
        // Each part's masks of its own (with gradAccum 1, the step itself).
        step: step * this.gradAccum + i,
      });
      const rowLogits = this.head.forward(rec, hidden);
      const logits = this.logitsView(rowLogits, E);
      const dLogits = this.dLogits.view(0, [...logits.shape]);
      const loss = this.lossTensor;
      if (this.loss === "ce") {
        softmaxCrossEntropyForward(rec, { logits, targets, loss });
        softmaxCrossEntropyBackward(rec, { logits, targets, dLogits });
      } else if (this.loss === "bce") {
        bceWithLogitsForward(rec, { logits, targets, loss });
        bceWithLogitsBackward(rec, { logits, targets, dLogits });
      } else {
        mseForward(rec, { logits, targets, loss });
        mseBackward(rec, { logits, targets, dLogits });
      }
      let dOut = dLogits;
      if (!whole) {
        // A part's loss is the mean over its own examples: weighted by its share of the batch,
        // the parts' losses and gradients sum to the whole batch's.
        const w = E / total;
        dOut = this.dLogitsPart.view(0, [...logits.shape]);
        scale(rec, { x: dLogits, out: dOut, alpha: w });
        if (i === 0) scale(rec, { x: loss, out: this.lossSum, alpha: w });
        else {
          scale(rec, { x: loss, out: this.lossPart, alpha: w });
          addInPlace(rec, { x: this.lossPart, into: this.lossSum });
        }
      }
      if (this.lossScaling) scaleByLossScale(rec, { x: dOut, state: this.lossScaling.state });
      const accumulate = i > 0;
      const dHidden = this.head.backward(rec, dOut.view(0, [...rowLogits.shape]), { accumulate });
      if (this.encoderTrains()) this.encoder.backward(rec, dHidden, { accumulate });
      if (i === parts.length - 1) {
        optimizer.record(rec, lr);
        this.recordStats(rec, whole ? loss : this.lossSum, optimizer);
      }
      await rec.submit();
    }
  }

  /** Copies the step's loss and norm (and loss scale, skip flag) into the next stats row. */
  private recordStats(rec: Recorder, loss: Tensor, optimizer: AdamW): void {
    const row = this.statsOnGpu++ * this.statsWidth * 4;
    rec.copy("step loss", loss, this.stats.view(row, [1]));
    const norm = optimizer.normTensor;
    const copied = this.lossScaling ? norm : norm.view(0, [1]);
    rec.copy("step grad norm", copied, this.stats.view(row + 4, [copied.numel]));
  }

  /** A batch must fit the buffers sized at construction and agree with itself. */
  private checkBatch(batch: TrainBatch): void {
    const E = batch.examples;
    if (!Number.isSafeInteger(E) || E < 1 || E > this.maxExamples) {
      throw new Error(`Trainer: batch of ${E} examples is not in [1, ${this.maxExamples}]`);
    }
    if (batch.encoder.batch !== E * this.inputsPerExample) {
      throw new Error(
        `Trainer: ${batch.encoder.batch} encoder rows for ${E} examples of ` +
          `${this.inputsPerExample} inputs`,
      );
    }
    if (batch.targets.length !== E) {
      throw new Error(`Trainer: ${batch.targets.length} targets for ${E} examples`);
    }
  }

  /**
   * A step's targets as its loss takes them: on the host, before the step, since one class id
   * past the head's outputs (or a NaN score) makes the loss and every weight NaN from that step
   * on, and the step's stats say so only at the next flush.
   */
  private checkTargets(batch: TrainBatch): void {
    const bad = (i: number, what: string) =>
      new Error(`Trainer: target ${batch.targets[i]} of example ${i} is not ${what}`);
    for (let i = 0; i < batch.targets.length; i++) {
      const v = batch.targets[i];
      if (this.loss === "ce") {
        if (!Number.isInteger(v) || v < 0 || v >= this.outputs) {
          throw bad(i, `a class id in [0, ${this.outputs}) (loss ce)`);
        }
      } else if (this.loss === "bce") {
        if (!(v >= 0 && v <= 1)) throw bad(i, "a label in [0, 1] (loss bce)");
      } else if (!Number.isFinite(Math.fround(v))) {
        throw bad(i, "a finite f32 score (loss mse)");
      }
    }
  }

  /** A WiC head's target-word spans for `batch` (other heads read no spans). */
  private setSpans(batch: TrainBatch): void {
    if (!this.head.wic) return;
    if (!batch.spans) throw new Error("Trainer: the WiC head needs the batch's target-word spans");
    this.head.setSpans(batch.spans, batch.encoder.batch, batch.encoder.seqLen);
  }

  /** The batch's targets on the GPU: class ids (u32) for cross-entropy, else f32 values. */
  private uploadTargets(batch: TrainBatch): Tensor {
    const E = batch.examples;
    if (this.loss === "ce") {
      const targets = this.targetsU32.view(0, [E]);
      targets.upload(Uint32Array.from(batch.targets));
      return targets;
    }
    const targets = this.targetsF32.view(0, [E]);
    targets.upload(Float32Array.from(batch.targets));
    return targets;
  }

  /** Reads the steps' stats rows kept on the GPU since the last flush into the host's log. */
  private async flushStats(): Promise<void> {
    if (this.statsOnGpu === 0) return;
    const w = this.statsWidth;
    const values = await this.stats.view(0, [this.statsOnGpu, w]).download();
    for (let i = 0; i < this.statsOnGpu; i++) {
      const row = values.subarray(w * i, w * (i + 1));
      const stats: StepStats = { loss: row[0], gradNorm: row[1 + LOSS_SCALED_NORM.norm] };
      if (this.lossScaling) {
        stats.lossScale = row[1 + LOSS_SCALED_NORM.lossScale];
        stats.skipped = row[1 + LOSS_SCALED_NORM.skipped] !== 0;
      }
      this.statsOnHost.push(stats);
    }
    this.statsOnGpu = 0;
  }

  /** The loss-scale state tensor (f32 [4], LOSS_SCALE_STATE), or null without loss scaling. */
  get lossScaleState(): Tensor | null {
    return this.lossScaling?.state ?? null;
  }

  /** The current loss scale and counts (one download), or null without loss scaling. */
  async readLossScale(): Promise<LossScaleValues | null> {
    const state = this.lossScaling?.state;
    if (!state) return null;
    return lossScaleValues(await state.download());
  }

  /**
   * Puts back a saved state (LOSS_SCALE_STATE's four values, e.g. from a checkpoint; queued
   * before the next submit), so that a resumed f16 run continues bit for bit. `null` (a
   * checkpoint of a run without loss scaling) is accepted only without it, and values only with.
   */
  restoreLossScale(values: Float32Array | null): void {
    const state = this.lossScaling?.state;
    if (!state && values === null) return;
    if (!state) {
      throw new Error(
        "Trainer.restoreLossScale: a loss-scale state given, but this run has no loss scaling",
      );
    }
    if (values === null) {
      throw new Error(
        "Trainer.restoreLossScale: this run scales its loss and needs a loss-scale state, got none",
      );
    }
    if (values.length !== LOSS_SCALE_STATE.length) {
      throw new Error(`Trainer.restoreLossScale: ${values.length} values, expected 4`);
    }
    state.upload(values);
  }

  /** The loss and gradient norm of every step since the last call, in order. */
  async takeStats(): Promise<StepStats[]> {
    await this.flushStats();
    const out = this.statsOnHost;
    this.statsOnHost = [];
    return out;
  }

  /**
   * The model's outputs on `batches` (no dropout), per batch [examples, outputs] row-major:
   * logits, or k choice logits per example.
   */
  async predict(batches: readonly TrainBatch[]): Promise<Float32Array[]> {
    this.assertNotDestroyed("predict");
    if (batches.length === 0) return [];
    const C = this.outputs;
    // The head's logits are [rows, classes]; `outputs` values per example either way.
    const values = await this.forwardRows(
      batches,
      (rows) => this.head.outputs(rows),
      this.head.numClasses,
    );
    const out: Float32Array[] = [];
    let offset = 0;
    for (const b of batches) {
      out.push(values.slice(offset, offset + b.examples * C));
      offset += b.examples * C;
    }
    return out;
  }

  /**
   * For analysis (train/analysis.ts): the head's input features (the first token's final hidden
   * state, or WiC's pooled features) or its hidden layer (the `width` ReLU units) for every
   * encoder row of `batches` (k rows per example for multiple choice), without dropout, rows in
   * batch order: [rows · width] and the width.
   */
  async headFeatures(
    batches: readonly TrainBatch[],
    layer: "input" | "hidden",
    options: { peftHooks?: boolean } = {},
  ): Promise<{ values: Float32Array; width: number }> {
    const width = layer === "input" ? this.head.inFeatures : this.head.width;
    const pick = (rows: number) =>
      layer === "input" ? this.head.headInput(rows) : this.head.hiddenLayer(rows);
    // Without the PEFT method's hooks: the backbone alone (prefix rows, even untrained, change
    // every attention).
    const hooksOff = options.peftHooks === false && this.trains?.peft && this.peft;
    if (hooksOff) this.encoder.setHooks(null);
    try {
      return { values: await this.forwardRows(batches, pick, width), width };
    } finally {
      if (hooksOff) this.encoder.setHooks(this.peft!.hooks() ?? null);
    }
  }

  /** The logits of the last forward (a training step's batch after `step`), [rows, classes]. */
  stepOutputs(): Tensor {
    return this.head.outputs();
  }

  /**
   * Runs encoder and head without dropout over `batches` and gathers `pick(rows)` ([rows, width]
   * of each batch, rows = examples · k) of every batch, in order, with one download.
   */
  private async forwardRows(
    batches: readonly TrainBatch[],
    pick: (rows: number) => Tensor,
    width: number,
  ): Promise<Float32Array> {
    if (batches.length === 0) return new Float32Array(0);
    const total = batches.reduce((n, b) => n + b.examples * this.inputsPerExample, 0);
    const all = createTensor(this.gpu, [total * width], "f32", "evaluation outputs");
    try {
      let at = 0;
      for (const batch of batches) {
        this.checkBatch(batch);
        this.encoder.setBatch(batch.encoder);
        this.setSpans(batch);
        const rec = new Recorder(this.gpu, this.bindGroups);
        const hidden = this.encoder.forward(rec, { training: false });
        this.head.forward(rec, hidden);
        const n = batch.examples * this.inputsPerExample * width;
        rec.copy(
          "evaluation outputs",
          pick(batch.examples * this.inputsPerExample).view(0, [n]),
          all.view(at * 4, [n]),
        );
        at += n;
        await rec.submit();
      }
      return (await all.download()) as Float32Array;
    } finally {
      all.destroy();
    }
  }

  /** Throws naming `call` once destroy() was called. */
  private assertNotDestroyed(call: string): void {
    if (this.destroyed) throw new Error(`Trainer.${call}: the trainer was destroyed`);
  }

  /** Frees every GPU buffer: optimizer, PEFT method, encoder, head and loss buffers. */
  destroy(): void {
    this.destroyed = true;
    this.bindGroups.clear();
    this.optimizer?.destroy();
    this.optimizer = null;
    if (this.peft) {
      this.encoder.setHooks(null);
      this.peft.destroy();
      this.peft = null;
    }
    this.encoder.destroy();
    this.head.destroy();
    this.lossScaling?.state.destroy();
    const own = [this.lossTensor, this.lossSum, this.lossPart, this.targetsF32, this.targetsU32];
    for (const t of [...own, this.dLogits, this.dLogitsPart, this.stats]) {
      t.destroy();
    }
  }
}
