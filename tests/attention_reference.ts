// Float64 references of HF BERT/RoBERTa attention (padding mask, prefix rows, dropout), shared by
// the tests of kernels/attention.ts and kernels/flash_attention.ts.

import { randomValues } from "./random.ts";
import { type DropoutConfig, dropoutKeep } from "../kernels/dropout.ts";

// HF's additive mask value: torch.finfo(torch.float32).min.
export const NEG_MAX = -3.4028234663852886e38;

export interface Dims {
  B: number;
  S: number;
  H: number;
  D: number;
  P: number;
}

export interface Inputs {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  mask: Float64Array;
  pk: Float64Array;
  pv: Float64Array;
}

/** Dropout factor of probs element `index` (mask from the TypeScript twin of the WGSL hash). */
export function dropFactor(drop: DropoutConfig, index: number): number {
  if (drop.p === 0) return 1;
  return dropoutKeep(drop.seed, drop.stream, index, drop.p) ? 1 / (1 - drop.p) : 0;
}

/** Float64 HF attention: probs [B, H, S, P+S] (pre-dropout) and context [B, S, H·D]. */
export function referenceForward(x: Inputs, dims: Dims, drop: DropoutConfig) {
  const { B, S, H, D, P } = dims;
  const T = P + S, HD = H * D, scale = 1 / Math.sqrt(D);
  const probs = new Float64Array(B * H * S * T);
  const context = new Float64Array(B * S * HD);
  const key = (b: number, h: number, j: number, d: number) =>
    j < P ? x.pk[(h * P + j) * D + d] : x.k[(b * S + j - P) * HD + h * D + d];
  const value = (b: number, h: number, j: number, d: number) =>
    j < P ? x.pv[(h * P + j) * D + d] : x.v[(b * S + j - P) * HD + h * D + d];
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < S; i++) {
        const row = ((b * H + h) * S + i) * T;
        const qb = (b * S + i) * HD + h * D;
        const s = new Float64Array(T);
        for (let j = 0; j < T; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += x.q[qb + d] * key(b, h, j, d);
          s[j] = dot * scale + (j < P ? 0 : (1 - x.mask[b * S + j - P]) * NEG_MAX);
        }
        const m = Math.max(...s);
        let sum = 0;
        for (let j = 0; j < T; j++) sum += s[j] = Math.exp(s[j] - m);
        for (let j = 0; j < T; j++) {
          probs[row + j] = s[j] / sum;
          const w = probs[row + j] * dropFactor(drop, row + j);
          for (let d = 0; d < D; d++) context[qb + d] += w * value(b, h, j, d);
        }
      }
    }
  }
  return { probs, context };
}

/** Float64 backward (autograd through the additive mask, as HF's), from the reference probs. */
export function referenceBackward(
  x: Inputs,
  probs: Float64Array,
  dC: Float64Array,
  dims: Dims,
  drop: DropoutConfig,
) {
  const { B, S, H, D, P } = dims;
  const T = P + S, HD = H * D, scale = 1 / Math.sqrt(D);
  const dQ = new Float64Array(B * S * HD);
  const dK = new Float64Array(B * S * HD);
  const dV = new Float64Array(B * S * HD);
  const dPK = new Float64Array(H * P * D);
  const dPV = new Float64Array(H * P * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < S; i++) {
        const row = ((b * H + h) * S + i) * T;
        const qb = (b * S + i) * HD + h * D;
        const dP = new Float64Array(T);
        let rowDot = 0;
        for (let j = 0; j < T; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) {
            const val = j < P ? x.pv[(h * P + j) * D + d] : x.v[(b * S + j - P) * HD + h * D + d];
            dot += dC[qb + d] * val;
          }
          dP[j] = dot * dropFactor(drop, row + j);
          rowDot += probs[row + j] * dP[j];
        }
        for (let j = 0; j < T; j++) {
          const dS = probs[row + j] * (dP[j] - rowDot);
          const pt = probs[row + j] * dropFactor(drop, row + j);
          for (let d = 0; d < D; d++) {
            if (j < P) {
              const o = (h * P + j) * D + d;
              dQ[qb + d] += scale * dS * x.pk[o];
              dPK[o] += scale * dS * x.q[qb + d];
              dPV[o] += pt * dC[qb + d];
            } else {
              const o = (b * S + j - P) * HD + h * D + d;
              dQ[qb + d] += scale * dS * x.k[o];
              dK[o] += scale * dS * x.q[qb + d];
              dV[o] += pt * dC[qb + d];
            }
          }
        }
      }
    }
  }
  return { dQ, dK, dV, dPK, dPV };
}

/** Sequence 0 unpadded, 1 tail-padded, 2 entirely padding (then repeating). */
export function paddingMask(B: number, S: number): Float64Array {
  const mask = new Float64Array(B * S);
  for (let b = 0; b < B; b++) {
    const valid = [S, Math.max(1, S - Math.ceil(S / 2)), 0][b % 3];
    for (let i = 0; i < valid; i++) mask[b * S + i] = 1;
  }
  return mask;
}

/** Random inputs, rounded to float32 so that the GPU and the reference see the same numbers. */
export function makeInputs(dims: Dims, seed: number, mask?: Float64Array): Inputs {
  const { B, S, H, D, P } = dims;
  const f32 = (n: number, s: number, gain = 1) =>
    Float64Array.from(Float32Array.from(randomValues(n, s), (v) => v * gain));
  // q gets a gain so that the softmax is far from uniform.
  return {
    q: f32(B * S * H * D, seed, 2.5),
    k: f32(B * S * H * D, seed + 1),
    v: f32(B * S * H * D, seed + 2),
    mask: mask ?? paddingMask(B, S),
    pk: f32(H * P * D, seed + 3),
    pv: f32(H * P * D, seed + 4),
  };
}
