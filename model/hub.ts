/**
 * Models from the Hugging Face hub, kept in Hugging Face's own cache.
 *
 * A model is a local directory or a hub id (`FacebookAI/roberta-large`). Hub files are fetched
 * from `<endpoint>/<id>/resolve/<revision>/<file>` into the layout huggingface_hub uses, so a
 * model a Python user already downloaded is reused and one we download is theirs too:
 *
 * ```text
 * <cache>/models--org--name/
 *   blobs/<etag>                      file contents, named by ETag (sha256 for LFS files)
 *   blobs/<etag>.incomplete           a download in progress (resumable, never used)
 *   refs/<revision>                   the commit hash the revision pointed to (no newline)
 *   snapshots/<commit>/<file>         relative symlinks ../../blobs/<etag>
 *   .no_exist/<commit>/<file>         empty markers: the file does not exist at that commit
 * <cache>/.locks/models--org--name/<etag>.lock   (flock, shared with Python's filelock)
 * ```
 *
 * Nothing the server or an index file says is used as a path without checking: ids, revisions,
 * ETags, commit hashes and shard names are restricted to plain names, so no answer can make us
 * read or write outside the cache folder. Nor can a link in the cache: every folder written
 * into, every lock, partial download and blob, and every entry of a snapshot handed to the
 * loader must resolve (links followed) to a place inside the cache folder; one that leads
 * outside is an error naming it.
 *
 * Error messages carry no `ehft:` prefix (the command line adds it) and never the token.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { writeAll } from "./atomic_write.ts";
import {
  cacheWrite,
  delay,
  fileSize,
  Retryable,
  sizeHeader,
  Unreachable,
  USER_AGENT,
} from "./download_common.ts";
import { errorText, jsonErrorText } from "./error_text.ts";
import { formatBytes, progressAmount, writeStderr } from "./progress_text.ts";
import {
  type Env,
  envReader,
  expandUser as expandUserIn,
  isTrue,
  trimSlash,
  userCacheBase,
} from "./env.ts";
import { readUtf8File, Utf8Error } from "./utf8.ts";

/** Environment variables as a plain record; `undefined` and `""` both mean unset. */
export type HubEnv = Record<string, string | undefined>;

/** A problem resolving or downloading a model, in one line meant for the user. */
export class HubError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "HubError";
  }
}

/** One progress report of a file download. */
export interface DownloadProgress {
  /** The hub id. */
  repo: string;
  /** The file name inside the repository. */
  file: string;
  /** Bytes of the file on disk so far (a resumed download starts above zero). */
  bytes: number;
  /** The file's size, when the server stated it. */
  total?: number;
  /** Transfer rate of the current attempt. */
  bytesPerSecond: number;
  /** True on the last report of a file: all its bytes are in (verification follows). */
  done: boolean;
}

/** Options of `resolveModel`: which revision, where from, and how to report and retry. */
export interface ResolveModelOptions {
  /** Branch, tag or commit hash; default `main`. `/` is allowed (`refs/pr/1`). */
  revision?: string;
  /** Environment to read HF_* variables from; default `Deno.env`. */
  env?: HubEnv;
  /** The fetch to use; default the global `fetch`. */
  fetch?: typeof fetch;
  /** Receives download progress; default a progress line on stderr (none when `quiet`). */
  onProgress?: (progress: DownloadProgress) => void;
  /** No progress and no notes on stderr. */
  quiet?: boolean;
  /**
   * Further attempts after a broken download or a 5xx (or 429) answer; default 5. A metadata
   * request is not retried while the cache holds a complete snapshot of the revision: that
   * snapshot is used at once (see resolveModel).
   */
  retries?: number;
  /** Pause before retry n is n times this; default 1000 ms. */
  retryDelayMs?: number;
}

const DEFAULT_ENDPOINT = "https://huggingface.co";
const DEFAULT_REVISION = "main";
const MAX_INDEX_BYTES = 64 << 20;

// Hugging Face's own rules for repo ids: word characters, '.', '-', at most 96 characters,
// no "--" (the cache folder uses it as the separator) and no "..".
const ID_SEGMENT = /^[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$/;
// A file, ETag or commit name that may become one path component inside the cache.
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$/;
const COMMIT_HASH = /^[0-9a-f]{40}$/;
const SHA256 = /^[0-9a-f]{64}$/;

/** Whether the hub stays offline: Hugging Face's rule, HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE. */
export function hubOffline(get: Env): boolean {
  return isTrue(get("HF_HUB_OFFLINE") ?? get("TRANSFORMERS_OFFLINE"));
}

/** Whether `s` has the shape of a hub id: `name` or `org/name`. */
export function isHubId(s: string): boolean {
  if (s.length === 0 || s.length > 96 || s.includes("..") || s.includes("--")) return false;
  const parts = s.split("/");
  return parts.length <= 2 && parts.every((p) => ID_SEGMENT.test(p));
}

/** The cache folder name of a hub id: `models--org--name`. */
export function repoFolderName(id: string): string {
  if (!isHubId(id)) throw new HubError(`${JSON.stringify(id)} is not a Hugging Face hub id`);
  return `models--${id.replaceAll("/", "--")}`;
}

const noHubHome = () =>
  new HubError("cannot find the home directory: set HOME, HF_HOME or HF_HUB_CACHE");

function expandUser(path: string, get: Env): string {
  return expandUserIn(path, get, noHubHome);
}

function hfHome(get: Env): string {
  const home = get("HF_HOME");
  if (home) return trimSlash(expandUser(home, get));
  return `${userCacheBase(get, noHubHome)}/huggingface`;
}

/**
 * Hugging Face's hub cache folder: `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else
 * `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
 */
export function hubCacheDir(env?: HubEnv): string {
  const get = envReader(env);
  const explicit = get("HF_HUB_CACHE") ?? get("HUGGINGFACE_HUB_CACHE");
  if (explicit) return trimSlash(expandUser(explicit, get));
  return `${hfHome(get)}/hub`;
}

/** The cache path as the user knows it: the home directory shown as `~`. */
function displayPath(path: string, get: Env): string {
  const home = get("HOME") ?? get("USERPROFILE");
  if (home) {
    const h = trimSlash(home);
    if (path === h) return "~";
    if (path.startsWith(h + "/") || path.startsWith(h + "\\")) return "~" + path.slice(h.length);
  }
  return path;
}

function seconds(value: string | undefined, fallback: number): number {
  const s = value === undefined ? NaN : Number(value);
  return Number.isFinite(s) && s > 0 ? s * 1000 : fallback;
}

function q(s: string): string {
  return JSON.stringify(s);
}

/**
 * Checks that `revision` has the shape of a branch, tag or commit hash (letters, digits, ".",
 * "_", "-" and "/", no ".." and no leading "/" or "."), so that it can name a file under the
 * cache's refs/ folder; a HubError otherwise. What `--revision` is checked with.
 */
export function checkRevision(revision: string): void {
  revisionSegments(revision);
}

/** A revision as path segments under refs/, or a HubError. */
function revisionSegments(revision: string): string[] {
  const segments = revision.split("/");
  const ok = revision.length > 0 && revision.length <= 255 && !revision.includes("..") &&
    segments.every((s) => /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/.test(s));
  if (!ok) {
    throw new HubError(
      `invalid revision ${q(revision)}: expected a branch, tag or commit hash made of letters, ` +
        `digits, ".", "_", "-" and "/" (no "..", no leading "/" or ".")`,
    );
  }
  return segments;
}

// ---------------------------------------------------------------------------------------------
// Resolving

/**
 * A local directory holding config.json, the tokenizer files and the weights of `idOrPath`.
 *
 * A path that exists locally wins and is returned as given. Otherwise `idOrPath` must be a hub
 * id: online, its files are checked against the hub (HEAD requests) and downloaded where the
 * cache lacks them, and the snapshot folder is returned; with `HF_HUB_OFFLINE` set, or when the
 * hub cannot be reached, the cached snapshot of the revision is used with no requests.
 *
 * As in huggingface_hub, a hub that answers a metadata (HEAD) request with an HTTP error (5xx,
 * 429, 401/403, RepoNotFound: an outage, a token problem) also falls back to a complete cached
 * snapshot of the revision, with a note on stderr naming the answer; only a missing revision
 * (RevisionNotFound) or file (404) is final. With nothing usable cached, the hub's error stands.
 * Retries: a 5xx or 429 is not retried when such a snapshot exists (huggingface_hub does not
 * retry its metadata request either; waiting out an outage would only delay the same fallback);
 * otherwise it is retried `retries` times as before, since the download needs the hub.
 *
 * Files: `config.json`; `tokenizer.json`, else `vocab.txt`, else `vocab.json` + `merges.txt`;
 * `tokenizer_config.json` when the repo has it; `model.safetensors`, else
 * `model.safetensors.index.json` and its shards.
 */
export async function resolveModel(
  idOrPath: string,
  opts: ResolveModelOptions = {},
): Promise<string> {
  if (idOrPath === "") throw new HubError("empty model name");
  if (opts.revision !== undefined) revisionSegments(opts.revision);
  try {
    const info = await Deno.stat(idOrPath);
    if (info.isDirectory) {
      if (opts.revision !== undefined) {
        throw new HubError(
          `${idOrPath} is a local directory: a revision (${q(opts.revision)}) applies only to ` +
            `hub ids`,
        );
      }
      return idOrPath;
    }
    throw new HubError(`${idOrPath} is a file; pass the directory that holds config.json`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (!isHubId(idOrPath)) {
    throw new HubError(
      `${idOrPath} is neither a local directory nor a Hugging Face hub id ` +
        `(like FacebookAI/roberta-large)`,
    );
  }
  const ctx = context(idOrPath, opts);
  if (ctx.offline) {
    const cached = await findCached(ctx);
    if (cached.dir) return cached.dir;
    throw new HubError(offlineMessage(ctx, cached, "HF_HUB_OFFLINE is set"));
  }
  // A commit is immutable: a complete snapshot of it needs no requests (as in huggingface_hub).
  if (COMMIT_HASH.test(ctx.revision)) {
    const cached = await findCached(ctx);
    if (cached.dir) return cached.dir;
  }
  try {
    return await download(ctx);
  } catch (e) {
    if (!(e instanceof Unreachable) && !(e instanceof HubAnswered)) throw e;
    const cached = await findCached(ctx);
    if (cached.dir) {
      const commit = cached.dir.slice(cached.dir.lastIndexOf("/") + 1);
      note(
        ctx,
        e instanceof HubAnswered
          ? `${ctx.endpoint} answered ${e.answer}; using the cached snapshot of ${ctx.id} ` +
            `(commit ${commit})`
          : `cannot reach ${ctx.endpoint} (${e.message}); using the cached ${ctx.id}`,
      );
      return cached.dir;
    }
    if (e instanceof HubAnswered) throw e;
    throw new HubError(
      offlineMessage(ctx, cached, `${ctx.endpoint} cannot be reached (${e.message})`),
    );
  }
}

interface Context {
  id: string;
  revision: string;
  refSegments: string[];
  cache: string;
  cacheDisplay: string;
  repoDir: string;
  lockDir: string;
  endpoint: string;
  endpointOrigin: string;
  token?: string;
  tokenSource?: string;
  offline: boolean;
  fetch: typeof fetch;
  progress?: (p: DownloadProgress) => void;
  quiet: boolean;
  retries: number;
  retryDelayMs: number;
  etagTimeoutMs: number;
  readTimeoutMs: number;
}

function context(id: string, opts: ResolveModelOptions): Context {
  const get = envReader(opts.env);
  const revision = opts.revision ?? DEFAULT_REVISION;
  const refSegments = revisionSegments(revision);
  const cache = hubCacheDir(opts.env);
  const folder = repoFolderName(id);
  const endpoint = trimSlash(get("HF_ENDPOINT") ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  let endpointOrigin: string;
  try {
    const url = new URL(endpoint);
    if (url.protocol !== "https:" && url.protocol !== "http:") throw new Error();
    endpointOrigin = url.origin;
  } catch {
    throw new HubError(`HF_ENDPOINT ${q(endpoint)} is not an http(s) URL`);
  }
  let token = get("HF_TOKEN") ?? get("HUGGING_FACE_HUB_TOKEN");
  let tokenSource = token === undefined ? undefined : "HF_TOKEN";
  if (token === undefined) {
    // Where `huggingface-cli login` keeps the token.
    try {
      const path = get("HF_TOKEN_PATH") ?? `${hfHome(get)}/token`;
      token = Deno.readTextFileSync(expandUser(path, get)).trim() || undefined;
      if (token !== undefined) tokenSource = `the token in ${displayPath(path, get)}`;
    } catch {
      // No saved token.
    }
  }
  const quiet = opts.quiet ?? false;
  return {
    id,
    revision,
    refSegments,
    cache,
    cacheDisplay: displayPath(cache, get),
    repoDir: `${cache}/${folder}`,
    lockDir: `${cache}/.locks/${folder}`,
    endpoint,
    endpointOrigin,
    token,
    tokenSource,
    offline: hubOffline(get),
    fetch: opts.fetch ?? fetch,
    progress: opts.onProgress ?? (quiet ? undefined : stderrProgress()),
    quiet,
    retries: Math.max(0, opts.retries ?? 5),
    retryDelayMs: Math.max(0, opts.retryDelayMs ?? 1000),
    etagTimeoutMs: seconds(get("HF_HUB_ETAG_TIMEOUT"), 10_000),
    readTimeoutMs: seconds(get("HF_HUB_DOWNLOAD_TIMEOUT"), 10_000),
  };
}

function note(ctx: Context, message: string): void {
  if (!ctx.quiet) writeStderr(`ehft: ${message}\n`);
}

function offlineMessage(
  ctx: Context,
  cached: { missing?: string; damage?: string },
  why: string,
): string {
  const where = `the Hugging Face cache (${ctx.cacheDisplay})`;
  const lack = cached.damage ?? (cached.missing === undefined ? undefined : `no ${cached.missing}`);
  const what = lack === undefined
    ? `${ctx.id} is not in ${where}`
    : `${ctx.id} is only partly in ${where} (${lack})`;
  return `${what} and ${why}; run once with network access, or pass --model a local directory`;
}

// ---------------------------------------------------------------------------------------------
// The cache

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Writes `text` to `path` through a temporary file and a rename, so readers never see half. */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Whether `path` is `root` or inside it (both real paths). */
function within(root: string, path: string): boolean {
  if (path === root) return true;
  const base = /[\\/]$/.test(root) ? root : `${root}/`;
  return path.startsWith(base) || path.startsWith(base.replace(/\/$/, "\\"));
}

/** The real path of `path` (every link followed), or undefined when it (or its target) is absent. */
async function realPathIfAny(path: string): Promise<string | undefined> {
  try {
    return await Deno.realPath(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/**
 * Throws a HubError when `path` exists and resolves (links followed) to a place outside the
 * cache folder: a link in the cache that leads elsewhere is never read through nor written
 * through. `what` names the entry in the message.
 */
async function assertInCache(ctx: Context, path: string, what: string): Promise<void> {
  const real = await realPathIfAny(path);
  if (real === undefined) return;
  const root = await realPathIfAny(ctx.cache) ?? ctx.cache;
  if (!within(root, real)) {
    throw new HubError(
      `${ctx.id}: the cached ${what} (${path}) leads outside the cache folder ` +
        `${ctx.cacheDisplay} (to ${real}); delete it and run again`,
    );
  }
}

/** Throws a HubError when `path` is a link: a file we create or append to, never through one. */
async function assertNotLink(ctx: Context, path: string, what: string): Promise<void> {
  let link = false;
  try {
    link = (await Deno.lstat(path)).isSymlink;
  } catch {
    return;
  }
  if (link) {
    throw new HubError(
      `${ctx.id}: the cached ${what} (${path}) is a link, where the cache keeps a plain file; ` +
        `delete it and run again`,
    );
  }
}

/**
 * Makes the folder `dir` (inside the cache) without ever creating anything through a link that
 * leads outside: its deepest existing ancestor below the cache folder is checked first, and the
 * folder itself after.
 */
async function mkdirInCache(ctx: Context, dir: string, what: string): Promise<void> {
  let existing = dir;
  while (existing !== ctx.cache && existing.startsWith(`${ctx.cache}/`)) {
    if (await realPathIfAny(existing) !== undefined) break;
    existing = existing.slice(0, existing.lastIndexOf("/"));
  }
  if (existing !== ctx.cache) await assertInCache(ctx, existing, what);
  await Deno.mkdir(dir, { recursive: true });
  await assertInCache(ctx, dir, what);
}

/** Checks a snapshot folder and each of its entries (what the loader may read) with assertInCache. */
async function checkSnapshot(ctx: Context, dir: string): Promise<void> {
  await assertInCache(ctx, dir, "snapshot folder");
  for await (const entry of Deno.readDir(dir)) {
    await assertInCache(ctx, `${dir}/${entry.name}`, entry.name);
  }
}

/**
 * The commit a revision points to in the cache: undefined when the cache has no ref of it, a
 * `damage` (for the offline message) when the ref there holds no commit.
 */
async function cachedCommit(ctx: Context): Promise<string | undefined | { damage: string }> {
  if (COMMIT_HASH.test(ctx.revision)) return ctx.revision;
  const ref = `${ctx.repoDir}/refs/${ctx.refSegments.join("/")}`;
  await assertInCache(ctx, ref, `ref ${ctx.revision}`);
  let info;
  try {
    info = await Deno.stat(ref);
  } catch {
    return undefined;
  }
  const damaged = { damage: `its ref ${ref} holds no commit hash` };
  // A commit hash and a line break: anything else (a FIFO hung the read, a file of gigabytes
  // filled the memory) is no ref.
  if (!info.isFile || info.size > 4096) return damaged;
  try {
    const commit = (await Deno.readTextFile(ref)).trim();
    return SAFE_NAME.test(commit) && !commit.includes("..") ? commit : damaged;
  } catch {
    return damaged;
  }
}

/** Shard names of an index file, each checked to be a plain `.safetensors` file name. */
function parseIndex(ctx: Context, text: string): string[] {
  let weightMap: unknown;
  try {
    weightMap = (JSON.parse(text) as { weight_map?: unknown }).weight_map;
  } catch (e) {
    throw new HubError(
      `${ctx.id}: model.safetensors.index.json is not JSON (${jsonErrorText(e, text)})`,
    );
  }
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new HubError(`${ctx.id}: model.safetensors.index.json has no weight_map object`);
  }
  const shards = new Set<string>();
  for (const shard of Object.values(weightMap)) {
    if (
      typeof shard !== "string" || !SAFE_NAME.test(shard) || shard.includes("..") ||
      !shard.endsWith(".safetensors")
    ) {
      throw new HubError(
        `${ctx.id}: model.safetensors.index.json names the shard ${q(String(shard))}, ` +
          `which is not a plain .safetensors file name`,
      );
    }
    shards.add(shard);
  }
  if (shards.size === 0) {
    throw new HubError(`${ctx.id}: model.safetensors.index.json lists no shards`);
  }
  return [...shards].sort();
}

async function readIndex(ctx: Context, path: string): Promise<string[]> {
  const size = await fileSize(path);
  if (size !== undefined && size > MAX_INDEX_BYTES) {
    throw new HubError(`${ctx.id}: model.safetensors.index.json is implausibly large`);
  }
  const text = await readUtf8File(path).catch((e) => {
    if (e instanceof Utf8Error) {
      throw new HubError(`${ctx.id}: model.safetensors.index.json: ${e.message}`);
    }
    throw e;
  });
  return parseIndex(ctx, text);
}

/** Whether findCached finds a complete snapshot (a cache it cannot vouch for counts as none). */
async function hasCompleteSnapshot(ctx: Context): Promise<boolean> {
  try {
    return (await findCached(ctx)).dir !== undefined;
  } catch {
    return false;
  }
}

/**
 * The cached snapshot of the revision, if it holds everything resolveModel would download;
 * otherwise the first file it lacks, or (`damage`) a ref that names no snapshot there; neither
 * when the cache has nothing of the revision.
 */
async function findCached(
  ctx: Context,
): Promise<{ dir?: string; missing?: string; damage?: string }> {
  const commit = await cachedCommit(ctx);
  if (commit === undefined) {
    // Other revisions of the model cached, not this one: said so, not "not in the cache".
    let others = false;
    try {
      for await (const _ of Deno.readDir(`${ctx.repoDir}/snapshots`)) {
        others = true;
        break;
      }
    } catch { /* none */ }
    return others ? { missing: `revision ${ctx.revision}` } : {};
  }
  if (typeof commit === "object") return commit;
  const dir = `${ctx.repoDir}/snapshots/${commit}`;
  const named = COMMIT_HASH.test(ctx.revision)
    ? {}
    : { damage: `its ref ${ctx.revision} names commit ${commit}, which has no snapshot there` };
  try {
    if (!(await Deno.stat(dir)).isDirectory) return named;
  } catch {
    return named;
  }
  // Before any file of it is read (the index): every entry must stay inside the cache.
  await checkSnapshot(ctx, dir);
  const has = (file: string) => isFile(`${dir}/${file}`);
  if (!(await has("config.json"))) return { missing: "config.json" };
  if (
    !(await has("tokenizer.json")) && !(await has("vocab.txt")) &&
    !((await has("vocab.json")) && (await has("merges.txt")))
  ) {
    return { missing: "tokenizer.json" };
  }
  if (!(await has("model.safetensors"))) {
    if (!(await has("model.safetensors.index.json"))) return { missing: "model.safetensors" };
    for (const shard of await readIndex(ctx, `${dir}/model.safetensors.index.json`)) {
      if (!(await has(shard))) return { missing: shard };
    }
  }
  return { dir };
}

// ---------------------------------------------------------------------------------------------
// Talking to the hub

/**
 * The hub answered a metadata (HEAD) request with an HTTP error that a complete cached snapshot
 * may stand in for (huggingface_hub's fallback); the message is the hub error's own.
 */
class HubAnswered extends HubError {
  /** The answer, for the fallback note: `HTTP 503 for config.json`. */
  readonly answer: string;
  constructor(error: HubError, answer: string) {
    super(error.message);
    this.answer = answer;
  }
}

interface FileMeta {
  file: string;
  commit: string;
  etag: string;
  size?: number;
  /** Where to GET the content: the resolve URL, or the CDN URL the hub redirected to. */
  location: string;
}

interface Missing {
  missing: true;
  commit?: string;
}

function resolveUrl(ctx: Context, revision: string, file: string): string {
  return `${ctx.endpoint}/${ctx.id}/resolve/${encodeURIComponent(revision)}/${
    encodeURIComponent(file)
  }`;
}

function requestHeaders(ctx: Context, url: string): Headers {
  const headers = new Headers({ "user-agent": USER_AGENT, "accept-encoding": "identity" });
  // Like huggingface_hub, the token goes to the hub only, never to the CDN it redirects to.
  if (ctx.token !== undefined && new URL(url).origin === ctx.endpointOrigin) {
    headers.set("authorization", `Bearer ${ctx.token}`);
  }
  return headers;
}

function normalizeEtag(etag: string): string {
  return etag.trim().replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
}

/** `HTTP <status>`, then the status text when there is one (HTTP/2 has none). */
function httpStatus(res: Response): string {
  const text = res.statusText.trim();
  return text ? `HTTP ${res.status} ${text}` : `HTTP ${res.status}`;
}

/** The hub's own one-line explanation, if it sent one (made safe to print). */
function hubMessage(res: Response): string {
  const message = res.headers.get("x-error-message");
  if (!message) return "";
  // deno-lint-ignore no-control-regex
  return ` (${message.replace(/[\x00-\x1f\x7f]+/g, " ").slice(0, 200)})`;
}

function httpError(ctx: Context, res: Response, file: string, revision: string): HubError {
  const code = res.headers.get("x-error-code") ?? "";
  const page = `${ctx.endpoint}/${ctx.id}`;
  const noLocal = `(there is no local directory ${ctx.id} either)`;
  const setToken = "set HF_TOKEN to an access token of an account that can read it " +
    "(https://huggingface.co/settings/tokens)";
  if (code === "GatedRepo" || (res.status === 403 && code !== "RepoNotFound")) {
    return new HubError(
      `${ctx.id} is gated or restricted (HTTP ${res.status}): accept its conditions on ${page}, ` +
        (ctx.token === undefined
          ? `then ${setToken}`
          : `with the account of ${ctx.tokenSource}, which was refused`) +
        hubMessage(res),
    );
  }
  if (res.status === 401 || code === "RepoNotFound") {
    return new HubError(
      ctx.token === undefined
        ? `cannot access ${ctx.id} on ${ctx.endpoint} (HTTP ${res.status}): the repository ` +
          `does not exist, or it is private or gated; check the id, or ${setToken} ${noLocal}`
        : `cannot access ${ctx.id} on ${ctx.endpoint} (HTTP ${res.status}) with ` +
          `${ctx.tokenSource}: the repository does not exist, or the token cannot read it ` +
          `(gated models need their conditions accepted on ${page}) ${noLocal}`,
    );
  }
  if (code === "RevisionNotFound") {
    return new HubError(`${ctx.id} has no revision ${q(revision)}${hubMessage(res)}`);
  }
  if (res.status === 404) {
    return new HubError(`${ctx.id} has no file ${file} at revision ${q(revision)}`);
  }
  if (res.status === 429) {
    return new HubError(
      `${ctx.endpoint} is rate-limiting requests (HTTP 429)${hubMessage(res)}; wait and retry` +
        (ctx.token === undefined ? ", or set HF_TOKEN" : ""),
    );
  }
  return new HubError(
    `${ctx.endpoint} answered ${httpStatus(res)} for ${file} of ${ctx.id}` + hubMessage(res),
  );
}

/** A fetch that gives up after `ms`; network failures become Unreachable. */
async function fetchWithTimeout(
  ctx: Context,
  url: string,
  init: RequestInit,
  ms: number,
): Promise<Response> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ms);
  try {
    return await ctx.fetch(url, { ...init, signal: controller.signal });
  } catch (e) {
    if (controller.signal.aborted) throw new Unreachable(`no answer within ${ms / 1000} s`);
    throw new Unreachable(errorText(e));
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The commit, ETag and size of a file, from a HEAD request. Redirects are followed by hand: the
 * hub answers LFS files with an absolute redirect to its CDN whose own headers say nothing of the
 * commit, so that redirect's X-Repo-Commit / X-Linked-Etag / X-Linked-Size are what count. As
 * in huggingface_hub, relative redirects (a renamed repository, the hub's resolve cache) are
 * followed and the final answer counts; so are absolute ones that carry no X-Repo-Commit.
 *
 * An HTTP error is thrown as HubAnswered (resolveModel may use the cache instead), except a
 * missing revision. A 5xx or 429 is retried `ctx.retries` times, but not while the cache holds a
 * complete snapshot of the revision (then resolveModel uses it at once).
 */
async function headFile(ctx: Context, revision: string, file: string): Promise<FileMeta | Missing> {
  let url = resolveUrl(ctx, revision, file);
  let serverErrors = 0;
  const answered = (res: Response) => {
    const error = httpError(ctx, res, file, revision);
    return res.headers.get("x-error-code") === "RevisionNotFound"
      ? error
      : new HubAnswered(error, `${httpStatus(res)}${hubMessage(res)} for ${file}`);
  };
  for (let hop = 0; hop < 10;) {
    const res = await fetchWithTimeout(ctx, url, {
      method: "HEAD",
      redirect: "manual",
      headers: requestHeaders(ctx, url),
    }, ctx.etagTimeoutMs);
    await res.body?.cancel();
    if (res.status >= 300 && res.status < 400) {
      const location = res.headers.get("location");
      if (!location) throw answered(res);
      const next = new URL(location, url).href;
      if (URL.canParse(location) && res.headers.has("x-repo-commit")) {
        return fileMeta(ctx, res, file, next, true);
      }
      url = next;
      hop++;
      continue;
    }
    if (res.ok) return fileMeta(ctx, res, file, url, false);
    const code = res.headers.get("x-error-code");
    if (res.status === 404 && code !== "RepoNotFound" && code !== "RevisionNotFound") {
      const commit = res.headers.get("x-repo-commit") ?? undefined;
      return { missing: true, commit: commit && SAFE_NAME.test(commit) ? commit : undefined };
    }
    if (
      (res.status >= 500 || res.status === 429) && serverErrors < ctx.retries &&
      !(await hasCompleteSnapshot(ctx))
    ) {
      serverErrors++;
      await delay(ctx.retryDelayMs * serverErrors);
      continue;
    }
    throw answered(res);
  }
  throw new HubError(`${ctx.endpoint}: too many redirects for ${file} of ${ctx.id}`);
}

function fileMeta(
  ctx: Context,
  res: Response,
  file: string,
  location: string,
  redirected: boolean,
): FileMeta {
  const commit = res.headers.get("x-repo-commit");
  if (commit === null) {
    throw new HubError(
      `${ctx.endpoint} did not answer like the Hugging Face hub for ${file} of ${ctx.id} ` +
        `(no X-Repo-Commit header); check HF_ENDPOINT`,
    );
  }
  const etagHeader = res.headers.get("x-linked-etag") ?? res.headers.get("etag");
  const etag = etagHeader === null ? "" : normalizeEtag(etagHeader);
  for (const [what, value] of [["commit hash", commit], ["ETag", etag]]) {
    if (!SAFE_NAME.test(value) || value.includes("..")) {
      throw new HubError(
        `${ctx.endpoint} sent an unusable ${what} ${q(value.slice(0, 80))} for ${file} of ` +
          `${ctx.id}`,
      );
    }
  }
  // The Content-Length of a redirect is the redirect's own (0), not the file's.
  const size = sizeHeader(res.headers.get("x-linked-size")) ??
    (redirected ? undefined : sizeHeader(res.headers.get("content-length")));
  return { file, commit, etag, size, location };
}

// ---------------------------------------------------------------------------------------------
// Downloading

async function download(ctx: Context): Promise<string> {
  const config = await headFile(ctx, ctx.revision, "config.json");
  if ("missing" in config) {
    throw new HubError(
      `${ctx.id} has no config.json at revision ${q(ctx.revision)} (or no such repository ` +
        `or revision on ${ctx.endpoint})`,
    );
  }
  const commit = config.commit;
  if (config.location === resolveUrl(ctx, ctx.revision, "config.json")) {
    config.location = resolveUrl(ctx, commit, "config.json");
  }
  const snapshot = `${ctx.repoDir}/snapshots/${commit}`;
  if (commit !== ctx.revision) {
    const refs = `${ctx.repoDir}/refs`;
    const parents = ctx.refSegments.slice(0, -1);
    const refDir = parents.length ? `${refs}/${parents.join("/")}` : refs;
    await mkdirInCache(ctx, refDir, "refs folder");
    const ref = `${refs}/${ctx.refSegments.join("/")}`;
    await assertInCache(ctx, ref, `ref ${ctx.revision}`);
    let current: string | undefined;
    try {
      current = await Deno.readTextFile(ref);
    } catch {
      current = undefined;
    }
    if (current !== commit) await writeAtomic(ref, commit);
  }
  // Everything else is asked for at the commit config.json came from: one consistent snapshot
  // even if someone pushes to the branch meanwhile.
  const head = async (file: string) => {
    try {
      const meta = await headFile(ctx, commit, file);
      if ("missing" in meta) await markMissing(ctx, meta.commit ?? commit, file);
      return meta;
    } catch (e) {
      if (e instanceof Unreachable) {
        throw new HubError(`lost the connection to ${ctx.endpoint} (${e.message})`);
      }
      throw e;
    }
  };
  const found = (m: FileMeta | Missing): m is FileMeta => !("missing" in m);
  await fetchFile(ctx, config, snapshot);

  const tokenizer = await head("tokenizer.json");
  if (found(tokenizer)) {
    await fetchFile(ctx, tokenizer, snapshot);
  } else {
    const vocab = await head("vocab.txt");
    if (found(vocab)) {
      await fetchFile(ctx, vocab, snapshot);
    } else {
      const bpeVocab = await head("vocab.json");
      const merges = found(bpeVocab) ? await head("merges.txt") : undefined;
      if (!found(bpeVocab) || !merges || !found(merges)) {
        throw new HubError(
          `${ctx.id} has no tokenizer.json, vocab.txt, or vocab.json with merges.txt`,
        );
      }
      await fetchFile(ctx, bpeVocab, snapshot);
      await fetchFile(ctx, merges, snapshot);
    }
  }
  const tokenizerConfig = await head("tokenizer_config.json");
  if (found(tokenizerConfig)) await fetchFile(ctx, tokenizerConfig, snapshot);

  const single = await head("model.safetensors");
  if (found(single)) {
    await fetchFile(ctx, single, snapshot);
    await checkSnapshot(ctx, snapshot);
    return snapshot;
  }
  const index = await head("model.safetensors.index.json");
  if (!found(index)) {
    const bin = await head("pytorch_model.bin");
    if (found(bin)) {
      throw new HubError(
        `${ctx.id} has only pytorch_model.bin; convert it to safetensors (no pickle loading)`,
      );
    }
    throw new HubError(`${ctx.id} has no model.safetensors or model.safetensors.index.json`);
  }
  await fetchFile(ctx, index, snapshot);
  const shards = await readIndex(ctx, `${snapshot}/model.safetensors.index.json`);
  for (const shard of shards) {
    const meta = await head(shard);
    if (!found(meta)) {
      throw new HubError(
        `${ctx.id}: model.safetensors.index.json names ${shard}, which the repository lacks`,
      );
    }
    await fetchFile(ctx, meta, snapshot);
  }
  await checkSnapshot(ctx, snapshot);
  return snapshot;
}

/** huggingface_hub's marker that a file does not exist at a commit. */
async function markMissing(ctx: Context, commit: string, file: string): Promise<void> {
  if (!SAFE_NAME.test(commit) || commit.includes("..")) return;
  const dir = `${ctx.repoDir}/.no_exist/${commit}`;
  try {
    await mkdirInCache(ctx, dir, ".no_exist folder");
    await assertNotLink(ctx, `${dir}/${file}`, `.no_exist/${commit}/${file}`);
    await Deno.writeFile(`${dir}/${file}`, new Uint8Array(0));
  } catch {
    // Only an optimisation for other tools.
  }
}

/** Puts one file into `snapshot`, downloading its blob unless the cache already has it. */
async function fetchFile(ctx: Context, meta: FileMeta, snapshot: string): Promise<void> {
  const pointer = `${snapshot}/${meta.file}`;
  if (await isFile(pointer)) {
    await assertInCache(ctx, pointer, meta.file);
    return;
  }
  const blob = `${ctx.repoDir}/blobs/${meta.etag}`;
  await assertInCache(ctx, blob, `blob of ${meta.file}`);
  const present = async () => {
    const size = await fileSize(blob);
    return size !== undefined && (meta.size === undefined || size === meta.size);
  };
  if (!(await present())) {
    await mkdirInCache(ctx, `${ctx.repoDir}/blobs`, "blobs folder");
    await mkdirInCache(ctx, ctx.lockDir, "locks folder");
    const lockFile = `${ctx.lockDir}/${meta.etag}.lock`;
    await assertNotLink(ctx, lockFile, `lock of ${meta.file}`);
    // The same lock file huggingface_hub uses, so two processes never write one blob at once.
    const lock = await Deno.open(lockFile, {
      create: true,
      write: true,
    });
    try {
      // Another process downloading the same file: said, or the wait is silent for as long as
      // its download takes.
      if (!(await lock.tryLock(true))) {
        note(ctx, `waiting for another process's download of ${meta.file} to end`);
        await lock.lock(true);
      }
      if (!(await present())) await downloadBlob(ctx, meta, blob);
    } finally {
      lock.close();
    }
  }
  await mkdirInCache(ctx, snapshot, "snapshot folder");
  await linkSnapshot(blob, pointer, `../../blobs/${meta.etag}`);
}

/** The relative symlink huggingface_hub makes; a copy where symlinks are not allowed. */
async function linkSnapshot(blob: string, pointer: string, target: string): Promise<void> {
  try {
    await Deno.symlink(target, pointer, { type: "file" });
    return;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) {
      if (await isFile(pointer)) return; // made meanwhile by another download of this model
      await Deno.remove(pointer); // a dangling link: its blob was deleted
      try {
        await Deno.symlink(target, pointer, { type: "file" });
        return;
      } catch {
        // Fall through to a copy.
      }
    }
  }
  const tmp = `${pointer}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.copyFile(blob, tmp);
    await Deno.rename(tmp, pointer);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Downloads into `<blob>.incomplete`, resuming a partial file with a Range request, and renames
 * it to `<blob>` only once its size matches what the server stated and, for LFS files (whose
 * ETag is the content's sha256), its sha256 matches.
 */
async function downloadBlob(ctx: Context, meta: FileMeta, blob: string): Promise<void> {
  const partial = `${blob}.incomplete`;
  await assertNotLink(ctx, partial, `partial download of ${meta.file}`);
  const sha256 = SHA256.test(meta.etag) ? meta.etag : undefined;
  let failures = 0;
  let restartedAfterMismatch = false;
  for (;;) {
    let result: { size: number; resumedFrom: number; digest?: string };
    try {
      result = await transfer(ctx, meta, partial, sha256 !== undefined);
    } catch (e) {
      if (!(e instanceof Retryable || e instanceof Unreachable)) throw e;
      failures++;
      if (failures > ctx.retries) {
        throw new HubError(
          `downloading ${meta.file} of ${ctx.id} failed ${failures} times (${e.message}); ` +
            `run again to resume`,
        );
      }
      await delay(ctx.retryDelayMs * failures);
      continue;
    }
    if (sha256 !== undefined && result.digest !== sha256) {
      await Deno.remove(partial).catch(() => {});
      // A partial file left by someone else may be what is wrong: start over once.
      if (result.resumedFrom > 0 && !restartedAfterMismatch) {
        restartedAfterMismatch = true;
        continue;
      }
      throw new HubError(
        `${meta.file} of ${ctx.id} is corrupt: its sha256 is ${result.digest}, the hub says ` +
          `${sha256}; the download was discarded`,
      );
    }
    await Deno.rename(partial, blob);
    return;
  }
}

/** Streams the first `length` bytes of a file into a hash (a resumed download's old part). */
async function hashPrefix(
  path: string,
  length: number,
  hash: ReturnType<typeof createHash>,
): Promise<void> {
  const file = await Deno.open(path, { read: true });
  try {
    const buffer = new Uint8Array(1 << 20);
    let left = length;
    while (left > 0) {
      const n = await file.read(buffer.subarray(0, Math.min(buffer.length, left)));
      if (n === null) throw new Retryable("the partial file shrank");
      hash.update(buffer.subarray(0, n));
      left -= n;
    }
  } finally {
    file.close();
  }
}

/**
 * One attempt: GET (from where the partial file ends, if it exists) and append to it. Returns
 * the complete size and, if asked, the sha256 of the whole file; throws Retryable when the
 * transfer broke or came up short (the partial file is kept for the next attempt).
 */
async function transfer(
  ctx: Context,
  meta: FileMeta,
  partial: string,
  verify: boolean,
): Promise<{ size: number; resumedFrom: number; digest?: string }> {
  let offset = (await fileSize(partial)) ?? 0;
  if (meta.size !== undefined && offset > meta.size) {
    await Deno.remove(partial);
    offset = 0;
  }
  const url = meta.location;
  const headers = requestHeaders(ctx, url);
  if (offset > 0) headers.set("range", `bytes=${offset}-`);
  const controller = new AbortController();
  let timer = setTimeout(() => controller.abort(), ctx.readTimeoutMs);
  const stalled = () => new Retryable(`no data for ${ctx.readTimeoutMs / 1000} s`);
  let res: Response;
  try {
    res = await ctx.fetch(url, { headers, signal: controller.signal });
  } catch (e) {
    clearTimeout(timer);
    throw controller.signal.aborted ? stalled() : new Retryable(errorText(e));
  }
  let file: Deno.FsFile | undefined;
  try {
    if (res.status === 416 && offset > 0) {
      // The partial file is as long as the whole file (or the server disagrees): start over.
      await Deno.remove(partial);
      throw new Retryable("the server refused to resume (HTTP 416)");
    }
    if (!res.ok) {
      if (res.status >= 500 || res.status === 429 || res.status === 408) {
        throw new Retryable(`HTTP ${res.status}`);
      }
      if (new URL(url).origin === ctx.endpointOrigin) {
        throw httpError(ctx, res, meta.file, meta.commit);
      }
      throw new HubError(
        `${new URL(url).host} answered ${httpStatus(res)} for ${meta.file} of ${ctx.id}`,
      );
    }
    let resumedFrom = 0;
    let expected = meta.size;
    if (offset > 0 && res.status === 206) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (!range || Number(range[1]) !== offset) {
        await Deno.remove(partial);
        throw new Retryable("the server resumed at the wrong place");
      }
      resumedFrom = offset;
      if (expected === undefined && range[3] !== "*") expected = Number(range[3]);
    } else if (expected === undefined) {
      expected = sizeHeader(res.headers.get("content-length"));
    }
    const hash = verify ? createHash("sha256") : undefined;
    if (hash && resumedFrom > 0) await hashPrefix(partial, resumedFrom, hash);
    const cannotWrite = (e: unknown) =>
      new HubError(
        `downloading ${meta.file} of ${ctx.id}: cannot write ${partial}: ${errorText(e)}; ` +
          `free space there (or set HF_HUB_CACHE to another folder) and run again to resume`,
      );
    const out = await cacheWrite(
      () =>
        Deno.open(
          partial,
          resumedFrom > 0 ? { append: true } : { write: true, create: true, truncate: true },
        ),
      cannotWrite,
    );
    file = out;
    let bytes = resumedFrom;
    const started = performance.now();
    const report = (done: boolean) =>
      ctx.progress?.({
        repo: ctx.id,
        file: meta.file,
        bytes,
        total: expected,
        bytesPerSecond: (bytes - resumedFrom) /
          Math.max(1e-3, (performance.now() - started) / 1000),
        done,
      });
    report(false);
    if (res.body) {
      try {
        for await (const chunk of res.body) {
          clearTimeout(timer);
          timer = setTimeout(() => controller.abort(), ctx.readTimeoutMs);
          if (expected !== undefined && bytes + chunk.length > expected) {
            throw new Retryable("the server sent more bytes than the file has");
          }
          await cacheWrite(() => writeAll(out, chunk), cannotWrite);
          hash?.update(chunk);
          bytes += chunk.length;
          report(false);
        }
      } catch (e) {
        if (e instanceof HubError) throw e;
        if (e instanceof Retryable) {
          if (e.message.includes("more bytes")) {
            file.close();
            file = undefined;
            await Deno.remove(partial);
          }
          throw e;
        }
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
    return { size: bytes, resumedFrom, digest: hash?.digest("hex") };
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
 * otherwise a plain line when a download starts, every 10 s, and when it ends.
 */
export function stderrProgress(): (p: DownloadProgress) => void {
  const tty = Deno.stderr.isTerminal();
  let last = -Infinity;
  let lastFile = "";
  return (p) => {
    const now = performance.now();
    const newFile = p.file !== lastFile;
    if (!p.done && !newFile && now - last < (tty ? 100 : 10_000)) return;
    last = now;
    lastFile = p.file;
    const amount = progressAmount(p.bytes, p.total);
    const line = `ehft: ${p.done ? "downloaded" : "downloading"} ${p.repo} ${p.file}  ${amount}  ` +
      `${formatBytes(p.bytesPerSecond)}/s`;
    if (tty) writeStderr(`\r\x1b[K${line}${p.done ? "\n" : ""}`);
    else writeStderr(`${line}\n`);
  };
}
