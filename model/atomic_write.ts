// Writes that never leave a half-written file behind: a temporary file in the same directory
// (so the rename cannot cross file systems), synced, then renamed over the target, and the folder
// synced so that the rename itself survives a power cut. And the small checks and reads their
// callers share (exists, isDirectory, readJsonFile).

/** The temporary file an atomic write of `path` goes through (`<path>.tmp-<8 hex digits>`). */
export function temporaryName(path: string): string {
  return `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
}

const TEMPORARY = /\.tmp-[0-9a-f]{8}$/;

/**
 * Removes the temporary files that atomic writes under `dir` (and its subfolders) left when the
 * process was killed mid-write: the targets themselves are whole (the rename never happened), so
 * these are never needed. Returns how many it removed.
 */
export async function removeStaleTemporaries(dir: string): Promise<number> {
  let removed = 0;
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) removed += await removeStaleTemporaries(path);
    else if (e.isFile && TEMPORARY.test(e.name)) {
      await Deno.remove(path);
      removed++;
    }
  }
  return removed;
}

/** Writes `data` to `path` atomically; on failure the previous file, if any, is untouched. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const tmp = temporaryName(path);
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      let done = 0;
      while (done < bytes.length) done += await file.write(bytes.subarray(done));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${path}: write failed: ${(e as Error).message}`);
  }
  await syncFolderOf(path);
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
 * locked (Windows), and the caller goes on unguarded. Close the handle to release it.
 */
export async function lockFolder(dir: string): Promise<Deno.FsFile | null | "held"> {
  let folder: Deno.FsFile;
  try {
    folder = await Deno.open(dir, { read: true });
  } catch {
    return null;
  }
  try {
    if (await folder.tryLock(true)) return folder;
  } catch {
    folder.close();
    return null;
  }
  folder.close();
  return "held";
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

/** A JSON file's value, or an error naming the file when it is not valid JSON. */
export async function readJsonFile(path: string): Promise<unknown> {
  const text = await Deno.readTextFile(path);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message})`);
  }
}
