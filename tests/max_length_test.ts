// The length the examples are cut at against the model's positions (train/prepare.ts): a
// --max-length (the flag's or a recipe's) above what the model leaves beside a prefix is said in a
// note, not lowered silently; one that leaves no token of text beside the special tokens is
// refused (every example was its special tokens alone: one input for all), by training, predict.ts
// and --dry-run alike; a --prefix-length the model has no room for names its largest value; a
// --batch-size above the training set is said, and --epochs that give too few steps say why.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  capturingErrors,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import { FlagError } from "../train/flags.ts";
import { parseTrainArgs } from "../train/config.ts";
import { runTraining } from "../train/run.ts";
import { dryRun } from "../train/dry_run.ts";
import { predict } from "../predict.ts";
import { rte } from "../tasks/rte.ts";
import { lengthProblem } from "../train/batches.ts";
import { openModel } from "../model/load.ts";

async function withTiny(fn: (dir: string, common: string[]) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-max-length-" });
  try {
    // The tiny BERT has 33 positions; its RTE examples are pairs ([CLS] a [SEP] b [SEP]).
    await writeTinyBert(`${dir}/model`, false);
    await writeMarkerData(`${dir}/data`, 12, 6);
    await writeNarrowHead(`${dir}/head.safetensors`);
    await fn(dir, [
      ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
      ...["--head", `${dir}/head.safetensors`, "--eval-every", "0", "--no-autotune"],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function train(args: string[]) {
  return runTraining(parseTrainArgs(args).config, { task: rte, quiet: true });
}

Deno.test({
  name: "max length: more than the model leaves beside a prefix is a note, and the run takes that",
  ...IN_PROCESS_GPU,
  fn: () =>
    withTiny(async (dir, common) => {
      const out = `${dir}/run`;
      const { lines } = await capturingErrors(() =>
        train([
          ...common,
          ...["--strategy", "ehft", "--peft", "prefix", "--prefix-length", "8"],
          ...["--max-length", "40", "--max-steps", "2", "--batch-size", "4", "--out", out],
        ])
      );
      assertEquals(
        lines.filter((l) => l.startsWith("note: --max-length")),
        [
          "note: --max-length 40 is more than the 25 positions this model's 33 leave beside " +
          "--prefix-length 8: the run takes 25",
        ],
      );
      const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
      assertEquals(run.resolved.max_length, 25);
      // Without a prefix: the model's own positions.
      const { lines: plain } = await capturingErrors(() =>
        train([
          ...common,
          ...["--strategy", "ft", "--max-length", "40", "--max-steps", "1", "--batch-size", "4"],
          ...["--out", `${dir}/plain`],
        ])
      );
      assert(
        plain.includes(
          "note: --max-length 40 is more than the 33 positions this model has: the run takes 33",
        ),
        plain.join(" | "),
      );
    }),
});

Deno.test({
  name: "max length: one that leaves no token of text, or a prefix with no room, is refused",
  ...IN_PROCESS_GPU,
  fn: () =>
    withTiny(async (dir, common) => {
      const refused = async (args: string[], message: string) => {
        const e = await assertRejects(
          () => train([...common, ...args, "--max-steps", "2", "--out", `${dir}/run`]),
          FlagError,
        );
        assertEquals(e.message, message, args.join(" "));
      };
      // 2 and 3 kept no word of a pair ([CLS] [SEP] [SEP]), 4 one text of it.
      for (
        const [n, left] of [[2, "no token of text"], [3, "no token of text"], [
          4,
          "one text of each pair no token",
        ]]
      ) {
        await refused(
          ["--strategy", "ft", "--max-length", String(n)],
          `--max-length ${n} leaves ${left}: rte's pairs take 3 special tokens, so at least 5`,
        );
      }
      // The largest prefix said is one that trains (it said 31, and 31 was refused as 28).
      await refused(
        ["--strategy", "peft", "--peft", "prefix", "--prefix-length", "32"],
        "--prefix-length 32 leaves 1 of this model's 33 positions, and rte's inputs need 5: at " +
          "most 28",
      );
      await refused(
        ["--strategy", "peft", "--peft", "prefix", "--prefix-length", "30"],
        "--prefix-length 30 leaves 3 of this model's 33 positions, and rte's inputs need 5: at " +
          "most 28",
      );
      await train([
        ...common,
        ...["--strategy", "peft", "--peft", "prefix", "--prefix-length", "28", "--max-steps", "1"],
        ...["--out", `${dir}/prefix28`],
      ]);
      // At 5, one token of each text: it trains.
      await train([
        ...common,
        "--strategy",
        "ft",
        "--max-length",
        "5",
        "--max-steps",
        "1",
        "--out",
        `${dir}/five`,
      ]);

      // predict.ts and --dry-run say the same.
      const e = await assertRejects(
        () =>
          predict({
            model: `${dir}/five/model`,
            task: rte,
            data: `${dir}/data/val.jsonl`,
            split: "val",
            batchSize: 4,
            maxLength: 3,
          }),
        FlagError,
      );
      assertEquals(
        e.message,
        "--max-length 3 leaves no token of text: rte's pairs take 3 special tokens, so at least 5",
      );
      // --dry-run says what training refuses (it said ready: true to a prefix with no room).
      for (
        const [options, said] of [
          [{ maxLength: 4 }, "--max-length 4 leaves one text of each pair no token: rte's pairs"],
          [{ prefixRows: 30 }, "--prefix-length 30 leaves 3 of this model's 33 positions"],
        ] as const
      ) {
        const report = await dryRun(rte, {
          model: `${dir}/model`,
          data: `${dir}/data`,
          ...options,
        });
        assertEquals(report.ready, false, said);
        assert(report.notes?.some((n) => n.startsWith(said)), JSON.stringify(report.notes));
      }
      // A model too short for any input: the model's problem, not a flag's (it blamed a
      // --prefix-length of 0).
      const opened = await openModel(`${dir}/model`);
      opened.weights.close();
      const tokenizer = opened.tokenizer;
      const examples = await rte.readExamples(`${dir}/data`, "train");
      const short = { maxLength: null, positions: 4, prefixRows: 0, task: "rte", model: "m" };
      assertEquals(lengthProblem(tokenizer, examples, short), {
        message: "m: its 4 positions are fewer than the 5 tokens rte's shortest inputs take",
        command: false,
      });
      assertEquals(lengthProblem(tokenizer, examples, { ...short, positions: 5 }), null);
    }),
});

Deno.test({
  name: "max length: a batch above the training set is said; --epochs giving too few steps say why",
  ...IN_PROCESS_GPU,
  fn: () =>
    withTiny(async (dir, common) => {
      const { lines } = await capturingErrors(() =>
        train([
          ...common,
          ...["--strategy", "ft", "--batch-size", "20", "--max-steps", "1"],
          ...["--out", `${dir}/run`],
        ])
      );
      assert(
        lines.includes(
          "note: --batch-size 20 is more than the 12 train examples: each step takes them all",
        ),
        lines.join(" | "),
      );
      const e = await assertRejects(
        () =>
          train([
            ...common,
            ...["--strategy", "ehft", "--peft", "bitfit", "--batch-size", "20", "--epochs", "1"],
            ...["--out", `${dir}/epochs`],
          ]),
        FlagError,
      );
      assertEquals(
        e.message,
        "a two-stage strategy needs at least 2 steps, got 1 (--epochs 1 of 1 batch: 12 train " +
          "examples, --batch-size 20)",
      );
    }),
});
