// What --grad-accum saves: the peak of the toolkit's GPU allocations (Gpu.peakBytes, our own
// ledger of every tensor's buffer) over a one-step train.ts run on RTE, the whole batch at once
// and in parts, on a fresh device each.
//
//   deno run -A bench/grad_accum_memory.ts [--model DIR] [--batch-size 32] [--max-length 128]
//                                          [--grad-accum 4]
//
// Default: the shipped mini model, full fine-tuning. Writes its runs under a temporary folder,
// removed afterwards. README.md (Training) has the numbers.

import { parseArgs } from "node:util";
import { requestGpu } from "../kernels/device.ts";
import { parseTrainArgs } from "../train/config.ts";
import { runTraining } from "../train/run.ts";
import { rte } from "../tasks/rte.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const { values: f } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: `${ROOT}models/ehft-mini-en` },
    "batch-size": { type: "string", default: "32" },
    "max-length": { type: "string", default: "128" },
    "grad-accum": { type: "string", default: "4" },
  },
});

const dir = await Deno.makeTempDir({ prefix: "ehft-grad-accum-memory-" });
try {
  for (const parts of ["1", f["grad-accum"]]) {
    const gpu = await requestGpu();
    try {
      const { config } = parseTrainArgs([
        ...["--task", "rte", "--model", f.model, "--data", `${ROOT}data/superglue/RTE`],
        ...["--strategy", "ft", "--batch-size", f["batch-size"], "--grad-accum", parts],
        ...["--max-steps", "1", "--eval-every", "0", "--max-length", f["max-length"]],
        ...["--out", `${dir}/run-${parts}`],
      ]);
      await runTraining(config, { task: rte, quiet: true, gpu });
      const mib = (gpu.peakBytes / 2 ** 20).toFixed(1);
      console.log(`--batch-size ${f["batch-size"]} --grad-accum ${parts}: peak ${mib} MiB`);
    } finally {
      gpu.destroy();
    }
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
