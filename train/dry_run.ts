// `--dry-run` of train.ts and the task scripts: reads and checks a task's data, and with the
// model's files at hand measures its inputs in tokens; trains nothing, makes no requests, and
// prints one JSON object on the last line of stdout:
//
//   {"task": "rte", "data": "data/superglue/RTE",
//    "splits": {"train": {"examples": 2490, "labels": {"entailment": 1249, ...}},
//               "val": {...}, "test": null},
//    "max_tokens": null, "ready": true}
//
// - splits: the task's train, dev and test splits under the names of their files (train / val /
//   test for SuperGLUE, train / dev / test for GLUE); a split whose file is missing is null, with
//   a note naming the file and what the folder holds when training needs it (train, dev, and
//   test with --predict-test), else a line on stderr (only --predict-test reads the test split).
//   `examples` counts the file's examples (COPA's 400, not its 800 texts); `labels` counts them
//   by label name in id order (booleans "false" / "true", COPA's choices "0" / "1"), absent for
//   regression and for unlabeled splits (`unlabeled` counts unlabeled examples in a split that
//   also has labeled ones; in the train or dev split, a note names the first one's file and
//   line, since training refuses it). With --data naming a file, the one split is named after
//   the file, and a note says that training needs a folder.
// - max_tokens: the longest encoder input in tokens, special tokens included and before
//   truncation, over all splits; null when no model is at hand (--model not given, or a hub id
//   not in the local cache). With a model, each split also reports its `max_tokens` and how many
//   inputs are `truncated` to `max_length` (the run's limit: --max-length clamped to the model's).
// - data: the folder (or file) read; null when there is none (BoolQ, QNLI neither passed with
//   --data nor in the data cache).
// - notes: why something is missing, when something is (also printed on stderr).
//
// - ready: whether the training would start on what was read: false when a note says it would
//   not (data or a split it needs missing, --data naming a file, a label the task cannot take,
//   an unlabeled example where labels are needed, a dev split too small for its metrics, a
//   --predict-test refusal); then train.ts's --dry-run exits with status 1 after the report. A
//   hub model not in the cache or a data set not downloaded yet does not count (the training
//   gets them), unless an offline variable is set; a --model path that is neither a folder nor a
//   hub id does.
//
// A malformed data file is an error (exit 1), one line naming the file and the line, and a
// malformed flag too (exit 2, naming the flag);
// missing data, a missing split or a missing model is not (the report says it, and `ready`).

import { maxSequenceLength } from "../model/config.ts";
import { checkBackboneFinite } from "../model/checkpoint.ts";
import { openModel } from "../model/load.ts";
import { errorText } from "../model/error_text.ts";
import { writeStdout } from "../model/progress_text.ts";
import { hubOffline, isHubId, resolveModel } from "../model/hub.ts";
import { envReader } from "../model/env.ts";
import type { TextInput, TextTokenizer } from "../model/tokenizer.ts";
import { parseTrainArgs, type Recipe } from "./config.ts";
import { emptyTextNote, lengthProblem, targetSpanProblem } from "./batches.ts";
import { unscorableDevSplit } from "./evaluate.ts";
import { DataError, MissingDataError } from "./data_files.ts";
import { DatasetNotCachedError } from "./data_download.ts";
import { shippedDataDir } from "./default_model.ts";
import { checkTestSplit, predictTestRefusal } from "./submission.ts";
import { badLabel, labelClasses, type Task, taskDefinitionProblem } from "./task.ts";

/** One split in a dry run's report. */
export interface DryRunSplit {
  /** Examples read. */
  examples: number;
  /** Labeled examples per label name (classification tasks). */
  labels?: Record<string, number>;
  /** Examples without a label, when some have one. */
  unlabeled?: number;
  /** The longest input in tokens (with a model at hand). */
  max_tokens?: number;
  /** Inputs longer than the maximum length (with a model at hand). */
  truncated?: number;
}

/** What a dry run prints. */
export interface DryRunReport {
  /** The task's name. */
  task: string;
  /** The data folder or file read; null when there is none. */
  data: string | null;
  /** Each split read, by name; null for one that is not there. */
  splits: Record<string, DryRunSplit | null>;
  /** The longest input of any split in tokens; null without a model. */
  max_tokens: number | null;
  /** The maximum length training would use (with a model at hand). */
  max_length?: number;
  /** Whether the training would start on this data (no note says it would be refused). */
  ready: boolean;
  /** What would stop or surprise the run, one line each. */
  notes?: string[];
}

export interface DryRunOptions {
  /** The data folder or file; null when there is none. */
  data: string | null;
  /** A local model folder or a hub id (looked up in the local cache only), or null. */
  model?: string | null;
  revision?: string | null;
  /** Requested tokens per input (clamped to the model's limit). */
  maxLength?: number | null;
  /** Positions taken by prefix-tuning rows. */
  prefixRows?: number;
  /** Environment for the hub cache lookup (default Deno.env). */
  env?: Record<string, string | undefined>;
  /** Notes already known (e.g. why there is no data). */
  notes?: string[];
  /** --predict-test was given: a missing test split is a note, as for training's splits. */
  predictTest?: boolean;
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/**
 * The model's tokenizer and its sequence limit, from local files only; why not (one line) when the
 * model is not at hand (not a folder, not in the hub cache) or its path holds no model folder; an
 * error when its files are there but wrong, found as the training's openModel finds them (the
 * weights' headers against the config, the tokenizer against the embedding table): a dry run
 * said ready for a folder without weights.
 */
async function localTokenizer(
  model: string,
  revision: string | null | undefined,
  env: Record<string, string | undefined>,
): Promise<{ tokenizer: TextTokenizer; limit: number } | string> {
  let dir: string;
  try {
    dir = await resolveModel(model, {
      revision: revision ?? undefined,
      env: { ...env, HF_HUB_OFFLINE: "1" },
      quiet: true,
    });
  } catch (e) {
    return errorText(e).split("\n")[0];
  }
  const opened = await openModel(dir, { quiet: true, noteUnused: false });
  try {
    // As the training reads them: a weight that is not finite refuses it (the whole backbone is
    // read, as --overwrite reads it before it removes anything).
    await checkBackboneFinite(opened.weights, opened.config);
  } finally {
    opened.weights.close();
  }
  return { tokenizer: opened.tokenizer, limit: maxSequenceLength(opened.config) };
}

function tokens(tokenizer: TextTokenizer, input: TextInput): number {
  if (typeof input === "string") {
    return tokenizer.encodeText(input).length + tokenizer.numSpecialTokens(false);
  }
  return tokenizer.encodeText(input[0]).length + tokenizer.encodeText(input[1]).length +
    tokenizer.numSpecialTokens(true);
}

/** Reads and summarises a task's splits (see the file comment). */
export async function dryRun(task: Task, options: DryRunOptions): Promise<DryRunReport> {
  const notes = [...(options.notes ?? [])];
  const splitNames = [...new Set([task.trainSplit ?? "train", task.devSplit, "test"])];
  const report: DryRunReport = {
    task: task.name,
    data: options.data,
    splits: {},
    max_tokens: null,
    ready: true,
  };
  // A note on what the training would refuse.
  const refuse = (note: string) => {
    notes.push(note);
    report.ready = false;
  };

  let model: { tokenizer: TextTokenizer; limit: number } | null = null;
  if (options.model) {
    let found: Awaited<ReturnType<typeof localTokenizer>> | null = null;
    try {
      found = await localTokenizer(
        options.model,
        options.revision,
        options.env ?? Deno.env.toObject(),
      );
    } catch (e) {
      // Its files are there but the training could not use them: named, the summary printed.
      refuse(`--model ${options.model}: ${errorText(e).split("\n")[0]}`);
    }
    if (typeof found === "object" && found !== null) model = found;
    else if (typeof found === "string") {
      // Not at hand: a hub id the training downloads, unless the hub's offline variables forbid
      // it. Something at that path that is no model folder (a file; a folder given a
      // --revision), or a path that is no hub id either, the training cannot use at all.
      const offline = hubOffline(envReader(options.env));
      const here = await Deno.stat(options.model).then(() => true, () => false);
      const m = options.model;
      if (here) refuse(`--model ${m}: ${found}`);
      else if (!isHubId(m) || offline) refuse(`--model ${m}: not at hand (${found})`);
      // The hub was asked offline (a dry run downloads nothing): its message says an offline
      // variable is set, which the user did not set.
      else {
        notes.push(
          `--model ${m}: not in the Hugging Face cache yet, so no token lengths (a dry run ` +
            "downloads nothing; the training downloads it)",
        );
      }
    }
  }
  const maxLength = model
    ? Math.min(options.maxLength ?? Infinity, model.limit - (options.prefixRows ?? 0))
    : 0;

  // Which splits to read, and from where.
  const needed = new Set([task.trainSplit ?? "train", task.devSplit]);
  const reads: { name: string; path: string; split: string }[] = [];
  const data = options.data;
  const info = data === null ? null : await statOrNull(data);
  if (data === null) {
    for (const name of splitNames) report.splits[name] = null;
  } else if (info === null) {
    for (const name of splitNames) report.splits[name] = null;
    refuse(`${data}: no such file or folder`);
  } else if (info.isDirectory) {
    for (const name of splitNames) reads.push({ name, path: data, split: name });
  } else {
    const base = data.slice(data.lastIndexOf("/") + 1);
    const name = base.includes(".") ? base.slice(0, base.lastIndexOf(".")) : base;
    reads.push({ name, path: data, split: name });
    refuse(
      `${data} is a file: training needs a folder holding the ${[...needed].join(" and ")} splits`,
    );
  }

  const definition = taskDefinitionProblem(task);
  if (definition !== null) refuse(definition);
  for (const r of reads) {
    let examples;
    try {
      examples = await task.readExamples(r.path, r.split);
    } catch (e) {
      // A split missing from the folder is reported, and so is a file the task's reader refuses
      // (a label it cannot take, a line that is no example: its file and line named), with the
      // summary still printed; any other problem is an error.
      if (e instanceof DataError && !(e instanceof MissingDataError)) {
        report.splits[r.name] = null;
        if (needed.has(r.name) || options.predictTest) refuse(e.message);
        else notes.push(`${e.message} (only --predict-test reads it)`);
        continue;
      }
      if (!(e instanceof MissingDataError)) throw e;
      report.splits[r.name] = null;
      if (needed.has(r.name)) refuse(`${e.message}; training needs it`);
      else if (options.predictTest) refuse(`${e.message}; --predict-test needs it`);
      else console.error(`dry run: ${e.message}; only --predict-test needs it`);
      continue;
    }
    const summary: DryRunSplit = { examples: examples.length };
    const empty = emptyTextNote(examples, `${task.name} ${r.name}`);
    if (empty !== null) notes.push(empty);
    const label = badLabel(task, examples, labelClasses(task, examples), `${task.name} ${r.name}`);
    // Training checks the labels of the splits it reads (train and dev), not the test split's.
    if (label !== null && needed.has(r.name)) refuse(label);
    else if (label !== null) notes.push(label);
    if (r.name === task.devSplit) {
      const unscorable = unscorableDevSplit(
        task.metrics,
        examples.length,
        `${task.name} ${r.name}`,
      );
      if (unscorable !== null) refuse(unscorable);
    }
    const unlabeled = examples.filter((e) => e.label === null);
    if (needed.has(r.name) && unlabeled.length > 0) {
      const first = unlabeled[0];
      const n = unlabeled.length;
      refuse(
        `${first.source ?? `${r.name} example idx ${first.idx}`}: no label (${n} of the ` +
          `${examples.length} ${r.name} examples ${n === 1 ? "has" : "have"} none); training ` +
          `needs a label on every ${r.name} example`,
      );
    }
    const labeled = examples.filter((e) => e.label !== null);
    if (labeled.length > 0 && task.labels.length > 0) {
      const counts: Record<string, number> = {};
      for (const name of task.labels) counts[name] = 0;
      // A label the task cannot take (noted above: a test split's -1, say) has no name to count.
      for (const e of labeled) {
        const name = task.labels[e.label!];
        if (name !== undefined) counts[name]++;
      }
      summary.labels = counts;
      if (labeled.length < examples.length) summary.unlabeled = examples.length - labeled.length;
    }
    // Training refuses them (train/prepare.ts), on the training split's examples.
    if (model && r.name === (task.trainSplit ?? "train")) {
      const problem = lengthProblem(model.tokenizer, examples, {
        maxLength: options.maxLength ?? null,
        positions: model.limit,
        prefixRows: options.prefixRows ?? 0,
        task: task.name,
        model: options.model!,
      });
      if (problem !== null) refuse(problem.message);
    }
    // A target word that truncation cuts (WiC): training refuses it, --predict-test fails on it.
    if (model) {
      const cut = targetSpanProblem(
        model.tokenizer,
        examples,
        maxLength,
        `${task.name} ${r.name}`,
        task.truncation,
      );
      if (cut !== null && (needed.has(r.name) || options.predictTest)) refuse(cut);
      else if (cut !== null) notes.push(`${cut} (only --predict-test reads it)`);
    }
    if (model) {
      let longest = 0;
      let truncated = 0;
      for (const e of examples) {
        for (const input of e.inputs) {
          const n = tokens(model.tokenizer, input);
          longest = Math.max(longest, n);
          if (n > maxLength) truncated++;
        }
      }
      summary.max_tokens = longest;
      summary.truncated = truncated;
      report.max_tokens = Math.max(report.max_tokens ?? 0, longest);
    }
    report.splits[r.name] = summary;
  }
  // Keep the task's split order in the report, whichever were read.
  const ordered: Record<string, DryRunSplit | null> = {};
  for (const name of [...splitNames, ...Object.keys(report.splits)]) {
    if (name in report.splits) ordered[name] = report.splits[name];
  }
  report.splits = ordered;
  const { ready, ...measured } = report;
  return {
    ...measured,
    ...(model ? { max_length: maxLength } : {}),
    ready,
    ...(notes.length > 0 ? { notes } : {}),
  };
}

// Stand-ins that let parseTrainArgs check every other flag when a dry run has no model or data.
const NO_MODEL = "\0no-model";
const NO_DATA = "\0no-data";

/**
 * train.ts's `--dry-run`: checks the flags as training would (over the task script's recipe),
 * finds the data as training would but offline (a download is never started), reports as
 * `dryRun` does, and prints the report as one JSON line on stdout (notes on stderr).
 */
export async function dryRunFromArgs(
  args: string[],
  recipe: Recipe,
  byName: (name: string) => Task,
): Promise<DryRunReport> {
  const { config, typed } = parseTrainArgs(
    args,
    { ...recipe, model: recipe.model ?? NO_MODEL },
    () => NO_DATA,
  );
  const task = byName(config.task);
  let data: string | null = config.data;
  const notes: string[] = [];
  let refused = false;
  if (data === NO_DATA) {
    data = task.dataDir === undefined ? null : shippedDataDir(task.dataDir);
    if (data === null && task.resolveData) {
      try {
        data = await task.resolveData({ offline: true, quiet: true });
      } catch (e) {
        // The download error's "offline mode" would be the dry run's own choice, not the user's.
        const fetchable = e instanceof DatasetNotCachedError && e.offlineVariables.length === 0;
        notes.push(
          fetchable
            ? `a dry run downloads nothing: ` +
              (e.damage === undefined
                ? `${e.dataset} is not in the data cache ${e.cache} yet; the training downloads ` +
                  `it (${e.url}), or pass --data <its folder>`
                : `${e.dataset} in the data cache ${e.cache} is incomplete (${e.damage}); the ` +
                  `training downloads it again (${e.url}), or pass --data <its folder>`)
            : `a dry run downloads nothing: ${errorText(e)}`,
        );
        // Offline (an offline variable set), the training could not download it either.
        if (!fetchable) refused = true;
      }
    } else if (data === null) {
      notes.push(`${task.name} has no default data folder: pass --data`);
      refused = true;
    }
  }
  const report = await dryRun(task, {
    data,
    model: config.model === NO_MODEL ? null : config.model,
    revision: config.revision,
    maxLength: config.maxLength,
    prefixRows: config.peft === "prefix" ? config.prefixLength : 0,
    notes,
    predictTest: typed.has("predict-test"),
  });
  if (typed.has("predict-test")) {
    // What training would refuse before it starts: settings whatever the data, then a test
    // split that was read (a repeated idx); a missing one is already noted.
    const refusal = predictTestRefusal(config, task);
    if (refusal) {
      report.notes = [...report.notes ?? [], refusal];
      refused = true;
    } else if (data !== null && report.splits.test) {
      try {
        // A test split that is not the leaderboard's is a note, in the report's JSON too.
        const warning = await checkTestSplit({ ...config, data }, task, () => {});
        if (warning !== null) report.notes = [...report.notes ?? [], `predict-test: ${warning}`];
      } catch (e) {
        report.notes = [...report.notes ?? [], errorText(e)];
        refused = true;
      }
    }
  }
  if (refused) report.ready = false;
  for (const note of report.notes ?? []) console.error(`dry run: ${note}`);
  await writeStdout(JSON.stringify(report) + "\n");
  return report;
}
