// Split-k (kernels/matmul_split.ts): which products are cut along k, their results against a
// float64 reference, and every variant bitwise alike on them.

import { assert, assertClose, assertEquals } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { matmul, MATMUL_VARIANTS, type MatmulArgs } from "../kernels/matmul.ts";
import { misalignedVariants } from "./matmul_subset.ts";
import { matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import { SPLIT_K_MAX_OUTPUTS, splitKCount } from "../kernels/matmul_split.ts";
import { Recorder } from "../kernels/recorder.ts";
import { type Tensor, tensorFromArray } from "../kernels/tensor.ts";

Deno.test("splitKCount: weight-gradient-form products over long k, equal slices of 4s", () => {
  // RoBERTa-large's attention weight gradient at 32 × 128 tokens; BERT-mini's.
  assertEquals(splitKCount(1024, 1024, 4096, true, false, 1), 8);
  assertEquals(splitKCount(256, 256, 4096, true, false, 1), 8);
  // The most slices of at least 512 that cut k into multiples of 4.
  assertEquals(splitKCount(37, 45, 1536, true, false, 1), 3);
  assertEquals(splitKCount(37, 45, 4100, true, false, 1), 5); // 820 each
  assertEquals(splitKCount(37, 45, 2976, true, false, 1), 4); // 93 tokens × 32: 744 each
  assertEquals(splitKCount(37, 45, 1027, true, false, 1), 1); // odd k: no equal slices of 4s
  assertEquals(splitKCount(37, 45, 1020, true, false, 1), 1); // two slices would be under 512
  // Not split: other forms, batches, large outputs.
  assertEquals(splitKCount(1024, 1024, 4096, false, true, 1), 1); // forward X·Wᵀ
  assertEquals(splitKCount(1024, 1024, 4096, false, false, 1), 1); // dX = dY·W
  assertEquals(splitKCount(1024, 1024, 4096, true, true, 1), 1);
  assertEquals(splitKCount(64, 64, 4096, true, false, 2), 1);
  assertEquals(splitKCount(4096, 1024, 4096, true, false, 1), 1);
  assertEquals(splitKCount(SPLIT_K_MAX_OUTPUTS / 512, 512, 4096, true, false, 1), 8);
});

Deno.test("splitKCount: where k / s is odd, fewer slices that are multiples of 4", () => {
  // 2052 = 4 × 513 cuts into 4 equal slices, but of 513: not a multiple of 4.
  assertEquals(splitKCount(37, 45, 2052, true, false, 1), 3); // 684 each
});

interface SplitCase {
  m: number;
  n: number;
  k: number;
  /** Row strides past the packed ones, and element offsets. */
  padA?: number;
  padB?: number;
  padC?: number;
  offsetA?: number;
  offsetB?: number;
  offsetC?: number;
  alpha?: number;
  bias?: boolean;
  accumulate?: boolean;
  f16?: boolean;
  /** Every operand vec4-readable, so that each variant runs its own kernel. */
  aligned?: boolean;
}

const CASES: SplitCase[] = [
  { m: 37, n: 45, k: 1536 },
  { m: 37, n: 45, k: 4100, alpha: 0.75, bias: true, accumulate: true },
  // The most slices (SPLIT_K_MAX = 8), each added to what the ones before summed.
  { m: 12, n: 20, k: 4096, alpha: 0.5, bias: true, accumulate: true },
  {
    m: 64,
    n: 52,
    k: 2048,
    padA: 4,
    padB: 8,
    padC: 3,
    offsetA: 8,
    offsetB: 4,
    offsetC: 5,
    aligned: true,
  },
  { m: 20, n: 33, k: 2976, bias: true, f16: true },
  // Each combination of the old C and a bias is a kernel of its own (kernels/matmul_split.ts):
  // 5 slices added to the old C, 7 with a bias.
  { m: 29, n: 17, k: 2560, accumulate: true },
  { m: 23, n: 31, k: 3584, alpha: 1.5, bias: true },
  // And the slice counts no case above has: 2 and 6.
  { m: 19, n: 27, k: 1024 },
  { m: 21, n: 13, k: 3072, accumulate: true },
];

/** The case's operands (A stored [k, m], B [k, n]) and its float64 result (all of C). */
function setUp(s: SplitCase, seed: number) {
  const lda = s.m + (s.padA ?? 0);
  const ldb = s.n + (s.padB ?? 0);
  const ldc = s.n + (s.padC ?? 0);
  const offA = s.offsetA ?? 0;
  const offB = s.offsetB ?? 0;
  const offC = s.offsetC ?? 0;
  const round = (x: Float64Array) => (s.f16 ? Float64Array.from(new Float16Array(x)) : x);
  const a = round(randomValues(offA + s.k * lda, seed));
  const b = round(randomValues(offB + s.k * ldb, seed + 1));
  const c = randomValues(offC + s.m * ldc, seed + 2);
  const bias = randomValues(s.n, seed + 3);
  const want = Float64Array.from(Float32Array.from(c));
  for (let i = 0; i < s.m; i++) {
    for (let j = 0; j < s.n; j++) {
      let sum = 0;
      for (let p = 0; p < s.k; p++) sum += a[offA + p * lda + i] * b[offB + p * ldb + j];
      const idx = offC + i * ldc + j;
      let v = (s.alpha ?? 1) * sum + (s.bias ? Math.fround(bias[j]) : 0);
      if (s.accumulate) v += want[idx];
      want[idx] = v;
    }
  }
  return { a, b, c, bias, want, lda, ldb, ldc, offA, offB, offC };
}

gpuTest(
  "matmul split-k: weight-gradient products against float64, every variant bitwise alike",
  async (gpu) => {
    for (const [ci, s] of CASES.entries()) {
      if (s.f16 && !gpu.hasF16) continue;
      const u = setUp(s, 10 * ci + 1);
      const dtype = s.f16 ? "f16" : "f32";
      const upload = (x: Float64Array, label: string, d: "f16" | "f32" = "f32") =>
        tensorFromArray(
          gpu,
          d === "f16" ? new Float16Array(x) : Float32Array.from(x),
          [x.length],
          label,
        );
      const tensors: Tensor[] = [];
      const keep = (t: Tensor) => (tensors.push(t), t);
      try {
        const a = keep(upload(u.a, "dOut", dtype));
        const b = keep(upload(u.b, "x", dtype));
        const bias = keep(upload(u.bias, "bias"));
        const outs: Float32Array[] = [];
        // Misaligned operands take the tiled kernels' scalar staging, a pipeline each: those by
        // representatives (tests/matmul_subset.ts).
        const variants = s.aligned ? MATMUL_VARIANTS : misalignedVariants();
        for (const variant of [undefined, ...variants]) {
          const c = keep(upload(u.c, "dWeight"));
          const args: MatmulArgs = {
            a,
            b,
            c,
            m: s.m,
            n: s.n,
            k: s.k,
            transA: true,
            lda: u.lda,
            ldb: u.ldb,
            ldc: u.ldc,
            offsetA: u.offA,
            offsetB: u.offB,
            offsetC: u.offC,
            alpha: s.alpha,
            bias: s.bias ? bias : undefined,
            accumulate: s.accumulate,
            variant,
          };
          const rec = new Recorder(gpu);
          matmul(rec, args);
          assert(rec.labels.some((l) => l.endsWith("(split-k sum)")), `case ${ci}: not split`);
          // Where every operand is aligned, each variant really runs, nn_ ones with their copy.
          if (s.aligned && variant) {
            assertEquals(matmulVariantsUsed(gpu, (r) => matmul(r, args)), [variant], `case ${ci}`);
          }
          await rec.submit();
          outs.push((await c.download()) as Float32Array);
        }
        // Outside the product C is untouched; inside, within f32 rounding of a k-long sum.
        const inside = (i: number) => {
          const r = i - u.offC;
          return r >= 0 && Math.floor(r / u.ldc) < s.m && r % u.ldc < s.n;
        };
        for (let i = 0; i < u.want.length; i++) {
          if (!inside(i)) {
            assertEquals(
              outs[0][i],
              Math.fround(u.c[i]),
              `case ${ci}: C[${i}] written`,
            );
          }
        }
        assertClose(`case ${ci}`, outs[0], u.want, 2e-5);
        for (const [vi, out] of outs.entries()) {
          const differ = out.findIndex((x, i) => !Object.is(x, outs[0][i]));
          assertEquals(differ, -1, `case ${ci}: ${[undefined, ...MATMUL_VARIANTS][vi]} differs`);
        }
      } finally {
        for (const t of tensors) t.destroy();
      }
    }
  },
);

gpuTest("matmul split-k: a forward, dX or batched product of the same size is not split", (gpu) => {
  const t = (n: number, label: string) => tensorFromArray(gpu, new Float32Array(n), [n], label);
  const [a, b, c] = [t(4096 * 64, "a"), t(4096 * 64, "b"), t(64 * 64, "c")];
  try {
    const labels = (args: Partial<MatmulArgs>) => {
      const rec = new Recorder(gpu);
      matmul(rec, { a, b, c, m: 64, n: 64, k: 4096, ...args });
      return rec.labels;
    };
    assertEquals(labels({ transA: true }).length, 2);
    assertEquals(labels({ transB: true }), ["matmul"]);
    assertEquals(labels({}), ["matmul"]);
    assertEquals(labels({ transA: true, epilogue: { kind: "gelu" } }), ["matmul"]);
  } finally {
    for (const x of [a, b, c]) x.destroy();
  }
});

gpuTest("matmul split-k: the sum of the slices on a 2-D grid", async (gpu) => {
  // 3 slices; the sum's 37 × 45 = 1665 outputs are 7 workgroups, a 2 × 4 grid at a limit of 2
  // (direct4x4's product is 2 × 2 tiles of 32 × 32, within it).
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const s: SplitCase = { m: 37, n: 45, k: 1536 };
  const u = setUp(s, 101);
  const upload = (x: Float64Array, label: string) =>
    tensorFromArray(small, Float32Array.from(x), [x.length], label);
  const a = upload(u.a, "dOut"), b = upload(u.b, "x"), c = upload(u.c, "dWeight");
  try {
    const rec = new Recorder(small);
    matmul(rec, { a, b, c, m: s.m, n: s.n, k: s.k, transA: true, variant: "direct4x4" });
    assert(rec.labels.some((l) => l.endsWith("(split-k sum)")), "not split");
    await rec.submit();
    assertClose("C", await c.download(), u.want, 2e-5);
  } finally {
    for (const t of [a, b, c]) t.destroy();
  }
});
