#!/usr/bin/env bash
# Packs what `deno task bench:gpu` and tools/mini_evidence_gpu.sh need on the lent GPU machine
# (no network there) into .gpu/,
# through ../shared/device/prepare.sh, with a Deno cache holding only this run's dependencies: the
# full cache of a development machine (hundreds of MB of compiled code and npm packages) would
# not fit the 64 MiB that may travel with the working tree.
# Usage, from the repository root:  bash bench/gpu_prepare.sh
# Then, with the device tool: run, carry [".gpu"], command
#   EHFT_COMMIT=<git rev-parse --short HEAD> bash .gpu/on-device.sh deno run --allow-all bench/gpu.ts
# (not `deno task`: it would first install every npm package of deno.lock, offline there)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
cache=$(mktemp -d /tmp/ehft-gpu-deno-dir.XXXXXX)
trap 'rm -rf "$cache"' EXIT
# --no-lock: with the lock file, `deno cache` fetches every npm package it lists (the plots' too),
# not only those these modules import; the runs there still read the lock file.
files=$(deno run --allow-all bench/gpu.ts --print-files)
# shellcheck disable=SC2046 # one file per line, no spaces
DENO_DIR=$cache deno cache --no-lock bench/gpu.ts $(grep -v '^tests/' <<<"$files")
# The test files are loaded as the run there loads them (`deno test --no-check`, here with a
# filter that matches no test) rather than `deno cache`d: a test that imports train/run.ts would
# have deno cache fetch the drawing libraries its type-only import names (40 MB: over the limit).
# shellcheck disable=SC2046
XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} DENO_DIR=$cache deno test --no-check --allow-all \
  --no-lock --filter '^no test has this name$' $(grep '^tests/' <<<"$files") >/dev/null
# And what tools/mini_evidence_gpu.sh runs, loaded (each with --help) rather than `deno cache`d:
# deno cache also fetches what type-only imports name, here the drawing libraries (vega, resvg,
# fontkit: 40 MB) behind train/run.ts's --analysis, which the evidence never draws.
for entry in tools/mini_evidence.ts tools/random_model.ts tasks/*.ts; do
  DENO_DIR=$cache deno run --allow-all --no-lock "$entry" --help >/dev/null 2>&1 || true
done
DENO_DIR=$cache bash ../shared/device/prepare.sh
# NVIDIA's Vulkan driver there (libGLX_nvidia.so.0) needs libglvnd's dispatch libraries, which the
# image lacks: without them Deno sees no adapter (measured on the first H100 run, 2026-11-27).
# on-device.sh unpacks every .deb in .gpu/.
if ! ls .gpu/libglvnd0_*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  apt-get $o update >/dev/null
  (cd .gpu && apt-get $o download libglvnd0 libglx0 libgl1 libegl1 libopengl0 libgles2 >/dev/null)
fi
tree=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
gpu=$(du -sb .gpu | cut -f1)
echo "gpu_prepare: working tree $((tree / 1048576)) MiB + .gpu $((gpu / 1048576)) MiB (limit 64 MiB)"
if ((tree + gpu > 64 * 1048576)); then
  echo "gpu_prepare: over the 64 MiB that may travel: trim .gpu/ before the run" >&2
  exit 1
fi
