// Fused ("flash") multi-head attention, forward and backward, with the semantics of
// kernels/attention.ts: HF BERT/RoBERTa scaled dot-product attention, the additive padding mask
// score + (1 − mask)·(−FLT_MAX) (a query whose keys are all padding and that has no prefix rows
// attends uniformly), P prefix-tuning keys/values ([H, P, D], first, never masked) and
// attention-probability dropout with exactly the same mask bits (dropout_keep(seed, stream,
// index, p), index the flat index of (b, h, i, j) in [B, H, S, T], T = P + S). q, k, v and the
// context are [B, S, H·D] as the projections produce them.
//
// Nothing of size [B, H, S, T] is ever stored. The forward saves two floats per query row
// (`stats`, [B, H, S, 2]: the row's score maximum m and Σ exp(score − m)); the backward
// recomputes the probabilities P = exp(score − m) / Σ from q, k and those, FlashAttention-2
// style, and keeps one vec4 per query row of workspace (m, Σ, Δ = rowsum(dO ⊙ O)).
//
// Work split (an invocation owns whole rows or whole keys, so no kernel has a barrier or an
// atomic):
// - Forward: each invocation owns R consecutive query rows of one head (R = 8 on a CPU adapter,
//   1 on a GPU: `FlashAttentionTiling`). It walks the keys in blocks of four (prefix keys, then
//   the sequence, each block aligned to a multiple of 4 in T, so that its four dropout words are
//   one Philox block when T is a multiple of 4), with an online softmax per row: scores of the
//   block, running max m and sum l, the context accumulator rescaled by exp(m_old − m_new) once
//   per block, then the block's dropped, weighted value rows. context = acc / l; stats = (m, l).
// - Backward, dQ kernel: R query rows per invocation again (4 on a CPU adapter): Δ = dO·O (with
//   dropout O = P̃·V, P̃ = P ⊙ keep/(1 − p), and Σ_j P_ij·dP_ij = dO_i·O_i still holds), then per
//   key P = exp(s − m)/l, dP = (dO·v) ⊙ keep/(1 − p), dS = P ⊙ (dP − Δ), dQ += scale·dS·k. It
//   leaves (m, l, Δ) per row in the workspace for the next kernel.
// - Backward, dK/dV kernel: each invocation owns a block of four consecutive keys (aligned to 4
//   in T, the lanes of vec4 values, so that one Philox block gives its four dropout words of a
//   query row), their k and v rows in registers, and walks its example's query rows in order:
//   dK = scale·Σ_i dS_i·q_i, dV = Σ_i P̃_i·dO_i. A third launch does the same for the prefix
//   keys, summing over every example (b, then i, in order) into dPrefixKey / dPrefixValue
//   (overwritten, or added to with `accumulatePrefix`). That walk is B·(S + 1) loop iterations,
//   and lavapipe stops an invocation after 65,535 of them (silently keeping its partial sums), so
//   for large B·S it is cut into launches of consecutive examples (`prefixLaunches`), each going
//   on from the f32 accumulators the previous one left in a workspace: the same sums in the same
//   order as one launch.
// Every output element is written by one invocation, as one sum in a fixed order:
// bitwise-deterministic, and the same bits whatever the tiling.
//
// The head dimension D is compiled into each kernel (one pipeline per D, tiling and whether
// there are prefix keys): every per-row vector is a straight-line list of named vec4 variables
// (lavapipe spills dynamically indexed private arrays to memory and addresses them lane by
// lane), and when D is a multiple of 4 the head vectors are bound as array<vec4f> (one load per
// four elements); otherwise as scalars, the vec4s padded with zeros.
//
// Why several rows per invocation: on lavapipe every storage load (even one whose address is the
// same in every invocation, such as the k and v rows here) is a loop over the SIMD lanes, about
// ten times the cost of a vec4 FMA, so a kernel is fast only where each loaded vector feeds many
// FMAs. With one row per invocation the forward does two FMAs per load; with eight rows, sixteen.
// On a GPU the invocations of a workgroup read the same k and v rows through the cache.

import { type AttentionDims, checkAttentionArgs } from "./attention.ts";
import { GpuError } from "./device.ts";
import { checkDropout, DROPOUT_WGSL, type DropoutConfig, dropoutScale } from "./dropout.ts";
import { grid1d, range } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import { Workspace } from "./workspace.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectDisjoint, expectShape, type Tensor } from "./tensor.ts";

/**
 * The largest head dimension accepted. Each kernel keeps the head vectors of its row (or of
 * its four keys) in named registers, so the kernels grow with D; BERT and RoBERTa use 64.
 */
export const FLASH_ATTENTION_MAX_HEAD_DIM = 128;

const LANES = ["x", "y", "z", "w"];
const QUAD = [0, 1, 2, 3];

/** How a head dimension D is compiled: vec4 bindings when D is a multiple of 4. */
interface Layout {
  D: number;
  /** vec4s per head vector. */
  D4: number;
  vec: boolean;
}

function layoutOf(D: number): Layout {
  return { D, D4: Math.ceil(D / 4), vec: D % 4 === 0 };
}

/** WGSL element type of the head-vector bindings. */
function elem(L: Layout): string {
  return L.vec ? "vec4f" : "f32";
}

/** WGSL: an element offset (a multiple of 4 in the vec4 layout) as an index into a binding. */
function unit(L: Layout, offset: string): string {
  return L.vec ? `((${offset}) / 4u)` : `(${offset})`;
}

/** WGSL: vec4 number `d4` of the head vector at `base` (from `unit`) in `buf`, zero past D. */
function load(L: Layout, buf: string, base: string, d4: number): string {
  if (L.vec) return `${buf}[${base} + ${d4}u]`;
  const parts = QUAD.map((c) => 4 * d4 + c < L.D ? `${buf}[${base} + ${4 * d4 + c}u]` : "0.0");
  return `vec4f(${parts.join(", ")})`;
}

/** WGSL statements: `buf[...] op value` for vec4 number `d4` of the head vector at `base`. */
function store(L: Layout, buf: string, base: string, d4: number, op: string, value: string) {
  if (L.vec) return `${buf}[${base} + ${d4}u] ${op} ${value};`;
  return QUAD.filter((c) => 4 * d4 + c < L.D)
    .map((c) => `${buf}[${base} + ${4 * d4 + c}u] ${op} (${value}).${LANES[c]};`)
    .join(" ");
}

/** WGSL: Σ_d a[d]·b[d] over two head vectors given as their vec4 expressions. */
function dot(a: string[], b: string[]): string {
  return `dot(${a.map((x, i) => `${x} * ${b[i]}`).join(" + ")}, vec4f(1.0))`;
}

/** WGSL `let name_0 … name_{D4−1}` = the head vector at `base` of `buf`. */
function letVector(L: Layout, name: string, buf: string, base: string): string {
  return range(L.D4).map((d) => `let ${name}_${d} = ${load(L, buf, base, d)};`).join("\n  ");
}

function names(L: Layout, name: string): string[] {
  return range(L.D4).map((d) => `${name}_${d}`);
}

/**
 * A kernel's storage binding: its WGSL name, element type (`head`: the head-vector type of the
 * layout) and whether it is written. A kernel binds its slots in order, then the uniform.
 */
type Slot = readonly [name: string, type: "head" | "f32" | "vec2f" | "vec4f", write?: boolean];

/** WGSL declaring `slots` as bindings 0, 1, … and the uniform `params` after them. */
function declare(L: Layout, slots: readonly Slot[]): string {
  const lines = slots.map(([name, type, write], i) =>
    `@group(0) @binding(${i}) var<storage, ${write ? "read_write" : "read"}> ${name}: ` +
    `array<${type === "head" ? elem(L) : type}>;`
  );
  lines.push(`@group(0) @binding(${slots.length}) var<uniform> params: Params;`);
  return lines.join("\n");
}

// Kernels without prefix keys leave the prefix bindings out (an automatic layout drops unused
// bindings anyway).
const PREFIX_SLOTS: Slot[] = [["prefix_k", "head"], ["prefix_v", "head"]];

function forwardSlots(prefix: boolean): Slot[] {
  return [
    ["q", "head"],
    ["k", "head"],
    ["v", "head"],
    ["mask", "f32"],
    ...(prefix ? PREFIX_SLOTS : []),
    ["context", "head", true],
    ["stats", "vec2f", true],
  ];
}

function rowSlots(prefix: boolean): Slot[] {
  return [
    ["q", "head"],
    ["k", "head"],
    ["v", "head"],
    ["mask", "f32"],
    ...(prefix ? PREFIX_SLOTS : []),
    ["context", "head"],
    ["d_context", "head"],
    ["stats", "vec2f"],
    ["d_q", "head", true],
    ["rows", "vec4f", true],
  ];
}

function columnSlots(prefix: boolean): Slot[] {
  return prefix
    ? [
      ["q", "head"],
      ...PREFIX_SLOTS,
      ["d_context", "head"],
      ["rows", "vec4f"],
      ["d_prefix_k", "head", true],
      ["d_prefix_v", "head", true],
      ["prefix_carry", "vec4f", true],
    ]
    : [
      ["q", "head"],
      ["k", "head"],
      ["v", "head"],
      ["mask", "f32"],
      ["d_context", "head"],
      ["rows", "vec4f"],
      ["d_k", "head", true],
      ["d_v", "head", true],
    ];
}

/** Storage buffers the widest of the kernels binds (the row backward with prefix keys: 11). */
export const FLASH_ATTENTION_STORAGE_BUFFERS = Math.max(
  ...[false, true].flatMap((p) => [forwardSlots(p), rowSlots(p), columnSlots(p)]).map((s) =>
    s.length
  ),
);

/** `extraParams`: WGSL fields appended to the Params struct (the prefix kernel's). */
function common(L: Layout, extraParams = ""): string {
  return /* wgsl */ `
${DROPOUT_WGSL}
struct Params {
  batch: u32, seq: u32, heads: u32, prefix: u32,
  keys: u32, groups: u32, seed: u32, stream: u32,
  p: f32, drop_scale: f32, scale: f32, flags: u32,${extraParams}
}
const D = ${L.D}u;
const FLAG_DROPOUT = 1u;
const FLAG_UNALIGNED = 2u;
const FLAG_ACCUMULATE = 4u;
const FLAG_RESUME = 8u;
const FLAG_KEEP = 16u;
// −FLT_MAX: HF's additive mask value, torch.finfo(torch.float32).min.
const NEG_MAX = -3.4028234663852886e38f;

// Component c (0 … 3, a runtime value) of v.
fn pick(v: vec4f, c: u32) -> f32 {
  return select(select(v.x, v.y, c == 1u), select(v.z, v.w, c == 3u), c >= 2u);
}

// Dropout factors (0 or 1/(1 − p)) of the four consecutive score elements index … index + 3.
// When T is a multiple of 4 (the common case; a flag says) index is too, and the four words
// are one Philox block; otherwise they straddle two.
fn drop4(index: u32) -> vec4f {
  if ((params.flags & FLAG_DROPOUT) == 0u) { return vec4f(1.0); }
  let key = vec2u(params.seed, params.stream);
  let block = index >> 2u;
  var bits = philox4x32_10(vec4u(block, 0u, 0u, 0u), key);
  if ((params.flags & FLAG_UNALIGNED) != 0u) {
    let a = bits;
    let n = philox4x32_10(vec4u(block + 1u, 0u, 0u, 0u), key);
    switch (index & 3u) {
      case 1u: { bits = vec4u(a.yzw, n.x); }
      case 2u: { bits = vec4u(a.zw, n.xy); }
      case 3u: { bits = vec4u(a.w, n.xyz); }
      default: {}
    }
  }
  let u = vec4f(bits >> vec4u(8u)) * (1.0 / 16777216.0);
  return select(vec4f(0.0), vec4f(params.drop_scale), u >= vec4f(params.p));
}
`;
}

/**
 * WGSL walking a query row's keys in blocks of four, prefix keys then sequence keys, each block
 * starting at a multiple of 4 in T (j0) so that its four dropout words are one Philox block
 * (when T is a multiple of 4). `block(loop)` is the code of one block; it runs `loop(body)` for
 * each of the block's keys that exist in the current range, in order, `body(kRows, vRows)` seeing
 * `c` (the key's place in the block), `ko` (the binding index of its k and v rows) and `bias`
 * (its additive mask). The keys of a block are a runtime loop, not unrolled: the kernels'
 * size, and lavapipe's compile time, stay a quarter of what four unrolled keys would cost.
 */
function keyLoops(
  L: Layout,
  prefix: boolean,
  block: (loop: (body: (kRows: string, vRows: string) => string) => string) => string,
): string {
  const prefixLoop = /* wgsl */ `
  for (var j0 = 0u; j0 < P; j0 += 4u) {
    ${
    block((body) => /* wgsl */ `
    for (var c = 0u; c < min(4u, P - j0); c++) {
      let ko = ${unit(L, "(h * P + j0 + c) * D")};
      let bias = 0.0;
      ${body("prefix_k", "prefix_v")}
    }`)
  }
  }`;
  // Without prefix keys (P = 0, a kernel of its own) the sequence loop starts at key 0.
  return /* wgsl */ `${prefix ? prefixLoop : ""}
  for (var j0 = P & ~3u; j0 < T; j0 += 4u) {
    ${
    block((body) => /* wgsl */ `
    for (var c = select(0u, P - j0, j0 < P); c < min(4u, T - j0); c++) {
      let js = b * S + j0 + c - P;
      let ko = ${unit(L, "js * HD + h * D")};
      let bias = (1.0 - mask[js]) * NEG_MAX;
      ${body("k", "v")}
    }`)
  }
  }`;
}

/** WGSL `let ${name}_${d}`: the head vector at `ko` of `rows`. */
function letKeyRow(L: Layout, name: string, rows: string): string {
  return letVector(L, name, rows, "ko");
}

/**
 * Entry point of the row kernels: each invocation owns a group of R consecutive query rows (b, h,
 * i0 … i0 + R − 1, i0 = `first`) of one head; the groups of all heads are numbered in a row, so
 * that a workgroup's invocations stay busy even where a head has fewer groups. Per row r: `i${r}`
 * (rows past S repeat row S − 1: computed, never stored), `row${r}` (its index in [B, H, S]),
 * `rb${r}` (the dropout index of its key 0), `qo${r}` (its head vector in [B, S, H·D]) and its q,
 * `q${r}_${d}`.
 */
function rowMain(L: Layout, R: number, body: string): string {
  return /* wgsl */ `
@compute @workgroup_size(${rowWorkgroup(R)})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let S = params.seq;
  let H = params.heads;
  let P = params.prefix;
  let T = params.keys;
  let HD = H * D;
  let group = (wid.x + wid.y * nwg.x) * ${rowWorkgroup(R)}u + lid;
  let bh = group / params.groups;
  if (bh >= params.batch * H) { return; }
  let first = (group % params.groups) * ${R}u;
  let h = bh % H;
  let b = bh / H;
  ${
    range(R).map((r) =>
      `let i${r} = min(first + ${r}u, S - 1u); let row${r} = bh * S + i${r}; ` +
      `let rb${r} = row${r} * T; let qo${r} = ${unit(L, `(b * S + i${r}) * HD + h * D`)};`
    ).join("\n  ")
  }
  ${range(R).map((r) => letVector(L, `q${r}`, "q", `qo${r}`)).join("\n  ")}
${body}
}
`;
}

/** WGSL running `code(r)` for each of the invocation's rows that exists (row 0 always does). */
function perStoredRow(R: number, code: (r: number) => string): string {
  return range(R).map((r) => r === 0 ? code(r) : `if (first + ${r}u < S) {\n    ${code(r)}\n  }`)
    .join("\n  ");
}

function forwardWgsl(D: number, R: number, prefix: boolean): string {
  const L = layoutOf(D);
  const rows = range(R);
  // Per block: the scores (vec4 s${r} over the block's keys, −FLT_MAX for keys that are not in
  // the range, which never raises the running maximum), the online-softmax update with one
  // rescaling of the accumulator per block, then the weighted values.
  const block = (loop: (body: (kRows: string, vRows: string) => string) => string) => /* wgsl */ `
    ${rows.map((r) => `var s${r} = vec4f(NEG_MAX);`).join(" ")}
    ${
    loop((kRows) => /* wgsl */ `
      ${letKeyRow(L, "k", kRows)}
      let lane = vec4u(c) == vec4u(0u, 1u, 2u, 3u);
      ${
      rows.map((r) =>
        `s${r} = select(s${r}, vec4f(${
          dot(names(L, `q${r}`), names(L, "k"))
        } * params.scale + bias), lane);`
      ).join("\n      ")
    }`)
  }
    ${
    rows.map((r) => /* wgsl */ `
    let mn${r} = max(m${r}, max(max(s${r}.x, s${r}.y), max(s${r}.z, s${r}.w)));
    let za${r} = m${r} - mn${r};
    // Scores of masked keys are ≈ −FLT_MAX: exact zeros without relying on exp's overflow. Keys
    // outside the range have −FLT_MAX too, but are never visited by the loop below.
    let al${r} = select(exp(za${r}), 0.0, za${r} < -88.0);
    let z${r} = s${r} - vec4f(mn${r});
    let e${r} = select(exp(z${r}), vec4f(0.0), z${r} < vec4f(-88.0));
    m${r} = mn${r};
    let pd${r} = e${r} * drop4(rb${r} + j0);
    ${range(L.D4).map((d) => `acc${r}_${d} *= al${r};`).join(" ")}
    l${r} *= al${r};`).join("")
  }
    ${
    loop((_, vRows) => /* wgsl */ `
      ${letKeyRow(L, "v", vRows)}
      ${
      rows.map((r) =>
        `let w${r} = pick(pd${r}, c); l${r} += pick(e${r}, c);\n      ${
          range(L.D4).map((d) => `acc${r}_${d} += w${r} * v_${d};`).join(" ")
        }`
      ).join("\n      ")
    }`)
  }`;
  return /* wgsl */ `
${declare(L, forwardSlots(prefix))}
${common(L)}
${
    rowMain(
      L,
      R,
      /* wgsl */ `
  // The running maximum starts at −FLT_MAX; a row whose keys are all padding keeps it and weighs
  // every key exp(0) = 1 (uniform attention, as HF).
  ${rows.map((r) => `var m${r} = NEG_MAX; var l${r} = 0.0;`).join("\n  ")}
  ${
        rows.map((r) => range(L.D4).map((d) => `var acc${r}_${d} = vec4f(0.0);`).join(" "))
          .join("\n  ")
      }
  ${keyLoops(L, prefix, block)}
  ${
        perStoredRow(R, (r) =>
          `let inv${r} = 1.0 / l${r};\n    ${
            range(L.D4).map((d) => store(L, "context", `qo${r}`, d, "=", `acc${r}_${d} * inv${r}`))
              .join("\n    ")
          }\n    stats[row${r}] = vec2f(m${r}, l${r});`)
      }`,
    )
  }`;
}

function backwardRowsWgsl(D: number, R: number, prefix: boolean): string {
  const L = layoutOf(D);
  const rows = range(R);
  // m and l are known: one pass per key, P = exp(s − m) / l, dS = P ⊙ (dP − Δ), dQ += dS·k.
  const block = (loop: (body: (kRows: string, vRows: string) => string) => string) => /* wgsl */ `
    ${rows.map((r) => `let dr${r} = drop4(rb${r} + j0);`).join(" ")}
    ${
    loop((kRows, vRows) => /* wgsl */ `
      ${letKeyRow(L, "k", kRows)}
      ${letKeyRow(L, "v", vRows)}
      ${
      rows.map((r) => /* wgsl */ `
      let z${r} = ${dot(names(L, `q${r}`), names(L, "k"))} * params.scale + bias - m${r};
      let p${r} = select(exp(z${r}), 0.0, z${r} < -88.0) / l${r};
      let dp${r} = ${dot(names(L, `g${r}`), names(L, "v"))} * pick(dr${r}, c);
      let ds${r} = p${r} * (dp${r} - delta${r});
      ${range(L.D4).map((d) => `dq${r}_${d} += ds${r} * k_${d};`).join(" ")}`).join("")
    }`)
  }`;
  return /* wgsl */ `
${declare(L, rowSlots(prefix))}
${common(L)}
${
    rowMain(
      L,
      R,
      /* wgsl */ `
  ${
        rows.map((r) => /* wgsl */ `
  ${letVector(L, `g${r}`, "d_context", `qo${r}`)}
  ${letVector(L, `o${r}`, "context", `qo${r}`)}
  let delta${r} = ${dot(names(L, `g${r}`), names(L, `o${r}`))};
  let st${r} = stats[row${r}];
  let m${r} = st${r}.x;
  let l${r} = st${r}.y;
  ${range(L.D4).map((d) => `var dq${r}_${d} = vec4f(0.0);`).join(" ")}`).join("")
      }
  ${keyLoops(L, prefix, block)}
  ${
        perStoredRow(R, (r) =>
          `rows[row${r}] = vec4f(m${r}, l${r}, delta${r}, 0.0);\n    ${
            range(L.D4).map((d) => store(L, "d_q", `qo${r}`, d, "=", `dq${r}_${d} * params.scale`))
              .join("\n    ")
          }`)
      }`,
    )
  }`;
}

/**
 * The dK/dV kernels: one invocation per group of G consecutive blocks of four keys (the lanes of
 * vec4 values; block u = 0 … G − 1 starts at j0 + 4u, a multiple of 4 in T) of one head:
 * sequence keys of one example (`prefix` false) or prefix keys summed over the batch (`prefix`
 * true). Groups are numbered in a row over the heads, as the row kernels'.
 */
function backwardColumnsWgsl(D: number, G: number, prefix: boolean): string {
  const L = layoutOf(D);
  const kName = prefix ? "prefix_k" : "k";
  const vName = prefix ? "prefix_v" : "v";
  const dk = prefix ? "d_prefix_k" : "d_k";
  const dv = prefix ? "d_prefix_v" : "d_v";
  const blocks = range(G);
  const perKey = (code: (u: number, c: number) => string, sep = "\n  ") =>
    blocks.map((u) => QUAD.map((c) => code(u, c)).join(sep)).join(sep);
  const dots = (x: string, y: string, u: number) =>
    `vec4f(${QUAD.map((c) => dot(names(L, x), names(L, `${y}${u}_${c}`))).join(",\n        ")})`;
  const step = /* wgsl */ `
      let st = rows[row];
      let qo = ${unit(L, "(b * S + i) * HD + h * D")};
      ${letVector(L, "q", "q", "qo")}
      ${letVector(L, "g", "d_context", "qo")}
      ${
    blocks.map((u) => /* wgsl */ `
      let s${u} = ${dots("q", "k", u)} * params.scale + bias${u};
      let z${u} = s${u} - vec4f(st.x);
      let p${u} = select(exp(z${u}), vec4f(0.0), z${u} < vec4f(-88.0)) / st.y;
      let dr${u} = drop4(row * T + j0 + ${4 * u}u);
      let ds${u} = p${u} * (${dots("g", "v", u)} * dr${u} - vec4f(st.z));
      let pd${u} = p${u} * dr${u};`).join("")
  }
      ${
    perKey((u, c) =>
      range(L.D4).map((d) =>
        `dk${u}_${c}_${d} += ds${u}.${LANES[c]} * q_${d}; ` +
        `dv${u}_${c}_${d} += pd${u}.${LANES[c]} * g_${d};`
      ).join("\n      "), "\n      ")
  }`;
  const stores = (op: string) =>
    perKey((u, c) =>
      `if (valid${u}.${LANES[c]}) {\n    ${
        range(L.D4).map((d) =>
          `${store(L, dk, `ko${u}.${LANES[c]}`, d, op, `dk${u}_${c}_${d} * params.scale`)}\n    ${
            store(L, dv, `ko${u}.${LANES[c]}`, d, op, `dv${u}_${c}_${d}`)
          }`
        ).join("\n    ")
      }\n  }`
    );
  const keyBlock = (u: number) =>
    prefix
      ? /* wgsl */ `
  let jv${u} = vec4u(j0 + ${4 * u}u) + vec4u(0u, 1u, 2u, 3u);
  let valid${u} = jv${u} < vec4u(P);
  let kj${u} = vec4u(h * P) + min(jv${u}, vec4u(P - 1u));
  let ko${u} = ${unit(L, `kj${u} * D`)};
  let bias${u} = vec4f(0.0);`
      : /* wgsl */ `
  let jv${u} = vec4u(j0 + ${4 * u}u) + vec4u(0u, 1u, 2u, 3u);
  let valid${u} = (jv${u} >= vec4u(P)) & (jv${u} < vec4u(T));
  let js${u} = vec4u(b * S) + clamp(jv${u}, vec4u(P), vec4u(T - 1u)) - vec4u(P);
  let ko${u} = ${unit(L, `js${u} * HD + vec4u(h * D)`)};
  let bias${u} = (vec4f(1.0) -
    vec4f(mask[js${u}.x], mask[js${u}.y], mask[js${u}.z], mask[js${u}.w])) * NEG_MAX;`;
  const keys = prefix
    ? /* wgsl */ `
  let h = group / params.groups;
  if (h >= H) { return; }
  let j0 = (group % params.groups) * ${4 * G}u;`
    : /* wgsl */ `
  let bh = group / params.groups;
  if (bh >= params.batch * H) { return; }
  let h = bh % H;
  let b = bh / H;
  let j0 = (P & ~3u) + (group % params.groups) * ${4 * G}u;`;
  const loop = prefix
    ? /* wgsl */ `
  for (var b = params.b_begin; b < params.b_end; b++) {
    for (var i = 0u; i < S; i++) {
      let row = (b * H + h) * S + i;
      ${step}
    }
  }`
    : /* wgsl */ `
  for (var i = 0u; i < S; i++) {
    let row = bh * S + i;
    ${step}
  }`;
  // The prefix kernel's accumulators between launches (see prefixLaunches): key kj's dK at
  // prefix_carry[kj · D4 + d], its dV H·P·D4 vec4s later.
  const carried = (code: (dk: string, dv: string, k: string) => string) =>
    perKey((u, c) =>
      `if (valid${u}.${LANES[c]}) {\n    ${
        range(L.D4).map((d) => {
          const k = `kj${u}.${LANES[c]} * ${L.D4}u + ${d}u`;
          return code(`dk${u}_${c}_${d}`, `dv${u}_${c}_${d}`, k);
        }).join("\n    ")
      }\n  }`
    );
  const resume = prefix
    ? `if ((params.flags & FLAG_RESUME) != 0u) {\n  ${
      carried((dk, dv, k) =>
        `${dk} = prefix_carry[${k}]; ${dv} = prefix_carry[H * P * ${L.D4}u + ${k}];`
      )
    }\n  }`
    : "";
  const finish = prefix
    ? `if ((params.flags & FLAG_KEEP) != 0u) {\n  ${
      carried((dk, dv, k) =>
        `prefix_carry[${k}] = ${dk}; prefix_carry[H * P * ${L.D4}u + ${k}] = ${dv};`
      )
    }\n  } else if ((params.flags & FLAG_ACCUMULATE) != 0u) {\n  ${stores("+=")}\n  } else {\n  ${
      stores("=")
    }\n  }`
    : stores("=");
  const bindings = declare(L, columnSlots(prefix));
  return /* wgsl */ `${bindings}
${common(L, prefix ? "\n  b_begin: u32, b_end: u32, pad0: u32, pad1: u32," : "")}
@compute @workgroup_size(${columnWorkgroup(G)})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let S = params.seq;
  let H = params.heads;
  let P = params.prefix;
  let T = params.keys;
  let HD = H * D;
  let group = (wid.x + wid.y * nwg.x) * ${columnWorkgroup(G)}u + lid;
  ${keys}
  ${blocks.map(keyBlock).join("")}
  // The keys' rows, in registers for the whole walk over the query rows.
  ${perKey((u, c) => letVector(L, `k${u}_${c}`, kName, `ko${u}.${LANES[c]}`))}
  ${perKey((u, c) => letVector(L, `v${u}_${c}`, vName, `ko${u}.${LANES[c]}`))}
  ${
    perKey((u, c) =>
      range(L.D4).map((d) =>
        `var dk${u}_${c}_${d} = vec4f(0.0); var dv${u}_${c}_${d} = vec4f(0.0);`
      )
        .join("\n  ")
    )
  }
  ${resume}
  ${loop}
  ${finish}
}
`;
}

type Dims = AttentionDims;

/**
 * The (argument name, tensor) pairs bound to `slots`, looked up by WGSL name in `tensors`.
 * Throws (a bug, not a user error) if a slot has no tensor.
 */
function bindSlots(
  slots: readonly Slot[],
  tensors: Record<string, [string, Tensor | undefined]>,
): [string, Tensor][] {
  return slots.map(([name]) => {
    const [arg, t] = tensors[name];
    if (!t) throw new Error(`flash attention: no tensor for binding ${name} (${arg})`);
    return [arg, t];
  });
}

/**
 * Throws unless the adapter allows as many storage buffers as the widest of `kernels` binds
 * (up to 11; WebGPU's default limit is 8, native adapters allow more) and every tensor fits in
 * one binding.
 */
function checkBindings(rec: Recorder, op: string, ...kernels: [string, Tensor][][]): void {
  const need = Math.max(...kernels.map((k) => k.length));
  const have = rec.gpu.limits.maxStorageBuffersPerShaderStage;
  if (have < need) {
    throw new GpuError(
      `${op}: needs ${need} storage buffers per shader stage, this adapter allows ${have}`,
    );
  }
  for (const [name, t] of kernels.flat()) expectBindable(op, name, t);
}

/** The tensors of `bound`, in order. */
function tensorsOf(bound: [string, Tensor][]): Tensor[] {
  return bound.map(([, t]) => t);
}

const FLAG_DROPOUT = 1, FLAG_UNALIGNED = 2, FLAG_ACCUMULATE = 4, FLAG_RESUME = 8, FLAG_KEEP = 16;

/**
 * Most loop iterations one invocation of the prefix kernel spends per launch: half of lavapipe's
 * budget of 65,535.
 */
const PREFIX_LOOP_BUDGET = 32768;

/**
 * The launches of the prefix kernel: consecutive ranges [bBegin, bEnd) of examples, each walking
 * at most PREFIX_LOOP_BUDGET loop iterations (S + 1 per example), with its flags: every launch
 * but the first resumes the accumulators the one before kept, every one but the last keeps them
 * (the last stores the gradients). One launch, flagless, when the whole batch fits.
 */
function prefixLaunches(B: number, S: number): { bBegin: number; bEnd: number; flags: number }[] {
  const perLaunch = Math.max(1, Math.floor(PREFIX_LOOP_BUDGET / (S + 1)));
  const launches = [];
  for (let b = 0; b < B; b += perLaunch) {
    const bEnd = Math.min(B, b + perLaunch);
    launches.push({
      bBegin: b,
      bEnd,
      flags: (b > 0 ? FLAG_RESUME : 0) | (bEnd < B ? FLAG_KEEP : 0),
    });
  }
  return launches;
}

function params(dims: Dims, dropout: DropoutConfig, groups: number, flags = 0): Uint32Array {
  const buffer = new ArrayBuffer(48);
  const u = new Uint32Array(buffer);
  const f = new Float32Array(buffer);
  const { B, S, H, D, P } = dims;
  const T = P + S;
  const drop = dropout.p > 0;
  u.set([B, S, H, P, T, groups, dropout.seed, dropout.stream]);
  f[8] = dropout.p;
  f[9] = drop ? dropoutScale(dropout.p) : 1;
  f[10] = 1 / Math.sqrt(D);
  u[11] = flags | (drop ? FLAG_DROPOUT : 0) | (T % 4 !== 0 ? FLAG_UNALIGNED : 0);
  return u;
}

/** Workgroups of `size` invocations for `invocations` of them, in a grid within the limits. */
function grid(rec: Recorder, invocations: number, size: number): [number, number] {
  return grid1d(Math.ceil(invocations / size), 1, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

/**
 * How the kernels share out the work; every choice gives bitwise the same results. `forwardRows`,
 * `backwardRows`: query rows per invocation of the forward and of the backward's dQ kernel (each
 * k and v element loaded serves that many rows, at the price of their q, accumulators (and dO)
 * in registers). `keyBlocks`: blocks of four keys per invocation of the dK/dV kernels (each q and
 * dO element loaded serves 4·keyBlocks keys, whose k, v, dK and dV rows stay in registers).
 */
export interface FlashAttentionTiling {
  /** Query rows per invocation of the forward kernel. */
  forwardRows: 1 | 2 | 4 | 8;
  /** Query rows per invocation of the backward's dQ kernel. */
  backwardRows: 1 | 2 | 4 | 8;
  /** Blocks of four keys per invocation of the dK/dV kernels. */
  keyBlocks: 1 | 2;
}

/**
 * The default tiling for an adapter and head dimension D.
 *
 * On a CPU adapter (lavapipe: a workgroup is one thread, an invocation one lane of 8-wide SIMD,
 * and every storage load a loop over the lanes, costing about ten vec4 FMAs) each k and v load
 * must serve several query rows: at D = 64, 8 rows per invocation make the forward 4× faster than
 * one row, and the dQ kernel takes 4 (it holds three vectors per row: q, dO and dQ). More rows,
 * or two key blocks, were not clearly faster but cost lavapipe much more compile time (its LLVM
 * compile grows faster than linearly with the registers a kernel holds: ~8 s for each of the
 * three D = 64 kernels chosen here, once per machine thanks to Mesa's shader cache). Larger D
 * halves the rows (the registers stay the same).
 *
 * On a GPU one row and one key block per invocation keep a thread's registers (q and the
 * accumulator: 2·D floats; 3·D in the dQ kernel; 16·D in the dK/dV kernel) within budget, the
 * workgroup's invocations reading the same k and v rows through the cache.
 */
export function flashAttentionTiling(
  gpu: { adapter: GPUAdapter },
  headDim: number,
): FlashAttentionTiling {
  if (!gpu.adapter.info.isFallbackAdapter) return { forwardRows: 1, backwardRows: 1, keyBlocks: 1 };
  return headDim <= 64
    ? { forwardRows: 8, backwardRows: 4, keyBlocks: 1 }
    : { forwardRows: 4, backwardRows: 2, keyBlocks: 1 };
}

function checkTiling(op: string, t: FlashAttentionTiling): void {
  const rows = [1, 2, 4, 8];
  if (
    !rows.includes(t.forwardRows) || !rows.includes(t.backwardRows) || ![1, 2].includes(t.keyBlocks)
  ) {
    throw new GpuError(
      `${op}: tiling ${JSON.stringify(t)} not supported (rows 1, 2, 4 or 8; keyBlocks 1 or 2)`,
    );
  }
}

/** Invocations per workgroup of the row kernels: 64 query rows. */
function rowWorkgroup(R: number): number {
  return 64 / R;
}

/** Invocations per workgroup of the dK/dV kernels: 32 blocks of four keys (one with G = 2: 16). */
function columnWorkgroup(G: number): number {
  return 32 / G;
}

/**
 * Throws unless the flat index of every score element fits in 32 bits while dropout is on: the
 * dropout words are drawn by that index (`dropout_keep(seed, stream, index, p)`), as the
 * [B, H, S, T] kernels of attention.ts draw them.
 */
function checkDropoutIndex(op: string, dims: Dims, dropout: DropoutConfig): void {
  const { B, S, H, P } = dims;
  const n = B * H * S * (P + S);
  if (dropout.p > 0 && n > 2 ** 32) {
    throw new GpuError(
      `${op}: ${n} score elements exceed the 32-bit index of the dropout mask; use p = 0 or ` +
        `split the batch`,
    );
  }
}

/** The [B, H, S, 2] shape of the per-row statistics the forward saves for the backward. */
export function flashAttentionStatsShape(batch: number, heads: number, seq: number): number[] {
  return [batch, heads, seq, 2];
}

function pipeline(rec: Recorder, name: string, code: string): GPUComputePipeline {
  return getPipeline(rec.gpu, `flash attention ${name}`, code);
}

const forwardSource = cachedSource(forwardWgsl);

/**
 * Records context = softmax(q·kᵀ/√D + (1 − mask)·(−FLT_MAX)) ⊙ dropout · v per head, keys being
 * the prefix rows (if any) then the sequence, in one pass that never stores the scores. Writes
 * the per-row statistics (score maximum, Σ exp(score − maximum)) to `stats` for the backward.
 *
 * q, k, v, context: [B, S, H·D]; mask: [B, S] (1 keep, 0 padding); prefixKey, prefixValue:
 * [H, P, D]; stats: [B, H, S, 2]. All float32. Head dimension D ≤ 128. Same results (up to
 * rounding) and the same dropout mask as `attentionForward`. `tiling` defaults to
 * `flashAttentionTiling(gpu, D)`.
 */
export function flashAttentionForward(
  rec: Recorder,
  args: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    mask: Tensor;
    prefixKey?: Tensor;
    prefixValue?: Tensor;
    context: Tensor;
    stats: Tensor;
    heads: number;
    dropout: DropoutConfig;
    tiling?: FlashAttentionTiling;
  },
): void {
  const op = "flashAttentionForward";
  const { q, k, v, mask, prefixKey, prefixValue, context, stats, heads, dropout } = args;
  const dims = checkAttentionArgs(
    op,
    [["q", q], ["k", k], ["v", v], ["context", context]],
    heads,
    prefixKey,
    prefixValue,
    FLASH_ATTENTION_MAX_HEAD_DIM,
  );
  const { B, S, H, D, P } = dims;
  expectShape(op, "mask", mask, [B, S], "f32");
  expectShape(op, "stats", stats, flashAttentionStatsShape(B, H, S), "f32");
  checkDropout(op, dropout);
  checkDropoutIndex(op, dims, dropout);
  const tiling = args.tiling ?? flashAttentionTiling(rec.gpu, D);
  checkTiling(op, tiling);
  const bound = bindSlots(forwardSlots(P > 0), {
    q: ["q", q],
    k: ["k", k],
    v: ["v", v],
    mask: ["mask", mask],
    prefix_k: ["prefixKey", prefixKey],
    prefix_v: ["prefixValue", prefixValue],
    context: ["context", context],
    stats: ["stats", stats],
  });
  checkBindings(rec, op, bound);
  const R = tiling.forwardRows;
  const groups = Math.ceil(S / R);
  rec.dispatch(
    op,
    pipeline(rec, `forward D=${D} R=${R} P=${P > 0}`, forwardSource(D, R, P > 0)),
    tensorsOf(bound),
    grid(rec, B * H * groups, rowWorkgroup(R)),
    params(dims, dropout, groups),
  );
}

/** The backward's [B, H, S, 4] row workspace (kernels/workspace.ts: why sharing it is safe). */
const workspace = new Workspace("flash attention row workspace", 4);
/** The prefix kernel's dK and dV accumulators between its launches ([2, H, P, ⌈D/4⌉] vec4s). */
const carryWorkspace = new Workspace("flash attention prefix gradient carry", 4);

const backwardRowsSource = cachedSource(backwardRowsWgsl);

const backwardColumnsSource = cachedSource(backwardColumnsWgsl);

/**
 * Records the gradients of `flashAttentionForward` (same q, k, v, mask, prefix, dropout, and its
 * `context` and `stats`): dQ, dK, dV overwritten; dPrefixKey, dPrefixValue (if given) summed over
 * the batch and overwritten, or added to when `accumulatePrefix`. Without dPrefixKey /
 * dPrefixValue the prefix is treated as frozen. The probabilities are recomputed from q, k and
 * `stats`, never stored.
 *
 * `rowWorkspace` ([B, H, S, 4] f32) is optional; without it a buffer kept per device by this
 * module is used. `tiling` defaults to `flashAttentionTiling(gpu, D)`.
 */
export function flashAttentionBackward(
  rec: Recorder,
  args: {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    mask: Tensor;
    context: Tensor;
    stats: Tensor;
    dContext: Tensor;
    dQ: Tensor;
    dK: Tensor;
    dV: Tensor;
    prefixKey?: Tensor;
    prefixValue?: Tensor;
    dPrefixKey?: Tensor;
    dPrefixValue?: Tensor;
    accumulatePrefix?: boolean;
    heads: number;
    dropout: DropoutConfig;
    rowWorkspace?: Tensor;
    tiling?: FlashAttentionTiling;
  },
): void {
  const op = "flashAttentionBackward";
  const { q, k, v, mask, context, stats, dContext, dQ, dK, dV, heads, dropout } = args;
  const { prefixKey, prefixValue, dPrefixKey, dPrefixValue } = args;
  const dims = checkAttentionArgs(
    op,
    [
      ["q", q],
      ["k", k],
      ["v", v],
      ["context", context],
      ["dContext", dContext],
      ["dQ", dQ],
      ["dK", dK],
      ["dV", dV],
    ],
    heads,
    prefixKey,
    prefixValue,
    FLASH_ATTENTION_MAX_HEAD_DIM,
  );
  const { B, S, H, D, P } = dims;
  const T = P + S;
  expectShape(op, "mask", mask, [B, S], "f32");
  expectShape(op, "stats", stats, flashAttentionStatsShape(B, H, S), "f32");
  if ((dPrefixKey === undefined) !== (dPrefixValue === undefined)) {
    throw new GpuError(`${op}: dPrefixKey and dPrefixValue must be given together`);
  }
  const prefixGrad = dPrefixKey !== undefined && dPrefixValue !== undefined;
  if (prefixGrad) {
    if (!prefixKey) throw new GpuError(`${op}: dPrefixKey given without prefixKey`);
    expectShape(op, "dPrefixKey", dPrefixKey, [H, P, D], "f32");
    expectShape(op, "dPrefixValue", dPrefixValue, [H, P, D], "f32");
  }
  expectDisjoint(op, { dQ, dK, dV, dPrefixKey, dPrefixValue }, {
    q,
    k,
    v,
    mask,
    context,
    stats,
    dContext,
    prefixKey,
    prefixValue,
  });
  const rowsShape = [B, H, S, 4];
  if (args.rowWorkspace) expectShape(op, "rowWorkspace", args.rowWorkspace, rowsShape, "f32");
  checkDropout(op, dropout);
  checkDropoutIndex(op, dims, dropout);
  const tiling = args.tiling ?? flashAttentionTiling(rec.gpu, D);
  checkTiling(op, tiling);
  const rows = args.rowWorkspace ?? workspace.view(rec.gpu, rowsShape);
  const tensors: Record<string, [string, Tensor | undefined]> = {
    q: ["q", q],
    k: ["k", k],
    v: ["v", v],
    mask: ["mask", mask],
    prefix_k: ["prefixKey", prefixKey],
    prefix_v: ["prefixValue", prefixValue],
    context: ["context", context],
    d_context: ["dContext", dContext],
    stats: ["stats", stats],
    rows: ["rowWorkspace", rows],
    d_q: ["dQ", dQ],
    d_k: ["dK", dK],
    d_v: ["dV", dV],
    d_prefix_k: ["dPrefixKey", dPrefixKey],
    d_prefix_v: ["dPrefixValue", dPrefixValue],
    prefix_carry: [
      "prefix gradient carry",
      prefixGrad && P > 0
        ? carryWorkspace.view(rec.gpu, [2 * H * P * Math.ceil(D / 4) * 4])
        : undefined,
    ],
  };
  const rowBindings = bindSlots(rowSlots(P > 0), tensors);
  const columnBindings = bindSlots(columnSlots(false), tensors);
  const prefixBindings = prefixGrad && P > 0 ? bindSlots(columnSlots(true), tensors) : [];
  checkBindings(rec, op, rowBindings, columnBindings, prefixBindings);

  const { backwardRows: R, keyBlocks: G } = tiling;
  const rowGroups = Math.ceil(S / R);
  rec.dispatch(
    `${op} (dQ)`,
    pipeline(rec, `backward rows D=${D} R=${R} P=${P > 0}`, backwardRowsSource(D, R, P > 0)),
    tensorsOf(rowBindings),
    grid(rec, B * H * rowGroups, rowWorkgroup(R)),
    params(dims, dropout, rowGroups),
  );
  // Blocks of four keys (aligned in T) that hold sequence keys, G per invocation.
  const columnGroups = Math.ceil((Math.ceil(T / 4) - Math.floor(P / 4)) / G);
  rec.dispatch(
    `${op} (dK, dV)`,
    pipeline(rec, `backward columns D=${D} G=${G}`, backwardColumnsSource(D, G, false)),
    tensorsOf(columnBindings),
    grid(rec, B * H * columnGroups, columnWorkgroup(G)),
    params(dims, dropout, columnGroups),
  );
  if (prefixGrad && P > 0) {
    const prefixGroups = Math.ceil(Math.ceil(P / 4) / G);
    const code = backwardColumnsSource(D, G, true);
    for (const launch of prefixLaunches(B, S)) {
      const flags = (args.accumulatePrefix ? FLAG_ACCUMULATE : 0) | launch.flags;
      // The common Params, then the prefix kernel's own fields: b_begin, b_end (and padding).
      const words = new Uint32Array(16);
      words.set(params(dims, dropout, prefixGroups, flags));
      words.set([launch.bBegin, launch.bEnd], 12);
      rec.dispatch(
        `${op} (dPrefixKey, dPrefixValue)`,
        pipeline(rec, `backward prefix D=${D} G=${G}`, code),
        tensorsOf(prefixBindings),
        grid(rec, H * prefixGroups, columnWorkgroup(G)),
        words,
      );
    }
  }
}
