// AdamW over named trainable tensors, as torch.optim.AdamW computes it (kernels/adamw.ts does the
// arithmetic), with gradient clipping by global norm as torch.nn.utils.clip_grad_norm_
// (kernels/grad_norm.ts). Everything stays on the GPU: the clip coefficient is written by the
// norm kernel and read by AdamW as its gradient scale, so a step needs no host round trip; the
// norm itself is read only when the loop logs it (`normTensor`).
//
// Weight decay: none on biases and LayerNorm weights (a name ending in ".bias" or containing
// "LayerNorm."), as the official code and most fine-tuning recipes; a PEFT method may exempt its
// own tensors too. m and v start at zero; the state is per tensor, under the tensor's name, so a
// checkpoint can save and restore it.
//
// Launches: the model keeps its parameters and gradients in arenas of matching layout
// (kernels/arena.ts: the encoder's, the head's, the PEFT method's), so the trainable tensors fall
// into a few runs of consecutive slots with one weight decay (ft: the backbone's decayed tensors,
// its no-decay ones, the head's weights, the head's biases). Each run is passed to the kernels as
// ONE spanning view per role, padding included, with m and v allocated per run in the same
// layout: one AdamW launch per run (per storage binding, 128 MiB on lavapipe, plus a scalar
// tail when the run's length is not a multiple of 4) and one gradNormClip launch per gradient
// arena (per binding) plus one, whatever the number of tensors. AdamW's arithmetic per element
// is unchanged; the norm's summation tree follows the runs (deterministic, within gradNormClip's
// documented error bound). Tensors outside arenas still work, one run each.
//
// Dynamic loss scaling (f16 training, kernels/loss_scale.ts): given a loss-scale state, the norm
// kernel unscales the norm, writes coef / S as AdamW's gradient factor and a skip flag, and
// updates S; AdamW reads the flag and leaves everything untouched on a skipped step. The host's
// `step` still advances on a skipped step (it cannot know without a read), but the norm kernel
// counts the updates made on the GPU and AdamW takes its bias correction from that count, so it
// is torch's under GradScaler (whose skipped optimizer.step() does not advance state["step"]).
// The learning rate is the host's step's, as in PyTorch's AMP recipe, whose scheduler.step()
// runs every iteration.

import { isNoDecayName } from "../model/encoder.ts";
import type { Gpu } from "../kernels/device.ts";
import { adamwStepGroup, biasCorrectionTable } from "../kernels/adamw.ts";
import { createArena, slotRuns, spanOf, type TensorArena } from "../kernels/arena.ts";
import { gradNormClip, gradNormPartialsLength, LOSS_SCALED_NORM } from "../kernels/grad_norm.ts";
import type { LossScaling } from "../kernels/loss_scale.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";

/** AdamW's settings for a stage (the learning rate comes per step); see ADAMW_DEFAULTS. */
export interface AdamwSettings {
  /** Decay of the first moment. */
  beta1: number;
  /** Decay of the second moment. */
  beta2: number;
  /** Added to the denominator √v̂. */
  eps: number;
  /** Decoupled weight decay of the tensors that decay. */
  weightDecay: number;
  /** Clip the global gradient norm to this; 0 disables clipping. */
  maxGradNorm: number;
}

/**
 * Throws an Error starting with `who` that names the first setting out of its range: beta1 and
 * beta2 in [0, 1), eps, weightDecay and maxGradNorm finite and ≥ 0 (a NaN is out of every range).
 */
export function checkAdamwSettings(who: string, s: AdamwSettings): void {
  const ranges: [keyof AdamwSettings, string, (v: number) => boolean][] = [
    ["beta1", "in [0, 1)", (v) => v >= 0 && v < 1],
    ["beta2", "in [0, 1)", (v) => v >= 0 && v < 1],
    ["eps", "finite and ≥ 0", (v) => v >= 0 && v < Infinity],
    ["weightDecay", "finite and ≥ 0", (v) => v >= 0 && v < Infinity],
    ["maxGradNorm", "finite and ≥ 0 (0: no clipping)", (v) => v >= 0 && v < Infinity],
  ];
  for (const [name, range, ok] of ranges) {
    const v = s[name];
    if (typeof v !== "number" || !ok(v)) {
      throw new Error(`${who}: AdamW's ${name} is ${v}, expected a value ${range}`);
    }
  }
}

/** The paper's AdamW: β (0.9, 0.98), ε 1e-6, weight decay 0.1; the official code's clip 0.1. */
export const ADAMW_DEFAULTS: AdamwSettings = {
  beta1: 0.9,
  beta2: 0.98,
  eps: 1e-6,
  weightDecay: 0.1,
  maxGradNorm: 0.1,
};

// The no-decay rule lives beside the arena order it shapes (model/encoder.ts).
export { isNoDecayName };

/** One trainable tensor: its parameter, its gradient (same shape) and whether it decays. */
export interface TrainableTensor {
  /** Its name, unique among an optimizer's tensors (checkpoints key m and v by it). */
  name: string;
  /** The parameter, f32, updated in place. */
  param: Tensor;
  /** Its gradient, f32, same shape. */
  grad: Tensor;
  /** Whether weight decay applies to it. */
  decay: boolean;
}

/** Indices of `ts` by buffer (in order of first appearance), then offset: arena order. */
function arenaOrder(ts: readonly Tensor[]): number[] {
  const rank = new Map<GPUBuffer, number>();
  for (const t of ts) if (!rank.has(t.buffer)) rank.set(t.buffer, rank.size);
  return [...ts.keys()].sort((a, b) =>
    rank.get(ts[a].buffer)! - rank.get(ts[b].buffer)! || ts[a].offset - ts[b].offset || a - b
  );
}

/**
 * AdamW with global-norm clipping over named tensors, entirely on the GPU. Owns its m and v
 * (zero at the start); destroy() frees them, not the parameters or gradients.
 */
export class AdamW {
  /** The device its state lives on. */
  readonly gpu: Gpu;
  /** Its hyper-parameters. */
  readonly settings: AdamwSettings;
  /** The tensors it updates, in the order given. */
  readonly tensors: readonly TrainableTensor[];
  /** Per tensor of `tensors`: its m and v, views of the moment arenas. */
  private readonly ms: Tensor[];
  private readonly vs: Tensor[];
  /** Per run: a view spanning it in each role, and whether it decays. */
  private readonly runs: { param: Tensor; grad: Tensor; m: Tensor; v: Tensor; decay: boolean }[];
  /** Views spanning the runs of gradients in consecutive slots, whatever their decay. */
  private readonly normSpans: Tensor[];
  private readonly mArena: TensorArena;
  private readonly vArena: TensorArena;
  private readonly partials: Tensor;
  /**
   * [totalNorm, clipCoef] of the last step's gradients; with loss scaling [totalNorm (unscaled,
   * or the raw non-finite value of a skipped step), coef / S, skipped (0 or 1), S, updates
   * made], as LOSS_SCALED_NORM.
   */
  readonly normTensor: Tensor;
  /** The loss-scale state and policy, or null (no loss scaling). */
  readonly lossScale: LossScaling | null;
  /**
   * Steps recorded so far, skipped ones included (without loss scaling: torch's
   * state["step"]; with it, see `appliedSteps`). To continue a run, set it with `resumeAt`,
   * which puts back the count of updates too.
   */
  step = 0;
  /** With loss scaling: AdamW's bias corrections for steps 1..(length / 2), grown as needed. */
  private biasTable: Tensor | null = null;
  /** Outgrown tables, kept until destroy(): work recorded but not yet submitted may read them. */
  private readonly retired: Tensor[] = [];

  /**
   * `options.lossScale`: the gradients carry that state's loss scale (it is shared, not owned:
   * a new optimizer for the next stage takes the same state).
   */
  constructor(
    gpu: Gpu,
    tensors: readonly TrainableTensor[],
    settings: AdamwSettings,
    options: { lossScale?: LossScaling } = {},
  ) {
    if (tensors.length === 0) throw new Error("AdamW: nothing to train");
    const seen = new Set<string>();
    for (const t of tensors) {
      if (seen.has(t.name)) throw new Error(`AdamW: tensor "${t.name}" given twice`);
      seen.add(t.name);
      if (t.param.shape.join() !== t.grad.shape.join()) {
        throw new Error(
          `AdamW: "${t.name}" has shape [${t.param.shape}] but its gradient [${t.grad.shape}]`,
        );
      }
    }
    checkAdamwSettings("AdamW", settings);
    this.gpu = gpu;
    this.settings = { ...settings };
    this.tensors = [...tensors];
    const order = arenaOrder(tensors.map((t) => t.param));
    const sorted = order.map((i) => tensors[i]);
    const params = sorted.map((t) => t.param), grads = sorted.map((t) => t.grad);
    const runs = slotRuns([params, grads], (i, j) => sorted[i].decay === sorted[j].decay);
    const gradSpans = runs.map((run) => spanOf(grads, run));
    // Zeroed buffers, as torch's state starts; each run's slot has its gradients' layout.
    const arena = (what: string) =>
      createArena(
        gpu,
        gradSpans.map((g, k) => ({
          name: `run ${k}`,
          shape: g.shape,
          label: `adam ${what} run ${k}`,
        })),
        `adam ${what}`,
      );
    this.mArena = arena("m");
    this.vArena = arena("v");
    this.ms = new Array<Tensor>(tensors.length);
    this.vs = new Array<Tensor>(tensors.length);
    this.runs = runs.map((run, k) => {
      const m = this.mArena.get(`run ${k}`), v = this.vArena.get(`run ${k}`);
      const first = grads[run.start];
      for (let s = run.start; s < run.end; s++) {
        const t = sorted[s], at = t.grad.offset - first.offset;
        this.ms[order[s]] = m.view(at, t.param.shape, `adam m ${t.name}`);
        this.vs[order[s]] = v.view(at, t.param.shape, `adam v ${t.name}`);
      }
      return {
        param: spanOf(params, run),
        grad: gradSpans[k],
        m,
        v,
        decay: sorted[run.start].decay,
      };
    });
    // The norm needs no decay classes: a gradient arena holds only trainable tensors, so it is
    // one run (per buffer).
    const byGrad = arenaOrder(tensors.map((t) => t.grad)).map((i) => tensors[i].grad);
    this.normSpans = slotRuns([byGrad]).map((run) => spanOf(byGrad, run));
    this.partials = createTensor(
      gpu,
      [gradNormPartialsLength(gpu, this.normSpans)],
      "f32",
      "grad norm partials",
    );
    this.lossScale = options.lossScale ?? null;
    this.normTensor = createTensor(
      gpu,
      [this.lossScale ? LOSS_SCALED_NORM.length : 2],
      "f32",
      this.lossScale
        ? "grad norm, factor, skipped, loss scale, updates"
        : "grad norm and clip coefficient",
    );
  }

  /**
   * Records one update at learning rate `lr`: the global gradient norm and clip coefficient,
   * then AdamW on every tensor with the clipped gradients (unscaled, and skipped on the GPU when
   * not finite, with loss scaling).
   */
  record(rec: Recorder, lr: number): void {
    const s = this.settings;
    const lossScale = this.lossScale ?? undefined;
    this.step++;
    if (lossScale && (this.biasTable?.numel ?? 0) < 2 * this.step) this.growBiasTable();
    gradNormClip(rec, {
      grads: this.normSpans,
      partials: this.partials,
      maxNorm: s.maxGradNorm,
      out: this.normTensor,
      lossScale,
    });
    adamwStepGroup(rec, {
      params: this.runs.map((r) => r.param),
      grads: this.runs.map((r) => r.grad),
      ms: this.runs.map((r) => r.m),
      vs: this.runs.map((r) => r.v),
      weightDecay: this.runs.map((r) => (r.decay ? s.weightDecay : 0)),
      lr,
      beta1: s.beta1,
      beta2: s.beta2,
      eps: s.eps,
      step: this.step,
      gradScale: this.normTensor,
      gradScaleIndex: 1,
      skipIndex: lossScale ? LOSS_SCALED_NORM.skipped : undefined,
      appliedIndex: lossScale ? LOSS_SCALED_NORM.applied : undefined,
      biasCorrections: this.biasTable ?? undefined,
    });
  }

  /** A table for twice the steps (at least 1024), computed anew. */
  private growBiasTable(): void {
    const steps = Math.max(1024, 2 * this.step);
    const s = this.settings;
    const table = createTensor(this.gpu, [2 * steps], "f32", "adam bias corrections");
    table.upload(biasCorrectionTable(s.beta1, s.beta2, steps));
    if (this.biasTable) this.retired.push(this.biasTable);
    this.biasTable = table;
  }

  /**
   * Updates made so far, which AdamW's bias correction counts: `step` without loss scaling; with
   * it, the steps not skipped (torch's state["step"] under GradScaler), read from the GPU.
   */
  async appliedSteps(): Promise<number> {
    if (!this.lossScale) return this.step;
    const at = LOSS_SCALED_NORM.applied * 4;
    return (await this.normTensor.view(at, [1]).download())[0];
  }

  /**
   * Continues from a checkpoint: `step` steps recorded, `applied` of them updates (`step`
   * and `appliedSteps` as they were; the count is queued before the next submit). Without loss
   * scaling no step is skipped, so the two must be equal.
   */
  resumeAt(step: number, applied = step): void {
    if (!Number.isSafeInteger(step) || step < 0) {
      throw new Error(`AdamW.resumeAt: step ${step} is not a count`);
    }
    if (!Number.isSafeInteger(applied) || applied < 0 || applied > step) {
      throw new Error(`AdamW.resumeAt: ${applied} updates is not a count in [0, ${step}]`);
    }
    if (!this.lossScale && applied !== step) {
      throw new Error(
        `AdamW.resumeAt: ${applied} updates of ${step} steps, but without loss scaling no step ` +
          `is skipped`,
      );
    }
    this.step = step;
    if (this.lossScale) {
      this.normTensor.view(LOSS_SCALED_NORM.applied * 4, [1]).upload(Float32Array.of(applied));
    }
  }

  /** Launch groups: the runs of tensors updated together (each one range per role). */
  get runCount(): number {
    return this.runs.length;
  }

  /** The moments by tensor name (for checkpoints). */
  moments(): Map<string, { m: Tensor; v: Tensor }> {
    return new Map(this.tensors.map((t, i) => [t.name, { m: this.ms[i], v: this.vs[i] }]));
  }

  /** Frees its own buffers (moments, norm); the tensors it updates stay. */
  destroy(): void {
    this.mArena.destroy();
    this.vArena.destroy();
    for (const t of [this.partials, this.normTensor]) t.destroy();
    this.biasTable?.destroy();
    for (const t of this.retired) t.destroy();
  }
}
