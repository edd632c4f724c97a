"""Prove the differentiable preprocessing equals each reward's official (PIL) transform, on the same network.

For every reward: build its architecture with random weights (``--full``: the real size; default: a reduced config of
the same class at the real resolution/patch size), make uint8 images (random noise and structured scenes, at 256 and
512 px), and score them twice with the *same* network and score formula: once through our tensor path (the reward's
``preprocess``), once with the pixels the official non-differentiable transform produces from the PIL image:

  aesthetic, imagereward   torchvision Resize(224, BICUBIC) + CenterCrop(224) + ToTensor + Normalize(CLIP)  (clip.load)
  pickscore                transformers CLIPImageProcessorPil (shortest_edge 224, bicubic, crop 224, CLIP mean/std)
  hpsv2                    hpsv2's own eval transform (its src/open_clip/transform.py, resize_longest_max=True):
                           ToTensor, then ResizeMaxSize(224) on the *tensor* (torchvision bicubic, antialiased;
                           pad to a square with black), CLIP mean/std: our pixels equal it bit for bit
  resnet50-class           torchvision ResNet50_Weights.IMAGENET1K_V2.transforms() (232 bilinear, crop 224)
  owlvit                   transformers OwlViTImageProcessorPil (768x768 bicubic, CLIP mean/std)

Prints the median and max relative score difference |s_ours − s_official| / |s_official| per reward, image kind and
size, and the same difference relative to the spread (std) of the official scores over the images.

    python -m rewards.check_preprocessing            # reduced configs, ~1 min on 2 CPU cores
    python -m rewards.check_preprocessing --full     # real architectures (slow on CPU)
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image

from . import testing
from .preprocess import CLIP_MEAN, CLIP_STD

PROMPTS = ["a photo of a cat", "a red circle and a blue square on a white background", "a bowl of fruit with strawberries",
           "people at a farmer's market", "a beautiful sunset over the mountains", "a painting of a house by a river",
           "a portrait of a woman", "a green tree in a garden"]


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def structured_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with sharp-edged discs and rectangles: natural-image-like edges and flat regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.float64)
    for i in range(n):
        c0, c1 = rng.random(3), rng.random(3)
        angle = rng.random() * 2 * math.pi
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / (t.max() - t.min())
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
        for _ in range(6):
            colour = rng.random(3)
            cx, cy, r = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
            else:
                mask = (abs(xx - cx) < r) & (abs(yy - cy) < r * (0.3 + rng.random()))
            img[mask] = colour
        img += 0.02 * np.sin(40 * math.pi * xx)[..., None]  # a fine texture
        out[i] = img
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def hpsv2_transform(size: int = 224):
    """The hpsv2 package's evaluation transform, transcribed from its ``src/open_clip/transform.py``
    (``image_transform(..., is_train=False, resize_longest_max=True)``): the package itself pins obsolete
    dependencies and is not installed. Unlike open_clip's ``image_transform(resize_mode="longest")``, which resizes
    the PIL image, hpsv2 converts to a tensor first and resizes the tensor."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    def transform(img: Image.Image) -> torch.Tensor:
        x = TF.to_tensor(img.convert("RGB"))
        h, w = x.shape[-2:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            new = (round(h * scale), round(w * scale))
            x = TF.resize(x, list(new), InterpolationMode.BICUBIC)
            ph, pw = size - new[0], size - new[1]
            x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
        return TF.normalize(x, CLIP_MEAN, CLIP_STD)

    return transform


def official_transforms() -> dict:
    """The official non-differentiable transforms: PIL image → normalised [3,h,w] tensor."""
    from torchvision import transforms as tv
    from torchvision.models import ResNet50_Weights
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    clip_tv = tv.Compose([tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(224), tv.ToTensor(),
                          tv.Normalize(CLIP_MEAN, CLIP_STD)])
    pick = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_resize=True,
                                 do_center_crop=True, resample=Image.BICUBIC, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    owl = OwlViTImageProcessorPil()
    hps = hpsv2_transform(224)
    resnet = ResNet50_Weights.IMAGENET1K_V2.transforms()

    def hf(processor):
        return lambda img: torch.as_tensor(np.asarray(processor(img, return_tensors="np")["pixel_values"][0]))

    return {"aesthetic": clip_tv, "imagereward": clip_tv, "pickscore": hf(pick), "hpsv2": hps, "resnet50-class": resnet,
            "owlvit": hf(owl)}


def builders(full: bool) -> dict:
    return {
        "aesthetic": lambda: testing.aesthetic(full),
        "hpsv2": lambda: testing.hpsv2(full),
        "pickscore": lambda: testing.pickscore(full),
        "imagereward": lambda: testing.imagereward(full),
        "resnet50-class": lambda: testing.resnet50_class("cat"),
        "owlvit": lambda: testing.owlvit("a strawberry", 1, full),
    }


def compare(reward, official, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(our scores, official scores) for uint8 images [N,H,W,3] through the same network."""
    ours_in = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    ours = reward(ours_in, prompts).detach().numpy()
    official_pixels = torch.stack([official(Image.fromarray(im)) for im in images]).float()
    own_preprocess = reward.preprocess
    reward.preprocess = lambda _: official_pixels  # same network and formula, official pixels
    try:
        theirs = reward(ours_in, prompts).detach().numpy()
    finally:
        reward.preprocess = own_preprocess
    return ours, theirs


def run(full: bool = False, n: int = 8, sizes=(256, 512), only: list[str] | None = None, built: dict | None = None) -> list[dict]:
    """One row per reward × image kind × size; ``built`` optionally supplies the rewards already constructed."""
    rows = []
    official = official_transforms()
    for name, build in builders(full).items():
        if only and name not in only:
            continue
        reward = built[name] if built else build()
        for kind, make in (("random", random_images), ("structured", structured_images)):
            for size in sizes:
                images = make(n, size, seed=size)
                prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
                ours, theirs = compare(reward, official[name], images, prompts)
                rel = np.abs(ours - theirs) / np.abs(theirs)
                spread = np.abs(ours - theirs) / max(float(np.std(theirs)), 1e-12)
                rows.append(dict(reward=name, images=kind, size=size, median=float(np.median(rel)), max=float(rel.max()),
                                 median_spread=float(np.median(spread)), max_spread=float(spread.max()),
                                 mean_score=float(np.mean(theirs))))
        del reward
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| reward | images | px | median rel. diff | max rel. diff | median diff / score std | max diff / score std | mean score |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['reward']} | {r['images']} | {r['size']} | {100 * r['median']:.3f}% | {100 * r['max']:.3f}% | "
                     f"{100 * r['median_spread']:.2f}% | {100 * r['max_spread']:.2f}% | {r['mean_score']:.4g} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="real architecture sizes (slow on CPU)")
    parser.add_argument("--n", type=int, default=8, help="images per kind and size")
    parser.add_argument("--only", nargs="*", help="rewards to check (default: all)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)  # measurement only; the rewards themselves never disable grad
    t0 = time.time()
    rows = run(args.full, args.n, only=args.only)
    print(table(rows))
    print(f"\n{'full' if args.full else 'reduced'} architectures, random weights, {args.n} images per row, "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
