// model/atomic_write.ts: the folder part of a path, and the folder sync after a rename (best
// effort: it must never turn a finished write into a failure).

import { assertEquals } from "./assert.ts";
import { parentOf, syncFolder, writeFileAtomic } from "../model/atomic_write.ts";

Deno.test("parentOf: the folder part of a path", () => {
  assertEquals(parentOf("a.json"), ".");
  assertEquals(parentOf("runs/rte/a.json"), "runs/rte");
  assertEquals(parentOf("runs/rte/"), "runs");
  assertEquals(parentOf("/a.json"), "/");
  assertEquals(parentOf("/tmp/x/a.json"), "/tmp/x");
});

Deno.test("syncFolder: a folder that cannot be opened is not an error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await syncFolder(`${dir}/missing`);
    await syncFolder(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic: a bare name is written in the working folder, nothing left beside it", async () => {
  const dir = await Deno.makeTempDir();
  const before = Deno.cwd();
  try {
    Deno.chdir(dir);
    await writeFileAtomic("out.txt", "one\n");
    await writeFileAtomic("out.txt", "two\n");
    assertEquals(await Deno.readTextFile(`${dir}/out.txt`), "two\n");
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, ["out.txt"]);
  } finally {
    Deno.chdir(before);
    await Deno.remove(dir, { recursive: true });
  }
});
