// Transposes a row-major matrix: dst[c·rows + r] = src[offset + r·ld + c] for r < rows, c < cols
// (dst packed [cols, rows]); f32 or f16, the same dtype on both sides (an exact copy).
//
// Why: on a GPU the barrier-free GEMM kernels read a transposed operand with neighbouring
// invocations far apart (uncoalesced: the H100's forward X·Wᵀ ran at 0.3-0.4× the speed of the
// untransposed dX product). kernels/matmul.ts's `nn_*` variants copy such an operand once through
// this kernel, then multiply untransposed. A 32×32 block goes through workgroup memory, so that
// both the reads (along src's rows) and the writes (along dst's rows) are contiguous across the
// workgroup; rows padded by one element against bank conflicts on the way out.

import { GpuError } from "./device.ts";
import { enableF16, expectF16 } from "./f16.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { type DType, expectBindable, FLOAT_DTYPES, type Tensor } from "./tensor.ts";

/** Rows and columns of the block a workgroup transposes (a grid dimension covers this many each). */
export const TRANSPOSE_TILE = 32;
const TILE = TRANSPOSE_TILE;
const ROWS_PER_PASS = 8; // a 32×8 workgroup copies the 32×32 block in four passes

function transposeWgsl(dtype: DType): string {
  return /* wgsl */ `
${enableF16([dtype])}
@group(0) @binding(0) var<storage, read> src: array<${dtype}>;
@group(0) @binding(1) var<storage, read_write> dst: array<${dtype}>;
struct Params { rows: u32, cols: u32, offset: u32, ld: u32 }
@group(0) @binding(2) var<uniform> params: Params;
var<workgroup> block: array<array<${dtype}, ${TILE + 1}>, ${TILE}>;

@compute @workgroup_size(${TILE}, ${ROWS_PER_PASS})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let r0 = wg.y * ${TILE}u;
  let c0 = wg.x * ${TILE}u;
  for (var i = 0u; i < ${TILE}u; i += ${ROWS_PER_PASS}u) {
    let r = r0 + lid.y + i;
    let c = c0 + lid.x;
    if (r < params.rows && c < params.cols) {
      block[lid.y + i][lid.x] = src[params.offset + r * params.ld + c];
    }
  }
  workgroupBarrier();
  for (var i = 0u; i < ${TILE}u; i += ${ROWS_PER_PASS}u) {
    let c = c0 + lid.y + i;
    let r = r0 + lid.x;
    if (c < params.cols && r < params.rows) {
      dst[c * params.rows + r] = block[lid.x][lid.y + i];
    }
  }
}
`;
}

/** Arguments of `transpose`: src and dst f32 or f16 (the same), in different buffers. */
export interface TransposeArgs {
  /** Used in error messages and as the dispatch label; defaults to "transpose". */
  op?: string;
  /** The source matrix: `rows` × `cols`, row stride `ld` (default cols), from element `offset`. */
  src: Tensor;
  /** Receives the transpose, packed [cols, rows]; the same dtype as src. */
  dst: Tensor;
  /** Rows of the source matrix. */
  rows: number;
  /** Columns of the source matrix. */
  cols: number;
  /** Element offset of the source matrix in src; default 0. */
  offset?: number;
  /** Row stride of the source in elements; default cols, at least cols. */
  ld?: number;
}

const transposeSource = cachedSource(transposeWgsl);

/** Records dst = srcᵀ (see the header). */
export function transpose(rec: Recorder, args: TransposeArgs): void {
  const op = args.op ?? "transpose";
  const { src, dst, rows, cols } = args;
  const offset = args.offset ?? 0;
  const ld = args.ld ?? cols;
  const fail = (message: string): never => {
    throw new GpuError(`${op}: ${message}`);
  };
  for (const [name, v] of [["rows", rows], ["cols", cols], ["offset", offset], ["ld", ld]]) {
    if (!Number.isSafeInteger(v) || (v as number) < 0) fail(`${name} is out of range (${v})`);
  }
  if (!FLOAT_DTYPES.includes(src.dtype)) fail(`src ("${src.label}") is ${src.dtype}`);
  if (dst.dtype !== src.dtype) {
    fail(`dst ("${dst.label}") is ${dst.dtype}, src ("${src.label}") ${src.dtype}`);
  }
  if (ld < cols) fail(`leading dimension ${ld} is less than the row length ${cols}`);
  if (rows === 0 || cols === 0) return;
  const last = offset + (rows - 1) * ld + cols - 1;
  if (last >= src.numel) {
    fail(`src ("${src.label}") has ${src.numel} elements, but the matrix reaches element ${last}`);
  }
  if (dst.numel < rows * cols) {
    fail(`dst ("${dst.label}") has ${dst.numel} elements, fewer than ${rows}×${cols}`);
  }
  if (src.buffer === dst.buffer) {
    fail(`src ("${src.label}") and dst ("${dst.label}") share a buffer`);
  }
  expectBindable(op, "src", src);
  expectBindable(op, "dst", dst);
  if (src.dtype === "f16") expectF16(rec.gpu, op);
  const gx = Math.ceil(cols / TILE);
  const gy = Math.ceil(rows / TILE);
  const max = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  if (gx > max || gy > max) fail(`${rows}×${cols} needs ${gy}×${gx} workgroups, over ${max}`);
  const pipeline = getPipeline(rec.gpu, `transpose_${src.dtype}`, transposeSource(src.dtype));
  rec.dispatch(op, pipeline, [src, dst], [gx, gy], new Uint32Array([rows, cols, offset, ld]));
}

/** The transpose kernels' WGSL, for kernels/matmul_autotune.ts's version hash. */
export function transposeKernelSources(): string {
  return FLOAT_DTYPES.map(transposeWgsl).join("\n");
}
