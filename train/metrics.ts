// Evaluation metrics of the GLUE/SuperGLUE tasks, as scikit-learn and SciPy compute them (the
// libraries that task evaluation code reports through): accuracy_score, f1_score (binary and
// average="macro"), matthews_corrcoef, scipy.stats.pearsonr and scipy.stats.spearmanr. Values are
// fractions (0.8123), never percentages. Everything is computed in float64 on the host, in a fixed
// order, so the same inputs always give the same bits.
//
// Undefined cases follow those libraries rather than throwing, so one odd evaluation set does not
// end a training run:
// - f1: 0 when precision or recall divides by zero (sklearn's zero_division="warn" gives 0).
// - macro_f1: averaged over the classes present in gold ∪ pred (sklearn's unique_labels); a class
//   absent from both is not averaged unless named in `labels`, where it scores 0.
// - mcc: 0 when either side has a single class (sklearn returns 0 there).
// - pearson, spearman: NaN when either input is constant, as SciPy (which also warns).
// Inputs that those libraries reject (different lengths, no examples, non-integer class ids,
// pearson of one example or of a NaN or infinity) throw an Error naming the metric.

/** A metric `computeMetrics` can report (see this file's header for edge cases). */
export type MetricName = "accuracy" | "f1" | "macro_f1" | "mcc" | "pearson" | "spearman";

export const METRIC_NAMES: readonly MetricName[] = [
  "accuracy",
  "f1",
  "macro_f1",
  "mcc",
  "pearson",
  "spearman",
];

export function isMetricName(name: string): name is MetricName {
  return (METRIC_NAMES as readonly string[]).includes(name);
}

function checkPair(metric: string, pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  if (pred.length !== gold.length) {
    throw new Error(`${metric}: pred has ${pred.length} values but gold has ${gold.length}`);
  }
  if (pred.length === 0) throw new Error(`${metric}: no examples (pred and gold are empty)`);
  return pred.length;
}

// sklearn refuses continuous targets in classification metrics; a float class id is a bug upstream.
function checkClassIds(metric: string, side: string, xs: ArrayLike<number>): void {
  for (let i = 0; i < xs.length; i++) {
    if (!Number.isInteger(xs[i])) {
      throw new Error(`${metric}: ${side}[${i}] is ${xs[i]}, not an integer class id`);
    }
  }
}

function checkClassification(
  metric: string,
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
): number {
  const n = checkPair(metric, pred, gold);
  checkClassIds(metric, "pred", pred);
  checkClassIds(metric, "gold", gold);
  return n;
}

/** Fraction of examples whose predicted class id equals the gold one. */
export function accuracy(pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  const n = checkClassification("accuracy", pred, gold);
  let correct = 0;
  for (let i = 0; i < n; i++) if (pred[i] === gold[i]) correct++;
  return correct / n;
}

interface ClassCounts {
  tp: number;
  fp: number;
  fn: number;
}

function classCounts(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  n: number,
): Map<number, ClassCounts> {
  const counts = new Map<number, ClassCounts>();
  const get = (c: number) => {
    let k = counts.get(c);
    if (!k) counts.set(c, k = { tp: 0, fp: 0, fn: 0 });
    return k;
  };
  for (let i = 0; i < n; i++) {
    const p = pred[i], g = gold[i];
    if (p === g) {
      get(p).tp++;
    } else {
      get(p).fp++;
      get(g).fn++;
    }
  }
  return counts;
}

// Equal to sklearn's 2·P·R/(P+R) with zero_division → 0 (and to newer sklearn's exact-count form),
// without rounding P and R first.
function f1FromCounts(k: ClassCounts | undefined): number {
  if (!k || k.tp === 0) return 0;
  return (2 * k.tp) / (2 * k.tp + k.fp + k.fn);
}

/**
 * Binary F1 of class 1 (sklearn's f1_score defaults: average="binary", pos_label=1). 0 when
 * nothing is predicted positive or no gold example is positive. As sklearn, throws if the ids
 * present in pred ∪ gold are more than two, or are two without 1 among them.
 */
export function f1(pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  const n = checkClassification("f1", pred, gold);
  const counts = classCounts(pred, gold, n);
  const present = [...counts.keys()].sort((a, b) => a - b);
  if (present.length > 2 || (present.length === 2 && !counts.has(1))) {
    throw new Error(
      `f1: binary F1 of class 1 needs at most two class ids including 1, got ${present.join(", ")}`,
    );
  }
  return f1FromCounts(counts.get(1));
}

/**
 * Unweighted mean of the per-class F1 (sklearn's f1_score with average="macro"). The classes are
 * `labels` when given (as sklearn's labels=: a listed class absent from both sides scores 0, and
 * examples of unlisted classes still count as misses of listed ones), otherwise those present in
 * pred ∪ gold: a class that is never predicted but occurs in gold scores 0, one in neither is left
 * out. CB's SuperGLUE F1 is this over its three classes.
 */
export function macro_f1(
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  labels?: ArrayLike<number>,
): number {
  const n = checkClassification("macro_f1", pred, gold);
  const counts = classCounts(pred, gold, n);
  let classes: number[];
  if (labels === undefined) {
    classes = [...counts.keys()].sort((a, b) => a - b);
  } else {
    if (labels.length === 0) throw new Error("macro_f1: labels is empty");
    checkClassIds("macro_f1", "labels", labels);
    classes = Array.from(labels);
  }
  let sum = 0;
  for (const c of classes) sum += f1FromCounts(counts.get(c));
  return sum / classes.length;
}

/**
 * Matthews correlation coefficient, in sklearn's multiclass form (Gorodkin's R_K, the usual
 * binary MCC for two classes), from the confusion matrix's row sums t, column sums p, trace c and
 * size n: (c·n − t·p) / √((n² − t·t)(n² − p·p)); 0 when the denominator is 0, as sklearn.
 */
export function mcc(pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  const n = checkClassification("mcc", pred, gold);
  const tSum = new Map<number, number>();
  const pSum = new Map<number, number>();
  let correct = 0;
  for (let i = 0; i < n; i++) {
    tSum.set(gold[i], (tSum.get(gold[i]) ?? 0) + 1);
    pSum.set(pred[i], (pSum.get(pred[i]) ?? 0) + 1);
    if (pred[i] === gold[i]) correct++;
  }
  // All integers below 2^53 for any realistic n, so these are exact.
  let tp = 0, pp = 0, tt = 0;
  for (const [c, t] of tSum) {
    tt += t * t;
    tp += t * (pSum.get(c) ?? 0);
  }
  for (const p of pSum.values()) pp += p * p;
  const covYtYp = correct * n - tp;
  const covYpYp = n * n - pp;
  const covYtYt = n * n - tt;
  const denom = covYtYt * covYpYp;
  if (denom === 0) return 0;
  return covYtYp / Math.sqrt(denom);
}

function isConstant(xs: ArrayLike<number>): boolean {
  for (let i = 1; i < xs.length; i++) if (xs[i] !== xs[0]) return false;
  return true;
}

// Mean with a second, correcting pass over the residuals: accurate even when the values share a
// large offset (scores around 1e9 differing in the decimals).
function mean(xs: ArrayLike<number>): number {
  const n = xs.length;
  let s = 0;
  for (let i = 0; i < n; i++) s += xs[i];
  const m = s / n;
  let r = 0;
  for (let i = 0; i < n; i++) r += xs[i] - m;
  return m + r / n;
}

// Centred values divided by their Euclidean norm; the norm is taken of the values scaled by their
// largest magnitude so that squaring can neither overflow nor underflow.
function unitDeviations(xs: ArrayLike<number>): Float64Array {
  const n = xs.length;
  const m = mean(xs);
  const d = new Float64Array(n);
  let scale = 0;
  for (let i = 0; i < n; i++) {
    d[i] = xs[i] - m;
    scale = Math.max(scale, Math.abs(d[i]));
  }
  let ss = 0;
  for (let i = 0; i < n; i++) {
    const v = d[i] / scale;
    ss += v * v;
  }
  const norm = scale * Math.sqrt(ss);
  for (let i = 0; i < n; i++) d[i] /= norm;
  return d;
}

// Correlation of two non-constant, finite vectors, clipped to [-1, 1] as SciPy does.
function correlation(x: ArrayLike<number>, y: ArrayLike<number>): number {
  const dx = unitDeviations(x);
  const dy = unitDeviations(y);
  let r = 0;
  for (let i = 0; i < dx.length; i++) r += dx[i] * dy[i];
  return Math.max(-1, Math.min(1, r));
}

/**
 * Pearson's r (scipy.stats.pearsonr's statistic). NaN when either input is constant (SciPy warns
 * and returns NaN). Throws, as SciPy (1.10) does, for a single example and for a NaN or an
 * infinity in an input of three or more that is not constant (two examples give ±1, or NaN).
 */
export function pearson(pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  const n = checkPair("pearson", pred, gold);
  if (n < 2) throw new Error("pearson: needs at least 2 examples");
  if (isConstant(pred) || isConstant(gold)) return NaN;
  // SciPy answers two examples before it looks for non-finite values: ±1, or NaN through a NaN.
  if (n === 2) return Math.sign(pred[1] - pred[0]) * Math.sign(gold[1] - gold[0]);
  for (const [side, xs] of [["pred", pred], ["gold", gold]] as const) {
    for (let i = 0; i < n; i++) {
      if (!Number.isFinite(xs[i])) throw new Error(`pearson: ${side}[${i}] is ${xs[i]}`);
    }
  }
  return correlation(pred, gold);
}

/** 1-based ranks, tied values sharing the mean of their ranks (scipy.stats.rankdata "average"). */
export function averageRanks(xs: ArrayLike<number>): Float64Array {
  const n = xs.length;
  const order = Array.from({ length: n }, (_, i) => i);
  // Compare rather than subtract: Infinity − Infinity is NaN. The caller has excluded NaN.
  order.sort((a, b) => (xs[a] < xs[b] ? -1 : xs[a] > xs[b] ? 1 : a - b));
  const ranks = new Float64Array(n);
  for (let start = 0; start < n;) {
    let end = start + 1;
    while (end < n && xs[order[end]] === xs[order[start]]) end++;
    const rank = (start + 1 + end) / 2;
    for (let k = start; k < end; k++) ranks[order[k]] = rank;
    start = end;
  }
  return ranks;
}

/**
 * Spearman's ρ (scipy.stats.spearmanr's statistic): Pearson's r of the average ranks, so ties are
 * handled exactly. NaN when either input is constant, holds a NaN (SciPy's nan_policy="propagate"),
 * or has a single example (SciPy returns NaN there instead of raising); infinities are ranked.
 */
export function spearman(pred: ArrayLike<number>, gold: ArrayLike<number>): number {
  const n = checkPair("spearman", pred, gold);
  if (n < 2 || isConstant(pred) || isConstant(gold)) return NaN;
  for (let i = 0; i < n; i++) if (Number.isNaN(pred[i]) || Number.isNaN(gold[i])) return NaN;
  return correlation(averageRanks(pred), averageRanks(gold));
}

// `labels` (the task's class ids) is macro-F1's; the others take two arguments.
const METRICS: Record<
  MetricName,
  (pred: ArrayLike<number>, gold: ArrayLike<number>, labels?: ArrayLike<number>) => number
> = {
  accuracy,
  f1,
  macro_f1,
  mcc,
  pearson,
  spearman,
};

/**
 * The named metrics (and only those) of one evaluation. Class-id metrics take predicted and gold
 * ids, correlations take predicted and gold scores. `classes`, the task's number of labels, makes
 * macro-F1 the mean over ids 0 … classes − 1 (a class absent from a dev set scores 0, as in
 * SuperGLUE's CB F1 over its three), not over the ids that occur.
 */
export function computeMetrics<N extends MetricName>(
  names: readonly N[],
  pred: ArrayLike<number>,
  gold: ArrayLike<number>,
  classes?: number,
): Record<N, number> {
  if (classes !== undefined && !(Number.isInteger(classes) && classes > 0)) {
    throw new Error(`computeMetrics: classes is ${classes}, not a positive integer`);
  }
  const labels = classes === undefined ? undefined : Array.from({ length: classes }, (_, c) => c);
  const out = {} as Record<N, number>;
  for (const name of names) {
    // Names often come from flags or config files, past the type checker.
    if (!isMetricName(name)) {
      throw new Error(`unknown metric "${name}" (known: ${METRIC_NAMES.join(", ")})`);
    }
    out[name] = METRICS[name](pred, gold, labels);
  }
  return out;
}
