// A tensor is a GPU buffer (or a slice of one), a shape and a dtype. Nothing more: views,
// strides and broadcasting belong to the kernels that need them.

import { type Gpu, GpuError, submitting } from "./device.ts";

/** Element types: 32-bit float, 16-bit float (needs shader-f16), signed and unsigned 32-bit int. */
export type DType = "f32" | "f16" | "i32" | "u32";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, i32: 4, u32: 4 };

/** The host-side array of each dtype. */
export type HostArray = Float32Array | Float16Array | Int32Array | Uint32Array;

/** The largest staging buffer a download uses (bytes; a multiple of 4, as copies need). */
export const DOWNLOAD_CHUNK = 64 * 1024 * 1024;

const HOST_ARRAY = {
  f32: Float32Array,
  f16: Float16Array,
  i32: Int32Array,
  u32: Uint32Array,
} as const;

/**
 * The dtype a host array holds; another kind of data (a Float64Array, a plain array: JavaScript
 * callers are not type-checked) is an error naming it, not read as u32.
 */
export function dtypeOf(data: HostArray): DType {
  if (data instanceof Float32Array) return "f32";
  if (data instanceof Float16Array) return "f16";
  if (data instanceof Int32Array) return "i32";
  if (data instanceof Uint32Array) return "u32";
  const kind = (data as unknown as { constructor?: { name?: string } })?.constructor?.name ??
    typeof data;
  throw new GpuError(
    `host data must be a Float32Array, Float16Array, Int32Array or Uint32Array, not ${kind}`,
  );
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(label: string, shape: readonly number[]): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new GpuError(`tensor "${label}": bad shape [${shape.join(", ")}]`);
    }
  }
}

/** WebGPU copies and bindings work in 4-byte words, so f16 tensors round up to whole words. */
function roundUp4(bytes: number): number {
  return Math.max(4, Math.ceil(bytes / 4) * 4);
}

/** Read lazily: importing the library must work where WebGPU globals are absent. */
export function tensorUsage(): number {
  return GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
}

/** Buffers whose tensor (or a view of it) was destroyed: a later upload or download says so. */
const destroyedBuffers = new WeakSet<GPUBuffer>();

/**
 * Whether `buffer` belongs to a tensor that was destroyed: a Recorder refuses to bind it, since
 * WebGPU would say so only at the submit, without naming the tensor.
 */
export function wasDestroyed(buffer: GPUBuffer): boolean {
  return destroyedBuffers.has(buffer);
}

/**
 * A GPU buffer (or a slice of one), a shape and a dtype, elements dense and row-major.
 * Make one with createTensor or tensorFromArray; destroy() frees the buffer.
 */
export class Tensor {
  /** The device the buffer lives on. */
  readonly gpu: Gpu;
  /** The buffer holding the elements; views share their parent's. */
  readonly buffer: GPUBuffer;
  /** Byte offset of element 0 inside `buffer`. */
  readonly offset: number;
  /** Sizes of each dimension, outermost first. */
  readonly shape: readonly number[];
  /** The element type. */
  readonly dtype: DType;
  /** A name for error messages and GPU debugging labels. */
  readonly label: string;

  /**
   * Wraps part of an existing buffer (takes no copy); throws a GpuError if `offset` is not
   * 4-aligned or the elements overrun the buffer. Most callers want createTensor.
   */
  constructor(
    gpu: Gpu,
    buffer: GPUBuffer,
    shape: readonly number[],
    dtype: DType,
    label: string,
    offset = 0,
  ) {
    checkShape(label, shape);
    if (offset % 4 !== 0) {
      throw new GpuError(`tensor "${label}": offset ${offset} is not 4-aligned`);
    }
    if (offset + roundUp4(numelOf(shape) * DTYPE_BYTES[dtype]) > buffer.size) {
      throw new GpuError(`tensor "${label}": [${shape.join(", ")}] ${dtype} overruns its buffer`);
    }
    this.gpu = gpu;
    this.buffer = buffer;
    this.shape = shape;
    this.dtype = dtype;
    this.label = label;
    this.offset = offset;
  }

  /** Number of elements: the product of the shape. */
  get numel(): number {
    return numelOf(this.shape);
  }

  /** Bytes the elements occupy. */
  get byteLength(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }

  /** Bytes to bind or copy: the element bytes rounded up to whole 4-byte words. */
  get bindingSize(): number {
    return roundUp4(this.byteLength);
  }

  /**
   * Writes host data into the tensor (queued; ordered before later submits). A submit not yet
   * awaited may not have reached the queue: await it before uploading into a tensor its
   * commands read, or they may read the new data.
   */
  upload(data: HostArray): void {
    this.assertNotDestroyed("upload to");
    if (data.length !== this.numel || dtypeOf(data) !== this.dtype) {
      throw new GpuError(
        `tensor "${this.label}": cannot upload ${data.length} ${dtypeOf(data)} values into ` +
          `[${this.shape.join(", ")}] ${this.dtype}`,
      );
    }
    let bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(this.bindingSize);
      padded.set(bytes);
      bytes = padded;
    }
    if (bytes.byteLength === 0) return;
    this.gpu.scoped(`upload to tensor "${this.label}"`, () => {
      this.gpu.device.queue.writeBuffer(this.buffer, this.offset, bytes);
    });
  }

  /**
   * Copies the tensor back to the host, waiting for all work submitted before (a Recorder's
   * `submit` not yet awaited included). Through a staging
   * buffer of at most DOWNLOAD_CHUNK bytes, so that saving a large tensor (RoBERTa-large's word
   * embeddings: 196 MiB) needs little GPU memory beside the training state. `chunkBytes` (a
   * multiple of 4) is for tests.
   */
  async download(chunkBytes = DOWNLOAD_CHUNK): Promise<HostArray> {
    if (chunkBytes <= 0 || chunkBytes % 4 !== 0) {
      throw new Error(`download: chunkBytes ${chunkBytes} is not a positive multiple of 4`);
    }
    this.assertNotDestroyed("download of");
    const gpu = this.gpu;
    // A submit not yet awaited may not have reached the queue: the copy below must follow it.
    await submitting.get(gpu.device);
    await gpu.flushErrors();
    const size = this.bindingSize;
    const chunk = Math.min(size, chunkBytes);
    const what = `download of tensor "${this.label}"`;
    const staging = gpu.scoped(what, () =>
      gpu.device.createBuffer({
        label: `${this.label} (staging)`,
        size: chunk,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }));
    gpu.trackBuffer(staging, chunk);
    try {
      const host = new Uint8Array(size);
      for (let at = 0; at < size; at += chunk) {
        const n = Math.min(chunk, size - at);
        gpu.scoped(what, () => {
          const encoder = gpu.device.createCommandEncoder({ label: `download ${this.label}` });
          encoder.copyBufferToBuffer(this.buffer, this.offset + at, staging, 0, n);
          gpu.device.queue.submit([encoder.finish()]);
        });
        await gpu.flushErrors();
        await staging.mapAsync(GPUMapMode.READ, 0, n);
        host.set(new Uint8Array(staging.getMappedRange(0, n)), at);
        staging.unmap();
      }
      return new HOST_ARRAY[this.dtype](host.buffer.slice(0, this.byteLength));
    } catch (e) {
      gpu.assertAlive();
      throw e;
    } finally {
      gpu.untrackBuffer(staging);
      staging.destroy();
    }
  }

  /**
   * A tensor over part of this one's buffer, starting `byteOffset` bytes after this one's first
   * element (a multiple of the adapter's minStorageBufferOffsetAlignment, 256 on most, if it is
   * to be bound on its own). Destroying a view destroys the whole buffer.
   */
  view(byteOffset: number, shape: readonly number[], label = `${this.label}[view]`): Tensor {
    const bytes = numelOf(shape) * DTYPE_BYTES[this.dtype];
    if (!Number.isSafeInteger(byteOffset) || byteOffset % 4 !== 0) {
      throw new GpuError(
        `tensor "${this.label}": a view's byte offset ${byteOffset} is not a multiple of 4`,
      );
    }
    if (byteOffset < 0 || byteOffset + bytes > this.bindingSize) {
      throw new GpuError(
        `tensor "${this.label}": view of ${bytes} bytes at ${byteOffset} is out of range`,
      );
    }
    return new Tensor(this.gpu, this.buffer, shape, this.dtype, label, this.offset + byteOffset);
  }

  /** Frees the whole buffer (also when called on a view) and stops counting it in liveBytes. */
  destroy(): void {
    destroyedBuffers.add(this.buffer);
    this.gpu.untrackBuffer(this.buffer);
    this.buffer.destroy();
  }

  /** Throws a GpuError naming the tensor if its buffer was destroyed (WebGPU would say so late). */
  private assertNotDestroyed(what: string): void {
    if (destroyedBuffers.has(this.buffer)) {
      throw new GpuError(`${what} tensor "${this.label}": the tensor was destroyed`);
    }
  }
}

/** Allocates an uninitialised (zeroed, per WebGPU) tensor with its own buffer. */
export function createTensor(
  gpu: Gpu,
  shape: readonly number[],
  dtype: DType,
  label: string,
): Tensor {
  checkShape(label, shape);
  // A JavaScript caller's dtype is not type-checked (a NaN-sized buffer otherwise).
  if (!Object.hasOwn(DTYPE_BYTES, dtype)) {
    throw new GpuError(
      `tensor "${label}": dtype ${JSON.stringify(dtype)} is not one of ` +
        Object.keys(DTYPE_BYTES).join(", "),
    );
  }
  const bytes = roundUp4(numelOf(shape) * DTYPE_BYTES[dtype]);
  const max = gpu.limits.maxBufferSize;
  if (bytes > max) {
    throw new GpuError(
      `tensor "${label}" [${shape.join(", ")}] ${dtype} needs ${bytes} bytes, more than this ` +
        `adapter's largest buffer (${max} bytes)`,
    );
  }
  const buffer = gpu.scoped(
    `allocating tensor "${label}" (${bytes} bytes)`,
    () => gpu.device.createBuffer({ label, size: bytes, usage: tensorUsage() }),
  );
  gpu.trackBuffer(buffer, bytes);
  return new Tensor(gpu, buffer, shape, dtype, label);
}

/** Allocates a tensor holding `data`. */
export function tensorFromArray(
  gpu: Gpu,
  data: HostArray,
  shape: readonly number[],
  label: string,
): Tensor {
  const tensor = createTensor(gpu, shape, dtypeOf(data), label);
  tensor.upload(data);
  return tensor;
}

/**
 * The dtypes of float storage: activations and matrix-product operands may be either (an f16
 * operand is widened to f32 when loaded); parameters, their gradients and biases stay f32.
 */
export const FLOAT_DTYPES: readonly DType[] = ["f32", "f16"];

/**
 * Throws unless `t` has exactly `shape` (a `-1` entry matches any size) and, if given, `dtype`
 * (or one of a list, e.g. FLOAT_DTYPES). Launchers call it first so that a wrong argument names
 * the operation and the tensor.
 */
export function expectShape(
  op: string,
  name: string,
  t: Tensor,
  shape: readonly number[],
  dtype?: DType | readonly DType[],
): void {
  const ok = t.shape.length === shape.length && shape.every((d, i) => d === -1 || d === t.shape[i]);
  if (!ok) {
    const want = shape.map((d) => (d === -1 ? "*" : String(d))).join(", ");
    throw new GpuError(
      `${op}: ${name} ("${t.label}") has shape [${t.shape.join(", ")}], expected [${want}]`,
    );
  }
  const allowed: readonly DType[] = dtype === undefined
    ? []
    : typeof dtype === "string"
    ? [dtype]
    : dtype;
  if (allowed.length > 0 && !allowed.includes(t.dtype)) {
    throw new GpuError(
      `${op}: ${name} ("${t.label}") is ${t.dtype}, expected ${allowed.join(" or ")}`,
    );
  }
}

/**
 * Checks that `t` holds exactly `numel` elements of one of `dtypes` (any shape: ops that read a
 * flat range) and fits one storage binding; throws a one-line GpuError naming `op` and `name`.
 */
export function expectElements(
  op: string,
  name: string,
  t: Tensor,
  numel: number,
  dtypes: readonly DType[],
): void {
  if (t.numel !== numel) {
    throw new GpuError(
      `${op}: ${name} ("${t.label}") has ${t.numel} elements [${t.shape.join(", ")}], ` +
        `expected ${numel}`,
    );
  }
  if (!dtypes.includes(t.dtype)) {
    throw new GpuError(
      `${op}: ${name} ("${t.label}") is ${t.dtype}, expected ${dtypes.join(" or ")}`,
    );
  }
  expectBindable(op, name, t);
}

/** Throws unless `t` fits in one storage binding of this adapter (128 MiB on lavapipe). */
export function expectBindable(op: string, name: string, t: Tensor): void {
  const max = t.gpu.limits.maxStorageBufferBindingSize;
  if (t.bindingSize > max) {
    throw new GpuError(
      `${op}: ${name} ("${t.label}", ${t.bindingSize} bytes) exceeds this adapter's storage ` +
        `binding limit of ${max} bytes`,
    );
  }
}

/** Whether two tensors share a byte of one GPU buffer (an empty one shares none). */
export function sharesBytes(a: Tensor, b: Tensor): boolean {
  return a.buffer === b.buffer && a.byteLength > 0 && b.byteLength > 0 &&
    a.offset < b.offset + b.byteLength && b.offset < a.offset + a.byteLength;
}

/**
 * Throws when a tensor a launcher writes shares bytes with another it writes or reads, for the
 * launchers of several dispatches: within one dispatch a Recorder refuses a tensor bound both
 * written and read, but two writes into one tensor are legal there and race, and one dispatch's
 * output may be a later one's input, read after it was overwritten.
 */
export function expectDisjoint(
  op: string,
  written: Record<string, Tensor | undefined>,
  read: Record<string, Tensor | undefined> = {},
): void {
  const given = (e: [string, Tensor | undefined]): e is [string, Tensor] => e[1] !== undefined;
  const w = Object.entries(written).filter(given);
  const r = Object.entries(read).filter(given);
  for (const [i, [name, t]] of w.entries()) {
    for (const [otherName, other] of [...w.slice(i + 1), ...r]) {
      if (sharesBytes(t, other)) {
        throw new GpuError(
          `${op}: ${name} ("${t.label}") shares GPU memory with ${otherName} ("${other.label}"): ` +
            "each output needs memory of its own",
        );
      }
    }
  }
}

/** Throws unless every tensor fits one binding and no written tensor shares a read one's buffer. */
export function expectBindings(
  op: string,
  read: Record<string, Tensor | undefined>,
  written: Record<string, Tensor | undefined>,
): void {
  const all = { ...read, ...written };
  for (const [name, t] of Object.entries(all)) if (t) expectBindable(op, name, t);
  // WebGPU refuses one buffer bound both read-only and read_write in a dispatch; two written
  // tensors in one buffer would race unless their ranges are disjoint (e.g. dGamma and dBeta in
  // a gradient arena, kernels/arena.ts).
  const w = Object.entries(written).filter((e): e is [string, Tensor] => e[1] !== undefined);
  const overlap = (a: Tensor, b: Tensor) =>
    a.offset < b.offset + b.bindingSize && b.offset < a.offset + a.bindingSize;
  for (const [wName, wt] of w) {
    for (const [name, t] of Object.entries(all)) {
      const bothWritten = name in written;
      if (
        t && name !== wName && t.buffer === wt.buffer && (!bothWritten || overlap(t, wt))
      ) {
        throw new GpuError(
          `${op}: ${wName} ("${wt.label}") shares a GPU buffer with ${name} ("${t.label}")`,
        );
      }
    }
  }
}
