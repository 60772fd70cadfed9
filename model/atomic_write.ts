// Writes that never leave a half-written file behind: a temporary file in the same directory
// (so the rename cannot cross file systems), synced, then renamed over the target, and the folder
// synced so that the rename itself survives a power cut. And the small checks and reads their
// callers share (exists, isDirectory, readJsonFile, isJsonObject).

import { jsonErrorText } from "./error_text.ts";
import { readUtf8File, Utf8Error } from "./utf8.ts";

/** Temporary files of atomic writes under way (temporaryName until doneWithTemporary). */
const pending = new Set<string>();

/**
 * The temporary file an atomic write of `path` goes through (`<path>.tmp-<8 hex digits>`), noted
 * as pending until `doneWithTemporary`: a Ctrl-C meanwhile removes it (removePendingTemporaries).
 */
export function temporaryName(path: string): string {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  pending.add(tmp);
  return tmp;
}

/** The write through `tmp` is over: renamed into place, or removed. */
export function doneWithTemporary(tmp: string): void {
  pending.delete(tmp);
}

/**
 * Removes the temporary files of the atomic writes under way; returns how many there were. What
 * a program stopped by a signal does last (train/run_faults.ts stopWithWord): synchronous, as
 * Deno.exit follows, and the targets stay whole (each write's rename has not happened, or its
 * temporary is gone already).
 */
export function removePendingTemporaries(): number {
  const count = pending.size;
  for (const tmp of pending) {
    try {
      Deno.removeSync(tmp);
    } catch { /* renamed or removed meanwhile, or never made */ }
  }
  pending.clear();
  return count;
}

const TEMPORARY = /\.tmp-[0-9a-f]{8}$/;

/** The name of the file whose atomic write `name` is the temporary of; null if it is none. */
export function temporaryTarget(name: string): string | null {
  return TEMPORARY.test(name) ? name.replace(TEMPORARY, "") : null;
}

/**
 * Removes the temporary files that atomic writes left in `dir` when the process was killed
 * mid-write: the targets themselves are whole (the rename never happened), so these are never
 * needed. In `dir` itself only those of the files named in `files` (the caller's own: run.json,
 * ...): another program may be writing a file of its own there right now (predict.ts --out
 * into a run folder), and its temporary is not stale. All the way down the subfolders named in
 * `own` (model/, analysis/, ...), every one; a folder of anything else, such as another run kept
 * inside this one, is not this process's to clean. Returns how many it removed.
 */
export function removeStaleTemporaries(
  dir: string,
  files: readonly string[],
  own: readonly string[] = [],
): Promise<number> {
  return removeTemporaries(dir, (name) => own.includes(name), (target) => files.includes(target));
}

/**
 * removeStaleTemporaries in `dir`: the temporaries of the files `mine` names, and in the
 * subfolders `descend` names every one, all the way down.
 */
async function removeTemporaries(
  dir: string,
  descend: (name: string) => boolean,
  mine: (target: string) => boolean,
): Promise<number> {
  let removed = 0;
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory && descend(e.name)) {
      removed += await removeTemporaries(path, () => true, () => true);
      continue;
    }
    const target = temporaryTarget(e.name);
    if (e.isFile && target !== null && mine(target)) {
      await Deno.remove(path);
      removed++;
    }
  }
  return removed;
}

/**
 * The file a write of `path` replaces: where a link at `path` points (the link stays, and shows
 * the new file), else `path` itself (a link to nothing is replaced). Refused when that is a
 * device, a pipe or a socket.
 */
export async function writtenPath(path: string): Promise<string> {
  let target = path;
  try {
    if ((await Deno.lstat(path)).isSymlink) target = await Deno.realPath(path);
  } catch {
    return path;
  }
  // A device, pipe or socket is not a file to replace: a rename over /dev/null (as root) or a
  // named pipe would put a regular file in its place.
  const info = await Deno.stat(target).catch(() => null);
  if (info !== null && !info.isFile && !info.isDirectory) {
    throw new Error(`${path}: not a regular file (a device, pipe or socket): not replaced`);
  }
  return target;
}

/** Writes every byte of `bytes` (a write may take only part of them). */
export async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

/**
 * Writes `data` into the new file `tmp` (refused if it exists) and syncs it to disk; a write that
 * fails removes the file it made.
 */
async function writeSynced(tmp: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const file = await Deno.open(tmp, { write: true, createNew: true });
  try {
    await writeAll(file, bytes);
    await file.sync();
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  file.close();
}

/** Writes `data` to `path` atomically; on failure the previous file, if any, is untouched. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const target = await writtenPath(path);
  const tmp = temporaryName(target);
  try {
    await writeSynced(tmp, data);
    await Deno.rename(tmp, target);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${path}: write failed: ${(e as Error).message}`);
  } finally {
    doneWithTemporary(tmp);
  }
  await syncFolderOf(target);
}

/**
 * Writes several files as one: each to its temporary file and synced first, then all renamed in
 * the order given (the last one is what says the set is complete). A failure while writing the
 * temporaries changes nothing; a rename that fails (rare: a file made immutable) throws naming
 * which files are new and which still the earlier ones.
 */
export async function writeFilesAtomic(
  files: readonly (readonly [string, Uint8Array | string])[],
): Promise<void> {
  const targets: string[] = [];
  for (const [path] of files) targets.push(await writtenPath(path));
  const temporaries: string[] = [];
  try {
    await writeAndRename(files, targets, temporaries);
  } finally {
    for (const tmp of temporaries) doneWithTemporary(tmp);
  }
  for (const folder of new Set(targets.map(parentOf))) await syncFolder(folder);
}

/** writeFilesAtomic's writes and renames; `temporaries` gets each temporary name as it is made. */
async function writeAndRename(
  files: readonly (readonly [string, Uint8Array | string])[],
  targets: string[],
  temporaries: string[],
): Promise<void> {
  const clean = () => Promise.all(temporaries.map((t) => Deno.remove(t).catch(() => {})));
  for (const [i, [path, data]] of files.entries()) {
    temporaries.push(temporaryName(targets[i]));
    try {
      await writeSynced(temporaries[i], data);
    } catch (e) {
      await clean();
      throw new Error(`${path}: write failed: ${(e as Error).message}; no file was replaced`);
    }
  }
  for (let i = 0; i < files.length; i++) {
    try {
      await Deno.rename(temporaries[i], targets[i]);
    } catch (e) {
      await Promise.all(temporaries.slice(i).map((t) => Deno.remove(t).catch(() => {})));
      const names = (list: readonly (readonly [string, unknown])[]) =>
        list.map(([p]) => p).join(", ");
      throw new Error(
        `${files[i][0]}: write failed: ${(e as Error).message}; ` +
          (i > 0 ? `new: ${names(files.slice(0, i))}; ` : "") +
          `as before: ${names(files.slice(i))}`,
      );
    }
  }
}

/** The folder part of `path` ("." for a bare name, "/" at the root). */
export function parentOf(path: string): string {
  const slash = path.replace(/\/+$/, "").lastIndexOf("/");
  return slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
}

/**
 * Syncs the folder that holds `path`, so a rename into it (the last step of an atomic write) is
 * on disk: a synced file renamed into an unsynced folder can come back under its old name, or not
 * at all, after a power cut.
 */
export function syncFolderOf(path: string): Promise<void> {
  return syncFolder(parentOf(path));
}

/**
 * Syncs a folder's entries to disk. Best effort: where a folder cannot be opened for syncing
 * (Windows), the renames it would make durable are already done and are left as they are.
 */
export async function syncFolder(dir: string): Promise<void> {
  let folder: Deno.FsFile | null = null;
  try {
    folder = await Deno.open(dir, { read: true });
    await folder.sync();
  } catch {
    // Not every platform or file system can sync a folder; the writes themselves succeeded.
  } finally {
    folder?.close();
  }
}

/**
 * Locks the folder `dir` for this process: an advisory lock on the folder itself, so nothing is
 * written into it, and the system drops it when the process ends, killed or not. "held" when
 * another process (or another open of it in this one) holds it; null where folders cannot be
 * locked (Windows; a file system without locks, as some network ones), and the caller goes on
 * unguarded: `unlockable` is told why, except on Windows, where that is the rule. Close the
 * handle to release it.
 */
export async function lockFolder(
  dir: string,
  unlockable?: (why: string) => void,
): Promise<Deno.FsFile | null | "held"> {
  const cannot = (e: unknown) => {
    if (Deno.build.os !== "windows") unlockable?.((e as Error).message);
    return null;
  };
  let folder: Deno.FsFile;
  try {
    folder = await Deno.open(dir, { read: true });
  } catch (e) {
    return cannot(e);
  }
  try {
    if (await folder.tryLock(true)) return folder;
  } catch (e) {
    folder.close();
    return cannot(e);
  }
  folder.close();
  return "held";
}

/** The folder `removeEntries` gathers entries in before it deletes them (`.removing-<8 hex>`). */
export const REMOVING_PREFIX = ".removing-";

/**
 * Removes the entries `names` of the folder `dir` all or nothing: each is first moved (run.json
 * last) into one new folder inside `dir`, `.removing-<8 hex>`, and only when every move succeeded
 * is that folder deleted. A move that fails (a folder without write permission, an immutable
 * file's folder) puts back those already moved and throws, `dir` as it was. A deletion cut short
 * leaves the rest in that folder (never read again: report.ts skips it) and is returned as one
 * line for the caller to show; null when all is gone.
 */
export async function removeEntries(dir: string, names: readonly string[]): Promise<string | null> {
  const last = (name: string) => name === "run.json" ? 1 : 0;
  const order = [...names].sort((a, b) => last(a) - last(b));
  const aside = `${dir}/${REMOVING_PREFIX}${crypto.randomUUID().slice(0, 8)}`;
  const moved: string[] = [];
  let step = `make ${aside}`;
  try {
    await Deno.mkdir(aside);
    for (const name of order) {
      step = `move ${name} out of the way`;
      await Deno.rename(`${dir}/${name}`, `${aside}/${name}`);
      moved.push(name);
    }
  } catch (e) {
    const stuck: string[] = [];
    for (const name of moved.reverse()) {
      await Deno.rename(`${aside}/${name}`, `${dir}/${name}`).catch(() => stuck.push(name));
    }
    if (stuck.length === 0) await Deno.remove(aside).catch(() => {});
    throw new Error(
      `${dir}: could not ${step} (${(e as Error).message}); ` +
        (stuck.length === 0
          ? "nothing was removed"
          : `${stuck.join(", ")} could not be put back from ${aside}`),
    );
  }
  await syncFolder(dir);
  try {
    // The run is no longer one as soon as its run.json is gone, whatever else stays.
    await Deno.remove(`${aside}/run.json`).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    await Deno.remove(aside, { recursive: true });
    return null;
  } catch (e) {
    return `${dir}: the removed entries are left in ${aside} (${(e as Error).message}): ` +
      `delete it by hand`;
  }
}

/** Writes `value` as pretty-printed JSON (with a final newline) atomically. */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/** Whether `path` exists (a missing path is false; any other error is thrown). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Whether `path` is a folder; null when nothing is there (a path through a file included). */
export async function isDirectory(path: string): Promise<boolean | null> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw e;
  }
}

/** Whether a parsed JSON value is an object ({...}: not null, not a list). */
export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A JSON file's value, or an error naming the file when it is not valid JSON. */
export async function readJsonFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readUtf8File(path);
  } catch (e) {
    if (e instanceof Utf8Error) throw new Error(`${path}: ${e.message}`);
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${jsonErrorText(e, text)})`);
  }
}
