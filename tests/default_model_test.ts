// The shipped model as every task script's default (train/default_model.ts): which recipe a
// script runs with and without --model, what it prints at its start, and that the shipped folder
// is what the model card says (a valid masked-LM checkpoint within the repository's size limits).

import { assert, assertEquals } from "./assert.ts";
import { readConfig } from "../model/config.ts";
import { openModel } from "../model/load.ts";
import { mlmHeadNames } from "../model/mlm_head.ts";
import { RTE_MINI_RECIPE, RTE_RECIPE } from "../tasks/rte.ts";
import { TASKS } from "../tasks/all.ts";
import { parseTrainArgs } from "../train/config.ts";
import {
  DEFAULT_MODEL_NAME,
  MINI_LR,
  miniRecipe,
  shippedDataDir,
  shippedModelDir,
  startLines,
  taskScriptRecipe,
} from "../train/default_model.ts";

const dir = shippedModelDir();

Deno.test("the shipped model is there: a BertForMaskedLM checkpoint within the size limits", async () => {
  assert(dir !== null, `models/${DEFAULT_MODEL_NAME} is missing`);
  const config = await readConfig(`${dir}/config.json`);
  assertEquals(config.raw.architectures, ["BertForMaskedLM"]);
  let total = 0;
  for await (const e of Deno.readDir(dir)) {
    const size = (await Deno.stat(`${dir}/${e.name}`)).size;
    assert(size <= 16 * 2 ** 20, `${e.name}: ${size} bytes, more than 16 MB`);
    total += size;
  }
  assert(total <= 24 * 2 ** 20, `${total} bytes in all, more than 24 MB`);
  const model = await openModel(dir);
  try {
    for (const name of Object.values(mlmHeadNames(config))) {
      assert(model.weights.tensors.has(name), `no ${name}`);
    }
    assert(!model.weights.tensors.has("cls.predictions.decoder.weight"), "decoder stored twice");
    // What Hugging Face's AutoTokenizer needs beyond tokenizer.json: the length limit, casing.
    const tc = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`));
    assertEquals(tc.model_max_length, config.maxPositions);
    assertEquals([tc.tokenizer_class, tc.do_lower_case], ["BertTokenizer", true]);
    assertEquals(model.tokenizer.encodeText("The jury said"), [
      model.tokenizer.tokenToId("the")!,
      model.tokenizer.tokenToId("jury")!,
      model.tokenizer.tokenToId("said")!,
    ]);
  } finally {
    model.weights.close();
  }
  const card = await Deno.readTextFile(`${dir}/README.md`);
  for (const heading of ["## Shape", "## Vocabulary", "## Corpus", "## Pretraining"]) {
    assert(card.includes(heading), `the model card has no "${heading}"`);
  }
});

Deno.test("task scripts: no --model, or the shipped folder, trains it on its mini recipe", () => {
  const none = taskScriptRecipe(["--seeds", "2"], RTE_RECIPE, RTE_MINI_RECIPE);
  assertEquals(none.usingDefault, true);
  assertEquals(none.recipe.model, dir);
  assertEquals([none.recipe.lr, none.recipe.maxLength, none.recipe.epochs], [MINI_LR, 128, 3]);
  assertEquals([none.recipe.strategy, none.recipe.peft], [RTE_RECIPE.strategy, RTE_RECIPE.peft]);
  for (const args of [["--model", "x"], ["--model=x"], ["--lr", "1", "--model", "y"]]) {
    const named = taskScriptRecipe(args, RTE_RECIPE, RTE_MINI_RECIPE);
    assertEquals([named.usingDefault, named.recipe], [false, RTE_RECIPE], args.join(" "));
  }
  // Naming the shipped folder itself, by any path, is the same model with the same recipe.
  for (const path of [dir!, `${dir}/`, `${dir}/../${DEFAULT_MODEL_NAME}`]) {
    for (const args of [["--model", path], [`--model=${path}`]]) {
      const same = taskScriptRecipe(args, RTE_RECIPE, RTE_MINI_RECIPE);
      assertEquals([same.usingDefault, same.recipe.model], [true, path], args.join(" "));
      assertEquals(same.recipe.epochs, 3);
    }
  }
  // No shipped model beside the script (by URL, a checkout without it): --model is missing,
  // unless given or named by the recipe.
  const away = (args: string[], paper = RTE_RECIPE) =>
    taskScriptRecipe(args, paper, RTE_MINI_RECIPE, null).missingDefault;
  assertEquals(away([]), true);
  assertEquals(away(["--model", "x"]), false);
  assertEquals(away([], { ...RTE_RECIPE, model: "my-model" }), false);
  assertEquals(taskScriptRecipe([], RTE_RECIPE, undefined, null).missingDefault, false);
  assertEquals(none.missingDefault, false);
  // Flags after "--" are not the script's.
  assertEquals(
    taskScriptRecipe(["--", "--model", "x"], RTE_RECIPE, RTE_MINI_RECIPE).usingDefault,
    true,
  );
});

Deno.test("every task script has a mini recipe: the paper's method, a budget, 128 tokens", async () => {
  for (const name of Object.keys(TASKS)) {
    const module = await import(`../tasks/${name}.ts`);
    const paper = module[`${name.toUpperCase()}_RECIPE`];
    const mini = module[`${name.toUpperCase()}_MINI_RECIPE`];
    assert(mini, `tasks/${name}.ts has no ${name.toUpperCase()}_MINI_RECIPE`);
    assertEquals([mini.strategy, mini.peft, mini.lr, mini.maxLength], [
      paper.strategy,
      paper.peft,
      MINI_LR,
      128,
    ], name);
    assert((mini.epochs ?? 0) > 0 !== (mini.maxSteps ?? 0) > 0, `${name}: one budget`);
  }
});

Deno.test("miniRecipe keeps the paper's strategy and method, replaces the budget", () => {
  const r = miniRecipe({ task: "x", strategy: "ehft", peft: "lora", epochs: 60, lr: 1e-5 }, {
    maxSteps: 7,
  });
  assertEquals(r, {
    task: "x",
    strategy: "ehft",
    peft: "lora",
    maxSteps: 7,
    lr: MINI_LR,
    maxLength: 128,
  });
});

Deno.test("a task script prints its model, data, recipe and the paper's setting", () => {
  const { recipe } = taskScriptRecipe([], RTE_RECIPE, RTE_MINI_RECIPE);
  const { config } = parseTrainArgs([], recipe, () => "data/superglue/RTE");
  const lines = startLines(TASKS.rte, config, true, RTE_RECIPE, 128);
  assertEquals(lines.length, 4);
  assert(lines[0].startsWith(`rte: model models/${DEFAULT_MODEL_NAME} (`), lines[0]);
  assertEquals(lines[1], "rte: data data/superglue/RTE");
  assert(
    lines[2].includes("ehft (bitfit), 3 epochs, lr 2e-4, batch 32, max length 128 → "),
    lines[2],
  );
  assert(
    lines[3].includes("deno task rte --model FacebookAI/roberta-large (ehft (bitfit), 60 epochs"),
    lines[3],
  );
  const paper = parseTrainArgs(["--model", "FacebookAI/roberta-large"], RTE_RECIPE, () => "d")
    .config;
  const own = startLines(TASKS.rte, paper, false, RTE_RECIPE, 512);
  assertEquals(own.length, 3, "no advice to run what is being run");
  assertEquals(own[0], "rte: model FacebookAI/roberta-large");
});

Deno.test({
  name: "a task script's start lines say the learning rate and max length the model decides",
  fn: async () => {
    // Another BERT than the shipped one takes the paper's recipe: lr 1e-5 becomes BERT's 3e-5
    // and max length 512 the model's 128 positions, which the lines must say, not the recipe.
    const dir = await Deno.makeTempDir({ prefix: "ehft-start-lines-" });
    try {
      const shipped = new URL(`../models/${DEFAULT_MODEL_NAME}/`, import.meta.url).pathname;
      await Deno.mkdir(`${dir}/bert`);
      for await (const e of Deno.readDir(shipped)) {
        if (e.isFile) await Deno.copyFile(`${shipped}${e.name}`, `${dir}/bert/${e.name}`);
      }
      const root = new URL("../", import.meta.url).pathname;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "tasks/cb.ts", "--model", `${dir}/bert`, "--max-steps", "2"]
          .concat(["--out", `${dir}/run`, "--no-autotune"]),
        cwd: root,
        env: { XDG_RUNTIME_DIR: "/tmp" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const lines = new TextDecoder().decode(out.stderr).split("\n");
      assertEquals(out.code, 0, lines.join("\n"));
      assertEquals(lines.slice(0, 3), [
        `cb: model ${dir}/bert`,
        "cb: data data/superglue/CB",
        `cb: ehft (bitfit), 2 steps, lr 3e-5, batch 32, max length 128 (the model's limit) → ` +
        `${dir}/run`,
      ]);
      const run = JSON.parse(await Deno.readTextFile(`${dir}/run/run.json`));
      assertEquals([run.settings.lr, run.resolved.max_length], [3e-5, 128]);
      assert(lines.includes("stage1: 1 step at lr 0.0005 (head, PEFT)"), lines.join("\n"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("shippedDataDir: the working folder's copy, else the repository's beside the scripts", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const before = Deno.cwd();
  const elsewhere = await Deno.makeTempDir({ prefix: "ehft-data-elsewhere-" });
  try {
    Deno.chdir(root);
    assertEquals(shippedDataDir("data/superglue/CB"), "data/superglue/CB");
    Deno.chdir(elsewhere);
    assertEquals(shippedDataDir("data/superglue/CB"), `${root}data/superglue/CB`);
    // Neither: as it is, for the error to name.
    assertEquals(shippedDataDir("data/nowhere"), "data/nowhere");
  } finally {
    Deno.chdir(before);
    await Deno.remove(elsewhere, { recursive: true });
  }
});
