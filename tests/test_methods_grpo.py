"""GRPO (DanceGRPO-style) and Flow-GRPO: properties from their definitions (methods/grpo.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import methods
from methods.base import MethodError
from methods.grpo import GRPO, GroupStats, group_prompts, kl_same_std

from methods_testkit import CountingReward, one_thread, tiny_backbone  # noqa: F401

PROMPTS = ["a red circle", "a blue square", "a green star", "a cat"]


class ConstantReward(nn.Module):
    name, differentiable = "constant", True

    def forward(self, images, prompts):
        return torch.zeros(images.shape[0]) + 3.0


def _flow_backbone():
    from bench import backbones, catalog

    catalog.load_registries()
    bb = backbones.create("tiny-sd3", seed=0, lora_rank=4)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a LoRA that changes the output (peft's gaussian init leaves B = 0)
        for name, p in bb.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return bb


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 14.0])
    adv = GroupStats(3).update(["a"] * 3 + ["b"] * 3, rewards)
    for g in adv.view(2, 3):
        assert abs(float(g.mean())) < 1e-6 and abs(float(g.std(unbiased=False)) - 1) < 1e-3
    assert adv[0] < adv[1] < adv[2] and adv[3] == adv[4] < adv[5]
    with pytest.raises(MethodError, match="different prompts"):
        GroupStats(2).update(["a", "b"], torch.tensor([1.0, 2.0]))


def test_a_batch_is_its_first_prompts_each_sampled_group_size_times():
    assert group_prompts(PROMPTS, 2) == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    with pytest.raises(MethodError, match="not a multiple of group_size"):
        group_prompts(PROMPTS[:3], 2)
    with pytest.raises(MethodError, match="not a multiple of group_size 4"):
        GRPO.check_batch(6, {"group_size": 4})
    with pytest.raises(MethodError, match="group_size must be >= 2"):
        methods.create("grpo", tiny_backbone(), CountingReward(), group_size=1)


def test_the_reward_sees_each_prompt_group_size_times_and_the_ratio_is_one_before_the_first_update():
    reward = CountingReward()
    m = methods.create("grpo", tiny_backbone(), reward, num_steps=3, guidance_scale=3.0, group_size=2)
    out = m.step(PROMPTS)
    assert reward.prompts == [[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2]
    assert out["samples"] == 4 and out["optimizer_steps"] == 1
    # the recomputed log-probs at θ = θ_old equal the sampler's: ρ = 1, nothing clipped
    assert out["approx_kl"] < 1e-12 and out["clipfrac"] == 0.0 and out["grad_norm"] > 0


def test_group_noise_starts_a_groups_chains_at_one_x_t():
    m = methods.create("grpo", tiny_backbone(), CountingReward(), num_steps=3, group_size=2)
    m.batch_prompts = group_prompts(PROMPTS, 2)
    x = m.noise(4)
    assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[3]) and not torch.equal(x[0], x[2])
    m2 = methods.create("grpo", tiny_backbone(), CountingReward(), num_steps=3, group_size=2, group_noise=False)
    m2.batch_prompts = group_prompts(PROMPTS, 2)
    y = m2.noise(4)
    assert not torch.equal(y[0], y[1])


def test_the_gradient_flows_only_through_the_log_prob():
    """Equal rewards make every advantage 0; with no KL the loss then has no path to θ: the gradient is exactly 0."""
    m = methods.create("grpo", tiny_backbone(), ConstantReward(), num_steps=3, guidance_scale=3.0, group_size=2)
    out = m.step(PROMPTS)
    assert out["advantage_abs"] == 0.0 and out["grad_norm"] == 0.0


def test_kl_of_two_gaussians_with_one_std():
    mean, ref, std = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.full((2, 1, 1, 1), 0.3)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std.expand_as(mean)),
                                                 torch.distributions.Normal(ref, std.expand_as(ref)))
    assert torch.allclose(kl_same_std(mean, ref, std), expected.mean(dim=(1, 2, 3)), atol=1e-6)


def test_flow_grpo_kl_is_zero_at_initialisation_and_leaves_the_lora_scale_alone():
    """At initialisation (LoRA B = 0) the policy is the reference: KL = 0. With a LoRA that changes the model the KL
    term is positive, its gradient reaches θ, and the reference pass leaves the adapter at scale 1 afterwards."""
    from bench import backbones, catalog

    catalog.load_registries()
    fresh = backbones.create("tiny-sd3", seed=0, lora_rank=4)
    m = methods.create("flow-grpo", fresh, ConstantReward(), num_steps=3, guidance_scale=4.5, group_size=2)
    assert m.config.kl_coef == 0.04 and m.config.eta == 0.7 and m.config.reuse_sampling_graph is False
    out = m.step(PROMPTS)
    assert out["penalty"] == 0.0 and out["grad_norm"] == 0.0  # equal rewards and KL 0: nothing to follow

    bb = _flow_backbone()
    m = methods.create("flow-grpo", bb, ConstantReward(), num_steps=3, guidance_scale=4.5, group_size=2)
    out = m.step(PROMPTS)
    assert out["penalty"] > 0 and out["grad_norm"] > 0  # advantages are 0: the gradient is the KL's alone
    x = torch.randn(bb.latent_shape(2), generator=torch.Generator().manual_seed(0))
    cond, t = bb.encode_prompts(PROMPTS[:2]), m.schedule.timesteps[1]
    with torch.no_grad():
        as_left = bb.predict_noise(x, t, cond, 4.5)
        bb.set_lora_scale(0.0)
        base = bb.predict_noise(x, t, cond, 4.5)
        bb.set_lora_scale(1.0)
        tuned = bb.predict_noise(x, t, cond, 4.5)
    assert torch.equal(as_left, tuned) and not torch.allclose(as_left, base)


def test_flow_grpo_needs_a_flow_model():
    with pytest.raises(MethodError, match="flow-grpo needs a flow-matching backbone"):
        methods.create("flow-grpo", tiny_backbone(), CountingReward(), num_steps=3, group_size=2)


def test_grpo_trains_on_the_flow_sde_and_on_ddim():
    for bb in (tiny_backbone(), _flow_backbone()):
        m = methods.create("grpo", bb, CountingReward(), num_steps=3, guidance_scale=3.0, group_size=2)
        before = [p.detach().clone() for p in m.params]
        out = m.step(PROMPTS)
        assert out["grad_norm"] > 0 and any(not torch.equal(a, p) for a, p in zip(before, m.params))


@pytest.mark.parametrize("argv, why", [
    (["--method", "flow-grpo", "--task", "shapes-aesthetic"], "flow-grpo needs a flow-matching backbone"),
    (["--method", "refl", "--backbone", "tiny-sd3", "--reward", "jpeg-compressibility-surrogate", "--protocol",
      "reference"], "sampler ddpm (the DDPM ancestral step) needs a DDPM/DDIM noise schedule"),
    (["--method", "refl", "--backbone", "tiny-sd3", "--reward", "jpeg-compressibility-surrogate", "--set",
      "regularizer=denoising"], "denoising regulariser is the epsilon-prediction loss"),
])
def test_a_method_that_cannot_run_on_a_backbone_kind_is_refused_before_any_weights_load(argv, why, monkeypatch,
                                                                                        capsys, tmp_path):
    from bench import backbones
    from bench.cli import main

    monkeypatch.setattr(backbones, "create", lambda *a, **k: pytest.fail("weights loaded before the refusal"))
    code = main(["run", *argv, "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and why in err


def test_the_grid_skips_such_a_cell_with_its_reason():
    from bench import grid, presets

    specs, notes = grid.plan(presets.get("ci"), methods="flow-grpo,grpo", tasks="shapes-aesthetic")
    assert [s.method for s in specs] == ["grpo"]
    assert any("flow-grpo on shapes (task shapes-aesthetic) skipped: flow-grpo needs a flow-matching backbone" in n
               for n in notes)
