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

/** Runs the model over `batches` and scores its predictions against `gold` with `metrics`. */
export async function evaluate(
  trainer: Trainer,
  batches: readonly TrainBatch[],
  gold: readonly number[],
  metrics: readonly MetricName[],
): Promise<MetricValues> {
  const outputs = await trainer.predict(batches);
  const C = trainer.outputs;
  const pred: number[] = [];
  outputs.forEach((values, b) => {
    for (let e = 0; e < batches[b].examples; e++) {
      pred.push(predictionOf(trainer.loss, values.subarray(e * C, (e + 1) * C)));
    }
  });
  const scores = computeMetrics(metrics, pred, gold);
  const out: MetricValues = {};
  for (const name of metrics) out[name] = Number.isNaN(scores[name]) ? null : scores[name];
  return out;
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
