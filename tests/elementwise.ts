// Shared by the tests of unary elementwise ops (GELU, ReLU), whose launchers have one shape.

import { withLimits } from "./gpu_fixture.ts";
import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

/** A unary op's pair of launchers, e.g. { forward: geluForward, backward: geluBackward }. */
export interface UnaryOp {
  forward: (rec: Recorder, args: { x: Tensor; out: Tensor }) => void;
  backward: (rec: Recorder, args: { x: Tensor; dOut: Tensor; dX: Tensor }) => void;
}

/**
 * Runs `op` forward (x → out) and backward (x, dOut → dX) once on 1-D tensors of `xs` and
 * `dOuts`, out and dX poisoned with NaN first, and downloads both. `limits` are applied to the
 * GPU that the launches are recorded with (e.g. a lowered maxComputeWorkgroupsPerDimension).
 */
export async function runUnary(
  gpu: Gpu,
  op: UnaryOp,
  xs: Float32Array,
  dOuts: Float32Array,
  limits: Parameters<typeof withLimits>[1] = {},
): Promise<{ out: Float32Array; dX: Float32Array }> {
  const n = xs.length;
  const x = tensorFromArray(gpu, xs, [n], "x");
  const dOut = tensorFromArray(gpu, dOuts, [n], "dOut");
  const out = createTensor(gpu, [n], "f32", "out");
  const dX = createTensor(gpu, [n], "f32", "dX");
  const rec = new Recorder(Object.keys(limits).length > 0 ? withLimits(gpu, limits) : gpu);
  fill(rec, out, NaN);
  fill(rec, dX, NaN);
  op.forward(rec, { x, out });
  op.backward(rec, { x, dOut, dX });
  await rec.submit();
  const result = {
    out: await out.download() as Float32Array,
    dX: await dX.download() as Float32Array,
  };
  for (const t of [x, dOut, out, dX]) t.destroy();
  return result;
}
