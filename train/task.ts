// What the engine and predict.ts need to know about a task. Each task file in tasks/ exports one
// of these; nothing under train/ knows any particular task.

import { isMetricName, METRIC_NAMES, type MetricName } from "./metrics.ts";
import type { Truncation } from "../model/tokenizer.ts";
import type { EnsureDatasetOptions } from "./data_download.ts";

/** One example: the encoder inputs it turns into, and its label id (or score). */
export interface TaskExample {
  /** The example's `idx` in the data file (its line number - 1 where the file has none). */
  idx: number;
  /**
   * The encoder inputs, each a text or a pair of texts. Most tasks have one; COPA has two (one
   * per choice, scored by one logit each).
   */
  inputs: (string | [string, string])[];
  /** The label id in Hugging Face datasets' numbering, the score for regression, null if unknown. */
  label: number | null;
  /**
   * WiC-style tasks (`Task.head` "wic"): the target word's character ranges [start, end) (UTF-16
   * indices, end exclusive) in the first and the second text of the example's one input, a pair
   * (`inputs[0][0]`, `inputs[0][1]`). The engine maps them to token ranges after truncation
   * (train/batches.ts `exampleTokenSpans`).
   */
  spans?: [[number, number], [number, number]];
  /**
   * Where the example comes from, `<file>:<line>` (1-based), for errors found after reading (an
   * example without a label in a split training needs labeled, a target word cut by truncation).
   */
  source?: string;
}

/**
 * A task's loss: "bce" binary cross-entropy on one logit, "ce" softmax cross-entropy over the
 * classes (or the choices), "mse" squared error on one output (regression).
 */
export type LossKind = "bce" | "ce" | "mse";

/** What the head reads: see `Task.head`. */
export type HeadInput = "first-token" | "wic";

/** A task as the engine and predict.ts see it: labels, head, loss, metrics, splits and reader. */
export interface Task {
  /** The task's name, as `--task` and `taskByName` take it. */
  name: string;
  /** Label names by id, in Hugging Face datasets' order; empty for regression. */
  labels: readonly string[];
  /** Outputs of the head per encoder input: 1 for binary tasks and regression. */
  headClasses: number;
  /**
   * What the head reads (default "first-token"): the first token's final hidden state h0
   * (F = hidden), or "wic": [h0; w1; w2; |w1 − w2|; w1 ⊙ w2] (F = 5·hidden), wi the mean of the
   * target word's tokens in text i. A "wic" task gives every example one pair and its `spans`.
   */
  head?: HeadInput;
  /** The training loss. */
  loss: LossKind;
  /**
   * The metrics of its dev evaluations, the first the one report.ts's table shows (the official
   * code computes more: accuracy, F1 and MCC for every binary task).
   */
  metrics: readonly MetricName[];
  /** The split training reads (default "train"). */
  trainSplit?: string;
  /** The split evaluations read (e.g. "val"). */
  devSplit: string;
  /** The data folder train.ts uses when --data is not given (relative to the working folder). */
  dataDir?: string;
  /**
   * The data folder when --data is not given and there is no `dataDir`: data sets too large to
   * ship (BoolQ, QNLI) download their official zip into the data cache on first use and return
   * that folder (train/data_download.ts). `offline: true` makes no requests: a DatasetError,
   * saying how to pass --data, unless the data is already cached.
   */
  resolveData?(options?: EnsureDatasetOptions): Promise<string>;
  /**
   * How pairs are cut to the maximum length (default "longest_first", Hugging Face's default);
   * "only_first" cuts the first text only, as the official EH-FT code does for pairs.
   */
  truncation?: Truncation;
  /** Reads one split from a task's data folder (or from a data file given directly). */
  readExamples(path: string, split: string): Promise<TaskExample[]>;
  /** The prediction for one example from its logits: a label name, or a score. */
  prediction(logits: readonly number[]): string | number;
}

/**
 * A task definition that cannot run, or null: each metric must be one train/metrics.ts computes,
 * and the head must fit the loss (bce and mse: one output per input). Checked before any work, so
 * a task of one's own fails here and not at its first evaluation.
 */
export function taskDefinitionProblem(task: Task): string | null {
  const unknown = task.metrics.filter((m) => !isMetricName(m));
  if (unknown.length > 0) {
    return `task ${task.name}: metric ${JSON.stringify(unknown[0])} is not one this toolkit ` +
      `computes (${METRIC_NAMES.join(", ")})`;
  }
  if (task.metrics.length === 0) return `task ${task.name}: no metrics to evaluate with`;
  if (!Number.isSafeInteger(task.headClasses) || task.headClasses < 1) {
    return `task ${task.name}: headClasses ${task.headClasses} is not a positive integer`;
  }
  if (task.loss !== "ce" && task.headClasses !== 1) {
    return `task ${task.name}: the ${task.loss} loss reads one output per input, not ` +
      `headClasses ${task.headClasses} (ce is the loss over several classes)`;
  }
  return null;
}

/**
 * The first example whose label the task's loss cannot take, as one line naming its file and
 * line, or null: bce needs 0 or 1; ce a class id in [0, classes) (`classes`: the head's outputs,
 * or the inputs per example for a choice task such as COPA); mse a finite number. A label outside
 * them trains silently on nonsense (bce) or turns the loss into NaN (ce).
 */
export function badLabel(
  task: Pick<Task, "loss" | "labels">,
  examples: readonly TaskExample[],
  classes: number,
  what: string,
): string | null {
  for (const [i, e] of examples.entries()) {
    const y = e.label;
    if (y === null) continue;
    const ok = task.loss === "mse"
      ? Number.isFinite(y)
      : Number.isInteger(y) && y >= 0 && y < (task.loss === "bce" ? 2 : classes);
    if (ok) continue;
    const where = e.source ? `${e.source}: ` : "";
    const range = task.loss === "mse"
      ? "a finite number"
      : task.loss === "bce"
      ? "0 or 1"
      : `a class id in [0, ${classes})`;
    return `${where}${what}: example ${i} (idx ${e.idx}) has label ${y}; the task's ${task.loss} ` +
      `loss needs ${range}` +
      (task.labels.some((l, k) => l !== String(k))
        ? ` (${task.labels.map((l, k) => `${k} ${l}`).join(", ")})`
        : "");
  }
  return null;
}

/** The class ids a "ce" task's labels index: the head's outputs, or the choices per example. */
export function labelClasses(
  task: Pick<Task, "headClasses">,
  examples: readonly TaskExample[],
): number {
  return task.headClasses > 1 ? task.headClasses : (examples[0]?.inputs.length ?? 1);
}

/** The head's input width F for a task on an encoder of `hiddenSize`: H, or 5·H for "wic". */
export function headFeatures(task: Pick<Task, "head">, hiddenSize: number): number {
  return task.head === "wic" ? 5 * hiddenSize : hiddenSize;
}
