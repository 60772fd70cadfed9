import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { IN_PROCESS_GPU, withLimits } from "./gpu_fixture.ts";
import { checkOutPath, predict, repeatedIdxNote, withBatchAdvice } from "../predict.ts";
import { getGpu, GpuError } from "../kernels/device.ts";
import { FlagError } from "../train/flags.ts";
import { rte } from "../tasks/rte.ts";
import { rewriteSafetensors, writeTinyBert } from "./train_fixture.ts";

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

/** predict.ts run with `args` (in `cwd`), and what it wrote. */
async function predictCli(
  args: string[],
  cwd?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../predict.ts", import.meta.url).pathname, ...args],
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: r.code, stdout: text(r.stdout), stderr: text(r.stderr) };
}

Deno.test({
  name: "predict.ts: writes one JSON object per example, independent of the batch size",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/model`);
      await writeTinyBert(`${dir}/model`);
      const data = await writeData(dir);
      const out = `${dir}/predictions.jsonl`;
      const cli = await predictCli([
        ...["--model", `${dir}/model`, "--task", "rte", "--data", data, "--batch-size", "2"],
        ...["--out", out],
      ]);
      assertEquals(cli.code, 0, cli.stderr);
      const lines = (await Deno.readTextFile(out)).trim().split("\n").map((l) => JSON.parse(l));
      assertEquals(lines.length, 5);
      for (const [i, line] of lines.entries()) {
        assertEquals(Object.keys(line), ["idx", "logits", "prediction"]);
        assertEquals(line.idx, i + 10);
        assertEquals(line.logits.length, 1);
        assert(Number.isFinite(line.logits[0]));
        assertEquals(line.prediction, line.logits[0] > 0 ? "not_entailment" : "entailment");
      }
      // `--out -`: the same lines on stdout (it made a file called "-").
      const piped = await predictCli(
        ["--model", `${dir}/model`, "--task", "rte", "--data", data, "--out", "-"],
        dir,
      );
      const said = piped.stderr;
      assertEquals(piped.code, 0, said);
      assertEquals(piped.stdout, await Deno.readTextFile(out));
      assert(said.endsWith("predict: 5 predictions written to stdout\n"), said);
      assert(!(await Deno.stat(`${dir}/-`).then(() => true, () => false)), "a file called -");
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
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/model`);
      await writeTinyBert(`${dir}/model`, false);
      const data = await writeData(dir);
      await assertRejects(
        () => predict({ model: `${dir}/model`, task: rte, data, split: "val", batchSize: 4 }),
        Error,
        "has no EH-FT head (head.* tensors): it is a pretrained backbone, not a fine-tuned model",
      );
      // A transformers fine-tuned classifier is no backbone: said as what it is.
      await Deno.mkdir(`${dir}/classifier`);
      await writeTinyBert(`${dir}/classifier`, false);
      await rewriteSafetensors(`${dir}/classifier/model.safetensors`, (_, tensors) => {
        const weight = { dtype: "F32" as const, shape: [2, 24], data: new Float32Array(48) };
        tensors.set("classifier.weight", weight);
      });
      await assertRejects(
        () => predict({ model: `${dir}/classifier`, task: rte, data, split: "val", batchSize: 4 }),
        Error,
        "its classifier.* tensors are a transformers classification head, which predict.ts " +
          "does not run (it runs models ehft trained)",
      );
      // A model that carries unmerged LoRA factors (a Stage-1 snapshot of LoRA): refused, not
      // run without them.
      await Deno.mkdir(`${dir}/stage1`);
      await writeTinyBert(`${dir}/stage1`);
      await rewriteSafetensors(`${dir}/stage1/model.safetensors`, (_, tensors) => {
        const factor = { dtype: "F32" as const, shape: [2, 4], data: new Float32Array(8) };
        tensors.set("lora.encoder.layer.0.attention.self.query.lora_A.weight", factor);
      });
      await assertRejects(
        () => predict({ model: `${dir}/stage1`, task: rte, data, split: "val", batchSize: 4 }),
        Error,
        `${dir}/stage1 carries LoRA factors not merged into its weights ` +
          `("lora.encoder.layer.0.attention.self.query.lora_A.weight"); predict.ts runs models ` +
          `whose LoRA is merged`,
      );
      // A train.ts run folder given for its model: the error names the model inside.
      const runDir = `${dir}/run`;
      for (const sub of ["model", "seeds/seed-2/model", "seeds/seed-10/model"]) {
        await Deno.mkdir(`${runDir}/${sub}`, { recursive: true });
        await Deno.copyFile(`${dir}/model/config.json`, `${runDir}/${sub}/config.json`);
      }
      await Deno.writeTextFile(`${runDir}/run.json`, "{}");
      await Deno.writeTextFile(`${runDir}/seeds/run.json`, "{}");
      await assertRejects(
        () => predict({ model: runDir, task: rte, data, split: "val", batchSize: 4 }),
        Error,
        `${runDir} is a run folder, not a model: its model is ${runDir}/model`,
      );
      await assertRejects(
        () => predict({ model: `${runDir}/seeds`, task: rte, data, split: "val", batchSize: 4 }),
        Error,
        `its seeds' models are ${runDir}/seeds/seed-2/model, ${runDir}/seeds/seed-10/model`,
      );
      // A run that has not written its model yet (still training, or killed), and a folder
      // that is no model: said so, not "config.json: cannot read" or "not a hub id".
      const unfinished = `${dir}/unfinished`;
      await Deno.mkdir(unfinished);
      await Deno.writeTextFile(`${unfinished}/run.json`, "{}");
      const opened = (model: string) =>
        predict({ model, task: rte, data, split: "val", batchSize: 4 });
      await assertRejects(
        () => opened(unfinished),
        Error,
        `${unfinished} is a run folder whose run has not finished: no model in it yet (it is ` +
          "still training, or was stopped: --resume goes on with it)",
      );
      await assertRejects(
        () => opened(`${unfinished}/model`),
        Error,
        `${unfinished}/model does not exist yet: the run in ${unfinished} has not finished (it ` +
          "is still training, or was stopped: --resume goes on with it)",
      );
      // Being written (the run's final save, before its metrics.json): it said "not a model
      // folder: it has no config.json", or failed on a missing tokenizer.
      await Deno.mkdir(`${unfinished}/model`);
      await Deno.copyFile(`${dir}/model/config.json`, `${unfinished}/model/config.json`);
      await assertRejects(
        () => opened(`${unfinished}/model`),
        Error,
        `${unfinished}/model is not whole yet: the run in ${unfinished} has not finished (it is ` +
          "writing its model now, or was stopped while it did: --resume goes on with it)",
      );
      await assertRejects(
        () => opened(`${runDir}/seeds/seed-2`),
        Error,
        `${runDir}/seeds/seed-2 is not a model folder: it has no config.json`,
      );
      const run = async (...args: string[]) => {
        const r = await predictCli(args);
        return { code: r.code, stderr: r.stderr.trim() };
      };
      const typo = await run("--modle", "x");
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
      // A --data file is the split read: a --split beside it would be ignored.
      const split = await run(
        ...["--model", `${dir}/model`, "--task", "rte", "--data", data, "--split", "test"],
        ...["--out", `${dir}/split.jsonl`],
      );
      assertEquals(
        split.stderr,
        `predict: --split test: --data ${data} is a file, which is read whatever its split; ` +
          "give the folder that holds the split instead (or leave out --split)",
      );
      // One that names the file's own split is what it is (refused later here: no head).
      const own = await run(
        ...["--model", `${dir}/model`, "--task", "rte", "--data", data, "--split", "val"],
        ...["--out", `${dir}/split.jsonl`],
      );
      assert(own.stderr.includes("has no EH-FT head"), own.stderr);
      // The command refused as typed is exit status 2; the model that cannot serve, 1.
      assertEquals(own.code, 1, own.stderr);
      for (const r of [typo, missing, task, batch, split]) {
        assert(!r.stderr.includes("\n"), r.stderr);
        assertEquals(r.code, 2, r.stderr);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** predict.ts run as a command: its exit code and its stderr (trimmed). */
async function runPredict(...args: string[]) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../predict.ts", import.meta.url).pathname, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(r.stderr).trim();
  return { code: r.code, stderr };
}

/** The names in `dir` (sorted): what a refused run must leave as it was. */
async function listing(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

Deno.test({
  name: "predict.ts --out: an existing file is refused, unchanged, before the model is opened",
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/model`);
      await writeTinyBert(`${dir}/model`);
      const data = await writeData(dir);
      // The reviewer's case: the model's own config.json as --out.
      const config = `${dir}/model/config.json`;
      const before = await Deno.readFile(config);
      const modelFiles = await listing(`${dir}/model`);
      const own = await runPredict(
        "--model",
        `${dir}/model`,
        "--task",
        "rte",
        "--data",
        data,
        "--out",
        config,
      );
      assertEquals(own.code, 2, own.stderr);
      assertEquals(
        own.stderr,
        `predict: --out ${config} already exists: pass --overwrite to replace it, or choose ` +
          `another path`,
      );
      assertEquals(await Deno.readFile(config), before, "config.json changed");
      assertEquals(await listing(`${dir}/model`), modelFiles, "temporary files left");
      // No model at all: the --out problem is reported first (no model opened, no GPU asked
      // for), and an earlier result is kept byte for byte.
      const out = `${dir}/earlier.jsonl`;
      const earlier = new TextEncoder().encode('{"idx": 0, "logits": [1], "prediction": 1}\n');
      await Deno.writeFile(out, earlier);
      const noModel = await runPredict(
        "--model",
        `${dir}/no-such-model`,
        "--task",
        "rte",
        "--data",
        `${dir}/no-such-data`,
        "--out",
        out,
      );
      assertEquals(noModel.code, 2);
      assertEquals(
        noModel.stderr,
        `predict: --out ${out} already exists: pass --overwrite to replace it, or choose ` +
          `another path`,
      );
      assertEquals(await Deno.readFile(out), earlier);
      // A folder, with or without --overwrite, also before the model.
      for (const extra of [[], ["--overwrite"]]) {
        const folder = await runPredict(
          "--model",
          `${dir}/no-such-model`,
          "--task",
          "rte",
          "--out",
          `${dir}/model`,
          ...extra,
        );
        assertEquals(folder.code, 2);
        assertEquals(
          folder.stderr,
          `predict: --out ${dir}/model is a folder: give a file path for the predictions (e.g. ` +
            `${dir}/model/predictions.jsonl)`,
        );
      }
      assertEquals(await listing(`${dir}/model`), modelFiles);
      assertEquals(await Deno.readFile(config), before);
      // A run that fails leaves no folder made for its --out.
      const failed = await runPredict(
        ...["--model", `${dir}/no-such-model`, "--task", "rte", "--data", data],
        ...["--out", `${dir}/new/predictions.jsonl`],
      );
      assertEquals(failed.code, 1);
      assert(!failed.stderr.includes("--out"), failed.stderr);
      assert(!(await listing(dir)).includes("new"), "a folder was made for a failed run");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "predict.ts --overwrite: replaces an existing --out; a missing folder is created",
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/model`);
      await writeTinyBert(`${dir}/model`);
      const data = await writeData(dir);
      const out = `${dir}/predictions.jsonl`;
      await Deno.writeTextFile(out, "an earlier result\n");
      const base = ["--model", `${dir}/model`, "--task", "rte", "--data", data];
      const replaced = await runPredict(...base, "--out", out, "--overwrite");
      assertEquals(replaced.code, 0, replaced.stderr);
      const lines = (await Deno.readTextFile(out)).trim().split("\n").map((l) => JSON.parse(l));
      assertEquals(lines.map((l) => l.idx), [10, 11, 12, 13, 14]);
      // A missing parent folder is created (as train.ts creates its --out folder).
      const nested = `${dir}/new/sub/predictions.jsonl`;
      const created = await runPredict(...base, "--out", nested);
      assertEquals(created.code, 0, created.stderr);
      assertEquals(await Deno.readTextFile(nested), await Deno.readTextFile(out));
      assertEquals(await listing(dir), ["model", "new", "predictions.jsonl", "val.jsonl"]);
      assertEquals(await listing(`${dir}/new/sub`), ["predictions.jsonl"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("predict.ts --out: checkOutPath's rules, each a one-line FlagError naming --out", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/earlier.jsonl`, "earlier");
    const refused = async (out: string, overwrite: boolean, message: string) => {
      const e = await assertRejects(() => checkOutPath(out, overwrite), FlagError);
      assertEquals(e.message, message, out);
    };
    await refused(
      `${dir}/earlier.jsonl`,
      false,
      `--out ${dir}/earlier.jsonl already exists: pass --overwrite to replace it, or choose ` +
        `another path`,
    );
    // A link (even one that points nowhere) is an existing file.
    await Deno.symlink(`${dir}/nowhere`, `${dir}/dangling`);
    await refused(
      `${dir}/dangling`,
      false,
      `--out ${dir}/dangling already exists: pass --overwrite to replace it, or choose ` +
        `another path`,
    );
    // A folder, with or without --overwrite.
    await Deno.mkdir(`${dir}/folder`);
    for (const overwrite of [false, true]) {
      for (const out of [`${dir}/folder`, `${dir}/fresh/`]) {
        await refused(
          out,
          overwrite,
          `--out ${out} is a folder: give a file path for the predictions (e.g. ` +
            `${out.replace(/\/$/, "")}/predictions.jsonl)`,
        );
      }
    }
    // A named pipe (or a device: /dev/null) is not a file to replace, even with --overwrite;
    // nor is one behind a link.
    await new Deno.Command("mkfifo", { args: [`${dir}/pipe`] }).output();
    await Deno.symlink(`${dir}/pipe`, `${dir}/to-pipe`);
    for (const out of [`${dir}/pipe`, `${dir}/to-pipe`, "/dev/null"]) {
      await refused(
        out,
        true,
        `--out ${out} is not a regular file (a device, pipe or socket): give a file path for ` +
          "the predictions",
      );
    }
    await Deno.remove(`${dir}/pipe`);
    await Deno.remove(`${dir}/to-pipe`);
    await refused(
      `${dir}/earlier.jsonl/x/p.jsonl`,
      false,
      `--out ${dir}/earlier.jsonl/x/p.jsonl: ${dir}/earlier.jsonl is a file, not a folder`,
    );
    // Accepted: an earlier result with --overwrite, a new file in a new folder (made only when
    // the predictions are written).
    await checkOutPath(`${dir}/earlier.jsonl`, true);
    await checkOutPath(`${dir}/a/b/p.jsonl`, false);
    assertEquals(await Deno.readTextFile(`${dir}/earlier.jsonl`), "earlier");
    assertEquals(await listing(dir), ["dangling", "earlier.jsonl", "folder"]);

    // A folder that takes no file (here: Deno allowed to write elsewhere only; a read-only mount
    // reads the same) is refused before the model is opened, not after every prediction.
    const limited = async (...args: string[]) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          ...["run", "--allow-read", "--allow-env", `--allow-write=${dir}/folder`],
          ...[new URL("../predict.ts", import.meta.url).pathname, "--task", "rte"],
          ...["--model", `${dir}/no-model-needed`, ...args],
        ],
        env: { NO_COLOR: "1" },
        stdout: "null",
        stderr: "piped",
      }).output();
      return { code: r.code, err: new TextDecoder().decode(r.stderr).trim() };
    };
    for (const out of [`${dir}/p.jsonl`, `${dir}/new/p.jsonl`]) {
      const { code, err } = await limited("--out", out);
      assert(code === 2 && err.startsWith(`predict: --out ${out}: cannot write in ${dir}: `), err);
    }
    // A link is written through: its target's folder is the one that must take the file.
    await Deno.symlink(`${dir}/earlier.jsonl`, `${dir}/folder/out.jsonl`);
    const through = await limited("--out", `${dir}/folder/out.jsonl`, "--overwrite");
    assert(
      through.err.startsWith(`predict: --out ${dir}/folder/out.jsonl: cannot write in ${dir}: `),
      through.err,
    );
    await Deno.remove(`${dir}/folder/out.jsonl`);
    await Deno.symlink(`${dir}/folder/real.jsonl`, `${dir}/link.jsonl`);
    await Deno.writeTextFile(`${dir}/folder/real.jsonl`, "");
    const into = await limited("--out", `${dir}/link.jsonl`, "--overwrite");
    assert(!into.err.includes("--out"), into.err); // refused later, for the missing model
    await Deno.remove(`${dir}/link.jsonl`);
    await Deno.remove(`${dir}/folder/real.jsonl`);
    assertEquals(await listing(dir), ["dangling", "earlier.jsonl", "folder"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("predict(): a library caller's batch size or max length is checked before the model opens", async () => {
  // batchSize 0 looped forever, growing memory; the CLI's flags were the only check.
  const base = { model: "/nonexistent/model", task: rte, data: "/nonexistent", split: "val" };
  for (
    const [edit, message] of [
      [{ batchSize: 0 }, "--batch-size (batchSize): expected an integer in [1, 65536], got 0"],
      [{ batchSize: 2.5 }, "--batch-size (batchSize): expected an integer in [1, 65536], got 2.5"],
      [{ batchSize: NaN }, "--batch-size (batchSize): expected an integer in [1, 65536], got NaN"],
      [{ batchSize: 8, maxLength: 1 }, "--max-length (maxLength): expected an integer ≥ 2, got 1"],
    ] as const
  ) {
    const e = await assertRejects(() => predict({ ...base, ...edit }), FlagError);
    assertEquals(e.message, message);
  }
});

Deno.test({
  name: "predict: a run's model is read at the length it was trained at, and on its own task",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.mkdir(`${dir}/run/model`, { recursive: true });
      await writeTinyBert(`${dir}/run/model`);
      const data = await writeData(dir);
      const model = `${dir}/run/model`;
      const run = (more: Partial<Parameters<typeof predict>[0]> = {}) =>
        predict({ model, task: rte, data, split: "val", batchSize: 5, ...more });
      const logits = (ps: { logits: number[] }[]) => ps.map((p) => p.logits[0]);
      const full = logits(await run());
      const short = logits(await run({ maxLength: 9 }));
      assert(full.some((v, i) => v !== short[i]), "9 tokens cut none of the examples");
      // A model train.ts did not save is not a run's, whatever run.json lies beside it.
      await Deno.writeTextFile(
        `${dir}/run/run.json`,
        JSON.stringify({ resolved: { max_length: 9 } }),
      );
      await Deno.writeTextFile(`${dir}/run/metrics.json`, "{}"); // a finished run's
      assertEquals(logits(await run()), full);
      // One it saved before its weights kept their length (its metadata names its strategy and
      // stage): the run.json beside model/ says it.
      const weights = `${model}/model.safetensors`;
      await rewriteSafetensors(weights, (meta) => {
        Object.assign(meta, { task: "rte", strategy: "ft", stage: "final" });
      });
      assertEquals(logits(await run()), short);
      // train.ts's metadata says it.
      await rewriteSafetensors(weights, (meta) => Object.assign(meta, { max_length: "12" }));
      assertEquals(logits(await run()), logits(await run({ maxLength: 12 })));
      assertEquals(logits(await run({ maxLength: 9 })), short, "a typed length wins");
      // Beyond the model's positions: cut to them, and said, as train.ts says it.
      const said: string[] = [];
      const error = console.error;
      console.error = (...parts: unknown[]) => said.push(parts.join(" "));
      let beyond: number[];
      try {
        beyond = logits(await run({ maxLength: 1000 }));
      } finally {
        console.error = error;
      }
      assertEquals(beyond, full);
      assert(
        said.some((l) => /--max-length 1000 is more than the \d+ positions this model has/.test(l)),
        said.join("\n"),
      );
      // Read as train.ts writes it, digits alone ("0x10" read as 16 before): else run.json's.
      for (const odd of ["0x10", " 12 ", "12.0", "1e1"]) {
        await rewriteSafetensors(weights, (meta) => Object.assign(meta, { max_length: odd }));
        assertEquals(logits(await run()), short, JSON.stringify(odd));
      }
      // Checked as a typed one is: 3 left every pair its special tokens alone, one input for all.
      await rewriteSafetensors(weights, (meta) => Object.assign(meta, { max_length: "3" }));
      await assertRejects(
        () => run(),
        Error,
        `${weights}: the max_length 3 it gives leaves no token of text: rte's pairs take 3 ` +
          "special tokens, so at least 5 (or give --max-length)",
      );
      await rewriteSafetensors(weights, (meta) => Object.assign(meta, { max_length: "12" }));
      // Fine-tuned on another task (a head of the same shape): refused unless asked for.
      await rewriteSafetensors(weights, (meta) => Object.assign(meta, { task: "cola" }));
      await assertRejects(
        () => run(),
        Error,
        `${model} was fine-tuned on "cola" (its weights' metadata), not rte: pass --other-task ` +
          "(otherTask: true) to predict rte with it anyway",
      );
      assertEquals((await run({ otherTask: true })).length, EXAMPLES.length);
      // Shown as what it is (an empty name read "fine-tuned on  (its weights' metadata)").
      await rewriteSafetensors(weights, (meta) => Object.assign(meta, { task: "" }));
      await assertRejects(() => run(), Error, `${model} was fine-tuned on "" (its weights'`);
      // A PEFT method left active whose name the metadata lacks (it read "undefined").
      await rewriteSafetensors(weights, (meta) => {
        Object.assign(meta, { task: "rte", peft_state: "separate" });
        delete meta.peft;
      });
      await assertRejects(
        () => run(),
        Error,
        `${model} carries the tensors of the still active PEFT method (its metadata names none)`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("predict: examples that share an idx are noted, with where the first pair is", () => {
  const ex = (idx: number, line: number) => ({
    idx,
    inputs: ["a"],
    label: 0,
    source: `d/val.jsonl:${line}`,
  });
  assertEquals(repeatedIdxNote([ex(0, 1), ex(1, 2), ex(2, 3)], "rte val"), null);
  assertEquals(
    repeatedIdxNote([ex(0, 1), ex(1, 2), ex(0, 3), ex(0, 4)], "rte val"),
    "rte val: an idx repeats (idx 0 at d/val.jsonl:1 and d/val.jsonl:3): their predictions " +
      "share it",
  );
  assertEquals(
    repeatedIdxNote([ex(0, 1), ex(1, 2), ex(1, 3), ex(0, 4)], "rte val"),
    "rte val: 2 idx values repeat (idx 1 at d/val.jsonl:2 and d/val.jsonl:3): their " +
      "predictions share it",
  );
});

Deno.test({
  name:
    "predict: a batch beyond one storage binding is said before any runs, with a batch that fits",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      await writeTinyBert(`${dir}/model`);
      const data = await writeData(dir);
      const gpu = withLimits(await getGpu(), { maxStorageBufferBindingSize: 8192 });
      const run = (batchSize: number) =>
        predict({ model: `${dir}/model`, task: rte, data, split: "val", batchSize, gpu });
      const e = await assertRejects(
        () => run(5),
        GpuError,
        'Encoder: activation ("layer 0 intermediate", ',
      );
      // The batch size that fits, from the rows' own lengths (the ratio to the largest batch
      // was too large when that batch was a short one with a long row).
      const m =
        /limit of 8192 bytes: the batch of 5 does not fit this adapter; try --batch-size (\d+)$/
          .exec(e.message);
      assert(m, e.message);
      const fits = Number(m[1]);
      assert(fits >= 1 && fits < 5, e.message);
      // That batch passes the encoder's check (the head's 2048-wide weight is beyond this tiny
      // limit, so the prediction itself stops there).
      const fitted = await run(fits).catch((x: Error) => x);
      assert(
        fitted instanceof Error && fitted.message.includes('"head.dense.weight"'),
        `${fitted}`,
      );
      await assertRejects(() => run(fits + 1), GpuError, "does not fit this adapter");
      // Said once: the command line's advice leaves it as it is.
      assert(withBatchAdvice(e, 5) === e);
      // Other errors pass as they are.
      const other = new Error("x");
      assert(withBatchAdvice(other, 5) === other);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
