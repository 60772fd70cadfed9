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

import type { Gpu } from "../kernels/device.ts";
import { adamwStepGroup } from "../kernels/adamw.ts";
import { gradNormClip, gradNormPartialsLength } from "../kernels/grad_norm.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";

export interface AdamwSettings {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this; 0 disables clipping. */
  maxGradNorm: number;
}

/** The paper's AdamW: β (0.9, 0.98), ε 1e-6, weight decay 0.1; the official code's clip 0.1. */
export const ADAMW_DEFAULTS: AdamwSettings = {
  beta1: 0.9,
  beta2: 0.98,
  eps: 1e-6,
  weightDecay: 0.1,
  maxGradNorm: 0.1,
};

/** The no-decay rule: biases and LayerNorm weights (any Hugging Face name spelling). */
export function isNoDecayName(name: string): boolean {
  return name.endsWith(".bias") || name.includes("LayerNorm.");
}

/** One trainable tensor: its parameter, its gradient (same shape) and whether it decays. */
export interface TrainableTensor {
  name: string;
  param: Tensor;
  grad: Tensor;
  decay: boolean;
}

export class AdamW {
  readonly gpu: Gpu;
  readonly settings: AdamwSettings;
  readonly tensors: readonly TrainableTensor[];
  private readonly ms: Tensor[];
  private readonly vs: Tensor[];
  private readonly partials: Tensor;
  /** [totalNorm, clipCoef] of the last step's gradients. */
  readonly normTensor: Tensor;
  /** Updates done so far (torch's state["step"]). */
  step = 0;

  constructor(gpu: Gpu, tensors: readonly TrainableTensor[], settings: AdamwSettings) {
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
    const s = settings;
    if (!(s.weightDecay >= 0) || !(s.maxGradNorm >= 0) || !(s.eps >= 0)) {
      throw new Error(`AdamW: bad settings ${JSON.stringify(s)}`);
    }
    this.gpu = gpu;
    this.settings = { ...settings };
    this.tensors = [...tensors];
    // createTensor's buffers are zeroed, as torch's state starts.
    this.ms = tensors.map((t) => createTensor(gpu, t.param.shape, "f32", `adam m ${t.name}`));
    this.vs = tensors.map((t) => createTensor(gpu, t.param.shape, "f32", `adam v ${t.name}`));
    const grads = tensors.map((t) => t.grad);
    this.partials = createTensor(
      gpu,
      [gradNormPartialsLength(gpu, grads)],
      "f32",
      "grad norm partials",
    );
    this.normTensor = createTensor(gpu, [2], "f32", "grad norm and clip coefficient");
  }

  /**
   * Records one update at learning rate `lr`: the global gradient norm and clip coefficient,
   * then AdamW on every tensor with the clipped gradients.
   */
  record(rec: Recorder, lr: number): void {
    const s = this.settings;
    this.step++;
    gradNormClip(rec, {
      grads: this.tensors.map((t) => t.grad),
      partials: this.partials,
      maxNorm: s.maxGradNorm,
      out: this.normTensor,
    });
    adamwStepGroup(rec, {
      params: this.tensors.map((t) => t.param),
      grads: this.tensors.map((t) => t.grad),
      ms: this.ms,
      vs: this.vs,
      weightDecay: this.tensors.map((t) => (t.decay ? s.weightDecay : 0)),
      lr,
      beta1: s.beta1,
      beta2: s.beta2,
      eps: s.eps,
      step: this.step,
      gradScale: this.normTensor,
      gradScaleIndex: 1,
    });
  }

  /** The moments by tensor name (for checkpoints). */
  moments(): Map<string, { m: Tensor; v: Tensor }> {
    return new Map(this.tensors.map((t, i) => [t.name, { m: this.ms[i], v: this.vs[i] }]));
  }

  destroy(): void {
    for (const t of [...this.ms, ...this.vs, this.partials, this.normTensor]) t.destroy();
  }
}
