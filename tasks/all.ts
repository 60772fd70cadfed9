// The task scripts by name, for the entry points that take `--task`.

import type { Task } from "../train/task.ts";
import { rte } from "./rte.ts";

export const TASKS: Readonly<Record<string, Task>> = { rte };

/** The task called `name`, or an error listing the known ones. */
export function taskByName(name: string): Task {
  const task = TASKS[name];
  if (!task) {
    throw new Error(`--task: unknown task "${name}" (known: ${Object.keys(TASKS).join(", ")})`);
  }
  return task;
}
