/**
 * Data sets that are too large to ship in the repository (BoolQ, QNLI): the official zip is
 * downloaded on first use into a cache folder, checked, and unpacked there.
 *
 * This module knows no particular task: a task passes a {@link DatasetSpec} naming the zip's URL,
 * the files to take out of it and how many rows each must have.
 *
 * ```text
 * <cache>/<name>.lock               flock: one download of a data set at a time
 * <cache>/<name>.zip.partial        a download in progress (never used; restarted if broken)
 * <cache>/<name>.zip                a complete download not yet unpacked (deleted once it is)
 * <cache>/<name>/<file>             the extracted files, flattened (BoolQ/train.jsonl -> train.jsonl)
 * <cache>/<name>/.ehft-dataset.json the marker, written last and atomically: the verified counts
 * ```
 *
 * Names inside the archive never become paths: only the files the spec names are extracted,
 * under their base names, and an archive holding any entry that could point outside its folder
 * (`..`, an absolute path, a drive letter, a backslash) is refused as a whole.
 *
 * @module
 */

import { unzipSync } from "npm:fflate@0.8.3";
import { isJsonObject, writeAll, writeFileAtomic } from "../model/atomic_write.ts";
import {
  cacheWrite,
  delay,
  fileSize,
  OFFLINE_VARIABLES,
  offlineByEnv,
  offlineVariablesSet,
  Retryable,
  sizeHeader,
  Unreachable,
  USER_AGENT,
} from "../model/download_common.ts";
import { envReader, expandUser, trimSlash, userCacheBase } from "../model/env.ts";
import { errorText, jsonErrorText } from "../model/error_text.ts";
import { formatBytes, progressAmount, writeStderr } from "../model/progress_text.ts";

/** What to download and what it must contain. */
export interface DatasetSpec {
  /** The data set's name, also its folder in the cache: `BoolQ`. */
  name: string;
  /** The official zip, e.g. `https://dl.fbaipublicfiles.com/glue/superglue/data/v2/BoolQ.zip`. */
  url: string;
  /**
   * Files to extract (paths inside the zip, e.g. `BoolQ/train.jsonl`) and the rows each must
   * have. A row is a line holding anything besides ASCII whitespace; with `header: true` (GLUE's
   * TSV files) the first such line is the header and is not counted.
   */
  files: { path: string; rows: number; header?: boolean }[];
  /** Expected zip size in bytes, if known (verified when given). */
  size?: number;
}

/** One progress report of a download. */
export interface DatasetProgress {
  /** The data set's name. */
  name: string;
  /** Bytes received so far in this attempt. */
  bytes: number;
  /** The zip's size, when known (stated by the server or by the spec). */
  total?: number;
  /** True on the last report: all bytes are in (verification and unpacking follow). */
  done: boolean;
}

/** Options of a data set download (`Task.resolveData`): environment, offline, progress, retries. */
export interface EnsureDatasetOptions {
  /** Environment to read EHFT_DATA_CACHE, XDG_CACHE_HOME, HOME and the offline flags from. */
  env?: Record<string, string | undefined>;
  /** The fetch to use; default the global `fetch`. */
  fetch?: typeof fetch;
  /** Make no requests; default true when EHFT_OFFLINE or HF_HUB_OFFLINE is set (1/true/yes/on). */
  offline?: boolean;
  /** Receives download progress; default a progress line on stderr (none when `quiet`). */
  onProgress?: (progress: DatasetProgress) => void;
  /** No progress and no notes on stderr. */
  quiet?: boolean;
  /** Further attempts after a broken transfer or a 5xx/408/429 answer; default 3. */
  retries?: number;
  /** Pause before retry n is n times this; default 1000 ms. */
  retryDelayMs?: number;
  /** Give up on a transfer that sends nothing for this long; default 30 000 ms. */
  timeoutMs?: number;
}

/** A data set that cannot be had, in one line meant for the user. */
export class DatasetError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "DatasetError";
  }
}

/**
 * A data set that is not in the cache and was not to be downloaded (offline: the option,
 * EHFT_OFFLINE or HF_HUB_OFFLINE) with no complete zip there either. The message is the
 * DatasetError's for train.ts (`--data`); the fields let a caller that never downloads, such as
 * pretraining's task text, say in its own words what is missing and how to get it.
 */
export class DatasetNotCachedError extends DatasetError {
  /** The data set's name, also its folder in the cache: `BoolQ`. */
  readonly dataset: string;
  /** The data cache folder (train/data_download.ts's `dataCacheDir`). */
  readonly cache: string;
  /** The official zip's URL. */
  readonly url: string;
  /** Where a complete zip is unpacked from with no request: `<cache>/<name>.zip`. */
  readonly zip: string;
  /** The offline variables that are set (EHFT_OFFLINE, HF_HUB_OFFLINE), in that order. */
  readonly offlineVariables: string[];
  /**
   * What is wrong with the data set's folder in the cache, when there is one but it is not a
   * complete extraction: `<cache>/BoolQ/train.jsonl has 1000 bytes, its marker records 6000`.
   */
  readonly damage?: string;
  /** Takes the message as it is, and the facts it is made from. */
  constructor(
    message: string,
    facts: {
      dataset: string;
      cache: string;
      url: string;
      zip: string;
      offlineVariables: string[];
      damage?: string;
    },
  ) {
    super(message);
    this.dataset = facts.dataset;
    this.cache = facts.cache;
    this.url = facts.url;
    this.zip = facts.zip;
    this.offlineVariables = facts.offlineVariables;
    if (facts.damage !== undefined) this.damage = facts.damage;
  }
}

const MARKER = ".ehft-dataset.json";
// A name that may become one path component inside the cache.
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
// fflate inflates each entry into one buffer of its stated size: refuse absurd ones.
const MAX_ENTRY_BYTES = 2 ** 31 - 1;

const noDataHome = () =>
  new DatasetError(
    "cannot find the home directory for the data cache: set HOME or EHFT_DATA_CACHE",
  );

/**
 * The folder downloaded data sets are kept in: `$EHFT_DATA_CACHE`, else
 * `$XDG_CACHE_HOME/ehft/data`, else `~/.cache/ehft/data`.
 */
export function dataCacheDir(env?: Record<string, string | undefined>): string {
  const get = envReader(env);
  const explicit = get("EHFT_DATA_CACHE");
  if (explicit) return trimSlash(expandUser(explicit, get, noDataHome));
  return `${userCacheBase(get, noDataHome)}/ehft/data`;
}

/** Whether an archive entry name stays inside the folder it is unpacked into. */
export function isSafeEntryName(name: string): boolean {
  if (name === "" || name.includes("\\") || name.includes("\0")) return false;
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name)) return false;
  return !name.split("/").includes("..");
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** The spec's files with the names they get in the data set's folder; a DatasetError if unsound. */
function checkSpec(
  spec: DatasetSpec,
): { path: string; rows: number; header: boolean; as: string }[] {
  if (!SAFE_NAME.test(spec.name) || spec.name.includes("..")) {
    throw new DatasetError(`data set name ${JSON.stringify(spec.name)} is not a plain name`);
  }
  if (!URL.canParse(spec.url) || !/^https?:$/.test(new URL(spec.url).protocol)) {
    throw new DatasetError(`${spec.name}: ${JSON.stringify(spec.url)} is not an http(s) URL`);
  }
  if (spec.size !== undefined && !(Number.isSafeInteger(spec.size) && spec.size > 0)) {
    throw new DatasetError(`${spec.name}: size ${spec.size} is not a positive integer`);
  }
  if (spec.files.length === 0) throw new DatasetError(`${spec.name}: the spec lists no files`);
  const seen = new Set<string>();
  return spec.files.map((f) => {
    const as = baseName(f.path);
    if (!isSafeEntryName(f.path) || !SAFE_NAME.test(as) || as.includes("..") || as === MARKER) {
      throw new DatasetError(`${spec.name}: ${JSON.stringify(f.path)} is not a plain file path`);
    }
    if (seen.has(as)) throw new DatasetError(`${spec.name}: two files are named ${as}`);
    seen.add(as);
    if (!(Number.isSafeInteger(f.rows) && f.rows >= 0)) {
      throw new DatasetError(`${spec.name}: ${f.path}: rows ${f.rows} is not a count`);
    }
    return { path: f.path, rows: f.rows, header: f.header ?? false, as };
  });
}

/**
 * Rows of a text file: lines holding anything besides ASCII whitespace, less one for a header.
 * Counted on bytes (a UTF-8 newline byte is never part of another character).
 */
export function countRows(data: Uint8Array, header = false): number {
  let lines = 0;
  let content = false;
  for (let i = 0; i < data.length; i++) {
    const b = data[i];
    if (b === 0x0a) {
      if (content) lines++;
      content = false;
    } else if (!content && b !== 0x20 && b !== 0x09 && b !== 0x0d && b !== 0x0b && b !== 0x0c) {
      content = true;
    }
  }
  if (content) lines++;
  return header ? Math.max(0, lines - 1) : lines;
}

// ---------------------------------------------------------------------------------------------
// Zip checks that fflate leaves out: the CRC-32 of each entry (a damaged stored entry would
// otherwise unpack silently) and the entry names in central-directory order.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The CRC-32 of each central-directory entry, in order (the order fflate's filter sees). */
function centralCrcs(zip: Uint8Array): number[] {
  const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const u32 = (o: number) => view.getUint32(o, true);
  const u16 = (o: number) => view.getUint16(o, true);
  let eocd = zip.length - 22;
  while (eocd >= 0 && u32(eocd) !== 0x06054b50) {
    if (zip.length - eocd > 65557) return [];
    eocd--;
  }
  if (eocd < 0) return [];
  let count = u16(eocd + 10);
  let offset = u32(eocd + 16);
  if (eocd >= 20 && u32(eocd - 20) === 0x07064b50) {
    const z = Number(view.getBigUint64(eocd - 12, true));
    if (z + 56 <= zip.length && u32(z) === 0x06064b50) {
      count = Number(view.getBigUint64(z + 32, true));
      offset = Number(view.getBigUint64(z + 48, true));
    }
  }
  const crcs: number[] = [];
  for (let i = 0; i < count && offset + 46 <= zip.length; i++) {
    if (u32(offset) !== 0x02014b50) break;
    crcs.push(u32(offset + 16));
    offset += 46 + u16(offset + 28) + u16(offset + 30) + u16(offset + 32);
  }
  return crcs;
}

/**
 * The wanted files of a zip, with their row counts checked: a DatasetError naming every problem
 * (unsafe or duplicate entries, missing files, CRC or row-count mismatches) and writing nothing.
 */
function unpack(
  spec: DatasetSpec,
  files: ReturnType<typeof checkSpec>,
  zip: Uint8Array,
): Map<string, Uint8Array> {
  const wanted = new Map(files.map((f) => [f.path, f]));
  const unsafe: string[] = [];
  const duplicates = new Set<string>();
  const taken = new Set<string>();
  const order: string[] = [];
  let entries: Record<string, Uint8Array>;
  try {
    entries = unzipSync(zip, {
      filter(entry) {
        order.push(entry.name);
        if (!isSafeEntryName(entry.name)) unsafe.push(entry.name);
        if (!wanted.has(entry.name)) return false;
        if (taken.has(entry.name)) duplicates.add(entry.name);
        taken.add(entry.name);
        if (entry.originalSize > MAX_ENTRY_BYTES) {
          throw new DatasetError(`${entry.name} claims ${entry.originalSize} bytes`);
        }
        return true;
      },
    });
  } catch (e) {
    throw new DatasetError(`${spec.name}: the zip is damaged (${errorText(e)})`);
  }
  if (unsafe.length > 0) {
    const shown = unsafe.slice(0, 3).map((n) => JSON.stringify(n)).join(", ");
    throw new DatasetError(
      `${spec.name}: the zip is refused: it names ${shown}${unsafe.length > 3 ? ", ..." : ""}, ` +
        `which would point outside its folder; nothing was extracted`,
    );
  }
  if (duplicates.size > 0) {
    throw new DatasetError(
      `${spec.name}: the zip holds ${[...duplicates].join(", ")} more than once`,
    );
  }
  const crcs = centralCrcs(zip);
  const problems: string[] = [];
  const out = new Map<string, Uint8Array>();
  for (const f of files) {
    const data = entries[f.path];
    if (data === undefined) {
      problems.push(`${f.path} is missing`);
      continue;
    }
    const index = order.indexOf(f.path);
    if (crcs.length === order.length && crcs[index] !== crc32(data)) {
      problems.push(`${f.path} fails its CRC-32 check`);
      continue;
    }
    const found = countRows(data, f.header);
    if (found !== f.rows) {
      problems.push(`${f.path} has ${found} rows, expected ${f.rows}`);
      continue;
    }
    out.set(f.as, data);
  }
  if (problems.length > 0) {
    throw new DatasetError(
      `${spec.name}: the zip is not the expected data (${problems.join("; ")}); ` +
        `nothing was extracted`,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The cache

interface Marker {
  name: string;
  url: string;
  zipBytes: number;
  files: Record<string, { path: string; rows: number; header: boolean; bytes: number }>;
}

/**
 * Whether `dir` holds a complete extraction of the spec's files with the spec's row counts:
 * "complete", "absent" (no folder, or an empty one), or what is wrong with the folder there.
 */
async function extractionState(
  dir: string,
  files: ReturnType<typeof checkSpec>,
): Promise<"complete" | "absent" | { damage: string }> {
  const markerPath = `${dir}/${MARKER}`;
  const info = await Deno.stat(markerPath).catch(() => null);
  if (info === null) {
    const entries = [];
    try {
      for await (const entry of Deno.readDir(dir)) entries.push(entry.name);
    } catch {
      return "absent";
    }
    if (entries.length === 0) return "absent";
    return { damage: `${dir} has no marker ${MARKER} (an unpacking that did not finish)` };
  }
  // A few hundred bytes as written: anything else (a FIFO hung the read, a file of gigabytes
  // filled the memory) is no marker.
  if (!info.isFile || info.size > 1 << 20) {
    return { damage: `${markerPath} is not a marker this toolkit wrote` };
  }
  let marker: Marker;
  let text: string | undefined;
  try {
    text = await Deno.readTextFile(markerPath);
    marker = JSON.parse(text);
  } catch (e) {
    return { damage: `${markerPath} is damaged (${jsonErrorText(e, text)})` };
  }
  // (`files` null got past typeof and failed on "Cannot read properties of null".)
  if (!isJsonObject(marker) || !isJsonObject(marker.files)) {
    return { damage: `${markerPath} is not a marker this toolkit wrote` };
  }
  for (const f of files) {
    const m = marker.files[f.as];
    if (!m || m.path !== f.path || m.rows !== f.rows || (m.header ?? false) !== f.header) {
      return { damage: `${markerPath} records other files than this version of ehft reads` };
    }
    const size = await fileSize(`${dir}/${f.as}`);
    if (size === undefined) return { damage: `${dir}/${f.as} is missing` };
    if (size !== m.bytes) {
      return { damage: `${dir}/${f.as} has ${size} bytes, its marker records ${m.bytes}` };
    }
  }
  return "complete";
}

function missingMessage(
  spec: DatasetSpec,
  cache: string,
  reason: string,
  damage: string | undefined,
): string {
  const zipName = baseName(new URL(spec.url).pathname) || `${spec.name}.zip`;
  const where = damage === undefined
    ? `${spec.name} is not in ${cache}`
    : `${spec.name} in ${cache} is incomplete (${damage})`;
  return `${where} and cannot be downloaded (${reason}); download ` +
    `${zipName} from ${spec.url} yourself, unzip it, and pass --data <the ${spec.name} folder ` +
    `in it>`;
}

/**
 * The local folder holding the spec's files, downloading and unpacking the zip on first use.
 *
 * A complete extraction (its marker present, the files of the recorded sizes) is reused with no
 * requests. Otherwise a complete zip left by an interrupted run is unpacked; otherwise the zip
 * is downloaded, checked against the size the server states and `spec.size`, unpacked in
 * memory, checked entry by entry (CRC-32, row counts), written file by file, and marked
 * complete last. Offline (the option, EHFT_OFFLINE or HF_HUB_OFFLINE) or unreachable, with
 * nothing cached, the DatasetError says how to download it by hand and pass `--data`; offline,
 * it is a DatasetNotCachedError, whose fields name the cache, the zip's URL and where to put it.
 */
export async function ensureDataset(
  spec: DatasetSpec,
  opts: EnsureDatasetOptions = {},
): Promise<string> {
  const files = checkSpec(spec);
  const get = envReader(opts.env);
  const cache = dataCacheDir(opts.env);
  const dir = `${cache}/${spec.name}`;
  const state = await extractionState(dir, files);
  if (state === "complete") return dir;
  const damage = typeof state === "object" ? state.damage : undefined;

  const quiet = opts.quiet ?? false;
  const offline = opts.offline ?? offlineByEnv(get);
  const zipPath = `${cache}/${spec.name}.zip`;
  const note = (text: string) => {
    if (!quiet) writeStderr(`ehft: ${text}\n`);
  };

  const zipReady = async () => {
    const size = await fileSize(zipPath);
    return size !== undefined && (spec.size === undefined || size === spec.size);
  };
  const offlineReason = opts.offline !== undefined
    ? "offline mode"
    : `${offlineVariablesSet(get)[0] ?? OFFLINE_VARIABLES.at(-1)} is set`;
  const notCached = () =>
    new DatasetNotCachedError(missingMessage(spec, cache, offlineReason, damage), {
      dataset: spec.name,
      cache,
      url: spec.url,
      zip: zipPath,
      offlineVariables: offlineVariablesSet(get),
      ...(damage === undefined ? {} : { damage }),
    });
  if (offline && !(await zipReady())) throw notCached();

  try {
    await Deno.mkdir(cache, { recursive: true });
  } catch (e) {
    throw new DatasetError(`cannot create the data cache ${cache}: ${errorText(e)}`);
  }
  // Another process may be downloading the same data set: wait for it, then look again.
  const lockPath = `${cache}/${spec.name}.lock`;
  const there = await Deno.lstat(lockPath).catch(() => null);
  if (there !== null && !there.isFile) {
    // A FIFO there hung the open.
    throw new DatasetError(`${lockPath} is not a regular file: remove it, and run again`);
  }
  const lock = await Deno.open(lockPath, { create: true, write: true });
  try {
    // Another process downloading the same data set: said, or the wait is silent for as long as
    // its download (and retries) takes.
    if (!(await lock.tryLock(true))) {
      note(`waiting for another process's download of ${spec.name} to end`);
      await lock.lock(true);
    }
    if ((await extractionState(dir, files)) === "complete") return dir;
    let downloaded: number | undefined;
    if (!(await zipReady())) {
      if (offline) throw notCached();
      downloaded = await download(spec, cache, zipPath, {
        fetch: opts.fetch ?? fetch,
        progress: opts.onProgress ?? (quiet ? undefined : stderrProgress()),
        retries: Math.max(0, opts.retries ?? 3),
        retryDelayMs: Math.max(0, opts.retryDelayMs ?? 1000),
        timeoutMs: Math.max(1, opts.timeoutMs ?? 30_000),
        damage,
      });
    }
    const zip = await Deno.readFile(zipPath);
    let contents: Map<string, Uint8Array>;
    try {
      contents = unpack(spec, files, zip);
    } catch (e) {
      // A zip that is not what the spec describes is never used again: online, the next run
      // downloads it anew. Offline (a dry run, pretraining's task text, the offline variables)
      // nothing replaces it: one found here, saved by hand as the offline message advises, is
      // kept and said.
      if (!offline) {
        await Deno.remove(zipPath).catch(() => {});
        throw e;
      }
      throw new DatasetError(
        `${errorText(e)}; ${zipPath} is left as it is: replace it with ${spec.url}`,
      );
    }
    // The old marker goes first, so a half-rewritten folder never looks complete.
    await Deno.remove(`${dir}/${MARKER}`).catch(() => {});
    await Deno.mkdir(dir, { recursive: true });
    const marker: Marker = { name: spec.name, url: spec.url, zipBytes: zip.length, files: {} };
    for (const f of files) {
      const data = contents.get(f.as)!;
      await writeFileAtomic(`${dir}/${f.as}`, data);
      marker.files[f.as] = { path: f.path, rows: f.rows, header: f.header, bytes: data.length };
    }
    await writeFileAtomic(`${dir}/${MARKER}`, JSON.stringify(marker, null, 2) + "\n");
    await Deno.remove(zipPath).catch(() => {});
    if (downloaded !== undefined) {
      note(`downloaded ${spec.name} (${formatBytes(downloaded)}) to ${dir}`);
    } else note(`extracted ${spec.name} to ${dir}`);
    return dir;
  } finally {
    lock.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Downloading

interface Transfer {
  fetch: typeof fetch;
  progress?: (p: DatasetProgress) => void;
  retries: number;
  retryDelayMs: number;
  timeoutMs: number;
  /** What is wrong with the data set's folder in the cache, for the messages (extractionState). */
  damage?: string;
}

/**
 * Downloads the zip to `<zip>.partial` and renames it to `<zip>` once complete; returns its size.
 * A broken transfer starts over from the first byte (the partial file is never used).
 */
async function download(
  spec: DatasetSpec,
  cache: string,
  zipPath: string,
  t: Transfer,
): Promise<number> {
  const partial = `${zipPath}.partial`;
  let failures = 0;
  try {
    for (;;) {
      try {
        const bytes = await attempt(spec, partial, t, failures === 0);
        await Deno.rename(partial, zipPath);
        return bytes;
      } catch (e) {
        if (e instanceof Unreachable) {
          throw new DatasetError(missingMessage(spec, cache, e.message, t.damage));
        }
        if (!(e instanceof Retryable)) throw e;
        failures++;
        if (failures > t.retries) {
          throw new DatasetError(
            missingMessage(
              spec,
              cache,
              `the download failed ${failures} times: ${e.message}`,
              t.damage,
            ),
          );
        }
        await delay(t.retryDelayMs * failures);
      }
    }
  } finally {
    await Deno.remove(partial).catch(() => {});
  }
}

async function attempt(
  spec: DatasetSpec,
  partial: string,
  t: Transfer,
  first: boolean,
): Promise<number> {
  const controller = new AbortController();
  let timer = setTimeout(() => controller.abort(), t.timeoutMs);
  const stalled = () => new Retryable(`no data for ${t.timeoutMs / 1000} s`);
  let res: Response;
  try {
    res = await t.fetch(spec.url, {
      headers: { "user-agent": USER_AGENT, "accept-encoding": "identity" },
      signal: controller.signal,
    });
  } catch (e) {
    clearTimeout(timer);
    const why = controller.signal.aborted ? `no answer within ${t.timeoutMs / 1000} s` : (
      `${new URL(spec.url).host} cannot be reached: ${errorText(e)}`
    );
    throw first ? new Unreachable(why) : new Retryable(why);
  }
  let file: Deno.FsFile | undefined;
  try {
    if (!res.ok) {
      if (res.status >= 500 || res.status === 408 || res.status === 429) {
        throw new Retryable(`HTTP ${res.status}`);
      }
      throw new DatasetError(
        `cannot download ${spec.name}: ${spec.url} answered HTTP ${res.status} ` +
          `${res.statusText}; download it yourself, unzip it, and pass --data <the ` +
          `${spec.name} folder in it>`,
      );
    }
    const stated = sizeHeader(res.headers.get("content-length"));
    if (stated !== undefined && spec.size !== undefined && stated !== spec.size) {
      throw new DatasetError(
        `cannot download ${spec.name}: ${spec.url} offers ${stated} bytes, but the expected ` +
          `zip has ${spec.size}; download it yourself, unzip it, and pass --data <the ` +
          `${spec.name} folder in it>`,
      );
    }
    const expected = stated ?? spec.size;
    const cannotWrite = (e: unknown) =>
      new DatasetError(
        `cannot download ${spec.name}: cannot write ${partial}: ${errorText(e)}; free space ` +
          `there (or set EHFT_DATA_CACHE to another folder) and run again`,
      );
    const out = await cacheWrite(
      () => Deno.open(partial, { write: true, create: true, truncate: true }),
      cannotWrite,
    );
    file = out;
    let bytes = 0;
    const report = (done: boolean) =>
      t.progress?.({ name: spec.name, bytes, total: expected, done });
    report(false);
    if (res.body) {
      try {
        for await (const chunk of res.body) {
          clearTimeout(timer);
          timer = setTimeout(() => controller.abort(), t.timeoutMs);
          if (expected !== undefined && bytes + chunk.length > expected) {
            throw new Retryable(`the server sent more than ${expected} bytes`);
          }
          await cacheWrite(() => writeAll(out, chunk), cannotWrite);
          bytes += chunk.length;
          report(false);
        }
      } catch (e) {
        if (e instanceof Retryable || e instanceof DatasetError) throw e;
        throw controller.signal.aborted ? stalled() : new Retryable(errorText(e));
      }
    }
    if (expected !== undefined && bytes < expected) {
      throw new Retryable(`the connection closed after ${bytes} of ${expected} bytes`);
    }
    await cacheWrite(() => out.syncData(), cannotWrite);
    file.close();
    file = undefined;
    report(true);
    return bytes;
  } finally {
    clearTimeout(timer);
    file?.close();
    if (!res.bodyUsed) await res.body?.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Progress on stderr

/**
 * The default progress reporter: one line rewritten in place when stderr is a terminal,
 * otherwise a plain line when the download starts and every 10 s (the note after unpacking
 * says when it ended).
 */
export function stderrProgress(): (p: DatasetProgress) => void {
  const tty = Deno.stderr.isTerminal();
  let last = -Infinity;
  return (p) => {
    const now = performance.now();
    if (!p.done && now - last < (tty ? 100 : 10_000)) return;
    if (p.done && !tty) return;
    last = now;
    const amount = progressAmount(p.bytes, p.total);
    const line = `ehft: downloading ${p.name}  ${amount}`;
    if (tty) writeStderr(`\r\x1b[K${line}${p.done ? "\r\x1b[K" : ""}`);
    else writeStderr(`${line}\n`);
  };
}
