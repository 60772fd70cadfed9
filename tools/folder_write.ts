// Model folders written whole (tools/ship_model.ts, tools/random_model.ts): --out checked before
// any work, then built as a temporary sibling, synced and renamed into place, so that a failure
// leaves --out as it was and a replaced folder never mixes old and new files.

import { basename, dirname, resolve } from "node:path";
import { syncFolder, syncFolderOf } from "../model/atomic_write.ts";
import { shortList } from "../model/progress_text.ts";
import { FlagError } from "../train/flags.ts";

/**
 * Where the folder `out` is written: its real path when `out` is a link (the link is kept and
 * points at the new folder), else `out` made absolute. A folder that is a mount point (a file
 * system of its own, such as a container volume) is refused: it is replaced by renames beside it,
 * which cannot move it.
 */
async function folderPlace(out: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(out);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return resolve(out);
    throw new FlagError(`--out ${out}: ${(e as Error).message}`);
  }
  let place = resolve(out);
  if (info.isSymlink) {
    try {
      place = await Deno.realPath(out);
      info = await Deno.stat(place);
    } catch (e) {
      throw new FlagError(`--out ${out} is a link to nothing there (${(e as Error).message})`);
    }
  }
  const parent = await Deno.stat(dirname(place));
  if (info.isDirectory && info.dev !== parent.dev) {
    throw new FlagError(
      `--out ${out} is a mount point (a file system of its own): the folder is written beside ` +
        `it and renamed into place, which cannot cross file systems; give a folder inside it`,
    );
  }
  return place;
}

/**
 * One line for each folder an earlier write of `place` left beside it when it was stopped (its
 * temporary `<place>.tmp-*` or the replaced `<place>.old-*`): never read, only taking room.
 */
async function leftoverNotes(place: string): Promise<string[]> {
  const base = basename(place);
  const notes: string[] = [];
  try {
    for await (const e of Deno.readDir(dirname(place))) {
      const rest = e.name.slice(base.length);
      if (e.name.startsWith(base) && /^\.(tmp|old)-[0-9a-f]{8}$/.test(rest)) {
        notes.push(
          `note: ${dirname(place)}/${e.name} is left from an earlier write of ${place} that ` +
            `was stopped: delete it`,
        );
      }
    }
  } catch {
    // A parent that cannot be listed has nothing to say.
  }
  return notes.sort();
}

/** The folder's entries sorted by name, or null when it does not exist; a file is refused. */
async function folderEntries(out: string): Promise<Deno.DirEntry[] | null> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(out);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new FlagError(`--out ${out}: ${(e as Error).message}`);
  }
  if (!info.isDirectory) throw new FlagError(`--out ${out} is a file, not a folder`);
  const entries: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(out)) entries.push(e);
  return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Checks a model folder's --out before anything is read or written: a new or empty folder is
 * fine; a non-empty one is refused unless `overwrite`, and even then when it holds anything but
 * the tool's own `files` (regular files of those names), so that replacing it loses nothing else
 * and no earlier file is left beside the new ones.
 */
export async function checkOutFolder(
  out: string,
  overwrite: boolean,
  files: readonly string[],
): Promise<void> {
  const place = await folderPlace(out);
  for (const note of await leftoverNotes(place)) console.error(note);
  const entries = await folderEntries(out);
  if (entries === null || entries.length === 0) return;
  const shown = (e: Deno.DirEntry) => e.name + (e.isDirectory ? "/" : "");
  if (!overwrite) {
    throw new FlagError(
      `--out ${out} is not empty (it holds ${
        shortList(entries.map(shown))
      }): pass --overwrite to ` +
        `replace the model in it, or choose a new folder`,
    );
  }
  const foreign = entries.filter((e) => !(e.isFile && files.includes(e.name)));
  if (foreign.length > 0) {
    throw new FlagError(
      `--out ${out} holds ${shortList(foreign.map(shown))}, which this tool does not write: ` +
        `--overwrite replaces only a folder of ${files.join(", ")}; move ` +
        `${foreign.length === 1 ? "it" : "them"} away or choose a new folder`,
    );
  }
}

/**
 * Writes a folder whole: `fill` writes the files into a new temporary sibling of `out`
 * (`<out>.tmp-XXXXXXXX`, on the same file system), which is synced and renamed to `out`; a
 * non-empty `out` (see checkOutFolder) is first moved aside (`<out>.old-XXXXXXXX`) and removed
 * only once the new one is in place. A failure before that leaves `out` as it was and removes the
 * temporary folder.
 */
export async function writeFolder(
  out: string,
  fill: (dir: string) => Promise<void>,
): Promise<void> {
  const target = await folderPlace(out);
  const tag = () => crypto.randomUUID().slice(0, 8);
  const tmp = `${target}.tmp-${tag()}`;
  try {
    await Deno.mkdir(dirname(target), { recursive: true });
    await Deno.mkdir(tmp);
  } catch (e) {
    throw new Error(`${out}: not written (${(e as Error).message}); it is as it was`);
  }
  const old = await folderEntries(out).catch(async (e) => {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  });
  let aside: string | null = null;
  let step = "";
  try {
    await fill(tmp);
    step = "put the new folder in place";
    for await (const e of Deno.readDir(tmp)) {
      if (!e.isFile) continue;
      const file = await Deno.open(`${tmp}/${e.name}`, { read: true });
      try {
        await file.sync();
      } finally {
        file.close();
      }
    }
    await syncFolder(tmp);
    // A missing or empty folder is replaced by one rename; a full one is moved aside first.
    if (old !== null && old.length > 0) {
      const moved = `${target}.old-${tag()}`;
      await Deno.rename(target, moved);
      aside = moved;
    }
    await Deno.rename(tmp, target);
    await syncFolderOf(target);
  } catch (e) {
    let restored = true;
    if (aside !== null) await Deno.rename(aside, target).catch(() => restored = false);
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (!step) {
      // Said with the folder it was for, and that it was left alone (its name was a temporary
      // sibling's, e.g. a copy that ran out of space).
      throw new Error(
        `${out}: not written (${(e as Error).message}); ` +
          (old !== null && old.length > 0 ? "the earlier folder is as it was" : "nothing was left"),
      );
    }
    throw new Error(
      `${out}: could not ${step} (${(e as Error).message}); ` +
        (restored ? "it is as it was" : `the earlier folder is in ${aside}`),
    );
  }
  // The new folder is in place: an earlier one that cannot be removed is only worth a line.
  if (aside !== null) {
    await Deno.remove(aside, { recursive: true }).catch((e) =>
      console.error(`${out}: the earlier folder is left in ${aside}: ${(e as Error).message}`)
    );
  }
}
