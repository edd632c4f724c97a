"""The small protocol through which methods use a text-to-image backbone.

Implementations live in ``bench/backbones`` (Stable Diffusion through diffusers, the shapes testbed, random-weight
architectures). Methods only need: prompt encoding, guided noise prediction, the noise schedule, decoding, and the
trainable (LoRA) parameters. Conditioning is opaque to methods (SDXL carries pooled embeddings and time ids).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    device: torch.device
    dtype: torch.dtype
    #: a diffusers scheduler; the sampler reads ``alphas_cumprod``, ``final_alpha_cumprod``, ``config`` and
    #: ``set_timesteps`` from it and implements the step equations itself (methods/sampling.py).
    scheduler: Any

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        """Shape of the initial noise for ``batch_size`` samples."""

    def encode_prompts(self, prompts: Sequence[str]) -> Any:
        """Frozen text conditioning for the prompts, including what guidance needs (the empty prompt). The returned
        object supports ``len(cond)``, ``cond.repeat(n)`` (each prompt n times in a row) and ``cond.index(idx)``."""

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Any,
                      guidance_scale: float) -> torch.Tensor:
        """The model's output at ``timestep`` with classifier-free guidance (``guidance_scale <= 1``: none)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [0,1], ``[B,3,H,W]`` fp32; differentiable."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters fine-tuning may change (the LoRA weights); everything else is frozen."""
