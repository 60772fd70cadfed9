// Elementwise sums: the residual connection (`add`), gradient accumulation (`addInPlace`) and
// scaling by a constant (`scale`). Tensors of any shape and size; launches past 65535
// workgroups spread over a 2-D grid.

import { elementwiseKernel, recordElementwise } from "./elementwise.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

const ADD = elementwiseKernel({
  inputs: ["a", "b"],
  output: "out",
  body: /* wgsl */ `out[i] = a[i] + b[i];`,
});

// WebGPU refuses one buffer bound both read-only and read_write in a dispatch, so `into += x`
// reads `into` through its own read_write binding.
const ADD_IN_PLACE = elementwiseKernel({
  inputs: ["x"],
  output: "into",
  body: /* wgsl */ `into[i] = into[i] + x[i];`,
});

const SCALE = elementwiseKernel({
  inputs: ["x"],
  output: "out",
  params: "alpha: f32",
  body: /* wgsl */ `out[i] = params.alpha * x[i];`,
});

/** Records `out = a + b` elementwise (a, b and out of one shape; out distinct from a and b). */
export function add(rec: Recorder, args: { a: Tensor; b: Tensor; out: Tensor }): void {
  const { a, b, out } = args;
  recordElementwise(rec, "add", ADD, { a, b, out });
}

/** Records `into += x` elementwise (same shape). */
export function addInPlace(rec: Recorder, args: { x: Tensor; into: Tensor }): void {
  const { x, into } = args;
  // `into` first: it sets the shape that `x` must have.
  recordElementwise(rec, "addInPlace", ADD_IN_PLACE, { into, x });
}

/** Records `out = alpha * x` elementwise (same shape; out distinct from x). */
export function scale(rec: Recorder, args: { x: Tensor; out: Tensor; alpha: number }): void {
  const { x, out, alpha } = args;
  recordElementwise(rec, "scale", SCALE, { x, out }, [alpha]);
}
