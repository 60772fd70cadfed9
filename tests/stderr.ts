// What a piece of code writes to stderr, for tests of progress lines and notes.

/** What `fn` writes to stderr (through Deno.stderr.writeSync), instead of writing it. */
export async function captureStderr(fn: () => Promise<unknown>): Promise<string> {
  const original = Deno.stderr.writeSync;
  const decoder = new TextDecoder();
  let text = "";
  Deno.stderr.writeSync = (p: Uint8Array) => {
    text += decoder.decode(p);
    return p.length;
  };
  try {
    await fn();
  } finally {
    Deno.stderr.writeSync = original;
  }
  return text;
}
