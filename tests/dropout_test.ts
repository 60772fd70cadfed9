import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { GpuError } from "../kernels/device.ts";
import {
  DROPOUT_WGSL,
  dropoutBackward,
  dropoutBits,
  dropoutForward,
  dropoutKeep,
  dropoutScale,
  dropoutUniform,
  philox4x32_10,
} from "../kernels/dropout.ts";
import { fill } from "../kernels/fill.ts";
import { getPipeline } from "../kernels/pipeline.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import type { Gpu } from "../kernels/device.ts";

// Random123's published known-answer vectors for Philox-4x32-10 (tests/kat_vectors):
// counter words, key words, output words.
const KAT: [number[], number[], number[]][] = [
  [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
  [
    [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    [0xffffffff, 0xffffffff],
    [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
  ],
  [
    [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    [0xa4093822, 0x299f31d0],
    [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
  ],
];

Deno.test("dropout: the TypeScript Philox-4x32-10 matches Random123's known answers", () => {
  for (const [ctr, key, out] of KAT) {
    assertEquals(
      philox4x32_10(ctr as [number, number, number, number], key as [number, number]),
      out,
    );
  }
});

const PROBE_WGSL = /* wgsl */ `
${DROPOUT_WGSL}
@group(0) @binding(0) var<storage, read> input: array<u32>;
@group(0) @binding(1) var<storage, read_write> output: array<u32>;
struct Params { seed: u32, stream: u32, count: u32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let t = gid.x;
  if (t < 3u) {
    let c = vec4u(input[6u * t], input[6u * t + 1u], input[6u * t + 2u], input[6u * t + 3u]);
    let block = philox4x32_10(c, vec2u(input[6u * t + 4u], input[6u * t + 5u]));
    for (var w = 0u; w < 4u; w++) { output[4u * t + w] = block[w]; }
  }
  if (t < params.count) { output[12u + t] = dropout_bits(params.seed, params.stream, t); }
}
`;

gpuTest(
  "dropout: the WGSL Philox and dropout_bits equal the TypeScript twin bit for bit",
  async (gpu) => {
    const input = Uint32Array.from(KAT.flatMap(([c, k]) => [...c, ...k]));
    const count = 1031;
    const inT = tensorFromArray(gpu, input, [18], "kat input");
    const outT = createTensor(gpu, [12 + count], "u32", "kat output");
    const rec = new Recorder(gpu);
    fill(rec, outT, 0xdeadbeef);
    rec.dispatch(
      "philox probe",
      getPipeline(gpu, "philox probe", PROBE_WGSL),
      [inT, outT],
      Math.ceil(count / 64),
      new Uint32Array([0x12345678, 0x9abcdef0, count]),
    );
    await rec.submit();
    const out = await outT.download();
    assertEquals(Array.from(out.slice(0, 12)), KAT.flatMap(([, , o]) => o));
    const expected = Uint32Array.from(
      { length: count },
      (_, i) => dropoutBits(0x12345678, 0x9abcdef0, i),
    );
    assertEquals(out.slice(12), expected);
    inT.destroy();
    outT.destroy();
  },
);

async function runDropout(
  gpu: Gpu,
  x: Tensor,
  out: Tensor,
  d: { p: number; seed: number; stream: number },
  backward = false,
): Promise<Float32Array> {
  const rec = new Recorder(gpu);
  fill(rec, out, NaN);
  if (backward) dropoutBackward(rec, { dOut: x, dX: out, ...d });
  else dropoutForward(rec, { x, out, ...d });
  await rec.submit();
  return (await out.download()) as Float32Array;
}

/** out = fround(x · fround(1/(1−p))) where kept: one correctly rounded f32 multiply (WGSL). */
function referenceDropout(
  x: Float32Array,
  d: { p: number; seed: number; stream: number },
): Float32Array {
  const scale = dropoutScale(d.p);
  return x.map((v, i) => dropoutKeep(d.seed, d.stream, i, d.p) ? v * scale : 0);
}

gpuTest("dropout: exact mask and keep rate within 3 sigma over 1e6 elements", async (gpu) => {
  const n = 1_000_003;
  const x = Float32Array.from(randomValues(n, 11));
  const xT = tensorFromArray(gpu, x, [n], "x");
  const outT = createTensor(gpu, [n], "f32", "out");
  for (const p of [0.1, 0.5]) {
    const d = { p, seed: 20240917, stream: 3 };
    const out = await runDropout(gpu, xT, outT, d);
    // x has no zeros, so the mask is read off the output; values are bitwise exact.
    assertEquals(out, referenceDropout(x, d), `p = ${p}`);
    let kept = 0;
    for (let i = 0; i < n; i++) if (out[i] !== 0) kept++;
    const sigma = Math.sqrt(n * p * (1 - p));
    const dev = Math.abs(kept - n * (1 - p));
    assert(dev <= 3 * sigma, `p = ${p}: kept ${kept} of ${n}, ${(dev / sigma).toFixed(2)} sigma`);
  }
  xT.destroy();
  outT.destroy();
});

gpuTest("dropout: an element whose uniform equals p exactly is kept", async (gpu) => {
  // The kernel must keep where uniform >= p, as dropoutKeep does, not only where it is > p.
  const d = { seed: 11, stream: 3, p: dropoutUniform(11, 3, 0) }; // a multiple of 2^-24: exact
  assert(d.p > 0 && d.p < 1, `p ${d.p}`);
  const x = new Float32Array(4).fill(1);
  const xT = tensorFromArray(gpu, x, [4], "x");
  const outT = createTensor(gpu, [4], "f32", "out");
  const out = await runDropout(gpu, xT, outT, d);
  assertEquals(out[0], dropoutScale(d.p));
  assertEquals(out, referenceDropout(x, d));
  xT.destroy();
  outT.destroy();
});

gpuTest(
  "dropout: a 2-D grid (past maxComputeWorkgroupsPerDimension) gives the 1-D mask",
  async (gpu) => {
    const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 3 });
    const n = 1037; // 5 workgroups of 256: a 3 × 2 grid
    const x = Float32Array.from(randomValues(n, 16));
    const xT = tensorFromArray(small, x, [n], "x");
    const outT = createTensor(small, [n], "f32", "out");
    const d = { p: 0.3, seed: 7, stream: 2 };
    assertEquals(await runDropout(small, xT, outT, d), referenceDropout(x, d));
    assertEquals(await runDropout(small, xT, outT, d, true), referenceDropout(x, d));
    xT.destroy();
    outT.destroy();
  },
);

gpuTest("dropout: same seed gives the same mask, another seed or stream another", async (gpu) => {
  const shape = [33, 131];
  const n = 33 * 131;
  const x = Float32Array.from(randomValues(n, 12));
  const xT = tensorFromArray(gpu, x, shape, "x");
  const outT = createTensor(gpu, shape, "f32", "out");
  const base = { p: 0.5, seed: 7, stream: 1 };
  const a = await runDropout(gpu, xT, outT, base);
  const b = await runDropout(gpu, xT, outT, base);
  assertEquals(a, b);
  const differs = (u: Float32Array, v: Float32Array) => {
    let k = 0;
    for (let i = 0; i < n; i++) if ((u[i] === 0) !== (v[i] === 0)) k++;
    return k / n;
  };
  for (const other of [{ ...base, seed: 8 }, { ...base, stream: 2 }, { ...base, seed: 7 << 20 }]) {
    const c = await runDropout(gpu, xT, outT, other);
    assertEquals(c, referenceDropout(x, other));
    // Independent masks at p = 0.5 disagree on half the elements (±0.03 is > 3 sigma here).
    const f = differs(a, c);
    assert(Math.abs(f - 0.5) < 0.03, `masks of ${JSON.stringify(other)} differ on ${f}`);
  }
  xT.destroy();
  outT.destroy();
});

gpuTest("dropout: p = 0 is the bitwise identity, forward and backward", async (gpu) => {
  const shape = [7, 13];
  const x = Float32Array.from(randomValues(91, 13));
  x[5] = -0;
  x[6] = 1e-40; // a subnormal survives a copy (a multiply by 1 might flush it)
  const xT = tensorFromArray(gpu, x, shape, "x");
  const outT = createTensor(gpu, shape, "f32", "out");
  const d = { p: 0, seed: 1, stream: 0 };
  const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
  assertEquals(bits(await runDropout(gpu, xT, outT, d)), bits(x));
  assertEquals(bits(await runDropout(gpu, xT, outT, d, true)), bits(x));
  xT.destroy();
  outT.destroy();
});

gpuTest("dropout: backward regenerates the forward's mask", async (gpu) => {
  const shape = [3, 1, 1037];
  const n = 3 * 1037;
  const x = Float32Array.from(randomValues(n, 14));
  const g = Float32Array.from(randomValues(n, 15));
  const xT = tensorFromArray(gpu, x, shape, "x");
  const gT = tensorFromArray(gpu, g, shape, "dOut");
  const outT = createTensor(gpu, shape, "f32", "out");
  const dxT = createTensor(gpu, shape, "f32", "dX");
  const d = { p: 0.3, seed: 0xffffffff, stream: 77 };
  const out = await runDropout(gpu, xT, outT, d);
  const dx = await runDropout(gpu, gT, dxT, d, true);
  assertEquals(dx, referenceDropout(g, d));
  for (let i = 0; i < n; i++) {
    assert((out[i] === 0) === (dx[i] === 0), `element ${i}: forward and backward masks differ`);
  }
  for (const t of [xT, gT, outT, dxT]) t.destroy();
});

gpuTest("dropout: bad probabilities, seeds and shapes are refused by name", (gpu) => {
  const rec = new Recorder(gpu);
  const x = createTensor(gpu, [7, 3], "f32", "x");
  const out = createTensor(gpu, [7, 3], "f32", "out");
  const wrong = createTensor(gpu, [3, 7], "f32", "wrong");
  for (const p of [1, -0.1, NaN, 1.5]) {
    assertThrows(
      () => dropoutForward(rec, { x, out, p, seed: 1, stream: 0 }),
      GpuError,
      "dropoutForward: dropout probability",
    );
  }
  assertThrows(
    () => dropoutBackward(rec, { dOut: x, dX: out, p: 0.1, seed: 1.5, stream: 0 }),
    GpuError,
    "dropoutBackward: dropout seed",
  );
  assertThrows(
    () => dropoutForward(rec, { x, out, p: 0.1, seed: 1, stream: -1 }),
    GpuError,
    "stream",
  );
  assertThrows(
    () => dropoutForward(rec, { x, out: wrong, p: 0.1, seed: 1, stream: 0 }),
    GpuError,
    'dropoutForward: out ("wrong")',
  );
  assertThrows(
    () => dropoutBackward(rec, { dOut: x, dX: wrong, p: 0.1, seed: 1, stream: 0 }),
    GpuError,
    'dropoutBackward: dX ("wrong")',
  );
  assertEquals(rec.length, 0);
  for (const t of [x, out, wrong]) t.destroy();
});
