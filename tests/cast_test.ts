// castF32ToF16 / castF16ToF32 against the host's own conversions, bit for bit: Math.f16round
// rounds a float64 (here an exact f32) to nearest even with overflow to ±∞, which is what the
// kernel must give; NaN only has to stay NaN (its payload is the driver's).

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { beyondOneBinding, slicedValues } from "./binding_slices.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { castF16ToF32, castF32ToF16 } from "../kernels/cast.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, Tensor, tensorFromArray } from "../kernels/tensor.ts";

/** f16 bit patterns of `values` rounded by the host. */
function hostBits(values: ArrayLike<number>): Uint16Array {
  const h = new Float16Array(values.length);
  for (let i = 0; i < values.length; i++) h[i] = Math.f16round(values[i]);
  return new Uint16Array(h.buffer);
}

const isNaN16 = (bits: number) => (bits & 0x7c00) === 0x7c00 && (bits & 0x03ff) !== 0;

/** Asserts got === want bitwise, except that a NaN only has to be some NaN. */
function assertBits(name: string, got: Uint16Array, want: Uint16Array, inputs: ArrayLike<number>) {
  assertEquals(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) {
    const ok = isNaN16(want[i]) ? isNaN16(got[i]) : got[i] === want[i];
    if (!ok) {
      const hex = (b: number) => `0x${b.toString(16).padStart(4, "0")}`;
      assert(
        false,
        `${name}: element ${i} (${inputs[i]}) became ${hex(got[i])}, expected ${hex(want[i])}`,
      );
    }
  }
}

/**
 * Edge cases: the largest finite f16 and what rounds to it or past it, subnormals, ties (round
 * to even), signed zeros, infinities and NaN. All exact f32 values.
 */
const SPECIAL = [
  0,
  -0,
  1,
  -1,
  65504,
  -65504,
  65519,
  -65519,
  65519.99609375,
  65520,
  -65520,
  65536,
  1e6,
  -1e6,
  3.4e38,
  -3.4e38,
  Infinity,
  -Infinity,
  NaN,
  -NaN,
  3e-8,
  -3e-8,
  2 ** -24,
  2 ** -25,
  -(2 ** -25),
  3 * 2 ** -25,
  2 ** -25 + 2 ** -40,
  2 ** -26,
  2 ** -14,
  2 ** -14 - 2 ** -24,
  2 ** -14 - 2 ** -25,
  6.1e-5,
  1e-10,
  -1e-10,
  1 + 2 ** -11,
  1 + 3 * 2 ** -11,
  1 + 2 ** -11 + 2 ** -23,
  1 - 2 ** -12,
  -(1 + 2 ** -11),
  2049,
  2051,
  2050.5,
  -2049,
  4097,
  32768 + 16,
  32768 + 48,
  0.1,
  -0.1,
  1 / 3,
  Math.PI,
].map(Math.fround);

/** `n` values spread over f16's whole range and past it, f32-rounded, never all zero. */
function spreadValues(n: number, seed: number): Float32Array {
  const r = randomValues(2 * n, seed);
  // Scales 2^-30 … 2^18: subnormal f16 results, normal ones, and overflow.
  return Float32Array.from(
    { length: n },
    (_, i) => r[i] * 2 ** Math.floor((r[n + i] + 1) * 24 - 30),
  );
}

/** One run: src (f32) at `srcOffset` bytes into a larger buffer, dst (f16) likewise. */
async function castOnce(
  gpu: Gpu,
  values: Float32Array,
  opts: { srcOffset: number; dstOffset: number; count?: number; launches?: number },
): Promise<void> {
  const n = values.length;
  const count = opts.count ?? n;
  const name = `n ${n}, count ${count}, src at ${opts.srcOffset}, dst at ${opts.dstOffset}`;
  const srcBuf = createTensor(gpu, [opts.srcOffset / 4 + n + 5], "f32", "src buffer");
  const dstBuf = createTensor(gpu, [opts.dstOffset / 2 + n + 6], "f16", "dst buffer");
  const src = srcBuf.view(opts.srcOffset, [n], "src");
  const dst = dstBuf.view(opts.dstOffset, [n], "dst");
  src.upload(values);
  const rec = new Recorder(gpu);
  // A sentinel around and past `count`: the cast must write [0, count) of dst and nothing else.
  fill(rec, dstBuf, 12345);
  const before = rec.length;
  castF32ToF16(rec, { src, dst, count: opts.count });
  if (opts.launches !== undefined) assertEquals(rec.length - before, opts.launches, name);
  await rec.submit();
  const all = new Uint16Array((await dstBuf.download()).buffer);
  const at = opts.dstOffset / 2;
  assertBits(name, all.subarray(at, at + count), hostBits(values.subarray(0, count)), values);
  const sentinel = hostBits([12345])[0];
  for (let i = 0; i < all.length; i++) {
    if (i < at || i >= at + count) {
      assert(all[i] === sentinel, `${name}: element ${i - at} outside [0, count) was written`);
    }
  }
  srcBuf.destroy();
  dstBuf.destroy();
}

gpuTest(
  "castF32ToF16: edge values round to nearest even, overflow to ±inf, bit for bit",
  async (gpu) => {
    assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
    // The host rounds the ties and overflows as stated (a check of the reference itself).
    assertEquals(
      [65519, 65520, 1e6, 3e-8, 2 ** -25, 3 * 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2049].map(
        Math.f16round,
      ),
      [65504, Infinity, Infinity, 2 ** -24, 0, 2 ** -23, 1, 1 + 2 ** -9, 2048],
    );
    const values = Float32Array.from(SPECIAL);
    // Each edge value at each of the four positions of a vec4 and in the scalar tail.
    for (const shift of [0, 1, 2, 3]) {
      const shifted = new Float32Array(values.length + 4 + shift).fill(0.5);
      shifted.set(values, shift);
      await castOnce(gpu, shifted, { srcOffset: 0, dstOffset: 0 });
    }
  },
);

gpuTest("castF32ToF16: random values, odd sizes, offsets and counts, bit for bit", async (gpu) => {
  const cases = [
    // Both sides aligned: vec4 body + scalar tail of n mod 4.
    { n: 1037, srcOffset: 0, dstOffset: 0, launches: 2 },
    { n: 1037, srcOffset: 256, dstOffset: 8, launches: 2 },
    // Same misalignment on both sides: a scalar head of 2, the body, a tail of 3.
    { n: 1037, srcOffset: 8, dstOffset: 4, launches: 3 },
    // Incompatible misalignments: all scalar.
    { n: 1037, srcOffset: 4, dstOffset: 0, launches: 1 },
    { n: 1037, srcOffset: 12, dstOffset: 4, launches: 1 },
    // A count that is not a multiple of 4 and smaller than the tensors.
    { n: 1037, count: 1030, srcOffset: 0, dstOffset: 0, launches: 2 },
    { n: 1037, count: 517, srcOffset: 8, dstOffset: 4, launches: 3 },
    { n: 999, count: 0, srcOffset: 0, dstOffset: 0, launches: 0 },
    // Tiny and odd.
    { n: 1, srcOffset: 0, dstOffset: 0, launches: 1 },
    { n: 3, srcOffset: 4, dstOffset: 4, launches: 1 },
    { n: 7, srcOffset: 0, dstOffset: 4, launches: 1 },
    { n: 7, srcOffset: 16, dstOffset: 8, launches: 2 },
  ];
  for (const [i, cs] of cases.entries()) {
    const values = spreadValues(cs.n, 17 + i);
    assert(values.some((v) => v !== 0) || cs.n === 0);
    await castOnce(gpu, values, cs);
  }
});

gpuTest("castF32ToF16: slices past a (lowered) storage binding limit", async (gpu) => {
  // 8192 bytes of elements a binding after the 256-byte alignment: slices of 2048 elements.
  const small = withLimits(gpu, {
    maxStorageBufferBindingSize: gpu.limits.minStorageBufferOffsetAlignment + 8192,
  });
  const n = 3 * 2048 + 1037;
  const values = spreadValues(n, 5);
  // Aligned: 4 slices, each vec4 (+ the last's tail of 1).
  await castOnce(small, values, { srcOffset: 0, dstOffset: 0, launches: 5 });
  // Misaligned alike: each slice has a head of 2, the body and a tail of 2 (3 in the last).
  await castOnce(small, values, { srcOffset: 8, dstOffset: 4, launches: 12 });
  // Incompatible: one scalar launch per slice.
  await castOnce(small, values, { srcOffset: 4, dstOffset: 4, launches: 4 });
  await castOnce(small, values, { srcOffset: 0, dstOffset: 4, count: n - 3, launches: 4 });
});

gpuTest("castF32ToF16: a tensor larger than one storage binding is cast in slices", async (gpu) => {
  const n = beyondOneBinding(gpu);
  if (n === null) return;
  const host = slicedValues(n);
  const src = tensorFromArray(gpu, host, [n], "huge src");
  const dst = createTensor(gpu, [n], "f16", "huge dst");
  const rec = new Recorder(gpu);
  castF32ToF16(rec, { src, dst });
  assertEquals(rec.length, 2 + (n % 4 === 0 ? 0 : 1), "two binding-sized slices");
  await rec.submit();
  const got = new Uint16Array((await dst.download()).buffer);
  const want = hostBits(host);
  let bad = -1;
  for (let i = 0; i < n && bad < 0; i++) if (got[i] !== want[i]) bad = i;
  assert(bad < 0, `element ${bad} of ${n}: 0x${got[bad]?.toString(16)} for ${host[bad]}`);
  src.destroy();
  dst.destroy();
});

gpuTest(
  "castF16ToF32: every f16 bit pattern widens exactly, and casts back to itself",
  async (gpu) => {
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const halves = new Float16Array(bits.buffer);
    // [src offset, dst offset, launches]: aligned (vec4 only), misaligned alike (head of 2, body,
    // tail of 2), incompatible (scalar only).
    for (const [offset, dstOffset, launches] of [[0, 0, 1], [4, 8, 3], [8, 16, 1], [4, 4, 1]]) {
      const srcBuf = createTensor(gpu, [65536 + 8], "f16", "halves buffer");
      const src = srcBuf.view(offset, [65536], "halves");
      src.upload(halves);
      const wide = createTensor(gpu, [65536 + 4], "f32", "wide buffer");
      const dst = wide.view(dstOffset, [65536], "wide");
      const back = createTensor(gpu, [65536], "f16", "back");
      const rec = new Recorder(gpu);
      fill(rec, wide, NaN);
      castF16ToF32(rec, { src, dst });
      assertEquals(rec.length, 1 + launches, `offset ${offset}: launches`);
      castF32ToF16(rec, { src: dst, dst: back });
      await rec.submit();
      const got = (await dst.download()) as Float32Array;
      for (let i = 0; i < 65536; i++) {
        const want = halves[i];
        const ok = Number.isNaN(want) ? Number.isNaN(got[i]) : Object.is(got[i], want);
        assert(ok, `offset ${offset}: 0x${i.toString(16)} (${want}) widened to ${got[i]}`);
      }
      assertBits(
        `round trip, offset ${offset}`,
        new Uint16Array((await back.download()).buffer),
        bits,
        halves,
      );
      for (const t of [srcBuf, wide, back]) t.destroy();
    }
  },
);

gpuTest("cast: bad arguments are refused in one line naming the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const f32 = createTensor(gpu, [10], "f32", "f32s");
  const f16 = createTensor(gpu, [10], "f16", "f16s");
  const short = createTensor(gpu, [9], "f16", "short");
  const shortF32 = createTensor(gpu, [9], "f32", "short f32");
  const ints = createTensor(gpu, [10], "i32", "ints");
  const cases: [() => void, string][] = [
    [
      () => castF32ToF16(rec, { src: f16, dst: f16 }),
      'castF32ToF16: src ("f16s") is f16, expected f32',
    ],
    [
      () => castF32ToF16(rec, { src: f32, dst: f32 }),
      'castF32ToF16: dst ("f32s") is f32, expected f16',
    ],
    [() => castF32ToF16(rec, { src: f32, dst: ints }), 'castF32ToF16: dst ("ints") is i32'],
    [
      () => castF32ToF16(rec, { src: f32, dst: short }),
      'castF32ToF16: dst ("short") holds 9 elements, fewer than count 10',
    ],
    [
      () => castF32ToF16(rec, { src: f32, dst: f16, count: 11 }),
      'castF32ToF16: src ("f32s") holds 10 elements, fewer than count 11',
    ],
    [
      () => castF32ToF16(rec, { src: f32, dst: f16, count: -1 }),
      "castF32ToF16: count is out of range",
    ],
    [
      () => castF32ToF16(rec, { src: f32, dst: f16, count: 1.5 }),
      "castF32ToF16: count is out of range",
    ],
    [
      () => castF16ToF32(rec, { src: f32, dst: f16 }),
      'castF16ToF32: src ("f32s") is f32, expected f16',
    ],
    [
      () => castF16ToF32(rec, { src: f16, dst: shortF32 }),
      'castF16ToF32: dst ("short f32") holds 9 elements, fewer than count 10',
    ],
  ];
  const shared = createTensor(gpu, [64], "f32", "shared");
  const asHalf = new Tensor(gpu, shared.buffer, [8], "f16", "half", 128);
  cases.push([
    () => castF32ToF16(rec, { src: shared.view(0, [8]), dst: asHalf }),
    'castF32ToF16: src ("shared[view]") and dst ("half") share a buffer',
  ]);
  const noF16 = Object.create(gpu, { hasF16: { value: false } }) as Gpu;
  cases.push([
    () => castF32ToF16(new Recorder(noF16), { src: f32, dst: f16 }),
    'castF32ToF16: f16 tensors need the WebGPU feature "shader-f16"',
  ]);
  for (const [fn, message] of cases) {
    const e = assertThrows(fn, GpuError, message);
    assert(!e.message.includes("\n"), `one line: ${e.message}`);
  }
  assertEquals(rec.length, 0);
  for (const t of [f32, f16, short, shortF32, ints, shared]) t.destroy();
});
