// Seeded initial weights of a new BERT-style encoder, as BertPreTrainedModel._init_weights draws
// them: weight matrices and embedding tables N(0, initializer_range), LayerNorm weights 1, biases 0.
// One seed always gives the same values (mulberry32 and Box–Muller, no Math.random): the random
// baseline of tools/random_model.ts and the starting point of pretrain.ts from scratch.

import type { ModelConfig } from "./config.ts";
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

/** Standard normal draws from a seeded generator (Box–Muller, one draw per pair of uniforms). */
export function normalGenerator(seed: number): () => number {
  const next = uniformGenerator(seed);
  return () => {
    const u = 1 - next(), v = next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/**
 * The encoder's initial tensors under names relative to the prefix, in `encoderEntries` order,
 * drawn from `normal` in that order.
 */
export function initialEncoderValues(
  config: ModelConfig,
  normal: () => number,
): Map<string, { shape: number[]; data: Float32Array }> {
  const std = Number(config.raw.initializer_range ?? 0.02);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  const struct = buildEncoderStruct(config, (_, shape) => shape);
  for (const [name, shape] of encoderEntries(struct)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.includes("LayerNorm.weight")) data.fill(1);
    else if (!name.endsWith(".bias")) {
      for (let i = 0; i < data.length; i++) data[i] = std * normal();
    }
    out.set(name, { shape, data });
  }
  return out;
}
