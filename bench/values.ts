// Operand values for the benchmarks: varied (a GPU may run constant data at another clock), the
// same on every run.

/** `n` values uniform in [-1, 1) from a fixed linear congruential sequence. */
export function uniformValues(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out[i] = a / 2 ** 31 - 1;
  }
  return out;
}
