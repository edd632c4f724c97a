#!/usr/bin/env bash
# Prepare (here, with the package index) the wheels the GPU machine lacks: its image has torch, transformers, peft,
# accelerate, pandas, scipy, matplotlib, rich and timm (../.library/device/KINDS.md) but not diffusers or open_clip.
# Python 3.12 there. The wheels go to .whl/ (ignored; carried by `scripts/gpu_systems.sh`'s device call).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$(python3 -c 'import diffusers; print(diffusers.__version__)')" \
  "open_clip_torch==$(python3 -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth importlib_metadata zipp
du -sh .whl && ls .whl
