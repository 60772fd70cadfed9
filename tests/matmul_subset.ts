// The GEMM variants the epilogue and f16 tests run on an adapter.
//
// The block-tiled kernels, each a long unrolled loop that takes seconds to compile per epilogue
// and dtype (lavapipe; NVIDIA's driver too: on the H200, 2026-11-28, the epilogue test over all
// 45 variants ran past two minutes), are represented: their epilogues and f16 widening are one
// shared text (`storeWgsl`, the loads' `wide`), and what differs between them (tile shape, warp
// layout, one or two buffers, A turned round or staged as rows of k, 8 or 16 k a slice, padded
// rows or not) is in the loop, which tests/matmul_variants_test.ts checks bitwise for every
// variant on every adapter (on aligned operands; on operands vec4 loads cannot read, whose scalar
// staging is one more pipeline per kernel, by these representatives). The representatives take
// each of those forms at least once.

import { MATMUL_VARIANTS, type MatmulVariant } from "../kernels/matmul.ts";

const TILED_REPRESENTATIVES: readonly MatmulVariant[] = [
  "tiled_4x4",
  "tiled_8x4w",
  "tiled_8x8d",
  "tiled_4x8dk",
  "tiled_8x8dk16",
  "nn_tiled_4x4",
  "nn_tiled_8x8dk",
];

/**
 * For operands vec4 loads cannot read: the non-tiled variants and two tiled kernels whose scalar
 * staging takes both forms (rows of k turned round in registers: `tiled_4x4`; A staged as rows of
 * k, double-buffered, 16 k a slice: `tiled_8x8dk16`); every staging form is in
 * TILED_REPRESENTATIVES, which tests/matmul_variants_test.ts compares on misaligned batches.
 */
export function misalignedVariants(): MatmulVariant[] {
  return MATMUL_VARIANTS.filter((v) =>
    !/^(nn_)?tiled_/.test(v) || v === "tiled_4x4" || v === "tiled_8x8dk16"
  );
}

/** The non-tiled variants and TILED_REPRESENTATIVES. */
export function epilogueVariants(): MatmulVariant[] {
  return MATMUL_VARIANTS.filter((v) =>
    !/^(nn_)?tiled_/.test(v) || TILED_REPRESENTATIVES.includes(v)
  );
}
