"""Class-probability reward: log p(target | image) from an image classifier (ImageNet ResNet-50 by default).

score = log Σ_{c ∈ target} softmax(logits)_c = logsumexp_{c ∈ target} log_softmax(logits)_c, ≤ 0. A single class
is the plain log-probability. DRaFT's adversarial example: prompts bear/dog/mouse, target "cat" (ImageNet 281–285).
"""
from __future__ import annotations

import difflib
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Reward, RewardError, WeightsNotFoundError, register
from .loading import load_state_dict, load_strict, to_module
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, center_crop, normalize

#: names that stand for a set of ImageNet classes
IMAGENET_GROUPS = {"cat": [281, 282, 283, 284, 285]}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def resolve_targets(target: int | str | Sequence[int | str], class_names: Sequence[str] | None,
                    groups: dict[str, list[int]] | None = None, reward: str = "classifier") -> list[int]:
    """Class indices for a target given by index, name, group name, or a sequence of those."""
    items = [target] if isinstance(target, (int, str)) else list(target)
    if not items:
        raise RewardError(f"{reward}: empty target")
    groups = groups or {}
    lower = {n.lower(): i for i, n in enumerate(class_names or [])}
    out: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise RewardError(f"{reward}: target must be a class index or name, got {item!r}")
        if isinstance(item, int):
            if class_names is not None and not 0 <= item < len(class_names):
                raise RewardError(f"{reward}: class index {item} out of range 0..{len(class_names) - 1}")
            out.append(item)
        elif item.lower() in groups:
            out.extend(groups[item.lower()])
        elif item.lower() in lower:
            out.append(lower[item.lower()])
        else:
            close = difflib.get_close_matches(item.lower(), list(lower) + list(groups), n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise RewardError(f"{reward}: unknown class name {item!r}{hint}")
    return sorted(set(out))


class ClassifierReward(Reward):
    """log-probability of a target class (or a set of classes, by log-sum-exp) under a classifier."""

    differentiable = True

    def __init__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 target: int | str | Sequence[int | str], class_names: Sequence[str] | None = None,
                 name: str = "classifier", groups: dict[str, list[int]] | None = None):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.class_names = list(class_names) if class_names is not None else None
        self.targets = resolve_targets(target, self.class_names, groups, name)
        self.name = name

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        logits = self.model(to_module(self.preprocess(images), self.model)).float()
        if max(self.targets) >= logits.shape[-1]:
            raise RewardError(f"{self.name}: target class {max(self.targets)} but the model has {logits.shape[-1]} classes")
        return torch.logsumexp(F.log_softmax(logits, dim=-1)[:, self.targets], dim=-1)


def imagenet_preprocess(images: torch.Tensor, resize_size: int = 232, crop_size: int = 224) -> torch.Tensor:
    """torchvision's ImageNet eval transform on tensors: short side to ``resize_size`` (bilinear, antialiased, as
    torchvision's ``ImageClassification`` does), centre crop, ImageNet mean/std."""
    h, w = images.shape[-2:]
    if h <= w:
        size = (resize_size, int(resize_size * w / h))
    else:
        size = (int(resize_size * h / w), resize_size)
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return normalize(center_crop(images, crop_size), IMAGENET_MEAN, IMAGENET_STD)


@register("resnet50-class", "ImageNet ResNet-50 log-probability of a target class (set), ≤ 0")
def resnet50_class(target: int | str | Sequence[int | str] = "cat", weights: str = "IMAGENET1K_V2",
                   weights_path: str | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> ClassifierReward:
    """``target``: ImageNet class index, name (e.g. "tabby"), the group "cat" (281–285), or a list of these;
    ``weights``: torchvision's "IMAGENET1K_V2" (resize 232) or "IMAGENET1K_V1" (resize 256); ``weights_path``: a local
    state-dict file (default: torchvision's cache or its download URL)."""
    from torchvision.models import ResNet50_Weights, resnet50

    if weights == "random":  # the real ResNet-50 with seeded random weights (no download), as the other rewards
        from . import testing
        from .loading import random_weights

        return random_weights("resnet50-class", "random", lambda full: testing.resnet50_class(target), device, dtype)
    if weights not in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
        raise RewardError(f"resnet50-class: weights must be IMAGENET1K_V1, IMAGENET1K_V2 or random, got {weights!r}")
    spec = ResNet50_Weights[weights]
    model = resnet50()
    if weights_path is not None:
        load_strict(model, load_state_dict(weights_path, "resnet50-class", "weights_path"), "resnet50-class", weights_path)
    else:
        try:
            from .loading import _offline

            cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.url.rsplit("/", 1)[-1]
            if _offline() and not cached.is_file():
                raise FileNotFoundError(str(cached))
            model.load_state_dict(spec.get_state_dict(progress=False, check_hash=True))
        except Exception as err:
            raise WeightsNotFoundError(
                f"resnet50-class: cannot get torchvision's {weights} weights ({type(err).__name__}); download "
                f"{spec.url} and pass weights_path=<path>") from None
    resize_size = 232 if weights == "IMAGENET1K_V2" else 256
    model = model.to(device=device, dtype=dtype).eval()
    return ClassifierReward(model, partial(imagenet_preprocess, resize_size=resize_size, crop_size=224), target,
                            spec.meta["categories"], name="resnet50-class", groups=IMAGENET_GROUPS)
