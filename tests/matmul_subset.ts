// The GEMM variants the epilogue and f16 tests run on an adapter.
//
// On a GPU, all of them. On a CPU adapter (lavapipe, CI) the block-tiled kernels, written for
// GPUs and each a long unrolled loop that takes lavapipe seconds to compile per epilogue and
// dtype, are represented: their epilogues and f16 widening are one shared text (`storeWgsl`, the
// loads' `wide`), and what differs between them (tile shape, warp layout, one or two buffers, A
// turned round or staged as rows of k) is in the loop, which tests/matmul_variants_test.ts
// checks bitwise for every variant. The representatives take each of those forms at least once.

import type { Gpu } from "../kernels/device.ts";
import { MATMUL_VARIANTS, type MatmulVariant } from "../kernels/matmul.ts";

const TILED_ON_CPU: readonly MatmulVariant[] = [
  "tiled_4x4",
  "tiled_8x4w",
  "tiled_8x8d",
  "tiled_4x8dk",
  "nn_tiled_4x4",
  "nn_tiled_8x8dk",
];

/** Every variant on a GPU; on a CPU adapter the non-tiled ones and TILED_ON_CPU. */
export function epilogueVariants(gpu: Gpu): MatmulVariant[] {
  if (!gpu.adapter.info.isFallbackAdapter) return [...MATMUL_VARIANTS];
  return MATMUL_VARIANTS.filter((v) => !/^(nn_)?tiled_/.test(v) || TILED_ON_CPU.includes(v));
}
