// Compute pipelines, compiled once per device and kernel source.

import type { Gpu } from "./device.ts";

/**
 * Keyed by the GPUDevice, not the Gpu: views of one Gpu made with Object.create (another adapter
 * description or lower limits, as the tests and the autotune's per-adapter tables use) share the
 * device, so they share its compiled pipelines instead of compiling every kernel again.
 */
const caches = new WeakMap<GPUDevice, Map<string, Map<string, GPUComputePipeline>>>();

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
  let byEntry = caches.get(gpu.device);
  if (!byEntry) caches.set(gpu.device, byEntry = new Map());
  let cache = byEntry.get(entryPoint);
  if (!cache) byEntry.set(entryPoint, cache = new Map());
  // Keyed by the source itself, never by a string built from it: a source from `cachedSource` is
  // the same string object launch after launch, whose hash V8 keeps, so a lookup does not pass
  // over tens of kilobytes of WGSL.
  let pipeline = cache.get(code);
  if (!pipeline) {
    pipeline = gpu.scoped(`kernel "${name}"`, () => {
      const module = gpu.device.createShaderModule({ label: name, code });
      return gpu.device.createComputePipeline({
        label: name,
        layout: "auto",
        compute: { module, entryPoint },
      });
    });
    cache.set(code, pipeline);
  }
  return pipeline;
}

/**
 * `generate` memoized on its arguments (primitives and small plain objects, keyed by their JSON).
 * Launchers ask for their kernel's source on every launch, and generating the unrolled GEMMs'
 * (tens of kilobytes each) took more host time per training step than encoding the step.
 * `generate` must depend on its arguments alone, and they must tell apart in JSON (which writes
 * undefined, NaN and Infinity alike as null: the generators take booleans, finite numbers,
 * strings and dtype records).
 */
export function cachedSource<A extends unknown[]>(
  generate: (...args: A) => string,
): (...args: A) => string {
  const sources = new Map<string, string>();
  return (...args: A): string => {
    const key = JSON.stringify(args);
    let code = sources.get(key);
    if (code === undefined) sources.set(key, code = generate(...args));
    return code;
  };
}
