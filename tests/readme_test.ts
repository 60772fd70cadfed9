// README.md's TypeScript examples are what a user copies first: each is type-checked against
// mod.ts (its "https://<host>/<path>/mod.ts" read as this checkout's), so an export renamed or an
// option changed cannot leave the README behind.

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
