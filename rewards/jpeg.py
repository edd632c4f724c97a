"""JPEG (in)compressibility, as DDPO defines it, and a differentiable surrogate for gradient methods.

True reward (DDPO): the image as uint8 RGB, saved by PIL as JPEG at quality 95; the file size in kB
(``bytes / 1000``). ``jpeg-compressibility`` = −size, ``jpeg-incompressibility`` = +size. Not differentiable.

Surrogate (``jpeg-compressibility-surrogate``): the same codec's front end written as tensor ops — RGB → YCbCr
(JFIF), 4:2:0 chroma averaging, 8×8 orthonormal DCT-II per block, division by the quality-95 quantisation tables —
and a smooth bit count per coefficient, ``log2(1 + |c/q|)`` (magnitude bits) plus a soft non-zero indicator
``1 − exp(−(c/q)²)`` (the run-length/Huffman symbol cost). Size ≈ a·bits + b·nonzero + c, in kB, with a, b, c fitted
once by least squares on generated images (``python -m rewards.jpeg_fit``) and kept below. Its rank agreement with
the real file size is measured on the committed image set ``rewards/data/jpeg_eval_images.npz``
(``python -m rewards.jpeg_fit --evaluate``).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import Reward, register

QUALITY = 95

# ITU-T T.81 Annex K quantisation tables (quality 50), row-major
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32

# fitted by `python -m rewards.jpeg_fit` (kB = a * bits/1000 + b * nonzero/1000 + c)
SURROGATE_COEF = (0.2994, 0.0602, 0.6405)


def jpeg_size_kb(images: torch.Tensor, quality: int = QUALITY) -> torch.Tensor:
    """The real JPEG file size in kB of each image (PIL, as DDPO); no gradient."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


def quant_table(base: list[int], quality: int = QUALITY) -> torch.Tensor:
    """libjpeg's quality scaling of a base table."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = [min(max((b * scale + 50) // 100, 1), 255) for b in base]
    return torch.tensor(q, dtype=torch.float32).view(8, 8)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


def _blocks(channel: torch.Tensor) -> torch.Tensor:
    """[B,H,W] → [B, nblocks, 8, 8] with edge replication to a multiple of 8 (as libjpeg pads)."""
    b, h, w = channel.shape
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        channel = F.pad(channel.unsqueeze(1), (0, pw, 0, ph), mode="replicate").squeeze(1)
    h, w = channel.shape[-2:]
    return channel.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)


def quantised_dct(images: torch.Tensor, quality: int = QUALITY) -> list[torch.Tensor]:
    """Per channel (Y, Cb, Cr), the DCT coefficients divided by the quantisation table: [B, nblocks, 8, 8]."""
    x = images.float() * 255
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b - 128
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    # 4:2:0 chroma subsampling (libjpeg's default at this quality)
    pool = lambda c: F.avg_pool2d(F.pad(c.unsqueeze(1), (0, c.shape[-1] % 2, 0, c.shape[-2] % 2), mode="replicate"), 2).squeeze(1)  # noqa: E731
    cb, cr = pool(cb), pool(cr)
    d = _dct_matrix().to(images.device)
    out = []
    for channel, table in ((y, _LUMA), (cb, _CHROMA), (cr, _CHROMA)):
        blocks = _blocks(channel)
        coef = d @ blocks @ d.T
        out.append(coef / quant_table(table, quality).to(images.device))
    return out


def surrogate_features(images: torch.Tensor, quality: int = QUALITY) -> torch.Tensor:
    """[B, 2]: smooth magnitude bits and soft non-zero count over all quantised coefficients (thousands)."""
    bits, nonzero = 0.0, 0.0
    for c in quantised_dct(images, quality):
        bits = bits + torch.log2(1 + c.abs()).sum(dim=(1, 2, 3))
        nonzero = nonzero + (1 - torch.exp(-c.pow(2))).sum(dim=(1, 2, 3))
    return torch.stack([bits, nonzero], dim=1) / 1000


def surrogate_size_kb(images: torch.Tensor, coef=SURROGATE_COEF) -> torch.Tensor:
    a, b, c = coef
    f = surrogate_features(images)
    return a * f[:, 0] + b * f[:, 1] + c


@register("jpeg-compressibility", "−JPEG size in kB at quality 95 (DDPO); not differentiable")
class JpegCompressibility(Reward):
    name = "jpeg-compressibility"
    differentiable = False
    sign = -1.0

    def __init__(self, quality: int = QUALITY):
        super().__init__()
        self.quality = quality

    def score(self, images, prompts):
        return self.sign * jpeg_size_kb(images, self.quality)


@register("jpeg-incompressibility", "+JPEG size in kB at quality 95 (DDPO); not differentiable")
class JpegIncompressibility(JpegCompressibility):
    name = "jpeg-incompressibility"
    sign = 1.0


@register("jpeg-compressibility-surrogate", "−differentiable JPEG size estimate in kB (DCT + quantisation + bits)")
class JpegCompressibilitySurrogate(Reward):
    name = "jpeg-compressibility-surrogate"
    differentiable = True
    reference = "jpeg-compressibility"
    sign = -1.0

    def score(self, images, prompts):
        return self.sign * surrogate_size_kb(images)


@register("jpeg-incompressibility-surrogate", "+differentiable JPEG size estimate in kB")
class JpegIncompressibilitySurrogate(JpegCompressibilitySurrogate):
    name = "jpeg-incompressibility-surrogate"
    reference = "jpeg-incompressibility"
    sign = 1.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
