// Compute pipelines, compiled once per device and kernel source.

import type { Gpu } from "./device.ts";

const caches = new WeakMap<Gpu, Map<string, GPUComputePipeline>>();

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
  let cache = caches.get(gpu);
  if (!cache) caches.set(gpu, cache = new Map());
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
