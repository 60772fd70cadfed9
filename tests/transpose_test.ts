// transpose against a float64 reference (the index map on the host: a transpose is an exact
// copy, so every element must come back bit for bit), on odd sizes that are not multiples of the
// 32×32 block, from an offset and a row stride, in f32 and f16 (an adapter without shader-f16
// fails the f16 test rather than skipping it).

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type DType, tensorFromArray } from "../kernels/tensor.ts";
import { transpose } from "../kernels/transpose.ts";

interface Case {
  rows: number;
  cols: number;
  offset?: number;
  ld?: number;
}

const CASES: Case[] = [
  { rows: 1, cols: 1 },
  { rows: 1, cols: 70 },
  { rows: 70, cols: 1 },
  { rows: 37, cols: 53 },
  { rows: 33, cols: 31, offset: 5, ld: 40 },
  { rows: 100, cols: 65, offset: 3, ld: 67 },
];

async function check(gpu: Gpu, dtype: DType, seed: number) {
  for (const [ci, cs] of CASES.entries()) {
    const { rows, cols } = cs;
    const offset = cs.offset ?? 0;
    const ld = cs.ld ?? cols;
    const size = offset + (rows - 1) * ld + cols + 2; // a little past the matrix's end
    const values = randomValues(size, seed + ci);
    const host = dtype === "f16" ? Float16Array.from(values) : Float32Array.from(values);
    const src = tensorFromArray(gpu, host, [size], "src");
    const dst = createTensor(gpu, [rows * cols + 3], dtype, "dst");
    const rec = new Recorder(gpu);
    fill(rec, dst, 7); // the elements past the transpose must keep it
    transpose(rec, { src, dst, rows, cols, offset: cs.offset, ld: cs.ld });
    await rec.submit();
    const got = await dst.download();
    for (let c = 0; c < cols; c++) {
      for (let r = 0; r < rows; r++) {
        const want = host[offset + r * ld + c];
        if (!Object.is(got[c * rows + r], want)) {
          assertEquals(got[c * rows + r], want, `${dtype} ${JSON.stringify(cs)} at [${c}, ${r}]`);
        }
      }
    }
    assertEquals([...got.slice(rows * cols)], [7, 7, 7], `${dtype} ${JSON.stringify(cs)}: past`);
    src.destroy();
    dst.destroy();
  }
}

gpuTest("transpose: f32, odd sizes, offsets and row strides, bit for bit", async (gpu) => {
  await check(gpu, "f32", 10);
});

gpuTest("transpose: f16, the same cases", async (gpu) => {
  assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
  await check(gpu, "f16", 20);
});

gpuTest("transpose: bad arguments name the op and the tensor", (gpu) => {
  const src = createTensor(gpu, [12], "f32", "w");
  const dst = createTensor(gpu, [12], "f32", "wT");
  const half = createTensor(gpu, [12], "f16", "h");
  const rec = new Recorder(gpu);
  try {
    assertThrows(
      () => transpose(rec, { src, dst, rows: 4, cols: 4 }),
      GpuError,
      'transpose: src ("w") has 12 elements, but the matrix reaches element 15',
    );
    assertThrows(
      () => transpose(rec, { src, dst, rows: 3, cols: 4, ld: 3 }),
      GpuError,
      "leading dimension 3 is less than the row length 4",
    );
    assertThrows(
      () => transpose(rec, { op: "x", src, dst: half, rows: 3, cols: 4 }),
      GpuError,
      'x: dst ("h") is f16, src ("w") f32',
    );
    assertThrows(
      () => transpose(rec, { src, dst: src, rows: 3, cols: 4 }),
      GpuError,
      "share a buffer",
    );
    assertEquals(rec.length, 0);
  } finally {
    for (const t of [src, dst, half]) t.destroy();
  }
});
