// Binary cross-entropy on one logit per example, mean over the batch, as
// torch.nn.functional.binary_cross_entropy_with_logits(x, y) (reduction "mean"), and its gradient.
//
// Per example, with z = exp(−|x|): loss = max(x, 0) − x·y + log1p(z), the form that never
// overflows; log1p is kernels/log1p.ts's (z ≤ 1 here, so always its atanh series). The gradient
// sigmoid(x) − y is formed as (1 − y) − z/(1 + z) for x >= 0 (exact for y = 1, where the naive
// form cancels to 0) and z/(1 + z) − y for x < 0. Targets may be soft (any value in [0, 1]).
// The batch mean and the launches are kernels/batch_mean.ts's.

import {
  batchGradientWgsl,
  batchMeanWgsl,
  checkOneOutputPerExample,
  expectGradScale,
  recordBatchGradient,
  recordBatchMean,
} from "./batch_mean.ts";
import { LOG1P_WGSL } from "./log1p.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

const FORWARD_WGSL = batchMeanWgsl({
  targets: "f32",
  exampleLoss: /* wgsl */ `
${LOG1P_WGSL}
fn exampleLoss(r: u32) -> f32 {
  let x = logits[r];
  return (max(x, 0.0) - x * targets[r]) + log1pNonNegative(exp(-abs(x)));
}`,
});

const BACKWARD_WGSL = batchGradientWgsl({
  targets: "f32",
  body: /* wgsl */ `
  let x = logits[r];
  let y = targets[r];
  let z = exp(-abs(x));
  let q = z / (1.0 + z);
  var g: f32;
  if (x >= 0.0) { g = (1.0 - y) - q; } else { g = q - y; }
  dLogits[r] = g * params.scale;`,
});

/** Records loss[0] = mean over the batch of max(x, 0) − x·y + log(1 + exp(−|x|)). */
export function bceWithLogitsForward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; loss: Tensor },
): void {
  const op = "bceWithLogitsForward";
  const b = checkOneOutputPerExample(op, args.logits, args.targets);
  recordBatchMean(rec, op, FORWARD_WGSL, args, b);
}

/**
 * Records dLogits = gradScale · (sigmoid(x) − y) / B, the gradient of the mean loss (times a
 * loss-scaling factor, default 1). dLogits has the shape of logits.
 */
export function bceWithLogitsBackward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; dLogits: Tensor; gradScale?: number },
): void {
  const op = "bceWithLogitsBackward";
  const b = checkOneOutputPerExample(op, args.logits, args.targets);
  expectGradScale(op, args.gradScale);
  recordBatchGradient(rec, op, BACKWARD_WGSL, args, b, [], (args.gradScale ?? 1) / b);
}
