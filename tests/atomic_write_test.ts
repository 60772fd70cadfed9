// model/atomic_write.ts: the folder part of a path, the folder sync after a rename (best effort:
// it must never turn a finished write into a failure), and removing a folder's entries whole.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { lockOutFolder } from "../train/flags.ts";
import { capturingErrors } from "./train_fixture.ts";
import {
  parentOf,
  removeEntries,
  removePendingTemporaries,
  syncFolder,
  writeFileAtomic,
  writeFilesAtomic,
} from "../model/atomic_write.ts";

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

Deno.test("removeEntries: all of them go, or none (a failed move puts the others back)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/model`);
    await Deno.writeTextFile(`${dir}/model/model.safetensors`, "weights");
    await Deno.writeTextFile(`${dir}/run.json`, "{}");
    await Deno.writeTextFile(`${dir}/log.jsonl`, "{}\n");
    await Deno.writeTextFile(`${dir}/notes.txt`, "the user's");
    const names = async () => {
      const found: string[] = [];
      for await (const e of Deno.readDir(dir)) found.push(e.name);
      return found.sort();
    };
    // "missing" cannot be moved: model/ and log.jsonl, moved before it, come back.
    const e = await assertRejects(
      () => removeEntries(dir, ["model", "log.jsonl", "missing", "run.json"]),
      Error,
    );
    assertEquals(
      e.message.replace(/\(.*\)/, "(…)"),
      `${dir}: could not move missing out of the way (…); nothing was removed`,
    );
    assertEquals(await names(), ["log.jsonl", "model", "notes.txt", "run.json"]);
    assertEquals(await Deno.readTextFile(`${dir}/model/model.safetensors`), "weights");
    // Every one movable: all gone, nothing else touched, no folder of them left behind.
    assertEquals(await removeEntries(dir, ["run.json", "model", "log.jsonl"]), null);
    assertEquals(await names(), ["notes.txt"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFilesAtomic: all written before any replaces; a failure says which are new", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const names = async () => {
      const found: string[] = [];
      for await (const e of Deno.readDir(dir)) found.push(e.name);
      return found.sort();
    };
    await writeFilesAtomic([[`${dir}/a.txt`, "a1"], [`${dir}/b.txt`, "b1"]]);
    assertEquals(await names(), ["a.txt", "b.txt"]);
    // A temporary that cannot be written (its folder is missing): no file replaced, none left.
    await assertRejects(
      () => writeFilesAtomic([[`${dir}/a.txt`, "a2"], [`${dir}/missing/b.txt`, "b2"]]),
      Error,
      `${dir}/missing/b.txt: write failed: `,
    );
    assertEquals(await names(), ["a.txt", "b.txt"]);
    assertEquals(await Deno.readTextFile(`${dir}/a.txt`), "a1");
    // A rename that fails (here onto a folder that is not empty): named, with what is new.
    await Deno.mkdir(`${dir}/c.txt`);
    await Deno.writeTextFile(`${dir}/c.txt/keep`, "");
    const e = await assertRejects(
      () =>
        writeFilesAtomic([[`${dir}/a.txt`, "a3"], [`${dir}/c.txt`, "c3"], [`${dir}/b.txt`, "b3"]]),
      Error,
    );
    assert(
      e.message.startsWith(`${dir}/c.txt: write failed: `) &&
        e.message.endsWith(`; new: ${dir}/a.txt; as before: ${dir}/c.txt, ${dir}/b.txt`),
      e.message,
    );
    assertEquals(await names(), ["a.txt", "b.txt", "c.txt"]);
    assertEquals(
      [await Deno.readTextFile(`${dir}/a.txt`), await Deno.readTextFile(`${dir}/b.txt`)],
      ["a3", "b1"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic, writeFilesAtomic: a link is written through, and stays a link", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/real`);
    await Deno.writeTextFile(`${dir}/real/p.jsonl`, "old");
    await Deno.symlink(`${dir}/real/p.jsonl`, `${dir}/p.jsonl`);
    await writeFileAtomic(`${dir}/p.jsonl`, "new");
    assert((await Deno.lstat(`${dir}/p.jsonl`)).isSymlink, "the link was replaced");
    assertEquals(await Deno.readTextFile(`${dir}/real/p.jsonl`), "new");
    await writeFilesAtomic([[`${dir}/p.jsonl`, "newer"]]);
    assert((await Deno.lstat(`${dir}/p.jsonl`)).isSymlink, "the link was replaced");
    assertEquals(await Deno.readTextFile(`${dir}/real/p.jsonl`), "newer");
    // A link to nothing is replaced by the file.
    await Deno.symlink(`${dir}/nowhere`, `${dir}/dangling`);
    await writeFileAtomic(`${dir}/dangling`, "here");
    assert((await Deno.lstat(`${dir}/dangling`)).isFile);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic, writeFilesAtomic: a pipe or device is not replaced by a file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await new Deno.Command("mkfifo", { args: [`${dir}/pipe`] }).output();
    await Deno.symlink(`${dir}/pipe`, `${dir}/to-pipe`);
    for (const path of [`${dir}/pipe`, `${dir}/to-pipe`]) {
      await assertRejects(
        () => writeFileAtomic(path, "x"),
        Error,
        `${path}: not a regular file (a device, pipe or socket): not replaced`,
      );
      await assertRejects(
        () => writeFilesAtomic([[`${dir}/a.txt`, "a"], [path, "x"]]),
        Error,
        `${path}: not a regular file`,
      );
    }
    assert((await Deno.lstat(`${dir}/pipe`)).isFifo, "the pipe was replaced");
    assertEquals((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort(), [
      "pipe",
      "to-pipe",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lockOutFolder: a folder the file system cannot lock is said in one line", async () => {
  // On a file system without locks (some network ones) the run went on unguarded, silently.
  const dir = await Deno.makeTempDir({ prefix: "ehft-unlockable-" });
  const tryLock = Deno.FsFile.prototype.tryLock;
  Deno.FsFile.prototype.tryLock = () => Promise.reject(new Error("Operation not supported"));
  try {
    // Tried twice (a run tries again once it has made the folder), said once.
    const { result, lines } = await capturingErrors(async () => {
      await lockOutFolder(dir, "train.ts");
      return await lockOutFolder(dir, "train.ts");
    });
    assertEquals(result, null);
    assertEquals(lines, [
      `note: --out ${dir} cannot be locked here (Operation not supported): nothing keeps another ` +
      "train.ts from running in it at the same time",
    ]);
  } finally {
    Deno.FsFile.prototype.tryLock = tryLock;
    await Deno.remove(dir);
  }
  // Where it can, nothing is said.
  const lockable = await Deno.makeTempDir({ prefix: "ehft-lockable-" });
  try {
    const { result, lines } = await capturingErrors(() => lockOutFolder(lockable, "train.ts"));
    assert(result !== null, "locked");
    result.close();
    assertEquals(lines, []);
  } finally {
    await Deno.remove(lockable);
  }
});

Deno.test("a write under way is pending until it ends; a Ctrl-C or SIGTERM then removes its temporary", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Finished writes, and failed ones, leave nothing pending (nothing for a signal to remove).
    await writeFileAtomic(`${dir}/a.txt`, "a\n");
    await writeFilesAtomic([[`${dir}/b.txt`, "b\n"], [`${dir}/c.txt`, "c\n"]]);
    await assertRejects(() => writeFilesAtomic([[`${dir}/d.txt`, "d"], [`${dir}/no/e.txt`, "e"]]));
    assertEquals(removePendingTemporaries(), 0);
    // A program stopped by a signal mid-write: its temporary goes, the target stays as it was.
    const script = `${dir}/stop.ts`;
    const at = (path: string) => new URL(path, import.meta.url).href;
    await Deno.writeTextFile(
      script,
      `import { stopWithWord } from "${at("../train/run_faults.ts")}";
import { temporaryName, writeFileAtomic } from "${at("../model/atomic_write.ts")}";
const [dir, signal] = Deno.args;
stopWithWord("probe", (how) => Promise.resolve(how + "; said"));
await writeFileAtomic(dir + "/done.txt", "whole\\n");
const tmp = temporaryName(dir + "/kept.txt");
await Deno.writeTextFile(tmp, "half");
Deno.kill(Deno.pid, signal as Deno.Signal);
await new Promise((r) => setTimeout(r, 20_000));
`,
    );
    for (
      const [signal, code, how] of [["SIGINT", 130, "interrupted"], [
        "SIGTERM",
        143,
        "terminated by SIGTERM",
      ]] as const
    ) {
      const folder = `${dir}/${signal}`;
      await Deno.mkdir(folder);
      await Deno.writeTextFile(`${folder}/kept.txt`, "old\n");
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, folder, signal],
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(r.stderr);
      assertEquals(r.code, code, stderr);
      assert(stderr.endsWith(`probe: ${how}; said\n`), stderr);
      const names = [];
      for await (const e of Deno.readDir(folder)) names.push(e.name);
      assertEquals(names.sort(), ["done.txt", "kept.txt"]);
      assertEquals(await Deno.readTextFile(`${folder}/kept.txt`), "old\n");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
