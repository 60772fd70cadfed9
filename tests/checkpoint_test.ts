import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import {
  CheckpointError,
  findWeightsFile,
  loadBackbone,
  loadHead,
  openWeights,
  readHeadShape,
  saveModel,
  type SaveModelOptions,
} from "../model/checkpoint.ts";
import { exists } from "../model/atomic_write.ts";
import { type ModelConfig, readConfig } from "../model/config.ts";
import { encoderParameterShapes } from "../model/encoder.ts";
import { openSafetensors, type SafetensorsReader, writeSafetensors } from "../model/safetensors.ts";
import type { Gpu } from "../kernels/device.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";

const FIXTURE = new URL("./fixtures/tiny-bert/", import.meta.url).pathname;

type Tensors = Parameters<typeof writeSafetensors>[1];

/** The fixture's tensors, renamed (or dropped, when `rename` returns null). */
async function fixtureTensors(rename: (name: string) => string | null): Promise<Tensors> {
  const source = await openSafetensors(`${FIXTURE}/model.safetensors`);
  const out: Tensors = {};
  for (const [name, info] of source.tensors) {
    const to = rename(name);
    if (to) out[to] = { dtype: "F32", shape: info.shape, data: await source.readF32(name) };
  }
  source.close();
  return out;
}

function backboneTensors(gpu: Gpu, config: ModelConfig): Map<string, Tensor> {
  const map = new Map<string, Tensor>();
  for (const [name, shape] of encoderParameterShapes(config)) {
    map.set(name, createTensor(gpu, shape, "f32", name));
  }
  return map;
}

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function expectLoaded(reader: SafetensorsReader, params: Map<string, Tensor>) {
  const reference = await openSafetensors(`${FIXTURE}/model.safetensors`);
  for (const [name, t] of params) {
    assertEquals(await t.download(), await reference.readF32(`bert.${name}`), name);
  }
  reference.close();
  reader.close();
}

gpuTest("checkpoint: names with or without prefix and legacy LayerNorm names load", async (gpu) => {
  const config = await readConfig(`${FIXTURE}/config.json`);
  await withDir(async (dir) => {
    const variants: [string, (n: string) => string | null][] = [
      ["prefixed", (n) => n],
      ["bare", (n) => n.replace(/^bert\./, "")],
      [
        "legacy",
        (n) =>
          n.replace(/LayerNorm\.weight$/, "LayerNorm.gamma").replace(
            /LayerNorm\.bias$/,
            "LayerNorm.beta",
          ),
      ],
    ];
    for (const [label, rename] of variants) {
      const tensors = await fixtureTensors(rename);
      // Tensors the encoder deliberately ignores.
      tensors["bert.pooler.dense.weight"] = { dtype: "F32", shape: [1], data: new Float32Array(1) };
      tensors["cls.predictions.bias"] = { dtype: "F32", shape: [1], data: new Float32Array(1) };
      tensors["bert.embeddings.position_ids"] = {
        dtype: "I64",
        shape: [1],
        data: new BigInt64Array(1),
      };
      await writeSafetensors(`${dir}/${label}.safetensors`, tensors);
      const reader = await openSafetensors(`${dir}/${label}.safetensors`);
      const params = backboneTensors(gpu, config);
      const used = await loadBackbone(reader, config, params);
      assertEquals(used.size, params.size, label);
      assert(![...used].some((n) => n.includes("pooler") || n.startsWith("cls.")), label);
      await expectLoaded(reader, params);
    }
  });
});

gpuTest("checkpoint: F16 and BF16 checkpoints load into float32", async (gpu) => {
  const config = await readConfig(`${FIXTURE}/config.json`);
  await withDir(async (dir) => {
    for (const dtype of ["F16", "BF16"] as const) {
      const tensors = await fixtureTensors((n) => n);
      for (const t of Object.values(tensors)) t.dtype = dtype;
      await writeSafetensors(`${dir}/half.safetensors`, tensors);
      const reader = await openSafetensors(`${dir}/half.safetensors`);
      const params = backboneTensors(gpu, config);
      await loadBackbone(reader, config, params);
      const name = "encoder.layer.1.output.dense.weight";
      const got = await params.get(name)!.download();
      const want = await reader.readF32(`bert.${name}`);
      assertEquals(got, want, dtype);
      const original = tensors[`bert.${name}`].data as Float32Array;
      const rounded = dtype === "F16"
        ? Float32Array.from(original, (v) => Math.f16round(v))
        : Float32Array.from(original, (v) => {
          const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
          const r = (bits + 0x7fff + ((bits >>> 16) & 1)) & 0xffff0000;
          return new Float32Array(new Uint32Array([r]).buffer)[0];
        });
      assertEquals(got, rounded, `${dtype} rounding`);
      reader.close();
    }
  });
});

gpuTest(
  "checkpoint: a NaN or infinite weight names the file, the tensor and the element",
  async (gpu) => {
    const config = await readConfig(`${FIXTURE}/config.json`);
    await withDir(async (dir) => {
      for (const [bad, shown] of [[NaN, "NaN"], [Infinity, "Infinity"], [-Infinity, "-Infinity"]]) {
        const tensors = await fixtureTensors((n) => n);
        const name = "bert.encoder.layer.1.output.dense.bias";
        const values = Float32Array.from(tensors[name].data as Float32Array);
        values[5] = bad as number;
        tensors[name] = { ...tensors[name], data: values };
        tensors["head.dense.bias"] = {
          ...tensors["head.dense.bias"],
          data: Float32Array.from(
            tensors["head.dense.bias"].data as Float32Array,
            (v, i) => i === 7 ? bad as number : v,
          ),
        };
        await writeSafetensors(`${dir}/bad.safetensors`, tensors);
        const reader = await openSafetensors(`${dir}/bad.safetensors`);
        await assertRejects(
          () => loadBackbone(reader, config, backboneTensors(gpu, config)),
          CheckpointError,
          `${dir}/bad.safetensors: tensor "${name}" holds ${shown} (element 5 of ${values.length}): ` +
            "the file is damaged",
        );
        const head = new Map([[
          "head.dense.bias",
          createTensor(gpu, [2048], "f32", "head.dense.bias"),
        ]]);
        await assertRejects(
          () => loadHead(reader, head),
          CheckpointError,
          `tensor "head.dense.bias" holds ${shown} (element 7 of 2048)`,
        );
        head.get("head.dense.bias")!.destroy();
        reader.close();
      }
      // In a sharded model, the shard that holds the tensor is named, not the index.
      const tensors = await fixtureTensors((n) => n);
      const name = "bert.encoder.layer.0.output.dense.bias";
      tensors[name] = {
        ...tensors[name],
        data: Float32Array.from(tensors[name].data as Float32Array, (v, i) => i ? v : NaN),
      };
      const shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
      const names = Object.keys(tensors);
      const second = new Set(names.filter((n) => n.includes("layer.0.")));
      const weightMap = Object.fromEntries(names.map((n) => [n, shards[second.has(n) ? 1 : 0]]));
      for (const [i, shard] of shards.entries()) {
        await writeSafetensors(
          `${dir}/${shard}`,
          Object.fromEntries(
            names.filter((n) => second.has(n) === (i === 1)).map((n) => [n, tensors[n]]),
          ),
        );
      }
      const index = `${dir}/model.safetensors.index.json`;
      await Deno.writeTextFile(index, JSON.stringify({ metadata: {}, weight_map: weightMap }));
      const sharded = await openSafetensors(index);
      await assertRejects(
        () => loadBackbone(sharded, config, backboneTensors(gpu, config)),
        CheckpointError,
        `${dir}/${shards[1]}: tensor "${name}" holds NaN (element 0 of `,
      );
      sharded.close();
    });
  },
);

gpuTest("checkpoint: a missing tensor or a wrong shape names the tensor", async (gpu) => {
  const config = await readConfig(`${FIXTURE}/config.json`);
  await withDir(async (dir) => {
    const missing = await fixtureTensors((n) =>
      n === "bert.encoder.layer.1.output.dense.bias" ? null : n
    );
    await writeSafetensors(`${dir}/missing.safetensors`, missing);
    const r1 = await openSafetensors(`${dir}/missing.safetensors`);
    await assertRejects(
      () => loadBackbone(r1, config, backboneTensors(gpu, config)),
      CheckpointError,
      'missing tensor "bert.encoder.layer.1.output.dense.bias"',
    );
    r1.close();
    const wrong = await fixtureTensors((n) => n);
    wrong["bert.embeddings.word_embeddings.weight"] = {
      dtype: "F32",
      shape: [100, 24],
      data: new Float32Array(2400),
    };
    await writeSafetensors(`${dir}/wrong.safetensors`, wrong);
    const r2 = await openSafetensors(`${dir}/wrong.safetensors`);
    const e = await assertRejects(
      () => loadBackbone(r2, config, backboneTensors(gpu, config)),
      CheckpointError,
      'tensor "bert.embeddings.word_embeddings.weight" has shape [100, 24]',
    );
    assert(e.message.includes("[101, 24]"), e.message);
    r2.close();
  });
});

Deno.test("checkpoint: pytorch_model.bin alone is refused with a conversion hint", async () => {
  await withDir(async (dir) => {
    await Deno.writeFile(`${dir}/pytorch_model.bin`, new Uint8Array(8));
    await assertRejects(() => findWeightsFile(dir), CheckpointError, "convert it to safetensors");
    await Deno.remove(`${dir}/pytorch_model.bin`);
    await assertRejects(() => findWeightsFile(dir), CheckpointError, "has no model.safetensors");
  });
});

Deno.test("checkpoint: model.safetensors wins over an index, as in transformers and the hub", async () => {
  await withDir(async (dir) => {
    await writeSafetensors(`${dir}/model.safetensors`, {
      "bert.pooler.dense.bias": { dtype: "F32", shape: [2], data: new Float32Array([5, 6]) },
    });
    // The index names shards that are absent: what the hub cache accepts (model/hub.ts checks
    // only model.safetensors when it is there) must load too.
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({
        weight_map: { "bert.pooler.dense.bias": "model-00001-of-00002.safetensors" },
      }),
    );
    assertEquals(await findWeightsFile(dir), `${dir}/model.safetensors`);
    const r = await openWeights(dir);
    try {
      assertEquals(await r.readF32("bert.pooler.dense.bias"), new Float32Array([5, 6]));
    } finally {
      r.close();
    }
    // Only the index: the index.
    await Deno.remove(`${dir}/model.safetensors`);
    assertEquals(await findWeightsFile(dir), `${dir}/model.safetensors.index.json`);
  });
});

Deno.test("checkpoint: the head is inferred from its tensors' shapes", async () => {
  const reader = await openSafetensors(`${FIXTURE}/model.safetensors`);
  assertEquals(readHeadShape(reader), { features: 24, hidden: 2048, classes: 1 });
  reader.close();
  await withDir(async (dir) => {
    await writeSafetensors(
      `${dir}/none.safetensors`,
      await fixtureTensors((n) => n.startsWith("head.") ? null : n),
    );
    const none = await openSafetensors(`${dir}/none.safetensors`);
    assertEquals(readHeadShape(none), null);
    none.close();
    await writeSafetensors(
      `${dir}/part.safetensors`,
      await fixtureTensors((n) => n === "head.out_proj.bias" ? null : n),
    );
    const part = await openSafetensors(`${dir}/part.safetensors`);
    assertThrows(() => readHeadShape(part), CheckpointError, 'missing "head.out_proj.bias"');
    part.close();
    const bad = await fixtureTensors((n) => n);
    bad["head.out_proj.weight"] = { dtype: "F32", shape: [1, 7], data: new Float32Array(7) };
    await writeSafetensors(`${dir}/bad.safetensors`, bad);
    const badReader = await openSafetensors(`${dir}/bad.safetensors`);
    assertThrows(() => readHeadShape(badReader), CheckpointError, "out_proj takes 7 inputs");
    badReader.close();
    // Integers are no weights (an I32 bias read as floats' bits gave every logit -1149452800).
    const ints = await fixtureTensors((n) => n);
    ints["head.out_proj.bias"] = { dtype: "I32", shape: [1], data: new Int32Array([3]) };
    await writeSafetensors(`${dir}/ints.safetensors`, ints);
    const intsReader = await openSafetensors(`${dir}/ints.safetensors`);
    assertThrows(
      () => readHeadShape(intsReader),
      CheckpointError,
      `${dir}/ints.safetensors: tensor "head.out_proj.bias" is I32; weights must be F32, F16, ` +
        "BF16 or F64",
    );
    intsReader.close();
    // A head of no units (or no inputs, or no classes) is no head: refused with its shapes.
    for (const [hidden, features, classes] of [[0, 24, 1], [2048, 0, 1], [2048, 24, 0]]) {
      const empty = await fixtureTensors((n) => n);
      const f32 = (shape: number[]) => ({
        dtype: "F32" as const,
        shape,
        data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
      });
      empty["head.dense.weight"] = f32([hidden, features]);
      empty["head.dense.bias"] = f32([hidden]);
      empty["head.out_proj.weight"] = f32([classes, hidden]);
      empty["head.out_proj.bias"] = f32([classes]);
      await writeSafetensors(`${dir}/empty.safetensors`, empty);
      const emptyReader = await openSafetensors(`${dir}/empty.safetensors`);
      assertThrows(
        () => readHeadShape(emptyReader),
        CheckpointError,
        `the head is empty (head.dense.weight [${hidden}, ${features}], head.out_proj.weight ` +
          `[${classes}, ${hidden}])`,
      );
      emptyReader.close();
    }
  });
});

gpuTest(
  "checkpoint: a saved model follows the contract and loads back bit for bit",
  async (gpu) => {
    const config = await readConfig(`${FIXTURE}/config.json`);
    const source = await openSafetensors(`${FIXTURE}/model.safetensors`);
    const backbone = backboneTensors(gpu, config);
    await loadBackbone(source, config, backbone);
    const head = new Map<string, Tensor>();
    for (
      const name of [
        "head.dense.weight",
        "head.dense.bias",
        "head.out_proj.weight",
        "head.out_proj.bias",
      ]
    ) {
      head.set(name, createTensor(gpu, source.tensors.get(name)!.shape, "f32", name));
    }
    await loadHead(source, head);
    await withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/tokenizer.json`, '{"model": {}}');
      await saveModel(`${dir}/saved`, {
        config,
        backbone,
        head,
        metadata: { task: "rte" },
        tokenizerFile: `${dir}/tokenizer.json`,
      });
      const files = [...Deno.readDirSync(`${dir}/saved`)].map((e) => e.name).sort();
      assertEquals(files, ["config.json", "model.safetensors", "tokenizer.json"]);
      assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/saved/config.json`)), config.raw);
      const saved = await openSafetensors(`${dir}/saved/model.safetensors`);
      assertEquals(saved.metadata, {
        format: "pt",
        task: "rte",
        head_features: "24",
        head_hidden: "2048",
        head_classes: "1",
      });
      assertEquals([...saved.tensors.keys()].sort(), [...source.tensors.keys()].sort());
      for (const name of source.tensors.keys()) {
        assertEquals(await saved.readF32(name), await source.readF32(name), name);
      }
      assertEquals(readHeadShape(saved), readHeadShape(source));
      saved.close();

      // What openModel would refuse is refused before anything is written, naming the tensor.
      const refused = async (options: Partial<SaveModelOptions>, problem: string) => {
        const out = `${dir}/refused`;
        await assertRejects(
          () => saveModel(out, { config, backbone, head, ...options }),
          CheckpointError,
          `${out}/model.safetensors: ${problem}`,
        );
        assert(!(await exists(out)), "a refused save made its folder");
      };
      const some = new Map([...backbone].slice(1));
      await refused(
        { backbone: some },
        `the backbone lacks 1 of its ${backbone.size} tensors (the first: ` +
          `"${[...backbone.keys()][0]}"): a saved model holds the whole encoder`,
      );
      const full = new Map([...backbone].map(([n, t]) => [`bert.${n}`, t]));
      await refused(
        { backbone: full },
        `backbone tensor "bert.${[...backbone.keys()][0]}" is not one of a bert encoder's (its ` +
          `names are relative to "bert.", as encoderParameters gives them: drop the "bert.")`,
      );
      // A file where the folder goes: one CheckpointError naming it, the file kept.
      await Deno.writeTextFile(`${dir}/a-file`, "mine\n");
      await assertRejects(
        () => saveModel(`${dir}/a-file`, { config, backbone, head }),
        CheckpointError,
        `${dir}/a-file: cannot make the model's folder: `,
      );
      assertEquals(await Deno.readTextFile(`${dir}/a-file`), "mine\n");
      const dense = backbone.get("embeddings.LayerNorm.weight")!;
      const wrong = createTensor(gpu, [dense.shape[0] + 1], "f32", "wrong");
      await refused(
        { backbone: new Map([...backbone, ["embeddings.LayerNorm.weight", wrong]]) },
        `backbone tensor "embeddings.LayerNorm.weight" has shape [${dense.shape[0] + 1}], but ` +
          `the config (hidden_size ${config.hiddenSize}) needs [${dense.shape[0]}]`,
      );
      wrong.destroy();
      const renamed = new Map([...head].map(([n, t]) => [n.replace("out_proj", "out"), t]));
      await refused(
        { head: renamed },
        'head tensor "head.out.weight" is not one of the head\'s (head.dense.weight, ' +
          "head.dense.bias, head.out_proj.weight, head.out_proj.bias)",
      );
      await refused(
        { head: new Map([...head].slice(1)) },
        'incomplete head: missing "head.dense.weight"',
      );
      const half = createTensor(gpu, [3], "f16", "half");
      await refused(
        { extra: new Map([["prefix.rows", half]]) },
        'tensor "prefix.rows" is f16; ' +
          "saveModel saves f32 tensors",
      );
      half.destroy();
      await refused(
        { tokenizerFile: `${dir}/none.json` },
        `tokenizerFile ${dir}/none.json is not a file (a tokenizer.json to copy; ` +
          "convertTokenizerDir gives its contents from a model folder's vocab.txt or vocab.json)",
      );
    });
    source.close();
  },
);
