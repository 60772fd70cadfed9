/**
 * ehft: fine-tune pretrained text encoders with EH-FT ("Efficient Head Finetuning"), every tensor
 * operation a hand-written WGSL kernel on WebGPU.
 *
 * This module is the public API. It is meant to be imported by URL:
 *
 * ```ts
 * import { getGpu, openSafetensors } from "https://<host>/<path>/mod.ts";
 * ```
 *
 * @module
 */

// The GPU runtime.
export {
  DeviceLostError,
  getGpu,
  Gpu,
  GpuError,
  NoAdapterError,
  OPTIONAL_FEATURES,
  requestGpu,
  type RequestGpuOptions,
} from "./kernels/device.ts";
export {
  createTensor,
  type DType,
  DTYPE_BYTES,
  type HostArray,
  Tensor,
  tensorFromArray,
} from "./kernels/tensor.ts";
export { type Binding, Recorder, type Uniforms } from "./kernels/recorder.ts";
export { getPipeline } from "./kernels/pipeline.ts";
export { flatIndex, grid1d } from "./kernels/grid.ts";
export { fill } from "./kernels/fill.ts";

// Checkpoint files.
export {
  type Dtype as SafetensorsDtype,
  type LoadedTensor,
  openSafetensors,
  SafetensorsError,
  type SafetensorsReader,
  type TensorInfo,
  writeSafetensors,
} from "./model/safetensors.ts";
