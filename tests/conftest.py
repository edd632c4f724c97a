import os
import warnings

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*kept in float32.*")

from bench import backbones  # noqa: E402
from rewards.base import Reward  # noqa: E402


def _quiet():
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


_quiet()


@pytest.fixture
def tiny():
    """A fresh tiny random SD-architecture backbone (LoRA rank 4) with its LoRA B matrices randomised, so the LoRA
    changes the output and both A and B receive gradients."""
    torch.manual_seed(0)
    bb = backbones.create("tiny", seed=0)
    randomize_lora(bb)
    return bb


def randomize_lora(backbone, scale: float = 0.5, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


class MeanPixelReward(Reward):
    """A simple differentiable reward for gradient tests: a fixed random linear functional of the pixels, so every
    pixel's gradient differs (a wrong pairing or truncation changes the gradient)."""

    name = "test-linear"

    def __init__(self, size: int = 32, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(3, size, size, generator=gen))

    def score(self, images, prompts):
        return (images * self.w).mean(dim=(1, 2, 3))


@pytest.fixture
def linear_reward():
    return MeanPixelReward().freeze()


def lora_grads(backbone) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in backbone.unet.named_parameters()
            if p.requires_grad and p.grad is not None}


def record_unet_calls(backbone):
    """Wrap ``predict_noise`` to record, per call, (timestep, grad enabled, input requires grad, input)."""
    calls = []
    original = backbone.predict_noise

    def wrapped(latents, timestep, cond, guidance_scale):
        calls.append({"t": int(timestep), "grad": torch.is_grad_enabled(), "input_requires_grad": latents.requires_grad,
                      "input": latents.detach().clone(), "batch": latents.shape[0]})
        return original(latents, timestep, cond, guidance_scale)

    backbone.predict_noise = wrapped
    return calls
