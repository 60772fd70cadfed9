// The encoder with flash attention (kernels/flash_attention.ts) against the same encoder with the
// materialized attention (kernels/attention.ts), through a whole training step with dropout on,
// a padded row and a trained prefix on one layer, for BERT and RoBERTa; and the "auto" rule.
//
// Both kernels compute the same function with the same dropout bits in another order, so
// outputs and gradients agree to float32 rounding: hidden states within 1e-5 of their largest
// magnitude, gradients within 1e-5 of the step's largest gradient (measured on lavapipe: 2.7e-7
// and 2.8e-7 for BERT, 3.8e-7 and 8.8e-7 for RoBERTa).

import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  encoderStep,
  largestGradient,
  relError,
  seededWeights,
  smallConfig,
  STEP_BATCH,
  STEP_SEQ,
  type StepResult,
} from "./encoder_step.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import type { ModelConfig } from "../model/config.ts";
import {
  type AttentionKernels,
  chooseAttention,
  createEncoder,
  FLASH_ATTENTION_ABOVE_BYTES,
} from "../model/encoder.ts";

const P = 3, PREFIX_LAYER = 1;

async function step(gpu: Gpu, c: ModelConfig, attention: AttentionKernels): Promise<StepResult> {
  const H = c.hiddenSize, heads = c.numHeads, D = H / heads;
  const owned: Tensor[] = [];
  const tensor = (data: Float32Array | null, shape: number[], label: string) => {
    const t = data
      ? tensorFromArray(gpu, data, shape, label)
      : createTensor(gpu, shape, "f32", label);
    owned.push(t);
    return t;
  };
  const prefix = {
    key: tensor(Float32Array.from(randomValues(heads * P * D, 41)), [heads, P, D], "pk"),
    value: tensor(Float32Array.from(randomValues(heads * P * D, 42)), [heads, P, D], "pv"),
    dKey: tensor(null, [heads, P, D], "dpk"),
    dValue: tensor(null, [heads, P, D], "dpv"),
  };
  const enc = createEncoder(gpu, c, {
    maxBatch: STEP_BATCH,
    maxSeq: STEP_SEQ,
    maxPrefix: P,
    dropout: 0.1,
    attention,
    hooks: { prefix: (layer) => layer === PREFIX_LAYER ? prefix : undefined },
  });
  try {
    assertEquals(enc.attention, attention);
    const result = await encoderStep(gpu, enc, seededWeights(c));
    result.grads.set("prefix key", await prefix.dKey.download() as Float32Array);
    result.grads.set("prefix value", await prefix.dValue.download() as Float32Array);
    return result;
  } finally {
    enc.destroy();
    for (const t of owned) t.destroy();
  }
}

for (const modelType of ["bert", "roberta"] as const) {
  gpuTest(
    `encoder flash attention (${modelType}): a training step as the materialized one`,
    async (gpu) => {
      const c = smallConfig(modelType, "flash");
      const materialized = await step(gpu, c, "materialized");
      const flash = await step(gpu, c, "flash");
      const has = (r: StepResult, prefix: string) => r.labels.some((l) => l.startsWith(prefix));
      assert(has(flash, "flashAttention") && !has(flash, "attentionForward"), "flash kernels ran");
      assert(has(materialized, "attentionForward") && !has(materialized, "flash"), "materialized");
      const e = relError(flash.hidden, materialized.hidden);
      assert(e <= 1e-5, `hidden states: relative error ${e}`);
      assertEquals([...flash.grads.keys()].sort(), [...materialized.grads.keys()].sort());
      // Against the largest gradient of the step: some tensors' gradients are zero but for
      // rounding (a key bias shifts every score of a row alike, which the softmax ignores).
      const scale = largestGradient(materialized.grads);
      let worst = 0;
      for (const [name, g] of materialized.grads) {
        const err = relError(flash.grads.get(name)!, g, scale);
        worst = Math.max(worst, err);
        assert(err <= 1e-5, `gradient of ${name}: error ${err} of the largest gradient`);
      }
      // The prefix trained: its gradients are not all zero.
      assert(materialized.grads.get("prefix key")!.some((x) => x !== 0), "prefix gradient");
    },
  );
}

gpuTest('encoder attention: "auto" takes flash above 64 MiB of probabilities per layer', (gpu) => {
  const shape = { batch: 32, heads: 16, seq: 128, prefix: 0, headDim: 64 };
  // 32·16·128·128·4 bytes = 32 MiB: materialized; at 256 tokens, 128 MiB: flash.
  assertEquals(chooseAttention(gpu, "auto", shape), "materialized");
  const long = { ...shape, seq: 256 };
  assert(4 * 32 * 16 * 256 * 256 > FLASH_ATTENTION_ABOVE_BYTES, "the long shape is over");
  assertEquals(chooseAttention(gpu, "auto", long), "flash");
  assertEquals(chooseAttention(gpu, "materialized", long), "materialized");
  assertEquals(chooseAttention(gpu, "flash", shape), "flash");
  // Head dimensions the flash kernels do not take stay materialized, or are refused if forced.
  assertEquals(chooseAttention(gpu, "auto", { ...long, headDim: 256 }), "materialized");
  assertThrows(
    () => chooseAttention(gpu, "flash", { ...shape, headDim: 256 }),
    Error,
    "flash attention needs head dimension ≤ 128",
  );
});
