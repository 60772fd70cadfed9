// RTE with EH-FT (BitFit Stage 1) by default. Training arrives with the training-engine and task
// issues; until then this entry point checks that the GPU runtime works and says so honestly.

import { getGpu } from "../kernels/device.ts";

try {
  const gpu = await getGpu();
  console.log(`ehft: WebGPU adapter: ${gpu.description}`);
  console.error(
    "ehft: `deno task rte` cannot train yet: the encoder, training engine and task scripts " +
      "are not implemented in this version (see README, Status).",
  );
  gpu.destroy();
  Deno.exit(2);
} catch (e) {
  console.error(`ehft: ${(e as Error).message}`);
  Deno.exit(1);
}
