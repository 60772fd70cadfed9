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
// the backward is one invocation per row.

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

/** Quiet NaN, the loss and gradient of a row whose target is not a class. */
const NAN_BITS = 0x7fc00000;

/** log(1 + z) for z >= 0, accurate to a few ulps for small z. Shared by both kernels. */
const LOG1P_WGSL = /* wgsl */ `
fn log1pNonNegative(z: f32) -> f32 {
  if (z > 1.0) { return log(1.0 + z); }
  // log1p(z) = 2·atanh(s), s = z / (2 + z) <= 1/3: the series converges by 1/9 per term.
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
`;

const FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
struct Params { b: u32, c: u32, nanBits: u32 }
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, ${WORKGROUP}>;

${LOG1P_WGSL}

fn rowLoss(r: u32) -> f32 {
  let classes = params.c;
  let base = r * classes;
  let want = targets[r];
  if (want >= classes) { return bitcast<f32>(params.nanBits); }
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
  return (m - logits[base + want]) + log1pNonNegative(rest);
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var r = lid; r < params.b; r += ${WORKGROUP}u) { s += rowLoss(r); }
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
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> dLogits: array<f32>;
struct Params { b: u32, c: u32, nanBits: u32, scale: f32 }
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = ${flatIndex(WORKGROUP)};
  if (r >= params.b) { return; }
  let classes = params.c;
  let base = r * classes;
  let want = targets[r];
  if (want >= classes) {
    for (var j = 0u; j < classes; j++) { dLogits[base + j] = bitcast<f32>(params.nanBits); }
    return;
  }
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
  let total = 1.0 + rest;
  for (var j = 0u; j < classes; j++) {
    var g: f32;
    if (j == a) {
      g = select(1.0 / total, -rest / total, j == want);
    } else {
      // softmax(j) <= softmax(a) <= 1/2 here, so subtracting the target is well conditioned.
      g = exp(logits[base + j] - m) / total - select(0.0, 1.0, j == want);
    }
    dLogits[base + j] = g * params.scale;
  }
}
`;

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
  const { logits, targets, loss } = args;
  const [b, c] = checkArgs(op, logits, targets);
  expectShape(op, "loss", loss, [1], "f32");
  expectBindable(op, "loss", loss);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, FORWARD_WGSL),
    [logits, targets, loss],
    1,
    new Uint32Array([b, c, NAN_BITS]),
  );
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
  const { logits, targets, dLogits } = args;
  const [b, c] = checkArgs(op, logits, targets);
  expectShape(op, "dLogits", dLogits, [b, c], "f32");
  expectBindable(op, "dLogits", dLogits);
  const uniforms = new Uint32Array([b, c, NAN_BITS, 0]);
  new Float32Array(uniforms.buffer)[3] = (args.gradScale ?? 1) / b;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, BACKWARD_WGSL),
    [logits, targets, dLogits],
    grid1d(b, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    uniforms,
  );
}
