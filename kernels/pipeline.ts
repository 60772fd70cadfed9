// Compute pipelines, compiled once per device and kernel source.

import type { Gpu } from "./device.ts";

/**
 * Keyed by the GPUDevice, not the Gpu: views of one Gpu made with Object.create (another adapter
 * description or lower limits, as the tests and the autotune's per-adapter tables use) share the
 * device, so they share its compiled pipelines instead of compiling every kernel again.
 */
const caches = new WeakMap<GPUDevice, Map<string, Map<string, GPUComputePipeline>>>();

/** How a kernel declares a binding of group 0: read-only storage, read_write storage, uniform. */
export type BindingAccess = "read" | "read_write" | "uniform";

/** Per pipeline made by `getPipeline`, its group-0 bindings' access, by binding index. */
const accesses = new WeakMap<GPUComputePipeline, ReadonlyMap<number, BindingAccess>>();

const BINDING_DECLARATION =
  /@group\(\s*0\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var\s*<\s*(storage|uniform)\s*(?:,\s*(read_write|read)\s*)?>/g;

/** The group-0 bindings a WGSL source declares, by index (storage without an access mode reads). */
export function declaredBindings(code: string): Map<number, BindingAccess> {
  const found = new Map<number, BindingAccess>();
  for (const [, index, space, access] of code.matchAll(BINDING_DECLARATION)) {
    found.set(
      Number(index),
      space === "uniform" ? "uniform" : access === "read_write" ? "read_write" : "read",
    );
  }
  return found;
}

/**
 * The access of each group-0 binding of a pipeline made by `getPipeline` (undefined for a
 * pipeline made otherwise), so that a Recorder can refuse a launch that binds one tensor both
 * written and read, or written twice, before WebGPU does late or not at all.
 */
export function bindingAccess(
  pipeline: GPUComputePipeline,
): ReadonlyMap<number, BindingAccess> | undefined {
  return accesses.get(pipeline);
}

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
    accesses.set(pipeline, declaredBindings(code));
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
