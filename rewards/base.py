"""The one reward interface and its registry.

A reward is an ``nn.Module`` mapping images ``[B,3,H,W]`` in ``[0,1]`` and one prompt per image to ``[B]`` scores
(fp32, higher is better). Reward-specific settings are constructor arguments. Rewards know nothing of diffusion.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from registry import Registry


class RewardError(ValueError):
    """Bad input to a reward (wrong shape, prompt count) or a bad reward name/setting. One line, user-facing."""


class WeightsNotFoundError(FileNotFoundError):
    """A reward's or backbone's weights are missing (offline, or a wrong local path). The message says how to fix it."""


class Reward(nn.Module):
    """Base class. Subclasses set ``name``/``differentiable`` and implement ``score``.

    ``forward`` validates the inputs (one prompt per image, images in [B,3,H,W]) and returns fp32 scores of shape [B].
    Rewards are frozen: their parameters never require grad, but gradient flows to the *pixels* of differentiable
    rewards.
    """

    name: str = "reward"
    differentiable: bool = True
    #: name of a reward that this one approximates (e.g. a differentiable surrogate); evaluation also reports it
    reference: str | None = None

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        scores = self.score(images, list(prompts))
        if scores.shape != (images.shape[0],):
            raise RuntimeError(f"{self.name}: score() returned shape {tuple(scores.shape)}, expected ({images.shape[0]},)")
        return scores.float()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self) -> "Reward":
        self.requires_grad_(False)
        self.eval()
        return self

    def extra_repr(self) -> str:
        return f"name={self.name!r}, differentiable={self.differentiable}"


def check_inputs(images: torch.Tensor, prompts: Sequence[str]) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RewardError(f"images must be a tensor [B,3,H,W] in [0,1], got {shape}")
    if isinstance(prompts, str):
        raise RewardError("prompts must be a sequence of strings, one per image, not a single string")
    if len(prompts) != images.shape[0]:
        raise RewardError(f"one prompt per image: got {images.shape[0]} images and {len(prompts)} prompts")


# --------------------------------------------------------------------------------------------------------- registry
REGISTRY = Registry("reward", RewardError)
register, available, describe, get = REGISTRY.register, REGISTRY.available, REGISTRY.describe, REGISTRY.get


def create(name: str, **kwargs) -> Reward:
    """Build a reward by name; settings are constructor arguments. Unknown names list the valid ones."""
    return get(name)(**kwargs).freeze()
