// Kernel throughput: `deno task bench` prints the adapter and one table of every kernel's
// milliseconds per op and GFLOP/s (compute-bound) or GB/s (memory-bound). `--json` prints one JSON
// object per row on stdout and nothing else (progress goes to stderr). How ops are timed:
// bench/timing.ts; what the numbers mean: BENCHMARKS.md.
//
//   deno task bench [--json] [--reps N] [--only fill,matmul,layernorm,attention,embedding,adamw]

import { parseArgs } from "node:util";
import { getGpu, type Gpu, oneLine } from "../kernels/device.ts";
import { benchAdamw } from "./adamw.ts";
import { benchAttention } from "./attention.ts";
import { benchEmbedding } from "./embedding.ts";
import { benchFill } from "./fill.ts";
import { benchLayerNorm } from "./layernorm.ts";
import { benchMatmul } from "./matmul.ts";
import type { BenchRow } from "./timing.ts";

const MODULES: Record<string, (gpu: Gpu, reps: number) => Promise<BenchRow[]>> = {
  fill: benchFill,
  matmul: benchMatmul,
  layernorm: benchLayerNorm,
  attention: benchAttention,
  embedding: benchEmbedding,
  adamw: benchAdamw,
};

const USAGE = `usage: deno task bench [--json] [--reps N] [--only ${
  Object.keys(MODULES).join(",")
}]`;

interface Options {
  json: boolean;
  reps: number;
  only: string[];
}

function parseOptions(args: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        json: { type: "boolean", default: false },
        reps: { type: "string", default: "10" },
        only: { type: "string" },
      },
    }));
  } catch (e) {
    throw new Error(`${(e as Error).message} (${USAGE})`);
  }
  if (!/^[1-9][0-9]*$/.test(values.reps)) {
    throw new Error(`--reps: expected a positive integer, got "${values.reps}"`);
  }
  const only = values.only === undefined
    ? Object.keys(MODULES)
    : values.only.split(",").map((s) => s.trim());
  for (const name of only) {
    if (!Object.hasOwn(MODULES, name)) {
      throw new Error(
        `--only: unknown module "${name}" (expected some of ${Object.keys(MODULES).join(",")})`,
      );
    }
  }
  return { json: values.json, reps: Number(values.reps), only: [...new Set(only)] };
}

/** Rounds to 5 significant digits: the timings are not more precise than that. */
function round(x: number): number {
  return Number(x.toPrecision(5));
}

/** The row as JSON: numeric shape fields instead of the table's shape string, plus the adapter. */
function jsonLine(row: BenchRow, adapter: string): string {
  const { shape: _shape, ...fields } = row;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    out[key] = key === "ms" || key === "gflops" || key === "gbps" ? round(value as number) : value;
  }
  out.adapter = adapter;
  return JSON.stringify(out);
}

function fmt(x: number | undefined): string {
  if (x === undefined) return "";
  if (x >= 100) return x.toFixed(1);
  if (x >= 1) return x.toFixed(3);
  return x.toPrecision(3);
}

function table(rows: BenchRow[]): string {
  const header = ["kernel", "shape", "ms", "GFLOP/s", "GB/s", "R", "timed"];
  const cells = rows.map((r) => [
    r.kernel,
    r.shape,
    fmt(r.ms),
    fmt(r.gflops),
    fmt(r.gbps),
    String(r.per_submit),
    String(r.timed_submits),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  // Text columns left-aligned, numbers right-aligned.
  const line = (c: string[]) =>
    c.map((s, i) => (i < 2 ? s.padEnd(widths[i]) : s.padStart(widths[i]))).join("  ").trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

const encoder = new TextEncoder();

/** Writes to stdout; a reader that went away (`| head`) ends the bench quietly. */
function write(text: string): void {
  try {
    const bytes = encoder.encode(text + "\n");
    let done = 0;
    while (done < bytes.length) done += Deno.stdout.writeSync(bytes.subarray(done));
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) Deno.exit(0);
    throw e;
  }
}

async function main(): Promise<void> {
  const options = parseOptions(Deno.args);
  const gpu = await getGpu();
  try {
    if (!options.json) write(`adapter: ${gpu.description}\n`);
    const rows: BenchRow[] = [];
    const start = performance.now();
    for (const name of options.only) {
      const moduleStart = performance.now();
      console.error(`bench: ${name}...`);
      const moduleRows = await MODULES[name](gpu, options.reps);
      const seconds = (performance.now() - moduleStart) / 1000;
      console.error(`bench: ${name}: ${moduleRows.length} rows in ${seconds.toFixed(1)} s`);
      if (options.json) { for (const row of moduleRows) write(jsonLine(row, gpu.description)); }
      rows.push(...moduleRows);
    }
    if (!options.json) write(table(rows));
    console.error(`bench: done in ${((performance.now() - start) / 1000).toFixed(1)} s`);
  } finally {
    gpu.destroy();
  }
}

try {
  await main();
} catch (e) {
  const message = oneLine((e as Error)?.message ?? String(e));
  console.error(`bench: ${message}`);
  Deno.exit(1);
}
