// The WebGPU adapter and device every kernel runs on.
//
// We ask for the adapter's own maximum limits (the defaults cap storage bindings at 128 MiB and
// buffers at 256 MiB, far below what a real GPU allows) and for the optional features we can use.

/** Thrown when no WebGPU adapter exists; its message says what to install. */
export class NoAdapterError extends Error {
  /** `detail` says why no adapter was found; the message adds what to install. */
  constructor(detail: string) {
    super(
      `No WebGPU adapter found (${detail}). With an NVIDIA GPU, install its driver with Vulkan ` +
        `support; on a machine without a GPU, install Mesa's software Vulkan driver: ` +
        `apt-get install mesa-vulkan-drivers`,
    );
    this.name = "NoAdapterError";
  }
}

/** Thrown by any GPU call after the device was lost. */
export class DeviceLostError extends Error {
  /** `reason` and `message` as WebGPU's GPUDeviceLostInfo gives them. */
  constructor(reason: string, message: string) {
    super(`GPU device lost (reason: ${reason})${message ? `: ${message}` : ""}`);
    this.name = "DeviceLostError";
  }
}

/** A WebGPU validation or out-of-memory error, its message naming the operation. */
export class GpuError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "GpuError";
  }
}

/** wgpu's messages span several lines (source excerpts, causes); we report one. */
export function oneLine(message: string): string {
  return message.replace(/\s*\n\s*/g, " ").trim();
}

/**
 * Per device, the Recorder submit in progress (settled either way): the next submit waits for it,
 * and so does a download, since a submit reaches the queue only after its error checks. Keyed by
 * the GPUDevice: views of one Gpu (Object.create, other limits) share its queue.
 */
export const submitting: WeakMap<GPUDevice, Promise<void>> = new WeakMap();

/** Optional WebGPU features we use when the adapter offers them. */
export const OPTIONAL_FEATURES = ["shader-f16", "timestamp-query"] as const;

/** The limits we raise to the adapter's maximum. */
const RAISED_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxUniformBufferBindingSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxBindGroups",
  "maxBindingsPerBindGroup",
] as const;

/** An adapter's name for messages: its description, else its vendor, architecture and device. */
export function adapterName(
  info: Pick<GPUAdapterInfo, "description" | "vendor" | "architecture" | "device">,
): string {
  return info.description ||
    [info.vendor, info.architecture, info.device].filter((s) => s && s !== "0").join(" ") ||
    "unknown adapter";
}

/** The adapter, its device and what they allow. One per process is the normal case. */
export class Gpu {
  /** The WebGPU adapter the device came from. */
  readonly adapter: GPUAdapter;
  /** The WebGPU device every kernel runs on. */
  readonly device: GPUDevice;
  /** The adapter's name for messages (description, else vendor and architecture). */
  readonly description: string;
  /** The device's limits, read once into a plain object. */
  readonly limits: GPUSupportedLimits;
  /** Whether the device has `shader-f16` (needed by f16 tensors in kernels). */
  readonly hasF16: boolean;
  /** Whether the device has `timestamp-query` (needed by timed submits and profiles). */
  readonly hasTimestampQuery: boolean;
  /** Set once the device is lost; every later operation throws it. */
  lost: DeviceLostError | null = null;
  /** Errors raised outside any error scope, surfaced by the next submit. */
  readonly uncaptured: string[] = [];
  private destroyed = false;
  private checks: Promise<string | null>[] = [];
  /**
   * Our allocator's ledger (see `liveBytes`), one object so that a Gpu derived with Object.create
   * (the tests' withLimits) counts into the same totals. `tracked` maps the buffers counted to
   * their sizes, weakly: a buffer dropped without `destroy` is not kept alive by it.
   */
  private readonly ledger = { live: 0, peak: 0, tracked: new WeakMap<GPUBuffer, number>() };

  /** Wraps a device already requested; `requestGpu` is the usual way to make one. */
  constructor(adapter: GPUAdapter, device: GPUDevice) {
    this.adapter = adapter;
    this.device = device;
    const info = adapter.info;
    this.description = adapterName(info);
    this.limits = plainLimits(device.limits);
    this.hasF16 = device.features.has("shader-f16");
    this.hasTimestampQuery = device.features.has("timestamp-query");
    device.lost.then((info) => {
      // destroy() said so already.
      if (this.lost) return;
      this.lost = new DeviceLostError(info.reason ?? "unknown", info.message);
      // A loss we did not cause must be seen even if no further GPU call is made.
      if (!this.destroyed) console.error(this.lost.message);
    });
    device.addEventListener("uncapturederror", (event) => {
      this.uncaptured.push((event as GPUUncapturedErrorEvent).error.message);
    });
  }

  /**
   * Bytes of GPU buffers our own allocator holds now: every tensor's buffer (createTensor) from
   * its creation until the first `destroy` of it or of any view of it, and a download's staging
   * buffer while it exists, and the Recorders' shared uniform buffer. Not counted: whatever the
   * driver allocates itself (pipelines, bind groups, its own copies). WebGPU has no memory
   * query; this is our side of the ledger only.
   */
  get liveBytes(): number {
    return this.ledger.live;
  }

  /** The most `liveBytes` has been since the device was created or `resetPeak` was called. */
  get peakBytes(): number {
    return this.ledger.peak;
  }

  /** Counts `buffer` (of `bytes`) in liveBytes until `untrackBuffer`; counting twice is a no-op. */
  trackBuffer(buffer: GPUBuffer, bytes: number): void {
    const ledger = this.ledger;
    if (ledger.tracked.has(buffer)) return;
    ledger.tracked.set(buffer, bytes);
    ledger.live += bytes;
    if (ledger.live > ledger.peak) ledger.peak = ledger.live;
  }

  /** Stops counting `buffer` (call when destroying it); a buffer not counted is ignored. */
  untrackBuffer(buffer: GPUBuffer): void {
    const ledger = this.ledger;
    const bytes = ledger.tracked.get(buffer);
    if (bytes === undefined) return;
    ledger.tracked.delete(buffer);
    ledger.live -= bytes;
  }

  /** Starts a new peak measurement from what is held now. */
  resetPeak(): void {
    this.ledger.peak = this.ledger.live;
  }

  /** Throws if the device is gone; called before every submit and allocation. */
  assertAlive(): void {
    if (this.lost) throw this.lost;
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes. WebGPU reports such errors
   * asynchronously, so the check is kept and the next `flushErrors` throws it, naming `what`.
   * This keeps allocation, pipeline creation and recording synchronous.
   */
  scoped<T>(what: string, fn: () => T): T {
    this.assertAlive();
    const device = this.device;
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    try {
      return fn();
    } finally {
      const validation = device.popErrorScope();
      const memory = device.popErrorScope();
      this.checks.push(
        Promise.all([validation, memory]).then(([v, m]) => {
          if (v) return `${what}: ${oneLine(v.message)}`;
          if (m) return `${what}: out of GPU memory (${oneLine(m.message)})`;
          return null;
        }),
      );
    }
  }

  /** Throws the first error collected by `scoped` (or raised outside any scope) since last call. */
  async flushErrors(): Promise<void> {
    const checks = this.checks;
    this.checks = [];
    const messages = (await Promise.all(checks)).filter((m): m is string => m !== null);
    for (const m of this.uncaptured.splice(0)) messages.push(`uncaptured GPU error: ${oneLine(m)}`);
    this.assertAlive();
    if (messages.length === 0) return;
    const more = messages.length > 1 ? ` (and ${messages.length - 1} more errors)` : "";
    throw new GpuError(messages[0] + more);
  }

  /** Releases the device. Later calls throw DeviceLostError("destroyed"). */
  destroy(): void {
    this.destroyed = true;
    // At once: the device's own loss report comes a moment later, and an allocation meanwhile
    // would be made on a destroyed device.
    this.lost ??= new DeviceLostError("destroyed", "Gpu.destroy() was called");
    this.device.destroy();
  }
}

/** Options of `requestGpu`. */
export interface RequestGpuOptions {
  /** The WebGPU entry point; defaults to `navigator.gpu`. Tests pass a fake. */
  gpu?: GPU;
  /** The adapter to ask for; default "high-performance". */
  powerPreference?: GPUPowerPreference;
}

/**
 * The limits as a plain object: each property of GPUSupportedLimits is a getter that calls into
 * the runtime, and launchers read several per launch (over 1 ms of host time a training step).
 */
function plainLimits(limits: GPUSupportedLimits): GPUSupportedLimits {
  const plain: Record<string, number> = {};
  for (const key in limits) {
    const value = (limits as unknown as Record<string, unknown>)[key];
    if (typeof value === "number") plain[key] = value;
  }
  // A runtime whose limits are not enumerable keeps its own object (slower, still right).
  if (Object.keys(plain).length === 0) return limits;
  // Not frozen: tests lower limits through a Proxy, which may not change a frozen property.
  return plain as unknown as GPUSupportedLimits;
}

/** Acquires an adapter and a device with the adapter's maximum limits and optional features. */
export async function requestGpu(options: RequestGpuOptions = {}): Promise<Gpu> {
  const entry = options.gpu ?? (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!entry) throw new NoAdapterError("this runtime has no navigator.gpu");
  let adapter: GPUAdapter | null;
  try {
    adapter = await entry.requestAdapter({
      powerPreference: options.powerPreference ?? "high-performance",
    });
  } catch (e) {
    throw new NoAdapterError(`requestAdapter failed: ${(e as Error).message}`);
  }
  if (!adapter) throw new NoAdapterError("requestAdapter returned none");

  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const name of RAISED_LIMITS) {
    const value = adapter.limits[name];
    if (typeof value === "number") requiredLimits[name] = value;
  }
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  return new Gpu(adapter, device);
}

let shared: Promise<Gpu> | null = null;

/**
 * The process-wide GPU, acquired on first use (and again after it was lost or destroyed: a
 * long-lived program goes on with a new device) and destroyed when the program (or, under
 * `deno test`, each test module's isolate) unloads. A rare abort after all tests passed (glibc
 * "corrupted size vs. prev_size", "malloc_consolidate()") is `deno test`'s own: its main thread
 * calls exit() while the last module's worker thread is still tearing down that module's WebGPU
 * and lavapipe state. `deno run` (train.ts, predict.ts, pretrain.ts, tasks/) tears down on the
 * main thread before exiting: 0 aborts in 510 runs.
 */
export async function getGpu(): Promise<Gpu> {
  const current = shared;
  if (current) {
    const gpu = await current.catch(() => null);
    // Another caller may have replaced it meanwhile: that one is kept.
    if (gpu?.lost && shared === current) shared = null;
  }
  if (!shared) {
    const acquired = requestGpu();
    shared = acquired;
    acquired.then((gpu) => {
      globalThis.addEventListener("unload", () => {
        if (!gpu.lost) gpu.destroy();
      });
    }, () => {
      // A failed acquisition must not be cached: the next caller gets a fresh try and error.
      if (shared === acquired) shared = null;
    });
  }
  return shared;
}

/**
 * Bytes and limit out of a GPU allocation error, if it says them; `binding` for a tensor beyond
 * one storage binding (its bytes grow with the batch: the ratio says what fits, which a probe of
 * allocations cannot, as the binding is checked at a launch).
 */
export function allocation(
  message: string,
): { bytes: number; limit: number | null; binding?: boolean } | null {
  let m = /needs (\d+) bytes, more than this adapter's largest buffer \((\d+) bytes\)/.exec(
    message,
  );
  if (m) return { bytes: Number(m[1]), limit: Number(m[2]) };
  // Launchers name the tensor first: `out ("layer 0 gelu", 268435456 bytes) exceeds …`.
  m = /\((?:".*?", )?(\d+) bytes\)[^;]*exceeds this adapter's storage binding limit of (\d+) bytes/
    .exec(message);
  if (m) return { bytes: Number(m[1]), limit: Number(m[2]), binding: true };
  m = /\((\d+) bytes\): out of GPU memory/.exec(message);
  if (m) return { bytes: Number(m[1]), limit: null };
  if (message.includes("out of GPU memory")) return { bytes: 0, limit: null };
  return null;
}
