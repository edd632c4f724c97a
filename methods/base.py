"""What every fine-tuning method shares: the config, the optimiser over the LoRA weights, the step loop's
bookkeeping (samples generated, reward queries, time split into sampling / reward / backward), and the registry.

A method is ``Method(backbone, reward, config).step(prompts) -> metrics``: one optimiser step. Subclasses implement
``compute_loss(prompts)`` (sampling, reward, loss) and may override ``backward`` for methods that call backward
several times (DDPO's inner PPO loop).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from registry import Registry

from .backbone import Backbone
from .parallel import SINGLE, Shard
from .sampling import SAMPLER_KINDS, schedule_for


class MethodError(ValueError):
    """An invalid method setting, or a method/reward mismatch; one line, raised before any work starts."""


@dataclass
class MethodConfig:
    """The shared protocol. Every method runs the same sampler settings unless its reference protocol says
    otherwise (see each method's ``REFERENCE``)."""

    num_steps: int = 20          # sampling steps of the chain
    guidance_scale: float = 5.0  # classifier-free guidance during training sampling
    eta: float = 0.0             # DDIM stochasticity (0: deterministic)
    sampler: str = "ddim"        # "ddim" | "ddpm" (ancestral)
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float = 1.0       # max global grad norm (0: off)
    adam_betas: tuple[float, float] = (0.9, 0.999)

    def validate(self) -> None:
        if self.num_steps < 1:
            raise MethodError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.eta < 0:
            raise MethodError(f"eta must be >= 0, got {self.eta}")
        if self.guidance_scale < 0:
            raise MethodError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.sampler not in SAMPLER_KINDS:
            raise MethodError(f"unknown sampler {self.sampler!r}; valid: {', '.join(SAMPLER_KINDS)}")
        if self.lr <= 0:
            raise MethodError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise MethodError(f"grad_clip must be >= 0, got {self.grad_clip}")


class StepTimer:
    """Accumulates wall time per phase. Synchronises CUDA only at phase boundaries (a few per optimiser step)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.totals: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, phase: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start


class Method:
    """Base class. ``needs_gradient_reward``: the reward must be differentiable w.r.t. pixels."""

    name: str = "method"
    Config: type[MethodConfig] = MethodConfig
    needs_gradient_reward: bool = True
    #: overrides that turn the shared protocol into the original paper's ("reference" protocol)
    REFERENCE: dict[str, Any] = {}
    #: what a resumed method needs besides its parameters, optimiser and generator (picklable attributes): the
    #: counters, and what the "auto" memory policies measured (so a resumed run plans its memory as the first did)
    STATE_ATTRS: tuple[str, ...] = ("total_samples", "total_reward_queries", "_call_bytes")
    #: how the processes' gradients combine (methods/parallel.py): "mean" where the loss is a mean over the batch
    grad_reduction: str = "mean"

    def __init__(self, backbone: Backbone, reward: torch.nn.Module, config: MethodConfig | None = None, *,
                 seed: int = 0, shard: Shard = SINGLE, **overrides):
        config = config or self.Config()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        config = self.settle(config)
        config.validate()
        if self.needs_gradient_reward and not getattr(reward, "differentiable", True):
            raise MethodError(f"{self.name} backpropagates through the reward, but {getattr(reward, 'name', reward)!r} "
                              f"is not differentiable; use a differentiable reward or a policy-gradient method (ddpo)")
        self.backbone, self.reward, self.config = backbone, reward, config
        self.params = list(backbone.trainable_parameters())
        if not self.params:
            raise MethodError("the backbone has no trainable parameters (was it built with lora_rank=0?)")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=config.adam_betas)
        self.generator = torch.Generator(device=backbone.device).manual_seed(seed)
        self.schedule = schedule_for(backbone, config.num_steps, backbone.device, kind=config.sampler)
        self.timer = StepTimer(backbone.device)
        self.total_samples = 0
        self.total_reward_queries = 0
        #: this process's part of each batch (methods/parallel.py); ``step`` takes the whole batch's prompts
        self.shard = shard
        self.batch_prompts: list[str] = []
        #: bytes autograd saves for one denoiser call, per batch size: what the "auto" memory policies measure
        #: (methods/memory.py; AlignProp's checkpointing, DDPO's reuse of the sampling graph)
        self._call_bytes: dict[int, int] = {}

    @classmethod
    def settle(cls, config: MethodConfig) -> MethodConfig:
        """The config this variant runs: its fixed settings applied (DRaFT-1's K = 1, full DRaFT's K = T). Called
        before validation, here and by the harness's settings check, so a setting the variant replaces is never
        judged on its default (``num_steps=2`` must not fail on DRaFT-K's default K = 3 for DRaFT-1)."""
        return config

    @classmethod
    def check_batch(cls, batch_size: int, settings: dict | None = None) -> None:
        """Raise ``MethodError`` where a batch size (with these config ``settings``) makes this method's update
        identically zero or cannot be run."""

    @classmethod
    def check_backbone(cls, flow: bool, settings: dict | None = None) -> None:
        """Raise ``MethodError`` where this method (with these ``settings``) cannot run on a backbone of this kind
        (``flow``: a flow-matching model), judged from the name before any weights load."""
        if flow and (settings or {}).get("sampler") == "ddpm":
            raise MethodError(f"{cls.name}: sampler ddpm (the DDPM ancestral step) needs a DDPM/DDIM noise schedule; "
                              f"this backbone is a flow-matching model (its samplers: flow)")

    # ------------------------------------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """Everything the next ``step`` depends on: the LoRA weights, the optimiser, the generator that draws every
        random choice (noise, timesteps, stop steps), and ``STATE_ATTRS``. ``load_state_dict`` of it into a fresh
        method of the same cell continues bit for bit as this one would."""
        return {"params": [p.detach().cpu().clone() for p in self.params], "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "attrs": {k: copy.deepcopy(getattr(self, k)) for k in self.STATE_ATTRS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shapes = [tuple(p.shape) for p in self.params]
        if [tuple(v.shape) for v in state["params"]] != shapes:
            raise MethodError(f"{self.name}: the saved state's LoRA parameters do not match this method's")
        with torch.no_grad():
            for p, v in zip(self.params, state["params"]):
                p.copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        for k, v in state["attrs"].items():
            setattr(self, k, v)

    # --------------------------------------------------------------------------------------------- helpers
    def noise(self, batch_size: int) -> torch.Tensor:
        return self.randn(self.backbone.latent_shape(batch_size))

    def randn(self, shape, dtype=None) -> torch.Tensor:
        """Per-sample noise of this process's rows (``shape[0]`` local), drawn for the whole batch from the method's
        generator, so the draws do not depend on the number of processes (methods/parallel.py)."""
        return self.shard.randn(shape, self.generator, self.backbone.device, dtype)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        with self.timer("reward"):
            return self.reward(images, list(prompts))

    def sample_kwargs(self) -> dict[str, Any]:
        c = self.config
        return dict(num_steps=c.num_steps, guidance_scale=c.guidance_scale, eta=c.eta, kind=c.sampler,
                    schedule=self.schedule, generator=self.generator, shard=self.shard)

    # ---------------------------------------------------------------------------------------------- the step
    def compute_loss(self, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Sample, score and return (loss, metrics). Metrics must include ``samples`` and ``reward_queries``."""
        raise NotImplementedError

    def backward(self, prompts: list[str]) -> dict[str, Any]:
        loss, metrics = self.compute_loss(prompts)
        with self.timer("backward"):
            loss.backward()
        metrics["loss"] = loss.detach()
        return metrics

    def step(self, prompts: Sequence[str]) -> dict[str, Any]:
        """One optimiser step on a batch of prompts; returns its metrics (python floats). With several processes,
        ``prompts`` is the whole batch (the same on every rank) and this process trains its share of it."""
        prompts = list(prompts)
        if not prompts:
            raise MethodError("step() needs at least one prompt")
        self.batch_prompts = prompts
        local = self.shard.local(prompts)
        self.timer.totals = {}
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.backward(local)
        grad_norm = torch.zeros(())
        if metrics.get("optimizer_steps", 1):  # 0: a call that only sampled (DDPO's epoch is not complete yet)
            self.shard.all_reduce_grads(self.params, self.grad_reduction)
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            if self.config.grad_clip > 0 and grads:
                torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
            self.optimizer.step()
        self.total_samples += int(metrics["samples"]) * self.shard.world  # equal shards: every rank's count
        self.total_reward_queries += int(metrics["reward_queries"]) * self.shard.world
        out = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in metrics.items()}
        out["grad_norm"] = float(grad_norm)
        out.update({f"time_{k}": v for k, v in self.timer.totals.items()})
        out["time_step"] = time.perf_counter() - start
        return out


# ------------------------------------------------------------------------------------------------------ registry
REGISTRY = Registry("method", MethodError)
register, available, describe, get = REGISTRY.register, REGISTRY.available, REGISTRY.describe, REGISTRY.get


def create(name: str, backbone: Backbone, reward: torch.nn.Module, *, seed: int = 0, protocol: str = "shared",
           shard: Shard = SINGLE, **overrides) -> Method:
    """Build a method by name. ``protocol="reference"`` applies the original paper's settings (``REFERENCE``)
    before ``overrides``."""
    factory = get(name)
    if protocol not in ("shared", "reference"):
        raise MethodError(f"unknown protocol {protocol!r}; valid: shared, reference")
    settings = dict(getattr(factory, "REFERENCE", {})) if protocol == "reference" else {}
    settings.update(overrides)
    config_cls = getattr(factory, "Config", MethodConfig)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise MethodError(f"{name}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return factory(backbone, reward, config_cls(**settings), seed=seed, shard=shard)
