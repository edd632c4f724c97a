"""The GRPO family: DanceGRPO-style ``grpo`` (Xue et al. 2025) on any stochastic sampler, and ``flow-grpo`` (Liu et
al. 2025) on flow-matching models' SDE (methods/sampling.py, ``kind="flow"``).

Both are DDPO's clipped likelihood-ratio update (methods/ddpo.py: stored transitions, per-row timesteps, epochs of
several batches, PPO minibatches) with what GRPO changes:

    groups:     a batch of B samples is B / G prompts, each sampled G times (``group_size``); ``step(prompts)`` takes
                the first B / G of the batch's prompts and repeats each G times, so the budget counts samples as for
                every other method. ``group_noise`` (DanceGRPO) starts a group's G chains from the same x_T.
    advantages: A_i = (r_i − mean_group(r)) / (std_group(r) + 1e-4), population std, within each group (no per-prompt
                buffer across epochs), clipped to ±adv_clip_max
    KL:         with ``kl_coef`` β > 0 each trained transition adds β · KL(p_θ(·|x_t) ‖ p_ref(·|x_t)) to its term; the
                two Gaussians share their std σ_t, so KL = mean over pixels of (μ_θ − μ_ref)² / (2 σ_t²), μ_ref being
                the frozen base model's mean (the LoRA scaled to 0), recomputed with no gradient. Zero at
                initialisation (peft's LoRA starts at B = 0) and its gradient flows only through μ_θ.

Flow-GRPO's setting (its paper's SD3.5-M runs): the flow SDE at noise level a = 0.7 (``eta``), β = 0.04, clip range
1e-4, training on fewer sampling steps (10) than it evaluates with (40): ``num_steps`` is the training chain's; the
harness evaluates every method with the shared protocol's steps. DanceGRPO: β = 0 and shared initial noise per group.

The gradient reaches θ only through log p_θ (the advantages, old log-probs and trajectories are data) and, with
β > 0, through μ_θ in the KL term. Before the first update ρ = 1 exactly up to rounding (θ = θ_old).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import MethodError, register
from .ddpo import DDPO, DDPOConfig
from .sampling import GRAD, NO_GRAD, denoise_step, gaussian_log_prob

GROUP_EPS = 1e-4


@dataclass
class GRPOConfig(DDPOConfig):
    group_size: int = 4             # G samples per prompt (Flow-GRPO: 24 on 8 GPUs; the testbed: 4)
    kl_coef: float = 0.0            # β of the KL to the frozen base model (DanceGRPO: 0; Flow-GRPO: 0.04)
    group_noise: bool = True        # a group's chains share x_T (DanceGRPO)

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise MethodError(f"group_size must be >= 2 (a group of one has zero advantage), got {self.group_size}")
        if self.kl_coef < 0:
            raise MethodError(f"kl_coef must be >= 0, got {self.kl_coef}")


class GroupStats:
    """Group-normalised advantages: consecutive runs of ``group_size`` rows are one prompt's group."""

    def __init__(self, group_size: int):
        self.group_size = group_size

    def update(self, prompts, rewards: torch.Tensor) -> torch.Tensor:
        g = self.group_size
        if len(prompts) != len(rewards) or len(rewards) % g:
            raise MethodError(f"grpo: {len(rewards)} rewards do not form groups of {g}")
        groups = [prompts[i:i + g] for i in range(0, len(prompts), g)]
        if any(len(set(members)) != 1 for members in groups):
            raise MethodError("grpo: a group holds samples of different prompts (the batch was not grouped)")
        r = rewards.detach().double().view(-1, g)
        adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, unbiased=False, keepdim=True) + GROUP_EPS)
        return adv.view(-1).to(rewards.device, torch.float32)

    def stats(self) -> dict[str, int]:
        return {}


def group_prompts(prompts: list[str], group_size: int) -> list[str]:
    """The batch's first ``len / G`` prompts, each ``G`` times in a row (what one GRPO batch samples)."""
    if len(prompts) % group_size:
        raise MethodError(f"grpo: batch size {len(prompts)} is not a multiple of group_size {group_size}")
    return [p for p in prompts[:len(prompts) // group_size] for _ in range(group_size)]


@register("grpo", "GRPO (DanceGRPO-style): group-normalised advantages over G samples per prompt, clipped ratio, "
                  "optional KL; any stochastic sampler (DDIM eta > 0, or the flow SDE)")
class GRPO(DDPO):
    name = "grpo"
    Config = GRPOConfig
    #: the shared protocol's eta (0: deterministic, no log-probs) does not apply: its own noise level is kept
    OWN_SAMPLER_SETTINGS = ("eta",)
    REFERENCE = dict(eta=1.0, clip_range=1e-4, adv_clip_max=5.0, kl_coef=0.0, group_noise=True, lr=1e-5,
                     timestep_fraction=0.6)

    @classmethod
    def settle(cls, config):
        import dataclasses

        config = super().settle(config)
        if config.kl_coef > 0 and config.reuse_sampling_graph is not False:
            # the KL term needs μ_θ with its graph: the sampling graphs keep only the log-probs
            config = dataclasses.replace(config, reuse_sampling_graph=False)
        return config

    @classmethod
    def check_batch(cls, batch_size: int, settings: dict | None = None) -> None:
        settings = settings or {}
        g = settings.get("group_size", GRPOConfig.group_size)
        if batch_size % g:
            raise MethodError(f"{cls.name}: batch_size {batch_size} is not a multiple of group_size {g} (a batch is "
                              f"batch_size / group_size prompts, each sampled group_size times)")
        super().check_batch(batch_size, settings)

    def __init__(self, backbone, reward, config=None, **kw):
        super().__init__(backbone, reward, config, **kw)
        self.tracker = GroupStats(self.config.group_size)
        self._penalty: torch.Tensor | None = None
        if self.config.kl_coef > 0 and not hasattr(backbone, "set_lora_scale"):
            raise MethodError(f"{self.name}: kl_coef > 0 needs a backbone whose LoRA can be scaled to 0 (the "
                              f"reference model)")

    def step(self, prompts):
        return super().step(group_prompts(list(prompts), self.config.group_size))

    def noise(self, batch_size: int) -> torch.Tensor:
        """With ``group_noise``, a group's chains start from one x_T (drawn for the whole batch, so the draws do not
        depend on the number of processes)."""
        g = self.config.group_size
        if not self.config.group_noise:
            return super().noise(batch_size)
        n_global = len(self.batch_prompts) or batch_size
        shape = self.backbone.latent_shape(n_global // g)
        full = torch.randn(shape, generator=self.generator, device=self.backbone.device).repeat_interleave(g, 0)
        lo, hi = self.shard.span(n_global) if self.shard.distributed else (0, n_global)
        return full[lo:hi]

    def transition_log_probs(self, trajectory, cond, rows, indices, grad: bool = True) -> torch.Tensor:
        c = self.config
        if c.kl_coef <= 0:
            return super().transition_log_probs(trajectory, cond, rows, indices, grad)
        dev = trajectory.device
        r, i = rows.to(dev), indices.to(dev)
        x_t, x_prev, sub = trajectory[r, i], trajectory[r, i + 1], cond.index(r)
        out = denoise_step(self.backbone, self.schedule, i, x_t, sub, c.guidance_scale, c.eta, GRAD if grad else NO_GRAD)
        self.backbone.set_lora_scale(0.0)
        try:
            ref = denoise_step(self.backbone, self.schedule, i, x_t, sub, c.guidance_scale, c.eta, NO_GRAD)
        finally:
            self.backbone.set_lora_scale(1.0)
        self._penalty = c.kl_coef * kl_same_std(out.mean, ref.mean.detach(), out.std)
        return gaussian_log_prob(x_prev, out.mean, out.std)

    def pop_penalty(self):
        penalty, self._penalty = self._penalty, None
        return penalty


def kl_same_std(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std²) ‖ N(ref_mean, std²)) per row, averaged over pixels (the log-probs' convention)."""
    return ((mean.float() - ref_mean.float()) ** 2 / (2 * std.float() ** 2)).mean(dim=tuple(range(1, mean.ndim)))


@dataclass
class FlowGRPOConfig(GRPOConfig):
    eta: float = 0.7                # the flow SDE's noise level a (Flow-GRPO's default)
    kl_coef: float = 0.04           # Flow-GRPO's β
    group_noise: bool = False       # Flow-GRPO draws each chain's x_T


@register("flow-grpo", "Flow-GRPO: GRPO on a flow-matching model's SDE (noise level 0.7), KL 0.04 to the base model")
class FlowGRPO(GRPO):
    name = "flow-grpo"
    Config = FlowGRPOConfig
    REFERENCE = dict(eta=0.7, clip_range=1e-4, adv_clip_max=5.0, kl_coef=0.04, group_noise=False, lr=3e-4,
                     num_steps=10, guidance_scale=4.5)

    @classmethod
    def check_backbone(cls, flow: bool, settings: dict | None = None) -> None:
        if not flow:
            raise MethodError("flow-grpo needs a flow-matching backbone (its SDE is the rectified flow's); on a DDIM "
                              "model use grpo")
        super().check_backbone(flow, settings)

    def __init__(self, backbone, reward, config=None, **kw):
        from .sampling import is_flow_scheduler

        if not is_flow_scheduler(backbone.scheduler):
            raise MethodError("flow-grpo needs a flow-matching backbone (its SDE is the rectified flow's); on a DDIM "
                              "model use grpo")
        super().__init__(backbone, reward, config, **kw)
