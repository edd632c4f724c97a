"""Every method (the seven variants, DRaFT-1 too): one optimiser step changes LoRA weights only; samples and reward
queries are counted exactly; gradient methods refuse a non-differentiable reward; the reference protocols are valid
settings; invalid settings fail with one clear line before any work."""
from __future__ import annotations

import pytest
import torch

import methods
import rewards
from methods_testkit import CountingReward, count_noise, lora_and_frozen, tiny_backbone, one_thread  # noqa: F401

PROMPTS = ["a red circle", "a blue square"]
SMALL = {"ddpo": {}, "refl": {}, "draft": {}, "draft-1": {}, "draft-k": {"truncation_steps": 2},
         "draft-lv": {}, "alignprop": {}, "drtune": {"trained_steps": 2, "early_stop_max": 2}}
# chains started per prompt, and reward queries per prompt (DRaFT-LV scores n = 2 re-noised copies)
QUERIES_PER_PROMPT = {"draft-lv": 2}


def test_every_variant_is_registered():
    assert set(SMALL) <= set(methods.available())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_one_step_changes_lora_only_and_counts_exactly(name):
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create(name, backbone, reward, num_steps=4, guidance_scale=5.0, **SMALL[name])
    drawn = count_noise(m)
    lora, frozen = lora_and_frozen(backbone)
    assert {id(p) for p in m.params} == {id(p) for p in lora.values()}
    before_lora = {n: p.detach().clone() for n, p in lora.items()}
    before_frozen = {n: p.detach().clone() for n, p in frozen.items()}
    out = m.step(PROMPTS)
    changed = [n for n, p in lora.items() if not torch.equal(p, before_lora[n])]
    assert changed, f"{name}: no LoRA weight moved"
    assert all(torch.equal(p, before_frozen[n]) for n, p in frozen.items()), f"{name}: a frozen weight moved"
    assert out["samples"] == sum(drawn) == len(PROMPTS)
    assert out["reward_queries"] == reward.queries == QUERIES_PER_PROMPT.get(name, 1) * len(PROMPTS)
    m.step(PROMPTS[:1])
    assert m.total_samples == sum(drawn) == 3
    assert m.total_reward_queries == reward.queries


@pytest.mark.parametrize("name", sorted(set(SMALL) - {"ddpo"}))
def test_gradient_methods_refuse_a_non_differentiable_reward(name):
    with pytest.raises(methods.MethodError, match="not differentiable"):
        methods.create(name, tiny_backbone(), rewards.create("jpeg-compressibility"), num_steps=4, **SMALL[name])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reference_protocol_is_a_valid_setting(name):
    m = methods.create(name, tiny_backbone(), CountingReward(), protocol="reference")
    for key, value in type(m).REFERENCE.items():
        if name in ("draft", "draft-1") and key == "truncation_steps":
            continue  # these variants fix K themselves
        assert getattr(m.config, key) == value


@pytest.mark.parametrize("name, kwargs, match", [
    ("ddpo", {"eta": 0.0}, "eta > 0"),
    ("ddpo", {"clip_range": 0.0}, "clip_range"),
    ("ddpo", {"min_count": 40, "buffer_size": 16}, "min_count"),
    ("ddpo", {"timestep_fraction": 0.0}, "timestep_fraction"),
    ("refl", {"step_range": (0.9, 0.5)}, "step_range"),
    ("refl", {"regularizer": "kl"}, "regularizer"),
    ("alignprop", {"fixed_grad_steps": 9}, "fixed_grad_steps"),
    ("alignprop", {"min_grad_steps": 3, "max_grad_steps": 2}, "grad steps"),
    ("alignprop", {"truncation": "sometimes"}, "truncation"),
    ("drtune", {"trained_steps": 5}, "trained_steps"),
    ("drtune", {"early_stop_max": 5}, "early_stop_max"),
])
def test_invalid_settings_fail_with_one_clear_line(name, kwargs, match):
    with pytest.raises(methods.MethodError, match=match) as err:
        methods.create(name, tiny_backbone(), CountingReward(), num_steps=4, **kwargs)
    assert "\n" not in str(err.value)
