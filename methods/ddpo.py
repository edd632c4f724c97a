"""DDPO: Training diffusion models with reinforcement learning (Black et al., 2023), the DDPO_IS (PPO) variant.

Algorithm (one ``step(prompts)`` = one DDPO epoch on this batch):
    sample x_T → … → x_0 with eta > 0 under no_grad, recording every transition (x_t, x_{t−1}) and
        log p_old(x_{t−1} | x_t) = log N(x_{t−1}; μ_θold(x_t, t, c), σ_t²)      # averaged over pixels, not summed
    r = reward(decode(x_0), c)                                                  # no gradient: any reward works
    A = clip(per_prompt_normalise(r), −a_max, a_max)                            # ddpo_stats.PerPromptStatTracker
    repeat inner_epochs times:
        shuffle the samples; each sample gets its own random order of its timesteps, of which the first
        ⌊timestep_fraction·T⌋ are trained
        for each minibatch: for each trained position j: for each row, its transition (x_t, x_{t−1}) at its j-th step
            ρ = exp(log p_θ(x_{t−1} | x_t) − log p_old)                        # same eta and guidance as sampling
            L = mean( max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)) )                    # PPO clipped surrogate
            accumulate ∇θ L / (#trained positions); then one optimiser step per minibatch (grad clip as configured)

What ``step()`` means here: unlike the gradient methods (one optimiser step per call), DDPO's unit of update is an
*epoch* of on-policy samples. With ``samples_per_epoch`` = 0 (the default) every ``step(prompts)`` call is an epoch of
``len(prompts)`` samples. With ``samples_per_epoch`` = E (a multiple of the batch), the calls sample and score their
batch and store it (no update, ``optimizer_steps`` 0), and the call that completes E samples computes the advantages
of the whole epoch (the tracker sees its E rewards at once, as ddpo-pytorch's does) and runs the PPO epochs over all
E: ``inner_epochs × ceil(E / minibatch_size)`` optimiser steps — ddpo-pytorch's structure (its reference: 256 samples
per epoch in batches of 8 per GPU, minibatches of 64 or 128, one inner epoch). Every sample of an epoch comes from the
same θ_old (no update happens between its batches). ``metrics["optimizer_steps"]`` reports the steps taken, and the
harness's ``optimizer_steps`` column sums it over the run (``train_steps`` counts the ``step()`` calls). ``samples``
and ``reward_queries`` both equal ``len(prompts)`` per call (the PPO epochs reuse the stored transitions and never
query the reward again). A budget that ends mid-epoch leaves the last partial epoch untrained.

Reusing the sampling graph (``reuse_sampling_graph``): the first minibatch of the first inner epoch is trained at
θ = θ_old, where the PPO term's ρ is exactly 1 and its gradient −A·∇θ log p_θ(x_{t−1} | x_t) is that of the very
denoiser calls the sampler just made. When those calls run with autograd (their inputs detached: each transition's
x_t stays data, as in a recomputed term) and their graphs are kept, that minibatch needs no second forward: its terms
are backpropagated through the sampling graphs in one backward. "auto" (default) keeps the graphs of as many
sampling steps as fit in the activation budget (methods/memory.py; the bytes one call saves are measured during the
first call's recomputed terms, so the first call recomputes everything) and recomputes the terms of the other steps;
it applies when the first minibatch is the whole epoch and the epoch is one batch (the graphs of an epoch's earlier
batches are not kept). true forces every step, false never. Same gradient as the
recomputation (which reproduces ρ = 1 up to rounding), one denoiser forward fewer per term; trl and ddpo-pytorch
always recompute.

Zero-σ transitions (the final step of DDPM, or of DDIM with ``set_alpha_to_one=True``) are deterministic: their
log-density is undefined (0/0), so they are excluded from the PPO terms, never divided by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import memory
from .base import Method, MethodConfig, MethodError, register
from .ddpo_stats import PerPromptStatTracker
from .sampling import GRAD, NO_GRAD, sample, transition_log_prob


@dataclass
class DDPOConfig(MethodConfig):
    eta: float = 1.0               # DDPO needs a stochastic sampler (the shared protocol's eta=0 has no log-probs)
    lr: float = 3e-4               # reference (LoRA)
    weight_decay: float = 1e-4     # reference
    grad_clip: float = 1.0         # reference
    clip_range: float = 1e-4       # PPO ε; tiny because the log-density is a per-pixel mean, not a sum
    adv_clip_max: float = 5.0      # advantages clipped to ±adv_clip_max
    timestep_fraction: float = 1.0  # fraction of each trajectory's (nonzero-σ) transitions trained per inner epoch
    inner_epochs: int = 1          # PPO passes over the stored transitions per step() (reference default 1)
    minibatch_size: int = 64       # samples per optimiser step (reference: 256 samples per epoch → 4 steps)
    samples_per_epoch: int = 0     # samples per PPO epoch (reference 256), a multiple of the batch; 0: one batch
    buffer_size: int = 16          # per-prompt reward buffer (persists across step() calls)
    min_count: int = 16            # below this many rewards, a prompt uses the batch's mean/std
    reuse_sampling_graph: bool | str = "auto"  # train the first minibatch through the sampling graphs (docstring)

    def validate(self) -> None:
        super().validate()
        if self.sampler == "ddim" and self.eta <= 0:
            raise MethodError(f"ddpo needs eta > 0 (a stochastic DDIM sampler has log-probs), got eta={self.eta}")
        if self.clip_range <= 0:
            raise MethodError(f"clip_range must be > 0, got {self.clip_range}")
        if self.adv_clip_max <= 0:
            raise MethodError(f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        if not 0 < self.timestep_fraction <= 1:
            raise MethodError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.inner_epochs < 1:
            raise MethodError(f"inner_epochs must be >= 1, got {self.inner_epochs}")
        if self.minibatch_size < 1:
            raise MethodError(f"minibatch_size must be >= 1, got {self.minibatch_size}")
        if self.samples_per_epoch < 0:
            raise MethodError(f"samples_per_epoch must be >= 0 (0: one batch per epoch), got {self.samples_per_epoch}")
        if self.reuse_sampling_graph not in (True, False, "auto"):
            raise MethodError(f"reuse_sampling_graph must be true, false or \"auto\", got "
                              f"{self.reuse_sampling_graph!r}")
        if not 1 <= self.min_count <= self.buffer_size:
            raise MethodError(f"min_count must be in [1, buffer_size={self.buffer_size}], got {self.min_count}")


def ppo_clipped_terms(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> torch.Tensor:
    """Per row: max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = exp(log p_new − log p_old) (Schulman et al. 2017).

    Where ρ lies outside [1 − ε, 1 + ε] in the advantage's direction (ρ > 1 + ε with A > 0, ρ < 1 − ε with A < 0) the
    clipped branch is the max and is constant in θ: those terms give zero gradient."""
    ratio = torch.exp(log_prob_new - log_prob_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped)


def ppo_clipped_loss(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, advantages: torch.Tensor,
                     clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean over rows of ``ppo_clipped_terms``, and the approximate KL and clip fraction."""
    loss = ppo_clipped_terms(log_prob_new, log_prob_old, advantages, clip_range).mean()
    return loss, ppo_stats(log_prob_new, log_prob_old, clip_range)


def ppo_stats(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, clip_range: float) -> dict[str, torch.Tensor]:
    """Approximate KL ½·E[(log p_new − log p_old)²] and the fraction of terms with |ρ − 1| > ε (detached)."""
    log_ratio = (log_prob_new - log_prob_old).detach()
    return {"approx_kl": 0.5 * (log_ratio ** 2).mean(),
            "clipfrac": ((torch.exp(log_ratio) - 1.0).abs() > clip_range).float().mean()}


def check_epoch(samples_per_epoch: int, batch_size: int) -> None:
    if samples_per_epoch and samples_per_epoch % batch_size:
        raise MethodError(f"ddpo: samples_per_epoch {samples_per_epoch} is not a multiple of the batch size "
                          f"{batch_size} (an epoch is a whole number of sampled batches)")


@register("ddpo", "DDPO (PPO): policy gradient over recorded stochastic trajectories; any (even non-differentiable) reward")
class DDPO(Method):
    name = "ddpo"
    Config = DDPOConfig
    needs_gradient_reward = False
    REFERENCE = dict(num_steps=50, guidance_scale=5.0, eta=1.0, sampler="ddim", lr=3e-4, weight_decay=1e-4,
                     grad_clip=1.0, clip_range=1e-4, adv_clip_max=5.0)

    #: the per-prompt reward buffers carry across epochs; the batches sampled so far of an unfinished epoch
    STATE_ATTRS = Method.STATE_ATTRS + ("tracker", "_epoch")
    #: each PPO term is normalised by the whole minibatch's size, whose rows are not split evenly over processes
    grad_reduction = "sum"

    @classmethod
    def check_batch(cls, batch_size: int, settings: dict | None = None) -> None:
        per_epoch = (settings or {}).get("samples_per_epoch", 0)
        check_epoch(per_epoch, batch_size)
        if max(per_epoch, batch_size) < 2:
            what = f"samples_per_epoch {per_epoch}" if per_epoch else f"batch_size {batch_size}"
            raise MethodError(f"ddpo: {what} makes every advantage zero (a reward minus the mean of an epoch of one "
                              f"sample, until a prompt has min_count rewards of its own), so the update is zero; "
                              f"use samples_per_epoch >= 2 (or, without epochs, batch_size >= 2)")

    @classmethod
    def check_budget(cls, budget: int, settings: dict | None = None) -> None:
        """A budget that is not a whole number of epochs would sample its last samples and never train on them."""
        per_epoch = (settings or {}).get("samples_per_epoch", 0)
        if per_epoch and budget % per_epoch:
            raise MethodError(f"ddpo: budget {budget} is not a multiple of samples_per_epoch {per_epoch}: the last "
                              f"{budget % per_epoch} samples would be drawn and never trained on (give a multiple, or "
                              f"--set samples_per_epoch=N)")

    def __init__(self, backbone, reward, config=None, **kw):
        super().__init__(backbone, reward, config, **kw)
        c = self.config
        self.tracker = PerPromptStatTracker(c.buffer_size, c.min_count)
        self._epoch: list[dict] = []  # the batches sampled so far of the current epoch (samples_per_epoch > 0)
        # zero-σ transitions are deterministic: no log-density, excluded from the PPO terms (see module docstring)
        self.trainable_indices = torch.nonzero(self.schedule.sigma(c.eta) > 0).flatten().cpu()
        if len(self.trainable_indices) == 0:
            raise MethodError("ddpo: every transition of this schedule has σ = 0; nothing to train")

    # ---------------------------------------------------------------------------------------- stored transitions
    def transition_log_probs(self, trajectory: torch.Tensor, cond, rows: torch.Tensor, indices: torch.Tensor,
                             grad: bool = True) -> torch.Tensor:
        """log p_θ(x_{i+1} | x_i) for each row r at its own step ``indices[r]`` under the current model: one guided
        denoiser call for all rows, with a per-row timestep vector (as trl's DDPO trainer; grouping rows by step
        took one call per distinct step).

        ``trajectory`` is [B, T+1, ...] (x_T first)."""
        dev = trajectory.device
        r, i = rows.to(dev), indices.to(dev)
        return transition_log_prob(self.backbone, self.schedule, i, trajectory[r, i], trajectory[r, i + 1],
                                   cond.index(r), self.config.guidance_scale, self.config.eta,
                                   GRAD if grad else NO_GRAD)

    def collect(self, prompts: list[str], keep: torch.Tensor | None = None):
        """Sample and score: the trajectories, their log-probs under the sampling model, and the rewards.

        ``keep``: the steps (sampling order) whose denoiser calls run with autograd and keep their graphs; their
        columns of the returned log-probs are differentiable, the chain itself stays data (each step's input
        detached). Without ``keep`` the log-probs carry no graph."""
        cond = self.backbone.encode_prompts(prompts)
        kept = set() if keep is None else set(keep.tolist())
        plan = [GRAD if i in kept else NO_GRAD for i in range(self.config.num_steps)]
        with self.timer("sampling"), torch.set_grad_enabled(bool(kept)):
            out = sample(self.backbone, cond, self.noise(len(prompts)), plan=plan, record=True,
                         record_graph=bool(kept), **self.sample_kwargs())
            with torch.no_grad():
                images = self.backbone.decode(out.latents)
        with torch.no_grad():
            rewards = self.score(images, prompts)
        return cond, torch.stack(out.trajectory, dim=1), out.log_probs, rewards

    def kept_steps(self, batch: int, global_batch: int | None = None) -> torch.Tensor:
        """The steps whose sampling graphs train the first minibatch (see the module docstring). ``batch``: this
        process's samples; ``global_batch``: every process's (the first minibatch must hold them all)."""
        c, steps = self.config, self.trainable_indices
        if c.reuse_sampling_graph is False or c.minibatch_size < (global_batch or batch):
            return steps[:0]
        if c.reuse_sampling_graph is True:
            return steps
        per_call = self._call_bytes.get(batch)
        if per_call is None:  # not measured yet: this call recomputes, and measures
            return steps[:0]
        fit = memory.how_many_fit(per_call, self.backbone.device)
        return steps[len(steps) - min(fit, len(steps)):]

    def pop_penalty(self) -> torch.Tensor | None:
        """Per-row terms the last ``transition_log_probs`` call adds to the PPO loss (none in DDPO; GRPO's KL)."""
        return None

    def recompute(self, trajectory, cond, rows, indices, measure: bool) -> torch.Tensor:
        if not measure:
            return self.transition_log_probs(trajectory, cond, rows, indices)
        new, nbytes = memory.saved_bytes(lambda: self.transition_log_probs(trajectory, cond, rows, indices),
                                         exclude=list(self.backbone.parameters()))
        self._call_bytes[len(rows)] = nbytes
        return new

    # ------------------------------------------------------------------------------------------------- the epoch
    def backward(self, prompts):
        c = self.config
        batch = len(prompts)  # this process's samples: rows lo..hi-1 of the whole batch
        everyone = self.batch_prompts if self.shard.distributed else list(prompts)
        global_batch = len(everyone)
        per_epoch = c.samples_per_epoch or global_batch
        check_epoch(c.samples_per_epoch, global_batch)
        lo, hi = self.shard.span(global_batch)
        keep = self.kept_steps(batch, global_batch) if per_epoch == global_batch else self.trainable_indices[:0]
        cond, trajectory, log_probs, rewards = self.collect(prompts, keep)
        # the per-prompt statistics see every process's rewards (as ddpo-pytorch gathers them); each keeps its rows
        gathered = self.shard.all_gather(rewards)
        if per_epoch > global_batch:
            self._epoch.append({"everyone": list(everyone), "prompts": list(prompts), "trajectory": trajectory,
                                "log_probs": log_probs.detach(), "gathered": gathered})
            if len(self._epoch) * global_batch < per_epoch:  # the epoch is not complete: sample only
                return {"reward": rewards.detach().float().mean(),
                        "reward_std": rewards.detach().float().std(unbiased=False), "samples": batch,
                        "reward_queries": batch, "optimizer_steps": 0, "epoch_samples": len(self._epoch) * global_batch}
            parts, self._epoch = self._epoch, []
            everyone = [p for b in parts for p in b["everyone"]]
            prompts = [p for b in parts for p in b["prompts"]]
            with self.timer("sampling"):  # the text encoder is frozen: re-encoding the epoch's prompts is exact
                cond = self.backbone.encode_prompts(prompts)
            trajectory = torch.cat([b["trajectory"] for b in parts])
            log_probs = torch.cat([b["log_probs"] for b in parts])
            gathered = torch.cat([b["gathered"] for b in parts])
        epoch_size = len(everyone)
        # this process's rows of the epoch, as indices into the whole epoch (batch k's rows lo..hi-1 are k·G+lo..)
        local_rows = torch.arange(len(prompts))
        to_global = (local_rows // batch) * global_batch + lo + local_rows % batch
        owner = torch.full((epoch_size,), -1, dtype=torch.long)
        owner[to_global] = local_rows
        old_log_probs = log_probs.detach()
        kept_log_probs = log_probs if len(keep) else None
        is_kept = torch.zeros(c.num_steps, dtype=torch.bool)
        is_kept[keep] = True
        measure = (c.reuse_sampling_graph == "auto" and c.minibatch_size >= global_batch
                   and per_epoch == global_batch and batch not in self._call_bytes)
        advantages = self.tracker.update(everyone, gathered)
        advantages = advantages[to_global.to(advantages.device)].clamp(-c.adv_clip_max, c.adv_clip_max)
        steps = self.trainable_indices
        trained_per_sample = max(1, int(len(steps) * c.timestep_fraction))
        cpu = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator,
                                                              device=self.generator.device)))
        minibatches = math.ceil(epoch_size / c.minibatch_size)
        zero = torch.zeros((), device=trajectory.device)
        totals = {"approx_kl": zero, "clipfrac": zero, "loss": zero}  # tensors: no host sync per PPO term
        terms = 0
        reused = 0
        with self.timer("backward"):
            for epoch in range(c.inner_epochs):
                # the whole epoch's shuffles, drawn alike on every process (each then trains the rows it holds)
                order = torch.randperm(epoch_size, generator=cpu)
                # each sample's own random order of its transitions (timesteps shuffled per sample)
                per_sample = torch.stack([steps[torch.randperm(len(steps), generator=cpu)]
                                          for _ in range(epoch_size)])
                for m in range(minibatches):
                    members = order[m * c.minibatch_size:(m + 1) * c.minibatch_size]
                    size = len(members)  # every process normalises by the whole minibatch
                    mine = members[owner[members] >= 0]
                    rows = owner[mine]
                    self.optimizer.zero_grad(set_to_none=True)
                    first = epoch == 0 and m == 0 and kept_log_probs is not None
                    through_sampling = zero  # the terms backpropagated through the sampling graphs, in one backward
                    for j in range(trained_per_sample if len(rows) else 0):
                        indices = per_sample[mine, j]
                        reuse = is_kept[indices] if first else torch.zeros(len(rows), dtype=torch.bool)
                        dev = old_log_probs.device
                        # (rows, indices, new log-probs, via the sampling graph): the two kinds backpropagate apart
                        parts = []
                        if reuse.any():
                            r, i = rows[reuse], indices[reuse]
                            parts.append((r, i, kept_log_probs[r.to(dev), i.to(dev)], True))
                            reused += len(r)
                        if (~reuse).any():
                            r, i = rows[~reuse], indices[~reuse]
                            new = self.recompute(trajectory, cond, r, i, measure and j == 0)
                            parts.append((r, i, new, False, self.pop_penalty()))
                        news, olds = [], []
                        for r, i, new, via_sampling, *penalty in parts:
                            old = old_log_probs[r.to(dev), i.to(dev)]
                            part = ppo_clipped_terms(new, old, advantages[r.to(advantages.device)], c.clip_range)
                            if penalty and penalty[0] is not None:  # per-row terms added to the loss (GRPO's KL)
                                part = part + penalty[0]
                                totals["penalty"] = totals.get("penalty", zero) + penalty[0].detach().mean()
                            part = part.sum() / (size * trained_per_sample)
                            if via_sampling:
                                through_sampling = through_sampling + part
                            else:
                                part.backward()
                            totals["loss"] = totals["loss"] + part.detach() * trained_per_sample
                            news.append(new.detach())
                            olds.append(old)
                        info = ppo_stats(torch.cat(news), torch.cat(olds), c.clip_range)
                        totals["approx_kl"] = totals["approx_kl"] + info["approx_kl"]
                        totals["clipfrac"] = totals["clipfrac"] + info["clipfrac"]
                        terms += 1
                    if first and through_sampling.requires_grad:  # no kept step drawn (timestep_fraction < 1)
                        through_sampling.backward()
                    last = epoch == c.inner_epochs - 1 and m == minibatches - 1
                    if not last:  # the last minibatch's gradient is applied by Method.step (clip + optimiser step)
                        self.shard.all_reduce_grads(self.params, "sum")
                        if c.grad_clip > 0:
                            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                        self.optimizer.step()
        metrics = {k: v / max(terms, 1) for k, v in totals.items()}
        metrics.update(reward=rewards.detach().float().mean(), reward_std=rewards.detach().float().std(unbiased=False),
                       epoch_reward=gathered.detach().float().mean(), epoch_samples=epoch_size,
                       advantage_abs=advantages.abs().mean(), samples=batch, reward_queries=batch,
                       optimizer_steps=c.inner_epochs * minibatches, ppo_terms=terms,
                       reused_terms=reused, **self.tracker.stats())
        return metrics
