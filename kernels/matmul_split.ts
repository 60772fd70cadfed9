// Split-k for weight gradients: dW = dYᵀ·X sums over every token of the batch (k = batch × seq,
// thousands) into an output of a few hundred to a thousand rows and columns. One invocation per
// output tile then leaves most of a large GPU idle: the H200 ran 1024 × 1024 × 4096 at 6 TFLOP/s
// against 20 for the products with four times the outputs (BENCHMARKS.md, second GPU run), and
// 96 of RoBERTa-large's 146 weight gradients a step have that shape.
//
// Such a product is cut along k into S consecutive slices, all computed by one batched launch of
// the usual kernels (each slice summed in increasing k, as every variant sums) into a workspace;
// then `splitKSum` adds the S partial sums of each output in slice order and applies alpha, bias
// and accumulate. S depends on the shape alone, never on the adapter or the variant chosen, so
// every variant (and so every autotune choice) still gives bitwise the same result. The order of
// the sum differs from an unsplit product's, which is why only the weight gradient's form is
// split (A transposed, B not): a forward or dX product never depends on how many rows its batch
// has, nor on anything but its own row.

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

/** At most this many slices. */
export const SPLIT_K_MAX = 8;
/** Each slice at least this long. */
export const SPLIT_K_MIN = 512;
/** Only outputs of at most this many elements are split (1024 × 1024). */
export const SPLIT_K_MAX_OUTPUTS = 1 << 20;

/**
 * The slices a product is cut into along k (1: not split): for an unbatched weight-gradient-form
 * product (`transA`, not `transB`) with at most SPLIT_K_MAX_OUTPUTS outputs, the most slices
 * (at most SPLIT_K_MAX) of at least SPLIT_K_MIN that cut k into equal parts of a multiple of 4
 * (so that every slice starts where the vec4 kernels can read).
 */
export function splitKCount(
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  products: number,
): number {
  if (!transA || transB || products !== 1 || m * n > SPLIT_K_MAX_OUTPUTS) return 1;
  for (let s = Math.min(SPLIT_K_MAX, Math.floor(k / SPLIT_K_MIN)); s >= 2; s--) {
    if (k % (4 * s) === 0) return s;
  }
  return 1;
}

const WORKGROUP = 256;

/**
 * The sum of `slices` slices, with the old C added (`accumulate`) and a bias (`bias`): a kernel
 * of its own for each, with no branch on them. One kernel that branched on a uniform's slice
 * count and flags leaked about 140 KB of host memory a launch on lavapipe (Mesa 22.3), without
 * end: 1.4 MB a training step of a 2-layer model at 1,024 tokens (BENCHMARKS.md).
 * Bindings: partial, then bias (when `bias`), then C, then the parameters.
 */
export function splitKSumWgsl(slices: number, accumulate: boolean, bias: boolean): string {
  const C = bias ? 2 : 1;
  const loads = Array.from(
    { length: slices },
    (_, s) => s === 0 ? "let x0 = partial[i];" : `let x${s} = partial[${s}u * mn + i];`,
  );
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> partial: array<f32>;
${bias ? "@group(0) @binding(1) var<storage, read> bias: array<f32>;" : ""}
@group(0) @binding(${C}) var<storage, read_write> C: array<f32>;
struct Params { m: u32, n: u32, ldc: u32, offC: u32, alpha: f32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(${C + 1}) var<uniform> p: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  let mn = p.m * p.n;
  if (i >= mn) { return; }
  let gi = i / p.n;
  let idx = p.offC + gi * p.ldc + (i - gi * p.n);
  // Every slice's value (and the old C) is loaded before any is added: a loop of one load and one
  // add kept one load in flight per invocation (WGSL's loop counters keep GPU compilers from
  // unrolling). The slices are added in order.
  ${loads.join("\n  ")}
  ${accumulate ? "let old = C[idx];" : ""}
  var v = x0;
  ${Array.from({ length: slices - 1 }, (_, s) => `v += x${s + 1};`).join("\n  ")}
  // As matmul's store: alpha times the product, then the bias, then the old C.
  var o = p.alpha * v;
  ${bias ? "o += bias[i - gi * p.n];" : ""}
  ${accumulate ? "o += old;" : ""}
  C[idx] = o;
}
`;
}

const sumSource = cachedSource(splitKSumWgsl);

/**
 * Records C[offC + i·ldc + j] = alpha · Σ_s partial[s][i][j] (+ bias[j]) (+ C[...]), the slices
 * added in order; `partial` holds `slices` packed m×n blocks. C is f32 (matmul splits no other).
 */
export function splitKSum(
  rec: Recorder,
  op: string,
  args: {
    partial: Tensor;
    c: Tensor;
    bias?: Tensor;
    m: number;
    n: number;
    slices: number;
    offC: number;
    ldc: number;
    alpha: number;
    accumulate: boolean;
  },
): void {
  const { partial, c, m, n } = args;
  if (!(Number.isInteger(args.slices) && args.slices >= 1 && args.slices <= SPLIT_K_MAX)) {
    // The kernel adds at most SPLIT_K_MAX slices (it loads them all before adding any).
    throw new GpuError(`${op}: ${args.slices} k-slices; the split-k sum adds 1 to ${SPLIT_K_MAX}`);
  }
  const words = new Uint32Array([m, n, args.ldc, args.offC, 0, 0, 0, 0]);
  new Float32Array(words.buffer)[4] = args.alpha;
  const code = sumSource(args.slices, args.accumulate, args.bias !== undefined);
  rec.dispatch(
    `${op} (split-k sum)`,
    getPipeline(rec.gpu, "matmul split-k sum", code),
    args.bias ? [partial, args.bias, c] : [partial, c],
    grid1d(m * n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    words,
  );
}
