// Many kernel launches recorded into one command encoder and submitted once.
//
// WebGPU reports an invalid dispatch only when the whole encoder is finished, without saying
// which command was wrong. Launches are therefore kept as plain descriptions until `submit`;
// when the encoder fails, each launch is encoded again on its own, unsubmitted, to name the
// culprit. The happy path pays nothing for this.

import { type Gpu, GpuError, oneLine, submitting } from "./device.ts";
import { bindingAccess } from "./pipeline.ts";
import { type Tensor, wasDestroyed } from "./tensor.ts";

/** What a kernel binds at `@group(0) @binding(i)`, in order. */
export type Binding = Tensor | { buffer: GPUBuffer; offset?: number; size?: number };

/** Small per-launch parameters, bound as a uniform after the storage bindings. */
export type Uniforms = Uint32Array | Int32Array | Float32Array;

interface DispatchCommand {
  kind: "dispatch";
  label: string;
  pipeline: GPUComputePipeline;
  bindings: Binding[];
  uniforms?: Uniforms;
  workgroups: [number, number, number];
}

interface CopyCommand {
  kind: "copy";
  label: string;
  src: Tensor;
  dst: Tensor;
}

type Command = DispatchCommand | CopyCommand;

interface ProfileBuffers {
  set: GPUQuerySet;
  resolve: GPUBuffer;
  read: GPUBuffer;
  count: number;
}

/** What the Recorders of one device have submitted so far (see `submittedCounts`). */
export interface SubmittedCounts {
  /** Successful submits (command buffers). */
  submits: number;
  /** Kernel launches in them. */
  dispatches: number;
  /** Buffer-to-buffer copies in them. */
  copies: number;
}

const submitted = new WeakMap<Gpu, SubmittedCounts>();

/**
 * GPU time per kernel label, gathered with timestamp queries while a profile is attached to a
 * device (`profileDispatches`). Each dispatch then gets its own compute pass and every submit
 * waits for its timings, so a profiled run is slower than a plain one: use it to see where the
 * time goes, never for the benchmark rows themselves.
 */
export interface DispatchProfile {
  /** Label → [total nanoseconds, dispatches]. */
  readonly byLabel: Map<string, [number, number]>;
  /**
   * Per profiled submit, nanoseconds from the start of its first timed dispatch to the end of
   * its last: the GPU's time on the submit, without the host's recording and encoding before it
   * or the wait for the GPU after it.
   */
  readonly spans: number[];
}

const profiles = new WeakMap<Gpu, DispatchProfile>();

function expectTimestamps(gpu: Gpu, use: string): void {
  if (!gpu.hasTimestampQuery) {
    throw new GpuError(`${use} needs the timestamp-query feature, which ${gpu.description} lacks`);
  }
}

/**
 * Whether timings read the GPU's clock (`Recorder.submitTimed`) unless told otherwise: where the
 * adapter has timestamp queries and is not a CPU one (lavapipe keeps the host's clock).
 */
export function gpuClockByDefault(gpu: Gpu): boolean {
  return gpu.hasTimestampQuery && !gpu.adapter.info.isFallbackAdapter;
}

/** The most dispatches a profiled submit times: two timestamps each, 4,096 in a query set. */
export const TIMED_DISPATCHES = 2048;

/**
 * Attaches a fresh profile to `gpu` (every later Recorder submit on it fills it) and returns it;
 * `null` detaches. Throws when the adapter lacks `timestamp-query`.
 */
export function profileDispatches(gpu: Gpu, on = true): DispatchProfile | null {
  if (!on) {
    profiles.delete(gpu);
    return null;
  }
  expectTimestamps(gpu, "profiling");
  const profile: DispatchProfile = { byLabel: new Map(), spans: [] };
  profiles.set(gpu, profile);
  return profile;
}

/**
 * Running totals over every Recorder submit on `gpu` (a snapshot): the difference of two
 * snapshots is what was submitted between them, e.g. the dispatches of one training step.
 */
export function submittedCounts(gpu: Gpu): SubmittedCounts {
  return { ...(submitted.get(gpu) ?? { submits: 0, dispatches: 0, copies: 0 }) };
}

const uniformBuffers = new WeakMap<Gpu, GPUBuffer>();

/**
 * Per device, submits asked for whose commands have not reached the queue yet: while there is
 * one, a `flush` would put its commands on the queue before that submit's (and write the shared
 * uniform buffer between its write and its queue.submit), so it flushes nothing.
 */
const toQueue = new WeakMap<GPUDevice, number>();

function queuedChange(gpu: Gpu, by: number): void {
  toQueue.set(gpu.device, (toQueue.get(gpu.device) ?? 0) + by);
}

/** Adds a queued command buffer of `commands` to the device's `submittedCounts`. */
function count(gpu: Gpu, commands: Command[]): void {
  const counts = submitted.get(gpu) ?? { submits: 0, dispatches: 0, copies: 0 };
  const copies = commands.filter((c) => c.kind === "copy").length;
  counts.submits++;
  counts.copies += copies;
  counts.dispatches += commands.length - copies;
  submitted.set(gpu, counts);
}

/** The device's shared uniform buffer, at least `bytes` long (counted in Gpu.liveBytes). */
function uniformBuffer(gpu: Gpu, bytes: number): GPUBuffer {
  const old = uniformBuffers.get(gpu);
  if (old && old.size >= bytes) return old;
  // Grown by half again, so that a few larger submits do not reallocate it each time. The old
  // one may still be read by submitted work: WebGPU frees it only once that work is done.
  const size = alignUp(Math.max(bytes, Math.ceil((old?.size ?? 0) * 1.5)), 256);
  const buffer = gpu.scoped("recorder uniforms", () =>
    gpu.device.createBuffer({
      label: "recorder uniforms",
      size,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    }));
  gpu.trackBuffer(buffer, size);
  if (old) {
    gpu.untrackBuffer(old);
    old.destroy();
  }
  uniformBuffers.set(gpu, buffer);
  return buffer;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** What a dispatch's bind group binds, as a BindGroupCache key. */
function bindGroupKey(
  c: DispatchCommand,
  uniforms: { buffer: GPUBuffer; offsets: number[] } | null,
  index: number,
): string {
  let key = String(idOf(c.pipeline));
  for (const b of c.bindings) {
    const r = toBufferBinding(b);
    key += `|${idOf(r.buffer)},${r.offset},${r.size}`;
  }
  if (c.uniforms && uniforms) {
    key += `|u${idOf(uniforms.buffer)},${uniforms.offsets[index]},${c.uniforms.byteLength}`;
  }
  return key;
}

function toBufferBinding(b: Binding): GPUBufferBinding {
  if ("gpu" in b) return { buffer: b.buffer, offset: b.offset, size: b.bindingSize };
  return { buffer: b.buffer, offset: b.offset ?? 0, size: b.size };
}

/** Small numbers naming GPU objects in BindGroupCache keys (never reused, unlike addresses). */
const objectIds = new WeakMap<object, number>();
let nextObjectId = 1;

function idOf(o: object): number {
  let id = objectIds.get(o);
  if (id === undefined) objectIds.set(o, id = nextObjectId++);
  return id;
}

/** The layout of each pipeline's group 0 (asked once: every call makes a new wrapper). */
const groupLayouts = new WeakMap<GPUComputePipeline, GPUBindGroupLayout>();

function groupLayout(pipeline: GPUComputePipeline): GPUBindGroupLayout {
  let layout = groupLayouts.get(pipeline);
  if (!layout) groupLayouts.set(pipeline, layout = pipeline.getBindGroupLayout(0));
  return layout;
}

let outgrown = 0;

/**
 * Per device, the command lists recorded and not yet handed to the queue: a Recorder's from its
 * first command until its submit has called `queue.submit` (or failed). Weakly: a Recorder
 * dropped unsubmitted lets go of its list.
 */
const unsubmitted = new WeakMap<Gpu, Set<WeakRef<Command[]>>>();

/** Per device, retired buffers still bound by unsubmitted lists, and those lists. */
const retiring = new WeakMap<Gpu, { buffer: GPUBuffer; until: WeakRef<Command[]>[] }[]>();

/**
 * Buffers retireBuffer was given: a command recorded later that binds one (through a Workspace
 * view kept past the workspace's growth) is refused at once, naming it, instead of failing its
 * submit as a destroyed buffer.
 */
const retired = new WeakSet<GPUBuffer>();

/** A binding's tensor label; a raw buffer binding's buffer label (the tensor's, when it is one). */
function bindingLabel(b: Binding): string {
  return "label" in b ? b.label : b.buffer.label || "a binding";
}

/**
 * Refuses, naming the tensors, a launch WebGPU would refuse only at the submit (a tensor of another
 * device, a view bound at a byte the adapter cannot bind at, one buffer bound both written and
 * read, which WebGPU's usage rules refuse without naming either tensor).
 */
function checkBindings(
  op: string,
  gpu: Gpu,
  pipeline: GPUComputePipeline,
  bindings: Binding[],
): void {
  const access = bindingAccess(pipeline);
  for (let i = 0; i < bindings.length; i++) {
    const b = bindings[i];
    expectLive(op, b.buffer, bindingLabel(b));
    if ("gpu" in b) expectOnDevice(op, gpu, b);
    const mode = access?.get(i);
    const offset = b.offset ?? 0;
    const align = mode === "uniform"
      ? gpu.limits.minUniformBufferOffsetAlignment
      : gpu.limits.minStorageBufferOffsetAlignment;
    if (offset % align !== 0) {
      throw new GpuError(
        `${op}: tensor "${bindingLabel(b)}" starts at byte ${offset} of its buffer, which this ` +
          `adapter cannot bind at (a multiple of ${align}): take the view at such a byte`,
      );
    }
    // A binding the kernel does not declare is WebGPU's to refuse (at the submit, naming the op).
    if (!access || mode === undefined) continue;
    for (let j = 0; j < i; j++) {
      const other = bindings[j];
      if (other.buffer !== b.buffer || !access.has(j)) continue;
      const writes = mode === "read_write", otherWrites = access.get(j) === "read_write";
      // Two written bindings of one tensor are legal, and some kernels write in place that way
      // (attention's softmax into probabilities that are also the dropped ones): launchers
      // compare the outputs their callers give (expectBindings).
      if (writes === otherWrites) continue;
      const [written, read] = writes ? [b, other] : [other, b];
      const [w, r] = [bindingLabel(written), bindingLabel(read)];
      const [wAt, rAt] = [written.offset ?? 0, read.offset ?? 0];
      throw new GpuError(
        w === r && wAt === rAt
          ? `${op}: tensor "${w}" is given twice, and the kernel writes it: pass distinct tensors`
          : w === r
          ? `${op}: two parts of tensor "${w}" (bytes ${wAt} and ${rAt} on), one written and one ` +
            "read in one launch, which WebGPU refuses: pass tensors in distinct buffers"
          : `${op}: tensor "${w}", which the kernel writes, shares its GPU buffer with "${r}": ` +
            "pass tensors in distinct buffers",
      );
    }
  }
}

/** Throws unless tensor `t` was made on `gpu`'s device (WebGPU says so only at the submit). */
function expectOnDevice(op: string, gpu: Gpu, t: Tensor): void {
  if (t.gpu.device !== gpu.device) {
    throw new GpuError(
      `${op}: tensor "${t.label}" was made on another GPU device than the Recorder's`,
    );
  }
}

/** Throws when `buffer` was retired (see `retired`) or its tensor destroyed. */
function expectLive(op: string, buffer: GPUBuffer, label: string): void {
  if (wasDestroyed(buffer)) {
    throw new GpuError(`${op}: tensor "${label}" was destroyed before this launch`);
  }
  if (retired.has(buffer)) {
    throw new GpuError(
      `${op}: "${label}" is a view of a workspace that has grown since it was taken: take the ` +
        "view again (a Workspace view lasts until the next, larger one)",
    );
  }
}

function binds(c: Command, buffer: GPUBuffer): boolean {
  if (c.kind === "copy") return c.src.buffer === buffer || c.dst.buffer === buffer;
  return c.bindings.some((b) => b.buffer === buffer);
}

/**
 * Frees a tracked buffer nothing will use again once the commands already recorded are
 * submitted (a Workspace that grew: kernels/workspace.ts). A recorded, unsubmitted command may
 * still bind it, and submitting a destroyed buffer is an error, so it is destroyed at once only
 * when no unsubmitted list binds it, else after the last such list's submit (work already
 * submitted may use it: WebGPU frees a destroyed buffer once that work is done). Every
 * BindGroupCache starts over, so as not to hold bind groups of a buffer no one asks for again.
 */
export function retireBuffer(gpu: Gpu, buffer: GPUBuffer): void {
  outgrown++;
  retired.add(buffer);
  const open = unsubmitted.get(gpu) ?? new Set();
  const until: WeakRef<Command[]>[] = [];
  for (const ref of open) {
    const commands = ref.deref();
    if (commands === undefined) open.delete(ref); // its Recorder was dropped unsubmitted
    else if (commands.some((c) => binds(c, buffer))) until.push(ref);
  }
  if (until.length === 0) {
    gpu.untrackBuffer(buffer);
    buffer.destroy();
    return;
  }
  const list = retiring.get(gpu) ?? [];
  list.push({ buffer, until });
  retiring.set(gpu, list);
}

/** The list `ref` has been handed to the queue (or dropped): frees what waited only for it. */
function listSubmitted(gpu: Gpu, ref: WeakRef<Command[]>): void {
  const open = unsubmitted.get(gpu);
  open?.delete(ref);
  const list = retiring.get(gpu);
  if (!list) return;
  const waiting = list.filter((r) => {
    r.until = r.until.filter((u) => u.deref() !== undefined && open?.has(u));
    if (r.until.length > 0) return true;
    gpu.untrackBuffer(r.buffer);
    r.buffer.destroy();
    return false;
  });
  if (waiting.length > 0) retiring.set(gpu, waiting);
  else retiring.delete(gpu);
}

/**
 * Bind groups kept from one submit to the next, by pipeline and bound buffer ranges. A training
 * step launches the same kernels on the same buffers every time, and creating their bind groups
 * anew took over 40% of the host's time per step (58 µs each on lavapipe, about 1,000 a step).
 * Whoever submits such repeated work owns one (the Trainer does) and passes it to its Recorders.
 * It holds its bind groups, and through them their buffers, until `clear` or until a buffer is
 * retired (`retireBuffer`; then it starts over); past `capacity` it drops the least recently
 * used. Batches padded to a new length need new bind groups (about 950 a step at 24 layers), so
 * a cache that started over when full kept rebuilding even the groups every step uses (the
 * optimizer's, a frequent length's). A destroyed buffer's memory is freed all the same, and its
 * bind groups are never asked for again (a new buffer gets a new key).
 */
export class BindGroupCache {
  private groups = new Map<string, GPUBindGroup>();
  private outgrownSeen = outgrown;

  constructor(readonly capacity = 16384) {}

  get size(): number {
    return this.groups.size;
  }

  get(key: string): GPUBindGroup | undefined {
    if (this.outgrownSeen !== outgrown) {
      this.outgrownSeen = outgrown;
      this.groups.clear();
    }
    const group = this.groups.get(key);
    if (group !== undefined) {
      // A Map iterates in insertion order: moved to the end, the first key is the least recent.
      this.groups.delete(key);
      this.groups.set(key, group);
    }
    return group;
  }

  set(key: string, group: GPUBindGroup): void {
    if (this.groups.size >= this.capacity) {
      this.groups.delete(this.groups.keys().next().value!);
    }
    this.groups.set(key, group);
  }

  clear(): void {
    this.groups.clear();
  }
}

/**
 * A step's commands go to the GPU in parts of at least this many, at the encoder's layer
 * boundaries, as they are recorded (Recorder's `flushEvery`, `boundary`), so that the GPU runs
 * the first layers while the host records the rest: with one submit per step, the GPU sat idle
 * through all 23-32 ms of a RoBERTa-large step's recording (H200, 2026-11-28); with two (the
 * forward, then the backward), through the forward's. Same commands, same order, same results
 * (tests/loss_scale_test.ts). The optimizer and the step's statistics stay in its last part: a
 * step whose recording fails may have run some of its layers, never part of its update. For
 * train/trainer.ts's and train/pretrain.ts's steps.
 */
export const STEP_FLUSH_EVERY = 128;

/** Commands `flush` handed to the queue, with what the next submit checks of them. */
interface Flushed {
  commands: Command[];
  groups: (GPUBindGroup | null)[];
  /** Bind groups made for them, cached once the checks pass. */
  created: Map<string, GPUBindGroup>;
  /** `outgrown` when they were made: a buffer retired since may be bound by them. */
  outgrown: number;
  invalid: Promise<GPUError | null>;
  memory: Promise<GPUError | null>;
}

/**
 * Records kernel launches and buffer copies, then encodes and submits them as one command buffer
 * (`submit`); a failing launch is named in the GpuError. Recording starts afresh after a submit.
 * With `flushEvery`, the commands go to the queue in parts as they are recorded (`boundary`,
 * `flush`), so that the GPU starts on them while the host records the rest.
 */
export class Recorder {
  /** The device it records for. */
  readonly gpu: Gpu;
  private commands: Command[] = [];
  /** `commands` in the device's unsubmitted lists, once it holds one (see `retireBuffer`). */
  private listed: WeakRef<Command[]> | null = null;
  private readonly bindGroups: BindGroupCache | null;
  private readonly flushEvery: number;
  /** Parts flushed since the last submit, whose errors it reports. */
  private flushed: Flushed[] = [];

  /**
   * `bindGroups`: where to find and keep the bind groups of repeated submits (see the class).
   * `flushEvery`: at a `boundary`, hand the commands to the queue once this many are pending
   * (`flush`); default never (all at the submit).
   */
  constructor(gpu: Gpu, bindGroups?: BindGroupCache, flushEvery = Infinity) {
    this.gpu = gpu;
    this.bindGroups = bindGroups ?? null;
    this.flushEvery = flushEvery;
  }

  /** Number of commands recorded since the last submit. */
  get length(): number {
    return this.commands.length;
  }

  /** Labels of the commands recorded since the last submit, in order. */
  get labels(): string[] {
    return this.commands.map((c) => c.label);
  }

  /**
   * Records one kernel launch. `label` names the operation in any error. `bindings` go to
   * `@binding(0)`, `@binding(1)`, ... of group 0 in order; `uniforms`, when given, are bound
   * right after them, at `@binding(bindings.length)` (the kernel declares them `var<uniform>`).
   */
  dispatch(
    label: string,
    pipeline: GPUComputePipeline,
    bindings: Binding[],
    workgroups: number | [number, number?, number?],
    uniforms?: Uniforms,
  ): void {
    this.gpu.assertAlive();
    const [x, y = 1, z = 1] = typeof workgroups === "number" ? [workgroups] : workgroups;
    if (x === 0 || y === 0 || z === 0) return;
    checkBindings(label, this.gpu, pipeline, bindings);
    this.list();
    this.commands.push({
      kind: "dispatch",
      label,
      pipeline,
      bindings,
      uniforms,
      workgroups: [x, y, z],
    });
  }

  /**
   * Marks a point between launchers (the encoder calls it between layers): `flush`es when
   * `flushEvery` commands are pending. Returns whether it did.
   */
  boundary(): boolean {
    return this.commands.length >= this.flushEvery && this.flush();
  }

  /**
   * Hands the commands recorded so far to the queue now, synchronously, so that the GPU can start
   * on them while the host records more; returns whether it did. It does nothing while another
   * submit on the device has not reached the queue (the work would run out of order) or while a
   * dispatch profile is attached (`profileDispatches` times whole submits). Call it only between
   * launchers: another Recorder's submit may reach the queue between two parts, and a launcher's
   * dispatches that share a Workspace must not be parted (kernels/workspace.ts). What went wrong
   * in a flushed part is reported, naming the launch and the part, by this Recorder's next
   * `submit`, which must follow (a Recorder dropped after a flush loses its parts' errors).
   */
  flush(): boolean {
    const gpu = this.gpu;
    if (this.commands.length === 0 || (toQueue.get(gpu.device) ?? 0) > 0 || profiles.get(gpu)) {
      return false;
    }
    gpu.assertAlive();
    this.expectNoneDestroyed(this.commands, "before a flush");
    const { commands, listed } = this.take();
    try {
      const { groups, created } = this.prepare(commands);
      const device = gpu.device;
      device.pushErrorScope("out-of-memory");
      device.pushErrorScope("validation");
      device.queue.submit([this.encode(commands, groups)]);
      const invalid = device.popErrorScope();
      const memory = device.popErrorScope();
      this.flushed.push({ commands, groups, created, invalid, memory, outgrown });
    } finally {
      if (listed) listSubmitted(gpu, listed);
    }
    return true;
  }

  /** Records a copy of `src` into `dst` (same byte length). */
  copy(label: string, src: Tensor, dst: Tensor): void {
    if (src.byteLength !== dst.byteLength) {
      throw new GpuError(
        `${label}: cannot copy tensor "${src.label}" (${src.byteLength} bytes) into ` +
          `"${dst.label}" (${dst.byteLength} bytes)`,
      );
    }
    expectLive(label, src.buffer, src.label);
    expectLive(label, dst.buffer, dst.label);
    expectOnDevice(label, this.gpu, src);
    expectOnDevice(label, this.gpu, dst);
    if (src.buffer === dst.buffer) {
      // WebGPU refuses a copy within one buffer, even between disjoint ranges.
      throw new GpuError(
        `${label}: cannot copy tensor "${src.label}" into "${dst.label}": they share a GPU buffer`,
      );
    }
    this.list();
    this.commands.push({ kind: "copy", label, src, dst });
  }

  /** Enters `commands` in the device's unsubmitted lists before its first command. */
  private list(): void {
    if (this.listed) return;
    this.listed = new WeakRef(this.commands);
    const open = unsubmitted.get(this.gpu) ?? new Set();
    open.add(this.listed);
    unsubmitted.set(this.gpu, open);
  }

  /** Takes the recorded commands (the Recorder is empty again) and their entry in the lists. */
  private take(): { commands: Command[]; listed: WeakRef<Command[]> | null } {
    const taken = { commands: this.commands, listed: this.listed };
    this.commands = [];
    this.listed = null;
    return taken;
  }

  /**
   * Encodes every recorded command into one command buffer and submits it, after every earlier
   * submit on the device. Resolves once the GPU accepted the work (not when it finished: a
   * download waits for that); rejects with a GpuError naming the failing operation. Await it
   * before uploading into a tensor the commands read: uploads go to the queue at once.
   */
  submit(): Promise<void> {
    return this.submitProfiled(profiles.get(this.gpu));
  }

  /**
   * Submits as `submit` does, each dispatch timed with timestamp queries (the adapter must have
   * them), and resolves, once the GPU has finished, to the nanoseconds from the start of the first
   * dispatch to the end of the last: the GPU's time on this work alone. At most
   * TIMED_DISPATCHES dispatches (a query set holds 4,096 timestamps): more are refused, not
   * timed in part. An attached `profileDispatches` profile is left out of it.
   */
  async submitTimed(): Promise<number> {
    expectTimestamps(this.gpu, "timing");
    if (this.flushed.length > 0) {
      throw new GpuError("submitTimed: part of the work was flushed already; it cannot be timed");
    }
    const dispatches = this.commands.filter((c) => c.kind === "dispatch").length;
    if (dispatches > TIMED_DISPATCHES) {
      const { listed } = this.take();
      if (listed) listSubmitted(this.gpu, listed);
      throw new GpuError(
        `submitTimed: ${dispatches} dispatches, more than the ${TIMED_DISPATCHES} one submit ` +
          "can time",
      );
    }
    const own: DispatchProfile = { byLabel: new Map(), spans: [] };
    await this.submitProfiled(own);
    return own.spans[0] ?? 0;
  }

  /**
   * Takes the recorded commands (the Recorder is empty again at once) and submits them after
   * every earlier submit on the device has been: one at a time, since a submit packs its uniforms
   * into the device's one uniform buffer and awaits the error checks before `queue.submit`. Two
   * submits not awaited in between (two Recorders, `Promise.all`) would otherwise run with each
   * other's uniforms.
   */
  private submitProfiled(profile: DispatchProfile | undefined): Promise<void> {
    const gpu = this.gpu;
    const { commands, listed } = this.take();
    const flushed = this.flushed;
    this.flushed = [];
    const previous = submitting.get(gpu.device);
    queuedChange(gpu, 1);
    const run = previous
      ? previous.then(() => this.submitNow(commands, profile, flushed))
      : this.submitNow(commands, profile, flushed);
    const mine = run.finally(() => {
      if (listed) listSubmitted(gpu, listed);
    });
    const settled = mine.then(() => {}, () => {});
    submitting.set(gpu.device, settled);
    settled.then(() => {
      if (submitting.get(gpu.device) === settled) submitting.delete(gpu.device);
    });
    return mine;
  }

  /**
   * Submits `commands` (with GPU timestamps when `profile` asks) after checking the parts
   * `flush` queued before them.
   */
  private async submitNow(
    commands: Command[],
    profile: DispatchProfile | undefined,
    flushed: Flushed[],
  ): Promise<void> {
    const gpu = this.gpu;
    let queued = false;
    const reachedQueue = () => {
      if (!queued) queuedChange(gpu, -1);
      queued = true;
    };
    try {
      gpu.assertAlive();
      const parts = flushed.length + (commands.length > 0 ? 1 : 0);
      for (const [i, part] of flushed.entries()) {
        await this.check(part, `part ${i + 1} of ${parts}`);
      }
      if (commands.length === 0) {
        reachedQueue();
        return await gpu.flushErrors();
      }

      this.expectNoneDestroyed(commands, parts > 1 ? `part ${parts} of ${parts}` : "");
      const { groups, created } = this.prepare(commands);
      // Kernel compile errors, allocations and bindings are named by their own scopes.
      await gpu.flushErrors();
      // Only bind groups that proved valid are kept.
      for (const [key, group] of created) this.bindGroups!.set(key, group);

      const device = gpu.device;
      device.pushErrorScope("out-of-memory");
      device.pushErrorScope("validation");
      const timing = profile ? this.timestamps(commands) : null;
      device.queue.submit([this.encode(commands, groups, timing)]);
      reachedQueue();
      const invalid = device.popErrorScope();
      const memory = device.popErrorScope();
      const last = { commands, groups, created: new Map(), invalid, memory, outgrown };
      await this.check(last, parts > 1 ? `part ${parts} of ${parts}` : "");
      if (profile && timing) await this.readTimestamps(commands, timing, profile);
    } finally {
      reachedQueue();
    }
  }

  /**
   * Throws a GpuError naming the launch and the tensor when one of `commands` binds a tensor
   * destroyed after the launch was recorded (WebGPU would name only its buffer, or nothing).
   */
  private expectNoneDestroyed(commands: Command[], where: string): void {
    const part = where ? `, ${where}` : "";
    for (const [i, c] of commands.entries()) {
      const bound: Binding[] = c.kind === "copy" ? [c.src, c.dst] : c.bindings;
      // Every binding of every submit passes here: plain loops over what is recorded.
      for (const b of bound) {
        if (!wasDestroyed(b.buffer)) continue;
        throw new GpuError(
          `op "${c.label}" (command ${i + 1} of ${commands.length}${part}): tensor ` +
            `"${bindingLabel(b)}" was destroyed after the launch was recorded, before its submit`,
        );
      }
    }
  }

  /** Packs the uniforms of `commands` and finds or makes their bind groups (not yet cached). */
  private prepare(commands: Command[]): {
    uniforms: { buffer: GPUBuffer; offsets: number[] } | null;
    groups: (GPUBindGroup | null)[];
    created: Map<string, GPUBindGroup>;
  } {
    const gpu = this.gpu;
    const uniforms = this.packUniforms(commands);
    const cache = this.bindGroups;
    const created = new Map<string, GPUBindGroup>();
    const groups = commands.map((c, i) => {
      if (c.kind !== "dispatch") return null;
      const key = cache ? bindGroupKey(c, uniforms, i) : "";
      const kept = cache ? cache.get(key) ?? created.get(key) : undefined;
      if (kept) return kept;
      const group = gpu.scoped(`op "${c.label}"`, () => this.bindGroup(c, uniforms, i));
      if (cache) created.set(key, group);
      return group;
    });
    return { uniforms, groups, created };
  }

  /**
   * Throws what went wrong in queued commands (the scoped checks of their bind groups, then their
   * submit's error scopes), naming the launch (and `where`: which part of the submit); else
   * counts them as submitted and caches their new bind groups.
   */
  private async check(part: Flushed, where: string): Promise<void> {
    const gpu = this.gpu;
    const invalid = await part.invalid;
    const memory = await part.memory;
    // A flushed part's compile and binding errors are named by their own scopes.
    await gpu.flushErrors();
    const { commands, groups } = part;
    if (invalid) throw await this.blame(commands, groups, invalid.message, where);
    if (memory) {
      throw new GpuError(
        `out of GPU memory running ${commands.length} commands${where ? ` (${where})` : ""} ` +
          `(${[...new Set(commands.map((c) => c.label))].join(", ")}): ${oneLine(memory.message)}`,
      );
    }
    count(this.gpu, commands);
    // Not past a retired buffer: the caches have started over without the groups binding it.
    if (part.outgrown !== outgrown) return;
    for (const [key, group] of part.created) this.bindGroups!.set(key, group);
  }

  /**
   * Packs every launch's uniforms into the device's one uniform buffer (grown when a submit
   * needs more, never shrunk) with `queue.writeBuffer`. Reusing it is safe: queue operations run
   * in order, so the write lands after every earlier submit that read the buffer has run. A
   * training step therefore allocates no buffer of its own after the first.
   */
  private packUniforms(
    commands: Command[],
  ): { buffer: GPUBuffer; offsets: number[] } | null {
    const gpu = this.gpu;
    const align = gpu.limits.minUniformBufferOffsetAlignment;
    const offsets: number[] = [];
    let total = 0;
    for (const c of commands) {
      if (c.kind !== "dispatch" || !c.uniforms) {
        offsets.push(-1);
        continue;
      }
      offsets.push(total);
      total = alignUp(total + alignUp(c.uniforms.byteLength, 16), align);
    }
    if (total === 0) return null;
    const bytes = new Uint8Array(total);
    commands.forEach((c, i) => {
      if (c.kind === "dispatch" && c.uniforms) {
        const u = c.uniforms;
        bytes.set(new Uint8Array(u.buffer, u.byteOffset, u.byteLength), offsets[i]);
      }
    });
    const buffer = uniformBuffer(gpu, total);
    gpu.scoped("recorder uniforms", () => gpu.device.queue.writeBuffer(buffer, 0, bytes));
    return { buffer, offsets };
  }

  /** The bind group of dispatch `index`: its bindings, then its slice of the packed uniforms. */
  private bindGroup(
    c: DispatchCommand,
    uniforms: { buffer: GPUBuffer; offsets: number[] } | null,
    index: number,
  ): GPUBindGroup {
    const entries: GPUBindGroupEntry[] = c.bindings.map((b, i) => ({
      binding: i,
      resource: toBufferBinding(b),
    }));
    if (c.uniforms && uniforms) {
      entries.push({
        binding: c.bindings.length,
        resource: {
          buffer: uniforms.buffer,
          offset: uniforms.offsets[index],
          size: alignUp(c.uniforms.byteLength, 16),
        },
      });
    }
    return this.gpu.device.createBindGroup({
      label: c.label,
      layout: groupLayout(c.pipeline),
      entries,
    });
  }

  /** A query set of two timestamps per dispatch and the buffers to read it back. */
  private timestamps(commands: Command[]): ProfileBuffers {
    const device = this.gpu.device;
    // A query set holds at most 4096 timestamps; later dispatches of a huge submit go untimed.
    const count = Math.min(
      2 * TIMED_DISPATCHES,
      2 * commands.filter((c) => c.kind === "dispatch").length,
    );
    return {
      set: device.createQuerySet({ type: "timestamp", count: Math.max(2, count) }),
      resolve: device.createBuffer({
        size: Math.max(16, 8 * count),
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      }),
      read: device.createBuffer({
        size: Math.max(16, 8 * count),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
      count,
    };
  }

  /** Reads the pass timestamps back into `profile`, in nanoseconds per dispatch label. */
  private async readTimestamps(
    commands: Command[],
    timing: ProfileBuffers,
    profile: DispatchProfile,
  ): Promise<void> {
    await timing.read.mapAsync(GPUMapMode.READ);
    const ticks = new BigUint64Array(timing.read.getMappedRange().slice(0));
    timing.read.unmap();
    let q = 0;
    for (const c of commands) {
      if (c.kind !== "dispatch" || q >= timing.count) continue;
      const ns = Number(ticks[q + 1] - ticks[q]);
      q += 2;
      const entry = profile.byLabel.get(c.label) ?? [0, 0];
      entry[0] += ns;
      entry[1]++;
      profile.byLabel.set(c.label, entry);
    }
    if (q > 0) profile.spans.push(Number(ticks[q - 1] - ticks[0]));
    timing.set.destroy();
    timing.resolve.destroy();
    timing.read.destroy();
  }

  /** One command buffer of every command; each dispatch gets a timed pass of its own when `timing`. */
  private encode(
    commands: Command[],
    groups: (GPUBindGroup | null)[],
    timing: ProfileBuffers | null = null,
  ): GPUCommandBuffer {
    const encoder = this.gpu.device.createCommandEncoder({ label: "recorder" });
    let pass: GPUComputePassEncoder | null = null;
    let query = 0;
    commands.forEach((c, i) => {
      if (timing && c.kind === "dispatch" && query < timing.count) {
        const p = encoder.beginComputePass({
          label: c.label,
          timestampWrites: {
            querySet: timing.set,
            beginningOfPassWriteIndex: query,
            endOfPassWriteIndex: query + 1,
          },
        });
        query += 2;
        p.setPipeline(c.pipeline);
        p.setBindGroup(0, groups[i]!);
        p.dispatchWorkgroups(...c.workgroups);
        p.end();
        return;
      }
      if (c.kind === "copy") {
        pass?.end();
        pass = null;
        encoder.copyBufferToBuffer(
          c.src.buffer,
          c.src.offset,
          c.dst.buffer,
          c.dst.offset,
          c.src.bindingSize,
        );
        return;
      }
      pass ??= encoder.beginComputePass({ label: "recorder" });
      pass.setPipeline(c.pipeline);
      pass.setBindGroup(0, groups[i]!);
      pass.dispatchWorkgroups(...c.workgroups);
    });
    (pass as GPUComputePassEncoder | null)?.end();
    if (timing && timing.count > 0) {
      encoder.resolveQuerySet(timing.set, 0, timing.count, timing.resolve, 0);
      encoder.copyBufferToBuffer(timing.resolve, 0, timing.read, 0, 8 * timing.count);
    }
    return encoder.finish();
  }

  /** Finds which command made the encoder invalid by encoding each alone, unsubmitted. */
  private async blame(
    commands: Command[],
    groups: (GPUBindGroup | null)[],
    message: string,
    where = "",
  ): Promise<GpuError> {
    const device = this.gpu.device;
    const part = where ? `, ${where}` : "";
    for (let i = 0; i < commands.length; i++) {
      device.pushErrorScope("validation");
      this.encode([commands[i]], [groups[i]]);
      const error = await device.popErrorScope();
      if (error) {
        return new GpuError(
          `op "${commands[i].label}" (command ${i + 1} of ${commands.length}${part}): ` +
            oneLine(error.message),
        );
      }
    }
    return new GpuError(
      `GPU validation error in a submit of ${commands.length} commands${part}: ${oneLine(message)}`,
    );
  }
}
