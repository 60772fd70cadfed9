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
// (tests/gelu_test.ts checks 1e-5), and so are gelu and gelu' down to where they leave float32's
// normal range (x ≈ −13.18 and −13.345; e^(−x²/2) itself leaves it at −13.216, so the factor
// 2^(−n) is applied last). Beyond |x| = 13.5, e^(−x²/2) is taken as 0: gelu(x) is then x for x > 0
// and 0 for x < 0, as in float32 torch.
//
// f16 storage: any operand may be f16 (the encoder's FFN keeps its GELU input and output in f16
// under `--precision f16`). The arithmetic is the same f32 code: an f16 operand is widened
// exactly when loaded and an f16 result rounded once, by to_f16, when stored. All-f32 launches
// keep the plain elementwise kernels, so their pipelines and results are what they were.

import { elementwiseKernel, recordElementwise } from "./elementwise.ts";
import { enableF16, expectF16, loadAs, storeAs, TO_F16_WGSL } from "./f16.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { type DType, expectBindable, expectShape, FLOAT_DTYPES, type Tensor } from "./tensor.ts";

/**
 * WGSL defining `gelu(x)` and `gelu_grad(x)` (= gelu'(x)). The elementwise
 * kernels below and the GEMM epilogues of kernels/matmul.ts paste this one text, so a fused GELU
 * computes exactly what the standalone one does.
 */
export const GELU_WGSL = /* wgsl */ `
// e^(-x^2/2) as m * 2^(-n), m within [0.7, 1.5] and a few ulps of relative error, where |x| <
// 13.5 (beyond, m = 0: gelu and gelu' are below float32's normals there). Products of m with other
// factors stay normal until the 2^(-n) applied last: e itself is subnormal past |x| = 13.216,
// gelu' only past 13.345, and GPUs that flush subnormals to zero (NVIDIA's Vulkan driver) would
// otherwise return 0 between the two.
struct HalfSq { m: f32, n: i32 }

fn exp_neg_half_sq_parts(x: f32) -> HalfSq {
  let a = abs(x);
  if (!(a < 13.5)) { return HalfSq(0.0, 0); }
  let ah = floor(a * 64.0) / 64.0;
  let al = a - ah;
  let big = 0.5 * (ah * ah);          // exact: ah has at most 10 significant bits
  let n = round(big * 1.44269504088896341);
  // Cody-Waite: n * 0.693359375 is exact and so is big minus it.
  let r = (big - n * 0.693359375) - n * -2.12194440e-4;
  let small = 0.5 * al * (a + ah);
  return HalfSq(exp(-(r + small)), i32(n));
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

// v * 2^(-n), exact wherever the result is normal: WGSL allows ldexp to return 0 once its
// exponent is below -126, even for a normal result (n is 127-128 for x in [-13.36, -13.25]), so a
// large n goes in two steps (v is then about 0.2-9: v * 2^-64 is normal). A small n goes in one,
// which keeps tiny v (gelu(-1e-30)) from underflowing in a first step.
fn scale_down(v: f32, n: i32) -> f32 {
  if (n > 64) { return ldexp(ldexp(v, -64), 64 - n); }
  return ldexp(v, -n);
}

// With e = e^(-x^2/2) and h = erfcx(|x|/sqrt 2) / 2, Phi(x) = h * e for x < 0, which keeps its
// relative accuracy however small it is, and 1 - h * e for x >= 0; phi(x) = e / sqrt(2 pi).
// For x < 0 neither function forms Phi (subnormal below x = -13.0 while gelu and gelu' are not:
// gelu(-13) came out 0 on an H200, 2026-11-28) nor e: the factors multiply m, then 2^(-n) scales
// the result (exact, and the same bits as a product with e wherever the result is normal).
fn gelu(x: f32) -> f32 {
  let p = exp_neg_half_sq_parts(x);
  let h = 0.5 * erfcx(abs(x) * FRAC_1_SQRT_2);
  if (x < 0.0) { return scale_down((x * h) * p.m, p.n); }
  return x * (1.0 - h * ldexp(p.m, -p.n));
}

fn gelu_grad(x: f32) -> f32 {
  let p = exp_neg_half_sq_parts(x);
  let h = 0.5 * erfcx(abs(x) * FRAC_1_SQRT_2);
  if (x < 0.0) { return scale_down((h + x * FRAC_1_SQRT_2PI) * p.m, p.n); }
  let e = ldexp(p.m, -p.n);
  return (1.0 - h * e) + x * (e * FRAC_1_SQRT_2PI);
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

const WORKGROUP = 256;

/** Operands in binding order (inputs, then the output) and the f32 expression stored. */
const KINDS = {
  geluForward: {
    bindings: ["x", "out"],
    value: (d: Record<string, DType>) => `gelu(${loadAs(d.x, "x[i]")})`,
  },
  geluBackward: {
    bindings: ["x", "dOut", "dX"],
    value: (d: Record<string, DType>) =>
      `${loadAs(d.dOut, "dOut[i]")} * gelu_grad(${loadAs(d.x, "x[i]")})`,
  },
} as const;

type Op = keyof typeof KINDS;

/** The elementwise frame of kernels/elementwise.ts with each operand in its own dtype. */
function mixedWgsl(op: Op, dtypes: Record<string, DType>): string {
  const { bindings, value } = KINDS[op];
  const output = bindings[bindings.length - 1];
  const declarations = bindings.map((name, b) => {
    const access = name === output ? "read_write" : "read";
    return `@group(0) @binding(${b}) var<storage, ${access}> ${name}: array<${dtypes[name]}>;`;
  }).join("\n");
  return /* wgsl */ `
${enableF16(Object.values(dtypes))}
${declarations}
struct Params { count: u32 }
@group(0) @binding(${bindings.length}) var<uniform> params: Params;
${dtypes[output] === "f16" ? TO_F16_WGSL : ""}
${GELU_WGSL}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) {
    ${output}[i] = ${storeAs(dtypes[output], value(dtypes))};
  }
}
`;
}

const mixedCode = new Map<string, string>();

/**
 * Checks the operands (in binding order: shaped like the first, each f32 or f16) and records the
 * launch: the plain f32 kernel when all are f32, else the kernel for their dtypes, named after
 * them (`geluForward_hs`: x f16, out f32).
 */
function recordGelu(
  rec: Recorder,
  op: Op,
  plain: ReturnType<typeof elementwiseKernel>,
  tensors: Record<string, Tensor>,
): void {
  const names = KINDS[op].bindings;
  const shape = tensors[names[0]].shape;
  for (const name of names) {
    expectShape(op, name, tensors[name], shape, FLOAT_DTYPES);
  }
  const dtypes = Object.fromEntries(names.map((name) => [name, tensors[name].dtype]));
  if (!Object.values(dtypes).includes("f16")) {
    recordElementwise(rec, op, plain, tensors);
    return;
  }
  for (const name of names) expectBindable(op, name, tensors[name]);
  expectF16(rec.gpu, op);
  const name = `${op}_${names.map((n) => (dtypes[n] === "f16" ? "h" : "s")).join("")}`;
  let code = mixedCode.get(name);
  if (code === undefined) mixedCode.set(name, code = mixedWgsl(op, dtypes));
  const n = tensors[names[0]].numel;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, name, code),
    names.map((name) => tensors[name]),
    grid1d(n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    new Uint32Array([n]),
  );
}

/** Records `out = gelu(x)` (erf form) elementwise; x and out each f32 or f16. */
export function geluForward(rec: Recorder, args: { x: Tensor; out: Tensor }): void {
  const { x, out } = args;
  recordGelu(rec, "geluForward", GELU_FORWARD, { x, out });
}

/**
 * Records `dX = dOut · gelu'(x)` elementwise, x being the forward input; each of x, dOut, dX
 * f32 or f16 (the product is taken in f32 and rounded once for an f16 dX).
 */
export function geluBackward(
  rec: Recorder,
  args: { x: Tensor; dOut: Tensor; dX: Tensor },
): void {
  const { x, dOut, dX } = args;
  recordGelu(rec, "geluBackward", GELU_BACKWARD, { x, dOut, dX });
}
