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
// Forward, one dispatch: one workgroup per block of four query rows (b, h, i…i+3), the rows
// being the lanes of vec4 values so that every key/value element loaded serves four rows,
// computes the T scores, the
// softmax (saved pre-dropout in `probs`), regenerates the dropout mask and accumulates
// context = P̃·V. Backward, two dispatches: a row pass (blocks of rows as above) computes dP = dC·Vᵀ ⊙ mask,
// dS = P ⊙ (dP − Σ P⊙dP) into a workspace and dQ = scale·dS·K; a column pass (one workgroup per
// block of four key rows, sequence or prefix) computes dK = scale·dSᵀ·Q and dV = P̃ᵀ·dC, prefix columns summing
// over the batch too. Every output element is written by one invocation, every sum runs in a
// fixed order: no atomics, bitwise-deterministic.

import { GpuError } from "./device.ts";
import { checkDropout, DROPOUT_WGSL, type DropoutConfig, dropoutScale } from "./dropout.ts";
import { grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { createTensor, expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WG = 64;
/** Each invocation accumulates this many output columns, so head dims up to WG·ACC work. */
const ACC = 4;
/**
 * Query rows per workgroup in the row kernels (the four lanes of a vec4): each key or value
 * element loaded serves all of them, and the ~40 µs per-workgroup cost of lavapipe is paid once
 * per block instead of once per row.
 */
const ROWS = 4;
/** The largest head dimension the kernels handle. */
export const ATTENTION_MAX_HEAD_DIM = WG * ACC;

/**
 * WGSL repeating `body(m, col)` for the ACC output columns col = lid + m·WG an invocation owns,
 * each guarded by col < D. Unrolled with scalar accumulators (acc_*0 … acc_*3): a dynamically
 * indexed private array, and the prefix/sequence branch inside the inner loop, made these loops
 * twice as slow on lavapipe.
 */
function perColumn(body: (m: number, col: string) => string): string {
  let code = "";
  for (let m = 0; m < ACC; m++) {
    const col = m === 0 ? "lid" : `(lid + ${m * WG}u)`;
    code += `if (${col} < D) { ${body(m, col)} }\n`;
  }
  return code;
}

/** WGSL declaring zeroed accumulators `${name}0` … `${name}{ACC−1}` of type `type`. */
function accumulators(name: string, type = "f32"): string {
  let code = "";
  for (let m = 0; m < ACC; m++) code += `var ${name}${m} = ${type}(0.0);\n`;
  return code;
}

const LANES = ["x", "y", "z", "w"];

/** WGSL repeating `body(c)` for the ROWS query rows of the block, c the row's vec4 component. */
function perRow(body: (c: string) => string): string {
  return LANES.map((c) => body(c)).join("\n");
}

/** WGSL: `body(c)` for each query row of the block that exists (the last block may be short). */
function perValidRow(body: (c: string) => string): string {
  return perRow((c) => `if (valid.${c}) { ${body(c)} }`);
}

/** WGSL vec4f of `array[base.c + offset]` over the block's rows. */
function gather(array: string, base: string, offset: string): string {
  return `vec4f(${LANES.map((c) => `${array}[${base}.${c} + ${offset}]`).join(", ")})`;
}

/**
 * WGSL for the kernels that give each workgroup a block of ROWS consecutive query rows
 * (b, h, i0 … i0+3) of one head: the entry point, the problem's sizes, per row (vec4
 * components) whether it exists, its offset in [B, S, H·D] tensors (qb) and of its T scores
 * (rb), then `body`. Rows past S alias row S − 1 for reads and are never written.
 */
function queryRowMain(body: string): string {
  return /* wgsl */ `
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let S = params.seq;
  let H = params.heads;
  let D = params.dim;
  let P = params.prefix;
  let T = params.keys;
  let HD = H * D;
  let blocks = (S + ROWS - 1u) / ROWS;
  let w = wid.x + wid.y * nwg.x;
  if (w >= params.batch * H * blocks) { return; }
  let i0 = (w % blocks) * ROWS;
  let h = (w / blocks) % H;
  let b = w / (blocks * H);
  let rows = vec4u(i0) + vec4u(0u, 1u, 2u, 3u);
  let valid = rows < vec4u(S);
  let i = min(rows, vec4u(S - 1u));
  let qb = (vec4u(b * S) + i) * HD + vec4u(h * D);
  let rb = (vec4u((b * H + h) * S) + i) * T;
${body}
}
`;
}

/**
 * WGSL adding to `s` (vec4f over the block's rows) the dot products of the rows' vectors in
 * `query` with key j's row: a row of `prefixRows` ([H, P, D]) for j < P, else sequence row
 * j − P of `sequenceRows` ([B, S, H·D]). One load of the key element serves the four rows.
 */
function dotKeyRow(query: string, prefixRows: string, sequenceRows: string): string {
  return /* wgsl */ `
    if (j < P) {
      let kb = (h * P + j) * D;
      for (var d = 0u; d < D; d++) { s += ${gather(query, "qb", "d")} * ${prefixRows}[kb + d]; }
    } else {
      let kb = (b * S + j - P) * HD + h * D;
      for (var d = 0u; d < D; d++) { s += ${gather(query, "qb", "d")} * ${sequenceRows}[kb + d]; }
    }`;
}

/**
 * WGSL accumulating Σ_j weight_j · row_j over the T keys into acc0 … acc{ACC−1} (vec4f over the
 * block's query rows), the key rows laid out as in `dotKeyRow`. The keys go in chunks of WG:
 * `weight` is WGSL that sets `weight` (vec4f) for key j < T (each invocation one key), staged in
 * the kernel's workgroup array `chunk` for the whole workgroup to read.
 */
function sumKeyRows(weight: string, prefixRows: string, sequenceRows: string): string {
  return /* wgsl */ `
  ${accumulators("acc", "vec4f")}
  let chunks = (T + WG - 1u) / WG;
  for (var c = 0u; c < chunks; c++) {
    let j = c * WG + lid;
    var weight = vec4f(0.0);
    if (j < T) {
      ${weight}
    }
    chunk[lid] = weight;
    workgroupBarrier();
    let n = min(WG, T - c * WG);
    let n_prefix = min(n, max(P, c * WG) - c * WG);
    for (var jj = 0u; jj < n_prefix; jj++) {
      let w = chunk[jj];
      let kb = (h * P + c * WG + jj) * D;
      ${perColumn((m, col) => `acc${m} += w * ${prefixRows}[kb + ${col}];`)}
    }
    for (var jj = n_prefix; jj < n; jj++) {
      let w = chunk[jj];
      let kb = (b * S + c * WG + jj - P) * HD + h * D;
      ${perColumn((m, col) => `acc${m} += w * ${sequenceRows}[kb + ${col}];`)}
    }
    workgroupBarrier();
  }`;
}

/**
 * WGSL storing (`=`) or adding (`+=`) the column pass's sums for the block's existing key rows
 * at `ob` (vec4u): dK = scale · acc_k into `dk`, dV = acc_v into `dv`.
 */
function storeKeyGradients(dk: string, dv: string, assign: "=" | "+="): string {
  return perColumn((m, col) =>
    perValidRow((c) =>
      `${dk}[ob.${c} + ${col}] ${assign} params.scale * acc_k${m}.${c}; ` +
      `${dv}[ob.${c} + ${col}] ${assign} acc_v${m}.${c};`
    )
  );
}

const COMMON_WGSL = /* wgsl */ `
${DROPOUT_WGSL}
struct Params {
  batch: u32, seq: u32, heads: u32, dim: u32,
  prefix: u32, keys: u32, seed: u32, stream: u32,
  p: f32, drop_scale: f32, scale: f32, flags: u32,
}
const WG = ${WG}u;
const ROWS = ${ROWS}u;
const FLAG_DROPOUT = 1u;
const FLAG_PREFIX_GRAD = 2u;
const FLAG_ACCUMULATE = 4u;

var<workgroup> red: array<f32, WG>;

// Workgroup sum or max of one value per invocation, in a fixed tree order.
fn wg_reduce(value: f32, lid: u32, is_max: bool) -> f32 {
  red[lid] = value;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) {
      let other = red[lid + stride];
      red[lid] = select(red[lid] + other, max(red[lid], other), is_max);
    }
    workgroupBarrier();
  }
  let result = red[0];
  workgroupBarrier();
  return result;
}

var<workgroup> red4: array<vec4f, WG>;

// wg_reduce for four values per invocation at once, each in the same order as wg_reduce.
fn wg_reduce4(value: vec4f, lid: u32, is_max: bool) -> vec4f {
  red4[lid] = value;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (lid < stride) {
      let other = red4[lid + stride];
      red4[lid] = select(red4[lid] + other, max(red4[lid], other), is_max);
    }
    workgroupBarrier();
  }
  let result = red4[0];
  workgroupBarrier();
  return result;
}

fn drop_factor4(index: vec4u) -> vec4f {
  return vec4f(drop_factor(index.x), drop_factor(index.y), drop_factor(index.z),
               drop_factor(index.w));
}

fn drop_factor(index: u32) -> f32 {
  if ((params.flags & FLAG_DROPOUT) == 0u) { return 1.0; }
  return select(0.0, params.drop_scale, dropout_keep(params.seed, params.stream, index, params.p));
}
`;

const FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> prefix_k: array<f32>;
@group(0) @binding(5) var<storage, read> prefix_v: array<f32>;
@group(0) @binding(6) var<storage, read_write> probs: array<f32>;
@group(0) @binding(7) var<storage, read_write> context: array<f32>;
@group(0) @binding(8) var<uniform> params: Params;
${COMMON_WGSL}
var<workgroup> chunk: array<vec4f, WG>;
${
  queryRowMain(/* wgsl */ `
  let neg_max = bitcast<f32>(0xff7fffffu);

  var local_max = vec4f(neg_max);
  for (var j = lid; j < T; j += WG) {
    var s = vec4f(0.0);
    ${dotKeyRow("q", "prefix_k", "k")}
    var bias = 0.0;
    if (j >= P) { bias = (1.0 - mask[b * S + j - P]) * neg_max; }
    s = s * params.scale + vec4f(bias);
    ${perValidRow((c) => `probs[rb.${c} + j] = s.${c};`)}
    local_max = max(local_max, s);
  }
  let row_max = wg_reduce4(local_max, lid, true);

  var local_sum = vec4f(0.0);
  for (var j = lid; j < T; j += WG) {
    let z = ${gather("probs", "rb", "j")} - row_max;
    // Masked keys give z ≈ −FLT_MAX; exact zero without relying on exp's overflow behaviour.
    let e = select(exp(z), vec4f(0.0), z < vec4f(-88.0));
    ${perValidRow((c) => `probs[rb.${c} + j] = e.${c};`)}
    local_sum += e;
  }
  let total = wg_reduce4(local_sum, lid, false);

  ${
    sumKeyRows(
      /* wgsl */ `
      let prob = ${gather("probs", "rb", "j")} / total;
      ${perValidRow((c) => `probs[rb.${c} + j] = prob.${c};`)}
      weight = prob * drop_factor4(rb + vec4u(j));`,
      "prefix_v",
      "v",
    )
  }
  ${perColumn((m, col) => perValidRow((c) => `context[qb.${c} + ${col}] = acc${m}.${c};`))}`)
}`;

const BACKWARD_ROWS_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> prefix_k: array<f32>;
@group(0) @binding(3) var<storage, read> prefix_v: array<f32>;
@group(0) @binding(4) var<storage, read> probs: array<f32>;
@group(0) @binding(5) var<storage, read> d_context: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_scores: array<f32>;
@group(0) @binding(7) var<storage, read_write> d_q: array<f32>;
@group(0) @binding(8) var<uniform> params: Params;
${COMMON_WGSL}
var<workgroup> chunk: array<vec4f, WG>;
${
  queryRowMain(/* wgsl */ `
  // dP = (dC·Vᵀ) ⊙ dropout, parked in the workspace until the row sum Σ P⊙dP is known.
  var local_dot = vec4f(0.0);
  for (var j = lid; j < T; j += WG) {
    var s = vec4f(0.0);
    ${dotKeyRow("d_context", "prefix_v", "v")}
    let dp = s * drop_factor4(rb + vec4u(j));
    ${perValidRow((c) => `d_scores[rb.${c} + j] = dp.${c};`)}
    local_dot += ${gather("probs", "rb", "j")} * dp;
  }
  let row_dot = wg_reduce4(local_dot, lid, false);

  // dS = P ⊙ (dP − Σ P⊙dP), then dQ = scale · dS·K. Rows past S read row S − 1's workspace
  // entries as it is being rewritten: garbage, but only in their own, never stored, lane.
  ${
    sumKeyRows(
      /* wgsl */ `
      weight = ${gather("probs", "rb", "j")} * (${gather("d_scores", "rb", "j")} - row_dot);
      ${perValidRow((c) => `d_scores[rb.${c} + j] = weight.${c};`)}`,
      "prefix_k",
      "k",
    )
  }
  ${
    perColumn((m, col) =>
      perValidRow((c) => `d_q[qb.${c} + ${col}] = params.scale * acc${m}.${c};`)
    )
  }`)
}`;

const BACKWARD_COLUMNS_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> d_context: array<f32>;
@group(0) @binding(2) var<storage, read> probs: array<f32>;
@group(0) @binding(3) var<storage, read> d_scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_k: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_v: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_prefix_k: array<f32>;
@group(0) @binding(7) var<storage, read_write> d_prefix_v: array<f32>;
@group(0) @binding(8) var<uniform> params: Params;
${COMMON_WGSL}
var<workgroup> chunk_ds: array<vec4f, WG>;
var<workgroup> chunk_p: array<vec4f, WG>;

// One workgroup per block of four consecutive key rows of one head (the lanes of vec4 values,
// so every q and dC element loaded serves four key rows): sequence blocks (b, h, j…j+3) first,
// then prefix blocks (h, p…p+3). Rows past the end alias the block's last row and are not stored.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let B = params.batch;
  let S = params.seq;
  let H = params.heads;
  let D = params.dim;
  let P = params.prefix;
  let T = params.keys;
  let HD = H * D;
  let w = wid.x + wid.y * nwg.x;
  let seq_blocks = (S + ROWS - 1u) / ROWS;
  let prefix_blocks = (P + ROWS - 1u) / ROWS;
  let sequence_columns = B * H * seq_blocks;
  let is_prefix = w >= sequence_columns;
  if (is_prefix && ((params.flags & FLAG_PREFIX_GRAD) == 0u ||
                    w >= sequence_columns + H * prefix_blocks)) {
    return;
  }
  // A sequence key row (b, h, j) sums over its batch's queries; a prefix row (h, p) over all.
  var h: u32;
  var first: u32;
  var count: u32;
  var offset: u32;
  var b_first: u32;
  var b_end: u32;
  if (is_prefix) {
    h = (w - sequence_columns) / prefix_blocks;
    first = ((w - sequence_columns) % prefix_blocks) * ROWS;
    count = P;
    offset = 0u;
    b_first = 0u;
    b_end = B;
  } else {
    first = (w % seq_blocks) * ROWS;
    h = (w / seq_blocks) % H;
    b_first = w / (seq_blocks * H);
    b_end = b_first + 1u;
    count = S;
    offset = P;
  }
  let rows = vec4u(first) + vec4u(0u, 1u, 2u, 3u);
  let valid = rows < vec4u(count);
  // Score columns of the block's key rows.
  let col = vec4u(offset) + min(rows, vec4u(count - 1u));

  ${accumulators("acc_k", "vec4f")}
  ${accumulators("acc_v", "vec4f")}
  let chunks = (S + WG - 1u) / WG;
  for (var b = b_first; b < b_end; b++) {
    for (var c = 0u; c < chunks; c++) {
      let i = c * WG + lid;
      var ds = vec4f(0.0);
      var weight = vec4f(0.0);
      if (i < S) {
        let index = vec4u(((b * H + h) * S + i) * T) + col;
        ds = ${gather("d_scores", "index", "0u")};
        weight = ${gather("probs", "index", "0u")} * drop_factor4(index);
      }
      chunk_ds[lid] = ds;
      chunk_p[lid] = weight;
      workgroupBarrier();
      let n = min(WG, S - c * WG);
      for (var ii = 0u; ii < n; ii++) {
        let ds_i = chunk_ds[ii];
        let p_i = chunk_p[ii];
        let qb = (b * S + c * WG + ii) * HD + h * D;
        ${
  perColumn((m, c) => `acc_k${m} += ds_i * q[qb + ${c}]; acc_v${m} += p_i * d_context[qb + ${c}];`)
}
      }
      workgroupBarrier();
    }
  }
  if (is_prefix) {
    let ob = (vec4u(h * P) + col) * D;
    if ((params.flags & FLAG_ACCUMULATE) != 0u) {
      ${storeKeyGradients("d_prefix_k", "d_prefix_v", "+=")}
    } else {
      ${storeKeyGradients("d_prefix_k", "d_prefix_v", "=")}
    }
  } else {
    let ob = (vec4u(b_first * S) + col - vec4u(P)) * HD + vec4u(h * D);
    ${storeKeyGradients("d_k", "d_v", "=")}
  }
}
`;

interface Dims {
  B: number;
  S: number;
  H: number;
  D: number;
  P: number;
}

/** Checks q/k/v-like tensors, heads and the prefix pair; returns the problem's sizes. */
function checkCommon(
  op: string,
  qkv: [string, Tensor][],
  heads: number,
  prefixKey: Tensor | undefined,
  prefixValue: Tensor | undefined,
): Dims {
  const [qName, q] = qkv[0];
  expectShape(op, qName, q, [-1, -1, -1], "f32");
  const [B, S, HD] = q.shape;
  for (const [name, t] of qkv.slice(1)) expectShape(op, name, t, [B, S, HD], "f32");
  if (!Number.isInteger(heads) || heads < 1 || HD % heads !== 0) {
    throw new GpuError(`${op}: heads ${heads} does not divide the hidden size ${HD}`);
  }
  const H = heads, D = HD / heads;
  if (D > ATTENTION_MAX_HEAD_DIM) {
    throw new GpuError(
      `${op}: head dimension ${D} exceeds the supported maximum ${ATTENTION_MAX_HEAD_DIM}`,
    );
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

function params(
  dims: Dims,
  dropout: DropoutConfig,
  flags: number,
): Uint32Array {
  const buffer = new ArrayBuffer(48);
  const u = new Uint32Array(buffer);
  const f = new Float32Array(buffer);
  const { B, S, H, D, P } = dims;
  u.set([B, S, H, D, P, P + S, dropout.seed, dropout.stream]);
  const drop = dropout.p > 0;
  f[8] = dropout.p;
  f[9] = drop ? dropoutScale(dropout.p) : 1;
  f[10] = 1 / Math.sqrt(D);
  u[11] = flags | (drop ? 1 : 0);
  return u;
}

function rowsGrid(rec: Recorder, rows: number): [number, number] {
  return grid1d(rows, 1, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

/** The grid of the row kernels: one workgroup per block of ROWS query rows of one head. */
function blocksGrid(rec: Recorder, dims: Dims): [number, number] {
  return rowsGrid(rec, dims.B * dims.H * Math.ceil(dims.S / ROWS));
}

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
    dropout: DropoutConfig;
  },
): void {
  const op = "attentionForward";
  const { q, k, v, mask, prefixKey, prefixValue, probs, context, heads, dropout } = args;
  const dims = checkCommon(
    op,
    [["q", q], ["k", k], ["v", v], ["context", context]],
    heads,
    prefixKey,
    prefixValue,
  );
  const { B, S, H, P } = dims;
  expectShape(op, "mask", mask, [B, S], "f32");
  expectShape(op, "probs", probs, [B, H, S, P + S], "f32");
  checkDropout(op, dropout);
  const bound: [string, Tensor][] = [
    ["q", q],
    ["k", k],
    ["v", v],
    ["mask", mask],
    ["prefixKey", prefixKey ?? q],
    ["prefixValue", prefixValue ?? q],
    ["probs", probs],
    ["context", context],
  ];
  for (const [name, t] of bound) expectBindable(op, name, t);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, "attention forward", FORWARD_WGSL),
    bound.map(([, t]) => t),
    blocksGrid(rec, dims),
    params(dims, dropout, 0),
  );
}

const workspaces = new WeakMap<object, Tensor>();
const dummies = new WeakMap<object, [Tensor, Tensor]>();

/**
 * The module's per-device dS workspace, grown on demand. Sharing it is safe: it is written and
 * read only between the two dispatches of one backward, and dispatches run in order. An
 * outgrown buffer is not destroyed (a recorded, unsubmitted command may still bind it).
 */
function workspace(rec: Recorder, shape: number[]): Tensor {
  const gpu = rec.gpu;
  const need = shape.reduce((a, b) => a * b, 1);
  let t = workspaces.get(gpu);
  if (!t || t.numel < need) {
    t = createTensor(gpu, [Math.max(need, 1)], "f32", "attention dScores workspace");
    workspaces.set(gpu, t);
  }
  return t.view(0, shape, "attention dScores workspace");
}

/** Writable stand-ins for absent prefix gradients (never written: no workgroup is launched). */
function dummyPair(rec: Recorder): [Tensor, Tensor] {
  let pair = dummies.get(rec.gpu);
  if (!pair) {
    pair = [
      createTensor(rec.gpu, [1], "f32", "attention no dPrefixKey"),
      createTensor(rec.gpu, [1], "f32", "attention no dPrefixValue"),
    ];
    dummies.set(rec.gpu, pair);
  }
  return pair;
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
    dropout: DropoutConfig;
    dScores?: Tensor;
  },
): void {
  const op = "attentionBackward";
  const { q, k, v, probs, dContext, dQ, dK, dV, prefixKey, prefixValue, heads, dropout } = args;
  const { dPrefixKey, dPrefixValue } = args;
  const dims = checkCommon(
    op,
    [["q", q], ["k", k], ["v", v], ["dContext", dContext], ["dQ", dQ], ["dK", dK], ["dV", dV]],
    heads,
    prefixKey,
    prefixValue,
  );
  const { B, S, H, D, P } = dims;
  const scoresShape = [B, H, S, P + S];
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
  checkDropout(op, dropout);
  const dScores = args.dScores ?? workspace(rec, scoresShape);
  const [noDPK, noDPV] = prefixGrad ? [dPrefixKey, dPrefixValue] : dummyPair(rec);

  const rowBindings: [string, Tensor][] = [
    ["k", k],
    ["v", v],
    ["prefixKey", prefixKey ?? k],
    ["prefixValue", prefixValue ?? k],
    ["probs", probs],
    ["dContext", dContext],
    ["dScores", dScores],
    ["dQ", dQ],
  ];
  const columnBindings: [string, Tensor][] = [
    ["q", q],
    ["dContext", dContext],
    ["probs", probs],
    ["dScores", dScores],
    ["dK", dK],
    ["dV", dV],
    ["dPrefixKey", noDPK],
    ["dPrefixValue", noDPV],
  ];
  for (const [name, t] of [...rowBindings, ...columnBindings]) expectBindable(op, name, t);

  const gpu = rec.gpu;
  rec.dispatch(
    `${op} (dQ)`,
    getPipeline(gpu, "attention backward rows", BACKWARD_ROWS_WGSL),
    rowBindings.map(([, t]) => t),
    blocksGrid(rec, dims),
    params(dims, dropout, 0),
  );
  const flags = (prefixGrad ? 2 : 0) | (args.accumulatePrefix ? 4 : 0);
  rec.dispatch(
    `${op} (dK, dV${prefixGrad ? ", dPrefix" : ""})`,
    getPipeline(gpu, "attention backward columns", BACKWARD_COLUMNS_WGSL),
    columnBindings.map(([, t]) => t),
    rowsGrid(rec, B * H * Math.ceil(S / ROWS) + (prefixGrad ? H * Math.ceil(P / ROWS) : 0)),
    params(dims, dropout, flags),
  );
}
