// Parameters, gradients and AdamW's moments in arenas (kernels/arena.ts, train/optimizer.ts): a
// training step's optimizer work is a handful of launches whatever the number of tensors, and
// what it computes is bitwise what one adamwStep per tensor computes.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { adamwStep } from "../kernels/adamw.ts";
import { createArena, slotAlignment, slotRuns, spanOf } from "../kernels/arena.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { Recorder } from "../kernels/recorder.ts";
import { tensorFromArray } from "../kernels/tensor.ts";
import { readConfig } from "../model/config.ts";
import { createPeft, PEFT_DEFAULTS, type PeftName } from "../peft/method.ts";
import type { TrainBatch } from "../train/batches.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import type { StageTrains } from "../train/strategy.ts";
import { Trainer } from "../train/trainer.ts";
import { downloadTensors } from "../train/training_checkpoint.ts";
import { TINY_BERT } from "./train_fixture.ts";

type Mode = "ft" | PeftName;

const S = 9;

async function trainerFor(gpu: Gpu, mode: Mode): Promise<Trainer> {
  const config = await readConfig(`${TINY_BERT}/config.json`);
  const peft = mode === "ft" ? null : createPeft(mode, gpu, config, PEFT_DEFAULTS);
  const trainer = new Trainer(gpu, {
    config,
    loss: "bce",
    headClasses: 1,
    maxExamples: 3,
    maxSeq: S,
    maxPrefix: peft?.prefixLength ?? 0,
    headSeed: 1,
    dropoutSeed: 2,
    peft,
    adamw: ADAMW_DEFAULTS,
  });
  const trains: StageTrains = mode === "ft"
    ? { head: true, backbone: "all", peft: false }
    : { head: true, backbone: "peft", peft: true };
  trainer.beginStage(trains, ADAMW_DEFAULTS);
  return trainer;
}

function batch(seed: number): TrainBatch {
  return {
    examples: 3,
    encoder: {
      inputIds: Uint32Array.from({ length: 3 * S }, (_, i) => 5 + ((i * 7 + seed * 13) % 90)),
      batch: 3,
      seqLen: S,
    },
    targets: Float32Array.from([0, 1, seed % 2]),
  };
}

// tiny-bert: 2 layers, H 24, I 37; the head 2048 wide with one output. AdamW: one vec4 launch
// per run of one weight decay (plus a scalar one for a length not a multiple of 4): ft 4 runs
// (backbone decayed, backbone no-decay, head weights, head biases: 2048 + 1 elements, so a tail
// launch); BitFit, LoRA and prefix 3 (their tensors, the head's two). gradNormClip: one launch
// per gradient arena (the backbone's or the PEFT method's, the head's) and its finishing launch.
// One launch per tensor took 41 + 42 (ft), 21 + 22 (BitFit), 20 + 21 (LoRA), 8 + 9 (prefix).
const EXPECTED: Record<Mode, { tensors: number; runs: number; adamw: number; norm: number }> = {
  ft: { tensors: 37 + 4, runs: 4, adamw: 5, norm: 3 },
  bitfit: { tensors: 17 + 4, runs: 3, adamw: 4, norm: 3 },
  lora: { tensors: 16 + 4, runs: 3, adamw: 4, norm: 3 },
  prefix: { tensors: 4 + 4, runs: 3, adamw: 4, norm: 3 },
};

for (const mode of ["ft", "bitfit", "lora", "prefix"] as const) {
  gpuTest(`optimizer arena: one step's AdamW and grad-norm launches (${mode})`, async (gpu) => {
    const trainer = await trainerFor(gpu, mode);
    try {
      const opt = trainer.optimizer!;
      const want = EXPECTED[mode];
      assertEquals(opt.tensors.length, want.tensors, "trainable tensors");
      assertEquals(opt.runCount, want.runs, "runs");
      const rec = new Recorder(gpu);
      opt.record(rec, 1e-3);
      const labels = rec.labels;
      assertEquals(labels.length, want.adamw + want.norm, labels.join(", "));
      assertEquals(labels.filter((l) => l.startsWith("adamwStepGroup")).length, want.adamw);
      assertEquals(labels.filter((l) => l.startsWith("gradNormClip")).length, want.norm);
      await rec.submit();
      // And a whole step runs with them.
      await trainer.step(batch(0), 1e-3, 1);
      const stats = await trainer.takeStats();
      assert(stats.every((s) => Number.isFinite(s.loss) && Number.isFinite(s.gradNorm)));
    } finally {
      trainer.destroy();
    }
  });
}

// Three steps with clipping: after each, every parameter, m and v equals bitwise one adamwStep
// of that tensor alone (separate buffers) from the step's starting values, its gradient and the
// step's clip coefficient; the norm is √Σg² within gradNormClip's error bound.
for (const mode of ["ft", "bitfit", "lora"] as const) {
  gpuTest(`optimizer arena: 3 steps are bitwise per-tensor AdamW (${mode})`, async (gpu) => {
    const trainer = await trainerFor(gpu, mode);
    try {
      const opt = trainer.optimizer!;
      const s = opt.settings;
      assert(s.maxGradNorm > 0, "clipping on");
      const lr = 2e-3;
      const moments = opt.moments();
      // Per tensor: param, m, v and (after a step) its gradient.
      const read = async () => {
        const list = opt.tensors.flatMap((t) => {
          const { m, v } = moments.get(t.name)!;
          return [t.param, m, v, t.grad];
        });
        const values = await downloadTensors(list);
        return new Map(opt.tensors.map((t, i) => [t.name, values.slice(4 * i, 4 * i + 4)]));
      };
      for (let k = 0; k < 3; k++) {
        const before = await read();
        await trainer.step(batch(k), lr, k);
        const after = await read();
        const norm = (await opt.normTensor.download()) as Float32Array;
        let sum = 0;
        const rec = new Recorder(gpu);
        const coef = tensorFromArray(gpu, norm, [2], "coefficient");
        const replicas = [];
        for (const t of opt.tensors) {
          const g = after.get(t.name)![3];
          for (const x of g) sum += x * x;
          const [p, m, v] = before.get(t.name)!.slice(0, 3).map((a, i) =>
            tensorFromArray(gpu, a, [...t.param.shape], `${t.name} ${i}`)
          );
          const grad = tensorFromArray(gpu, g, [...t.param.shape], `${t.name} grad`);
          adamwStep(rec, {
            param: p,
            grad,
            m,
            v,
            weightDecay: t.decay ? s.weightDecay : 0,
            lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            step: k + 1,
            gradScale: coef,
            gradScaleIndex: 1,
          });
          replicas.push({ name: t.name, tensors: [p, m, v, grad] });
        }
        await rec.submit();
        const replayed = await downloadTensors(replicas.flatMap((r) => r.tensors.slice(0, 3)));
        replicas.forEach((r, n) => {
          const got = after.get(r.name)!;
          for (let i = 0; i < 3; i++) {
            assertEquals(
              new Uint32Array(got[i].buffer),
              new Uint32Array(replayed[3 * n + i].buffer),
              `step ${k + 1}: ${["param", "m", "v"][i]} of ${r.name}`,
            );
          }
          for (const t of r.tensors) t.destroy();
        });
        coef.destroy();
        const exact = Math.sqrt(sum);
        assert(
          Math.abs(norm[0] - exact) <= 1e-5 * exact,
          `step ${k + 1}: norm ${norm[0]}, √Σg² ${exact}`,
        );
        assert(norm[1] < 1, `step ${k + 1}: the clip coefficient ${norm[1]} clips`);
      }
    } finally {
      trainer.destroy();
    }
  });
}

gpuTest("optimizer arena: slots, zero padding, runs, and cuts at maxBufferSize", async (gpu) => {
  const align = slotAlignment(gpu);
  const specs = [
    { name: "a", shape: [3, 5] },
    { name: "b", shape: [70] },
    { name: "c", shape: [0] },
    { name: "d", shape: [7] },
  ];
  const arena = createArena(gpu, specs, "test arena");
  try {
    assertEquals(arena.buffers.length, 1);
    const [a, b, c, d] = specs.map((s) => arena.get(s.name));
    const up = (bytes: number) => Math.ceil(bytes / align) * align;
    const at = [0, up(60), up(up(60) + 280), up(up(up(60) + 280) + 4)];
    assertEquals([a.offset, b.offset, c.offset, d.offset], at);
    assertEquals(arena.bytes, at[3] + 28);
    assertEquals(slotRuns([[a, b, c, d]]), [{ start: 0, end: 4 }]);
    assertEquals(slotRuns([[a, b, d]]), [{ start: 0, end: 2 }, { start: 2, end: 3 }]);
    assertEquals(slotRuns([[a, b]], () => false).length, 2);
    a.upload(new Float32Array(15).fill(1));
    d.upload(new Float32Array(7).fill(2));
    const span = spanOf([a, b, c, d], { start: 0, end: 4 });
    assertEquals(span.offset, 0);
    assertEquals(span.numel, (d.offset + 28) / 4);
    const all = (await span.download()) as Float32Array;
    assertEquals(all.filter((x) => x === 1).length, 15);
    assertEquals(all.filter((x) => x === 2).length, 7);
    assertEquals(all.filter((x) => x === 0).length, all.length - 22, "padding is zero");
  } finally {
    arena.destroy();
    arena.destroy();
  }

  // A device whose largest buffer holds two slots: the arena is cut, runs end at the cut.
  const limits = {
    maxBufferSize: 2 * align,
    maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
    minStorageBufferOffsetAlignment: gpu.limits.minStorageBufferOffsetAlignment,
  };
  const small = Object.create(gpu, { limits: { value: limits } }) as Gpu;
  const live = gpu.liveBytes;
  const cut = createArena(small, [
    { name: "x", shape: [3] },
    { name: "y", shape: [align / 4 + 1] },
    { name: "z", shape: [5] },
    { name: "w", shape: [2] },
  ], "cut arena");
  try {
    assertEquals(cut.buffers.length, 3);
    const [x, y, z, w] = ["x", "y", "z", "w"].map((n) => cut.get(n));
    assert(x.buffer !== y.buffer && y.buffer !== z.buffer && z.buffer === w.buffer);
    assertEquals([x.offset, y.offset, z.offset, w.offset], [0, 0, 0, align]);
    assertEquals(slotRuns([[x, y, z, w]]), [
      { start: 0, end: 1 },
      { start: 1, end: 2 },
      { start: 2, end: 4 },
    ]);
    assertEquals(gpu.liveBytes - live, 12 + (align + 4) + (align + 8));
    assertThrows(
      () => createArena(small, [{ name: "big", shape: [align] }], "too big"),
      GpuError,
      "more than this adapter's largest buffer",
    );
  } finally {
    cut.destroy();
  }
  assertEquals(gpu.liveBytes, live);
});
