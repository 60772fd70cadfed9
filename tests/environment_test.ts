// What a run records of the machine it ran on (train/environment.ts), and the note a --resume
// elsewhere prints (and records). The runs' own files are checked in train_resume_test.ts and
// pretrain_resume_test.ts.

import { assert, assertEquals } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import { H100_ENVIRONMENT } from "./train_fixture.ts";
import { getGpu } from "../kernels/device.ts";
import { EHFT_VERSION } from "../model/download_common.ts";
import {
  describeEnvironment,
  describeRecord,
  resumeElsewhereNote,
  type RunEnvironment,
  runEnvironment,
} from "../train/environment.ts";

const HERE = H100_ENVIRONMENT;

Deno.test({
  name: "environment: this process's versions and its adapter as Deno reports it",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const gpu = await getGpu();
    const e = runEnvironment(gpu);
    assertEquals(e.ehft, EHFT_VERSION);
    assertEquals(e.deno, Deno.version.deno);
    assertEquals(e.os, `${Deno.build.os} ${Deno.build.arch}`);
    assertEquals(e.adapter.description, gpu.adapter.info.description);
    assert(describeEnvironment(e).startsWith(`${gpu.description}, Deno `), describeEnvironment(e));
    // What run.json holds reads back as the same environment: no note.
    const record = { environment: e };
    assertEquals(resumeElsewhereNote("run.json", JSON.parse(JSON.stringify(record)), e), null);
  },
});

Deno.test("environment: a resume on another adapter, Deno or ehft is noted on one line", () => {
  const changes: [string, RunEnvironment][] = [
    ["adapter", { ...HERE, adapter: { ...HERE.adapter, description: "NVIDIA H200" } }],
    ["device id", { ...HERE, adapter: { ...HERE.adapter, device: "8961" } }],
    ["deno", { ...HERE, deno: "2.9.7" }],
    ["ehft", { ...HERE, ehft: "0.2.0" }],
  ];
  for (const [what, now] of changes) {
    const note = resumeElsewhereNote("out/run.json", { environment: HERE }, now);
    assert(note !== null, what);
    assert(
      note.startsWith(
        "--resume: out/run.json records a start on NVIDIA H100 80GB HBM3, Deno 2.9.6, ehft 0.1.0; " +
          `it goes on on ${describeEnvironment(now)}, `,
      ),
      note,
    );
    assert(!note.includes("\n"), note);
  }
  // The OS alone is not a difference the kernels see.
  const os = { ...HERE, os: "linux aarch64" };
  assertEquals(resumeElsewhereNote("run.json", { environment: HERE }, os), null);
  // An adapter without a description is named by its ids.
  const unnamed = { ...HERE, adapter: { ...HERE.adapter, description: "" } };
  assertEquals(describeEnvironment(unnamed), "4318 8960, Deno 2.9.6, ehft 0.1.0");
});

Deno.test("environment: a run file without one (older runs, edited ones) gives no note", () => {
  const { deno: _, ...noDeno } = HERE;
  for (const recorded of [undefined, null, 5, "x", {}, { ...HERE, adapter: null }, noDeno]) {
    const record = { settings: {}, environment: recorded };
    assertEquals(resumeElsewhereNote("run.json", record, HERE), null, JSON.stringify(recorded));
    assertEquals(describeRecord(record), null);
  }
  for (const record of [undefined, null, 5, [HERE]]) {
    assertEquals(resumeElsewhereNote("run.json", record, HERE), null, JSON.stringify(record));
  }
});

Deno.test("environment: a run resumed elsewhere records it; the next resume compares with it", () => {
  const there = { ...HERE, adapter: { ...HERE.adapter, description: "NVIDIA H200" } };
  const record = { environment: HERE, resumed_on: [there, { broken: true }] };
  assertEquals(
    describeRecord(record),
    "NVIDIA H100 80GB HBM3, Deno 2.9.6, ehft 0.1.0 → NVIDIA H200, Deno 2.9.6, ehft 0.1.0",
  );
  // Resumed again where it last ran: nothing to say; back where it started: that is noted.
  assertEquals(resumeElsewhereNote("run.json", record, there), null);
  const back = resumeElsewhereNote("run.json", record, HERE)!;
  assert(back.startsWith("--resume: run.json records a resume on NVIDIA H200, "), back);
});
