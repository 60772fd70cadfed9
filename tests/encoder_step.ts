// Shared set-up of the tests that compare two encoders through one training step (fused against
// unfused kernels, flash against materialized attention, f16 against f32): the small config,
// seeded weights, the batch (a full row and a padded one), the step itself, and the error
// measure.

import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { Recorder } from "../kernels/recorder.ts";
import { tensorFromArray } from "../kernels/tensor.ts";
import { type ModelConfig, parseConfig } from "../model/config.ts";
import { type Encoder, encoderParameters, encoderParameterShapes } from "../model/encoder.ts";

/** The batch of `encoderStep`: 2 rows of 7 tokens, the second padded. */
export const STEP_BATCH = 2, STEP_SEQ = 7;

/** BERT or RoBERTa with hidden 15 (3 heads of 5), 2 layers, intermediate 37, vocabulary 43. */
export function smallConfig(modelType: "bert" | "roberta", what: string): ModelConfig {
  return parseConfig({
    model_type: modelType,
    vocab_size: 43,
    hidden_size: 15,
    num_hidden_layers: 2,
    num_attention_heads: 3,
    intermediate_size: 37,
    max_position_embeddings: 12,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
    pad_token_id: modelType === "roberta" ? 1 : 0,
  }, `${modelType} ${what} test config`);
}

/** Seeded weights (±0.5, LayerNorm gains near 1), by name; the same for every encoder of `c`. */
export function seededWeights(c: ModelConfig): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  let seed = 300;
  for (const [name, shape] of encoderParameterShapes(c)) {
    const numel = shape.reduce((a, b) => a * b, 1);
    const v = Float32Array.from(randomValues(numel, seed++), (x) => 0.5 * x);
    if (/LayerNorm\.weight$/.test(name)) v.forEach((x, i) => v[i] = 1 + x);
    out.set(name, v);
  }
  return out;
}

/** What one step gives: the final hidden states, the encoder's gradients, the op labels. */
export interface StepResult {
  hidden: Float32Array;
  grads: Map<string, Float32Array>;
  labels: string[];
}

/** The forward's dropout settings in `encoderStep`: on, seed 2024, step 5. */
export const STEP_FORWARD = { training: true, seed: 2024, step: 5 } as const;

/** Uploads `weights` and sets `encoderStep`'s batch (token types too when `typeIds`). */
export function setStepBatch(
  enc: Encoder,
  weights: Map<string, Float32Array>,
  opts: { typeIds?: boolean } = {},
): void {
  const c = enc.config;
  for (const [n, t] of encoderParameters(enc.params)) t.upload(weights.get(n)!);
  enc.setBatch({
    inputIds: [5, 17, 30, 8, 2, 41, 9, 3, 22, 7, 11, 19, c.padTokenId, c.padTokenId],
    typeIds: opts.typeIds ? [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0] : undefined,
    attentionMask: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
    batch: STEP_BATCH,
    seqLen: STEP_SEQ,
  });
}

/** `encoderStep`'s seeded dHidden [STEP_BATCH, STEP_SEQ, hidden]. */
export function stepDHidden(c: ModelConfig): Float32Array {
  return Float32Array.from(randomValues(STEP_BATCH * STEP_SEQ * c.hiddenSize, 77));
}

/**
 * Uploads `weights`, sets the batch (`setStepBatch`), records forward (STEP_FORWARD: dropout on)
 * and backward from `stepDHidden` in one submit, and downloads the hidden states and every
 * encoder gradient.
 */
export async function encoderStep(
  gpu: Gpu,
  enc: Encoder,
  weights: Map<string, Float32Array>,
  opts: { typeIds?: boolean } = {},
): Promise<StepResult> {
  const c = enc.config;
  setStepBatch(enc, weights, opts);
  const H = c.hiddenSize;
  const dHidden = tensorFromArray(gpu, stepDHidden(c), [STEP_BATCH, STEP_SEQ, H], "dHidden");
  try {
    const rec = new Recorder(gpu);
    const hidden = enc.forward(rec, STEP_FORWARD);
    enc.backward(rec, dHidden);
    const labels = rec.labels;
    await rec.submit();
    const grads = new Map<string, Float32Array>();
    for (const [n, t] of enc.gradients()) grads.set(n, await t.download() as Float32Array);
    return { hidden: await hidden.download() as Float32Array, grads, labels };
  } finally {
    dHidden.destroy();
  }
}

/** max |a − e| over `scale`, by default max |e|. */
export function relError(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  scale?: number,
): number {
  let err = 0, max = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    max = Math.max(max, Math.abs(expected[i]));
  }
  const s = scale ?? max;
  return s === 0 ? err : err / s;
}

/** The largest |g| over every gradient of a step. */
export function largestGradient(grads: Map<string, Float32Array>): number {
  let scale = 0;
  for (const g of grads.values()) for (const x of g) scale = Math.max(scale, Math.abs(x));
  return scale;
}

/**
 * Records the dropout step of each training forward `enc` runs from now on (the masks' counter),
 * in order: what a caller asks the encoder for, seen from inside.
 */
export function dropoutSteps(enc: Encoder): (number | undefined)[] {
  const steps: (number | undefined)[] = [];
  const forward = enc.forward.bind(enc);
  enc.forward = (rec, opts) => {
    if (opts?.training) steps.push(opts.step);
    return forward(rec, opts);
  };
  return steps;
}
