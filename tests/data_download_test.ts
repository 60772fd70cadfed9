// The data set downloader against a loopback HTTP server serving a small zip built here with
// fflate. Every test has its own server and its own cache folder (EHFT_DATA_CACHE in an injected
// environment), so nothing touches the real cache or the network.

import { zipSync } from "npm:fflate@0.8.3";
import {
  countRows,
  dataCacheDir,
  DatasetError,
  DatasetNotCachedError,
  type DatasetProgress,
  type DatasetSpec,
  ensureDataset,
  type EnsureDatasetOptions,
  isSafeEntryName,
} from "../train/data_download.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { captureStderr } from "./stderr.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const TRAIN = Array.from({ length: 7 }, (_, i) => JSON.stringify({ idx: i, label: i % 2 === 0 }))
  .join("\n") + "\n";
// Blank and whitespace-only lines are not rows; a last line without a newline is.
const VAL =
  '{"idx": 0, "label": "true"}\n\n{"idx": 1, "label": false}\r\n  \n{"idx": 2, "label": true}';
const DEV = 'index\tquestion\tsentence\tlabel\n0\tq\ts\tentailment\n1\t"q\ts\tnot_entailment\n' +
  "2\tq\ts\tentailment\n3\tq\ts\tentailment\n";

const CONTENTS: Record<string, string> = {
  "Toy/train.jsonl": TRAIN,
  "Toy/val.jsonl": VAL,
  "Toy/dev.tsv": DEV,
  "Toy/README.txt": "not asked for\n",
  "__MACOSX/Toy/._train.jsonl": "resource fork\n",
};

function buildZip(entries: Record<string, string> = CONTENTS, level: 0 | 6 = 6): Uint8Array {
  const files: Record<string, Uint8Array> = {};
  for (const [name, text] of Object.entries(entries)) files[name] = encoder.encode(text);
  return zipSync(files, { level, mtime: new Date("2020-01-01T00:00:00Z") });
}

const ZIP = buildZip();

function spec(url: string, extra: Partial<DatasetSpec> = {}): DatasetSpec {
  return {
    name: "Toy",
    url,
    files: [
      { path: "Toy/train.jsonl", rows: 7 },
      { path: "Toy/val.jsonl", rows: 3 },
      { path: "Toy/dev.tsv", rows: 4, header: true },
    ],
    size: ZIP.length,
    ...extra,
  };
}

interface Route {
  body: Uint8Array;
  status?: number;
  /** Send this many bytes (with the full Content-Length), then close; this many times. */
  truncateAt?: number;
  truncateTimes?: number;
  /** Send no Content-Length (a chunked body). */
  chunked?: boolean;
  /** Fail with HTTP 503 this many times first. */
  unavailableTimes?: number;
  /** Send this many bytes, then nothing (the connection stays open); once. */
  stallAt?: number;
}

class ZipServer {
  readonly routes = new Map<string, Route>();
  readonly log: string[] = [];
  onGet?: () => void | Promise<void>;
  private readonly stalled: ReadableStreamDefaultController<Uint8Array>[] = [];
  private server: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    this.server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (req) => this.serve(req),
    );
  }

  url(path: string): string {
    return `http://127.0.0.1:${this.server.addr.port}${path}`;
  }

  private async serve(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    this.log.push(`${req.method} ${path}`);
    await this.onGet?.();
    const route = this.routes.get(path);
    if (!route) return new Response("not found", { status: 404 });
    if (route.unavailableTimes) {
      route.unavailableTimes--;
      return new Response("busy", { status: 503 });
    }
    if (route.status && route.status !== 200) return new Response("no", { status: route.status });
    const headers = new Headers({ "content-type": "application/zip" });
    if (!route.chunked) headers.set("content-length", String(route.body.length));
    let body = route.body;
    if (route.stallAt !== undefined) {
      const part = body.subarray(0, route.stallAt);
      route.stallAt = undefined;
      const stalled = this.stalled;
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(part);
          stalled.push(c);
        },
      });
      return new Response(stream, { headers });
    }
    if (route.truncateAt !== undefined && (route.truncateTimes ?? 1) > 0) {
      route.truncateTimes = (route.truncateTimes ?? 1) - 1;
      body = body.subarray(0, route.truncateAt);
    }
    // Two chunks, so a client sees the body arrive in parts.
    const half = body.subarray(0, body.length >> 1);
    const rest = body.subarray(body.length >> 1);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(half);
        c.enqueue(rest);
        c.close();
      },
    });
    return new Response(stream, { headers });
  }

  async close(): Promise<void> {
    for (const c of this.stalled) {
      try {
        c.close();
      } catch {
        // Already cancelled by the client that gave up on it.
      }
    }
    await this.server.shutdown();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** A temporary folder holding the cache folder, so "outside the cache" can be checked too. */
async function withSetup(
  fn: (
    ctx: {
      server: ZipServer;
      root: string;
      cache: string;
      opts: EnsureDatasetOptions;
    },
  ) => Promise<void>,
): Promise<void> {
  const server = new ZipServer();
  server.routes.set("/Toy.zip", { body: ZIP });
  const root = await Deno.makeTempDir({ prefix: "ehft-data-test-" });
  const cache = `${root}/cache`;
  const opts: EnsureDatasetOptions = {
    env: { EHFT_DATA_CACHE: cache, HOME: root },
    quiet: true,
    retryDelayMs: 0,
  };
  try {
    await fn({ server, root, cache, opts });
  } finally {
    await server.close();
    await Deno.remove(root, { recursive: true });
  }
}

/** Every path under `dir`, relative, sorted. */
async function tree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix + e.name;
    out.push(rel);
    if (e.isDirectory) out.push(...await tree(`${dir}/${e.name}`, rel + "/"));
  }
  return out.sort();
}

async function assertNotComplete(cache: string): Promise<void> {
  assert(!(await exists(`${cache}/Toy/.ehft-dataset.json`)), "marked complete");
  assert(!(await exists(`${cache}/Toy.zip`)), "a zip was kept");
  assert(!(await exists(`${cache}/Toy.zip.partial`)), "a partial file was left");
}

Deno.test("data: the first call downloads, verifies and extracts; the second makes no request", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/Toy.zip");
    const dir = await ensureDataset(spec(url), opts);
    assertEquals(dir, `${cache}/Toy`);
    assertEquals(server.log, ["GET /Toy.zip"]);
    // Flattened into the task folder; only the files asked for; the zip is gone.
    assertEquals(await tree(cache), [
      "Toy",
      "Toy.lock",
      "Toy/.ehft-dataset.json",
      "Toy/dev.tsv",
      "Toy/train.jsonl",
      "Toy/val.jsonl",
    ]);
    assertEquals(await Deno.readTextFile(`${dir}/train.jsonl`), TRAIN);
    assertEquals(await Deno.readTextFile(`${dir}/val.jsonl`), VAL);
    assertEquals(await Deno.readTextFile(`${dir}/dev.tsv`), DEV);
    const marker = JSON.parse(await Deno.readTextFile(`${dir}/.ehft-dataset.json`));
    assertEquals(marker.zipBytes, ZIP.length);
    assertEquals(marker.files["train.jsonl"].rows, 7);
    assertEquals(marker.files["val.jsonl"].rows, 3);
    assertEquals(marker.files["dev.tsv"], {
      path: "Toy/dev.tsv",
      rows: 4,
      header: true,
      bytes: encoder.encode(DEV).length,
    });

    assertEquals(await ensureDataset(spec(url), opts), dir);
    assertEquals(server.log.length, 1);
    // Without the size in the spec too (the server's Content-Length is still checked).
    assertEquals(await ensureDataset(spec(url, { size: undefined }), opts), dir);
    assertEquals(server.log.length, 1);
  });
});

Deno.test("data: a damaged extraction or a changed spec is downloaded again", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/Toy.zip");
    const dir = await ensureDataset(spec(url), opts);
    await Deno.writeTextFile(`${dir}/val.jsonl`, "truncated");
    await ensureDataset(spec(url), opts);
    assertEquals(server.log.length, 2);
    assertEquals(await Deno.readTextFile(`${dir}/val.jsonl`), VAL);
    await Deno.remove(`${dir}/dev.tsv`);
    await ensureDataset(spec(url), opts);
    assertEquals(server.log.length, 3);
    await Deno.writeTextFile(`${dir}/.ehft-dataset.json`, "{not json");
    await ensureDataset(spec(url), opts);
    assertEquals(server.log.length, 4);
    // A marker whose files are null ("Cannot read properties of null"), or a FIFO (the read hung):
    // no marker, downloaded again.
    await Deno.writeTextFile(`${dir}/.ehft-dataset.json`, '{"files": null}');
    await ensureDataset(spec(url), opts);
    await Deno.remove(`${dir}/.ehft-dataset.json`);
    await new Deno.Command("mkfifo", { args: [`${dir}/.ehft-dataset.json`] }).output();
    await ensureDataset(spec(url), opts);
    assertEquals(server.log.length, 6);
    assert((await Deno.lstat(`${dir}/.ehft-dataset.json`)).isFile, "the marker is a file again");
    // A spec asking for another count is not satisfied by the old marker (and then fails).
    const other = spec(url);
    other.files[0] = { path: "Toy/train.jsonl", rows: 8 };
    await assertRejects(() => ensureDataset(other, opts), DatasetError, "has 7 rows, expected 8");
    assertEquals(server.log.length, 7);
    // The earlier, verified extraction stays as it was; nothing claims 8 rows.
    const marker = JSON.parse(await Deno.readTextFile(`${cache}/Toy/.ehft-dataset.json`));
    assertEquals(marker.files["train.jsonl"].rows, 7);
    await assertRejects(() => ensureDataset(other, opts), DatasetError, "expected 8");
    assertEquals(server.log.length, 8);
    assert(!(await exists(`${cache}/Toy.zip`)));
  });
});

Deno.test("data: concurrent calls download once", async () => {
  await withSetup(async ({ server, opts }) => {
    const url = server.url("/Toy.zip");
    let dirs: string[] = [];
    const said = await captureStderr(async () => {
      dirs = await Promise.all(
        [1, 2, 3].map(() => ensureDataset(spec(url), { ...opts, quiet: false })),
      );
    });
    assertEquals(new Set(dirs).size, 1);
    assertEquals(server.log.length, 1);
    // The others' wait is said: it lasts as long as the download (and its retries).
    assert(said.includes("waiting for another process's download of Toy to end"), said);
  });
});

Deno.test("data: a truncated body is never used and the download restarts", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/Toy.zip");
    server.routes.set("/Toy.zip", { body: ZIP, truncateAt: 50, truncateTimes: 1 });
    const seen: { zip: boolean; complete: boolean }[] = [];
    server.onGet = async () => {
      seen.push({
        zip: await exists(`${cache}/Toy.zip`),
        complete: await exists(`${cache}/Toy/.ehft-dataset.json`),
      });
    };
    const dir = await ensureDataset(spec(url), opts);
    assertEquals(server.log.length, 2);
    // At the second request, the broken first attempt had been kept under no usable name.
    assertEquals(seen, [{ zip: false, complete: false }, { zip: false, complete: false }]);
    assertEquals(await Deno.readTextFile(`${dir}/train.jsonl`), TRAIN);
    assert(!(await exists(`${cache}/Toy.zip.partial`)));
  });
});

Deno.test("data: a body that keeps breaking is an error after the retries", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    server.routes.set("/Toy.zip", { body: ZIP, truncateAt: 50, truncateTimes: 99 });
    const e = await assertRejects(
      () => ensureDataset(spec(server.url("/Toy.zip")), { ...opts, retries: 2 }),
      DatasetError,
      "the download failed 3 times",
    );
    assert(e.message.includes("--data <the Toy folder in it>"), e.message);
    assertEquals(server.log.length, 3);
    await assertNotComplete(cache);
  });
});

Deno.test("data: a cache that takes no file is said at once, not retried as the network", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    // What a full or read-only cache does to the download's file (root writes through modes).
    await Deno.mkdir(`${cache}/Toy.zip.partial`, { recursive: true });
    const e = await assertRejects(
      () => ensureDataset(spec(server.url("/Toy.zip")), { ...opts, retries: 3 }),
      DatasetError,
    );
    assert(
      e.message.startsWith(`cannot download Toy: cannot write ${cache}/Toy.zip.partial: `) &&
        e.message.endsWith(
          "; free space there (or set EHFT_DATA_CACHE to another folder) and run again",
        ),
      e.message,
    );
    assertEquals(server.log.length, 1);
  });
});

Deno.test("data: a chunked body shorter than the spec's size is refused", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    server.routes.set("/Toy.zip", { body: ZIP.subarray(0, ZIP.length - 10), chunked: true });
    await assertRejects(
      () => ensureDataset(spec(server.url("/Toy.zip")), { ...opts, retries: 1 }),
      DatasetError,
      `of ${ZIP.length} bytes`,
    );
    await assertNotComplete(cache);
  });
});

Deno.test("data: a chunked body of the right size is accepted", async () => {
  await withSetup(async ({ server, opts }) => {
    server.routes.set("/Toy.zip", { body: ZIP, chunked: true });
    const dir = await ensureDataset(spec(server.url("/Toy.zip")), opts);
    assertEquals(await Deno.readTextFile(`${dir}/dev.tsv`), DEV);
  });
});

Deno.test("data: a zip of another size than the spec says is an error", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/Toy.zip");
    await assertRejects(
      () => ensureDataset(spec(url, { size: ZIP.length + 1 }), opts),
      DatasetError,
      `offers ${ZIP.length} bytes, but the expected zip has ${ZIP.length + 1}`,
    );
    assertEquals(server.log.length, 1);
    await assertNotComplete(cache);
  });
});

Deno.test("data: a stalled transfer times out and starts over", async () => {
  await withSetup(async ({ server, opts }) => {
    server.routes.set("/Toy.zip", { body: ZIP, stallAt: 40 });
    const dir = await ensureDataset(spec(server.url("/Toy.zip")), { ...opts, timeoutMs: 1000 });
    assertEquals(server.log.length, 2);
    assertEquals(await Deno.readTextFile(`${dir}/val.jsonl`), VAL);
  });
});

Deno.test("data: 503 is retried", async () => {
  await withSetup(async ({ server, opts }) => {
    server.routes.set("/Toy.zip", { body: ZIP, unavailableTimes: 2 });
    await ensureDataset(spec(server.url("/Toy.zip")), opts);
    assertEquals(server.log.length, 3);
  });
});

Deno.test("data: a wrong row count is an error naming file, expected and found", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const s = spec(server.url("/Toy.zip"));
    s.files[1] = { path: "Toy/val.jsonl", rows: 4 };
    // Without `header`, the header line is a row: 5.
    s.files[2] = { path: "Toy/dev.tsv", rows: 4, header: false };
    const e = await assertRejects(() => ensureDataset(s, opts), DatasetError);
    assert(e.message.includes("Toy/val.jsonl has 3 rows, expected 4"), e.message);
    assert(e.message.includes("Toy/dev.tsv has 5 rows, expected 4"), e.message);
    assert(!e.message.includes("train.jsonl"), e.message);
    assert(!(await exists(`${cache}/Toy`)), "something was extracted");
    await assertNotComplete(cache);
  });
});

Deno.test("data: a file missing from the zip is an error", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const s = spec(server.url("/Toy.zip"));
    s.files.push({ path: "Toy/test.jsonl", rows: 1 });
    await assertRejects(() => ensureDataset(s, opts), DatasetError, "Toy/test.jsonl is missing");
    await assertNotComplete(cache);
  });
});

Deno.test("data: a damaged stored entry fails its CRC-32 check", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const zip = buildZip(CONTENTS, 0).slice();
    // Change one character of the stored train.jsonl: same size, same rows, wrong content.
    const text = new TextDecoder("latin1").decode(zip);
    const at = text.indexOf('"idx":3');
    assert(at > 0);
    zip[at + 6] = "4".charCodeAt(0);
    server.routes.set("/Toy.zip", { body: zip });
    await assertRejects(
      () => ensureDataset(spec(server.url("/Toy.zip"), { size: zip.length }), opts),
      DatasetError,
      "Toy/train.jsonl fails its CRC-32 check",
    );
    await assertNotComplete(cache);
  });
});

Deno.test("data: a zip that is not a zip is an error", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const junk = encoder.encode("<html>maintenance</html>".repeat(10));
    server.routes.set("/Toy.zip", { body: junk });
    await assertRejects(
      () => ensureDataset(spec(server.url("/Toy.zip"), { size: junk.length }), opts),
      DatasetError,
      "the zip is damaged",
    );
    await assertNotComplete(cache);
  });
});

Deno.test("data: zip-slip entries are refused and nothing is written outside", async () => {
  const hostile = [
    "../evil.txt",
    "Toy/../../evil.txt",
    "/tmp/evil.txt",
    "C:/evil.txt",
    "..\\evil.txt",
  ];
  for (const name of hostile) {
    await withSetup(async ({ server, root, cache, opts }) => {
      const zip = buildZip({ ...CONTENTS, [name]: "pwned\n" });
      server.routes.set("/Toy.zip", { body: zip });
      await assertRejects(
        () => ensureDataset(spec(server.url("/Toy.zip"), { size: zip.length }), opts),
        DatasetError,
        `names ${JSON.stringify(name)}, which would point outside its folder`,
      );
      assert(!(await exists(`${root}/evil.txt`)), name);
      assert(!(await exists(`${cache}/Toy`)), name);
      await assertNotComplete(cache);
      assertEquals(await tree(root), ["cache", "cache/Toy.lock"], name);
    });
  }
});

Deno.test("data: a spec naming paths that leave the folder is refused before any request", async () => {
  await withSetup(async ({ server, root, opts }) => {
    const url = server.url("/Toy.zip");
    for (const path of ["../x.jsonl", "/abs.jsonl", "Toy\\x.jsonl", "Toy/.ehft-dataset.json"]) {
      await assertRejects(
        () => ensureDataset(spec(url, { files: [{ path, rows: 1 }] }), opts),
        DatasetError,
        "is not a plain file path",
      );
    }
    await assertRejects(
      () => ensureDataset(spec(url, { name: "../Toy" }), opts),
      DatasetError,
      "is not a plain name",
    );
    await assertRejects(
      () =>
        ensureDataset(
          spec(url, { files: [{ path: "a/x.tsv", rows: 1 }, { path: "b/x.tsv", rows: 1 }] }),
          opts,
        ),
      DatasetError,
      "two files are named x.tsv",
    );
    await assertRejects(
      () => ensureDataset(spec("file:///etc/passwd"), opts),
      DatasetError,
      "is not an http(s) URL",
    );
    assertEquals(server.log.length, 0);
    assertEquals(await tree(root), []);
  });
});

Deno.test("data: offline with the data cached makes zero requests", async () => {
  await withSetup(async ({ server, opts }) => {
    const url = server.url("/Toy.zip");
    const dir = await ensureDataset(spec(url), opts);
    for (const env of [{ EHFT_OFFLINE: "1" }, { HF_HUB_OFFLINE: "1" }]) {
      const o = { ...opts, env: { ...opts.env, ...env } };
      assertEquals(await ensureDataset(spec(url), o), dir);
    }
    assertEquals(await ensureDataset(spec(url), { ...opts, offline: true }), dir);
    assertEquals(server.log.length, 1);
  });
});

Deno.test("data: a complete zip left by an interrupted run is extracted offline", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    await Deno.mkdir(cache, { recursive: true });
    await Deno.writeFile(`${cache}/Toy.zip`, ZIP);
    const dir = await ensureDataset(spec(server.url("/Toy.zip")), { ...opts, offline: true });
    assertEquals(await Deno.readTextFile(`${dir}/train.jsonl`), TRAIN);
    assertEquals(server.log.length, 0);
    assert(!(await exists(`${cache}/Toy.zip`)));
  });
});

Deno.test("data: a zip saved by hand that is not the data is kept and said; a lock that is no file too", async () => {
  // It was removed without a word (the offline message had said to save it there), and a FIFO
  // in the lock's place hung the open.
  await withSetup(async ({ server, cache, opts }) => {
    await Deno.mkdir(cache, { recursive: true });
    const zip = `${cache}/Toy.zip`;
    await Deno.writeFile(zip, ZIP);
    const other = spec(server.url("/Toy.zip"));
    other.files[0] = { path: "Toy/train.jsonl", rows: 8 };
    const e = await assertRejects(
      () => ensureDataset(other, { ...opts, offline: true }),
      DatasetError,
    );
    assert(
      e.message.includes("has 7 rows, expected 8") &&
        e.message.endsWith(`; ${zip} is left as it is: replace it with ${server.url("/Toy.zip")}`),
      e.message,
    );
    assertEquals(await Deno.readFile(zip), ZIP);
    assertEquals(server.log.length, 0);
    await Deno.remove(zip);
    await Deno.remove(`${cache}/Toy.lock`);
    const fifo = await new Deno.Command("mkfifo", { args: [`${cache}/Toy.lock`] }).output();
    assert(fifo.success, "mkfifo");
    await assertRejects(
      () => ensureDataset(spec(server.url("/Toy.zip")), opts),
      DatasetError,
      `${cache}/Toy.lock is not a regular file: remove it, and run again`,
    );
  });
});

Deno.test("data: offline with nothing cached is one clear error naming --data", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/Toy.zip");
    await Deno.mkdir(cache, { recursive: true });
    // A partial file from an earlier run is not a download.
    await Deno.writeFile(`${cache}/Toy.zip.partial`, ZIP.subarray(0, 10));
    const e = await assertRejects(
      () => ensureDataset(spec(url), { ...opts, env: { ...opts.env, EHFT_OFFLINE: "1" } }),
      DatasetError,
    );
    assertEquals(
      e.message,
      `Toy is not in ${cache} and cannot be downloaded (EHFT_OFFLINE is set); download Toy.zip ` +
        `from ${url} yourself, unzip it, and pass --data <the Toy folder in it>`,
    );
    assert(!e.message.includes("\n"));
    assertEquals(server.log.length, 0);
    const e2 = await assertRejects(
      () => ensureDataset(spec(url), { ...opts, env: { ...opts.env, HF_HUB_OFFLINE: "true" } }),
      DatasetError,
      "(HF_HUB_OFFLINE is set)",
    );
    assert(e2.message.includes("--data <the Toy folder in it>"));
    assertEquals(server.log.length, 0);
  });
});

Deno.test("data: offline, a damaged extraction in the cache is named, not called absent", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/Toy.zip");
    const dir = await ensureDataset(spec(url), opts);
    const marker = `${dir}/.ehft-dataset.json`;
    const markerText = await Deno.readTextFile(marker);
    const offline = { ...opts, env: { ...opts.env, EHFT_OFFLINE: "1" } };
    const damaged = async (damage: string) => {
      const e = await assertRejects(() => ensureDataset(spec(url), offline), DatasetNotCachedError);
      assertEquals(
        e.message,
        `Toy in ${cache} is incomplete (${damage}) and cannot be downloaded (EHFT_OFFLINE is ` +
          `set); download Toy.zip from ${url} yourself, unzip it, and pass --data <the Toy ` +
          `folder in it>`,
      );
      assertEquals(e.damage, damage);
    };
    const size = encoder.encode(VAL).length;
    await Deno.writeTextFile(`${dir}/val.jsonl`, "truncated");
    await damaged(`${dir}/val.jsonl has 9 bytes, its marker records ${size}`);
    await Deno.remove(`${dir}/val.jsonl`);
    await damaged(`${dir}/val.jsonl is missing`);
    await Deno.writeTextFile(marker, "");
    await damaged(`${marker} is damaged (Unexpected end of JSON input)`);
    await Deno.writeTextFile(marker, '{"files": null}');
    await damaged(`${marker} is not a marker this toolkit wrote`);
    await Deno.writeTextFile(marker, markerText.replace('"rows": 7', '"rows": 6'));
    await damaged(`${marker} records other files than this version of ehft reads`);
    await Deno.remove(marker);
    await damaged(`${dir} has no marker .ehft-dataset.json (an unpacking that did not finish)`);
    // An empty folder is no damage: nothing is there.
    await Deno.remove(dir, { recursive: true });
    await Deno.mkdir(dir);
    const e = await assertRejects(() => ensureDataset(spec(url), offline), DatasetNotCachedError);
    assert(e.message.startsWith(`Toy is not in ${cache} and cannot be downloaded`), e.message);
    assertEquals(e.damage, undefined);
    // Online, each of them is downloaded again (the test above).
    assertEquals(server.log.length, 1);
  });
});

Deno.test("data: an unreachable server with nothing cached is the same clear error", async () => {
  await withSetup(async ({ cache, opts }) => {
    const closed = new ZipServer();
    const url = closed.url("/Toy.zip");
    await closed.close();
    const e = await assertRejects(() => ensureDataset(spec(url), opts), DatasetError);
    assert(e.message.startsWith(`Toy is not in ${cache} and cannot be downloaded (`), e.message);
    assert(e.message.includes("cannot be reached"), e.message);
    assert(
      e.message.endsWith("yourself, unzip it, and pass --data <the Toy folder in it>"),
      e.message,
    );
    await assertNotComplete(cache);
  });
});

Deno.test("data: HTTP 404 is a clear error", async () => {
  await withSetup(async ({ server, cache, opts }) => {
    const url = server.url("/missing/Toy.zip");
    const e = await assertRejects(
      () => ensureDataset(spec(url), opts),
      DatasetError,
      `cannot download Toy: ${url} answered HTTP 404 Not Found`,
    );
    assert(e.message.includes("--data <the Toy folder in it>"), e.message);
    assertEquals(server.log.length, 1); // not retried
    await assertNotComplete(cache);
  });
});

Deno.test("data: progress is reported, and quiet keeps stderr silent", async () => {
  const written: string[] = [];
  const original = Deno.stderr.writeSync;
  Deno.stderr.writeSync = (p: Uint8Array) => {
    written.push(decoder.decode(p));
    return p.length;
  };
  try {
    await withSetup(async ({ server, cache, opts }) => {
      const url = server.url("/Toy.zip");
      const reports: DatasetProgress[] = [];
      await ensureDataset(spec(url), { ...opts, onProgress: (p) => reports.push({ ...p }) });
      assert(reports.length >= 3, `${reports.length} reports`);
      assertEquals(reports[0], { name: "Toy", bytes: 0, total: ZIP.length, done: false });
      assertEquals(reports.at(-1), {
        name: "Toy",
        bytes: ZIP.length,
        total: ZIP.length,
        done: true,
      });
      for (let i = 1; i < reports.length; i++) assert(reports[i].bytes >= reports[i - 1].bytes);
      assertEquals(written, []);

      // Not quiet: the default progress and one line saying where the data went.
      await Deno.remove(`${cache}/Toy`, { recursive: true });
      await ensureDataset(spec(url), { ...opts, quiet: false });
      const text = written.join("");
      const mb = (ZIP.length / 1e6).toFixed(1);
      assert(text.includes(`ehft: downloaded Toy (${mb} MB) to ${cache}/Toy\n`), text);
      assert(text.includes("ehft: downloading Toy"), text);
    });
  } finally {
    Deno.stderr.writeSync = original;
  }
});

Deno.test("data: dataCacheDir follows EHFT_DATA_CACHE, XDG_CACHE_HOME, HOME", () => {
  assertEquals(
    dataCacheDir({ EHFT_DATA_CACHE: "/d/", XDG_CACHE_HOME: "/x", HOME: "/h" }),
    "/d",
  );
  assertEquals(dataCacheDir({ EHFT_DATA_CACHE: "~/d", HOME: "/h" }), "/h/d");
  assertEquals(
    dataCacheDir({ EHFT_DATA_CACHE: "", XDG_CACHE_HOME: "/x", HOME: "/h" }),
    "/x/ehft/data",
  );
  assertEquals(dataCacheDir({ HOME: "/h/" }), "/h/.cache/ehft/data");
});

Deno.test("data: row counting and entry-name rules", () => {
  assertEquals(countRows(encoder.encode("")), 0);
  assertEquals(countRows(encoder.encode("a\nb")), 2);
  assertEquals(countRows(encoder.encode("a\r\n\r\n \t\nb\n\n")), 2);
  assertEquals(countRows(encoder.encode("h\na\nb\n"), true), 2);
  assertEquals(countRows(encoder.encode("h\n"), true), 0);
  assertEquals(countRows(encoder.encode("\ufeff{}\n"), false), 1);
  for (const ok of ["BoolQ/train.jsonl", "QNLI/dev.tsv", "a..b/c", "__MACOSX/._x"]) {
    assert(isSafeEntryName(ok), ok);
  }
  for (const bad of ["", "../x", "a/../../x", "a/..", "/x", "C:x", "a\\b", "a\0b"]) {
    assert(!isSafeEntryName(bad), bad);
  }
});
