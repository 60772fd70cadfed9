// ReLU, forward and backward, elementwise over tensors of any shape.

import { elementwiseKernel, recordElementwise } from "./elementwise.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

const RELU_FORWARD = elementwiseKernel({
  inputs: ["x"],
  output: "out",
  body: /* wgsl */ `
    let v = x[i];
    // select, not max: max(NaN, 0) may give 0 on some drivers, hiding a NaN that torch keeps.
    out[i] = select(0.0, v, !(v <= 0.0));`,
});

// The gradient is 0 where x <= 0 (torch's choice at 0). out > 0 exactly where x > 0, so the
// forward output serves as well as its input.
const RELU_BACKWARD = elementwiseKernel({
  inputs: ["x", "dOut"],
  output: "dX",
  body: /* wgsl */ `dX[i] = select(0.0, dOut[i], x[i] > 0.0);`,
});

/** Records `out = max(x, 0)` (NaN stays NaN). */
export function reluForward(rec: Recorder, args: { x: Tensor; out: Tensor }): void {
  const { x, out } = args;
  recordElementwise(rec, "reluForward", RELU_FORWARD, { x, out });
}

/**
 * Records `dX = x > 0 ? dOut : 0`. `x` may be the forward input or its output (the mask is the
 * same).
 */
export function reluBackward(
  rec: Recorder,
  args: { x: Tensor; dOut: Tensor; dX: Tensor },
): void {
  const { x, dOut, dX } = args;
  recordElementwise(rec, "reluBackward", RELU_BACKWARD, { x, dOut, dX });
}
