// LoRA (Hu et al., 2021) on the query, key, value and attention-output linear layers of every
// encoder layer: y = W x + b + (α / r) · B (A x), W frozen, A [r, in] and B [out, r] trained.
// Initialised as huggingface/peft does: A Kaiming-uniform with a = √5 (torch's
// kaiming_uniform_(a=√5) over fan_in = in gives the bound gain·√(3 / in) with gain = √(2 / (1 + 5)),
// i.e. exactly 1 / √in), B zero, so that training starts from the pretrained model. No dropout
// on the LoRA input (PEFT's lora_dropout 0).
//
// The hooks run kernels/lora.ts beside the frozen linear (its output and input gradient are
// added into the encoder's). A run can be saved as a Hugging Face PEFT adapter
// (`saveLoraAdapter`) and merged into the weights (`mergeLora`).

import { createArena, type TensorArena } from "../kernels/arena.ts";
import type { Gpu } from "../kernels/device.ts";
import { loraBackward, loraForward } from "../kernels/lora.ts";
import { matmul } from "../kernels/matmul.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createTensor, expectShape, type Tensor } from "../kernels/tensor.ts";
import { writeJsonAtomic } from "../model/atomic_write.ts";
import type { ModelConfig } from "../model/config.ts";
import {
  type EncoderHooks,
  encoderParameters,
  type EncoderParams,
  type LinearHook,
  type LinearModule,
  type LinearSite,
} from "../model/encoder.ts";
import { type TensorInput, writeSafetensors } from "../model/safetensors.ts";
import { type PeftMethod, type PeftOptions, seededUniform, uniformValues } from "./method.ts";

/** The linear layers LoRA adapts, as the encoder's hook sites name them. */
export const LORA_TARGETS = [
  "query",
  "key",
  "value",
  "attention.output.dense",
] as const satisfies readonly LinearModule[];
export type LoraTarget = typeof LORA_TARGETS[number];

/** Each target's module path under `encoder.layer.i.` (Hugging Face's). */
export const LORA_MODULE_PATHS: Record<LoraTarget, string> = {
  query: "attention.self.query",
  key: "attention.self.key",
  value: "attention.self.value",
  "attention.output.dense": "attention.output.dense",
};

/**
 * PEFT's `target_modules`: each matches a module whose name equals it or ends in "." + it. A
 * bare "dense" would also match intermediate.dense and output.dense (the feed-forward layers).
 */
export const LORA_PEFT_TARGET_MODULES = ["query", "key", "value", "attention.output.dense"];

/** Salt of the LoRA initialisation seed (ASCII "LoRA"). */
const LORA_SEED_SALT = 0x4c6f5241;

/** One adapted linear layer. */
export interface LoraSite {
  layer: number;
  module: LoraTarget;
  /** The module's Hugging Face name relative to the prefix, e.g. "encoder.layer.0.attention.self.query". */
  path: string;
  inFeatures: number;
  outFeatures: number;
  /** lora_A [r, in] and lora_B [out, r], and their gradients. */
  a: Tensor;
  b: Tensor;
  dA: Tensor;
  dB: Tensor;
}

/** The name of a site's A or B in `parameters()` / `gradients()` / Stage-1 snapshots. */
export function loraParameterName(site: Pick<LoraSite, "path">, which: "A" | "B"): string {
  return `lora.${site.path}.lora_${which}.weight`;
}

/**
 * The initial lora_A values of every site, in site order (layer by layer, LORA_TARGETS within a
 * layer), from one seeded generator: uniform in [−1/√in, 1/√in). B starts at zero.
 */
export function initialLoraA(config: ModelConfig, r: number, seed: number): Float32Array[] {
  const next = seededUniform(seed, LORA_SEED_SALT);
  const out: Float32Array[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    for (const _ of LORA_TARGETS) {
      const inF = config.hiddenSize;
      out.push(uniformValues(r * inF, 1 / Math.sqrt(inF), next));
    }
  }
  return out;
}

export class LoraMethod implements PeftMethod {
  readonly name = "lora" as const;
  readonly prefixLength = 0;
  readonly gpu: Gpu;
  readonly config: ModelConfig;
  readonly r: number;
  readonly alpha: number;
  /** α / r, the factor of the low-rank term. */
  readonly scale: number;
  /** Every adapted layer, layer by layer, LORA_TARGETS order within a layer. */
  readonly sites: readonly LoraSite[];

  /** Every A and B (site order), in one arena; dA and dB in another of the same layout. */
  private readonly paramArena: TensorArena;
  private readonly gradArena: TensorArena;
  private readonly byKey = new Map<string, LinearHook>();
  /** Per site: the forward's X·Aᵀ, kept for the backward; grown on demand. */
  private readonly hidden: (Tensor | null)[];
  /** Outgrown hidden buffers: recorded but unsubmitted commands may still use them. */
  private readonly retired: Tensor[] = [];
  private destroyed = false;

  constructor(gpu: Gpu, config: ModelConfig, options: PeftOptions) {
    this.gpu = gpu;
    this.config = config;
    this.r = options.loraR;
    this.alpha = options.loraAlpha;
    this.scale = this.alpha / this.r;
    const r = this.r;
    const initA = initialLoraA(config, r, options.seed);
    const shapes: { layer: number; module: LoraTarget; path: string; a: number[]; b: number[] }[] =
      [];
    for (let l = 0; l < config.numLayers; l++) {
      for (const module of LORA_TARGETS) {
        const path = `encoder.layer.${l}.${LORA_MODULE_PATHS[module]}`;
        shapes.push({
          layer: l,
          module,
          path,
          a: [r, config.hiddenSize],
          b: [config.hiddenSize, r],
        });
      }
    }
    const arena = (what: string, grad: boolean) =>
      createArena(
        gpu,
        shapes.flatMap((s) =>
          (["A", "B"] as const).map((which) => ({
            name: loraParameterName(s, which),
            shape: which === "A" ? s.a : s.b,
            label: `lora ${s.path} ${grad ? "d" : ""}${which}`,
          }))
        ),
        `lora ${what}`,
      );
    this.paramArena = arena("parameters", false);
    this.gradArena = arena("gradients", true);
    const sites: LoraSite[] = [];
    for (const { layer, module, path } of shapes) {
      const site: LoraSite = {
        layer,
        module,
        path,
        inFeatures: config.hiddenSize,
        outFeatures: config.hiddenSize,
        a: this.paramArena.get(loraParameterName({ path }, "A")),
        b: this.paramArena.get(loraParameterName({ path }, "B")),
        dA: this.gradArena.get(loraParameterName({ path }, "A")),
        dB: this.gradArena.get(loraParameterName({ path }, "B")),
      };
      // New buffers are zeroed: B and both gradients start at 0.
      site.a.upload(initA[sites.length]);
      sites.push(site);
    }
    this.sites = sites;
    this.hidden = sites.map(() => null);
    sites.forEach((site, i) => this.byKey.set(`${site.layer}/${site.module}`, this.hook(site, i)));
  }

  readonly trainsBackbone = (_name: string): boolean => false;

  readonly noDecay = (_name: string): boolean => false;

  parameters(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const s of this.sites) {
      out.set(loraParameterName(s, "A"), s.a);
      out.set(loraParameterName(s, "B"), s.b);
    }
    return out;
  }

  gradients(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const s of this.sites) {
      out.set(loraParameterName(s, "A"), s.dA);
      out.set(loraParameterName(s, "B"), s.dB);
    }
    return out;
  }

  hooks(): EncoderHooks {
    return { linear: (site: LinearSite) => this.byKey.get(`${site.layer}/${site.module}`) };
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.paramArena.destroy();
    this.gradArena.destroy();
    for (const h of this.hidden) h?.destroy();
    for (const h of this.retired) h.destroy();
    this.hidden.fill(null);
    this.retired.length = 0;
  }

  private alive(): void {
    if (this.destroyed) {
      throw new Error(
        "LoRA: the method was destroyed; remove its hooks first (encoder.setHooks(null))",
      );
    }
  }

  /** Site i's hidden buffer viewed as [rows, r], grown (geometrically) when too small. */
  private hiddenView(i: number, rows: number, grow: boolean): Tensor {
    let h = this.hidden[i];
    if (!h || h.shape[0] < rows) {
      if (!grow) {
        throw new Error(
          `LoRA ${this.sites[i].path}: backward of ${rows} rows without their forward`,
        );
      }
      if (h) this.retired.push(h);
      const capacity = Math.max(rows, 2 * (h?.shape[0] ?? 0));
      h = createTensor(this.gpu, [capacity, this.r], "f32", `lora ${this.sites[i].path} hidden`);
      this.hidden[i] = h;
    }
    return h.view(0, [rows, this.r]);
  }

  private hook(site: LoraSite, i: number): LinearHook {
    const { a, b, dA, dB } = site;
    const scale = this.scale;
    const rows = (x: Tensor) => x.numel / site.inFeatures;
    return {
      forward: (rec, x, out) => {
        this.alive();
        loraForward(rec, { x, a, b, scale, hidden: this.hiddenView(i, rows(x), true), out });
      },
      backward: (rec, x, dOut, dX, ctx) => {
        this.alive();
        // The workspace for scale·dY·B is the kernel's own, not `hidden`: a second backward of
        // the same forward (gradient accumulation) still needs hidden.
        loraBackward(rec, {
          x,
          a,
          b,
          scale,
          hidden: this.hiddenView(i, rows(x), false),
          dOut,
          dX,
          dA,
          dB,
          accumulate: ctx.accumulate,
        });
      },
    };
  }
}

function asLora(method: PeftMethod, op: string): LoraMethod {
  if (!(method instanceof LoraMethod)) {
    throw new Error(`${op}: needs a LoRA method, got "${method.name}"`);
  }
  return method;
}

/**
 * Records W += (α / r) · B·A into each adapted weight of `encoderParams` (the encoder's
 * parameter struct, or the map `encoderParameters` gives), so that the merged model computes
 * what the hooked one does without a hook. Remove the hooks afterwards
 * (`encoder.setHooks(null)`), or the low-rank term counts twice.
 */
export function mergeLora(
  rec: Recorder,
  method: PeftMethod,
  encoderParams: EncoderParams | ReadonlyMap<string, Tensor>,
): void {
  const op = "mergeLora";
  const lora = asLora(method, op);
  const params = encoderParams instanceof Map
    ? encoderParams as ReadonlyMap<string, Tensor>
    : encoderParameters(encoderParams as EncoderParams);
  // Check every weight before recording anything.
  const weights = lora.sites.map((s) => {
    const w = params.get(`${s.path}.weight`);
    if (!w) {
      // Trainer.backboneParameters() names them with the model's prefix ("bert.encoder...").
      const prefixed = [...params.keys()].find((n) => n.endsWith(`.${s.path}.weight`));
      throw new Error(
        `${op}: no tensor "${s.path}.weight" among the encoder's parameters` +
          (prefixed
            ? ` (they are named "${prefixed}": give the names encoderParameters gives, ` +
              `relative to the model's prefix)`
            : ""),
      );
    }
    expectShape(op, `${s.path}.weight`, w, [s.outFeatures, s.inFeatures], "f32");
    return w;
  });
  lora.sites.forEach((s, i) => {
    matmul(rec, {
      op,
      a: s.b,
      b: s.a,
      c: weights[i],
      m: s.outFeatures,
      n: s.inFeatures,
      k: lora.r,
      alpha: lora.scale,
      accumulate: true,
    });
  });
}

/** Options of `saveLoraAdapter`: the base model named in the config, and the tensor names. */
export interface LoraAdapterOptions {
  /** `base_model_name_or_path` of adapter_config.json (e.g. "roberta-base"); default null. */
  baseModel?: string;
  /**
   * Whether the tensor names carry the backbone prefix, `base_model.model.roberta.encoder...`
   * (default true): the module paths of a transformers *ForSequenceClassification or
   * *ForMaskedLM model. False gives `base_model.model.encoder...`, for a bare AutoModel.
   */
  prefixedNames?: boolean;
}

/** The name of a site's A or B in a Hugging Face PEFT adapter_model.safetensors. */
export function loraAdapterName(
  config: ModelConfig,
  site: Pick<LoraSite, "path">,
  which: "A" | "B",
  prefixedNames = true,
): string {
  const module = prefixedNames ? `${config.prefix}.${site.path}` : site.path;
  return `base_model.model.${module}.lora_${which}.weight`;
}

/** adapter_config.json of a Hugging Face PEFT LoRA adapter with this method's settings. */
export function loraAdapterConfig(
  method: PeftMethod,
  options: LoraAdapterOptions = {},
): Record<string, unknown> {
  const lora = asLora(method, "loraAdapterConfig");
  return {
    peft_type: "LORA",
    // A plain PeftModel: the EH-FT head has no PEFT equivalent (it is saved beside the adapter).
    task_type: null,
    base_model_name_or_path: options.baseModel ?? null,
    revision: null,
    inference_mode: true,
    r: lora.r,
    lora_alpha: lora.alpha,
    lora_dropout: 0,
    target_modules: [...LORA_PEFT_TARGET_MODULES],
    bias: "none",
    fan_in_fan_out: false,
    modules_to_save: null,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    use_rslora: false,
    use_dora: false,
  };
}

/**
 * Saves the method as a Hugging Face PEFT adapter in `dir`: adapter_model.safetensors (F32,
 * `base_model.model.<prefix>.encoder.layer.i.<module>.lora_A.weight` [r, in] and `.lora_B.weight`
 * [out, r]) and adapter_config.json, each written atomically (the config last, so that a
 * directory with a config holds a complete adapter).
 */
export async function saveLoraAdapter(
  dir: string,
  method: PeftMethod,
  config: ModelConfig,
  options: LoraAdapterOptions = {},
): Promise<void> {
  const op = "saveLoraAdapter";
  const lora = asLora(method, op);
  if (config.numLayers !== lora.config.numLayers || config.hiddenSize !== lora.config.hiddenSize) {
    throw new Error(`${op}: the method was made for another model shape than this config's`);
  }
  const prefixed = options.prefixedNames ?? true;
  const tensors: Record<string, TensorInput> = {};
  for (const s of lora.sites) {
    for (const [which, t] of [["A", s.a], ["B", s.b]] as const) {
      tensors[loraAdapterName(config, s, which, prefixed)] = {
        dtype: "F32",
        shape: [...t.shape],
        data: await t.download() as Float32Array,
      };
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensors(`${dir}/adapter_model.safetensors`, tensors, { format: "pt" });
  await writeJsonAtomic(`${dir}/adapter_config.json`, loraAdapterConfig(lora, options));
}
