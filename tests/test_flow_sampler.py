"""The flow-matching kind of the one sampler (rectified flow: SD 3.x, FLUX): the Euler ODE step equals diffusers'
scheduler step; the SDE step (Flow-GRPO's) has the Gaussian log-prob of its own transition, reduces to the ODE as its
noise goes to 0, and keeps the ODE's marginals (checked on data whose exact velocity field is known)."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from methods.sampling import FlowSchedule, SamplerError, Schedule, gaussian_log_prob, sample, transition_log_prob


def flow_scheduler(shift=3.0):
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


class GaussianFlow:
    """A "backbone" whose velocity is the exact E[noise - x0 | x_s] for 1-D data x0 ~ N(mu, c^2) (per row a
    separate draw), with x_s = (1 - s) x0 + s * noise. Sampling it correctly from noise recovers N(mu, c^2)."""

    def __init__(self, mu=1.5, c=0.5, scale=1.0):
        self.mu, self.c, self.scale = mu, c, scale
        self.scheduler = flow_scheduler()
        self.device = torch.device("cpu")
        self.calls = 0

    def predict_noise(self, x, timestep, cond, guidance_scale):
        self.calls += 1
        s = (timestep.float() / 1000).reshape(-1, *[1] * (x.ndim - 1)) if timestep.ndim else timestep.float() / 1000
        var = (1 - s) ** 2 * self.c**2 + s**2
        centred = x - (1 - s) * self.mu
        x0 = self.mu + (1 - s) * self.c**2 / var * centred
        eps = s / var * centred
        return self.scale * (eps - x0)


def test_a_flow_matching_scheduler_gets_the_flow_schedule_with_its_shift():
    sched = flow_scheduler(shift=3.0)
    schedule = Schedule(sched, 8, "cpu")
    ref = flow_scheduler(shift=3.0)
    ref.set_timesteps(8)
    assert isinstance(schedule, FlowSchedule) and schedule.kind == "flow"
    assert torch.allclose(schedule.timesteps, ref.timesteps.float())
    assert torch.allclose(schedule.sigmas, ref.sigmas[:-1].float()) and float(schedule.sigmas_next[-1]) == 0.0
    assert float(schedule.sigmas[1]) > 1 - 1 / 8  # the shift moved the second sigma up (3s / (1 + 2s))


def test_samplers_that_do_not_exist_on_a_schedule_are_refused():
    with pytest.raises(SamplerError, match="ddpm.*flow-matching model"):
        Schedule(flow_scheduler(), 4, "cpu", kind="ddpm")
    with pytest.raises(SamplerError, match="'flow' needs a flow-matching schedule"):
        Schedule(DDIMScheduler(), 4, "cpu", kind="flow")


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ode_step_matches_diffusers_flow_match_euler_step(shift):
    sched = flow_scheduler(shift)
    schedule = Schedule(sched, 6, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    ref_sched = flow_scheduler(shift)
    ref_sched.set_timesteps(6)
    for i, t in enumerate(ref_sched.timesteps):
        v = torch.randn(2, 4, 8, 8, generator=gen)
        ours = schedule.step(v, i, x, eta=0.0, noise=None)
        ref = ref_sched.step(v, t, x).prev_sample
        assert torch.allclose(ours.prev_sample, ref, atol=1e-6)
        s = ref_sched.sigmas[i]
        assert torch.allclose(ours.pred_x0, x - s * v, atol=1e-6)  # the early stop's x0_hat = x_s - s v
        x = ref


def test_sde_step_is_flow_grpos_transition_and_its_log_prob_is_that_gaussians():
    """Mean and std from Flow-GRPO's formula written in its own algebraic form
    (x (1 + std^2 dt / 2s) + v (1 + std^2 (1 - s) / 2s) dt, std = a sqrt(s / (1 - s)) sqrt(-dt)), and the recorded
    log-prob equal to torch's Normal density of the sampled transition, averaged over pixels."""
    model, a, steps = GaussianFlow(), 0.7, 5
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = sample(model, None, noise, num_steps=steps, guidance_scale=1.0, eta=a, record=True,
                 generator=torch.Generator().manual_seed(2))
    ref = flow_scheduler()
    ref.set_timesteps(steps)
    sig = ref.sigmas.double()
    for i in range(steps):
        x, x_next = out.trajectory[i].double(), out.trajectory[i + 1].double()
        s, dt = sig[i], sig[i + 1] - sig[i]
        v = model.predict_noise(x, ref.timesteps[i].double(), None, 1.0)
        std_dev = a * math.sqrt(s / (1 - (sig[1] if s == 1 else s)))
        mean = x * (1 + std_dev**2 / (2 * s) * dt) + v * (1 + std_dev**2 * (1 - s) / (2 * s)) * dt
        std = std_dev * math.sqrt(-dt)
        expected = torch.distributions.Normal(mean, std).log_prob(x_next).mean(dim=(1, 2, 3))
        assert torch.allclose(out.log_probs[:, i].double(), expected, atol=1e-4), i
        # and the same density recomputed for the stored transition (a PPO/GRPO ratio's numerator)
        schedule = Schedule(flow_scheduler(), steps, "cpu")
        again = transition_log_prob(model, schedule, i, out.trajectory[i], out.trajectory[i + 1], None, 1.0, a)
        assert torch.allclose(again, out.log_probs[:, i], atol=1e-5)


def test_sde_with_noise_level_to_zero_is_the_ode():
    model = GaussianFlow()
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    ode = sample(model, None, noise, num_steps=8, guidance_scale=1.0, eta=0.0).latents
    for a, tol in ((1e-3, 5e-3), (1e-5, 5e-5)):
        sde = sample(model, None, noise, num_steps=8, guidance_scale=1.0, eta=a,
                     generator=torch.Generator().manual_seed(4)).latents
        assert (sde - ode).abs().max() < tol, (a, (sde - ode).abs().max())
    assert not torch.equal(sample(model, None, noise, num_steps=8, guidance_scale=1.0, eta=0.7,
                                  generator=torch.Generator().manual_seed(4)).latents, ode)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ode_and_sde_both_reach_the_data_distribution(eta):
    """With the exact velocity of N(mu, c^2) data, both samplers end at that distribution: the SDE's drift correction
    keeps the ODE's marginals (a wrong sign or factor in it inflates or shrinks the spread)."""
    model = GaussianFlow(mu=1.5, c=0.5)
    noise = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    x = sample(model, None, noise, num_steps=100, guidance_scale=1.0, eta=eta,
               generator=torch.Generator().manual_seed(6)).latents.flatten()
    assert abs(float(x.mean()) - 1.5) < 0.02 and abs(float(x.std()) - 0.5) < 0.025, (x.mean(), x.std())


def test_add_noise_is_the_flow_interpolation_and_the_sigma_is_per_step():
    schedule = Schedule(flow_scheduler(), 4, "cpu")
    x0, z = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    s = float(schedule.sigmas[2])
    assert torch.allclose(schedule.add_noise(x0, 2, z), torch.full_like(x0, 1 - s))
    assert (schedule.sigma(0.7) > 0).all() and torch.equal(schedule.sigma(0.0), torch.zeros(4))
    # the log-prob formula DDPO-style methods use is the averaged Gaussian density
    lp = gaussian_log_prob(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), schedule.sigma(0.7)[:1].view(1, 1, 1, 1))
    assert torch.allclose(lp, -torch.log(schedule.sigma(0.7)[:1]) - 0.5 * math.log(2 * math.pi))
