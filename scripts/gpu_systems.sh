#!/usr/bin/env bash
# On the GPU machine (device tool, `carry: [".whl"]`): install the carried wheels, then measure the `systems` presets
# (random weights, bf16 frozen weights, fp32 LoRA, SDPA, TF32; peak memory, samples/s, FLOPs per sample and MFU) into
# $OUT/results/<preset>; the leaderboards and rows come back under $OUT. Budget: <= 8 minutes in all.
#
#   bash scripts/gpu_systems.sh                              # systems (SD-1.5, 512 px), then systems-xl (SDXL, 1024 px)
#   bash scripts/gpu_systems.sh systems-sd35m systems-flux   # the flow architectures: SD-3.5-Medium, then FLUX.1-dev
#
# The first preset gets up to 450 s; each next one what is left of the 8 minutes (if more than 90 s). A preset cut off
# by the time limit keeps every finished cell's row in results/<preset>/cells.csv.
set -uo pipefail
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(systems systems-xl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
out=${OUT:-/tmp/out}
for preset in "${presets[@]}"; do
  left=$((460 - SECONDS)); [ "$left" -gt 450 ] && left=450
  if [ "$left" -le 90 ]; then echo "no time left for $preset"; continue; fi
  timeout "$left" python3 -m bench run --grid --preset "$preset" --results-dir "$out/results" 2>&1 | tee "$out/$preset.log"
  python3 -m bench leaderboard "$out/results/$preset" --no-plots > /dev/null 2>&1 || true
done
