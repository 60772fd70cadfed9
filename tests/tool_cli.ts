// The tools (tools/*.ts) as a user runs them, for their tests: a subprocess runner, and the check
// that `--help` prints the tool's top comment, which holds tools/README.md's usage block.

import { assert, assertEquals } from "./assert.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** `deno run -A tools/<name>.ts ...args` of the repository at `root`, run in `cwd`. */
export async function runTool(
  name: string,
  args: string[],
  root = ROOT,
  cwd?: string,
): Promise<{ code: number; stderr: string; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}tools/${name}.ts`, ...args],
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stderr: text(out.stderr), stdout: text(out.stdout) };
}

/** A usage block as one line: `\` line continuations joined, runs of spaces as one. */
function oneLine(block: string): string {
  return block.replaceAll("\\\n", " ").replace(/\s+/g, " ").trim();
}

/** `stdout` of tools/<name>.ts --help is its top comment, and holds tools/README.md's usage. */
export async function assertToolHelp(name: string, stdout: string): Promise<void> {
  const source = await Deno.readTextFile(`${ROOT}tools/${name}.ts`);
  const header = source.slice(0, source.indexOf("\n\nimport")).split("\n")
    .map((l) => l.replace(/^\/\/ ?/, "")).join("\n");
  assertEquals(stdout.trim(), header.trim());
  const readme = await Deno.readTextFile(`${ROOT}tools/README.md`);
  const usage = new RegExp(`## ${name}\\.ts\\n\\n\`\`\`sh\\n([^\`]*)\`\`\``).exec(readme);
  assert(usage, `tools/README.md has no ${name}.ts usage block`);
  assert(oneLine(stdout).includes(oneLine(usage[1])), stdout);
}
