// A scratch buffer an op keeps per device between calls, grown on demand. Sharing one is safe
// where an op writes and reads it only between the dispatches of one call (dispatches run in
// order). A view lasts until the next view that grows the buffer: recording a command with it
// after that is refused. An outgrown buffer is destroyed once no recorded, unsubmitted command
// binds it (`retireBuffer`): a sequence length that keeps growing would otherwise leave one
// buffer per length to the garbage collector, which knows nothing of GPU memory.

import type { Gpu } from "./device.ts";
import { retireBuffer } from "./recorder.ts";
import { createTensor, type DType, Tensor } from "./tensor.ts";

export class Workspace {
  private readonly byGpu = new WeakMap<Gpu, Tensor>();

  /**
   * `label` names the buffer; a new one holds at least `minElements` elements, and with
   * `doubling` at least twice the one it replaces (for workspaces whose need creeps up).
   */
  constructor(
    readonly label: string,
    private readonly minElements = 1,
    private readonly doubling = false,
  ) {}

  /** A view of `shape` at the start of this device's buffer, grown first if needed. */
  view(gpu: Gpu, shape: number[], dtype: DType = "f32"): Tensor {
    const elements = shape.reduce((a, b) => a * b, 1);
    // The buffer counts 4-byte words; an f16 view needs half as many (rounded up).
    const need = dtype === "f16" ? Math.ceil(elements / 2) : elements;
    let t = this.byGpu.get(gpu);
    if (!t || t.numel < need) {
      const grown = this.doubling ? 2 * (t?.numel ?? 0) : 0;
      if (t) retireBuffer(gpu, t.buffer);
      t = createTensor(gpu, [Math.max(need, this.minElements, grown)], "f32", this.label);
      this.byGpu.set(gpu, t);
    }
    if (dtype === "f32") return t.view(0, shape, this.label);
    return new Tensor(gpu, t.buffer, shape, dtype, this.label, t.offset);
  }
}
