// Tensor arenas: many tensors as views of one GPU buffer, each in its own slot starting at a
// multiple of minStorageBufferOffsetAlignment (256 bytes on most adapters), so that every view
// can be bound on its own by the ordinary kernels. The bytes between a view's last element and
// the next slot are zero padding that no kernel writes (kernels bind a view's own range).
//
// What that buys: tensors in consecutive slots of one arena, given in the same order in arenas of
// the same layout (parameters, gradients, AdamW's m and v), form one contiguous range per arena,
// padding included, and can be processed by ONE launch per binding-sized slice (`slotRuns`,
// `spanOf`): AdamW leaves zero padding zero (zero param, zero gradient and zero moments give a
// zero update; only ε = 0 would turn it into NaN, which nothing but AdamW itself ever reads), and
// zeros add nothing to a sum of squares.
//
// An arena that would exceed the adapter's maxBufferSize is cut into several buffers (a tensor
// never straddles two); runs then end at the cut.
//
// Destroying: a view's `destroy()` frees its whole buffer, i.e. every tensor of the arena. The
// owner frees the arena with `TensorArena.destroy()`; nothing else destroys its views.

import { type Gpu, GpuError } from "./device.ts";
import { type DType, DTYPE_BYTES, numelOf, Tensor, tensorUsage } from "./tensor.ts";

/** Buffers made by `createArena`: their bytes outside the views are zero padding. */
const ARENA_BUFFERS = new WeakSet<GPUBuffer>();

/** Byte alignment of arena slots: the adapter's minStorageBufferOffsetAlignment (≥ 4). */
export function slotAlignment(gpu: Gpu): number {
  return Math.max(4, gpu.limits.minStorageBufferOffsetAlignment);
}

function roundUp(bytes: number, to: number): number {
  return Math.ceil(bytes / to) * to;
}

/** One tensor of an arena. */
export interface ArenaSpec {
  /** Key of the tensor in `TensorArena.tensors`; distinct within an arena. */
  name: string;
  /** The tensor's shape (f32 unless `createArena` is given another dtype). */
  shape: readonly number[];
  /** The tensor's label (default its name). */
  label?: string;
}

/**
 * Named tensors that are views of one or a few shared buffers (see `createArena`). The owner
 * frees them all with destroy(); a view's own destroy() would free its whole buffer.
 */
export class TensorArena {
  /** The arena's tensors by name, in the order given. */
  readonly tensors: ReadonlyMap<string, Tensor>;
  /** One 1-D tensor spanning each buffer (usually one). */
  readonly buffers: readonly Tensor[];
  private destroyed = false;

  /** Wraps views and the buffers they share; `createArena` is the way to make one. */
  constructor(tensors: Map<string, Tensor>, buffers: Tensor[]) {
    this.tensors = tensors;
    this.buffers = buffers;
  }

  /** The tensor named `name`; throws a GpuError if the arena has none. */
  get(name: string): Tensor {
    const t = this.tensors.get(name);
    if (!t) throw new GpuError(`arena: no tensor "${name}"`);
    return t;
  }

  /** Bytes of the arena's buffers, padding included. */
  get bytes(): number {
    return this.buffers.reduce((n, b) => n + b.buffer.size, 0);
  }

  /** Frees every buffer of the arena (all its tensors); a second call does nothing. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const b of this.buffers) b.destroy();
  }
}

/**
 * Allocates `specs` (zeroed, per WebGPU) as views of as few buffers as maxBufferSize allows, in
 * the order given, each at a slot-aligned offset (`slotAlignment`). Names must be distinct.
 */
export function createArena(
  gpu: Gpu,
  specs: readonly ArenaSpec[],
  label: string,
  dtype: DType = "f32",
): TensorArena {
  const align = slotAlignment(gpu);
  const max = gpu.limits.maxBufferSize;
  // Pack: [first spec, end spec, bytes] per buffer, and each spec's offset in its buffer.
  const offsets: number[] = [];
  const cuts: { start: number; end: number; bytes: number }[] = [];
  let at = 0;
  specs.forEach((s, i) => {
    const bytes = Math.max(4, roundUp(numelOf(s.shape) * DTYPE_BYTES[dtype], 4));
    if (bytes > max) {
      throw new GpuError(
        `arena "${label}": tensor "${s.name}" [${s.shape.join(", ")}] ${dtype} needs ${bytes} ` +
          `bytes, more than this adapter's largest buffer (${max} bytes)`,
      );
    }
    let offset = roundUp(at, align);
    if (cuts.length === 0 || offset + bytes > max) {
      cuts.push({ start: i, end: i, bytes: 0 });
      offset = 0;
    }
    const cut = cuts[cuts.length - 1];
    offsets.push(offset);
    cut.end = i + 1;
    cut.bytes = offset + bytes;
    at = offset + bytes;
  });
  const tensors = new Map<string, Tensor>();
  const buffers: Tensor[] = [];
  try {
    cuts.forEach((cut, k) => {
      const bufferLabel = cuts.length > 1 ? `${label} (${k + 1}/${cuts.length})` : label;
      const buffer = gpu.scoped(
        `allocating arena "${bufferLabel}" (${cut.bytes} bytes)`,
        () =>
          gpu.device.createBuffer({ label: bufferLabel, size: cut.bytes, usage: tensorUsage() }),
      );
      gpu.trackBuffer(buffer, cut.bytes);
      ARENA_BUFFERS.add(buffer);
      buffers.push(new Tensor(gpu, buffer, [cut.bytes / DTYPE_BYTES.f32], "f32", bufferLabel));
      for (let i = cut.start; i < cut.end; i++) {
        const s = specs[i];
        if (tensors.has(s.name)) throw new GpuError(`arena "${label}": "${s.name}" given twice`);
        tensors.set(s.name, new Tensor(gpu, buffer, s.shape, dtype, s.label ?? s.name, offsets[i]));
      }
    });
  } catch (e) {
    for (const b of buffers) b.destroy();
    throw e;
  }
  return new TensorArena(tensors, buffers);
}

/** Whether `t` lives in an arena (its buffer's bytes outside the views are zero padding). */
export function inArena(t: Tensor): boolean {
  return ARENA_BUFFERS.has(t.buffer);
}

/** Whether `next` is in the arena slot right after `prev`'s (same arena buffer). */
export function followsInSlot(prev: Tensor, next: Tensor): boolean {
  if (prev.buffer !== next.buffer || !inArena(prev)) return false;
  const align = slotAlignment(prev.gpu);
  // bindingSize is at least 4 bytes, as createArena's slots (an empty tensor takes one word).
  return next.offset === roundUp(prev.offset + prev.bindingSize, align);
}

/**
 * Splits tensor lists (one list per role, e.g. params and grads) into runs [start, end) of
 * consecutive indices whose tensors are, in every role, in consecutive slots of one arena buffer
 * (`followsInSlot`): each run is one range per role, padding included, of the same layout in
 * every role. `sameRun(i, j)` may forbid merging for other reasons (e.g. different weight decay).
 */
export function slotRuns(
  roles: readonly (readonly Tensor[])[],
  sameRun: (i: number, j: number) => boolean = () => true,
): { start: number; end: number }[] {
  const n = roles[0]?.length ?? 0;
  const runs: { start: number; end: number }[] = [];
  for (let i = 0; i < n; i++) {
    const last = runs[runs.length - 1];
    const follows = last !== undefined && sameRun(i - 1, i) &&
      roles.every((ts) => ts[i].dtype === "f32" && followsInSlot(ts[i - 1], ts[i]));
    if (follows) last.end = i + 1;
    else runs.push({ start: i, end: i + 1 });
  }
  return runs;
}

/**
 * The 1-D f32 tensor over the run [start, end) of `ts` (from the first element of ts[start] to
 * the last of ts[end − 1], padding included); a one-tensor run is that tensor, flattened.
 */
export function spanOf(ts: readonly Tensor[], run: { start: number; end: number }): Tensor {
  const first = ts[run.start], last = ts[run.end - 1];
  const bytes = last.offset + last.byteLength - first.offset;
  const label = run.end - run.start > 1
    ? `${first.label} (and ${run.end - run.start - 1} following)`
    : first.label;
  return new Tensor(first.gpu, first.buffer, [bytes / DTYPE_BYTES.f32], "f32", label, first.offset);
}
