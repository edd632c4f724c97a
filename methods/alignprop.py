"""AlignProp: Aligning text-to-image diffusion models with reward backpropagation (Prabhudesai et al., 2023).

Algorithm (per optimiser step, a batch of prompts c):
    K ~ Uniform{min_grad_steps, …, max_grad_steps};  cutoff c = T − K      # randomised truncated backprop
    x_T ~ N(0, I)
    for i = 0 … T−1:  x_{i+1} = DDIM_step(ε_θ(x_i, t_i, c), x_i)
        i <  cutoff: the UNet runs under no_grad (its output a constant; the chain's linear update is kept)
        i >= cutoff: the UNet runs with gradient, checkpointed where memory requires (see Checkpointing)
    loss = −r(decode(x_0), c);  θ ← AdamW(∇θ loss)

Truncation (the implementations disagree; REFERENCE.md):
    truncation="trajectory" (default): one cutoff per chain batch, as the rewrite does (the batch runs as one tensor,
        so its rows share the cutoff). K uniform in [min_grad_steps, max_grad_steps] (default [1, T]: the paper's
        K ~ Uniform(0, 50) best setting, without K = 0, which would train nothing).
    truncation="step": the original code's rule, redrawn at every step: step i keeps gradient iff u_i ≤ i with
        u_i ~ Uniform{0, …, T}, i.e. with probability (i + 1)/(T + 1). Steps without gradient in between keep the
        chain (gradient flows through their linear update into earlier gradient steps).
    fixed_grad_steps=K (> 0): always the last K steps (K = 1: the paper's fast "AlignProp K=1" mode).
The paper reports that full backprop (K = T every time) collapses within two epochs; the default avoids it.

Checkpointing (``checkpoint``): true checkpoints every UNet call with gradient (memory O(1) in K; one extra forward
per gradient step), false none (K steps' activations held). "auto" (default) holds as many of the last gradient
steps' activations as fit in the activation budget (methods/memory.py: the bytes one call saves, measured once per
batch size by a probe forward) and checkpoints the rest, so a run recomputes only what memory requires. The
gradient is the same either way. trl's AlignPropTrainer checkpoints every call, even those whose output it detaches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import memory
from .base import Method, MethodConfig, MethodError, register
from .sampling import GRAD, GRAD_CHECKPOINTED, NO_GRAD, StepPlan, sample

TRUNCATIONS = ("trajectory", "step")


@dataclass
class AlignPropConfig(MethodConfig):
    truncation: str = "trajectory"  # "trajectory": one cutoff per chain batch; "step": per-step redraw (original)
    min_grad_steps: int = 1         # K ~ Uniform{min_grad_steps, …, max_grad_steps} steps with gradient
    max_grad_steps: int = 0         # 0: num_steps
    fixed_grad_steps: int = 0       # > 0: always the last K steps (K = 1: AlignProp's K=1 mode); overrides the draw
    checkpoint: bool | str = "auto"  # checkpoint each UNet call with gradient: true, false, or "auto" (see below)

    def grad_steps_range(self) -> tuple[int, int]:
        return self.min_grad_steps, self.max_grad_steps or self.num_steps

    def validate(self) -> None:
        super().validate()
        if self.truncation not in TRUNCATIONS:
            raise MethodError(f"unknown truncation {self.truncation!r}; valid: {', '.join(TRUNCATIONS)}")
        lo, hi = self.grad_steps_range()
        if not 1 <= lo <= hi <= self.num_steps:
            raise MethodError(f"grad steps range must satisfy 1 <= min_grad_steps <= max_grad_steps <= "
                              f"num_steps={self.num_steps}, got [{lo}, {hi}]")
        if self.checkpoint not in (True, False, "auto"):
            raise MethodError(f"checkpoint must be true, false or \"auto\", got {self.checkpoint!r}")
        if not 0 <= self.fixed_grad_steps <= self.num_steps:
            raise MethodError(f"fixed_grad_steps must be in [0, num_steps={self.num_steps}], got {self.fixed_grad_steps}")


@register("alignprop", "AlignProp: backprop through the steps after a random cutoff, checkpointed as memory requires")
class AlignProp(Method):
    name = "alignprop"
    Config = AlignPropConfig
    # reference: 50 DDIM steps, eta 0, CFG 7.5, lr 1e-3, wd 0.1, grad clip 5 (LoRA rank 4 is the backbone's setting)
    REFERENCE = dict(num_steps=50, guidance_scale=7.5, eta=0.0, sampler="ddim", lr=1e-3, weight_decay=0.1,
                     grad_clip=5.0)

    def _randint(self, low: int, high: int, n: int = 1) -> list[int]:
        """n draws from Uniform{low, …, high} (inclusive)."""
        return torch.randint(low, high + 1, (n,), generator=self.generator, device=self.generator.device).tolist()

    def draw_grad_steps(self) -> list[bool]:
        """Which steps (sampling order) carry gradient this iteration."""
        c, T = self.config, self.config.num_steps
        if c.fixed_grad_steps:
            cutoff = T - c.fixed_grad_steps
        elif c.truncation == "trajectory":
            cutoff = T - self._randint(*c.grad_steps_range())[0]
        else:  # per-step redraw: step i keeps gradient with probability (i + 1)/(T + 1)
            draws = self._randint(0, T, T)
            return [draws[i] <= i for i in range(T)]
        return [i >= cutoff for i in range(T)]

    def plans(self, grad_steps: list[bool], batch: int) -> list[StepPlan]:
        c = self.config
        if c.checkpoint != "auto":
            with_grad = GRAD_CHECKPOINTED if c.checkpoint else GRAD
            return [with_grad if g else NO_GRAD for g in grad_steps]
        per_call = self._call_bytes.get(batch)
        order = [i for i, g in enumerate(grad_steps) if g]
        if per_call is None:  # not measured yet: only the first gradient step holds its activations (and is measured)
            held = set(order[:1])
        else:  # the last gradient steps that fit hold theirs
            keep = min(len(order), memory.how_many_fit(per_call, self.backbone.device))
            held = set(order[len(order) - keep:])
        return [NO_GRAD if not g else GRAD if i in held else GRAD_CHECKPOINTED for i, g in enumerate(grad_steps)]

    def compute_loss(self, prompts):
        grad_steps = self.draw_grad_steps()
        self.last_grad_steps = grad_steps
        cond = self.backbone.encode_prompts(prompts)
        plan = self.plans(grad_steps, len(prompts))
        self.last_plan = plan
        measure = self.config.checkpoint == "auto" and len(prompts) not in self._call_bytes and any(grad_steps)
        with self.timer("sampling"):
            run = lambda: sample(self.backbone, cond, self.noise(len(prompts)), plan=plan, **self.sample_kwargs())
            if measure:  # what autograd saves in this chain: the one held step's activations (+ the chain's own)
                out, self._call_bytes[len(prompts)] = memory.saved_bytes(run, exclude=list(self.backbone.parameters()))
            else:
                out = run()
            images = self.backbone.decode(out.latents)
        rewards = self.score(images, prompts)
        first = grad_steps.index(True) if any(grad_steps) else len(grad_steps)
        return -rewards.mean(), {"reward": rewards.detach().mean(), "grad_steps": sum(grad_steps), "cutoff": first,
                                 "samples": len(prompts), "reward_queries": len(prompts),
                                 "checkpointed_steps": sum(p.checkpoint for p in plan)}
