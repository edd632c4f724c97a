"""The testbed's rewards, each served by the same wrapper class as its real counterpart:

=========================  ===================================  ======================================================
name                       wrapper (rewards/)                   networks (bench/testbed/weights/)
=========================  ===================================  ======================================================
shapes-alignment           ClipScoreReward (PickScore, HPSv2)   the testbed CLIP: logit_scale · cos(image, its caption)
shapes-aesthetic           AestheticReward (LAION v2)           the testbed CLIP image tower's patch features + MLP
                                                                head fit to the gold score
shapes-classifier          ClassifierReward (ResNet-50 class)   ResNet shape classifier; ``target`` = circle/square/...
shapes-detector            DetectionReward (OWL-ViT)            OWL-ViT presence of ``query`` ("red circle"), ``sign``
shapes-gold-aesthetic      (this file; evaluation only)         none: the analytic score of ``gold.py``
=========================  ===================================  ======================================================
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Sequence

import torch
from safetensors.torch import load_file

from rewards.aesthetic import AestheticReward
from rewards.base import Reward, RewardError, register
from rewards.classifier import ClassifierReward
from rewards.clip_score import ClipScoreReward
from rewards.detection import DetectionReward, OwlViTDetector
from rewards.encoders import HFImageEncoder, HFTextEncoder
from rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize

from . import models
from .gold import gold_aesthetic
from .train import classifier_pixels, clip_pixels
from .world import COLOR_NAMES, SHAPES


class LogitsOnly(torch.nn.Module):
    """transformers image classifiers return an output object; the classifier wrapper wants the logits tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def detector_pixels(images: torch.Tensor) -> torch.Tensor:
    return normalize(images, CLIP_MEAN, CLIP_STD)


def _place(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype).eval()


@register("shapes-alignment", "shapes testbed: small CLIP, logit_scale·cos(image, its caption) (PickScore-style)")
def shapes_alignment(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ClipScoreReward:
    clip = _place(models.load_clip(), device, dtype)
    tokenizer = models.load_tokenizer(models.WEIGHTS_DIR / "clip")
    scale = float(clip.logit_scale.detach().exp().clamp(max=100))
    return ClipScoreReward(HFImageEncoder(clip), HFTextEncoder(clip, tokenizer, max_length=models.MAX_LENGTH),
                           clip_pixels, scale, name="shapes-alignment")


def load_aesthetic_head() -> models.AestheticHead:
    folder = models.WEIGHTS_DIR / "aesthetic"
    models._check(folder / "head.safetensors", "aesthetic")
    head = models.AestheticHead(json.loads((folder / "config.json").read_text())["input_dim"])
    head.load_state_dict(load_file(folder / "head.safetensors"))
    return head.eval()


@register("shapes-aesthetic", "shapes testbed: LAION-style MLP on the small CLIP's features, fit to the gold aesthetic (≈ 0–10)")
def shapes_aesthetic(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AestheticReward:
    clip = _place(models.load_clip(), device, dtype)
    head = _place(load_aesthetic_head(), device, dtype)
    return AestheticReward(models.CLIPPatchFeatures(clip), head, clip_pixels, name="shapes-aesthetic")


@register("shapes-classifier", "shapes testbed: ResNet log p(target shape | image), target = circle/square/triangle")
def shapes_classifier(target: str | int | Sequence[str | int] = "square", device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> ClassifierReward:
    model = LogitsOnly(_place(models.load_classifier(), device, dtype))
    return ClassifierReward(model, classifier_pixels, target, SHAPES, name="shapes-classifier")


@register("shapes-detector", "shapes testbed: OWL-ViT presence of a coloured shape, sign·max_patch sigmoid")
def shapes_detector(query: str = "red circle", sign: int = 1, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> DetectionReward:
    words = query.lower().split()
    if len(words) != 2 or words[0] not in COLOR_NAMES or words[1] not in SHAPES:
        raise RewardError(f"shapes-detector: query must be '<colour> <shape>' with colour in {', '.join(COLOR_NAMES)} "
                          f"and shape in {', '.join(SHAPES)}; got {query!r}")
    model = _place(models.load_detector(), device, dtype)
    tokenizer = models.load_tokenizer(models.WEIGHTS_DIR / "detector")
    detector = OwlViTDetector(model, tokenizer, max_length=models.MAX_LENGTH)
    return DetectionReward(detector, detector_pixels, query.lower(), sign, name="shapes-detector")


class GoldAesthetic(Reward):
    """The analytic gold aesthetic of ``bench/testbed/gold.py`` (≈ 0–10): ground truth for over-optimisation."""

    name = "shapes-gold-aesthetic"
    differentiable = False
    reference = None

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return gold_aesthetic(images)


@register("shapes-gold-aesthetic", "shapes testbed: analytic gold aesthetic (evaluation only, not differentiable)")
def shapes_gold_aesthetic(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GoldAesthetic:
    return GoldAesthetic()
