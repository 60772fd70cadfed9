// What the engine and predict.ts need to know about a task. Each task file in tasks/ exports one
// of these; nothing under train/ knows any particular task.

import type { MetricName } from "./metrics.ts";
import type { Truncation } from "../model/tokenizer.ts";

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
}

export type LossKind = "bce" | "ce" | "mse";

export interface Task {
  name: string;
  /** Label names by id, in Hugging Face datasets' order; empty for regression. */
  labels: readonly string[];
  /** Outputs of the head per encoder input: 1 for binary tasks and regression. */
  headClasses: number;
  loss: LossKind;
  /** The metrics of its dev evaluations, as the official code reports them. */
  metrics: readonly MetricName[];
  /** The split training reads (default "train"). */
  trainSplit?: string;
  /** The split evaluations read (e.g. "val"). */
  devSplit: string;
  /** The data folder train.ts uses when --data is not given (relative to the working folder). */
  dataDir?: string;
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
