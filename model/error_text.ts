// What a caught error says, for a message of our own. Shared because `catch (e)` gives an
// `unknown`: a thrown string or object has no `.message`, and every module that wraps an error
// in its own (hub, safetensors, data files and downloads, the corpus) needs the same fallback.

/** The error's message, or the thrown value as a string when it is not an Error. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The first line of `errorText`, for a one-line message that quotes a multi-line error (not
 * train/flags.ts's `errorLine`, which folds every line into one). */
export function errorFirstLine(e: unknown): string {
  return errorText(e).split("\n")[0];
}
