"""Fit and evaluate the differentiable JPEG-size surrogate (rewards/jpeg.py).

    python -m rewards.jpeg_fit             # fit a, b, c on 400 generated images (seed 1), print them
    python -m rewards.jpeg_fit --evaluate  # Spearman of surrogate vs real size on the committed set (seed 0)
    python -m rewards.jpeg_fit --write-set # regenerate the committed evaluation set

The image families span what generated images look like, from flat to noise: constant colours, linear gradients,
shapes, stripes and checkerboards, 1/f^β noise (natural-image statistics), white noise of varying amplitude, blurred
noise, and shapes with noise. The fit set and the evaluation set use different seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .jpeg import SURROGATE_COEF, jpeg_size_kb, spearman, surrogate_features, surrogate_size_kb

EVAL_SET = Path(__file__).parent / "data" / "jpeg_eval_images.npz"
FAMILIES = ("constant", "gradient", "shapes", "stripes", "pink_noise", "white_noise", "blurred_noise", "shapes_noise")


def _image(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    c1, c2 = rng.random(3), rng.random(3)
    if family == "constant":
        img = np.broadcast_to(c1, (size, size, 3)).copy()
    elif family == "gradient":
        angle = rng.random() * 2 * np.pi
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / (np.ptp(t) + 1e-8)
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif family in ("shapes", "shapes_noise"):
        img = np.broadcast_to(c1, (size, size, 3)).copy()
        for _ in range(rng.integers(1, 8)):
            cx, cy, r = rng.random(), rng.random(), 0.05 + 0.3 * rng.random()
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2) if rng.random() < 0.5 else (
                (abs(xx - cx) < r) & (abs(yy - cy) < r * (0.5 + rng.random())))
            img[mask] = rng.random(3)
        if family == "shapes_noise":
            img = img + rng.normal(0, 0.02 + 0.2 * rng.random(), img.shape)
    elif family == "stripes":
        period = rng.integers(2, size // 2)
        t = (xx * size // period) % 2 if rng.random() < 0.5 else ((xx * size // period) + (yy * size // period)) % 2
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif family == "pink_noise":
        beta = 0.5 + 2.5 * rng.random()
        f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
        f[0, 0] = 1
        spec = (rng.normal(size=(3, size, size)) + 1j * rng.normal(size=(3, size, size))) / f**beta
        img = np.real(np.fft.ifft2(spec)).transpose(1, 2, 0)
        img = (img - img.mean()) / (img.std() + 1e-8) * (0.05 + 0.25 * rng.random()) + 0.5
    elif family == "white_noise":
        img = c1 + rng.normal(0, 0.3 * rng.random(), (size, size, 3))
    elif family == "blurred_noise":
        noise = torch.tensor(rng.normal(0.5, 0.25, (1, 3, size, size)), dtype=torch.float32)
        k = int(rng.integers(1, 5)) * 2 + 1
        img = F.avg_pool2d(F.pad(noise, (k // 2,) * 4, mode="reflect"), k, stride=1)[0].permute(1, 2, 0).numpy()
    else:
        raise ValueError(family)
    return np.clip(img, 0, 1)


def make_images(n: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    imgs = [_image(FAMILIES[i % len(FAMILIES)], size, rng) for i in range(n)]
    arr = (np.stack(imgs) * 255).round().astype(np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def load_eval_set() -> torch.Tensor:
    return torch.from_numpy(np.load(EVAL_SET)["images"]).permute(0, 3, 1, 2).float() / 255


def fit(images: torch.Tensor) -> tuple[float, float, float]:
    X = surrogate_features(images).double()
    X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    y = jpeg_size_kb(images).double()
    coef = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
    return tuple(round(float(c), 4) for c in coef)


def evaluate(images: torch.Tensor, coef=SURROGATE_COEF) -> dict[str, float]:
    true = jpeg_size_kb(images).numpy()
    est = surrogate_size_kb(images, coef).numpy()
    return {"n": len(images), "spearman": spearman(est, true), "mae_kb": float(np.abs(est - true).mean()),
            "true_kb_range": (float(true.min()), float(true.max()))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rewards.jpeg_fit")
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("--write-set", action="store_true")
    args = p.parse_args(argv)
    if args.write_set:
        imgs = make_images(240, 32, seed=0)
        EVAL_SET.parent.mkdir(exist_ok=True)
        np.savez_compressed(EVAL_SET, images=(imgs * 255).round().byte().permute(0, 2, 3, 1).numpy())
        print(f"wrote {EVAL_SET} ({len(imgs)} images)")
    if args.evaluate:
        print("committed set (32 px):", evaluate(load_eval_set()))
        print("generated set (64 px, seed 2):", evaluate(make_images(240, 64, seed=2)))
        return
    if not args.write_set:
        print("fitted coefficients (a, b, c):", fit(make_images(400, 32, seed=1)))


if __name__ == "__main__":
    main()
