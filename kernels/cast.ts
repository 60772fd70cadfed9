// Casts between f32 and f16 tensors: dst[i] = src[i] rounded (to_f16: round to nearest even,
// overflow to ±∞) or widened (exact), for i < count. Training in f16 refreshes the f16 copies
// of the f32 master weights with it before every forward, one call per parameter arena, so
// tensors of any size are handled: beyond one storage binding in binding-sized slices, as
// kernels/adamw.ts does.
//
// Alignment: none required beyond the 4-byte offset every tensor has. Each operand is bound from
// the minStorageBufferOffsetAlignment boundary at or before its first element and indexed from
// there, its size rounded up to a whole 4-byte word (an odd count of f16s ends inside one; the
// kernel never writes the other half). The fast kernel converts four elements per invocation
// through vec4<f32> and vec4<f16> loads and stores, which need the f32 side on a 16-byte and the
// f16 side on an 8-byte boundary: a range whose two sides reach those boundaries at the same
// element (e.g. both tensors at 256-byte-aligned offsets, as arenas place them) runs its first ≤ 3
// elements and its last count mod 4 through the scalar kernel and the rest through the fast one;
// any other range runs entirely through the scalar kernel (same results, more invocations).
//
// pack2x16float is not used for the f16 side: WGSL leaves its rounding and its overflow
// unspecified, and the f16 copies must be what to_f16 gives everywhere else.

import {
  bindElements,
  type BoundElements,
  maxSliceElements,
  sliceRanges,
} from "./binding_slices.ts";
import { type Gpu, GpuError } from "./device.ts";
import { enableF16, expectF16, TO_F16_WGSL } from "./f16.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import type { DType, Tensor } from "./tensor.ts";

const WORKGROUP = 256;

type Direction = { from: "f32"; to: "f16" } | { from: "f16"; to: "f32" };

/** The cast kernel; with `vec4`, bases and count are in units of four elements. */
function castWgsl(d: Direction, vec4: boolean): string {
  const T = (t: DType) => (vec4 ? `vec4<${t}>` : t);
  const convert = d.to === "f16"
    ? (vec4 ? "vec4<f16>(to_f16(v.x), to_f16(v.y), to_f16(v.z), to_f16(v.w))" : "to_f16(v)")
    : `${T("f32")}(v)`;
  return /* wgsl */ `
${enableF16(["f16"])}
@group(0) @binding(0) var<storage, read> src: array<${T(d.from)}>;
@group(0) @binding(1) var<storage, read_write> dst: array<${T(d.to)}>;
struct Params { count: u32, srcBase: u32, dstBase: u32, _pad: u32 }
@group(0) @binding(2) var<uniform> params: Params;
${d.to === "f16" ? TO_F16_WGSL : ""}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.count) { return; }
  let v = src[params.srcBase + i];
  dst[params.dstBase + i] = ${convert};
}
`;
}

/**
 * Binds `count` elements of `t` from element `start` on. f32 goes through bindElements; f16
 * elements may start at a 2-byte offset, which the binding's aligned start absorbs, and the
 * size is rounded up to the whole 4-byte word WebGPU requires (inside the tensor's own
 * bindingSize, so inside its buffer).
 */
function bindRange(gpu: Gpu, t: Tensor, start: number, count: number): BoundElements {
  if (t.dtype === "f32") return bindElements(gpu, t.buffer, t.offset + start * 4, count);
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const byteOffset = t.offset + start * 2;
  const first = Math.floor(byteOffset / align) * align;
  const size = Math.ceil((byteOffset - first + count * 2) / 4) * 4;
  return { binding: { buffer: t.buffer, offset: first, size }, base: (byteOffset - first) / 2 };
}

const castSource = cachedSource(castWgsl);

function recordCast(
  rec: Recorder,
  op: string,
  d: Direction,
  args: { src: Tensor; dst: Tensor; count?: number },
): void {
  const { src, dst } = args;
  const fail = (message: string): never => {
    throw new GpuError(`${op}: ${message}`);
  };
  if (src.dtype !== d.from) fail(`src ("${src.label}") is ${src.dtype}, expected ${d.from}`);
  if (dst.dtype !== d.to) fail(`dst ("${dst.label}") is ${dst.dtype}, expected ${d.to}`);
  const count = args.count ?? src.numel;
  if (!Number.isSafeInteger(count) || count < 0) fail(`count is out of range (${count})`);
  for (const [name, t] of [["src", src], ["dst", dst]] as const) {
    if (t.numel < count) {
      fail(`${name} ("${t.label}") holds ${t.numel} elements, fewer than count ${count}`);
    }
  }
  // WebGPU tracks usage per buffer, not per range: one dispatch cannot read and write one buffer.
  if (src.buffer === dst.buffer) {
    fail(`src ("${src.label}") and dst ("${dst.label}") share a buffer`);
  }
  const gpu = rec.gpu;
  expectF16(gpu, op);
  if (count === 0) return;

  const scalar = getPipeline(gpu, op, castSource(d, false));
  const vector = getPipeline(gpu, `${op}-vec4`, castSource(d, true));
  const maxPerDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const launch = (pipeline: GPUComputePipeline, start: number, n: number, width: number) => {
    const s = bindRange(gpu, src, start, n);
    const t = bindRange(gpu, dst, start, n);
    rec.dispatch(
      op,
      pipeline,
      [s.binding, t.binding],
      grid1d(n / width, WORKGROUP, maxPerDim),
      new Uint32Array([n / width, s.base / width, t.base / width, 0]),
    );
  };
  // Sized by the f32 side (4 bytes an element; the f16 side needs half). Slices start at
  // multiples of 4·WORKGROUP elements, so every slice meets the vec4 boundaries as the first does.
  const maxSlice = maxSliceElements(gpu, 4 * WORKGROUP);
  if (maxSlice < 1) fail(`the storage binding limit is too small to bind ${4 * WORKGROUP} f32s`);
  for (const s of sliceRanges(count, maxSlice)) {
    const srcBase = bindRange(gpu, src, s.start, s.count).base;
    const dstBase = bindRange(gpu, dst, s.start, s.count).base;
    const head = (4 - (srcBase % 4)) % 4;
    const aligned = (dstBase + head) % 4 === 0 && s.count - head >= 4;
    const body = aligned ? Math.floor((s.count - head) / 4) * 4 : 0;
    if (body === 0) {
      launch(scalar, s.start, s.count, 1);
      continue;
    }
    if (head > 0) launch(scalar, s.start, head, 1);
    launch(vector, s.start + head, body, 4);
    const tail = s.count - head - body;
    if (tail > 0) launch(scalar, s.start + head + body, tail, 1);
  }
}

/**
 * Records dst[i] = src[i] rounded to f16 (to nearest even, ±∞ from |x| ≥ 65520, NaN stays NaN),
 * for i < `count` (default: all of src). src is f32 and dst f16, of any shapes holding at least
 * `count` elements, at any offsets, in different buffers; any size (sliced past one storage
 * binding). Needs shader-f16.
 */
export function castF32ToF16(
  rec: Recorder,
  args: { src: Tensor; dst: Tensor; count?: number },
): void {
  recordCast(rec, "castF32ToF16", { from: "f32", to: "f16" }, args);
}

/** Records dst[i] = src[i] widened (exactly) from f16 to f32; otherwise as castF32ToF16. */
export function castF16ToF32(
  rec: Recorder,
  args: { src: Tensor; dst: Tensor; count?: number },
): void {
  recordCast(rec, "castF16ToF32", { from: "f16", to: "f32" }, args);
}
