"""The gold aesthetic: an analytic score on pixels, the ground truth behind the learned ``shapes-aesthetic`` reward.

Defined for any image ``[B,3,H,W]`` in [0,1] (rendered, generated, or adversarial), in tensor ops. With the background
colour ``bg`` estimated as the per-channel median of the border pixels and the foreground weight
``w = clamp(|x - bg|_2 / 0.25, 0, 1)`` (how far a pixel is from the background), five terms in [0,1]:

=============  ======  ================================================================================================
term           weight  definition
=============  ======  ================================================================================================
symmetry       0.25    1 - mean|x - mirror(x)| / (2 mean|x - bg| + 0.02): left-right mirror symmetry, relative to the
                       amount of foreground (an empty image is not "symmetric" for free)
centring       0.25    1 - |centroid(w) - centre| / (H/2): the foreground's centre of mass near the image centre
contrast       0.20    w-weighted mean |luma - luma(bg)|, / 0.6, capped at 1: objects stand out from the background
colourfulness  0.15    Hasler & Süsstrunk (2003) M = sqrt(s_rg² + s_yb²) + 0.3 sqrt(m_rg² + m_yb²), / 0.6, capped at 1
fill           0.15    exp(-((f - 0.2) / 0.12)²), f = mean(w): the foreground fills about a fifth of the frame
=============  ======  ================================================================================================

gold = 10 · (weighted sum) − 10 · max(0, TV − 0.08), TV = mean absolute difference between neighbouring pixels: a
texture penalty. Rendered scenes have TV ≈ 0.01-0.06; high-frequency texture (what a fooled proxy tends to add) is
penalised, so over-optimising the learned head shows as proxy up while gold goes down. Range ≈ 0-10, higher is better.
"""
from __future__ import annotations

import torch

WEIGHTS = {"symmetry": 0.25, "centring": 0.25, "contrast": 0.20, "colourfulness": 0.15, "fill": 0.15}
TV_FREE = 0.08


def background(images: torch.Tensor) -> torch.Tensor:
    """[B,3,1,1]: per-channel median of the one-pixel border."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1)
    return border.median(dim=-1).values[..., None, None]


def terms(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The five terms and the texture penalty, each [B]."""
    x = images.float()
    b, _, h, wd = x.shape
    bg = background(x)
    diff = x - bg
    w = (diff.norm(dim=1) / 0.25).clamp(0, 1)  # [B,H,W] foreground weight
    mass = w.sum(dim=(1, 2)) + 1e-6

    asym = (x - x.flip(-1)).abs().mean(dim=(1, 2, 3))
    symmetry = (1 - asym / (2 * diff.abs().mean(dim=(1, 2, 3)) + 0.02)).clamp(0, 1)

    ys = (torch.arange(h, dtype=x.dtype) + 0.5).view(1, h, 1)
    xs = (torch.arange(wd, dtype=x.dtype) + 0.5).view(1, 1, wd)
    cy, cx = (w * ys).sum(dim=(1, 2)) / mass, (w * xs).sum(dim=(1, 2)) / mass
    dist = torch.sqrt((cy - h / 2) ** 2 + (cx - wd / 2) ** 2 + 1e-12)
    centring = (1 - dist / (h / 2)).clamp(0, 1) * (mass > 0.5)

    luma_weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    luma, luma_bg = (x * luma_weights).sum(1), (bg * luma_weights).sum(1)
    contrast = ((w * (luma - luma_bg).abs()).sum(dim=(1, 2)) / mass / 0.6).clamp(max=1)

    rg = x[:, 0] - x[:, 1]
    yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    m = torch.sqrt(rg.var(dim=(1, 2)) + yb.var(dim=(1, 2)) + 1e-12) + 0.3 * torch.sqrt(
        rg.mean(dim=(1, 2)) ** 2 + yb.mean(dim=(1, 2)) ** 2 + 1e-12)
    colourfulness = (m / 0.6).clamp(max=1)

    fill = torch.exp(-(((w.mean(dim=(1, 2)) - 0.2) / 0.12) ** 2))

    tv = 0.5 * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
                + (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3)))
    return {"symmetry": symmetry, "centring": centring, "contrast": contrast, "colourfulness": colourfulness,
            "fill": fill, "tv": tv}


def gold_aesthetic(images: torch.Tensor) -> torch.Tensor:
    """[B] gold aesthetic score, ≈ 0-10 (see the module docstring)."""
    t = terms(images)
    base = sum(WEIGHTS[k] * t[k] for k in WEIGHTS)
    return 10 * base - 10 * torch.relu(t["tv"] - TV_FREE)
