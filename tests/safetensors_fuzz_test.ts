// Fuzzing the safetensors reader (issue 10, "Faults and bad input"): valid files written by the
// project's own writer are mutated — bit flips anywhere, truncation at every byte, header edits
// (offsets, shapes, dtypes, the length field, duplicate names, non-object JSON, __metadata__,
// padding), random byte changes and splices in the header — and each mutant is opened and every
// tensor read. Every outcome must be one of:
//
// - success with *valid tensors*: the mutant is itself a valid safetensors file (by `spec` below,
//   the format's rules written out independently of the reader) and the reader returns exactly
//   what that file holds: the same tensor names, dtypes, shapes (−0 normalized to 0), metadata,
//   and each tensor's bytes equal to the file's bytes at its data_offsets. safetensors carries no
//   checksum, so a bit flipped inside a tensor's data *is* a valid file, whose tensor has the
//   original name, dtype and shape and the flipped value; likewise a header edit can yield a valid
//   file (a renamed tensor, F32 ↔ I32, a metadata value changed, extra padding). Success on a file
//   `spec` rejects, or a rejection of a file `spec` accepts, fails the test;
// - a SafetensorsError (the reader's own class) whose message is one line, starts with the file's
//   path, stays short (≤ 400 characters whatever the header holds), and names the tensor when the
//   edit was to one tensor's entry.
//
// Never another exception (TypeError, RangeError), never a hang (each case is raced against a
// timer), and never an allocation larger than the file: while the reader runs, the ArrayBuffer
// and typed-array constructors are wrapped to record the largest buffer requested, which must not
// exceed the file's size — so a header claiming huge shapes, offsets or lengths is refused before
// anything is allocated for it.

import {
  type Dtype,
  f32ToBf16Bits,
  f32ToF16Bits,
  openSafetensors,
  SafetensorsError,
  writeSafetensors,
} from "../model/safetensors.ts";
import { assert, assertEquals } from "./assert.ts";
import { rng } from "./random.ts";

// ---------------------------------------------------------------------------------------------
// The format's rules, independently of model/safetensors.ts

const ITEM: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

/** The typed array `read()` returns for each dtype (F16/BF16 as raw bits). */
const ARRAY_OF: Record<string, string> = {
  F64: "Float64Array",
  F32: "Float32Array",
  F16: "Uint16Array",
  BF16: "Uint16Array",
  I64: "BigInt64Array",
  I32: "Int32Array",
  I16: "Int16Array",
  I8: "Int8Array",
  U64: "BigUint64Array",
  U32: "Uint32Array",
  U16: "Uint16Array",
  U8: "Uint8Array",
  BOOL: "Uint8Array",
};

interface SpecTensor {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

type Spec =
  | { ok: true; metadata: Record<string, string>; tensors: Map<string, SpecTensor> }
  | { ok: false; why: string };

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Whether some object in a (valid) JSON text names a key twice; by tokens, not by parsing. */
function hasDuplicateKey(text: string): boolean {
  const tokens = text.match(/"(?:[^"\\]|\\.)*"|[{}[\]:,]/g) ?? [];
  const stack: (Set<string> | null)[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t === "{") stack.push(new Set());
    else if (t === "[") stack.push(null);
    else if (t === "}" || t === "]") stack.pop();
    else if (t.startsWith('"') && tokens[i + 1] === ":") {
      const keys = stack.at(-1)!;
      const key = JSON.parse(t) as string;
      if (keys.has(key)) return true;
      keys.add(key);
    }
  }
  return false;
}

/**
 * What a file holds by the safetensors rules (as Hugging Face's reader checks them, plus: no
 * duplicate keys, header at most 100 MB, a known dtype).
 */
function spec(file: Uint8Array): Spec {
  const bad = (why: string): Spec => ({ ok: false, why });
  if (file.length < 8) return bad("shorter than 8 bytes");
  const n = new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true);
  if (n > 100_000_000n || n > BigInt(file.length - 8)) return bad("header length");
  const headerEnd = 8 + Number(n);
  const headerBytes = file.subarray(8, headerEnd);
  if (headerBytes[0] !== 0x7b) return bad("header does not start with {");
  let text: string;
  let header: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
    header = JSON.parse(text);
  } catch {
    return bad("not UTF-8 JSON");
  }
  if (!isObject(header)) return bad("not an object");
  if (hasDuplicateKey(text)) return bad("duplicate key");
  const dataLength = file.length - headerEnd;
  let metadata: Record<string, string> = {};
  const spans: { name: string; begin: number; end: number; t: SpecTensor }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (!isObject(entry) || !Object.values(entry).every((v) => typeof v === "string")) {
        return bad("metadata");
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    if (name === "" || !isObject(entry)) return bad("entry");
    const fields = Object.keys(entry).sort();
    if (fields.join() !== "data_offsets,dtype,shape") return bad("fields");
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== "string" || !Object.hasOwn(ITEM, dtype)) return bad("dtype");
    if (!Array.isArray(shape) || !shape.every(isCount)) return bad("shape");
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      return bad("offsets");
    }
    const [begin, end] = offsets as number[];
    const count = shape.reduce((p: bigint, d: number) => p * BigInt(d), 1n);
    if (begin > end || BigInt(end - begin) !== count * BigInt(ITEM[dtype])) return bad("span");
    if (end > dataLength) return bad("past the end");
    const t = {
      dtype,
      shape: shape.map((d: number) => d === 0 ? 0 : d),
      bytes: file.subarray(headerEnd + begin, headerEnd + end),
    };
    spans.push({ name, begin, end, t });
  }
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const { begin, end } of spans) {
    if (begin !== at) return bad("not tiled");
    at = end;
  }
  if (at !== dataLength) return bad("trailing bytes");
  return { ok: true, metadata, tensors: new Map(spans.map(({ name, t }) => [name, t])) };
}

// ---------------------------------------------------------------------------------------------
// Allocation tracking

/** The largest buffer (in bytes) requested from ArrayBuffer or a typed-array constructor. */
let largestAllocation = 0;
let tracking = false;

const TYPED_ARRAYS = [
  "ArrayBuffer",
  "Uint8Array",
  "Int8Array",
  "Uint16Array",
  "Int16Array",
  "Uint32Array",
  "Int32Array",
  "Float16Array",
  "Float32Array",
  "Float64Array",
  "BigInt64Array",
  "BigUint64Array",
] as const;

/** Wraps the global constructors; returns the function that puts the originals back. */
function trackAllocations(): () => void {
  const g = globalThis as unknown as Record<string, unknown>;
  const originals = TYPED_ARRAYS.map((name) => [name, g[name]] as const);
  for (const [name, ctor] of originals) {
    const perElement = name === "ArrayBuffer"
      ? 1
      : (ctor as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT;
    g[name] = new Proxy(ctor as new (...args: unknown[]) => object, {
      construct(target, args, newTarget) {
        if (tracking && typeof args[0] === "number") {
          largestAllocation = Math.max(largestAllocation, args[0] * perElement);
        }
        return Reflect.construct(target, args, newTarget);
      },
    });
  }
  return () => {
    for (const [name, ctor] of originals) g[name] = ctor;
  };
}

// ---------------------------------------------------------------------------------------------
// The valid files

type Tensors = Parameters<typeof writeSafetensors>[1];

function f32(n: number, next: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => Math.fround(next() * 8 - 4));
}

function baseFiles(
  next: () => number,
): { name: string; tensors: Tensors; meta?: Record<string, string> }[] {
  return [
    {
      name: "mixed",
      meta: { format: "pt", note: "fuzz" },
      tensors: {
        "w.f32": { dtype: "F32", shape: [2, 3], data: f32(6, next) },
        "h.f16": { dtype: "F16", shape: [4], data: f32(4, next) },
        "b.bf16": { dtype: "BF16", shape: [2, 2], data: f32(4, next) },
        "ids": { dtype: "I64", shape: [3], data: BigInt64Array.from([7n, -1n, 2n ** 40n]) },
        "scalar": { dtype: "F32", shape: [], data: f32(1, next) },
        "empty": { dtype: "F32", shape: [0, 5], data: new Float32Array(0) },
        "flags": { dtype: "BOOL", shape: [3], data: Uint8Array.from([1, 0, 1]) },
      },
    },
    {
      name: "bert-like",
      tensors: {
        "bert.embeddings.word_embeddings.weight": {
          dtype: "F32",
          shape: [5, 4],
          data: f32(20, next),
        },
        "bert.embeddings.LayerNorm.weight": { dtype: "F32", shape: [4], data: f32(4, next) },
        "bert.embeddings.position_ids": {
          dtype: "I64",
          shape: [1, 5],
          data: BigInt64Array.from([0n, 1n, 2n, 3n, 4n]),
        },
      },
    },
    {
      name: "odd-names",
      meta: { "": "empty key", "ü": "ünïcode", "__proto__": "p" },
      tensors: {
        "é/ü": { dtype: "F16", shape: [0], data: new Float32Array(0) },
        'q"uote': { dtype: "BF16", shape: [1], data: f32(1, next) },
        "0": { dtype: "I64", shape: [], data: BigInt64Array.from([-5n]) },
        "f64": { dtype: "F64", shape: [2], data: Float64Array.from([Math.PI, -0]) },
      },
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// Mutations

interface Case {
  kind: string;
  bytes: Uint8Array;
  /** What `spec` must say too, when the mutation decides it ("any": leave it to `spec`). */
  expect: "ok" | "error" | "any";
  /** A tensor the error must name (the edit was to its entry). */
  names?: string;
}

interface Parsed {
  length: number;
  header: string;
  data: Uint8Array;
  json: Record<string, unknown>;
}

function parse(bytes: Uint8Array): Parsed {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + length));
  return { length, header, data: bytes.slice(8 + length), json: JSON.parse(header) };
}

/** A file from header text and data; the length field is the header's unless given. */
function assemble(header: string | Uint8Array, data: Uint8Array, length?: bigint): Uint8Array {
  const h = typeof header === "string" ? new TextEncoder().encode(header) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** The header with tensor `name`'s entry replaced by `edit(entry)`, re-serialized. */
function withEntry(
  p: Parsed,
  name: string,
  edit: (e: Record<string, unknown>) => unknown,
): string {
  const json = structuredClone(p.json);
  json[name] = edit(structuredClone(json[name]) as Record<string, unknown>);
  return JSON.stringify(json);
}

const HUGE = [2 ** 53, 2 ** 64, 1e300, 2 ** 53 - 1];

/** The structured header edits of one file (deterministic). */
function headerEdits(p: Parsed): Case[] {
  const cases: Case[] = [];
  const dataLength = p.data.length;
  const add = (kind: string, header: string | Uint8Array, expect: Case["expect"], names?: string) =>
    cases.push({ kind, bytes: assemble(header, p.data), expect, names });
  const names = Object.keys(p.json).filter((k) => k !== "__metadata__");

  for (const name of names) {
    const entry = p.json[name] as { dtype: string; shape: number[]; data_offsets: number[] };
    const [b, e] = entry.data_offsets;
    const size = e - b;
    const offsets = (o: unknown) => withEntry(p, name, (x) => ({ ...x, data_offsets: o }));
    const shape = (s: unknown) => withEntry(p, name, (x) => ({ ...x, shape: s }));
    const dtype = (d: unknown) => withEntry(p, name, (x) => ({ ...x, dtype: d }));

    // Offsets: reversed, out of range, overlapping / shifted, negative, not integers, huge.
    add("offsets", offsets([e + 1, b]), "error", name);
    add("offsets", offsets([b + dataLength + 1, e + dataLength + 1]), "error");
    add("offsets", offsets([b, dataLength + 1]), "error");
    // An empty tensor may legitimately move to another tensor boundary.
    const shifted = size === 0 ? "any" : "error";
    if (b > 0) add("offsets", offsets([b - 1, e - 1]), shifted);
    add("offsets", offsets([b + 1, e + 1]), shifted);
    add("offsets", offsets([0, size]), b === 0 || size === 0 ? "ok" : "error");
    add("offsets", offsets([-1, e]), "error", name);
    if (e > 0) add("offsets", offsets([b, -e]), "error", name);
    add("offsets", offsets([b + 0.5, e]), "error", name);
    add("offsets", offsets([String(b), e]), "error", name);
    add("offsets", offsets([b, e, e]), "error", name);
    add("offsets", offsets([b]), "error", name);
    add("offsets", offsets(null), "error", name);
    add("offsets", offsets({ begin: b, end: e }), "error", name);
    for (const h of HUGE) {
      add("offsets", offsets([h, h + size]), "error", name);
      add("offsets", offsets([b, h]), "error", name);
    }

    // Shapes: negative, huge, products that overflow 32 or 64 bits, not integers, not lists,
    // and same-count reshapes (valid: the reader cannot know the original shape).
    const item = ITEM[entry.dtype];
    add("shape", shape([-1, ...entry.shape]), "error", name);
    add("shape", shape([...entry.shape, -0.5]), "error", name);
    add("shape", shape([1.5]), "error", name);
    add("shape", shape([String(entry.shape[0] ?? 1)]), "error", name);
    add("shape", shape([entry.shape]), "error", name);
    add("shape", shape(null), "error", name);
    add("shape", shape(String(size / item)), "error", name);
    add("shape", shape([2 ** 53 - 1]), "error", name);
    add("shape", shape([2 ** 53]), "error", name);
    add("shape", shape([2 ** 31, 2 ** 31, 2 ** 31]), "error", name);
    add("shape", shape([2 ** 53 - 1, 2 ** 53 - 1, 0]), size === 0 ? "ok" : "error");
    // 2^64 elements wrap to 0 in 64-bit arithmetic; 2^30 + n F32 elements wrap to n·4 in 32 bits.
    add("shape", shape([2 ** 32, 2 ** 32]), "error", name);
    add("shape", shape([2 ** 32 / item, 2 ** 32]), "error", name);
    add("shape", shape([2 ** 32 / item + size / item]), "error", name);
    add("shape", shape([...entry.shape, 1]), "ok");
    add("shape", shape([size / item]), "ok");
    add("shape", shape([size / item + 1]), "error", name);
    // −0 is valid JSON for 0; the reader must give the shape back as 0.
    if (entry.shape.includes(0)) {
      add(
        "shape",
        shape("@").replace('"@"', JSON.stringify(entry.shape).replace(/\b0\b/, "-0")),
        "ok",
      );
    }
    // Deep nesting and long lists: the error message must stay short.
    add("shape", shape("@").replace('"@"', "[".repeat(5000) + "]".repeat(5000)), "error", name);
    add("shape", shape([...new Array(20000).fill(1), -1]), "error", name);
    add("shape", shape([...new Array(20000).fill(1), size / item + 1]), "error", name);

    // Dtypes: unknown, unsupported, not strings, and swaps that keep or change the item size.
    for (const d of ["F33", "f32", "", "F8_E4M3", "C64", 4, null, ["F32"], "__proto__"]) {
      add("dtype", dtype(d), "error", name);
    }
    for (const d of Object.keys(ITEM)) {
      if (d !== entry.dtype) {
        add("dtype", dtype(d), ITEM[d] === item || size === 0 ? "ok" : "error");
      }
    }

    // Entries: missing and extra fields, not an object, empty name, renamed.
    for (const field of ["dtype", "shape", "data_offsets"]) {
      add(
        "entry",
        withEntry(p, name, (x) => {
          delete x[field];
          return x;
        }),
        "error",
        name,
      );
    }
    add("entry", withEntry(p, name, (x) => ({ ...x, offset: 0 })), "error", name);
    for (const v of [null, [], "x", 1, true]) {
      add(
        "entry",
        withEntry(p, name, () => v),
        "error",
        name,
      );
    }
    add("entry", p.header.replace(JSON.stringify(name) + ":", '"":'), "error");
    add("entry", p.header.replace(JSON.stringify(name) + ":", '"renamed \\n":'), "ok");

    // Duplicates: the same name twice (identical, or with another dtype of the same size),
    // and a field given twice in one entry.
    const text = `${JSON.stringify(name)}:${JSON.stringify(entry)}`;
    add("duplicate", p.header.replace(text, `${text},${text}`), "error", name);
    const other = JSON.stringify({
      ...entry,
      dtype: item === 4 ? "I32" : item === 8 ? "U64" : "U16",
    });
    add(
      "duplicate",
      p.header.replace(text, `${text},${JSON.stringify(name)}:${other}`),
      "error",
      name,
    );
    add(
      "duplicate",
      p.header.replace(text, text.replace('{"dtype"', '{"dtype":"U8","dtype"')),
      "error",
      name,
    );
  }

  // The 8-byte header length: zero, off by one, the whole file, huge.
  const total = 8 + p.header.length + dataLength;
  for (
    const n of [
      0n,
      1n,
      BigInt(p.length - 1),
      BigInt(p.length + 1),
      BigInt(total - 8),
      BigInt(total - 7),
      100_000_001n,
      2n ** 63n,
      2n ** 64n - 1n,
      2n ** 32n + BigInt(p.length),
    ]
  ) {
    cases.push({ kind: "length", bytes: assemble(p.header, p.data, n), expect: "error" });
  }

  // Not an object, not JSON, an object with trailing garbage, no tensors at all.
  for (
    const h of ["[]", "null", "1", '"x"', "true", "{", "{}}", "{} x", `${p.header}{}`, "{}", ""]
  ) {
    add("json", h, h === "{}" && dataLength === 0 ? "ok" : "error");
  }

  // __metadata__: non-string values, not an object, a duplicate, many keys, "__proto__".
  const meta = (m: unknown) => JSON.stringify({ ...p.json, __metadata__: m });
  for (
    const m of [{ a: 1 }, { a: null }, { a: {} }, { a: ["x"] }, { a: true }, [], "pt", null, 1]
  ) {
    add("metadata", meta(m), "error");
  }
  add("metadata", meta({ ["__proto__"]: "x", constructor: "y", toString: "z" }), "ok");
  add(
    "metadata",
    meta(Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, `${i}`]))),
    "ok",
  );
  add("metadata", p.header.replace("{", '{"__metadata__":{},"__metadata__":{},'), "error");
  add("metadata", p.header.replace("{", '{"__metadata__":{"a":"1","a":"2"},'), "error");

  // Padding: spaces, JSON whitespace, an unaligned length (valid); NUL, a BOM or leading space
  // (not); entries in another order (valid).
  const trimmed = p.header.trimEnd();
  for (const pad of ["", " ", "        ".repeat(9), "\t\n\r ", "\n"]) {
    add("padding", trimmed + pad, "ok");
  }
  for (const pad of ["\0", "\0\0\0\0\0\0\0\0", "x", "\u00a0", "/* */"]) {
    add("padding", trimmed + pad, "error");
  }
  add("padding", " " + trimmed, "error");
  add("padding", "\ufeff" + trimmed, "error");
  add("padding", "\n" + trimmed, "error");
  const reversed = Object.fromEntries(Object.entries(p.json).reverse());
  add("padding", JSON.stringify(reversed, null, 2), "ok");
  return cases;
}

/** Random mutations of one file, drawn from `next`. */
function randomMutations(bytes: Uint8Array, p: Parsed, next: () => number): Case[] {
  const cases: Case[] = [];
  const headerEnd = 8 + p.length;
  const int = (n: number) => Math.floor(next() * n);
  const flip = (at: number, bit: number) => {
    const out = bytes.slice();
    out[at] ^= 1 << bit;
    return out;
  };
  // Bit flips in the data: still a valid file, same names, dtypes and shapes.
  if (bytes.length > headerEnd) {
    for (let i = 0; i < 150; i++) {
      cases.push({
        kind: "flip-data",
        bytes: flip(headerEnd + int(bytes.length - headerEnd), int(8)),
        expect: "ok",
      });
    }
  }
  // Bit flips in the length field and the header.
  for (let i = 0; i < 250; i++) {
    cases.push({ kind: "flip-header", bytes: flip(int(headerEnd), int(8)), expect: "any" });
  }
  // Random bytes in the header (structural characters and digits more often).
  const alphabet = '{}[]:,"0123456789-.eE \\ntu';
  for (let i = 0; i < 120; i++) {
    const out = bytes.slice();
    const at = 8 + int(p.length);
    out[at] = next() < 0.6 ? alphabet.charCodeAt(int(alphabet.length)) : int(256);
    cases.push({ kind: "byte-header", bytes: out, expect: "any" });
  }
  // Splices: a range of the header deleted or repeated, the length field updated.
  for (let i = 0; i < 60; i++) {
    const h = new TextEncoder().encode(p.header);
    const from = int(h.length);
    const to = Math.min(h.length, from + 1 + int(12));
    const spliced = next() < 0.5
      ? new Uint8Array([...h.subarray(0, from), ...h.subarray(to)])
      : new Uint8Array([...h.subarray(0, to), ...h.subarray(from)]);
    cases.push({ kind: "splice-header", bytes: assemble(spliced, p.data), expect: "any" });
  }
  return cases;
}

/** The file cut at every length: inside the length field, the header, and every tensor. */
function truncations(bytes: Uint8Array): Case[] {
  return Array.from({ length: bytes.length }, (_, n) => ({
    kind: "truncate",
    bytes: bytes.slice(0, n),
    expect: "error" as const,
  }));
}

// ---------------------------------------------------------------------------------------------
// Running one case

// A hang guard, not a time goal (a case takes milliseconds): generous, so that a loaded machine
// is not taken for a reader that loops.
const CASE_TIMEOUT_MS = 60_000;

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: no answer in ${CASE_TIMEOUT_MS} ms`)),
      CASE_TIMEOUT_MS,
    );
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

interface Loaded {
  metadata: Record<string, string>;
  tensors: Map<string, { dtype: Dtype; shape: number[]; data: ArrayBufferView; info: unknown }>;
}

/** Where the last `load` was: every problem these files have must be found by the open. */
let phase: "open" | "read" = "open";

/** Opens the file and reads every tensor, tracking allocations. */
async function load(path: string): Promise<Loaded> {
  tracking = true;
  phase = "open";
  try {
    const reader = await openSafetensors(path);
    phase = "read";
    try {
      const tensors: Loaded["tensors"] = new Map();
      for (const [name, info] of reader.tensors) {
        const t = await reader.read(name);
        tensors.set(name, { ...t, info });
      }
      return { metadata: reader.metadata, tensors };
    } finally {
      reader.close();
    }
  } finally {
    tracking = false;
  }
}

/** A tensor's data as the writer stores it (F16/BF16 given as float32 are rounded). */
function writtenBits(t: Tensors[string]): ArrayBufferView {
  if (t.data instanceof Float32Array && t.dtype === "F16") return f32ToF16Bits(t.data);
  if (t.data instanceof Float32Array && t.dtype === "BF16") return f32ToBf16Bits(t.data);
  return t.data;
}

function sameBytes(a: ArrayBufferView, b: Uint8Array): boolean {
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return x.length === b.length && x.every((v, i) => v === b[i]);
}

/** Checks one case; returns its outcome for the statistics. */
async function check(path: string, c: Case, label: string): Promise<"ok" | "error"> {
  await Deno.writeFile(path, c.bytes);
  const want = spec(c.bytes);
  if (c.expect !== "any") {
    assertEquals(
      want.ok ? "ok" : "error",
      c.expect,
      `${label}: the spec itself disagrees (${want.ok ? "" : want.why})`,
    );
  }
  largestAllocation = 0;
  let got: Loaded;
  try {
    got = await withTimeout(load(path), label);
  } catch (e) {
    assert(
      e instanceof SafetensorsError,
      `${label}: ${e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e)}`,
    );
    const m = e.message;
    assert(
      !/[\r\n\u2028\u2029]/.test(m),
      `${label}: message has a line break: ${JSON.stringify(m)}`,
    );
    assert(m.startsWith(`${path}: `), `${label}: message does not name the file: ${m}`);
    assert(m.length <= 400, `${label}: message of ${m.length} characters: ${m.slice(0, 500)}`);
    if (c.names !== undefined) {
      assert(
        m.includes(JSON.stringify(c.names)),
        `${label}: message does not name tensor ${JSON.stringify(c.names)}: ${m}`,
      );
    }
    assert(!want.ok, `${label}: a valid file was rejected: ${m}`);
    // The header is checked whole at open: nothing is read for a tensor of a bad file.
    assert(phase === "open", `${label}: the open succeeded and a read failed: ${m}`);
    if (c.kind === "truncate") {
      const hint = c.bytes.length < 8 ? /shorter than the 8-byte header length/ : /truncated/;
      assert(hint.test(m), `${label}: a cut file's error says nothing of it: ${m}`);
    }
    assert(
      largestAllocation <= c.bytes.length,
      `${label}: allocated ${largestAllocation} bytes for a ${c.bytes.length}-byte file`,
    );
    return "error";
  }
  assert(
    largestAllocation <= c.bytes.length,
    `${label}: allocated ${largestAllocation} bytes for a ${c.bytes.length}-byte file`,
  );
  assert(want.ok, `${label}: accepted a file the format rules reject (${!want.ok && want.why})`);
  assertEquals({ ...got.metadata }, want.metadata, `${label}: metadata`);
  assertEquals([...got.tensors.keys()].sort(), [...want.tensors.keys()].sort(), `${label}: names`);
  for (const [name, t] of got.tensors) {
    const w = want.tensors.get(name)!;
    assertEquals(t.dtype, w.dtype, `${label}: ${name} dtype`);
    assertEquals(t.shape, w.shape, `${label}: ${name} shape`);
    assertEquals(
      t.info,
      { name, dtype: w.dtype, shape: w.shape, byteLength: w.bytes.length },
      `${label}: ${name} info`,
    );
    assertEquals(t.data.constructor.name, ARRAY_OF[w.dtype], `${label}: ${name} array type`);
    assert(sameBytes(t.data, w.bytes), `${label}: ${name} bytes differ from the file's`);
  }
  return "ok";
}

// ---------------------------------------------------------------------------------------------

Deno.test("safetensors fuzz: mutated files give the valid tensors or a one-line SafetensorsError", async () => {
  const next = rng(0x5afe7e45);
  const dir = await Deno.makeTempDir({ prefix: "safetensors_fuzz_" });
  const restore = trackAllocations();
  const stats = new Map<string, { ok: number; error: number }>();
  const failures: string[] = [];
  let slowest = 0;
  try {
    const path = `${dir}/case.safetensors`;
    for (const base of baseFiles(next)) {
      const source = `${dir}/${base.name}.safetensors`;
      await writeSafetensors(source, base.tensors, base.meta);
      const bytes = await Deno.readFile(source);
      const p = parse(bytes);
      // The unmutated file holds the tensors as written, and reads back so.
      const original = spec(bytes);
      assert(original.ok, base.name);
      assertEquals(original.metadata, base.meta ?? {}, `${base.name}: metadata`);
      assertEquals([...original.tensors.keys()].sort(), Object.keys(base.tensors).sort());
      for (const [name, t] of Object.entries(base.tensors)) {
        const got = original.tensors.get(name)!;
        assertEquals([got.dtype, got.shape], [t.dtype, t.shape], `${base.name}: ${name}`);
        assert(sameBytes(writtenBits(t), got.bytes), `${base.name}: ${name} bytes`);
      }
      assertEquals(await check(path, { kind: "original", bytes, expect: "ok" }, base.name), "ok");
      // The tracking sees the reader's buffers (the header's, at least).
      assert(largestAllocation >= p.length, `${base.name}: allocations not tracked`);
      const cases = [
        ...truncations(bytes),
        ...headerEdits(p),
        ...randomMutations(bytes, p, next),
      ];
      for (const [i, c] of cases.entries()) {
        const started = performance.now();
        const s = stats.get(c.kind) ?? { ok: 0, error: 0 };
        stats.set(c.kind, s);
        try {
          s[await check(path, c, `${base.name} case ${i} (${c.kind})`)]++;
        } catch (e) {
          failures.push((e as Error).message.split("\n")[0]);
        }
        slowest = Math.max(slowest, performance.now() - started);
      }
    }
  } finally {
    restore();
    await Deno.remove(dir, { recursive: true });
  }
  const total = failures.length + [...stats.values()].reduce((n, s) => n + s.ok + s.error, 0);
  console.log(
    `safetensors fuzz: ${total} cases, slowest ${slowest.toFixed(1)} ms; ` +
      [...stats].map(([k, s]) => `${k} ${s.ok} ok / ${s.error} error`).join(", "),
  );
  assert(
    failures.length === 0,
    `${failures.length} cases failed:\n${failures.slice(0, 40).join("\n")}`,
  );
  assert(total >= 2000, `only ${total} cases`);
  // Every kind produced errors, and the kinds that can stay valid produced successes too.
  for (
    const kind of [
      "truncate",
      "offsets",
      "shape",
      "dtype",
      "length",
      "json",
      "metadata",
      "duplicate",
    ]
  ) {
    assert((stats.get(kind)?.error ?? 0) > 0, `no ${kind} case was rejected`);
  }
  assertEquals(stats.get("flip-data")?.error, 0);
  for (const kind of ["flip-data", "shape", "dtype", "metadata", "padding", "entry"]) {
    assert((stats.get(kind)?.ok ?? 0) > 0, `no ${kind} case was accepted`);
  }
});
