// log.jsonl: one line per logged step and per evaluation, appended as the run goes and cut back to
// the checkpoint's line count on --resume.

import { isJsonObject, writeAll, writeFileAtomic } from "../model/atomic_write.ts";
import { resumeCommand } from "./run_faults.ts";
import { readUtf8File, Utf8Error } from "../model/utf8.ts";

/**
 * The f16 steps skipped in a row (`"skipped": true`) at the end of log.jsonl's `lines`, the
 * evaluation lines between them not counting: what a resumed run's divergence check goes on from.
 */
export function trailingSkips(lines: readonly string[]): number {
  let count = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    if (lines[i].trim() === "") continue;
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(lines[i]);
    } catch {
      break;
    }
    if (!isJsonObject(record)) break;
    if (!("loss" in record)) continue;
    if (record.skipped !== true) break;
    count++;
  }
  return count;
}

/** f16: the skipped steps (`"skipped": true`) of each stage among log.jsonl's records. */
function countSkips(records: readonly unknown[], into: Map<string, number>): void {
  for (const r of records) {
    if (!isJsonObject(r) || r.skipped !== true || typeof r.stage !== "string") continue;
    into.set(r.stage, (into.get(r.stage) ?? 0) + 1);
  }
}

/** log.jsonl: appended line by line; `lines` counts what the file holds. */
export class RunLog {
  /** f16: the skipped steps of each stage the file holds (`skippedIn`). */
  private skips = new Map<string, number>();

  private constructor(
    private path: string,
    private file: Deno.FsFile,
    public lines: number,
    /** f16: the steps skipped in a row at the end of the kept lines (checkStepStats' count). */
    public trailingSkips = 0,
  ) {}

  /** f16: how many of a stage's logged steps were skipped (non-finite gradients). */
  skippedIn(stage: string): number {
    return this.skips.get(stage) ?? 0;
  }

  /** Opens the log keeping its first `keep` lines (a resumed run drops what came after). */
  static async open(path: string, keep: number): Promise<RunLog> {
    let kept = "";
    let skips = 0;
    const records: unknown[] = [];
    if (!Number.isSafeInteger(keep) || keep < 0) {
      throw new Error(
        `${path}: the checkpoint's line count ${JSON.stringify(keep)} is not a count`,
      );
    }
    if (keep > 0) {
      // Strictly: a lossy read would rewrite a damaged byte as U+FFFD into the kept lines.
      const text = await readUtf8File(path).catch((e) => {
        if (e instanceof Utf8Error) {
          throw new Error(
            `${path}: ${e.message} (the log is damaged: --overwrite starts the run again)`,
          );
        }
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        throw new Error(
          `${path}: missing, and the checkpoint keeps its first ${keep} lines (the log was ` +
            `removed or moved): --overwrite starts the run again`,
        );
      });
      const all = text.split("\n");
      if (all[all.length - 1] === "") all.pop(); // the final line break ends the last line
      const lines = all.slice(0, keep);
      if (lines.length < keep) {
        throw new Error(
          `${path}: fewer lines than the checkpoint's ${keep} (the log was cut short or ` +
            `edited): --overwrite starts the run again`,
        );
      }
      // Each kept line whole: a damaged one would end in the finished run's log as it is.
      lines.forEach((line, i) => {
        let record: unknown = null;
        try {
          record = JSON.parse(line);
        } catch { /* said below */ }
        if (!isJsonObject(record)) {
          throw new Error(
            `${path}: line ${i + 1} is not a JSON object (the log is damaged: --overwrite ` +
              "starts the run again)",
          );
        }
        records.push(record);
      });
      kept = lines.join("\n") + "\n";
      skips = trailingSkips(lines);
    }
    await writeFileAtomic(path, kept);
    const file = await Deno.open(path, { append: true });
    const log = new RunLog(path, file, keep, skips);
    countSkips(records, log.skips);
    return log;
  }

  async write(records: unknown[]): Promise<void> {
    if (records.length === 0) return;
    const text = records.map((r) => JSON.stringify(r)).join("\n") + "\n";
    const bytes = new TextEncoder().encode(text);
    try {
      await writeAll(this.file, bytes);
    } catch (e) {
      // A line cut short here is dropped by --resume, which keeps the checkpoint's lines.
      throw new Error(
        `${this.path}: write failed: ${(e as Error).message}; the run stopped. Once the ` +
          `folder takes the file again (room on the disk), it goes on from its last checkpoint ` +
          `(from its start if none was written yet): ${resumeCommand()}`,
      );
    }
    this.lines += records.length;
    countSkips(records, this.skips);
  }

  /**
   * Puts the lines written so far on disk: called before a checkpoint is written (atomically, and
   * synced), so that a power cut cannot leave a log shorter than the checkpoint's line count.
   */
  async sync(): Promise<void> {
    await this.file.sync();
  }

  close(): void {
    this.file.close();
  }
}
