// tools/mini_evidence.ts: its table (finished cells, and an unfinished cell's finished seeds),
// --methods refusing a name it does not know, --table-only on a folder without cells (one line),
// --help and a mistyped flag.

import { assert, assertEquals } from "./assert.ts";
import { METHODS, selectMethods, writeTable } from "../tools/mini_evidence.ts";
import { writeJson } from "./train_fixture.ts";
import { assertToolHelp, runTool } from "./tool_cli.ts";

function miniEvidence(args: string[]) {
  return runTool("mini_evidence", args);
}

Deno.test("mini_evidence: the table has finished cells and an unfinished one's finished seeds", async () => {
  const out = await Deno.makeTempDir();
  try {
    const run = (acc: number) => ({ best: { accuracy: acc + 0.01 }, final: { accuracy: acc } });
    // A finished cell: its metrics.json (as train.ts writes it) and its seed folders.
    for (const seed of ["42", "43"]) {
      await writeJson(`${out}/cb-ft/seed-${seed}/run.json`, {});
      await writeJson(`${out}/cb-ft/seed-${seed}/metrics.json`, run(0.5));
    }
    await writeJson(`${out}/cb-ft/metrics.json`, {
      ...run(0.5),
      std: { best: { accuracy: 0 }, final: { accuracy: 0 } },
      seeds: { "42": run(0.5), "43": run(0.5) },
    });
    // Unfinished: seeds 42 and 43 finished, 44 under way (no metrics.json), no cell metrics.
    const folders = ["seed-42", "seed-43", "seed-44", "seed-45"];
    await writeJson(`${out}/cb-lpft/run.json`, { settings: {}, seed_folders: folders });
    // A seed folder not in the cell's run.json (an earlier run's) is not counted.
    await writeJson(`${out}/cb-lpft/seed-7/run.json`, {});
    await writeJson(`${out}/cb-lpft/seed-7/metrics.json`, run(0.9));
    await writeJson(`${out}/cb-lpft/seed-42/run.json`, {});
    await writeJson(`${out}/cb-lpft/seed-42/metrics.json`, run(0.6));
    await writeJson(`${out}/cb-lpft/seed-43/run.json`, {});
    await writeJson(`${out}/cb-lpft/seed-43/metrics.json`, run(0.7));
    await writeJson(`${out}/cb-lpft/seed-44/run.json`, {});
    // Started, nothing finished: no row.
    await writeJson(`${out}/cb-ehft-lora/run.json`, { settings: {}, seed_folders: folders });
    await writeJson(`${out}/cb-ehft-lora/seed-42/run.json`, {});
    await writeTable(out, ["cb"], METHODS);
    const rows = (await Deno.readTextFile(`${out}/table.md`)).trim().split("\n").slice(2)
      .map((line) => line.split("|").slice(1, -1).map((c) => c.trim()));
    assertEquals(rows.length, 2, rows.join("\n"));
    assertEquals(rows[0].slice(0, 7), [
      "CB",
      "accuracy",
      "FT",
      "ehft-mini-en (pretrained)",
      "2",
      "51.0 ± 0.0",
      "50.0 ± 0.0",
    ]);
    assertEquals(rows[1].slice(2, 7), [
      "LP-FT",
      "ehft-mini-en (pretrained)",
      "2 of 4",
      "66.0 ± 5.0",
      "65.0 ± 5.0",
    ]);
    assert(/^\d+\.\d–\d+\.\d$/.test(rows[1][7]), rows[1][7]);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("mini_evidence: --methods refuses an unknown name in one line, before anything runs", async () => {
  const out = await Deno.makeTempDir();
  try {
    const known = "known: ft, ft-random, ehft-bitfit, ehft-lora, lpft";
    for (
      const [spec, problem] of [
        ["ft,typo", 'unknown method "typo"'],
        ["nope", 'unknown method "nope"'],
        ["ft,", "an empty name"],
      ]
    ) {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../tools/mini_evidence.ts", import.meta.url).pathname,
          ...["--table-only", "--out", out, "--methods", spec],
        ],
        env: { XDG_RUNTIME_DIR: "/tmp" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(r.stderr);
      assertEquals(r.code, 2, stderr);
      assertEquals(stderr.trim(), `mini_evidence: --methods: ${problem} in "${spec}" (${known})`);
    }
    // No table of nothing was written.
    assertEquals([...Deno.readDirSync(out)].length, 0);
    assertEquals(selectMethods("lpft, ft").map((m) => m.name), ["ft", "lpft"]);
    assertEquals(selectMethods(undefined), METHODS);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("mini_evidence: --table-only needs a folder with cells: else one line, nothing written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const needs = (out: string) =>
      `--table-only remakes ${out}/table.md from the cell folders an earlier run left there ` +
      `(such as ${out}/cb-ft/): give that run's --out, or drop --table-only to run them`;
    // A folder that does not exist: said so (it was "table.md: write failed"), not made.
    const missing = await miniEvidence(["--table-only", "--out", `${dir}/me`, "--tasks", "cb"]);
    assertEquals(missing.code, 2);
    assertEquals(
      missing.stderr.trim(),
      `mini_evidence: --out ${dir}/me does not exist; ${needs(`${dir}/me`)}`,
    );
    // An empty folder (or one without these cells): no table of nothing.
    await Deno.mkdir(`${dir}/me`);
    await Deno.mkdir(`${dir}/me/rte-ft`);
    const empty = await miniEvidence([
      "--table-only",
      "--out",
      `${dir}/me`,
      "--tasks",
      "cb",
      "--methods",
      "ft,lpft",
    ]);
    assertEquals(empty.code, 2);
    assertEquals(
      empty.stderr.trim(),
      `mini_evidence: --out ${dir}/me holds no cell of --tasks cb and --methods ft,lpft; ` +
        needs(`${dir}/me`),
    );
    assertEquals([...Deno.readDirSync(`${dir}/me`)].map((e) => e.name), ["rte-ft"]);
    // A file.
    await Deno.writeTextFile(`${dir}/file`, "");
    const file = await miniEvidence(["--table-only", "--out", `${dir}/file`, "--tasks", "cb"]);
    assertEquals(file.code, 2);
    assert(file.stderr.includes(`--out ${dir}/file is a file, not a folder`), file.stderr);
    assertEquals(file.stderr.trim().split("\n").length, 1, file.stderr);
    // A folder with a cell: the table.
    const run = { best: { accuracy: 0.6 }, final: { accuracy: 0.5 } };
    await writeJson(`${dir}/me/cb-ft/metrics.json`, run);
    const ok = await miniEvidence(["--table-only", "--out", `${dir}/me`, "--tasks", "cb"]);
    assertEquals(ok.code, 0, ok.stderr);
    const table = await Deno.readTextFile(`${dir}/me/table.md`);
    assert(
      table.includes("| CB | accuracy | FT | ehft-mini-en (pretrained) | 1 | 60.0 | 50.0 |"),
      table,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mini_evidence: --help prints its usage (tools/README.md's) and top comment; a typo names the flag", async () => {
  const help = await miniEvidence(["--table-only", "--out", "/nonexistent", "--help"]);
  assertEquals(help.code, 0, help.stderr);
  await assertToolHelp("mini_evidence", help.stdout);
  assertEquals((await miniEvidence(["-h"])).stdout, help.stdout);

  const typos: [string, string][] = [
    ["--table-onyl", "--table-only"],
    ["--task", "--tasks"],
    ["--method", "--methods"],
    ["--report", "--no-report"],
  ];
  for (const [flag, hint] of typos) {
    const r = await miniEvidence([flag, "--out", "/nonexistent"]);
    assertEquals(r.code, 2, flag);
    assertEquals(r.stderr.trim(), `mini_evidence: unknown flag ${flag} (did you mean ${hint}?)`);
  }
});
