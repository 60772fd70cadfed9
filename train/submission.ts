// Test-set predictions in the leaderboards' submission formats (train.ts --predict-test).
//
// SuperGLUE (super.gluebenchmark.com) takes one JSONL file per task, one line per test example:
//   RTE.jsonl    {"idx":0,"label":"not_entailment"}      entailment | not_entailment
//   CB.jsonl     {"idx":0,"label":"neutral"}             entailment | contradiction | neutral
//   BoolQ.jsonl  {"idx":0,"label":"true"}                "true" | "false"
//   WiC.jsonl    {"idx":0,"label":"false"}               "true" | "false"
//   COPA.jsonl   {"idx":0,"label":1}                     the right choice's index, 0 or 1
// BoolQ's and WiC's labels are the lower-case strings "true"/"false", not JSON booleans: that is
// what jiant, the SuperGLUE authors' toolkit, writes for the leaderboard (strict format), and
// what other SuperGLUE-format leaderboards' baselines write too.
//
// GLUE (gluebenchmark.com) takes one TSV file per task with a header line "index\tprediction":
//   CoLA.tsv     0 | 1 (1 = acceptable)
//   MRPC.tsv     0 | 1 (1 = equivalent)
//   QNLI.tsv     entailment | not_entailment
//   STS-B.tsv    the similarity score, clipped to [0, 5], with three decimals (as jiant writes it)
// `index` is the example's index column of the test file (TaskExample.idx).
//
// Each leaderboard scores the whole official test split: idx (SuperGLUE) or index (GLUE) 0..N-1,
// one line each. A test file with another count or other idx values (a partial download, a
// `head -n 100` copy, a user's own test set) still gets its submission file, but with a one-line
// warning (testSplitWarning), before the training and when the file is written, so that the user
// learns it here rather than at upload.
//
// The formats are keyed by task name here so that the task files need not know the leaderboards.

import { isDirectory, writeFileAtomic } from "../model/atomic_write.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { microBatchSize, runFolders, type TrainConfig } from "./config.ts";
import { emptyTextNote, targetSpanProblem } from "./batches.ts";
import type { TextTokenizer } from "../model/tokenizer.ts";
import { FlagError } from "./flags.ts";
import type { Task } from "./task.ts";
import { plural } from "../model/progress_text.ts";

export type Benchmark = "SuperGLUE" | "GLUE";

export interface SubmissionFormat {
  benchmark: Benchmark;
  /** The file name the leaderboard wants. */
  file: string;
  /** The test split's file in the task's data folder (for a clear message when it is missing). */
  testFile: string;
  /**
   * How many examples the official test split has, idx 0..testExamples-1: the rows the
   * leaderboard expects in the file (Hugging Face datasets' test split sizes, the same files).
   */
  testExamples: number;
  /**
   * Label names by id, in Hugging Face datasets' order (the ids training uses); how predictions
   * given as names are read back into ids. Empty for regression.
   */
  labels: readonly string[];
  /** The leaderboard's value for a predicted label id (or, for regression, the score). */
  value(prediction: number): string | number;
}

function names(values: readonly string[]): (id: number) => string {
  return (id) => values[id];
}

const identity = (id: number) => id;

/**
 * The submission format of each task, by task name. The test split sizes: WiC, CoLA, MRPC and
 * STS-B as the files in data/ have them, BoolQ and QNLI as their downloads pin them
 * (BOOLQ_DATASET, QNLI_DATASET), RTE, CB and COPA (data/ ships no test split for them) as
 * Hugging Face's super_glue has them.
 */
export const SUBMISSION_FORMATS: Readonly<Record<string, SubmissionFormat>> = {
  rte: {
    benchmark: "SuperGLUE",
    file: "RTE.jsonl",
    testFile: "test.jsonl",
    testExamples: 3000,
    labels: ["entailment", "not_entailment"],
    value: names(["entailment", "not_entailment"]),
  },
  cb: {
    benchmark: "SuperGLUE",
    file: "CB.jsonl",
    testFile: "test.jsonl",
    testExamples: 250,
    labels: ["entailment", "contradiction", "neutral"],
    value: names(["entailment", "contradiction", "neutral"]),
  },
  boolq: {
    benchmark: "SuperGLUE",
    file: "BoolQ.jsonl",
    testFile: "test.jsonl",
    testExamples: 3245,
    labels: ["false", "true"],
    value: names(["false", "true"]),
  },
  wic: {
    benchmark: "SuperGLUE",
    file: "WiC.jsonl",
    testFile: "test.jsonl",
    testExamples: 1400,
    labels: ["false", "true"],
    value: names(["false", "true"]),
  },
  copa: {
    benchmark: "SuperGLUE",
    file: "COPA.jsonl",
    testFile: "test.jsonl",
    testExamples: 500,
    labels: ["0", "1"],
    value: identity,
  },
  mrpc: {
    benchmark: "GLUE",
    file: "MRPC.tsv",
    testFile: "test.tsv",
    testExamples: 1725,
    labels: ["not_equivalent", "equivalent"],
    value: identity,
  },
  qnli: {
    benchmark: "GLUE",
    file: "QNLI.tsv",
    testFile: "test.tsv",
    testExamples: 5463,
    labels: ["entailment", "not_entailment"],
    value: names(["entailment", "not_entailment"]),
  },
  cola: {
    benchmark: "GLUE",
    file: "CoLA.tsv",
    testFile: "test.tsv",
    testExamples: 1063,
    labels: ["unacceptable", "acceptable"],
    value: identity,
  },
  stsb: {
    benchmark: "GLUE",
    file: "STS-B.tsv",
    testFile: "test.tsv",
    testExamples: 1379,
    labels: [],
    value: (score) => Math.min(5, Math.max(0, score)).toFixed(3),
  },
};

/** The submission format of `task`, or an error naming the tasks that have one. */
export function submissionFormat(task: string): SubmissionFormat {
  const format = SUBMISSION_FORMATS[task];
  if (!format) {
    throw new Error(
      `${task}: no leaderboard submission format (known: ${
        Object.keys(SUBMISSION_FORMATS).join(", ")
      })`,
    );
  }
  return format;
}

/**
 * Why the submission of `task` from a test split with these examples will not be what the
 * leaderboard scores: another count than the official split's, or, with that count, idx values
 * other than 0..N-1 (a renumbered or another test set); one line naming `testPath`, or null.
 * Only a warning: the file is written all the same (a user may predict on a test set of their own).
 */
export function testSplitWarning(
  task: string,
  testPath: string,
  examples: readonly { idx: number }[],
): string | null {
  const format = submissionFormat(task);
  const expected = format.testExamples;
  const leaderboard = `the ${format.benchmark} leaderboard expects`;
  const n = examples.length;
  if (n !== expected) {
    const extra = n - expected;
    const effect = extra < 0 ? "will be incomplete" : `will have ${plural(extra, "extra row")}`;
    return `${testPath}: ${n} examples; ${leaderboard} ${expected} (${format.file} ${effect})`;
  }
  // GLUE's column is `index`; SuperGLUE's field is `idx`.
  const key = format.benchmark === "GLUE" ? "index" : "idx";
  const present = new Set(examples.map((e) => e.idx));
  const outside = examples.find((e) => !(e.idx >= 0 && e.idx < expected));
  let missing = 0;
  while (missing < expected && present.has(missing)) missing++;
  if (outside === undefined && missing === expected) return null;
  const found = outside === undefined ? [] : [`${key} ${outside.idx} found`];
  const absent = missing === expected ? [] : [`no ${key} ${missing}`];
  return `${testPath}: ${n} examples, but ${[...absent, ...found].join(", ")}; ${leaderboard} ` +
    `${key} 0..${expected - 1} (${format.file} will not match it)`;
}

/** What the formats need of a prediction (predict.ts's Prediction has these fields). */
export interface SubmissionPrediction {
  idx: number;
  prediction: string | number;
}

/**
 * The label id of a prediction: a name of `taskLabels` (the task's own, if given) or of the
 * format's labels (case-insensitive), or an id given as a number or a numeric string; for
 * regression, the score.
 */
function predictionValue(
  task: string,
  format: SubmissionFormat,
  p: SubmissionPrediction,
  taskLabels: readonly string[] | undefined,
): number {
  const bad = (why: string) =>
    new Error(`${task}: prediction ${JSON.stringify(p.prediction)} for idx ${p.idx}: ${why}`);
  if (format.labels.length === 0) {
    const score = typeof p.prediction === "number" ? p.prediction : Number(p.prediction);
    if (
      (typeof p.prediction === "string" && p.prediction.trim() === "") || !Number.isFinite(score)
    ) {
      throw bad("not a finite score");
    }
    return score;
  }
  let id = -1;
  if (typeof p.prediction === "number") {
    id = p.prediction;
  } else {
    id = taskLabels?.indexOf(p.prediction) ?? -1;
    if (id < 0) {
      const lower = p.prediction.toLowerCase();
      id = format.labels.findIndex((l) => l.toLowerCase() === lower);
    }
    if (id < 0 && /^\d+$/.test(p.prediction)) id = Number(p.prediction);
  }
  if (!Number.isInteger(id) || id < 0 || id >= format.labels.length) {
    throw bad(`not one of ${format.labels.join(", ")} (or their ids)`);
  }
  return id;
}

/**
 * The text of `task`'s submission file for `predictions`, in idx order (as jiant writes them).
 * `taskLabels`, the task's label names by id, reads predictions given as names (the format's own
 * names otherwise).
 */
export function submissionText(
  task: string,
  predictions: readonly SubmissionPrediction[],
  taskLabels?: readonly string[],
): string {
  const format = submissionFormat(task);
  const seen = new Set<number>();
  const lines: string[] = format.benchmark === "GLUE" ? ["index\tprediction"] : [];
  for (const p of [...predictions].sort((a, b) => a.idx - b.idx)) {
    if (!Number.isSafeInteger(p.idx) || p.idx < 0) {
      throw new Error(`${task}: example index ${p.idx} is not a non-negative integer`);
    }
    if (seen.has(p.idx)) throw new Error(`${task}: two test predictions for idx ${p.idx}`);
    seen.add(p.idx);
    const value = format.value(predictionValue(task, format, p, taskLabels));
    lines.push(
      format.benchmark === "GLUE"
        ? `${p.idx}\t${value}`
        : JSON.stringify({ idx: p.idx, label: value }),
    );
  }
  return lines.join("\n") + "\n";
}

/** Writes `task`'s submission file into `dir` (atomically); returns its path. */
export async function writeSubmission(
  dir: string,
  task: string,
  predictions: readonly SubmissionPrediction[],
  taskLabels?: readonly string[],
): Promise<string> {
  const path = `${dir}/${submissionFormat(task).file}`;
  await writeFileAtomic(path, submissionText(task, predictions, taskLabels));
  return path;
}

/** What --predict-test did for one run folder. */
export type TestPredictionResult =
  | { written: string; examples: number; warning?: string }
  | { skipped: string };

/** Why the final model in `modelDir` cannot be run by predict.ts, or null if it can. */
async function activePrefix(modelDir: string): Promise<string | null> {
  const reader = await openSafetensors(modelDir);
  try {
    const name = [...reader.tensors.keys()].find((n) => n.startsWith("prefix."));
    return name ?? null;
  } finally {
    reader.close();
  }
}

/**
 * Runs the final model of the run in `runDir` (its model/ folder) over the task's test split and
 * writes the leaderboard file into `runDir`. A missing test split, a task without a leaderboard
 * format, or a model that predict.ts refuses (active prefix rows) is reported as skipped, not as
 * an error: the run itself has succeeded.
 */
export async function predictTestSet(
  runDir: string,
  config: TrainConfig,
  task: Task,
): Promise<TestPredictionResult> {
  const format = SUBMISSION_FORMATS[task.name];
  if (!format) return { skipped: `task ${task.name} has no leaderboard submission format` };
  const data = await isDirectory(config.data);
  if (data === null) return { skipped: `no test split: ${config.data} does not exist` };
  if (!data) {
    return {
      skipped: `no test split: --data ${config.data} is a file (pass the task's folder, with ` +
        `${format.testFile})`,
    };
  }
  const testPath = `${config.data}/${format.testFile}`;
  if ((await isDirectory(testPath)) === null) {
    return { skipped: `no test split: ${testPath} does not exist` };
  }
  const modelDir = `${runDir}/model`;
  const prefix = await activePrefix(modelDir);
  if (prefix) {
    return {
      skipped: `${modelDir} keeps its prefix-tuning rows ("${prefix}"), which predict.ts does ` +
        `not apply, so it writes no test predictions for it`,
    };
  }
  // Imported when needed: predict.ts loads every task file, and a task script that imports
  // train.ts must not find itself in train.ts's static imports.
  const { predict } = await import("../predict.ts");
  const predictions = await predict({
    model: modelDir,
    task,
    data: config.data,
    split: "test",
    batchSize: microBatchSize(config),
    // The length the run cut its examples at: the model's metadata keeps it (predict's default).
  });
  if (predictions.length === 0) return { skipped: `${testPath} has no examples` };
  const written = await writeSubmission(runDir, task.name, predictions, task.labels);
  const warning = testSplitWarning(task.name, testPath, predictions);
  return { written, examples: predictions.length, ...warning === null ? {} : { warning } };
}

/** Why --predict-test cannot work with these settings, whatever the data; null when it can. */
export function predictTestRefusal(
  config: Pick<TrainConfig, "peft" | "strategy">,
  task: Task,
): string | null {
  if (!SUBMISSION_FORMATS[task.name]) {
    return `--predict-test: task ${task.name} has no leaderboard submission format`;
  }
  if (
    config.peft === "prefix" && (config.strategy === "peft" || config.strategy === "ehft-reserve")
  ) {
    return `--predict-test: --strategy ${config.strategy} --peft prefix keeps the prefix-tuning ` +
      `rows in the final model, which predict.ts does not apply`;
  }
  return null;
}

/**
 * --predict-test, before the training: refuses what predictTestSet would only skip after it (a
 * task without a leaderboard format, no test file in --data, a final model that keeps its
 * prefix rows), then reads the test split (each line checked as training checks its splits) and
 * requires one example per idx (with `spans`, the model's tokenizer and the run's length, also
 * that no target word of a WiC-style task is cut by truncation), so that a fault ends the
 * command before the training, not after. A --data that is not a folder is left to the training's own check. A test split that
 * is not the leaderboard's (testSplitWarning) is logged, and returned, but not refused: the
 * warning comes before hours of training too (and in a dry run, which calls this).
 */
export async function checkTestSplit(
  config: TrainConfig,
  task: Task,
  log: (line: string) => void = (line) => console.error(line),
  spans?: { tokenizer: TextTokenizer; maxLength: number },
): Promise<string | null> {
  const refusal = predictTestRefusal(config, task);
  if (refusal) throw new FlagError(refusal);
  const format = SUBMISSION_FORMATS[task.name];
  if ((await isDirectory(config.data)) !== true) return null;
  const testPath = `${config.data}/${format.testFile}`;
  if ((await isDirectory(testPath)) === null) {
    // A resumed run reads the folder it was started with: another --data is refused.
    const advice = config.resume
      ? `put the test split there: --resume reads the run's own data folder`
      : `pass --data with a folder that has it`;
    throw new FlagError(`--predict-test: no test split: ${testPath} does not exist (${advice})`);
  }
  const first = new Map<number, string>();
  const examples = await task.readExamples(config.data, "test");
  for (const e of examples) {
    const where = e.source ?? `${testPath} example ${e.idx}`;
    const earlier = first.get(e.idx);
    if (earlier !== undefined) {
      throw new Error(
        `${where}: idx ${e.idx} again (first at ${earlier}): --predict-test writes one ` +
          `prediction per idx`,
      );
    }
    first.set(e.idx, where);
  }
  // A target word (WiC) that truncation cuts: the predictions would fail after the training.
  if (spans) {
    const cut = targetSpanProblem(
      spans.tokenizer,
      examples,
      spans.maxLength,
      `${task.name} test`,
      task.truncation,
    );
    if (cut !== null) throw new Error(`--predict-test: ${cut}`);
  }
  const empty = emptyTextNote(examples, `${task.name} test`);
  if (empty !== null) log(`predict-test: ${empty}`);
  const warning = testSplitWarning(task.name, testPath, examples);
  if (warning !== null) log(`predict-test: ${warning}`);
  return warning;
}

// train/config.ts's, kept importable from here.
export { runFolders };

/**
 * Whether a run folder of `config` lacks its submission file (a --resume of a run started with
 * --predict-test writes them then); false for a task without a leaderboard format.
 */
export async function missingSubmission(config: TrainConfig, task: Task): Promise<boolean> {
  const format = SUBMISSION_FORMATS[task.name];
  if (!format) return false;
  for (const dir of runFolders(config)) {
    if ((await isDirectory(`${dir}/${format.file}`)) === null) return true;
  }
  return false;
}

/**
 * --predict-test: the submission file of every run folder of `config`, reported on stderr, with
 * the test split's warning (testSplitWarning) once: every seed reads the same test file.
 */
export async function writeTestSubmissions(
  config: TrainConfig,
  task: Task,
  log: (line: string) => void = (line) => console.error(line),
): Promise<TestPredictionResult[]> {
  const results: TestPredictionResult[] = [];
  let warned = false;
  for (const dir of runFolders(config)) {
    const r = await predictTestSet(dir, config, task);
    log(
      "written" in r
        ? `predict-test: ${plural(r.examples, "test prediction")} written to ${r.written}`
        : `predict-test: ${dir}: skipped: ${r.skipped}`,
    );
    if ("written" in r && r.warning && !warned) {
      log(`predict-test: ${r.warning}`);
      warned = true;
    }
    results.push(r);
  }
  return results;
}
