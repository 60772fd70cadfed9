// L2 distances between two same-shaped tensors, for analysis (e.g. ‖θ − θ₀‖₂, how far
// fine-tuning moved the weights): per row ‖a_i − b_i‖₂, and over the whole tensor ‖a − b‖₂.
// Both are deterministic fixed-order reductions in f32; a − b is formed in f32 from the inputs
// themselves, so nearly equal weights lose nothing to cancellation (Sterbenz: exact).

import { fill } from "./fill.ts";
import {
  recordFinishNorm,
  recordSumSquares,
  recordSumSquaresSingle,
  type SquaresRange,
  sumSquaresSlots,
} from "./grad_norm.ts";
import { GpuError } from "./device.ts";
import type { Gpu } from "./device.ts";
import type { Recorder } from "./recorder.ts";
import { recordRowNorms } from "./row_norm.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

/** Records out[i] = ‖a[i, :] − b[i, :]‖₂ for a, b `[rows, cols]` f32, out `[rows]` f32. */
export function rowDistances(rec: Recorder, args: { a: Tensor; b: Tensor; out: Tensor }): void {
  const op = "rowDistances";
  const { a, b, out } = args;
  expectShape(op, "a", a, [-1, -1], "f32");
  expectShape(op, "b", b, a.shape, "f32");
  expectShape(op, "out", out, [a.shape[0]], "f32");
  recordRowNorms(rec, op, a, b, out);
}

function range(a: Tensor, b: Tensor): SquaresRange {
  return {
    a: { buffer: a.buffer, byteOffset: a.offset },
    b: { buffer: b.buffer, byteOffset: b.offset },
    count: a.numel,
  };
}

/** Elements the optional `partials` of `distance` needs for tensors of `numel` elements. */
export function distancePartialsLength(gpu: Gpu, numel: number): number {
  return Math.max(1, sumSquaresSlots(gpu, [numel]));
}

/**
 * Records out[0] = ‖a − b‖₂ over all elements of two same-shaped f32 tensors of any size (beyond
 * one storage binding they are read in binding-sized slices).
 *
 * With `partials` (f32, 1-D, ≥ distancePartialsLength(gpu, a.numel) elements) the work is spread
 * over one workgroup per 16384 elements plus a final one, and the relative error of the sum of
 * squares is at most (37 + ⌈n / 2^22⌉) · 2^-24, as for gradNormClip. Without it a single
 * workgroup walks the whole tensor (per thread: 16 adds per chunk of 4096, then the n / 4096
 * chunk sums in order), which is slow on a large GPU and bounded by about (26 + n / 4096) · 2^-24
 * (≈ 1.6e-5 for n = 1e6): fine for small tensors or occasional analysis.
 */
export function distance(
  rec: Recorder,
  args: { a: Tensor; b: Tensor; partials?: Tensor; out: Tensor },
): void {
  const op = "distance";
  const { a, b, partials, out } = args;
  expectShape(op, "a", a, a.shape.map(() => -1), "f32");
  expectShape(op, "b", b, a.shape, "f32");
  expectShape(op, "out", out, [1], "f32");
  expectBindable(op, "out", out);
  if (partials) {
    expectShape(op, "partials", partials, [-1], "f32");
    expectBindable(op, "partials", partials);
    const need = distancePartialsLength(rec.gpu, a.numel);
    if (partials.numel < need) {
      throw new GpuError(
        `${op}: partials ("${partials.label}") has ${partials.numel} elements, ` +
          `${a.numel} elements need ${need} (distancePartialsLength)`,
      );
    }
  }
  if (a.numel === 0) return fill(rec, out, 0);
  if (partials) {
    const slots = recordSumSquares(rec, op, [range(a, b)], partials);
    recordFinishNorm(rec, op, partials, slots, out, null);
  } else {
    recordSumSquaresSingle(rec, op, range(a, b), out);
  }
}
