import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { runUnary } from "./elementwise.ts";
import { erf, erfc, erfcFraction, erfSeries, refGelu, refGeluGrad } from "./gelu_reference.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { finiteDifference, randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { geluBackward, geluForward } from "../kernels/gelu.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type DType, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

/** |a − e| ≤ tol·|e| for every element: relative accuracy even where gelu is tiny. */
function assertRelative(
  name: string,
  x: ArrayLike<number>,
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  skip: (x: number) => boolean = () => false,
): void {
  for (let i = 0; i < expected.length; i++) {
    if (skip(x[i])) continue;
    const err = Math.abs(actual[i] - expected[i]);
    assert(
      err <= tol * Math.abs(expected[i]),
      `${name}: at x = ${x[i]} got ${actual[i]}, expected ${expected[i]} ` +
        `(relative error ${(err / Math.abs(expected[i])).toExponential(2)} > ${tol})`,
    );
  }
}

/** [-10, 10] densely, values near 0 of both signs, and random values, rounded to float32. */
function inputs(): Float32Array {
  const xs: number[] = [];
  for (let i = 0; i <= 2000; i++) xs.push(-10 + i / 100);
  for (const e of [1e-30, 1e-20, 1e-8, 3e-6, 1e-4, 0.01, 0.3]) xs.push(e, -e);
  for (const v of randomValues(333, 5)) xs.push(v * 10);
  xs.push(-0.7517915); // near gelu's minimum, where gelu' crosses 0
  return Float32Array.from(xs);
}

// ---- the reference itself -----------------------------------------------------------------

Deno.test("gelu reference: erf and erfc match known values", () => {
  const known: [string, number, number][] = [
    ["erf(0.5)", erf(0.5), 0.5204998778130465],
    ["erf(1)", erf(1), 0.8427007929497149],
    ["erf(-1)", erf(-1), -0.8427007929497149],
    ["erf(3)", erf(3), 0.9999779095030014],
    ["erfc(0.5)", erfc(0.5), 0.4795001221869535],
    ["erfc(2)", erfc(2), 0.004677734981047266],
    ["erfc(3)", erfc(3), 2.209049699858544e-05],
    ["erfc(5)", erfc(5), 1.5374597944280349e-12],
    ["erfc(-2)", erfc(-2), 1.9953222650189528],
  ];
  // erfc = 1 − erf below x = 1.5 cancels up to 1.5 digits: the reference's relative error is
  // ~1e-14 at worst, far below the 1e-5 the kernels are held to.
  for (const [name, got, want] of known) assertClose(name, [got], [want], 1e-13);
  assertEquals(erfc(0), 1);
  // The series and the continued fraction agree where they meet.
  assertClose("erfc at the branch", [1 - erfSeries(1.5)], [erfcFraction(1.5)], 1e-13);
});

Deno.test("gelu reference: gradient matches central differences of the forward", () => {
  const xs = Float64Array.from([-9, -6.3, -4, -3.3, -2.1, -0.75, -0.3, 0.01, 0.4, 1.7, 3, 5.5, 8]);
  const fd = Array.from(
    xs,
    (_, i) => finiteDifference((x) => refGelu(x[i]), xs, i, 1e-5),
  );
  const analytic = Array.from(xs, refGeluGrad);
  assertRelative("gelu' vs finite differences", xs, analytic, fd, 1e-6);
});

// ---- the kernels ---------------------------------------------------------------------------

gpuTest("geluForward matches the float64 reference to 1e-5 relative on [-10, 10]", async (gpu) => {
  const data = inputs();
  for (const shape of [[data.length], [1], [7], [33, 5], [130, 7]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const xs = n === data.length ? data : Float32Array.from(randomValues(n, n), (v) => 8 * v);
    const x = tensorFromArray(gpu, xs, shape, "x");
    const out = createTensor(gpu, shape, "f32", "out");
    const rec = new Recorder(gpu);
    fill(rec, out, NaN);
    geluForward(rec, { x, out });
    await rec.submit();
    const got = await out.download();
    const want = Array.from(xs, refGelu);
    assertClose(`gelu [${shape}]`, got, want, 1e-5);
    assertRelative(`gelu [${shape}]`, xs, got, want, 1e-5);
    x.destroy();
    out.destroy();
  }
});

gpuTest("geluBackward matches the float64 reference gradient", async (gpu) => {
  const data = inputs();
  for (const shape of [[data.length], [1], [33, 5], [3, 1, 11]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const xs = n === data.length ? data : Float32Array.from(randomValues(n, 7 * n), (v) => 6 * v);
    const dOuts = Float32Array.from(randomValues(n, 3 * n + 1));
    const x = tensorFromArray(gpu, xs, shape, "x");
    const ones = tensorFromArray(gpu, new Float32Array(n).fill(1), shape, "ones");
    const dOut = tensorFromArray(gpu, dOuts, shape, "dOut");
    const slope = createTensor(gpu, shape, "f32", "slope");
    const dX = createTensor(gpu, shape, "f32", "dX");
    const rec = new Recorder(gpu);
    fill(rec, slope, NaN);
    fill(rec, dX, NaN);
    geluBackward(rec, { x, dOut: ones, dX: slope });
    geluBackward(rec, { x, dOut, dX });
    await rec.submit();

    // gelu' itself to 1e-5 relative, except within 0.05 of its zero at x ≈ −0.7518 where it is
    // a difference of two nearly equal terms (Φ(x) and −x·φ(x)); there the mean-scaled bound
    // of assertClose applies.
    const grad = Array.from(xs, refGeluGrad);
    const gotSlope = await slope.download();
    assertClose(`gelu' [${shape}]`, gotSlope, grad, 1e-5);
    assertRelative(
      `gelu' [${shape}]`,
      xs,
      gotSlope,
      grad,
      1e-5,
      (v) => Math.abs(v + 0.7518) < 0.05,
    );
    assertClose(`dX [${shape}]`, await dX.download(), grad.map((g, i) => g * dOuts[i]), 1e-5);
    for (const t of [x, ones, dOut, slope, dX]) t.destroy();
  }
});

gpuTest("gelu: saturates to x and 0 beyond float32's range of e^(−x²/2)", async (gpu) => {
  const xs = Float32Array.from([-1e30, -300, -20, 20, 300, 1e30]);
  const x = tensorFromArray(gpu, xs, [6], "x");
  const out = createTensor(gpu, [6], "f32", "out");
  const dX = createTensor(gpu, [6], "f32", "dX");
  const rec = new Recorder(gpu);
  geluForward(rec, { x, out });
  geluBackward(rec, { x, dOut: tensorFromArray(gpu, new Float32Array(6).fill(1), [6], "1"), dX });
  await rec.submit();
  const got = Array.from(await out.download(), (v) => v + 0); // −0 and 0 alike
  assertEquals(got, [0, 0, 0, 20, 300, 1e30].map((v) => Math.fround(v)));
  assertEquals(Array.from(await dX.download(), (v) => v + 0), [0, 0, 0, 1, 1, 1]);
});

const GELU = { forward: geluForward, backward: geluBackward };

gpuTest(
  "gelu: keeps 1e-5 relative accuracy on [-13.4, -10], down to float32's normals",
  async (gpu) => {
    // e^(−x²/2) must not be cut to 0 where gelu and gelu' are still normal: gelu leaves the
    // normals at x ≈ −13.18, gelu' at −13.345 (elements whose reference is subnormal are skipped).
    const xs = Float32Array.from({ length: 35 }, (_, i) => -10 - i / 10);
    const { out, dX } = await runUnary(gpu, GELU, xs, new Float32Array(xs.length).fill(1));
    const subnormal = (v: number) => Math.abs(v) < 2 ** -126;
    assertRelative("gelu", xs, out, Array.from(xs, refGelu), 1e-5, (v) => subnormal(refGelu(v)));
    const grad = Array.from(xs, refGeluGrad);
    assertRelative("gelu'", xs, dX, grad, 1e-5, (v) => subnormal(refGeluGrad(v)));
  },
);

gpuTest("gelu: tiny and moderate negative inputs keep 1e-5 relative accuracy", async (gpu) => {
  // The far tail scales by 2^(−n) in two steps; small |x| (n = 0) must not go through them.
  const xs = Float32Array.from([-1e-30, -3e-20, -1e-7, -0.01, -0.5, -1, -3, -7, -9.4, -9.6]);
  const { out, dX } = await runUnary(gpu, GELU, xs, new Float32Array(xs.length).fill(1));
  assertRelative("gelu", xs, out, Array.from(xs, refGelu), 1e-5, () => false);
  assertRelative("gelu'", xs, dX, Array.from(xs, refGeluGrad), 1e-5, () => false);
});

gpuTest("gelu: a grid past the per-dimension limit spreads over x and y", async (gpu) => {
  // 1037 elements are 5 workgroups of 256: a 3 x 2 grid, one workgroup past the end.
  const n = 1037;
  const xs = Float32Array.from(randomValues(n, 21), (v) => 4 * v);
  const dOuts = Float32Array.from(randomValues(n, 22));
  const { out, dX } = await runUnary(gpu, GELU, xs, dOuts, { maxComputeWorkgroupsPerDimension: 3 });
  assertClose("gelu", out, Array.from(xs, refGelu), 1e-5);
  assertClose("dX", dX, Array.from(xs, (v, i) => refGeluGrad(v) * dOuts[i]), 1e-5);
});

gpuTest("gelu: two runs give bitwise-identical outputs", async (gpu) => {
  const n = 1037;
  const xs = Float32Array.from(randomValues(n, 11), (v) => 5 * v);
  const dOuts = Float32Array.from(randomValues(n, 12));
  const outs = [await runUnary(gpu, GELU, xs, dOuts), await runUnary(gpu, GELU, xs, dOuts)];
  assertEquals(outs[0], outs[1]);
});

gpuTest("gelu: wrong shapes are refused naming the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const x = createTensor(gpu, [4, 5], "f32", "x");
  const bad = createTensor(gpu, [5, 4], "f32", "bad");
  const ints = createTensor(gpu, [4, 5], "i32", "ints");
  assertThrows(() => geluForward(rec, { x, out: bad }), GpuError, "geluForward: out");
  assertThrows(() => geluForward(rec, { x: ints, out: x }), GpuError, "geluForward: x");
  assertThrows(() => geluBackward(rec, { x, dOut: bad, dX: x }), GpuError, "geluBackward: dOut");
  assertThrows(() => geluBackward(rec, { x, dOut: x, dX: bad }), GpuError, "geluBackward: dX");
  assertEquals(rec.length, 0);
});

// ---- f16 storage ---------------------------------------------------------------------------
//
// The reference is evaluated in float64 on the values the kernel reads (f16 inputs are exact in
// float64), then rounded to f16 for an f16 output. The kernel's f32 result is within a few 1e-7
// relative of the exact value, far less than an f16 ulp (2^-10 relative, 2^-24 absolute among
// subnormals), so its rounding can differ from the reference's only when the exact value lies
// within that error of a rounding boundary: the bound is 1 f16 ulp, element for element (on
// lavapipe ~0.01% of the elements are 1 ulp off over all finite f16 inputs, none more).

/** f16 bits mapped onto a line where adjacent values differ by 1 (±0 both at 0). */
const orderedF16 = (bits: number) => (bits & 0x8000 ? -(bits & 0x7fff) : bits);

/** Asserts each f16 of `got` within `ulps` of f16round(expected); non-finite ones equal. */
function assertF16Ulps(
  name: string,
  x: ArrayLike<number>,
  got: Float16Array,
  expected: ArrayLike<number>,
  ulps = 1,
): void {
  const gotBits = new Uint16Array(got.buffer, got.byteOffset, got.length);
  const want = Float16Array.from(expected, Math.f16round);
  const wantBits = new Uint16Array(want.buffer);
  for (let i = 0; i < want.length; i++) {
    const ok = Number.isFinite(want[i]) && Number.isFinite(got[i])
      ? Math.abs(orderedF16(gotBits[i]) - orderedF16(wantBits[i])) <= ulps
      : Object.is(got[i], want[i]);
    assert(ok, `${name}: at x = ${x[i]} got ${got[i]}, expected ${want[i]} (±${ulps} f16 ulp)`);
  }
}

/** Every finite f16 value, both zeros included. */
function allFiniteF16(): Float16Array {
  const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
  return new Float16Array(bits.filter((b) => (b & 0x7c00) !== 0x7c00).buffer);
}

gpuTest("gelu f16: every finite f16 input, forward and backward within 1 f16 ulp", async (gpu) => {
  assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
  const xs = allFiniteF16();
  const n = xs.length;
  const dOuts = Float16Array.from(randomValues(n, 41));
  const x = tensorFromArray(gpu, xs, [n], "x");
  const dOut = tensorFromArray(gpu, dOuts, [n], "dOut");
  const ones = tensorFromArray(gpu, new Float16Array(n).fill(1), [n], "ones");
  const [out, dX, slope] = ["out", "dX", "slope"].map((l) => createTensor(gpu, [n], "f16", l));
  const rec = new Recorder(gpu);
  for (const t of [out, dX, slope]) fill(rec, t, NaN);
  geluForward(rec, { x, out });
  geluBackward(rec, { x, dOut, dX });
  geluBackward(rec, { x, dOut: ones, dX: slope });
  await rec.submit();
  // Up to ±65504: the saturated ends (gelu(x) = x or −0) and the f16 subnormals included.
  assertF16Ulps("gelu", xs, (await out.download()) as Float16Array, Array.from(xs, refGelu));
  const grad = Array.from(xs, refGeluGrad);
  assertF16Ulps("gelu'", xs, (await slope.download()) as Float16Array, grad);
  const dXs = grad.map((g, i) => g * dOuts[i]);
  assertF16Ulps("dX", xs, (await dX.download()) as Float16Array, dXs);
  for (const t of [x, dOut, ones, out, dX, slope]) t.destroy();
});

gpuTest("gelu f16: every mix of f16 and f32 operands, odd sizes", async (gpu) => {
  const both = ["f32", "f16"] as const;
  const host = (dtype: DType, values: ArrayLike<number>) =>
    dtype === "f16" ? Float16Array.from(values) : Float32Array.from(values);
  // An f32 output is held to the f32 kernels' 1e-5 relative bound (gelu' near its zero at
  // x ≈ −0.7518 to assertClose's mean-scaled one, as above); an f16 output to 1 f16 ulp.
  const check = async (name: string, xs: ArrayLike<number>, t: Tensor, want: number[]) => {
    const got = await t.download();
    if (got instanceof Float16Array) assertF16Ulps(name, xs, got, want);
    else {
      assertClose(name, got, want, 1e-5);
      assertRelative(name, xs, got, want, 1e-5, (v) => Math.abs(v + 0.7518) < 0.05);
    }
  };
  for (const shape of [[1037], [1], [3, 7, 11]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    for (const xd of both) {
      for (const dd of both) {
        for (const od of both) {
          if (xd === "f32" && dd === "f32" && od === "f32") continue;
          const combo = `[${shape}] x ${xd}, dOut ${dd}, out/dX ${od}`;
          const xs = host(xd, randomValues(n, n + 1).map((v) => 8 * v));
          const dOuts = host(dd, randomValues(n, n + 2));
          const x = tensorFromArray(gpu, xs, shape, "x");
          const dOut = tensorFromArray(gpu, dOuts, shape, "dOut");
          const out = createTensor(gpu, shape, od, "out");
          const dX = createTensor(gpu, shape, od, "dX");
          const rec = new Recorder(gpu);
          fill(rec, out, NaN);
          fill(rec, dX, NaN);
          // Forward has no dOut: each (x, out) pair once.
          if (dd === "f32") geluForward(rec, { x, out });
          geluBackward(rec, { x, dOut, dX });
          await rec.submit();
          if (dd === "f32") await check(`gelu ${combo}`, xs, out, Array.from(xs, refGelu));
          const dXs = Array.from(xs, (v, i) => refGeluGrad(v) * dOuts[i]);
          await check(`dX ${combo}`, xs, dX, dXs);
          for (const t of [x, dOut, out, dX]) t.destroy();
        }
      }
    }
  }
});

gpuTest("gelu f16: bad f16 arguments are refused naming the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const x = createTensor(gpu, [4, 5], "f16", "x16");
  const bad = createTensor(gpu, [5, 4], "f16", "bad16");
  const ints = createTensor(gpu, [4, 5], "i32", "ints");
  assertThrows(() => geluForward(rec, { x, out: bad }), GpuError, 'geluForward: out ("bad16")');
  assertThrows(
    () => geluBackward(rec, { x, dOut: ints, dX: x }),
    GpuError,
    'geluBackward: dOut ("ints") is i32, expected f32 or f16',
  );
  const noF16 = Object.create(gpu, { hasF16: { value: false } }) as Gpu;
  assertThrows(
    () => geluForward(new Recorder(noF16), { x, out: x }),
    GpuError,
    'geluForward: f16 tensors need the WebGPU feature "shader-f16"',
  );
  assertEquals(rec.length, 0);
  for (const t of [x, bad, ints]) t.destroy();
});
