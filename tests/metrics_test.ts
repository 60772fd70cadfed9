// Evaluation metrics against values computed with scikit-learn 1.2.1 and SciPy 1.10.1 (Debian
// bookworm's python3-sklearn and python3-scipy, run by /usr/bin/python3). Every expected number
// below is a literal printed by the script in the comment block at the end of this file; run it
// to regenerate them.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  accuracy,
  averageRanks,
  computeMetrics,
  f1,
  isMetricName,
  macro_f1,
  mcc,
  METRIC_NAMES,
  type MetricName,
  pearson,
  spearman,
} from "../train/metrics.ts";

/** `actual` within `tol` (relative, absolute below 1) of `expected`; NaN matches NaN only. */
function near(name: string, actual: number, expected: number, tol = 1e-12): void {
  if (Number.isNaN(expected)) {
    assert(Number.isNaN(actual), `${name}: ${actual}, expected NaN`);
    return;
  }
  const err = Math.abs(actual - expected);
  assert(
    err <= tol * Math.max(1, Math.abs(expected)),
    `${name}: ${actual}, expected ${expected} (error ${err.toExponential(2)})`,
  );
}

function nearAll(
  label: string,
  got: Partial<Record<MetricName, number>>,
  want: Partial<Record<MetricName, number>>,
): void {
  for (const [name, value] of Object.entries(want)) {
    near(`${label} ${name}`, got[name as MetricName]!, value);
  }
}

const CLASSIFICATION = ["accuracy", "f1", "macro_f1", "mcc"] as const;
const MULTICLASS = ["accuracy", "macro_f1", "mcc"] as const;
const CORRELATION = ["pearson", "spearman"] as const;

Deno.test("metrics: perfect and all-wrong binary predictions", () => {
  const gold = [0, 1, 1, 0, 1, 0, 0, 1];
  const wrong = gold.map((g) => 1 - g);
  // sklearn, "perfect" and "all_wrong"
  assertEquals(computeMetrics(CLASSIFICATION, gold, gold), {
    accuracy: 1,
    f1: 1,
    macro_f1: 1,
    mcc: 1,
  });
  assertEquals(computeMetrics(CLASSIFICATION, wrong, gold), {
    accuracy: 0,
    f1: 0,
    macro_f1: 0,
    mcc: -1,
  });
});

Deno.test("metrics: binary F1 with no positive predicted is 0, as sklearn's zero_division", () => {
  // sklearn, "no_pos_pred": precision is 0/0; sklearn warns and scores 0.
  const got = computeMetrics(CLASSIFICATION, [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]);
  assertEquals(got.f1, 0);
  assertEquals(got.mcc, 0);
  nearAll("no_pos_pred", got, { accuracy: 0.6, macro_f1: 0.37499999999999994 });
  // sklearn, "all_neg": no positive anywhere; F1 of class 1 is 0, macro F1 is class 0's alone.
  assertEquals(computeMetrics(CLASSIFICATION, [0, 0, 0], [0, 0, 0]), {
    accuracy: 1,
    f1: 0,
    macro_f1: 1,
    mcc: 0,
  });
});

Deno.test("metrics: MCC is 0 where its denominator is 0 (a constant side)", () => {
  // sklearn, "gold_const": gold is all 1, so n² − t·t = 0.
  const got = computeMetrics(CLASSIFICATION, [1, 0, 1, 0], [1, 1, 1, 1]);
  assertEquals(got.mcc, 0);
  nearAll("gold_const", got, {
    accuracy: 0.5,
    f1: 0.6666666666666666,
    macro_f1: 0.3333333333333333,
  });
  // Predictions constant instead (n² − p·p = 0).
  assertEquals(mcc([1, 1, 1, 1], [1, 0, 1, 0]), 0);
});

Deno.test("metrics: binary F1 scores class 1 whatever the other id; more ids throw", () => {
  // sklearn, "minus1"
  nearAll("minus1", computeMetrics(CLASSIFICATION, [-1, 1, 1, -1, 1], [-1, 1, -1, -1, 1]), {
    accuracy: 0.8,
    f1: 0.8,
    macro_f1: 0.8,
    mcc: 0.6666666666666666,
  });
  // sklearn raises for both: "Target is multiclass but average='binary'", "pos_label=1 is not a
  // valid label".
  assertThrows(() => f1([0, 1, 2], [0, 1, 1]), Error, "at most two class ids");
  assertThrows(() => f1([0, 2, 2], [0, 2, 0]), Error, "got 0, 2");
});

Deno.test("metrics: macro F1 over 3 classes with one never predicted", () => {
  const pred = [0, 1, 1, 0, 1, 0, 1, 0, 0];
  const gold = [0, 1, 2, 0, 2, 1, 1, 0, 2];
  // sklearn, "three_never2": class 2 is in gold only, so it is averaged with F1 = 0.
  nearAll("three_never2", computeMetrics(MULTICLASS, pred, gold), {
    accuracy: 0.5555555555555556,
    macro_f1: 0.44047619047619047,
    mcc: 0.3872983346207417,
  });
  // The same classes listed explicitly change nothing.
  near("three_never2 labels", macro_f1(pred, gold, [0, 1, 2]), 0.44047619047619047);
});

Deno.test("metrics: macro F1 with sklearn's labels= argument", () => {
  // sklearn, "labels012_absent2": class 2 is in neither side but listed, so it scores 0.
  near("labels012_absent2", macro_f1([0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 2]), 0.48888888888888893);
  // Without labels the absent class is not averaged: (0.8 + 2/3) / 2.
  near("absent2 default", macro_f1([0, 1, 0, 0], [0, 1, 1, 0]), (0.8 + 2 / 3) / 2);
  // sklearn, "labels01_extra3": class 3 is not listed, but its examples still miss 0 and 1.
  near("labels01_extra3", macro_f1([0, 1, 1, 3, 0], [0, 3, 1, 0, 1], [0, 1]), 0.5);
  // computeMetrics with the task's label count: a class absent from the dev set scores 0 (a CB
  // dev set without "neutral": SuperGLUE's F1 is still the mean over the three classes).
  near(
    "classes 3",
    computeMetrics(["macro_f1"], [0, 1, 0, 0], [0, 1, 1, 0], 3).macro_f1,
    0.48888888888888893,
  );
  near(
    "classes omitted",
    computeMetrics(["macro_f1"], [0, 1, 0, 0], [0, 1, 1, 0]).macro_f1,
    (0.8 + 2 / 3) / 2,
  );
  assertThrows(() => computeMetrics(["macro_f1"], [0], [0], 0), Error, "classes is 0");
  assertThrows(() => macro_f1([0], [0], []), Error, "labels is empty");
  assertThrows(() => macro_f1([0], [0], [0.5]), Error, "labels[0] is 0.5");
});

Deno.test("metrics: pearson and spearman on exact, monotone and offset relations", () => {
  // scipy, "reg_linear", "reg_neg", "reg_monotone", "reg_n2", "reg_offset"
  const cases: [string, number[], number[], number, number][] = [
    ["reg_linear", [1, 2, 3, 4, 5], [2.5, 4.5, 6.5, 8.5, 10.5], 1.0, 0.9999999999999999],
    ["reg_neg", [1, 2, 3, 4], [4, 1, -2, -5], -1.0, -1.0],
    ["reg_monotone", [1, 2, 3, 4, 5], [1, 4, 9, 16, 100], 0.7952035738296035, 0.9999999999999999],
    ["reg_n2", [3, 1], [0.2, 0.9], -1.0, -0.9999999999999999],
    // Scores sharing a large offset: the two-pass mean keeps the decimals.
    [
      "reg_offset",
      [1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.4, 1e9 + 0.3],
      [5.0, 6.0, 8.5, 6.5],
      0.9647638630591001,
      1.0,
    ],
  ];
  for (const [label, pred, gold, r, rho] of cases) {
    nearAll(label, computeMetrics(CORRELATION, pred, gold), { pearson: r, spearman: rho });
  }
  // Correlations stay in [-1, 1] (SciPy clips too).
  assert(Math.abs(pearson([1, 2, 3, 4, 5], [2.5, 4.5, 6.5, 8.5, 10.5])) <= 1);
  // Guards a dropped clip: unclipped, this exact linear relation sums to 1.0000000000000002.
  const x = [6.9, 9.9, 9.6, 4.1, 6.2, 8];
  assertEquals(pearson(x, [1.69, 1.9900000000000002, 1.96, 1.41, 1.62, 1.8]), 1);
  // Guards a one-pass mean: at 8e15 the sum rounds, and the mean's error skews the deviations.
  const offset = [0, 7, 3, 2].map((v) => 8e15 + v);
  near("reg_offset_8e15", pearson(offset, [2, 5, 5, 5]), pearson([0, 7, 3, 2], [2, 5, 5, 5]));
});

Deno.test("metrics: spearman gives tied values the mean of their ranks", () => {
  assertEquals(averageRanks([1, 2, 2, 3, 3, 3, 5]), new Float64Array([1, 2.5, 2.5, 5, 5, 5, 7]));
  assertEquals(averageRanks([3, 1, 3, 1]), new Float64Array([3.5, 1.5, 3.5, 1.5]));
  // scipy, "reg_ties": ties on both sides.
  const pred = [1, 2, 2, 3, 3, 3, 5];
  const gold = [0.5, 0.5, 1, 2, 1, 3, 3];
  nearAll("reg_ties", computeMetrics(CORRELATION, pred, gold), {
    pearson: 0.8054438987213192,
    spearman: 0.8655446791269229,
  });
});

Deno.test("metrics: a constant vector gives NaN correlations, as scipy", () => {
  // scipy, "reg_const": ConstantInputWarning and NaN, on either side.
  for (const [a, b] of [[[1, 2, 3], [0.7, 0.7, 0.7]], [[0.7, 0.7, 0.7], [1, 2, 3]]]) {
    assert(Number.isNaN(pearson(a, b)), "pearson of a constant vector");
    assert(Number.isNaN(spearman(a, b)), "spearman of a constant vector");
  }
});

Deno.test("metrics: one example, NaN and infinity follow scipy", () => {
  // scipy, "reg_n1": pearsonr raises, spearmanr returns NaN.
  assertThrows(() => pearson([3], [0.2]), Error, "at least 2");
  assert(Number.isNaN(spearman([3], [0.2])));
  // scipy, "reg_nan": pearsonr raises ("array must not contain infs or NaNs"), spearmanr
  // propagates NaN.
  assertThrows(() => pearson([1, NaN, 3], [1, 2, 4]), Error, "pred[1] is NaN");
  assertThrows(() => pearson([1, 2, 3], [1, Infinity, 4]), Error, "gold[1] is Infinity");
  assert(Number.isNaN(spearman([1, NaN, 3], [1, 2, 4])));
  // Two examples: pearsonr answers sign(Δx)·sign(Δy) before its norms check for finite values.
  assertEquals(pearson([0, Infinity], [0, 1]), 1);
  assertEquals(pearson([2, 1], [0, -Infinity]), 1);
  assert(Number.isNaN(pearson([NaN, 1], [0, 1])));
  // scipy, "reg_inf": spearmanr ranks an infinity as the largest value.
  near("reg_inf", spearman([1, Infinity, 3, 0], [1, 2, 3, 4]), -0.39999999999999997);
});

// From the script below (RandomState(2024)).
const GOLD3 = [
  0,
  2,
  0,
  0,
  0,
  2,
  1,
  1,
  0,
  2,
  2,
  0,
  1,
  0,
  1,
  2,
  2,
  2,
  0,
  2,
  2,
  1,
  2,
  2,
  0,
  2,
  1,
  2,
  2,
  1,
  1,
  1,
  2,
  0,
  1,
  2,
  2,
  2,
  0,
  2,
  0,
  2,
  1,
  2,
  2,
  0,
  0,
  1,
  2,
  1,
];
const PRED3 = [
  0,
  2,
  2,
  0,
  0,
  2,
  1,
  1,
  0,
  2,
  0,
  1,
  0,
  0,
  1,
  2,
  2,
  2,
  0,
  2,
  0,
  1,
  2,
  0,
  0,
  2,
  1,
  2,
  2,
  1,
  2,
  1,
  2,
  0,
  0,
  0,
  2,
  2,
  0,
  2,
  0,
  2,
  1,
  1,
  2,
  0,
  1,
  0,
  2,
  1,
];
const GOLD2 = [
  1,
  1,
  0,
  0,
  1,
  0,
  0,
  1,
  1,
  1,
  0,
  1,
  1,
  0,
  0,
  0,
  1,
  0,
  1,
  1,
  0,
  0,
  1,
  0,
  0,
  1,
  0,
  0,
  0,
  1,
  0,
  1,
  1,
  0,
  0,
  0,
  1,
  0,
  1,
  1,
  1,
  1,
  0,
  1,
  1,
  1,
  0,
  1,
  1,
  1,
];
const PRED2 = [
  1,
  1,
  0,
  1,
  1,
  0,
  0,
  0,
  1,
  1,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  1,
  0,
  1,
  1,
  0,
  0,
  1,
  0,
  1,
  0,
  1,
  0,
  1,
  1,
  0,
  0,
  0,
  1,
  1,
  1,
  1,
  1,
  0,
  0,
  0,
  1,
  1,
  0,
  1,
  0,
  0,
];
const XS = [
  2.33,
  4.71,
  3.47,
  3.61,
  3.02,
  4.38,
  4.41,
  4.57,
  0.21,
  4.0,
  4.96,
  0.63,
  0.72,
  0.33,
  1.7,
  3.98,
  2.83,
  3.71,
  1.29,
  3.05,
  4.7,
  3.7,
  1.82,
  1.74,
  0.67,
  4.22,
  2.14,
  3.91,
  0.95,
  0.02,
  4.4,
  4.4,
  2.91,
  0.5,
  2.56,
  2.44,
  2.45,
  3.77,
  4.62,
  1.67,
  3.08,
  4.98,
  3.92,
  4.33,
  4.73,
  2.18,
  0.48,
  3.75,
  4.02,
  1.69,
];
const YS = [
  1.94,
  3.7,
  1.99,
  2.42,
  2.23,
  3.26,
  3.87,
  3.82,
  0.07,
  2.94,
  3.79,
  1.54,
  0.49,
  2.11,
  2.47,
  2.17,
  1.23,
  5.17,
  0.01,
  0.17,
  4.83,
  5.07,
  1.18,
  1.71,
  0.11,
  4.37,
  2.8,
  -0.2,
  1.28,
  -0.97,
  4.64,
  2.27,
  2.63,
  0.22,
  1.34,
  0.57,
  0.6,
  2.54,
  3.05,
  3.21,
  2.3,
  4.63,
  2.11,
  2.49,
  3.01,
  2.06,
  -0.12,
  2.14,
  3.58,
  0.69,
];
const XT = [
  1,
  2,
  1,
  1,
  3,
  1,
  4,
  1,
  3,
  4,
  3,
  1,
  2,
  0,
  3,
  4,
  0,
  4,
  5,
  4,
  1,
  1,
  1,
  3,
  4,
  2,
  0,
  4,
  2,
  0,
  3,
  3,
  2,
  2,
  1,
  1,
  3,
  4,
  0,
  4,
  1,
  2,
  0,
  4,
  4,
  4,
  1,
  0,
  2,
  4,
];

Deno.test("metrics: 50-element random cases for each metric", () => {
  for (const xs of [GOLD3, PRED3, GOLD2, PRED2, XS, YS, XT]) assertEquals(xs.length, 50);
  // sklearn, "random3" (3 classes) and "random2" (binary)
  nearAll("random3", computeMetrics(MULTICLASS, PRED3, GOLD3), {
    accuracy: 0.76,
    macro_f1: 0.7482364341085271,
    mcc: 0.6374510629004005,
  });
  nearAll("random2", computeMetrics(CLASSIFICATION, PRED2, GOLD2), {
    accuracy: 0.74,
    f1: 0.7346938775510203,
    macro_f1: 0.7398959583833533,
    mcc: 0.49474939329752243,
  });
  // scipy, "random_reg" and "random_ties" (XT has many ties)
  nearAll("random_reg", computeMetrics(CORRELATION, XS, YS), {
    pearson: 0.7210398832266385,
    spearman: 0.7393392239723395,
  });
  nearAll("random_ties", computeMetrics(CORRELATION, XT, YS), {
    pearson: -0.024335347379944094,
    spearman: 0.006095479729221503,
  });
  // Typed arrays work as well as plain ones.
  near("typed", mcc(Int32Array.from(PRED3), Float32Array.from(GOLD3)), 0.6374510629004005);
  near("typed", pearson(Float64Array.from(XS), Float64Array.from(YS)), 0.7210398832266385);
});

Deno.test("metrics: computeMetrics returns only the named metrics", () => {
  const got = computeMetrics(["mcc", "accuracy"], [0, 1, 1], [0, 1, 0]);
  assertEquals(Object.keys(got).sort(), ["accuracy", "mcc"]);
  assertEquals(computeMetrics([], [0], [0]), {});
  assertEquals(METRIC_NAMES.length, 6);
  for (const name of METRIC_NAMES) assert(isMetricName(name));
  assert(!isMetricName("f1_macro"));
  assertThrows(
    () => computeMetrics(["f1_macro" as MetricName], [0], [0]),
    Error,
    'unknown metric "f1_macro"',
  );
});

Deno.test("metrics: mismatched lengths, empty inputs and non-integer class ids throw", () => {
  const all = [accuracy, f1, (p: number[], g: number[]) => macro_f1(p, g), mcc, pearson, spearman];
  for (const metric of all) {
    assertThrows(() => metric([0, 1, 1], [0, 1]), Error, "pred has 3 values but gold has 2");
    assertThrows(() => metric([], []), Error, "no examples");
  }
  assertThrows(() => accuracy([0, 0.5], [0, 1]), Error, "accuracy: pred[1] is 0.5");
  assertThrows(() => mcc([0, 1], [0, NaN]), Error, "mcc: gold[1] is NaN");
  assertThrows(() => f1([0, 1], [0, 1.5]), Error, "not an integer class id");
  assertThrows(() => computeMetrics(["accuracy"], [0], [0, 1]), Error, "accuracy:");
});

/*
The script that printed the expected values (scikit-learn 1.2.1, SciPy 1.10.1, NumPy 1.24.2;
`apt-get install -y python3-scipy python3-sklearn`, then `/usr/bin/python3 this_script.py`):

import json, warnings
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

warnings.simplefilter("ignore")  # zero-division and constant-input warnings are expected

def cls(pred, gold):
    return {
        "accuracy": accuracy_score(gold, pred),
        "f1": f1_score(gold, pred) if len(set(gold) | set(pred)) <= 2 else None,
        "macro_f1": f1_score(gold, pred, average="macro"),
        "mcc": matthews_corrcoef(gold, pred),
    }

def reg(pred, gold):
    try:
        r = pearsonr(pred, gold)[0]
    except ValueError:
        r = None  # scipy raises: too short, or a NaN or infinity
    return {"pearson": r, "spearman": spearmanr(pred, gold)[0]}

def show(name, d):
    print(name, json.dumps({k: (None if v is None else repr(float(v))) for k, v in d.items()}))

gold = [0, 1, 1, 0, 1, 0, 0, 1]
show("perfect", cls(gold, gold))
show("all_wrong", cls([1 - g for g in gold], gold))
show("no_pos_pred", cls([0, 0, 0, 0, 0], [1, 0, 1, 0, 0]))
show("all_neg", cls([0, 0, 0], [0, 0, 0]))
show("gold_const", cls([1, 0, 1, 0], [1, 1, 1, 1]))
show("minus1", cls([-1, 1, 1, -1, 1], [-1, 1, -1, -1, 1]))
show("three_never2", cls([0, 1, 1, 0, 1, 0, 1, 0, 0], [0, 1, 2, 0, 2, 1, 1, 0, 2]))
print("labels012_absent2",
      repr(f1_score([0, 1, 1, 0], [0, 1, 0, 0], average="macro", labels=[0, 1, 2])))
print("labels01_extra3",
      repr(f1_score([0, 3, 1, 0, 1], [0, 1, 1, 3, 0], average="macro", labels=[0, 1])))

show("reg_linear", reg([1.0, 2.0, 3.0, 4.0, 5.0], [2.5, 4.5, 6.5, 8.5, 10.5]))
show("reg_neg", reg([1.0, 2.0, 3.0, 4.0], [4.0, 1.0, -2.0, -5.0]))
show("reg_monotone", reg([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 4.0, 9.0, 16.0, 100.0]))
show("reg_ties", reg([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 5.0], [0.5, 0.5, 1.0, 2.0, 1.0, 3.0, 3.0]))
show("reg_const", reg([1.0, 2.0, 3.0], [0.7, 0.7, 0.7]))
show("reg_n2", reg([3.0, 1.0], [0.2, 0.9]))
show("reg_n1", reg([3.0], [0.2]))
show("reg_offset", reg([1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.4, 1e9 + 0.3], [5.0, 6.0, 8.5, 6.5]))

rng = np.random.RandomState(2024)
gold3 = rng.randint(0, 3, 50).tolist()
pred3 = [g if rng.rand() < 0.6 else int(rng.randint(0, 3)) for g in gold3]
gold2 = rng.randint(0, 2, 50).tolist()
pred2 = [g if rng.rand() < 0.7 else 1 - g for g in gold2]
xs = np.round(rng.uniform(0, 5, 50), 2).tolist()
ys = np.round(np.array(xs) * 0.8 + rng.normal(0, 1, 50), 2).tolist()
xt = np.round(rng.uniform(0, 5, 50)).tolist()  # rounded to integers: many ties
print("gold3", gold3); print("pred3", pred3)
print("gold2", gold2); print("pred2", pred2)
print("xs", xs); print("ys", ys); print("xt", xt)
show("random3", cls(pred3, gold3))
show("random2", cls(pred2, gold2))
show("random_reg", reg(xs, ys))
show("random_ties", reg(xt, ys))
show("reg_inf", reg([1.0, float("inf"), 3.0, 0.0], [1.0, 2.0, 3.0, 4.0]))
show("reg_nan", reg([1.0, float("nan"), 3.0], [1.0, 2.0, 4.0]))
*/
