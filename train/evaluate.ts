// Evaluation on a task's dev split: the model's outputs (no dropout) turned into predictions and
// scored with the task's metrics (train/metrics.ts), as fractions.

import { computeMetrics, type MetricName } from "./metrics.ts";
import type { TrainBatch } from "./batches.ts";
import type { LossKind } from "./task.ts";
import type { Trainer } from "./trainer.ts";

/** Metric values of one evaluation; NaN (an undefined correlation) is kept as null. */
export type MetricValues = Record<string, number | null>;

/**
 * The prediction of one example from its `outputs` values: the class (logit > 0) for BCE, the
 * arg max for cross-entropy (classes, or choices), the score for regression.
 */
export function predictionOf(loss: LossKind, outputs: ArrayLike<number>): number {
  if (loss === "bce") return outputs[0] > 0 ? 1 : 0;
  if (loss === "mse") return outputs[0];
  let best = 0;
  for (let j = 1; j < outputs.length; j++) if (outputs[j] > outputs[best]) best = j;
  return best;
}

/**
 * The model's outputs on some examples were not finite (an f16 forward that overflowed, or a
 * model that diverged): no metric means anything then (a NaN logit would count as class 0, and
 * Pearson's r refuses it), so the evaluation says so instead of scoring.
 */
export class NonFiniteOutputsError extends Error {
  /** The message is made from the counts and the first example. */
  constructor(
    /** Examples with a non-finite output. */
    readonly count: number,
    /** Examples evaluated. */
    readonly total: number,
    /** The first such example's index and value. */
    readonly first: { example: number; value: number },
  ) {
    super(
      `the model's outputs are not finite for ${count} of ${total} examples (example ` +
        `${first.example}: ${first.value})`,
    );
    this.name = "NonFiniteOutputsError";
  }
}

/** One evaluation's scores, and whether its predictions were all one class. */
export interface Evaluation {
  /** The scores by metric name. */
  metrics: MetricValues;
  /**
   * The class every example was predicted as, when they all were (a classification task, two
   * examples or more); else null. A collapsed model's MCC is 0 and its accuracy the class's
   * share, numbers that look like a model's.
   */
  oneClass: number | null;
}

/**
 * Runs the model over `batches` and scores its predictions against `gold` with `metrics`
 * (`classes`: the task's label count, see computeMetrics); throws NonFiniteOutputsError if any
 * output is NaN or infinite.
 */
export async function evaluate(
  trainer: Trainer,
  batches: readonly TrainBatch[],
  gold: readonly number[],
  metrics: readonly MetricName[],
  classes?: number,
): Promise<Evaluation> {
  const outputs = await trainer.predict(batches);
  const C = trainer.outputs;
  const pred: number[] = [];
  let bad = 0;
  let first: { example: number; value: number } | null = null;
  outputs.forEach((values, b) => {
    for (let e = 0; e < batches[b].examples; e++) {
      const row = values.subarray(e * C, (e + 1) * C);
      const value = row.find((x) => !Number.isFinite(x));
      if (value !== undefined) {
        bad++;
        first ??= { example: pred.length, value };
      }
      pred.push(predictionOf(trainer.loss, row));
    }
  });
  if (first) throw new NonFiniteOutputsError(bad, pred.length, first);
  const scores = computeMetrics(metrics, pred, gold, classes);
  const out: MetricValues = {};
  for (const name of metrics) out[name] = Number.isNaN(scores[name]) ? null : scores[name];
  const oneClass = trainer.loss !== "mse" && pred.length > 1 && pred.every((p) => p === pred[0])
    ? pred[0]
    : null;
  return { metrics: out, oneClass };
}

/**
 * Why a dev split of `count` examples cannot be scored with `metrics`, or null: a correlation
 * (STS-B's Pearson r) needs two examples, and one found at the first evaluation would stop a run
 * that has already trained.
 */
export function unscorableDevSplit(
  metrics: readonly MetricName[],
  count: number,
  what: string,
): string | null {
  const correlations = metrics.filter((m) => m === "pearson" || m === "spearman");
  if (count >= 2 || correlations.length === 0) return null;
  return `${what}: ${count} example${count === 1 ? "" : "s"}; ${correlations.join(" and ")} ` +
    `need at least 2 to be computed`;
}

/** Each metric's better value of `best` and `current` (null never wins). */
export function updateBest(best: MetricValues, current: MetricValues): MetricValues {
  const out: MetricValues = { ...best };
  for (const [name, v] of Object.entries(current)) {
    const b = out[name];
    if (b === undefined || b === null || (v !== null && v > b)) out[name] = v ?? b ?? null;
  }
  return out;
}
