#!/usr/bin/env bash
# On the GPU machine (device tool, `carry: [".whl"]`): install the carried wheels, then measure every method on
# SD-1.5's architecture at 512 px (the `systems` preset: bf16 frozen weights, fp32 LoRA, SDPA, TF32, FLOPs per sample
# and MFU) into $OUT/results/systems, then SDXL's (`systems-xl`) with the time left; the leaderboard and rows come back under $OUT. Budget: <= 8 minutes.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
out=${OUT:-/tmp/out}
timeout 450 python3 -m bench run --grid --preset systems --results-dir "$out/results" 2>&1 | tee "$out/systems.log"
python3 -m bench leaderboard "$out/results/systems" --no-plots > /dev/null 2>&1 || true
# then SDXL's architecture at 1024 px (`systems-xl`) in whatever is left of the 8 minutes: each finished cell's row
# lands in results/systems-xl/cells.csv even if the time runs out mid-grid
left=$((460 - SECONDS))
if [ "$left" -gt 90 ]; then
  timeout "$left" python3 -m bench run --grid --preset systems-xl --results-dir "$out/results" 2>&1 | tee "$out/systems-xl.log"
  python3 -m bench leaderboard "$out/results/systems-xl" --no-plots > /dev/null 2>&1 || true
fi
