// Launch grids. One dimension of a dispatch holds at most 65535 workgroups, so a large 1-D
// problem is spread over x and y; kernels recover the flat index with `flatIndex` below. And
// `range`, the indices the kernel generators unroll over.

/** Workgroup counts [x, y] covering `n` invocations of `workgroupSize` each. */
export function grid1d(n: number, workgroupSize: number, maxPerDim = 65535): [number, number] {
  const groups = Math.ceil(n / workgroupSize);
  if (groups <= maxPerDim) return [groups, 1];
  const y = Math.ceil(groups / maxPerDim);
  return [Math.ceil(groups / y), y];
}

/** WGSL for the flat invocation index of a `grid1d` launch (needs `gid` and `nwg` builtins). */
export function flatIndex(workgroupSize: number): string {
  return `(gid.x + gid.y * nwg.x * ${workgroupSize}u)`;
}

/** 0, 1, …, n−1: the indices a kernel generator unrolls its WGSL over. */
export function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
