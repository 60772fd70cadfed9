// Progress text on stderr shared by the downloaders (model weights, task data).

let stderrLost = false;

/**
 * Writes all of `text` to stderr synchronously (a progress line must not interleave). A stderr
 * that can no longer be written (its reader gone: `2>&1 | head`, a killed tee, a closed ssh
 * session; or a full disk) silences the progress from then on instead of failing the training
 * or download it reports on, as console.error's own lines are dropped then.
 */
export function writeStderr(text: string): void {
  if (stderrLost) return;
  const data = new TextEncoder().encode(text);
  let written = 0;
  try {
    while (written < data.length) written += Deno.stderr.writeSync(data.subarray(written));
  } catch {
    stderrLost = true;
  }
}

/**
 * Writes all of `text` to stdout (the results meant for a script): a reader that stopped early
 * (`| head`) wanted no more; any other failure (a full disk) is an error that names stdout.
 */
export async function writeStdout(text: string): Promise<void> {
  const data = new TextEncoder().encode(text);
  try {
    for (let at = 0; at < data.length;) at += await Deno.stdout.write(data.subarray(at));
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) return;
    throw new Error(`stdout: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Bytes as MB (or GB above 1e9). */
export function formatBytes(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`;
}

/** "12.3 MB / 40.0 MB (30%)", or just the bytes when the total is unknown. */
export function progressAmount(bytes: number, total: number | undefined): string {
  return total === undefined
    ? formatBytes(bytes)
    : `${formatBytes(bytes)} / ${formatBytes(total)} (${
      Math.floor(100 * bytes / Math.max(1, total))
    }%)`;
}

/** `n thing` or `n things`. */
export function plural(n: number, thing: string): string {
  return `${n} ${thing}${n === 1 ? "" : "s"}`;
}

/** Names for a message: the first `max`, then "…" (a folder's entries, a set of files). */
export function shortList(names: readonly string[], max = 6): string {
  return names.length <= max ? names.join(", ") : `${names.slice(0, max).join(", ")}, …`;
}
