// What a run ran on, recorded as run.json's and pretrain.json's "environment". The same seed
// gives the same bits only on the same adapter, with the same Deno (its WebGPU compiles our
// kernels, and the autotune's choices follow the adapter) and the same ehft; a table of results
// from several machines needs to say which came from where. A --resume on another machine is
// allowed (the checkpoint is exact), with a note that the rest of the run is not bit for bit the
// one an uninterrupted run would have given.

import { adapterName, type Gpu } from "../kernels/device.ts";
import { EHFT_VERSION } from "../model/download_common.ts";

/** The "environment" object of run.json and pretrain.json. */
export interface RunEnvironment {
  /** The toolkit's version (deno.json's). */
  ehft: string;
  /** `Deno.version.deno`. */
  deno: string;
  /** `Deno.build.os` and `Deno.build.arch`, as "linux x86_64". */
  os: string;
  /** The WebGPU adapter's info, as Deno reports it (no driver version: WebGPU gives none). */
  adapter: { description: string; vendor: string; architecture: string; device: string };
}

/** The adapter's fields an environment keeps, checked and compared. */
const ADAPTER_FIELDS = ["description", "vendor", "architecture", "device"] as const;

/** The environment of this process on `gpu`. */
export function runEnvironment(gpu: Gpu): RunEnvironment {
  const info = gpu.adapter.info;
  return {
    ehft: EHFT_VERSION,
    deno: Deno.version.deno,
    os: `${Deno.build.os} ${Deno.build.arch}`,
    adapter: {
      description: info.description,
      vendor: info.vendor,
      architecture: info.architecture,
      device: info.device,
    },
  };
}

/** An environment in a line: the adapter, then the versions. */
export function describeEnvironment(e: RunEnvironment): string {
  return `${adapterName(e.adapter)}, Deno ${e.deno}, ehft ${e.ehft}`;
}

/** A run file's "environment" when it is one (runs from before it was kept have none). */
export function isEnvironment(x: unknown): x is RunEnvironment {
  if (typeof x !== "object" || x === null) return false;
  const e = x as Record<string, unknown>, a = e.adapter as Record<string, unknown> | null;
  return typeof e.ehft === "string" && typeof e.deno === "string" && typeof a === "object" &&
    a !== null &&
    ADAPTER_FIELDS.every((k) => typeof a[k] === "string");
}

/** The environments a run file records: where it started, then each resume elsewhere. */
export function recordedEnvironments(record: unknown): RunEnvironment[] {
  if (typeof record !== "object" || record === null) return [];
  const r = record as Record<string, unknown>;
  if (!isEnvironment(r.environment)) return [];
  const resumes = Array.isArray(r.resumed_on) ? r.resumed_on.filter(isEnvironment) : [];
  return [r.environment, ...resumes];
}

/** Where a run ran, from its run file: "A", or "A → B" when it was resumed elsewhere; or null. */
export function describeRecord(record: unknown): string | null {
  const list = recordedEnvironments(record);
  return list.length === 0 ? null : list.map(describeEnvironment).join(" → ");
}

function sameEnvironment(a: RunEnvironment, b: RunEnvironment): boolean {
  return a.ehft === b.ehft && a.deno === b.deno &&
    ADAPTER_FIELDS.every((k) => a.adapter[k] === b.adapter[k]);
}

/**
 * The note a --resume prints when the run file's `record` (run.json, pretrain.json) last ran on
 * another adapter, Deno or ehft than `now` (its "environment", or the last of its "resumed_on");
 * null when they agree, or when it records none (a run from before it was recorded, or an edited
 * one: nothing is known to differ).
 */
export function resumeElsewhereNote(
  file: string,
  record: unknown,
  now: RunEnvironment,
): string | null {
  const list = recordedEnvironments(record);
  if (list.length === 0) return null;
  const last = list[list.length - 1];
  if (sameEnvironment(last, now)) return null;
  return `--resume: ${file} records ${list.length > 1 ? "a resume" : "a start"} on ` +
    `${describeEnvironment(last)}; it goes on on ${describeEnvironment(now)}, so the rest of ` +
    `the run may differ in the last bits from an uninterrupted one`;
}
