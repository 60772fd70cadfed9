// Exact t-SNE on the GPU: the O(n²) gradient of KL(P ‖ Q) for a 2-D embedding, and the
// optimiser step (delta-bar-delta gains and momentum, as van der Maaten's reference code,
// scikit-learn and openTSNE run it). The driver, the input affinities P (computed on the host in
// float64) and the schedule live in train/tsne.ts.
//
// With q̃_ij = 1 / (1 + ‖y_i − y_j‖²), Z = Σ_{k≠l} q̃_kl and q_ij = q̃_ij / Z, the gradient of
// C = α Σ p_ij log(1 + ‖y_i − y_j‖²) + log Z (KL(P ‖ Q) up to a constant for α = 1; α > 1 is
// early exaggeration) is
//
//   ∂C/∂y_i = 4 Σ_j (α p_ij − q_ij) q̃_ij (y_i − y_j)
//           = 4 (α · attr_i − rep_i / Z),   attr_i = Σ_j p_ij q̃_ij (y_i − y_j),
//                                           rep_i  = Σ_j q̃_ij² (y_i − y_j).
//
// `tsneForces` computes attr_i, rep_i and the row sum z_i = Σ_{j≠i} q̃_ij. Each invocation
// takes four consecutive points i (one vec4 per quantity) and walks its range of j in order,
// the y_j arriving through a workgroup tile of 64 and the p_ij as one vec4 from row j of P
// (= column j, P being symmetric), so that a step reads one P vector and one tile entry for
// four pairs, and neighbouring invocations read neighbouring addresses. The j range is split
// into `tsneSplits(n)` parts (a function of n alone) so that a large GPU gets enough
// invocations; `tsneStep` adds each point's parts in order, joins the z_i into Z with a fixed
// tree, forms the gradient, updates the gains, the momentum buffer and y, and re-centres y.
// Every sum has a fixed order, so a run is bitwise reproducible on one adapter.
//
// Four points per invocation halved lavapipe's time against one (n = 1000: 5.9 against 11.5 s
// for 1000 iterations); reading P is about 30% of what remains.
//
// Cost per iteration: about 20 flops per ordered pair (2 subtractions, 3 for the squared distance,
// an add and a division for q̃, then 1 + 4 for the attraction, 1 + 4 for the repulsion and 1 for
// z), i.e. ≈ 20 n² flops and 4 n² bytes of P read: 180 MFLOP and 36 MB at n = 3000. On an H100
// (~50 TFLOP/s f32, 3 TB/s) that is ~10 µs of arithmetic, so 1000 iterations (2000 launches,
// 20 submits) are bound by launch overhead, well under a second.

import { bindElements } from "./binding_slices.ts";
import { GpuError } from "./device.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

/** Invocations per workgroup of the forces kernel, and the y tile (points j) each loads. */
const TILE = 64;
/** Points i per invocation of the forces kernel (one vec4 lane each). */
const POINTS_PER_INVOCATION = 4;
/** Invocations of the single-workgroup step kernel. */
const STEP_WORKGROUP = 256;
/** Forces invocations `tsneSplits` aims at, so that a large GPU has enough work in flight. */
const TARGET_INVOCATIONS = 8192;

/** Values per point in the forces tensor: attr (x, y), rep (x, y), z. */
export const TSNE_FORCE_STRIDE = 5;

/** Columns of the padded P the forces kernel reads: n rounded up to a multiple of 4. */
export function tsnePaddedColumns(n: number): number {
  return Math.ceil(n / POINTS_PER_INVOCATION) * POINTS_PER_INVOCATION;
}

/**
 * How many ranges of j the forces are split into for n points (the leading dimension of the
 * forces tensor): enough for about 8192 invocations, at most one per tile of 64 points j. A
 * function of n only, so a run's summation order does not depend on the adapter.
 */
export function tsneSplits(n: number): number {
  const tiles = Math.ceil(n / TILE);
  const invocations = Math.ceil(n / POINTS_PER_INVOCATION);
  return Math.max(1, Math.min(tiles, Math.ceil(TARGET_INVOCATIONS / Math.max(1, invocations))));
}

const FORCES_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> p: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> forces: array<f32>;
struct Params {
  n: u32, quads: u32, pBase: u32, yBase: u32,
  fBase: u32, tilesPerSplit: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(3) var<uniform> params: Params;
var<workgroup> tile: array<vec2<f32>, ${TILE}>;

@compute @workgroup_size(${TILE})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let n = params.n;
  let quad = wid.x * ${TILE}u + lid.x;
  let i0 = 4u * quad;
  let split = wid.y;
  var xi = vec4<f32>(0.0);
  var yi = vec4<f32>(0.0);
  for (var r = 0u; r < 4u; r++) {
    if (i0 + r < n) {
      xi[r] = y[params.yBase + 2u * (i0 + r)];
      yi[r] = y[params.yBase + 2u * (i0 + r) + 1u];
    }
  }
  let ids = vec4<u32>(i0, i0 + 1u, i0 + 2u, i0 + 3u);
  var ax = vec4<f32>(0.0);
  var ay = vec4<f32>(0.0);
  var rx = vec4<f32>(0.0);
  var ry = vec4<f32>(0.0);
  var z = vec4<f32>(0.0);
  let tStart = split * params.tilesPerSplit * ${TILE}u;
  let tEnd = min(n, tStart + params.tilesPerSplit * ${TILE}u);
  for (var t = tStart; t < tEnd; t += ${TILE}u) {
    let jl = t + lid.x;
    if (jl < n) { tile[lid.x] = vec2<f32>(y[params.yBase + 2u * jl], y[params.yBase + 2u * jl + 1u]); }
    workgroupBarrier();
    let m = min(${TILE}u, n - t);
    if (i0 < n) {
      for (var k = 0u; k < m; k++) {
        let j = t + k;
        let yj = tile[k];
        let dx = xi - yj.x;
        let dy = yi - yj.y;
        let q = 1.0 / (1.0 + (dx * dx + dy * dy));
        let pq = p[params.pBase + j * params.quads + quad] * q;
        ax += pq * dx;
        ay += pq * dy;
        let q2 = q * q;
        rx += q2 * dx;
        ry += q2 * dy;
        z += select(q, vec4<f32>(0.0), ids == vec4<u32>(j));
      }
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < 4u; r++) {
    let i = i0 + r;
    if (i < n) {
      let o = params.fBase + ${TSNE_FORCE_STRIDE}u * (split * n + i);
      forces[o] = ax[r];
      forces[o + 1u] = ay[r];
      forces[o + 2u] = rx[r];
      forces[o + 3u] = ry[r];
      forces[o + 4u] = z[r];
    }
  }
}
`;

const STEP_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> forces: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> update: array<f32>;
@group(0) @binding(3) var<storage, read_write> gains: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
struct Params {
  n: u32, fBase: u32, yBase: u32, uBase: u32,
  gBase: u32, gradBase: u32, splits: u32, _p0: u32,
  exaggeration: f32, momentum: f32, learningRate: f32, minGain: f32,
}
@group(0) @binding(5) var<uniform> params: Params;
var<workgroup> red: array<vec2<f32>, ${STEP_WORKGROUP}>;

fn reduce(lane: u32, v: vec2<f32>) -> vec2<f32> {
  red[lane] = v;
  workgroupBarrier();
  for (var w = ${STEP_WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lane < w) { red[lane] += red[lane + w]; }
    workgroupBarrier();
  }
  let total = red[0];
  workgroupBarrier();
  return total;
}

/** Component c of point i's forces, summed over the splits in order. */
fn force(i: u32, c: u32) -> f32 {
  var s = 0.0;
  for (var k = 0u; k < params.splits; k++) {
    s += forces[params.fBase + ${TSNE_FORCE_STRIDE}u * (k * params.n + i) + c];
  }
  return s;
}

@compute @workgroup_size(${STEP_WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  let n = params.n;
  let lane = lid.x;
  var zs = 0.0;
  for (var i = lane; i < n; i += ${STEP_WORKGROUP}u) { zs += force(i, 4u); }
  let z = max(reduce(lane, vec2<f32>(zs, 0.0)).x, 1e-30);
  var sum = vec2<f32>(0.0);
  for (var i = lane; i < n; i += ${STEP_WORKGROUP}u) {
    for (var c = 0u; c < 2u; c++) {
      let g = 4.0 * (params.exaggeration * force(i, c) - force(i, c + 2u) / z);
      let e = 2u * i + c;
      grad[params.gradBase + e] = g;
      let u = update[params.uBase + e];
      let gain = max(select(gains[params.gBase + e] * 0.8, gains[params.gBase + e] + 0.2,
                            u * g < 0.0), params.minGain);
      gains[params.gBase + e] = gain;
      let un = params.momentum * u - params.learningRate * gain * g;
      update[params.uBase + e] = un;
      let yn = y[params.yBase + e] + un;
      y[params.yBase + e] = yn;
      sum[c] += yn;
    }
  }
  let mean = reduce(lane, sum) / f32(n);
  for (var i = lane; i < n; i += ${STEP_WORKGROUP}u) {
    y[params.yBase + 2u * i] -= mean.x;
    y[params.yBase + 2u * i + 1u] -= mean.y;
  }
}
`;

/** Elements and byte offset of a tensor, bound from the aligned offset at or before it. */
function bind(rec: Recorder, t: Tensor) {
  return bindElements(rec.gpu, t.buffer, t.offset, t.numel);
}

/**
 * Records the per-point sums of the file comment for `y` `[n, 2]` f32 and `p` `[n, tsnePadded-
 * Columns(n)]` f32 (the joint P, symmetric with a zero diagonal, its columns padded with any
 * values; point i reads column i) into `forces` `[splits, n, 5]` f32: split s holds
 * [attr (x, y), rep (x, y), z] over its range of j (tiles of 64 points, ⌈tiles / splits⌉ per
 * split), which tsneStep adds in order. Each tensor must fit one storage binding (P: n ≤ 5792 on
 * lavapipe's 128 MiB) and P must start at a multiple of 16 bytes.
 */
export function tsneForces(rec: Recorder, args: { p: Tensor; y: Tensor; forces: Tensor }): void {
  const op = "tsneForces";
  const { p, y, forces } = args;
  expectShape(op, "y", y, [-1, 2], "f32");
  const n = y.shape[0];
  expectShape(op, "p", p, [n, tsnePaddedColumns(n)], "f32");
  expectShape(op, "forces", forces, [-1, n, TSNE_FORCE_STRIDE], "f32");
  const splits = forces.shape[0];
  if (splits < 1) throw new GpuError(`${op}: forces ("${forces.label}") has no splits`);
  for (const [name, t] of [["p", p], ["y", y], ["forces", forces]] as const) {
    expectBindable(op, name, t);
  }
  if (p.offset % 16 !== 0) {
    throw new GpuError(`${op}: p ("${p.label}") starts at byte ${p.offset}, not a multiple of 16`);
  }
  if (n === 0) return;
  const [pb, yb, fb] = [p, y, forces].map((t) => bind(rec, t));
  const gpu = rec.gpu;
  const groups = Math.ceil(n / (TILE * POINTS_PER_INVOCATION));
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (groups > max || splits > max) {
    throw new GpuError(`${op}: n = ${n} with ${splits} splits exceeds ${max} workgroups`);
  }
  rec.dispatch(
    op,
    getPipeline(gpu, "tsne-forces", FORCES_WGSL),
    [pb.binding, yb.binding, fb.binding],
    [groups, splits],
    new Uint32Array([
      n,
      tsnePaddedColumns(n) / 4,
      pb.base / 4,
      yb.base,
      fb.base,
      Math.ceil(Math.ceil(n / TILE) / splits),
      0,
      0,
    ]),
  );
}

/** The step's scalars (host float64, passed as f32). */
export interface TsneStepParams {
  /** α multiplying P (early exaggeration; 1 after it). */
  exaggeration: number;
  momentum: number;
  learningRate: number;
  /** Gains are clipped below at this (0.01 in the reference implementations). */
  minGain: number;
}

/**
 * Records one optimiser step from `forces` (tsneForces' output), in one workgroup:
 *
 *   (attr, rep, z of each point: the sum of its splits, in order)
 *   Z = Σ_i z_i;  g = 4 (α · attr − rep / Z)  → written to `grad` [n, 2]
 *   gain ← max(gain + 0.2 if update · g < 0 else gain · 0.8, minGain)
 *   update ← momentum · update − learningRate · gain · g;  y ← y + update
 *   y ← y − mean(y)
 *
 * `y`, `update`, `gains` and `grad` are `[n, 2]` f32 tensors in four distinct buffers.
 */
export function tsneStep(
  rec: Recorder,
  args: {
    forces: Tensor;
    y: Tensor;
    update: Tensor;
    gains: Tensor;
    grad: Tensor;
    params: TsneStepParams;
  },
): void {
  const op = "tsneStep";
  const { forces, y, update, gains, grad, params } = args;
  expectShape(op, "y", y, [-1, 2], "f32");
  const n = y.shape[0];
  expectShape(op, "forces", forces, [-1, n, TSNE_FORCE_STRIDE], "f32");
  const named = Object.entries({ forces, y, update, gains, grad });
  if (forces.shape[0] < 1) throw new GpuError(`${op}: forces ("${forces.label}") has no splits`);
  for (const [name, t] of named.slice(2)) expectShape(op, name, t, [n, 2], "f32");
  for (const [name, t] of named) expectBindable(op, name, t);
  const buffers = new Set(named.slice(1).map(([, t]) => t.buffer));
  if (buffers.size !== 4) {
    throw new GpuError(`${op}: y, update, gains and grad must be four distinct buffers`);
  }
  for (const [k, v] of Object.entries(params)) {
    if (!Number.isFinite(v)) throw new GpuError(`${op}: params.${k} is not finite (${v})`);
  }
  if (n === 0) return;
  const [fb, yb, ub, gb, db] = named.map(([, t]) => bind(rec, t));
  const u = new Uint32Array(12);
  u.set([n, fb.base, yb.base, ub.base, gb.base, db.base, forces.shape[0]]);
  new Float32Array(u.buffer, 32).set([
    params.exaggeration,
    params.momentum,
    params.learningRate,
    params.minGain,
  ]);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, "tsne-step", STEP_WGSL),
    [fb.binding, yb.binding, ub.binding, gb.binding, db.binding],
    1,
    u,
  );
}
