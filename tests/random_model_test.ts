// tools/random_model.ts: the vocabulary read as Hugging Face's load_vocab reads it (CRLF, blank
// lines keep their ids), pad_token_id from [PAD], and --out: refused when not empty unless
// --overwrite (then only a folder of its own files), a refused vocabulary leaving it as it was;
// --help and a mistyped flag.

import { assert, assertEquals } from "./assert.ts";
import { exists, readTree, sameBytes } from "./train_fixture.ts";
import { assertToolHelp, runTool } from "./tool_cli.ts";
import { openModel } from "../model/load.ts";
import { vocabLines } from "../model/tokenizer_convert.ts";

const SHAPE = ["--layers", "1", "--hidden", "8", "--heads", "2", "--intermediate", "16"];

function randomModel(args: string[]) {
  return runTool("random_model", [...SHAPE, "--max-positions", "16", ...args]);
}

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

test("random_model: ids are the vocab file's lines (CRLF, a blank line), pad_token_id is [PAD]'s", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // load_vocab: universal newlines, rstrip("\n"): "" is token 5 and "war" 6; [PAD] is 1.
    const lines = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "", "war", "the"];
    await Deno.writeTextFile(`${dir}/vocab.txt`, lines.join("\r\n") + "\r\n");
    const r = await randomModel(["--out", `${dir}/m`, "--vocab", `${dir}/vocab.txt`]);
    assertEquals(r.code, 0, r.stderr);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/m/config.json`));
    assertEquals([config.vocab_size, config.pad_token_id], [8, 1]);
    assertEquals(await Deno.readTextFile(`${dir}/m/vocab.txt`), lines.join("\n") + "\n");
    const model = await openModel(`${dir}/m`);
    model.weights.close();
    assertEquals(model.tokenizer.tokenToId("war"), 6);
    assertEquals(model.weights.tensors.get("bert.embeddings.word_embeddings.weight")!.shape, [
      8,
      8,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("random_model: vocabLines reads as load_vocab does", () => {
  assertEquals(vocabLines("a\r\nb\rc\n\nd"), ["a", "b", "c", "", "d"]);
  assertEquals(vocabLines("a\n\n"), ["a", ""]);
  assertEquals(vocabLines(" a \n"), [" a "]);
});

test("random_model: --out is refused when not empty unless --overwrite; a bad vocabulary writes nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "war"];
    await Deno.writeTextFile(`${dir}/vocab.txt`, vocab.join("\n") + "\n");
    const args = ["--out", `${dir}/m`, "--vocab", `${dir}/vocab.txt`];
    assertEquals((await randomModel(args)).code, 0);
    const before = await readTree(`${dir}/m`);
    // Seeds are u32: 2^32 would be seed 0 again.
    const big = await randomModel([...args, "--seed", "4294967296", "--overwrite"]);
    assertEquals(big.code, 2);
    assertEquals(
      big.stderr.trim(),
      'random_model: --seed: expected an integer from 0 to 4294967295, got "4294967296"',
    );
    const again = await randomModel([...args, "--seed", "1"]);
    assertEquals(again.code, 2);
    assertEquals(
      again.stderr.trim(),
      `random_model: --out ${dir}/m is not empty (it holds config.json, model.safetensors, ` +
        `vocab.txt): pass --overwrite to replace the model in it, or choose a new folder`,
    );
    // A vocabulary without [PAD], or without [CLS]: refused, the folder as it was.
    for (const [drop, message] of [["[PAD]", "has no [PAD] token"], ["[CLS]", "[CLS]"]]) {
      await Deno.writeTextFile(
        `${dir}/bad.txt`,
        vocab.filter((t) => t !== drop).join("\n") + "\n",
      );
      const bad = await randomModel([
        "--out",
        `${dir}/m`,
        "--vocab",
        `${dir}/bad.txt`,
        "--overwrite",
      ]);
      assertEquals(bad.code, 1, drop);
      assert(bad.stderr.includes(`${dir}/bad.txt: `) && bad.stderr.includes(message), bad.stderr);
      assertEquals(bad.stderr.trim().split("\n").length, 1, bad.stderr);
      const after = await readTree(`${dir}/m`);
      for (const [name, bytes] of before) assert(sameBytes(after.get(name)!, bytes), name);
    }
    // --overwrite replaces its own folder (another seed, other weights).
    const over = await randomModel([...args, "--seed", "1", "--overwrite"]);
    assertEquals(over.code, 0, over.stderr);
    const weights = await Deno.readFile(`${dir}/m/model.safetensors`);
    assert(!sameBytes(weights, before.get("model.safetensors")!), "new weights");
    // ... but not a folder holding anything else (a tokenizer.json would not match the vocab).
    await Deno.writeTextFile(`${dir}/m/tokenizer.json`, "{}");
    const foreign = await randomModel([...args, "--overwrite"]);
    assertEquals(foreign.code, 2);
    assert(foreign.stderr.includes("holds tokenizer.json, which this tool does not write"));
    assert(sameBytes(await Deno.readFile(`${dir}/m/model.safetensors`), weights), "untouched");
    for await (const e of Deno.readDir(dir)) assert(!/\.(tmp|old)-/.test(e.name), e.name);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("random_model: a linked --out is written where it points, the link kept; leftovers named", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const vocab = `${dir}/vocab.txt`;
    await Deno.writeTextFile(vocab, "[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\nthe\n");
    // A link to an empty folder, then (with --overwrite) to that folder holding a model.
    await Deno.mkdir(`${dir}/real`);
    await Deno.symlink(`${dir}/real`, `${dir}/link`);
    for (const more of [[], ["--seed", "1", "--overwrite"]]) {
      const r = await randomModel(["--out", `${dir}/link`, "--vocab", vocab, ...more]);
      assertEquals(r.code, 0, r.stderr);
      assert((await Deno.lstat(`${dir}/link`)).isSymlink, "the link was replaced");
      assertEquals(await Deno.realPath(`${dir}/link`), await Deno.realPath(`${dir}/real`));
      const config = JSON.parse(await Deno.readTextFile(`${dir}/real/config.json`));
      assertEquals(config.vocab_size, 6);
    }
    // What a stopped write left beside the folder is named, not read, not removed.
    await Deno.mkdir(`${dir}/real.tmp-0123abcd`);
    const again = await randomModel(["--out", `${dir}/m`, "--vocab", vocab]);
    assertEquals(again.code, 0, again.stderr);
    const linked = await randomModel(["--out", `${dir}/link`, "--vocab", vocab, "--overwrite"]);
    assertEquals(linked.code, 0, linked.stderr);
    const real = await Deno.realPath(`${dir}/real`);
    assert(
      linked.stderr.includes(
        `note: ${real}.tmp-0123abcd is left from an earlier write of ${real} that was stopped: ` +
          `delete it`,
      ),
      linked.stderr,
    );
    assert(!again.stderr.includes("is left from"), again.stderr);
    assert(await exists(`${dir}/real.tmp-0123abcd`), "the leftover was removed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("random_model: --help prints its usage (tools/README.md's) and top comment; a typo names the flag", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // --help wins over everything else: nothing is written.
    const help = await randomModel(["--out", `${dir}/m`, "--help"]);
    assertEquals(help.code, 0, help.stderr);
    await assertToolHelp("random_model", help.stdout);
    assertEquals((await randomModel(["-h"])).stdout, help.stdout);
    assertEquals([...Deno.readDirSync(dir)].length, 0);

    const typos: [string, string][] = [
      ["--layer", "--layers"],
      ["--max_positions", "--max-positions"],
      ["--sed", "--seed"],
      ["--vocabs", "--vocab"],
    ];
    for (const [flag, hint] of typos) {
      const r = await randomModel(["--out", `${dir}/m`, flag, "3"]);
      assertEquals(r.code, 2, flag);
      assertEquals(r.stderr.trim(), `random_model: unknown flag ${flag} (did you mean ${hint}?)`);
    }
    const missing = await randomModel(["--out", `${dir}/m`]);
    assertEquals(missing.code, 2);
    assert(missing.stderr.startsWith("random_model: --vocab is required"), missing.stderr);
    assertEquals(missing.stderr.trim().split("\n").length, 1, missing.stderr);
    assertEquals([...Deno.readDirSync(dir)].length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
