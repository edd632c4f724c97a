"""The one sampler: exact agreement with diffusers, the transition log-prob, argument checks."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from methods.sampling import (GRAD, NO_GRAD, SamplerError, Schedule, StepPlan, gaussian_log_prob, sample,
                              transition_log_prob)

PROMPTS = ["a red cat", "a dog on a hill"]


def test_no_grad_sampler_reproduces_diffusers_ddim_pipeline(tiny):
    """Our chain + decode equals StableDiffusionPipeline(DDIM, eta=0) for the same initial noise."""
    noise = torch.randn(tiny.latent_shape(2), generator=torch.Generator().manual_seed(3))
    ours = tiny.decode(sample(tiny, tiny.encode_prompts(PROMPTS), noise, num_steps=6, guidance_scale=7.5,
                              eta=0.0).latents)
    pipe = tiny.pipeline()
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPTS, num_inference_steps=6, guidance_scale=7.5, eta=0.0, latents=noise.clone(),
               output_type="pt").images
    assert ours.shape == ref.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stochastic_step_matches_diffusers_scheduler_step(prediction_type):
    """Schedule.step with variance noise equals DDIMScheduler.step (eta > 0), for every step and both prediction
    types."""
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    schedule = Schedule(sched, 5, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(schedule.timesteps):
        model_out, z = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
        ours = schedule.step(model_out, i, x, eta=0.7, noise=z)
        ref = sched.step(model_out, t, x, eta=0.7, variance_noise=z).prev_sample
        assert torch.allclose(ours.prev_sample, ref, atol=1e-5)
        x = ref


def test_log_prob_equals_direct_gaussian_density(tiny):
    """Recorded log-probs equal log N(x_prev; mu, sigma^2) computed independently from diffusers' scheduler
    (mean = the noise-free DDIM step, sigma = eta * sqrt(variance)), averaged over non-batch dimensions."""
    eta, steps = 0.8, 4
    cond = tiny.encode_prompts(PROMPTS)
    noise = torch.randn(tiny.latent_shape(2), generator=torch.Generator().manual_seed(1))
    out = sample(tiny, cond, noise, num_steps=steps, guidance_scale=3.0, eta=eta, record=True,
                 generator=torch.Generator().manual_seed(2))
    assert out.log_probs.shape == (2, steps)
    sched = DDIMScheduler.from_config(tiny.scheduler.config)
    sched.set_timesteps(steps)
    for i, t in enumerate(sched.timesteps):
        x_t, x_prev = out.trajectory[i], out.trajectory[i + 1]
        with torch.no_grad():
            eps = tiny.predict_noise(x_t, t, cond, 3.0)
        prev_t = t - sched.config.num_train_timesteps // steps
        std = eta * sched._get_variance(t, prev_t) ** 0.5
        # DDIM eq. 12 with eta: the direction coefficient is sqrt(1 - a_prev - sigma^2)
        a_t = sched.alphas_cumprod[t]
        a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
        expected = torch.distributions.Normal(mean, std).log_prob(x_prev).mean(dim=(1, 2, 3))
        assert torch.allclose(out.log_probs[:, i], expected, rtol=1e-4, atol=1e-4), (i, out.log_probs[:, i], expected)
        # and re-scoring the stored transition with the same model gives the same value
        again = transition_log_prob(tiny, Schedule(tiny.scheduler, steps, "cpu"), i, x_t, x_prev, cond, 3.0, eta,
                                    step_plan=NO_GRAD)
        assert torch.allclose(again, out.log_probs[:, i], atol=1e-5)


def test_log_prob_of_a_different_sample_is_lower():
    """Sanity of gaussian_log_prob: the mean is the mode, and the value is the analytic density per dimension."""
    mean = torch.zeros(1, 2, 2, 2)
    std = torch.full((1, 1, 1, 1), 0.5)
    at_mean = gaussian_log_prob(mean, mean, std)
    assert torch.allclose(at_mean, torch.tensor([-math.log(0.5) - 0.5 * math.log(2 * math.pi)]))
    assert gaussian_log_prob(mean + 0.3, mean, std) < at_mean


def test_recording_with_eta_zero_is_refused(tiny):
    noise = torch.randn(tiny.latent_shape(1))
    with pytest.raises(SamplerError, match="eta > 0"):
        sample(tiny, tiny.encode_prompts(["x"]), noise, num_steps=2, guidance_scale=1.0, eta=0.0, record=True)


@pytest.mark.parametrize("kwargs, match", [(dict(num_steps=0), "num_steps"), (dict(eta=-0.1), "eta"),
                                           (dict(stop_index=9), "stop_index")])
def test_invalid_sampler_arguments_fail_before_work(tiny, kwargs, match):
    noise = torch.randn(tiny.latent_shape(1))
    args = dict(num_steps=3, guidance_scale=1.0, eta=0.0)
    args.update(kwargs)
    with pytest.raises(SamplerError, match=match):
        sample(tiny, tiny.encode_prompts(["x"]), noise, **args)


def test_early_stop_returns_predicted_x0_of_the_stop_step(tiny):
    """stop_index=s returns x0_hat computed at step s from x_{t_s}, not x_{t_s - 1}."""
    cond = tiny.encode_prompts(PROMPTS)
    noise = torch.randn(tiny.latent_shape(2), generator=torch.Generator().manual_seed(4))
    full = sample(tiny, cond, noise, num_steps=5, guidance_scale=2.0, record=True, eta=0.5,
                  generator=torch.Generator().manual_seed(0))
    stopped = sample(tiny, cond, noise, num_steps=5, guidance_scale=2.0, stop_index=2, eta=0.5,
                     generator=torch.Generator().manual_seed(0))
    schedule = Schedule(tiny.scheduler, 5, "cpu")
    x_t = full.trajectory[2]
    with torch.no_grad():
        eps = tiny.predict_noise(x_t, schedule.timesteps[2], cond, 2.0)
    x0, _ = schedule.split_output(eps, x_t, 2)
    assert stopped.stop_index == 2
    assert torch.allclose(stopped.latents, x0, atol=1e-5)
    assert not torch.allclose(stopped.latents, full.trajectory[3], atol=1e-3)


def test_no_grad_steps_keep_no_graph(tiny):
    """Steps planned without grad produce tensors with no autograd history (no memory held for them)."""
    cond = tiny.encode_prompts(PROMPTS)
    noise = torch.randn(tiny.latent_shape(2))
    out = sample(tiny, cond, noise, num_steps=3, guidance_scale=1.0, plan=NO_GRAD)
    assert out.latents.grad_fn is None and not out.latents.requires_grad
    out = sample(tiny, cond, noise, num_steps=3, guidance_scale=1.0, plan=[NO_GRAD, NO_GRAD, GRAD])
    assert out.latents.requires_grad


def test_ddpm_kind_lands_on_x0_hat_at_the_last_step(tiny):
    """DDPM ancestral: the final transition has alpha-bar_prev = 1 and zero variance, so x_0 = x0_hat."""
    schedule = Schedule(tiny.scheduler, 4, "cpu", kind="ddpm")
    assert float(schedule.alpha_prev[-1]) == 1.0 and float(schedule.sigma(1.0)[-1]) == 0.0
    x = torch.randn(1, 4, 2, 2)
    out = schedule.step(torch.randn(1, 4, 2, 2), 3, x, eta=1.0, noise=torch.randn(1, 4, 2, 2))
    assert torch.allclose(out.prev_sample, out.pred_x0, atol=1e-6)
    assert StepPlan().grad is False
