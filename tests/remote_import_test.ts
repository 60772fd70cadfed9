// The library must work when imported by URL from a plain HTTP server, with no import map and
// no config: this serves the repository on loopback and imports mod.ts from a subprocess.

import { assert, assertEquals } from "./assert.ts";

const ROOT = new URL("../", import.meta.url);

function contentType(path: string): string {
  if (path.endsWith(".ts")) return "application/typescript; charset=utf-8";
  if (path.endsWith(".json")) return "application/json";
  return "application/octet-stream";
}

/** Serves the repository on loopback; `requested` lists every path asked for. */
function serveRepository(): { server: Deno.HttpServer; origin: string; requested: string[] } {
  const requested: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    requested.push(path);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    try {
      const body = await Deno.readFile(new URL(`.${path}`, ROOT));
      return new Response(body, { headers: { "content-type": contentType(path) } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  return { server, origin: `127.0.0.1:${server.addr.port}`, requested };
}

/**
 * Removes what the subprocess cached for `origin` in the user's DENO_DIR (the downloaded
 * modules and their emitted JavaScript): a new port each run would otherwise leave a few MB
 * there for good.
 */
async function forgetOrigin(origin: string): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const info = JSON.parse(new TextDecoder().decode(out.stdout));
  const folder = origin.replace(":", "_PORT");
  for (const cache of [info.modulesCache, info.typescriptCache]) {
    await Deno.remove(`${cache}/http/${folder}`, { recursive: true }).catch(() => {});
  }
}

Deno.test("mod.ts imports by URL from a loopback server and runs a kernel", async () => {
  const { server, origin, requested } = serveRepository();
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/use_ehft.ts`;
    await Deno.writeTextFile(
      script,
      `import * as ehft from "http://${origin}/mod.ts";
const gpu = await ehft.requestGpu();
const rec = new ehft.Recorder(gpu);
const t = ehft.createTensor(gpu, [9], "f32", "t");
ehft.fill(rec, t, 2.5);
await rec.submit();
const out = await t.download();
console.log(JSON.stringify({
  exports: Object.keys(ehft).sort(),
  out: Array.from(out),
  shipped: ehft.shippedModelDir(),
}));
gpu.destroy();
`,
    );
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-config",
        "--no-lock",
        `--reload=http://${origin}`,
        `--allow-import=${origin}`,
        script,
      ],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(stderr);
    assertEquals(code, 0, `subprocess failed: ${err}`);
    const result = JSON.parse(new TextDecoder().decode(stdout).trim().split("\n").at(-1)!);
    // A training and prediction of one's own need the tasks, the run, predict and the tune.
    const api = ["requestGpu", "createTensor", "Recorder", "openSafetensors", "openModel"]
      .concat(["runTraining", "parseTrainArgs", "TASKS", "taskByName", "predict", "tuneRequest"]);
    for (const name of api) {
      assert(result.exports.includes(name), `mod.ts does not export ${name}`);
    }
    assertEquals(result.out, Array(9).fill(2.5));
    // No local folder to look in: task scripts then need --model, and say so.
    assertEquals(result.shipped, null);
    const task = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--no-lock", "-A", `http://${origin}/tasks/cb.ts`]
        .concat(["--max-steps", "1", "--out", `${dir}/cb`]),
      cwd: dir,
      env: { NO_COLOR: "1", XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const said = new TextDecoder().decode(task.stderr).trim();
    assertEquals(task.code, 2, said);
    assert(
      said.startsWith(
        "cb: --model is required: this script's default, the shipped models/ehft-mini-en, is " +
          "not beside it (it comes with a local checkout, not by URL)",
      ),
      said,
    );
    assert(requested.includes("/mod.ts"));
    assert(requested.some((p) => p.startsWith("/kernels/")), "kernels were not fetched");
  } finally {
    await server.shutdown();
    await forgetOrigin(origin);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train/plots.ts imports by URL and draws an SVG and a PNG with its font", async () => {
  const { server, origin, requested } = serveRepository();
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/plot.ts`;
    await Deno.writeTextFile(
      script,
      `import * as plots from "http://${origin}/train/plots.ts";
const svg = await plots.renderSvg(plots.lineChartSpec({
  title: "over http", xLabel: "step", yLabel: "loss",
  series: [{ name: "a", points: [[0, 1], [1, 0.5], [2, 0.25]] }],
}));
const png = await plots.renderPng(svg);
console.log(JSON.stringify({ svg: svg.slice(0, 4), png: png.length }));
`,
    );
    // The npm packages at the versions the repository's lock file holds (a copy: the run adds
    // the loopback URLs to it), so a new release of a transitive dependency of vega cannot change
    // this test's outcome from one day to the next.
    await Deno.copyFile(new URL("deno.lock", ROOT), `${dir}/deno.lock`);
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-config",
        `--lock=${dir}/deno.lock`,
        `--reload=http://${origin}`,
        "-A",
        script,
      ],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(code, 0, `subprocess failed: ${new TextDecoder().decode(stderr)}`);
    const result = JSON.parse(new TextDecoder().decode(stdout).trim().split("\n").at(-1)!);
    assertEquals(result.svg, "<svg");
    assert(result.png > 1000, "a PNG");
    assert(requested.includes("/train/fonts/DejaVuSans.ttf"), "the font came over http");
  } finally {
    await server.shutdown();
    await forgetOrigin(origin);
    await Deno.remove(dir, { recursive: true });
  }
});

/** The import specifiers of a TypeScript source (static imports and re-exports). */
function specifiers(source: string): string[] {
  const found: string[] = [];
  const patterns = [
    /(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*["']([^"']+)["']/g, // import x from "y"
    /(?:^|\n)\s*import\s*["']([^"']+)["']/g, // import "y"
    /import\(\s*["']([^"']+)["']\s*\)/g, // import("y")
  ];
  for (const pattern of patterns) {
    for (const m of source.matchAll(pattern)) found.push(m[1]);
  }
  return found;
}

async function* librarySources(dir: URL): AsyncGenerator<URL> {
  for await (const entry of Deno.readDir(dir)) {
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) yield* librarySources(url);
    else if (entry.name.endsWith(".ts")) yield url;
  }
}

const FETCHES_BESIDE = new Set(["train/plots.ts"]);
/**
 * Files that look beside themselves only when they are local files and otherwise do without:
 * default_model.ts (the shipped model's folder and data, null or as given when imported by URL;
 * tested below); run_faults.ts only compares URLs (is the main module this toolkit's train.ts or
 * a task script?), reading nothing.
 */
const LOCAL_ONLY = new Set(["train/default_model.ts", "train/run_faults.ts"]);

Deno.test("library sources use only URL-safe imports", async () => {
  const files = [new URL("mod.ts", ROOT)];
  for (const dir of ["kernels/", "model/", "peft/", "train/"]) {
    for await (const f of librarySources(new URL(dir, ROOT))) files.push(f);
  }
  const problems: string[] = [];
  for (const file of files) {
    const source = await Deno.readTextFile(file);
    const name = file.pathname.slice(ROOT.pathname.length);
    for (const spec of specifiers(source)) {
      const ok = spec.startsWith("node:") ||
        /^npm:(@[\w.-]+\/)?[\w.-]+@\d+\.\d+\.\d+(\/[\w./-]*)?$/.test(spec) ||
        (/^\.\.?\//.test(spec) && spec.endsWith(".ts"));
      if (!ok) problems.push(`${name}: import "${spec}"`);
    }
    // A module imported by URL cannot read files beside itself with Deno.readFile; it can fetch
    // them. So import.meta paths only in the files that fetch what they name (plots.ts: its font,
    // by file or http URL alike; the test above imports it over http).
    if (
      /import\.meta\.(url|dirname|filename)/.test(source) && !FETCHES_BESIDE.has(name) &&
      !LOCAL_ONLY.has(name)
    ) {
      problems.push(`${name}: uses import.meta paths`);
    }
  }
  assertEquals(problems, []);
});
