// The tools' command line, as the main CLIs have it (train/flags.ts): flags parsed strictly, an
// unknown one refused in one line that names it and the closest known flag (`--layer` → "did you
// mean --layers?"); `--help` / `-h` prints the tool's top comment (its usage and what it does) and
// runs nothing; any failure is one line `<tool>: <message>` and exit code 1, 2 for the command
// refused as typed (a FlagError; `--debug` adds the stack).

import { runMain } from "../train/flags.ts";

/**
 * The top comment of the module at `url`: its leading `//` lines without the slashes and the one
 * space after them, so the usage block keeps its indentation.
 */
export async function headerComment(url: string): Promise<string> {
  let source: string;
  try {
    source = url.startsWith("file:")
      ? await Deno.readTextFile(new URL(url))
      : await (await fetch(url)).text();
  } catch (e) {
    return `(the usage is at the top of ${url}, which cannot be read: ${(e as Error).message})`;
  }
  const lines: string[] = [];
  for (const line of source.split("\n")) {
    if (!line.startsWith("//")) break;
    lines.push(line.replace(/^\/\/ ?/, "").trimEnd());
  }
  return lines.join("\n").trim();
}

/**
 * Runs a tool's `main` on the command line's arguments, with `--help` its top comment, read only
 * when asked for (run by URL, it is fetched).
 */
export async function runTool(
  name: string,
  url: string,
  main: (args: string[]) => Promise<void>,
): Promise<void> {
  const flags = Deno.args.includes("--") ? Deno.args.slice(0, Deno.args.indexOf("--")) : Deno.args;
  const help = flags.includes("--help") || flags.includes("-h") ? await headerComment(url) : "";
  await runMain(name, main, help);
}
