// The GEMM products a model runs, for the matmul autotune (kernels/matmul_autotune.ts). Its own
// file so that the benches can ask for them without loading the training loop's dependencies.

import {
  attentionTuneShapes,
  linearTuneShapes,
  type TuneShape,
} from "../kernels/matmul_autotune.ts";
import type { ModelConfig } from "../model/config.ts";

/**
 * The GEMM products a model runs (what the autotune should time): its encoder's linear layers
 * over `rows` token rows and its head's over `headRows`, forward and, with `backward`, both
 * gradient products; with `attention`, the per-head attention products over that many sequences
 * of that many tokens (the longest, the one that decides the classes; prefix rows aside); with
 * `f16Math`, the encoder's linear and attention products in f16 arithmetic instead
 * (EncoderOptions.f16Math).
 */
export function modelTuneShapes(
  config: ModelConfig,
  o: {
    rows: number;
    headRows: number;
    headFeatures: number;
    headWidth: number;
    headClasses: number;
    backward: boolean;
    attention?: { sequences: number; seq: number };
    f16Math?: boolean;
  },
): TuneShape[] {
  const h = config.hiddenSize, inter = config.intermediateSize, e = config.embeddingSize;
  const encoder: [number, number][] = [[h, h], [h, inter], [inter, h]];
  if (e !== h) encoder.push([e, h]); // ELECTRA's embedding projection
  const head: [number, number][] = [[o.headFeatures, o.headWidth], [o.headWidth, o.headClasses]];
  return [
    ...linearTuneShapes(o.rows, encoder, o.backward, o.f16Math),
    ...linearTuneShapes(o.headRows, head, o.backward),
    ...(o.attention
      ? attentionTuneShapes(
        o.attention.sequences,
        o.attention.seq,
        config.numHeads,
        config.headDim,
        o.backward,
        o.f16Math,
      )
      : []),
  ];
}
