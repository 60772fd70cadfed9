// The encoder's gradients with dropout on, for BERT and RoBERTa, against central differences of
// its own forward with the same masks (the same seed and step draw the same masks, so the
// training forward is a smooth function of the weights). The other encoder tests check the
// gradients against float64 and torch with dropout 0, or compare the encoder with itself with
// dropout on: a backward that applied another site's mask (the embeddings', an attention
// output's, a feed-forward output's, the probabilities') would pass them all.
//
// Each group of tensors (the embeddings; each layer's attention; each layer's feed-forward part)
// is moved along its own gradient, v = g / max|g|, so that a wrong gradient g' is measured where
// it points: the slope of L along g' differs from |g'|² / max|g'| unless g' is g. Bound: within
// 2e-3 of the slope, at ε = 1e-3 (measured on lavapipe: at most 2.4e-4; a backward given
// another site's mask at the embeddings, a feed-forward output or the probabilities: 0.07-0.2,
// at an attention output: 0.004-0.01).

import { assert, assertEquals } from "./assert.ts";
import {
  encoderStep,
  seededWeights,
  setStepBatch,
  smallConfig,
  STEP_BATCH,
  STEP_FORWARD,
  STEP_SEQ,
  stepDHidden,
} from "./encoder_step.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createEncoder, type Encoder } from "../model/encoder.ts";

/** Σ hidden · dHidden in float64, the forward run with `encoderStep`'s batch and masks. */
async function lossAt(
  enc: Encoder,
  weights: Map<string, Float32Array>,
  dHidden: Float32Array,
): Promise<number> {
  setStepBatch(enc, weights, { typeIds: true });
  const rec = new Recorder(enc.gpu);
  const out = enc.forward(rec, STEP_FORWARD);
  await rec.submit();
  const y = await out.download() as Float32Array;
  let s = 0;
  for (let i = 0; i < y.length; i++) s += y[i] * dHidden[i];
  return s;
}

/** The tensor groups moved together: the embeddings, then per layer attention and FFN. */
function groups(layers: number): [string, RegExp][] {
  const out: [string, RegExp][] = [["embeddings", /^embeddings\./]];
  for (let l = 0; l < layers; l++) {
    out.push([`layer ${l} attention`, new RegExp(`^encoder\\.layer\\.${l}\\.attention\\.`)]);
    out.push([
      `layer ${l} feed-forward`,
      new RegExp(`^encoder\\.layer\\.${l}\\.(intermediate|output)\\.`),
    ]);
  }
  return out;
}

for (const modelType of ["bert", "roberta"] as const) {
  gpuTest(
    `encoder (${modelType}): gradients with dropout on match central differences of the same masks`,
    async (gpu) => {
      const c = smallConfig(modelType, "dropout gradient");
      const w = seededWeights(c);
      const dH = stepDHidden(c);
      const options = { maxBatch: STEP_BATCH, maxSeq: STEP_SEQ };
      const enc = createEncoder(gpu, c, { ...options, dropout: 0.1 });
      const plain = createEncoder(gpu, c, { ...options, dropout: 0 });
      try {
        const { hidden, grads } = await encoderStep(gpu, enc, w, { typeIds: true });
        const without = await encoderStep(gpu, plain, w, { typeIds: true });
        let atW = 0;
        for (let i = 0; i < hidden.length; i++) atW += hidden[i] * dH[i];
        // The forward alone draws the step's masks again.
        assertEquals(await lossAt(enc, w, dH), atW, "the same masks");

        const eps = 1e-3;
        for (const [what, pattern] of groups(c.numLayers)) {
          const names = [...grads.keys()].filter((n) => pattern.test(n));
          assert(names.length > 0, what);
          let max = 0;
          for (const n of names) for (const g of grads.get(n)!) max = Math.max(max, Math.abs(g));
          // The slope along v = g / max|g| by the gradient: Σ g·v.
          let slope = 0;
          const at = (sign: number) => {
            const moved = new Map(w);
            for (const n of names) {
              const g = grads.get(n)!;
              moved.set(n, Float32Array.from(w.get(n)!, (x, i) => x + sign * eps * g[i] / max));
            }
            return moved;
          };
          for (const n of names) for (const g of grads.get(n)!) slope += g * g / max;
          const fd = ((await lossAt(enc, at(1), dH)) - (await lossAt(enc, at(-1), dH))) / (2 * eps);
          const err = Math.abs(fd - slope) / slope;
          assert(err < 2e-3, `${what}: slope ${slope}, central difference ${fd} (${err})`);
          // Dropout matters to this group's gradient (the test would pass without masks else).
          let differs = 0;
          for (const n of names) {
            const a = grads.get(n)!, b = without.grads.get(n)!;
            for (let i = 0; i < a.length; i++) differs = Math.max(differs, Math.abs(a[i] - b[i]));
          }
          assert(differs > 1e-2 * max, `${what}: dropout changes the gradient (${differs})`);
        }
      } finally {
        enc.destroy();
        plain.destroy();
      }
    },
  );
}
