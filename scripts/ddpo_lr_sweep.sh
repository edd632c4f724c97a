#!/usr/bin/env bash
# DDPO's learning-rate sweep on the testbed (one seed, shapes-aesthetic, 2048 samples in its paper's epochs): each
# learning rate is its own suite OUT/lr-<lr>/ (resumable: rerun the same command), two at a time on 2 cores; then a
# table of every learning rate's initial and final reward, its gain over the last quarter, and the pick.
#
#   bash scripts/ddpo_lr_sweep.sh                        # runs/ddpo-lr/, learning rates 1e-4 3e-4 1e-3
#   bash scripts/ddpo_lr_sweep.sh results/ddpo-lr 3e-4   # one learning rate into results/ddpo-lr/lr-3e-4/
set -uo pipefail
out=${1:-runs/ddpo-lr}
shift || true
lrs=("$@")
[ ${#lrs[@]} -eq 0 ] && lrs=(1e-4 3e-4 1e-3)
jobs=${JOBS:-2}
mkdir -p "$out"
for lr in "${lrs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  BENCH_CELL_THREADS=1 python -m bench run --grid --preset ddpo-lr --lr "$lr" --results-dir "$out" --suite "lr-$lr" \
    > "$out/lr-$lr.log" 2>&1 &
done
wait
python -m bench sweep "$out"
