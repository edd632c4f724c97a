"""How much memory autograd would keep for one denoiser call, and how much a run may keep: the measure behind the
``"auto"`` policies (AlignProp's checkpointing, DDPO's reuse of the sampling graph).

A policy spends at most ``ACTIVATION_FRACTION`` of the memory that is free when it decides (CUDA: free device memory
plus PyTorch's cached-but-unused blocks; CPU: the system's available memory) on activations kept for backward, and
checkpoints or recomputes the rest. Neither policy changes what is computed, only whether activations are stored
or recomputed: the gradient is the same.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

ACTIVATION_FRACTION = 0.5


def saved_bytes(fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> tuple[torch.Tensor, int]:
    """Run ``fn()`` and count the bytes of the distinct storages autograd saves for its backward, leaving out the
    storages of ``exclude`` (the model's weights: saved by reference, they cost nothing extra)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def activation_budget(device: torch.device | str) -> int:
    """Bytes of activations a policy may keep now on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(ACTIVATION_FRACTION * (free + cached))
    import psutil

    return int(ACTIVATION_FRACTION * psutil.virtual_memory().available)


def how_many_fit(per_item: int, device: torch.device | str) -> int:
    """How many items of ``per_item`` bytes the activation budget holds."""
    return activation_budget(device) // max(1, per_item)
