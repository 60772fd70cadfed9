// A model's config.json, read strictly: the encoder's shape comes from here, so a missing or
// nonsensical field is an error naming the file and the field, never a silent default.

import { isJsonObject } from "./atomic_write.ts";
import { jsonErrorText } from "./error_text.ts";
import { readUtf8File, Utf8Error } from "./utf8.ts";

/** The config.json `model_type`s this project runs. */
export type ModelType = "bert" | "roberta" | "xlm-roberta" | "electra";

/** A model's architecture, from its config.json (`parseConfig`, `readConfig`). */
export interface ModelConfig {
  /** config.json's `model_type`. */
  modelType: ModelType;
  /** The prefix Hugging Face puts before backbone tensor names: `bert.`, `roberta.`, `electra.`. */
  prefix: "bert" | "roberta" | "electra";
  /** Rows of the word embedding table (`vocab_size`). */
  vocabSize: number;
  /** The hidden size H (`hidden_size`). */
  hiddenSize: number;
  /** ELECTRA's embeddings may be narrower than the hidden size (then projected up). */
  embeddingSize: number;
  /** Transformer layers (`num_hidden_layers`). */
  numLayers: number;
  /** Attention heads (`num_attention_heads`); divides hiddenSize. */
  numHeads: number;
  /** hiddenSize / numHeads. */
  headDim: number;
  /** The FFN's inner size I (`intermediate_size`). */
  intermediateSize: number;
  /** `hidden_dropout_prob` (default 0.1). */
  hiddenDropout: number;
  /** `attention_probs_dropout_prob` (default 0.1). */
  attentionDropout: number;
  /** Rows of the position table (`max_position_embeddings`). */
  maxPositions: number;
  /** Rows of the token type table (`type_vocab_size`, default 2). */
  typeVocabSize: number;
  /** LayerNorm's epsilon (`layer_norm_eps`, default 1e-12). */
  layerNormEps: number;
  /** `pad_token_id` (default 0, RoBERTa 1); also RoBERTa's position padding_idx. */
  padTokenId: number;
  /** RoBERTa numbers positions from padTokenId + 1 and gives padding the padding position. */
  positionsFromPadding: boolean;
  /** The file as read, kept so that a saved model writes back every field it came with. */
  raw: Record<string, unknown>;
}

/** A config.json that is unreadable, invalid or unsupported; the message names the file. */
export class ConfigError extends Error {
  /** The message is `<file>: <problem>`. */
  constructor(file: string, problem: string) {
    super(`${file}: ${problem}`);
    this.name = "ConfigError";
  }
}

const MODEL_TYPES: Record<string, { modelType: ModelType; prefix: ModelConfig["prefix"] }> = {
  "bert": { modelType: "bert", prefix: "bert" },
  "roberta": { modelType: "roberta", prefix: "roberta" },
  "xlm-roberta": { modelType: "xlm-roberta", prefix: "roberta" },
  "electra": { modelType: "electra", prefix: "electra" },
};

/** Parses a config.json object; `file` names it in errors. */
export function parseConfig(json: unknown, file: string): ModelConfig {
  if (!isJsonObject(json)) {
    throw new ConfigError(file, "is not a JSON object");
  }
  const raw = json as Record<string, unknown>;
  const type = raw.model_type;
  if (typeof type !== "string") throw new ConfigError(file, 'has no "model_type"');
  const known = Object.hasOwn(MODEL_TYPES, type) ? MODEL_TYPES[type] : undefined;
  if (!known) {
    throw new ConfigError(
      file,
      `model_type ${JSON.stringify(type).slice(0, 80)} is not supported (supported: ${
        Object.keys(MODEL_TYPES).join(", ")
      })`,
    );
  }

  const int = (name: string, min: number, fallback?: number): number => {
    const v = raw[name] ?? fallback;
    if (v === undefined) throw new ConfigError(file, `has no "${name}"`);
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
      throw new ConfigError(
        file,
        `"${name}" must be an integer ≥ ${min}, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  };
  const prob = (name: string): number => {
    const v = raw[name] ?? 0.1;
    if (typeof v !== "number" || !(v >= 0 && v < 1)) {
      throw new ConfigError(
        file,
        `"${name}" must be a probability in [0, 1), got ${JSON.stringify(v)}`,
      );
    }
    return v;
  };

  const act = raw.hidden_act ?? "gelu";
  if (act !== "gelu") {
    throw new ConfigError(file, `hidden_act ${JSON.stringify(act)} is not supported (only "gelu")`);
  }
  // transformers masks attention causally for these: the encoder here attends both ways, so the
  // model would be another one, and its saved config would say it was a decoder.
  for (const key of ["is_decoder", "add_cross_attention"]) {
    if (raw[key] !== undefined && raw[key] !== false) {
      throw new ConfigError(
        file,
        `${key} ${JSON.stringify(raw[key])} is not supported: ehft trains encoders, whose ` +
          "attention sees both ways (set it false for an encoder)",
      );
    }
  }
  // Heads pruned away leave narrower attention weights than the config's sizes say.
  const pruned = raw.pruned_heads;
  if (isJsonObject(pruned) && Object.keys(pruned).length > 0) {
    throw new ConfigError(
      file,
      `pruned_heads ${
        JSON.stringify(pruned)
      }: a model with pruned attention heads is not supported`,
    );
  }
  const positionType = raw.position_embedding_type ?? "absolute";
  if (positionType !== "absolute") {
    throw new ConfigError(
      file,
      `position_embedding_type ${JSON.stringify(positionType)} is not supported (only "absolute")`,
    );
  }
  const eps = raw.layer_norm_eps ?? 1e-12;
  if (typeof eps !== "number" || !(eps > 0 && eps < 1)) {
    throw new ConfigError(file, `"layer_norm_eps" must be a small positive number, got ${eps}`);
  }

  const hiddenSize = int("hidden_size", 1);
  const numHeads = int("num_attention_heads", 1);
  if (hiddenSize % numHeads !== 0) {
    throw new ConfigError(
      file,
      `hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`,
    );
  }
  const roberta = known.prefix === "roberta";
  const config: ModelConfig = {
    ...known,
    vocabSize: int("vocab_size", 1),
    hiddenSize,
    // transformers' ElectraConfig defaults embedding_size to 128, whatever the hidden size.
    embeddingSize: known.modelType === "electra" ? int("embedding_size", 1, 128) : hiddenSize,
    numLayers: int("num_hidden_layers", 1),
    numHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: int("intermediate_size", 1),
    hiddenDropout: prob("hidden_dropout_prob"),
    attentionDropout: prob("attention_probs_dropout_prob"),
    maxPositions: int("max_position_embeddings", 1),
    typeVocabSize: int("type_vocab_size", 1, 2),
    layerNormEps: eps,
    padTokenId: int("pad_token_id", 0, roberta ? 1 : 0),
    positionsFromPadding: roberta,
    raw,
  };
  if (config.padTokenId >= config.vocabSize) {
    throw new ConfigError(
      file,
      `pad_token_id ${config.padTokenId} ≥ vocab_size ${config.vocabSize}`,
    );
  }
  if (roberta && config.maxPositions <= config.padTokenId + 1) {
    throw new ConfigError(
      file,
      `max_position_embeddings ${config.maxPositions} leaves no positions after padding_idx`,
    );
  }
  return config;
}

/** Reads and parses a config.json file. */
export async function readConfig(path: string): Promise<ModelConfig> {
  let text: string;
  try {
    text = await readUtf8File(path);
  } catch (e) {
    if (e instanceof Utf8Error) throw new ConfigError(path, e.message);
    throw new ConfigError(path, `cannot read: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(path, `is not valid JSON (${jsonErrorText(e, text)})`);
  }
  return parseConfig(json, path);
}

/** The longest sequence the position table allows (RoBERTa loses padding_idx + 1 positions). */
export function maxSequenceLength(
  config: Pick<ModelConfig, "positionsFromPadding" | "maxPositions" | "padTokenId">,
): number {
  return config.positionsFromPadding
    ? config.maxPositions - config.padTokenId - 1
    : config.maxPositions;
}

/**
 * Position ids of padded [rows, seqLen] token ids, as Hugging Face numbers them: BERT 0..S−1 in
 * every slot; RoBERTa (create_position_ids_from_input_ids) counts the non-pad ids from
 * padding_idx + 1 and gives every pad id padding_idx, a literal pad inside the text included.
 * One rule for the tokenizer, the trainer's batches and the encoder, so that training, evaluation
 * and predict.ts see the same positions.
 */
export function positionIds(
  ids: Uint32Array,
  rows: number,
  seqLen: number,
  config: Pick<ModelConfig, "positionsFromPadding" | "padTokenId">,
): Uint32Array {
  const out = new Uint32Array(rows * seqLen);
  const pad = config.padTokenId;
  for (let b = 0; b < rows; b++) {
    let count = 0;
    for (let s = 0; s < seqLen; s++) {
      const i = b * seqLen + s;
      if (!config.positionsFromPadding) out[i] = s;
      else out[i] = ids[i] === pad ? pad : pad + ++count;
    }
  }
  return out;
}
