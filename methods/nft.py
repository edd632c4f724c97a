"""DiffusionNFT: online diffusion reinforcement on the forward process (Zheng et al. 2025), ``diffusion-nft``.

No log-prob, no backpropagation through the sampler, any sampler (here the shared one, eta 0 by default):

    sample G clean samples x_0 per prompt with the current model θ_old, under no_grad (data, never differentiated)
    r_i = 0.5 + 0.5 · clip(A_i / adv_clip_max, −1, 1)       A: group-normalised reward (as GRPO), r ∈ [0, 1] is the
                                                            sample's "optimality probability"
    per sample, a training step t (uniform over the sampling schedule's steps) and fresh noise ε:
        x_t = forward process q(x_t | x_0) (flow: (1 − s) x_0 + s ε),  target y (flow: ε − x_0; DDIM: its prediction)
        v_θ = model(x_t, t, c) without CFG (DiffusionNFT trains the conditional model only), v_old = sg(v_θ) (θ = θ_old:
        one update per batch, the paper's fully on-policy case)
        implicit positive and negative policies:  v⁺ = (1 − β) v_old + β v_θ,   v⁻ = (1 + β) v_old − β v_θ
        L = mean_i [ r_i · ‖v⁺ − y‖² + (1 − r_i) · ‖v⁻ − y‖² ]      (‖·‖² averaged over pixels)

At θ = θ_old its gradient is 2β (2r − 1)(v_old − y) ∂v_θ: samples above their group's mean (r > ½) are fitted,
samples below are pushed away from. With every reward equal (r = ½) L = ‖v_old − y‖² + β² ‖v_θ − v_old‖², whose
gradient at θ_old is exactly 0: nothing is learnt from a reward that does not discriminate. The paper's formulation is
for flow matching; the same implicit-policy loss is written here in the model's own parameterisation (velocity for
flow models, ε / v / x_0 prediction for DDIM ones), which it is linear in, so it also runs on SD 1.x/SDXL and the
testbed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Method, MethodConfig, MethodError, register
from .grpo import GroupStats, group_prompts
from .sampling import sample


@dataclass
class NFTConfig(MethodConfig):
    group_size: int = 4             # G samples per prompt
    beta: float = 1.0               # the implicit policies' strength β (the paper's default)
    adv_clip_max: float = 5.0       # A / adv_clip_max clipped to [-1, 1] before the map to [0, 1]
    lr: float = 3e-4

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise MethodError(f"group_size must be >= 2 (a group of one has no reward contrast), got {self.group_size}")
        if self.beta <= 0:
            raise MethodError(f"beta must be > 0, got {self.beta}")
        if self.adv_clip_max <= 0:
            raise MethodError(f"adv_clip_max must be > 0, got {self.adv_clip_max}")


def optimality(advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """r = 0.5 + 0.5 · clip(A / clip, −1, 1) ∈ [0, 1]."""
    return 0.5 + 0.5 * (advantages / clip).clamp(-1.0, 1.0)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
             beta: float) -> torch.Tensor:
    """mean_i r_i ‖v⁺ − y‖² + (1 − r_i) ‖v⁻ − y‖², v⁺ = (1 − β) v_old + β v_θ, v⁻ = (1 + β) v_old − β v_θ."""
    dims = tuple(range(1, v_theta.ndim))
    pos = (1 - beta) * v_old + beta * v_theta
    neg = (1 + beta) * v_old - beta * v_theta
    r = r.view(-1)
    return (r * ((pos - target) ** 2).mean(dims) + (1 - r) * ((neg - target) ** 2).mean(dims)).mean()


@register("diffusion-nft", "DiffusionNFT: reward-weighted flow-matching loss between implicit positive and negative "
                           "policies on the forward process; any sampler, no log-prob, no CFG in training")
class DiffusionNFT(Method):
    name = "diffusion-nft"
    Config = NFTConfig
    needs_gradient_reward = False
    REFERENCE = dict(beta=1.0, group_size=24, guidance_scale=1.0, lr=3e-4)

    @classmethod
    def check_batch(cls, batch_size: int, settings: dict | None = None) -> None:
        g = (settings or {}).get("group_size", NFTConfig.group_size)
        if batch_size % g:
            raise MethodError(f"{cls.name}: batch_size {batch_size} is not a multiple of group_size {g} (a batch is "
                              f"batch_size / group_size prompts, each sampled group_size times)")

    def __init__(self, backbone, reward, config=None, **kw):
        super().__init__(backbone, reward, config, **kw)
        self.stats = GroupStats(self.config.group_size)

    def step(self, prompts):
        return super().step(group_prompts(list(prompts), self.config.group_size))

    def compute_loss(self, prompts):
        c = self.config
        cond = self.backbone.encode_prompts(prompts)
        with self.timer("sampling"), torch.no_grad():  # the clean samples are data: no graph reaches the sampler
            x0 = sample(self.backbone, cond, self.noise(len(prompts)), **self.sample_kwargs()).latents.detach()
            images = self.backbone.decode(x0)
        with torch.no_grad():
            rewards = self.score(images, prompts)
        gathered = self.shard.all_gather(rewards)
        lo, hi = self.shard.span(len(self.batch_prompts)) if self.shard.distributed else (0, len(prompts))
        everyone = self.batch_prompts if self.shard.distributed else prompts
        advantages = self.stats.update(everyone, gathered)[lo:hi]
        r = optimality(advantages, c.adv_clip_max)
        with self.timer("backward"):
            index = torch.randint(0, c.num_steps, (len(prompts),), generator=self.generator,
                                  device=self.generator.device).to(x0.device)
            eps = self.randn(x0.shape, x0.dtype)
            x_t = self.schedule.add_noise(x0, index, eps)
            target = self.schedule.training_target(x0, eps, index)
            v_theta = self.backbone.predict_noise(x_t, self.schedule.timesteps[index], cond, 1.0)
            loss = nft_loss(v_theta, v_theta.detach(), target, r, c.beta)
        return loss, {"reward": rewards.detach().float().mean(), "reward_std": rewards.detach().float().std(unbiased=False),
                      "optimality_mean": r.mean(), "samples": len(prompts), "reward_queries": len(prompts)}
