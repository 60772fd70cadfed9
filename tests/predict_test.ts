import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { predict } from "../predict.ts";
import { rte } from "../tasks/rte.ts";
import { writeTinyBert } from "./train_fixture.ts";

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
      await writeTinyBert(`${dir}/model`);
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
      await writeTinyBert(`${dir}/model`, false);
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
