// Shared by the tests of kernels that process tensors beyond one storage binding in slices
// (kernels/binding_slices.ts): how large such a tensor is here, and cheap values to fill it.

import type { Gpu } from "../kernels/device.ts";

/**
 * Elements of an f32 tensor 4099 elements larger than one storage binding, rounded up to a
 * multiple of `granule` (e.g. a row length); null where the test should be skipped: the adapter
 * cannot allocate it, or one binding holds more than 512 MiB (large GPUs), where it would take
 * several GiB of buffers and uploads. The slicing logic is the same on every adapter; lavapipe
 * (128 MiB bindings) checks it.
 */
export function beyondOneBinding(gpu: Gpu, granule = 1): number | null {
  const maxBinding = gpu.limits.maxStorageBufferBindingSize;
  const n = Math.ceil((Math.floor(maxBinding / 4) + 4099) / granule) * granule;
  if (n * 4 > gpu.limits.maxBufferSize || maxBinding > 2 ** 29) return null;
  return n;
}

/**
 * Distinct values in [−0.5, 0.5) from a hash (not an RNG: tens of millions of elements), the
 * last 4099 (the second slice of a `beyondOneBinding` tensor) 100× larger, so that a lost or
 * doubled slice would show.
 */
export function slicedValues(n: number): Float32Array {
  const host = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    host[i] = ((Math.imul(i + 1, 2654435761) >>> 0) / 2 ** 32 - 0.5) * (i < n - 4099 ? 1 : 100);
  }
  return host;
}
