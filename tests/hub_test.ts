// The hub downloader against a loopback imitation of the Hugging Face hub: `/<id>/resolve/<rev>/
// <file>` with X-Repo-Commit and ETag (git blob sha1 for regular files), LFS files redirected
// (302) to a second "CDN" server with X-Linked-Etag (sha256) and X-Linked-Size, HEAD, GET and
// Range. Every test has its own servers, cache folder and injected environment.

import { createHash } from "node:crypto";
import {
  type DownloadProgress,
  hubCacheDir,
  HubError,
  isHubId,
  repoFolderName,
  resolveModel,
  type ResolveModelOptions,
} from "../model/hub.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { captureStderr } from "./stderr.ts";

const encoder = new TextEncoder();

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

function gitBlobSha1(data: Uint8Array): string {
  return createHash("sha1").update(`blob ${data.length}\0`).update(data).digest("hex");
}

function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const isLfs = (file: string) => file.endsWith(".safetensors") || file.endsWith(".bin");

interface RepoSpec {
  commit: string;
  files: Record<string, Uint8Array | string>;
  /** Other revisions (branches, refs/pr/N) and their commits; `main` is always `commit`. */
  refs?: Record<string, string>;
  /** Private: only this bearer token may read it (401 RepoNotFound otherwise). */
  token?: string;
  /** Gated: 403 GatedRepo for everyone. */
  gated?: boolean;
  /** Send this ETag / X-Linked-Etag instead of the real one (a hostile server). */
  etag?: Record<string, string>;
  /** Send this X-Repo-Commit instead of the real one (a hostile server). */
  commitHeader?: string;
  /** The repository was renamed: answer with a bare relative 307 to this id. */
  movedTo?: string;
}

interface Logged {
  server: "hub" | "cdn";
  method: string;
  path: string;
  range: string | null;
  auth: string | null;
}

class MockHub {
  readonly repos = new Map<string, RepoSpec>();
  readonly log: Logged[] = [];
  /** CDN faults by sha256: send this many bytes of the next GET, then close the connection. */
  readonly truncateOnce = new Map<string, number>();
  /** Like truncateOnce, but the connection then stays open and silent. */
  readonly stallOnce = new Map<string, number>();
  /** CDN serves a damaged body (same length) for these sha256s. */
  readonly corrupt = new Set<string>();
  ignoreRange = false;
  /** A path prefix the hub lives under (a mirror at https://host/prefix). */
  prefix = "";
  /**
   * Answer regular files with a relative 307 (carrying X-Repo-Commit but no ETag) to
   * `/api/resolve-cache/models/<id>/<commit>/<file>`, as the real hub does for some files.
   */
  resolveCache = false;
  /** Called on every CDN GET before it is answered. */
  onCdnGet?: (sha: string, range: string | null) => void | Promise<void>;
  private readonly blobs = new Map<string, Uint8Array>();
  private readonly stalled: ReadableStreamDefaultController<Uint8Array>[] = [];
  private hub!: Deno.HttpServer<Deno.NetAddr>;
  private cdn!: Deno.HttpServer<Deno.NetAddr>;

  static start(): MockHub {
    const m = new MockHub();
    const opts = { hostname: "127.0.0.1", port: 0, onListen() {} };
    m.hub = Deno.serve(opts, (req) => m.serveHub(req));
    m.cdn = Deno.serve(opts, (req) => m.serveCdn(req));
    return m;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.hub.addr.port}`;
  }

  get endpoint(): string {
    return this.origin + this.prefix;
  }

  addRepo(id: string, spec: RepoSpec): void {
    this.repos.set(id, spec);
    for (const [name, content] of Object.entries(spec.files)) {
      const data = typeof content === "string" ? encoder.encode(content) : content;
      spec.files[name] = data;
      if (isLfs(name)) this.blobs.set(sha256(data), data);
    }
  }

  requests(server?: "hub" | "cdn", method?: string): Logged[] {
    return this.log.filter((r) =>
      (!server || r.server === server) && (!method || r.method === method)
    );
  }

  async close(): Promise<void> {
    for (const c of this.stalled) {
      try {
        c.close();
      } catch {
        // Already cancelled by the client.
      }
    }
    await this.hub.shutdown();
    await this.cdn.shutdown();
  }

  private record(server: "hub" | "cdn", req: Request): void {
    this.log.push({
      server,
      method: req.method,
      path: new URL(req.url).pathname,
      range: req.headers.get("range"),
      auth: req.headers.get("authorization"),
    });
  }

  private serveHub(req: Request): Response {
    this.record("hub", req);
    let path = new URL(req.url).pathname;
    if (!path.startsWith(this.prefix + "/")) return new Response("no", { status: 404 });
    path = path.slice(this.prefix.length);
    const cached = /^\/api\/resolve-cache\/models\/(.+)\/([0-9a-f]{40})\/([^/]+)$/.exec(path);
    if (cached) {
      const data = this.repos.get(cached[1])?.files[cached[3]] as Uint8Array | undefined;
      if (!data) return new Response(null, { status: 404 });
      const headers = new Headers({ "x-repo-commit": cached[2], etag: `"${gitBlobSha1(data)}"` });
      return this.serveBytes(req, data, headers);
    }
    const m = /^\/(.+?)\/resolve\/([^/]+)\/([^/]+)$/.exec(path);
    if (!m) return new Response("bad path", { status: 400 });
    const [id, rev, file] = [m[1], decodeURIComponent(m[2]), decodeURIComponent(m[3])];
    const repo = this.repos.get(id);
    const notFound = { "x-error-code": "RepoNotFound", "x-error-message": "Repository not found" };
    if (!repo) return new Response(null, { status: 401, headers: notFound });
    if (repo.movedTo) {
      const location = `${this.prefix}/${repo.movedTo}/resolve/${m[2]}/${m[3]}`;
      return new Response(null, { status: 307, headers: { location } });
    }
    if (repo.token && req.headers.get("authorization") !== `Bearer ${repo.token}`) {
      return new Response(null, { status: 401, headers: notFound });
    }
    if (repo.gated) {
      return new Response(null, {
        status: 403,
        headers: { "x-error-code": "GatedRepo", "x-error-message": "Access restricted" },
      });
    }
    const refs: Record<string, string> = { main: repo.commit, ...repo.refs };
    const commit = refs[rev] ?? (Object.values(refs).includes(rev) ? rev : undefined);
    if (!commit) {
      return new Response(null, { status: 404, headers: { "x-error-code": "RevisionNotFound" } });
    }
    const headers = new Headers({ "x-repo-commit": repo.commitHeader ?? commit });
    const data = repo.files[file] as Uint8Array | undefined;
    if (!data) {
      headers.set("x-error-code", "EntryNotFound");
      return new Response(null, { status: 404, headers });
    }
    if (isLfs(file)) {
      const sha = sha256(data);
      headers.set("location", `http://127.0.0.1:${this.cdn.addr.port}/cdn/${sha}?sig=x`);
      headers.set("x-linked-etag", `"${repo.etag?.[file] ?? sha}"`);
      headers.set("x-linked-size", String(data.length));
      headers.set("etag", `W/"redirect-etag"`);
      return new Response(null, { status: 302, headers });
    }
    if (this.resolveCache) {
      headers.set("location", `${this.prefix}/api/resolve-cache/models/${id}/${commit}/${file}`);
      return new Response(null, { status: 307, headers });
    }
    headers.set("etag", `"${repo.etag?.[file] ?? gitBlobSha1(data)}"`);
    return this.serveBytes(req, data, headers);
  }

  private async serveCdn(req: Request): Promise<Response> {
    this.record("cdn", req);
    const sha = /^\/cdn\/([0-9a-f]{64})$/.exec(new URL(req.url).pathname)?.[1];
    const original = sha && this.blobs.get(sha);
    if (!sha || !original) return new Response("no", { status: 404 });
    if (req.method === "GET") await this.onCdnGet?.(sha, req.headers.get("range"));
    let data = original;
    if (this.corrupt.has(sha)) {
      data = original.slice();
      data[data.length >> 1] ^= 0x40;
    }
    return this.serveBytes(req, data, new Headers({ etag: `"${sha}"` }), sha);
  }

  private serveBytes(req: Request, data: Uint8Array, headers: Headers, sha?: string): Response {
    headers.set("accept-ranges", "bytes");
    headers.set("content-type", "application/octet-stream");
    let status = 200;
    let body = data;
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
    if (range && !this.ignoreRange) {
      const start = Number(range[1]);
      if (start >= data.length) {
        headers.set("content-range", `bytes */${data.length}`);
        return new Response(null, { status: 416, headers });
      }
      status = 206;
      body = data.subarray(start);
      headers.set("content-range", `bytes ${start}-${data.length - 1}/${data.length}`);
    }
    headers.set("content-length", String(body.length));
    if (req.method === "HEAD") return new Response(null, { status, headers });
    const cut = sha === undefined ? undefined : this.truncateOnce.get(sha);
    const stall = sha === undefined ? undefined : this.stallOnce.get(sha);
    if (cut !== undefined || stall !== undefined) {
      this.truncateOnce.delete(sha!);
      this.stallOnce.delete(sha!);
      const part = body.subarray(0, cut ?? stall);
      const stalled = this.stalled;
      // Fewer bytes than Content-Length, then a closed (or silent) connection.
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(part);
          if (cut !== undefined) c.close();
          else stalled.push(c);
        },
      });
      return new Response(stream, { status, headers });
    }
    return new Response(body as Uint8Array<ArrayBuffer>, { status, headers });
  }
}

interface Setup {
  hub: MockHub;
  tmp: string;
  cache: string;
  env: Record<string, string>;
  opts: ResolveModelOptions;
  progress: DownloadProgress[];
}

/** Servers, a temporary cache and the environment pointing at them; cleaned up afterwards. */
async function withHub(fn: (s: Setup) => Promise<void>): Promise<void> {
  const hub = MockHub.start();
  const tmp = await Deno.makeTempDir({ prefix: "ehft_hub_" });
  const cache = `${tmp}/cache`;
  const env: Record<string, string> = {
    HF_HUB_CACHE: cache,
    HF_ENDPOINT: hub.endpoint,
    HOME: `${tmp}/home`,
    HF_HOME: `${tmp}/hf_home`,
  };
  const progress: DownloadProgress[] = [];
  const opts: ResolveModelOptions = {
    env,
    retryDelayMs: 0,
    onProgress: (p) => progress.push(p),
  };
  try {
    await fn({ hub, tmp, cache, env, opts, progress });
  } finally {
    await hub.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

const ID = "test-org/tiny-bert";
const FOLDER = "models--test-org--tiny-bert";
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const CONFIG = '{"model_type": "bert", "hidden_size": 8}';
const TOKENIZER = '{"version": "1.0", "model": {"type": "WordPiece"}}';
const WEIGHTS = bytes(300_000, 7);

function standardRepo(extra: Record<string, Uint8Array | string> = {}): RepoSpec {
  return {
    commit: COMMIT,
    files: {
      "config.json": CONFIG,
      "tokenizer.json": TOKENIZER,
      "model.safetensors": WEIGHTS,
      ...extra,
    },
  };
}

async function listTree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix + e.name;
    if (e.isDirectory) out.push(...await listTree(`${dir}/${e.name}`, rel + "/"));
    else out.push(rel);
  }
  return out.sort();
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function assertSnapshotFile(snapshot: string, file: string, content: Uint8Array | string) {
  const data = typeof content === "string" ? encoder.encode(content) : content;
  const etag = isLfs(file) ? sha256(data) : gitBlobSha1(data);
  const path = `${snapshot}/${file}`;
  assert((await Deno.lstat(path)).isSymlink, `${file} is not a symlink`);
  assertEquals(await Deno.readLink(path), `../../blobs/${etag}`, `${file} link`);
  assertEquals(await Deno.readFile(path), data, `${file} content`);
}

Deno.test("hub: first download creates Hugging Face's cache layout", async () => {
  await withHub(async ({ hub, cache, opts, progress }) => {
    hub.addRepo(ID, standardRepo());
    const dir = await resolveModel(ID, opts);
    const repoDir = `${cache}/${FOLDER}`;
    assertEquals(dir, `${repoDir}/snapshots/${COMMIT}`);
    const blobs = [
      gitBlobSha1(encoder.encode(CONFIG)),
      gitBlobSha1(encoder.encode(TOKENIZER)),
      sha256(WEIGHTS),
    ];
    assertEquals(
      await listTree(repoDir),
      [
        ...blobs.map((b) => `blobs/${b}`),
        `.no_exist/${COMMIT}/tokenizer_config.json`,
        "refs/main",
        `snapshots/${COMMIT}/config.json`,
        `snapshots/${COMMIT}/model.safetensors`,
        `snapshots/${COMMIT}/tokenizer.json`,
      ].sort(),
    );
    assertEquals(await Deno.readTextFile(`${repoDir}/refs/main`), COMMIT); // no newline
    await assertSnapshotFile(dir, "config.json", CONFIG);
    await assertSnapshotFile(dir, "tokenizer.json", TOKENIZER);
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
    // The lock files live where huggingface_hub keeps its own.
    assert(await exists(`${cache}/.locks/${FOLDER}/${sha256(WEIGHTS)}.lock`));
    // The LFS file came from the CDN, fetched at the pinned commit's redirect target.
    const cdnGets = hub.requests("cdn", "GET");
    assertEquals(cdnGets.map((r) => r.path), [`/cdn/${sha256(WEIGHTS)}`]);
    assertEquals(cdnGets[0].range, null);
    // Progress: monotonic, with the size the server stated, ending in one `done`.
    const weights = progress.filter((p) => p.file === "model.safetensors");
    assert(weights.length >= 2, "too few progress reports");
    for (let i = 1; i < weights.length; i++) assert(weights[i].bytes >= weights[i - 1].bytes);
    const last = weights.at(-1)!;
    assertEquals([last.done, last.bytes, last.total, last.repo], [
      true,
      WEIGHTS.length,
      WEIGHTS.length,
      ID,
    ]);
    assertEquals(weights.filter((p) => p.done).length, 1);
    assertEquals(progress.filter((p) => p.done).map((p) => p.file).sort(), [
      "config.json",
      "model.safetensors",
      "tokenizer.json",
    ]);
  });
});

Deno.test("hub: a second resolve downloads nothing", async () => {
  await withHub(async ({ hub, opts, progress }) => {
    hub.addRepo(ID, standardRepo());
    const first = await resolveModel(ID, opts);
    const before = hub.log.length;
    const reports = progress.length;
    const second = await resolveModel(ID, opts);
    assertEquals(second, first);
    const after = hub.log.slice(before);
    assert(after.length > 0 && after.every((r) => r.method === "HEAD" && r.server === "hub"));
    assertEquals(progress.length, reports);
  });
});

Deno.test("hub: concurrent resolves download each file once", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, standardRepo());
    let both: string[] = [];
    const said = await captureStderr(async () => {
      const loud = { ...opts, quiet: false, onProgress: () => {} };
      both = await Promise.all([resolveModel(ID, loud), resolveModel(ID, loud)]);
    });
    const [a, b] = both;
    assertEquals(a, b);
    assertEquals(hub.requests("cdn", "GET").length, 1);
    await assertSnapshotFile(a, "model.safetensors", WEIGHTS);
    // The other's wait for the file is said.
    assert(said.includes("waiting for another process's download of model.safetensors"), said);
  });
});

Deno.test("hub: a blob Python already downloaded is reused", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const blobs = `${cache}/${FOLDER}/blobs`;
    await Deno.mkdir(blobs, { recursive: true });
    await Deno.writeFile(`${blobs}/${sha256(WEIGHTS)}`, WEIGHTS);
    const dir = await resolveModel(ID, opts);
    assertEquals(hub.requests("cdn").length, 0);
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
  });
});

Deno.test("hub: sharded checkpoints download the index and every shard", async () => {
  await withHub(async ({ hub, opts }) => {
    const shard1 = bytes(70_001, 11);
    const shard2 = bytes(50_003, 12);
    const index = JSON.stringify({
      metadata: { total_size: shard1.length + shard2.length },
      weight_map: {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "c.weight": "model-00001-of-00002.safetensors",
      },
    });
    hub.addRepo(ID, {
      commit: COMMIT,
      files: {
        "config.json": CONFIG,
        "tokenizer.json": TOKENIZER,
        "model.safetensors.index.json": index,
        "model-00001-of-00002.safetensors": shard1,
        "model-00002-of-00002.safetensors": shard2,
      },
    });
    const dir = await resolveModel(ID, opts);
    await assertSnapshotFile(dir, "model.safetensors.index.json", index);
    await assertSnapshotFile(dir, "model-00001-of-00002.safetensors", shard1);
    await assertSnapshotFile(dir, "model-00002-of-00002.safetensors", shard2);
    assert(!(await exists(`${dir}/model.safetensors`)));
    assertEquals(hub.requests("cdn", "GET").length, 2);
    // Offline, the sharded snapshot counts as complete.
    const offline = await resolveModel(ID, { ...opts, env: { ...opts.env, HF_HUB_OFFLINE: "1" } });
    assertEquals(offline, dir);
  });
});

Deno.test("hub: without tokenizer.json, vocab.txt (or vocab.json + merges.txt) is used", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, {
      commit: COMMIT,
      files: {
        "config.json": CONFIG,
        "vocab.txt": "[PAD]\n[UNK]\nhello\n",
        "tokenizer_config.json": '{"do_lower_case": true}',
        "model.safetensors": WEIGHTS,
      },
    });
    const dir = await resolveModel(ID, opts);
    await assertSnapshotFile(dir, "vocab.txt", "[PAD]\n[UNK]\nhello\n");
    await assertSnapshotFile(dir, "tokenizer_config.json", '{"do_lower_case": true}');
    assert(!(await exists(`${dir}/tokenizer.json`)));
    assert(await exists(`${cache}/${FOLDER}/.no_exist/${COMMIT}/tokenizer.json`));

    const bpe = "test-org/tiny-roberta";
    hub.addRepo(bpe, {
      commit: COMMIT,
      files: {
        "config.json": CONFIG,
        "vocab.json": '{"a": 0}',
        "merges.txt": "#version: 0.2\na b\n",
        "model.safetensors": WEIGHTS,
      },
    });
    const bpeDir = await resolveModel(bpe, opts);
    await assertSnapshotFile(bpeDir, "vocab.json", '{"a": 0}');
    await assertSnapshotFile(bpeDir, "merges.txt", "#version: 0.2\na b\n");

    hub.addRepo("test-org/no-tokenizer", {
      commit: COMMIT,
      files: { "config.json": CONFIG, "model.safetensors": WEIGHTS },
    });
    await assertRejects(
      () => resolveModel("test-org/no-tokenizer", opts),
      HubError,
      "test-org/no-tokenizer has no tokenizer.json, vocab.txt, or vocab.json with merges.txt",
    );
  });
});

Deno.test("hub: a repository with only pytorch_model.bin is refused", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, {
      commit: COMMIT,
      files: { "config.json": CONFIG, "tokenizer.json": TOKENIZER, "pytorch_model.bin": WEIGHTS },
    });
    const e = await assertRejects(() => resolveModel(ID, opts), HubError);
    assertEquals(
      e.message,
      `${ID} has only pytorch_model.bin; convert it to safetensors (no pickle loading)`,
    );
    assertEquals(hub.requests("cdn").length, 0);

    hub.addRepo("test-org/no-config", { commit: COMMIT, files: { "tokenizer.json": TOKENIZER } });
    await assertRejects(
      () => resolveModel("test-org/no-config", opts),
      HubError,
      'test-org/no-config has no config.json at revision "main"',
    );
  });
});

Deno.test("hub: 401 and 403 say to set HF_TOKEN", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, { ...standardRepo(), token: "hf_right" });
    const e = await assertRejects(() => resolveModel(ID, opts), HubError, "HTTP 401");
    assert(e.message.includes("set HF_TOKEN"), e.message);
    assert(!e.message.includes("\n"));

    hub.addRepo("test-org/gated", { ...standardRepo(), gated: true });
    const g = await assertRejects(() => resolveModel("test-org/gated", opts), HubError);
    assert(g.message.includes("gated") && g.message.includes("set HF_TOKEN"), g.message);

    const n = await assertRejects(() => resolveModel("test-org/nothing-here", opts), HubError);
    assert(n.message.includes("does not exist"), n.message);

    // A refused token is named by where it came from, never printed.
    const env = { ...opts.env, HF_TOKEN: "hf_wrong_secret" };
    const w = await assertRejects(() => resolveModel(ID, { ...opts, env }), HubError);
    assert(w.message.includes("HF_TOKEN") && !w.message.includes("hf_wrong_secret"), w.message);
  });
});

Deno.test("hub: HF_TOKEN is sent as a bearer token to the hub, not to the CDN", async () => {
  await withHub(async ({ hub, tmp, opts }) => {
    hub.addRepo(ID, { ...standardRepo(), token: "hf_right" });
    const env = { ...opts.env, HF_TOKEN: "hf_right" };
    const dir = await resolveModel(ID, { ...opts, env });
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
    const hubRequests = hub.requests("hub");
    assert(hubRequests.length > 0);
    assert(hubRequests.every((r) => r.auth === "Bearer hf_right"));
    const cdn = hub.requests("cdn");
    assert(cdn.length > 0 && cdn.every((r) => r.auth === null));

    // The token `huggingface-cli login` saved in $HF_HOME/token works too.
    await Deno.mkdir(`${tmp}/hf_home`, { recursive: true });
    await Deno.writeTextFile(`${tmp}/hf_home/token`, "hf_right\n");
    hub.log.length = 0;
    assertEquals(await resolveModel(ID, opts), dir);
    assert(hub.requests("hub").every((r) => r.auth === "Bearer hf_right"));
  });
});

Deno.test("hub: HF_ENDPOINT is honoured (a mirror under a path prefix)", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.prefix = "/mirror";
    hub.addRepo(ID, standardRepo());
    const env = { ...opts.env, HF_ENDPOINT: hub.endpoint + "/" };
    const dir = await resolveModel(ID, { ...opts, env });
    await assertSnapshotFile(dir, "config.json", CONFIG);
    const paths = hub.requests("hub").map((r) => r.path);
    assert(paths.includes(`/mirror/${ID}/resolve/main/config.json`), paths.join(" "));
    assert(paths.every((p) => p.startsWith(`/mirror/${ID}/resolve/`)));
  });
});

Deno.test("hub: relative redirects (renamed repository, resolve cache) are followed", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    hub.addRepo("old-name", { commit: COMMIT, files: {}, movedTo: ID });
    hub.resolveCache = true;
    const dir = await resolveModel("old-name", opts);
    // Cached under the name asked for, as huggingface_hub does.
    assertEquals(dir, `${cache}/models--old-name/snapshots/${COMMIT}`);
    await assertSnapshotFile(dir, "config.json", CONFIG);
    await assertSnapshotFile(dir, "tokenizer.json", TOKENIZER);
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
    assert(hub.requests("hub", "GET").every((r) => r.path.startsWith("/api/resolve-cache/")));
  });
});

Deno.test("hub: revisions: branches with '/', commit hashes, refs/ subfolders", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    const prCommit = "fedcba9876543210fedcba9876543210fedcba98";
    hub.addRepo(ID, { ...standardRepo(), refs: { "refs/pr/1": prCommit } });
    const dir = await resolveModel(ID, { ...opts, revision: "refs/pr/1" });
    assertEquals(dir, `${cache}/${FOLDER}/snapshots/${prCommit}`);
    assertEquals(await Deno.readTextFile(`${cache}/${FOLDER}/refs/refs/pr/1`), prCommit);
    const first = hub.requests("hub")[0].path;
    assertEquals(first, `/${ID}/resolve/refs%2Fpr%2F1/config.json`);
    // Later files are asked for at the commit the first answer named.
    assert(hub.requests("hub").slice(1).every((r) => r.path.includes(`/resolve/${prCommit}/`)));

    // A full commit hash whose snapshot is complete needs no request at all.
    const before = hub.log.length;
    assertEquals(await resolveModel(ID, { ...opts, revision: prCommit }), dir);
    assertEquals(hub.log.length, before);
  });
});

Deno.test("hub: HF_HUB_OFFLINE uses the cache with zero requests; a ref that is no small file is none", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const dir = await resolveModel(ID, opts);
    const before = hub.log.length;
    const noFetch = (() => {
      throw new Error("no request may be made offline");
    }) as typeof fetch;
    for (const value of ["1", "true", "YES"]) {
      const env = { ...opts.env, HF_HUB_OFFLINE: value };
      assertEquals(await resolveModel(ID, { ...opts, env, fetch: noFetch }), dir);
      assertEquals(
        await resolveModel(ID, { ...opts, env, fetch: noFetch, revision: COMMIT }),
        dir,
      );
    }
    assertEquals(hub.log.length, before);
    // A ref that is no small file (a FIFO hung the read; gigabytes filled the memory) is no
    // commit: said so, not taken for an absent model.
    const ref = `${cache}/${FOLDER}/refs/main`;
    await Deno.remove(ref);
    assert((await new Deno.Command("mkfifo", { args: [ref] }).output()).success, "mkfifo");
    const env = { ...opts.env, HF_HUB_OFFLINE: "1" };
    const noCommit = `${ID} is only partly in the Hugging Face cache (${cache}) (its ref ${ref} ` +
      `holds no commit hash) and HF_HUB_OFFLINE is set; run once with network access, or pass ` +
      `--model a local directory`;
    for (const text of [undefined, COMMIT + " ".repeat(5000), "not a/../commit"]) {
      if (text !== undefined) {
        await Deno.remove(ref);
        await Deno.writeTextFile(ref, text);
      }
      const e = await assertRejects(
        () => resolveModel(ID, { ...opts, env, fetch: noFetch }),
        HubError,
      );
      assertEquals(e.message, noCommit);
    }
    // A ref naming a commit whose snapshot is not there.
    const other = "f".repeat(40);
    await Deno.writeTextFile(ref, other);
    const e = await assertRejects(
      () => resolveModel(ID, { ...opts, env, fetch: noFetch }),
      HubError,
    );
    assert(
      e.message.includes(`(its ref main names commit ${other}, which has no snapshot there)`),
      e.message,
    );
  });
});

Deno.test("hub: HF_HUB_OFFLINE with nothing cached is one clear error", async () => {
  await withHub(async ({ hub, tmp, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    // No HF_HUB_CACHE / HF_HOME: the default ~/.cache/huggingface/hub, shown with "~".
    const env = { HOME: `${tmp}/home`, HF_HUB_OFFLINE: "1", HF_ENDPOINT: hub.endpoint };
    const e = await assertRejects(() => resolveModel(ID, { ...opts, env }), HubError);
    assertEquals(
      e.message,
      `${ID} is not in the Hugging Face cache (~/.cache/huggingface/hub) and HF_HUB_OFFLINE ` +
        `is set; run once with network access, or pass --model a local directory`,
    );
    // A snapshot missing its weights says what it lacks.
    await resolveModel(ID, opts);
    await Deno.remove(`${cache}/${FOLDER}/snapshots/${COMMIT}/model.safetensors`);
    const offline = { ...opts.env, HF_HUB_OFFLINE: "1" };
    const p = await assertRejects(() => resolveModel(ID, { ...opts, env: offline }), HubError);
    assert(p.message.includes("only partly") && p.message.includes("model.safetensors"));
    assertEquals(hub.log.filter((r) => r.method === "GET" && r.server === "hub").length, 2);
    // Another revision than the cached one: named (it said the model was not in the cache).
    const v2 = await assertRejects(
      () => resolveModel(ID, { ...opts, env: offline, revision: "v2" }),
      HubError,
    );
    assert(v2.message.startsWith(`${ID} is only partly in the Hugging Face cache (`), v2.message);
    assert(v2.message.includes("(no revision v2) and HF_HUB_OFFLINE is set"), v2.message);
  });
});

Deno.test("hub: an unreachable hub falls back to the cache", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, standardRepo());
    const dir = await resolveModel(ID, opts);
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const deadPort = listener.addr.port;
    listener.close();
    const env = { ...opts.env, HF_ENDPOINT: `http://127.0.0.1:${deadPort}` };
    assertEquals(await resolveModel(ID, { ...opts, env, quiet: true }), dir);
    await assertRejects(
      () => resolveModel("test-org/other", { ...opts, env, quiet: true }),
      HubError,
      "cannot be reached",
    );
  });
});

/** A fetch that answers every request with `status` (no status text) and counts them. */
function failingFetch(status: number, headers: Record<string, string> = {}) {
  const f = {
    calls: 0,
    fetch: (() => {
      f.calls++;
      return Promise.resolve(new Response(null, { status, headers }));
    }) as typeof fetch,
  };
  return f;
}

Deno.test("hub: HTTP errors of the hub (5xx, 429, 401/403) fall back to a complete cached snapshot", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const dir = await resolveModel(ID, opts);
    // An outage or a token problem: the cached snapshot at once, no retries, one note.
    const answers: [number, Record<string, string>][] = [
      [500, {}],
      [502, {}],
      [503, {}],
      [429, {}],
      [401, { "x-error-code": "RepoNotFound" }],
      [403, {}],
    ];
    for (const [status, headers] of answers) {
      const hubDown = failingFetch(status, headers);
      let got = "";
      const stderr = await captureStderr(async () => {
        got = await resolveModel(ID, { ...opts, fetch: hubDown.fetch, retries: 5 });
      });
      assertEquals(got, dir, `HTTP ${status}`);
      assertEquals(hubDown.calls, 1, `HTTP ${status}: requests`);
      assertEquals(
        stderr,
        `ehft: ${hub.endpoint} answered HTTP ${status} for config.json; using the cached ` +
          `snapshot of ${ID} (commit ${COMMIT})\n`,
      );
      // quiet: no note.
      const silent = await captureStderr(async () => {
        await resolveModel(ID, {
          ...opts,
          fetch: failingFetch(status, headers).fetch,
          quiet: true,
        });
      });
      assertEquals(silent, "");
    }
    // The real (loopback) hub turning the repository gated: its status text and message too.
    hub.repos.get(ID)!.gated = true;
    const gated = await captureStderr(async () => {
      assertEquals(await resolveModel(ID, opts), dir);
    });
    assert(
      gated.includes(`answered HTTP 403 Forbidden (Access restricted) for config.json; using`),
      gated,
    );
    hub.repos.get(ID)!.gated = false;

    // Nothing usable cached: the hub's error stands, after the retries; one space per gap.
    const other = failingFetch(503);
    const e = await assertRejects(
      () => resolveModel("test-org/other", { ...opts, fetch: other.fetch, retries: 2 }),
      HubError,
    );
    assertEquals(e.message, `${hub.endpoint} answered HTTP 503 for config.json of test-org/other`);
    assertEquals(other.calls, 3);
    await Deno.remove(`${cache}/${FOLDER}/snapshots/${COMMIT}/model.safetensors`);
    const partial = failingFetch(502);
    await assertRejects(
      () => resolveModel(ID, { ...opts, fetch: partial.fetch, retries: 1, quiet: true }),
      HubError,
      `answered HTTP 502 for config.json of ${ID}`,
    );
    assertEquals(partial.calls, 2);
    const noToken = failingFetch(401, { "x-error-code": "RepoNotFound" });
    const n = await assertRejects(
      () => resolveModel(ID, { ...opts, fetch: noToken.fetch, quiet: true }),
      HubError,
    );
    assert(n.message.includes("HTTP 401") && n.message.includes("set HF_TOKEN"), n.message);
  });
});

Deno.test("hub: a missing revision is an error even with a cached snapshot", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, standardRepo());
    await resolveModel(ID, opts);
    const gone = failingFetch(404, { "x-error-code": "RevisionNotFound" });
    await assertRejects(
      () => resolveModel(ID, { ...opts, fetch: gone.fetch, quiet: true }),
      HubError,
      `${ID} has no revision "main"`,
    );
  });
});

Deno.test("hub: a CDN error without a status text reads with single spaces", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, standardRepo());
    let cdnHost = "";
    const cdnGone = ((input: RequestInfo | URL, init?: RequestInit) => {
      const url = new URL(input instanceof Request ? input.url : input);
      if (url.origin === new URL(hub.endpoint).origin) return fetch(input, init);
      cdnHost = url.host;
      return Promise.resolve(new Response(null, { status: 404 }));
    }) as typeof fetch;
    const e = await assertRejects(
      () => resolveModel(ID, { ...opts, fetch: cdnGone, quiet: true }),
      HubError,
    );
    assertEquals(e.message, `${cdnHost} answered HTTP 404 for model.safetensors of ${ID}`);
  });
});

Deno.test("hub: a truncated transfer is resumed with a Range request", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const sha = sha256(WEIGHTS);
    const blob = `${cache}/${FOLDER}/blobs/${sha}`;
    hub.truncateOnce.set(sha, 100_000);
    const seen: { range: string | null; blob: boolean; partial?: number }[] = [];
    hub.onCdnGet = async (_, range) => {
      const partial = await Deno.stat(`${blob}.incomplete`).then((s) => s.size, () => undefined);
      seen.push({ range, blob: await exists(blob), partial });
    };
    const dir = await resolveModel(ID, opts);
    assertEquals(seen.length, 2);
    assertEquals(seen[0], { range: null, blob: false, partial: undefined });
    // The broken download was kept aside, never under the blob's name, and resumed.
    assertEquals(seen[1].blob, false);
    assert(seen[1].partial !== undefined && seen[1].partial > 0 && seen[1].partial <= 100_000);
    assertEquals(seen[1].range, `bytes=${seen[1].partial}-`);
    assertEquals(await Deno.readFile(blob), WEIGHTS);
    assert(!(await exists(`${blob}.incomplete`)));
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
  });
});

Deno.test("hub: a server that ignores Range makes the download restart", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const sha = sha256(WEIGHTS);
    hub.truncateOnce.set(sha, 100_000);
    hub.ignoreRange = true;
    const dir = await resolveModel(ID, opts);
    assertEquals(hub.requests("cdn", "GET").length, 2);
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
    assert(!(await exists(`${cache}/${FOLDER}/blobs/${sha}.incomplete`)));
  });
});

Deno.test("hub: a stalled transfer times out (HF_HUB_DOWNLOAD_TIMEOUT) and resumes", async () => {
  await withHub(async ({ hub, opts }) => {
    hub.addRepo(ID, standardRepo());
    hub.stallOnce.set(sha256(WEIGHTS), 64_000);
    const env = { ...opts.env, HF_HUB_DOWNLOAD_TIMEOUT: "1" };
    const dir = await resolveModel(ID, { ...opts, env });
    const gets = hub.requests("cdn", "GET");
    assertEquals(gets.length, 2);
    assert(gets[1].range !== null, "the second attempt did not resume");
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
  });
});

Deno.test("hub: a corrupted body (wrong sha256) is an error and writes no blob", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const sha = sha256(WEIGHTS);
    hub.corrupt.add(sha);
    await assertRejects(() => resolveModel(ID, opts), HubError, "sha256");
    const blobs = await listTree(`${cache}/${FOLDER}/blobs`);
    assert(!blobs.some((b) => b.startsWith(sha)), blobs.join(" "));
    assert(!(await exists(`${cache}/${FOLDER}/snapshots/${COMMIT}/model.safetensors`)));
  });
});

Deno.test("hub: a cache that takes no more bytes is said at once, not retried as the network", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    // A full disk at the first file's partial download (Deno.open made to fail as ENOSPC does:
    // no small file system to fill here).
    const open = Deno.open;
    const full = (path: string | URL, options?: Deno.OpenOptions) =>
      String(path).endsWith(".incomplete") && options?.write
        ? Promise.reject(new Error("No space left on device (os error 28)"))
        : open(path, options);
    (Deno as unknown as { open: typeof full }).open = full;
    try {
      const e = await assertRejects(() => resolveModel(ID, { ...opts, retries: 3 }), HubError);
      assert(
        e.message.startsWith(`downloading config.json of ${ID}: cannot write `) &&
          e.message.endsWith(
            ": No space left on device (os error 28); free space there (or set HF_HUB_CACHE to " +
              "another folder) and run again to resume",
          ),
        e.message,
      );
      assert(e.message.includes(`${cache}/${FOLDER}/blobs/`), e.message);
      // One GET of the file: no retries of what the network did not do.
      const gets = hub.log.filter((r) => r.method === "GET" && r.path.endsWith("/config.json"));
      assertEquals(gets.length, 1);
    } finally {
      (Deno as unknown as { open: typeof open }).open = open;
    }
  });
});

Deno.test("hub: a bad partial file from earlier is discarded and downloaded afresh", async () => {
  await withHub(async ({ hub, cache, opts }) => {
    hub.addRepo(ID, standardRepo());
    const sha = sha256(WEIGHTS);
    const blobs = `${cache}/${FOLDER}/blobs`;
    await Deno.mkdir(blobs, { recursive: true });
    await Deno.writeFile(`${blobs}/${sha}.incomplete`, bytes(50_000, 99));
    const dir = await resolveModel(ID, opts);
    assertEquals(hub.requests("cdn", "GET").map((r) => r.range), ["bytes=50000-", null]);
    await assertSnapshotFile(dir, "model.safetensors", WEIGHTS);
  });
});

Deno.test("hub: ids, revisions, shard names and server answers cannot escape the cache", async () => {
  await withHub(async ({ hub, tmp, opts }) => {
    const before = hub.log.length;
    for (const id of ["../ehft-no-such-dir", "org/../../x", "/ehft-no-such-dir", "a/b/c", ""]) {
      await assertRejects(() => resolveModel(id, opts), HubError);
    }
    hub.addRepo(ID, standardRepo());
    for (const revision of ["../../x", "/etc", "a/../b", "..", "a//b", "main\n"]) {
      await assertRejects(() => resolveModel(ID, { ...opts, revision }), HubError, "revision");
    }
    assertEquals(hub.log.length, before, "no request may be made for an invalid id or revision");

    hub.addRepo("test-org/hostile-index", {
      commit: COMMIT,
      files: {
        "config.json": CONFIG,
        "tokenizer.json": TOKENIZER,
        "model.safetensors.index.json": JSON.stringify({
          weight_map: { "a": "../../evil.safetensors" },
        }),
      },
    });
    await assertRejects(
      () => resolveModel("test-org/hostile-index", opts),
      HubError,
      "not a plain .safetensors file name",
    );
    hub.addRepo("test-org/hostile-etag", {
      ...standardRepo(),
      etag: { "tokenizer.json": "../../../evil", "model.safetensors": "../evil" },
    });
    await assertRejects(
      () => resolveModel("test-org/hostile-etag", opts),
      HubError,
      "unusable ETag",
    );
    hub.addRepo("test-org/hostile-commit", { ...standardRepo(), commitHeader: "../../evil" });
    await assertRejects(
      () => resolveModel("test-org/hostile-commit", opts),
      HubError,
      "unusable commit hash",
    );
    // Everything written is inside the cache folder.
    const written = await listTree(tmp);
    assert(written.every((p) => p.startsWith("cache/")), written.join(" "));
    assert(!written.some((p) => p.includes("evil")), written.join(" "));
  });
});

Deno.test("hub: a local directory wins over a hub id", async () => {
  await withHub(async ({ hub, tmp, opts }) => {
    const local = `${tmp}/my-model`;
    await Deno.mkdir(local);
    assertEquals(await resolveModel(local, opts), local);
    await Deno.writeTextFile(`${tmp}/file`, "x");
    await assertRejects(() => resolveModel(`${tmp}/file`, opts), HubError, "is a file");
    assertEquals(hub.log.length, 0);
  });
});

Deno.test("hub: hubCacheDir follows Hugging Face's precedence", () => {
  const home = "/home/u";
  assertEquals(hubCacheDir({ HOME: home }), "/home/u/.cache/huggingface/hub");
  assertEquals(hubCacheDir({ HOME: home, XDG_CACHE_HOME: "/xdg/" }), "/xdg/huggingface/hub");
  assertEquals(
    hubCacheDir({ HOME: home, XDG_CACHE_HOME: "/xdg", HF_HOME: "~/hf" }),
    "/home/u/hf/hub",
  );
  assertEquals(
    hubCacheDir({ HOME: home, XDG_CACHE_HOME: "/xdg", HF_HOME: "/hf", HF_HUB_CACHE: "/c/" }),
    "/c",
  );
  assertEquals(hubCacheDir({ HOME: home, HF_HUB_CACHE: "" }), "/home/u/.cache/huggingface/hub");
  // The older name, still read by huggingface_hub; HF_HUB_CACHE first.
  assertEquals(hubCacheDir({ HOME: home, HF_HOME: "/hf", HUGGINGFACE_HUB_CACHE: "/old" }), "/old");
  assertEquals(
    hubCacheDir({ HOME: home, HUGGINGFACE_HUB_CACHE: "/old", HF_HUB_CACHE: "/new" }),
    "/new",
  );
  assertEquals(hubCacheDir({ USERPROFILE: "C:/Users/u" }), "C:/Users/u/.cache/huggingface/hub");
});

Deno.test("hub: hub id shapes and cache folder names", () => {
  for (
    const id of ["FacebookAI/roberta-large", "google-bert/bert-large-uncased", "gpt2", "a_b/c.d"]
  ) {
    assert(isHubId(id), id);
  }
  for (const id of ["", "../x", "a/b/c", "a/..", "org--x/y", ".hidden/x", "a/b-", "a b", "a\\b"]) {
    assert(!isHubId(id), id);
  }
  assertEquals(repoFolderName("FacebookAI/roberta-large"), "models--FacebookAI--roberta-large");
  assertEquals(repoFolderName("gpt2"), "models--gpt2");
});
