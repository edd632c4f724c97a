"""A grid plugin for the harness tests (``--plugins harness_plugin``): small tiny-backbone tasks, a reward that
returns NaN and a reward that raises. Imported in the grid process and thereby in every forked cell."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench import tasks
from rewards.base import Reward, register

_DIR = Path(tempfile.gettempdir()) / "bench_harness_plugin_prompts"
_DIR.mkdir(exist_ok=True)
(_DIR / "train.txt").write_text("a photo of a cat\na photo of a dog\na photo of a bird\na photo of a fish\n")
(_DIR / "eval.txt").write_text("a photo of an owl\na photo of a crab\n")


class NaNReward(Reward):
    name = "test-nan"
    differentiable = True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) * float("nan")


class RaisingReward(Reward):
    name = "test-raise"
    differentiable = True

    def score(self, images, prompts):
        raise RuntimeError("this reward always fails (test)")


class OOMReward(Reward):
    name = "test-oom"
    differentiable = True

    def score(self, images, prompts):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test)")


class SlowReward(Reward):
    """JPEG-size surrogate that takes 1 s a call: the cell that an interruption test interrupts (a fast cell could
    finish before the signal lands)."""
    name = "test-slow"
    differentiable = True

    def __init__(self):
        super().__init__()
        from rewards import create

        self.inner = create("jpeg-compressibility-surrogate")

    def score(self, images, prompts):
        import time

        time.sleep(1.0)
        return self.inner(images, prompts)


register("test-slow", "test: one second a call")(lambda **kw: SlowReward())
register("test-oom", "test: runs out of memory")(lambda **kw: OOMReward())
register("test-nan", "test: returns NaN")(lambda **kw: NaNReward())
register("test-raise", "test: raises")(lambda **kw: RaisingReward())

for name, reward in [("test-tiny", "jpeg-compressibility-surrogate"), ("test-nan", "test-nan"),
                     ("test-raise", "test-raise"), ("test-oom", "test-oom"), ("test-slow", "test-slow")]:
    tasks.register(tasks.Task(name=name, reward=reward, train_prompts=str(_DIR / "train.txt"),
                              eval_prompts=str(_DIR / "eval.txt"), backbone="tiny", suite="test",
                              description=f"test task ({reward})"))
