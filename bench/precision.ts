// The precisions the benches time: the encoder's two (model/encoder.ts, Precision), and "f16math",
// precision "f16" with the encoder's matrix products (linear layers, attention) multiplied and
// summed in f16 (EncoderOptions.f16Math, matmul's f16Math).

import type { Precision } from "../model/encoder.ts";

export type BenchPrecision = Precision | "f16math";

export const BENCH_PRECISIONS: readonly BenchPrecision[] = ["f32", "f16", "f16math"];

/** The storage precision of a bench precision ("f16math" stores as "f16" does). */
export function storagePrecision(p: BenchPrecision): Precision {
  return p === "f16math" ? "f16" : p;
}

/** Whether a bench precision multiplies in f16. */
export function f16Math(p: BenchPrecision): boolean {
  return p === "f16math";
}

/** ", f16" / ", f16 math" in a row's label; "" for f32. */
export function precisionLabel(p: BenchPrecision): string {
  return p === "f32" ? "" : p === "f16" ? ", f16" : ", f16 math";
}
