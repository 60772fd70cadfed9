// Kernel throughput. `deno task bench` prints a table; `--json` prints one JSON object per line
// and nothing else on stdout. Timings are GPU-side completion times of whole submits, after
// warm-up, the median of several repetitions.

import { parseArgs } from "node:util";
import { getGpu, type Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor } from "../kernels/tensor.ts";

interface Row {
  kernel: string;
  n: number;
  ms: number;
  gbps: number;
}

async function timeSubmits(gpu: Gpu, record: (rec: Recorder) => void, reps: number) {
  const rec = new Recorder(gpu);
  const times: number[] = [];
  for (let i = 0; i < reps + 2; i++) {
    record(rec);
    const start = performance.now();
    await rec.submit();
    await gpu.device.queue.onSubmittedWorkDone();
    if (i >= 2) times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

async function main() {
  const { values } = parseArgs({
    options: { json: { type: "boolean", default: false }, reps: { type: "string", default: "10" } },
  });
  const reps = Number(values.reps);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps: expected a positive integer`);
  const gpu = await getGpu();
  const rows: Row[] = [];
  for (const n of [1 << 16, 1 << 20, 1 << 24]) {
    const t = createTensor(gpu, [n], "f32", "bench");
    const ms = await timeSubmits(gpu, (rec) => fill(rec, t, 1), reps);
    rows.push({ kernel: "fill", n, ms, gbps: (n * 4) / (ms * 1e6) });
    const start = performance.now();
    await t.download();
    const dms = performance.now() - start;
    rows.push({ kernel: "download", n, ms: dms, gbps: (n * 4) / (dms * 1e6) });
    t.destroy();
  }
  if (values.json) {
    for (const r of rows) console.log(JSON.stringify({ ...r, adapter: gpu.description }));
  } else {
    console.log(`adapter: ${gpu.description}`);
    console.log("kernel      elements        ms      GB/s");
    for (const r of rows) {
      console.log(
        `${r.kernel.padEnd(10)} ${String(r.n).padStart(9)} ${r.ms.toFixed(3).padStart(9)} ` +
          `${r.gbps.toFixed(2).padStart(9)}`,
      );
    }
  }
  gpu.destroy();
}

try {
  await main();
} catch (e) {
  console.error(`bench: ${(e as Error).message}`);
  Deno.exit(1);
}
