import {
  type Dtype,
  openSafetensors,
  SafetensorsError,
  type TensorData,
  writeSafetensors,
  writeSafetensorsStreamed,
} from "../model/safetensors.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { removeStaleTemporaries } from "../model/atomic_write.ts";
import { rng } from "./random.ts";

// ---------------------------------------------------------------------------------------------
// Small helpers

function assertBytes(actual: Uint8Array, expected: Uint8Array, msg = ""): void {
  assertEquals(actual.length, expected.length, `${msg} length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new Error(`${msg} byte ${i}: expected ${expected[i]} got ${actual[i]}`);
    }
  }
}

/** Same elements, comparing by value (so -0 == 0 never matters and NaN needs no special case). */
function assertArray(actual: TensorData, expected: ArrayLike<number | bigint>, msg = ""): void {
  assertEquals(actual.length, expected.length, `${msg} length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new Error(`${msg} element ${i}: expected ${expected[i]} got ${actual[i]}`);
    }
  }
}

/** A rejection must be a SafetensorsError on one line, naming the file and the problem. */
async function assertRejectsFile(
  p: Promise<unknown>,
  file: string,
  problem: RegExp,
): Promise<void> {
  const e = await assertRejects(() => p, SafetensorsError);
  assert(!/[\r\n]/.test(e.message), `message has a line break: ${JSON.stringify(e.message)}`);
  assert(e.message.startsWith(`${file}: `), `message does not name ${file}: ${e.message}`);
  assert(problem.test(e.message), `message ${JSON.stringify(e.message)} does not match ${problem}`);
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function randomF32(n: number, rand: () => number, scale = 10): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    while (v === 0) v = Math.fround((rand() * 2 - 1) * scale);
    out[i] = v;
  }
  return out;
}

/** Bytes of a file: u64 LE header length, the header text verbatim, then `data`. */
function rawFile(header: string, data: Uint8Array | number[] = [], length?: bigint): Uint8Array {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reference rounding, written independently of Float16Array and of the module under test

/** Rounds a finite double to the nearest (ties to even) value of a binary float format. */
function refRound(x: number, mantBits: number, expBits: number): { bits: number; value: number } {
  const bias = 2 ** (expBits - 1) - 1;
  const minExp = 1 - bias;
  const maxExp = bias;
  const sign = x < 0 || Object.is(x, -0) ? 1 : 0;
  const a = Math.abs(x);
  const inf = ((2 ** expBits - 1) << mantBits) | (sign << (expBits + mantBits));
  let e = a === 0 ? minExp : Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (Math.max(e, minExp) - mantBits);
  const scaled = a / ulp; // exact: dividing by a power of two
  let r = Math.floor(scaled);
  const frac = scaled - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const value = r * ulp;
  const maxFinite = (2 - 2 ** -mantBits) * 2 ** maxExp;
  if (value > maxFinite) return { bits: inf, value: sign ? -Infinity : Infinity };
  let bits: number;
  if (value < 2 ** minExp) {
    bits = value / 2 ** (minExp - mantBits); // subnormal (or zero)
  } else {
    let ve = e;
    if (value >= 2 ** (ve + 1)) ve++; // rounding carried into the next binade
    bits = ((ve + bias) << mantBits) | (value / 2 ** (ve - mantBits) - 2 ** mantBits);
  }
  return { bits: bits | (sign << (expBits + mantBits)), value: sign ? -value : value };
}

const refF16 = (x: number) => refRound(x, 10, 5);
const refBf16 = (x: number) => refRound(x, 7, 8);

// ---------------------------------------------------------------------------------------------
// Round trips

Deno.test("reference rounding agrees with known float16/bfloat16 bit patterns", () => {
  const f16: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65519.99, 0x7bff],
    [65520, 0x7c00], // tie between max finite and 2^16 rounds to even: infinity
    [1 + 2 ** -11, 0x3c00], // tie, rounds down to even mantissa
    [1 + 3 * 2 ** -11, 0x3c02], // tie, rounds up to even mantissa
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie with zero rounds to zero
    [3 * 2 ** -25, 0x0002],
    [2 ** -14 - 2 ** -25, 0x0400], // rounds up into the smallest normal
  ];
  for (const [x, bits] of f16) assertEquals(refF16(x).bits, bits, `f16(${x})`);
  const bf16: [number, number][] = [
    [1, 0x3f80],
    [-1.5, 0xbfc0],
    [1 + 2 ** -8, 0x3f80], // tie, rounds down to even
    [1 + 3 * 2 ** -8, 0x3f82], // tie, rounds up to even
    [3.4028234663852886e38, 0x7f80], // f32 max rounds to infinity
  ];
  for (const [x, bits] of bf16) assertEquals(refBf16(x).bits, bits, `bf16(${x})`);
});

Deno.test("round trip: F32, F16 and BF16 with odd shapes and metadata", async () => {
  await withTempDir(async (dir) => {
    const rand = rng(1);
    const f32 = randomF32(3 * 5 * 7, rand);
    // Spread F16 inputs over normals, subnormals and rounding ties to exercise every branch.
    const f16 = randomF32(13, rand, 1000);
    f16.set([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -20, -(2 ** -25) * 3, 70000, 65520], 0);
    const bf16 = randomF32(5 * 3, rand, 1e30);
    bf16.set([1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4028234663852886e38, 1e-40], 0);
    const path = `${dir}/m.safetensors`;
    await writeSafetensors(path, {
      "encoder.layer.0.weight": { dtype: "F32", shape: [3, 5, 7], data: f32 },
      "half": { dtype: "F16", shape: [1, 13], data: f16 },
      "brain": { dtype: "BF16", shape: [5, 1, 3], data: bf16 },
      "scalar": { dtype: "F32", shape: [], data: new Float32Array([0.25]) },
      "empty": { dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
    }, { format: "pt", note: "héllo ☃" });

    const r = await openSafetensors(path);
    try {
      assertEquals(r.metadata, { format: "pt", note: "héllo ☃" });
      assertEquals([...r.tensors.keys()].sort(), [
        "brain",
        "empty",
        "encoder.layer.0.weight",
        "half",
        "scalar",
      ]);
      assertEquals(r.tensors.get("half"), {
        name: "half",
        dtype: "F16",
        shape: [1, 13],
        byteLength: 26,
      });
      const w = await r.read("encoder.layer.0.weight");
      assertEquals([w.dtype, w.shape], ["F32", [3, 5, 7]]);
      assertArray(w.data, f32, "F32 read");
      assertArray(await r.readF32("encoder.layer.0.weight"), f32, "F32 readF32");

      const h = await r.read("half");
      assertArray(h.data, Array.from(f16, (x) => refF16(x).bits), "F16 bits");
      assertArray(await r.readF32("half"), Array.from(f16, (x) => refF16(x).value), "F16 values");
      const b = await r.read("brain");
      assertArray(b.data, Array.from(bf16, (x) => refBf16(x).bits), "BF16 bits");
      assertArray(await r.readF32("brain"), Array.from(bf16, (x) => refBf16(x).value), "BF16");

      assertArray(await r.readF32("scalar"), [0.25]);
      assertEquals((await r.read("scalar")).shape, []);
      assertEquals((await r.read("empty")).data.length, 0);
    } finally {
      r.close();
    }
  });
});

Deno.test("BF16 conversion keeps NaN a NaN and raw half-precision bits pass through", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/nan.safetensors`;
    // 0x7fffffff would round into 0x8000 (= -0) or infinity without NaN handling.
    const nans = new Float32Array(new Uint32Array([0x7fffffff, 0xffc00001, 0x7f800001]).buffer);
    const raw = new Uint16Array([0x3c00, 0x7bff, 0x0001, 0x8000]);
    await writeSafetensors(path, {
      nan: { dtype: "BF16", shape: [3], data: nans },
      raw16: { dtype: "F16", shape: [4], data: raw },
      rawbf: { dtype: "BF16", shape: [4], data: raw },
      f16arr: { dtype: "F16", shape: [2], data: new Float16Array([1.5, -3]) },
    });
    const r = await openSafetensors(path);
    try {
      for (const v of await r.readF32("nan")) assert(Number.isNaN(v), `${v} is not NaN`);
      assertArray((await r.read("raw16")).data, raw);
      assertArray((await r.read("rawbf")).data, raw);
      assertArray(await r.readF32("raw16"), [1, 65504, 2 ** -24, -0]);
      assertArray(await r.readF32("f16arr"), [1.5, -3]);
    } finally {
      r.close();
    }
  });
});

Deno.test("round trip: F64 and every integer dtype, raw and through readF32", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/ints.safetensors`;
    const tensors: Record<string, { dtype: Dtype; shape: number[]; data: TensorData }> = {
      f64: { dtype: "F64", shape: [3], data: new Float64Array([Math.PI, -1e300, 5e-324]) },
      i64: { dtype: "I64", shape: [2, 1], data: new BigInt64Array([-(2n ** 63n), 42n]) },
      u64: { dtype: "U64", shape: [2], data: new BigUint64Array([2n ** 64n - 1n, 7n]) },
      i32: { dtype: "I32", shape: [3], data: new Int32Array([-(2 ** 31), 0, 2 ** 31 - 1]) },
      u32: { dtype: "U32", shape: [1], data: new Uint32Array([2 ** 32 - 1]) },
      i16: { dtype: "I16", shape: [2], data: new Int16Array([-32768, 32767]) },
      u16: { dtype: "U16", shape: [2], data: new Uint16Array([0, 65535]) },
      i8: { dtype: "I8", shape: [3], data: new Int8Array([-128, 1, 127]) },
      u8: { dtype: "U8", shape: [1, 1, 3], data: new Uint8Array([0, 128, 255]) },
      mask: { dtype: "BOOL", shape: [4], data: new Uint8Array([1, 0, 0, 1]) },
    };
    await writeSafetensors(path, tensors);
    const r = await openSafetensors(path);
    try {
      assertEquals(r.metadata, {});
      for (const [name, t] of Object.entries(tensors)) {
        const got = await r.read(name);
        assertEquals([got.dtype, got.shape], [t.dtype, t.shape], name);
        assertEquals(got.data.constructor.name, t.data.constructor.name, name);
        assertArray(got.data, t.data, name);
        const f = await r.readF32(name);
        assertArray(
          f,
          Array.from(t.data as ArrayLike<number | bigint>, (v) => Math.fround(Number(v))),
        );
      }
    } finally {
      r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The format itself

Deno.test("writer output matches a file built byte by byte from the format spec", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/spec.safetensors`;
    // Keys given out of order (a JS object would also move "9" and "10" first).
    await writeSafetensors(path, {
      "b": { dtype: "F32", shape: [2], data: new Float32Array([1.5, -2]) },
      "a": { dtype: "I16", shape: [3], data: new Int16Array([1, -1, 256]) },
      "9": { dtype: "U8", shape: [1], data: new Uint8Array([9]) },
      "10": { dtype: "U8", shape: [1], data: new Uint8Array([10]) },
    }, { format: "pt" });

    // Hugging Face's layout: larger dtype alignment first (F32, I16, U8), then by name.
    const json = '{"__metadata__":{"format":"pt"},' +
      '"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
      '"a":{"dtype":"I16","shape":[3],"data_offsets":[8,14]},' +
      '"10":{"dtype":"U8","shape":[1],"data_offsets":[14,15]},' +
      '"9":{"dtype":"U8","shape":[1],"data_offsets":[15,16]}}';
    const padded = json + " ".repeat((8 - (json.length % 8)) % 8);
    assertEquals(padded.length % 8, 0);
    const n = padded.length;
    const expected = new Uint8Array([
      ...[n & 0xff, n >> 8, 0, 0, 0, 0, 0, 0], // u64 little-endian header length
      ...new TextEncoder().encode(padded),
      ...[0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0], // "b": 1.5 = 0x3fc00000, -2 = 0xc0000000
      ...[0x01, 0x00, 0xff, 0xff, 0x00, 0x01], // "a": 1, -1, 256 as little-endian i16
      10, // "10"
      9, // "9"
    ]);
    assertBytes(await Deno.readFile(path), expected, "writer output");
  });
});

Deno.test("writer: half-precision tensors in Hugging Face's order, BF16 before F16", async () => {
  // Its Dtype enum ranks BF16 above F16 (F16 7, BF16 8): a file holding both, as a mixed f16
  // model does, lays out the BF16 tensor first, whatever the names.
  await withTempDir(async (dir) => {
    const path = `${dir}/halves.safetensors`;
    await writeSafetensors(path, {
      "a": { dtype: "F16", shape: [1], data: new Uint16Array([0x3c00]) },
      "b": { dtype: "BF16", shape: [1], data: new Uint16Array([0x3f80]) },
    });
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = new TextDecoder().decode(bytes.subarray(8, 8 + n)).trimEnd();
    assertEquals(
      header,
      '{"b":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},' +
        '"a":{"dtype":"F16","shape":[1],"data_offsets":[2,4]}}',
    );
  });
});

Deno.test("the streamed writer: one tensor's data at a time, in the file's order, the same bytes", async () => {
  await withTempDir(async (dir) => {
    const tensors = {
      "b": { dtype: "F32" as const, shape: [2], data: new Float32Array([1.5, -2]) },
      "a": { dtype: "I16" as const, shape: [3], data: new Int16Array([1, -1, 256]) },
      "10": { dtype: "U8" as const, shape: [1], data: new Uint8Array([10]) },
      "9": { dtype: "F16" as const, shape: [2], data: new Float32Array([0.5, 3]) },
    };
    const sum = (t: { data: TensorData }) => String(Array.from(t.data as Float32Array).join("+"));
    const meta = (hash: (name: string) => string) => ({
      format: "pt",
      sums: JSON.stringify(Object.fromEntries(Object.keys(tensors).map((n) => [n, hash(n)]))),
    });
    const whole = `${dir}/whole.safetensors`;
    const entries = Object.entries(tensors) as [string, (typeof tensors)[keyof typeof tensors]][];
    await writeSafetensors(whole, tensors, meta((n) => sum(entries.find(([k]) => k === n)![1])));
    // Metadata known only once the data has come: laid out with a stand-in of its length.
    const streamed = `${dir}/streamed.safetensors`;
    const asked: string[] = [];
    const seen = new Map<string, string>();
    const specs = Object.fromEntries(
      entries.map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape }]),
    );
    await writeSafetensorsStreamed(
      streamed,
      specs,
      (name) => {
        asked.push(name);
        const t = entries.find(([k]) => k === name)![1];
        seen.set(name, sum(t));
        return Promise.resolve(t.data);
      },
      meta((n) => "?".repeat(sum(entries.find(([k]) => k === n)![1]).length)),
      () => meta((n) => seen.get(n)!),
    );
    assertEquals(asked, ["b", "9", "a", "10"]);
    assertBytes(await Deno.readFile(streamed), await Deno.readFile(whole), "streamed file");
    // Data of another length than its shape, or a final header beyond the stand-in's: refused,
    // the file not written.
    const wrong = `${dir}/wrong.safetensors`;
    await assertRejects(
      () =>
        writeSafetensorsStreamed(
          wrong,
          specs,
          (name) =>
            Promise.resolve(
              name === "a" ? new Int16Array(2) : entries.find(([k]) => k === name)![1].data,
            ),
          { format: "pt" },
          () => ({ format: "pt" }),
        ),
      SafetensorsError,
      'tensor "a": data has 2 elements but shape [3] needs 3',
    );
    await assertRejects(
      () =>
        writeSafetensorsStreamed(
          wrong,
          specs,
          (name) => Promise.resolve(entries.find(([k]) => k === name)![1].data),
          { format: "pt" },
          () => ({ format: "a much longer format name than the stand-in's" }),
        ),
      SafetensorsError,
      "longer than the",
    );
    // The data's own failure (a GPU lost mid-download) is passed on as it is, not as a failed
    // write (which a run's advice takes for a full disk).
    const lost = new Error("device lost");
    const thrown = await assertRejects(() =>
      writeSafetensorsStreamed(
        wrong,
        specs,
        () => Promise.reject(lost),
        { format: "pt" },
        () => ({ format: "pt" }),
      )
    );
    assert(thrown === lost, String(thrown));
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "streamed.safetensors",
      "whole.safetensors",
    ]);
  });
});

Deno.test("writer omits __metadata__ when none is given and pads even a tiny header", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/nometa.safetensors`;
    await writeSafetensors(path, { x: { dtype: "U8", shape: [0], data: new Uint8Array(0) } });
    const json = '{"x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}';
    const padded = json + " ".repeat((8 - (json.length % 8)) % 8);
    assertBytes(await Deno.readFile(path), rawFile(padded));
  });
});

Deno.test("reader accepts Hugging Face's other layouts: data order differs from key order", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/hf.safetensors`;
    // Python-style spacing, keys not sorted, data of "z" first, no metadata, newline padding.
    const header = '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}, ' +
      '"z": {"data_offsets": [0, 2], "shape": [2, 1], "dtype": "I8"}}\n     ';
    const data = [0xfe, 0x05, 0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc1]; // z: -2, 5; a: 1, -10
    await Deno.writeFile(path, rawFile(header, data));
    const r = await openSafetensors(path);
    try {
      assertEquals(r.metadata, {});
      assertEquals([...r.tensors.keys()], ["z", "a"]); // file order
      assertArray((await r.read("a")).data, [1, -10]);
      assertArray((await r.read("z")).data, [-2, 5]);
      assertEquals((await r.read("z")).shape, [2, 1]);
    } finally {
      r.close();
    }
  });
});

Deno.test("an empty checkpoint ({} and no data) is valid", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/empty.safetensors`;
    await writeSafetensors(path, {});
    const r = await openSafetensors(path);
    assertEquals(r.tensors.size, 0);
    r.close();
  });
});

// ---------------------------------------------------------------------------------------------
// Malformed files

const F32_2x2 = '{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}';

/** [case, file bytes, expected problem] */
const MALFORMED: [string, Uint8Array, RegExp][] = [
  ["shorter than 8 bytes", new Uint8Array([1, 0, 0]), /file is 3 bytes, shorter than the 8-byte/],
  [
    "data shorter than declared (truncated)",
    rawFile(`{"a":${F32_2x2}}`, new Array(10).fill(0)),
    /tensor "a": data_offsets \[0, 16\] extend past the end of the data \(10 bytes; file truncat/,
  ],
  [
    "header longer than the file",
    rawFile("{}", [], 1000n),
    /header length 1000 exceeds the 2 bytes after it/,
  ],
  [
    "huge declared header (2^40)",
    rawFile("{}", [], 2n ** 40n),
    /header length 1099511627776 exceeds the 100000000-byte limit/,
  ],
  [
    "header length 2^64-1",
    rawFile("{}", [], 2n ** 64n - 1n),
    /header length 18446744073709551615 exceeds the 100000000-byte limit/,
  ],
  [
    "a Git LFS pointer (a clone without git-lfs)",
    new TextEncoder().encode(
      "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0".repeat(64) +
        "\nsize 498818054\n",
    ),
    /is a Git LFS pointer, not the weights \(the repository was cloned without git-lfs\): run `git lfs pull` in its folder/,
  ],
  [
    "offsets out of range",
    rawFile(
      '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},' +
        '"b":{"dtype":"U8","shape":[4],"data_offsets":[1000000,1000004]}}',
      [1, 2, 3, 4],
    ),
    /tensor "b": data_offsets \[1000000, 1000004\] extend past the end of the data \(4 bytes/,
  ],
  [
    "overlapping tensors",
    rawFile(
      '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},' +
        '"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}',
      new Array(6).fill(0),
    ),
    /tensor "b": data_offsets \[2, 6\] overlap tensor "a" \(which ends at 4\)/,
  ],
  [
    "gap between tensors",
    rawFile(
      '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},' +
        '"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}',
      new Array(6).fill(0),
    ),
    /gap in data: bytes \[2, 4\) before tensor "b" belong to no tensor/,
  ],
  [
    "gap at the start",
    rawFile('{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}', new Array(4).fill(0)),
    /gap in data: bytes \[0, 2\) before tensor "b"/,
  ],
  [
    "trailing bytes after the last tensor",
    rawFile(`{"a":${F32_2x2}}`, new Array(20).fill(0)),
    /4 trailing bytes after the last tensor/,
  ],
  [
    "wrong byte span for shape",
    rawFile(
      '{"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}',
      new Array(12).fill(0),
    ),
    /: tensor "a\.weight": data_offsets \[0, 12\] span 12 bytes but shape \[2, 2\] of F32 needs 16$/,
  ],
  [
    "shape whose product overflows",
    rawFile(
      '{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}',
    ),
    /span 0 bytes but shape \[4294967296, 4294967296\] of F32 needs 73786976294838206464/,
  ],
  [
    "unknown dtype",
    rawFile('{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}', [0, 0, 0, 0]),
    /tensor "a": unknown dtype "F33"/,
  ],
  [
    "unsupported dtype",
    rawFile('{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}', [0]),
    /tensor "a": unsupported dtype "F8_E4M3"/,
  ],
  [
    "non-string dtype",
    rawFile('{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}', [0, 0, 0, 0]),
    /tensor "a": dtype is not a string/,
  ],
  ["non-JSON header", rawFile("{not json at all"), /header is not valid JSON \(/],
  [
    "JSON error text with a line break in it",
    rawFile('{"a":\n\n oops}'),
    /header is not valid JSON/,
  ],
  ["header not starting with '{'", rawFile(' {"a":1}'), /header does not start with '\{'/],
  ["header is a JSON array", rawFile("[1,2,3]"), /header does not start with '\{'/],
  ["empty header", rawFile(""), /header does not start with '\{'/],
  // "\xff" is encoded as C3 BF; turning C3 into FF leaves a byte that is never valid UTF-8.
  ["header not UTF-8", rawFile('{"\xff": 1}').map((b) => b === 0xc3 ? 0xff : b), /not valid UTF-8/],
  [
    "negative shape",
    rawFile('{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}'),
    /tensor "a": shape \[-1\] is not a list of non-negative integers/,
  ],
  [
    "non-integer shape",
    rawFile('{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}}'),
    /tensor "a": shape \[1\.5\] is not a list of non-negative integers/,
  ],
  [
    "shape is not an array",
    rawFile('{"a":{"dtype":"U8","shape":"2","data_offsets":[0,2]}}', [0, 0]),
    /tensor "a": shape "2" is not a list/,
  ],
  [
    "begin > end",
    rawFile('{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}', [0, 0, 0, 0]),
    /tensor "a": data_offsets \[4, 0\] has begin > end/,
  ],
  [
    "data_offsets with three numbers",
    rawFile('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}', [0, 0]),
    /tensor "a": data_offsets \[0,1,2\] is not two non-negative integers/,
  ],
  [
    "data_offsets beyond 2^53",
    rawFile('{"a":{"dtype":"U8","shape":[0],"data_offsets":[1e300,1e300]}}'),
    /tensor "a": data_offsets \[1e\+300,1e\+300\] is not two non-negative integers/,
  ],
  [
    "metadata with a non-string value",
    rawFile(`{"__metadata__":{"format":"pt","step":3},"a":${F32_2x2}}`, new Array(16).fill(0)),
    /__metadata__ value for "step" is not a string/,
  ],
  [
    "metadata that is not an object",
    rawFile('{"__metadata__":["pt"]}'),
    /__metadata__ is not an object of strings/,
  ],
  [
    "extra unknown field",
    rawFile(
      '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"offset":0}}',
      [0],
    ),
    /tensor "a": unexpected field "offset"/,
  ],
  [
    "missing field",
    rawFile('{"a":{"dtype":"U8","shape":[1]}}', [0]),
    /tensor "a": missing field "data_offsets"/,
  ],
  ["entry not an object", rawFile('{"a":[1,2]}'), /tensor "a": entry is not an object/],
  [
    "tensor name with a line break",
    rawFile('{"line\\nbreak":{"dtype":"X","shape":[],"data_offsets":[0,0]}}'),
    /tensor "line\\nbreak": unknown dtype "X"/,
  ],
];

Deno.test("malformed files are rejected with a one-line error naming the file", async (t) => {
  await withTempDir(async (dir) => {
    for (const [i, [name, bytes, problem]] of MALFORMED.entries()) {
      await t.step(name, async () => {
        const path = `${dir}/bad-${i}.safetensors`;
        await Deno.writeFile(path, bytes);
        await assertRejectsFile(openSafetensors(path), path, problem);
      });
    }
  });
});

Deno.test("missing paths and unknown tensor names give one-line errors", async () => {
  await withTempDir(async (dir) => {
    const missing = `${dir}/nope.safetensors`;
    await assertRejectsFile(openSafetensors(missing), missing, /cannot open: /);
    await assertRejectsFile(
      openSafetensors(dir),
      dir,
      /directory holds neither model\.safetensors nor model\.safetensors\.index\.json/,
    );
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, { a: { dtype: "U8", shape: [1], data: new Uint8Array([1]) } });
    const r = await openSafetensors(path);
    await assertRejectsFile(r.read("a.weight"), path, /no tensor named "a\.weight"/);
    await assertRejectsFile(r.readF32("b"), path, /no tensor named "b"/);
    r.close();
    await assertRejectsFile(r.read("a"), path, /reader is closed/);
    r.close(); // closing twice is harmless
  });
});

Deno.test("a file truncated after opening fails the read instead of hanging", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/shrink.safetensors`;
    await writeSafetensors(path, { a: { dtype: "F32", shape: [8], data: new Float32Array(8) } });
    const r = await openSafetensors(path);
    try {
      await Deno.truncate(path, (await Deno.stat(path)).size - 4);
      await assertRejectsFile(r.read("a"), path, /unexpected end of file while reading tensor "a"/);
    } finally {
      r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Streaming

Deno.test("sparse 1.5 GB file: open reads only the header, a small tensor is read without the huge one", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/huge.safetensors`;
    const hugeBytes = 1_500_000_000;
    const header = '{"small":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},' +
      `"huge":{"dtype":"U8","shape":[${hugeBytes}],"data_offsets":[16,${16 + hugeBytes}]}}`;
    const head = rawFile(header, new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer));
    const file = await Deno.open(path, { write: true, create: true });
    await file.write(head);
    // Extending with truncate leaves a hole: 1.5 GB of zeros that take no disk space.
    await file.truncate(head.length + hugeBytes);
    file.close();
    const info = await Deno.stat(path);
    assertEquals(info.size, head.length + hugeBytes);
    if (info.blocks !== null) assert(info.blocks * 512 < 1 << 20, "file is not sparse");

    const rssBefore = Deno.memoryUsage().rss;
    const r = await openSafetensors(path);
    try {
      assertEquals(r.tensors.get("huge"), {
        name: "huge",
        dtype: "U8",
        shape: [hugeBytes],
        byteLength: hugeBytes,
      });
      assertArray(await r.readF32("small"), [1, 2, 3, 4]);
    } finally {
      r.close();
    }
    // What shows that the huge tensor was not read is the memory, not a time (which a busy
    // machine can stretch).
    const grown = Deno.memoryUsage().rss - rssBefore;
    assert(grown < 100 * 2 ** 20, `RSS grew by ${grown} bytes`);
  });
});

Deno.test("concurrent reads on one reader each get their own tensor", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/many.safetensors`;
    const tensors: Record<string, { dtype: Dtype; shape: number[]; data: Int32Array }> = {};
    for (let i = 0; i < 20; i++) {
      tensors[`t${i}`] = { dtype: "I32", shape: [i + 1], data: new Int32Array(i + 1).fill(i) };
    }
    await writeSafetensors(path, tensors);
    const r = await openSafetensors(path);
    try {
      const results = await Promise.all(Object.keys(tensors).map((name) => r.read(name)));
      results.forEach((t, i) => assertArray(t.data, tensors[`t${i}`].data, `t${i}`));
    } finally {
      r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

async function writeShards(dir: string): Promise<Record<string, Float32Array>> {
  const values = {
    "embeddings.weight": new Float32Array([1, 2, 3, 4, 5, 6]),
    "layer.0.weight": new Float32Array([7, 8]),
    "classifier.bias": new Float32Array([9]),
  };
  await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, {
    "embeddings.weight": { dtype: "F32", shape: [2, 3], data: values["embeddings.weight"] },
    "layer.0.weight": { dtype: "F32", shape: [2], data: values["layer.0.weight"] },
  }, { format: "pt" });
  await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, {
    "classifier.bias": { dtype: "F32", shape: [1], data: values["classifier.bias"] },
  }, { format: "pt" });
  return values;
}

async function writeIndex(dir: string, weightMap: Record<string, string>): Promise<string> {
  const path = `${dir}/model.safetensors.index.json`;
  await Deno.writeTextFile(
    path,
    JSON.stringify({ metadata: { total_size: 36 }, weight_map: weightMap }, null, 2),
  );
  return path;
}

Deno.test("sharded round trip, opened by directory and by index path", async () => {
  await withTempDir(async (dir) => {
    const values = await writeShards(dir);
    const index = await writeIndex(dir, {
      "classifier.bias": "model-00002-of-00002.safetensors",
      "embeddings.weight": "model-00001-of-00002.safetensors",
      "layer.0.weight": "model-00001-of-00002.safetensors",
    });
    for (const where of [dir, index, `${dir}/`]) {
      const r = await openSafetensors(where);
      try {
        assertEquals(r.path, index);
        assertEquals(r.metadata, { total_size: "36" });
        assertEquals([...r.tensors.keys()].sort(), Object.keys(values).sort());
        assertEquals(r.tensors.get("embeddings.weight")?.shape, [2, 3]);
        for (const [name, data] of Object.entries(values)) {
          assertArray(await r.readF32(name), data, name);
        }
        await assertRejectsFile(r.read("nope"), r.path, /no tensor named "nope"/);
      } finally {
        r.close();
      }
      // After close() the shard's handle is gone; the error names the shard file.
      const e = await assertRejects(() => r.read("classifier.bias"));
      assert(/model-00002-of-00002\.safetensors: reader is closed$/.test(e.message), e.message);
    }
  });
});

Deno.test("a directory holding only model.safetensors opens that file", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(`${dir}/model.safetensors`, {
      w: { dtype: "BF16", shape: [2], data: new Float32Array([1, -2]) },
    });
    const r = await openSafetensors(dir);
    try {
      assertEquals(r.path, `${dir}/model.safetensors`);
      assertArray(await r.readF32("w"), [1, -2]);
    } finally {
      r.close();
    }
  });
});

Deno.test("model.safetensors wins over an index beside it, as in transformers", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(`${dir}/model.safetensors`, {
      w: { dtype: "F32", shape: [2], data: new Float32Array([3, 4]) },
    });
    // An index whose shards are absent (a download that stopped, a stale leftover): ignored.
    await writeIndex(dir, { "embeddings.weight": "model-00001-of-00002.safetensors" });
    const r = await openSafetensors(dir);
    try {
      assertEquals(r.path, `${dir}/model.safetensors`);
      assertArray(await r.readF32("w"), [3, 4]);
    } finally {
      r.close();
    }
    // Both complete: still the single file.
    await writeShards(dir);
    const both = await openSafetensors(`${dir}/`);
    try {
      assertEquals([...both.tensors.keys()], ["w"]);
    } finally {
      both.close();
    }
    // A folder named model.safetensors is not the file: the index is used.
    await Deno.remove(`${dir}/model.safetensors`);
    await Deno.mkdir(`${dir}/model.safetensors`);
    await writeIndex(dir, { "classifier.bias": "model-00002-of-00002.safetensors" });
    const sharded = await openSafetensors(dir);
    try {
      assertEquals(sharded.path, `${dir}/model.safetensors.index.json`);
    } finally {
      sharded.close();
    }
  });
});

Deno.test("sharded index whose shard name escapes the directory is rejected", async (t) => {
  await withTempDir(async (dir) => {
    await writeShards(dir);
    const escapes = [
      "../model-00001-of-00002.safetensors",
      "..",
      "/etc/passwd",
      "sub/model.safetensors",
      "sub\\model.safetensors",
      "C:model.safetensors",
      "",
    ];
    for (const shard of escapes) {
      await t.step(JSON.stringify(shard), async () => {
        const index = await writeIndex(dir, {
          "classifier.bias": "model-00002-of-00002.safetensors",
          "embeddings.weight": shard,
        });
        await assertRejectsFile(
          openSafetensors(index),
          index,
          /weight_map\["embeddings\.weight"\]: shard ".*" is not a plain file name in the same dir/,
        );
      });
    }
  });
});

Deno.test("sharded index naming a missing tensor or missing shard file is rejected", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir);
    let index = await writeIndex(dir, {
      "embeddings.weight": "model-00001-of-00002.safetensors",
      "pooler.weight": "model-00002-of-00002.safetensors",
    });
    await assertRejectsFile(
      openSafetensors(dir),
      index,
      /tensor "pooler\.weight" not found in shard "model-00002-of-00002\.safetensors"/,
    );
    index = await writeIndex(dir, { "embeddings.weight": "model-00009-of-00009.safetensors" });
    await assertRejectsFile(
      openSafetensors(index),
      index,
      /shard "model-00009-of-00009\.safetensors": .*cannot open/,
    );
    // A tensor in two shards: which copy a loader takes depends on how it reads them.
    await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, {
      "classifier.bias": { dtype: "F32", shape: [1], data: new Float32Array([9]) },
      "layer.0.weight": { dtype: "F32", shape: [2], data: new Float32Array([70, 80]) },
    });
    index = await writeIndex(dir, {
      "embeddings.weight": "model-00001-of-00002.safetensors",
      "layer.0.weight": "model-00001-of-00002.safetensors",
      "classifier.bias": "model-00002-of-00002.safetensors",
    });
    await assertRejectsFile(
      openSafetensors(index),
      index,
      /tensor "layer\.0\.weight" is in shard "model-00002-of-00002\.safetensors" and in "model-00001-of-00002\.safetensors", which the index names: which copy is the model's is ambiguous/,
    );
    // One the index leaves out is read from its shard, as transformers (which reads every shard
    // whole) reads it; it was refused as missing.
    await writeShards(dir);
    index = await writeIndex(dir, {
      "embeddings.weight": "model-00001-of-00002.safetensors",
      "classifier.bias": "model-00002-of-00002.safetensors",
    });
    const partial = await openSafetensors(index);
    try {
      assertEquals([...partial.tensors.keys()].sort(), [
        "classifier.bias",
        "embeddings.weight",
        "layer.0.weight",
      ]);
      assertEquals([...(await partial.read("layer.0.weight")).data as Float32Array], [7, 8]);
      assertEquals(partial.fileOf("layer.0.weight"), `${dir}/model-00001-of-00002.safetensors`);
    } finally {
      partial.close();
    }
    await Deno.writeTextFile(index, '{"metadata": {}}');
    await assertRejectsFile(openSafetensors(index), index, /index has no weight_map object/);
    // A config.json given by mistake: what to give instead.
    const config = `${dir}/config.json`;
    await Deno.writeTextFile(config, '{"model_type": "bert"}');
    await assertRejectsFile(
      openSafetensors(config),
      config,
      /no weight_map object: .*give the \.safetensors file or the model's folder$/,
    );
    await Deno.writeTextFile(index, "{oops");
    await assertRejectsFile(openSafetensors(index), index, /index is not valid JSON/);
    // A tensor mapped twice (JSON.parse would keep the second silently).
    await Deno.writeTextFile(
      index,
      '{"weight_map": {"embeddings.weight": "model-00001-of-00002.safetensors", ' +
        '"embeddings.weight": "model-00002-of-00002.safetensors"}}',
    );
    await assertRejectsFile(
      openSafetensors(index),
      index,
      /weight_map names tensor "embeddings\.weight" twice/,
    );
    // A broken shard is reported through the index, with the shard's own problem.
    await Deno.writeFile(`${dir}/bad.safetensors`, rawFile("[]"));
    index = await writeIndex(dir, { "x": "bad.safetensors" });
    await assertRejectsFile(
      openSafetensors(index),
      index,
      /shard "bad\.safetensors": .*start with/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Writing safely

Deno.test("atomic write: invalid input leaves an existing file byte-identical, no temp files", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, {
      a: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
    });
    const before = await Deno.readFile(path);
    await assertRejectsFile(
      writeSafetensors(path, { a: { dtype: "F32", shape: [3], data: new Float32Array([5, 6]) } }),
      path,
      /tensor "a": data has 2 elements but shape \[3\] needs 3/,
    );
    assertBytes(await Deno.readFile(path), before, "old file changed");
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, ["model.safetensors"]);

    // A valid write replaces the file.
    await writeSafetensors(path, { b: { dtype: "U8", shape: [1], data: new Uint8Array([7]) } });
    const r = await openSafetensors(path);
    assertEquals([...r.tensors.keys()], ["b"]);
    r.close();
  });
});

Deno.test("atomic write: a failure after the temp file exists still removes it", async () => {
  await withTempDir(async (dir) => {
    // Renaming a file over a non-empty directory fails only at the very last step.
    const target = `${dir}/target.safetensors`;
    await Deno.mkdir(target);
    await Deno.writeTextFile(`${target}/keep`, "x");
    await assertRejectsFile(
      writeSafetensors(target, { a: { dtype: "U8", shape: [1], data: new Uint8Array([1]) } }),
      target,
      /write failed: /,
    );
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, ["target.safetensors"]);
    assertEquals(await Deno.readTextFile(`${target}/keep`), "x");
  });
});

Deno.test("writer validates its input", async (t) => {
  await withTempDir(async (dir) => {
    const path = `${dir}/w.safetensors`;
    const cases: [string, Record<string, unknown>, RegExp, Record<string, unknown>?][] = [
      ["empty name", { "": { dtype: "U8", shape: [0], data: new Uint8Array(0) } }, /empty name/],
      [
        "reserved name",
        { __metadata__: { dtype: "U8", shape: [0], data: new Uint8Array(0) } },
        /"__metadata__" is reserved/,
      ],
      [
        "unknown dtype",
        { a: { dtype: "F8_E4M3", shape: [1], data: new Uint8Array(1) } },
        /tensor "a": unknown dtype "F8_E4M3"/,
      ],
      [
        "negative shape",
        { a: { dtype: "U8", shape: [-1], data: new Uint8Array(0) } },
        /tensor "a": shape \[-1\] is not a list of non-negative integers/,
      ],
      [
        "typed array of the wrong kind",
        { a: { dtype: "F32", shape: [2], data: new Float64Array(2) } },
        /tensor "a": Float64Array is not valid data for dtype F32/,
      ],
      [
        "plain array as data",
        { a: { dtype: "F32", shape: [2], data: [1, 2] } },
        /tensor "a": object is not valid data for dtype F32/,
      ],
      [
        "length mismatch",
        { a: { dtype: "I64", shape: [2, 2], data: new BigInt64Array(3) } },
        /tensor "a": data has 3 elements but shape \[2, 2\] needs 4/,
      ],
      [
        "BOOL value other than 0/1",
        { a: { dtype: "BOOL", shape: [2], data: new Uint8Array([1, 2]) } },
        /tensor "a": BOOL data must be 0 or 1/,
      ],
      ["metadata value not a string", {}, /metadata value for "step" is not a string/, {
        step: 1,
      }],
    ];
    for (const [name, tensors, problem, metadata] of cases) {
      await t.step(name, async () => {
        await assertRejectsFile(
          // deno-lint-ignore no-explicit-any
          writeSafetensors(path, tensors as any, metadata as any),
          path,
          problem,
        );
      });
    }
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, [], "nothing written");
  });
});

Deno.test("atomic write: the temporaries a killed write left are removed, nothing else", async () => {
  await withTempDir(async (dir) => {
    for (const sub of ["model", "analysis/figures", "inner"]) {
      await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
    }
    const files = {
      "checkpoint.safetensors.tmp-e41c61fe": "half a checkpoint",
      "model/model.safetensors.tmp-0123abcd": "half a model",
      "analysis/figures/loss.svg.tmp-89abcdef": "half a figure",
      "checkpoint.safetensors": "whole",
      "notes.tmp-mine": "a user's file",
      // Another program's write into the folder, in progress: not a file the caller writes.
      "predictions.jsonl.tmp-a1b2c3d4": "predict.ts --out writing now",
      "model/x.tmp-0123abc": "seven digits: not ours",
      // Another run kept inside this one, writing now: not this run's to clean.
      "inner/checkpoint.safetensors.tmp-fedcba98": "another run's write in progress",
    };
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    const mine = ["run.json", "checkpoint.safetensors"];
    assertEquals(await removeStaleTemporaries(dir, mine, ["model", "analysis"]), 3);
    const left: string[] = [];
    for (const sub of ["", "model/", "analysis/figures/", "inner/"]) {
      for await (const e of Deno.readDir(`${dir}/${sub}`)) if (e.isFile) left.push(sub + e.name);
    }
    assertEquals(left.sort(), [
      "checkpoint.safetensors",
      "inner/checkpoint.safetensors.tmp-fedcba98",
      "model/x.tmp-0123abc",
      "notes.tmp-mine",
      "predictions.jsonl.tmp-a1b2c3d4",
    ]);
  });
});
