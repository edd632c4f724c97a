"""The one sampler: every method's chain x_T -> ... -> x_0 runs here.

A method differs from another only in its *plan*: per step, whether the denoiser runs with autograd, whether it sees a
detached input, whether it is checkpointed; where the chain stops early; whether the trajectory and its per-step
log-probs are recorded. The step equations (DDIM, Song et al. 2021, eq. 12 and 16) are written out here rather than
called through ``scheduler.step`` so that the Gaussian of each transition (mean, std) is available for log-probs and
so that gradients flow exactly where the plan says.

Notation: ``a_t`` is alpha-bar at the step's timestep, ``a_prev`` at the previous one.
    x0_hat = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
    sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    mean   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma^2) * eps
    x_prev = mean + sigma * z,  z ~ N(0, I)

``kind="ddpm"`` gives the DDPM ancestral step (Ho et al. 2020, eq. 6-7) on the same timesteps: the posterior
q(x_prev | x_t, x0_hat) with variance (1 - a_prev)/(1 - a_t) * (1 - a_t/a_prev), i.e. DDIM's eta = 1 transition,
with the final step landing on alpha-bar = 1 (x_0 = x0_hat).

``kind="flow"`` (rectified flow: a ``FlowMatchEulerDiscreteScheduler``, SD 3.x and FLUX; chosen automatically for
such a scheduler) integrates x_s = (1 - s) x_0 + s * noise from s = 1 to 0 on the scheduler's sigmas (its shift
applied), the model predicting the velocity v = noise - x_0:
    x0_hat = x_s - s * v,   eps_hat = x_s + (1 - s) * v,   dt = s_next - s  (< 0)
    eta = 0: the Euler ODE step      x_next = x_s + dt * v                (``FlowMatchEulerDiscreteScheduler.step``)
    eta > 0: the SDE with the same marginals (Flow-GRPO, Liu et al. 2025, eq. 9), eta being its noise level a:
        std_dev = eta * sqrt(s / (1 - s))          (s = 1 replaced by the second sigma in the denominator)
        mean    = x_s + dt * (v + std_dev^2 / (2 s) * eps_hat),   std = std_dev * sqrt(-dt)
    whose transition is Gaussian, so a log-prob exists; its noise -> 0 is the ODE step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .backbone import Backbone
from .parallel import SINGLE, Shard

SAMPLER_KINDS = ("ddim", "ddpm", "flow")


class SamplerError(ValueError):
    """An invalid sampler setting (caught before any work starts)."""


@dataclass(frozen=True)
class StepPlan:
    """What one denoising step does with autograd.

    grad:          run the denoiser with autograd, so this step contributes parameter gradients
                   (False: under ``torch.no_grad()``: its output is a constant, and no graph is kept)
    detach_input:  the denoiser sees ``sg(x_t)``; gradient reaches x_t only through the linear update (DRTune)
    checkpoint:    recompute the denoiser's activations in backward instead of storing them
    """

    grad: bool = False
    detach_input: bool = False
    checkpoint: bool = False


NO_GRAD = StepPlan()
GRAD = StepPlan(grad=True)
GRAD_CHECKPOINTED = StepPlan(grad=True, checkpoint=True)

PlanLike = Union[StepPlan, Sequence[StepPlan], Callable[[int], StepPlan]]


@dataclass
class SampleOutput:
    """What a chain returns.

    latents:    the final x_0, or at an early stop the predicted x0_hat of the stop step
    pred_x0:    x0_hat of the last step run
    stop_index: index (0-based, in sampling order) of the last step run
    timesteps:  the schedule's timesteps, in sampling order
    trajectory: when recorded, detached latents [x_T, x_{t_1}, ..., x_last] (length steps run + 1)
    log_probs:  when recorded, [B, steps run] log-density of each transition under the sampling model
    """

    latents: torch.Tensor
    pred_x0: torch.Tensor
    stop_index: int
    timesteps: torch.Tensor
    trajectory: list[torch.Tensor] | None = None
    log_probs: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor  # [B,1,...] broadcastable
    pred_x0: torch.Tensor
    eps: torch.Tensor


class Schedule:
    """Timesteps and alpha-bar coefficients of a sampling run, precomputed on the device (no host syncs per step).

    Follows diffusers' DDIMScheduler conventions (timestep spacing, ``steps_offset``, ``set_alpha_to_one``,
    prediction types) so that ``sample`` with no gradient reproduces ``DDIMScheduler.step`` exactly.
    """

    def __new__(cls, scheduler: Any, *args, **kwargs):
        if cls is Schedule and is_flow_scheduler(scheduler):
            return super().__new__(FlowSchedule)
        return super().__new__(cls)

    def __init__(self, scheduler: Any, num_steps: int, device: torch.device | str, kind: str = "ddim",
                 timestep_kwargs: dict | None = None):
        if kind == "flow":
            raise SamplerError(f"sampler 'flow' needs a flow-matching schedule; this backbone's scheduler is "
                               f"{type(scheduler).__name__} (use ddim or ddpm)")
        if kind not in SAMPLER_KINDS:
            raise SamplerError(f"unknown sampler {kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
        n_train = scheduler.config.num_train_timesteps
        if not 1 <= num_steps <= n_train:
            raise SamplerError(f"num_steps must be in [1, {n_train}], got {num_steps}")
        self.kind = kind
        self.num_steps = num_steps
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise SamplerError(f"unsupported prediction_type {self.prediction_type!r}")
        self.clip_sample_range = (
            float(scheduler.config.clip_sample_range) if getattr(scheduler.config, "clip_sample", False) else None
        )
        scheduler.set_timesteps(num_steps)
        timesteps = scheduler.timesteps.long().cpu()
        alphas_cumprod = scheduler.alphas_cumprod.double().cpu()
        final = float(getattr(scheduler, "final_alpha_cumprod", alphas_cumprod[0]))
        if kind == "ddpm":
            final = 1.0
        prev = timesteps - n_train // num_steps
        a_t = alphas_cumprod[timesteps]
        a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.tensor(final, dtype=torch.float64))
        self.timesteps = timesteps.to(device)
        self.alpha = a_t.float().to(device)
        self.alpha_prev = a_prev.float().to(device)
        # sigma at eta = 1 (DDIM eq. 16); DDPM's posterior std is the same quantity
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        self.sigma_unit = var.clamp(min=0).sqrt().float().to(device)

    def sigma(self, eta: float) -> torch.Tensor:
        return self.sigma_unit * (1.0 if self.kind == "ddpm" else eta)

    def add_noise(self, x0: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) at step ``index``'s timestep (one, or one per row): sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
        a = self._at(self.alpha, index, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, index) -> torch.Tensor:
        """What the model is trained to output at ``add_noise(x0, index, noise)`` (its prediction type)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a = self._at(self.alpha, index, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    @staticmethod
    def _at(values: torch.Tensor, index, like: torch.Tensor) -> torch.Tensor:
        """``values[index]``: a scalar for one step, or per row ([B, 1, 1, 1]) when ``index`` is a tensor of B step
        indices (DDPO trains rows at different steps in one denoiser call)."""
        if isinstance(index, torch.Tensor) and index.ndim > 0:
            return values[index.to(values.device)].view(-1, *[1] * (like.ndim - 1))
        return values[index]

    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor, index):
        """Model output -> (x0_hat, eps_hat) for the configured prediction type. ``index``: one step, or one per row."""
        a = self._at(self.alpha, index, x_t)
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * model_output
            eps = a.sqrt() * model_output + (1 - a).sqrt() * x_t
        else:
            x0 = model_output
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        if self.clip_sample_range is not None:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    def step(self, model_output: torch.Tensor, index, x_t: torch.Tensor, eta: float,
             noise: torch.Tensor | None) -> StepOutput:
        x0, eps = self.split_output(model_output, x_t, index)
        a, a_prev = self._at(self.alpha, index, x_t), self._at(self.alpha_prev, index, x_t)
        sigma = self._at(self.sigma(eta), index, x_t)
        if self.kind == "ddim":
            mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        else:  # DDPM posterior mean, Ho et al. eq. 7 (between two possibly-skipped timesteps)
            alpha_step = a / a_prev
            coef_x0 = a_prev.sqrt() * (1 - alpha_step) / (1 - a)
            coef_xt = alpha_step.sqrt() * (1 - a_prev) / (1 - a)
            mean = coef_x0 * x0 + coef_xt * x_t
        prev = mean if noise is None else mean + sigma * noise
        std = sigma.reshape(-1).expand(x_t.shape[0]).reshape(-1, *[1] * (x_t.ndim - 1))
        return StepOutput(prev_sample=prev, mean=mean, std=std, pred_x0=x0, eps=eps)


def is_flow_scheduler(scheduler: Any) -> bool:
    """A rectified-flow (flow-matching) scheduler: sigmas from 1 to 0, no alpha-bar."""
    return "FlowMatch" in type(scheduler).__name__


class FlowSchedule(Schedule):
    """Sigmas and per-step coefficients of a rectified-flow run (module docstring, ``kind="flow"``), precomputed on
    the device. ``timesteps`` are the scheduler's (sigma * num_train_timesteps, floats), what the transformer is
    given; ``timestep_kwargs`` go to ``set_timesteps`` (FLUX's ``mu`` of its resolution-dependent shift, its sigmas)."""

    def __init__(self, scheduler: Any, num_steps: int, device: torch.device | str, kind: str = "flow",
                 timestep_kwargs: dict | None = None):
        if kind == "ddpm":
            raise SamplerError("sampler 'ddpm' (the DDPM ancestral step) needs a DDPM/DDIM noise schedule; this "
                               "backbone is a flow-matching model: use 'flow' (eta 0: the Euler ODE; eta > 0: "
                               "Flow-GRPO's SDE)")
        if kind not in SAMPLER_KINDS:
            raise SamplerError(f"unknown sampler {kind!r}; valid on a flow-matching model: flow (ddim means flow)")
        if getattr(scheduler.config, "invert_sigmas", False):
            raise SamplerError("a flow-matching scheduler with invert_sigmas is not supported")
        if num_steps < 1:
            raise SamplerError(f"num_steps must be >= 1, got {num_steps}")
        self.kind, self.num_steps, self.prediction_type = "flow", num_steps, "flow"
        self.clip_sample_range = None
        scheduler.set_timesteps(num_steps, **(timestep_kwargs or {}))
        sigmas = scheduler.sigmas.double().cpu()
        if len(sigmas) != num_steps + 1:
            raise SamplerError(f"the scheduler gave {len(sigmas) - 1} steps for num_steps {num_steps}")
        s, s_next = sigmas[:-1], sigmas[1:]
        # Flow-GRPO's std_dev at eta = 1: sqrt(s / (1 - s)), s = 1 (infinite) replaced by the second sigma
        s_den = torch.where(s >= 1, sigmas[1] if num_steps > 1 else torch.zeros((), dtype=sigmas.dtype), s)
        self.std_dev_unit = (s / (1 - s_den)).sqrt().float().to(device)
        self.timesteps = scheduler.timesteps.float().to(device)
        self.sigmas = s.float().to(device)
        self.sigmas_next = s_next.float().to(device)
        self.sigma_unit = (self.std_dev_unit.double().cpu() * (s - s_next).sqrt()).float().to(device)

    def sigma(self, eta: float) -> torch.Tensor:
        """Each step's transition std at noise level ``eta``."""
        return self.sigma_unit * eta

    def add_noise(self, x0: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
        """The flow's x_s at step ``index``'s sigma (one, or one per row): (1 - s) x0 + s noise."""
        s = self._at(self.sigmas, index, x0)
        return (1 - s) * x0 + s * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, index) -> torch.Tensor:
        """The flow-matching target: the velocity noise - x0."""
        return noise - x0

    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor, index):
        """Velocity -> (x0_hat, eps_hat) = (x - s v, x + (1 - s) v)."""
        s = self._at(self.sigmas, index, x_t)
        return x_t - s * model_output, x_t + (1 - s) * model_output

    def step(self, model_output: torch.Tensor, index, x_t: torch.Tensor, eta: float,
             noise: torch.Tensor | None) -> StepOutput:
        x0, eps = self.split_output(model_output, x_t, index)
        s, s_next = self._at(self.sigmas, index, x_t), self._at(self.sigmas_next, index, x_t)
        dt = s_next - s
        if eta > 0:
            std_dev = self._at(self.std_dev_unit, index, x_t) * eta
            mean = x_t + dt * (model_output + std_dev**2 / (2 * s) * eps)
        else:
            mean = x_t + dt * model_output
        sigma = self._at(self.sigma(eta), index, x_t)
        prev = mean if noise is None else mean + sigma * noise
        std = sigma.reshape(-1).expand(x_t.shape[0]).reshape(-1, *[1] * (x_t.ndim - 1))
        return StepOutput(prev_sample=prev, mean=mean, std=std, pred_x0=x0, eps=eps)


def schedule_for(backbone: Backbone, num_steps: int, device: torch.device | str, kind: str = "ddim") -> Schedule:
    """The schedule of ``backbone``'s scheduler; a backbone with a resolution-dependent shift (FLUX) supplies
    ``timestep_kwargs(num_steps)`` for ``set_timesteps``."""
    kwargs = getattr(backbone, "timestep_kwargs", None)
    return Schedule(backbone.scheduler, num_steps, device, kind=kind,
                    timestep_kwargs=kwargs(num_steps) if callable(kwargs) else None)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2), averaged (not summed) over all non-batch dimensions, as DDPO's reference does."""
    std = std.to(torch.float32)
    log_density = (
        -((x.float() - mean.float()) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    )
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def _resolve_plan(plan: PlanLike, num_steps: int) -> list[StepPlan]:
    if isinstance(plan, StepPlan):
        return [plan] * num_steps
    if callable(plan):
        return [plan(i) for i in range(num_steps)]
    plans = list(plan)
    if len(plans) != num_steps:
        raise SamplerError(f"plan has {len(plans)} entries for {num_steps} steps")
    return plans


def predict(backbone: Backbone, x_t: torch.Tensor, timestep: torch.Tensor, cond: Any, guidance_scale: float,
            step_plan: StepPlan) -> torch.Tensor:
    """One denoiser call under ``step_plan`` (grad / no grad, detached input, checkpoint)."""
    unet_input = x_t.detach() if step_plan.detach_input else x_t
    if not step_plan.grad:
        with torch.no_grad():
            return backbone.predict_noise(unet_input, timestep, cond, guidance_scale)
    if step_plan.checkpoint:
        return _checkpoint(lambda x: backbone.predict_noise(x, timestep, cond, guidance_scale), unet_input,
                           use_reentrant=False)
    return backbone.predict_noise(unet_input, timestep, cond, guidance_scale)


def denoise_step(backbone: Backbone, schedule: Schedule, index, x_t: torch.Tensor, cond: Any,
                 guidance_scale: float, eta: float, step_plan: StepPlan,
                 noise: torch.Tensor | None = None) -> StepOutput:
    """Step ``index`` of the chain: predict, then the DDIM/DDPM update. ``noise`` is the variance noise (eta > 0).
    ``index`` may be a tensor of one step per row: one denoiser call with a per-row timestep vector."""
    if isinstance(index, torch.Tensor) and index.ndim > 0:
        timestep = schedule.timesteps[index.to(schedule.timesteps.device)]
    else:
        timestep = schedule.timesteps[index]
    out = predict(backbone, x_t, timestep, cond, guidance_scale, step_plan)
    return schedule.step(out.to(x_t.dtype), index, x_t, eta, noise)


def check_sampler_args(num_steps: int, eta: float, guidance_scale: float, record: bool = False) -> None:
    if num_steps < 1:
        raise SamplerError(f"num_steps must be >= 1, got {num_steps}")
    if eta < 0:
        raise SamplerError(f"eta must be >= 0, got {eta}")
    if guidance_scale < 0:
        raise SamplerError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if record and eta <= 0:
        raise SamplerError("recording log-probs needs a stochastic sampler (eta > 0); with eta = 0 every transition "
                           "is deterministic and its log-density is undefined")


def sample(backbone: Backbone, cond: Any, noise: torch.Tensor, *, num_steps: int, guidance_scale: float,
           eta: float = 0.0, plan: PlanLike = NO_GRAD, stop_index: int | None = None, record: bool = False,
           generator: torch.Generator | None = None, kind: str = "ddim",
           schedule: Schedule | None = None, record_graph: bool = False, shard: Shard = SINGLE) -> SampleOutput:
    """Run the chain from ``noise`` (x_T) under ``plan``.

    stop_index: stop after this step (0-based) and return its predicted x0_hat as ``latents`` (early stop)
    record:     keep the (detached) trajectory and each transition's log-prob (needs eta > 0, or kind="ddpm")
    record_graph: (with record) the log-probs of steps whose plan has grad keep their graph through that step's
                denoiser call, and the chain itself is data (each step's input detached): log p_θ(x_{t−1} | x_t)
                of the sampled transition, as a PPO term recomputes it (DDPO's reuse of the sampling graph)
    generator:  drives the variance noise when eta > 0, so a seeded run is reproducible
    shard:      with several processes, ``noise`` is this process's rows and the variance noise is drawn for the
                whole batch, of which it keeps its rows (methods/parallel.py)
    """
    check_sampler_args(num_steps, eta, guidance_scale, record=record and kind != "ddpm")
    schedule = schedule or schedule_for(backbone, num_steps, noise.device, kind=kind)
    last = num_steps - 1 if stop_index is None else stop_index
    if not 0 <= last < num_steps:
        raise SamplerError(f"stop_index must be in [0, {num_steps - 1}], got {stop_index}")
    plans = _resolve_plan(plan, num_steps)
    stochastic = schedule.kind == "ddpm" or eta > 0

    x = noise
    trajectory = [x.detach()] if record else None
    log_probs = []
    out = None
    for i in range(last + 1):
        z = None
        if stochastic:
            z = shard.randn(x.shape, generator, x.device, x.dtype)
        x_in = x
        out = denoise_step(backbone, schedule, i, x, cond, guidance_scale, eta, plans[i], z)
        x = out.prev_sample.detach() if record_graph else out.prev_sample
        if record:
            trajectory.append(x.detach())
            log_probs.append(gaussian_log_prob(x.detach(), out.mean if record_graph else out.mean.detach(), out.std))
    final = out.pred_x0 if stop_index is not None else x
    return SampleOutput(
        latents=final,
        pred_x0=out.pred_x0,
        stop_index=last,
        timesteps=schedule.timesteps,
        trajectory=trajectory,
        log_probs=torch.stack(log_probs, dim=1) if record else None,
        extras={"eps": out.eps, "x_t": x_in},  # the last step's input and predicted noise (ReFL's regulariser)
    )


def transition_log_prob(backbone: Backbone, schedule: Schedule, index, x_t: torch.Tensor,
                        x_prev: torch.Tensor, cond: Any, guidance_scale: float, eta: float,
                        step_plan: StepPlan = GRAD) -> torch.Tensor:
    """log p_theta(x_prev | x_t) of a stored transition under the *current* model (DDPO's ratio numerator)."""
    out = denoise_step(backbone, schedule, index, x_t, cond, guidance_scale, eta, step_plan, noise=None)
    return gaussian_log_prob(x_prev, out.mean, out.std)
