"""DiffusionNFT: properties from its definition (methods/nft.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import methods
from methods.base import MethodError
from methods.nft import nft_loss, optimality
from methods_testkit import CountingReward, one_thread, tiny_backbone  # noqa: F401

PROMPTS = ["a red circle", "a blue square", "a green star", "a cat"]


class ConstantReward(nn.Module):
    name, differentiable = "constant", False

    def forward(self, images, prompts):
        return torch.full((images.shape[0],), 2.0)


def test_optimality_maps_advantages_into_0_1():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 7.0])
    assert torch.allclose(optimality(a, 5.0), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]))


def test_with_equal_rewards_the_loss_is_the_plain_fit_plus_a_pull_to_the_old_policy():
    """r = 1/2 everywhere: L = ‖v_old − y‖² + β² ‖v_θ − v_old‖² (the cross terms cancel), so at θ = θ_old the gradient
    is exactly 0."""
    v_old, y, d = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    r, beta = torch.full((3,), 0.5), 0.7
    v = (v_old + d).requires_grad_()
    expected = ((v_old - y) ** 2).mean() + beta**2 * (d**2).mean()
    assert torch.allclose(nft_loss(v, v_old, y, r, beta), expected, atol=1e-5)
    at_old = v_old.clone().requires_grad_()
    nft_loss(at_old, v_old, y, r, beta).backward()
    assert at_old.grad.abs().max() < 1e-7


def test_at_the_old_policy_the_gradient_fits_the_good_samples_and_repels_the_bad():
    """∂L/∂v_θ at v_θ = v_old is 2β(2r − 1)(v_old − y) / (pixels · rows)."""
    v_old, y = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    r, beta = torch.tensor([1.0, 0.25, 0.5]), 1.0
    v = v_old.clone().requires_grad_()
    nft_loss(v, v_old, y, r, beta).backward()
    expected = 2 * beta * (2 * r - 1).view(-1, 1, 1, 1) * (v_old - y) / (2 * 4 * 4) / 3
    assert torch.allclose(v.grad, expected, atol=1e-7)


def test_equal_rewards_train_nothing_and_no_gradient_reaches_the_sampler():
    """The chain runs under no_grad (the clean samples are data); the one call with autograd is the training forward,
    unguided, at one timestep per row; equal rewards give a zero gradient."""
    bb = tiny_backbone()
    calls = []
    original = type(bb).predict_noise

    def wrapped(latents, timestep, cond, guidance_scale):
        calls.append((torch.is_grad_enabled(), latents.requires_grad, timestep.numel(), guidance_scale))
        return original(bb, latents, timestep, cond, guidance_scale)

    bb.predict_noise = wrapped
    try:
        m = methods.create("diffusion-nft", bb, ConstantReward(), num_steps=3, guidance_scale=3.0, group_size=2)
        out = m.step(PROMPTS)
    finally:
        del bb.predict_noise
    assert [c[0] for c in calls] == [False, False, False, True]
    assert calls[-1][1:] == (False, 4, 1.0)  # data input, per-row timesteps, no CFG in training
    assert out["grad_norm"] == 0.0 and out["optimality_mean"] == 0.5


def test_rewards_that_discriminate_train_the_lora_on_ddim_and_flow():
    from bench import backbones, catalog

    catalog.load_registries()
    for bb in (tiny_backbone(), backbones.create("tiny-sd3", seed=0, lora_rank=4)):
        reward = CountingReward()
        m = methods.create("diffusion-nft", bb, reward, num_steps=3, guidance_scale=3.0, group_size=2)
        before = [p.detach().clone() for p in m.params]
        out = m.step(PROMPTS)
        assert reward.prompts == [[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2]  # G samples of each of B / G prompts
        assert out["grad_norm"] > 0 and any(not torch.equal(a, p) for a, p in zip(before, m.params))


def test_bad_settings_are_refused():
    with pytest.raises(MethodError, match="group_size must be >= 2"):
        methods.create("diffusion-nft", tiny_backbone(), CountingReward(), group_size=1)
    with pytest.raises(MethodError, match="not a multiple of group_size 4"):
        methods.get("diffusion-nft").check_batch(6, {})
