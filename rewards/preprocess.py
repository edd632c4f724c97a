"""Differentiable image preprocessing shared by the reward wrappers.

Everything is tensor ops on ``[B,3,H,W]`` floats in [0,1]: no PIL, no uint8 round trip, no ``no_grad``, no clamp.
The official scorers resize with PIL bicubic; the closest differentiable match is
``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` (``torchvision.Resize`` on tensors defaults to
bilinear, a known source of mismatch).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize to exactly ``(height, width)``; a no-op when the size already matches."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def resize_short_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` keeping the aspect ratio (PIL/HF convention: the long side is
    ``int(size * long / short)``)."""
    h, w = images.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return resize(images, (new_h, new_w))


def center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Centre crop (torchvision convention: offsets ``int(round((H - h) / 2))``)."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} larger than image {h}x{w}")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return images[..., top : top + ch, left : left + cw]


def resize_longest_and_pad(images: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Resize so the longer side is ``size``, then pad the shorter side symmetrically to a square."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    images = resize(images, (new_h, new_w))
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return images


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(images: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """The CLIP image transform: bicubic resize of the short side, centre crop, CLIP normalisation."""
    return normalize(center_crop(resize_short_side(images, size), size), mean, std)
