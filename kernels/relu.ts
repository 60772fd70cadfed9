// ReLU, forward and backward, elementwise over tensors of any shape.

import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

const RELU_FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { count: u32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) {
    let v = x[i];
    // select, not max: max(NaN, 0) may give 0 on some drivers, hiding a NaN that torch keeps.
    out[i] = select(0.0, v, !(v <= 0.0));
  }
}
`;

// The gradient is 0 where x <= 0 (torch's choice at 0). out > 0 exactly where x > 0, so the
// forward output serves as well as its input.
const RELU_BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dOut: array<f32>;
@group(0) @binding(2) var<storage, read_write> dX: array<f32>;
struct Params { count: u32 }
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) { dX[i] = select(0.0, dOut[i], x[i] > 0.0); }
}
`;

function grid(rec: Recorder, n: number): [number, number] {
  return grid1d(n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

/** Records `out = max(x, 0)` (NaN stays NaN). */
export function reluForward(rec: Recorder, args: { x: Tensor; out: Tensor }): void {
  const op = "reluForward";
  const { x, out } = args;
  expectShape(op, "x", x, x.shape, "f32");
  expectShape(op, "out", out, x.shape, "f32");
  expectBindable(op, "x", x);
  expectBindable(op, "out", out);
  const n = x.numel;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, RELU_FORWARD_WGSL),
    [x, out],
    grid(rec, n),
    new Uint32Array([n]),
  );
}

/**
 * Records `dX = x > 0 ? dOut : 0`. `x` may be the forward input or its output (the mask is the
 * same).
 */
export function reluBackward(
  rec: Recorder,
  args: { x: Tensor; dOut: Tensor; dX: Tensor },
): void {
  const op = "reluBackward";
  const { x, dOut, dX } = args;
  expectShape(op, "x", x, x.shape, "f32");
  expectShape(op, "dOut", dOut, x.shape, "f32");
  expectShape(op, "dX", dX, x.shape, "f32");
  expectBindable(op, "x", x);
  expectBindable(op, "dOut", dOut);
  expectBindable(op, "dX", dX);
  const n = x.numel;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, RELU_BACKWARD_WGSL),
    [x, dOut, dX],
    grid(rec, n),
    new Uint32Array([n]),
  );
}
