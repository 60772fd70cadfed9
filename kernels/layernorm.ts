// LayerNorm over the last dimension, as torch.nn.LayerNorm (biased variance, eps inside the
// square root), forward and backward.
//
// The forward and dX give each row a fixed number of invocations (8 or 32, several rows to a
// workgroup). Each invocation sums a fixed strided subset of the row in order, then a fixed tree
// in workgroup memory combines the partial sums, so results are bitwise reproducible.
// dGamma/dBeta are column sums over rows, laid out as linear.ts's columnSum: a workgroup owns
// PARAM_COLS neighbouring columns (neighbouring invocations read neighbouring addresses) and
// PARAM_SLICES interleaved slices of a block of rows; each slice adds its rows in order, loading
// PARAM_UNROLL of them before adding any (the sum is latency-bound: one load in flight per
// invocation left an H200 idling), and the slices are added in order. From 2·PARAM_BLOCK_ROWS
// rows on, a first launch writes each block's sums to a workspace (columns × blocks workgroups,
// enough to fill the GPU) and a second adds the blocks the same way (4 interleaved slices of
// blocks, each in order, then the slices in order); below that, one launch sums all
// rows as one block. The order is fixed by the shapes alone: results are bitwise reproducible.
// (It was one launch of ceil(h/16) workgroups, each lane looping over rows/16 rows: 64
// workgroups and 0.133 ms on an H200 for 4096 × 1024.)
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
import { grid1d, range } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindings, expectShape, type Tensor } from "./tensor.ts";
import { Workspace } from "./workspace.ts";

const WORKGROUP = 256;
/** dGamma/dBeta: columns per workgroup, and the interleaved row slices of each. */
const PARAM_COLS = 64;
const PARAM_SLICES = WORKGROUP / PARAM_COLS;
/** dGamma/dBeta: rows loaded by an invocation before it adds them (in order). */
const PARAM_UNROLL = 8;
/**
 * dGamma/dBeta: rows per block of the first of two launches, from 2·PARAM_BLOCK_ROWS rows on.
 * 4096 × 1024 makes 16 × 32 = 512 workgroups, each invocation adding 32 rows.
 */
export const PARAM_BLOCK_ROWS = 128;

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

/** Elements a lane loads before it uses any of them in `stridedPass`. */
export const ROW_UNROLL = 4;

/**
 * WGSL for a pass over a row's elements j = lane, lane + t, … below n (i = base + j), ROW_UNROLL
 * of them at a time: the `loads` of all of them first, then the `body` of each, in order. WGSL
 * gives every loop a counter, which keeps a GPU compiler from unrolling it, and a load inside the
 * loop then waits a memory round trip per element, one load in flight per invocation (the column
 * sums' lesson, linear.ts SUM_UNROLL). The body runs in the order of the plain loop, so a sum
 * adds the same terms in the same order: bitwise the same results, as long as no body writes
 * what a later element's loads read (each element's own place only, as here). `loads(k)` and
 * `body(k)` name element k's index `j_k`, its place `i_k` and their own values with the suffix
 * `_k`.
 */
export function stridedPass(
  t: number,
  loads: (k: number) => string,
  body: (k: number) => string,
  n = "n",
  base = "base",
): string {
  const starts = range(ROW_UNROLL).map((k) => (k === 0 ? "j" : `j + ${k * t}u`));
  return `{
    var j = lane;
    for (; j + ${(ROW_UNROLL - 1) * t}u < ${n}; j += ${ROW_UNROLL * t}u) {
      ${loadsThenBodies(starts, loads, body, base, "\n      ")}
    }
    for (; j < ${n}; j += ${t}u) {
      ${loadsThenBodies(["j"], loads, body, base, "\n      ")}
    }
  }`;
}

/**
 * WGSL for the elements at row indices `starts` (element k named `j_k`, its place `i_k`): every
 * element's loads, then every element's body, in order; lines joined by `sep`.
 */
function loadsThenBodies(
  starts: string[],
  loads: (k: number) => string,
  body: (k: number) => string,
  base: string,
  sep: string,
): string {
  const ks = starts.map((_, k) => k);
  return [
    ...starts.map((j, k) => `let j_${k} = ${j}; let i_${k} = ${base} + j_${k};`),
    ...ks.map(loads),
    ...ks.map(body),
  ].join(sep);
}

/**
 * WGSL for a pass over a row's elements in quads (the passes that draw a dropout mask, four
 * neighbours to one Philox block): lane l takes elements 4l … 4l + 3, then 4(l + t) …, a whole
 * quad's `loads` before its `body`s, in order (a quad cut by the row's end one element at a
 * time). Names as in stridedPass.
 */
export function quadPass(
  t: number,
  loads: (k: number) => string,
  body: (k: number) => string,
  n = "n",
  base = "base",
): string {
  const starts = range(4).map((k) => (k === 0 ? "q" : `q + ${k}u`));
  return `for (var q = lane * 4u; q < ${n}; q += ${4 * t}u) {
      if (q + 4u <= ${n}) {
        ${loadsThenBodies(starts, loads, body, base, "\n        ")}
      } else {
        for (var j = q; j < ${n}; j++) {
          ${loadsThenBodies(["j"], loads, body, base, "\n          ")}
        }
      }
    }`;
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
  ${stridedPass(t, (k) => `let x_${k} = x[i_${k}];`, (k) => `s += x_${k};`)}
  let m1 = row_sum_0(lid, s) * inv_h;
  var q = vec2f(0.0);
  ${
      stridedPass(t, (k) => `let x_${k} = x[i_${k}];`, (k) =>
        `let d_${k} = x_${k} - m1;
      q += vec2f(d_${k}, d_${k} * d_${k});`)
    }
  let sums = row_sum_1(lid, q) * inv_h;
  let c = sums.x;
  let rstd = inverseSqrt(max(sums.y - c * c, 0.0) + params.eps);
  ${
      stridedPass(
        t,
        (k) => `let x_${k} = x[i_${k}]; let g_${k} = gamma[j_${k}]; let b_${k} = beta[j_${k}];`,
        (k) => `out[i_${k}] = ((x_${k} - m1) - c) * rstd * g_${k} + b_${k};`,
      )
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
  ${
      stridedPass(
        t,
        (k) => `let do_${k} = dOut[i_${k}]; let ga_${k} = gamma[j_${k}]; let x_${k} = x[i_${k}];`,
        (k) =>
          `let g_${k} = do_${k} * ga_${k};
      let d_${k} = x_${k} - m;
      s += vec3f(g_${k}, g_${k} * d_${k}, d_${k});`,
      )
    }
  let sums = row_sum_0(lid, s) * inv_h;
  let mean_g = sums.x;
  let c = sums.z;
  let mean_gx = rs * (sums.y - c * mean_g);
  // With one feature the output is beta whatever x, so dX is exactly 0; computed, FMA
  // contraction (NVIDIA) leaves g − mean_g at a product's rounding error, times rstd (1e6 at
  // eps 1e-12).
  ${
      stridedPass(
        t,
        (k) =>
          `let do_${k} = dOut[i_${k}]; let ga_${k} = gamma[j_${k}]; let x_${k} = x[i_${k}];
      var old_${k} = 0.0;
      if (params.accumulate != 0u) { old_${k} = dX[i_${k}]; }`,
        (k) =>
          `let g_${k} = do_${k} * ga_${k};
      let xhat_${k} = ((x_${k} - m) - c) * rs;
      var v_${k} = select(rs * (g_${k} - mean_g - xhat_${k} * mean_gx), 0.0, params.h == 1u);
      if (params.accumulate != 0u) { v_${k} += old_${k}; }
      dX[i_${k}] = v_${k};`,
      )
    }`,
  );

/**
 * dGamma/dBeta column sums. `input` is what is summed: "x" (x̂ from x and the saved mean and
 * rstd), "xhat" (x̂ as the forward saved it, see add_layernorm.ts), both with dOut, or "blocks"
 * (the first launch's per-block sums, vec2f(dGamma, dBeta) per column). With `toBlocks` the
 * workgroup's block sums go to row `block` of the workspace, else into dGamma/dBeta (added when
 * `accumulate`), whichever are present. Without dGamma only dOut is read (and bound).
 *
 * Workgroup `group` (flattened over x and y past the per-dimension limit) takes columns
 * (group % colGroups)·PARAM_COLS, ... and rows [block·blockRows, min(rows, (block+1)·blockRows))
 * with block = group / colGroups; slice lid.y adds the rows first + lid.y, + PARAM_SLICES, ...
 */
function backwardParamsWgsl(
  input: "x" | "xhat" | "blocks",
  withGamma: boolean,
  withBeta: boolean,
  toBlocks: boolean,
): string {
  const xhatFrom = !withGamma ? [] : input === "x" ? ["x", "mean", "rstd"] : ["xhat"];
  const inputs = input === "blocks"
    ? [{ name: "blocks_in", type: "vec2f" }]
    : [...xhatFrom, "dOut"].map((name) => ({ name, type: "f32" }));
  const outs = toBlocks ? [{ name: "blocks_out", type: "vec2f" }] : [
    ...(withGamma ? [{ name: "dGamma", type: "f32" }] : []),
    ...(withBeta ? [{ name: "dBeta", type: "f32" }] : []),
  ];
  const bindings = [
    ...inputs.map(({ name, type }, i) =>
      `@group(0) @binding(${i}) var<storage, read> ${name}: array<${type}>;`
    ),
    ...outs.map(({ name, type }, i) =>
      `@group(0) @binding(${inputs.length + i}) var<storage, read_write> ${name}: array<${type}>;`
    ),
  ].join("\n");
  // Row k of an unrolled batch (row index r_k): its loads, then its term.
  const loads = (k: number): string[] => {
    const at = `r_${k} * h + col`;
    if (input === "blocks") return [`let v_${k} = blocks_in[${at}];`];
    const d = `let d_${k} = dOut[${at}];`;
    if (!withGamma) return [d];
    return input === "x"
      ? [d, `let x_${k} = x[${at}];`, `let m_${k} = mean[r_${k}];`, `let rs_${k} = rstd[r_${k}];`]
      : [d, `let xh_${k} = xhat[${at}];`];
  };
  const term = (k: number): string => {
    if (input === "blocks") return `v_${k}`;
    if (!withGamma) return `vec2f(0.0, d_${k})`;
    const xhat = input === "x" ? `((x_${k} - m_${k}) * rs_${k})` : `xh_${k}`;
    return `vec2f(d_${k} * ${xhat}, d_${k})`;
  };
  const batch = range(PARAM_UNROLL);
  const store = toBlocks ? `blocks_out[block * h + col] = t;` : outs.map(({ name }) => {
    const part = name === "dGamma" ? "x" : "y";
    return `var ${name}_v = t.${part};
    if (params.accumulate != 0u) { ${name}_v += ${name}[col]; }
    ${name}[col] = ${name}_v;`;
  }).join("\n    ");
  return /* wgsl */ `
${bindings}
struct Params { rows: u32, h: u32, accumulate: u32, blockRows: u32, colGroups: u32, blocks: u32 }
@group(0) @binding(${inputs.length + outs.length}) var<uniform> params: Params;
var<workgroup> partial: array<vec2f, ${WORKGROUP}>;

@compute @workgroup_size(${PARAM_COLS}, ${PARAM_SLICES})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
) {
  let group = wid.x + wid.y * nwg.x;
  let block = group / params.colGroups;
  if (block >= params.blocks) { return; }
  let h = params.h;
  let col = (group % params.colGroups) * ${PARAM_COLS}u + lid.x;
  let first = block * params.blockRows;
  let end = min(params.rows, first + params.blockRows);
  var s = vec2f(0.0);
  if (col < h) {
    var r = first + lid.y;
    // ${PARAM_UNROLL} rows' loads in flight, then their terms added in row order.
    while (r + ${(PARAM_UNROLL - 1) * PARAM_SLICES}u < end) {
      ${batch.map((k) => `let r_${k} = r + ${k * PARAM_SLICES}u;`).join("\n      ")}
      ${batch.flatMap(loads).join("\n      ")}
      ${batch.map((k) => `s += ${term(k)};`).join("\n      ")}
      r += ${PARAM_UNROLL * PARAM_SLICES}u;
    }
    for (; r < end; r += ${PARAM_SLICES}u) {
      let r_0 = r;
      ${loads(0).join("\n      ")}
      s += ${term(0)};
    }
  }
  partial[lid.y * ${PARAM_COLS}u + lid.x] = s;
  workgroupBarrier();
  if (lid.y == 0u && col < h) {
    var t = partial[lid.x];
    for (var q = 1u; q < ${PARAM_SLICES}u; q++) { t += partial[q * ${PARAM_COLS}u + lid.x]; }
    ${store}
  }
}
`;
}

const backwardParamsSource = cachedSource(backwardParamsWgsl);

/** The first dGamma/dBeta launch's per-block sums, [blocks, h] of vec2f(dGamma, dBeta). */
const paramBlockSums = new Workspace("layernorm dGamma/dBeta blocks", 1, true);

/**
 * Records dGamma (Σ_rows dOut · x̂) and dBeta (Σ_rows dOut) over `rows` rows of `h`, added into
 * them when `accumulate`; either may be absent (then nothing is recorded for it). `source` is
 * x with the forward's saved mean and rstd, or the x̂ a forward saved. Shapes are the caller's
 * to check. Below 2·PARAM_BLOCK_ROWS rows one launch (`<label> dGamma/dBeta`); from there on
 * two: `<label> dGamma/dBeta blocks` into a workspace, then `<label> dGamma/dBeta` over the
 * blocks (the only one that adds into dGamma/dBeta: the workspace is overwritten every call).
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
  const input = "xhat" in source ? "xhat" : "x";
  // dBeta alone reads dOut alone (a binding the kernel does not use would be refused).
  const inputs = !dGamma
    ? []
    : "xhat" in source
    ? [source.xhat]
    : [source.x, source.mean, source.rstd];
  const outs = [dGamma, dBeta].filter((t): t is Tensor => t !== undefined);
  const name = `${label} dGamma/dBeta`;
  const colGroups = Math.ceil(h / PARAM_COLS);
  const accumulate = args.accumulate ? 1 : 0;
  if (rows < 2 * PARAM_BLOCK_ROWS) {
    rec.dispatch(
      name,
      getPipeline(rec.gpu, name, backwardParamsSource(input, !!dGamma, !!dBeta, false)),
      [...inputs, dOut, ...outs],
      groupGrid(rec, colGroups),
      new Uint32Array([rows, h, accumulate, rows, colGroups, 1]),
    );
    return;
  }
  const blocks = Math.ceil(rows / PARAM_BLOCK_ROWS);
  const partial = paramBlockSums.view(rec.gpu, [blocks, h, 2]);
  rec.dispatch(
    `${name} blocks`,
    getPipeline(rec.gpu, `${name} blocks`, backwardParamsSource(input, !!dGamma, !!dBeta, true)),
    [...inputs, dOut, partial],
    groupGrid(rec, colGroups * blocks),
    new Uint32Array([rows, h, 0, PARAM_BLOCK_ROWS, colGroups, blocks]),
  );
  rec.dispatch(
    name,
    getPipeline(rec.gpu, name, backwardParamsSource("blocks", !!dGamma, !!dBeta, false)),
    [partial, ...outs],
    groupGrid(rec, colGroups),
    new Uint32Array([blocks, h, accumulate, blocks, colGroups, 1]),
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
  expectBindings(op, { x, gamma, beta }, { out, mean, rstd });
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
  expectBindings(op, { x, gamma, mean, rstd, dOut }, { dX, dGamma, dBeta });

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
