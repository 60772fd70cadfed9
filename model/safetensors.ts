/**
 * A small, strict reader and writer for Hugging Face safetensors files.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (optionally padded
 * with spaces), then the data buffer that every tensor's `data_offsets` are relative to.
 *
 * The reader trusts nothing in the header: every size it allocates is bounded by the real file
 * size, and tensors are read one at a time with seek + read so a multi-gigabyte checkpoint never
 * has to fit in memory at once.
 *
 * @module
 */

import {
  doneWithTemporary,
  isJsonObject,
  syncFolderOf,
  temporaryName,
  writeAll,
} from "./atomic_write.ts";
import { errorText, jsonErrorText } from "./error_text.ts";
import { readUtf8File } from "./utf8.ts";

/** The safetensors dtypes read and written here (the spec's F8, F6, F4 and C64 are refused). */
export type Dtype =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL";

/**
 * Tensor storage as returned by `read()`. F16 and BF16 come back as their raw bits in a
 * Uint16Array (so a read tensor can be written back unchanged); use `readF32()` for values.
 */
export type TensorData =
  | Float64Array
  | Float32Array
  | Float16Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint32Array
  | Uint16Array
  | Uint8Array;

/** One tensor's header entry, known before its data is read. */
export interface TensorInfo {
  /** The tensor's key in the file. */
  name: string;
  /** The stored dtype. */
  dtype: Dtype;
  /** Sizes of each dimension, outermost first ([] for a scalar). */
  shape: number[];
  /** Bytes of its data in the file. */
  byteLength: number;
}

/** A tensor read from a file: its dtype, shape and data (a fresh copy the caller owns). */
export interface LoadedTensor {
  /** The stored dtype. */
  dtype: Dtype;
  /** Sizes of each dimension, outermost first. */
  shape: number[];
  /** The elements, row-major; F16 and BF16 as raw bits (see TensorData). */
  data: TensorData;
}

/**
 * An open checkpoint (`openSafetensors`): the header is parsed, data is read one tensor at a
 * time on demand. close() releases the file handles; reads after it reject.
 */
export interface SafetensorsReader {
  /** The path that was opened (a .safetensors file or an index file). */
  path: string;
  /** Every file the tensors are read from: `path`, and an index file's shards after it. */
  readonly files: readonly string[];
  /** The header's `__metadata__` strings (an index file's `metadata`, values as strings). */
  metadata: Record<string, string>;
  /** Every tensor's header entry by name, across all shards of an index. */
  tensors: Map<string, TensorInfo>;
  /** The file that holds tensor `name`: `path`, or for an index the shard (`path` if none). */
  fileOf(name: string): string;
  /** Reads one tensor in its stored dtype; rejects with a SafetensorsError for an unknown name. */
  read(name: string): Promise<LoadedTensor>;
  /** Reads any dtype as float32 (F16/BF16 widened exactly, 64-bit integers rounded). */
  readF32(name: string): Promise<Float32Array>;
  /** Closes the file (every shard's); a second call does nothing. */
  close(): void;
}

/** Every problem with a file is reported as one line: `<file>: <problem>`. */
export class SafetensorsError extends Error {
  /** The message is `<file>: <problem>`, line breaks replaced by spaces. */
  constructor(file: string, problem: string) {
    // Names and JSON snippets come from untrusted input; keep the message on one line.
    super(`${file}: ${problem}`.replace(/[\r\n\u2028\u2029]+/g, " "));
    this.name = "SafetensorsError";
  }
}

const ITEM_SIZE: Record<Dtype, number> = {
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

// Dtypes the safetensors spec defines but this project has no use for.
const UNSUPPORTED_DTYPES = new Set([
  "F8_E4M3",
  "F8_E5M2",
  "F8_E8M0",
  "F6_E2M3",
  "F6_E3M2",
  "F4",
  "C64",
]);

/** Hugging Face's own limit; also keeps a lying header from costing more than 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";
const ENTRY_FIELDS = ["dtype", "shape", "data_offsets"];

function isDtype(s: string): s is Dtype {
  return Object.hasOwn(ITEM_SIZE, s);
}

function assertLittleEndian(): void {
  // Typed arrays use host byte order and safetensors is little-endian; we never byte-swap.
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    throw new Error("safetensors.ts: big-endian hosts are not supported");
  }
}

/** Quotes an untrusted string for an error message, capped so a giant name stays readable. */
function q(s: string): string {
  const quoted = JSON.stringify(s);
  return quoted.length > 200 ? `${quoted.slice(0, 200)}..."` : quoted;
}

/** A shape for an error message; a shape of many dimensions is shortened. */
function fmtShape(shape: number[]): string {
  if (shape.length <= 16) return `[${shape.join(", ")}]`;
  return `[${shape.slice(0, 8).join(", ")}, ... (${shape.length} dimensions)]`;
}

/** An untrusted JSON value for an error message, capped (a header can hold megabytes). */
function snippet(v: unknown): string {
  const text = JSON.stringify(v);
  return text.length > 100 ? `${text.slice(0, 100)}...` : text;
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** JSON's `-0` is a valid way to write 0; give it back as 0. */
function plusZero(v: number): number {
  return v === 0 ? 0 : v;
}

/** Element count as a bigint so that absurd shapes cannot overflow into a plausible number. */
function elementCount(shape: number[]): bigint {
  return shape.reduce((n, d) => n * BigInt(d), 1n);
}

// ---------------------------------------------------------------------------------------------
// Reading one file

interface Entry extends TensorInfo {
  /** Absolute byte position of the tensor in the file. */
  offset: number;
}

/** Validates the parsed header and returns the tensors in file order. */
function parseHeader(
  file: string,
  header: unknown,
  dataStart: number,
  dataLength: number,
): { metadata: Record<string, string>; entries: Entry[] } {
  const fail = (problem: string) => new SafetensorsError(file, problem);
  if (!isJsonObject(header)) throw fail("header is not a JSON object");

  let metadata: Record<string, string> = {};
  const spans: { name: string; begin: number; end: number; info: TensorInfo }[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (!isJsonObject(value)) throw fail("__metadata__ is not an object of strings");
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== "string") throw fail(`__metadata__ value for ${q(k)} is not a string`);
      }
      // fromEntries defines each key, so even "__proto__" stays an ordinary key.
      metadata = Object.fromEntries(Object.entries(value)) as Record<string, string>;
      continue;
    }
    const where = `tensor ${q(name)}`;
    if (name === "") throw fail("tensor with an empty name");
    if (!isJsonObject(value)) throw fail(`${where}: entry is not an object`);
    for (const field of ENTRY_FIELDS) {
      if (!Object.hasOwn(value, field)) throw fail(`${where}: missing field ${q(field)}`);
    }
    for (const field of Object.keys(value)) {
      if (!ENTRY_FIELDS.includes(field)) throw fail(`${where}: unexpected field ${q(field)}`);
    }

    const { dtype, shape: rawShape, data_offsets: offsets } = value;
    if (typeof dtype !== "string") throw fail(`${where}: dtype is not a string`);
    if (!isDtype(dtype)) {
      const kind = UNSUPPORTED_DTYPES.has(dtype) ? "unsupported" : "unknown";
      throw fail(`${where}: ${kind} dtype ${q(dtype)}`);
    }
    if (!Array.isArray(rawShape) || !rawShape.every(isCount)) {
      throw fail(`${where}: shape ${snippet(rawShape)} is not a list of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      throw fail(`${where}: data_offsets ${snippet(offsets)} is not two non-negative integers`);
    }
    const shape = rawShape.map(plusZero);
    const [begin, end] = offsets.map(plusZero);
    if (begin > end) throw fail(`${where}: data_offsets [${begin}, ${end}] has begin > end`);
    const needed = elementCount(shape) * BigInt(ITEM_SIZE[dtype]);
    if (BigInt(end - begin) !== needed) {
      throw fail(
        `${where}: data_offsets [${begin}, ${end}] span ${end - begin} bytes but shape ` +
          `${fmtShape(shape)} of ${dtype} needs ${needed}`,
      );
    }
    spans.push({ name, begin, end, info: { name, dtype, shape, byteLength: end - begin } });
  }

  // Report a short file as such before it can show up as some other layout problem.
  for (const { name, begin, end } of spans) {
    if (end > dataLength) {
      throw fail(
        `tensor ${q(name)}: data_offsets [${begin}, ${end}] extend past the end of the data ` +
          `(${dataLength} bytes; file truncated?)`,
      );
    }
  }

  // Same rule as Hugging Face: sorted by offset, the tensors must tile the data exactly.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  let previous = "";
  for (const { name, begin, end } of spans) {
    if (begin < expected) {
      throw fail(
        `tensor ${q(name)}: data_offsets [${begin}, ${end}] overlap tensor ${q(previous)} ` +
          `(which ends at ${expected})`,
      );
    }
    if (begin > expected) {
      throw fail(
        `gap in data: bytes [${expected}, ${begin}) before tensor ${q(name)} belong to no tensor`,
      );
    }
    expected = end;
    previous = name;
  }
  if (expected !== dataLength) {
    throw fail(`${dataLength - expected} trailing bytes after the last tensor in the data`);
  }

  const entries = spans.map(({ begin, info }) => ({ ...info, offset: dataStart + begin }));
  return { metadata, entries };
}

const isJsonSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/**
 * A key that one object of the header names twice, described, or undefined. JSON.parse keeps the
 * last of two equal keys silently, so a header could otherwise say two things about one tensor.
 * `text` is valid JSON (it parsed), which lets this scan only for strings and brackets.
 */
function repeatedKey(text: string): string | undefined {
  const r = firstRepeatedKey(text);
  if (!r) return undefined;
  const name = (key: string) => (key === METADATA_KEY ? METADATA_KEY : `tensor ${q(key)}`);
  return r.outer === null
    ? `${name(r.key)} appears twice in the header`
    : `${name(r.outer)}: key ${q(r.key)} appears twice`;
}

/**
 * The first key an object of `text` (valid JSON) names twice: `outer` is the top-level key it
 * sits under (null for a top-level key).
 */
function firstRepeatedKey(text: string): { outer: string | null; key: string } | undefined {
  const objects: (Set<string> | null)[] = []; // null for an array
  let tensor = "";
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b) objects.push(new Set());
    else if (c === 0x5b) objects.push(null);
    else if (c === 0x7d || c === 0x5d) objects.pop();
    else if (c === 0x22) {
      let end = i + 1;
      let escaped = false;
      for (; text.charCodeAt(end) !== 0x22; end++) {
        if (text.charCodeAt(end) === 0x5c) {
          end++; // the escaped character, which may be a quote
          escaped = true;
        }
      }
      let after = end + 1;
      while (isJsonSpace(text.charCodeAt(after))) after++;
      const keys = objects[objects.length - 1];
      if (keys && text.charCodeAt(after) === 0x3a) {
        const key: string = escaped ? JSON.parse(text.slice(i, end + 1)) : text.slice(i + 1, end);
        if (objects.length === 1) tensor = key;
        if (keys.has(key)) return { outer: objects.length === 1 ? null : tensor, key };
        keys.add(key);
      }
      i = end;
    }
  }
  return undefined;
}

async function readFully(
  file: Deno.FsFile,
  buf: Uint8Array,
  path: string,
  what: string,
): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    // The file may have shrunk since it was opened; fail rather than loop forever.
    if (n === null || n === 0) {
      throw new SafetensorsError(path, `unexpected end of file while reading ${what}`);
    }
    done += n;
  }
}

function typedView(dtype: Dtype, buffer: ArrayBuffer): TensorData {
  switch (dtype) {
    case "F64":
      return new Float64Array(buffer);
    case "F32":
      return new Float32Array(buffer);
    case "F16":
    case "BF16":
    case "U16":
      return new Uint16Array(buffer);
    case "I64":
      return new BigInt64Array(buffer);
    case "U64":
      return new BigUint64Array(buffer);
    case "I32":
      return new Int32Array(buffer);
    case "U32":
      return new Uint32Array(buffer);
    case "I16":
      return new Int16Array(buffer);
    case "I8":
      return new Int8Array(buffer);
    case "U8":
    case "BOOL":
      return new Uint8Array(buffer);
  }
}

function toF32(tensor: LoadedTensor): Float32Array {
  const { dtype, data } = tensor;
  if (dtype === "F32") return data as Float32Array;
  if (dtype === "F16") {
    return new Float32Array(new Float16Array(data.buffer, data.byteOffset, data.length));
  }
  if (dtype === "BF16") {
    // bf16 is the top half of an f32, so widening is exact.
    const bits = new Uint32Array(data.length);
    for (let i = 0; i < data.length; i++) bits[i] = (data as Uint16Array)[i] << 16;
    return new Float32Array(bits.buffer);
  }
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
    return Float32Array.from(data, (v) => Number(v));
  }
  return Float32Array.from(data as ArrayLike<number>);
}

class FileReader implements SafetensorsReader {
  tensors: Map<string, TensorInfo>;
  get files(): readonly string[] {
    return [this.path];
  }
  fileOf(_name: string): string {
    return this.path;
  }
  #entries: Map<string, Entry>;
  #file: Deno.FsFile | null;
  // seek + read is not atomic, so reads on the shared handle are queued one after another.
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    public path: string,
    file: Deno.FsFile,
    public metadata: Record<string, string>,
    entries: Entry[],
  ) {
    this.#file = file;
    this.#entries = new Map(entries.map((e) => [e.name, e]));
    this.tensors = new Map(
      entries.map(({ name, dtype, shape, byteLength }) => [
        name,
        { name, dtype, shape, byteLength },
      ]),
    );
  }

  read(name: string): Promise<LoadedTensor> {
    const entry = this.#entries.get(name);
    if (!entry) {
      return Promise.reject(new SafetensorsError(this.path, `no tensor named ${q(name)}`));
    }
    const result = this.#queue.then(async () => {
      const file = this.#file;
      if (!file) throw new SafetensorsError(this.path, "reader is closed");
      const buffer = new ArrayBuffer(entry.byteLength);
      await file.seek(entry.offset, Deno.SeekMode.Start);
      await readFully(file, new Uint8Array(buffer), this.path, `tensor ${q(name)}`);
      return { dtype: entry.dtype, shape: [...entry.shape], data: typedView(entry.dtype, buffer) };
    });
    this.#queue = result.catch(() => {});
    return result;
  }

  async readF32(name: string): Promise<Float32Array> {
    return toF32(await this.read(name));
  }

  close(): void {
    this.#file?.close();
    this.#file = null;
  }
}

async function openFile(path: string): Promise<FileReader> {
  const fail = (problem: string) => new SafetensorsError(path, problem);
  let file: Deno.FsFile;
  try {
    // A FIFO or device could block forever on open or read; only regular files are accepted.
    if (!(await Deno.stat(path)).isFile) throw new Error("not a regular file");
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw fail(`cannot open: ${errorText(e)}`);
  }
  try {
    const fileSize = (await file.stat()).size;
    if (fileSize < 8) {
      throw fail(`file is ${fileSize} bytes, shorter than the 8-byte header length`);
    }
    const lengthBytes = new Uint8Array(8);
    await readFully(file, lengthBytes, path, "the header length");
    const declared = new DataView(lengthBytes.buffer).getBigUint64(0, true);
    // A repository cloned without git-lfs holds a small text file in each weights file's place
    // ("version https://git-lfs.github.com/spec/v1", its oid and size): its first bytes would
    // be read as a header length of 2.3e18.
    if (new TextDecoder().decode(lengthBytes) === "version ") {
      throw fail(
        "is a Git LFS pointer, not the weights (the repository was cloned without git-lfs): " +
          "run `git lfs pull` in its folder",
      );
    }
    if (declared > BigInt(MAX_HEADER_BYTES)) {
      throw fail(`header length ${declared} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    }
    const headerLength = Number(declared);
    if (headerLength > fileSize - 8) {
      throw fail(
        `header length ${headerLength} exceeds the ${fileSize - 8} bytes after it ` +
          `(file truncated?)`,
      );
    }
    const headerBytes = new Uint8Array(headerLength);
    await readFully(file, headerBytes, path, "the header");
    if (headerBytes[0] !== 0x7b) throw fail("header does not start with '{'");
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
    } catch {
      throw fail("header is not valid UTF-8");
    }
    let header: unknown;
    try {
      // Trailing space padding is JSON whitespace, so it needs no special handling.
      header = JSON.parse(text);
    } catch (e) {
      throw fail(`header is not valid JSON (${jsonErrorText(e, text)})`);
    }
    const repeated = repeatedKey(text);
    if (repeated) throw fail(repeated);
    const dataStart = 8 + headerLength;
    const { metadata, entries } = parseHeader(path, header, dataStart, fileSize - dataStart);
    return new FileReader(path, file, metadata, entries);
  } catch (e) {
    file.close();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

const INDEX_FILE = "model.safetensors.index.json";
const SINGLE_FILE = "model.safetensors";

function dirname(path: string): string {
  const i = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  if (i < 0) return ".";
  return i === 0 ? path.slice(0, 1) : path.slice(0, i);
}

function basename(path: string): string {
  return path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1);
}

function joinPath(dir: string, name: string): string {
  return /[\\/]$/.test(dir) ? dir + name : `${dir}/${name}`;
}

/** A shard must live next to its index: no separators, no `..`, nothing absolute. */
function isPlainFileName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !/[\\/:\0]/.test(name);
}

class ShardedReader implements SafetensorsReader {
  tensors = new Map<string, TensorInfo>();
  get files(): readonly string[] {
    const shards = new Set([...this.shardOf.values()].map((shard) => shard.path));
    return [this.path, ...[...shards].sort()];
  }
  fileOf(name: string): string {
    return this.shardOf.get(name)?.path ?? this.path;
  }

  constructor(
    public path: string,
    public metadata: Record<string, string>,
    private shardOf: Map<string, FileReader>,
  ) {
    for (const [name, shard] of shardOf) this.tensors.set(name, shard.tensors.get(name)!);
  }

  read(name: string): Promise<LoadedTensor> {
    const shard = this.shardOf.get(name);
    if (!shard) {
      return Promise.reject(new SafetensorsError(this.path, `no tensor named ${q(name)}`));
    }
    return shard.read(name);
  }

  async readF32(name: string): Promise<Float32Array> {
    return toF32(await this.read(name));
  }

  close(): void {
    for (const shard of new Set(this.shardOf.values())) shard.close();
  }
}

async function openIndex(path: string): Promise<ShardedReader> {
  const fail = (problem: string) => new SafetensorsError(path, problem);
  let text: string;
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) throw new Error("not a regular file");
    if (info.size > MAX_HEADER_BYTES) throw new Error(`larger than ${MAX_HEADER_BYTES} bytes`);
    text = await readUtf8File(path);
  } catch (e) {
    throw fail(`cannot read index: ${errorText(e)}`);
  }
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw fail(`index is not valid JSON (${jsonErrorText(e, text)})`);
  }
  if (!isJsonObject(index)) throw fail("index is not a JSON object");
  // JSON.parse keeps the last of two equal keys: a tensor mapped twice would silently take one.
  const repeated = firstRepeatedKey(text);
  if (repeated) {
    throw fail(
      repeated.outer === "weight_map"
        ? `weight_map names tensor ${q(repeated.key)} twice`
        : `index: key ${q(repeated.key)} appears twice${
          repeated.outer === null ? "" : ` in ${q(repeated.outer)}`
        }`,
    );
  }
  const { metadata: rawMetadata = {}, weight_map: weightMap } = index;
  if (!isJsonObject(rawMetadata)) throw fail("index metadata is not an object");
  if (!isJsonObject(weightMap)) {
    // Any .json is read as a sharded index: config.json or tokenizer.json given by mistake.
    throw fail(
      "index has no weight_map object: a .json file is read as a sharded checkpoint's index " +
        "(model.safetensors.index.json); give the .safetensors file or the model's folder",
    );
  }

  // Index metadata holds numbers such as total_size; the reader exposes everything as strings.
  const metadata: Record<string, string> = Object.fromEntries(
    Object.entries(rawMetadata).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
  );

  const files = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string") throw fail(`weight_map[${q(name)}] is not a string`);
    if (!isPlainFileName(shard)) {
      throw fail(
        `weight_map[${q(name)}]: shard ${q(shard)} is not a plain file name in the same directory`,
      );
    }
    files.set(shard, [...(files.get(shard) ?? []), name]);
  }

  // Shards are opened up front (headers only) so a broken checkpoint fails at open, not mid-run.
  const dir = dirname(path);
  const opened: FileReader[] = [];
  try {
    const shardOf = new Map<string, FileReader>();
    for (const [shard, names] of files) {
      let reader: FileReader;
      try {
        reader = await openFile(joinPath(dir, shard));
      } catch (e) {
        throw fail(`shard ${q(shard)}: ${errorText(e)}`);
      }
      opened.push(reader);
      for (const name of names) {
        if (!reader.tensors.has(name)) {
          throw fail(`tensor ${q(name)} not found in shard ${q(shard)}`);
        }
        shardOf.set(name, reader);
      }
    }
    // A tensor stored in two shards: the index names one copy, but a loader that reads every
    // shard whole (transformers does) takes the last it reads: one folder, two models. One the
    // index leaves out is read from its shard, as such a loader reads it (it was "missing").
    const unlisted = new Map<string, FileReader>();
    for (const reader of opened) {
      for (const name of reader.tensors.keys()) {
        const listed = shardOf.get(name);
        const named = listed ?? unlisted.get(name);
        if (!named) unlisted.set(name, reader);
        else if (named !== reader) {
          throw fail(
            `tensor ${q(name)} is in shard ${q(basename(reader.path))} and in ` +
              `${q(basename(named.path))}, ${
                listed ? "which the index names" : "neither named by the index"
              }: which copy is the model's is ambiguous (keep it in one shard)`,
          );
        }
      }
    }
    for (const [name, reader] of unlisted) shardOf.set(name, reader);
    return new ShardedReader(path, metadata, shardOf);
  } catch (e) {
    for (const reader of opened) reader.close();
    throw e;
  }
}

/**
 * Opens a `.safetensors` file, a `model.safetensors.index.json`, or a directory holding
 * `model.safetensors` or `model.safetensors.index.json` (the single file wins when both are
 * there, as in transformers and model/checkpoint.ts's findWeightsFile). Only the 8-byte length
 * and the header are read here; tensor data is read on demand.
 */
export async function openSafetensors(path: string): Promise<SafetensorsReader> {
  assertLittleEndian();
  let isDirectory = false;
  try {
    isDirectory = (await Deno.stat(path)).isDirectory;
  } catch (e) {
    throw new SafetensorsError(path, `cannot open: ${errorText(e)}`);
  }
  if (!isDirectory) return path.endsWith(".json") ? openIndex(path) : openFile(path);

  for (const [name, open] of [[SINGLE_FILE, openFile], [INDEX_FILE, openIndex]] as const) {
    const candidate = joinPath(path, name);
    try {
      if (!(await Deno.stat(candidate)).isFile) continue;
    } catch {
      continue;
    }
    return open(candidate);
  }
  throw new SafetensorsError(path, `directory holds neither ${SINGLE_FILE} nor ${INDEX_FILE}`);
}

// ---------------------------------------------------------------------------------------------
// Writing

/** What the writer accepts per dtype. F16/BF16 also take float32 values, rounded to nearest even. */
export interface TensorInput {
  /** The dtype to store. */
  dtype: Dtype;
  /** Sizes of each dimension; their product must equal `data.length`. */
  shape: number[];
  /** The elements, row-major, in the array type `dtype` takes (see above). */
  data: TensorData;
}

function acceptsData(dtype: Dtype, data: TensorData): boolean {
  switch (dtype) {
    case "F64":
      return data instanceof Float64Array;
    case "F32":
      return data instanceof Float32Array;
    case "F16":
      return data instanceof Float32Array || data instanceof Float16Array ||
        data instanceof Uint16Array;
    case "BF16":
      return data instanceof Float32Array || data instanceof Uint16Array;
    case "I64":
      return data instanceof BigInt64Array;
    case "U64":
      return data instanceof BigUint64Array;
    case "I32":
      return data instanceof Int32Array;
    case "U32":
      return data instanceof Uint32Array;
    case "I16":
      return data instanceof Int16Array;
    case "U16":
      return data instanceof Uint16Array;
    case "I8":
      return data instanceof Int8Array;
    case "U8":
    case "BOOL":
      return data instanceof Uint8Array;
  }
}

/** float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN of the same sign. */
export function f32ToBf16Bits(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) {
      // Plain rounding could carry a NaN's payload into infinity; force a quiet NaN instead.
      out[i] = (b >>> 16) | 0x0040;
    } else {
      out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

/** float32 -> float16 bits; Float16Array conversion is IEEE round-to-nearest-even. */
export function f32ToF16Bits(values: Float32Array): Uint16Array {
  return new Uint16Array(new Float16Array(values).buffer);
}

/** The bytes that go into the file for one tensor. */
function tensorBytes(t: TensorInput): Uint8Array {
  let data = t.data;
  if (t.dtype === "F16" && data instanceof Float32Array) data = f32ToF16Bits(data);
  if (t.dtype === "BF16" && data instanceof Float32Array) data = f32ToBf16Bits(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function validateInput(
  path: string,
  tensors: Record<string, TensorInput>,
  metadata: Record<string, string> | undefined,
  // False: names, dtypes and shapes only (writeSafetensorsStreamed's, before the data comes).
  checkData = true,
): void {
  const fail = (problem: string) => new SafetensorsError(path, problem);
  if (metadata !== undefined) {
    if (!isJsonObject(metadata)) throw fail("metadata is not an object of strings");
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw fail(`metadata value for ${q(k)} is not a string`);
    }
  }
  for (const [name, t] of Object.entries(tensors)) {
    const where = `tensor ${q(name)}`;
    if (name === "") throw fail("tensor with an empty name");
    if (name === METADATA_KEY) throw fail(`${q(METADATA_KEY)} is reserved, not a tensor name`);
    if (!isJsonObject(t)) throw fail(`${where}: not a {dtype, shape, data} object`);
    if (typeof t.dtype !== "string" || !isDtype(t.dtype)) {
      throw fail(`${where}: unknown dtype ${q(String(t.dtype))}`);
    }
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) {
      throw fail(
        `${where}: shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`,
      );
    }
    if (!checkData) continue;
    if (!ArrayBuffer.isView(t.data) || !acceptsData(t.dtype, t.data)) {
      const got = ArrayBuffer.isView(t.data) ? t.data.constructor.name : typeof t.data;
      throw fail(`${where}: ${got} is not valid data for dtype ${t.dtype}`);
    }
    const count = elementCount(t.shape);
    if (BigInt(t.data.length) !== count) {
      throw fail(
        `${where}: data has ${t.data.length} elements but shape ${
          fmtShape(t.shape)
        } needs ${count}`,
      );
    }
    if (t.dtype === "BOOL" && (t.data as Uint8Array).some((v) => v > 1)) {
      throw fail(`${where}: BOOL data must be 0 or 1`);
    }
  }
}

/**
 * Hugging Face's `Dtype` enum order (increasing alignment). Its writer lays tensors out by this
 * rank, largest first, then by name, so every tensor starts aligned to its item size (the data
 * begins 8-aligned); we do the same, so our files match its own byte for byte.
 */
const HF_DTYPE_RANK: Record<Dtype, number> = {
  BOOL: 0,
  U8: 1,
  I8: 2,
  I16: 5,
  U16: 6,
  F16: 7,
  BF16: 8,
  I32: 9,
  U32: 10,
  F32: 11,
  F64: 12,
  I64: 13,
  U64: 14,
};

/**
 * Writes a safetensors file that Hugging Face's `safetensors` reads: `__metadata__` first (only
 * when given), then the tensors in Hugging Face's order (largest dtype alignment first, then
 * sorted by name; plain sorted keys when all share one dtype), their data contiguous in that same
 * order, and the header padded with spaces to a multiple of 8. The file is written to a temporary name in the
 * same directory, synced, then renamed over `path`, so readers never see a partial file and a
 * failed write leaves any existing file untouched.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  assertLittleEndian();
  validateInput(path, tensors, metadata);
  const names = fileOrder(tensors);
  const head = headerBytes(tensors, names, metadata);
  await writeFileAtomically(path, async (file) => {
    await writeAll(file, head);
    // One tensor at a time: only a single converted F16/BF16 copy is ever alive.
    for (const name of names) await writeAll(file, tensorBytes(tensors[name]));
  });
}

/**
 * writeSafetensors for data that comes one tensor at a time (a GPU download each), so that only
 * one tensor's data is held at once: `specs` gives each tensor's dtype and shape, `data(name)` is
 * called once per tensor, in the file's order, and `metadata()` after the last (it may depend on
 * the data: their hashes). The header is laid out first with `reserve`, the metadata's stand-in
 * (the same keys, values of the same lengths), and written again at the end; a final metadata
 * whose header would be longer is an error. With a final header as long as the stand-in's, the
 * file is byte for byte writeSafetensors' of the same tensors and metadata.
 */
export async function writeSafetensorsStreamed(
  path: string,
  specs: Record<string, { dtype: Dtype; shape: number[] }>,
  data: (name: string) => Promise<TensorData>,
  reserve: Record<string, string>,
  metadata: () => Record<string, string>,
): Promise<void> {
  assertLittleEndian();
  // Checked as writeSafetensors checks them, with stand-in data of the right kind and length.
  const standIn = Object.fromEntries(
    Object.entries(specs).map(([name, t]) => [name, { ...t, data: new Uint8Array(0) }]),
  );
  validateInput(path, standIn, reserve, false);
  const names = fileOrder(standIn);
  const reserved = headerBytes(standIn, names, reserve);
  await writeFileAtomically(path, async (file) => {
    await writeAll(file, reserved);
    for (const name of names) {
      let values: TensorData;
      try {
        values = await data(name);
      } catch (e) {
        // The data's own failure (a GPU lost or out of memory mid-download), not the file's:
        // passed on as it is, not as a failed write.
        throw new NotTheWrite(e);
      }
      const t = { ...specs[name], data: values };
      validateInput(path, { [name]: t }, undefined);
      await writeAll(file, tensorBytes(t));
    }
    const final = metadata();
    validateInput(path, {}, final);
    const head = headerBytes(standIn, names, final, reserved.length - 8);
    await file.seek(0, Deno.SeekMode.Start);
    await writeAll(file, head);
  });
}

/** The tensors' order in a file: Hugging Face's (largest dtype alignment first, then by name). */
export function fileOrder(tensors: Record<string, { dtype: Dtype }>): string[] {
  return Object.keys(tensors).sort((a, b) =>
    HF_DTYPE_RANK[tensors[b].dtype] - HF_DTYPE_RANK[tensors[a].dtype] ||
    (a < b ? -1 : a > b ? 1 : 0)
  );
}

/**
 * The 8-byte length and the JSON header, padded with spaces to a multiple of 8 bytes, or to
 * `length` (a header written in a stand-in's place; an error when it does not fit).
 */
function headerBytes(
  tensors: Record<string, { dtype: Dtype; shape: number[] }>,
  names: readonly string[],
  metadata: Record<string, string> | undefined,
  length?: number,
): Uint8Array {
  // The JSON is assembled by hand: a JS object would move integer-like keys such as "0" first.
  const parts: string[] = [];
  if (metadata !== undefined) {
    const fields = Object.keys(metadata).sort().map((k) =>
      `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`
    );
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${fields.join(",")}}`);
  }
  let offset = 0;
  for (const name of names) {
    const { dtype, shape } = tensors[name];
    const size = Number(elementCount(shape)) * ITEM_SIZE[dtype];
    const entry = { dtype, shape, data_offsets: [offset, offset + size] };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    offset += size;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const headerLength = length ?? Math.ceil(json.length / 8) * 8;
  if (json.length > headerLength) {
    throw new Error(
      `the header (${json.length} bytes) is longer than the ${headerLength} laid out for it`,
    );
  }
  const head = new Uint8Array(8 + headerLength).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerLength), true);
  head.set(json, 8);
  return head;
}

/** An error of what feeds a write, carried through writeFileAtomically unchanged. */
class NotTheWrite extends Error {
  constructor(override readonly cause: unknown) {
    super("not the write's");
  }
}

/**
 * Writes `path` through `write` into a temporary file in the same folder, synced, then renamed
 * over `path`, so that readers never see a partial file and a failed write leaves any existing
 * file untouched.
 */
async function writeFileAtomically(
  path: string,
  write: (file: Deno.FsFile) => Promise<void>,
): Promise<void> {
  const tmp = temporaryName(path);
  let file: Deno.FsFile | null = null;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    await write(file);
    await file.sync();
    file.close();
    file = null;
    await Deno.rename(tmp, path);
  } catch (e) {
    file?.close();
    await Deno.remove(tmp).catch(() => {});
    if (e instanceof SafetensorsError) throw e;
    if (e instanceof NotTheWrite) throw e.cause;
    throw new SafetensorsError(path, `write failed: ${errorText(e)}`);
  } finally {
    doneWithTemporary(tmp);
  }
  await syncFolderOf(path);
}
