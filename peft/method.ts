// What every parameter-efficient method offers the training engine, and the factory.
//
// As in huggingface/peft, a method never edits the encoder: it says which backbone tensors train
// (`trainsBackbone`, for `encoder.setTrainable`), owns its own tensors (`parameters` /
// `gradients`, for the optimizer and checkpoints), plugs into the encoder through its hooks
// (`hooks`, for `encoder.setHooks`), and can remove itself (`encoder.setHooks(null)`, then
// `destroy`): EH-FT's hand-off from Stage 1 to Stage 2.
//
// The engine's use of a method:
//   const peft = createPeft(name, gpu, config, options);
//   const encoder = createEncoder(gpu, config, { ..., maxPrefix: peft.prefixLength,
//     trainable: peft.trainsBackbone, hooks: peft.hooks() });
//   ... Stage 1 trains encoder.gradients() ∪ peft.parameters() (+ the head) ...
//   encoder.setHooks(null); peft.destroy();  // (ehft) then restore the pretrained backbone

import { normalValues, uniformGenerator, uniformValues } from "../model/init.ts";
import type { Gpu } from "../kernels/device.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "../model/config.ts";
import type { EncoderHooks } from "../model/encoder.ts";
import { mixSeed } from "../model/encoder.ts";
import { BitFit } from "./bitfit.ts";
import { LoraMethod } from "./lora.ts";
import { PrefixTuning } from "./prefix.ts";

/** A parameter-efficient method: BitFit (biases only), LoRA, or prefix tuning. */
export type PeftName = "bitfit" | "lora" | "prefix";

/** Every method's name, in the order error messages list them. */
export const PEFT_NAMES: readonly PeftName[] = ["bitfit", "lora", "prefix"];

/** The methods' settings (`createPeft`); each method reads the ones it uses. */
export interface PeftOptions {
  /** LoRA rank r (`--lora-r`). */
  loraR: number;
  /** LoRA α (`--lora-alpha`); the low-rank term is scaled by α / r. */
  loraAlpha: number;
  /** Prefix-tuning's number of key/value rows per layer, P (`--prefix-length`). */
  prefixLength: number;
  /** Initialisation seed of the method's own tensors. */
  seed: number;
}

/**
 * The official code's defaults: r = 8 (the paper's text says 32, but its Table 1 LoRA numbers
 * are the r = 8 row of its Table 4), α = 16, P = 16 (the official code's prefix is 17 long).
 */
export const PEFT_DEFAULTS: PeftOptions = { loraR: 8, loraAlpha: 16, prefixLength: 16, seed: 0 };

/**
 * A parameter-efficient method as the training engine uses it (see this module's header): what
 * backbone tensors train, its own tensors and gradients, its hooks. destroy() frees its tensors.
 */
export interface PeftMethod {
  /** Which method this is: one of PEFT_NAMES, or a method of one's own (`RunOptions.peft`). */
  readonly name: string;
  /**
   * Backbone tensors (Hugging Face names relative to the prefix, as `encoderParameters` gives
   * them) this method trains. BitFit: its biases; LoRA and Prefix: none. The head always trains
   * (the engine handles it). Pass it to `encoder.setTrainable` / `EncoderOptions.trainable`
   * as it is: it needs no `this`.
   */
  trainsBackbone(name: string): boolean;
  /**
   * The method's own parameters under stable names ("lora.encoder.layer.0.attention.self.query
   * .lora_A.weight", "prefix.encoder.layer.0.key", ...); empty for BitFit. The optimizer and the
   * checkpoints use this map. The tensors belong to the method (freed by `destroy`).
   */
  parameters(): Map<string, Tensor>;
  /**
   * The gradients of `parameters()`, under the SAME names. The encoder's backward writes them
   * (or, with `accumulate`, adds into them), like the backbone's gradients.
   */
  gradients(): Map<string, Tensor>;
  /**
   * Whether a name of `parameters()` gets no weight decay. Always false for the methods here:
   * LoRA's A and B are Linear weights and prefix rows are plain parameters, and torch's AdamW
   * under the engine's "no decay on biases and LayerNorm weights" rule decays both.
   */
  noDecay(name: string): boolean;
  /** Hooks to install with `encoder.setHooks` (undefined for BitFit, which needs none). */
  hooks(): EncoderHooks | undefined;
  /**
   * The key rows the method adds to attention: Prefix-tuning's P, 0 otherwise. The engine builds
   * the encoder with maxPrefix ≥ it; for the built-in prefix-tuning it also shrinks max_length by
   * P, as the official code does (a method of one's own, RunOptions.peft, keeps the whole
   * budget: its rows take no positions).
   */
  readonly prefixLength: number;
  /**
   * Frees the method's tensors. Remove its hooks from the encoder first
   * (`encoder.setHooks(null)`); a hook used after `destroy` throws.
   */
  destroy(): void;
}

/** Throws unless the options the method `name` uses are valid. */
export function checkPeftOptions(name: PeftName, o: PeftOptions): void {
  const fail = (what: string, v: unknown) => {
    // NaN and ±Infinity as themselves (JSON writes them null).
    const shown = typeof v === "number" && !Number.isFinite(v) ? String(v) : JSON.stringify(v);
    throw new Error(`${name}: ${what}, got ${shown}`);
  };
  if (!Number.isSafeInteger(o.seed)) fail("seed must be an integer", o.seed);
  // The flag for the command line, the option for the library (PeftOptions).
  if (name === "lora") {
    if (!Number.isSafeInteger(o.loraR) || o.loraR < 1) {
      fail("--lora-r (loraR) must be an integer ≥ 1", o.loraR);
    }
    if (!Number.isFinite(o.loraAlpha) || o.loraAlpha <= 0) {
      fail("--lora-alpha (loraAlpha) must be a positive number", o.loraAlpha);
    }
  }
  if (name === "prefix" && (!Number.isSafeInteger(o.prefixLength) || o.prefixLength < 1)) {
    fail("--prefix-length (prefixLength) must be an integer ≥ 1", o.prefixLength);
  }
}

/** Creates the method `name` for a model of `config` (its tensors initialised from the seed). */
export function createPeft(
  name: PeftName,
  gpu: Gpu,
  config: ModelConfig,
  options: PeftOptions,
): PeftMethod {
  checkPeftOptions(name, options);
  switch (name as string) {
    case "bitfit":
      return new BitFit();
    case "lora":
      return new LoraMethod(gpu, config, options);
    case "prefix":
      return new PrefixTuning(gpu, config, options);
    default:
      throw new Error(
        `unknown PEFT method ${JSON.stringify(name)} (allowed: ${PEFT_NAMES.join(", ")})`,
      );
  }
}

// ---------------------------------------------------------------------------------------------
// Seeded initialisation, shared by the methods (only called at run time: this module and the
// methods import each other).

/**
 * A seeded uniform generator on [0, 1) (mulberry32, as the head's), its seed mixed with a
 * per-method `salt` so that a method's values are unrelated to the head's of the same seed.
 */
export function seededUniform(seed: number, salt: number): () => number {
  return uniformGenerator(mixSeed(seed >>> 0, salt));
}

// The value generators live with the model's other seeded draws (the head's use them too).
export { normalValues, uniformValues };
