"""DRaFT: Directly fine-tuning diffusion models on differentiable rewards (Clark et al., 2023).

Algorithm (per optimiser step, a batch of prompts c):
    x_T ~ N(0, I)
    for t = T..1:   x_{t-1} = DDIM_step(eps_θ(x_t, t, c), x_t)      # steps before T-K+1 under no_grad (DRaFT-K)
    loss = −r(decode(x_0), c);  θ ← AdamW(∇θ loss)                  # θ: the LoRA weights only

DRaFT (full):  gradient through all T steps, each UNet call checkpointed (memory O(1) in T).
DRaFT-K:       gradient through the last K steps only ("truncated backprop"); earlier steps run under no_grad.
DRaFT-LV:      x_0 sampled without grad; re-noised n times to the last step's noise level with fresh noise,
               x_1^(i) = sqrt(a_1) x_0 + sqrt(1 − a_1) ε_i; each copy denoised once with grad;
               loss = −mean_i r(decode(x_0^(i)), c)  — n reward queries per image, lower-variance DRaFT-1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .base import Method, MethodConfig, MethodError, register
from .sampling import GRAD, GRAD_CHECKPOINTED, NO_GRAD, StepPlan, denoise_step, sample


@dataclass
class DraftConfig(MethodConfig):
    truncation_steps: int = 3    # K: the last K steps carry gradient (None / 0 is not allowed; full DRaFT = T)
    checkpoint: bool = False     # checkpoint each UNet call with gradient
    lv_copies: int = 2           # n for DRaFT-LV

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.truncation_steps <= self.num_steps:
            raise MethodError(f"truncation_steps (K) must be in [1, num_steps={self.num_steps}], "
                              f"got {self.truncation_steps}")
        if self.lv_copies < 1:
            raise MethodError(f"lv_copies (n) must be >= 1, got {self.lv_copies}")


@register("draft-k", "DRaFT-K: backprop through the last K sampling steps (default K=3)")
class DraftK(Method):
    name = "draft-k"
    Config = DraftConfig
    REFERENCE = dict(num_steps=50, guidance_scale=7.5, eta=0.0, lr=4e-4, weight_decay=0.1, truncation_steps=1)

    def plan(self, index: int) -> StepPlan:
        """Gradient on the last K steps, (optionally) checkpointed; earlier steps under no_grad."""
        c = self.config
        if index < c.num_steps - c.truncation_steps:
            return NO_GRAD
        return GRAD_CHECKPOINTED if c.checkpoint else GRAD

    def compute_loss(self, prompts):
        cond = self.backbone.encode_prompts(prompts)
        with self.timer("sampling"):
            out = sample(self.backbone, cond, self.noise(len(prompts)), plan=self.plan, **self.sample_kwargs())
            images = self.backbone.decode(out.latents)
        rewards = self.score(images, prompts)
        return -rewards.mean(), {"reward": rewards.detach().mean(), "samples": len(prompts),
                                 "reward_queries": len(prompts)}


@register("draft-1", "DRaFT-1: backprop through the last sampling step only (the paper's recommended K)")
class Draft1(DraftK):
    name = "draft-1"

    @classmethod
    def settle(cls, config):
        return dataclasses.replace(config, truncation_steps=1)


@register("draft", "full DRaFT: backprop through every sampling step, each UNet call checkpointed")
class DraftFull(DraftK):
    name = "draft"
    REFERENCE = dict(DraftK.REFERENCE, truncation_steps=50)

    @classmethod
    def settle(cls, config):
        return dataclasses.replace(config, truncation_steps=config.num_steps, checkpoint=True)


@register("draft-lv", "DRaFT-LV: n re-noised copies of the last step, each denoised once with grad (n=2)")
class DraftLV(Method):
    name = "draft-lv"
    Config = DraftConfig
    REFERENCE = dict(num_steps=50, guidance_scale=7.5, eta=0.0, lr=4e-4, weight_decay=0.1, lv_copies=2)

    @classmethod
    def settle(cls, config):
        return dataclasses.replace(config, truncation_steps=1)  # K is DRaFT-K's: LV trains the last step only

    def compute_loss(self, prompts):
        n, last = self.config.lv_copies, self.config.num_steps - 1
        cond = self.backbone.encode_prompts(prompts)
        with self.timer("sampling"):
            x0 = sample(self.backbone, cond, self.noise(len(prompts)), plan=NO_GRAD, **self.sample_kwargs()).latents
            # n copies of each x_0 (copy-major within a prompt: image i's copies are rows i*n .. i*n+n-1)
            x0 = x0.repeat_interleave(n, dim=0)
            fresh = self.randn(x0.shape, x0.dtype)
            x_last = self.schedule.add_noise(x0, last, fresh)
            z = None
            if self.config.eta > 0 or self.config.sampler == "ddpm":
                z = self.randn(x0.shape, x0.dtype)
            step = denoise_step(self.backbone, self.schedule, last, x_last, cond.repeat(n),
                                self.config.guidance_scale, self.config.eta,
                                GRAD_CHECKPOINTED if self.config.checkpoint else GRAD, z)
            images = self.backbone.decode(step.prev_sample)
        repeated = [p for p in prompts for _ in range(n)]
        rewards = self.score(images, repeated)
        return -rewards.mean(), {"reward": rewards.detach().mean(), "samples": len(prompts),
                                 "reward_queries": len(repeated)}
