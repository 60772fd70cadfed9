// The encoder's fused steps through whole training steps, dropout on, for BERT and RoBERTa:
// "dropout → + residual → LayerNorm" as one launch each way (kernels/add_layernorm.ts) and GELU
// in the GEMM epilogues (kernels/matmul.ts). A hook on intermediate.dense or output.dense takes
// GELU out of the epilogue (the hook adds to the product before GELU); those runs are the
// unfused reference here, and a LoRA term there must still equal merging it into the weight.
//
// Bounds: the unfused GELU launches compute the same float32 operations as the epilogues, so
// outputs and gradients agree bitwise on a given adapter; against merged weights, within 1e-5
// of each tensor's largest magnitude (the merged product rounds differently).

import { assert, assertEquals } from "./assert.ts";
import {
  encoderStep,
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
import { loraBackward, loraForward } from "../kernels/lora.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import type { ModelConfig } from "../model/config.ts";
import {
  createEncoder,
  type Encoder,
  type EncoderHooks,
  encoderParameters,
  type LinearHook,
  type LinearModule,
} from "../model/encoder.ts";

/** One training step (dropout 0.1, a padded second row, token types) with `hooks`. */
async function step(
  gpu: Gpu,
  c: ModelConfig,
  w: Map<string, Float32Array>,
  hooks?: EncoderHooks,
): Promise<StepResult & { enc: Encoder }> {
  const enc = createEncoder(gpu, c, {
    maxBatch: STEP_BATCH,
    maxSeq: STEP_SEQ,
    dropout: 0.1,
    hooks,
  });
  const params = encoderParameters(enc.params);
  assertEquals(new Set(params.keys()), new Set(w.keys()), "the test's parameter list");
  return { enc, ...(await encoderStep(gpu, enc, w, { typeIds: true })) };
}

/** A hook that adds nothing: it only makes the encoder run GELU as its own launch. */
const NOTHING: LinearHook = { forward() {}, backward() {} };

for (const modelType of ["bert", "roberta"] as const) {
  gpuTest(
    `encoder fusion (${modelType}): the GELU epilogues equal the separate GELU launches`,
    async (gpu) => {
      const c = smallConfig(modelType, "fusion");
      const w = seededWeights(c);
      const fused = await step(gpu, c, w);
      const ffn = new Set<LinearModule>(["intermediate.dense", "output.dense"]);
      const unfused = await step(gpu, c, w, {
        linear: (site) => ffn.has(site.module) ? NOTHING : undefined,
      });
      const count = (labels: string[], label: string) => labels.filter((l) => l === label).length;
      const L = c.numLayers;
      assertEquals(count(fused.labels, "geluForward") + count(fused.labels, "geluBackward"), 0);
      assertEquals(count(unfused.labels, "geluForward"), L);
      assertEquals(count(unfused.labels, "geluBackward"), L);
      for (const r of [fused, unfused]) {
        assertEquals(count(r.labels, "addLayerNormForward"), 2 * L);
        assertEquals(count(r.labels, "addLayerNormBackward dX"), 2 * L);
        for (const gone of ["add", "addInPlace"]) assertEquals(count(r.labels, gone), 0, gone);
        // Only the embeddings' dropout is a launch of its own.
        assertEquals(count(r.labels, "dropoutForward"), 1);
        assertEquals(count(r.labels, "dropoutBackward"), 1);
      }
      assertEquals(fused.labels.length, unfused.labels.length - 2 * L);
      assertEquals(fused.hidden, unfused.hidden, "hidden states");
      for (const [n, g] of fused.grads) assertEquals(g, unfused.grads.get(n)!, `gradient of ${n}`);
      fused.enc.destroy();
      unfused.enc.destroy();
    },
  );
}

gpuTest(
  "encoder fusion: LoRA terms on intermediate.dense and output.dense equal merging them",
  async (gpu) => {
    const c = smallConfig("bert", "fusion");
    const H = c.hiddenSize, I = c.intermediateSize, r = 3, scale = 0.7;
    const layer = 1;
    const sites: { module: LinearModule; path: string; inF: number; outF: number }[] = [
      { module: "intermediate.dense", path: "intermediate.dense", inF: H, outF: I },
      { module: "output.dense", path: "output.dense", inF: I, outF: H },
    ];
    const w = seededWeights(c);
    const merged = new Map(w);
    const tensors: Tensor[] = [];
    const lora = sites.map((site, k) => {
      const a = Float32Array.from(randomValues(r * site.inF, 10 + k), (v) => 0.4 * v);
      const b = Float32Array.from(randomValues(site.outF * r, 20 + k), (v) => 0.4 * v);
      const name = `encoder.layer.${layer}.${site.path}.weight`;
      const m = Float64Array.from(w.get(name)!);
      for (let o = 0; o < site.outF; o++) {
        for (let i = 0; i < site.inF; i++) {
          let s = 0;
          for (let q = 0; q < r; q++) s += b[o * r + q] * a[q * site.inF + i];
          m[o * site.inF + i] += scale * s;
        }
      }
      merged.set(name, Float32Array.from(m));
      const t = (data: Float32Array | null, shape: number[], label: string) => {
        const x = data
          ? tensorFromArray(gpu, data, shape, label)
          : createTensor(gpu, shape, "f32", label);
        tensors.push(x);
        return x;
      };
      const A = t(a, [r, site.inF], "A"), Bt = t(b, [site.outF, r], "B");
      const dA = t(null, [r, site.inF], "dA"), dB = t(null, [site.outF, r], "dB");
      const hidden = t(null, [STEP_BATCH * STEP_SEQ, r], "hidden");
      const hook: LinearHook = {
        forward(rec, x, out) {
          loraForward(rec, { x, a: A, b: Bt, scale, hidden, out });
        },
        backward(rec, x, dOut, dX, ctx) {
          loraBackward(rec, {
            x,
            a: A,
            b: Bt,
            scale,
            hidden,
            dOut,
            dX,
            dA,
            dB,
            accumulate: ctx.accumulate,
          });
        },
      };
      return { site, name, a, b, dA, dB, hook };
    });

    const plain = await step(gpu, c, merged);
    const hooked = await step(gpu, c, w, {
      linear: (s) =>
        s.layer === layer ? lora.find((x) => x.site.module === s.module)?.hook : undefined,
    });
    assert(hooked.labels.includes("geluForward") && hooked.labels.includes("geluBackward"));
    assert(relError(hooked.hidden, plain.hidden) <= 1e-5, "hidden states");
    for (const [n, g] of plain.grads) {
      // The key bias's exact gradient is 0 (it shifts a softmax row evenly): its rounding noise
      // is measured against the key weight's gradient.
      const keyWeight = plain.grads.get(n.replace(/key\.bias$/, "key.weight"))!;
      const scale = /key\.bias$/.test(n) ? Math.max(...keyWeight.map(Math.abs)) : undefined;
      const e = relError(hooked.grads.get(n)!, g, scale);
      assert(e <= 1e-5, `gradient of ${n}: ${e.toExponential(2)}`);
    }
    // dA = scale·Bᵀ·dW and dB = scale·dW·Aᵀ, dW the merged weight's gradient.
    for (const { site, name, a, b, dA, dB } of lora) {
      const dW = plain.grads.get(name)!;
      const { inF, outF } = site;
      const wantA = new Float64Array(r * inF), wantB = new Float64Array(outF * r);
      for (let q = 0; q < r; q++) {
        for (let i = 0; i < inF; i++) {
          for (let o = 0; o < outF; o++) {
            wantA[q * inF + i] += scale * b[o * r + q] * dW[o * inF + i];
            wantB[o * r + q] += scale * dW[o * inF + i] * a[q * inF + i];
          }
        }
      }
      assert(relError(await dA.download(), wantA) <= 1e-5, `${site.module} LoRA dA`);
      assert(relError(await dB.download(), wantB) <= 1e-5, `${site.module} LoRA dB`);
    }
    for (const t of tensors) t.destroy();
    plain.enc.destroy();
    hooked.enc.destroy();
  },
);
