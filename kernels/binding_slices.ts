// Binding tensors of any size at any 4-byte offset. WebGPU binds at most
// maxStorageBufferBindingSize bytes (128 MiB on lavapipe) at an offset aligned to
// minStorageBufferOffsetAlignment (256 bytes on most adapters), while tensors may be larger and
// views may start at any 4-byte boundary. So a kernel is given a binding starting at the aligned
// offset at or before its first element plus that element's index in the binding (`base`), and
// tensors beyond one binding are processed in slices, one launch each.

import { type Gpu, GpuError } from "./device.ts";
import type { Binding } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

/** Bytes per element of the f32 tensors these helpers serve (f16 would pass 2 and pack pairs). */
export const ELEMENT_BYTES = 4;

/** A binding and the index, inside it, of the first element it was made for. */
export interface BoundElements {
  binding: Binding;
  base: number;
}

/**
 * The most elements of one slice, a multiple of `granule`: a slice starting anywhere must fit in
 * one storage binding after its start is rounded down to minStorageBufferOffsetAlignment.
 */
export function maxSliceElements(gpu: Gpu, granule = 1): number {
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const limit = gpu.limits.maxStorageBufferBindingSize;
  const elements = Math.floor((limit - align) / ELEMENT_BYTES);
  const slice = Math.floor(elements / granule) * granule;
  // No slice at all would cut a range into empty slices forever (a limit lowered below any
  // adapter's: WebGPU guarantees 128 MiB).
  if (slice < 1) {
    throw new GpuError(
      `a storage binding of ${limit} bytes holds no slice of ${granule} elements (${align}-byte ` +
        `alignment)`,
    );
  }
  return slice;
}

/**
 * Binds `count` (> 0) elements starting `byteOffset` bytes into `buffer`, from the aligned offset
 * at or before it; the kernel adds `base` to its indices. (Two writable views closer than the
 * alignment in one buffer would then overlap in one dispatch, which WebGPU forbids; optimizer
 * state never shares a buffer so.)
 */
export function bindElements(
  gpu: Gpu,
  buffer: GPUBuffer,
  byteOffset: number,
  count: number,
): BoundElements {
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const start = Math.floor(byteOffset / align) * align;
  const size = byteOffset - start + count * ELEMENT_BYTES;
  return { binding: { buffer, offset: start, size }, base: (byteOffset - start) / ELEMENT_BYTES };
}

/** Element ranges [start, start + count) of at most `maxCount` elements covering `n`. */
export function sliceRanges(n: number, maxCount: number): { start: number; count: number }[] {
  if (!(maxCount >= 1)) throw new GpuError(`sliceRanges: slices of ${maxCount} elements`);
  const out: { start: number; count: number }[] = [];
  for (let start = 0; start < n; start += maxCount) {
    out.push({ start, count: Math.min(maxCount, n - start) });
  }
  return out;
}

/**
 * Splits tensor lists (one list per role, e.g. params and grads) into runs [start, end) of
 * consecutive indices whose tensors are, in every role, back-to-back views of one buffer; such a
 * run is one contiguous range per role and can be processed by one launch per binding-sized
 * slice. `sameRun(i, j)` may forbid merging for other reasons (e.g. different weight decay).
 */
export function adjacentRuns(
  roles: readonly (readonly Tensor[])[],
  sameRun: (i: number, j: number) => boolean = () => true,
): { start: number; end: number }[] {
  const n = roles[0]?.length ?? 0;
  const runs: { start: number; end: number }[] = [];
  for (let i = 0; i < n; i++) {
    const last = runs[runs.length - 1];
    const follows = last !== undefined && sameRun(i - 1, i) &&
      roles.every((ts) =>
        ts[i].buffer === ts[i - 1].buffer &&
        ts[i].offset === ts[i - 1].offset + ts[i - 1].numel * ELEMENT_BYTES
      );
    if (follows) last.end = i + 1;
    else runs.push({ start: i, end: i + 1 });
  }
  return runs;
}

/** Elements in the run [start, end) of `ts`. */
export function runLength(ts: readonly Tensor[], run: { start: number; end: number }): number {
  let n = 0;
  for (let i = run.start; i < run.end; i++) n += ts[i].numel;
  return n;
}

/** A block of rows [rowStart, rowStart + rows), bound in each of the matrices sliced together. */
export interface RowSlice {
  rowStart: number;
  rows: number;
  /** Per matrix, in the order given: its binding and the index in it of row `rowStart`. */
  bound: BoundElements[];
}

/**
 * Cuts row-major [rows, width] f32 matrices of one shape (several when one kernel reads them in
 * step, e.g. x and y of ‖x_i − y_i‖) into blocks of whole rows that are bound, in every matrix,
 * in at most `limit` bytes from an aligned offset. Each block takes as many rows as fit after its
 * start is rounded down to the alignment, so a matrix at an aligned offset is cut at multiples of
 * ⌊limit / row bytes⌋ rows, and one that fits is one block. A matrix with no elements is one
 * block bound as itself (a kernel may still launch over it, e.g. to flag out-of-range ids).
 */
export function rowSlices(
  op: string,
  matrices: readonly (readonly [name: string, t: Tensor])[],
  limit = matrices[0][1].gpu.limits.maxStorageBufferBindingSize,
): RowSlice[] {
  const [rows, width] = matrices[0][1].shape;
  if (rows === 0 || width === 0) {
    return [{ rowStart: 0, rows, bound: matrices.map(([, t]) => ({ binding: t, base: 0 })) }];
  }
  const gpu = matrices[0][1].gpu;
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const rowBytes = width * ELEMENT_BYTES;
  const slices: RowSlice[] = [];
  for (let rowStart = 0; rowStart < rows;) {
    let count = rows - rowStart;
    for (const [name, t] of matrices) {
      const slack = (t.offset + rowStart * rowBytes) % align;
      const fit = Math.floor((limit - slack) / rowBytes);
      if (fit < 1) {
        throw new GpuError(
          `${op}: ${name} ("${t.label}") has rows of ${rowBytes} bytes; one row (plus up to ` +
            `${align - 4} bytes of alignment) does not fit in a storage binding of ${limit} bytes`,
        );
      }
      count = Math.min(count, fit);
    }
    const bound = matrices.map(([, t]) =>
      bindElements(gpu, t.buffer, t.offset + rowStart * rowBytes, count * width)
    );
    slices.push({ rowStart, rows: count, bound });
    rowStart += count;
  }
  return slices;
}
