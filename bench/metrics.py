"""Metrics over cells and curves: confidence intervals, samples-to-threshold, curves on a common sample grid,
and diversity of evaluation images.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t over seeds; 0 for one value,
    NaN values dropped)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), 0.0
    from scipy.stats import t

    return float(x.mean()), float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def on_grid(samples: Sequence[float], values: Sequence[float], grid: Sequence[float]) -> np.ndarray:
    """A curve linearly interpolated at the grid's sample counts (NaN outside the measured range). Methods whose
    optimiser steps take different sample counts are compared at identical sample counts this way; when a preset's
    ``eval_every`` is a multiple of every method's samples per step, the values are the measured ones exactly."""
    s, v = np.asarray(samples, float), np.asarray(values, float)
    order = np.argsort(s)
    s, v = s[order], v[order]
    out = np.interp(np.asarray(grid, float), s, v, left=np.nan, right=np.nan)
    return out


def samples_to_threshold(samples: Sequence[float], values: Sequence[float], threshold: float) -> float:
    """The first evaluated sample count at which the curve reaches ``threshold`` (NaN: never)."""
    for s, v in sorted(zip(samples, values)):
        if math.isfinite(v) and v >= threshold:
            return float(s)
    return math.nan


def pairwise_diversity(embeddings: torch.Tensor, groups: Sequence[str]) -> float:
    """Mean pairwise cosine distance (1 − cos) between embeddings of the same group (prompt), averaged over groups
    with at least two members. NaN when no group has two members."""
    emb = embeddings.float().flatten(1)
    emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    per_group = []
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        if len(idx) < 2:
            continue
        e = emb[idx]
        cos = e @ e.T
        n = len(idx)
        per_group.append(float((1 - cos).sum() / (n * (n - 1))))  # the diagonal contributes 0
    return float(np.mean(per_group)) if per_group else math.nan


def image_embedder(reward: torch.nn.Module | None) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The embedding used for diversity: a reward's CLIP image tower where it has one (``image_encoder`` and
    ``preprocess``), else the pixels downsampled to at most 32×32."""
    if reward is not None and hasattr(reward, "image_encoder") and hasattr(reward, "preprocess"):
        from rewards.loading import to_module

        @torch.no_grad()
        def embed(images: torch.Tensor) -> torch.Tensor:
            return reward.image_encoder(to_module(reward.preprocess(images), reward.image_encoder)).float()

        return f"{getattr(reward, 'name', 'reward')}-image-encoder", embed

    @torch.no_grad()
    def pixels(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] > 32:
            images = torch.nn.functional.interpolate(images, size=(32, 32), mode="area")
        return images.flatten(1) - 0.5

    return "pixels", pixels
