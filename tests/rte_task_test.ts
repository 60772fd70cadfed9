import { assert, assertEquals, assertRejects } from "./assert.ts";
import { rte } from "../tasks/rte.ts";
import { DataError } from "../train/data_files.ts";

const DATA = new URL("../data/superglue/RTE", import.meta.url).pathname;

Deno.test("rte: the shipped splits read with HF label ids", async () => {
  const val = await rte.readExamples(DATA, "val");
  assertEquals(val.length, 277);
  assertEquals(val[0].idx, 0);
  assertEquals(val[0].label, 1); // "not_entailment"
  assertEquals(val[1].label, 0); // "entailment"
  const [pair] = val[0].inputs as [string, string][];
  assert(pair[0].startsWith("Dana Reeve") && pair[1] === "Christopher Reeve had an accident.");
  assertEquals((await rte.readExamples(`${DATA}/train.jsonl`, "ignored")).length, 2490);
  assertEquals([rte.prediction([0.3]), rte.prediction([-0.1])], ["not_entailment", "entailment"]);
});

Deno.test("rte: bad data files name the file and line", async () => {
  const dir = await Deno.makeTempDir();
  const ok = '{"premise": "a", "hypothesis": "b", "label": "entailment", "idx": 0}';
  const cases: [string, string][] = [
    [`${ok}\n{"premise": "a", "hypothesis": "b", "label": "maybe"}`, ':2: label "maybe"'],
    [`${ok}\n{not json`, ":2: not valid JSON"],
    [`${ok}\n\n{"premise": 3, "hypothesis": "b"}`, ':3: field "premise" is not a string'],
    [`[1, 2]`, ":1: expected a JSON object"],
    ["\n\n", "has no examples"],
  ];
  try {
    for (const [i, [text, message]] of cases.entries()) {
      const file = `${dir}/case${i}.jsonl`;
      await Deno.writeTextFile(file, text);
      const e = await assertRejects(() => rte.readExamples(file, "val"), DataError, message);
      assert(e.message.startsWith(file), e.message);
    }
    await assertRejects(() => rte.readExamples(`${dir}/nowhere`, "val"), DataError, "no such");
    await assertRejects(() => rte.readExamples(dir, "val"), DataError, "cannot read");
    // A test split without labels reads with label null.
    await Deno.writeTextFile(`${dir}/test.jsonl`, '{"premise": "a", "hypothesis": "b", "idx": 7}');
    const [unlabeled] = await rte.readExamples(dir, "test");
    assertEquals([unlabeled.idx, unlabeled.label], [7, null]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
