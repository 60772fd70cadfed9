// The task scripts by name, for the entry points that take `--task`.

import type { Task } from "../train/task.ts";
import { FlagError } from "../train/flags.ts";
import { boolq } from "./boolq.ts";
import { cb } from "./cb.ts";
import { cola } from "./cola.ts";
import { copa } from "./copa.ts";
import { mrpc } from "./mrpc.ts";
import { qnli } from "./qnli.ts";
import { rte } from "./rte.ts";
import { stsb } from "./stsb.ts";
import { wic } from "./wic.ts";

/** The nine tasks by name (`rte`, `boolq`, ...): each one's data reader, head, loss and metrics. */
export const TASKS: Readonly<Record<string, Task>> = {
  rte,
  boolq,
  copa,
  cb,
  wic,
  mrpc,
  qnli,
  cola,
  stsb,
};

/** The task called `name`, or a FlagError listing the known ones. */
export function taskByName(name: string): Task {
  const task = TASKS[name];
  if (!task) {
    throw new FlagError(`--task: unknown task "${name}" (known: ${Object.keys(TASKS).join(", ")})`);
  }
  return task;
}
