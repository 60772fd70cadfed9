// The EH-FT classification head: Linear(F → 2048) → ReLU → Linear(2048 → C) on the final hidden
// state of the first token (`<s>` / [CLS]); no pooler, no dropout. For WiC the input is
// [h0; w1; w2; |w1 − w2|; w1 ⊙ w2] (F = 5·hidden), wi the mean of the target word's tokens in
// sentence i (kernels/pooling.ts). C = 1 for binary tasks and regression.
//
// Tensors are named as checkpoints store them: head.dense.{weight [2048, F], bias},
// head.out_proj.{weight [C, 2048], bias}. Initialisation: weights normal with std 0.005
// (Box–Muller over a seeded generator, so a seed always gives the same head), biases uniform in
// ±1/√fan_in as PyTorch's nn.Linear does.
//
// The parameters live in one arena (kernels/arena.ts), weights before biases, and the gradients in
// another of the same layout, so that the optimizer updates the head in two launches (decayed
// weights, no-decay biases).

import { createArena, type TensorArena } from "../kernels/arena.ts";
import type { Gpu } from "../kernels/device.ts";
import { linearBackward, linearForward } from "../kernels/linear.ts";
import {
  firstTokenBackward,
  firstTokenForward,
  wicPoolBackward,
  wicPoolForward,
} from "../kernels/pooling.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { reluBackward, reluForward } from "../kernels/relu.ts";
import { createTensor, expectShape, type Tensor } from "../kernels/tensor.ts";
import type { WeightBias } from "./encoder.ts";
import { normalValues, uniformGenerator, uniformValues } from "./init.ts";

/** The head's default hidden width (HeadOptions.width). */
export const HEAD_WIDTH = 2048;
/** Standard deviation of the normal initialisation of the head's weights. */
export const HEAD_INIT_STD = 0.005;

/** The head's two linear layers; T is Tensor on the GPU, Float32Array on the host. */
export interface HeadParams<T = Tensor> {
  /** head.dense: [width, F], [width] */
  dense: WeightBias<T>;
  /** head.out_proj: [C, width], [C] */
  outProj: WeightBias<T>;
}

/** Options of `createHead`: sizes, WiC pooling, capacity and initialisation. */
export interface HeadOptions {
  /** The encoder's hidden size H. */
  hiddenSize: number;
  /** Outputs C (1 for binary tasks and regression). */
  numClasses: number;
  /** WiC input (F = 5H) instead of the first token (F = H). */
  wic?: boolean;
  /** Hidden units; default 2048. */
  width?: number;
  /** Largest batch and sequence length (sizes the activations and dHidden). */
  maxBatch: number;
  /** Largest sequence length of the hidden state it reads (see `maxBatch`). */
  maxSeq: number;
  /** Initialisation seed (default 0). */
  seed?: number;
  /** Initialise the parameters (default true); false leaves them zero for a loader. */
  init?: boolean;
}

/**
 * The head's initial values for (F, width, C, seed), in the order dense.weight, dense.bias,
 * out_proj.weight, out_proj.bias, drawn from one generator.
 */
export function initialHeadValues(
  features: number,
  width: number,
  classes: number,
  seed: number,
): HeadParams<Float32Array> {
  const next = uniformGenerator(seed);
  const normal = (n: number) => normalValues(n, HEAD_INIT_STD, next);
  const uniform = (n: number, fanIn: number) => uniformValues(n, 1 / Math.sqrt(fanIn), next);
  const denseWeight = normal(width * features);
  const denseBias = uniform(width, features);
  const outWeight = normal(classes * width);
  const outBias = uniform(classes, width);
  return {
    dense: { weight: denseWeight, bias: denseBias },
    outProj: { weight: outWeight, bias: outBias },
  };
}

/**
 * The EH-FT classification head, Linear(F → width) → ReLU → Linear(width → C), with its
 * gradients and activations for up to maxBatch examples; f32 (WiC's word spans u32). destroy()
 * frees its buffers.
 */
export class Head {
  /** The device everything is allocated on. */
  readonly gpu: Gpu;
  /** The encoder's hidden size H. */
  readonly hiddenSize: number;
  /** Outputs C. */
  readonly numClasses: number;
  /** Whether the input is WiC's pooled features (see `setSpans`) rather than the first token. */
  readonly wic: boolean;
  /** Hidden units of the ReLU layer. */
  readonly width: number;
  /** F: H, or 5H for WiC. */
  readonly inFeatures: number;
  /** Largest batch `forward` accepts. */
  readonly maxBatch: number;
  /** Largest sequence length `forward` accepts. */
  readonly maxSeq: number;
  /** The parameters, views of one arena the head owns. */
  readonly params: HeadParams;
  /** The gradients, same layout as `params`; written by `backward`. */
  readonly grads: HeadParams;
  /** WiC spans of the current batch, u32 [maxBatch, 4] = (start1, end1, start2, end2). */
  readonly spans: Tensor;

  private readonly input: Tensor;
  private readonly pre: Tensor;
  private readonly act: Tensor;
  private readonly logits: Tensor;
  private readonly dAct: Tensor;
  private readonly dPre: Tensor;
  private readonly dInput: Tensor;
  private readonly dHidden: Tensor;
  private readonly paramArena: TensorArena;
  private readonly gradArena: TensorArena;
  private spansBatch = 0;
  private last: { hidden: Tensor; batch: number; seq: number } | null = null;

  /** Allocates the head and, unless `opts.init` is false, initialises it from `opts.seed`. */
  constructor(gpu: Gpu, opts: HeadOptions) {
    const width = opts.width ?? HEAD_WIDTH;
    for (
      const [name, v] of [
        ["hiddenSize", opts.hiddenSize],
        ["numClasses", opts.numClasses],
        ["width", width],
        ["maxBatch", opts.maxBatch],
        ["maxSeq", opts.maxSeq],
      ] as const
    ) {
      if (!Number.isSafeInteger(v) || v < 1) {
        throw new Error(`Head: ${name} must be a positive integer, got ${v}`);
      }
    }
    this.gpu = gpu;
    this.hiddenSize = opts.hiddenSize;
    this.numClasses = opts.numClasses;
    this.wic = opts.wic ?? false;
    this.width = width;
    this.inFeatures = this.wic ? 5 * opts.hiddenSize : opts.hiddenSize;
    this.maxBatch = opts.maxBatch;
    this.maxSeq = opts.maxSeq;
    const F = this.inFeatures, C = this.numClasses, B = this.maxBatch;
    const t = (label: string, shape: number[], dtype: "f32" | "u32" = "f32") =>
      createTensor(gpu, shape, dtype, label);
    const arena = (prefix: string) =>
      createArena(
        gpu,
        [
          ["head.dense.weight", [width, F]],
          ["head.out_proj.weight", [C, width]],
          ["head.dense.bias", [width]],
          ["head.out_proj.bias", [C]],
        ].map(([name, shape]) => ({
          name: name as string,
          shape: shape as number[],
          label: `${prefix}${name}`,
        })),
        `${prefix}head parameters`,
      );
    const params = (a: TensorArena): HeadParams => ({
      dense: { weight: a.get("head.dense.weight"), bias: a.get("head.dense.bias") },
      outProj: { weight: a.get("head.out_proj.weight"), bias: a.get("head.out_proj.bias") },
    });
    this.paramArena = arena("");
    this.gradArena = arena("grad ");
    this.params = params(this.paramArena);
    this.grads = params(this.gradArena);
    this.spans = t("wic spans", [B, 4], "u32");
    this.input = t("head input", [B, F]);
    this.pre = t("head dense out", [B, width]);
    this.act = t("head relu out", [B, width]);
    this.logits = t("head logits", [B, C]);
    this.dAct = t("head dRelu", [B, width]);
    this.dPre = t("head dDense", [B, width]);
    this.dInput = t("head dInput", [B, F]);
    this.dHidden = t("head dHidden", [B * this.maxSeq * this.hiddenSize]);
    if (opts.init ?? true) this.initialize(opts.seed ?? 0);
  }

  /** Uploads the seeded initial values (see `initialHeadValues`). */
  initialize(seed: number): void {
    const v = initialHeadValues(this.inFeatures, this.width, this.numClasses, seed);
    this.params.dense.weight.upload(v.dense.weight);
    this.params.dense.bias.upload(v.dense.bias);
    this.params.outProj.weight.upload(v.outProj.weight);
    this.params.outProj.bias.upload(v.outProj.bias);
  }

  /**
   * WiC: uploads the target word's token spans, [batch, 4] (start1, end1, start2, end2), each
   * a non-empty range [start, end) inside the sequence of `seqLen` tokens.
   */
  setSpans(spans: ArrayLike<number>, batch: number, seqLen: number): void {
    if (!this.wic) throw new Error("Head.setSpans: this head does not pool spans (wic is off)");
    if (!Number.isSafeInteger(batch) || batch < 1 || batch > this.maxBatch) {
      throw new Error(`Head.setSpans: batch ${batch} is not in [1, ${this.maxBatch}]`);
    }
    if (spans.length !== 4 * batch) {
      throw new Error(`Head.setSpans: ${spans.length} values, expected ${batch}×4`);
    }
    for (let b = 0; b < batch; b++) {
      for (let k = 0; k < 2; k++) {
        const start = spans[4 * b + 2 * k], end = spans[4 * b + 2 * k + 1];
        const ok = Number.isInteger(start) && Number.isInteger(end) && start >= 0 &&
          start < end && end <= seqLen;
        if (!ok) {
          throw new Error(
            `Head.setSpans: span ${k + 1} of example ${b} is [${start}, ${end}), not a ` +
              `non-empty range inside ${seqLen} tokens`,
          );
        }
      }
    }
    this.spans.view(0, [batch, 4]).upload(Uint32Array.from(spans));
    this.spansBatch = batch;
  }

  /** Records the head on hidden [B, S, H]; returns the logits [B, C]. */
  forward(rec: Recorder, hidden: Tensor): Tensor {
    const op = "Head.forward";
    expectShape(op, "hidden", hidden, [-1, -1, this.hiddenSize], "f32");
    const [B, S] = hidden.shape;
    if (B < 1 || B > this.maxBatch || S < 1 || S > this.maxSeq) {
      throw new Error(`${op}: hidden [${hidden.shape}] exceeds [${this.maxBatch}, ${this.maxSeq}]`);
    }
    const input = this.headInput(B);
    if (this.wic) {
      if (this.spansBatch !== B) {
        throw new Error(`${op}: spans were set for batch ${this.spansBatch}, not ${B}`);
      }
      wicPoolForward(rec, { hidden, spans: this.spans.view(0, [B, 4]), out: input });
    } else {
      firstTokenForward(rec, { hidden, out: input });
    }
    const p = this.params;
    const pre = this.pre.view(0, [B, this.width]);
    const act = this.act.view(0, [B, this.width]);
    const logits = this.logits.view(0, [B, this.numClasses]);
    linearForward(rec, { x: input, weight: p.dense.weight, bias: p.dense.bias, out: pre });
    reluForward(rec, { x: pre, out: act });
    linearForward(rec, { x: act, weight: p.outProj.weight, bias: p.outProj.bias, out: logits });
    this.last = { hidden, batch: B, seq: S };
    return logits;
  }

  /** The head input [B, F] of the last forward (first token, or the WiC features). */
  headInput(batch: number = this.last?.batch ?? this.maxBatch): Tensor {
    return this.input.view(0, [batch, this.inFeatures]);
  }

  /** The hidden layer (the `width` ReLU units) [B, width] of the last forward. */
  hiddenLayer(batch: number = this.last?.batch ?? this.maxBatch): Tensor {
    return this.act.view(0, [batch, this.width]);
  }

  /** The logits [B, C] of the last forward. */
  outputs(batch: number = this.last?.batch ?? this.maxBatch): Tensor {
    return this.logits.view(0, [batch, this.numClasses]);
  }

  /**
   * Records the head's backward from dLogits [B, C]: the head's gradients (added into them
   * when `accumulate`) and the gradient of the encoder's final hidden state, returned as
   * [B, S, H] (every element written).
   */
  backward(rec: Recorder, dLogits: Tensor, opts: { accumulate?: boolean } = {}): Tensor {
    const op = "Head.backward";
    const last = this.last;
    if (!last) throw new Error(`${op}: no forward to differentiate`);
    const { batch: B, seq: S } = last;
    expectShape(op, "dLogits", dLogits, [B, this.numClasses], "f32");
    const accumulate = opts.accumulate ?? false;
    const p = this.params, g = this.grads;
    const dAct = this.dAct.view(0, [B, this.width]);
    const dPre = this.dPre.view(0, [B, this.width]);
    const dInput = this.dInput.view(0, [B, this.inFeatures]);
    const input = this.headInput(B);
    linearBackward(rec, {
      x: this.act.view(0, [B, this.width]),
      weight: p.outProj.weight,
      dOut: dLogits,
      dX: dAct,
      dWeight: g.outProj.weight,
      dBias: g.outProj.bias,
      accumulate,
    });
    reluBackward(rec, { x: this.pre.view(0, [B, this.width]), dOut: dAct, dX: dPre });
    linearBackward(rec, {
      x: input,
      weight: p.dense.weight,
      dOut: dPre,
      dX: dInput,
      dWeight: g.dense.weight,
      dBias: g.dense.bias,
      accumulate,
    });
    const dHidden = this.dHidden.view(0, [B, S, this.hiddenSize]);
    if (this.wic) {
      wicPoolBackward(rec, {
        pooled: input,
        spans: this.spans.view(0, [B, 4]),
        dOut: dInput,
        dHidden,
      });
    } else {
      firstTokenBackward(rec, { dOut: dInput, dHidden });
    }
    return dHidden;
  }

  /** Frees every GPU buffer of the head (parameters, gradients, activations). */
  destroy(): void {
    this.paramArena.destroy();
    this.gradArena.destroy();
    const all = [
      this.spans,
      this.input,
      this.pre,
      this.act,
      this.logits,
      this.dAct,
      this.dPre,
      this.dInput,
      this.dHidden,
    ];
    for (const t of all) t.destroy();
  }
}

function named(p: HeadParams): Map<string, Tensor> {
  return new Map([
    ["head.dense.weight", p.dense.weight],
    ["head.dense.bias", p.dense.bias],
    ["head.out_proj.weight", p.outProj.weight],
    ["head.out_proj.bias", p.outProj.bias],
  ]);
}

/** The head's parameters under their checkpoint names ("head.dense.weight", ...). */
export function headParameters(head: Head): Map<string, Tensor> {
  return named(head.params);
}

/** The head's gradients under the same names. */
export function headGradients(head: Head): Map<string, Tensor> {
  return named(head.grads);
}

/** Allocates a head (initialised from `opts.seed` unless `opts.init` is false). */
export function createHead(gpu: Gpu, opts: HeadOptions): Head {
  return new Head(gpu, opts);
}
