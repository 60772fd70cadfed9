// Mean squared error on one output per example (regression heads, e.g. STS-B), as
// torch.nn.functional.mse_loss(x, y) (reduction "mean"), and its gradient 2(x − y)/B.
//
// The forward is one workgroup, each invocation summing a fixed stride of examples, then a
// fixed-order tree over the workgroup, so the mean is deterministic.

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

const FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> predictions: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
struct Params { b: u32 }
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var r = lid; r < params.b; r += ${WORKGROUP}u) {
    let d = predictions[r] - targets[r];
    s += d * d;
  }
  partial[lid] = s;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) { partial[lid] = partial[lid] + partial[lid + stride]; }
    workgroupBarrier();
  }
  if (lid == 0u) { loss[0] = partial[0] / f32(params.b); }
}
`;

const BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> predictions: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> dPredictions: array<f32>;
struct Params { b: u32, scale: f32 }
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = ${flatIndex(WORKGROUP)};
  if (r >= params.b) { return; }
  dPredictions[r] = (predictions[r] - targets[r]) * params.scale;
}
`;

/** B of logits shaped [B] or [B, 1]; targets must be [B] f32. */
function checkArgs(op: string, logits: Tensor, targets: Tensor): number {
  const s = logits.shape;
  if (!((s.length === 1) || (s.length === 2 && s[1] === 1))) {
    throw new GpuError(
      `${op}: logits ("${logits.label}") has shape [${s.join(", ")}], expected [B] or [B, 1]`,
    );
  }
  expectShape(op, "logits", logits, s, "f32");
  const b = s[0];
  expectShape(op, "targets", targets, [b], "f32");
  if (b === 0) throw new GpuError(`${op}: logits ("${logits.label}") is an empty batch`);
  expectBindable(op, "logits", logits);
  expectBindable(op, "targets", targets);
  return b;
}

/** Records loss[0] = mean over the batch of (x − y)², x the model's single output. */
export function mseForward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; loss: Tensor },
): void {
  const op = "mseForward";
  const { logits, targets, loss } = args;
  const b = checkArgs(op, logits, targets);
  expectShape(op, "loss", loss, [1], "f32");
  expectBindable(op, "loss", loss);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, FORWARD_WGSL),
    [logits, targets, loss],
    1,
    new Uint32Array([b]),
  );
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
  const { logits, targets, dLogits } = args;
  const b = checkArgs(op, logits, targets);
  expectShape(op, "dLogits", dLogits, logits.shape, "f32");
  expectBindable(op, "dLogits", dLogits);
  const uniforms = new Uint32Array([b, 0]);
  new Float32Array(uniforms.buffer)[1] = (2 * (args.gradScale ?? 1)) / b;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, BACKWARD_WGSL),
    [logits, targets, dLogits],
    grid1d(b, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    uniforms,
  );
}
