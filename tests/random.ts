import { uniformGenerator as rng } from "../model/init.ts";
// Seeded random inputs, so that a failing test reproduces.

/** Uniform values in [-1, 1) with no exact zeros. */
export function randomValues(n: number, seed: number): Float64Array {
  const next = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    while (v === 0) v = next() * 2 - 1;
    out[i] = v;
  }
  return out;
}

/**
 * Central finite difference of a float64 function at `x[i]`: (f(x + h) − f(x − h)) / 2h.
 * `x` is restored afterwards.
 */
export function finiteDifference(
  f: (x: Float64Array) => number,
  x: Float64Array,
  i: number,
  h = 1e-6,
): number {
  const saved = x[i];
  x[i] = saved + h;
  const plus = f(x);
  x[i] = saved - h;
  const minus = f(x);
  x[i] = saved;
  return (plus - minus) / (2 * h);
}

/** The gradient of a float64 function at `x` by central differences, one per element. */
export function finiteDifferences(
  f: (x: Float64Array) => number,
  x: Float64Array,
  h = 1e-6,
): Float64Array {
  return Float64Array.from(x, (_, i) => finiteDifference(f, x, i, h));
}

export { rng };
