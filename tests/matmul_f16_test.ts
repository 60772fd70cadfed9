// matmul with f16 operands and outputs against a float64 reference, and every kind of variant
// (the tiled ones by representatives, tests/matmul_subset.ts) bitwise equal to every other.
//
// The reference multiplies the f16 values the kernel reads (exactly representable in f32 and
// float64), so the only errors are the kernel's f32 accumulation and, for an f16 output, one
// rounding: |got − ref| ≤ 2·k·2^-24·Σ|a·b| (+ the same for the bias and old C) + 2^-11·|ref|
// + 2^-25 (half an ulp of the output, subnormals included). The bound is checked per element.

import { assert, assertEquals } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { erfc, refGelu, refGeluGrad } from "./gelu_reference.ts";
import { epilogueVariants } from "./matmul_subset.ts";
import { type F16Case, runF16Products } from "./matmul_f16_run.ts";
import { matmul } from "../kernels/matmul.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

function label(cs: F16Case): string {
  return JSON.stringify(cs);
}

gpuTest(
  "matmul f16: operands and outputs in f16 against float64, within the stated bound",
  async (gpu) => {
    assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
    const cases: F16Case[] = [
      // Odd shapes: the vec4 variants fall back to direct4x4.
      { m: 37, n: 29, k: 41, a: "f16", b: "f16", c: "f32" },
      { m: 37, n: 29, k: 41, a: "f32", b: "f16", c: "f16", transB: true, bias: true },
      { m: 19, n: 23, k: 7, a: "f16", b: "f32", c: "f16", transA: true, accumulate: true },
      { m: 21, n: 17, k: 33, a: "f16", b: "f16", c: "f16", transA: true, transB: true, alpha: 0.7 },
      // Aligned shapes: the vec4 kernels read vec4<f16>.
      { m: 68, n: 72, k: 44, a: "f16", b: "f16", c: "f32", transB: true, bias: true },
      { m: 68, n: 72, k: 44, a: "f32", b: "f16", c: "f16", transB: true, accumulate: true },
      { m: 72, n: 68, k: 40, a: "f16", b: "f16", c: "f16", transA: true },
      { m: 64, n: 76, k: 36, a: "f16", b: "f32", c: "f32" },
      // GELU epilogues with f16 output and pre-activation (the encoder's FFN in f16).
      {
        m: 68,
        n: 76,
        k: 44,
        a: "f16",
        b: "f16",
        c: "f16",
        transB: true,
        bias: true,
        epilogue: "geluSave",
        pre: "f16",
      },
      { m: 37, n: 29, k: 41, a: "f16", b: "f16", c: "f16", epilogue: "gelu" },
      { m: 68, n: 44, k: 76, a: "f32", b: "f16", c: "f16", epilogue: "geluGrad", pre: "f16" },
      { m: 37, n: 29, k: 41, a: "f32", b: "f16", c: "f32", epilogue: "geluGrad", pre: "f16" },
    ];
    for (const [ci, cs] of cases.entries()) {
      const { m, n, k } = cs;
      const out = await runF16Products(gpu, cs, 100 * ci + 1, [{}]);
      const { a, b, bias, oldC, preIn } = out;
      const { c, pre } = out.results[0];
      const alpha = cs.alpha ?? 1;
      let worst = 0;
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let sum = 0, mag = 0;
          for (let p = 0; p < k; p++) {
            const av = cs.transA ? a[p * m + i] : a[i * k + p];
            const bv = cs.transB ? b[j * k + p] : b[p * n + j];
            sum += av * bv;
            mag += Math.abs(av * bv);
          }
          let v = alpha * sum;
          mag = Math.abs(alpha) * mag;
          if (bias) (v += bias[j], mag += Math.abs(bias[j]));
          if (cs.accumulate) (v += oldC[i * n + j], mag += Math.abs(oldC[i * n + j]));
          const idx = i * n + j;
          // f32 accumulation error of the pre-activation, then the function's own slope ≤ 1.13.
          let bound = 2 * (k + 2) * 2 ** -24 * mag;
          let ref = v;
          let detail = "";
          if (cs.epilogue === "gelu" || cs.epilogue === "geluSave") {
            ref = refGelu(v);
            bound = 1.13 * bound + 1e-6 * Math.abs(ref);
            if (cs.epilogue === "geluSave") {
              const preBound = 2 * (k + 2) * 2 ** -24 * mag + 2 ** -11 * Math.abs(v) + 2 ** -25;
              const e = Math.abs(pre![idx] - v);
              assert(e <= preBound, `${label(cs)}: pre[${idx}] ${pre![idx]} vs ${v}`);
            }
          } else if (cs.epilogue === "geluGrad") {
            const x = preIn[idx];
            const g = refGeluGrad(x);
            ref = v * g;
            // gelu' = Φ(x) + x·φ(x) cancels near x ≈ −0.75, so its f32 error is relative to the
            // terms' size, not to gelu' (NVIDIA's exp is less exact than lavapipe's).
            const terms = 0.5 * erfc(-x / Math.SQRT2) + Math.abs(x) * Math.exp(-x * x / 2) /
                Math.sqrt(2 * Math.PI);
            bound = bound * Math.abs(g) + 1e-6 * Math.abs(v) * terms;
            detail = ` (pre ${x}, gelu' ${g}, product ${v})`;
          }
          if (cs.c === "f16") bound += 2 ** -11 * Math.abs(ref) + 2 ** -25;
          const err = Math.abs(c[idx] - ref);
          assert(
            err <= bound,
            `${label(cs)}: C[${i}, ${j}] = ${c[idx]}, expected ${ref} ± ${bound}${detail}`,
          );
          worst = Math.max(worst, err / bound);
        }
      }
      assert(worst > 0, `${label(cs)}: suspiciously exact`);
    }
  },
);

gpuTest(
  "matmul f16: every kind of variant bitwise equal on f16 operands, outputs and epilogues",
  async (gpu) => {
    const cases: F16Case[] = [
      { m: 68, n: 72, k: 44, a: "f16", b: "f16", c: "f16", transB: true, bias: true, alpha: 0.3 },
      { m: 72, n: 68, k: 40, a: "f16", b: "f32", c: "f16", epilogue: "geluSave", pre: "f16" },
      {
        m: 64,
        n: 76,
        k: 36,
        a: "f32",
        b: "f16",
        c: "f32",
        transA: true,
        transB: true,
        accumulate: true,
        epilogue: "geluGrad",
        pre: "f16",
      },
    ];
    // The tiled variants by representatives (tests/matmul_subset.ts).
    const variants = epilogueVariants();
    for (const [ci, cs] of cases.entries()) {
      const { results } = await runF16Products(
        gpu,
        cs,
        7000 + ci,
        variants.map((variant) => ({ variant })),
      );
      const bits = results.map((r) => new Uint16Array(r.c.buffer.slice(0)));
      const preBits = results.map((r) => (r.pre ? new Uint16Array(r.pre.buffer.slice(0)) : null));
      for (const [vi, variant] of variants.entries()) {
        let differ = 0;
        for (let i = 0; i < bits[0].length; i++) if (bits[vi][i] !== bits[0][i]) differ++;
        if (preBits[0]) {
          for (let i = 0; i < preBits[0].length; i++) {
            if (preBits[vi]![i] !== preBits[0][i]) differ++;
          }
        }
        assertEquals(differ, 0, `${variant} vs ${variants[0]}: ${label(cs)}`);
      }
    }
  },
);

gpuTest(
  "matmul f16: an output beyond f16's range is ±infinity, not a finite number",
  async (gpu) => {
    const a = tensorFromArray(gpu, Float16Array.from([300, -300, 200, 1]), [4], "A");
    const b = tensorFromArray(gpu, Float16Array.from([300, 200]), [2], "B");
    const c = createTensor(gpu, [4], "f16", "C");
    const rec = new Recorder(gpu);
    // C = A (4×1) · B (1×2)... as 2×2 · 2×1: [300·300 + −300·200, 200·300 + 1·200].
    matmul(rec, { a, b, c, m: 2, n: 1, k: 2 });
    matmul(rec, { a, b, c, m: 1, n: 1, k: 1, offsetC: 2 }); // 90000: overflow
    matmul(rec, { a, b, c, m: 1, n: 1, k: 1, offsetA: 1, offsetC: 3 }); // −90000
    await rec.submit();
    const got = Array.from(await c.download());
    assertEquals(got, [30000, 60192, Infinity, -Infinity]);
    for (const t of [a, b, c]) t.destroy();
  },
);

gpuTest("matmul f16: a weight-gradient-form product into f16 is not split along k", async (gpu) => {
  // An f32 C of this shape would be cut into 4 k-slices, whose sum kernel writes f32 only: an f16
  // C must take the unsplit product.
  const cs: F16Case = { m: 8, n: 8, k: 2048, a: "f16", b: "f16", c: "f16", transA: true };
  const { m, n, k } = cs;
  const { a, b, results } = await runF16Products(gpu, cs, 9000, [{}]);
  const c = results[0].c;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0, mag = 0;
      for (let p = 0; p < k; p++) {
        sum += a[p * m + i] * b[p * n + j];
        mag += Math.abs(a[p * m + i] * b[p * n + j]);
      }
      // The bound of the test above: f32 accumulation, then one rounding to f16.
      const bound = 2 * (k + 2) * 2 ** -24 * mag + 2 ** -11 * Math.abs(sum) + 2 ** -25;
      const got = c[i * n + j];
      assert(Math.abs(got - sum) <= bound, `C[${i}, ${j}] = ${got}, expected ${sum} ± ${bound}`);
    }
  }
});
