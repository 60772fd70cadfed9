// Selected rows of a matrix and the gradient going back to them: the MLM head reads the encoder's
// hidden state only at the masked positions (about 15% of the tokens), so that the vocabulary-
// sized decoder runs on those rows alone.
//
// Forward: out[i] = x[rows[i]]. Backward: dX[n] = dOut[slot[n]] where row n was selected, else 0;
// `slot` is the inverse of `rows` (host-built, 0xffffffff for rows not selected). Every element of
// dX is written by one invocation from one source: no atomics, no separate zero fill, and
// bitwise-deterministic. Selected rows must be distinct (an inverse must exist); the host
// checks it when it builds the slots.

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

/** slot[n] for a row that was not selected. */
export const NOT_SELECTED = 0xffffffff;

const GATHER_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> rows: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct Params { m: u32, n: u32, h: u32 }
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.m * p.h) { return; }
  let r = i / p.h;
  let c = i - r * p.h;
  let src = rows[r];
  // An out-of-range row gives NaN rather than a read out of bounds.
  out[i] = select(bitcast<f32>(0x7fc00000u), x[min(src, p.n - 1u) * p.h + c], src < p.n);
}
`;

const SCATTER_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> d_out: array<f32>;
@group(0) @binding(1) var<storage, read> slot: array<u32>;
@group(0) @binding(2) var<storage, read_write> d_x: array<f32>;
struct Params { m: u32, n: u32, h: u32 }
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.n * p.h) { return; }
  let r = i / p.h;
  let c = i - r * p.h;
  let s = slot[r];
  var g = 0.0;
  if (s < p.m) { g = d_out[s * p.h + c]; }
  d_x[i] = g;
}
`;

function grid(rec: Recorder, n: number): [number, number] {
  return grid1d(n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

/** Records out[i] = x[rows[i]]: x [N, H], rows [M] u32, out [M, H]. A row ≥ N gives NaN. */
export function gatherRowsForward(
  rec: Recorder,
  args: { x: Tensor; rows: Tensor; out: Tensor },
): void {
  const op = "gatherRowsForward";
  const { x, rows, out } = args;
  expectShape(op, "x", x, [-1, -1], "f32");
  const [n, h] = x.shape;
  expectShape(op, "rows", rows, [-1], "u32");
  const m = rows.shape[0];
  expectShape(op, "out", out, [m, h], "f32");
  if (n === 0 && m > 0) throw new GpuError(`${op}: x ("${x.label}") has no rows to gather`);
  for (const [name, t] of [["x", x], ["rows", rows], ["out", out]] as const) {
    expectBindable(op, name, t);
  }
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, GATHER_WGSL),
    [x, rows, out],
    grid(rec, m * h),
    new Uint32Array([m, n, h]),
  );
}

/**
 * Records dX[n] = dOut[slot[n]], or 0 where slot[n] ≥ M (NOT_SELECTED): dOut [M, H], slot [N]
 * u32, dX [N, H], every element written.
 */
export function gatherRowsBackward(
  rec: Recorder,
  args: { dOut: Tensor; slot: Tensor; dX: Tensor },
): void {
  const op = "gatherRowsBackward";
  const { dOut, slot, dX } = args;
  expectShape(op, "dX", dX, [-1, -1], "f32");
  const [n, h] = dX.shape;
  expectShape(op, "slot", slot, [n], "u32");
  expectShape(op, "dOut", dOut, [-1, h], "f32");
  const m = dOut.shape[0];
  for (const [name, t] of [["dOut", dOut], ["slot", slot], ["dX", dX]] as const) {
    expectBindable(op, name, t);
  }
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, SCATTER_WGSL),
    [dOut, slot, dX],
    grid(rec, n * h),
    new Uint32Array([m, n, h]),
  );
}

/**
 * The inverse of `rows` for gatherRowsBackward: slot[rows[i]] = i, NOT_SELECTED elsewhere.
 * Throws on a row out of [0, n) or selected twice (its gradient would need a sum).
 */
export function selectionSlots(rows: ArrayLike<number>, n: number): Uint32Array {
  const slot = new Uint32Array(n).fill(NOT_SELECTED);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (!Number.isInteger(r) || r < 0 || r >= n) {
      throw new GpuError(`selectionSlots: row ${r} (entry ${i}) is not in [0, ${n})`);
    }
    if (slot[r] !== NOT_SELECTED) {
      throw new GpuError(`selectionSlots: row ${r} is selected twice (entries ${slot[r]}, ${i})`);
    }
    slot[r] = i;
  }
  return slot;
}
