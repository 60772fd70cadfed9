// thinTnBlocks (kernels/thin_tn.ts): per row block, alpha · aᵀ·b with one side at most 16 wide,
// against float64, at odd sizes (a short last block, wide sides not a multiple of a workgroup),
// either side narrow; f16 operands, both or either one (LoRA's dA and dB pair an f16 x or dY
// with an f32 dHidden or hidden), either side narrow; bitwise the same on a second run; bad
// arguments.

import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, outputTensor } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type DType, tensorFromArray } from "../kernels/tensor.ts";
import { THIN_TN_MAX, thinTnBlocks } from "../kernels/thin_tn.ts";

interface Case {
  m: number;
  n: number;
  rows: number;
  rowsPerBlock: number;
  alpha?: number;
  /** Storage of a and b; f32 by default. */
  aType?: DType;
  bType?: DType;
}

/** Each block's alpha · aᵀ·b in float64, blocks one after another, m×n each. */
function reference(a: ArrayLike<number>, b: ArrayLike<number>, c: Case): Float64Array {
  const blocks = Math.ceil(c.rows / c.rowsPerBlock);
  const out = new Float64Array(blocks * c.m * c.n);
  for (let blk = 0; blk < blocks; blk++) {
    const end = Math.min(c.rows, (blk + 1) * c.rowsPerBlock);
    for (let i = 0; i < c.m; i++) {
      for (let j = 0; j < c.n; j++) {
        let s = 0;
        for (let row = blk * c.rowsPerBlock; row < end; row++) {
          s += a[row * c.m + i] * b[row * c.n + j];
        }
        out[(blk * c.m + i) * c.n + j] = (c.alpha ?? 1) * s;
      }
    }
  }
  return out;
}

async function run(gpu: Gpu, c: Case, seed: number) {
  // The reference multiplies the values the kernel reads (f16 operands rounded as stored).
  const host = (n: number, s: number, dtype: DType = "f32") => {
    const v = randomValues(n, s);
    return dtype === "f16" ? Float16Array.from(v) : Float32Array.from(v);
  };
  const aHost = host(c.rows * c.m, seed, c.aType);
  const bHost = host(c.rows * c.n, seed + 1, c.bType);
  const a = tensorFromArray(gpu, aHost, [c.rows, c.m], "a");
  const b = tensorFromArray(gpu, bHost, [c.rows, c.n], "b");
  assertEquals([a.dtype, b.dtype], [c.aType ?? "f32", c.bType ?? "f32"]);
  const blocks = Math.ceil(c.rows / c.rowsPerBlock);
  const outs: Float32Array[] = [];
  for (let i = 0; i < 2; i++) {
    const rec = new Recorder(gpu);
    const partial = outputTensor(rec, [blocks, c.m * c.n], "partial");
    thinTnBlocks(rec, { a, b, partial, ...c });
    await rec.submit();
    outs.push((await partial.download()) as Float32Array);
    partial.destroy();
  }
  a.destroy();
  b.destroy();
  return { outs, want: reference(aHost, bHost, c) };
}

gpuTest(
  "thinTnBlocks: against float64, either side narrow, short last block, alpha",
  async (gpu) => {
    const cases: Case[] = [
      { m: 5, n: 37, rows: 600, rowsPerBlock: 256 }, // LoRA's dA form: 3 blocks, the last of 88
      { m: 41, n: 3, rows: 513, rowsPerBlock: 256, alpha: 0.75 }, // dB's form: a last block of 1
      { m: 16, n: 70, rows: 97, rowsPerBlock: 32 },
      { m: 1, n: 1, rows: 300, rowsPerBlock: 256 },
      { m: 8, n: 8, rows: 300, rowsPerBlock: 128 }, // both narrow: A's side taken as the narrow one
    ];
    for (const [i, c] of cases.entries()) {
      const { outs, want } = await run(gpu, c, 40 + 3 * i);
      assertClose(`case ${i}`, outs[0], want, 2e-6);
      assertEquals(outs[1], outs[0], `case ${i}: a second run differs`);
    }
  },
);

gpuTest(
  "thinTnBlocks: f16 operands, both or either one, either side narrow, against float64",
  async (gpu) => {
    assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
    // Each operand pair compiles its own kernel (thin_tn_<a|b><s>_<a dtype>_<b dtype>). An f16
    // operand is loaded exactly into f32 and the reference takes the same f16 values, so what
    // remains is the f32 products' and sums' rounding, as with f32 operands: the same 2e-6.
    const cases: Case[] = [
      { m: 8, n: 65, rows: 256, rowsPerBlock: 256, aType: "f16", bType: "f16" }, // narrow A
      { m: 70, n: 7, rows: 97, rowsPerBlock: 32, aType: "f16", bType: "f16" }, // narrow B
      // LoRA's dA with an f16 x: dHidden (f32, r wide) ᵀ · x (f16), narrow A, a last block of 88.
      { m: 5, n: 37, rows: 600, rowsPerBlock: 256, aType: "f32", bType: "f16" },
      // LoRA's dB with an f16 dY: dY (f16) ᵀ · hidden (f32, r wide), narrow B, a last block of 1.
      { m: 41, n: 3, rows: 513, rowsPerBlock: 256, alpha: 0.75, aType: "f16", bType: "f32" },
      // The other two mixed pairs, the narrow side f16 and the wide one f32: A narrow, B narrow.
      { m: 9, n: 67, rows: 131, rowsPerBlock: 64, aType: "f16", bType: "f32", alpha: -1.5 },
      { m: 67, n: 9, rows: 131, rowsPerBlock: 64, aType: "f32", bType: "f16" },
    ];
    for (const [i, c] of cases.entries()) {
      const { outs, want } = await run(gpu, c, 80 + 3 * i);
      const name = `f16 case ${i} (a ${c.aType}, b ${c.bType}, ${c.m <= c.n ? "A" : "B"} narrow)`;
      assertClose(name, outs[0], want, 2e-6);
      assertEquals(outs[1], outs[0], `${name}: a second run differs`);
    }
  },
);

gpuTest(
  "thinTnBlocks: bad arguments are refused in one line naming the op and the tensor",
  (gpu) => {
    const a = createTensor(gpu, [40, 4], "f32", "dHidden");
    const b = createTensor(gpu, [40, 30], "f32", "x");
    const p = createTensor(gpu, [2, 120], "f32", "partial");
    const wide = createTensor(gpu, [40, THIN_TN_MAX + 1], "f32", "wide");
    try {
      const rec = new Recorder(gpu);
      const base = { a, b, partial: p, m: 4, n: 30, rows: 40, rowsPerBlock: 32 };
      thinTnBlocks(rec, base); // fine
      assertThrows(
        () => thinTnBlocks(rec, { ...base, op: "loraBackward (dA) blocks", rows: 41 }),
        GpuError,
        'loraBackward (dA) blocks: a ("dHidden") has 160 elements [40, 4], expected 164',
      );
      assertThrows(
        () => thinTnBlocks(rec, { ...base, rowsPerBlock: 8 }),
        GpuError,
        'thinTnBlocks: partial ("partial") has 240 elements [2, 120], expected 600',
      );
      assertThrows(
        () => thinTnBlocks(rec, { ...base, a: wide, b: wide, m: 17, n: 17 }),
        GpuError,
        "thinTnBlocks: neither m = 17 nor n = 17 is at most 16",
      );
      assertThrows(
        () => thinTnBlocks(rec, { ...base, rowsPerBlock: 0 }),
        GpuError,
        "thinTnBlocks: rowsPerBlock must be a positive integer, got 0",
      );
      // a and partial in one buffer: WebGPU would refuse the binding.
      const shared = createTensor(gpu, [1024], "f32", "shared");
      try {
        assertThrows(
          () =>
            thinTnBlocks(rec, {
              ...base,
              a: shared.view(0, [40, 4]),
              partial: shared.view(2048, [2, 120], "partial in shared"),
            }),
          GpuError,
          'thinTnBlocks: partial ("partial in shared") shares a GPU buffer with a',
        );
      } finally {
        shared.destroy();
      }
    } finally {
      for (const t of [a, b, p, wide]) t.destroy();
    }
  },
);
