"""Shared fixtures for the method tests: one tiny backbone per session (LoRA restored between tests), a counting
reward, and a spy on the denoiser that records, per call, the timestep and how autograd saw it."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread while a method test runs (restored after): on a shared CPU, OpenMP threads spinning
    against other processes made these tiny-shape tests ~15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _tiny():
    import bench.backbones as bb

    backbone = bb.create("tiny", seed=0)
    # LoRA B starts at zero (peft's init): randomise it so the LoRA changes the output and A and B both get gradients
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    snapshot = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    return backbone, snapshot


def tiny_backbone():
    """The session's tiny backbone with every weight (LoRA included) restored to its initial value."""
    backbone, snapshot = _tiny()
    with torch.no_grad():
        for k, v in backbone.state_dict().items():
            v.copy_(snapshot[k])
    for p in backbone.parameters():
        p.grad = None
    backbone.__dict__.pop("predict_noise", None)
    return backbone


class CountingReward(nn.Module):
    """A differentiable reward that records every query: r = mean brightness weighted by a fixed random pattern
    (so its gradient differs per pixel and per channel)."""

    name = "counting"
    differentiable = True

    def __init__(self, size: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("pattern", torch.randn(1, 3, size, size, generator=g))
        self.queries = 0
        self.images: list[torch.Tensor] = []
        self.prompts: list[list[str]] = []

    def forward(self, images, prompts):
        assert images.shape[0] == len(prompts)
        self.queries += images.shape[0]
        self.images.append(images.detach().clone())
        self.prompts.append(list(prompts))
        return (images * self.pattern).mean(dim=(1, 2, 3)) * 10


@dataclass
class Call:
    timestep: int
    guidance_scale: float
    grad_enabled: bool
    input_requires_grad: bool
    output_requires_grad: bool
    after_reward: bool  # made after the reward was queried (backward recomputation of a checkpoint, or PPO)
    latents: torch.Tensor
    output: torch.Tensor
    out_grad_norm: list = field(default_factory=list)  # filled by a hook when gradient reaches the output


@contextmanager
def spy(backbone, reward=None):
    """Record every ``backbone.predict_noise`` call (wrapping the instance attribute the sampler looks up). Calls made
    after ``reward`` was first queried inside the context are marked ``after_reward``: use one context per step()."""
    calls: list[Call] = []
    original = type(backbone).predict_noise
    start = reward.queries if reward is not None else 0

    def wrapped(latents, timestep, cond, guidance_scale):
        out = original(backbone, latents, timestep, cond, guidance_scale)
        call = Call(int(timestep), float(guidance_scale), torch.is_grad_enabled(), latents.requires_grad, out.requires_grad,
                    bool(reward is not None and reward.queries > start), latents.detach().clone(), out.detach().clone())
        if out.requires_grad:
            out.register_hook(lambda g, call=call: call.out_grad_norm.append(float(g.norm())))
        calls.append(call)
        return out

    backbone.predict_noise = wrapped
    try:
        yield calls
    finally:
        del backbone.predict_noise


def sampling_calls(calls):
    """The forward calls of the chain (drops backward-time recomputations of checkpointed calls)."""
    return [c for c in calls if not c.after_reward]


def lora_and_frozen(backbone):
    lora = {n: p for n, p in backbone.named_parameters() if "lora_" in n}
    frozen = {n: p for n, p in backbone.named_parameters() if "lora_" not in n}
    return lora, frozen


def count_noise(method):
    """Count the chains a method starts: every x_T is drawn through ``method.noise``."""
    drawn = []
    original = method.noise

    def noise(batch_size):
        drawn.append(batch_size)
        return original(batch_size)

    method.noise = noise
    return drawn


def predicted_x0(backbone, call):
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t of a recorded (epsilon-prediction) call, from the scheduler's own ᾱ table,
    independently of the sampler's code."""
    a = backbone.scheduler.alphas_cumprod[call.timestep].double()
    return ((call.latents.double() - (1 - a).sqrt() * call.output.double()) / a.sqrt()).float()
