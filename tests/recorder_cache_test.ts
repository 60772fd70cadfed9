// The host-side caches of a launch: kernel sources (cachedSource), pipelines (getPipeline) and
// bind groups (BindGroupCache), which a training step's ~1,000 launches ask for every step.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { GpuError } from "../kernels/device.ts";
import { cachedSource, getPipeline } from "../kernels/pipeline.ts";
import { BindGroupCache, Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import { Workspace } from "../kernels/workspace.ts";

/** out[i] = x[i] · scale + i, over `count` elements: what the bind groups below bind. */
const SCALE_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { scale: f32, count: u32 }
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x < p.count) { out[gid.x] = x[gid.x] * p.scale + f32(gid.x); }
}
`;

function params(scale: number, count: number): Uint32Array {
  const u = new Uint32Array([0, count]);
  new Float32Array(u.buffer)[0] = scale;
  return u;
}

Deno.test("cachedSource: one generation per argument list, the same string object after", () => {
  let calls = 0;
  const source = cachedSource((n: number, f16: boolean, t: { a: string }) => {
    calls++;
    return `// ${n} ${f16} ${t.a}\n`.repeat(1000);
  });
  const first = source(3, false, { a: "f32" });
  assert(source(3, false, { a: "f32" }) === first, "not the same object");
  assertEquals(calls, 1);
  const other = source(3, true, { a: "f32" });
  assert(other !== first);
  assertEquals(calls, 2);
  assertEquals(source(4, false, { a: "f16" }).slice(0, 12), "// 4 false f");
  assertEquals(calls, 3);
});

gpuTest("getPipeline: one pipeline per source and entry point", (gpu) => {
  const a = getPipeline(gpu, "scale", SCALE_WGSL);
  // An equal source built anew (another string object) finds the same pipeline.
  assert(getPipeline(gpu, "scale again", [SCALE_WGSL].join("")) === a, "not the same object");
  assert(getPipeline(gpu, "scale", SCALE_WGSL.replace("+ f32(gid.x)", "")) !== a);
});

gpuTest(
  "BindGroupCache: repeated submits reuse their bind groups and compute the same",
  async (gpu) => {
    const n = 37;
    const x = tensorFromArray(
      gpu,
      Float32Array.from({ length: n }, (_, i) => 0.25 * i - 3),
      [n],
      "x",
    );
    // A second range of `out`, at the first offset a storage binding may start at.
    const tail = gpu.limits.minStorageBufferOffsetAlignment;
    const out = createTensor(gpu, [tail / 4 + n], "f32", "out");
    const cache = new BindGroupCache();
    const pipeline = getPipeline(gpu, "scale", SCALE_WGSL);
    const record = (rec: Recorder, scale: number) => {
      rec.dispatch("scale", pipeline, [x, out.view(0, [n])], 1, params(scale, n));
      rec.dispatch("scale again", pipeline, [x, out.view(0, [n])], 1, params(scale + 1, n));
    };
    try {
      const results: Float32Array[] = [];
      for (let step = 0; step < 3; step++) {
        const rec = new Recorder(gpu, cache);
        record(rec, 1.5);
        await rec.submit();
        // Two launches, two uniform offsets: two bind groups, made by the first submit only.
        assertEquals(cache.size, 2);
        results.push((await out.download()) as Float32Array);
      }
      for (const r of results.slice(1)) assertEquals(r, results[0]);
      const expected = Float32Array.from({ length: n }, (_, i) => (0.25 * i - 3) * 2.5 + i);
      assertEquals(results[0].slice(0, n), expected);
      // Other values in the same places need no new bind group; another range does. (As many
      // launches as before: more would outgrow the shared uniform buffer, and a new one is bound.)
      const rec = new Recorder(gpu, cache);
      rec.dispatch("scale", pipeline, [x, out.view(0, [n])], 1, params(-1, n));
      rec.dispatch("scale tail", pipeline, [x, out.view(tail, [n])], 1, params(1, n));
      await rec.submit();
      assertEquals(cache.size, 3);
      const after = (await out.download()) as Float32Array;
      assertEquals(after[1], (0.25 - 3) * -1 + 1);
      assertEquals(after[tail / 4 + 2], (0.5 - 3) * 1 + 2);
    } finally {
      x.destroy();
      out.destroy();
    }
  },
);

gpuTest("BindGroupCache: a bind group that fails validation is not kept", async (gpu) => {
  const x = createTensor(gpu, [300], "f32", "x");
  const out = createTensor(gpu, [300], "f32", "out");
  const cache = new BindGroupCache();
  const pipeline = getPipeline(gpu, "scale", SCALE_WGSL);
  try {
    const rec = new Recorder(gpu, cache);
    // A storage binding past the buffer's end: WebGPU refuses the bind group. (A misaligned
    // offset, which it refuses too, the Recorder refuses at the dispatch.)
    rec.dispatch(
      "scale past the end",
      pipeline,
      [x, { buffer: out.buffer, offset: 256, size: 4096 }],
      1,
      params(1, 16),
    );
    const message = await rec.submit().then(() => "no error", (e) => {
      assert(e instanceof GpuError, String(e));
      return e.message;
    });
    assert(message.includes("scale past the end"), message);
    assertEquals(cache.size, 0);
  } finally {
    x.destroy();
    out.destroy();
  }
});

gpuTest("BindGroupCache: starts over when a workspace outgrows its buffer", (gpu) => {
  const cache = new BindGroupCache();
  const group = {} as GPUBindGroup;
  cache.set("a", group);
  const scratch = new Workspace("recorder cache test scratch");
  scratch.view(gpu, [8]);
  assert(cache.get("a") === group, "a first buffer outgrows nothing");
  scratch.view(gpu, [8000]); // the 8-element buffer is retired
  assertEquals(cache.get("a"), undefined);
  assertEquals(cache.size, 0);
});

gpuTest("Workspace: an outgrown buffer is freed at once when nothing recorded binds it", (gpu) => {
  // It was left to the garbage collector: a sequence length that kept growing held one buffer
  // per length, uncounted by the GC, until it happened to run.
  const scratch = new Workspace("outgrown, unbound");
  const base = gpu.liveBytes;
  for (const n of [7, 70, 700, 7000]) {
    scratch.view(gpu, [n]);
    assertEquals(gpu.liveBytes - base, 4 * n, `after growing to ${n}`);
  }
});

gpuTest(
  "Workspace: an outgrown buffer bound by unsubmitted commands is freed after their submit",
  async (gpu) => {
    // Destroying it at once would fail the submit (a destroyed buffer in a command buffer).
    const n = 29;
    const x = tensorFromArray(
      gpu,
      Float32Array.from({ length: n }, (_, i) => i % 5 - 1.5),
      [n],
      "x",
    );
    const out = createTensor(gpu, [n], "f32", "out");
    const pipeline = getPipeline(gpu, "scale", SCALE_WGSL);
    const scratch = new Workspace("outgrown, bound");
    const base = gpu.liveBytes;
    const rec = new Recorder(gpu);
    const other = new Recorder(gpu);
    try {
      const small = scratch.view(gpu, [n]);
      rec.dispatch("scale into scratch", pipeline, [x, small], 1, params(3, n));
      rec.copy("scratch out", small, out);
      other.dispatch("scale elsewhere", pipeline, [x, out], 1, params(1, n)); // binds other buffers
      scratch.view(gpu, [5000]);
      assertEquals(gpu.liveBytes - base, 4 * n + 4 * 5000, "kept while rec binds it");
      await other.submit();
      assertEquals(gpu.liveBytes - base, 4 * n + 4 * 5000, "other's submit frees nothing");
      await rec.submit();
      assertEquals(gpu.liveBytes - base, 4 * 5000, "freed once rec is submitted");
      const xs = await x.download() as Float32Array;
      assertEquals(
        Array.from(await out.download() as Float32Array),
        Array.from(xs, (v, i) => Math.fround(v * 3 + i)),
      );
      scratch.view(gpu, [9000]);
      assertEquals(gpu.liveBytes - base, 4 * 9000, "nothing unsubmitted binds it: freed at once");
    } finally {
      x.destroy();
      out.destroy();
    }
  },
);

gpuTest("Workspace: a view kept past the workspace's growth is refused when recorded", (gpu) => {
  // Its buffer is destroyed once nothing recorded binds it: a command recorded with it later
  // failed at submit as "Buffer ... has been destroyed", naming no view.
  const scratch = new Workspace("kept view");
  const small = scratch.view(gpu, [7]);
  scratch.view(gpu, [700]);
  const other = createTensor(gpu, [7], "f32", "other");
  try {
    const rec = new Recorder(gpu);
    const e = assertThrows(
      () => rec.dispatch("scale", getPipeline(gpu, "scale", SCALE_WGSL), [other, small], 1),
      GpuError,
    );
    assertEquals(
      e.message,
      'scale: "kept view" is a view of a workspace that has grown since it was taken: take the ' +
        "view again (a Workspace view lasts until the next, larger one)",
    );
    assertThrows(() => rec.copy("copy", other, small), GpuError, '"kept view" is a view');
    assertEquals(rec.length, 0);
    rec.copy("copy", other, scratch.view(gpu, [7]));
    assertEquals(rec.length, 1);
  } finally {
    other.destroy();
  }
});

Deno.test("BindGroupCache: when full, drops the least recently used", () => {
  // Starting over when full rebuilt the groups every step uses along with a stale length's.
  const cache = new BindGroupCache(2);
  const [a, b, c] = [{}, {}, {}] as GPUBindGroup[];
  cache.set("a", a);
  cache.set("b", b);
  assert(cache.get("a") === a, "a used again: b is now the least recent");
  cache.set("c", c);
  assertEquals(cache.size, 2);
  assertEquals(cache.get("b"), undefined);
  assert(cache.get("a") === a && cache.get("c") === c, "a and c kept");
  cache.clear();
  assertEquals(cache.size, 0);
});

gpuTest("Recorder: submits not awaited in between run each with its own uniforms", async (gpu) => {
  // Each submit packs its uniforms into the device's one uniform buffer and awaits its error
  // checks before queue.submit: the second one's uniforms once landed in that gap, and both ran
  // with them.
  const n = 29;
  const x = tensorFromArray(gpu, Float32Array.from({ length: n }, (_, i) => i % 7 - 2.5), [n], "x");
  const outs = [0, 1, 2].map((i) => createTensor(gpu, [n], "f32", `out${i}`));
  const pipeline = getPipeline(gpu, "scale", SCALE_WGSL);
  const submits = outs.map((out, i) => {
    const rec = new Recorder(gpu);
    rec.dispatch("scale", pipeline, [x, out], 1, params(i + 2, n));
    return rec.submit();
  });
  // One Recorder, submitted twice without an await.
  const twice = createTensor(gpu, [n], "f32", "twice");
  const rec = new Recorder(gpu);
  rec.dispatch("scale", pipeline, [x, twice], 1, params(5, n));
  const first = rec.submit();
  rec.dispatch("scale", pipeline, [x, outs[0]], 1, params(7, n));
  await Promise.all([...submits, first, rec.submit()]);
  const xs = await x.download() as Float32Array;
  const expect = (scale: number) => Array.from(xs, (v, i) => Math.fround(v * scale + i));
  assertEquals(Array.from(await outs[1].download() as Float32Array), expect(3));
  assertEquals(Array.from(await outs[2].download() as Float32Array), expect(4));
  assertEquals(Array.from(await outs[0].download() as Float32Array), expect(7));
  assertEquals(Array.from(await twice.download() as Float32Array), expect(5));
  for (const t of [x, twice, ...outs]) t.destroy();
});
