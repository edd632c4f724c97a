"""Adapters that give real CLIP-family models the component interface the reward wrappers take.

Image encoders map preprocessed pixels ``[B,3,h,w]`` to embeddings ``[B,D]``; text encoders map a list of prompts to
``[B,D]`` and own their tokenizer and device placement. The same wrappers accept the shapes testbed's own small
networks, which follow the same two signatures.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .loading import embedding, module_dtype_device


class HFImageEncoder(nn.Module):
    """A transformers CLIP image tower: ``CLIPVisionModelWithProjection`` (its ``image_embeds``) or ``CLIPModel``
    (``get_image_features``: a tensor in transformers 4, an output object whose ``pooler_output`` is the embedding in 5)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            return embedding(self.model.get_image_features(pixel_values=pixel_values), "image_embeds")
        return embedding(self.model(pixel_values=pixel_values), "image_embeds")


class HFTextEncoder(nn.Module):
    """A transformers CLIP text tower with its tokenizer (padding to ``max_length``, truncating)."""

    def __init__(self, model: nn.Module, tokenizer: Callable, max_length: int = 77):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        _, device = module_dtype_device(self.model)
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        kwargs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        if hasattr(self.model, "get_text_features"):
            return embedding(self.model.get_text_features(**kwargs), "text_embeds")
        return embedding(self.model(**kwargs), "text_embeds")


class OpenCLIPImageEncoder(nn.Module):
    """An open_clip model's image tower (``encode_image``, unnormalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class OpenCLIPTextEncoder(nn.Module):
    """An open_clip model's text tower with its tokenizer (``open_clip.get_tokenizer``)."""

    def __init__(self, model: nn.Module, tokenizer: Callable):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        _, device = module_dtype_device(self.model)
        return self.model.encode_text(self.tokenizer(list(prompts)).to(device))
