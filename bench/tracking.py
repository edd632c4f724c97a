"""Optional experiment tracking (``--tracker tensorboard|wandb``) through accelerate's trackers: a cell logs its
training metrics per optimiser step (loss, reward, gradient norm, the step's time split into sampling / reward /
backward), its evaluation curve, and its evaluation images before and after training, keyed by training samples.

TensorBoard writes ``RESULTS/SUITE/tensorboard/<cell_id>/`` (``tensorboard --logdir RESULTS/SUITE/tensorboard``);
Weights & Biases runs offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads later), one run per cell in
a project named after the suite. Neither is needed for anything else: the CSVs stay the results.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from bench.args import UsageError

TRACKERS = ("tensorboard", "wandb")


def check(name: str | None) -> None:
    """Before any work: a known tracker whose package is installed (one line otherwise)."""
    if name is None:
        return
    if name not in TRACKERS:
        raise UsageError(f"--tracker {name!r}: valid: {', '.join(TRACKERS)}")
    import importlib.util

    if importlib.util.find_spec(name) is None:
        extra = "pip install -e '.[track]'" if name == "tensorboard" else "pip install wandb"
        raise UsageError(f"--tracker {name} needs the {name} package: {extra}")


def _numbers(values: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[f"{prefix}/{k}"] = float(v)
    return out


class CellTracker:
    def __init__(self, name: str, spec) -> None:
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        self.name = name
        suite_dir = Path(spec.results_dir) / spec.suite
        if name == "tensorboard":
            self.tracker = TensorBoardTracker(spec.cell_id, logging_dir=suite_dir / "tensorboard")
        else:
            os.environ.setdefault("WANDB_MODE", "offline")
            suite_dir.mkdir(parents=True, exist_ok=True)
            self.tracker = WandBTracker(f"bench-{spec.suite}", name=spec.cell_id, dir=str(suite_dir),
                                        id=spec.cell_id, resume="allow")
        self.tracker.start()  # accelerate's trackers open their writer/run here
        config = {"method": spec.method, "task": spec.task or spec.reward, "backbone": spec.backbone,
                  "seed": spec.seed, "budget": spec.budget, "batch_size": spec.batch_size, "protocol": spec.protocol,
                  "dtype": spec.dtype, **{f"method.{k}": v for k, v in spec.method_kwargs.items()}}
        self.tracker.store_init_configuration({k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                               for k, v in config.items()})

    def train_step(self, metrics: dict[str, Any], samples: int) -> None:
        self.tracker.log(_numbers(metrics, "train"), step=samples)

    def evaluation(self, point: dict[str, Any]) -> None:
        values = {k: v for k, v in point.items() if k.endswith(("_mean", "_std"))}
        self.tracker.log(_numbers(values, "eval"), step=int(point["samples"]))

    def images(self, images: dict[str, Any], samples: int) -> None:
        if self.name == "tensorboard":
            self.tracker.log_images({f"eval/{k}": v.clamp(0, 1) for k, v in images.items()}, step=samples,
                                    dataformats="NCHW")
        else:
            self.tracker.log_images({f"eval/{k}": [img.permute(1, 2, 0).clamp(0, 1).numpy() for img in v]
                                     for k, v in images.items()}, step=samples)

    def finish(self) -> None:
        self.tracker.finish()
