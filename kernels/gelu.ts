// GELU as Hugging Face's "gelu" (the exact erf form, not the tanh approximation):
//   gelu(x) = x·Φ(x),  Φ(x) = ½·erfc(−x/√2),  gelu'(x) = Φ(x) + x·φ(x),  φ(x) = e^(−x²/2)/√(2π).
//
// WGSL has no erf, and naive formulas lose the negative tail, where gelu(x) is tiny and every
// digit of erfc matters. We write erfc(z) = e^(−z²)·erfcx(z) for z ≥ 0 and compute each factor
// to a few float32 ulps of relative error:
// - erfcx(z) = t·exp(Q(t)), t = 1/(1 + z/2), with Q the Chebyshev fit of Numerical Recipes'
//   `erfcc` (fractional error < 1.2e-7 for all z ≥ 0); its exp argument stays within [−1.3, 0].
// - e^(−z²) = e^(−x²/2) straight from x (z = |x|/√2 rounded would cost 2z² ulps at the tail):
//   x = xh + xl with xh on a 1/64 grid, so xh²/2 is exact; Cody–Waite reduction of xh²/2 by
//   ln 2 (exact as well) leaves e^(−x²/2) = 2^(−n)·exp(−r − xl·(x + xh)/2) with a small
//   argument, where the exp builtin is accurate. A single exp(−x²/2) would have an error of
//   |x²/2| ulps (WGSL's exp allows 3 + 2|arg| ulps, and most GPUs multiply by log2 e first).
// Measured against a float64 reference the result is within a few 1e-7 relative over [−10, 10]
// (tests/gelu_test.ts checks 1e-5). Beyond |x| ≈ 13.2, e^(−x²/2) is below float32's normal range
// and becomes 0: gelu(x) is then x for x > 0 and 0 for x < 0, as in float32 torch.

import { elementwiseKernel, recordElementwise } from "./elementwise.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";

/**
 * WGSL defining `gelu(x)` and `gelu_grad(x)` (= gelu'(x)), through Φ(x) and φ(x). The elementwise
 * kernels below and the GEMM epilogues of kernels/matmul.ts paste this one text, so a fused GELU
 * computes exactly what the standalone one does.
 */
export const GELU_WGSL = /* wgsl */ `
// e^(-x^2/2), relative error a few ulps wherever the result is a normal float32.
fn exp_neg_half_sq(x: f32) -> f32 {
  let a = abs(x);
  if (!(a < 13.25)) { return 0.0; }
  let ah = floor(a * 64.0) / 64.0;
  let al = a - ah;
  let big = 0.5 * (ah * ah);          // exact: ah has at most 10 significant bits
  let n = round(big * 1.44269504088896341);
  // Cody-Waite: n * 0.693359375 is exact and so is big minus it.
  let r = (big - n * 0.693359375) - n * -2.12194440e-4;
  let small = 0.5 * al * (a + ah);
  return ldexp(exp(-(r + small)), -i32(n));
}

// erfc(z) * e^(z^2) for z >= 0 (Numerical Recipes' erfcc without its e^(-z^2)).
fn erfcx(z: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * z);
  let q = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277))))))));
  return t * exp(q);
}

const FRAC_1_SQRT_2: f32 = 0.7071067811865476;
const FRAC_1_SQRT_2PI: f32 = 0.3989422804014327;

struct Normal { cdf: f32, pdf: f32 }

// Phi(x) and phi(x). For x < 0, Phi = e^(-x^2/2) * erfcx(|x|/sqrt 2) / 2 keeps its relative
// accuracy however small it is; for x >= 0, Phi = 1 - that.
fn normal(x: f32) -> Normal {
  let e = exp_neg_half_sq(x);
  let tail = 0.5 * e * erfcx(abs(x) * FRAC_1_SQRT_2);
  return Normal(select(1.0 - tail, tail, x < 0.0), e * FRAC_1_SQRT_2PI);
}

fn gelu(x: f32) -> f32 {
  return x * normal(x).cdf;
}

fn gelu_grad(x: f32) -> f32 {
  let n = normal(x);
  return n.cdf + x * n.pdf;
}
`;

const GELU_FORWARD = elementwiseKernel({
  inputs: ["x"],
  output: "out",
  helpers: GELU_WGSL,
  body: /* wgsl */ `out[i] = gelu(x[i]);`,
});

const GELU_BACKWARD = elementwiseKernel({
  inputs: ["x", "dOut"],
  output: "dX",
  helpers: GELU_WGSL,
  body: /* wgsl */ `dX[i] = dOut[i] * gelu_grad(x[i]);`,
});

/** Records `out = gelu(x)` (erf form) elementwise. */
export function geluForward(rec: Recorder, args: { x: Tensor; out: Tensor }): void {
  const { x, out } = args;
  recordElementwise(rec, "geluForward", GELU_FORWARD, { x, out });
}

/** Records `dX = dOut · gelu'(x)` elementwise, x being the forward input. */
export function geluBackward(
  rec: Recorder,
  args: { x: Tensor; dOut: Tensor; dX: Tensor },
): void {
  const { x, dOut, dX } = args;
  recordElementwise(rec, "geluBackward", GELU_BACKWARD, { x, dOut, dX });
}
