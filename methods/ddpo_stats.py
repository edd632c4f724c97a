"""DDPO's per-prompt reward normalisation (Black et al., 2023, section 4.3 / the reference's stat tracker).

Each prompt keeps a buffer of its most recent rewards that persists across epochs. A reward's advantage is
    A = (r − mean) / (std + 1e-6)
with mean/std over the prompt's buffer (after adding this batch's rewards to it) once the buffer holds at least
``min_count`` rewards, and over the whole current batch before that (the fallback for prompts seen too rarely).
std is the population std (ddof = 0).
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import torch

EPS = 1e-6


class PerPromptStatTracker:
    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        if min_count > buffer_size:
            raise ValueError(f"min_count ({min_count}) cannot exceed buffer_size ({buffer_size}): the buffer would "
                             f"never hold enough rewards and every prompt would use batch statistics forever")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Add the batch's rewards to the buffers and return the advantages (same shape and device as ``rewards``)."""
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {rewards.shape[0]} rewards")
        values = rewards.detach().double().cpu()
        batch_mean, batch_std = values.mean(), values.std(unbiased=False)
        advantages = torch.empty_like(values)
        for prompt in dict.fromkeys(prompts):  # unique, in order of appearance
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[rows].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                stored = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = stored.mean(), stored.std(unbiased=False)
            advantages[rows] = (values[rows] - mean) / (std + EPS)
        return advantages.to(rewards.device, torch.float32)

    def stats(self) -> dict[str, int]:
        return {"tracked_prompts": len(self.buffers),
                "prompts_with_own_stats": sum(len(b) >= self.min_count for b in self.buffers.values())}
