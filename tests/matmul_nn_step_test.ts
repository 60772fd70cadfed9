// Whole training steps with every matrix product on an `nn_` variant (kernels/matmul.ts: a
// transposed operand copied untransposed into a workspace first), against the same steps on the
// default variants: bitwise the same losses, gradient norms and weights. What an autotune on a GPU
// may choose, exercised here in context: the forward X·Wᵀ, the backward dW = dYᵀ·X, LoRA's and
// attention's products, all in one submit that reuses the two workspaces call after call.

import { assert, assertEquals } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { randomBatch, stepTrainer } from "../bench/train_step.ts";
import type { Gpu } from "../kernels/device.ts";
import { NN_COPY, setMatmulTuner } from "../kernels/matmul.ts";
import { Recorder } from "../kernels/recorder.ts";
import type { Precision } from "../model/encoder.ts";

// 4 × 16 = 64 token rows: every weight gradient's k is a multiple of 4, so it can be copied.
const SHAPE = {
  layers: 2,
  hidden: 32,
  heads: 2,
  intermediate: 64,
  vocab: 50,
  batch: 4,
  seq: 16,
  maxPositions: 32,
};

async function twoSteps(gpu: Gpu, mode: "ft" | "lora", precision: Precision) {
  const { trainer } = stepTrainer(gpu, mode, SHAPE, precision);
  try {
    for (let step = 0; step < 2; step++) {
      await trainer.step(randomBatch(SHAPE.batch, SHAPE.seq, SHAPE.vocab, 10 + step), 1e-3, step);
    }
    const stats = await trainer.takeStats();
    const weights = new Map<string, Float32Array>();
    for (const [name, t] of trainer.trainableParameters()) {
      weights.set(name, (await t.download()) as Float32Array);
    }
    return { stats, weights };
  } finally {
    trainer.destroy();
  }
}

for (const [mode, precision] of [["ft", "f32"], ["lora", "f32"], ["ft", "f16"]] as const) {
  gpuTest(`nn_ variants: ${mode} ${precision} steps bitwise as the default's`, async (gpu) => {
    if (precision === "f16" && !gpu.hasF16) return; // no shader-f16 on this adapter
    const plain = await twoSteps(gpu, mode, precision);
    setMatmulTuner(gpu, () => "nn_vec4_8x8");
    // The copies really recorded, by operand: the forward's W (B) and the weight gradients' dY (A).
    const copies = { A: 0, B: 0 };
    const dispatch = Recorder.prototype.dispatch;
    Recorder.prototype.dispatch = function (label, ...rest) {
      if (label.endsWith(`${NN_COPY} A`)) copies.A++;
      if (label.endsWith(`${NN_COPY} B`)) copies.B++;
      return dispatch.call(this, label, ...rest);
    };
    try {
      const nn = await twoSteps(gpu, mode, precision);
      assert(copies.A > 0 && copies.B > 0, `copies: ${JSON.stringify(copies)}`);
      assert(plain.stats.every((s) => Number.isFinite(s.loss)), JSON.stringify(plain.stats));
      assertEquals(nn.stats, plain.stats);
      assertEquals([...nn.weights.keys()], [...plain.weights.keys()]);
      for (const [name, w] of nn.weights) assertEquals(w, plain.weights.get(name), name);
    } finally {
      Recorder.prototype.dispatch = dispatch;
      setMatmulTuner(gpu, undefined);
    }
  });
}
