// LayerNorm over the last dimension, as torch.nn.LayerNorm (biased variance, eps inside the
// square root), forward and backward.
//
// The forward and dX give each row a fixed number of invocations (8 or 32, several rows to a
// workgroup). Each invocation sums a fixed strided subset of the row in order, then a fixed tree
// in workgroup memory combines the partial sums, so results are bitwise reproducible.
// dGamma/dBeta are column sums over rows: a workgroup owns COLS columns, each of its LANES lanes
// sums the rows lane, lane + LANES, ... in order (in blocks), and a fixed tree over the lanes
// finishes the sum.
//
// Statistics are "corrected two-pass" (Chan, Golub & LeVeque): m1 = Σx/h first, then from
// d = x − m1 both c = Σd/h (the rounding error of m1, recovered) and var = Σd²/h − c². Never
// E[x²] − E[x]², which cancels catastrophically when |mean| ≫ std. The output uses
// (x − m1) − c, so its error stays a few ulps of the row's spread even where m1 itself is
// uncertain by more than that (|mean|/std ≫ 1): the saved mean m1 + c is rounded to float32,
// but the forward never subtracts it. dX does the same from the saved mean: c' = Σ(x − mean)/h
// recovers the rounding of the saved mean, in the reduction dX already makes. (The dGamma column
// sums use x − mean as saved; their error grows as ulp(mean)/std.)

import { GpuError } from "./device.ts";
import { grid1d } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;
const COLS = 16;
const LANES = WORKGROUP / COLS;
const CHUNK = 64;

/**
 * Invocations per row: 8 for rows of up to 64 elements, else 32 (one warp on NVIDIA, the usual
 * choice for hidden sizes in the hundreds to thousands); the workgroup holds 256 / that many
 * rows. Fixed per hidden size, so results stay bitwise reproducible. Fewer invocations per row
 * than a whole workgroup also keep barriers cheap on CPU drivers (lavapipe), where a barrier
 * switches between every 8 invocations of the workgroup: one 64- to 256-invocation workgroup
 * per row ran about 4 times slower there (4096 x 256 and 1024 x 1024).
 */
export function rowThreads(h: number): number {
  return h <= 64 ? 8 : 32;
}

/** Workgroups of `groups` spread over x and y past the per-dimension limit (see grid.ts). */
function groupGrid(rec: Recorder, groups: number): [number, number] {
  return grid1d(groups, 1, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

/** The launch grid of the row kernels: `rowThreads(h)` invocations per row. */
export function rowGrid(rec: Recorder, rows: number, h: number): [number, number] {
  return groupGrid(rec, Math.ceil(rows / (WORKGROUP / rowThreads(h))));
}

/**
 * WGSL for `row_sum_<k>(lid, v)`: the sum of v over the `t` invocations of a row, in a fixed
 * order, returned to each of them. At most 16 values are added sequentially per step, and each
 * step is one barrier (a binary tree would take log2(t)). Every call site gets its own
 * workgroup arrays (k), so that a second sum can start while the first one's arrays are still
 * being read, without another barrier. Must be called from uniform control flow.
 */
export function rowSumWgsl(type: string, t: number, k: number): string {
  const rowBase = `(lid / ${t}u) * ${t}u`;
  if (t <= 16) {
    return /* wgsl */ `
var<workgroup> partial_${k}: array<${type}, ${WORKGROUP}>;
fn row_sum_${k}(lid: u32, v: ${type}) -> ${type} {
  partial_${k}[lid] = v;
  workgroupBarrier();
  let b = ${rowBase};
  var total = partial_${k}[b];
  for (var i = 1u; i < ${t}u; i++) { total += partial_${k}[b + i]; }
  return total;
}
`;
  }
  const groups = t / 16;
  return /* wgsl */ `
var<workgroup> partial_${k}: array<${type}, ${WORKGROUP}>;
var<workgroup> group_sums_${k}: array<${type}, ${WORKGROUP / 16}>;
fn row_sum_${k}(lid: u32, v: ${type}) -> ${type} {
  partial_${k}[lid] = v;
  workgroupBarrier();
  let i = lid % ${t}u;
  if (i < ${groups}u) {
    let p = ${rowBase} + 16u * i;
    var s = partial_${k}[p];
    for (var j = 1u; j < 16u; j++) { s += partial_${k}[p + j]; }
    group_sums_${k}[(lid / ${t}u) * ${groups}u + i] = s;
  }
  workgroupBarrier();
  let g = (lid / ${t}u) * ${groups}u;
  var total = group_sums_${k}[g];
  for (var j = 1u; j < ${groups}u; j++) { total += group_sums_${k}[g + j]; }
  return total;
}
`;
}

/**
 * A row kernel (forward, dX): `declarations`, then an entry point that finds its invocation's
 * row and lane and runs `body`. Rows past the end (in the last workgroup) still take part in the
 * barriers, with no elements (n = 0).
 */
export function rowKernel(t: number, declarations: string, body: string): string {
  return /* wgsl */ `
${declarations}
@compute @workgroup_size(${WORKGROUP})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let rows_per_group = ${WORKGROUP / t}u;
  let row = (wid.x + wid.y * nwg.x) * rows_per_group + lid / ${t}u;
  let lane = lid % ${t}u;
  let valid = row < params.rows;
  let h = params.h;
  let n = select(0u, h, valid);
  let inv_h = 1.0 / f32(h);
  let base = row * h;
${body}
}
`;
}

const forwardWgsl = (t: number) =>
  rowKernel(
    t,
    /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;
struct Params { rows: u32, h: u32, eps: f32 }
@group(0) @binding(6) var<uniform> params: Params;
${rowSumWgsl("f32", t, 0)}
${rowSumWgsl("vec2f", t, 1)}`,
    /* wgsl */ `
  var s = 0.0;
  for (var j = lane; j < n; j += ${t}u) { s += x[base + j]; }
  let m1 = row_sum_0(lid, s) * inv_h;
  var q = vec2f(0.0);
  for (var j = lane; j < n; j += ${t}u) {
    let d = x[base + j] - m1;
    q += vec2f(d, d * d);
  }
  let sums = row_sum_1(lid, q) * inv_h;
  let c = sums.x;
  let rstd = inverseSqrt(max(sums.y - c * c, 0.0) + params.eps);
  for (var j = lane; j < n; j += ${t}u) {
    out[base + j] = ((x[base + j] - m1) - c) * rstd * gamma[j] + beta[j];
  }
  if (valid && lane == 0u) {
    mean_out[row] = m1 + c;
    rstd_out[row] = rstd;
  }`,
  );

// dX = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dOut · gamma, x̂ = (d − c') · rstd with
// d = x − mean and c' = mean(d); mean(g · x̂) = rstd · (mean(g · d) − c' · mean(g)).
const backwardDxWgsl = (t: number) =>
  rowKernel(
    t,
    /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> mean: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dOut: array<f32>;
@group(0) @binding(5) var<storage, read_write> dX: array<f32>;
struct Params { rows: u32, h: u32, accumulate: u32 }
@group(0) @binding(6) var<uniform> params: Params;
${rowSumWgsl("vec3f", t, 0)}`,
    /* wgsl */ `
  var m = 0.0;
  var rs = 0.0;
  if (valid) {
    m = mean[row];
    rs = rstd[row];
  }
  var s = vec3f(0.0);
  for (var j = lane; j < n; j += ${t}u) {
    let g = dOut[base + j] * gamma[j];
    let d = x[base + j] - m;
    s += vec3f(g, g * d, d);
  }
  let sums = row_sum_0(lid, s) * inv_h;
  let mean_g = sums.x;
  let c = sums.z;
  let mean_gx = rs * (sums.y - c * mean_g);
  for (var j = lane; j < n; j += ${t}u) {
    let g = dOut[base + j] * gamma[j];
    let xhat = ((x[base + j] - m) - c) * rs;
    // With one feature the output is beta whatever x, so dX is exactly 0; computed, FMA
    // contraction (NVIDIA) leaves g − mean_g at a product's rounding error, times rstd (1e6 at
    // eps 1e-12).
    var v = select(rs * (g - mean_g - xhat * mean_gx), 0.0, params.h == 1u);
    if (params.accumulate != 0u) { v += dX[base + j]; }
    dX[base + j] = v;
  }`,
  );

/**
 * dGamma = Σ_rows dOut · x̂ (partial sums' .x), dBeta = Σ_rows dOut (.y); either may be absent.
 * x̂ is recomputed from x and the saved mean and rstd, or read as the forward saved it
 * (`savedXhat`, see add_layernorm.ts).
 */
function backwardParamsWgsl(withGamma: boolean, withBeta: boolean, savedXhat: boolean): string {
  const inputs = savedXhat ? ["xhat", "dOut"] : ["x", "mean", "rstd", "dOut"];
  const xhat = savedXhat ? "xhat[r * h + col]" : "(x[r * h + col] - mean[r]) * rstd[r]";
  const outs = [
    ...(withGamma ? [{ name: "dGamma", part: "x" }] : []),
    ...(withBeta ? [{ name: "dBeta", part: "y" }] : []),
  ];
  const bindings = [
    ...inputs.map((name, i) => `@group(0) @binding(${i}) var<storage, read> ${name}: array<f32>;`),
    ...outs.map(({ name }, i) =>
      `@group(0) @binding(${inputs.length + i}) var<storage, read_write> ${name}: array<f32>;`
    ),
  ].join("\n");
  const store = outs.map(({ name, part }) =>
    `var ${name}_v = partial[lid].${part};
    if (params.accumulate != 0u) { ${name}_v += ${name}[col]; }
    ${name}[col] = ${name}_v;`
  ).join("\n    ");
  return /* wgsl */ `
${bindings}
struct Params { rows: u32, h: u32, accumulate: u32 }
@group(0) @binding(${inputs.length + outs.length}) var<uniform> params: Params;
var<workgroup> partial: array<vec2f, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lid: u32,
) {
  let group = wid.x + wid.y * nwg.x;
  if (group * ${COLS}u >= params.h) { return; }
  let c = lid % ${COLS}u;
  let lane = lid / ${COLS}u;
  let col = group * ${COLS}u + c;
  let h = params.h;
  var s = vec2f(0.0);
  if (col < h) {
    // Each lane sums its terms in blocks of ${CHUNK}, then adds up the block sums: the rounding
    // error of N terms grows as N added one by one, as ${CHUNK} + N / ${CHUNK} in blocks.
    for (var r0 = lane; r0 < params.rows; r0 += ${LANES * CHUNK}u) {
      var block = vec2f(0.0);
      let r1 = min(r0 + ${LANES * CHUNK}u, params.rows);
      for (var r = r0; r < r1; r += ${LANES}u) {
        let d = dOut[r * h + col];
        block += vec2f(d * (${xhat}), d);
      }
      s += block;
    }
  }
  partial[lid] = s;
  workgroupBarrier();
  for (var k = ${LANES / 2}u; k > 0u; k >>= 1u) {
    if (lane < k) { partial[lid] = partial[lid] + partial[lid + k * ${COLS}u]; }
    workgroupBarrier();
  }
  if (lane == 0u && col < h) {
    ${store}
  }
}
`;
}

const backwardParamsSource = cachedSource(backwardParamsWgsl);

/**
 * Records dGamma (Σ_rows dOut · x̂) and dBeta (Σ_rows dOut) over `rows` rows of `h`, added into
 * them when `accumulate`; either may be absent (then nothing is recorded for it). `source` is
 * x with the forward's saved mean and rstd, or the x̂ a forward saved. Shapes are the caller's
 * to check.
 */
export function layerNormParamGrads(
  rec: Recorder,
  label: string,
  args: {
    source: { x: Tensor; mean: Tensor; rstd: Tensor } | { xhat: Tensor };
    dOut: Tensor;
    dGamma?: Tensor;
    dBeta?: Tensor;
    rows: number;
    h: number;
    accumulate: boolean;
  },
): void {
  const { source, dOut, dGamma, dBeta, rows, h } = args;
  if (!dGamma && !dBeta) return;
  const savedXhat = "xhat" in source;
  const inputs = savedXhat ? [source.xhat] : [source.x, source.mean, source.rstd];
  const outs = [dGamma, dBeta].filter((t): t is Tensor => t !== undefined);
  const name = `${label} dGamma/dBeta`;
  rec.dispatch(
    name,
    getPipeline(rec.gpu, name, backwardParamsSource(!!dGamma, !!dBeta, savedXhat)),
    [...inputs, dOut, ...outs],
    groupGrid(rec, Math.ceil(h / COLS)),
    new Uint32Array([rows, h, args.accumulate ? 1 : 0]),
  );
}

/**
 * Checks what both passes take: x [..., h] f32 with h > 0, gamma [h], and the per-row mean and
 * rstd, shaped [rows] or like x without its last dimension. Returns rows and h.
 */
function checkRows(
  op: string,
  x: Tensor,
  gamma: Tensor,
  mean: Tensor,
  rstd: Tensor,
): { rows: number; h: number } {
  if (x.shape.length === 0) {
    throw new GpuError(`${op}: x ("${x.label}") is a scalar; expected [..., hidden]`);
  }
  const h = x.shape[x.shape.length - 1];
  if (h === 0) throw new GpuError(`${op}: x ("${x.label}") has an empty last dimension`);
  const rows = x.numel / h;
  expectShape(op, "x", x, x.shape, "f32");
  expectShape(op, "gamma", gamma, [h], "f32");
  const lead = x.shape.slice(0, -1);
  for (const [name, t] of [["mean", mean], ["rstd", rstd]] as const) {
    const isLead = t.shape.length === lead.length && lead.every((d, i) => d === t.shape[i]);
    expectShape(op, name, t, isLead ? lead : [rows], "f32");
  }
  return { rows, h };
}

const forwardSource = cachedSource(forwardWgsl);

/**
 * Records `out = (x − mean) / sqrt(var + eps) · gamma + beta` over x's last dimension, and saves
 * each row's mean and 1/sqrt(var + eps) for the backward pass.
 */
export function layerNormForward(
  rec: Recorder,
  args: {
    x: Tensor;
    gamma: Tensor;
    beta: Tensor;
    out: Tensor;
    mean: Tensor;
    rstd: Tensor;
    eps: number;
  },
): void {
  const op = "layerNormForward";
  const { x, gamma, beta, out, mean, rstd, eps } = args;
  const { rows, h } = checkRows(op, x, gamma, mean, rstd);
  expectShape(op, "beta", beta, [h], "f32");
  expectShape(op, "out", out, x.shape, "f32");
  if (!(eps >= 0)) throw new GpuError(`${op}: eps ${eps} is not a non-negative number`);
  for (const [name, t] of Object.entries({ x, gamma, beta, out, mean, rstd })) {
    expectBindable(op, name, t);
  }
  const params = new Uint32Array([rows, h, 0]);
  new Float32Array(params.buffer)[2] = eps;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, forwardSource(rowThreads(h))),
    [x, gamma, beta, out, mean, rstd],
    rowGrid(rec, rows, h),
    params,
  );
}

const backwardDxSource = cachedSource(backwardDxWgsl);

/**
 * Records the LayerNorm gradients from the forward's saved mean and rstd: dX (added into dX when
 * `accumulateDX`), and if given dGamma and dBeta (added into them when `accumulate`).
 */
export function layerNormBackward(
  rec: Recorder,
  args: {
    x: Tensor;
    gamma: Tensor;
    mean: Tensor;
    rstd: Tensor;
    dOut: Tensor;
    dX: Tensor;
    dGamma?: Tensor;
    dBeta?: Tensor;
    accumulate?: boolean;
    accumulateDX?: boolean;
  },
): void {
  const op = "layerNormBackward";
  const { x, gamma, mean, rstd, dOut, dX, dGamma, dBeta } = args;
  const { rows, h } = checkRows(op, x, gamma, mean, rstd);
  expectShape(op, "dOut", dOut, x.shape, "f32");
  expectShape(op, "dX", dX, x.shape, "f32");
  if (dGamma) expectShape(op, "dGamma", dGamma, [h], "f32");
  if (dBeta) expectShape(op, "dBeta", dBeta, [h], "f32");
  const bound: Record<string, Tensor | undefined> = {
    x,
    gamma,
    mean,
    rstd,
    dOut,
    dX,
    dGamma,
    dBeta,
  };
  for (const [name, t] of Object.entries(bound)) if (t) expectBindable(op, name, t);

  const gpu = rec.gpu;
  rec.dispatch(
    `${op} dX`,
    getPipeline(gpu, `${op} dX`, backwardDxSource(rowThreads(h))),
    [x, gamma, mean, rstd, dOut, dX],
    rowGrid(rec, rows, h),
    new Uint32Array([rows, h, args.accumulateDX ? 1 : 0]),
  );
  layerNormParamGrads(rec, op, {
    source: { x, mean, rstd },
    dOut,
    dGamma,
    dBeta,
    rows,
    h,
    accumulate: args.accumulate ?? false,
  });
}
