// Per-block products aᵀ·b over blocks of rows, where a: [rows, m] and b: [rows, n] and one of m,
// n is a few wide (LoRA's rank r): partial[blk] = alpha · a[rows of blk]ᵀ · b[rows of blk], m×n,
// for lora.ts's `rowSum` (dA = dHiddenᵀ·X and dB = dYᵀ·hidden, summed over every token).
//
// As a batched `matmul`, with one operand 8 wide, those products ran on the barrier-free 4×4
// kernel reading rows far apart: 1.34-1.38 ms a call on the H200 for 67 MFLOP (49 GFLOP/s),
// 260 ms of a RoBERTa-large LoRA step (BENCHMARKS.md, second GPU run). Here invocation t of a
// workgroup owns one index of the wide side and all the narrow side's outputs with it: over the
// block's rows, neighbouring invocations read neighbouring elements of the wide operand's row and
// the same few elements of the narrow one's. Each output adds its products in increasing row
// order, one at a time, and is scaled by alpha once at the end, as `matmul` sums.

import { GpuError } from "./device.ts";
import { enableF16, expectF16, loadAs } from "./f16.ts";
import { range } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { type DType, expectElements, FLOAT_DTYPES, type Tensor } from "./tensor.ts";

/** The widest narrow side this op takes; wider products are `matmul`'s. */
export const THIN_TN_MAX = 16;

const THREADS = 64;

export interface ThinTnBlocksArgs {
  /** Names the op in errors and as the dispatch label; defaults to "thinTnBlocks". */
  op?: string;
  /** [rows, m] row-major (any shape of rows·m elements), f32 or f16. */
  a: Tensor;
  /** [rows, n] row-major, f32 or f16. */
  b: Tensor;
  /** [blocks, m·n] f32, blocks = ⌈rows / rowsPerBlock⌉: block i's product at i·m·n, overwritten. */
  partial: Tensor;
  m: number;
  n: number;
  rows: number;
  rowsPerBlock: number;
  /** Default 1. */
  alpha?: number;
}

/**
 * WGSL for a narrow side of `s` (m when `narrowA`, else n): invocation `big` of the wide side sums
 * s outputs.
 */
function thinTnWgsl(s: number, narrowA: boolean, aType: DType, bType: DType): string {
  const [narrowType, wideType] = narrowA ? [aType, bType] : [bType, aType];
  const [narrow, wide] = narrowA ? ["A", "B"] : ["B", "A"];
  const body: string[] = [`let w = ${loadAs(wideType, `${wide}[row * p.wide + big]`)};`];
  for (const j of range(s)) {
    const v = loadAs(narrowType, `${narrow}[row * ${s}u + ${j}u]`);
    // A's element first, as matmul multiplies.
    body.push(`acc${j} += ${narrowA ? `${v} * w` : `w * ${v}`};`);
  }
  const out = (j: number) => (narrowA ? `${j}u * p.wide + big` : `big * ${s}u + ${j}u`);
  return /* wgsl */ `${enableF16([aType, bType])}
@group(0) @binding(0) var<storage, read> A: array<${aType}>;
@group(0) @binding(1) var<storage, read> B: array<${bType}>;
@group(0) @binding(2) var<storage, read_write> P: array<f32>;
struct Params { wide: u32, rows: u32, rowsPerBlock: u32, alpha: f32 }
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(${THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let big = gid.x;
  if (big >= p.wide) { return; }
  let r0 = wid.y * p.rowsPerBlock;
  let r1 = min(p.rows, r0 + p.rowsPerBlock);
  ${range(s).map((j) => `var acc${j} = 0.0;`).join("\n  ")}
  for (var row = r0; row < r1; row++) {
    ${body.join("\n    ")}
  }
  let base = wid.y * p.wide * ${s}u;
  ${range(s).map((j) => `P[base + ${out(j)}] = p.alpha * acc${j};`).join("\n  ")}
}
`;
}

const thinTnSource = cachedSource(thinTnWgsl);

function fail(op: string, message: string): never {
  throw new GpuError(`${op}: ${message}`);
}

/** Records each block's partial product (see ThinTnBlocksArgs). */
export function thinTnBlocks(rec: Recorder, args: ThinTnBlocksArgs): void {
  const op = args.op ?? "thinTnBlocks";
  const { a, b, partial, m, n, rows, rowsPerBlock } = args;
  const alpha = args.alpha ?? 1;
  for (const [name, v] of [["m", m], ["n", n], ["rows", rows]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) {
      fail(op, `${name} must be a non-negative integer, got ${v}`);
    }
  }
  if (!Number.isSafeInteger(rowsPerBlock) || rowsPerBlock < 1) {
    fail(op, `rowsPerBlock must be a positive integer, got ${rowsPerBlock}`);
  }
  const narrowA = m <= n;
  const s = narrowA ? m : n;
  const wide = narrowA ? n : m;
  if (s > THIN_TN_MAX) fail(op, `neither m = ${m} nor n = ${n} is at most ${THIN_TN_MAX}`);
  if (!Number.isFinite(alpha)) fail(op, `alpha must be finite, got ${alpha}`);
  const blocks = Math.ceil(rows / rowsPerBlock);
  expectElements(op, "a", a, rows * m, FLOAT_DTYPES);
  expectElements(op, "b", b, rows * n, FLOAT_DTYPES);
  expectElements(op, "partial", partial, blocks * m * n, ["f32"]);
  for (const [name, t] of [["a", a], ["b", b]] as const) {
    if (t.buffer === partial.buffer) {
      fail(op, `partial ("${partial.label}") shares a GPU buffer with ${name} ("${t.label}")`);
    }
  }
  if (a.dtype === "f16" || b.dtype === "f16") expectF16(rec.gpu, op);
  if (blocks === 0 || s === 0) return; // nothing to write (m or n 0: partial is empty)
  const max = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  const gx = Math.ceil(wide / THREADS);
  if (gx > max || blocks > max) {
    fail(op, `${wide} × ${blocks} blocks need more than ${max} workgroups a dimension`);
  }
  const name = `thin_tn_${narrowA ? "a" : "b"}${s}_${a.dtype}_${b.dtype}`;
  const pipeline = getPipeline(rec.gpu, name, thinTnSource(s, narrowA, a.dtype, b.dtype));
  const words = new Uint32Array([wide, rows, rowsPerBlock, 0]);
  new Float32Array(words.buffer)[3] = alpha;
  rec.dispatch(op, pipeline, [a, b, partial], [gx, blocks], words);
}
