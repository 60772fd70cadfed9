// Helpers shared by the toolkit's downloaders: model files from the Hugging Face hub
// (model/hub.ts), task data sets (train/data_download.ts) and the pretraining corpus
// (train/corpus.ts, its offline switches). One copy, so that the user agent (hub and data), the
// error classes a retry loop tells apart and the offline switches cannot drift between them. Each downloader keeps its own retry
// counts, messages and progress line: those differ on purpose.

import { type Env, isTrue } from "./env.ts";

/**
 * The toolkit's version, as deno.json's `version` (tests/publish_test.ts checks they agree). A
 * constant, not read from deno.json: the library is also imported by URL, where no config is.
 */
export const EHFT_VERSION = "0.1.0";

/** The User-Agent of every request: the hub's, the data sets' and the pretraining corpus's. */
export const USER_AGENT = `ehft/${EHFT_VERSION}; deno/${Deno.version.deno}`;

/** A transfer that broke and may be retried. */
export class Retryable extends Error {}

/**
 * The server could not be reached at all (connection refused, DNS, timeout): the caller may
 * fall back to a cache, or explain how to do without the download.
 */
export class Unreachable extends Error {}

/**
 * What `write` (a write into the download's cache) gives; its failure becomes `cannot(e)`: a full
 * or read-only cache is not the network's fault, so it is said at once and not retried.
 */
export async function cacheWrite<T>(
  write: () => Promise<T>,
  cannot: (e: unknown) => Error,
): Promise<T> {
  try {
    return await write();
  } catch (e) {
    throw cannot(e);
  }
}

/** Resolves after `ms` milliseconds; at once when `ms` is 0 or less (tests retry with no pause). */
export function delay(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}

/** A Content-Length-like header as a byte count; undefined when absent or not a plain integer. */
export function sizeHeader(value: string | null): number | undefined {
  if (value === null || !/^\d+$/.test(value.trim())) return undefined;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

/** The size of the regular file at `path`; undefined when it is absent or not a file. */
export async function fileSize(path: string): Promise<number | undefined> {
  try {
    const info = await Deno.stat(path);
    return info.isFile ? info.size : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The variables that make the toolkit's own downloads (task data, corpora) offline, in the order
 * a message names them. The hub follows Hugging Face's rule instead (HF_HUB_OFFLINE, else
 * TRANSFORMERS_OFFLINE, model/hub.ts).
 */
export const OFFLINE_VARIABLES = ["EHFT_OFFLINE", "HF_HUB_OFFLINE"] as const;

/** The offline variables that are set (1/true/yes/on), in the order of OFFLINE_VARIABLES. */
export function offlineVariablesSet(get: Env): string[] {
  return OFFLINE_VARIABLES.filter((name) => isTrue(get(name)));
}

/** Whether the environment makes the toolkit's own downloads offline (any OFFLINE_VARIABLES). */
export function offlineByEnv(get: Env): boolean {
  return OFFLINE_VARIABLES.some((name) => isTrue(get(name)));
}
