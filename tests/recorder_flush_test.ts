// Recorder.flush, boundary and flushEvery: commands handed to the queue in parts as they are
// recorded run in order with their own uniforms, a flush waits for nothing and reorders nothing,
// parts fall only between launchers, and what went wrong in a flushed part is named by the submit
// that follows.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { addInPlace, scale } from "../kernels/add.ts";
import { GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { columnSum, SUM_BLOCK_ROWS } from "../kernels/linear.ts";
import { getPipeline } from "../kernels/pipeline.ts";
import { Recorder, submittedCounts } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

gpuTest("recorder flush: parts run in order, each launch with its own uniforms", async (gpu) => {
  const n = 37;
  const t = createTensor(gpu, [n], "f32", "t");
  const u = createTensor(gpu, [n], "f32", "u");
  const views = [0, 1, 2, 3, 4].map((i) => createTensor(gpu, [n], "f32", `v${i}`));
  const before = submittedCounts(gpu);
  // Two commands a part: every fill's value (a uniform) must survive the next part's packing.
  const rec = new Recorder(gpu, undefined, 2);
  const ops = [
    ...views.map((v, i) => () => fill(rec, v, i + 0.5)),
    () => fill(rec, t, 3),
    () => scale(rec, { x: t, out: u, alpha: 2 }), // reads what an earlier part wrote
    () => addInPlace(rec, { x: u, into: t }),
    () => scale(rec, { x: t, out: u, alpha: -1 }),
  ];
  let flushes = 0;
  for (const op of ops) {
    op();
    if (rec.boundary()) flushes++;
    assert(rec.length < 2, `flushed at the boundary (${rec.length} left)`);
  }
  assertEquals(flushes, 4);
  assertEquals(new Recorder(gpu).boundary(), false);
  assertEquals(new Recorder(gpu, undefined, Infinity).boundary(), false);
  await rec.submit();
  const after = submittedCounts(gpu);
  assertEquals(after.dispatches - before.dispatches, 9);
  assert(after.submits - before.submits >= 5, `${after.submits - before.submits} submits`);
  for (const [i, v] of views.entries()) {
    assertEquals(await v.download(), new Float32Array(n).fill(i + 0.5), v.label);
  }
  assertEquals(await t.download(), new Float32Array(n).fill(9));
  assertEquals(await u.download(), new Float32Array(n).fill(-9));
  for (const x of [t, u, ...views]) x.destroy();
});

gpuTest(
  "recorder flush: nothing is flushed past a submit that has not reached the queue",
  async (gpu) => {
    const a = tensorFromArray(gpu, new Float32Array([1, 2, 3]), [3], "a");
    const b = createTensor(gpu, [3], "f32", "b");
    const first = new Recorder(gpu);
    fill(first, a, 7);
    const second = new Recorder(gpu);
    scale(second, { x: a, out: b, alpha: 3 });
    assert(!new Recorder(gpu).flush(), "an empty recorder flushes nothing");
    const pending = first.submit(); // not awaited: its commands are not on the queue yet
    assert(!second.flush(), "the second recorder's work would overtake the first's");
    assertEquals(second.length, 1);
    await pending;
    assert(second.flush(), "the first submit reached the queue");
    assertEquals(second.length, 0);
    await second.submit();
    assertEquals(await b.download(), new Float32Array([21, 21, 21]));
    a.destroy();
    b.destroy();
  },
);

gpuTest("recorder flush: a bad launch in a flushed part is named by the submit", async (gpu) => {
  const t = createTensor(gpu, [5], "f32", "t");
  const rec = new Recorder(gpu);
  fill(rec, t, 1);
  const pipeline = getPipeline(gpu, "recorder flush probe", FLUSH_PROBE);
  rec.dispatch("too-wide-in-a-flushed-part", pipeline, [t], [70000, 1, 1]);
  assert(rec.flush());
  fill(rec, t, 2);
  const err = await assertRejects(() => rec.submit(), GpuError);
  assert(
    /op "too-wide-in-a-flushed-part" \(command 2 of 2, part 1 of 2\)/.test(err.message),
    err.message,
  );
  assert(!err.message.includes("\n"));
  // The device stays usable, and the recorder too.
  fill(rec, t, 3);
  assert(rec.flush());
  await rec.submit();
  assertEquals(await t.download(), new Float32Array(5).fill(3));
  t.destroy();
});

gpuTest(
  "recorder flush: another recorder's submit between two parts leaves a launcher's workspace alone",
  async (gpu) => {
    // columnSum over this many rows is two launches sharing a workspace (blocks, then their sum):
    // parts end at boundaries between launchers, never between those two, however many commands
    // are pending (a flush counted inside dispatch parted them after the blocks, and b's submit
    // then overwrote the workspace before a's sum read it).
    const rows = 2 * SUM_BLOCK_ROWS, cols = 8;
    const srcA = tensorFromArray(gpu, new Float32Array(rows * cols).fill(1), [rows, cols], "A");
    const srcB = tensorFromArray(gpu, new Float32Array(rows * cols).fill(2), [rows, cols], "B");
    const outA = createTensor(gpu, [cols], "f32", "outA");
    const outB = createTensor(gpu, [cols], "f32", "outB");
    const a = new Recorder(gpu, undefined, 2);
    fill(a, outA, 0);
    columnSum(a, "A", srcA, outA, rows, cols, false);
    assertEquals(a.length, 3, "nothing flushed inside the launchers");
    const b = new Recorder(gpu);
    columnSum(b, "B", srcB, outB, rows, cols, false);
    await b.submit();
    assert(a.boundary());
    fill(a, srcB, 5); // a second part of a, after b's work
    assert(!a.boundary(), "one command pending: under flushEvery");
    await a.submit();
    assertEquals(await outA.download(), new Float32Array(cols).fill(rows));
    assertEquals(await outB.download(), new Float32Array(cols).fill(2 * rows));
    for (const x of [srcA, srcB, outA, outB]) x.destroy();
  },
);

const FLUSH_PROBE = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> t: array<f32>;
@compute @workgroup_size(1)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x < arrayLength(&t)) { t[gid.x] = 4.0; }
}
`;
