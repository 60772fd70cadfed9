// From a model name to everything needed to run it: the local directory (downloaded from the
// hub if it is a hub id), its config, its tokenizer, its weights and the head it carries.

import {
  checkBackbone,
  type HeadShape,
  openWeights,
  readHeadShape,
  unusedTensors,
  unusedTensorsNote,
} from "./checkpoint.ts";
import { createHash } from "node:crypto";
import { type ModelConfig, readConfig } from "./config.ts";
import { resolveModel, type ResolveModelOptions } from "./hub.ts";
import type { SafetensorsReader } from "./safetensors.ts";
import { loadTokenizer, type TextTokenizer, TokenizerError } from "./tokenizer.ts";

/** A model opened by `openModel`, checked but not yet on the GPU; close `weights` when done. */
export interface OpenedModel {
  /** The local directory (a hub snapshot folder for hub ids). */
  dir: string;
  /** Its config.json. */
  config: ModelConfig;
  /** Its tokenizer, bound to the config's table sizes. */
  tokenizer: TextTokenizer;
  /** The open weights file (headers read; tensors read on demand). */
  weights: SafetensorsReader;
  /** The EH-FT head stored with the weights, or null for a plain pretrained backbone. */
  head: HeadShape | null;
  /** Tensors of the weights that are not loaded (see `unusedTensors`); noted on stderr. */
  unused: string[];
}

/**
 * Errors when the tokenizer can produce an id the model's embedding table has no row for (its
 * vocabulary, added tokens included, is larger than the config's vocab_size). Smaller is fine:
 * tables are often padded to a multiple of 8 or 64.
 */
export function checkTokenizerFits(
  tokenizer: TextTokenizer,
  config: ModelConfig,
  configFile = "config.json",
): void {
  const largest = tokenizer.largestId();
  if (largest && !(largest.id < config.vocabSize)) {
    throw new TokenizerError(
      tokenizer.source,
      `token ${JSON.stringify(largest.token)} has id ${largest.id}, but ${configFile} has ` +
        `vocab_size ${config.vocabSize}: the tokenizer does not belong to this model (or the ` +
        `model's embeddings were not resized for added tokens)`,
    );
  }
}

/** The weights files whose unused tensors were named (a --seeds run opens its model per seed). */
const notedUnused = new Set<string>();

/** unusedTensorsNote on stderr, once per weights file and process. */
export function noteUnusedOnce(file: string, unused: readonly string[]): void {
  if (notedUnused.has(file)) return;
  notedUnused.add(file);
  console.error(unusedTensorsNote(file, unused));
}

/** Options of `openModel`: those of `resolveModel`, and whether to note unused tensors. */
export interface OpenModelOptions extends ResolveModelOptions {
  /** false: the caller names the unused tensors itself (noteUnusedOnce), or not at all. */
  noteUnused?: boolean;
}

/**
 * The models inside a run folder of train.ts or pretrain.ts (its model/, or each seed-N/model/ of
 * a --seeds run), when `dir` is one rather than a model (run.json or pretrain.json, and no
 * config.json of its own); else none.
 */
export async function runFolderModels(dir: string): Promise<string[]> {
  if (await isFile(`${dir}/config.json`)) return [];
  if (!(await isFile(`${dir}/run.json`)) && !(await isFile(`${dir}/pretrain.json`))) return [];
  const found: string[] = [];
  if (await isFile(`${dir}/model/config.json`)) found.push(`${dir}/model`);
  for (const seed of await seedFolderNames(dir)) {
    if (await isFile(`${dir}/${seed}/model/config.json`)) found.push(`${dir}/${seed}/model`);
  }
  return found;
}

/** Whether `path` is a file (false for anything else, or nothing). */
async function isFile(path: string): Promise<boolean> {
  return await Deno.stat(path).then((i) => i.isFile, () => false);
}

/** The `seed-<n>` folders in `dir` (a --seeds run's), lowest seed first. */
export async function seedFolderNames(dir: string): Promise<string[]> {
  const seeds: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory && /^seed-\d+$/.test(e.name)) seeds.push(e.name);
  }
  return seeds.sort((a, b) => Number(a.slice(5)) - Number(b.slice(5)));
}

/**
 * Opens a model given as a local directory or a Hugging Face hub id. Reads only headers and
 * small files; the weights are read tensor by tensor when loaded onto the GPU. Before returning
 * it checks, on the host, that the config, the tensors and the tokenizer agree (`checkBackbone`,
 * `readHeadShape`, the tokenizer's own checks, `checkTokenizerFits`), so a mismatched model fails
 * here, naming the file, and not in the middle of GPU work. Tensors it will not load (a
 * transformers `classifier.*`, say) are named in one line on stderr, once per file and process,
 * except with `options.quiet` or with `options.noteUnused: false`.
 */
export async function openModel(
  idOrPath: string,
  options: OpenModelOptions = {},
): Promise<OpenedModel> {
  // A run's model/ before the run wrote it: said so, rather than "not a directory nor a hub id".
  const parent = idOrPath.replace(/\/+$/, "").replace(/\/?[^/]*$/, "") ||
    (idOrPath.startsWith("/") ? "/" : ".");
  if (/(^|\/)model\/*$/.test(idOrPath) && await isFile(`${parent}/run.json`)) {
    if ((await Deno.stat(idOrPath).catch(() => null)) === null) {
      throw new Error(
        `${idOrPath} does not exist yet: the run in ${parent} has not finished (it is still ` +
          `training, or was stopped: --resume goes on with it)`,
      );
    }
    // Written at the run's end, before its metrics.json: until then it may be partly written.
    if (!(await isFile(`${parent}/metrics.json`))) {
      throw new Error(
        `${idOrPath} is not whole yet: the run in ${parent} has not finished (it is writing its ` +
          `model now, or was stopped while it did: --resume goes on with it)`,
      );
    }
  }
  const dir = await resolveModel(idOrPath, options);
  // A run folder given for the model it holds: named, rather than "config.json: cannot read".
  const inRun = await runFolderModels(dir);
  if (inRun.length > 0) {
    throw new Error(
      `${idOrPath} is a run folder, not a model: ` +
        (inRun.length === 1
          ? `its model is ${inRun[0]}`
          : `its seeds' models are ${inRun.join(", ")}`),
    );
  }
  const configFile = `${dir}/config.json`;
  if (!(await isFile(configFile))) {
    const run = await isFile(`${dir}/run.json`) || await isFile(`${dir}/pretrain.json`);
    throw new Error(
      run
        ? `${idOrPath} is a run folder whose run has not finished: no model in it yet (it is ` +
          `still training, or was stopped: --resume goes on with it)`
        : `${idOrPath} is not a model folder: it has no config.json`,
    );
  }
  const config = await readConfig(configFile);
  const weights = await openWeights(dir);
  try {
    // The config against the tensors first: then a tokenizer that disagrees with the config
    // disagrees with the embedding table too.
    checkBackbone(weights, config, configFile);
    const head = readHeadShape(weights);
    const tokenizer = await loadTokenizer(dir, config);
    checkTokenizerFits(tokenizer, config, configFile);
    const unused = unusedTensors(weights, config);
    if (unused.length > 0 && !options.quiet && options.noteUnused !== false) {
      noteUnusedOnce(weights.path, unused);
    }
    return { dir, config, tokenizer, weights, head, unused };
  } catch (e) {
    weights.close();
    throw e;
  }
}

/** The files of a model folder besides its weights that decide what it computes, where present. */
const MODEL_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "vocab.txt",
  "vocab.json",
  "merges.txt",
];

/**
 * A SHA-256 of files: each one's name, size and bytes in turn, "-" for one that is not there.
 * Streams them (RoBERTa-large's 1.4 GB of weights in a few seconds).
 */
export async function filesSha256(paths: readonly string[]): Promise<string> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(1 << 22);
  for (const path of paths) {
    hash.update(`${path.slice(path.lastIndexOf("/") + 1)}\0`);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      hash.update("-\0");
      continue;
    }
    try {
      hash.update(`${(await file.stat()).size}\0`);
      for (let n = await file.read(buffer); n !== null; n = await file.read(buffer)) {
        hash.update(buffer.subarray(0, n));
      }
    } finally {
      file.close();
    }
  }
  return hash.digest("hex");
}

/**
 * The fingerprint of what a model computes from: its config, tokenizer files and every weights
 * file (`filesSha256`), so that --resume can tell a model changed in place from the one a run
 * started on.
 */
export function modelSha256(model: OpenedModel): Promise<string> {
  return filesSha256([...MODEL_FILES.map((f) => `${model.dir}/${f}`), ...model.weights.files]);
}
