// Paths and names that come from outside the program — hub ids, revisions, the shard names of an
// index file, the links inside Hugging Face's cache — can never make the loader read or write
// outside the cache folder (or, for a local model folder, outside that folder). A loopback
// imitation of the hub (HF_ENDPOINT) serves the files; every test has its own cache folder and
// an `outside` folder beside it that must stay untouched.

import { createHash } from "node:crypto";
import { checkRevision, HubError, resolveModel, type ResolveModelOptions } from "../model/hub.ts";
import { openSafetensors, writeSafetensors } from "../model/safetensors.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";

const ID = "test-org/tiny";
const FOLDER = "models--test-org--tiny";
const COMMIT = "89abcdef0123456789abcdef0123456789abcdef";
const CONFIG = '{"model_type": "bert", "hidden_size": 8}';
const TOKENIZER = '{"version": "1.0", "model": {"type": "WordPiece"}}';

const encoder = new TextEncoder();
const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

/** The hub at `/<id>/resolve/<revision>/<file>`: HEAD and GET, ETag the sha256 of the file. */
class FakeHub {
  readonly files = new Map<string, Map<string, Uint8Array>>();
  readonly requests: string[] = [];
  private server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => this.answer(req),
  );

  get endpoint(): string {
    return `http://127.0.0.1:${this.server.addr.port}`;
  }

  add(id: string, files: Record<string, string | Uint8Array>): void {
    this.files.set(
      id,
      new Map(
        Object.entries(files).map(([k, v]) => [k, typeof v === "string" ? encoder.encode(v) : v]),
      ),
    );
  }

  private answer(req: Request): Response {
    const path = decodeURIComponent(new URL(req.url).pathname);
    this.requests.push(`${req.method} ${path}`);
    const m = /^\/(.+?)\/resolve\/([^/]+)\/(.+)$/.exec(new URL(req.url).pathname);
    const repo = m && this.files.get(m[1]);
    if (!m || !repo) {
      return new Response(null, { status: 401, headers: { "x-error-code": "RepoNotFound" } });
    }
    const headers = new Headers({ "x-repo-commit": COMMIT });
    const data = repo.get(decodeURIComponent(m[3]));
    if (!data) {
      headers.set("x-error-code", "EntryNotFound");
      return new Response(null, { status: 404, headers });
    }
    headers.set("etag", `"${sha256(data)}"`);
    headers.set("content-length", String(data.length));
    return new Response(req.method === "HEAD" ? null : data as Uint8Array<ArrayBuffer>, {
      headers,
    });
  }

  async close(): Promise<void> {
    await this.server.shutdown();
  }
}

interface Setup {
  hub: FakeHub;
  tmp: string;
  cache: string;
  /** A folder beside the cache: nothing may ever be read from or written to it. */
  outside: string;
  repoDir: string;
  opts: ResolveModelOptions;
  offline: ResolveModelOptions;
}

async function withHub(fn: (s: Setup) => Promise<void>): Promise<void> {
  const hub = new FakeHub();
  const tmp = await Deno.makeTempDir({ prefix: "ehft_paths_" });
  const cache = `${tmp}/cache`;
  const outside = `${tmp}/outside`;
  await Deno.mkdir(outside);
  const env = {
    HF_HUB_CACHE: cache,
    HF_ENDPOINT: hub.endpoint,
    HOME: `${tmp}/home`,
    HF_HOME: `${tmp}/hf_home`,
  };
  const opts: ResolveModelOptions = { env, retryDelayMs: 0, retries: 0, quiet: true };
  const offline = { ...opts, env: { ...env, HF_HUB_OFFLINE: "1" } };
  try {
    await fn({ hub, tmp, cache, outside, repoDir: `${cache}/${FOLDER}`, opts, offline });
  } finally {
    await hub.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

async function listTree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const rel = prefix + e.name;
      if (e.isDirectory) out.push(...await listTree(`${dir}/${e.name}`, rel + "/"));
      else out.push(rel);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

function standardFiles(): Record<string, string | Uint8Array> {
  return {
    "config.json": CONFIG,
    "tokenizer.json": TOKENIZER,
    "model.safetensors": new Uint8Array(1000).map((_, i) => i),
  };
}

/** A rejection that is a one-line HubError containing `part`. */
async function refused(fn: () => Promise<unknown>, part: string): Promise<string> {
  const e = await assertRejects(fn, HubError, part);
  assert(!e.message.includes("\n"), e.message);
  return e.message;
}

Deno.test("paths: hub ids and revisions never become paths (no request, nothing written)", async () => {
  await withHub(async ({ hub, tmp, opts }) => {
    hub.add(ID, standardFiles());
    // Names no folder has (relative ones resolve against the working folder, e.g. /tmp in CI).
    const ids = [
      "../ehft-no-such-x",
      "org/../../ehft-no-such-x",
      "/ehft-no-such-dir/x",
      "a/b/c",
      "org/ehft-no-such-x/..",
      "./ehft-no-such-x",
    ];
    for (const id of ids) {
      await refused(() => resolveModel(id, opts), "is neither a local directory nor");
    }
    const revisions = ["../../etc", "/etc", "a/../b", "..", ".hidden", "main/..", "a\\b", "a b"];
    for (const revision of revisions) {
      await refused(() => resolveModel(ID, { ...opts, revision }), "invalid revision");
      assertThrows(() => checkRevision(revision), HubError, "invalid revision");
    }
    for (const revision of ["main", "v1.0", "refs/pr/1", COMMIT]) checkRevision(revision);
    assertEquals(hub.requests, [], "no request for an invalid id or revision");
    assertEquals(await listTree(tmp), [], "nothing written");
    // A revision means nothing for a local folder: an error, not silently ignored.
    await Deno.mkdir(`${tmp}/local`);
    await refused(
      () => resolveModel(`${tmp}/local`, { ...opts, revision: "v1.0" }),
      `${tmp}/local is a local directory: a revision ("v1.0") applies only to hub ids`,
    );
  });
});

Deno.test("paths: shard names of an index file stay inside the snapshot (hub and local)", async () => {
  await withHub(async ({ hub, tmp, cache, outside }) => {
    await Deno.writeTextFile(`${outside}/evil.safetensors`, "x");
    const shards = [
      "../../outside/evil.safetensors",
      `${outside}/evil.safetensors`,
      "sub/evil.safetensors",
      "..\\evil.safetensors",
      ".safetensors",
      "evil.bin",
    ];
    for (const [i, shard] of shards.entries()) {
      const id = `test-org/hostile-${i}`;
      hub.add(id, {
        "config.json": CONFIG,
        "tokenizer.json": TOKENIZER,
        "model.safetensors.index.json": JSON.stringify({ weight_map: { "w": shard } }),
      });
      const env = { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.endpoint, HOME: `${tmp}/home` };
      await refused(
        () => resolveModel(id, { env, quiet: true, retryDelayMs: 0 }),
        `names the shard ${JSON.stringify(shard)}, which is not a plain .safetensors file name`,
      );
      assert(!hub.requests.some((r) => r.includes("evil")), hub.requests.join("\n"));
    }
    // A local model folder: the reader takes shards from the index's own folder only.
    const local = `${tmp}/local`;
    await Deno.mkdir(local);
    await writeSafetensors(`${outside}/real.safetensors`, {
      w: { dtype: "F32", shape: [1], data: new Float32Array([1]) },
    });
    for (const shard of ["../outside/real.safetensors", `${outside}/real.safetensors`, ".."]) {
      await Deno.writeTextFile(
        `${local}/model.safetensors.index.json`,
        JSON.stringify({ weight_map: { "w": shard } }),
      );
      const e = await assertRejects(() => openSafetensors(local), Error, "not a plain file name");
      assert(!e.message.includes("\n"), e.message);
    }
    assertEquals(await listTree(outside), ["evil.safetensors", "real.safetensors"]);
  });
});

Deno.test("paths: a snapshot entry linking outside the cache is never read", async () => {
  await withHub(async ({ hub, repoDir, outside, opts, offline }) => {
    hub.add(ID, standardFiles());
    const snapshot = await resolveModel(ID, opts);
    assertEquals(snapshot, `${repoDir}/snapshots/${COMMIT}`);
    assertEquals(await resolveModel(ID, offline), snapshot, "a sound cache resolves offline");
    // config.json (or any other entry the loader may read) replaced by a link leading outside.
    await Deno.writeTextFile(`${outside}/config.json`, CONFIG);
    for (const name of ["config.json", "tokenizer_config.json"]) {
      await Deno.remove(`${snapshot}/${name}`).catch(() => {});
      await Deno.symlink(`${outside}/config.json`, `${snapshot}/${name}`);
      for (const o of [offline, opts]) {
        const message = await refused(() => resolveModel(ID, o), "leads outside the cache folder");
        assert(message.includes(`the cached ${name} (${snapshot}/${name})`), message);
      }
      await Deno.remove(`${snapshot}/${name}`);
      if (name === "config.json") {
        await Deno.symlink(`../../blobs/${sha256(encoder.encode(CONFIG))}`, `${snapshot}/${name}`);
      }
    }
    assertEquals(await resolveModel(ID, offline), snapshot, "repaired");
    // The snapshot folder itself a link leading outside.
    await Deno.rename(snapshot, `${outside}/snapshot`);
    await Deno.symlink(`${outside}/snapshot`, snapshot);
    await refused(() => resolveModel(ID, offline), "the cached snapshot folder");
    // refs/main a link to a file outside (it names a commit).
    await Deno.writeTextFile(`${outside}/ref`, COMMIT);
    await Deno.remove(`${repoDir}/refs/main`);
    await Deno.symlink(`${outside}/ref`, `${repoDir}/refs/main`);
    await refused(() => resolveModel(ID, offline), "the cached ref main");
    await refused(() => resolveModel(ID, opts), "the cached ref main");
    assertEquals(await Deno.readTextFile(`${outside}/ref`), COMMIT, "never written through");
  });
});

Deno.test("paths: folders and files of the cache linking outside are never written through", async () => {
  const cases: {
    what: string;
    /** Makes the hostile link, given the repository folder and the outside folder. */
    plant: (repoDir: string, outside: string, cache: string) => Promise<void>;
    message: string;
  }[] = [
    {
      what: "the repository folder",
      plant: async (repoDir, outside) => {
        await Deno.mkdir(`${outside}/repo`);
        await Deno.symlink(`${outside}/repo`, repoDir);
      },
      message: "leads outside the cache folder",
    },
    {
      what: "blobs/",
      plant: async (repoDir, outside) => {
        await Deno.mkdir(`${outside}/blobs`);
        await Deno.symlink(`${outside}/blobs`, `${repoDir}/blobs`);
      },
      message: "the cached blobs folder",
    },
    {
      what: "snapshots/",
      plant: async (repoDir, outside) => {
        await Deno.mkdir(`${outside}/snapshots`);
        await Deno.symlink(`${outside}/snapshots`, `${repoDir}/snapshots`);
      },
      message: "the cached snapshot folder",
    },
    {
      what: "refs/",
      plant: async (repoDir, outside) => {
        await Deno.mkdir(`${outside}/refs`);
        await Deno.symlink(`${outside}/refs`, `${repoDir}/refs`);
      },
      message: "the cached refs folder",
    },
    {
      what: "a blob",
      plant: async (repoDir, outside) => {
        await Deno.writeTextFile(`${outside}/victim`, CONFIG);
        await Deno.mkdir(`${repoDir}/blobs`);
        await Deno.symlink(
          `${outside}/victim`,
          `${repoDir}/blobs/${sha256(encoder.encode(CONFIG))}`,
        );
      },
      message: "the cached blob of config.json",
    },
    {
      what: "a partial download",
      plant: async (repoDir, outside) => {
        await Deno.writeTextFile(`${outside}/victim`, "keep");
        await Deno.mkdir(`${repoDir}/blobs`);
        await Deno.symlink(
          `${outside}/victim`,
          `${repoDir}/blobs/${sha256(encoder.encode(CONFIG))}.incomplete`,
        );
      },
      message: "the cached partial download of config.json",
    },
    {
      what: "a lock file",
      plant: async (_repoDir, outside, cache) => {
        const locks = `${cache}/.locks/${FOLDER}`;
        await Deno.mkdir(locks, { recursive: true });
        await Deno.symlink(
          `${outside}/created-through-link`,
          `${locks}/${sha256(encoder.encode(CONFIG))}.lock`,
        );
      },
      message: "the cached lock of config.json",
    },
    {
      what: ".locks/",
      plant: async (_repoDir, outside, cache) => {
        await Deno.mkdir(`${outside}/locks`);
        await Deno.symlink(`${outside}/locks`, `${cache}/.locks`);
      },
      message: "the cached locks folder",
    },
  ];
  for (const c of cases) {
    await withHub(async ({ hub, repoDir, cache, outside, opts }) => {
      hub.add(ID, standardFiles());
      await Deno.mkdir(repoDir, { recursive: true });
      if (c.what === "the repository folder") await Deno.remove(repoDir);
      await c.plant(repoDir, outside, cache);
      const before = await listTree(outside);
      const message = await refused(() => resolveModel(ID, opts), c.message);
      assert(message.startsWith(`${ID}: `), `${c.what}: ${message}`);
      assertEquals(await listTree(outside), before, `${c.what}: outside untouched`);
      for (const f of before) {
        const text = await Deno.readTextFile(`${outside}/${f}`);
        assert(text === CONFIG || text === "keep", `${c.what}: ${f} rewritten`);
      }
    });
  }
});

Deno.test("paths: a cache folder that is itself a link works (its real place is the root)", async () => {
  await withHub(async ({ hub, tmp, outside, opts }) => {
    hub.add(ID, standardFiles());
    await Deno.mkdir(`${tmp}/real-cache`);
    const env = { ...opts.env, HF_HUB_CACHE: `${tmp}/linked-cache` };
    await Deno.symlink(`${tmp}/real-cache`, `${tmp}/linked-cache`);
    const dir = await resolveModel(ID, { ...opts, env });
    assertEquals(dir, `${tmp}/linked-cache/${FOLDER}/snapshots/${COMMIT}`);
    assertEquals(await Deno.readTextFile(`${dir}/config.json`), CONFIG);
    assertEquals(
      await resolveModel(ID, { ...opts, env: { ...env, HF_HUB_OFFLINE: "1" } }),
      dir,
    );
    assertEquals(await listTree(outside), []);
  });
});
