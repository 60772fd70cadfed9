// `--analysis`: what a run measures to show why (or whether) EH-FT works, as the paper argues
// with its figures. Everything is read off the real run between its steps; nothing here changes
// the training (forward passes without dropout, reads of tensors the step left behind), so a run
// with --analysis trains bit for bit as one without (tests/analysis_test.ts checks it).
//
// - Feature change (Figure 1): for every training example, the L2 distance between its head-input
//   feature (the first token's final hidden state; WiC's pooled features) under the pretrained
//   backbone and under the fine-tuned one; two-stage strategies also between the end of Stage 1
//   and the end of Stage 2. Mean, median and every value.
// - Weight distance (Figure 5): ‖θ − θ₀‖₂ of the backbone against its pretrained weights, total and
//   per layer (embeddings, layer.0, ...), every `weightEvery` steps, on the GPU
//   (kernels/distance.ts).
// - Head features (Figure 4): the head's hidden layer (its 2048 ReLU units) on the training and dev
//   sets at the start of the final stage (a random head for ft, the linear-probing head for lp-ft,
//   the PEFT-trained head for EH-FT), kept for t-SNE (train/tsne.ts).
// - Convergence (Figure 7): each step's training-batch accuracy (its logits, read after the step;
//   the loss is in log.jsonl), and in the first `gradSteps` steps of the final stage the norm of
//   the gradient reaching the backbone (unscaled when the loss is scaled).
//
// Rows of multiple-choice tasks (COPA) are the encoder's rows: k per example, labelled by whether
// the row is the right choice.

import { distance, distancePartialsLength } from "../kernels/distance.ts";
import { gradNormClip, gradNormPartialsLength } from "../kernels/grad_norm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { encoderParameters } from "../model/encoder.ts";
import { writeJsonAtomic } from "../model/atomic_write.ts";
import type { ModelConfig } from "../model/config.ts";
import { assembleBatch, type TokenizedExample, type TrainBatch } from "./batches.ts";
import { predictionOf } from "./evaluate.ts";
import type { LossKind } from "./task.ts";
import type { Trainer } from "./trainer.ts";

/** Summary of per-row distances. */
export interface DistanceStats {
  mean: number;
  median: number;
  std: number;
  /** One per encoder row of the training set, in data order. */
  values: number[];
}

export interface WeightDistancePoint {
  /** Steps done (0: before training). */
  step: number;
  stage: string;
  total: number;
  /** "embeddings", "layer.0", ... (ELECTRA's projection counts as embeddings). */
  layers: Record<string, number>;
}

export interface ConvergencePoint {
  step: number;
  stage: string;
  /** Accuracy on the step's training batch (null for regression). */
  accuracy: number | null;
  /**
   * ‖∂L/∂θ_backbone‖₂, in the first steps of the final stage only (not for an f16 step skipped
   * because its gradients overflowed).
   */
  backboneGradNorm?: number;
}

export interface HeadFeatures {
  /** The stage whose start they were read at. */
  stage: string;
  width: number;
  train: { values: number[][]; labels: string[] };
  dev: { values: number[][]; labels: string[] };
}

/** analysis.json of one run (the head features go to head_features.json: they are large). */
export interface AnalysisData {
  version: 1;
  task: string;
  strategy: string;
  peft: string | null;
  stages: string[];
  featureChange: {
    pretrainedVsFinal: DistanceStats;
    /** Two-stage strategies: end of Stage 1 against the end. */
    stage1VsFinal?: DistanceStats;
  } | null;
  weightDistance: WeightDistancePoint[];
  convergence: ConvergencePoint[];
}

export interface AnalysisOptions {
  /** Weight distance every this many steps (and at each stage's end). */
  weightEvery: number;
  /** Backbone gradient norms in this many first steps of the final stage. */
  gradSteps: number;
  /** Steps whose results wait on the GPU before they are read together; default 256. */
  readEvery?: number;
}

/** The layer a backbone tensor name belongs to ("encoder.layer.3.x" → "layer.3"). */
export function layerOf(name: string): string {
  const m = /^encoder\.layer\.(\d+)\./.exec(name);
  return m ? `layer.${m[1]}` : "embeddings";
}

/** Mean, median and (population) standard deviation, in float64. */
export function distanceStats(values: number[]): DistanceStats {
  const n = values.length;
  const mean = n ? values.reduce((a, b) => a + b, 0) / n : 0;
  const sorted = [...values].sort((a, b) => a - b);
  const median = n === 0 ? 0 : n % 2 ? sorted[n >> 1] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  const std = n ? Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / n) : 0;
  return { mean, median, std, values };
}

/** Per-row L2 distances of two [rows, width] feature matrices, in float64 on the host. */
export function rowDistancesHost(a: Float32Array, b: Float32Array, width: number): number[] {
  if (a.length !== b.length || a.length % width !== 0) {
    throw new Error(
      `analysis: feature matrices of ${a.length} and ${b.length} values, width ${width}`,
    );
  }
  const out: number[] = [];
  for (let r = 0; r < a.length / width; r++) {
    let s = 0;
    for (let j = r * width; j < (r + 1) * width; j++) s += (a[j] - b[j]) ** 2;
    out.push(Math.sqrt(s));
  }
  return out;
}

/** A row's label for the plots: the class name, the rounded score, or right/wrong choice. */
function rowLabels(
  batches: readonly TrainBatch[],
  k: number,
  loss: LossKind,
  names: readonly string[],
): string[] {
  const labels: string[] = [];
  for (const b of batches) {
    for (let e = 0; e < b.examples; e++) {
      const t = b.targets[e];
      for (let c = 0; c < k; c++) {
        if (k > 1) labels.push(c === t ? "right choice" : "wrong choice");
        else if (loss === "mse") labels.push(String(Math.round(t)));
        else labels.push(names[t] ?? String(t));
      }
    }
  }
  return labels;
}

/** Rows of a flat [rows · width] matrix as arrays (rounded to 6 significant digits for JSON). */
function rowsOf(values: Float32Array, width: number): number[][] {
  const rows: number[][] = [];
  for (let r = 0; r < values.length / width; r++) {
    rows.push(Array.from(values.subarray(r * width, (r + 1) * width), (v) => +v.toPrecision(6)));
  }
  return rows;
}

/** Steps whose results wait on the GPU before they are read together (see `pendingSteps`). */
const PENDING_STEPS = 256;

/** The measurements of one run, fed by train/run.ts between its steps. */
export class RunAnalysis {
  private readonly trainer: Trainer;
  private readonly trainBatches: readonly TrainBatch[];
  private readonly devBatches: readonly TrainBatch[];
  private readonly labels: { train: string[]; dev: string[] };
  private readonly options: AnalysisOptions;
  private readonly stageNames: string[];
  private readonly lastStage: number;
  /** θ₀: a copy of every backbone tensor, and where each tensor's distance lands. */
  private readonly pretrained: Map<string, Tensor>;
  private readonly partials: Tensor;
  private normPartials: Tensor | null = null;
  /**
   * Results recorded on the GPU and read in blocks of PENDING_STEPS steps, and at the end (a read
   * per step would stall the pipeline; one read at the end would hold a buffer per step, 33k on
   * QNLI): each weight-distance record's per-tensor distances, each step's logits, and in the
   * first steps of the final stage [‖g‖, clip coefficient, loss scale] of the backbone gradient.
   */
  private readonly pendingDistances: { step: number; stage: string; out: Tensor }[] = [];
  private readonly pendingSteps: {
    step: number;
    stage: string;
    targets: Float32Array;
    examples: number;
    logits: Tensor | null;
    gradient: Tensor | null;
  }[] = [];
  /** The gradient slot of the step about to run (made by `beforeStep`). */
  private gradientSlot: Tensor | null = null;
  /** The θ₀ copies, submitted by `start`. */
  private pendingCopy: Recorder | null;
  private pretrainedFeatures: Float32Array | null = null;
  private stage1Features: Float32Array | null = null;
  private featureWidth = 0;
  private stageStep = 0;
  private stage = 0;
  readonly weightDistance: WeightDistancePoint[] = [];
  readonly convergence: ConvergencePoint[] = [];
  headFeatures: HeadFeatures | null = null;

  constructor(
    trainer: Trainer,
    data: {
      trainBatches: readonly TrainBatch[];
      devBatches: readonly TrainBatch[];
      loss: LossKind;
      labelNames: readonly string[];
      stages: string[];
    },
    options: AnalysisOptions,
  ) {
    this.trainer = trainer;
    this.trainBatches = data.trainBatches;
    this.devBatches = data.devBatches;
    const k = trainer.inputsPerExample;
    this.labels = {
      train: rowLabels(data.trainBatches, k, data.loss, data.labelNames),
      dev: rowLabels(data.devBatches, k, data.loss, data.labelNames),
    };
    this.options = options;
    this.stageNames = data.stages;
    this.lastStage = data.stages.length - 1;
    const gpu = trainer.gpu;
    const params = encoderParameters(trainer.encoder.params);
    this.pretrained = new Map();
    let largest = 1;
    const rec = new Recorder(gpu);
    for (const [name, t] of params) {
      const copy = createTensor(gpu, [...t.shape], "f32", `θ₀ ${name}`);
      rec.copy(`θ₀ ${name}`, t, copy);
      this.pretrained.set(name, copy);
      largest = Math.max(largest, t.numel);
    }
    this.pendingCopy = rec;
    this.partials = createTensor(gpu, [distancePartialsLength(gpu, largest)], "f32", "partials");
  }

  /** Before the first step: θ₀, the pretrained features, the distance at step 0. */
  async start(): Promise<void> {
    await this.pendingCopy?.submit();
    this.pendingCopy = null;
    // The pretrained model's features: without the PEFT hooks Stage 1 has already installed.
    const f = await this.trainer.headFeatures(this.trainBatches, "input", { peftHooks: false });
    this.pretrainedFeatures = f.values;
    this.featureWidth = f.width;
    await this.recordWeightDistance(0);
  }

  /**
   * At the start of stage `index` (after its hand-off, `step` steps done): the weight distance
   * (a restored backbone is back at θ₀), and the final stage's head features.
   */
  async stageStart(index: number, step: number): Promise<void> {
    this.stage = index;
    this.stageStep = 0;
    if (index > 0) await this.recordWeightDistance(step);
    if (index !== this.lastStage) return;
    const train = await this.trainer.headFeatures(this.trainBatches, "hidden");
    const dev = await this.trainer.headFeatures(this.devBatches, "hidden");
    this.headFeatures = {
      stage: this.stageNames[index],
      width: train.width,
      train: { values: rowsOf(train.values, train.width), labels: this.labels.train },
      dev: { values: rowsOf(dev.values, dev.width), labels: this.labels.dev },
    };
  }

  /**
   * Just before a step: when the step's backbone gradient is to be measured, a slot for it, and
   * the loss scale the step will use copied into it (the step may change the scale).
   */
  async beforeStep(): Promise<void> {
    this.gradientSlot = null;
    if (!this.wantsGradient()) return;
    const slot = createTensor(this.trainer.gpu, [3], "f32", "backbone gradient norm");
    const state = this.trainer.lossScaleState;
    if (state) {
      const rec = new Recorder(this.trainer.gpu);
      rec.copy("loss scale", state.view(0, [1]), slot.view(8, [1]));
      await rec.submit();
    } else {
      slot.upload(Float32Array.of(0, 0, 1));
    }
    this.gradientSlot = slot;
  }

  private wantsGradient(): boolean {
    return this.stage === this.lastStage && this.stageStep < this.options.gradSteps &&
      this.trainer.encoder.gradients().size > 0;
  }

  /**
   * After step `step` (steps done) on `batch`: its logits and (see `beforeStep`) its backbone
   * gradient's norm, kept on the GPU, and the weight distance every `weightEvery` steps.
   */
  async afterStep(step: number, batch: TrainBatch): Promise<void> {
    const gpu = this.trainer.gpu;
    const rec = new Recorder(gpu);
    let logits: Tensor | null = null;
    if (this.trainer.loss !== "mse") {
      const out = this.trainer.stepOutputs();
      logits = createTensor(gpu, [out.numel], "f32", `step ${step} logits`);
      rec.copy("step logits", out.view(0, [out.numel]), logits);
    }
    const gradient = this.gradientSlot;
    if (gradient) {
      const grads = [...this.trainer.encoder.gradients().values()];
      this.normPartials ??= createTensor(
        gpu,
        [gradNormPartialsLength(gpu, grads)],
        "f32",
        "backbone gradient norm partials",
      );
      const out = gradient.view(0, [2]);
      gradNormClip(rec, { grads, partials: this.normPartials, maxNorm: 0, out });
    }
    await rec.submit();
    this.gradientSlot = null;
    this.pendingSteps.push({
      step,
      stage: this.stageNames[this.stage],
      targets: Float32Array.from(batch.targets),
      examples: batch.examples,
      logits,
      gradient,
    });
    this.stageStep++;
    if (step % this.options.weightEvery === 0) await this.recordWeightDistance(step);
    if (this.pendingSteps.length >= (this.options.readEvery ?? PENDING_STEPS)) {
      await this.readPending();
    }
  }

  /** At the end of stage `index`: the weight distance, and Stage 1's features. */
  async stageEnd(index: number, step: number): Promise<void> {
    if (this.pendingDistances.at(-1)?.step !== step) await this.recordWeightDistance(step);
    if (index === 0 && this.lastStage > 0) {
      this.stage1Features = (await this.trainer.headFeatures(this.trainBatches, "input")).values;
    }
  }

  /** After the last step: the feature changes, and everything as one object. */
  async finish(meta: { task: string; strategy: string; peft: string | null }): Promise<
    AnalysisData
  > {
    const final = (await this.trainer.headFeatures(this.trainBatches, "input")).values;
    await this.readPending();
    const w = this.featureWidth;
    const featureChange = this.pretrainedFeatures
      ? {
        pretrainedVsFinal: distanceStats(rowDistancesHost(this.pretrainedFeatures, final, w)),
        ...(this.stage1Features
          ? { stage1VsFinal: distanceStats(rowDistancesHost(this.stage1Features, final, w)) }
          : {}),
      }
      : null;
    return {
      version: 1,
      ...meta,
      stages: this.stageNames,
      featureChange,
      weightDistance: this.weightDistance,
      convergence: this.convergence,
    };
  }

  /** Reads what the steps and distance records left on the GPU into the result lists. */
  private async readPending(): Promise<void> {
    const loss = this.trainer.loss;
    const C = this.trainer.outputs;
    // Each record leaves the list once read and freed: a failed read leaves the rest to destroy().
    for (let p = this.pendingSteps[0]; p; p = this.pendingSteps[0]) {
      let accuracy: number | null = null;
      if (p.logits) {
        const values = await p.logits.download();
        let right = 0;
        for (let e = 0; e < p.examples; e++) {
          if (predictionOf(loss, values.subarray(e * C, (e + 1) * C)) === p.targets[e]) right++;
        }
        accuracy = right / p.examples;
        p.logits.destroy();
      }
      const point: ConvergencePoint = { step: p.step, stage: p.stage, accuracy };
      if (p.gradient) {
        const [norm, , scale] = await p.gradient.download();
        // An f16 step whose scaled gradients overflowed was skipped: it has no norm to show.
        if (Number.isFinite(norm / scale)) point.backboneGradNorm = norm / scale;
        p.gradient.destroy();
      }
      this.convergence.push(point);
      this.pendingSteps.shift();
    }
    const names = [...encoderParameters(this.trainer.encoder.params).keys()];
    for (let p = this.pendingDistances[0]; p; p = this.pendingDistances[0]) {
      const d = await p.out.download();
      p.out.destroy();
      this.pendingDistances.shift();
      const squares: Record<string, number> = {};
      let total = 0;
      names.forEach((name, i) => {
        const layer = layerOf(name);
        squares[layer] = (squares[layer] ?? 0) + d[i] * d[i];
        total += d[i] * d[i];
      });
      const layers: Record<string, number> = {};
      for (const [layer, s] of Object.entries(squares)) layers[layer] = Math.sqrt(s);
      this.weightDistance.push({ step: p.step, stage: p.stage, total: Math.sqrt(total), layers });
    }
  }

  /** Records ‖θ − θ₀‖ of every backbone tensor into a new slot (read by `readPending`). */
  private async recordWeightDistance(step: number): Promise<void> {
    const params = encoderParameters(this.trainer.encoder.params);
    const gpu = this.trainer.gpu;
    const out = createTensor(gpu, [params.size], "f32", `θ − θ₀ at step ${step}`);
    const rec = new Recorder(gpu);
    [...params].forEach(([name, t], i) => {
      distance(rec, {
        a: t,
        b: this.pretrained.get(name)!,
        partials: this.partials,
        out: out.view(4 * i, [1]),
      });
    });
    await rec.submit();
    this.pendingDistances.push({ step, stage: this.stageNames[this.stage], out });
  }

  destroy(): void {
    for (const t of this.pretrained.values()) t.destroy();
    for (const p of this.pendingDistances) p.out.destroy();
    for (const p of this.pendingSteps) for (const t of [p.logits, p.gradient]) t?.destroy();
    for (const t of [this.partials, this.normPartials, this.gradientSlot]) t?.destroy();
  }
}

/** `examples` in data order, in batches of `size` (what the feature passes run over). */
export function batchesOf(
  config: ModelConfig,
  loss: LossKind,
  examples: readonly TokenizedExample[],
  size: number,
): TrainBatch[] {
  const out: TrainBatch[] = [];
  for (let i = 0; i < examples.length; i += size) {
    out.push(assembleBatch(config, loss, examples.slice(i, i + size)));
  }
  return out;
}

/** Writes analysis.json and head_features.json into `dir` (atomically, each). */
export async function writeAnalysis(
  dir: string,
  data: AnalysisData,
  headFeatures: HeadFeatures | null,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await writeJsonAtomic(`${dir}/analysis.json`, data);
  if (headFeatures) await writeJsonAtomic(`${dir}/head_features.json`, headFeatures);
}
