// The encoder in precision "f16" (f16 weight copies, f16 activations and activation gradients
// around every matrix product, f32 sums) against the same encoder in f32, through a whole
// training step with dropout on, a padded row, a trained prefix on one layer, and LoRA hooks.
//
// The bound: each f16 store rounds by at most 2^-11 (4.9e-4) relative, and a step goes through
// a few dozen of them; asserted: hidden states within 1% of their largest magnitude, gradients
// within 1% of the step's largest gradient. Measured on lavapipe: hidden 8.3e-4 / 2.6e-3 /
// 1.8e-3 and gradients 5.5e-4 / 1.8e-3 / 3.3e-3 (aligned + prefix, odd + prefix, aligned +
// LoRA; the FFN-hook case, GELU as its own f16 kernels, within the same bound). The test also
// asserts f16 is not bitwise f32 (the f16 path really ran).

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
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
import { randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import { type ModelConfig, parseConfig } from "../model/config.ts";
import { createEncoder, type Precision } from "../model/encoder.ts";
import { LoraMethod } from "../peft/lora.ts";

const P = 3, PREFIX_LAYER = 1;
const HIDDEN_BOUND = 1e-2, GRAD_BOUND = 1e-2;

/**
 * Asserts a step's hidden states within HIDDEN_BOUND of f32's (relative) and each gradient within
 * GRAD_BOUND of the step's largest f32 gradient, the same gradients present; returns the hidden
 * states' error.
 */
function assertCloseToF32(got: StepResult, f32: StepResult): number {
  const e = relError(got.hidden, f32.hidden);
  assert(e <= HIDDEN_BOUND, `hidden states: relative error ${e}`);
  assertEquals([...got.grads.keys()].sort(), [...f32.grads.keys()].sort());
  const scale = largestGradient(f32.grads);
  for (const [name, g] of f32.grads) {
    const err = relError(got.grads.get(name)!, g, scale);
    assert(err <= GRAD_BOUND, `gradient of ${name}: error ${err} of the largest gradient`);
  }
  return e;
}

/**
 * "aligned": every weight matrix a multiple of 128 elements and head dimension 8, so the f16
 * copies refresh in one launch and the products take the vec4 kernels; "odd": neither.
 */
function config(shape: "aligned" | "odd"): ModelConfig {
  if (shape === "odd") return smallConfig("roberta", "odd f16");
  return parseConfig({
    model_type: "bert",
    vocab_size: 43,
    hidden_size: 16,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    intermediate_size: 40,
    max_position_embeddings: 12,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
    pad_token_id: 0,
  }, "aligned f16 test config");
}

async function step(
  gpu: Gpu,
  c: ModelConfig,
  precision: Precision,
  adapter: "prefix" | "lora" | "ffn-hooks",
  f16Math = false,
): Promise<StepResult> {
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
  const lora = adapter === "lora"
    ? new LoraMethod(gpu, c, { loraR: 4, loraAlpha: 8, prefixLength: 0, seed: 5 })
    : null;
  const enc = createEncoder(gpu, c, {
    maxBatch: STEP_BATCH,
    maxSeq: STEP_SEQ,
    maxPrefix: P,
    dropout: 0.1,
    precision,
    f16Math,
    hooks: lora?.hooks() ?? (adapter === "ffn-hooks"
      // Hooks that add nothing, on the FFN's two linears: GELU then runs as its own kernels on
      // the f16 activations (and its derivative on their f16 gradients) instead of in the GEMM.
      ? {
        linear: (site) =>
          site.module === "intermediate.dense" || site.module === "output.dense"
            ? { forward: () => {}, backward: () => {} }
            : undefined,
      }
      : { prefix: (layer) => layer === PREFIX_LAYER ? prefix : undefined }),
  });
  try {
    assertEquals(enc.precision, precision);
    const weights = seededWeights(c);
    let seed = 300 + weights.size; // the seeds after the encoder's
    if (lora) {
      // LoRA's B starts at zero: make it non-zero, so that its path changes the outputs.
      for (const [name, t] of lora.parameters()) {
        t.upload(Float32Array.from(randomValues(t.numel, seed++), (x) => 0.3 * x));
        assert(name.includes("lora_"), name);
      }
    }
    const result = await encoderStep(gpu, enc, weights);
    const grads = result.grads;
    if (lora) {
      for (const [n, t] of lora.gradients()) grads.set(n, await t.download() as Float32Array);
    } else {
      grads.set("prefix key", await prefix.dKey.download() as Float32Array);
      grads.set("prefix value", await prefix.dValue.download() as Float32Array);
    }
    return result;
  } finally {
    enc.setHooks(null);
    enc.destroy();
    lora?.destroy();
    for (const t of owned) t.destroy();
  }
}

for (
  const [shape, adapter] of [
    ["aligned", "prefix"],
    ["odd", "prefix"],
    ["aligned", "lora"],
    ["odd", "ffn-hooks"],
  ] as const
) {
  gpuTest(
    `encoder f16 (${shape} shapes, ${adapter}): a training step close to f32`,
    async (gpu) => {
      const c = config(shape);
      const f32 = await step(gpu, c, "f32", adapter);
      const f16 = await step(gpu, c, "f16", adapter);
      const casts = f16.labels.filter((l) => l.startsWith("castF32ToF16")).length;
      // Aligned: the twelve weight matrices are one range. Odd: the padding of the f32 and f16
      // arenas differs after some (555 elements: 576 in f32 slots, 640 in f16 ones), so the
      // range breaks there, and each part takes a scalar tail launch too.
      if (shape === "aligned") assertEquals(casts, 1, "one launch refreshes the f16 weights");
      else assert(casts > 1, `${casts} cast launches`);
      assert(!f32.labels.some((l) => l.startsWith("castF32ToF16")), "f32 casts nothing");

      const e = assertCloseToF32(f16, f32);
      assert(e > 0, "f16 gave bitwise the f32 hidden states: the f16 path did not run");
      if (adapter === "ffn-hooks") {
        assert(f16.labels.includes("geluBackward"), "GELU's backward ran as its own kernel");
      } else {
        const adapterGrad = adapter === "lora"
          ? [...f16.grads].find(([n]) => n.includes("lora_A"))![1]
          : f16.grads.get("prefix key")!;
        assert(adapterGrad.some((x) => x !== 0), "the adapter's gradient is not all zero");
      }
    },
  );
}

// f16Math: the linear products (forward, dX, dW) and attention's per-head ones multiply and sum in
// f16 (runs of 16 products), their f32 operands rounded to f16, odd shapes staged with scalar
// loads. Measured on lavapipe against f32: hidden 2.1e-3 / gradients 3.4e-3 (aligned + prefix;
// f16 storage alone 8.3e-4 / 5.5e-4), 2.4e-3 / 5.2e-3 (aligned + LoRA; f16 alone 1.8e-3 / 3.3e-3),
// 2.6e-3 / 2.1e-3 (odd + prefix); asserted within the f16 tests' 1%.
for (
  const [shape, adapter] of [["aligned", "prefix"], ["aligned", "lora"], ["odd", "prefix"]] as const
) {
  gpuTest(
    `encoder f16Math (${shape} shapes, ${adapter}): a training step close to f32`,
    async (gpu) => {
      const c = config(shape);
      const f32 = await step(gpu, c, "f32", adapter);
      const f16 = await step(gpu, c, "f16", adapter);
      const math = await step(gpu, c, "f16", adapter, true);
      assertCloseToF32(math, f32);
      assert(
        relError(math.hidden, f16.hidden) > 0,
        "f16Math gave f16's hidden states: it did not run",
      );
    },
  );
}

gpuTest('encoder f16: flash attention is refused, "auto" takes the materialized kernels', (gpu) => {
  const c = config("aligned");
  assertThrows(
    () => createEncoder(gpu, c, { maxBatch: 1, maxSeq: 4, precision: "f16", attention: "flash" }),
    Error,
    "flash attention runs in f32 only",
  );
  const enc = createEncoder(gpu, c, { maxBatch: 1, maxSeq: 4, precision: "f16" });
  assertEquals(enc.attention, "materialized");
  enc.destroy();
  // Probabilities beyond one binding: said as a launch's binding check, which a run's advice
  // reads (the batch that fits), with the way out that f32 gives.
  const [B, S] = [64, 12];
  const probs = 4 * B * c.numHeads * S * S;
  const widest = B * S * Math.max(2 * c.intermediateSize, 4 * c.hiddenSize, 4 * c.embeddingSize);
  assert(probs > widest, `${probs} ≤ ${widest}`);
  const limit = Math.floor((probs + widest) / 2);
  assertThrows(
    () =>
      createEncoder(withLimits(gpu, { maxStorageBufferBindingSize: limit }), c, {
        maxBatch: B,
        maxSeq: S,
        precision: "f16",
      }),
    GpuError,
    `Encoder: attention probabilities ("layer probs", ${probs} bytes) exceeds this adapter's ` +
      `storage binding limit of ${limit} bytes (precision "f16" keeps them whole; "f32" runs ` +
      "flash attention, which does not)",
  );
  assertThrows(
    () => createEncoder(gpu, c, { maxBatch: 1, maxSeq: 4, precision: "f64" as Precision }),
    Error,
    'precision must be "f32" or "f16"',
  );
  assertThrows(
    () => createEncoder(gpu, c, { maxBatch: 1, maxSeq: 4, f16Math: true }),
    Error,
    'Encoder: f16Math needs precision "f16" (its loss scaling), got "f32"',
  );
});
