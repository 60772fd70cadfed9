// Shared set-up for tests that run kernels: one device for the whole test process.

import { getGpu, type Gpu } from "../kernels/device.ts";

/**
 * Registers a test that gets the process-wide GPU. WebGPU keeps device resources and async ops
 * alive between tests by design, so Deno's resource and op sanitizers are off for these.
 */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  Deno.test({
    name,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => fn(await getGpu()),
  });
}
