"""Prompt–image similarity rewards: PickScore and HPSv2/2.1 (and any CLIP given as components).

score_i = s · cos(f_img(x_i), f_txt(p_i)): each image against **its own** prompt (a public PickScore wrapper scored
every image against prompt 0). s is PickScore's learned ``logit_scale.exp()`` (≈ 100); HPS uses the plain cosine
(papers print 100·cos).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Reward, RewardError, register
from .loading import from_pretrained, load_state_dict, load_strict, to_module, weight_file
from .preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess, normalize, resize_longest_and_pad

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}


class ClipScoreReward(Reward):
    """Scaled cosine between each image's embedding and its own prompt's embedding."""

    differentiable = True

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 logit_scale: float | None = None, name: str = "clip-score"):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.preprocess = preprocess
        self.logit_scale = 1.0 if logit_scale is None else float(logit_scale)
        self.name = name

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = self.image_encoder(to_module(self.preprocess(images), self.image_encoder)).float()
        txt = self.text_encoder(prompts).float().to(img.device)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return self.logit_scale * (img * txt).sum(dim=-1)  # row-wise: image i with prompt i


def hps_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPS's transform: longest side to ``size`` (bicubic), pad to a square with black, CLIP mean/std."""
    return normalize(resize_longest_and_pad(images, size, fill=0.0), CLIP_MEAN, CLIP_STD)


@register("pickscore", "PickScore v1 (CLIP-H): logit_scale·cos(image, its prompt), ≈ 15–25")
def pickscore(model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR, weights: str = "pretrained",
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ClipScoreReward:
    """``model``: hub id or local directory of PickScore_v1 (transformers CLIPModel); ``processor``: the tokenizer's
    hub id or local directory (laion CLIP-ViT-H-14)."""
    if weights != "pretrained":
        from . import testing
        from .loading import random_weights

        return random_weights("pickscore", weights, testing.pickscore, device, dtype)
    from transformers import AutoTokenizer, CLIPModel

    from .encoders import HFImageEncoder, HFTextEncoder

    tokenizer = from_pretrained(AutoTokenizer, processor, "processor", "pickscore")
    clip = from_pretrained(CLIPModel, model, "model", "pickscore")
    scale = float(clip.logit_scale.detach().exp())
    clip = clip.to(device=device, dtype=dtype)
    return ClipScoreReward(HFImageEncoder(clip), HFTextEncoder(clip, tokenizer), clip_preprocess, scale, name="pickscore")


def load_hps_checkpoint(model: nn.Module, path: str, reward: str = "hpsv2", arg: str = "checkpoint") -> None:
    """HPS files are ``{"state_dict": open_clip ViT-H-14 state dict}`` (fp16 in the compressed files); strict."""
    ckpt = load_state_dict(path, reward, arg)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = list(ckpt)[:3] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RewardError(f"{reward}: {str(path)!r} has no 'state_dict' entry (found {keys}); is it an HPS checkpoint?")
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in ckpt["state_dict"].items()}
    load_strict(model, state, reward, path)


@register("hpsv2", "Human Preference Score v2.0/v2.1 (open_clip ViT-H-14): cos(image, its prompt), ≈ 0.2–0.35")
def hpsv2(version: str = "2.1", checkpoint: str | None = None, weights: str = "pretrained",
          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ClipScoreReward:
    """``version``: "2.0" or "2.1" (scores of the two are not comparable); ``checkpoint``: local HPS_v2*_compressed.pt
    (default: hub repo xswu/HPSv2)."""
    if weights != "pretrained":
        from . import testing
        from .loading import random_weights

        return random_weights("hpsv2", weights, testing.hpsv2, device, dtype)
    import open_clip

    from .encoders import OpenCLIPImageEncoder, OpenCLIPTextEncoder

    version = str(version)
    if version not in HPS_FILES:
        raise RewardError(f"hpsv2: version must be one of {sorted(HPS_FILES)}, got {version!r}")
    path = weight_file(checkpoint, HPS_REPO, HPS_FILES[version], "checkpoint", "hpsv2")
    model = open_clip.create_model("ViT-H-14", pretrained=None)
    load_hps_checkpoint(model, path)
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = open_clip.get_tokenizer("ViT-H-14")
    return ClipScoreReward(OpenCLIPImageEncoder(model), OpenCLIPTextEncoder(model, tokenizer), hps_preprocess, None,
                           name=f"hpsv{version}")
