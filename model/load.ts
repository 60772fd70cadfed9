// From a model name to everything needed to run it: the local directory (downloaded from the
// hub if it is a hub id), its config, its tokenizer, its weights and the head it carries.

import { type HeadShape, openWeights, readHeadShape } from "./checkpoint.ts";
import { type ModelConfig, readConfig } from "./config.ts";
import { resolveModel, type ResolveModelOptions } from "./hub.ts";
import type { SafetensorsReader } from "./safetensors.ts";
import { loadTokenizer, type TextTokenizer } from "./tokenizer.ts";

export interface OpenedModel {
  /** The local directory (a hub snapshot folder for hub ids). */
  dir: string;
  config: ModelConfig;
  tokenizer: TextTokenizer;
  weights: SafetensorsReader;
  /** The EH-FT head stored with the weights, or null for a plain pretrained backbone. */
  head: HeadShape | null;
}

/**
 * Opens a model given as a local directory or a Hugging Face hub id. Reads only headers and
 * small files; the weights are read tensor by tensor when loaded onto the GPU.
 */
export async function openModel(
  idOrPath: string,
  options: ResolveModelOptions = {},
): Promise<OpenedModel> {
  const dir = await resolveModel(idOrPath, options);
  const config = await readConfig(`${dir}/config.json`);
  const tokenizer = await loadTokenizer(dir, config);
  const weights = await openWeights(dir);
  try {
    return { dir, config, tokenizer, weights, head: readHeadShape(weights) };
  } catch (e) {
    weights.close();
    throw e;
  }
}
