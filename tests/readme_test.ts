// What the documentation shows is what a user copies first. README.md's TypeScript examples are
// type-checked against mod.ts (its "https://<host>/<path>/mod.ts" read as this checkout's), and
// every flag the README and docs name must be in some entry point's, tool's or benchmark's usage,
// so an export renamed, an option changed or a flag dropped cannot leave them behind.

import { assert, assertEquals } from "./assert.ts";

const ROOT = new URL("../", import.meta.url);
const PLACEHOLDER = "https://<host>/<path>/mod.ts";

Deno.test("README: its TypeScript examples type-check against mod.ts", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  assert(blocks.length >= 2, `README.md has ${blocks.length} TypeScript examples`);
  const dir = await Deno.makeTempDir({ prefix: "ehft-readme-" });
  try {
    const files: string[] = [];
    for (const [i, block] of blocks.entries()) {
      assert(block.includes(PLACEHOLDER), `README example ${i + 1} imports no mod.ts`);
      const file = `${dir}/example_${i + 1}.ts`;
      await Deno.writeTextFile(file, block.replaceAll(PLACEHOLDER, new URL("mod.ts", ROOT).href));
      files.push(file);
    }
    const check = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--quiet", "--config", new URL("deno.json", ROOT).pathname, ...files],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const out = new TextDecoder().decode(check.stderr) + new TextDecoder().decode(check.stdout);
    assertEquals(check.code, 0, out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README and docs: every flag they name is one an entry point, tool or benchmark takes", async () => {
  const { TRAIN_HELP, PREDICT_HELP, REPORT_HELP } = await import("../train/help.ts");
  const { HELP: PRETRAIN_HELP } = await import("../pretrain.ts");
  const { headerComment } = await import("../tools/cli.ts");
  const helps = [TRAIN_HELP, PREDICT_HELP, REPORT_HELP, PRETRAIN_HELP];
  // The tools' and benchmarks' usage is their top comment.
  for (const folder of ["tools/", "bench/"]) {
    for await (const e of Deno.readDir(new URL(folder, ROOT))) {
      if (e.name.endsWith(".ts")) {
        helps.push(await headerComment(new URL(`${folder}${e.name}`, ROOT).href));
      }
    }
  }
  const known = new Set(helps.flatMap((h) => h.match(/--[a-z][a-z0-9-]*/g) ?? []));
  // BENCHMARKS.md is left out: a record of runs, with commands of their day and Python's flags.
  for (const doc of ["README.md", "docs/faults.md", "tools/README.md", "train/README.md"]) {
    const text = await Deno.readTextFile(new URL(doc, ROOT));
    const named = new Set(text.match(/--[a-z][a-z0-9-]*/g));
    // Deno's own permission flags.
    const unknown = [...named].filter((f) => !f.startsWith("--allow-") && !known.has(f));
    assertEquals(unknown, [], `flags in ${doc} that no --help names`);
  }
});
