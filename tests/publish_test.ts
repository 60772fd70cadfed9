// The package as deno.json's publish.include lists it: every module mod.ts reaches (the tasks,
// train.ts and predict.ts they import) is in it, so `deno publish` would not refuse it; and the
// library's documentation is complete (`deno doc --lint`).

import { assert } from "./assert.ts";

Deno.test("deno publish --dry-run: the package holds every module it imports", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd: new URL("../", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert(out.code === 0 && text.includes("Dry run complete"), text.slice(-2000));
  assert(!text.includes("excluded-module"), text.slice(-2000));
});

Deno.test("deno doc --lint mod.ts: every export documented, no public type naming a private one", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--lint", "mod.ts"],
    cwd: new URL("../", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert(out.code === 0, text.slice(0, 2000));
});
