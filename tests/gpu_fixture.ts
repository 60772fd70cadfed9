// Shared set-up for tests that run kernels: one device for the whole test process.

import { getGpu, type Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";

/**
 * Deno.test options of a test that runs GPU work in this process (kernels, training, predicting,
 * figures): WebGPU keeps device resources and async ops alive between tests by design, so Deno's
 * resource and op sanitizers are off for it. Tests that only start subprocesses keep them on.
 */
export const IN_PROCESS_GPU = { sanitizeResources: false, sanitizeOps: false } as const;

/** Registers a test that gets the process-wide GPU (IN_PROCESS_GPU). */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  Deno.test({ name, ...IN_PROCESS_GPU, fn: async () => fn(await getGpu()) });
}

/**
 * The same GPU reporting other `limits`, e.g. `withLimits(gpu, { maxComputeWorkgroupsPerDimension:
 * 7 })`: past 65535 workgroups a launch must use a 2-D grid, and a lowered limit exercises that
 * path at a test-sized problem. It shares the GPU's device (and so its tensors).
 */
export function withLimits(
  gpu: Gpu,
  overrides: Partial<Record<keyof GPUSupportedLimits, number>>,
): Gpu {
  const limits = new Proxy(gpu.limits, {
    get: (target, key) =>
      Object.hasOwn(overrides, key)
        ? overrides[key as keyof GPUSupportedLimits]
        : Reflect.get(target, key, target),
  });
  return Object.create(gpu, { limits: { value: limits } });
}

/**
 * An f32 output tensor for a test: holding `init` (e.g. to check that a backward accumulates into
 * it) or, without it, poisoned with NaN by `rec`, so that an element the kernel forgot fails.
 */
export function outputTensor(
  rec: Recorder,
  shape: readonly number[],
  label: string,
  init?: Float32Array,
): Tensor {
  const t = createTensor(rec.gpu, shape, "f32", label);
  if (init) t.upload(init);
  else fill(rec, t, NaN);
  return t;
}
