// The GEMM autotune: its cache file (hit, miss, per adapter, stale, corrupt), how programs turn
// it off, and that a tuned device computes bitwise what an untuned one does.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { matmul, type MatmulVariant, setMatmulTuner } from "../kernels/matmul.ts";
import {
  attentionTuneShapes,
  autotuneForProgram,
  defaultCandidates,
  defaultMatmulCacheFile,
  describeTune,
  linearTuneShapes,
  MATMUL_KERNELS_VERSION,
  matmulShapeClass,
  matmulVariantsUsed,
  pickTunedVariant,
  representativeShape,
  tuneMatmul,
  type TuneRequest,
  tuneRequest,
  worthTuning,
} from "../kernels/matmul_autotune.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import { readConfig } from "../model/config.ts";
import { parseTrainArgs } from "../train/config.ts";
import { FlagError } from "../train/flags.ts";
import { runTraining } from "../train/run.ts";
import { modelTuneShapes } from "../train/tune_shapes.ts";
import { rte } from "../tasks/rte.ts";
import { writeMarkerData, writeTinyBert } from "./train_fixture.ts";

/**
 * The GPU under another adapter description: its own tune memory and tuner (the compiled
 * pipelines belong to the device, so they are shared).
 */
function adapterNamed(gpu: Gpu, description: string): Gpu {
  return Object.create(gpu, { description: { value: description } });
}

/** A small class, quick to time: 32×32 outputs (the "s" class, timed at 32×32×256). */
const SMALL = { m: 32, n: 32, k: 8, transB: true };
const SMALL_CLASS = matmulShapeClass(32, 32, 8, false, true);
/** As little timing as can be. */
const QUICK = { budgetMs: 1, rounds: 1, candidates: ["vec4_8x8"] as MatmulVariant[] };

async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-tune-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs `fn` with environment variables set (undefined: unset), restoring them afterwards. */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      x === undefined ? Deno.env.delete(k) : Deno.env.set(k, x);
    }
  };
  apply(vars);
  try {
    return await fn();
  } finally {
    apply(saved);
  }
}

Deno.test("autotune: a candidate that differs bitwise is never chosen; near-ties keep the heuristic", () => {
  const h: MatmulVariant = "vec4_8x16";
  const m = (variant: MatmulVariant, ms: number, sameBits = true) => ({ variant, ms, sameBits });
  // Far faster but rounding differently: refused.
  assertEquals(pickTunedVariant(h, [m(h, 10), m("vec4_8x8", 1, false)]), h);
  // 3% faster: within the margin, the heuristic stays.
  assertEquals(pickTunedVariant(h, [m(h, 10), m("vec4_8x8", 9.7)]), h);
  // 20% faster and bitwise equal: chosen; the fastest of several such.
  assertEquals(pickTunedVariant(h, [m(h, 10), m("vec4_8x8", 8), m("vec4_16x8", 7)]), "vec4_16x8");
  assertEquals(
    pickTunedVariant(h, [m(h, 10), m("vec4_8x8", 8), m("vec4_16x8", 7, false)]),
    "vec4_8x8",
  );
  // The heuristic's own variant unmeasured (dropped): any bitwise-equal one beats nothing.
  assertEquals(pickTunedVariant(h, [m("vec4_8x8", 8)]), "vec4_8x8");
  assertEquals(pickTunedVariant(h, []), h);
});

gpuTest(
  "autotune: a cache named by a symlink is its target's: one lock, the link kept",
  async (gpu) => {
    await withTempDir(async (dir) => {
      // The link's target is not there yet: the write made it, not a file in the link's place.
      await Deno.symlink(`${dir}/real.json`, `${dir}/link.json`);
      const warnings: string[] = [];
      const r = await tuneMatmul(adapterNamed(gpu, "test adapter L"), {
        shapes: [SMALL],
        cacheFile: `${dir}/link.json`,
        warn: (line) => warnings.push(line),
        ...QUICK,
      });
      assert(r.saved, warnings.join("\n"));
      assertEquals(r.cacheFile, `${await Deno.realPath(dir)}/real.json`);
      assert((await Deno.lstat(`${dir}/link.json`)).isSymlink, "the link was replaced");
      assert("test adapter L" in JSON.parse(await Deno.readTextFile(`${dir}/real.json`)));
      // One lock for both names.
      assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
        "link.json",
        "real.json",
        "real.json.lock",
      ]);
      // A relative link in a folder reached through a symlink: `..` from where the folder
      // really is (it was taken from the name as written: another folder, made for it).
      await Deno.mkdir(`${dir}/x/y`, { recursive: true });
      await Deno.mkdir(`${dir}/x/z`);
      await Deno.symlink(`${dir}/x/y`, `${dir}/a`);
      await Deno.symlink("../z/cache.json", `${dir}/x/y/cache.json`);
      const via = await tuneMatmul(adapterNamed(gpu, "test adapter L2"), {
        shapes: [SMALL],
        cacheFile: `${dir}/a/cache.json`,
        warn: (line) => warnings.push(line),
        ...QUICK,
      });
      assertEquals(via.cacheFile, `${await Deno.realPath(dir)}/x/z/cache.json`);
      assert((await Deno.stat(`${dir}/x/z/cache.json`)).isFile, "not where the link points");
    });
  },
);

gpuTest(
  "autotune: a miss tunes and writes the file, a hit reads it, keyed by adapter",
  async (gpu) => {
    await withTempDir(async (dir) => {
      const file = `${dir}/sub/tune.json`; // the folder is created
      const warnings: string[] = [];
      const warn = (line: string) => warnings.push(line);
      const a1 = adapterNamed(gpu, "test adapter A");
      // A write of the file killed mid-way (kill -9) left its temporary: gone with the next
      // write; another file's beside it stays.
      await Deno.mkdir(`${dir}/sub`);
      await Deno.writeTextFile(`${file}.tmp-0123abcd`, "{");
      await Deno.writeTextFile(`${dir}/sub/other.json.tmp-0123abcd`, "{");
      const miss = await tuneMatmul(a1, { shapes: [SMALL], cacheFile: file, warn, ...QUICK });
      assertEquals(miss.tuned.map((t) => t.class), [SMALL_CLASS]);
      assert(miss.saved, "saved");
      assertEquals([...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name).sort(), [
        "other.json.tmp-0123abcd",
        "tune.json",
        "tune.json.lock",
      ]);
      assertEquals(miss.tuned[0].differs, [], "every candidate bitwise equal on this adapter");
      const chosen = miss.table[SMALL_CLASS];
      const saved = JSON.parse(await Deno.readTextFile(file));
      assertEquals(saved["test adapter A"], {
        kernels: MATMUL_KERNELS_VERSION,
        [SMALL_CLASS]: chosen,
      });

      // The same device again: this process's memory, the file untouched.
      const again = await tuneMatmul(a1, { shapes: [SMALL], cacheFile: file, warn, ...QUICK });
      assertEquals([again.tuned.length, again.fromMemory, again.saved], [0, [SMALL_CLASS], false]);

      // Another process (a fresh device object) on the same adapter: the file.
      const a2 = adapterNamed(gpu, "test adapter A");
      const hit = await tuneMatmul(a2, { shapes: [SMALL], cacheFile: file, warn, ...QUICK });
      assertEquals([hit.tuned.length, hit.fromFile, hit.table[SMALL_CLASS]], [
        0,
        [SMALL_CLASS],
        chosen,
      ]);
      // Installed: matmul now asks the tuner (a product of the class runs the cached choice).
      const t = (n: number) => createTensor(a2, [n], "f32", "t");
      const [a, b, c] = [t(32 * 8), t(32 * 8), t(32 * 32)];
      const used = matmulVariantsUsed(
        a2,
        (rec) => matmul(rec, { a, b, c, m: 32, n: 32, k: 8, transB: true }),
      );
      assertEquals(used, [chosen]);
      for (const x of [a, b, c]) x.destroy();

      // Another adapter: a miss, its entry added beside the first.
      const other = await tuneMatmul(adapterNamed(gpu, "test adapter B"), {
        shapes: [SMALL],
        cacheFile: file,
        warn,
        ...QUICK,
      });
      assertEquals(other.tuned.length, 1);
      const both = JSON.parse(await Deno.readTextFile(file));
      assertEquals(Object.keys(both).sort(), ["test adapter A", "test adapter B"]);

      // --retune: timed again although the file knows it.
      const re = await tuneMatmul(adapterNamed(gpu, "test adapter A"), {
        shapes: [SMALL],
        cacheFile: file,
        retune: true,
        warn,
        ...QUICK,
      });
      assertEquals(re.tuned.length, 1);
      assertEquals(warnings, []);
      const leftovers = [...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name);
      assertEquals(
        leftovers.sort(),
        ["other.json.tmp-0123abcd", "tune.json", "tune.json.lock"],
        "atomic writes leave no temporary files",
      );
    });
  },
);

gpuTest(
  "autotune: an entry of another kernel set is tuned again, silently, and kept for its version",
  async (gpu) => {
    await withTempDir(async (dir) => {
      const file = `${dir}/tune.json`;
      const desc = "test adapter stale";
      await Deno.writeTextFile(
        file,
        JSON.stringify({ [desc]: { kernels: "00000000", [SMALL_CLASS]: "tile16" } }),
      );
      const warnings: string[] = [];
      const r = await tuneMatmul(adapterNamed(gpu, desc), {
        shapes: [SMALL],
        cacheFile: file,
        warn: (l) => warnings.push(l),
        ...QUICK,
      });
      assertEquals([r.tuned.length, r.fromFile, warnings], [1, [], []]);
      const saved = JSON.parse(await Deno.readTextFile(file));
      assertEquals(saved[desc].kernels, MATMUL_KERNELS_VERSION);
      // The other kernel set's entry is kept beside it (another ehft sharing the file tuned
      // again at every run, each replacing the other's), and read by its own version.
      assertEquals(saved[`${desc} [kernels "00000000"]`], {
        kernels: "00000000",
        [SMALL_CLASS]: "tile16",
      });
      // Ours twice: an ehft from before these keys replaces the one under the name alone.
      assertEquals(
        saved[`${desc} [kernels ${JSON.stringify(MATMUL_KERNELS_VERSION)}]`],
        saved[desc],
      );
      // The other version writes its entry under the name again, this one's moves aside, and is
      // still found there without a tune.
      const mine = saved[desc];
      await Deno.writeTextFile(
        file,
        JSON.stringify({
          [desc]: { kernels: "00000000", [SMALL_CLASS]: "tile16" },
          [`${desc} [kernels ${JSON.stringify(MATMUL_KERNELS_VERSION)}]`]: mine,
        }),
      );
      const again = await tuneMatmul(adapterNamed(gpu, desc), {
        shapes: [SMALL],
        cacheFile: file,
        warn: (l) => warnings.push(l),
        ...QUICK,
      });
      assertEquals([again.tuned.length, again.fromFile, warnings], [0, [SMALL_CLASS], []]);
    });
  },
);

gpuTest(
  "autotune: a corrupt cache file warns in one line naming it, and is moved aside, not overwritten",
  async (gpu) => {
    await withTempDir(async (dir) => {
      const file = `${dir}/tune.json`;
      const desc = "test adapter corrupt";
      const bad = [
        "{ not json",
        "[1, 2, 3]",
        '{"x": 3}',
        // A run's run.json (objects of objects, as a cache is): it was merged into.
        '{"settings": {"lr": 0.001, "seed": 42}, "resolved": {"task": {"name": "rte"}}}',
        JSON.stringify({
          [desc]: { kernels: MATMUL_KERNELS_VERSION, [SMALL_CLASS]: "vec4_99x99" },
        }),
      ];
      for (const [i, text] of bad.entries()) {
        await Deno.writeTextFile(file, text);
        const warnings: string[] = [];
        const r = await tuneMatmul(adapterNamed(gpu, `${desc} ${i}`), {
          shapes: [SMALL],
          cacheFile: file,
          warn: (l) => warnings.push(l),
          ...QUICK,
        });
        // The last file is valid JSON whose entry belongs to another adapter name: no warning.
        if (i < 4) {
          assertEquals(warnings.length, 2, text);
          assert(warnings[0].includes(file) && !warnings[0].includes("\n"), warnings[0]);
          // What it held is kept (a --tune-cache naming one's notes overwrote them).
          const aside = `${file}.not-a-cache${i === 0 ? "" : `-${i + 1}`}`;
          assertEquals(
            warnings[1],
            `matmul autotune: ${file} moved to ${aside} (kept, not overwritten)`,
          );
          assertEquals(await Deno.readTextFile(aside), text);
        }
        assertEquals(r.tuned.length, 1, text);
        const saved = JSON.parse(await Deno.readTextFile(file)); // valid again
        assertEquals(saved[`${desc} ${i}`][SMALL_CLASS], r.table[SMALL_CLASS]);
      }
      // One that cannot be read (here a folder, as --tune-cache ~/.cache/ehft would name; a file
      // without read permission alike): left as it is, and the tune not cached (it was moved
      // aside: a whole folder of caches).
      await Deno.remove(file);
      for (const f of await Array.fromAsync(Deno.readDir(dir))) {
        if (f.name.includes(".not-a-cache")) await Deno.remove(`${dir}/${f.name}`);
      }
      await Deno.mkdir(file);
      await Deno.writeTextFile(`${file}/mine.txt`, "mine");
      const unreadable: string[] = [];
      await tuneMatmul(adapterNamed(gpu, `${desc} unreadable`), {
        shapes: [SMALL],
        cacheFile: file,
        warn: (l) => unreadable.push(l),
        ...QUICK,
      });
      assert(unreadable[0].startsWith(`matmul autotune: cannot read ${file} (`), unreadable[0]);
      assertEquals(
        unreadable[1],
        `matmul autotune: cannot write ${file} (it cannot be read; left as it is); the tune is ` +
          "not cached",
      );
      assertEquals(await Deno.readTextFile(`${file}/mine.txt`), "mine");
      await Deno.remove(file, { recursive: true });
      // The unknown variant under this adapter's own name: warned about, tuned again.
      await Deno.writeTextFile(file, bad[4]);
      const warnings: string[] = [];
      const r = await tuneMatmul(adapterNamed(gpu, desc), {
        shapes: [SMALL],
        cacheFile: file,
        warn: (l) => warnings.push(l),
        ...QUICK,
      });
      assertEquals(r.tuned.length, 1);
      assertEquals(warnings.length, 1);
      assert(warnings[0].includes(file) && warnings[0].includes("vec4_99x99"), warnings[0]);
    });
  },
);

gpuTest("autotune: a tuned device computes bitwise what the untuned one does", async (gpu) => {
  const dev = adapterNamed(gpu, "test adapter bits");
  const shapes = [
    { m: 64, n: 96, k: 40, transB: true },
    { m: 96, n: 64, k: 64 },
    { m: 64, n: 64, k: 96, transA: true },
  ];
  // Whatever the timing picks (a challenger needs no margin here), the results stay.
  await tuneMatmul(dev, { shapes, ...QUICK, margin: 0, candidates: undefined });
  for (const s of shapes) {
    const { m, n, k } = s;
    const a = tensorFromArray(dev, Float32Array.from(randomValues(m * k, 5)), [m * k], "A");
    const b = tensorFromArray(dev, Float32Array.from(randomValues(k * n, 6)), [k * n], "B");
    const run = async () => {
      const c = createTensor(dev, [m * n], "f32", "C");
      const rec = new Recorder(dev);
      matmul(rec, { ...s, a, b, c, alpha: 0.5 });
      await rec.submit();
      const out = await c.download();
      c.destroy();
      return out;
    };
    const tuned = await run();
    const probeC = createTensor(dev, [m * n], "f32", "C");
    const tunedVariant = matmulVariantsUsed(dev, (rec) => matmul(rec, { ...s, a, b, c: probeC }));
    probeC.destroy();
    setMatmulTuner(dev, undefined);
    const untuned = await run();
    assertEquals(tuned, untuned, `${JSON.stringify(s)}: tuned ${tunedVariant}`);
    a.destroy();
    b.destroy();
    await tuneMatmul(dev, { shapes, ...QUICK }); // reinstall (from memory) for the next shape
  }
  setMatmulTuner(dev, undefined);
});

gpuTest(
  "autotune: disabled by --no-autotune or EHFT_NO_AUTOTUNE, without touching the cache",
  async (gpu) => {
    await withTempDir(async (dir) => {
      const file = `${dir}/tune.json`;
      const big = linearTuneShapes(512, [[256, 256]], true);
      const dev = adapterNamed(gpu, "test adapter disabled");
      await withEnv({ EHFT_NO_AUTOTUNE: undefined, EHFT_TUNE_CACHE: file }, async () => {
        const off = tuneRequest({ noAutotune: true });
        assertEquals(off.enabled, false);
        assertEquals(await autotuneForProgram(dev, off, big), null);
      });
      await withEnv({ EHFT_NO_AUTOTUNE: "1", EHFT_TUNE_CACHE: file }, async () => {
        const off = tuneRequest({});
        assertEquals(off.enabled, false);
        assertEquals(await autotuneForProgram(dev, off, big), null);
      });
      // The toolkit's one rule for flag variables (model/env.ts): on for 1/on/yes/true only.
      for (const value of ["0", "off", "no", "false", "  "]) {
        await withEnv({ EHFT_NO_AUTOTUNE: value }, () => assert(tuneRequest({}).enabled, value));
      }
      for (const value of ["on", "YES", " true "]) {
        await withEnv({ EHFT_NO_AUTOTUNE: value }, () => assert(!tuneRequest({}).enabled, value));
      }
      // Products too small to tune: nothing timed, nothing read or written.
      await withEnv({ EHFT_NO_AUTOTUNE: undefined, EHFT_TUNE_CACHE: file }, async () => {
        const small = linearTuneShapes(48, [[24, 37]], true);
        assertEquals(await autotuneForProgram(dev, tuneRequest({}), small), null);
      });
      assertThrows(() => Deno.statSync(file), Deno.errors.NotFound);
      // Nothing installed: matmul runs its heuristic, as on the untouched device.
      const t = (n: number) => createTensor(dev, [n], "f32", "t");
      const [a, b, c] = [t(512 * 256), t(512 * 256), t(512 * 256)];
      for (const s of big) {
        const record = (rec: Recorder) => matmul(rec, { ...s, a, b, c });
        assertEquals(matmulVariantsUsed(dev, record), matmulVariantsUsed(gpu, record));
      }
      for (const x of [a, b, c]) x.destroy();
    });
  },
);

gpuTest(
  "autotune: a run waits for another one tuning into the same file, then reuses its choice",
  async (gpu) => {
    // Runs started together on an empty cache each tuned the same classes, side by side.
    await withTempDir(async (dir) => {
      const file = `${dir}/tune.json`;
      // What the other process will write: tuned here into a file of its own.
      await tuneMatmul(adapterNamed(gpu, "test adapter A"), {
        shapes: [SMALL],
        cacheFile: `${dir}/theirs.json`,
        warn: () => {},
        ...QUICK,
      });
      const other = await Deno.open(`${file}.lock`, { read: true, write: true, create: true });
      await other.lock(true);
      const warnings: string[] = [];
      const waiting = tuneMatmul(adapterNamed(gpu, "test adapter A"), {
        shapes: [SMALL],
        cacheFile: file,
        warn: (line) => warnings.push(line),
        ...QUICK,
      });
      await new Promise((r) => setTimeout(r, 200));
      assertEquals(warnings, [`matmul autotune: waiting for another tune into ${file} to end`]);
      await Deno.copyFile(`${dir}/theirs.json`, file);
      other.close();
      const result = await waiting;
      assertEquals([result.tuned.length, result.fromFile], [0, [SMALL_CLASS]]);
      // A run the file has everything for takes no lock: it never waits behind another tune.
      const busy = await Deno.open(`${file}.lock`, { read: true, write: true });
      await busy.lock(true);
      try {
        const warm = await Promise.race([
          tuneMatmul(adapterNamed(gpu, "test adapter A"), {
            shapes: [SMALL],
            cacheFile: file,
            warn: (line) => warnings.push(line),
            ...QUICK,
          }),
          new Promise<never>((_, reject) =>
            setTimeout(() => reject(new Error("waited for the lock")), 5000)
          ),
        ]);
        assertEquals([warm.tuned.length, warm.fromFile], [0, [SMALL_CLASS]]);
        assertEquals(warnings.length, 1, warnings.join(" | "));
      } finally {
        busy.close();
      }
    });
  },
);

Deno.test("autotune: a GPU times the large class at a GPU's size, with the tiled variants", () => {
  const forward = { m: 4096, n: 1024, k: 1024, transB: true };
  assertEquals(representativeShape(forward), {
    m: 512,
    n: 512,
    k: 256,
    transA: false,
    transB: true,
    count: 1,
    f16Math: false,
  });
  assertEquals(representativeShape(forward, false), {
    m: 2048,
    n: 2048,
    k: 1024,
    transA: false,
    transB: true,
    count: 1,
    f16Math: false,
  });
  // Small classes are timed alike on both (their products are over before a submit's cost is).
  assertEquals(representativeShape({ m: 4096, n: 8, k: 1024 }, false).n, 8);
  assert(!defaultCandidates(true).some((v) => v.startsWith("tiled") || v.startsWith("nn_")));
  const gpuOnly = ["tiled_4x4", "tiled_8x8", "tiled_8x8w", "nn_vec4_8x8", "nn_tiled_4x4w"] as const;
  for (const v of gpuOnly) {
    assert(defaultCandidates(false).includes(v), v);
  }
});

gpuTest(
  "autotune: nn_ candidates are timed where an operand is transposed, and compute the same bits",
  async (gpu) => {
    const candidates: MatmulVariant[] = ["vec4_8x8", "nn_vec4_8x8", "nn_tiled_4x4"];
    const r = await tuneMatmul(adapterNamed(gpu, "nn adapter"), {
      shapes: [
        { m: 32, n: 32, k: 8 },
        { m: 32, n: 32, k: 8, transB: true },
        { m: 32, n: 32, k: 8, transA: true },
      ],
      budgetMs: 1,
      rounds: 1,
      candidates,
    });
    const timed = Object.fromEntries(r.tuned.map((t) => [t.class, Object.keys(t.ms).sort()]));
    const heuristic = r.tuned[0].heuristic;
    // Without a transposed operand an nn_ variant would run its kernel as is: not timed.
    assertEquals(timed["NN:ss"], [...new Set([heuristic, "vec4_8x8"])].sort());
    for (const cls of ["NT:ss", "TN:ss"]) {
      assert(timed[cls].includes("nn_vec4_8x8") && timed[cls].includes("nn_tiled_4x4"), cls);
    }
    assertEquals(r.tuned.flatMap((t) => t.differs), [], "every candidate bitwise equal");
  },
);

Deno.test("autotune: the cache file's location: flag, EHFT_TUNE_CACHE, XDG_CACHE_HOME, ~/.cache", async () => {
  await withEnv(
    { EHFT_TUNE_CACHE: undefined, XDG_CACHE_HOME: "/x/cache", HOME: "/home/u" },
    () => {
      assertEquals(defaultMatmulCacheFile(), "/x/cache/ehft/matmul-tune.json");
      assertEquals(tuneRequest({}).cacheFile, "/x/cache/ehft/matmul-tune.json");
      assertEquals(tuneRequest({ tuneCache: "/f.json" }).cacheFile, "/f.json");
    },
  );
  await withEnv({ EHFT_TUNE_CACHE: undefined, XDG_CACHE_HOME: undefined, HOME: "/home/u" }, () => {
    assertEquals(defaultMatmulCacheFile(), "/home/u/.cache/ehft/matmul-tune.json");
  });
  // As the data and corpus caches read it: `~` expanded, trailing slashes trimmed.
  await withEnv({ EHFT_TUNE_CACHE: undefined, XDG_CACHE_HOME: "~/c/", HOME: "/home/u/" }, () => {
    assertEquals(defaultMatmulCacheFile(), "/home/u/c/ehft/matmul-tune.json");
  });
  await withEnv({ EHFT_TUNE_CACHE: "/e.json", XDG_CACHE_HOME: "/x" }, () => {
    assertEquals(tuneRequest({}).cacheFile, "/e.json");
    assertEquals(tuneRequest({ tuneCache: "/f.json" }).cacheFile, "/f.json", "the flag wins");
  });
});

Deno.test("autotune: train.ts's flags", () => {
  const base = ["--task", "rte", "--model", "m", "--data", "d"];
  assertEquals(parseTrainArgs(base).tune, {
    noAutotune: false,
    retune: false,
    tuneCache: undefined,
  });
  assertEquals(
    parseTrainArgs([...base, "--no-autotune", "--tune-cache", "/t.json"]).tune,
    { noAutotune: true, retune: false, tuneCache: "/t.json" },
  );
  assertEquals(parseTrainArgs([...base, "--retune"]).tune.retune, true);
  assertThrows(
    () => parseTrainArgs([...base, "--retune", "--no-autotune"]),
    FlagError,
    "choose one",
  );
  // Not a setting of the run: run.json (and --resume's comparison) never sees it.
  const { config } = parseTrainArgs([...base, "--no-autotune"]);
  assert(!Object.keys(config).some((k) => /tune/i.test(k)), Object.keys(config).join(","));
});

Deno.test("autotune: the tests' tiny models have no product worth tuning", async () => {
  for (const name of ["tiny-bert", "tiny-roberta", "tiny-bert-wic"]) {
    const path = new URL(`./fixtures/${name}/config.json`, import.meta.url).pathname;
    const config = await readConfig(path);
    const shapes = modelTuneShapes(config, {
      rows: 32 * 128,
      headRows: 32,
      headFeatures: (name.endsWith("wic") ? 5 : 1) * config.hiddenSize,
      headWidth: 2048,
      headClasses: 3,
      backward: true,
    });
    assertEquals(shapes.filter(worthTuning), [], name);
  }
  // BERT-mini's are: all three products of its linear layers.
  const mini = { hiddenSize: 256, intermediateSize: 1024, embeddingSize: 256 };
  const shapes = modelTuneShapes(mini as Parameters<typeof modelTuneShapes>[0], {
    rows: 4096,
    headRows: 32,
    headFeatures: 256,
    headWidth: 2048,
    headClasses: 2,
    backward: true,
  }).filter(worthTuning);
  const classes = new Set(
    shapes.map((s) => matmulShapeClass(s.m, s.n, s.k, !!s.transA, !!s.transB)),
  );
  assertEquals([...classes].sort(), [
    "NN:ll",
    "NN:lm",
    "NT:ll",
    "NT:lm",
    "TN:lm",
    "TN:ml",
    "TN:mm",
  ]);
});

gpuTest(
  "autotune: training on a tuned device gives bitwise the run of an untuned one",
  async (gpu) => {
    await withTempDir(async (dir) => {
      await writeTinyBert(`${dir}/model`);
      await writeMarkerData(`${dir}/data`, 64, 16);
      // Batch 64: the head's 64×2048 forward product is worth tuning, so the tune runs and installs
      // the file's entry, which sends every product of the step (every class) to a variant other
      // than the heuristic's: the shared-memory tile64, the barrier-free scalar direct4x4, vec4_8x8.
      const file = `${dir}/tune.json`;
      const sizes = ["t", "s", "m", "l"];
      const others: MatmulVariant[] = ["tile64", "direct4x4", "vec4_8x8"];
      const entry: Record<string, string> = { kernels: MATMUL_KERNELS_VERSION };
      let i = 0;
      for (const t of ["NN", "NT", "TN", "TT"]) {
        for (const m of sizes) for (const n of sizes) entry[`${t}:${m}${n}`] = others[i++ % 3];
      }
      await Deno.writeTextFile(file, JSON.stringify({ [gpu.description]: entry }));
      const run = async (out: string, autotune?: TuneRequest) => {
        const { config } = parseTrainArgs([
          ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`, "--out", out],
          ...["--strategy", "ft", "--max-steps", "2", "--batch-size", "64", "--lr", "1e-3"],
        ]);
        await runTraining(config, { task: rte, quiet: true, autotune });
        return [
          await Deno.readTextFile(`${out}/log.jsonl`),
          await Deno.readFile(`${out}/model/model.safetensors`),
        ] as const;
      };
      try {
        const untuned = await run(`${dir}/untuned`);
        const tuned = await run(`${dir}/tuned`, { enabled: true, retune: false, cacheFile: file });
        // The file's choices were installed (and the file was not rewritten: nothing was timed).
        const t = (n: number) => createTensor(gpu, [n], "f32", "t");
        const [a, b, c] = [t(64 * 24), t(2048 * 24), t(64 * 2048)];
        const used = matmulVariantsUsed(
          gpu,
          (rec) => matmul(rec, { a, b, c, m: 64, n: 2048, k: 24, transB: true }),
        );
        assertEquals(used, [entry["NT:ml"]]);
        for (const x of [a, b, c]) x.destroy();
        assertEquals(JSON.parse(await Deno.readTextFile(file))[gpu.description], entry);
        assertEquals(tuned[0], untuned[0], "log.jsonl (losses, gradient norms, metrics)");
        assert(
          tuned[1].length === untuned[1].length && tuned[1].every((x, j) => x === untuned[1][j]),
        );
      } finally {
        setMatmulTuner(gpu, undefined);
      }
    });
  },
);

Deno.test("autotune: the summary line lists this run's classes, and counts the others", () => {
  // The table holds every choice installed for the device, earlier runs' other shapes included.
  const gpu = { description: "llvmpipe" } as Gpu;
  const line = describeTune(gpu, {
    table: { "NN:ll": "vec4_8x16", "NN:mm": "vec4_16x8", "NT:ll": "vec4_8x8", "TN:mm": "vec4_8x8" },
    tuned: [],
    fromFile: ["NN:mm", "NN:ll"],
    fromMemory: [],
    seconds: 0,
    cacheFile: "/c/tune.json",
    saved: false,
  });
  assertEquals(
    line,
    "matmul autotune: llvmpipe: 2 shape classes from /c/tune.json; choices NN:ll=vec4_8x16 " +
      "NN:mm=vec4_16x8 (and 2 for other shapes)",
  );
});

Deno.test("autotune: batched products (attention's per-head ones) are classes of their own", () => {
  assertEquals(matmulShapeClass(128, 128, 64, false, true), "NT:mm");
  assertEquals(matmulShapeClass(128, 128, 64, false, true, 1), "NT:mm");
  assertEquals(matmulShapeClass(128, 128, 64, false, true, 512), "bNT:mm");
  // RoBERTa-large at 32 × 128 tokens: 512 products per call, three classes in all.
  const shapes = attentionTuneShapes(32, 128, 16, 64, true);
  assertEquals(shapes.length, 6);
  assert(shapes.every((s) => s.count === 512 && worthTuning(s)));
  const classes = new Set(
    shapes.map((s) => matmulShapeClass(s.m, s.n, s.k, !!s.transA, !!s.transB, s.count)),
  );
  assertEquals([...classes].sort(), ["bNN:mm", "bNT:mm", "bTN:mm"]);
  assertEquals(attentionTuneShapes(32, 128, 16, 64, false).length, 2);
  // Timed as a batch of their own sizes, whatever the caller's batch.
  assertEquals(representativeShape(shapes[0], false), {
    m: 128,
    n: 128,
    k: 64,
    transA: false,
    transB: true,
    count: 256,
    f16Math: false,
  });
  assertEquals(representativeShape(shapes[0]).count, 4);
  // modelTuneShapes adds them only when told the sequences.
  const large = {
    hiddenSize: 1024,
    intermediateSize: 4096,
    embeddingSize: 1024,
    numHeads: 16,
    headDim: 64,
  };
  const o = {
    rows: 4096,
    headRows: 32,
    headFeatures: 1024,
    headWidth: 2048,
    headClasses: 1,
    backward: true,
  };
  const config = large as Parameters<typeof modelTuneShapes>[0];
  assert(!modelTuneShapes(config, o).some((s) => (s.count ?? 1) > 1));
  const withAttention = modelTuneShapes(config, { ...o, attention: { sequences: 32, seq: 128 } });
  assertEquals(withAttention.filter((s) => (s.count ?? 1) > 1), shapes);
});

gpuTest(
  "autotune: batched classes are tuned on a CPU adapter only when asked, and keep the bits",
  async (gpu) => {
    const dev = adapterNamed(gpu, "test adapter batched");
    const shape = { m: 80, n: 72, k: 12, transB: true, count: 3 };
    const quiet = {
      budgetMs: 1,
      rounds: 1,
      candidates: ["vec4_4x4", "nn_vec4_4x4"] as MatmulVariant[],
    };
    const none = await tuneMatmul(dev, { shapes: [shape], ...quiet });
    assertEquals(none.tuned, [], "not by default on a CPU adapter");
    const r = await tuneMatmul(dev, { shapes: [shape], ...quiet, batched: true, margin: -10 });
    assertEquals(r.tuned.map((t) => t.class), ["bNT:mm"]);
    const t = r.tuned[0];
    assertEquals(t.shape.count, 4);
    // No nn_ variant for a batch (it would run its kernel as it is); the candidate's bits agree.
    assertEquals(Object.keys(t.ms).sort(), [...new Set([t.heuristic, "vec4_4x4"])].sort());
    assertEquals(t.differs, []);
    // Any margin below −1 makes the challenger win: the batched call now runs it, the same call
    // unbatched does not, and both compute what the untuned device does.
    assertEquals(t.chosen, "vec4_4x4");
    const { m, n, k, count } = shape;
    const a = tensorFromArray(dev, Float32Array.from(randomValues(count * m * k, 7)), [
      count * m * k,
    ], "A");
    const b = tensorFromArray(dev, Float32Array.from(randomValues(count * n * k, 8)), [
      count * n * k,
    ], "B");
    const args = (c: ReturnType<typeof createTensor>, products: number) => ({
      a,
      b,
      c,
      m,
      n,
      k,
      transB: true,
      batch0: { count: products, strideA: m * k, strideB: n * k, strideC: m * n },
    });
    const run = async (products: number) => {
      const c = createTensor(dev, [count * m * n], "f32", "C");
      const rec = new Recorder(dev);
      matmul(rec, args(c, products));
      await rec.submit();
      const out = await c.download();
      c.destroy();
      return out;
    };
    const probe = createTensor(dev, [count * m * n], "f32", "C");
    assertEquals(matmulVariantsUsed(dev, (rec) => matmul(rec, args(probe, count))), ["vec4_4x4"]);
    assertEquals(matmulVariantsUsed(dev, (rec) => matmul(rec, args(probe, 1))), [t.heuristic]);
    probe.destroy();
    const tuned = await run(count);
    setMatmulTuner(dev, undefined);
    assertEquals(tuned, await run(count));
    a.destroy();
    b.destroy();
  },
);

Deno.test("autotune: f16-arithmetic products are classes of their own", () => {
  assertEquals(matmulShapeClass(4096, 1024, 1024, false, true, 1, true), "hNT:ll");
  assertEquals(matmulShapeClass(4096, 1024, 1024, false, true), "NT:ll");
  const half = linearTuneShapes(4096, [[1024, 4096]], true, true);
  assertEquals(half.map((s) => s.f16Math), [true, true, true]);
  assertEquals(representativeShape(half[0], false).f16Math, true);
  // The model's: the encoder's linear products in f16 arithmetic, the head's not.
  const config = { hiddenSize: 64, intermediateSize: 128, embeddingSize: 64, numHeads: 2 };
  const o = { rows: 512, headRows: 4, headFeatures: 64, headWidth: 2048, headClasses: 1 };
  const shapes = modelTuneShapes(config as Parameters<typeof modelTuneShapes>[0], {
    ...o,
    backward: true,
    f16Math: true,
  });
  assertEquals(shapes.map((s) => s.f16Math ?? false), [
    ...Array(9).fill(true),
    ...Array(6).fill(false),
  ]);
  // Only the f16-arithmetic kernels compete in their classes (and only there).
  assert(defaultCandidates(false).includes("tiled_8x8dk32h"));
  assert(!defaultCandidates(true).some((v) => v.endsWith("h")));
});

gpuTest(
  "autotune: f16-arithmetic classes are tuned on a CPU adapter only when asked, among their kernels",
  async (gpu) => {
    const dev = adapterNamed(gpu, "test adapter f16Math");
    const shape = { m: 512, n: 1024, k: 256, transB: true, f16Math: true };
    const quiet = { budgetMs: 1, rounds: 1 };
    const none = await tuneMatmul(dev, { shapes: [shape], ...quiet });
    assertEquals(none.tuned, [], "not by default on a CPU adapter");
    const candidates: MatmulVariant[] = ["vec4_4x4", "tiled_4x4dk16h", "tiled_8x8dk32h"];
    const r = await tuneMatmul(dev, {
      shapes: [shape],
      ...quiet,
      candidates,
      f16Math: true,
      margin: -10,
    });
    assertEquals(r.tuned.map((t) => t.class), ["hNT:ll"]);
    const t = r.tuned[0];
    // The heuristic's f16 kernel and the f16 candidates, never an f32-sum one; all the same bits.
    assertEquals(t.heuristic, "tiled_8x8dk16h");
    assertEquals(Object.keys(t.ms).sort(), ["tiled_4x4dk16h", "tiled_8x8dk16h", "tiled_8x8dk32h"]);
    assertEquals(t.differs, []);
    assert(t.chosen !== t.heuristic, "a margin below -1 makes a challenger win");
    const a = createTensor(dev, [512 * 256], "f16", "A");
    const b = createTensor(dev, [1024 * 256], "f16", "B");
    const c = createTensor(dev, [512 * 1024], "f32", "C");
    const args = { a, b, c, m: 512, n: 1024, k: 256, transB: true };
    assertEquals(matmulVariantsUsed(dev, (rec) => matmul(rec, { ...args, f16Math: true })), [
      t.chosen,
    ]);
    // The same product in f32 sums keeps its own (untuned) choice.
    assert(!matmulVariantsUsed(dev, (rec) => matmul(rec, args))[0].endsWith("h"));
    setMatmulTuner(dev, undefined);
    for (const x of [a, b, c]) x.destroy();
  },
);

gpuTest(
  "autotune: a choice of the other arithmetic is never run, from a tuner or a cache file",
  async (gpu) => {
    const dev = adapterNamed(gpu, "test adapter arithmetic");
    const a = createTensor(dev, [512 * 256], "f16", "A");
    const b = createTensor(dev, [1024 * 256], "f16", "B");
    const c = createTensor(dev, [512 * 1024], "f32", "C");
    const args = { a, b, c, m: 512, n: 1024, k: 256, transB: true };
    const ran = (f16Math: boolean) =>
      matmulVariantsUsed(dev, (rec) => matmul(rec, { ...args, f16Math }))[0];
    const untuned = [ran(false), ran(true)];
    // Tuners that ignore the product's kind (as some tests install): the other kind is passed by.
    for (const v of ["vec4_4x4", "tiled_4x4dk16h"] as MatmulVariant[]) {
      setMatmulTuner(dev, () => v);
      const half = v.endsWith("h");
      assertEquals([ran(false), ran(true)], half ? [untuned[0], v] : [v, untuned[1]]);
    }
    setMatmulTuner(dev, undefined);
    for (const x of [a, b, c]) x.destroy();
    // A cache entry naming an f32-sum kernel for an "h" class: warned about, tuned again.
    await withTempDir(async (dir) => {
      const file = `${dir}/tune.json`;
      const shape = { m: 512, n: 1024, k: 256, transB: true, f16Math: true };
      await Deno.writeTextFile(
        file,
        JSON.stringify({
          [dev.description]: { kernels: MATMUL_KERNELS_VERSION, "hNT:ll": "vec4_4x4" },
        }),
      );
      const warnings: string[] = [];
      const r = await tuneMatmul(dev, {
        shapes: [shape],
        cacheFile: file,
        f16Math: true,
        candidates: ["tiled_4x4dk16h"],
        budgetMs: 1,
        rounds: 1,
        warn: (l) => warnings.push(l),
      });
      assertEquals(warnings, [
        `matmul autotune: ${file}: the entry of "${dev.description}" names vec4_4x4 for ` +
        "hNT:ll, a class of the other arithmetic; tuning again",
      ]);
      assertEquals(r.tuned.map((t) => t.class), ["hNT:ll"]);
      assert(r.table["hNT:ll"].endsWith("h"), r.table["hNT:ll"]);
      setMatmulTuner(dev, undefined);
    });
  },
);

Deno.test('autotune: attention\'s products in f16 arithmetic are batched f16 classes ("hb")', () => {
  const half = attentionTuneShapes(32, 128, 16, 64, true, true);
  const classes = half.map((s) =>
    matmulShapeClass(s.m, s.n, s.k, s.transA ?? false, s.transB ?? false, s.count, s.f16Math)
  );
  assertEquals([...new Set(classes)].sort(), ["hbNN:mm", "hbNT:mm", "hbTN:mm"]);
  const config = {
    hiddenSize: 64,
    intermediateSize: 128,
    embeddingSize: 64,
    numHeads: 2,
    headDim: 32,
  };
  const o = { rows: 512, headRows: 4, headFeatures: 64, headWidth: 2048, headClasses: 1 };
  const shapes = modelTuneShapes(config as Parameters<typeof modelTuneShapes>[0], {
    ...o,
    backward: true,
    attention: { sequences: 4, seq: 128 },
    f16Math: true,
  });
  // The encoder's linear and attention products in f16 arithmetic, the head's not.
  assertEquals(shapes.filter((s) => !s.f16Math).length, 6);
  assertEquals(shapes.filter((s) => s.f16Math && (s.count ?? 1) > 1).length, 6);
});

Deno.test("autotune: attention's batched products are worth tuning whatever their length", () => {
  // A batch's longest row of 127 tokens: the vec4 kernels cannot read its products, a tiled
  // choice stages them with scalar loads, so their classes are tuned (on aligned products).
  const shapes = attentionTuneShapes(32, 127, 16, 64, true);
  assert(shapes.every(worthTuning), JSON.stringify(shapes.filter((s) => !worthTuning(s))));
  // An unbatched misaligned product is not: its class's aligned members decide.
  assert(!worthTuning({ m: 1024, n: 1024, k: 4063, transA: true }));
  assert(worthTuning({ m: 1024, n: 1024, k: 4064, transA: true }));
});
