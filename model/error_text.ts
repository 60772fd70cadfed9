// What a caught error says, for a message of our own. Shared because `catch (e)` gives an
// `unknown`: a thrown string or object has no `.message`, and every module that wraps an error
// in its own (hub, safetensors, data files and downloads, the corpus) needs the same fallback.

/** The error's message, or the thrown value as a string when it is not an Error. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * A JSON.parse error on one line: V8 quotes the text around an unexpected token with its line
 * breaks (`Unexpected token 'p', "{\n "a": tpue,\n"... is not valid JSON`); they are folded into
 * spaces (with the indentation after them) and the quote kept, as it shows where the error is.
 * Text that begins with a byte-order mark fails on an invisible character, so that is said
 * instead.
 */
export function jsonErrorText(e: unknown, text?: string): string {
  if (text?.charCodeAt(0) === 0xfeff) {
    return "it begins with a byte-order mark (BOM): save it as UTF-8 without one";
  }
  // Only line breaks: a no-break space in the quote stays what it is.
  return errorText(e).replace(/ is not valid JSON$/, "").replace(/[ \t]*[\r\n]+[ \t]*/g, " ")
    .trim();
}

/** The first line of `errorText`, for a one-line message that quotes a multi-line error (not
 * train/flags.ts's `errorLine`, which folds every line into one). */
export function errorFirstLine(e: unknown): string {
  return errorText(e).split("\n")[0];
}
