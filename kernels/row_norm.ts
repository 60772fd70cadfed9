// Per-row L2 norms ‖x_i‖₂ of a [rows, cols] matrix, for analysis (e.g. how far each embedding
// row moved). One workgroup per row: each thread adds every 64th element of the row in order,
// then a fixed tree joins the 64 partial sums, so the result is deterministic and its relative
// error is at most about (cols/64 + 7) · 2^-24 (≈ 1.1e-6 for cols = 768).
//
// The same kernel with a second input gives ‖a_i − b_i‖₂ (kernels/distance.ts).

import { bindElements, rowSlices } from "./binding_slices.ts";
import { fill } from "./fill.ts";
import { grid1d } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 64;

function rowNormWgsl(diff: boolean): string {
  const yBinding = diff ? `@group(0) @binding(1) var<storage, read> y: array<f32>;` : "";
  const value = diff ? `x[xRow + c] - y[yRow + c]` : `x[xRow + c]`;
  const outBinding = diff ? 2 : 1;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
${yBinding}
@group(0) @binding(${outBinding}) var<storage, read_write> out: array<f32>;
struct Params { rows: u32, cols: u32, xBase: u32, yBase: u32, outBase: u32 }
@group(0) @binding(${outBinding + 1}) var<uniform> params: Params;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
  let xRow = params.xBase + row * params.cols;
  let yRow = params.yBase + row * params.cols;
  var s = 0.0;
  for (var c = lid.x; c < params.cols; c += ${WORKGROUP}u) {
    let d = ${value};
    s += d * d;
  }
  sums[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lid.x < w) { sums[lid.x] += sums[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { out[params.outBase + row] = sqrt(sums[0]); }
}
`;
}

const rowNormSource = cachedSource(rowNormWgsl);

/**
 * Records out[i] = ‖x_i − y_i‖₂ (or ‖x_i‖₂ without `y`) for the rows of `x`, shapes already
 * checked. Matrices beyond one storage binding are processed in binding-sized blocks of rows.
 */
export function recordRowNorms(
  rec: Recorder,
  op: string,
  x: Tensor,
  y: Tensor | null,
  out: Tensor,
): void {
  const gpu = rec.gpu;
  const [rows, cols] = x.shape;
  expectBindable(op, "out", out);
  if (rows === 0) return;
  if (cols === 0) return fill(rec, out, 0); // there is no x to bind
  const o = bindElements(gpu, out.buffer, out.offset, rows);
  const pipeline = getPipeline(gpu, y ? "row-distance" : "row-norm", rowNormSource(y !== null));
  for (const s of rowSlices(op, y ? [["x", x], ["y", y]] : [["x", x]])) {
    const [xb, yb] = s.bound;
    rec.dispatch(
      op,
      pipeline,
      yb ? [xb.binding, yb.binding, o.binding] : [xb.binding, o.binding],
      grid1d(s.rows, 1, gpu.limits.maxComputeWorkgroupsPerDimension),
      new Uint32Array([s.rows, cols, xb.base, yb?.base ?? 0, o.base + s.rowStart, 0, 0, 0]),
    );
  }
}

/** Records out[i] = ‖x[i, :]‖₂ for x `[rows, cols]` f32, out `[rows]` f32. */
export function rowNorms(rec: Recorder, args: { x: Tensor; out: Tensor }): void {
  const op = "rowNorms";
  const { x, out } = args;
  expectShape(op, "x", x, [-1, -1], "f32");
  expectShape(op, "out", out, [x.shape[0]], "f32");
  recordRowNorms(rec, op, x, null, out);
}
