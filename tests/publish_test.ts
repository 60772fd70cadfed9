// The package as deno.json's publish.include lists it: every module mod.ts reaches (the tasks,
// train.ts and predict.ts they import) is in it, so `deno publish` would not refuse it; and the
// library's documentation is complete (`deno doc --lint`); and the version the downloaders send
// in their User-Agent is deno.json's.

import { assert } from "./assert.ts";
import { EHFT_VERSION, USER_AGENT } from "../model/download_common.ts";

/** `deno <args>` in the repository root: its exit code and its output (stdout, then stderr). */
async function deno(...args: string[]): Promise<{ code: number; text: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: new URL("../", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

Deno.test("deno publish --dry-run: the package holds every module it imports", async () => {
  const { code, text } = await deno("publish", "--dry-run", "--allow-dirty");
  assert(code === 0 && text.includes("Dry run complete"), text.slice(-2000));
  assert(!text.includes("excluded-module"), text.slice(-2000));
});

Deno.test("deno doc --lint mod.ts: every export documented, no public type naming a private one", async () => {
  const { code, text } = await deno("doc", "--lint", "mod.ts");
  assert(code === 0, text.slice(0, 2000));
});

Deno.test("the user agent's version is deno.json's", async () => {
  // A constant in the code (the library imported by URL has no deno.json to read), kept in step.
  const { version } = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  assert(EHFT_VERSION === version, `EHFT_VERSION ${EHFT_VERSION}, deno.json ${version}`);
  assert(USER_AGENT.startsWith(`ehft/${version}; `), USER_AGENT);
});

Deno.test("every error class the library's modules export is exported by mod.ts", async () => {
  // A caller tells a refused setting (FlagError) from a kept run (RunFaultError) by instanceof.
  const mod = await import("../mod.ts") as Record<string, unknown>;
  const root = new URL("../", import.meta.url).pathname;
  // Caught inside the library and rethrown as the reader's own error naming the file.
  const internal = ["Utf8Error"];
  const missing: string[] = [];
  for (const dir of ["kernels", "model", "peft", "train"]) {
    for await (const entry of Deno.readDir(`${root}${dir}`)) {
      if (!entry.name.endsWith(".ts")) continue;
      const text = await Deno.readTextFile(`${root}${dir}/${entry.name}`);
      for (const [, name] of text.matchAll(/^export class (\w+Error)\b/gm)) {
        if (internal.includes(name)) continue;
        if (typeof mod[name] !== "function") missing.push(`${dir}/${entry.name}: ${name}`);
      }
    }
  }
  assert(missing.length === 0, `not exported by mod.ts: ${missing.sort().join(", ")}`);
});
