// Multi-head scaled dot-product attention as in Hugging Face BERT/RoBERTa, with optional
// prefix-tuning rows and attention-probability dropout, forward and backward.
//
// Layout: q, k, v are [B, S, H·D] as the projections produce them (head h owns columns
// h·D … h·D+D−1), so no transpose kernel is needed. Keys are the P prefix rows of the layer
// ([H, P, D], never masked) followed by the S sequence rows, T = P + S in all.
//
// The key padding mask is applied additively as HF does: score + (1 − mask)·(−FLT_MAX). In
// float32 that sum rounds to exactly −FLT_MAX, so a query whose keys are all padding (and that
// has no prefix rows) sees T equal scores and attends uniformly, exactly like HF, with no NaN.
// The backward follows autograd through that addition (as HF's does): such a row still passes
// score gradients to its q and k.
//
// The products go through the register-tiled GEMM (kernels/matmul.ts), one batched launch per
// product over (batch, head) with the strides of the [B, S, H·D] layout, and the row-wise steps
// (mask, softmax, dropout; the softmax backward) are one light kernel each, one invocation per
// score row on a CPU adapter, 32 on a GPU (below). On a CPU adapter this is several times faster
// than the earlier one-kernel form (each workgroup one block of query rows, a workgroup reduction
// per row), which left the arithmetic of the products to scalar loops. The price is one
// [B, H, S, T] workspace besides `probs` (the dropped probabilities in the forward; P̃, then dP,
// then dS in the backward).
//
// Forward: scores = scale·q·kᵀ into `probs` (prefix columns first), softmax in place (saved
// pre-dropout for the backward) with P̃ = P ⊙ dropout into the workspace, context = P̃·v.
// Backward: P̃ again, dV = P̃ᵀ·dC, dP̃ = dC·vᵀ, dS = P ⊙ (dP − Σ P⊙dP) with dP = dP̃ ⊙ dropout,
// dQ = scale·dS·k, dK = scale·dSᵀ·q. Prefix gradients sum over the batch: the per-example
// products in one batched GEMM, then a launch that adds them up in example order. Every output
// element is one invocation's sum in a fixed order: no atomics, bitwise-deterministic.

import { type Gpu, GpuError } from "./device.ts";
import { checkDropout, DROPOUT_WGSL, type DropoutConfig, dropoutScale } from "./dropout.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { matmul, type MatmulBatch } from "./matmul.ts";
import { quadPass, stridedPass } from "./layernorm.ts";
import { getPipeline } from "./pipeline.ts";
import { Workspace } from "./workspace.ts";
import type { Recorder } from "./recorder.ts";
import {
  expectBindable,
  expectDisjoint,
  expectShape,
  FLOAT_DTYPES,
  type Tensor,
} from "./tensor.ts";

/**
 * The largest head dimension accepted. The GEMM path has no limit of its own; this is the
 * largest the tests cover (BERT and RoBERTa use 64).
 */
export const ATTENTION_MAX_HEAD_DIM = 256;

/** Score rows per workgroup of the row kernels (one invocation per row). */
const WG = 64;

const ROW_COMMON_WGSL = /* wgsl */ `
${DROPOUT_WGSL}
struct Params {
  rows: u32, batch: u32, seq: u32, heads: u32,
  prefix: u32, keys: u32, seed: u32, stream: u32,
  p: f32, drop_scale: f32, dropout: u32, _pad: u32,
}

// Dropout factors of one row's elements in order: four neighbours share one Philox block
// (kernels/dropout.ts), so each block is computed once per row instead of once per element.
struct DropState { block: u32, bits: vec4u }

fn drop_factor(state: ptr<function, DropState>, index: u32) -> f32 {
  if (params.dropout == 0u) { return 1.0; }
  let block = index >> 2u;
  if (block != (*state).block) {
    (*state).block = block;
    (*state).bits = philox4x32_10(vec4u(block, 0u, 0u, 0u), vec2u(params.seed, params.stream));
  }
  let u = f32((*state).bits[index & 3u] >> 8u) * (1.0 / 16777216.0);
  return select(0.0, params.drop_scale, u >= params.p);
}

fn new_drop_state() -> DropState {
  return DropState(0xffffffffu, vec4u(0u));
}
`;

function rowMain(body: string): string {
  return /* wgsl */ `
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = ${flatIndex(WG)};
  if (r >= params.rows) { return; }
  let T = params.keys;
  let base = r * T;
${body}
}
`;
}

/**
 * Forward row kernel: `probs` holds scale·q·kᵀ; adds the padding mask, takes the softmax in
 * place and, with dropout, writes P̃ = P ⊙ dropout to `dropped`.
 */
const SOFTMAX_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> mask: array<f32>;
@group(0) @binding(1) var<storage, read_write> probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> dropped: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
${ROW_COMMON_WGSL}
${
  rowMain(/* wgsl */ `
  let P = params.prefix;
  let S = params.seq;
  let mask_base = (r / (params.heads * S)) * S;
  let neg_max = bitcast<f32>(0xff7fffffu);
  var row_max = neg_max;
  for (var j = P; j < T; j++) {
    let z = probs[base + j] + (1.0 - mask[mask_base + j - P]) * neg_max;
    probs[base + j] = z;
    row_max = max(row_max, z);
  }
  for (var j = 0u; j < P; j++) { row_max = max(row_max, probs[base + j]); }
  var total = 0.0;
  for (var j = 0u; j < T; j++) {
    let z = probs[base + j] - row_max;
    // Masked keys give z ≈ −FLT_MAX; exact zero without relying on exp's overflow behaviour.
    let e = select(exp(z), 0.0, z < -88.0);
    probs[base + j] = e;
    total += e;
  }
  var state = new_drop_state();
  for (var j = 0u; j < T; j++) {
    let p = probs[base + j] / total;
    probs[base + j] = p;
    if (params.dropout != 0u) { dropped[base + j] = p * drop_factor(&state, base + j); }
  }`)
}`;

/** Backward row kernel, first step: work = P ⊙ dropout (P̃ of the forward, regenerated). */
const DROPPED_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> probs: array<f32>;
@group(0) @binding(1) var<storage, read_write> work: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
${ROW_COMMON_WGSL}
${
  rowMain(/* wgsl */ `
  var state = new_drop_state();
  for (var j = 0u; j < T; j++) { work[base + j] = probs[base + j] * drop_factor(&state, base + j); }`)
}`;

/** Backward row kernel, softmax step: work holds dP̃; becomes dS = P ⊙ (dP − Σ P⊙dP) in place. */
const SOFTMAX_BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> probs: array<f32>;
@group(0) @binding(1) var<storage, read_write> work: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
${ROW_COMMON_WGSL}
${
  rowMain(/* wgsl */ `
  var state = new_drop_state();
  var dot = 0.0;
  for (var j = 0u; j < T; j++) {
    let dp = work[base + j] * drop_factor(&state, base + j);
    work[base + j] = dp;
    dot += probs[base + j] * dp;
  }
  for (var j = 0u; j < T; j++) { work[base + j] = probs[base + j] * (work[base + j] - dot); }`)
}`;

// The row kernels for GPUs: 32 invocations ("lanes") per score row, lane l taking the row's
// elements l, l + 32, …, so that neighbouring invocations touch neighbouring addresses. One
// invocation per row, as above, reads T·4 bytes apart across a warp: on the H200 (2026-11-28)
// the forward softmax took 0.51 ms a layer at 32 × 16 × 128 × 128 scores, about 130 MB of
// traffic, most of it wasted. The row's max and sums are reduced over its lanes in a fixed tree
// (each lane summing its own elements in order first), so the results are as deterministic as
// the sequential ones, though not bitwise the same sums; the max and the dropout mask are.
const LANES = 32;
const LANE_ROWS = 8; // rows per workgroup: 256 invocations

// The passes that draw the dropout mask walk the row in quads instead: lane l takes elements
// 4l … 4l + 3, then 4l + 128 …, so that a lane's four neighbours share one Philox block
// (kernels/dropout.ts) and it computes one block per four elements, not one per element (two
// where a quad straddles blocks: rows of a length not a multiple of 4). Philox
// is 10 rounds of 32-bit multiplies split into 16-bit halves: per element it cost about 0.15 ms
// of each of the three 0.15-0.18 ms row kernels a layer on the H200 (2026-11-28). The quad
// passes compute each element on its own (no sum runs across them), so the results are bitwise
// those of the strided passes; a pass that reads what a quad pass wrote, or the reverse, waits
// for it at a storage barrier.
function quads(loads: (k: number) => string, body: (k: number) => string): string {
  return quadPass(LANES, loads, body, "T");
}

/**
 * A strided pass over a score row's elements, lane l taking l, l + 32, …, each batch of ROW_UNROLL
 * loaded before any is used (kernels/layernorm.ts, stridedPass: bitwise the plain loop).
 */
function lanePass(loads: (k: number) => string, body: (k: number) => string): string {
  return stridedPass(LANES, loads, body, "T");
}

function laneMain(body: string): string {
  // One reduction over a row's lanes, in a tree: after the step of width w, lane l < w holds the
  // reduction of lanes l, l + w, ….
  const reduction = (name: string, op: (a: string, b: string) => string) => /* wgsl */ `
fn ${name}(li: u32, lane: u32, v: f32) -> f32 {
  red[li] = v;
  workgroupBarrier();
  ${
    [16, 8, 4, 2, 1].map((w) =>
      `if (lane < ${w}u) { red[li] = ${op("red[li]", `red[li + ${w}u]`)}; }\n  workgroupBarrier();`
    ).join("\n  ")
  }
  let out = red[li - lane];
  workgroupBarrier();
  return out;
}
`;
  return /* wgsl */ `
var<workgroup> red: array<f32, ${LANES * LANE_ROWS}>;

// Each lane's value reduced over its row's lanes; every lane of the row gets the result. Called
// by every invocation (the barriers), live row or not.${
    reduction("row_max", (a, b) => `max(${a}, ${b})`)
  }${reduction("row_sum", (a, b) => `${a} + ${b}`)}

@compute @workgroup_size(${LANES * LANE_ROWS})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let lane = li % ${LANES}u;
  let r = (wid.x + wid.y * nwg.x) * ${LANE_ROWS}u + li / ${LANES}u;
  let live = r < params.rows;
  let T = params.keys;
  let base = r * T;
${body}
}
`;
}

const SOFTMAX_LANES_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> mask: array<f32>;
@group(0) @binding(1) var<storage, read_write> probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> dropped: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
${ROW_COMMON_WGSL}
${
  laneMain(/* wgsl */ `
  let P = params.prefix;
  let S = params.seq;
  let mask_base = (r / (params.heads * S)) * S;
  let neg_max = bitcast<f32>(0xff7fffffu);
  var m = neg_max;
  if (live) {
    // Each lane keeps the same elements in every strided pass (the prefix columns unmasked):
    // what one lane wrote, no other lane reads, and a barrier need order no storage.
    ${
    lanePass(
      (k) =>
        `var z_${k} = probs[i_${k}];
      var keep_${k} = 1.0;
      if (j_${k} >= P) { keep_${k} = mask[mask_base + j_${k} - P]; }`,
      (k) =>
        `if (j_${k} >= P) {
        z_${k} += (1.0 - keep_${k}) * neg_max;
        probs[i_${k}] = z_${k};
      }
      m = max(m, z_${k});`,
    )
  }
  }
  let top = row_max(li, lane, m);
  var total = 0.0;
  if (live) {
    ${
    lanePass((k) => `let p_${k} = probs[i_${k}];`, (k) =>
      `let z_${k} = p_${k} - top;
      let e_${k} = select(exp(z_${k}), 0.0, z_${k} < -88.0);
      probs[i_${k}] = e_${k};
      total += e_${k};`)
  }
  }
  let sum = row_sum(li, lane, total);
  if (params.dropout != 0u) {
    // With dropout, the last pass walks quads (see quads()), reading what other lanes wrote.
    storageBarrier();
    if (live) {
      var state = new_drop_state();
      ${
    quads((k) => `let p_${k} = probs[i_${k}];`, (k) =>
      `let d_${k} = p_${k} / sum;
        probs[i_${k}] = d_${k};
        dropped[i_${k}] = d_${k} * drop_factor(&state, i_${k});`)
  }
    }
  } else if (live) {
    ${lanePass((k) => `let p_${k} = probs[i_${k}];`, (k) => `probs[i_${k}] = p_${k} / sum;`)}
  }`)
}`;

const DROPPED_LANES_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> probs: array<f32>;
@group(0) @binding(1) var<storage, read_write> work: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
${ROW_COMMON_WGSL}
${
  laneMain(/* wgsl */ `
  if (live) {
    var state = new_drop_state();
    ${
    quads(
      (k) => `let p_${k} = probs[i_${k}];`,
      (k) => `work[i_${k}] = p_${k} * drop_factor(&state, i_${k});`,
    )
  }
  }`)
}`;

const SOFTMAX_BACKWARD_LANES_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> probs: array<f32>;
@group(0) @binding(1) var<storage, read_write> work: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
${ROW_COMMON_WGSL}
${
  laneMain(/* wgsl */ `
  if (params.dropout != 0u) {
    // dP = dP̃ ⊙ dropout in the quad order (see quads()), then read back by other lanes.
    if (live) {
      var state = new_drop_state();
      ${
    quads(
      (k) => `let w_${k} = work[i_${k}];`,
      (k) => `work[i_${k}] = w_${k} * drop_factor(&state, i_${k});`,
    )
  }
    }
    storageBarrier();
  }
  var dot = 0.0;
  if (live) {
    ${
    lanePass(
      (k) => `let p_${k} = probs[i_${k}]; let w_${k} = work[i_${k}];`,
      (k) => `dot += p_${k} * w_${k};`,
    )
  }
  }
  let total = row_sum(li, lane, dot);
  if (live) {
    ${
    lanePass(
      (k) => `let p_${k} = probs[i_${k}]; let w_${k} = work[i_${k}];`,
      (k) => `work[i_${k}] = p_${k} * (w_${k} - total);`,
    )
  }
  }`)
}`;

const LANE_FORMS: Record<string, string> = {
  [SOFTMAX_WGSL]: SOFTMAX_LANES_WGSL,
  [DROPPED_WGSL]: DROPPED_LANES_WGSL,
  [SOFTMAX_BACKWARD_WGSL]: SOFTMAX_BACKWARD_LANES_WGSL,
};

const laneChoice = new WeakMap<Gpu, boolean>();

/**
 * Whether attention's row kernels run 32 invocations per row on `gpu` (true) or one (false; the
 * default on a CPU adapter, where the one-invocation form is the faster); undefined restores the
 * default. For tests and benches.
 */
export function setAttentionRowLanes(gpu: Gpu, lanes: boolean | undefined): void {
  if (lanes === undefined) laneChoice.delete(gpu);
  else laneChoice.set(gpu, lanes);
}

function rowLanes(gpu: Gpu): boolean {
  return laneChoice.get(gpu) ?? !gpu.adapter.info.isFallbackAdapter;
}

/** The sizes of an attention problem: batch, sequence, heads, head dimension, prefix rows. */
export interface AttentionDims {
  B: number;
  S: number;
  H: number;
  D: number;
  P: number;
}

type Dims = AttentionDims;

/**
 * Checks q/k/v-like tensors ([B, S, H·D], the first one's shape rules), heads (dividing H·D into
 * heads of at most `maxHeadDim`) and the prefix pair ([H, P, D] each, both or neither); returns
 * the problem's sizes. Shared with kernels/flash_attention.ts. With `allowF16` the q/k/v-like
 * tensors may be f16 (each on its own: every product is a `matmul`, which widens f16 to f32).
 */
export function checkAttentionArgs(
  op: string,
  qkv: [string, Tensor][],
  heads: number,
  prefixKey: Tensor | undefined,
  prefixValue: Tensor | undefined,
  maxHeadDim = ATTENTION_MAX_HEAD_DIM,
  allowF16 = false,
): Dims {
  const [qName, q] = qkv[0];
  expectShape(op, qName, q, [-1, -1, -1]);
  const [B, S, HD] = q.shape;
  for (const [name, t] of qkv) {
    expectShape(op, name, t, [B, S, HD], allowF16 ? FLOAT_DTYPES : "f32");
  }
  if (!Number.isInteger(heads) || heads < 1 || HD % heads !== 0) {
    throw new GpuError(`${op}: heads ${heads} does not divide the hidden size ${HD}`);
  }
  const H = heads, D = HD / heads;
  if (D > maxHeadDim) {
    throw new GpuError(`${op}: head dimension ${D} exceeds the supported maximum ${maxHeadDim}`);
  }
  if ((prefixKey === undefined) !== (prefixValue === undefined)) {
    throw new GpuError(`${op}: prefixKey and prefixValue must be given together`);
  }
  let P = 0;
  if (prefixKey && prefixValue) {
    expectShape(op, "prefixKey", prefixKey, [H, -1, D], "f32");
    P = prefixKey.shape[1];
    expectShape(op, "prefixValue", prefixValue, [H, P, D], "f32");
  }
  return { B, S, H, D, P };
}

function rowParams(dims: Dims, dropout: DropoutConfig): Uint32Array {
  const buffer = new ArrayBuffer(48);
  const u = new Uint32Array(buffer);
  const f = new Float32Array(buffer);
  const { B, S, H, P } = dims;
  const drop = dropout.p > 0;
  u.set([B * H * S, B, S, H, P, P + S, dropout.seed, dropout.stream]);
  f[8] = dropout.p;
  f[9] = drop ? dropoutScale(dropout.p) : 1;
  u[10] = drop ? 1 : 0;
  return u;
}

function rowKernel(
  rec: Recorder,
  label: string,
  name: string,
  wgsl: string,
  bindings: Tensor[],
  dims: Dims,
  dropout: DropoutConfig,
): void {
  const rows = dims.B * dims.H * dims.S;
  const maxPerDim = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  const lanes = rowLanes(rec.gpu);
  rec.dispatch(
    label,
    getPipeline(rec.gpu, lanes ? `${name} (lanes)` : name, lanes ? LANE_FORMS[wgsl] : wgsl),
    bindings,
    lanes ? grid1d(rows, LANE_ROWS, maxPerDim) : grid1d(rows, WG, maxPerDim),
    rowParams(dims, dropout),
  );
}

/**
 * Strides of the per-(batch, head) products. `tok` is a [B, S, H·D] tensor (batch stride S·H·D,
 * head stride D), `score` the [B, H, S, T] scores (H·S·T, S·T), `pre` the [H, P, D] prefix
 * (shared by the batch: 0, P·D).
 */
type Operand = "tok" | "score" | "pre";

function strides(dims: Dims, x: Operand): [number, number] {
  const { S, H, D, P } = dims;
  const T = P + S;
  if (x === "tok") return [S * H * D, D];
  if (x === "score") return [H * S * T, S * T];
  return [0, P * D];
}

/** The two batch levels (batch, head) of a product whose A, B and C are of kinds `a`, `b`, `c`. */
function headBatches(
  dims: Dims,
  a: Operand,
  b: Operand,
  c: Operand,
): { batch0: MatmulBatch; batch1: MatmulBatch } {
  const [a0, a1] = strides(dims, a), [b0, b1] = strides(dims, b), [c0, c1] = strides(dims, c);
  return {
    batch0: { count: dims.B, strideA: a0, strideB: b0, strideC: c0 },
    batch1: { count: dims.H, strideA: a1, strideB: b1, strideC: c1 },
  };
}

/** Sums the per-example prefix gradients [B, n] over the batch, in example order, into out [n]. */
const PREFIX_SUM_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { n: u32, batch: u32, accumulate: u32, _p: u32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WG)};
  if (i >= params.n) { return; }
  // Added as the accumulating GEMMs of one example at a time would: ((out + p0) + p1) + …
  var s = partials[i];
  if (params.accumulate != 0u) { s = out[i] + s; }
  for (var b = 1u; b < params.batch; b++) { s += partials[b * params.n + i]; }
  out[i] = s;
}`;

/**
 * Σ over the batch of the per-example products into a prefix gradient [H, P, D]:
 * out[h] (+)= alpha · Σ_b scores[b, h, :, :P]ᵀ · x[b, :, h, :]. One GEMM launch batched over
 * (example, head) into a [B, H, P, D] workspace, then one launch that sums the examples in
 * order: the same sums as one accumulating product per example, in two launches instead of B.
 */
function prefixGradient(
  rec: Recorder,
  label: string,
  dims: Dims,
  scores: Tensor,
  x: Tensor,
  out: Tensor,
  alpha: number,
  accumulate: boolean,
  f16Math: boolean,
): void {
  const { B, S, H, D, P } = dims;
  const T = P + S;
  const partials = prefixWorkspace.view(rec.gpu, [B, H, P, D]);
  matmul(rec, {
    op: label,
    f16Math,
    a: scores,
    b: x,
    c: partials,
    m: P,
    n: D,
    k: S,
    transA: true,
    lda: T,
    ldb: H * D,
    ldc: D,
    batch0: { count: B, strideA: H * S * T, strideB: S * H * D, strideC: H * P * D },
    batch1: { count: H, strideA: S * T, strideB: D, strideC: P * D },
    alpha,
  });
  const n = H * P * D;
  rec.dispatch(
    `${label} (batch sum)`,
    getPipeline(rec.gpu, "attention prefix batch sum", PREFIX_SUM_WGSL),
    [partials, out],
    grid1d(n, WG, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    new Uint32Array([n, B, accumulate ? 1 : 0, 0]),
  );
}

/** The per-example prefix gradients of `prefixGradient`. */
const prefixWorkspace = new Workspace("attention prefix gradients workspace");

/** The [B, H, S, T] scores workspace (see kernels/workspace.ts for why sharing it is safe). */
const workspace = new Workspace("attention scores workspace");

/**
 * Records context = softmax(q·kᵀ/√D + (1 − mask)·(−FLT_MAX)) ⊙ dropout · v per head, keys being
 * the prefix rows (if any) then the sequence. Writes the pre-dropout probabilities to `probs`
 * for the backward pass.
 *
 * q, k, v, context: [B, S, H·D]; mask: [B, S] (1 keep, 0 padding); prefixKey, prefixValue:
 * [H, P, D]; probs: [B, H, S, P + S]. All float32. Head dimension D ≤ 256.
 */
export function attentionForward(
  rec: Recorder,
  args: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    mask: Tensor;
    prefixKey?: Tensor;
    prefixValue?: Tensor;
    probs: Tensor;
    context: Tensor;
    heads: number;
    /** Multiply and sum in f16 (matmul's `f16Math`); default false. */
    f16Math?: boolean;
    dropout: DropoutConfig;
  },
): void {
  const op = "attentionForward";
  const f16Math = args.f16Math ?? false;
  const { q, k, v, mask, prefixKey, prefixValue, probs, context, heads, dropout } = args;
  const dims = checkAttentionArgs(
    op,
    [["q", q], ["k", k], ["v", v], ["context", context]],
    heads,
    prefixKey,
    prefixValue,
    ATTENTION_MAX_HEAD_DIM,
    true,
  );
  const { B, S, H, D, P } = dims;
  const T = P + S;
  const HD = H * D;
  expectShape(op, "mask", mask, [B, S], "f32");
  expectShape(op, "probs", probs, [B, H, S, T], "f32");
  checkDropout(op, dropout);
  for (const [name, t] of [["mask", mask], ["probs", probs]] as const) {
    expectBindable(op, name, t);
  }
  const scale = 1 / Math.sqrt(D);
  if (P > 0) {
    matmul(rec, {
      f16Math,
      op: `${op} (prefix scores)`,
      a: q,
      b: prefixKey!,
      c: probs,
      m: S,
      n: P,
      k: D,
      transB: true,
      lda: HD,
      ldb: D,
      ldc: T,
      alpha: scale,
      ...headBatches(dims, "tok", "pre", "score"),
    });
  }
  matmul(rec, {
    f16Math,
    op: `${op} (scores)`,
    a: q,
    b: k,
    c: probs,
    m: S,
    n: S,
    k: D,
    transB: true,
    lda: HD,
    ldb: HD,
    ldc: T,
    offsetC: P,
    alpha: scale,
    ...headBatches(dims, "tok", "tok", "score"),
  });
  const dropping = dropout.p > 0;
  const dropped = dropping ? workspace.view(rec.gpu, [B, H, S, T]) : probs;
  rowKernel(
    rec,
    `${op} (softmax)`,
    "attention softmax",
    SOFTMAX_WGSL,
    [mask, probs, dropped],
    dims,
    dropout,
  );
  if (P > 0) {
    matmul(rec, {
      f16Math,
      op: `${op} (prefix context)`,
      a: dropped,
      b: prefixValue!,
      c: context,
      m: S,
      n: D,
      k: P,
      lda: T,
      ldb: D,
      ldc: HD,
      ...headBatches(dims, "score", "pre", "tok"),
    });
  }
  matmul(rec, {
    f16Math,
    op: `${op} (context)`,
    a: dropped,
    b: v,
    c: context,
    m: S,
    n: D,
    k: S,
    lda: T,
    ldb: HD,
    ldc: HD,
    offsetA: P,
    accumulate: P > 0,
    ...headBatches(dims, "score", "tok", "tok"),
  });
}

/**
 * Records the gradients of `attentionForward` (same q, k, v, prefix, probs and dropout):
 * dQ, dK, dV overwritten; dPrefixKey, dPrefixValue (if given) summed over the batch and
 * overwritten, or added to when `accumulatePrefix`. Without dPrefixKey/dPrefixValue the
 * prefix is treated as frozen.
 *
 * `dScores` ([B, H, S, P + S] f32) is an optional workspace for the score gradients; without it
 * a buffer kept per device by this module is used.
 */
export function attentionBackward(
  rec: Recorder,
  args: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    probs: Tensor;
    dContext: Tensor;
    dQ: Tensor;
    dK: Tensor;
    dV: Tensor;
    prefixKey?: Tensor;
    prefixValue?: Tensor;
    dPrefixKey?: Tensor;
    dPrefixValue?: Tensor;
    accumulatePrefix?: boolean;
    heads: number;
    /** Multiply and sum in f16 (matmul's `f16Math`); default false. */
    f16Math?: boolean;
    dropout: DropoutConfig;
    dScores?: Tensor;
  },
): void {
  const op = "attentionBackward";
  const f16Math = args.f16Math ?? false;
  const { q, k, v, probs, dContext, dQ, dK, dV, prefixKey, prefixValue, heads, dropout } = args;
  const { dPrefixKey, dPrefixValue } = args;
  const dims = checkAttentionArgs(
    op,
    [["q", q], ["k", k], ["v", v], ["dContext", dContext], ["dQ", dQ], ["dK", dK], ["dV", dV]],
    heads,
    prefixKey,
    prefixValue,
    ATTENTION_MAX_HEAD_DIM,
    true,
  );
  const { B, S, H, D, P } = dims;
  const T = P + S;
  const HD = H * D;
  const scoresShape = [B, H, S, T];
  expectShape(op, "probs", probs, scoresShape, "f32");
  if ((dPrefixKey === undefined) !== (dPrefixValue === undefined)) {
    throw new GpuError(`${op}: dPrefixKey and dPrefixValue must be given together`);
  }
  const prefixGrad = dPrefixKey !== undefined && dPrefixValue !== undefined;
  if (prefixGrad) {
    if (!prefixKey) throw new GpuError(`${op}: dPrefixKey given without prefixKey`);
    expectShape(op, "dPrefixKey", dPrefixKey, [H, P, D], "f32");
    expectShape(op, "dPrefixValue", dPrefixValue, [H, P, D], "f32");
  }
  if (args.dScores) expectShape(op, "dScores", args.dScores, scoresShape, "f32");
  expectDisjoint(op, { dQ, dK, dV, dPrefixKey, dPrefixValue, dScores: args.dScores }, {
    q,
    k,
    v,
    probs,
    dContext,
    prefixKey,
    prefixValue,
  });
  checkDropout(op, dropout);
  const work = args.dScores ?? workspace.view(rec.gpu, scoresShape);
  for (const [name, t] of [["probs", probs], ["dScores", work]] as const) {
    expectBindable(op, name, t);
  }
  const scale = 1 / Math.sqrt(D);

  // P̃ = P ⊙ dropout, for dV = P̃ᵀ·dC (the probabilities themselves without dropout).
  const dropped = dropout.p > 0 ? work : probs;
  if (dropout.p > 0) {
    rowKernel(
      rec,
      `${op} (dropped probabilities)`,
      "attention dropped probabilities",
      DROPPED_WGSL,
      [probs, work],
      dims,
      dropout,
    );
  }
  matmul(rec, {
    f16Math,
    op: `${op} (dV)`,
    a: dropped,
    b: dContext,
    c: dV,
    m: S,
    n: D,
    k: S,
    transA: true,
    lda: T,
    ldb: HD,
    ldc: HD,
    offsetA: P,
    ...headBatches(dims, "score", "tok", "tok"),
  });
  if (prefixGrad && P > 0) {
    prefixGradient(
      rec,
      `${op} (dPrefixValue)`,
      dims,
      dropped,
      dContext,
      dPrefixValue,
      1,
      args.accumulatePrefix ?? false,
      f16Math,
    );
  }

  // dP̃ = dC·[prefix v; v]ᵀ, then dS in place.
  if (P > 0) {
    matmul(rec, {
      f16Math,
      op: `${op} (prefix dProbs)`,
      a: dContext,
      b: prefixValue!,
      c: work,
      m: S,
      n: P,
      k: D,
      transB: true,
      lda: HD,
      ldb: D,
      ldc: T,
      ...headBatches(dims, "tok", "pre", "score"),
    });
  }
  matmul(rec, {
    f16Math,
    op: `${op} (dProbs)`,
    a: dContext,
    b: v,
    c: work,
    m: S,
    n: S,
    k: D,
    transB: true,
    lda: HD,
    ldb: HD,
    ldc: T,
    offsetC: P,
    ...headBatches(dims, "tok", "tok", "score"),
  });
  rowKernel(
    rec,
    `${op} (softmax)`,
    "attention softmax backward",
    SOFTMAX_BACKWARD_WGSL,
    [probs, work],
    dims,
    dropout,
  );

  // dQ = scale·dS·[prefix k; k], dK = scale·dSᵀ·q.
  if (P > 0) {
    matmul(rec, {
      f16Math,
      op: `${op} (prefix dQ)`,
      a: work,
      b: prefixKey!,
      c: dQ,
      m: S,
      n: D,
      k: P,
      lda: T,
      ldb: D,
      ldc: HD,
      alpha: scale,
      ...headBatches(dims, "score", "pre", "tok"),
    });
  }
  matmul(rec, {
    f16Math,
    op: `${op} (dQ)`,
    a: work,
    b: k,
    c: dQ,
    m: S,
    n: D,
    k: S,
    lda: T,
    ldb: HD,
    ldc: HD,
    offsetA: P,
    alpha: scale,
    accumulate: P > 0,
    ...headBatches(dims, "score", "tok", "tok"),
  });
  matmul(rec, {
    f16Math,
    op: `${op} (dK)`,
    a: work,
    b: q,
    c: dK,
    m: S,
    n: D,
    k: S,
    transA: true,
    lda: T,
    ldb: HD,
    ldc: HD,
    offsetA: P,
    alpha: scale,
    ...headBatches(dims, "score", "tok", "tok"),
  });
  if (prefixGrad && P > 0) {
    prefixGradient(
      rec,
      `${op} (dPrefixKey)`,
      dims,
      work,
      q,
      dPrefixKey,
      scale,
      args.accumulatePrefix ?? false,
      f16Math,
    );
  }
}
