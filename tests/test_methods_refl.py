"""ReFL: one UNet call with gradient, at a step in the configured late range, and the image scored is that step's
x̂_0; the reference protocol samples with DDPM and no guidance; DDPM steps match diffusers' DDPMScheduler."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

import methods
from methods.sampling import Schedule, sample
from methods_testkit import CountingReward, predicted_x0, sampling_calls, spy, tiny_backbone, one_thread  # noqa: F401  (autouse)


def test_exactly_one_grad_call_in_range_and_its_x0_hat_is_scored():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("refl", backbone, reward, num_steps=6, guidance_scale=1.0, step_range=(0.5, 1.0))
    timesteps = m.schedule.timesteps.tolist()
    seen = set()
    for _ in range(4):
        with spy(backbone, reward) as calls:
            out = m.step(["a red circle", "a blue square"])
        chain = sampling_calls(calls)
        s = out["trained_step"]
        seen.add(s)
        assert 3 <= s <= 5
        assert [c.timestep for c in chain] == timesteps[: s + 1]  # runs to s and stops there
        with_grad = [c for c in chain if c.output_requires_grad]
        assert len(with_grad) == 1 and with_grad[0] is chain[-1]
        assert all(not c.grad_enabled for c in chain[:-1])  # under no_grad, not "grad then detach"
        assert not chain[-1].input_requires_grad and chain[-1].out_grad_norm and chain[-1].out_grad_norm[0] > 0
        expected = backbone.decode(predicted_x0(backbone, chain[-1]))
        assert torch.allclose(reward.images[-1], expected, atol=1e-5)
        assert reward.prompts[-1] == ["a red circle", "a blue square"]
    assert len(seen) > 1  # the step is drawn, not fixed


def test_hinge_loss_relu_of_target_minus_reward_times_scale():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("refl", backbone, reward, num_steps=4, guidance_scale=1.0, reward_target=100.0, loss_scale=1e-3)
    loss, metrics = m.compute_loss(["a"])
    assert float(loss.detach()) == pytest.approx(1e-3 * (100.0 - float(metrics["reward"])), rel=1e-5)
    m.config.reward_target = -100.0  # every reward above the target: zero loss, zero gradient
    loss, _ = m.compute_loss(["a"])
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in m.params)


def test_reference_protocol_uses_ddpm_without_guidance():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("refl", backbone, reward, protocol="reference")
    assert (m.config.sampler, m.config.num_steps, m.config.guidance_scale) == ("ddpm", 40, 1.0)
    assert m.config.step_bounds() == (30, 39)
    with spy(backbone, reward) as calls:
        out = m.step(["a"])
    assert 30 <= out["trained_step"] <= 39
    assert all(c.guidance_scale <= 1.0 for c in calls)


@pytest.mark.parametrize("regularizer", ["eps-kl", "denoising"])
def test_optional_regularizers_add_a_positive_term_and_count_base_samples(regularizer):
    m = methods.create("refl", tiny_backbone(), CountingReward(), num_steps=4, guidance_scale=1.0,
                       regularizer=regularizer)
    out = m.step(["a", "b"])
    assert out["regularizer"] > 0
    assert out["samples"] == (4 if regularizer == "denoising" else 2) and out["reward_queries"] == 2


def test_ddpm_sampler_matches_diffusers_ddpm_scheduler():
    """Ancestral DDPM (Ho et al. eq. 6-7) on skipped timesteps: each recorded transition's Gaussian equals diffusers'
    DDPMScheduler.step (mean = its output minus its own variance noise), and the last step lands on x̂_0."""
    backbone = tiny_backbone()
    reward = CountingReward()
    cond = backbone.encode_prompts(["a", "b"])
    with spy(backbone, reward) as calls, torch.no_grad():
        out = sample(backbone, cond, torch.randn(backbone.latent_shape(2), generator=torch.Generator().manual_seed(3)),
                     num_steps=4, guidance_scale=1.0, kind="ddpm", record=True,
                     generator=torch.Generator().manual_seed(4))
    ref = DDPMScheduler.from_config(backbone.scheduler.config)
    ref.set_timesteps(4)
    traj = out.trajectory
    for i, (t, call) in enumerate(zip(ref.timesteps, calls)):
        assert call.timestep == int(t)
        step = ref.step(call.output, t, traj[i], generator=torch.Generator().manual_seed(9)).prev_sample
        z = torch.randn(call.output.shape, generator=torch.Generator().manual_seed(9))
        std = ref._get_variance(t).sqrt()
        mean = step - std * z
        if i < 3:
            direct = torch.distributions.Normal(mean.double(), std.double()).log_prob(traj[i + 1].double())
            assert torch.allclose(out.log_probs[:, i].double(), direct.mean(dim=(1, 2, 3)), atol=1e-4, rtol=1e-5)
        else:  # ᾱ_prev = 1: σ = 0 and x_0 = x̂_0
            assert torch.allclose(traj[i + 1], mean, atol=1e-5)
            assert torch.allclose(traj[i + 1], predicted_x0(backbone, call), atol=1e-5)
    assert Schedule(backbone.scheduler, 4, "cpu", kind="ddpm").sigma(0.0)[-1] == 0
