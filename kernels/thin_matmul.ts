// C = alpha · X·op(W) for an output a few columns wide (n ≤ 16) over a long k: LoRA's X·Aᵀ and
// dY·B (n = r, k = the layer's width). `matmul` gives each invocation whole output rows and the
// whole k loop, so such a product runs on a few hundred invocations reading rows far apart
// (about 4 ms per call at RoBERTa-large's 4,096 × 1,024 on an H100, half of a LoRA step's extra
// time). Here a workgroup of 64 invocations shares a few rows: invocation t sums k = t, t + 64,
// ... (neighbouring invocations read neighbouring elements of each row), then each output's 64
// partial sums are added in invocation order. Deterministic (a fixed order, no atomics); not bitwise
// `matmul`'s order, so it is its own op, not a matmul variant.

import { GpuError } from "./device.ts";
import { enableF16, expectF16, loadAs } from "./f16.ts";
import { range } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { type DType, expectElements, FLOAT_DTYPES, type Tensor } from "./tensor.ts";

/** The widest output this op takes (LoRA's rank r); wider ones are `matmul`'s. */
export const THIN_MAX_N = 16;

/** Invocations per workgroup, each summing every 64th k. */
const THREADS = 64;
/**
 * Row length of the partial sums in workgroup memory: one more than THREADS, so that the outputs'
 * final sums (output q reading row q) fall in different banks.
 */
const PITCH = THREADS + 1;

/** Arguments of `thinMatmul`: C = alpha · X·op(W), n at most THIN_MAX_N. */
export interface ThinMatmulArgs {
  /** Names the op in errors and as the dispatch label; defaults to "thinMatmul". */
  op?: string;
  /** [m, k] row-major, f32 or f16 (any shape of m·k elements). */
  x: Tensor;
  /** op(W) is k×n: W stored [n, k] when `transW` (LoRA's A), else [k, n] (LoRA's B); f32. */
  w: Tensor;
  /** W is stored [n, k] (transposed). */
  transW: boolean;
  /** [m, n] f32 (any shape of m·n elements), overwritten. */
  c: Tensor;
  /** Rows of X and C. */
  m: number;
  /** Columns of C, 1 to THIN_MAX_N. */
  n: number;
  /** The summed dimension: columns of X. */
  k: number;
  /** Default 1. */
  alpha?: number;
}

/** Rows per workgroup: R·n partial sums per invocation, R·n·65 floats of workgroup memory. */
function rowsPerGroup(n: number): number {
  return n <= 8 ? 4 : 2;
}

function thinWgsl(n: number, transW: boolean, xType: DType): string {
  const R = rowsPerGroup(n);
  const w = (j: number) => (transW ? `W[${j}u * p.k + kk]` : `W[kk * ${n}u + ${j}u]`);
  const body: string[] = [];
  for (const j of range(n)) body.push(`let w${j} = ${w(j)};`);
  for (const r of range(R)) {
    body.push(`let x${r} = ${loadAs(xType, `X[xr${r} + kk]`)};`);
    for (const j of range(n)) body.push(`s${r}_${j} += x${r} * w${j};`);
  }
  const decl: string[] = [];
  const keep: string[] = [];
  for (const r of range(R)) {
    decl.push(`let xr${r} = min(row0 + ${r}u, p.m - 1u) * p.k;`);
    for (const j of range(n)) {
      decl.push(`var s${r}_${j} = 0.0;`);
      keep.push(`part[${r * n + j}u * ${PITCH}u + t] = s${r}_${j};`);
    }
  }
  return /* wgsl */ `${enableF16([xType])}
@group(0) @binding(0) var<storage, read> X: array<${xType}>;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
struct Params { m: u32, k: u32, gx: u32, alpha: f32 }
@group(0) @binding(3) var<uniform> p: Params;

// part[q * PITCH + t]: invocation t's partial sum of output q (row q / n, column q % n).
var<workgroup> part: array<f32, ${R * n * PITCH}>;

@compute @workgroup_size(${THREADS})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) t: u32) {
  let row0 = (wid.y * p.gx + wid.x) * ${R}u;
  ${decl.join("\n  ")}
  for (var kk = t; kk < p.k; kk += ${THREADS}u) {
    ${body.join("\n    ")}
  }
  ${keep.join("\n  ")}
  workgroupBarrier();
  // Output q = t adds the 64 partial sums in invocation order.
  if (t < ${R * n}u) {
    let row = row0 + t / ${n}u;
    var sum = part[t * ${PITCH}u];
    for (var i = 1u; i < ${THREADS}u; i++) { sum += part[t * ${PITCH}u + i]; }
    if (row < p.m) { C[row * ${n}u + t % ${n}u] = p.alpha * sum; }
  }
}
`;
}

function fail(op: string, message: string): never {
  throw new GpuError(`${op}: ${message}`);
}

const thinSource = cachedSource(thinWgsl);

/** Records c = alpha · x·op(w) (see ThinMatmulArgs). */
export function thinMatmul(rec: Recorder, args: ThinMatmulArgs): void {
  const op = args.op ?? "thinMatmul";
  const { x, w, c, m, n, k, transW } = args;
  const alpha = args.alpha ?? 1;
  for (const [name, v] of [["m", m], ["n", n], ["k", k]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      fail(op, `${name} must be a non-negative integer, got ${v}`);
    }
  }
  if (n < 1 || n > THIN_MAX_N) fail(op, `n = ${n} is outside 1..${THIN_MAX_N}`);
  if (!Number.isFinite(alpha)) fail(op, `alpha must be finite, got ${alpha}`);
  expectElements(op, "x", x, m * k, FLOAT_DTYPES);
  expectElements(op, "w", w, n * k, ["f32"]);
  expectElements(op, "c", c, m * n, ["f32"]);
  for (const [name, t] of [["x", x], ["w", w]] as const) {
    if (t.buffer === c.buffer) {
      fail(op, `c ("${c.label}") shares a GPU buffer with ${name} ("${t.label}")`);
    }
  }
  if (x.dtype === "f16") expectF16(rec.gpu, op);
  if (m === 0) return;

  const groups = Math.ceil(m / rowsPerGroup(n));
  const max = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  const gx = Math.min(groups, max);
  const gy = Math.ceil(groups / gx);
  if (gy > max) fail(op, `${m} rows need more than ${max}² workgroups`);
  const name = `thin_matmul_n${n}_${transW ? "t" : "n"}${x.dtype === "f16" ? "_f16" : ""}`;
  const pipeline = getPipeline(rec.gpu, name, thinSource(n, transW, x.dtype));
  const words = new Uint32Array([m, k, gx, 0]);
  new Float32Array(words.buffer)[3] = alpha;
  rec.dispatch(op, pipeline, [x, w, c], [gx, gy], words);
}
