"""DRTune: Deep reward supervisions for tuning text-to-image diffusion models (Wu et al., 2024).

Algorithm (per optimiser step, a batch of prompts c):
    t_min ~ Uniform{1, …, m};  the chain stops after step e = T − t_min (0-based; t_min = 1: the full chain)
    spacing = ⌊(e + 1)/K⌋;  s ~ Uniform{0, …, e − (K − 1)·spacing}
    trained steps = {s + i·spacing : i = 0 … K−1}           # K evenly spaced steps with a random offset
    x_T ~ N(0, I)
    for i = 0 … e:
        ε̂_i = ε_θ(sg(x_i), t_i, c)       # the UNet always sees the *detached* latent (stop-gradient on its input);
                                          # with gradient at the trained steps, under no_grad elsewhere
        x_{i+1} = DDIM_step(ε̂_i, x_i)     # the linear update keeps x_i: gradient reaches earlier latents (and x_T)
                                          # only through this skip path, never back through a UNet
    loss = −r(decode(x̂_0 at step e), c)   # early stop: the predicted x̂_0 of the stop step is scored

Why: backpropagating through the UNet's input at every step is what makes deep supervision explode and cost
memory; cutting it keeps each trained step's parameter gradient while making early steps trainable.

Choices (K, m and the offset range are *unverified* in REFERENCE.md):
    - the K steps are spaced over the steps actually run (e + 1 of them), so every iteration trains exactly K steps;
      the offset ranges over all positions that keep the last trained step ≤ e (0-based). REFERENCE.md's bound
      s ∈ [1, T − K⌊T/K⌋] is empty whenever K divides T, so it is read as this.
    - defaults K = 5 and m = T // 4 (5 on the shared 20-step chain); the reference protocol: K = 5, m = 10 of 50.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Method, MethodConfig, MethodError, register
from .sampling import StepPlan, sample


@dataclass
class DRTuneConfig(MethodConfig):
    trained_steps: int = 0      # K: steps whose UNet call carries gradient; 0: min(5, the shortest chain)
    early_stop_max: int = 0     # m: stop t_min ~ Uniform{1, …, m} steps before the end (1: full chain); 0: T // 4
    checkpoint: bool = False    # checkpoint each UNet call with gradient

    @property
    def stop_max(self) -> int:
        return self.early_stop_max or max(1, self.num_steps // 4)

    @property
    def k(self) -> int:
        """K: ``trained_steps``, or (0) the paper's 5 where the shortest chain holds 5 steps, else that chain's length."""
        return self.trained_steps or max(1, min(5, self.num_steps - self.stop_max + 1))

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.stop_max <= self.num_steps:
            raise MethodError(f"early_stop_max (m) must be in [1, num_steps={self.num_steps}], got {self.early_stop_max}")
        shortest = self.num_steps - self.stop_max + 1
        if not 1 <= self.k <= shortest:
            raise MethodError(f"trained_steps (K) must be in [1, {shortest}] (the shortest chain, num_steps − "
                              f"early_stop_max + 1, must hold K steps), got {self.trained_steps}")


def spaced_steps(num_run: int, k: int, offset: int) -> list[int]:
    """K evenly spaced step indices over ``num_run`` steps, starting at ``offset``."""
    spacing = num_run // k
    return [offset + i * spacing for i in range(k)]


@register("drtune", "DRTune: K evenly spaced trained steps, UNet input detached at every step, early-stopped x0")
class DRTune(Method):
    name = "drtune"
    Config = DRTuneConfig
    REFERENCE = dict(num_steps=50, guidance_scale=7.5, eta=0.0, sampler="ddim", trained_steps=5, early_stop_max=10)

    def _randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=self.generator, device=self.generator.device))

    def draw(self) -> tuple[int, list[int]]:
        """(stop index e, the trained steps) for this iteration."""
        c = self.config
        stop = c.num_steps - self._randint(1, c.stop_max)
        num_run, k = stop + 1, c.k
        spacing = num_run // k
        offset = self._randint(0, stop - (k - 1) * spacing)
        return stop, spaced_steps(num_run, k, offset)

    def compute_loss(self, prompts):
        c = self.config
        stop, trained = self.draw()
        self.last_draw = (stop, trained)
        with_grad = StepPlan(grad=True, detach_input=True, checkpoint=c.checkpoint)
        without = StepPlan(grad=False, detach_input=True)
        plan = [with_grad if i in trained else without for i in range(c.num_steps)]
        cond = self.backbone.encode_prompts(prompts)
        with self.timer("sampling"):
            out = sample(self.backbone, cond, self.noise(len(prompts)), plan=plan, stop_index=stop,
                         **self.sample_kwargs())
            images = self.backbone.decode(out.latents)  # x̂_0 of the stop step
        rewards = self.score(images, prompts)
        return -rewards.mean(), {"reward": rewards.detach().mean(), "stop_step": stop, "first_trained": trained[0],
                                 "samples": len(prompts), "reward_queries": len(prompts)}
