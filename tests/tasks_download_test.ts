// BoolQ and QNLI, which are not shipped: with no --data their official zip is downloaded into
// the data cache on first use. Here a loopback HTTP server serves zips built by the test, in the
// official layout and with the official row counts, to the official URLs (an injected fetch
// sends them to the loopback server), and each test has its own cache folder (EHFT_DATA_CACHE).
// Nothing touches the network or the real cache.

import { zipSync } from "npm:fflate@0.8.3";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { boolq, BOOLQ_DATASET } from "../tasks/boolq.ts";
import { qnli, QNLI_DATASET } from "../tasks/qnli.ts";
import { DatasetError } from "../train/data_download.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const encoder = new TextEncoder();

function lines(n: number, row: (i: number) => string): string {
  return Array.from({ length: n }, (_, i) => row(i)).join("\n") + "\n";
}

function boolqZip(): Uint8Array {
  const row = (i: number, label?: boolean) =>
    JSON.stringify({ question: `q ${i}`, passage: `p ${i}`, idx: i, label });
  return zipSync({
    "BoolQ/train.jsonl": encoder.encode(lines(9427, (i) => row(i, i % 3 === 0))),
    "BoolQ/val.jsonl": encoder.encode(lines(3270, (i) => row(i, i % 2 === 0))),
    "BoolQ/test.jsonl": encoder.encode(lines(3245, (i) => row(i))),
  });
}

function qnliZip(): Uint8Array {
  const labeled = (n: number) =>
    "index\tquestion\tsentence\tlabel\n" +
    lines(n, (i) => `${i}\tq ${i}?\ts ${i}.\t${i % 4 === 0 ? "entailment" : "not_entailment"}`);
  return zipSync({
    "QNLI/train.tsv": encoder.encode(labeled(104743)),
    "QNLI/dev.tsv": encoder.encode(labeled(5463)),
    "QNLI/test.tsv": encoder.encode(
      "index\tquestion\tsentence\n" + lines(5463, (i) => `${i}\tq ${i}?\ts ${i}.`),
    ),
  });
}

interface Loopback {
  fetch: typeof fetch;
  requests: string[];
  close(): Promise<void>;
}

/** A loopback server answering the official URLs' paths with the zips; fetch goes there. */
function serve(zips: Record<string, Uint8Array>): Loopback {
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const body = zips[new URL(req.url).pathname];
    return body
      ? new Response(body as Uint8Array<ArrayBuffer>)
      : new Response("not found", { status: 404 });
  });
  const port = server.addr.port;
  const loopFetch: typeof fetch = (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    requests.push(url.href);
    return fetch(`http://127.0.0.1:${port}${url.pathname}`, init);
  };
  return { fetch: loopFetch, requests, close: () => server.shutdown() };
}

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

/** A dry-run report without the token lengths (measured when the script has a model). */
// deno-lint-ignore no-explicit-any
function withoutTokenLengths(report: any): any {
  const { max_length: _length, ...rest } = report;
  rest.max_tokens = null;
  for (const split of Object.values(rest.splits ?? {})) {
    if (split && typeof split === "object") {
      delete (split as Record<string, unknown>).max_tokens;
      delete (split as Record<string, unknown>).truncated;
    }
  }
  return rest;
}

/** A dry run as a subprocess with its own data cache, offline. */
async function dryRun(task: string, cache: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `tasks/${task}.ts`, ...args],
    cwd: ROOT,
    env: {
      EHFT_DATA_CACHE: cache,
      EHFT_OFFLINE: "1",
      HF_HUB_OFFLINE: "1",
      XDG_RUNTIME_DIR: "/tmp",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim().split("\n");
  return {
    code: out.code,
    last: stdout[stdout.length - 1],
    stderr: new TextDecoder().decode(out.stderr),
  };
}

test("boolq and qnli: downloaded on first use into the cache, then read from it", async () => {
  const cache = await Deno.makeTempDir({ prefix: "ehft-task-cache-" });
  const server = serve({
    [new URL(BOOLQ_DATASET.url).pathname]: boolqZip(),
    [new URL(QNLI_DATASET.url).pathname]: qnliZip(),
  });
  try {
    const env = { EHFT_DATA_CACHE: cache };
    const options = { env, fetch: server.fetch, quiet: true, retries: 0 };
    const boolqDir = await boolq.resolveData!(options);
    assertEquals(boolqDir, `${cache}/BoolQ`);
    assertEquals(server.requests, [BOOLQ_DATASET.url]);
    const val = await boolq.readExamples(boolqDir, "val");
    assertEquals([val.length, val[1].label, val[2].label], [3270, 0, 1]);
    assertEquals(val[1].inputs, [["p 1", "q 1"]]);
    assertEquals((await boolq.readExamples(boolqDir, "test")).every((e) => e.label === null), true);

    const qnliDir = await qnli.resolveData!(options);
    assertEquals(qnliDir, `${cache}/QNLI`);
    assertEquals(server.requests, [BOOLQ_DATASET.url, QNLI_DATASET.url]);
    const dev = await qnli.readExamples(qnliDir, "dev");
    assertEquals([dev.length, dev[0].label, dev[1].label], [5463, 0, 1]);
    assertEquals(dev[1].inputs, [["s 1.", "q 1?"]]);

    // Cached: no more requests, even offline.
    assertEquals(await boolq.resolveData!({ ...options, offline: true }), boolqDir);
    assertEquals(await qnli.resolveData!(options), qnliDir);
    assertEquals(server.requests.length, 2);

    // A dry run reads the cache (offline: it never downloads). With no --model the script
    // measures token lengths with the shipped model; they are not what this test is about.
    const b = await dryRun("boolq", cache, "--dry-run");
    assertEquals(b.code, 0, b.stderr);
    assertEquals(withoutTokenLengths(JSON.parse(b.last)), {
      task: "boolq",
      data: `${cache}/BoolQ`,
      splits: {
        train: { examples: 9427, labels: { false: 6284, true: 3143 } },
        val: { examples: 3270, labels: { false: 1635, true: 1635 } },
        test: { examples: 3245 },
      },
      max_tokens: null,
      ready: true,
    });
    const q = await dryRun("qnli", cache, "--dry-run");
    assertEquals(q.code, 0, q.stderr);
    const report = withoutTokenLengths(JSON.parse(q.last));
    assertEquals(report.splits.train, {
      examples: 104743,
      labels: { entailment: 26186, not_entailment: 78557 },
    });
    assertEquals([report.splits.dev.examples, report.splits.test], [5463, { examples: 5463 }]);
  } finally {
    await server.close();
    await Deno.remove(cache, { recursive: true });
  }
});

test("boolq and qnli offline with nothing cached: a clear error, a dry run reports it", async () => {
  const cache = await Deno.makeTempDir({ prefix: "ehft-task-cache-" });
  try {
    for (const task of [boolq, qnli]) {
      const e = await assertRejects(
        () =>
          task.resolveData!({ env: { EHFT_DATA_CACHE: cache, EHFT_OFFLINE: "1" }, quiet: true }),
        DatasetError,
        "folder in it>",
      );
      assert(e.message.includes(cache), e.message);
    }
    // Offline, the training could not download it either: not ready, exit status 1.
    const r = await dryRun("qnli", cache, "--dry-run");
    assertEquals(r.code, 1, r.stderr);
    const report = JSON.parse(r.last);
    assertEquals([report.data, report.splits, report.max_tokens, report.ready], [
      null,
      { train: null, dev: null, test: null },
      null,
      false,
    ]);
    assert(report.notes[0].includes("QNLIv2.zip"), report.notes[0]);
    // Without an offline variable, "offline mode" would be the dry run's choice, not the user's.
    const online = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "tasks/qnli.ts", "--dry-run"],
      cwd: ROOT,
      // Empty counts as unset: the user's own EHFT_OFFLINE / HF_HUB_OFFLINE must not leak in.
      env: {
        EHFT_DATA_CACHE: cache,
        EHFT_OFFLINE: "",
        HF_HUB_OFFLINE: "",
        XDG_RUNTIME_DIR: "/tmp",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(online.code, 0, new TextDecoder().decode(online.stderr));
    const notes = JSON.parse(new TextDecoder().decode(online.stdout).trim().split("\n").at(-1)!)
      .notes;
    assert(
      /^a dry run downloads nothing: QNLI\S* is not in the data cache \S+ yet; the training downloads it \(https:\/\/\S+QNLIv2\.zip\), or pass --data <its folder>$/
        .test(notes[0]),
      notes[0],
    );
    // Training needs the data: the script stops with the error (before opening the model).
    const t = await dryRun("boolq", cache, "--model", `${cache}/no-model`, "--out", `${cache}/run`);
    assertEquals(t.code, 1);
    assert(t.stderr.includes("boolq: BoolQ is not in") && t.stderr.includes("--data"), t.stderr);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
