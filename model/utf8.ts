// Text files read as UTF-8 strictly: a byte that is not UTF-8 is an error naming its line, not a
// U+FFFD put in its place (Deno.readTextFile's way), which lost a vocab.txt token without a word
// and changed the tokens of every text that had it. transformers' readers fail there too.

/** Thrown by decodeUtf8: where the first byte that is not UTF-8 is (`line`, from 1). */
export class Utf8Error extends Error {
  constructor(readonly line: number, problem: string) {
    super(`line ${line}: ${problem}`);
    this.name = "Utf8Error";
  }
}

/**
 * The offset of the first byte of `bytes` that does not begin or continue a well-formed UTF-8
 * sequence (WHATWG's decoder: no overlong forms, surrogates or code points past U+10FFFF), or -1.
 */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const b = bytes[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number, lo = 0x80, hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = i + k < n ? bytes[i + k] : -1;
      if (c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += need + 1;
  }
  return -1;
}

/** The line of `bytes`' first byte that is not UTF-8, and what to say of it; null if none. */
export function utf8Problem(bytes: Uint8Array): { line: number; problem: string } | null {
  if ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff)) {
    return {
      line: 1,
      problem: "the file is UTF-16 (it begins with a UTF-16 byte-order mark), not UTF-8",
    };
  }
  const at = firstInvalidUtf8(bytes);
  if (at < 0) return null;
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < at; i++) {
    if (bytes[i] === 0x0a) {
      line++;
      lineStart = i + 1;
    }
  }
  const hex = bytes[at].toString(16).toUpperCase().padStart(2, "0");
  return {
    line,
    problem: `not valid UTF-8: byte 0x${hex} at byte ${at - lineStart + 1} of the line (save ` +
      "the file as UTF-8)",
  };
}

// A leading byte-order mark is kept, as Deno.readTextFile keeps it: the readers refuse it, naming
// it (transformers would read vocab.txt's first token as "\ufeff[PAD]").
const STRICT = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** `bytes` as text (a leading byte-order mark kept), or a Utf8Error naming the line. */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return STRICT.decode(bytes);
  } catch {
    const where = utf8Problem(bytes) ?? { line: 1, problem: "not valid UTF-8" };
    throw new Utf8Error(where.line, where.problem);
  }
}

/** The file's text, as Deno.readTextFile reads it, but a Utf8Error for a byte that is not UTF-8. */
export async function readUtf8File(path: string | URL): Promise<string> {
  return decodeUtf8(await Deno.readFile(path));
}
