// Mean squared error on one output per example (regression heads, e.g. STS-B), as
// torch.nn.functional.mse_loss(x, y) (reduction "mean"), and its gradient 2(x − y)/B.
// The batch mean and the launches are kernels/batch_mean.ts's.

import {
  batchGradientWgsl,
  batchMeanWgsl,
  checkOneOutputPerExample,
  expectGradScale,
  recordBatchGradient,
  recordBatchMean,
} from "./batch_mean.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

const FORWARD_WGSL = batchMeanWgsl({
  targets: "f32",
  exampleLoss: /* wgsl */ `
fn exampleLoss(r: u32) -> f32 {
  let d = logits[r] - targets[r];
  return d * d;
}`,
});

const BACKWARD_WGSL = batchGradientWgsl({
  targets: "f32",
  body: /* wgsl */ `dLogits[r] = (logits[r] - targets[r]) * params.scale;`,
});

/** Records loss[0] = mean over the batch of (x − y)², x the model's single output. */
export function mseForward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; loss: Tensor },
): void {
  const op = "mseForward";
  const b = checkOneOutputPerExample(op, args.logits, args.targets);
  recordBatchMean(rec, op, FORWARD_WGSL, args, b);
}

/**
 * Records dLogits = gradScale · 2(x − y) / B, the gradient of the mean loss (times a
 * loss-scaling factor, default 1). dLogits has the shape of logits.
 */
export function mseBackward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; dLogits: Tensor; gradScale?: number },
): void {
  const op = "mseBackward";
  const b = checkOneOutputPerExample(op, args.logits, args.targets);
  expectGradScale(op, args.gradScale);
  recordBatchGradient(rec, op, BACKWARD_WGSL, args, b, [], (2 * (args.gradScale ?? 1)) / b);
}
