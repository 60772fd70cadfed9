// Half precision in kernels: what every kernel that reads or writes f16 storage shares.
//
// Storage may be f16; arithmetic is f32 (but in matmul's f16-arithmetic kernels, `f16Math`): a
// kernel loads f16 into f32 (exact), computes and accumulates in f32, and rounds once when it
// stores (round to nearest even). WGSL leaves the conversion of an f32 beyond f16's range
// indeterminate, so `to_f16` makes it ±∞ as IEEE does (lavapipe already does; a driver need not):
// an overflow must stay visible, for the loss scaler to see it, instead of turning into some
// finite number.

import { GpuError } from "./device.ts";
import type { Gpu } from "./device.ts";
import type { DType } from "./tensor.ts";

/** The largest finite f16. */
export const F16_MAX = 65504;

/**
 * WGSL: `to_f16(v: f32) -> f16`, IEEE rounding with overflow to ±∞ (from 65520 up, the first
 * value that rounds past F16_MAX). Needs `enable f16;` (see `enableF16`).
 */
export const TO_F16_WGSL = /* wgsl */ `
fn to_f16(v: f32) -> f16 {
  if (abs(v) >= 65520.0) {
    // A runtime product, so no constant folding can reject the overflow.
    return f16(sign(v) * 65504.0) * f16(2.0);
  }
  return f16(v);
}`;

/** WGSL: `to_f16x4(v: vec4<f32>) -> vec4<f16>`, `to_f16` of each component (needs TO_F16_WGSL). */
export const TO_F16X4_WGSL = /* wgsl */ `
fn to_f16x4(v: vec4<f32>) -> vec4<f16> {
  return vec4<f16>(to_f16(v.x), to_f16(v.y), to_f16(v.z), to_f16(v.w));
}`;

/** The WGSL directive a kernel needs when any of `dtypes` is f16 ("" otherwise). */
export function enableF16(dtypes: readonly DType[]): string {
  return dtypes.includes("f16") ? "enable f16;\n" : "";
}

/** Throws unless the device can run f16 kernels (created with the shader-f16 feature). */
export function expectF16(gpu: Gpu, op: string): void {
  if (!gpu.hasF16) {
    throw new GpuError(
      `${op}: f16 tensors need the WebGPU feature "shader-f16", which this adapter ` +
        `(${gpu.description}) does not offer`,
    );
  }
}

/** The WGSL expression storing f32 expression `v` into an element of type `dtype`. */
export function storeAs(dtype: DType, v: string): string {
  return dtype === "f16" ? `to_f16(${v})` : v;
}

/** The WGSL expression reading element expression `e` of type `dtype` as f32. */
export function loadAs(dtype: DType, e: string): string {
  return dtype === "f16" ? `f32(${e})` : e;
}
