// Float64 GELU (the exact erf form): the reference of tests/gelu_test.ts, which checks it against
// known erf values and finite differences, and of the tests of kernels that fuse GELU (the GEMM
// epilogue in tests/matmul_test.ts, tests/linear_test.ts).

/** erf(x) for 0 <= x < 1.5: 2/√π·e^(−x²)·Σ 2ⁿx^(2n+1)/(1·3···(2n+1)), all terms positive. */
export function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 500 && term > 1e-18 * sum; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * sum;
}

/**
 * erfc(x) for x >= 1.5 by its continued fraction e^(−x²)/√π · 1/(x + ½/(x + 1/(x + 3/2/(x + ...)))),
 * evaluated from the back (300 terms converge to double precision from x = 1.5 on).
 */
export function erfcFraction(x: number): number {
  let t = x;
  for (let k = 300; k >= 1; k--) t = x + k / 2 / t;
  return Math.exp(-x * x) / (Math.sqrt(Math.PI) * t);
}

export function erfc(x: number): number {
  if (x >= 1.5) return erfcFraction(x);
  if (x <= -1.5) return 2 - erfcFraction(-x);
  return x >= 0 ? 1 - erfSeries(x) : 1 + erfSeries(-x);
}

export function erf(x: number): number {
  if (Math.abs(x) >= 1.5) return x > 0 ? 1 - erfcFraction(x) : erfcFraction(-x) - 1;
  return x >= 0 ? erfSeries(x) : -erfSeries(-x);
}

/** gelu(x) = x·Φ(x) = ½·x·erfc(−x/√2). */
export function refGelu(x: number): number {
  return 0.5 * x * erfc(-x * Math.SQRT1_2);
}

/** d gelu / dx = Φ(x) + x·φ(x). */
export function refGeluGrad(x: number): number {
  return 0.5 * erfc(-x * Math.SQRT1_2) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
}
