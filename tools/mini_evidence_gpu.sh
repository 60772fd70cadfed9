#!/usr/bin/env bash
# The shipped mini model's evidence on all seven shipped tasks (README, "The shipped model"), in
# one call on a lent GPU machine (no network, 15 minutes of device time per task, at most 10 a
# call):
#
#   bash bench/gpu_prepare.sh            (here: Deno and the deps of this and bench/gpu.ts)
#   device run, carry [".gpu"], timeout 560:
#     bash .gpu/on-device.sh bash tools/mini_evidence_gpu.sh
#   here, after it:  tar -xzf <files_at>/mini-evidence-gpu.tgz -C runs
#                    deno run -A tools/mini_evidence.ts --out runs/mini-evidence-gpu \
#                      --tasks cola,stsb,mrpc,wic,copa,rte,cb --table-only
#
# tools/mini_evidence.ts runs the cells (task × method, 4 seeds each) JOBS at a time (several
# processes keep one GPU busier than one process's dispatches can) and stops them at DEADLINE
# seconds (default 420; beside bench/gpu.ts in the same task, whose 15 device minutes include the
# machine's start, DEADLINE=300 (timeout 400) and `bench/gpu.ts --budget 290` (its phases' limits
# add up to about 400 s at most: timeout 480) fit both, on one warm machine); the largest tasks go
# first. Only what the table needs comes back through $OUT, as one
# archive (the device tool returns a few files): each finished cell's metrics.json and its seeds'
# run.json and metrics.json (their mtimes give the minutes per seed), every cell's log and the
# table. An unfinished cell comes back as its log, its run.json and its finished seeds' run.json
# and metrics.json: unpacked into runs/ here and carried to a later call (carry
# ["runs/mini-evidence-gpu"], beside .gpu), it goes on from its next seed there.
set -uo pipefail
out_dir=runs/mini-evidence-gpu
# With deno.lock, Deno installs every npm package the lock lists as soon as a program needs any
# (here the tokenizer), the drawing libraries too, which .gpu/ does not carry (found rehearsing
# offline): for this run deno.json says "lock": false, and is put back afterwards.
cp deno.json /tmp/ehft-deno.json.orig
trap 'cp /tmp/ehft-deno.json.orig deno.json' EXIT
deno eval 'const j = JSON.parse(Deno.readTextFileSync("deno.json")); j.lock = false;
  Deno.writeTextFileSync("deno.json", JSON.stringify(j, null, 2) + "\n");'
deno run --allow-all tools/mini_evidence.ts \
  --tasks "${TASKS:-cola,stsb,mrpc,wic,copa,rte,cb}" \
  --jobs "${JOBS:-8}" --deadline "${DEADLINE:-420}" --no-report --out "$out_dir"
status=$?
dest=${OUT:-runs}
mkdir -p "$dest"
(
  cd runs || exit 1
  {
    for cell in mini-evidence-gpu/*/; do
      cell=${cell%/}
      [[ -f $cell/run.json ]] || continue
      [[ -f $cell/metrics.json ]] && echo "$cell/metrics.json"
      # An unfinished cell's finished seeds too: with the cell's run.json they are all that a
      # resumed run reads of them (it skips a seed whose metrics.json exists).
      echo "$cell/run.json"
      for seed in "$cell"/seed-*/; do
        [[ -f $seed/metrics.json ]] && echo "${seed}run.json" && echo "${seed}metrics.json"
      done
    done
    ls mini-evidence-gpu/logs/*.log mini-evidence-gpu/table.md 2>/dev/null
  } > /tmp/mini-evidence-files
  tar -czf "$dest/mini-evidence-gpu.tgz" -T /tmp/mini-evidence-files
)
echo "mini_evidence_gpu: $(grep -c metrics.json /tmp/mini-evidence-files) metrics files in" \
  "$dest/mini-evidence-gpu.tgz (exit status $status)"
cat "$out_dir/table.md" 2>/dev/null
exit "$status"
