// Binary cross-entropy on one logit per example, mean over the batch, as
// torch.nn.functional.binary_cross_entropy_with_logits(x, y) (reduction "mean"), and its gradient.
//
// Per example, with z = exp(−|x|): loss = max(x, 0) − x·y + log1p(z), the form that never
// overflows; log1p is computed by its atanh series because WGSL only promises log an absolute
// error of 2^-21 near 1, which would swamp a confident example's tiny loss. The gradient
// sigmoid(x) − y is formed as (1 − y) − z/(1 + z) for x >= 0 (exact for y = 1, where the naive
// form cancels to 0) and z/(1 + z) − y for x < 0. Targets may be soft (any value in [0, 1]).
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
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
struct Params { b: u32 }
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, ${WORKGROUP}>;

// log(1 + z) for z in [0, 1]: 2·atanh(s), s = z / (2 + z) <= 1/3, the series converging by 1/9.
fn log1pUnit(z: f32) -> f32 {
  let s = z / (2.0 + z);
  let s2 = s * s;
  var p = 2.0 / 19.0;
  p = 2.0 / 17.0 + s2 * p;
  p = 2.0 / 15.0 + s2 * p;
  p = 2.0 / 13.0 + s2 * p;
  p = 2.0 / 11.0 + s2 * p;
  p = 2.0 / 9.0 + s2 * p;
  p = 2.0 / 7.0 + s2 * p;
  p = 2.0 / 5.0 + s2 * p;
  p = 2.0 / 3.0 + s2 * p;
  p = 2.0 + s2 * p;
  return s * p;
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var r = lid; r < params.b; r += ${WORKGROUP}u) {
    let x = logits[r];
    s += (max(x, 0.0) - x * targets[r]) + log1pUnit(exp(-abs(x)));
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
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> dLogits: array<f32>;
struct Params { b: u32, scale: f32 }
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = ${flatIndex(WORKGROUP)};
  if (r >= params.b) { return; }
  let x = logits[r];
  let y = targets[r];
  let z = exp(-abs(x));
  let q = z / (1.0 + z);
  var g: f32;
  if (x >= 0.0) { g = (1.0 - y) - q; } else { g = q - y; }
  dLogits[r] = g * params.scale;
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

/** Records loss[0] = mean over the batch of max(x, 0) − x·y + log(1 + exp(−|x|)). */
export function bceWithLogitsForward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; loss: Tensor },
): void {
  const op = "bceWithLogitsForward";
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
 * Records dLogits = gradScale · (sigmoid(x) − y) / B, the gradient of the mean loss (times a
 * loss-scaling factor, default 1). dLogits has the shape of logits.
 */
export function bceWithLogitsBackward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; dLogits: Tensor; gradScale?: number },
): void {
  const op = "bceWithLogitsBackward";
  const { logits, targets, dLogits } = args;
  const b = checkArgs(op, logits, targets);
  expectShape(op, "dLogits", dLogits, logits.shape, "f32");
  expectBindable(op, "dLogits", dLogits);
  const uniforms = new Uint32Array([b, 0]);
  new Float32Array(uniforms.buffer)[1] = (args.gradScale ?? 1) / b;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, BACKWARD_WGSL),
    [logits, targets, dLogits],
    grid1d(b, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    uniforms,
  );
}
