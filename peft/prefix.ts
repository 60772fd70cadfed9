// Prefix-tuning (Li & Liang, 2021), as EH-FT uses it: per layer, P trainable key rows and P
// value rows for every head ([heads, P, head_dim] each, 2·heads·P·head_dim numbers per layer)
// that every query attends to besides the sequence (the attention kernel never masks prefix
// rows). No reparameterisation network: the rows are the parameters. P = `--prefix-length`,
// default 16 (the official code's is 17).
//
// The encoder must be built with `maxPrefix` ≥ P (its attention probabilities are sized for
// maxPrefix + maxSeq keys; a longer prefix is refused at the forward). The prefix takes P of the
// sequence budget: the engine shrinks max_length by `prefixLength`, as the official code does.

import { createArena, type TensorArena } from "../kernels/arena.ts";
import type { Gpu } from "../kernels/device.ts";
import type { Tensor } from "../kernels/tensor.ts";
import type { ModelConfig } from "../model/config.ts";
import type { AttentionPrefix, EncoderHooks } from "../model/encoder.ts";
import { normalValues, type PeftMethod, type PeftOptions, seededUniform } from "./method.ts";

/** The initial values' standard deviation (std 0.01, i.e. variance 1e-4): N(0, 0.01²). */
export const PREFIX_INIT_STD = 0.01;

/** Salt of the prefix initialisation seed (ASCII "Pref"). */
const PREFIX_SEED_SALT = 0x50726566;

/** The name of layer l's key or value rows in `parameters()` / `gradients()` / snapshots. */
export function prefixParameterName(layer: number, which: "key" | "value"): string {
  return `prefix.encoder.layer.${layer}.${which}`;
}

/**
 * The initial rows of every layer, in the order layer 0 key, layer 0 value, layer 1 key, ...,
 * each [heads·P·head_dim], drawn from one seeded generator, normal with std PREFIX_INIT_STD.
 */
export function initialPrefixValues(
  config: ModelConfig,
  prefixLength: number,
  seed: number,
): Float32Array[] {
  const next = seededUniform(seed, PREFIX_SEED_SALT);
  const n = config.numHeads * prefixLength * config.headDim;
  const out: Float32Array[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    out.push(normalValues(n, PREFIX_INIT_STD, next), normalValues(n, PREFIX_INIT_STD, next));
  }
  return out;
}

export class PrefixTuning implements PeftMethod {
  readonly name = "prefix" as const;
  /** P, the number of prefix rows per layer and head. */
  readonly prefixLength: number;
  /** Per layer: key and value rows [heads, P, head_dim] and their gradients (batch-summed). */
  readonly layers: readonly Required<AttentionPrefix>[];
  /** Every key and value (layer order), in one arena; the gradients in another alike. */
  private readonly paramArena: TensorArena;
  private readonly gradArena: TensorArena;
  private destroyed = false;

  constructor(gpu: Gpu, config: ModelConfig, options: PeftOptions) {
    const P = options.prefixLength;
    this.prefixLength = P;
    const shape = [config.numHeads, P, config.headDim];
    const init = initialPrefixValues(config, P, options.seed);
    const arena = (what: string, grad: boolean) =>
      createArena(
        gpu,
        Array.from({ length: config.numLayers }, (_, l) =>
          (["key", "value"] as const).map((which) => ({
            name: prefixParameterName(l, which),
            shape,
            label: `prefix encoder.layer.${l} ${
              grad ? `d${which[0].toUpperCase()}${which.slice(1)}` : which
            }`,
          }))).flat(),
        `prefix ${what}`,
      );
    this.paramArena = arena("parameters", false);
    this.gradArena = arena("gradients", true);
    const layers: Required<AttentionPrefix>[] = [];
    for (let l = 0; l < config.numLayers; l++) {
      const p = this.paramArena, g = this.gradArena;
      const layer = {
        key: p.get(prefixParameterName(l, "key")),
        value: p.get(prefixParameterName(l, "value")),
        dKey: g.get(prefixParameterName(l, "key")),
        dValue: g.get(prefixParameterName(l, "value")),
      };
      layer.key.upload(init[2 * l]);
      layer.value.upload(init[2 * l + 1]);
      layers.push(layer);
    }
    this.layers = layers;
  }

  readonly trainsBackbone = (_name: string): boolean => false;

  readonly noDecay = (_name: string): boolean => false;

  parameters(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.layers.forEach((p, l) => {
      out.set(prefixParameterName(l, "key"), p.key);
      out.set(prefixParameterName(l, "value"), p.value);
    });
    return out;
  }

  gradients(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.layers.forEach((p, l) => {
      out.set(prefixParameterName(l, "key"), p.dKey);
      out.set(prefixParameterName(l, "value"), p.dValue);
    });
    return out;
  }

  hooks(): EncoderHooks {
    return {
      prefix: (layer: number) => {
        if (this.destroyed) {
          throw new Error(
            "prefix: the method was destroyed; remove its hooks first (encoder.setHooks(null))",
          );
        }
        return this.layers[layer];
      },
    };
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.paramArena.destroy();
    this.gradArena.destroy();
  }
}
