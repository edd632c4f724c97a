"""ReFL: Reward feedback learning (Xu et al., 2023, ImageReward paper, Algorithm 1).

Algorithm (per optimiser step, a batch of prompts c):
    s ~ Uniform{⌊lo·T⌋, …, ⌈hi·T⌉ − 1}                  # a random late step (reference: T = 40, s ∈ [30, 39])
    x_T ~ N(0, I);  run steps 0 … s−1 under no_grad      # the chain up to x_s carries no graph
    ε̂ = ε_θ(x_s, t_s, c)  with gradient                 # exactly one UNet call with gradient
    x̂_0 = (x_s − √(1 − ᾱ_s) ε̂) / √ᾱ_s                    # that step's predicted image is scored
    loss = scale · relu(λ − r(decode(x̂_0), c))           # λ = None: no hinge, loss = −scale · r

The hinge target λ only makes sense on a known reward scale (the reference: λ = 2 on ImageReward's normalised score,
scale 1e-3); the shared protocol uses no hinge (loss = −r, as every other gradient method), the reference protocol
λ = 2, scale = 1e-3.

Optional regulariser (off by default; ReFL's paper alternates with the pre-training loss on real data, which this
benchmark does not have, so two stand-ins are offered, each weighted by ``regularizer_weight``):
    "eps-kl":    ‖ε_θ(x_s) − ε_base(x_s)‖² at the trained step (one extra no-grad call of the base model, the LoRA
                 switched off): a KL-like penalty between the tuned and base transition (cf. NeMo's DRaFT+).
    "denoising": the standard denoising loss ‖ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t) − ε‖², t ~ U{0 … N_train − 1}, on x_0
                 sampled by the base model itself (a full no-grad base-model chain per prompt; these chains are
                 counted in ``samples``).
Both need a backbone with ``set_lora_scale`` (to evaluate the base model).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Method, MethodConfig, MethodError, register
from .sampling import GRAD, NO_GRAD, predict, sample

REGULARIZERS = ("none", "eps-kl", "denoising")


@dataclass
class ReFLConfig(MethodConfig):
    step_range: tuple[float, float] = (0.75, 1.0)  # the trained step s is drawn from [lo·T, hi·T) (0-based)
    reward_target: float | None = None             # λ of relu(λ − r); None: no hinge
    loss_scale: float = 1.0                         # the reference uses 1e-3
    regularizer: str = "none"                       # "none" | "eps-kl" | "denoising"
    regularizer_weight: float = 1.0

    def step_bounds(self) -> tuple[int, int]:
        """Inclusive 0-based bounds of the trained step."""
        lo, hi = self.step_range
        return int(math.floor(lo * self.num_steps)), int(math.ceil(hi * self.num_steps)) - 1

    def validate(self) -> None:
        super().validate()
        lo, hi = self.step_range
        if not 0 <= lo < hi <= 1:
            raise MethodError(f"step_range must satisfy 0 <= lo < hi <= 1, got {self.step_range}")
        first, last = self.step_bounds()
        if first > last:
            raise MethodError(f"step_range {self.step_range} selects no step of a {self.num_steps}-step chain")
        if self.loss_scale <= 0:
            raise MethodError(f"loss_scale must be > 0, got {self.loss_scale}")
        if self.regularizer not in REGULARIZERS:
            raise MethodError(f"unknown regularizer {self.regularizer!r}; valid: {', '.join(REGULARIZERS)}")
        if self.regularizer_weight < 0:
            raise MethodError(f"regularizer_weight must be >= 0, got {self.regularizer_weight}")


@contextmanager
def base_model(backbone):
    """The base model: the trainable LoRA switched off (scale 0) for the duration."""
    backbone.set_lora_scale(0.0)
    try:
        yield
    finally:
        backbone.set_lora_scale(1.0)


@register("refl", "ReFL: no-grad chain to a random late step, one UNet call with gradient, score its predicted x0")
class ReFL(Method):
    name = "refl"
    Config = ReFLConfig
    # reference: DDPM ancestral sampler, 40 steps, no CFG during training, s in [30, 39], λ = 2, scale 1e-3,
    # lr 1e-5 (the reference tunes the full UNet; here the LoRA)
    REFERENCE = dict(sampler="ddpm", num_steps=40, guidance_scale=1.0, step_range=(0.75, 1.0), reward_target=2.0,
                     loss_scale=1e-3, lr=1e-5)

    @classmethod
    def check_backbone(cls, flow: bool, settings: dict | None = None) -> None:
        if flow and (settings or {}).get("regularizer") == "denoising":
            raise MethodError("refl: the denoising regulariser is the epsilon-prediction loss; a flow-matching model "
                              "predicts velocity (use regularizer none or eps-kl)")
        super().check_backbone(flow, settings)

    def __init__(self, backbone, reward, config=None, **kw):
        super().__init__(backbone, reward, config, **kw)
        if self.config.regularizer != "none" and not hasattr(backbone, "set_lora_scale"):
            raise MethodError(f"refl: regularizer {self.config.regularizer!r} needs a backbone with set_lora_scale "
                              f"(to evaluate the base model)")
        if self.config.regularizer == "denoising" and self.schedule.prediction_type != "epsilon":
            raise MethodError("refl: the denoising regulariser supports epsilon-prediction backbones only")

    def draw_step(self) -> int:
        first, last = self.config.step_bounds()
        return int(torch.randint(first, last + 1, (1,), generator=self.generator, device=self.generator.device))

    def compute_loss(self, prompts):
        c = self.config
        s = self.draw_step()
        cond = self.backbone.encode_prompts(prompts)
        with self.timer("sampling"):
            # steps 0 … s−1 under no_grad, step s with gradient; stop there and return its x̂_0
            out = sample(self.backbone, cond, self.noise(len(prompts)), plan=lambda i: GRAD if i == s else NO_GRAD,
                         stop_index=s, **self.sample_kwargs())
            images = self.backbone.decode(out.latents)
        rewards = self.score(images, prompts)
        gap = rewards if c.reward_target is None else -F.relu(c.reward_target - rewards)
        loss = -c.loss_scale * gap.mean()
        metrics = {"reward": rewards.detach().mean(), "trained_step": s, "samples": len(prompts),
                   "reward_queries": len(prompts)}
        if c.regularizer != "none":
            reg, extra_samples = self.regularizer(out, cond, s)
            loss = loss + c.regularizer_weight * reg
            metrics.update(regularizer=reg.detach(), samples=len(prompts) + extra_samples)
        return loss, metrics

    def regularizer(self, out, cond, s: int) -> tuple[torch.Tensor, int]:
        c = self.config
        timestep = self.schedule.timesteps[s]
        if c.regularizer == "eps-kl":
            eps, x_s = out.extras["eps"], out.extras["x_t"].detach()
            with base_model(self.backbone):
                eps_base = predict(self.backbone, x_s, timestep, cond, c.guidance_scale, NO_GRAD)
            return F.mse_loss(eps, eps_base), 0
        # "denoising": the base model's own samples, noised at a random training timestep
        with self.timer("sampling"), torch.no_grad(), base_model(self.backbone):
            x0 = sample(self.backbone, cond, self.noise(len(cond)), plan=NO_GRAD, **self.sample_kwargs()).latents
        n_train = self.backbone.scheduler.config.num_train_timesteps
        t = torch.randint(0, n_train, (1,), generator=self.generator, device=self.generator.device).to(x0.device)
        a = self.backbone.scheduler.alphas_cumprod.to(x0.device)[t].float()
        noise = self.randn(x0.shape, x0.dtype)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # the standard loss conditions on the prompt alone (no guidance), as in pre-training
        pred = predict(self.backbone, x_t, t[0], cond, 1.0, GRAD)
        return F.mse_loss(pred, noise), len(cond)
