// Global gradient norm and its clipping coefficient, as torch.nn.utils.clip_grad_norm_ computes
// them: totalNorm = √Σ g² over every trainable tensor, clipCoef = min(maxNorm / (totalNorm +
// 1e-6), 1). Nothing is scaled here: AdamW reads the coefficient from the GPU as its gradScale,
// so clipping costs no host round trip and no extra pass over the gradients.
//
// Determinism without atomics: stage 1 gives each workgroup a fixed range of 16384 elements of
// one tensor and writes that range's sum of squares into its own slot of `partials`; stage 2, a
// single workgroup, reduces the slots in a fixed order. The tree depends only on the tensors'
// sizes and layout, so reruns are bitwise identical.
//
// The sum-of-squares stage below is shared with kernels/distance.ts (‖a − b‖₂ is the same
// reduction over a − b); tensors beyond one binding are sliced by kernels/binding_slices.ts.

import {
  adjacentRuns,
  bindElements,
  type BoundElements,
  ELEMENT_BYTES,
  maxSliceElements,
  runLength,
  sliceRanges,
} from "./binding_slices.ts";
import { GpuError } from "./device.ts";
import type { Gpu } from "./device.ts";
import { grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

// ---------------------------------------------------------------------------------------------
// Stage 1: sums of squares (of a, or of a − b) per fixed chunk.

const WORKGROUP = 256;
/** Elements each thread adds sequentially per chunk. */
const ITEMS = 16;
/** Elements of one chunk: each thread adds ITEMS of them, strided for coalesced reads. */
const CHUNK = WORKGROUP * ITEMS;
/**
 * Chunks per workgroup (and partial slot). Each chunk is summed alone before joining the thread's
 * total, so the sequential error stays 16 + 4 adds, while 4× fewer workgroups (and tree
 * reductions with their barriers) run: 2-3× faster on lavapipe.
 */
const GROUP_CHUNKS = 4;
/** Elements per partial slot of gradNormClip and distance. */
export const SUM_SQUARES_PER_SLOT = CHUNK * GROUP_CHUNKS;

/** Flags of the stage-1 kernel. */
const ADD_TO_SLOT = 1; // slot += this sum (accumulating binding-sized slices without partials)
const TAKE_SQRT = 2; // write √(sum) (the last slice of a reduction without partials)

function sumSquaresWgsl(diff: boolean): string {
  const bBinding = diff ? `@group(0) @binding(1) var<storage, read> b: array<f32>;` : "";
  const value = diff ? `a[params.aBase + i] - b[params.bBase + i]` : `a[params.aBase + i]`;
  const slotBinding = diff ? 2 : 1;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> a: array<f32>;
${bBinding}
@group(0) @binding(${slotBinding}) var<storage, read_write> slots: array<f32>;
struct Params {
  count: u32, aBase: u32, bBase: u32, slot: u32,
  chunksPerGroup: u32, flags: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(${slotBinding + 1}) var<uniform> params: Params;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let group = wid.x + wid.y * nwg.x;
  let first = group * params.chunksPerGroup;
  // Groups beyond the last chunk (grid1d rounds up) write nothing.
  if (first * ${CHUNK}u >= params.count) { return; }
  var total = 0.0;
  for (var c = 0u; c < params.chunksPerGroup; c++) {
    let start = (first + c) * ${CHUNK}u;
    // Each chunk is summed alone before joining the running total, so that the sequential
    // error grows with the number of chunks, not of elements.
    var s = 0.0;
    for (var k = 0u; k < ${ITEMS}u; k++) {
      let i = start + k * ${WORKGROUP}u + lid.x;
      if (i < params.count) {
        let d = ${value};
        s += d * d;
      }
    }
    total += s;
  }
  sums[lid.x] = total;
  workgroupBarrier();
  for (var w = ${WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lid.x < w) { sums[lid.x] += sums[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    var r = sums[0];
    if ((params.flags & ${ADD_TO_SLOT}u) != 0u) { r += slots[params.slot + group]; }
    if ((params.flags & ${TAKE_SQRT}u) != 0u) { r = sqrt(r); }
    slots[params.slot + group] = r;
  }
}
`;
}

/** One contiguous range of elements to reduce: of `a`, or of `a − b` when `b` is given. */
export interface SquaresRange {
  a: { buffer: GPUBuffer; byteOffset: number };
  b?: { buffer: GPUBuffer; byteOffset: number };
  count: number;
}

/** Partial slots that `recordSumSquares` writes for ranges of these element counts. */
export function sumSquaresSlots(gpu: Gpu, counts: readonly number[]): number {
  const max = maxSliceElements(gpu, SUM_SQUARES_PER_SLOT);
  let slots = 0;
  for (const count of counts) {
    for (const s of sliceRanges(count, max)) slots += Math.ceil(s.count / SUM_SQUARES_PER_SLOT);
  }
  return slots;
}

/**
 * Records stage 1 over the slice `s` of `range` (at most one binding): `workgroups` of
 * `chunksPerGroup` chunks each, writing the slots from `slot` of `slots`.
 */
function dispatchSumSquares(
  rec: Recorder,
  label: string,
  range: SquaresRange,
  s: { start: number; count: number },
  slots: BoundElements,
  launch: { slot: number; workgroups: [number, number] | 1; chunksPerGroup: number; flags: number },
): void {
  const gpu = rec.gpu;
  const diff = range.b !== undefined;
  const pipeline = getPipeline(
    gpu,
    diff ? "sum-squares-diff" : "sum-squares",
    sumSquaresWgsl(diff),
  );
  const at = (x: { buffer: GPUBuffer; byteOffset: number }) =>
    bindElements(gpu, x.buffer, x.byteOffset + s.start * ELEMENT_BYTES, s.count);
  const a = at(range.a);
  const b = range.b ? at(range.b) : null;
  rec.dispatch(
    label,
    pipeline,
    b ? [a.binding, b.binding, slots.binding] : [a.binding, slots.binding],
    launch.workgroups,
    new Uint32Array([
      s.count,
      a.base,
      b?.base ?? 0,
      slots.base + launch.slot,
      launch.chunksPerGroup,
      launch.flags,
      0,
      0,
    ]),
  );
}

/**
 * Records stage 1 for every range, one launch per range and binding-sized slice, writing
 * consecutive slots of `partials` from element 0. Returns the number of slots written.
 */
export function recordSumSquares(
  rec: Recorder,
  label: string,
  ranges: readonly SquaresRange[],
  partials: Tensor,
): number {
  const gpu = rec.gpu;
  const max = maxSliceElements(gpu, SUM_SQUARES_PER_SLOT);
  const maxPerDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const slots = bindElements(gpu, partials.buffer, partials.offset, partials.numel);
  let slot = 0;
  for (const r of ranges) {
    for (const s of sliceRanges(r.count, max)) {
      const groups = Math.ceil(s.count / SUM_SQUARES_PER_SLOT);
      const workgroups = grid1d(groups, 1, maxPerDim);
      dispatchSumSquares(rec, label, r, s, slots, {
        slot,
        workgroups,
        chunksPerGroup: GROUP_CHUNKS,
        flags: 0,
      });
      slot += groups;
    }
  }
  return slot;
}

/**
 * Records a whole reduction √Σ into `out[0]` with no partials buffer: one workgroup walks every
 * chunk of 4096 (slow on a large GPU; its sequential error grows with n / 4096, see distance.ts).
 * Binding-sized slices accumulate into out[0] and the last takes the square root. `range.count`
 * must be > 0.
 */
export function recordSumSquaresSingle(
  rec: Recorder,
  label: string,
  range: SquaresRange,
  out: Tensor,
): void {
  const gpu = rec.gpu;
  const outBind = bindElements(gpu, out.buffer, out.offset, out.numel);
  const slices = sliceRanges(range.count, maxSliceElements(gpu, CHUNK));
  slices.forEach((s, k) => {
    dispatchSumSquares(rec, label, range, s, outBind, {
      slot: 0,
      workgroups: 1,
      chunksPerGroup: Math.max(1, Math.ceil(s.count / CHUNK)),
      flags: (k > 0 ? ADD_TO_SLOT : 0) | (k === slices.length - 1 ? TAKE_SQRT : 0),
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Stage 2: one workgroup reduces the partial slots in a fixed order and finishes.

const FINISH_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { count: u32, base: u32, outBase: u32, writeCoef: u32, maxNorm: f32 }
@group(0) @binding(2) var<uniform> params: Params;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var i = lid.x; i < params.count; i += ${WORKGROUP}u) { s += partials[params.base + i]; }
  sums[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lid.x < w) { sums[lid.x] += sums[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let norm = sqrt(sums[0]);
    out[params.outBase] = norm;
    if (params.writeCoef != 0u) {
      // As torch: no clipping asked (maxNorm 0) is a coefficient of exactly 1; a NaN norm
      // propagates (NaN > 1 is false) and an infinite one gives 0.
      var coef = 1.0;
      if (params.maxNorm > 0.0) {
        coef = params.maxNorm / (norm + 1e-6);
        if (coef > 1.0) { coef = 1.0; }
      }
      out[params.outBase + 1u] = coef;
    }
  }
}
`;

/** Records stage 2: out[0] = √Σ partials[0..slots), and out[1] = the clip coefficient if asked. */
export function recordFinishNorm(
  rec: Recorder,
  label: string,
  partials: Tensor,
  slots: number,
  out: Tensor,
  maxNorm: number | null,
): void {
  const gpu = rec.gpu;
  const p = bindElements(gpu, partials.buffer, partials.offset, partials.numel);
  const o = bindElements(gpu, out.buffer, out.offset, out.numel);
  const u = new Uint32Array(8);
  u.set([slots, p.base, o.base, maxNorm === null ? 0 : 1]);
  new Float32Array(u.buffer)[4] = maxNorm ?? 0;
  rec.dispatch(label, getPipeline(gpu, "norm-finish", FINISH_WGSL), [p.binding, o.binding], 1, u);
}

// ---------------------------------------------------------------------------------------------
// The gradient norm.

function gradRanges(grads: readonly Tensor[]): SquaresRange[] {
  const live = grads.filter((g) => g.numel > 0);
  return adjacentRuns([live]).map((run) => ({
    a: { buffer: live[run.start].buffer, byteOffset: live[run.start].offset },
    count: runLength(live, run),
  }));
}

/**
 * Elements the `partials` tensor of `gradNormClip` needs for these gradients: one per
 * SUM_SQUARES_PER_SLOT (16384) elements of each run of back-to-back views (a whole gradient
 * arena is one run), at least 1.
 */
export function gradNormPartialsLength(gpu: Gpu, grads: readonly Tensor[]): number {
  return Math.max(1, sumSquaresSlots(gpu, gradRanges(grads).map((r) => r.count)));
}

/**
 * Records the global L2 norm of `grads` and torch's clip coefficient:
 * `out = [totalNorm, clipCoef]` with clipCoef = min(maxNorm / (totalNorm + 1e-6), 1), or 1
 * when maxNorm is 0 (no clipping). Pass `out` to AdamW as `gradScale` with
 * `gradScaleIndex: 1` (the kernel reads that element, so no aligned view of it is needed).
 *
 * `partials` (f32, 1-D, at least `gradNormPartialsLength(gpu, grads)` elements) is scratch.
 * Consecutive grads that are back-to-back views of one buffer are reduced as one range, so a
 * gradient arena costs one launch per 128 MiB plus one; separate tensors cost one launch each.
 * Accumulation is f32 over a fixed tree: per thread 16 sequential adds per chunk of 4096 and 4
 * chunk sums, 8 tree levels, then ⌈slots/256⌉ sequential adds and 8 tree levels; with the square's
 * rounding each term goes through at most 37 + ⌈n / 2^22⌉ roundings, so the relative error of Σg²
 * is at most (37 + ⌈n / 2^22⌉) · 2^-24 (≈ 2.3e-6 for n = 1e6) and the norm's about half that.
 */
export function gradNormClip(
  rec: Recorder,
  args: { grads: readonly Tensor[]; partials: Tensor; maxNorm: number; out: Tensor },
): void {
  const op = "gradNormClip";
  const { grads, partials, maxNorm, out } = args;
  grads.forEach((g, i) => expectShape(op, `grads[${i}]`, g, g.shape.map(() => -1), "f32"));
  expectShape(op, "partials", partials, [-1], "f32");
  expectShape(op, "out", out, [2], "f32");
  expectBindable(op, "partials", partials);
  expectBindable(op, "out", out);
  if (!(maxNorm >= 0) || !Number.isFinite(maxNorm)) {
    throw new GpuError(
      `${op}: maxNorm must be a finite number ≥ 0 (0: no clipping), got ${maxNorm}`,
    );
  }
  const ranges = gradRanges(grads);
  const need = Math.max(1, sumSquaresSlots(rec.gpu, ranges.map((r) => r.count)));
  if (partials.numel < need) {
    throw new GpuError(
      `${op}: partials ("${partials.label}") has ${partials.numel} elements, these grads need ` +
        `${need} (gradNormPartialsLength)`,
    );
  }
  const slots = recordSumSquares(rec, op, ranges, partials);
  recordFinishNorm(rec, op, partials, slots, out, maxNorm);
}
