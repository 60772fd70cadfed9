// Fills a tensor with one value: zeroes buffers that kernels accumulate into (embedding, distance,
// row norms), and in tests poisons outputs, so that an element a kernel forgot to write cannot
// pass by chance.

import { sliceRanges } from "./binding_slices.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import type { Tensor } from "./tensor.ts";
import { GpuError } from "./device.ts";

const WORKGROUP = 256;

const FILL_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
struct Params { value: u32, count: u32 }
@group(0) @binding(1) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) { out[i] = params.value; }
}
`;

const INT_RANGE = { i32: [-(2 ** 31), 2 ** 31 - 1], u32: [0, 2 ** 32 - 1] } as const;

/**
 * The 32-bit word that holds `value` in the tensor's dtype (two copies for f16); null when the
 * dtype cannot hold it (an integer out of an integer dtype's range, or a finite number its float
 * dtype would round to ±∞: ∞ and NaN themselves are held as they are).
 */
function fillWord(value: number, dtype: Tensor["dtype"]): number | null {
  switch (dtype) {
    case "f32": {
      const f = new Float32Array([value]);
      if (Number.isFinite(value) && !Number.isFinite(f[0])) return null;
      return new Uint32Array(f.buffer)[0];
    }
    case "f16": {
      const h = new Float16Array([value]);
      if (Number.isFinite(value) && !Number.isFinite(h[0])) return null;
      const half = new Uint16Array(h.buffer)[0];
      return (half | (half << 16)) >>> 0;
    }
    case "i32":
    case "u32":
      // An integer tensor holds integers: 0.5 or -1 in u32 would be written as something else.
      if (!Number.isInteger(value) || value < INT_RANGE[dtype][0] || value > INT_RANGE[dtype][1]) {
        return null;
      }
      return value >>> 0;
  }
}

/**
 * Records `t[:] = value`. Tensors larger than one storage binding are filled in slices. An i32 or
 * u32 tensor takes only an integer in its range, an f32 or f16 one no finite value beyond its
 * largest (a GpuError otherwise, not a wrapped value or an ∞).
 */
export function fill(rec: Recorder, t: Tensor, value: number): void {
  const gpu = rec.gpu;
  const pipeline = getPipeline(gpu, "fill", FILL_WGSL);
  const word = fillWord(value, t.dtype);
  if (word === null) {
    throw new GpuError(`fill: tensor "${t.label}" is ${t.dtype}, which cannot hold ${value}`);
  }
  // Slices of whole alignment units, so that each one of an aligned tensor starts aligned.
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const maxWords = Math.floor(gpu.limits.maxStorageBufferBindingSize / align) * align / 4;
  for (const s of sliceRanges(t.bindingSize / 4, maxWords)) {
    rec.dispatch(
      "fill",
      pipeline,
      [{ buffer: t.buffer, offset: t.offset + s.start * 4, size: s.count * 4 }],
      grid1d(s.count, WORKGROUP, gpu.limits.maxComputeWorkgroupsPerDimension),
      new Uint32Array([word, s.count]),
    );
  }
}
