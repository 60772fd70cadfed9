// Seeded initial weights of a new BERT-style encoder, as BertPreTrainedModel._init_weights draws
// them: weight matrices and embedding tables N(0, initializer_range), LayerNorm weights 1, biases 0,
// and the padding_idx row of an embedding zeroed after it is drawn: the word embeddings'
// pad_token_id row (BERT, RoBERTa, ELECTRA) and, for RoBERTa, the position embeddings' too (its
// position table has padding_idx = pad_token_id; BERT's and ELECTRA's have none).
// One seed always gives the same values (mulberry32 and Box–Muller, no Math.random): the random
// baseline of tools/random_model.ts and the starting point of pretrain.ts from scratch.

import { ConfigError, type ModelConfig } from "./config.ts";
import { buildEncoderStruct, encoderEntries } from "./encoder.ts";

/** mulberry32 on [0, 1). */
export function uniformGenerator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n values uniform in [−bound, bound) from `next`. */
export function uniformValues(n: number, bound: number, next: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => (2 * next() - 1) * bound);
}

/** n values normal with mean 0 and standard deviation `std` (Box–Muller over `next`). */
export function normalValues(n: number, std: number, next: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    // 1 − u is in (0, 1], so the log is finite.
    const r = Math.sqrt(-2 * Math.log(1 - next())) * std;
    const theta = 2 * Math.PI * next();
    out[i] = r * Math.cos(theta);
    if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
  }
  return out;
}

/** Standard normal draws from a seeded generator (Box–Muller, one draw per pair of uniforms). */
export function normalGenerator(seed: number): () => number {
  const next = uniformGenerator(seed);
  return () => {
    const u = 1 - next(), v = next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/**
 * The config's `initializer_range` (default 0.02, as in transformers), checked to be a finite
 * number > 0; otherwise a one-line ConfigError naming `file` (the config the model came from)
 * and the field.
 */
export function initializerRange(config: ModelConfig, file = "config.json"): number {
  const v = config.raw.initializer_range ?? 0.02;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(
      file,
      `"initializer_range" must be a finite number > 0, got ${
        typeof v === "number" ? String(v) : JSON.stringify(v) ?? String(v)
      }`,
    );
  }
  return v;
}

/**
 * The row of an embedding table that Hugging Face declares its padding_idx (zeroed at init and
 * never updated), if any: the word embeddings' pad_token_id, and RoBERTa's position embeddings'
 * pad_token_id.
 */
export function paddingRow(config: ModelConfig, name: string): number | undefined {
  if (name === "embeddings.word_embeddings.weight") return config.padTokenId;
  if (name === "embeddings.position_embeddings.weight" && config.positionsFromPadding) {
    return config.padTokenId;
  }
  return undefined;
}

/**
 * The encoder's initial tensors under names relative to the prefix, in `encoderEntries` order,
 * drawn from `normal` in that order (a padding row is drawn like every other row, then zeroed,
 * as torch's normal_ then zero_ does). `file` names the config in errors.
 */
export function initialEncoderValues(
  config: ModelConfig,
  normal: () => number,
  file = "config.json",
): Map<string, { shape: number[]; data: Float32Array }> {
  const std = initializerRange(config, file);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  const struct = buildEncoderStruct(config, (_, shape) => shape);
  for (const [name, shape] of encoderEntries(struct)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.includes("LayerNorm.weight")) data.fill(1);
    else if (!name.endsWith(".bias")) {
      for (let i = 0; i < data.length; i++) data[i] = std * normal();
      const pad = paddingRow(config, name);
      if (pad !== undefined) {
        const width = shape[1];
        data.fill(0, pad * width, (pad + 1) * width);
      }
    }
    out.set(name, { shape, data });
  }
  return out;
}
