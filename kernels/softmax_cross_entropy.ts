// Softmax cross-entropy over class logits, mean over the batch, as
// torch.nn.functional.cross_entropy(logits, targets) (reduction "mean", no ignore_index, no label
// smoothing), and its gradient with respect to the logits.
//
// Per row, with m the row maximum at column a: loss = (m − x[target]) + log(1 + r), where
// r = Σ_{c≠a} exp(x[c] − m). Writing log-sum-exp as m + log1p(r) rather than m + log(Σ) keeps a
// confidently right row's tiny loss (r ≪ 1) accurate instead of rounding it to 0, and log1p is
// computed by its atanh series because WGSL only promises log an absolute error of 2^-21 near 1.
// The gradient uses the same r: softmax(a) − 1 = −r / (1 + r) without cancellation.
//
// Meant for classification heads (C small): the forward is one workgroup, each invocation
// summing whole rows, then a fixed-order tree over the workgroup, so the mean is deterministic;
// the backward is one invocation per row (kernels/batch_mean.ts has both frames and launches).
// Only for small C: llvmpipe (lavapipe) stops an invocation after 65,535 loop iterations in all
// and keeps what it had, so this kernel is right there while ⌈B/256⌉·2C + 8 stays below that
// (C = 3: B up to ~2.8 million). A vocabulary-sized softmax (the MLM head) has its own kernel,
// kernels/vocab_cross_entropy.ts, a workgroup per row.

import {
  batchGradientWgsl,
  batchMeanWgsl,
  expectGradScale,
  recordBatchGradient,
  recordBatchMean,
} from "./batch_mean.ts";
import { GpuError } from "./device.ts";
import { LOG1P_WGSL } from "./log1p.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

/** Quiet NaN, the loss and gradient of a row whose target is not a class. */
const NAN_BITS = 0x7fc00000;

const PARAMS = "c: u32, nanBits: u32";

/** WGSL shared by both kernels: a row's maximum m, at column a, and r = Σ_{c≠a} exp(x[c] − m). */
const ROW_WGSL = /* wgsl */ `
struct Row { m: f32, a: u32, rest: f32 }

fn rowStats(base: u32, classes: u32) -> Row {
  var m = logits[base];
  var a = 0u;
  for (var j = 1u; j < classes; j++) {
    let x = logits[base + j];
    if (x > m) { m = x; a = j; }
  }
  var rest = 0.0;
  for (var j = 0u; j < classes; j++) {
    if (j != a) { rest += exp(logits[base + j] - m); }
  }
  return Row(m, a, rest);
}
`;

const FORWARD_WGSL = batchMeanWgsl({
  targets: "u32",
  params: PARAMS,
  exampleLoss: /* wgsl */ `
${LOG1P_WGSL}
${ROW_WGSL}
fn exampleLoss(r: u32) -> f32 {
  let classes = params.c;
  let base = r * classes;
  let want = targets[r];
  if (want >= classes) { return bitcast<f32>(params.nanBits); }
  let row = rowStats(base, classes);
  return (row.m - logits[base + want]) + log1pNonNegative(row.rest);
}`,
});

const BACKWARD_WGSL = batchGradientWgsl({
  targets: "u32",
  params: PARAMS,
  helpers: ROW_WGSL,
  body: /* wgsl */ `
  let classes = params.c;
  let base = r * classes;
  let want = targets[r];
  if (want >= classes) {
    for (var j = 0u; j < classes; j++) { dLogits[base + j] = bitcast<f32>(params.nanBits); }
    return;
  }
  let row = rowStats(base, classes);
  let total = 1.0 + row.rest;
  for (var j = 0u; j < classes; j++) {
    var g: f32;
    if (j == row.a) {
      g = select(1.0 / total, -row.rest / total, j == want);
    } else {
      // softmax(j) <= softmax(a) <= 1/2 here, so subtracting the target is well conditioned.
      g = exp(logits[base + j] - row.m) / total - select(0.0, 1.0, j == want);
    }
    dLogits[base + j] = g * params.scale;
  }`,
});

function checkArgs(op: string, logits: Tensor, targets: Tensor): [number, number] {
  expectShape(op, "logits", logits, [-1, -1], "f32");
  const [b, c] = logits.shape;
  expectShape(op, "targets", targets, [b], "u32");
  if (b === 0 || c === 0) {
    throw new GpuError(`${op}: logits ("${logits.label}") [${b}, ${c}] is empty`);
  }
  expectBindable(op, "logits", logits);
  expectBindable(op, "targets", targets);
  return [b, c];
}

/**
 * Records loss[0] = mean over rows of −log softmax(logits[b])[targets[b]]. A target outside
 * [0, C) makes the loss NaN (it is never read out of bounds).
 */
export function softmaxCrossEntropyForward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; loss: Tensor },
): void {
  const op = "softmaxCrossEntropyForward";
  const [b, c] = checkArgs(op, args.logits, args.targets);
  recordBatchMean(rec, op, FORWARD_WGSL, args, b, [c, NAN_BITS]);
}

/**
 * Records dLogits = gradScale · (softmax(logits) − onehot(targets)) / B, the gradient of the mean
 * loss (times a loss-scaling factor, default 1). A row whose target is not a class gets NaN.
 */
export function softmaxCrossEntropyBackward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; dLogits: Tensor; gradScale?: number },
): void {
  const op = "softmaxCrossEntropyBackward";
  const [b, c] = checkArgs(op, args.logits, args.targets);
  expectGradScale(op, args.gradScale);
  const scale = (args.gradScale ?? 1) / b;
  recordBatchGradient(rec, op, BACKWARD_WGSL, args, b, [c, NAN_BITS], scale);
}
