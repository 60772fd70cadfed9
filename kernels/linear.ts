// Linear layers in Hugging Face's weight layout (W: [out, in]): Y = X·Wᵀ + b, and its gradients.
// The products are `matmul` calls; the bias is fused into the forward product, and the bias
// gradient (a column sum of dY) has its own small kernel. A GELU after the layer (BERT's
// intermediate.dense) can ride on the product's epilogue both ways: the forward writes gelu(Y)
// and Y, and the backward of the layer that reads gelu(Y) turns its dX into the gradient of Y.

import { GpuError } from "./device.ts";
import { enableF16, loadAs } from "./f16.ts";
import { range } from "./grid.ts";
import { matmul } from "./matmul.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { Workspace } from "./workspace.ts";
import {
  type DType,
  expectBindable,
  expectDisjoint,
  expectShape,
  FLOAT_DTYPES,
  type Tensor,
} from "./tensor.ts";

/** Arguments of `linearForward`: x, weight and out are f32 or f16; the bias is f32. */
export interface LinearForwardArgs {
  /** [..., in]; the leading dimensions are flattened to rows. */
  x: Tensor;
  /** [out, in] */
  weight: Tensor;
  /** [out] */
  bias?: Tensor;
  /** [..., out], the same leading dimensions as x. */
  out: Tensor;
  /** "gelu": out = gelu(x·weightᵀ + b) (the erf form of kernels/gelu.ts). */
  activation?: "gelu";
  /** With an activation: receives x·weightᵀ + b, [..., out] (GELU's backward needs it). */
  preActivation?: Tensor;
  /** Where the layer is (e.g. "query"), added to the product's label for profiles. */
  site?: string;
  /**
   * Multiply and sum in f16 (matmul's `f16Math`: f32 operands rounded to f16 as they are read);
   * default false: f32 sums.
   */
  f16Math?: boolean;
}

/**
 * Arguments of `linearBackward`: each gradient given is written (or added into); the weight and
 * bias gradients are f32.
 */
export interface LinearBackwardArgs {
  /** The forward input, [..., in]. */
  x: Tensor;
  /** [out, in] */
  weight: Tensor;
  /** Gradient of the loss with respect to the forward output, [..., out]. */
  dOut: Tensor;
  /** dX = dY·W, [..., in]; omit when the input needs no gradient. */
  dX?: Tensor;
  /** dW = dYᵀ·X, [out, in]; omit for a frozen weight. */
  dWeight?: Tensor;
  /** db = Σ_rows dY, [out]; omit for a frozen (or absent) bias. */
  dBias?: Tensor;
  /** Add dX into dX's existing contents (a residual stream gets several contributions). */
  accumulateDX?: boolean;
  /**
   * When x = gelu(geluInput) ([..., in]): dX becomes the gradient with respect to geluInput,
   * (dOut·W) ⊙ gelu'(geluInput), in the same launch. Not with accumulateDX.
   */
  geluInput?: Tensor;
  /** Add dW and db into the existing gradients instead of overwriting them. */
  accumulate?: boolean;
  /** Where the layer is (e.g. "query"), added to the products' labels for profiles. */
  site?: string;
  /**
   * Multiply and sum both products in f16 (matmul's `f16Math`: f32 operands rounded to f16 as
   * they are read); default false: f32 sums.
   */
  f16Math?: boolean;
}

/** Checks x [..., in] and weight [out, in]; returns rows, in, out and x's leading dimensions. */
function linearShapes(op: string, x: Tensor, weight: Tensor) {
  expectShape(op, "weight", weight, [-1, -1], FLOAT_DTYPES);
  const [outF, inF] = weight.shape;
  if (x.shape.length < 1) {
    throw new GpuError(`${op}: x ("${x.label}") is a scalar, expected [..., ${inF}]`);
  }
  const lead = x.shape.slice(0, -1);
  expectShape(op, "x", x, [...lead, inF], FLOAT_DTYPES);
  const rows = lead.reduce((a, b) => a * b, 1);
  return { rows, inF, outF, lead };
}

/** Records out = x·weightᵀ (+ bias), through the activation when one is given. */
export function linearForward(rec: Recorder, args: LinearForwardArgs): void {
  const op = "linearForward";
  const { x, weight, bias, out, activation, preActivation } = args;
  const { rows, inF, outF, lead } = linearShapes(op, x, weight);
  if (bias) expectShape(op, "bias", bias, [outF], "f32");
  expectShape(op, "out", out, [...lead, outF], FLOAT_DTYPES);
  if (activation !== undefined && activation !== "gelu") {
    throw new GpuError(`${op}: unknown activation "${activation}"`);
  }
  if (preActivation) {
    if (!activation) {
      throw new GpuError(
        `${op}: preActivation ("${preActivation.label}") given without an activation`,
      );
    }
    expectShape(op, "preActivation", preActivation, [...lead, outF], FLOAT_DTYPES);
  }
  const bound = [["x", x], ["weight", weight], ["bias", bias], ["out", out], [
    "preActivation",
    preActivation,
  ]] as const;
  for (const [name, t] of bound) if (t) expectBindable(op, name, t);
  matmul(rec, {
    op: args.site ? `${op} ${args.site}` : op,
    a: x,
    b: weight,
    c: out,
    bias,
    m: rows,
    n: outF,
    k: inF,
    transB: true,
    epilogue: activation ? { kind: "gelu", preActivation } : undefined,
    f16Math: args.f16Math ?? false,
  });
}

/** Records the requested gradients of a linear layer. */
export function linearBackward(rec: Recorder, args: LinearBackwardArgs): void {
  const op = "linearBackward";
  const { x, weight, dOut, dX, dWeight, dBias, geluInput } = args;
  const { rows, inF, outF, lead } = linearShapes(op, x, weight);
  expectShape(op, "dOut", dOut, [...lead, outF], FLOAT_DTYPES);
  if (dX) expectShape(op, "dX", dX, [...lead, inF], FLOAT_DTYPES);
  if (dWeight) expectShape(op, "dWeight", dWeight, [outF, inF], "f32");
  if (dBias) expectShape(op, "dBias", dBias, [outF], "f32");
  if (geluInput) {
    expectShape(op, "geluInput", geluInput, [...lead, inF], FLOAT_DTYPES);
    if (!dX) throw new GpuError(`${op}: geluInput ("${geluInput.label}") given without dX`);
    // The epilogue would scale the old contents too: (dOut·W + dX) ⊙ gelu'.
    if (args.accumulateDX) throw new GpuError(`${op}: geluInput cannot be used with accumulateDX`);
  }
  const bound = [["x", x], ["weight", weight], ["dOut", dOut], ["dX", dX], ["dWeight", dWeight], [
    "dBias",
    dBias,
  ], ["geluInput", geluInput]] as const;
  for (const [name, t] of bound) if (t) expectBindable(op, name, t);
  expectDisjoint(op, { dX, dWeight, dBias }, { x, weight, dOut });
  const at = args.site ? ` ${args.site}` : "";

  if (dX) {
    matmul(rec, {
      op: `${op} (dX)${at}`,
      a: dOut,
      b: weight,
      c: dX,
      m: rows,
      n: inF,
      k: outF,
      accumulate: args.accumulateDX ?? false,
      epilogue: geluInput ? { kind: "geluGrad", preActivation: geluInput } : undefined,
      f16Math: args.f16Math ?? false,
    });
  }
  if (dWeight) {
    matmul(rec, {
      op: `${op} (dWeight)${at}`,
      a: dOut,
      b: x,
      c: dWeight,
      m: outF,
      n: inF,
      k: rows,
      transA: true,
      accumulate: args.accumulate ?? false,
      f16Math: args.f16Math ?? false,
    });
  }
  if (dBias) columnSum(rec, `${op} (dBias)`, dOut, dBias, rows, outF, args.accumulate ?? false);
}

const SUM_COLS = 64; // columns per workgroup: neighbouring invocations read neighbouring addresses
const SUM_SLICES = 4; // rows are split into this many interleaved slices, summed in fixed order
/**
 * From twice this many rows on, the sum is two passes: each block of SUM_BLOCK_ROWS rows into a
 * workspace row (one workgroup per block and 64 columns), then the blocks. In one pass a
 * [4096, 1024] gradient (RoBERTa-large's bias at 32 × 128 tokens) had 16 workgroups, each looping
 * over 1,024 rows: 0.35 ms per call on an H100, 6% of a training step.
 */
export const SUM_BLOCK_ROWS = 256;

/**
 * Rows each invocation loads before adding any of them. The sum is latency-bound, not
 * bandwidth-bound: a loop of one load and one add per row kept one load in flight per
 * invocation, and a [4096, 1024] blocks pass took 0.036 ms on an H200, where reading 16 MB takes a
 * few µs. With SUM_UNROLL independent loads in flight the adds still go in increasing row order,
 * so the sums are bitwise those of the one-at-a-time loop.
 */
const SUM_UNROLL = 8;

/**
 * The column-sum kernel reading `src` of `dtype` (a gradient may be f16), summing in f32: the
 * workgroup at (x, y) sums rows [y·blockRows, min(rows, (y+1)·blockRows)) of its 64 columns into
 * row y of dst. Slice lid.y adds rows first + lid.y, + 4, ... in order (SUM_UNROLL loads at a
 * time, then the rest one by one), and the 4 slices are added in order.
 */
const columnSumWgsl = (dtype: DType) => {
  const load = (row: string) => loadAs(dtype, `src[(${row}) * p.cols + col]`);
  const loads = range(SUM_UNROLL).map((k) => `let v${k} = ${load(`r + ${k * SUM_SLICES}u`)};`);
  const adds = range(SUM_UNROLL).map((k) => `s += v${k};`);
  return /* wgsl */ `${enableF16([dtype])}
@group(0) @binding(0) var<storage, read> src: array<${dtype}>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
struct Params { rows: u32, cols: u32, accumulate: u32, blockRows: u32 }
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> partial: array<f32, ${SUM_COLS * SUM_SLICES}>;

@compute @workgroup_size(${SUM_COLS}, ${SUM_SLICES})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let col = wid.x * ${SUM_COLS}u + lid.x;
  let first = wid.y * p.blockRows;
  let end = min(p.rows, first + p.blockRows);
  var s = 0.0;
  if (col < p.cols) {
    var r = first + lid.y;
    while (r + ${(SUM_UNROLL - 1) * SUM_SLICES}u < end) {
      ${loads.join("\n      ")}
      ${adds.join("\n      ")}
      r += ${SUM_UNROLL * SUM_SLICES}u;
    }
    for (; r < end; r += ${SUM_SLICES}u) { s += ${load("r")}; }
  }
  partial[lid.y * ${SUM_COLS}u + lid.x] = s;
  workgroupBarrier();
  if (lid.y == 0u && col < p.cols) {
    var t = partial[lid.x];
    for (var q = 1u; q < ${SUM_SLICES}u; q++) { t += partial[q * ${SUM_COLS}u + lid.x]; }
    let at = wid.y * p.cols + col;
    if (p.accumulate != 0u) { t += dst[at]; }
    dst[at] = t;
  }
}
`;
};

/** columnSum's per-block sums, [blocks, cols]. */
const blockSums = new Workspace("column-sum blocks", 1, true);

const columnSumSource = cachedSource(columnSumWgsl);

/** dst[c] (+)= Σ_r src[r, c], deterministically (a fixed summation order, no atomics). */
export function columnSum(
  rec: Recorder,
  label: string,
  src: Tensor,
  dst: Tensor,
  rows: number,
  cols: number,
  accumulate: boolean,
): void {
  const groups = Math.ceil(cols / SUM_COLS);
  const max = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  if (groups > max) {
    throw new GpuError(`${label}: ${cols} columns need more than ${max} workgroups`);
  }
  const name = `linear_column_sum${src.dtype === "f16" ? "_f16" : ""}`;
  const pipeline = getPipeline(rec.gpu, name, columnSumSource(src.dtype));
  if (rows < 2 * SUM_BLOCK_ROWS) {
    rec.dispatch(
      label,
      pipeline,
      [src, dst],
      groups,
      new Uint32Array([rows, cols, +accumulate, rows]),
    );
    return;
  }
  const blocks = Math.ceil(rows / SUM_BLOCK_ROWS);
  if (blocks > max) {
    throw new GpuError(`${label}: ${rows} rows need more than ${max} blocks of ${SUM_BLOCK_ROWS}`);
  }
  const partial = blockSums.view(rec.gpu, [blocks, cols]);
  rec.dispatch(
    `${label} blocks`,
    pipeline,
    [src, partial],
    [groups, blocks],
    new Uint32Array([rows, cols, 0, SUM_BLOCK_ROWS]),
  );
  // One pass over the blocks (however many: the workspace must not be summed into itself).
  rec.dispatch(
    label,
    src.dtype === "f32"
      ? pipeline
      : getPipeline(rec.gpu, "linear_column_sum", columnSumSource("f32")),
    [partial, dst],
    groups,
    new Uint32Array([blocks, cols, +accumulate, blocks]),
  );
}
