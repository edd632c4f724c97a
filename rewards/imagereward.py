"""ImageReward: BLIP ViT-L/16 image tokens, read by a BERT text encoder through cross-attention, into an MLP.

score = (mlp(h_[CLS]) − 0.16717) / 1.03334, h = text encoder over the prompt (padded to 35 tokens) attending to the
image tokens. Built from transformers' BLIP components (``BlipVisionModel``; ``BlipTextModel``, which is BERT with
BLIP's cross-attention of width 1024 → 768) and loaded from the official ``ImageReward.pt`` through an explicit,
strict key map (not the ``image-reward`` package, whose pins and transformers-4 internals break this environment).
Weights: hub ``THUDM/ImageReward`` (``ImageReward.pt``, ``med_config.json``; Apache-2.0), tokenizer bert-base-uncased.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Sequence

import torch
from torch import nn

from .aesthetic import AestheticMLP
from .base import Reward, WeightsNotFoundError, register
from .loading import check_keys, from_pretrained, load_state_dict, module_dtype_device, to_module, weight_file
from .preprocess import clip_preprocess

REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER = "bert-base-uncased"
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
MAX_LENGTH = 35

# ----------------------------------------------------------------------------------- official key → our key, strict
# The official file is ImageReward's own module tree: blip.visual_encoder (BLIP's timm-style ViT), blip.text_encoder
# (BLIP's med.py BERT), blip.vision_proj / blip.text_proj (contrastive heads, unused for the score), mlp.layers.
KEY_MAP: list[tuple[str, str]] = [
    (r"blip\.visual_encoder\.cls_token", "vision.embeddings.class_embedding"),
    (r"blip\.visual_encoder\.pos_embed", "vision.embeddings.position_embedding"),
    (r"blip\.visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision.embeddings.patch_embedding.\1"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm1.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision.encoder.layers.\1.self_attn.qkv.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision.encoder.layers.\1.self_attn.projection.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision.encoder.layers.\1.layer_norm2.\2"),
    (r"blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision.encoder.layers.\1.mlp.\2.\3"),
    (r"blip\.visual_encoder\.norm\.(weight|bias)", r"vision.post_layernorm.\1"),
    # med.py's BERT and transformers' BlipTextModel share their module names below the prefix
    (r"blip\.text_encoder\.(embeddings\.(?:word_embeddings|position_embeddings|LayerNorm)\.(?:weight|bias))", r"text_encoder.\1"),
    (r"blip\.text_encoder\.(encoder\.layer\.\d+\.(?:attention|crossattention)\.(?:self\.(?:query|key|value)|output\.(?:dense|LayerNorm))\.(?:weight|bias))",
     r"text_encoder.\1"),
    (r"blip\.text_encoder\.(encoder\.layer\.\d+\.(?:intermediate\.dense|output\.dense|output\.LayerNorm)\.(?:weight|bias))", r"text_encoder.\1"),
    (r"mlp\.layers\.([02467])\.(weight|bias)", r"head.layers.\1.\2"),
]
#: in the official file but not needed for the score (a buffer, and the unused contrastive projections)
IGNORED = [r"blip\.text_encoder\.embeddings\.position_ids", r"blip\.(vision_proj|text_proj)\.(weight|bias)"]


def map_official_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename official keys to ours; returns (mapped, unknown official keys)."""
    mapped, unknown = {}, []
    for key, value in state.items():
        for pattern, target in KEY_MAP:
            if re.fullmatch(pattern, key):
                mapped[re.sub(pattern, target, key)] = value
                break
        else:
            if not any(re.fullmatch(p, key) for p in IGNORED):
                unknown.append(key)
    return mapped, unknown


class ImageReward(Reward):
    """BLIP image encoder + cross-attending text encoder + MLP head, ImageReward's normalisation."""

    differentiable = True

    def __init__(self, vision: nn.Module, text_encoder: nn.Module, tokenizer: Callable, head: nn.Module,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None, max_length: int = MAX_LENGTH,
                 mean: float = SCORE_MEAN, std: float = SCORE_STD, name: str = "imagereward"):
        super().__init__()
        self.vision = vision
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.head = head
        self.preprocess = preprocess if preprocess is not None else clip_preprocess
        self.max_length, self.mean, self.std = max_length, mean, std
        self.name = name

    def encode_text(self, image_tokens: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """[CLS] hidden state of each prompt attending to its own image's tokens: [B, 768]."""
        _, device = module_dtype_device(self.text_encoder)
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(device)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        out = self.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask, is_decoder=False)
        return out.last_hidden_state[:, 0, :]

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        out = self.vision(pixel_values=to_module(self.preprocess(images), self.vision))
        image_tokens = out if isinstance(out, torch.Tensor) else out.last_hidden_state
        features = self.encode_text(image_tokens, prompts).float()
        raw = self.head(features.to(next(self.head.parameters()).dtype)).squeeze(-1).float()
        return (raw - self.mean) / self.std


def build_imagereward(tokenizer: Callable, med_config: dict | None = None, vision_overrides: dict | None = None) -> ImageReward:
    """The architecture with random weights: BLIP ViT-L/16 at 224 (``vision_overrides`` shrink it for tests) and the
    med_config BERT with cross-attention to the vision width."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    vcfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
                patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6,  # BLIP's ViT: timm LayerNorm eps 1e-6, exact GELU
                initializer_range=0.02)  # transformers' default 1e-10 would make a random build blind to the image
    vcfg.update(vision_overrides or {})
    vision = BlipVisionModel(BlipVisionConfig(**vcfg))
    med = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=512, pad_token_id=0,
               bos_token_id=30522, sep_token_id=102)
    med.update({k: v for k, v in (med_config or {}).items() if k in med})
    # is_decoder=True only makes transformers build the cross-attention layers; forward runs bidirectionally
    tcfg = BlipTextConfig(**med, encoder_hidden_size=vcfg["hidden_size"], is_decoder=True)
    text = BlipTextModel(tcfg, add_pooling_layer=False)
    return ImageReward(vision, text, tokenizer, AestheticMLP(med["hidden_size"]))


def load_imagereward_checkpoint(reward: ImageReward, path, name: str = "imagereward", arg: str = "checkpoint") -> None:
    """Load an official ``ImageReward.pt`` (a flat state dict in ImageReward's key layout) through ``KEY_MAP``; any
    unknown, missing or mis-shaped key is an error."""
    state = load_state_dict(path, name, arg)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{name}: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    mapped, unknown = map_official_state_dict(state)
    own = reward.state_dict()
    missing = [k for k in own if k not in mapped]
    check_keys(name, path, missing, unknown + [k for k in mapped if k not in own])
    bad = [f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if mapped[k].shape != v.shape]
    if bad:
        raise WeightsNotFoundError(f"{name}: {str(path)!r} has wrong shapes: {'; '.join(bad[:3])}")
    reward.load_state_dict({k: mapped[k].to(own[k].dtype) for k in own}, strict=True)


def imagereward_tokenizer(name_or_path: str = TOKENIZER, reward: str = "imagereward"):
    """bert-base-uncased with BLIP's two added tokens ([DEC] as bos, [ENC]) so the vocabulary is 30524 like the model's."""
    from transformers import BertTokenizer

    tokenizer = from_pretrained(BertTokenizer, name_or_path, "tokenizer", reward)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


@register("imagereward", "ImageReward v1.0 (BLIP + MLP), normalised score ≈ −2…+2")
def imagereward(checkpoint: str | None = None, med_config: str | None = None, tokenizer: str = TOKENIZER,
                weights: str = "pretrained", device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> ImageReward:
    """``checkpoint``: local ImageReward.pt; ``med_config``: local med_config.json (both default to hub THUDM/ImageReward);
    ``tokenizer``: hub id or local directory of bert-base-uncased."""
    if weights != "pretrained":
        from . import testing
        from .loading import random_weights

        return random_weights("imagereward", weights, testing.imagereward, device, dtype)
    ckpt = weight_file(checkpoint, REPO, CHECKPOINT, "checkpoint", "imagereward")
    cfg_path = weight_file(med_config, REPO, MED_CONFIG, "med_config", "imagereward")
    reward = build_imagereward(imagereward_tokenizer(tokenizer), json.loads(cfg_path.read_text()))
    load_imagereward_checkpoint(reward, ckpt)
    return reward.to(device=device, dtype=dtype)
