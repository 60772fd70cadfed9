// BitFit (Ben Zaken et al., 2022): only bias terms train. Here: the biases of every layer's
// query, key, value, attention-output, intermediate and output linear layers and of its two
// LayerNorms, and the embedding LayerNorm's bias. Not the LayerNorm gains, not the embedding
// tables, not ELECTRA's embeddings_project. No tensors of its own, no hooks: the encoder's
// `trainable` predicate is all it takes.
//
// The official EH-FT code skips the last layer's output.LayerNorm bias; we train it, as the
// paper's description of BitFit does (README lists the difference).

import type { EncoderHooks } from "../model/encoder.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { PeftMethod } from "./method.ts";

/** The modules of an encoder layer whose bias BitFit trains (names under `encoder.layer.i.`). */
export const BITFIT_LAYER_MODULES = [
  "attention.self.query",
  "attention.self.key",
  "attention.self.value",
  "attention.output.dense",
  "attention.output.LayerNorm",
  "intermediate.dense",
  "output.dense",
  "output.LayerNorm",
] as const;

const LAYER_BIAS = new RegExp(
  `^encoder\\.layer\\.(0|[1-9][0-9]*)\\.(${
    BITFIT_LAYER_MODULES.map((m) => m.replaceAll(".", "\\.")).join("|")
  })\\.bias$`,
);

/** Whether BitFit trains the backbone tensor `name` (Hugging Face name relative to the prefix). */
export function isBitFitParameter(name: string): boolean {
  return name === "embeddings.LayerNorm.bias" || LAYER_BIAS.test(name);
}

export class BitFit implements PeftMethod {
  readonly name = "bitfit" as const;
  readonly prefixLength = 0;

  readonly trainsBackbone = (name: string): boolean => isBitFitParameter(name);

  parameters(): Map<string, Tensor> {
    return new Map();
  }

  gradients(): Map<string, Tensor> {
    return new Map();
  }

  readonly noDecay = (_name: string): boolean => false;

  hooks(): EncoderHooks | undefined {
    return undefined;
  }

  destroy(): void {}
}
