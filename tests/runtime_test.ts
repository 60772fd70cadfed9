import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest, IN_PROCESS_GPU, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import {
  DeviceLostError,
  getGpu,
  GpuError,
  NoAdapterError,
  requestGpu,
} from "../kernels/device.ts";
import { add } from "../kernels/add.ts";
import { fill } from "../kernels/fill.ts";
import { grid1d } from "../kernels/grid.ts";
import { getPipeline } from "../kernels/pipeline.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

const ODD_SHAPES = [[1], [7], [33, 5], [130, 7], [3, 1, 11]];

gpuTest("runtime: f32, i32 and u32 tensors round-trip at odd sizes", async (gpu) => {
  for (const [s, shape] of ODD_SHAPES.entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = randomValues(n, 100 + s);
    const f32 = Float32Array.from(values);
    const i32 = Int32Array.from(values, (v) => Math.round(v * 2 ** 30));
    const u32 = Uint32Array.from(values, (v) => Math.floor((v + 1) * 2 ** 31));
    for (const data of [f32, i32, u32]) {
      const t = tensorFromArray(gpu, data, shape, `roundtrip ${shape}`);
      assertEquals(t.numel, n);
      assertEquals(await t.download(), data);
      t.destroy();
    }
  }
});

gpuTest("runtime: f16 tensors with an odd element count round-trip", async (gpu) => {
  for (const n of [1, 7, 33, 129]) {
    const data = Float16Array.from(randomValues(n, n));
    const t = tensorFromArray(gpu, data, [n], "half");
    assertEquals(t.bindingSize, Math.ceil(n / 2) * 4);
    assertEquals(await t.download(), data);
    t.destroy();
  }
});

gpuTest(
  "runtime: a download in staging chunks (a large tensor's) gives every byte",
  async (gpu) => {
    // Chunks that do not divide the tensor: the last one is short; an f16 tail half a word.
    for (const [n, chunk] of [[131, 12], [131, 4], [130, 520], [7, 1024]] as const) {
      const f32 = Float32Array.from(randomValues(n, n + chunk));
      const t = tensorFromArray(gpu, f32, [n], "chunked f32");
      assertEquals(await t.download(chunk), f32);
      t.destroy();
      const f16 = Float16Array.from(randomValues(n, n * chunk));
      const h = tensorFromArray(gpu, f16, [n], "chunked f16");
      assertEquals(await h.download(chunk), f16);
      h.destroy();
    }
    // A view at an offset into a larger buffer downloads its own elements only.
    const whole = tensorFromArray(gpu, Float32Array.from(randomValues(200, 5)), [200], "whole");
    const view = whole.view(256, [37]);
    assertEquals(await view.download(20), (await whole.download()).slice(64, 101));
    whole.destroy();
    const small = createTensor(gpu, [3], "f32", "t");
    await assertRejects(() => small.download(6), Error, "multiple of 4");
    small.destroy();
  },
);

gpuTest("runtime: uploading the wrong length or dtype is refused", (gpu) => {
  const t = createTensor(gpu, [3, 5], "f32", "target");
  assertThrows(() => t.upload(new Float32Array(14)), GpuError, 'tensor "target"');
  assertThrows(() => t.upload(new Int32Array(15)), GpuError, "i32");
  t.destroy();
});

gpuTest(
  "runtime: a destroyed tensor (or a view of its buffer) is refused at the call",
  async (gpu) => {
    const t = createTensor(gpu, [512], "f32", "gone");
    const view = t.view(256, [4], "gone[view]");
    t.destroy();
    const said = (what: string, label: string) =>
      `${what} tensor "${label}": the tensor was destroyed`;
    assertThrows(() => t.upload(new Float32Array(512)), GpuError, said("upload to", "gone"));
    assertThrows(() => view.upload(new Float32Array(4)), GpuError, said("upload to", "gone[view]"));
    await assertRejects(() => t.download(), GpuError, said("download of", "gone"));
    await gpu.flushErrors();
  },
);

gpuTest(
  "runtime: a destroyed tensor bound in a launch or a copy is named at the call or the submit",
  async (gpu) => {
    const rec = new Recorder(gpu);
    const gone = createTensor(gpu, [7], "f32", "gone");
    const kept = createTensor(gpu, [7], "f32", "kept");
    gone.destroy();
    assertThrows(() => fill(rec, gone, 1), GpuError, 'tensor "gone" was destroyed before this');
    assertThrows(() => rec.copy("copy", gone, kept), GpuError, 'copy: tensor "gone" was destroyed');
    assertThrows(() => rec.copy("copy", kept, gone), GpuError, 'copy: tensor "gone" was destroyed');
    assertEquals(rec.length, 0);
    // Destroyed after the launch was recorded: WebGPU refuses the submit, which names both.
    const late = createTensor(gpu, [9], "f32", "late");
    fill(rec, kept, 2);
    fill(rec, late, 3);
    late.destroy();
    const message = (await assertRejects(() => rec.submit(), GpuError)).message;
    assert(message.includes('(command 2 of 2): tensor "late" was destroyed after'), message);
    assert(!message.includes("\n"), message);
    // The Recorder and the device go on.
    fill(rec, kept, 4);
    await rec.submit();
    assert((await kept.download()).every((v) => v === 4));
    // A Recorder that hands its commands to the queue in parts says so at the part.
    const parted = new Recorder(gpu, undefined, 1);
    const later = createTensor(gpu, [5], "f32", "later");
    fill(parted, later, 5);
    later.destroy();
    assertThrows(
      () => parted.boundary(),
      GpuError,
      'op "fill" (command 1 of 1, before a flush): tensor "later" was destroyed after',
    );
    kept.destroy();
  },
);

gpuTest(
  "runtime: a launch binding a tensor of another device, an unbindable view or one tensor " +
    "written and read is refused at the call, naming the tensor",
  async (gpu) => {
    const rec = new Recorder(gpu);
    const a = tensorFromArray(gpu, Float32Array.from(randomValues(7, 3)), [7], "a");
    const b = tensorFromArray(gpu, Float32Array.from(randomValues(7, 4)), [7], "b");
    const other = await requestGpu();
    const foreign = createTensor(other, [7], "f32", "foreign");
    assertThrows(
      () => add(rec, { a, b: foreign, out: b }),
      GpuError,
      'add: tensor "foreign" was made on another GPU device',
    );
    assertThrows(() => rec.copy("copy", foreign, a), GpuError, 'copy: tensor "foreign" was made');
    foreign.destroy();
    other.destroy();
    const align = gpu.limits.minStorageBufferOffsetAlignment;
    const big = createTensor(gpu, [align / 4 + 16], "f32", "big");
    const unaligned = big.view(4, [7], "v4");
    assertThrows(
      () => big.view(2, [1], "v2"),
      GpuError,
      `tensor "big": a view's byte offset 2 is not a multiple of 4`,
    );
    assertThrows(
      () => add(rec, { a, b, out: unaligned }),
      GpuError,
      `add: tensor "v4" starts at byte 4 of its buffer, which this adapter cannot bind at ` +
        `(a multiple of ${align})`,
    );
    // Read and written in one launch: WebGPU refuses it only at the submit, naming neither.
    assertThrows(
      () => add(rec, { a, b: a, out: a }),
      GpuError,
      'add: tensor "a" is given twice, and the kernel writes it',
    );
    const aligned = big.view(align, [7], "aligned");
    const head = big.view(0, [7], "head");
    assertThrows(
      () => add(rec, { a: head, b, out: aligned }),
      GpuError,
      'add: tensor "aligned", which the kernel writes, shares its GPU buffer with "head"',
    );
    assertThrows(
      () => rec.copy("copy", head, aligned),
      GpuError,
      'copy: cannot copy tensor "head" into "aligned": they share a GPU buffer',
    );
    assertEquals(rec.length, 0);
    // Two read bindings of one tensor are fine (a + a).
    add(rec, { a, b: a, out: b });
    await rec.submit();
    const twice = [...await a.download()].map((v) => 2 * v);
    assertEquals([...await b.download()], twice);
    for (const t of [a, b, big]) t.destroy();
  },
);

gpuTest("runtime: a download follows a submit that was not awaited", async (gpu) => {
  const t = createTensor(gpu, [4], "f32", "t");
  const rec = new Recorder(gpu);
  fill(rec, t, 1);
  const first = rec.submit();
  assertEquals([...await t.download()], [1, 1, 1, 1]);
  await first;
  const [r2, r3] = [new Recorder(gpu), new Recorder(gpu)];
  fill(r2, t, 2);
  fill(r3, t, 3);
  const both = Promise.all([r2.submit(), r3.submit()]);
  assertEquals([...await t.download()], [3, 3, 3, 3]);
  await both;
  // A submit through another view of the device (other limits): the same queue.
  const view = new Recorder(withLimits(gpu, { maxComputeWorkgroupsPerDimension: 7 }));
  fill(view, t, 4);
  const viewed = view.submit();
  assertEquals([...await t.download()], [4, 4, 4, 4]);
  await viewed;
  t.destroy();
});

gpuTest("runtime: fill overwrites every element of poisoned tensors", async (gpu) => {
  const rec = new Recorder(gpu);
  const a = tensorFromArray(gpu, Float32Array.from(randomValues(1037, 1)), [1037], "a");
  const h = tensorFromArray(gpu, Float16Array.from(randomValues(33, 2)), [33], "h");
  const i = tensorFromArray(gpu, new Int32Array(13).fill(-5), [13], "i");
  fill(rec, a, 0.375);
  fill(rec, h, -2.5);
  fill(rec, i, -7);
  assertEquals(rec.length, 3);
  await rec.submit();
  assertEquals(rec.length, 0);
  assert((await a.download()).every((v) => v === 0.375));
  assert((await h.download()).every((v) => v === -2.5));
  assert((await i.download()).every((v) => v === -7));
  for (const t of [a, h, i]) t.destroy();
});

gpuTest("runtime: a tensor larger than one storage binding is filled in slices", async (gpu) => {
  const maxBinding = gpu.limits.maxStorageBufferBindingSize;
  const n = Math.floor(maxBinding / 4) + 4099;
  if (n * 4 > gpu.limits.maxBufferSize) return; // cannot allocate it on this adapter at all
  const t = createTensor(gpu, [n], "f32", "large");
  const rec = new Recorder(gpu);
  fill(rec, t, 1.5);
  assertEquals(rec.length, 2);
  await rec.submit();
  const out = await t.download();
  assertEquals(out.length, n);
  assertEquals(out[0], 1.5);
  assertEquals(out[n - 1], 1.5);
  assert(out.every((v) => v === 1.5));
  t.destroy();
});

gpuTest("runtime: copies are recorded in order with dispatches", async (gpu) => {
  const rec = new Recorder(gpu);
  const src = tensorFromArray(gpu, Float32Array.from(randomValues(77, 3)), [7, 11], "src");
  const dst = createTensor(gpu, [7, 11], "f32", "dst");
  fill(rec, src, 4);
  rec.copy("copy src", src, dst);
  fill(rec, src, 5);
  await rec.submit();
  assert((await dst.download()).every((v) => v === 4));
  assert((await src.download()).every((v) => v === 5));
  assertThrows(() => rec.copy("bad copy", src, createTensor(gpu, [7], "f32", "x")), GpuError);
});

gpuTest("runtime: grid1d covers large problems within the per-dimension limit", () => {
  assertEquals(grid1d(1, 256), [1, 1]);
  assertEquals(grid1d(256 * 65535, 256), [65535, 1]);
  for (const n of [256 * 65535 + 1, 1e9, 7 * 3 * 257]) {
    const [x, y] = grid1d(n, 256, 7);
    assert(x <= 7 && x * y * 256 >= n, `grid for ${n}: ${x}x${y}`);
  }
});

gpuTest("runtime: an invalid dispatch is caught and names the operation", async (gpu) => {
  const rec = new Recorder(gpu);
  const t = createTensor(gpu, [5], "f32", "t");
  fill(rec, t, 1);
  const pipeline = getPipeline(gpu, "fill", FILL_PROBE);
  rec.dispatch("deliberately-too-wide", pipeline, [t], [70000, 1, 1]);
  fill(rec, t, 2);
  const err = await assertRejects(() => rec.submit(), GpuError);
  assert(/op "deliberately-too-wide" \(command 2 of 3\)/.test(err.message), err.message);
  assert(/65535/.test(err.message), err.message);
  assert(!err.message.includes("\n"));
  // The device stays usable after a caught error.
  fill(rec, t, 3);
  await rec.submit();
  assertEquals((await t.download())[4], 3);
});

const FILL_PROBE = `
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x < arrayLength(&out)) { out[g.x] = 9.0; }
}`;

gpuTest("runtime: a WGSL compile error names the kernel", async (gpu) => {
  const rec = new Recorder(gpu);
  const t = createTensor(gpu, [5], "f32", "t");
  const broken = getPipeline(gpu, "broken-kernel", FILL_PROBE.replace("9.0;", "9.0 +;"));
  rec.dispatch("broken-kernel", broken, [t], 1);
  const err = await assertRejects(() => rec.submit(), GpuError);
  assert(err.message.startsWith('kernel "broken-kernel"'), err.message);
  assert(!err.message.includes("\n"));
});

gpuTest("runtime: a binding the kernel cannot use names the operation", async (gpu) => {
  const rec = new Recorder(gpu);
  const t = createTensor(gpu, [5], "f32", "t");
  const pipeline = getPipeline(gpu, "fill-probe", FILL_PROBE);
  rec.dispatch("two-bindings-for-one", pipeline, [t, t], 1);
  const err = await assertRejects(() => rec.submit(), GpuError);
  assert(err.message.startsWith('op "two-bindings-for-one"'), err.message);
});

gpuTest("runtime: a tensor beyond the adapter's buffer limit is refused by name", (gpu) => {
  const n = Math.floor(gpu.limits.maxBufferSize / 4) + 1;
  assertThrows(() => createTensor(gpu, [n], "f32", "huge"), GpuError, 'tensor "huge"');
  assertThrows(() => createTensor(gpu, [2, -1], "f32", "neg"), GpuError, "bad shape");
});

Deno.test("runtime: no adapter gives one message saying what to install", async () => {
  const none = { requestAdapter: () => Promise.resolve(null) } as unknown as GPU;
  const err = await assertRejects(() => requestGpu({ gpu: none }), NoAdapterError);
  assert(err.message.includes("apt-get install mesa-vulkan-drivers"), err.message);
  assert(err.message.includes("driver"), err.message);
  assert(!err.message.includes("\n"));
  const throwing = {
    requestAdapter: () => Promise.reject(new Error("vkCreateInstance failed")),
  } as unknown as GPU;
  const err2 = await assertRejects(() => requestGpu({ gpu: throwing }), NoAdapterError);
  assert(err2.message.includes("vkCreateInstance failed"), err2.message);
});

Deno.test({
  name: "runtime: a lost device is reported with its reason",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const gpu = await requestGpu();
    const t = createTensor(gpu, [3], "f32", "t");
    const rec = new Recorder(gpu);
    fill(rec, t, 1); // recorded before the loss, submitted after it
    gpu.destroy();
    // At once, not only once the device's loss report has come.
    assertThrows(() => createTensor(gpu, [3], "f32", "at once"), DeviceLostError, "destroyed");
    await gpu.device.lost;
    await new Promise((r) => setTimeout(r, 0));
    const err = await assertRejects(() => rec.submit(), DeviceLostError);
    assert(err.message.includes("reason: destroyed"), err.message);
    assertThrows(() => fill(rec, t, 2), DeviceLostError);
    assertThrows(() => createTensor(gpu, [3], "f32", "after"), DeviceLostError);
    await assertRejects(() => t.download(), DeviceLostError);
    // A dtype no type checker saw (a JavaScript caller).
    assertThrows(
      () => createTensor(gpu, [3], "f64" as never, "x"),
      GpuError,
      'tensor "x": dtype "f64" is not one of f32, f16, i32, u32',
    );
  },
});

Deno.test({
  name: "runtime: getGpu gives a new device once the process-wide one is lost",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const first = await getGpu();
    assert((await getGpu()) === first, "the same device while it lives");
    first.destroy();
    const second = await getGpu();
    assert(second !== first && second.lost === null, "a new device after the loss");
    // Usable: a tensor filled and read back.
    const t = createTensor(second, [2], "f32", "t");
    const rec = new Recorder(second);
    fill(rec, t, 3);
    await rec.submit();
    assertEquals([...(await t.download())], [3, 3]);
    t.destroy();
  },
});
