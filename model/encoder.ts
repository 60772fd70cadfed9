// The BERT / RoBERTa / ELECTRA encoder, forward and backward, on the kernel core.
//
// In the manner of karpathy/llm.c: the parameters are one plain struct (`EncoderParams`) of
// views of one arena (kernels/arena.ts, ordered by weight-decay class, `encoderArenaOrder`), the
// gradients the same struct with a tensor only where something trains (views of a gradient arena
// of the same layout, so the optimizer updates each class in one launch), every activation the
// backward needs lives in buffers allocated once for `maxBatch × maxSeq` tokens, and each
// layer's forward sits beside its backward. `encoderParameters` maps the struct to Hugging Face's
// tensor names (relative to the `bert.` / `roberta.` / `electra.` prefix); the checkpoint loader,
// the saver and the optimizer all go through that one map.
//
// Post-LN layers as in Hugging Face:
//   x → q, k, v → attention (mask, prefix rows, probability dropout) → attention.output.dense
//     → dropout → + x → LayerNorm = a → intermediate.dense → GELU → output.dense → dropout
//     → + a → LayerNorm = layer output.
// The cheap steps ride on their neighbours: "dropout → + residual → LayerNorm" is one launch
// each way (kernels/add_layernorm.ts), and GELU sits in intermediate.dense's GEMM epilogue, its
// derivative in the epilogue of output.dense's input-gradient GEMM (kernels/matmul.ts). A hook
// on intermediate.dense (forward) or output.dense (backward) adds to the product before GELU
// would see it, so those layers then run GELU as a launch of its own.
// Embeddings: (word + token type) + position → LayerNorm → dropout [→ embeddings_project].
//
// PEFT methods plug in without editing this file (as huggingface/peft does): a linear hook adds
// its output onto any of a layer's six linear layers (LoRA), an attention-prefix hook supplies
// per-layer prefix keys and values (prefix tuning), and the `trainable` predicate over tensor
// names selects what gets gradients (BitFit is just "names ending in .bias").

import { maxSequenceLength, type ModelConfig, positionIds } from "./config.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { addLayerNormBackward, addLayerNormForward } from "../kernels/add_layernorm.ts";
import {
  ATTENTION_MAX_HEAD_DIM,
  attentionBackward,
  attentionForward,
} from "../kernels/attention.ts";
import {
  FLASH_ATTENTION_MAX_HEAD_DIM,
  FLASH_ATTENTION_STORAGE_BUFFERS,
  flashAttentionBackward,
  flashAttentionForward,
  flashAttentionStatsShape,
} from "../kernels/flash_attention.ts";
import {
  dropoutBackward,
  type DropoutConfig,
  dropoutForward,
  isU32,
  philox4x32_10,
} from "../kernels/dropout.ts";
import {
  buildEmbeddingPlan,
  createEmbeddingPlanTensors,
  embeddingBackward,
  embeddingForward,
  type EmbeddingPlan,
  type EmbeddingPlanTensors,
} from "../kernels/embedding.ts";
import { geluBackward, geluForward } from "../kernels/gelu.ts";
import { layerNormBackward, layerNormForward } from "../kernels/layernorm.ts";
import { linearBackward, linearForward } from "../kernels/linear.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createArena, type TensorArena } from "../kernels/arena.ts";
import { castF32ToF16 } from "../kernels/cast.ts";
import { createTensor, type DType, expectShape, Tensor } from "../kernels/tensor.ts";

// ---------------------------------------------------------------------------------------------
// Parameters

/** A weight and a bias: a Linear ([out, in], [out]) or a LayerNorm ([H], [H]). */
export interface WeightBias<T = Tensor> {
  /** `<module>.weight` */
  weight: T;
  /** `<module>.bias` */
  bias: T;
}

/**
 * The embeddings' tensors (`embeddings.*`; ELECTRA's `embeddings_project.*`), E the embedding
 * size. T is Tensor for parameters, `Tensor | undefined` for gradients.
 */
export interface EmbeddingParams<T = Tensor> {
  /** [V, E] */
  word: T;
  /** [maxPositions, E] */
  position: T;
  /** [typeVocab, E] */
  tokenType: T;
  /** LayerNorm over E. */
  norm: WeightBias<T>;
  /** ELECTRA only, when E != H: embeddings_project, [H, E] and [H]. */
  project?: WeightBias<T>;
}

/** One transformer layer's tensors (`encoder.layer.<i>.*`), H the hidden size, I the FFN size. */
export interface LayerParams<T = Tensor> {
  /** attention.self.query, [H, H] */
  query: WeightBias<T>;
  /** attention.self.key, [H, H] */
  key: WeightBias<T>;
  /** attention.self.value, [H, H] */
  value: WeightBias<T>;
  /** attention.output.dense */
  attnOut: WeightBias<T>;
  /** attention.output.LayerNorm */
  attnNorm: WeightBias<T>;
  /** intermediate.dense, [I, H] */
  intermediate: WeightBias<T>;
  /** output.dense, [H, I] */
  output: WeightBias<T>;
  /** output.LayerNorm */
  outNorm: WeightBias<T>;
}

/** Every backbone tensor. `EncoderParams<Tensor | undefined>` is the gradient struct. */
export interface EncoderParams<T = Tensor> {
  /** The embedding tables, their LayerNorm and (ELECTRA) projection. */
  embeddings: EmbeddingParams<T>;
  /** One entry per layer, bottom first. */
  layers: LayerParams<T>[];
}

/** The gradients: a tensor for each parameter that trains, undefined for frozen ones. */
export type EncoderGrads = EncoderParams<Tensor | undefined>;

/** A layer's modules in Hugging Face order: struct key, name under `encoder.layer.i.`. */
const LAYER_MODULES = [
  ["query", "attention.self.query"],
  ["key", "attention.self.key"],
  ["value", "attention.self.value"],
  ["attnOut", "attention.output.dense"],
  ["attnNorm", "attention.output.LayerNorm"],
  ["intermediate", "intermediate.dense"],
  ["output", "output.dense"],
  ["outNorm", "output.LayerNorm"],
] as const satisfies readonly (readonly [keyof LayerParams, string])[];

/** Builds the struct, calling `make` with each tensor's name (relative to the prefix) and shape. */
export function buildEncoderStruct<T>(
  config: ModelConfig,
  make: (name: string, shape: number[]) => T,
): EncoderParams<T> {
  const { hiddenSize: H, embeddingSize: E, intermediateSize: I } = config;
  const wb = (name: string, wShape: number[], bShape: number[]): WeightBias<T> => ({
    weight: make(`${name}.weight`, wShape),
    bias: make(`${name}.bias`, bShape),
  });
  const embeddings: EmbeddingParams<T> = {
    word: make("embeddings.word_embeddings.weight", [config.vocabSize, E]),
    position: make("embeddings.position_embeddings.weight", [config.maxPositions, E]),
    tokenType: make("embeddings.token_type_embeddings.weight", [config.typeVocabSize, E]),
    norm: wb("embeddings.LayerNorm", [E], [E]),
  };
  if (E !== H) embeddings.project = wb("embeddings_project", [H, E], [H]);
  const shapes: Record<keyof LayerParams, [number[], number[]]> = {
    query: [[H, H], [H]],
    key: [[H, H], [H]],
    value: [[H, H], [H]],
    attnOut: [[H, H], [H]],
    attnNorm: [[H], [H]],
    intermediate: [[I, H], [I]],
    output: [[H, I], [H]],
    outNorm: [[H], [H]],
  };
  const layers: LayerParams<T>[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const layer = {} as LayerParams<T>;
    for (const [key, path] of LAYER_MODULES) {
      layer[key] = wb(`encoder.layer.${l}.${path}`, ...shapes[key]);
    }
    layers.push(layer);
  }
  return { embeddings, layers };
}

/** The struct's entries in Hugging Face order, named relative to the prefix. */
export function encoderEntries<T>(p: EncoderParams<T>): [string, T][] {
  const out: [string, T][] = [];
  const e = p.embeddings;
  out.push(["embeddings.word_embeddings.weight", e.word]);
  out.push(["embeddings.position_embeddings.weight", e.position]);
  out.push(["embeddings.token_type_embeddings.weight", e.tokenType]);
  out.push(["embeddings.LayerNorm.weight", e.norm.weight]);
  out.push(["embeddings.LayerNorm.bias", e.norm.bias]);
  if (e.project) {
    out.push(["embeddings_project.weight", e.project.weight]);
    out.push(["embeddings_project.bias", e.project.bias]);
  }
  p.layers.forEach((layer, l) => {
    for (const [key, path] of LAYER_MODULES) {
      out.push([`encoder.layer.${l}.${path}.weight`, layer[key].weight]);
      out.push([`encoder.layer.${l}.${path}.bias`, layer[key].bias]);
    }
  });
  return out;
}

/** Maps every leaf of the struct through `f` (same shape, same order as `encoderEntries`). */
export function mapEncoderStruct<A, B>(p: EncoderParams<A>, f: (a: A) => B): EncoderParams<B> {
  const wb = (x: WeightBias<A>): WeightBias<B> => ({ weight: f(x.weight), bias: f(x.bias) });
  const e = p.embeddings;
  const embeddings: EmbeddingParams<B> = {
    word: f(e.word),
    position: f(e.position),
    tokenType: f(e.tokenType),
    norm: wb(e.norm),
  };
  if (e.project) embeddings.project = wb(e.project);
  const layers = p.layers.map((layer) => {
    const out = {} as LayerParams<B>;
    for (const [key] of LAYER_MODULES) out[key] = wb(layer[key]);
    return out;
  });
  return { embeddings, layers };
}

/** Every backbone tensor's shape, by name relative to the prefix (no GPU needed). */
export function encoderParameterShapes(config: ModelConfig): Map<string, number[]> {
  return new Map(encoderEntries(buildEncoderStruct(config, (_, shape) => shape)));
}

/**
 * Every parameter under its Hugging Face name relative to the prefix (e.g.
 * "encoder.layer.3.attention.self.query.weight"), in Hugging Face order. The checkpoint loader
 * and saver and the optimizer use exactly this map.
 */
export function encoderParameters(params: EncoderParams): Map<string, Tensor> {
  return new Map(encoderEntries(params));
}

/**
 * The no-decay rule: biases and LayerNorm weights (any Hugging Face name spelling). The optimizer
 * applies it (train/optimizer.ts) and the arena order below follows it.
 */
export function isNoDecayName(name: string): boolean {
  return name.endsWith(".bias") || name.includes("LayerNorm.");
}

/**
 * The order of the backbone's tensors in its parameter and gradient arenas (names relative to the
 * prefix): the decayed tensors (embedding tables and linear weights), then the LayerNorm weights,
 * then ELECTRA's embeddings_project.bias, then every other bias, each class in Hugging Face order.
 * So each weight-decay class of every set the strategies train is one run of consecutive slots,
 * and the optimizer updates it in one launch: everything (ft, stage 2: decayed + no-decay) and
 * BitFit's biases (the last class exactly).
 */
export function encoderArenaOrder(names: readonly string[]): string[] {
  const rank = (name: string) =>
    !isNoDecayName(name)
      ? 0
      : name.includes("LayerNorm.") && name.endsWith(".weight")
      ? 1
      : name.startsWith("embeddings_project.")
      ? 2
      : 3;
  return names.map((name, i) => ({ name, i, r: rank(name) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .map((e) => e.name);
}

/** The gradients that exist (the trainable parameters), under the same names. */
export function encoderGradients(grads: EncoderGrads): Map<string, Tensor> {
  return new Map(
    encoderEntries(grads).filter((e): e is [string, Tensor] => e[1] !== undefined),
  );
}

// ---------------------------------------------------------------------------------------------
// Hooks (PEFT)

/** The six linear layers of an encoder layer, named as Hugging Face names their modules. */
export const LINEAR_MODULES = [
  "query",
  "key",
  "value",
  "attention.output.dense",
  "intermediate.dense",
  "output.dense",
] as const;
/** One of the six linear layers of an encoder layer (LINEAR_MODULES). */
export type LinearModule = typeof LINEAR_MODULES[number];

/** Where a linear hook applies: a layer index (0 = bottom) and a module of it. */
export interface LinearSite {
  /** Layer index, 0 the bottom layer. */
  layer: number;
  /** Which linear layer of it. */
  module: LinearModule;
}

/** What a hook is told about the pass it runs in. */
export interface HookContext extends LinearSite {
  /** Whether the pass is a training one (dropout on). */
  training: boolean;
  /** The step's dropout seed (already mixed with the step) and a stream no other site uses. */
  seed: number;
  /** The dropout stream reserved for this site (see `seed`). */
  stream: number;
  /** Backward only: add into the hook's own gradients instead of overwriting them. */
  accumulate: boolean;
  /**
   * The frozen linear's weight [out, in] as its products read it (an f16 copy in f16 runs): what
   * a method that rescales the layer's output needs for its input gradient.
   */
  weight: Tensor;
}

/** An addition to a frozen linear layer's output (LoRA and the like). */
export interface LinearHook {
  /** Adds the hook's term into `out` [B, S, out], which already holds the linear's output. */
  forward(rec: Recorder, x: Tensor, out: Tensor, ctx: HookContext): void;
  /**
   * Computes the hook's own gradients from dOut [B, S, out] and ADDS its contribution to the
   * input gradient into `dX` [B, S, in] (already written by the frozen path). `dX` is undefined
   * when nothing below needs the input gradient.
   */
  backward(
    rec: Recorder,
    x: Tensor,
    dOut: Tensor,
    dX: Tensor | undefined,
    ctx: HookContext,
  ): void;
}

/** Prefix-tuning rows for one layer's attention: [H, P, D] each. */
export interface AttentionPrefix {
  /** Prefix keys, [H, P, D] (heads, prefix length, head dimension). */
  key: Tensor;
  /** Prefix values, [H, P, D]. */
  value: Tensor;
  /** Gradients, [H, P, D], summed over the batch; omit both for a frozen prefix. */
  dKey?: Tensor;
  /** The gradient of `value`, as `dKey`. */
  dValue?: Tensor;
}

/** What a PEFT method plugs into an encoder: linear hooks and attention prefixes. */
export interface EncoderHooks {
  /** The hook for a linear site, or undefined. Asked once per forward for every site. */
  linear?: (site: LinearSite) => LinearHook | undefined;
  /** The prefix for a layer, or undefined. Asked once per forward for every layer. */
  prefix?: (layer: number) => AttentionPrefix | undefined;
}

// ---------------------------------------------------------------------------------------------
// Activations

/** What one layer's forward keeps for its backward. Tensors hold maxBatch·maxSeq rows. */
interface LayerActs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /**
   * Materialized attention: [B, heads, S, P + S], the pre-dropout softmax. Flash attention:
   * [B, heads, S, 2], each row's max and sum (flashAttentionStatsShape).
   */
  probs: Tensor;
  context: Tensor;
  /** LayerNorm 1's normalised input (dropout(attention output) + residual) and its rstd. */
  xhat1: Tensor;
  rstd1: Tensor;
  /** LayerNorm 1's output: the FFN input and its residual. */
  norm1: Tensor;
  /** intermediate.dense output (GELU input). */
  inter: Tensor;
  /** GELU output (output.dense input). */
  gelu: Tensor;
  xhat2: Tensor;
  rstd2: Tensor;
  /** The layer output. */
  out: Tensor;
}

interface EmbeddingActs {
  /** word + type + position, [N, E]. */
  sum: Tensor;
  mean: Tensor;
  rstd: Tensor;
  /** LayerNorm output, [N, E]. */
  norm: Tensor;
  /** After dropout, [N, E]. */
  dropped: Tensor;
  /** ELECTRA's projection output, [N, H]. */
  projected?: Tensor;
}

/** Backward scratch. */
interface GradScratch {
  /** The residual stream's gradient, ping-pong between layers, [N, H]. */
  stream: [Tensor, Tensor];
  /** A dense output's gradient, through its dropout. */
  dDrop: Tensor;
  dNorm1: Tensor;
  dContext: Tensor;
  dQ: Tensor;
  dK: Tensor;
  dV: Tensor;
  /** [N, I]; GELU's output gradient, only where a hook keeps GELU out of the epilogue. */
  dGelu: Tensor | null;
  dInter: Tensor;
  dScores: Tensor;
  /** [N, E] */
  dEmbA: Tensor;
  dEmbB: Tensor;
}

/** What a forward leaves for the backward. */
interface ForwardState {
  batch: number;
  seq: number;
  training: boolean;
  seed: number;
  hiddenP: number;
  attentionP: number;
  /** The tensor the first layer read (embedding output after dropout / projection). */
  input0: Tensor;
  /** The embedding LayerNorm's output after dropout (the projection's input). */
  embOut: Tensor;
  prefixes: (AttentionPrefix | undefined)[];
  linearHooks: Map<LinearModule, LinearHook>[];
}

// ---------------------------------------------------------------------------------------------
// The encoder

/** Options of `createEncoder`: capacity, dropout, what trains, hooks, kernels and precision. */
export interface EncoderOptions {
  /** Largest batch and sequence length `setBatch` accepts; the arena is sized for them. */
  maxBatch: number;
  /** Largest sequence length (at most the model's positions; see `maxBatch`). */
  maxSeq: number;
  /** Largest prefix-tuning length (attention probabilities are sized for maxPrefix + maxSeq keys). */
  maxPrefix?: number;
  /**
   * The most rows × tokens one forward will take, when the caller knows it (a run's batches are
   * known before it starts): a batch whose activations would exceed one storage binding is then
   * refused here, before anything runs, not at the launch that meets it. Without it (or for a
   * batch past it) each launch checks its own bindings. At most maxBatch · maxSeq.
   */
  maxRows?: number;
  /** Overrides both dropout probabilities of the config (0 turns dropout off). */
  dropout?: number;
  /**
   * Which parameters get gradients, by name relative to the prefix. Default: all (none when
   * `inference`). Change later with `setTrainable`.
   */
  trainable?: (name: string) => boolean;
  /** Forward only: layers share one set of activations, no gradients, `backward` refuses. */
  inference?: boolean;
  /** PEFT hooks from the start (default none); change later with `setHooks`. */
  hooks?: EncoderHooks;
  /**
   * The attention kernels: "materialized" (kernels/attention.ts: GEMMs and a [B, H, S, T]
   * probability matrix saved for the backward), "flash" (kernels/flash_attention.ts: fused,
   * per-row statistics only), or "auto" (default): flash when the probabilities of one layer
   * would take more than 64 MiB or one storage binding, materialized otherwise. See
   * `chooseAttention`.
   */
  attention?: AttentionKernels;
  /**
   * "f32" (default), or "f16": mixed precision as PyTorch's autocast does it for linear layers.
   * The matrix products read f16 copies of the weight matrices (refreshed from the f32 master
   * weights at every forward) and f16 activations: q, k, v, the attention context, the FFN's
   * pre-activation and GELU output, and in the backward their gradients; every product sums in
   * f32. The residual stream, LayerNorm, softmax, the embeddings, parameters and their gradients
   * stay f32. Needs the adapter's shader-f16 and the materialized attention kernels. Gradients
   * of f16 activations are f16: train with a loss scale (the Trainer's precision "f16").
   */
  precision?: Precision;
  /**
   * With precision "f16" only: the encoder's matrix products (its linear layers' forward, dX and
   * dW, the embedding projection's, attention's per-head products) multiply and sum in f16
   * (matmul's `f16Math`: f32 inputs such as LayerNorm outputs and residual gradients rounded to
   * f16 as they are read, runs of 16 products summed in f16, the runs' totals in f32). Some 2^-9
   * relative error per product where f32 sums give 2^-20; for GPUs whose f16 arithmetic is twice
   * their f32 rate. Default false.
   */
  f16Math?: boolean;
}

/** Which attention kernels an encoder asks for (EncoderOptions.attention, `chooseAttention`). */
export type AttentionKernels = "auto" | "flash" | "materialized";

/** Storage precision of an encoder's matrix-product operands (EncoderOptions.precision). */
export type Precision = "f32" | "f16";

/** Above this many bytes of attention probabilities per layer, "auto" takes the flash kernels. */
export const FLASH_ATTENTION_ABOVE_BYTES = 64 * 2 ** 20;

/**
 * Which attention kernels an encoder of this shape runs. Measured on lavapipe (bench
 * `--only attention,flash_attention`, B=8 S=128 H=4 D=64): flash 22 ms forward and 101 ms
 * backward against 53 and 90 ms materialized, about 15% less in all (30% less at S=512); but its
 * kernels take about twice as long to compile (about 22 s against 13 s, uncached) and nobody has
 * timed them on a GPU yet. So "auto" keeps the materialized path at BERT-sized sequences and takes
 * flash where its memory matters: probabilities over 64 MiB per layer, or beyond one storage
 * binding, where the materialized path cannot run at all. Flash needs head dimension ≤ 128 and 11
 * storage buffers per stage, and f32 operands: an f16 encoder runs the materialized kernels (and
 * is refused where their probabilities would not fit one binding).
 */
export function chooseAttention(
  gpu: Gpu,
  requested: AttentionKernels,
  shape: { batch: number; heads: number; seq: number; prefix: number; headDim: number },
  precision: Precision = "f32",
): "flash" | "materialized" {
  if (precision === "f16") {
    if (requested === "flash") {
      throw new Error(
        'Encoder: flash attention runs in f32 only; with precision "f16" use attention ' +
          '"materialized" or "auto"',
      );
    }
    const bytes = 4 * shape.batch * shape.heads * shape.seq * (shape.prefix + shape.seq);
    const limit = gpu.limits.maxStorageBufferBindingSize;
    if (bytes > limit) {
      // Worded as a launch's binding check, so that a run's advice adds the batch that fits.
      throw new GpuError(
        `Encoder: attention probabilities ("layer probs", ${bytes} bytes) exceeds this ` +
          `adapter's storage binding limit of ${limit} bytes (precision "f16" keeps them whole; ` +
          `"f32" runs flash attention, which does not)`,
      );
    }
    return "materialized";
  }
  const flashFits = shape.headDim <= FLASH_ATTENTION_MAX_HEAD_DIM &&
    gpu.limits.maxStorageBuffersPerShaderStage >= FLASH_ATTENTION_STORAGE_BUFFERS;
  if (requested === "flash") {
    if (!flashFits) {
      throw new Error(
        `Encoder: flash attention needs head dimension ≤ ${FLASH_ATTENTION_MAX_HEAD_DIM} ` +
          `(this model: ${shape.headDim}) and ${FLASH_ATTENTION_STORAGE_BUFFERS} storage ` +
          `buffers per shader stage (this adapter: ${gpu.limits.maxStorageBuffersPerShaderStage})`,
      );
    }
    return "flash";
  }
  if (requested === "materialized" || !flashFits) return "materialized";
  const bytes = 4 * shape.batch * shape.heads * shape.seq * (shape.prefix + shape.seq);
  const limit = Math.min(FLASH_ATTENTION_ABOVE_BYTES, gpu.limits.maxStorageBufferBindingSize);
  return bytes > limit ? "flash" : "materialized";
}

/** One batch of tokenized inputs, row-major [batch, seqLen]. */
export interface EncoderBatch {
  /** Word ids, each below the config's vocabSize. */
  inputIds: ArrayLike<number>;
  /** Default: all 0. */
  typeIds?: ArrayLike<number>;
  /** Default: 0..S−1 (BERT), or RoBERTa's positions from padding when the config says so. */
  positionIds?: ArrayLike<number>;
  /** 1 for real tokens, 0 for padding. Default: all 1. */
  attentionMask?: ArrayLike<number>;
  /** Rows, 1 to the encoder's maxBatch. */
  batch: number;
  /** Tokens per row, 1 to the encoder's maxSeq. */
  seqLen: number;
}

/** Options of `Encoder.forward`. */
export interface ForwardOptions {
  /** Dropout on (default false). */
  training?: boolean;
  /** Dropout seed (32-bit) and step, mixed so that every step draws new masks. */
  seed?: number;
  /** The training step, mixed into the seed (default 0). */
  step?: number;
}

/** Options of `Encoder.backward`. */
export interface BackwardOptions {
  /** Add into the gradients (gradient accumulation over micro-batches) instead of overwriting. */
  accumulate?: boolean;
  /** Overrides the encoder's trainable predicate for this call (gradients allocated on demand). */
  trainable?: (name: string) => boolean;
}

/** Dropout streams: 16 per layer (embeddings are "layer −1"); hooks get 8 + module index. */
const SITE_ATTENTION = 0;
const SITE_ATTENTION_OUTPUT = 1;
const SITE_FFN_OUTPUT = 2;
const SITE_HOOKS = 8;
function stream(layer: number, site: number): number {
  return (layer + 1) * 16 + site;
}

/**
 * Throws unless `seed` is a 32-bit unsigned integer and `step` an integer ≥ 0: mixSeed would take
 * 1.5 as 1, -1 as 4294967295 and NaN as 0 (the masks of another step, without a word).
 */
export function checkDropoutCounter(op: string, seed: number, step: number): void {
  if (!isU32(seed)) {
    throw new Error(`${op}: dropout seed ${seed} is not an integer in [0, 2^32)`);
  }
  if (!(Number.isSafeInteger(step) && step >= 0)) {
    throw new Error(`${op}: step ${step} is not an integer ≥ 0`);
  }
}

/** A 32-bit seed for (seed, step): different steps give unrelated masks. */
export function mixSeed(seed: number, step: number): number {
  const counter = [step >>> 0, Math.floor(step / 2 ** 32) >>> 0, 0, 0] as const;
  return philox4x32_10(counter, [seed >>> 0, 0x6a09e667])[0];
}

/** A view of the first elements of `t` with `shape` (the current batch's part of the arena). */
function at(t: Tensor, shape: number[]): Tensor {
  return t.view(0, shape, t.label);
}

/**
 * Throws, before anything is allocated, when the largest activation a kernel binds whole (the
 * FFN's [N, I], else [N, H] or the embeddings' [N, E]) of a forward of `rows` rows × tokens
 * exceeds one storage binding, in the words of a launch's own check (expectBindable), so that a
 * run's advice reads the batch that fits from the ratio. Buffers that large allocate: without this
 * the first launch refused it, and a run whose long rows came late failed hours in.
 */
function expectActivationsBindable(
  gpu: Gpu,
  config: ModelConfig,
  rows: number,
  f16: boolean,
): void {
  const max = gpu.limits.maxStorageBufferBindingSize;
  // q, k, v, the context and the FFN's activations are f16 in f16; the rest stays f32.
  const act = f16 ? 2 : 4;
  const widest = [
    { label: "layer 0 intermediate", bytes: rows * config.intermediateSize * act },
    { label: "linear out", bytes: rows * config.hiddenSize * 4 },
    { label: "embeddings sum", bytes: rows * config.embeddingSize * 4 },
  ].reduce((a, b) => (b.bytes > a.bytes ? b : a));
  if (widest.bytes > max) {
    throw new GpuError(
      `Encoder: activation ("${widest.label}", ${widest.bytes} bytes) exceeds this adapter's ` +
        `storage binding limit of ${max} bytes`,
    );
  }
}

/**
 * A BERT / RoBERTa / ELECTRA encoder on the GPU: parameters, gradients and every activation,
 * allocated once for maxBatch × maxSeq tokens. setBatch, then forward (and backward) record
 * into a Recorder. destroy() frees all its GPU buffers.
 */
export class Encoder {
  /** The device everything is allocated on. */
  readonly gpu: Gpu;
  /** The model's architecture. */
  readonly config: ModelConfig;
  /** Largest batch `setBatch` accepts. */
  readonly maxBatch: number;
  /** Largest sequence length `setBatch` accepts. */
  readonly maxSeq: number;
  /** Largest prefix-tuning length (0: no prefixes). */
  readonly maxPrefix: number;
  /** Forward only: no gradients, and `backward` throws. */
  readonly inference: boolean;
  /** Set by destroy(): every later use is refused, naming the call. */
  private destroyed = false;
  /** The attention kernels this encoder runs (EncoderOptions.attention). */
  readonly attention: "flash" | "materialized";
  /** EncoderOptions.precision. */
  readonly precision: Precision;
  /** EncoderOptions.f16Math. */
  readonly f16Math: boolean;
  /** The parameters (f32), views of one arena owned by the encoder; upload into them to load. */
  readonly params: EncoderParams;
  /** Gradients of the trainable parameters (see `setTrainable`). */
  grads: EncoderGrads;
  /** Dropout probabilities used when `forward` is called with `training: true`. */
  hiddenDropout: number;
  /** Dropout on the attention probabilities (see `hiddenDropout`). */
  attentionDropout: number;

  /** Current batch inputs, [maxBatch·maxSeq] (u32) and mask [maxBatch·maxSeq] (f32). */
  readonly ids: Tensor;
  /** The current batch's position ids, [maxBatch·maxSeq] u32. */
  readonly positionIds: Tensor;
  /** The current batch's token type ids, [maxBatch·maxSeq] u32. */
  readonly typeIds: Tensor;
  /** The current batch's attention mask, [maxBatch·maxSeq] f32 (1 token, 0 padding). */
  readonly mask: Tensor;
  /** Embedding-backward plan of the word ids (padding excluded), built by `setBatch`. */
  readonly wordPlan: EmbeddingPlanTensors;
  /** Embedding-backward plan of the position ids, built by `setBatch`. */
  readonly positionPlan: EmbeddingPlanTensors;
  /** Embedding-backward plan of the token type ids, built by `setBatch`. */
  readonly typePlan: EmbeddingPlanTensors;

  private readonly names: EncoderParams<string>;
  /** Parameter names in arena order (`encoderArenaOrder`) and their shapes. */
  private readonly layout: string[];
  private readonly shapes: Map<string, number[]>;
  /** Every parameter, in one arena (or several where maxBufferSize requires). */
  private readonly paramArena: TensorArena;
  /**
   * What the matrix products read: `params`, except, in f16, the linear weights: f16 copies
   * in `halfArena`, refreshed by `halfCasts` at every forward.
   */
  private readonly productParams: EncoderParams;
  private readonly halfArena: TensorArena | null = null;
  private readonly halfCasts: { src: Tensor; dst: Tensor }[] = [];
  /**
   * The gradients of the trainable parameters (`setTrainable`), in arena order with the slots of
   * `paramArena`'s layout, so that a run of trainable parameters and its gradients line up.
   */
  private gradArena: TensorArena | null = null;
  /** Gradients a backward with its own `trainable` allocated outside `gradArena`. */
  private readonly extraGrads = new Map<string, Tensor>();
  private hooks: EncoderHooks = {};
  private readonly emb: EmbeddingActs;
  private readonly acts: LayerActs[];
  /** attention.output.dense / output.dense outputs, consumed at once. */
  private readonly linOut: Tensor;
  private scratch: GradScratch | null = null;
  private batch = 0;
  private seq = 0;
  private state: ForwardState | null = null;

  /**
   * Allocates everything, parameters zeroed (`createEncoder` does the same). Throws on bad sizes
   * (e.g. maxSeq beyond the model's positions), a bad dropout, or an f16 the adapter cannot run.
   */
  constructor(gpu: Gpu, config: ModelConfig, opts: EncoderOptions) {
    const { maxBatch, maxSeq } = opts;
    const maxPrefix = opts.maxPrefix ?? 0;
    const sizes = { maxBatch: [maxBatch, 1], maxSeq: [maxSeq, 1], maxPrefix: [maxPrefix, 0] };
    for (const [name, [v, min]] of Object.entries(sizes)) {
      if (!Number.isSafeInteger(v) || v < min) {
        throw new Error(`Encoder: ${name} must be an integer ≥ ${min}, got ${v}`);
      }
    }
    const positions = maxSequenceLength(config);
    if (maxSeq > positions) {
      throw new Error(`Encoder: maxSeq ${maxSeq} exceeds the model's ${positions} positions`);
    }
    if (config.headDim > ATTENTION_MAX_HEAD_DIM) {
      throw new Error(
        `Encoder: head dimension ${config.headDim} exceeds the supported ${ATTENTION_MAX_HEAD_DIM}`,
      );
    }
    const p = opts.dropout;
    if (p !== undefined && !(p >= 0 && p < 1)) {
      throw new Error(`Encoder: dropout ${p} is not in [0, 1)`);
    }
    this.gpu = gpu;
    this.config = config;
    this.maxBatch = maxBatch;
    this.maxSeq = maxSeq;
    this.maxPrefix = maxPrefix;
    this.inference = opts.inference ?? false;
    this.hiddenDropout = p ?? config.hiddenDropout;
    this.attentionDropout = p ?? config.attentionDropout;
    this.hooks = opts.hooks ?? {};

    if (opts.maxRows !== undefined) {
      expectActivationsBindable(gpu, config, opts.maxRows, opts.precision === "f16");
    }
    this.names = buildEncoderStruct(config, (name) => name);
    this.shapes = encoderParameterShapes(config);
    this.layout = encoderArenaOrder([...this.shapes.keys()]);
    this.paramArena = createArena(
      gpu,
      this.layout.map((name) => ({ name, shape: this.shapes.get(name)! })),
      "encoder parameters",
    );
    this.params = buildEncoderStruct(config, (name) => this.paramArena.get(name));
    this.precision = opts.precision ?? "f32";
    if (this.precision !== "f32" && this.precision !== "f16") {
      throw new Error(`Encoder: precision must be "f32" or "f16", got "${this.precision}"`);
    }
    if (this.precision === "f16" && !gpu.hasF16) {
      throw new Error(
        `Encoder: precision "f16" needs the WebGPU feature "shader-f16", which this adapter ` +
          `(${gpu.description}) does not offer; use precision "f32"`,
      );
    }
    this.f16Math = opts.f16Math ?? false;
    if (this.f16Math && this.precision !== "f16") {
      throw new Error(
        `Encoder: f16Math needs precision "f16" (its loss scaling), got "${this.precision}"`,
      );
    }
    this.productParams = this.params;
    if (this.precision === "f16") {
      const names = this.layout.filter((name) => isProductWeight(name));
      this.halfArena = createArena(
        gpu,
        names.map((name) => ({ name, shape: this.shapes.get(name)!, label: `${name} (f16)` })),
        "encoder f16 weights",
        "f16",
      );
      const half = this.halfArena;
      this.productParams = buildEncoderStruct(
        config,
        (name) => half.tensors.get(name) ?? this.paramArena.get(name),
      );
      this.halfCasts = castRanges(names.map((n) => [this.paramArena.get(n), half.get(n)]));
    }

    const { hiddenSize: H, embeddingSize: E, intermediateSize: I, numHeads } = config;
    const N = maxBatch * maxSeq;
    const t = (label: string, shape: number[], dtype: DType = "f32") =>
      createTensor(gpu, shape, dtype, label);
    // The activations around the matrix products (see EncoderOptions.precision).
    const act = this.precision;
    this.ids = t("input ids", [N], "u32");
    this.positionIds = t("position ids", [N], "u32");
    this.typeIds = t("token type ids", [N], "u32");
    this.mask = t("attention mask", [N]);
    this.wordPlan = createEmbeddingPlanTensors(gpu, N, "word plan");
    this.positionPlan = createEmbeddingPlanTensors(gpu, N, "position plan");
    this.typePlan = createEmbeddingPlanTensors(gpu, N, "token type plan");

    this.emb = {
      sum: t("embeddings sum", [N, E]),
      mean: t("embeddings LN mean", [N]),
      rstd: t("embeddings LN rstd", [N]),
      norm: t("embeddings LN out", [N, E]),
      dropped: t("embeddings dropout", [N, E]),
    };
    if (E !== H) this.emb.projected = t("embeddings projected", [N, H]);
    this.linOut = t("linear out", [N, H]);

    this.attention = chooseAttention(gpu, opts.attention ?? "auto", {
      batch: maxBatch,
      heads: numHeads,
      seq: maxSeq,
      prefix: maxPrefix,
      headDim: config.headDim,
    }, this.precision);
    const probsShape = this.attention === "flash"
      ? [maxBatch * numHeads * maxSeq * 2]
      : [maxBatch * numHeads * maxSeq * (maxPrefix + maxSeq)];
    const layerActs = (l: number | string): LayerActs => ({
      q: t(`layer ${l} q`, [N, H], act),
      k: t(`layer ${l} k`, [N, H], act),
      v: t(`layer ${l} v`, [N, H], act),
      probs: t(`layer ${l} probs`, probsShape),
      context: t(`layer ${l} context`, [N, H], act),
      xhat1: t(`layer ${l} xhat1`, [N, H]),
      rstd1: t(`layer ${l} rstd1`, [N]),
      norm1: t(`layer ${l} norm1`, [N, H]),
      inter: t(`layer ${l} intermediate`, [N, I], act),
      gelu: t(`layer ${l} gelu`, [N, I], act),
      xhat2: t(`layer ${l} xhat2`, [N, H]),
      rstd2: t(`layer ${l} rstd2`, [N]),
      out: t(`layer ${l} out`, [N, H]),
    });
    if (this.inference) {
      // Layers run one after another: one set of activations, outputs alternating.
      const shared = layerActs("*");
      const other = t("layer out (odd)", [N, H]);
      this.acts = Array.from({ length: config.numLayers }, (_, l) => ({
        ...shared,
        out: l % 2 === 0 ? shared.out : other,
      }));
    } else {
      this.acts = Array.from({ length: config.numLayers }, (_, l) => layerActs(l));
    }

    this.grads = this.setGradArena(opts.trainable ?? (() => !this.inference));
  }

  /** The batch size and sequence length of the current batch (0 before `setBatch`). */
  get batchSize(): number {
    return this.batch;
  }
  /** The sequence length of the current batch (0 before `setBatch`). */
  get seqLen(): number {
    return this.seq;
  }

  /**
   * Sets which parameters get gradients. The trainable set's gradients live in one arena in the
   * parameters' order (`encoderArenaOrder`); a different set gets a new, zeroed arena and the
   * old gradient tensors are freed (the same set keeps its gradients). Call between steps.
   */
  setTrainable(trainable: (name: string) => boolean): void {
    this.grads = this.setGradArena(trainable);
  }

  /**
   * Gives the trainable set its gradient arena: kept as it is when the set is unchanged, else a
   * new (zeroed) one, the old arena and every gradient allocated outside it freed.
   */
  private setGradArena(trainable: (name: string) => boolean): EncoderGrads {
    this.checkTrainable(trainable);
    const names = this.layout.filter((name) => trainable(name));
    const current = [...(this.gradArena?.tensors.keys() ?? [])];
    if (names.join("\n") !== current.join("\n")) {
      this.gradArena?.destroy();
      this.gradArena = null;
      if (names.length > 0) {
        this.gradArena = createArena(
          this.gpu,
          names.map((name) => ({ name, shape: this.shapes.get(name)!, label: `grad ${name}` })),
          "encoder gradients",
        );
      }
    }
    for (const g of this.extraGrads.values()) g.destroy();
    this.extraGrads.clear();
    return this.gradStruct(trainable);
  }

  /** An inference encoder has no gradient buffers: asking it for a trainable tensor is an error. */
  private checkTrainable(trainable: (name: string) => boolean): void {
    if (this.inference && this.layout.some((n) => trainable(n))) {
      throw new Error("Encoder: an inference encoder has no gradients");
    }
  }

  /** Replaces the PEFT hooks (null removes them). Takes effect at the next forward. */
  setHooks(hooks: EncoderHooks | null): void {
    this.hooks = hooks ?? {};
  }

  /**
   * The gradient struct for `trainable`: the gradient arena's tensors, and for trainable
   * parameters outside it (a backward's own `trainable`) separate tensors, allocated once.
   */
  private gradStruct(trainable: (name: string) => boolean): EncoderGrads {
    this.checkTrainable(trainable);
    return mapEncoderStruct(this.names, (name) => {
      if (!trainable(name)) return undefined;
      let g = this.gradArena?.tensors.get(name) ?? this.extraGrads.get(name);
      if (!g) {
        g = createTensor(this.gpu, [...this.shapes.get(name)!], "f32", `grad ${name}`);
        this.extraGrads.set(name, g);
      }
      return g;
    });
  }

  /**
   * Uploads a batch and builds the embedding-backward plans. Call it only after the previous
   * batch's work was submitted (the uploads are queued before the next submit).
   */
  setBatch(b: EncoderBatch): void {
    this.assertNotDestroyed("setBatch");
    const { batch: B, seqLen: S } = b;
    const c = this.config;
    if (!Number.isSafeInteger(B) || B < 1 || B > this.maxBatch) {
      throw new Error(`Encoder.setBatch: batch ${B} is not in [1, ${this.maxBatch}]`);
    }
    if (!Number.isSafeInteger(S) || S < 1 || S > this.maxSeq) {
      throw new Error(`Encoder.setBatch: seqLen ${S} is not in [1, ${this.maxSeq}]`);
    }
    const n = B * S;
    const check = (name: string, a: ArrayLike<number> | undefined, limit: number) => {
      if (!a) return;
      if (a.length !== n) {
        throw new Error(`Encoder.setBatch: ${name} has ${a.length} values, expected ${B}×${S}`);
      }
      for (let i = 0; i < n; i++) {
        const v = a[i];
        if (!Number.isInteger(v) || v < 0 || v >= limit) {
          throw new Error(
            `Encoder.setBatch: ${name}[${Math.floor(i / S)}, ${i % S}] = ${v} is not an ` +
              `integer in [0, ${limit})`,
          );
        }
      }
    };
    check("inputIds", b.inputIds, c.vocabSize);
    check("typeIds", b.typeIds, c.typeVocabSize);
    check("positionIds", b.positionIds, c.maxPositions);
    check("attentionMask", b.attentionMask, 2);

    const ids = Uint32Array.from(b.inputIds);
    const types = b.typeIds ? Uint32Array.from(b.typeIds) : new Uint32Array(n);
    const positions = b.positionIds ? Uint32Array.from(b.positionIds) : positionIds(ids, B, S, c);
    const mask = b.attentionMask ? Float32Array.from(b.attentionMask) : new Float32Array(n).fill(1);
    at(this.ids, [n]).upload(ids);
    at(this.typeIds, [n]).upload(types);
    at(this.positionIds, [n]).upload(positions);
    at(this.mask, [n]).upload(mask);
    // Hugging Face's word embeddings (and RoBERTa's position embeddings) have a padding_idx
    // whose row never gets a gradient.
    this.wordPlan.update(planExcluding(ids, c.padTokenId));
    this.positionPlan.update(
      c.positionsFromPadding ? planExcluding(positions, c.padTokenId) : positions,
    );
    this.typePlan.update(types);
    this.batch = B;
    this.seq = S;
    this.state = null;
  }

  /** Records the forward pass of the current batch; returns the final hidden state [B, S, H]. */
  forward(rec: Recorder, opts: ForwardOptions = {}): Tensor {
    this.assertNotDestroyed("forward");
    const B = this.batch, S = this.seq;
    if (B === 0) throw new Error("Encoder.forward: no batch (call setBatch first)");
    const c = this.config;
    const training = opts.training ?? false;
    checkDropoutCounter("Encoder.forward", opts.seed ?? 0, opts.step ?? 0);
    const seed = mixSeed(opts.seed ?? 0, opts.step ?? 0);
    const hiddenP = training ? this.hiddenDropout : 0;
    const attentionP = training ? this.attentionDropout : 0;
    const prefixes: (AttentionPrefix | undefined)[] = [];
    const linearHooks: Map<LinearModule, LinearHook>[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const prefix = this.hooks.prefix?.(l);
      if (prefix) this.checkPrefix(l, prefix);
      prefixes.push(prefix);
      const hooks = new Map<LinearModule, LinearHook>();
      for (const module of LINEAR_MODULES) {
        const hook = this.hooks.linear?.({ layer: l, module });
        if (hook) hooks.set(module, hook);
      }
      linearHooks.push(hooks);
    }
    for (const c of this.halfCasts) castF32ToF16(rec, c);
    const { embOut, input0 } = this.embeddingsForward(rec, B, S, hiddenP, seed);
    const state: ForwardState = {
      batch: B,
      seq: S,
      training,
      seed,
      hiddenP,
      attentionP,
      input0,
      embOut,
      prefixes,
      linearHooks,
    };
    let x = input0;
    for (let l = 0; l < c.numLayers; l++) {
      x = this.layerForward(rec, l, x, state);
      rec.boundary(); // the layer so far may go to the GPU (Recorder's flushEvery)
    }
    this.state = state;
    return x;
  }

  /**
   * Records the backward pass of the last forward, given dHidden [B, S, H], the gradient of the
   * final hidden state. Writes (or with `accumulate`, adds into) the gradients of the trainable
   * parameters and calls the hooks' backward; stops below the lowest layer that needs anything.
   */
  backward(rec: Recorder, dHidden: Tensor, opts: BackwardOptions = {}): void {
    this.assertNotDestroyed("backward");
    if (this.inference) throw new Error("Encoder.backward: this encoder is inference-only");
    const state = this.state;
    if (!state || state.batch !== this.batch || state.seq !== this.seq) {
      throw new Error("Encoder.backward: no forward of the current batch to differentiate");
    }
    const c = this.config;
    const { batch: B, seq: S } = state;
    expectShape("Encoder.backward", "dHidden", dHidden, [B, S, c.hiddenSize], "f32");
    const grads = opts.trainable ? this.gradStruct(opts.trainable) : this.grads;
    const accumulate = opts.accumulate ?? false;
    const scratch = this.gradScratch();

    // What has something of its own to compute: each layer, and the embeddings.
    const layerNeeds = this.acts.map((_, l) => this.layerNeeds(l, grads.layers[l], state));
    const embNeeds = encoderEntries({ embeddings: grads.embeddings, layers: [] })
      .some(([, g]) => g !== undefined);
    let dOut = dHidden;
    for (let l = c.numLayers - 1; l >= 0; l--) {
      const needInput = embNeeds || layerNeeds.slice(0, l).some(Boolean);
      if (!needInput && !layerNeeds[l]) break;
      const dIn = needInput ? at(scratch.stream[l % 2], [B, S, c.hiddenSize]) : undefined;
      this.layerBackward(rec, l, dOut, dIn, grads.layers[l], state, accumulate);
      rec.boundary();
      if (!dIn) return;
      dOut = dIn;
    }
    if (embNeeds) this.embeddingsBackward(rec, dOut, grads.embeddings, state, accumulate);
  }

  /** All gradient tensors currently allocated, by name (the trainable ones after setTrainable). */
  gradients(): Map<string, Tensor> {
    return encoderGradients(this.grads);
  }

  /** Throws naming `call` once destroy() was called. */
  private assertNotDestroyed(call: string): void {
    if (this.destroyed) throw new Error(`Encoder.${call}: the encoder was destroyed`);
  }

  /** Frees every GPU buffer of the encoder (parameters, gradients, arena). */
  destroy(): void {
    this.destroyed = true;
    const seen = new Set<GPUBuffer>();
    const free = (t: Tensor | null | undefined) => {
      if (t && !seen.has(t.buffer)) {
        seen.add(t.buffer);
        t.destroy();
      }
    };
    this.paramArena.destroy();
    this.halfArena?.destroy();
    this.gradArena?.destroy();
    this.gradArena = null;
    for (const g of this.extraGrads.values()) free(g);
    this.extraGrads.clear();
    for (const t of [this.ids, this.positionIds, this.typeIds, this.mask, this.linOut]) free(t);
    for (const t of Object.values(this.emb)) free(t);
    for (const a of this.acts) for (const t of Object.values(a)) free(t);
    if (this.scratch) {
      const s = this.scratch;
      for (const t of [...s.stream, ...Object.values(s).filter((v) => !Array.isArray(v))]) {
        free(t as Tensor | null);
      }
    }
    this.wordPlan.destroy();
    this.positionPlan.destroy();
    this.typePlan.destroy();
  }

  // -------------------------------------------------------------------------------------------
  // Embeddings

  /**
   * Word + position + type embeddings, LayerNorm, dropout, and the projection where the embedding
   * size is not the hidden size: the first layer's input.
   */
  private embeddingsForward(
    rec: Recorder,
    B: number,
    S: number,
    p: number,
    seed: number,
  ): { embOut: Tensor; input0: Tensor } {
    const c = this.config;
    const n = B * S;
    const E = c.embeddingSize;
    const pe = this.params.embeddings;
    const a = this.emb;
    const sum = at(a.sum, [n, E]);
    embeddingForward(rec, {
      ids: at(this.ids, [n]),
      positionIds: at(this.positionIds, [n]),
      typeIds: at(this.typeIds, [n]),
      word: pe.word,
      position: pe.position,
      tokenType: pe.tokenType,
      out: sum,
    });
    const norm = at(a.norm, [n, E]);
    layerNormForward(rec, {
      x: sum,
      gamma: pe.norm.weight,
      beta: pe.norm.bias,
      out: norm,
      mean: at(a.mean, [n]),
      rstd: at(a.rstd, [n]),
      eps: c.layerNormEps,
    });
    let embOut = norm;
    if (p > 0) {
      embOut = at(a.dropped, [n, E]);
      dropoutForward(rec, { x: norm, out: embOut, p, seed, stream: stream(-1, 0) });
    }
    embOut = at(embOut, [B, S, E]);
    if (!pe.project) return { embOut, input0: embOut };
    const input0 = at(a.projected!, [B, S, c.hiddenSize]);
    linearForward(rec, {
      x: embOut,
      weight: this.productParams.embeddings.project!.weight,
      bias: pe.project.bias,
      out: input0,
      f16Math: this.f16Math,
    });
    return { embOut, input0 };
  }

  /** The embeddings' gradients (projection, LayerNorm, the three tables) from the first layer's. */
  private embeddingsBackward(
    rec: Recorder,
    dInput0: Tensor,
    g: EmbeddingParams<Tensor | undefined>,
    state: ForwardState,
    accumulate: boolean,
  ): void {
    const c = this.config;
    const { batch: B, seq: S } = state;
    const n = B * S;
    const E = c.embeddingSize;
    const pe = this.params.embeddings;
    const s = this.scratch!;
    const tables = g.word || g.position || g.tokenType;
    const belowProject = tables || g.norm.weight || g.norm.bias;
    let dEmbOut = at(dInput0, [n, E]);
    if (pe.project) {
      const dX = belowProject ? at(s.dEmbA, [B, S, E]) : undefined;
      linearBackward(rec, {
        x: state.embOut,
        weight: this.productParams.embeddings.project!.weight,
        dOut: dInput0,
        dX,
        dWeight: g.project?.weight,
        dBias: g.project?.bias,
        accumulate,
        f16Math: this.f16Math,
      });
      if (!dX) return;
      dEmbOut = at(dX, [n, E]);
    }
    let dNorm = dEmbOut;
    if (state.hiddenP > 0) {
      dNorm = at(dEmbOut.buffer === s.dEmbB.buffer ? s.dEmbA : s.dEmbB, [n, E]);
      dropoutBackward(rec, {
        dOut: dEmbOut,
        dX: dNorm,
        p: state.hiddenP,
        seed: state.seed,
        stream: stream(-1, 0),
      });
    }
    const dSum = at(dNorm.buffer === s.dEmbA.buffer ? s.dEmbB : s.dEmbA, [n, E]);
    layerNormBackward(rec, {
      x: at(this.emb.sum, [n, E]),
      gamma: pe.norm.weight,
      mean: at(this.emb.mean, [n]),
      rstd: at(this.emb.rstd, [n]),
      dOut: dNorm,
      dX: dSum,
      dGamma: g.norm.weight,
      dBeta: g.norm.bias,
      accumulate,
    });
    if (!tables) return;
    embeddingBackward(rec, {
      dOut: dSum,
      wordPlan: this.wordPlan,
      positionPlan: this.positionPlan,
      typePlan: this.typePlan,
      dWord: g.word,
      dPosition: g.position,
      dTokenType: g.tokenType,
      accumulate,
    });
  }

  // -------------------------------------------------------------------------------------------
  // One layer

  /** Records layer `l` on input x [B, S, H]; returns its output [B, S, H]. */
  private layerForward(rec: Recorder, l: number, x: Tensor, st: ForwardState): Tensor {
    const c = this.config;
    const { batch: B, seq: S } = st;
    const H = c.hiddenSize, I = c.intermediateSize;
    // Weights as the products read them (f16 copies in f16); biases and LayerNorms are f32.
    const p = this.productParams.layers[l];
    const a = this.acts[l];
    const hooks = st.linearHooks[l];
    const v = (t: Tensor, width = H) => at(t, [B, S, width]);
    const linear = (module: LinearModule, w: WeightBias, input: Tensor, out: Tensor) => {
      linearForward(rec, {
        x: input,
        weight: w.weight,
        bias: w.bias,
        out,
        site: module,
        f16Math: this.f16Math,
      });
      const ctx = this.hookContext(l, module, st, false, w.weight);
      hooks.get(module)?.forward(rec, input, out, ctx);
    };
    const q = v(a.q), k = v(a.k), val = v(a.v), context = v(a.context);
    linear("query", p.query, x, q);
    linear("key", p.key, x, k);
    linear("value", p.value, x, val);
    const prefix = st.prefixes[l];
    const P = prefix ? prefix.key.shape[1] : 0;
    const attention = {
      q,
      k,
      v: val,
      mask: at(this.mask, [B, S]),
      prefixKey: prefix?.key,
      prefixValue: prefix?.value,
      context,
      heads: c.numHeads,
      dropout: this.attentionDropoutConfig(l, st),
    };
    if (this.attention === "flash") {
      flashAttentionForward(rec, {
        ...attention,
        stats: at(a.probs, flashAttentionStatsShape(B, c.numHeads, S)),
      });
    } else {
      attentionForward(rec, {
        ...attention,
        probs: at(a.probs, [B, c.numHeads, S, P + S]),
        f16Math: this.f16Math,
      });
    }
    const attnOut = v(this.linOut);
    linear("attention.output.dense", p.attnOut, context, attnOut);
    // An inference encoder has no backward: it saves nothing for one.
    const saved = (xhat: Tensor, rstd: Tensor) =>
      this.inference ? {} : { xhat: v(xhat), rstd: at(rstd, [B, S]) };
    const norm1 = v(a.norm1);
    addLayerNormForward(rec, {
      dense: attnOut,
      residual: x,
      gamma: p.attnNorm.weight,
      beta: p.attnNorm.bias,
      out: norm1,
      ...saved(a.xhat1, a.rstd1),
      eps: c.layerNormEps,
      dropout: this.hiddenDropoutConfig(l, SITE_ATTENTION_OUTPUT, st),
    });
    const inter = v(a.inter, I), gelu = v(a.gelu, I);
    if (hooks.has("intermediate.dense")) {
      linear("intermediate.dense", p.intermediate, norm1, inter);
      geluForward(rec, { x: inter, out: gelu });
    } else {
      linearForward(rec, {
        x: norm1,
        weight: p.intermediate.weight,
        bias: p.intermediate.bias,
        out: gelu,
        activation: "gelu",
        preActivation: this.inference ? undefined : inter,
        site: "intermediate.dense",
        f16Math: this.f16Math,
      });
    }
    const ffnOut = v(this.linOut);
    linear("output.dense", p.output, gelu, ffnOut);
    const out = v(a.out);
    addLayerNormForward(rec, {
      dense: ffnOut,
      residual: norm1,
      gamma: p.outNorm.weight,
      beta: p.outNorm.bias,
      out,
      ...saved(a.xhat2, a.rstd2),
      eps: c.layerNormEps,
      dropout: this.hiddenDropoutConfig(l, SITE_FFN_OUTPUT, st),
    });
    return out;
  }

  /**
   * Records layer `l`'s backward given dOut (its output's gradient): parameter gradients in `g`,
   * hooks' backward, and if `dIn` is given the input gradient into it. Only what something
   * needs is computed.
   */
  private layerBackward(
    rec: Recorder,
    l: number,
    dOut: Tensor,
    dIn: Tensor | undefined,
    g: LayerParams<Tensor | undefined>,
    st: ForwardState,
    accumulate: boolean,
  ): void {
    const c = this.config;
    const { batch: B, seq: S } = st;
    const H = c.hiddenSize, I = c.intermediateSize;
    const p = this.productParams.layers[l];
    const a = this.acts[l];
    const s = this.scratch!;
    const hooks = st.linearHooks[l];
    const prefix = st.prefixes[l];
    const v = (t: Tensor, width = H) => at(t, [B, S, width]);
    const has = (w: WeightBias<Tensor | undefined>) =>
      w.weight !== undefined || w.bias !== undefined;
    const site = (module: LinearModule, w: WeightBias<Tensor | undefined>) =>
      has(w) || hooks.has(module);
    const linear = (
      module: LinearModule,
      weights: WeightBias,
      grads: WeightBias<Tensor | undefined>,
      x: Tensor,
      dY: Tensor,
      dX: Tensor | undefined,
      accumulateDX = false,
      geluInput?: Tensor,
    ) => {
      linearBackward(rec, {
        x,
        weight: weights.weight,
        dOut: dY,
        dX,
        dWeight: grads.weight,
        dBias: grads.bias,
        accumulate,
        accumulateDX,
        geluInput,
        site: module,
        f16Math: this.f16Math,
      });
      const ctx = this.hookContext(l, module, st, accumulate, weights.weight);
      hooks.get(module)?.backward(rec, x, dY, dX, ctx);
    };

    // What is needed, from the bottom of the layer up.
    const needInput = dIn !== undefined;
    const needQkv = needInput || site("query", g.query) || site("key", g.key) ||
      site("value", g.value) || prefix?.dKey !== undefined;
    const needAttnOut = needQkv || site("attention.output.dense", g.attnOut);
    const needNorm1 = needAttnOut || has(g.attnNorm);
    const needInter = needNorm1 || site("intermediate.dense", g.intermediate);
    const needOutput = needInter || site("output.dense", g.output);

    // Without dropout a dense output's gradient is its residual's: one tensor serves both,
    // read by the dense layer's backward before anything adds into it.
    const denseGrad = (residual: Tensor | undefined) =>
      residual && st.hiddenP === 0 ? residual : v(s.dDrop);

    // output.LayerNorm, output.dense's dropout and the FFN's residual: the residual's gradient
    // starts norm1's, and intermediate.dense adds its input gradient into it below.
    const dNorm1 = needNorm1 ? v(s.dNorm1) : undefined;
    const dFfnOut = needOutput ? denseGrad(dNorm1) : undefined;
    addLayerNormBackward(rec, {
      xhat: v(a.xhat2),
      rstd: at(a.rstd2, [B, S]),
      gamma: p.outNorm.weight,
      dOut,
      dDense: dFfnOut === dNorm1 ? undefined : dFfnOut,
      dResidual: dNorm1,
      dGamma: g.outNorm.weight,
      dBeta: g.outNorm.bias,
      accumulate,
      dropout: this.hiddenDropoutConfig(l, SITE_FFN_OUTPUT, st),
    });
    if (!dFfnOut) return;

    // output.dense, then GELU: in the epilogue of output.dense's dX, unless a hook adds to dX.
    const gelu = v(a.gelu, I), inter = v(a.inter, I);
    const dInter = needInter ? v(s.dInter, I) : undefined;
    if (dInter && hooks.has("output.dense")) {
      const dGelu = v(this.dGeluScratch(), I);
      linear("output.dense", p.output, g.output, gelu, dFfnOut, dGelu);
      geluBackward(rec, { x: inter, dOut: dGelu, dX: dInter });
    } else {
      linear("output.dense", p.output, g.output, gelu, dFfnOut, dInter, false, dInter && inter);
    }
    if (!dInter) return;

    // intermediate.dense; the FFN's residual gradient is already in dNorm1.
    linear("intermediate.dense", p.intermediate, g.intermediate, v(a.norm1), dInter, dNorm1, true);
    if (!dNorm1) return;

    // attention.output.LayerNorm, its dropout and the attention block's residual: the
    // residual's gradient starts the layer input's, and q, k, v add theirs into it below.
    const dAttnOut = needAttnOut ? denseGrad(dIn) : undefined;
    addLayerNormBackward(rec, {
      xhat: v(a.xhat1),
      rstd: at(a.rstd1, [B, S]),
      gamma: p.attnNorm.weight,
      dOut: dNorm1,
      dDense: dAttnOut === dIn ? undefined : dAttnOut,
      dResidual: dIn,
      dGamma: g.attnNorm.weight,
      dBeta: g.attnNorm.bias,
      accumulate,
      dropout: this.hiddenDropoutConfig(l, SITE_ATTENTION_OUTPUT, st),
    });
    if (!dAttnOut) return;

    // attention.output.dense
    const dContext = needQkv ? v(s.dContext) : undefined;
    linear("attention.output.dense", p.attnOut, g.attnOut, v(a.context), dAttnOut, dContext);
    if (!needQkv) return;

    // attention, then q, k, v, whose input gradients join the residual's in dIn.
    const P = prefix ? prefix.key.shape[1] : 0;
    const scores = [B, c.numHeads, S, P + S];
    const dQ = v(s.dQ), dK = v(s.dK), dV = v(s.dV);
    const attention = {
      q: v(a.q),
      k: v(a.k),
      v: v(a.v),
      dContext: dContext!,
      dQ,
      dK,
      dV,
      prefixKey: prefix?.key,
      prefixValue: prefix?.value,
      dPrefixKey: prefix?.dKey,
      dPrefixValue: prefix?.dValue,
      accumulatePrefix: accumulate,
      heads: c.numHeads,
      dropout: this.attentionDropoutConfig(l, st),
    };
    if (this.attention === "flash") {
      flashAttentionBackward(rec, {
        ...attention,
        mask: at(this.mask, [B, S]),
        context: v(a.context),
        stats: at(a.probs, flashAttentionStatsShape(B, c.numHeads, S)),
        rowWorkspace: at(s.dScores, [B, c.numHeads, S, 4]),
      });
    } else {
      attentionBackward(rec, {
        ...attention,
        probs: at(a.probs, scores),
        dScores: at(s.dScores, scores),
        f16Math: this.f16Math,
      });
    }
    const x = l === 0 ? st.input0 : v(this.acts[l - 1].out);
    linear("query", p.query, g.query, x, dQ, dIn, true);
    linear("key", p.key, g.key, x, dK, dIn, true);
    linear("value", p.value, g.value, x, dV, dIn, true);
  }

  /** Whether layer l has anything of its own to compute in the backward. */
  private layerNeeds(l: number, g: LayerParams<Tensor | undefined>, st: ForwardState): boolean {
    const own = LAYER_MODULES.some(([key]) =>
      g[key].weight !== undefined || g[key].bias !== undefined
    );
    return own || st.linearHooks[l].size > 0 || st.prefixes[l]?.dKey !== undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Helpers

  /** The hidden-state dropout after a dense layer of layer l (`site` tells which). */
  private hiddenDropoutConfig(l: number, site: number, st: ForwardState): DropoutConfig {
    return { p: st.hiddenP, seed: st.seed, stream: stream(l, site) };
  }

  /** Dropout on layer `l`'s attention probabilities (its own stream of the step's seed). */
  private attentionDropoutConfig(l: number, st: ForwardState): DropoutConfig {
    return { p: st.attentionP, seed: st.seed, stream: stream(l, SITE_ATTENTION) };
  }

  /** What a PEFT hook on `module` of `layer` is told: where it is, the step's seed and stream. */
  private hookContext(
    layer: number,
    module: LinearModule,
    st: ForwardState,
    accumulate: boolean,
    weight: Tensor,
  ): HookContext {
    return {
      layer,
      module,
      training: st.training,
      seed: st.seed,
      stream: stream(layer, SITE_HOOKS + LINEAR_MODULES.indexOf(module)),
      accumulate,
      weight,
    };
  }

  /** A prefix's key/value (and gradient) tensors must fit the heads and the encoder's maxPrefix. */
  private checkPrefix(l: number, prefix: AttentionPrefix): void {
    const c = this.config;
    const op = `Encoder prefix of layer ${l}`;
    expectShape(op, "key", prefix.key, [c.numHeads, -1, c.headDim], "f32");
    const P = prefix.key.shape[1];
    if (P > this.maxPrefix) {
      throw new Error(
        `${op}: ${P} prefix rows, more than the encoder's maxPrefix ${this.maxPrefix}`,
      );
    }
    expectShape(op, "value", prefix.value, [c.numHeads, P, c.headDim], "f32");
    if (prefix.dKey) expectShape(op, "dKey", prefix.dKey, [c.numHeads, P, c.headDim], "f32");
    if (prefix.dValue) expectShape(op, "dValue", prefix.dValue, [c.numHeads, P, c.headDim], "f32");
  }

  /** Backward scratch, allocated on the first backward. */
  private gradScratch(): GradScratch {
    if (this.scratch) return this.scratch;
    const c = this.config;
    const N = this.maxBatch * this.maxSeq;
    const H = c.hiddenSize, I = c.intermediateSize, E = c.embeddingSize;
    const t = (label: string, shape: number[], dtype: DType = "f32") =>
      createTensor(this.gpu, shape, dtype, label);
    // Gradients of the f16 activations are f16 too (EncoderOptions.precision).
    const act = this.precision;
    this.scratch = {
      stream: [t("dStream 0", [N, H]), t("dStream 1", [N, H])],
      dDrop: t("dDropout", [N, H]),
      dNorm1: t("dNorm1", [N, H]),
      dContext: t("dContext", [N, H], act),
      dQ: t("dQ", [N, H], act),
      dK: t("dK", [N, H], act),
      dV: t("dV", [N, H], act),
      dGelu: null,
      dInter: t("dIntermediate", [N, I], act),
      // Materialized attention's score gradients, or flash attention's row workspace.
      dScores: t("dScores", [
        this.maxBatch * c.numHeads * this.maxSeq *
        (this.attention === "flash" ? 4 : this.maxPrefix + this.maxSeq),
      ]),
      dEmbA: t("dEmbeddings A", [N, E]),
      dEmbB: t("dEmbeddings B", [N, E]),
    };
    return this.scratch;
  }

  /** GELU's output gradient [maxBatch·maxSeq, I], allocated when a hook first needs it. */
  private dGeluScratch(): Tensor {
    const s = this.gradScratch();
    s.dGelu ??= createTensor(
      this.gpu,
      [this.maxBatch * this.maxSeq, this.config.intermediateSize],
      this.precision,
      "dGelu",
    );
    return s.dGelu;
  }
}

/** Whether a parameter is a weight matrix of a linear layer (one that f16 mode copies). */
function isProductWeight(name: string): boolean {
  return name.endsWith(".weight") && !name.startsWith("embeddings.") &&
    !name.includes("LayerNorm.");
}

/**
 * The cast launches refreshing f16 copies from their f32 masters, given as pairs in arena order:
 * consecutive pairs whose elements lie at the same distances in both arenas (same buffers, same
 * padding: every tensor a multiple of 128 elements, as the linear weights of the usual shapes)
 * are cast by one launch over the whole range, padding included (zeros, cast to zeros).
 */
function castRanges(pairs: [Tensor, Tensor][]): { src: Tensor; dst: Tensor }[] {
  const out: { src: Tensor; dst: Tensor }[] = [];
  let first: [Tensor, Tensor] | null = null, last: [Tensor, Tensor] | null = null;
  const flush = () => {
    if (!first || !last) return;
    const [s0, d0] = first, [s1] = last;
    const count = (s1.offset - s0.offset) / 4 + s1.numel;
    const label = `${s0.label} (f32 → f16${first === last ? "" : ", and following"})`;
    out.push({
      src: new Tensor(s0.gpu, s0.buffer, [count], "f32", label, s0.offset),
      dst: new Tensor(d0.gpu, d0.buffer, [count], "f16", label, d0.offset),
    });
  };
  for (const pair of pairs) {
    const [src, dst] = pair;
    const joins = first !== null && src.buffer === first[0].buffer &&
      dst.buffer === first[1].buffer &&
      (src.offset - first[0].offset) / 4 === (dst.offset - first[1].offset) / 2;
    if (!joins) {
      flush();
      first = pair;
    }
    last = pair;
  }
  flush();
  return out;
}

/**
 * The embedding-backward plan of `ids` with the tokens of id `excluded` in no group: their rows
 * of dOut are never read, so that row's gradient stays zero (overwrite) or unchanged
 * (accumulate), as for Hugging Face's padding_idx. The excluded tokens are parked before the
 * first group (offsets[0] > 0), since the plan must list all N tokens.
 */
function planExcluding(ids: Uint32Array, excluded: number): EmbeddingPlan {
  const full = buildEmbeddingPlan(ids);
  const u = full.uniqueIds.indexOf(excluded);
  if (u < 0) return full;
  const start = full.offsets[u], end = full.offsets[u + 1];
  const parked = full.tokens.subarray(start, end);
  const tokens = new Uint32Array(ids.length);
  tokens.set(parked, 0);
  tokens.set(full.tokens.subarray(0, start), parked.length);
  tokens.set(full.tokens.subarray(end), parked.length + start);
  const uniqueIds = new Uint32Array(full.uniqueIds.length - 1);
  uniqueIds.set(full.uniqueIds.subarray(0, u), 0);
  uniqueIds.set(full.uniqueIds.subarray(u + 1), u);
  const offsets = new Uint32Array(uniqueIds.length + 1);
  for (let i = 0; i <= uniqueIds.length; i++) {
    // Groups before the excluded one shift right by its size; those after stay where they were.
    offsets[i] = i < u ? full.offsets[i] + parked.length : full.offsets[i + 1];
  }
  return { uniqueIds, offsets, tokens };
}

/** Allocates an encoder with zeroed parameters (for the loader to fill) and its arena. */
export function createEncoder(gpu: Gpu, config: ModelConfig, opts: EncoderOptions): Encoder {
  return new Encoder(gpu, config, opts);
}
