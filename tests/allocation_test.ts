// Allocation accounting (Gpu.liveBytes / peakBytes) and the Recorder's submitted-command counts.

import { assert, assertEquals } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import type { Gpu } from "../kernels/device.ts";
import { readConfig } from "../model/config.ts";
import { createPeft, PEFT_DEFAULTS } from "../peft/method.ts";
import type { TrainBatch } from "../train/batches.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import { Trainer } from "../train/trainer.ts";
import { TINY_BERT } from "./train_fixture.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder, submittedCounts } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

gpuTest("allocation: tensors count while alive, the peak stays after destroy", (gpu) => {
  const base = gpu.liveBytes;
  gpu.resetPeak();
  assertEquals(gpu.peakBytes, base);
  const a = createTensor(gpu, [7, 33], "f32", "a"); // 924 bytes
  const b = createTensor(gpu, [5], "f16", "b"); // 10 bytes, rounded up to 12
  const c = tensorFromArray(gpu, Int32Array.from([1, 2, 3]), [3], "c"); // 12 bytes
  assertEquals(gpu.liveBytes - base, 924 + 12 + 12);
  assertEquals(gpu.peakBytes - base, 924 + 12 + 12);
  a.destroy();
  assertEquals(gpu.liveBytes - base, 24);
  assertEquals(gpu.peakBytes - base, 948);
  b.destroy();
  c.destroy();
  assertEquals(gpu.liveBytes, base);
  assertEquals(gpu.peakBytes - base, 948);
  gpu.resetPeak();
  assertEquals(gpu.peakBytes, base);
});

gpuTest("allocation: views do not count, destroying twice or via a view frees once", (gpu) => {
  const base = gpu.liveBytes;
  gpu.resetPeak();
  const t = createTensor(gpu, [130], "f32", "t");
  const v1 = t.view(0, [64]);
  const v2 = t.view(256, [33]);
  assertEquals(v1.numel + v2.numel, 97);
  assertEquals(gpu.liveBytes - base, 520);
  v2.destroy(); // frees the whole buffer
  assertEquals(gpu.liveBytes, base);
  t.destroy();
  v1.destroy();
  assertEquals(gpu.liveBytes, base);
  assertEquals(gpu.peakBytes - base, 520);
});

gpuTest("allocation: a download's staging buffer counts only while it lives", async (gpu) => {
  const t = tensorFromArray(gpu, Float32Array.from([1, 2, 3, 4, 5, 6, 7]), [7], "t");
  const base = gpu.liveBytes;
  gpu.resetPeak();
  assertEquals(await t.download(), Float32Array.from([1, 2, 3, 4, 5, 6, 7]));
  assertEquals(gpu.liveBytes, base);
  assertEquals(gpu.peakBytes - base, 28);
  t.destroy();
});

gpuTest("recorder: submittedCounts counts dispatches, copies and submits", async (gpu) => {
  const a = createTensor(gpu, [33], "f32", "a");
  const b = createTensor(gpu, [33], "f32", "b");
  const before = submittedCounts(gpu);
  const rec = new Recorder(gpu);
  fill(rec, a, 1);
  fill(rec, b, 2);
  rec.copy("copy", a, b);
  assertEquals(rec.length, 3);
  await rec.submit();
  await new Recorder(gpu).submit(); // empty: nothing submitted
  const after = submittedCounts(gpu);
  assertEquals(after.submits - before.submits, 1);
  assertEquals(after.dispatches - before.dispatches, 2);
  assertEquals(after.copies - before.copies, 1);
  assertEquals(await b.download(), new Float32Array(33).fill(1));
  a.destroy();
  b.destroy();
});

// The "no per-step allocation": after a stage's first step (which may size workspaces),
// a training step creates no GPU buffer: activations, gradients, optimizer state, workspaces and
// the launches' uniforms all live in buffers made before it.
/** A Trainer of the tiny BERT with a stage begun: full fine-tuning, or a PEFT method's. */
async function tinyTrainer(
  gpu: Gpu,
  mode: "ft" | "lora" | "prefix",
  maxSeq: number,
): Promise<Trainer> {
  const config = await readConfig(`${TINY_BERT}/config.json`);
  const peft = mode === "ft" ? null : createPeft(mode, gpu, config, PEFT_DEFAULTS);
  const trainer = new Trainer(gpu, {
    config,
    loss: "bce",
    headClasses: 1,
    maxExamples: 3,
    maxSeq,
    headSeed: 1,
    dropoutSeed: 2,
    peft,
    adamw: ADAMW_DEFAULTS,
  });
  trainer.beginStage(
    mode === "ft"
      ? { head: true, backbone: "all", peft: false }
      : { head: true, backbone: "peft", peft: true },
    ADAMW_DEFAULTS,
  );
  return trainer;
}

/** Three examples of `S` tokens, drawn from `seed`. */
function tinyBatch(S: number, seed: number): TrainBatch {
  return {
    examples: 3,
    encoder: {
      inputIds: Uint32Array.from({ length: 3 * S }, (_, i) => 5 + ((i * 7 + seed) % 90)),
      batch: 3,
      seqLen: S,
    },
    targets: Float32Array.from([0, 1, seed % 2]),
  };
}

for (const mode of ["ft", "lora", "prefix"] as const) {
  gpuTest(`allocation: training steps after the first create no buffer (${mode})`, async (gpu) => {
    const S = 9;
    const trainer = await tinyTrainer(gpu, mode, S);
    try {
      const batch = (seed: number) => tinyBatch(S, seed);
      await trainer.step(batch(0), 1e-3, 0);
      const device = gpu.device;
      const create = device.createBuffer;
      let created = 0;
      device.createBuffer = (descriptor: GPUBufferDescriptor) => {
        created++;
        return create.call(device, descriptor);
      };
      const live = gpu.liveBytes;
      try {
        for (let step = 1; step < 4; step++) await trainer.step(batch(step), 1e-3, step);
      } finally {
        device.createBuffer = create;
      }
      assertEquals(created, 0, "buffers created by steps 2-4");
      assertEquals(gpu.liveBytes, live, "live bytes after steps 2-4");
      const stats = await trainer.takeStats();
      assert(stats.every((s) => Number.isFinite(s.loss)), "finite losses");
    } finally {
      trainer.destroy();
    }
  });
}

// Batches padded to a growing length grow the ops' workspaces: each outgrown buffer was left to
// the garbage collector (which knows nothing of GPU memory), one per length, until it happened to
// run. Now every workspace holds one buffer at a time.
gpuTest("allocation: steps at growing lengths leave one live buffer per workspace", async (gpu) => {
  const lengths = [4, 6, 9, 13, 17];
  const trainer = await tinyTrainer(gpu, "prefix", lengths.at(-1)!);
  const device = gpu.device;
  const create = device.createBuffer;
  const live = new Map<string, number>();
  device.createBuffer = (descriptor: GPUBufferDescriptor) => {
    const buffer = create.call(device, descriptor);
    const label = descriptor.label ?? "";
    live.set(label, (live.get(label) ?? 0) + 1);
    const destroy = buffer.destroy;
    buffer.destroy = () => {
      live.set(label, live.get(label)! - 1);
      destroy.call(buffer);
    };
    return buffer;
  };
  try {
    for (const [step, S] of lengths.entries()) await trainer.step(tinyBatch(S, step), 1e-3, step);
    const stats = await trainer.takeStats();
    assert(stats.every((s) => Number.isFinite(s.loss)), "finite losses");
    const grown = [...live].filter(([, n]) => n > 1);
    assertEquals(grown, [], "labels with more than one live buffer made during the steps");
    assert(live.size > 0, "the steps made workspaces");
  } finally {
    device.createBuffer = create;
    trainer.destroy();
  }
});
