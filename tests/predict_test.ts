import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { predict } from "../predict.ts";
import { rte } from "../tasks/rte.ts";
import { openSafetensors, writeSafetensors } from "../model/safetensors.ts";

const FIXTURE = new URL("./fixtures/tiny-bert/", import.meta.url).pathname;
const WORDS = (
  "the a of to and in is was for on that with as by it at from his an were are which this be " +
  "has had not or but its have their one after been first new who they two he she her all " +
  "also more than other into some only time can there most over would when up out what about " +
  "people years war city state world said no may united states government president company " +
  "made three while many before through where between during under against since because " +
  "could these later such then being both both2 four five six seven eight nine ten"
).split(" ");

/** A model folder: the tiny-bert fixture's config and weights with a 101-token WordPiece vocab. */
async function makeModel(dir: string, withHead = true): Promise<void> {
  await Deno.copyFile(`${FIXTURE}/config.json`, `${dir}/config.json`);
  const vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ...WORDS].slice(0, 101);
  assertEquals(vocab.length, 101);
  await Deno.writeTextFile(`${dir}/vocab.txt`, vocab.join("\n") + "\n");
  if (withHead) {
    await Deno.copyFile(`${FIXTURE}/model.safetensors`, `${dir}/model.safetensors`);
    return;
  }
  const source = await openSafetensors(`${FIXTURE}/model.safetensors`);
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const [name, info] of source.tensors) {
    if (!name.startsWith("head.")) {
      tensors[name] = { dtype: "F32", shape: info.shape, data: await source.readF32(name) };
    }
  }
  source.close();
  await writeSafetensors(`${dir}/model.safetensors`, tensors);
}

const EXAMPLES = [
  ["The city was the first state in the world.", "The city is a state.", "entailment"],
  ["He said that the company had two presidents.", "She said no.", "not_entailment"],
  ["There were more people in the war than in the city.", "People were there.", "entailment"],
  ["The government of the united states was made in time.", "It was made.", "entailment"],
  ["Four five six seven eight nine ten", "One two three", "not_entailment"],
];

async function writeData(dir: string): Promise<string> {
  const path = `${dir}/val.jsonl`;
  await Deno.writeTextFile(
    path,
    EXAMPLES.map(([premise, hypothesis, label], idx) =>
      JSON.stringify({ premise, hypothesis, label, idx: idx + 10 })
    ).join("\n"),
  );
  return path;
}

Deno.test({
  name: "predict.ts: writes one JSON object per example, independent of the batch size",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/model`);
      await makeModel(`${dir}/model`);
      const data = await writeData(dir);
      const out = `${dir}/predictions.jsonl`;
      const cli = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../predict.ts", import.meta.url).pathname,
          "--model",
          `${dir}/model`,
          "--task",
          "rte",
          "--data",
          data,
          "--batch-size",
          "2",
          "--out",
          out,
        ],
        env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(cli.stderr);
      assertEquals(cli.code, 0, stderr);
      const lines = (await Deno.readTextFile(out)).trim().split("\n").map((l) => JSON.parse(l));
      assertEquals(lines.length, 5);
      for (const [i, line] of lines.entries()) {
        assertEquals(Object.keys(line), ["idx", "logits", "prediction"]);
        assertEquals(line.idx, i + 10);
        assertEquals(line.logits.length, 1);
        assert(Number.isFinite(line.logits[0]));
        assertEquals(line.prediction, line.logits[0] > 0 ? "not_entailment" : "entailment");
      }
      // The same model run in one batch of 5 gives the same logits.
      const whole = await predict({
        model: `${dir}/model`,
        task: rte,
        data,
        split: "val",
        batchSize: 5,
      });
      assertClose("logits", whole.map((p) => p.logits[0]), lines.map((l) => l.logits[0]), 1e-5);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "predict.ts: a backbone without a head and bad flags are one-line errors",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/model`);
      await makeModel(`${dir}/model`, false);
      const data = await writeData(dir);
      await assertRejects(
        () => predict({ model: `${dir}/model`, task: rte, data, split: "val", batchSize: 4 }),
        Error,
        "has no EH-FT head",
      );
      const run = async (...args: string[]) => {
        const r = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", new URL("../predict.ts", import.meta.url).pathname, ...args],
          env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        return { code: r.code, stderr: new TextDecoder().decode(r.stderr).trim() };
      };
      const typo = await run("--modle", "x");
      assertEquals(typo.code, 1);
      assertEquals(typo.stderr, "predict: unknown flag --modle (did you mean --model?)");
      const missing = await run("--model", `${dir}/model`, "--task", "rte", "--data", data);
      assertEquals(missing.stderr, "predict: --out is required");
      const task = await run("--model", "m", "--task", "nope", "--data", "d", "--out", "o");
      assert(task.stderr.startsWith('predict: --task: unknown task "nope"'), task.stderr);
      const batch = await run(
        "--model",
        "m",
        "--task",
        "rte",
        "--data",
        "d",
        "--out",
        "o",
        "--batch-size",
        "0",
      );
      assert(batch.stderr.startsWith("predict: --batch-size: expected an integer"), batch.stderr);
      for (const r of [typo, missing, task, batch]) assert(!r.stderr.includes("\n"), r.stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
