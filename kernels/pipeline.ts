// Compute pipelines, compiled once per device and kernel source.

import type { Gpu } from "./device.ts";

/**
 * Keyed by the GPUDevice, not the Gpu: views of one Gpu made with Object.create (another adapter
 * description or lower limits, as the tests and the autotune's per-adapter tables use) share the
 * device, so they share its compiled pipelines instead of compiling every kernel again.
 */
const caches = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/**
 * The pipeline for a WGSL kernel, compiled on first use. A compile error surfaces at the next
 * submit (or `gpu.flushErrors()`), naming the kernel, so launchers stay synchronous.
 */
export function getPipeline(
  gpu: Gpu,
  name: string,
  code: string,
  entryPoint = "main",
): GPUComputePipeline {
  let cache = caches.get(gpu.device);
  if (!cache) caches.set(gpu.device, cache = new Map());
  const key = `${entryPoint}\u0000${code}`;
  let pipeline = cache.get(key);
  if (!pipeline) {
    pipeline = gpu.scoped(`kernel "${name}"`, () => {
      const module = gpu.device.createShaderModule({ label: name, code });
      return gpu.device.createComputePipeline({
        label: name,
        layout: "auto",
        compute: { module, entryPoint },
      });
    });
    cache.set(key, pipeline);
  }
  return pipeline;
}
