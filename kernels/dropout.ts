// Dropout with a counter-based random generator, so that no mask is ever stored: the backward
// pass (and any fused kernel, e.g. attention-probability dropout) regenerates the mask from
// (seed, stream, element index).
//
// The generator is Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011; the generator of cuRAND, PyTorch and JAX). It is pure 32-bit integer arithmetic (the
// 32x32->64 multiply is split into 16-bit halves because WGSL has no 64-bit integers), so the
// same (seed, stream, index) gives the same bits on every device, and the TypeScript twin below
// reproduces the GPU mask exactly. Key = (seed, stream); counter = (index >> 2, 0, 0, 0) and the
// element takes output word (index & 3): four neighbouring elements share one Philox block,
// which lets a vectorised kernel draw four masks for the price of one.

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

/**
 * WGSL defining `philox4x32_10(ctr: vec4u, key: vec2u) -> vec4u`,
 * `dropout_bits(seed, stream, index) -> u32`, `dropout_uniform(seed, stream, index) -> f32`
 * (a multiple of 2^-24 in [0, 1)) and `dropout_keep(seed, stream, index, p) -> bool`
 * (`dropout_uniform(...) >= p`), and `dropout_keep_cached(state, seed, stream, index, p)` for
 * consecutive indices (one Philox block per four). Paste it into any kernel that drops elements.
 */
export const DROPOUT_WGSL = /* wgsl */ `
fn philox_mulhilo(a: u32, b: u32) -> vec2u {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p00 = a0 * b0;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
  return vec2u(hi, a * b);
}

fn philox4x32_10(counter: vec4u, key_in: vec2u) -> vec4u {
  var c = counter;
  var k = key_in;
  for (var r = 0u; r < 10u; r++) {
    if (r > 0u) { k = k + vec2u(0x9E3779B9u, 0xBB67AE85u); }
    let m0 = philox_mulhilo(0xD2511F53u, c.x);
    let m1 = philox_mulhilo(0xCD9E8D57u, c.z);
    c = vec4u(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
  }
  return c;
}

fn dropout_bits(seed: u32, stream: u32, index: u32) -> u32 {
  let block = philox4x32_10(vec4u(index >> 2u, 0u, 0u, 0u), vec2u(seed, stream));
  return block[index & 3u];
}

fn dropout_uniform(seed: u32, stream: u32, index: u32) -> f32 {
  return f32(dropout_bits(seed, stream, index) >> 8u) * (1.0 / 16777216.0);
}

fn dropout_keep(seed: u32, stream: u32, index: u32, p: f32) -> bool {
  return dropout_uniform(seed, stream, index) >= p;
}

// dropout_keep for an invocation that walks consecutive indices: the Philox block of the last
// index is kept in \`state\` (start from dropout_block_none()), so that the four indices of a
// block cost one block, not four. The same masks as dropout_keep.
struct DropoutBlock { block: u32, bits: vec4u }

fn dropout_block_none() -> DropoutBlock {
  return DropoutBlock(0xffffffffu, vec4u(0u));
}

fn dropout_keep_cached(
  state: ptr<function, DropoutBlock>, seed: u32, stream: u32, index: u32, p: f32,
) -> bool {
  let block = index >> 2u;
  if (block != (*state).block) {
    (*state).block = block;
    (*state).bits = philox4x32_10(vec4u(block, 0u, 0u, 0u), vec2u(seed, stream));
  }
  return f32((*state).bits[index & 3u] >> 8u) * (1.0 / 16777216.0) >= p;
}
`;

function mulhilo(a: number, b: number): [number, number] {
  const a0 = a & 0xffff, a1 = a >>> 16, b0 = b & 0xffff, b1 = b >>> 16;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  const hi = (p11 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0;
  return [hi, Math.imul(a, b) >>> 0];
}

/** TypeScript twin of the WGSL `philox4x32_10` (unsigned 32-bit words). */
export function philox4x32_10(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): [number, number, number, number] {
  let [c0, c1, c2, c3] = counter.map((v) => v >>> 0);
  let k0 = key[0] >>> 0, k1 = key[1] >>> 0;
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + 0x9E3779B9) >>> 0;
      k1 = (k1 + 0xBB67AE85) >>> 0;
    }
    const [hi0, lo0] = mulhilo(0xD2511F53, c0);
    const [hi1, lo1] = mulhilo(0xCD9E8D57, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return [c0, c1, c2, c3];
}

/** TypeScript twin of the WGSL `dropout_bits`. */
export function dropoutBits(seed: number, stream: number, index: number): number {
  return philox4x32_10([index >>> 2, 0, 0, 0], [seed, stream])[index & 3];
}

/** TypeScript twin of the WGSL `dropout_uniform`: exactly the same value. */
export function dropoutUniform(seed: number, stream: number, index: number): number {
  return (dropoutBits(seed, stream, index) >>> 8) / 16777216;
}

/** TypeScript twin of the WGSL `dropout_keep`; `p` is rounded to float32 as the GPU sees it. */
export function dropoutKeep(seed: number, stream: number, index: number, p: number): boolean {
  return dropoutUniform(seed, stream, index) >= Math.fround(p);
}

/** Attention-probability, hidden-state, ... dropout settings. */
export interface DropoutConfig {
  /** Drop probability in [0, 1); 0 disables dropout. */
  p: number;
  /** 32-bit seed (callers mix the training step into it). */
  seed: number;
  /** 32-bit stream, e.g. layer·8 + site, so that each site draws an independent mask. */
  stream: number;
}

/** Throws a GpuError naming `op` unless p ∈ [0, 1) and seed, stream are 32-bit unsigned. */
export function checkDropout(op: string, d: DropoutConfig): void {
  if (!(d.p >= 0 && d.p < 1)) {
    throw new GpuError(`${op}: dropout probability ${d.p} is not in [0, 1)`);
  }
  for (const [name, v] of [["seed", d.seed], ["stream", d.stream]] as const) {
    if (!isU32(v)) {
      throw new GpuError(`${op}: dropout ${name} ${v} is not a 32-bit unsigned integer`);
    }
  }
}

/** Whether `v` is a 32-bit unsigned integer, as a dropout seed or stream must be. */
export function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/** The inverted-dropout scale 1/(1−p), as the float32 the kernels multiply by. */
export function dropoutScale(p: number): number {
  return Math.fround(1 / (1 - p));
}

const WORKGROUP = 256;

const DROPOUT_APPLY_WGSL = /* wgsl */ `
${DROPOUT_WGSL}
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
struct Params { count: u32, seed: u32, stream: u32, p: f32, scale: f32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.count) { return; }
  let keep = dropout_keep(params.seed, params.stream, i, params.p);
  dst[i] = select(0.0, src[i] * params.scale, keep);
}
`;

/** dst = mask ⊙ src / (1 − p); forward and backward are the same map. */
function dropoutApply(
  rec: Recorder,
  op: string,
  names: [string, string],
  src: Tensor,
  dst: Tensor,
  d: DropoutConfig,
): void {
  expectShape(op, names[0], src, [...src.shape], "f32"); // any shape, but float32
  expectShape(op, names[1], dst, src.shape, "f32");
  checkDropout(op, d);
  expectBindable(op, names[0], src);
  expectBindable(op, names[1], dst);
  if (d.p === 0) {
    rec.copy(op, src, dst);
    return;
  }
  const gpu = rec.gpu;
  const params = new ArrayBuffer(32);
  const u = new Uint32Array(params);
  const f = new Float32Array(params);
  u[0] = src.numel;
  u[1] = d.seed;
  u[2] = d.stream;
  f[3] = d.p;
  f[4] = dropoutScale(d.p);
  rec.dispatch(
    op,
    getPipeline(gpu, "dropout", DROPOUT_APPLY_WGSL),
    [src, dst],
    grid1d(src.numel, WORKGROUP, gpu.limits.maxComputeWorkgroupsPerDimension),
    u,
  );
}

/**
 * Records `out = x ⊙ keep / (1 − p)`, keep drawn by `dropout_keep(seed, stream, flat index)`.
 * p = 0 is a plain copy (bitwise identity).
 */
export function dropoutForward(
  rec: Recorder,
  args: { x: Tensor; out: Tensor; p: number; seed: number; stream: number },
): void {
  dropoutApply(rec, "dropoutForward", ["x", "out"], args.x, args.out, args);
}

/** Records `dX = dOut ⊙ keep / (1 − p)` with the forward's mask, regenerated. */
export function dropoutBackward(
  rec: Recorder,
  args: { dOut: Tensor; dX: Tensor; p: number; seed: number; stream: number },
): void {
  dropoutApply(rec, "dropoutBackward", ["dOut", "dX"], args.dOut, args.dX, args);
}
