// matmul with f16 arithmetic (`f16Math`: products and runs of 16 sums in f16, the runs' totals in
// f32) against a float64 reference, on odd-sized aligned shapes (not multiples of the 64 × 64 or
// 128 × 128 blocks, k not a multiple of the 16-long runs), every transpose, the epilogues, an f16
// output, a product split along k and odd shapes staged with scalar loads; the f16-arithmetic
// variants bitwise equal; the arguments it refuses.
//
// The bound, per element: a run of 16 products summed in f16 is off by at most 17·2^-11 of its
// Σ|a·b| (one rounding per product and per addition) plus 2^-25 per operation where the values are
// subnormal; the f32 sum of the runs adds (k/16 + 2)·2^-24·Σ|a·b|; then alpha, bias, the old C, the
// epilogue and an f16 output's rounding as in tests/matmul_f16_test.ts.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import { refGelu, refGeluGrad } from "./gelu_reference.ts";
import { type F16Case, runF16Products } from "./matmul_f16_run.ts";
import { F16_MATH_VARIANTS, matmul } from "../kernels/matmul.ts";
import { splitKCount } from "../kernels/matmul_split.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type HostArray, tensorFromArray } from "../kernels/tensor.ts";

const CASES: F16Case[] = [
  // The forward form X·Wᵀ (+ bias), an f32 output; X f32 (a LayerNorm's output).
  { m: 68, n: 72, k: 44, transB: true, bias: true, c: "f32" },
  { m: 68, n: 72, k: 44, transB: true, bias: true, a: "f32", c: "f16" },
  // dX = dY·W into f16.
  { m: 72, n: 68, k: 40, c: "f16" },
  // dW = dYᵀ·X, added into the old gradient.
  { m: 68, n: 76, k: 36, transA: true, accumulate: true, c: "f32" },
  { m: 68, n: 76, k: 36, transA: true, a: "f32", b: "f32", c: "f32" },
  { m: 36, n: 44, k: 52, transA: true, transB: true, alpha: 0.7, c: "f16" },
  // The FFN's forward (GELU, its input saved) and its backward through GELU'.
  { m: 68, n: 76, k: 44, transB: true, bias: true, c: "f16", epilogue: "geluSave", pre: "f16" },
  { m: 76, n: 68, k: 60, c: "f16", epilogue: "geluGrad", pre: "f16" },
  // A weight gradient over many rows: cut into k-slices summed afterwards (matmul_split.ts).
  { m: 12, n: 20, k: 2048, transA: true, c: "f32" },
  // Larger than one 128 × 128 block, k past several runs.
  { m: 516, n: 524, k: 100, transB: true, c: "f32" },
  // Odd shapes, which vec4 loads cannot read: staged with scalar loads, k past the end zero.
  { m: 37, n: 29, k: 41, transB: true, bias: true, c: "f32" },
  { m: 19, n: 23, k: 7, transA: true, a: "f32", c: "f16", accumulate: true },
  { m: 21, n: 17, k: 33, transA: true, transB: true, c: "f16" },
  { m: 37, n: 29, k: 41, c: "f32" },
];

gpuTest(
  "matmul f16Math: f16 arithmetic against float64 within its bound, every transpose and epilogue",
  async (gpu) => {
    assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
    assertEquals(splitKCount(12, 20, 2048, true, false, 1) > 1, true, "the split case splits");
    for (const [ci, cs] of CASES.entries()) {
      const { m, n, k } = cs;
      const out = await runF16Products(gpu, cs, 300 * ci + 11, [{ f16Math: true }, {
        f16Math: false,
      }]);
      const { bias, oldC, preIn } = out;
      // What the kernel multiplies: the operands rounded to f16.
      const a = Float16Array.from(out.a), b = Float16Array.from(out.b);
      const { c, pre } = out.results[0];
      const alpha = cs.alpha ?? 1;
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let sum = 0, mag = 0;
          for (let p = 0; p < k; p++) {
            const av = cs.transA ? a[p * m + i] : a[i * k + p];
            const bv = cs.transB ? b[j * k + p] : b[p * n + j];
            sum += av * bv;
            mag += Math.abs(av * bv);
          }
          const runs = Math.ceil(k / 16);
          let bound = (17 * 2 ** -11 + (runs + 2) * 2 ** -24) * mag + runs * 32 * 2 ** -25;
          bound *= Math.abs(alpha);
          let v = alpha * sum;
          let rest = 0;
          if (bias) (v += bias[j], rest += Math.abs(bias[j]));
          if (cs.accumulate) (v += oldC[i * n + j], rest += Math.abs(oldC[i * n + j]));
          bound += 2 * 2 ** -24 * (Math.abs(alpha) * mag + rest);
          const idx = i * n + j;
          let ref = v;
          if (cs.epilogue === "geluSave") {
            const e = Math.abs(pre![idx] - v);
            const preBound = bound + 2 ** -11 * Math.abs(v) + 2 ** -25;
            assert(e <= preBound, `${JSON.stringify(cs)}: pre[${idx}] ${pre![idx]} vs ${v}`);
            ref = refGelu(v);
            bound = 1.13 * bound + 1e-6 * Math.abs(ref);
          } else if (cs.epilogue === "geluGrad") {
            const g = refGeluGrad(preIn[idx]);
            ref = v * g;
            bound = bound * Math.abs(g) + 1e-6 * Math.abs(v) * (1 + Math.abs(preIn[idx]));
          }
          if (cs.c === "f16") bound += 2 ** -11 * Math.abs(ref) + 2 ** -25;
          const err = Math.abs(c[idx] - ref);
          assert(
            err <= bound,
            `${JSON.stringify(cs)}: C[${i}, ${j}] = ${c[idx]}, expected ${ref} ± ${bound}`,
          );
        }
      }
      // f16 arithmetic really ran: most outputs differ from the same product's f32 sums.
      const f32Sums = out.results[1].c;
      let differ = 0;
      for (let i = 0; i < m * n; i++) if (c[i] !== f32Sums[i]) differ++;
      assert(differ > (m * n) / 2, `${JSON.stringify(cs)}: ${differ} of ${m * n} differ from f32`);
    }
  },
);

gpuTest("matmul f16Math: the f16-arithmetic variants agree bitwise", async (gpu) => {
  // NT, NN and TN (one odd: the scalar staging) and the split product (the epilogues and f16
  // outputs store through the code every variant shares; each case compiles a pipeline per
  // variant, seconds each on a cold lavapipe cache).
  for (const ci of [0, 2, 3, 8, 10]) {
    const cs = CASES[ci];
    const runs = F16_MATH_VARIANTS.map((variant) => ({ variant, f16Math: true }));
    const { results } = await runF16Products(gpu, cs, 5000 + ci, runs);
    const bits = (r: { c: HostArray }) => new Uint16Array(r.c.buffer.slice(0));
    const first = bits(results[0]);
    for (const [ri, r] of results.entries()) {
      const mine = bits(r);
      let differ = 0;
      for (let i = 0; i < first.length; i++) if (mine[i] !== first[i]) differ++;
      assertEquals(differ, 0, `${runs[ri].variant} vs ${runs[0].variant}: ${JSON.stringify(cs)}`);
    }
  }
});

gpuTest("matmul f16Math: refusals name the variant or the missing feature", (gpu) => {
  const a = createTensor(gpu, [64 * 64], "f16", "X16");
  const c = createTensor(gpu, [64 * 64], "f32", "C");
  const rec = new Recorder(gpu);
  const base = { a, b: a, c, m: 64, n: 64, k: 64 };
  const noF16 = Object.create(gpu, { hasF16: { value: false } });
  const f32 = createTensor(gpu, [64 * 64], "f32", "X32");
  assertThrows(
    () => matmul(new Recorder(noF16), { ...base, a: f32, b: f32, f16Math: true }),
    Error,
    'matmul (f16Math): f16 tensors need the WebGPU feature "shader-f16"',
  );
  assertThrows(
    () => matmul(rec, { ...base, f16Math: true, variant: "tiled_8x8dk16" }),
    Error,
    "variant tiled_8x8dk16 sums in f32; with f16Math use one of tiled_8x8dk16h",
  );
  assertThrows(
    () => matmul(rec, { ...base, variant: "tiled_4x4dk16h" }),
    Error,
    "variant tiled_4x4dk16h multiplies in f16: it needs f16Math",
  );
  for (const t of [a, c, f32]) t.destroy();
});

gpuTest(
  "matmul f16Math: an f32 operand beyond f16's range, or a run's sum beyond it, gives ±infinity",
  async (gpu) => {
    // 4 × 16 · 16 × 4 (vec4-readable, so the f16 kernel runs): row 0 of A holds one 70000 (f32,
    // past f16's range); row 1 sixteen 200s against B's 1s and 2s: 16 · 400 = 6400 fits, row 2
    // sixteen 100s against 50s: 16 · 5000 = 80000 does not; row 3 small.
    const m = 4, n = 4, k = 16;
    const a = new Float32Array(m * k);
    a[0] = 70000;
    for (let p = 0; p < k; p++) (a[k + p] = 200, a[2 * k + p] = 100, a[3 * k + p] = 0.5);
    const b = new Float32Array(k * n);
    for (let p = 0; p < k; p++) {
      b[p * n] = 1, b[p * n + 1] = 2, b[p * n + 2] = 50, b[p * n + 3] = -50;
    }
    const A = tensorFromArray(gpu, a, [m * k], "A");
    const B = tensorFromArray(gpu, Float16Array.from(b), [k * n], "B");
    const C = createTensor(gpu, [m * n], "f32", "C");
    const rec = new Recorder(gpu);
    matmul(rec, { a: A, b: B, c: C, m, n, k, f16Math: true });
    await rec.submit();
    const got = Array.from(await C.download());
    assertEquals(got.slice(0, 4), [Infinity, Infinity, Infinity, -Infinity]);
    assertEquals(got.slice(4, 6), [3200, 6400]);
    assertEquals(got.slice(8, 12), [1600, 3200, Infinity, -Infinity]);
    assertEquals(got.slice(12), [8, 16, 400, -400]);
    for (const t of [A, B, C]) t.destroy();
  },
);

gpuTest(
  "matmul f16Math: runs of exactly 16 in f16, their totals in f32, every run counted, each kernel",
  async (gpu) => {
    // 4096 products of 1·1: each run's partial sums stay ≤ 16 (exact in f16 under any rounding),
    // the totals 4096 exactly; one f16 sum of all of them would stop at 2048, a dropped run
    // would give 4080. 32 products of 129·1: runs of 16 are exact (1935 and 2064 are f16
    // values), a run of 32 is not (2193 is not); 4128 exactly.
    const m = 4, n = 4;
    for (const [k, value, want] of [[4096, 1, 4096], [32, 129, 4128], [48, 129, 6192]]) {
      const A = tensorFromArray(gpu, new Float16Array(m * k).fill(value), [m * k], "A");
      const B = tensorFromArray(gpu, new Float16Array(k * n).fill(1), [k * n], "B");
      const outs = F16_MATH_VARIANTS.map((variant) => {
        const c = createTensor(gpu, [m * n], "f32", `C ${variant}`);
        return { variant, c };
      });
      const rec = new Recorder(gpu);
      for (const { variant, c } of outs) {
        matmul(rec, { a: A, b: B, c, m, n, k, f16Math: true, variant });
      }
      await rec.submit();
      for (const { variant, c } of outs) {
        assertEquals(
          Array.from(await c.download()),
          new Array(m * n).fill(want),
          `${variant}, k ${k}`,
        );
        c.destroy();
      }
      A.destroy();
      B.destroy();
    }
  },
);

gpuTest(
  "matmul f16Math: on a device with 16 KiB of workgroup memory a large product takes the 64 × 64 kernel",
  (gpu) => {
    const small = withLimits(gpu, { maxComputeWorkgroupStorageSize: 16384 });
    const a = createTensor(small, [512 * 512], "f16", "A");
    const c = createTensor(small, [512 * 512], "f32", "C");
    const record = (rec: Recorder) =>
      matmul(rec, { a, b: a, c, m: 512, n: 512, k: 512, transB: true, f16Math: true });
    assertEquals(matmulVariantsUsed(small, record), ["tiled_4x4dk16h"]);
    assertEquals(matmulVariantsUsed(gpu, record), ["tiled_8x8dk16h"]);
    a.destroy();
    c.destroy();
  },
);
