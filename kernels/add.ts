// Elementwise sums: the residual connection (`add`), gradient accumulation (`addInPlace`) and
// scaling by a constant (`scale`). Tensors of any shape and size; launches past 65535
// workgroups spread over a 2-D grid.

import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

const ADD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct Params { count: u32 }
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) { out[i] = a[i] + b[i]; }
}
`;

// WebGPU refuses one buffer bound both read-only and read_write in a dispatch, so `into += x`
// reads `into` through its own read_write binding.
const ADD_IN_PLACE_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> into: array<f32>;
struct Params { count: u32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) { into[i] = into[i] + x[i]; }
}
`;

const SCALE_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { count: u32, alpha: f32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) { out[i] = params.alpha * x[i]; }
}
`;

function grid(rec: Recorder, n: number): [number, number] {
  return grid1d(n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

/** Records `out = a + b` elementwise (a, b and out of one shape; out distinct from a and b). */
export function add(rec: Recorder, args: { a: Tensor; b: Tensor; out: Tensor }): void {
  const op = "add";
  const { a, b, out } = args;
  expectShape(op, "a", a, a.shape, "f32");
  expectShape(op, "b", b, a.shape, "f32");
  expectShape(op, "out", out, a.shape, "f32");
  expectBindable(op, "a", a);
  expectBindable(op, "b", b);
  expectBindable(op, "out", out);
  const n = a.numel;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, ADD_WGSL),
    [a, b, out],
    grid(rec, n),
    new Uint32Array([n]),
  );
}

/** Records `into += x` elementwise (same shape). */
export function addInPlace(rec: Recorder, args: { x: Tensor; into: Tensor }): void {
  const op = "addInPlace";
  const { x, into } = args;
  expectShape(op, "into", into, into.shape, "f32");
  expectShape(op, "x", x, into.shape, "f32");
  expectBindable(op, "x", x);
  expectBindable(op, "into", into);
  const n = into.numel;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, ADD_IN_PLACE_WGSL),
    [x, into],
    grid(rec, n),
    new Uint32Array([n]),
  );
}

/** Records `out = alpha * x` elementwise (same shape; out distinct from x). */
export function scale(rec: Recorder, args: { x: Tensor; out: Tensor; alpha: number }): void {
  const op = "scale";
  const { x, out, alpha } = args;
  expectShape(op, "x", x, x.shape, "f32");
  expectShape(op, "out", out, x.shape, "f32");
  expectBindable(op, "x", x);
  expectBindable(op, "out", out);
  const n = x.numel;
  const params = new Uint32Array(2);
  params[0] = n;
  new Float32Array(params.buffer)[1] = alpha;
  rec.dispatch(op, getPipeline(rec.gpu, op, SCALE_WGSL), [x, out], grid(rec, n), params);
}
