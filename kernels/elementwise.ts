// The frame shared by elementwise kernels (GELU, ReLU, add, scale): one invocation per element
// of float32 tensors of any shape and size, on a 1-D grid spread over x and y past 65535
// workgroups. An op file states its operands and its per-element WGSL; this file declares the
// bindings and the uniform, checks the tensors and records the launch.

import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { GpuError } from "./device.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

/** An elementwise kernel: its operands' names in binding order and its compiled-once WGSL. */
export interface ElementwiseKernel {
  /** Names of the f32 arrays the kernel binds, inputs (read-only) first, then the output. */
  readonly bindings: readonly string[];
  /** The kernel's WGSL source (bindings, the uniform struct, the entry point `main`). */
  readonly code: string;
  /** Names of its f32 uniforms after the count, in order (`recordElementwise`'s `params`). */
  readonly params?: readonly string[];
}

/**
 * Builds an elementwise kernel. `body` is WGSL for element `i` (already checked to be below
 * `params.count`) reading the `inputs` arrays and writing the `output` array, all f32 and
 * indexed alike. `params` lists f32 uniforms after the count (e.g. "alpha: f32"), passed to
 * `recordElementwise` in that order; `helpers` is WGSL placed before the entry point.
 */
export function elementwiseKernel(spec: {
  inputs: readonly string[];
  output: string;
  params?: string;
  helpers?: string;
  body: string;
}): ElementwiseKernel {
  const bindings = [...spec.inputs, spec.output];
  const declarations = bindings.map((name, b) => {
    const access = name === spec.output ? "read_write" : "read";
    return `@group(0) @binding(${b}) var<storage, ${access}> ${name}: array<f32>;`;
  }).join("\n");
  const code = /* wgsl */ `
${declarations}
struct Params { count: u32${spec.params ? `, ${spec.params}` : ""} }
@group(0) @binding(${bindings.length}) var<uniform> params: Params;
${spec.helpers ?? ""}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i < params.count) {
    ${spec.body}
  }
}
`;
  const params = spec.params
    ? spec.params.split(",").map((p) => p.split(":")[0].trim()).filter((p) => p !== "")
    : [];
  return { bindings, code, params };
}

/**
 * Records `kernel` over every element. `tensors` names each binding of the kernel, no more and
 * no fewer; they are checked in the order given, every one float32 and shaped like the first, so
 * that a wrong argument names the op and the tensor. `params` are the kernel's f32 uniforms after
 * the count, one finite number for each it declares.
 */
export function recordElementwise(
  rec: Recorder,
  op: string,
  kernel: ElementwiseKernel,
  tensors: Record<string, Tensor>,
  params: readonly number[] = [],
): void {
  for (const name of kernel.bindings) {
    if (!tensors[name]) throw new GpuError(`${op}: tensor ${name} not given`);
  }
  for (const name of Object.keys(tensors)) {
    if (!kernel.bindings.includes(name)) {
      throw new GpuError(
        `${op}: the kernel has no tensor ${name} (it takes ${kernel.bindings.join(", ")})`,
      );
    }
  }
  // A kernel made before `params` was kept (an object of one's own) is taken at its word.
  const names = kernel.params ?? params.map((_, i) => `params[${i}]`);
  if (params.length !== names.length) {
    const wanted = names.length === 0 ? "none" : names.join(", ");
    throw new GpuError(`${op}: ${params.length} parameters given, the kernel takes ${wanted}`);
  }
  for (const [i, value] of params.entries()) {
    if (!Number.isFinite(value)) {
      throw new GpuError(`${op}: ${names[i]} must be a finite number, got ${value}`);
    }
  }
  const checked = Object.entries(tensors);
  const shape = checked[0][1].shape;
  for (const [name, t] of checked) expectShape(op, name, t, shape, "f32");
  for (const [name, t] of checked) expectBindable(op, name, t);
  const n = checked[0][1].numel;
  const uniforms = new Uint32Array(1 + params.length);
  uniforms[0] = n;
  new Float32Array(uniforms.buffer).set(params, 1);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, kernel.code),
    kernel.bindings.map((name) => tensors[name]),
    grid1d(n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    uniforms,
  );
}
