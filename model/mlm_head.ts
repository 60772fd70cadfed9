// The masked-language-model head of Hugging Face's BertForMaskedLM / RobertaForMaskedLM, on the
// rows of the encoder's final hidden state at the masked positions:
//
//   x [M, H] → dense (H → H) → GELU → LayerNorm → decoder (tied: the word embeddings [V, H]) + bias
//
// so that a pretrained checkpoint saved with these tensors loads as a *ForMaskedLM model. Names
// (BERT / RoBERTa): cls.predictions.transform.dense.{weight,bias} / lm_head.dense.*,
// cls.predictions.transform.LayerNorm.{weight,bias} / lm_head.layer_norm.*, and the output bias
// cls.predictions.bias / lm_head.bias. The decoder weight is the word-embedding table itself and is
// not stored twice (transformers ties it at load time, as its own save_pretrained leaves it out).
//
// The decoder's gradient with respect to the table goes to `dWordDecoder`, a tensor of the table's
// shape that the caller adds into the encoder's word-embedding gradient after the encoder backward
// (which overwrites it).

import type { Gpu } from "../kernels/device.ts";
import { geluBackward } from "../kernels/gelu.ts";
import { layerNormBackward, layerNormForward } from "../kernels/layernorm.ts";
import { linearBackward, linearForward } from "../kernels/linear.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createTensor, expectShape, type Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "./config.ts";
import { initializerRange } from "./init.ts";

/** The MLM head's tensors (H the hidden size); T is Tensor, Float32Array, a name or a shape. */
export interface MlmHeadParams<T = Tensor> {
  /** The transform's dense weight [H, H]. */
  denseWeight: T;
  /** The transform's dense bias [H]. */
  denseBias: T;
  /** The transform's LayerNorm weight [H]. */
  lnWeight: T;
  /** The transform's LayerNorm bias [H]. */
  lnBias: T;
  /** The decoder's output bias [V]. */
  bias: T;
}

/** Checkpoint names of the head's tensors for the config's model family. */
export function mlmHeadNames(config: ModelConfig): MlmHeadParams<string> {
  if (config.prefix === "roberta") {
    return {
      denseWeight: "lm_head.dense.weight",
      denseBias: "lm_head.dense.bias",
      lnWeight: "lm_head.layer_norm.weight",
      lnBias: "lm_head.layer_norm.bias",
      bias: "lm_head.bias",
    };
  }
  if (config.prefix === "bert") {
    return {
      denseWeight: "cls.predictions.transform.dense.weight",
      denseBias: "cls.predictions.transform.dense.bias",
      lnWeight: "cls.predictions.transform.LayerNorm.weight",
      lnBias: "cls.predictions.transform.LayerNorm.bias",
      bias: "cls.predictions.bias",
    };
  }
  throw new Error(`MLM head: model type "${config.modelType}" has no masked-LM head here`);
}

/** Shapes of the head's tensors. */
export function mlmHeadShapes(config: ModelConfig): MlmHeadParams<number[]> {
  const h = config.hiddenSize;
  return {
    denseWeight: [h, h],
    denseBias: [h],
    lnWeight: [h],
    lnBias: [h],
    bias: [config.vocabSize],
  };
}

const KEYS = ["denseWeight", "denseBias", "lnWeight", "lnBias", "bias"] as const;

/**
 * Initial values as BertPreTrainedModel._init_weights: dense weight N(0, initializer_range)
 * (Box–Muller over `normal`), biases 0, LayerNorm weight 1. An initializer_range that is not a
 * finite number > 0 is a ConfigError naming `file` (the config the model came from).
 */
export function initialMlmHeadValues(
  config: ModelConfig,
  normal: () => number,
  file = "config.json",
): MlmHeadParams<Float32Array> {
  const shapes = mlmHeadShapes(config);
  const std = initializerRange(config, file);
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const denseWeight = Float32Array.from({ length: size(shapes.denseWeight) }, () => std * normal());
  return {
    denseWeight,
    denseBias: new Float32Array(size(shapes.denseBias)),
    lnWeight: new Float32Array(size(shapes.lnWeight)).fill(1),
    lnBias: new Float32Array(size(shapes.lnBias)),
    bias: new Float32Array(size(shapes.bias)),
  };
}

/**
 * The masked-LM head (BertForMaskedLM / RobertaForMaskedLM) for up to maxRows masked positions,
 * its decoder tied to the encoder's word embeddings; all f32. destroy() frees its buffers.
 */
export class MlmHead {
  /** The device everything is allocated on. */
  readonly gpu: Gpu;
  /** The model's architecture (BERT or RoBERTa family). */
  readonly config: ModelConfig;
  /** The most rows (masked positions) one forward takes. */
  readonly maxRows: number;
  /** The head's parameters (the decoder weight is the encoder's word table, not here). */
  readonly params: MlmHeadParams;
  /** Their gradients, written by `backward`. */
  readonly grads: MlmHeadParams;
  /** The decoder's gradient with respect to the word-embedding table [V, H]. */
  readonly dWordDecoder: Tensor;
  private readonly pre: Tensor;
  private readonly act: Tensor;
  private readonly mean: Tensor;
  private readonly rstd: Tensor;
  private readonly normed: Tensor;
  private readonly logits: Tensor;
  private readonly dNormed: Tensor;
  private readonly dAct: Tensor;
  private readonly dPre: Tensor;
  private readonly dRows: Tensor;
  private last: { rows: Tensor; words: Tensor; m: number } | null = null;

  /** Allocates the head with zeroed parameters (`upload` sets them); throws for ELECTRA. */
  constructor(gpu: Gpu, config: ModelConfig, maxRows: number) {
    if (!Number.isSafeInteger(maxRows) || maxRows < 1) {
      throw new Error(`MlmHead: maxRows must be a positive integer, got ${maxRows}`);
    }
    this.gpu = gpu;
    this.config = config;
    this.maxRows = maxRows;
    const names = mlmHeadNames(config), shapes = mlmHeadShapes(config);
    const make = (prefix: string) =>
      Object.fromEntries(
        KEYS.map((k) => [k, createTensor(gpu, shapes[k], "f32", `${prefix}${names[k]}`)]),
      ) as unknown as MlmHeadParams;
    this.params = make("");
    this.grads = make("grad ");
    const h = config.hiddenSize, v = config.vocabSize;
    const t = (label: string, shape: number[]) => createTensor(gpu, shape, "f32", label);
    this.dWordDecoder = t("mlm dWord (decoder)", [v, h]);
    this.pre = t("mlm dense out", [maxRows, h]);
    this.act = t("mlm gelu out", [maxRows, h]);
    this.mean = t("mlm ln mean", [maxRows]);
    this.rstd = t("mlm ln rstd", [maxRows]);
    this.normed = t("mlm transform out", [maxRows, h]);
    this.logits = t("mlm logits", [maxRows, v]);
    this.dNormed = t("mlm dTransform", [maxRows, h]);
    this.dAct = t("mlm dGelu", [maxRows, h]);
    this.dPre = t("mlm dDense", [maxRows, h]);
    this.dRows = t("mlm dRows", [maxRows, h]);
  }

  /** The head's tensors under their checkpoint names. */
  parameters(): Map<string, Tensor> {
    const names = mlmHeadNames(this.config);
    return new Map(KEYS.map((k) => [names[k], this.params[k]]));
  }

  /** The head's gradients under their parameters' checkpoint names. */
  gradients(): Map<string, Tensor> {
    const names = mlmHeadNames(this.config);
    return new Map(KEYS.map((k) => [names[k], this.grads[k]]));
  }

  /** Writes host values into the parameters (e.g. `initialMlmHeadValues`). */
  upload(values: MlmHeadParams<Float32Array>): void {
    for (const k of KEYS) this.params[k].upload(values[k]);
  }

  /**
   * Records the logits [M, V] of `rows` [M, H] (the hidden states at the masked positions) with
   * `words` [V, H], the encoder's word-embedding table; returns a view of them.
   */
  forward(rec: Recorder, rows: Tensor, words: Tensor): Tensor {
    const h = this.config.hiddenSize, v = this.config.vocabSize;
    expectShape("MlmHead.forward", "rows", rows, [-1, h], "f32");
    expectShape("MlmHead.forward", "words", words, [v, h], "f32");
    const m = rows.shape[0];
    if (m < 1 || m > this.maxRows) {
      throw new Error(`MlmHead.forward: ${m} rows is not in [1, ${this.maxRows}]`);
    }
    const p = this.params;
    const pre = this.pre.view(0, [m, h]), act = this.act.view(0, [m, h]);
    const normed = this.normed.view(0, [m, h]);
    linearForward(rec, {
      x: rows,
      weight: p.denseWeight,
      bias: p.denseBias,
      out: act,
      activation: "gelu",
      preActivation: pre,
    });
    layerNormForward(rec, {
      x: act,
      gamma: p.lnWeight,
      beta: p.lnBias,
      out: normed,
      mean: this.mean.view(0, [m]),
      rstd: this.rstd.view(0, [m]),
      eps: this.config.layerNormEps,
    });
    const logits = this.logits.view(0, [m, v]);
    linearForward(rec, { x: normed, weight: words, bias: p.bias, out: logits });
    this.last = { rows, words, m };
    return logits;
  }

  /**
   * Records the gradients of the head's parameters, of the word table through the decoder
   * (`dWordDecoder`), and returns the gradient with respect to the forward's rows [M, H]. With
   * `accumulate`, the gradients (`dWordDecoder` too) are added to what they hold (the parts of a
   * batch run one after another).
   */
  backward(rec: Recorder, dLogits: Tensor, opts: { accumulate?: boolean } = {}): Tensor {
    const accumulate = opts.accumulate ?? false;
    const last = this.last;
    if (!last) throw new Error("MlmHead.backward: no forward recorded");
    const h = this.config.hiddenSize, v = this.config.vocabSize, m = last.m;
    expectShape("MlmHead.backward", "dLogits", dLogits, [m, v], "f32");
    const p = this.params, g = this.grads;
    const view = (t: Tensor) => t.view(0, [m, h]);
    linearBackward(rec, {
      x: view(this.normed),
      weight: last.words,
      dOut: dLogits,
      dX: view(this.dNormed),
      dWeight: this.dWordDecoder,
      dBias: g.bias,
      accumulate,
    });
    layerNormBackward(rec, {
      x: view(this.act),
      gamma: p.lnWeight,
      mean: this.mean.view(0, [m]),
      rstd: this.rstd.view(0, [m]),
      dOut: view(this.dNormed),
      dX: view(this.dAct),
      dGamma: g.lnWeight,
      dBeta: g.lnBias,
      accumulate,
    });
    geluBackward(rec, { x: view(this.pre), dOut: view(this.dAct), dX: view(this.dPre) });
    const dRows = view(this.dRows);
    linearBackward(rec, {
      x: last.rows,
      weight: p.denseWeight,
      dOut: view(this.dPre),
      dX: dRows,
      dWeight: g.denseWeight,
      dBias: g.denseBias,
      accumulate,
    });
    return dRows;
  }

  /** Frees every GPU buffer of the head (parameters, gradients, activations). */
  destroy(): void {
    for (const k of KEYS) {
      this.params[k].destroy();
      this.grads[k].destroy();
    }
    for (
      const t of [
        this.dWordDecoder,
        this.pre,
        this.act,
        this.mean,
        this.rstd,
        this.normed,
        this.logits,
        this.dNormed,
        this.dAct,
        this.dPre,
        this.dRows,
      ]
    ) t.destroy();
  }
}
