"""LAION aesthetic predictor v2: a CLIP image embedding, L2-normalised, into a linear MLP.

score = MLP(e / ‖e‖), e = CLIP ViT-L/14 image embedding. The MLP is 768→1024→128→64→16→1 with dropout between the
first layers and **no activations** (so it is one affine map; the layout matters only for loading). Scores ≈ 1–10.
Weights: ``sac+logos+ava1-l14-linearMSE.pth`` (3.7 MB, Apache-2.0, christophschuhmann/improved-aesthetic-predictor).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Reward, register
from .loading import load_state_dict, load_strict, to_module, weight_file
from .preprocess import clip_preprocess

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_REPO = "camenduru/improved-aesthetic-predictor"  # a hub mirror of the file from the official GitHub repo
CLIP_L14 = "openai/clip-vit-large-patch14"


class AestheticMLP(nn.Module):
    """The LAION head; state keys ``layers.0/2/4/6/7`` (Linear), ``layers.1/3/5`` are Dropout."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AestheticReward(Reward):
    """CLIP image encoder + MLP head on the L2-normalised embedding (any encoder/head: real or testbed)."""

    differentiable = True

    def __init__(self, image_encoder: nn.Module, head: nn.Module,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None, name: str = "aesthetic"):
        super().__init__()
        self.image_encoder = image_encoder
        self.head = head
        self.preprocess = preprocess if preprocess is not None else clip_preprocess
        self.name = name

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = to_module(self.preprocess(images), self.image_encoder)
        emb = self.image_encoder(pixels)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return self.head(emb.to(next(self.head.parameters()).dtype)).squeeze(-1)


def load_aesthetic_head(path: str, input_dim: int = 768, reward: str = "aesthetic", arg: str = "head_path") -> AestheticMLP:
    """Load the official head file (a plain state dict with keys ``layers.{0,2,4,6,7}.{weight,bias}``) strictly."""
    head = AestheticMLP(input_dim)
    state = load_state_dict(path, reward, arg)
    if not isinstance(state, dict):
        from .base import WeightsNotFoundError

        raise WeightsNotFoundError(f"{reward}: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    load_strict(head, {k: v.float() for k, v in state.items()}, reward, path)
    return head


@register("aesthetic", "LAION aesthetic predictor v2 (CLIP ViT-L/14 + linear MLP), score ≈ 1–10")
def aesthetic(clip: str = CLIP_L14, head_path: str | None = None, weights: str = "pretrained",
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AestheticReward:
    """``clip``: hub id or local directory of a transformers CLIP ViT-L/14; ``head_path``: local
    ``sac+logos+ava1-l14-linearMSE.pth`` (default: from the hub)."""
    if weights != "pretrained":
        from . import testing
        from .loading import random_weights

        return random_weights("aesthetic", weights, testing.aesthetic, device, dtype)
    from transformers import CLIPVisionModelWithProjection

    from .encoders import HFImageEncoder
    from .loading import from_pretrained

    head = load_aesthetic_head(weight_file(head_path, HEAD_REPO, HEAD_FILE, "head_path", "aesthetic"))
    vision = from_pretrained(CLIPVisionModelWithProjection, clip, "clip", "aesthetic")
    reward = AestheticReward(HFImageEncoder(vision), head)
    return reward.to(device=device, dtype=dtype)
