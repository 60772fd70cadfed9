// Loading weights into the encoder and head, and saving a model in the checkpoint contract:
// a directory in Hugging Face layout (config.json, tokenizer.json, model.safetensors) whose
// backbone tensors carry the `<prefix>.` names that transformers' *ForMaskedLM and
// *ForSequenceClassification checkpoints use, and whose head is head.dense.* / head.out_proj.*.
//
// Every name and shape is checked before a single byte goes to the GPU, so a wrong checkpoint
// fails fast with the tensor named.

import { errorText } from "./error_text.ts";
import type { ModelConfig } from "./config.ts";
import { encoderParameterShapes } from "./encoder.ts";
import {
  openSafetensors,
  type SafetensorsReader,
  writeSafetensorsStreamed,
} from "./safetensors.ts";
import { writeFileAtomic, writeJsonAtomic } from "./atomic_write.ts";
import type { Tensor } from "../kernels/tensor.ts";
import { plural } from "./progress_text.ts";

/**
 * A checkpoint that cannot be used: no weights file, a tensor missing or misshapen, an
 * inconsistent head. The message names the file.
 */
export class CheckpointError extends Error {
  /** The message is `<file>: <problem>`. */
  constructor(file: string, problem: string) {
    super(`${file}: ${problem}`);
    this.name = "CheckpointError";
  }
}

/** Tensors a checkpoint may hold that the encoder does not use (MLM heads, poolers, buffers). */
const SKIPPED = [
  /^(bert|roberta|electra)\.pooler\./,
  /^pooler\./,
  /^lm_head\./,
  /^cls\./,
  /^generator_/,
  /^discriminator_predictions\./,
  /(^|\.)position_ids$/,
  /(^|\.)token_type_ids$/,
];

/** Whether a checkpoint tensor is one the encoder deliberately ignores. */
export function isSkippedTensor(name: string): boolean {
  return SKIPPED.some((re) => re.test(name));
}

/**
 * The MLM decoders that share the word-embedding table when config.json ties them (transformers'
 * default). A file that stores the shared tensor once may keep only the decoder's name:
 * safetensors' `save_model` keeps the first name in sorted order ("lm_head." sorts before
 * "roberta.", "cls." before "layoutlm."), and says so in its metadata; transformers'
 * save_pretrained keeps the embedding.
 */
const TIED_DECODERS = ["lm_head.decoder.weight", "cls.predictions.decoder.weight"];

/** The names a backbone tensor may have in a file: with or without prefix, legacy LayerNorm names. */
function candidateNames(config: ModelConfig, relative: string): string[] {
  const names = [relative];
  const legacy = relative.replace(/LayerNorm\.weight$/, "LayerNorm.gamma")
    .replace(/LayerNorm\.bias$/, "LayerNorm.beta");
  if (legacy !== relative) names.push(legacy);
  return [...names.map((n) => `${config.prefix}.${n}`), ...names];
}

/**
 * The name under which the file stores the backbone tensor `relative`, or undefined: one of its
 * candidate names; else the tensor the file's metadata says a candidate was stored as (safetensors'
 * `save_model` stores a shared tensor once and records each dropped name's kept one); else, for
 * the word embeddings of a tied model, the MLM decoder that shares them.
 */
function storedName(
  reader: SafetensorsReader,
  config: ModelConfig,
  relative: string,
): string | undefined {
  const names = candidateNames(config, relative);
  const kept = names.filter((n) => Object.hasOwn(reader.metadata, n)).map((n) =>
    reader.metadata[n]
  );
  const tied = relative === "embeddings.word_embeddings.weight" &&
      config.raw.tie_word_embeddings !== false
    ? TIED_DECODERS
    : [];
  return [...names, ...kept, ...tied].find((n) => reader.tensors.has(n));
}

/**
 * The file to read weights from: model.safetensors, else its sharded index
 * model.safetensors.index.json. The single file wins when both are there, as in transformers'
 * from_pretrained, the hub download and the cache check (model/hub.ts), so a folder is read the
 * same way by each of them (a stale index beside a saved model.safetensors is ignored).
 */
export async function findWeightsFile(dir: string): Promise<string> {
  const exists = async (name: string) => {
    try {
      return (await Deno.stat(`${dir}/${name}`)).isFile;
    } catch {
      return false;
    }
  };
  if (await exists("model.safetensors")) return `${dir}/model.safetensors`;
  if (await exists("model.safetensors.index.json")) return `${dir}/model.safetensors.index.json`;
  if (await exists("pytorch_model.bin") || await exists("pytorch_model.bin.index.json")) {
    throw new CheckpointError(
      dir,
      "has only pytorch_model.bin; convert it to safetensors (for example with transformers: " +
        "AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)); " +
        "ehft loads no pickle files",
    );
  }
  throw new CheckpointError(dir, "has no model.safetensors (or model.safetensors.index.json)");
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const PREFIXES = ["bert", "roberta", "electra"];
const FLOAT_DTYPES = new Set(["F32", "F16", "BF16", "F64"]);

/** The config.json fields that decide a backbone tensor's shape (for error messages). */
function shapeFields(config: ModelConfig, relative: string): string {
  const h = `hidden_size ${config.hiddenSize}`;
  const e = config.embeddingSize === config.hiddenSize
    ? h
    : `embedding_size ${config.embeddingSize}`;
  if (relative.startsWith("embeddings.word_")) return `vocab_size ${config.vocabSize}, ${e}`;
  if (relative.startsWith("embeddings.position_")) {
    return `max_position_embeddings ${config.maxPositions}, ${e}`;
  }
  if (relative.startsWith("embeddings.token_type_")) {
    return `type_vocab_size ${config.typeVocabSize}, ${e}`;
  }
  if (relative.startsWith("embeddings.")) return e;
  if (relative.startsWith("embeddings_project.")) return `${h}, ${e}`;
  if (/\.intermediate\.dense\.|\d\.output\.dense\./.test(relative)) {
    return `${h}, intermediate_size ${config.intermediateSize}`;
  }
  return h;
}

/**
 * Checks that the checkpoint and the config describe the same backbone, on the host, before
 * anything is allocated on the GPU: the tensors carry the config's model prefix (or none), there
 * are exactly num_hidden_layers encoder layers, and every backbone tensor is present, floating
 * point, and shaped as the config says (so the word embeddings have vocab_size rows, the position
 * table max_position_embeddings, ...). Errors name the weights file and `configFile`.
 */
export function checkBackbone(
  reader: SafetensorsReader,
  config: ModelConfig,
  configFile = "config.json",
): void {
  const fail = (problem: string) => new CheckpointError(reader.path, problem);
  // transformers writes TensorFlow's and Flax's weights under their own names and layouts (a
  // kernel is the transposed weight): each would be read as missing or misshapen tensors.
  const format = reader.metadata.format;
  if (format === "flax" || format === "tf") {
    throw fail(
      `its metadata says format "${format}": ${format === "tf" ? "TensorFlow" : "Flax"}'s ` +
        "names and layouts, not PyTorch's; convert it (transformers: from_pretrained with " +
        `from_${format}=True, then save_pretrained)`,
    );
  }
  const names = [...reader.tensors.keys()];
  const own = (n: string) =>
    n.startsWith(`${config.prefix}.`) || n.startsWith("embeddings.") || n.startsWith("encoder.");
  if (!names.some(own)) {
    const other = PREFIXES.find((p) => names.some((n) => n.startsWith(`${p}.encoder.`)));
    if (other) {
      throw fail(
        `its tensors are named "${other}.*", but ${configFile} has model_type ` +
          `"${config.modelType}" (tensors "${config.prefix}.*"): the config is not this model's`,
      );
    }
  }
  // The layer count first: one wrong num_hidden_layers explains many missing tensors.
  const layerOf = new RegExp(`^(?:${config.prefix}\\.)?encoder\\.layer\\.(\\d+)\\.`);
  let layers = 0;
  let deepest = "";
  for (const name of names) {
    const l = Number(layerOf.exec(name)?.[1] ?? -1) + 1;
    if (l > layers) {
      layers = l;
      deepest = name;
    }
  }
  if (layers > config.numLayers) {
    throw fail(
      `holds encoder layer ${layers - 1} ("${deepest}"), but ${configFile} has ` +
        `num_hidden_layers ${config.numLayers}`,
    );
  }
  if (layers < config.numLayers) {
    throw fail(
      `holds ${layers} encoder layers, but ${configFile} has num_hidden_layers ${config.numLayers}`,
    );
  }
  for (const [relative, shape] of encoderParameterShapes(config)) {
    const found = storedName(reader, config, relative);
    if (!found) throw fail(`missing tensor "${config.prefix}.${relative}"`);
    const info = reader.tensors.get(found)!;
    if (!FLOAT_DTYPES.has(info.dtype)) {
      throw fail(`tensor "${found}" is ${info.dtype}; weights must be F32, F16, BF16 or F64`);
    }
    if (!sameShape(info.shape, shape)) {
      throw fail(
        `tensor "${found}" has shape [${info.shape.join(", ")}], but ${configFile} ` +
          `(${shapeFields(config, relative)}) needs [${shape.join(", ")}]`,
      );
    }
  }
}

/**
 * Fills `params` (Hugging Face names relative to the prefix -> tensor) from the checkpoint. All
 * names and shapes are checked first. Returns the checkpoint names that were used.
 */
export async function loadBackbone(
  reader: SafetensorsReader,
  config: ModelConfig,
  params: ReadonlyMap<string, Tensor>,
): Promise<Set<string>> {
  const plan: [string, Tensor][] = [];
  for (const [relative, tensor] of params) {
    const found = storedName(reader, config, relative);
    if (!found) {
      throw new CheckpointError(reader.path, `missing tensor "${config.prefix}.${relative}"`);
    }
    const info = reader.tensors.get(found)!;
    if (!sameShape(info.shape, tensor.shape)) {
      throw new CheckpointError(
        reader.path,
        `tensor "${found}" has shape [${info.shape.join(", ")}], the model config needs ` +
          `[${tensor.shape.join(", ")}]`,
      );
    }
    plan.push([found, tensor]);
  }
  for (const [name, tensor] of plan) tensor.upload(await readFinite(reader, name));
  return new Set(plan.map(([name]) => name));
}

/** Named tensor shapes and the file they are (or will be) in: a reader, or what saveModel saves. */
export interface TensorShapes {
  /** The file an error names. */
  path: string;
  /** Each tensor's shape by name (and its safetensors dtype, where the file says one). */
  tensors: ReadonlyMap<string, { readonly shape: readonly number[]; readonly dtype?: string }>;
}

/** The EH-FT head's shape as stored: F inputs, `hidden` units (2048), C outputs. */
export interface HeadShape {
  /** F: inputs of head.dense (H, or 5H for WiC). */
  features: number;
  /** Hidden units: rows of head.dense.weight. */
  hidden: number;
  /** C: rows of head.out_proj.weight. */
  classes: number;
}

export const HEAD_NAMES = [
  "head.dense.weight",
  "head.dense.bias",
  "head.out_proj.weight",
  "head.out_proj.bias",
] as const;

/**
 * The head stored in a checkpoint, inferred from its tensors' shapes (the metadata is only
 * informative: checkpoints written by other tools lack it). Null when the file has no head.
 */
export function readHeadShape(reader: TensorShapes): HeadShape | null {
  const present = HEAD_NAMES.filter((n) => reader.tensors.has(n));
  if (present.length === 0) return null;
  if (present.length < HEAD_NAMES.length) {
    const missing = HEAD_NAMES.filter((n) => !reader.tensors.has(n));
    throw new CheckpointError(reader.path, `incomplete head: missing "${missing.join('", "')}"`);
  }
  for (const n of HEAD_NAMES) {
    // An I32 bias was read as floats' bits: every logit -1149452800, exit status 0.
    const dtype = reader.tensors.get(n)!.dtype;
    if (dtype !== undefined && !FLOAT_DTYPES.has(dtype)) {
      throw new CheckpointError(
        reader.path,
        `tensor "${n}" is ${dtype}; weights must be F32, F16, BF16 or F64`,
      );
    }
  }
  const shape = (n: string) => reader.tensors.get(n)!.shape;
  const dense = shape("head.dense.weight");
  const out = shape("head.out_proj.weight");
  const fail = (what: string) => new CheckpointError(reader.path, `head tensors disagree: ${what}`);
  if (dense.length !== 2 || out.length !== 2) throw fail("weights must be matrices");
  const [hidden, features] = dense;
  const [classes, outIn] = out;
  if (outIn !== hidden) throw fail(`out_proj takes ${outIn} inputs, dense gives ${hidden}`);
  if (!sameShape(shape("head.dense.bias"), [hidden])) throw fail("dense.bias shape");
  if (!sameShape(shape("head.out_proj.bias"), [classes])) throw fail("out_proj.bias shape");
  if (hidden === 0 || features === 0 || classes === 0) {
    throw new CheckpointError(
      reader.path,
      `the head is empty (head.dense.weight [${dense.join(", ")}], head.out_proj.weight ` +
        `[${out.join(", ")}])`,
    );
  }
  return { features, hidden, classes };
}

/**
 * The checkpoint's tensors that loading leaves out without being told to (not a backbone
 * tensor, not the EH-FT head, not one of SKIPPED's MLM heads and buffers): a transformers
 * `classifier.*`, PEFT tensors of a Stage-1 snapshot, or a model of another architecture's extras.
 * Sorted by name.
 */
export function unusedTensors(reader: SafetensorsReader, config: ModelConfig): string[] {
  const used = new Set<string>(HEAD_NAMES);
  for (const [relative] of encoderParameterShapes(config)) {
    for (const name of candidateNames(config, relative)) used.add(name);
    const stored = storedName(reader, config, relative);
    if (stored !== undefined) used.add(stored);
  }
  return [...reader.tensors.keys()].filter((n) => !used.has(n) && !isSkippedTensor(n)).sort();
}

/**
 * One line on the tensors `unusedTensors` found, with the likely reason, so that a fine-tuned
 * transformers classifier silently replaced by a fresh head is never a surprise.
 */
export function unusedTensorsNote(file: string, names: readonly string[]): string {
  const shown = names.slice(0, 3).map((n) => `"${n}"`).join(", ") +
    (names.length > 3 ? ` and ${names.length - 3} more` : "");
  const why = names.some((n) => n.startsWith("classifier."))
    ? "a transformers classification head is not the EH-FT head (head.*), which starts fresh"
    : names.some((n) => /^(lora|prefix)\./.test(n))
    ? "PEFT tensors are not loaded with a model: a run starts its PEFT method fresh"
    : "they are not part of the encoder or the EH-FT head (head.*)";
  return `${file}: ${plural(names.length, "tensor")} not used ` +
    `(${shown}): ${why}`;
}

/** Fills the head's tensors ("head.dense.weight", ...) from the checkpoint, shapes checked. */
export async function loadHead(
  reader: SafetensorsReader,
  params: ReadonlyMap<string, Tensor>,
): Promise<void> {
  for (const [name, tensor] of params) {
    const info = reader.tensors.get(name);
    if (!info) throw new CheckpointError(reader.path, `missing tensor "${name}"`);
    if (!sameShape(info.shape, tensor.shape)) {
      throw new CheckpointError(
        reader.path,
        `tensor "${name}" has shape [${info.shape.join(", ")}], expected [${
          tensor.shape.join(", ")
        }]`,
      );
    }
  }
  for (const [name, tensor] of params) tensor.upload(await readFinite(reader, name));
}

/**
 * A weight's values, refused (naming the file that holds it, an index's shard, the tensor and the
 * first bad element) when one is NaN or infinite: a damaged file (a flipped exponent bit is
 * enough) would otherwise turn up only as a non-finite loss at the first step, with nothing to
 * say where it came from.
 */
export async function readFinite(reader: SafetensorsReader, name: string): Promise<Float32Array> {
  const data = await reader.readF32(name);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v - v !== 0) {
      throw new CheckpointError(
        reader.fileOf(name),
        `tensor "${name}" holds ${v} (element ${i} of ${data.length}): the file is damaged`,
      );
    }
  }
  return data;
}

/**
 * Checks, without a GPU, that every backbone tensor loadBackbone would load from `reader` is
 * finite (readFinite's error otherwise): what train.ts --overwrite checks before it removes the
 * old run, which the upload's own check would find only after.
 */
export async function checkBackboneFinite(
  reader: SafetensorsReader,
  config: ModelConfig,
): Promise<void> {
  for (const [relative] of encoderParameterShapes(config)) {
    const found = storedName(reader, config, relative);
    if (found) await readFinite(reader, found);
  }
}

/** Checks that every head tensor (head.*) in `reader` is finite (readFinite's error otherwise). */
export async function checkHeadFinite(reader: SafetensorsReader): Promise<void> {
  for (const name of reader.tensors.keys()) {
    if (name.startsWith("head.")) await readFinite(reader, name);
  }
}

/** Opens a model directory's weights (model.safetensors or its shards). */
export async function openWeights(dir: string): Promise<SafetensorsReader> {
  return openSafetensors(await findWeightsFile(dir));
}

/** What `saveModel` writes: the config, the tensors (all saved as F32) and the tokenizer. */
export interface SaveModelOptions {
  /** Written as config.json (its raw fields, with the base architecture). */
  config: ModelConfig;
  /** Backbone tensors under names relative to the prefix (as `encoderParameters` gives them). */
  backbone: ReadonlyMap<string, Tensor>;
  /** Head tensors under their full names ("head.dense.weight", ...), if the model has a head. */
  head?: ReadonlyMap<string, Tensor>;
  /** Extra tensors under their full names (e.g. PEFT parameters in a Stage-1 snapshot). */
  extra?: ReadonlyMap<string, Tensor>;
  /** String metadata for the safetensors header (task, head shape, ...). */
  metadata?: Record<string, string>;
  /** A tokenizer.json to copy beside the weights. */
  tokenizerFile?: string;
}

/** transformers' base model class of each model type: what a saved backbone is. */
const BASE_ARCHITECTURE: Record<ModelConfig["modelType"], string> = {
  bert: "BertModel",
  roberta: "RobertaModel",
  "xlm-roberta": "XLMRobertaModel",
  electra: "ElectraModel",
};

/**
 * What saveModel is given, checked before anything is written: a folder that openModel then
 * refuses (a backbone in part, or under full names, a head under other names) would be found
 * only when it is read back. The file named is the weights file the tensors were meant for.
 */
async function checkSaved(dir: string, options: SaveModelOptions): Promise<void> {
  const { config } = options;
  const file = `${dir}/model.safetensors`;
  const fail = (problem: string) => new CheckpointError(file, problem);
  for (const [name, t] of [...options.backbone, ...options.head ?? [], ...options.extra ?? []]) {
    if (t.dtype !== "f32") {
      throw fail(`tensor "${name}" is ${t.dtype}; saveModel saves f32 tensors`);
    }
  }
  const expected = encoderParameterShapes(config);
  for (const [name, t] of options.backbone) {
    const shape = expected.get(name);
    if (shape === undefined) {
      const prefixed = name.startsWith(`${config.prefix}.`);
      throw fail(
        `backbone tensor "${name}" is not one of a ${config.modelType} encoder's (its names are ` +
          `relative to "${config.prefix}.", as encoderParameters gives them${
            prefixed ? `: drop the "${config.prefix}."` : ""
          })`,
      );
    }
    if (!sameShape(t.shape, shape)) {
      throw fail(
        `backbone tensor "${name}" has shape [${t.shape.join(", ")}], but the config ` +
          `(${shapeFields(config, name)}) needs [${shape.join(", ")}]`,
      );
    }
  }
  const missing = [...expected.keys()].filter((n) => !options.backbone.has(n));
  if (missing.length > 0) {
    throw fail(
      `the backbone lacks ${missing.length} of its ${expected.size} tensors (the first: ` +
        `"${missing[0]}"): a saved model holds the whole encoder`,
    );
  }
  if (options.head !== undefined && options.head.size > 0) {
    const other = [...options.head.keys()].find((n) =>
      !(HEAD_NAMES as readonly string[]).includes(n)
    );
    if (other !== undefined) {
      throw fail(`head tensor "${other}" is not one of the head's (${HEAD_NAMES.join(", ")})`);
    }
    const shapes = new Map([...options.head].map(([n, t]) => [n, { shape: t.shape }]));
    readHeadShape({ path: file, tensors: shapes });
  }
  if (options.tokenizerFile !== undefined) {
    const info = await Deno.stat(options.tokenizerFile).catch(() => null);
    if (!info?.isFile) {
      throw fail(
        `tokenizerFile ${options.tokenizerFile} is not a file (a tokenizer.json to copy; ` +
          `convertTokenizerDir gives its contents from a model folder's vocab.txt or vocab.json)`,
      );
    }
  }
}

/**
 * Saves a model directory in the checkpoint contract. Each file is written atomically; the
 * weights are downloaded one tensor at a time.
 */
export async function saveModel(dir: string, options: SaveModelOptions): Promise<void> {
  const { config } = options;
  await checkSaved(dir, options);
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    // An existing file at dir, or on the way to it.
    throw new CheckpointError(dir, `cannot make the model's folder: ${errorText(e)}`);
  }
  const sources = new Map<string, Tensor>();
  const add = (name: string, t: Tensor) => {
    if (sources.has(name)) throw new CheckpointError(dir, `tensor "${name}" given twice`);
    sources.set(name, t);
  };
  for (const [relative, t] of options.backbone) add(`${config.prefix}.${relative}`, t);
  for (const [name, t] of options.head ?? []) add(name, t);
  for (const [name, t] of options.extra ?? []) add(name, t);
  // The head's shape goes into the metadata for readers; loading infers it from the tensors.
  const headShape = options.head && {
    head_features: String(options.head.get("head.dense.weight")?.shape[1]),
    head_hidden: String(options.head.get("head.dense.weight")?.shape[0]),
    head_classes: String(options.head.get("head.out_proj.weight")?.shape[0]),
  };
  const metadata = { format: "pt", ...headShape, ...options.metadata };
  // Each tensor downloaded as it is written: the whole model at once was a host copy of it
  // beside the run's (1.4 GB for RoBERTa-large).
  await writeSafetensorsStreamed(
    `${dir}/model.safetensors`,
    Object.fromEntries(
      [...sources].map(([name, t]) => [name, { dtype: "F32" as const, shape: [...t.shape] }]),
    ),
    async (name) => (await sources.get(name)!.download()) as Float32Array,
    metadata,
    () => metadata,
  );
  // The weights hold a backbone (and the EH-FT head, which transformers does not know), not the
  // checkpoint's MLM head: "BertForMaskedLM" would promise weights that are not there.
  const architectures = [BASE_ARCHITECTURE[config.modelType]];
  await writeJsonAtomic(`${dir}/config.json`, { ...config.raw, architectures });
  if (options.tokenizerFile) {
    await writeFileAtomic(`${dir}/tokenizer.json`, await Deno.readFile(options.tokenizerFile));
  }
}
