// The frame shared by the losses that average over a batch (binary cross-entropy, MSE, softmax
// cross-entropy): their forward kernel, the deterministic batch mean, and their gradient kernel,
// one invocation per example, with the launches. A loss file supplies its per-example WGSL and
// its argument checks.
//
// Both kernels bind logits (0, f32), targets (1, f32 or u32), their output (2: `loss` [1] or
// `dLogits`, shaped like logits) and a uniform (3) that starts with the batch size `b`. The
// forward is one workgroup, each invocation summing a fixed stride of examples, then a
// fixed-order tree over the workgroup, so the mean is deterministic.

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

/** What a loss kernel binds and reads: the targets' element type and u32 uniforms after `b`. */
interface LossBindings {
  targets: "f32" | "u32";
  /** WGSL fields after `b` (e.g. "c: u32"), given in that order to the launchers. */
  params?: string;
}

function declarations(spec: LossBindings, output: string, lastField?: string): string {
  const fields = ["b: u32", spec.params, lastField].filter((f) => f !== undefined);
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<${spec.targets}>;
@group(0) @binding(2) var<storage, read_write> ${output}: array<f32>;
struct Params { ${fields.join(", ")} }
@group(0) @binding(3) var<uniform> params: Params;
`;
}

/**
 * The forward kernel: loss[0] = Σ exampleLoss(r) / b over the examples r < b. `exampleLoss` is
 * WGSL defining `fn exampleLoss(r: u32) -> f32` (and any helpers it calls).
 */
export function batchMeanWgsl(spec: LossBindings & { exampleLoss: string }): string {
  return /* wgsl */ `
${declarations(spec, "loss")}
var<workgroup> partial: array<f32, ${WORKGROUP}>;
${spec.exampleLoss}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var r = lid; r < params.b; r += ${WORKGROUP}u) { s += exampleLoss(r); }
  partial[lid] = s;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) { partial[lid] = partial[lid] + partial[lid + stride]; }
    workgroupBarrier();
  }
  if (lid == 0u) { loss[0] = partial[0] / f32(params.b); }
}
`;
}

/**
 * The gradient kernel: `body` is WGSL writing dLogits of example `r` (< b), scaled by
 * `params.scale` (the launcher's gradient scale over b, and any constant factor); `helpers` is
 * WGSL it calls.
 */
export function batchGradientWgsl(
  spec: LossBindings & { helpers?: string; body: string },
): string {
  return /* wgsl */ `
${declarations(spec, "dLogits", "scale: f32")}
${spec.helpers ?? ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = ${flatIndex(WORKGROUP)};
  if (r >= params.b) { return; }
  ${spec.body}
}
`;
}

/**
 * Records the forward kernel `code` into `loss` ([1] f32), logits and targets already checked.
 * `params` are its u32 uniforms after b.
 */
export function recordBatchMean(
  rec: Recorder,
  op: string,
  code: string,
  args: { logits: Tensor; targets: Tensor; loss: Tensor },
  b: number,
  params: readonly number[] = [],
): void {
  const { logits, targets, loss } = args;
  expectShape(op, "loss", loss, [1], "f32");
  expectBindable(op, "loss", loss);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, code),
    [logits, targets, loss],
    1,
    new Uint32Array([b, ...params]),
  );
}

/** Throws unless a loss gradient's `gradScale` (a loss-scaling factor) is a finite number. */
export function expectGradScale(op: string, gradScale: number | undefined): void {
  if (gradScale !== undefined && !Number.isFinite(gradScale)) {
    throw new GpuError(`${op}: gradScale must be a finite number, got ${gradScale}`);
  }
}

/**
 * Records the gradient kernel `code` into `dLogits` (shaped like logits), logits and targets
 * already checked. `params` are its u32 uniforms after b; `scale` its last, f32, uniform.
 */
export function recordBatchGradient(
  rec: Recorder,
  op: string,
  code: string,
  args: { logits: Tensor; targets: Tensor; dLogits: Tensor },
  b: number,
  params: readonly number[],
  scale: number,
): void {
  const { logits, targets, dLogits } = args;
  expectShape(op, "dLogits", dLogits, logits.shape, "f32");
  expectBindable(op, "dLogits", dLogits);
  const uniforms = new Uint32Array([b, ...params, 0]);
  new Float32Array(uniforms.buffer)[uniforms.length - 1] = scale;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, code),
    [logits, targets, dLogits],
    grid1d(b, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    uniforms,
  );
}

/**
 * Checks the arguments of a loss on one output per example: logits [B] or [B, 1] and targets
 * [B], both f32, B > 0. Returns B.
 */
export function checkOneOutputPerExample(op: string, logits: Tensor, targets: Tensor): number {
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
