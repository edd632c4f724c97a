"""Open-vocabulary detection reward: add (+1) or remove (−1) an object named by a text query (OWL-ViT).

score = sign · max over predicted boxes of sigmoid(logit(box, query)). With sign +1 the image is pushed to contain
the object somewhere (DRaFT: strawberries in a fruit bowl); with −1 to contain it nowhere (people at a market).
The query is a setting of the reward; the image prompts are not used.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .base import Reward, RewardError, register
from .loading import from_pretrained, module_dtype_device, to_module
from .preprocess import CLIP_MEAN, CLIP_STD, normalize, resize

OWLVIT = "google/owlvit-base-patch32"


class DetectionReward(Reward):
    """sign · max_boxes sigmoid(box logit) for one fixed text query."""

    differentiable = True

    def __init__(self, detector: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], query: str,
                 sign: int = 1, name: str = "detection"):
        super().__init__()
        if sign not in (1, -1) or isinstance(sign, bool):
            raise RewardError(f"{name}: sign must be +1 (add the object) or -1 (remove it), got {sign!r}")
        if not isinstance(query, str) or not query.strip():
            raise RewardError(f"{name}: query must be a non-empty string, got {query!r}")
        self.detector = detector
        self.preprocess = preprocess
        self.query = query
        self.sign = sign
        self.name = name

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        logits = self.detector(to_module(self.preprocess(images), self.detector), [self.query] * images.shape[0])
        return self.sign * torch.sigmoid(logits.float()).amax(dim=-1)


class OwlViTDetector(nn.Module):
    """transformers ``OwlViTForObjectDetection`` with its tokenizer, one query per image: returns box logits [B, N]."""

    def __init__(self, model: nn.Module, tokenizer: Callable, max_length: int = 16):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, pixel_values: torch.Tensor, queries: Sequence[str]) -> torch.Tensor:
        _, device = module_dtype_device(self.model)
        tokens = self.tokenizer(list(queries), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixel_values)
        return out.logits[..., 0]  # [B, boxes, queries per image = 1] → [B, boxes]


def owlvit_preprocess(images: torch.Tensor, size: int = 768) -> torch.Tensor:
    """OWL-ViT's transform: resize to size×size (bicubic, aspect not kept), CLIP mean/std."""
    return normalize(resize(images, (size, size)), CLIP_MEAN, CLIP_STD)


@register("owlvit", "OWL-ViT detection: sign·max_box sigmoid(logit) for a text query, in [0,1] (+1) or [-1,0] (-1)")
def owlvit(query: str = "a strawberry", sign: int = 1, model: str = OWLVIT, weights: str = "pretrained",
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DetectionReward:
    """``query``: the object, e.g. "a photo of a strawberry"; ``sign``: +1 add, −1 remove; ``model``: hub id or local
    directory of google/owlvit-base-patch32 (model and tokenizer)."""
    if weights != "pretrained":
        from . import testing
        from .loading import random_weights

        return random_weights("owlvit", weights, lambda full: testing.owlvit(query, sign, full), device, dtype)
    from transformers import AutoTokenizer, OwlViTForObjectDetection

    detector_model = from_pretrained(OwlViTForObjectDetection, model, "model", "owlvit")
    tokenizer = from_pretrained(AutoTokenizer, model, "model", "owlvit")
    detector = OwlViTDetector(detector_model.to(device=device, dtype=dtype).eval(), tokenizer)
    return DetectionReward(detector, owlvit_preprocess, query, sign, name="owlvit")
