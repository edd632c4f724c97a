"""The DRaFT family: truncation, checkpointing, the LV estimator, counting, and what an optimiser step may change."""
import pytest
import torch
from diffusers import DDIMScheduler

import methods
from foundation_testkit import lora_grads, record_unet_calls
from methods.base import MethodError
from methods.sampling import sample

PROMPTS = ["a cat", "a dog"]
STEPS = 5


def _grads_of(method, prompts=PROMPTS):
    method.optimizer.zero_grad(set_to_none=True)
    loss, metrics = method.compute_loss(prompts)
    loss.backward()
    return lora_grads(method.backbone), metrics


def _reference_truncated_grads(backbone, reward, noise, k, guidance):
    """Independent computation with diffusers' own DDIMScheduler.step: the first T-K steps' outputs are computed
    without grad and fed in as constants; the last K steps run with grad."""
    sched = DDIMScheduler.from_config(backbone.scheduler.config)
    sched.set_timesteps(STEPS)
    cond = backbone.encode_prompts(PROMPTS)
    x = noise.clone()
    for i, t in enumerate(sched.timesteps):
        if i < STEPS - k:
            with torch.no_grad():
                x = sched.step(backbone.predict_noise(x, t, cond, guidance), t, x, eta=0.0).prev_sample
        else:
            x = sched.step(backbone.predict_noise(x, t, cond, guidance), t, x, eta=0.0).prev_sample
    backbone.unet.zero_grad(set_to_none=True)
    (-reward(backbone.decode(x), PROMPTS).mean()).backward()
    return lora_grads(backbone)


@pytest.mark.parametrize("k", [1, 3])
def test_draft_k_gradient_equals_truncated_reference_and_differs_from_full(tiny, linear_reward, k):
    """DRaFT-K's parameter gradient is exactly the one where the first T-K steps are constants; it differs from the
    gradient of full backprop (so the test would catch a missing truncation)."""
    m = methods.create("draft-k", tiny, linear_reward, seed=7, num_steps=STEPS, guidance_scale=3.0,
                       truncation_steps=k)
    noise = torch.randn(tiny.latent_shape(2), generator=torch.Generator().manual_seed(7))
    calls = record_unet_calls(tiny)
    grads, metrics = _grads_of(m)
    # the first T-K UNet calls ran without autograd; the last K with it
    assert [c["grad"] for c in calls] == [False] * (STEPS - k) + [True] * k
    tiny.predict_noise = type(tiny).predict_noise.__get__(tiny)
    ref = _reference_truncated_grads(tiny, linear_reward, noise, k, 3.0)
    assert grads.keys() == ref.keys() and len(grads) > 0
    for name in grads:
        assert torch.allclose(grads[name], ref[name], rtol=1e-4, atol=1e-7), name
    full = _reference_truncated_grads(tiny, linear_reward, noise, STEPS, 3.0)
    diff = max((grads[n] - full[n]).abs().max().item() for n in grads)
    assert diff > 1e-6, "truncated and full gradients coincide: the test cannot tell truncation apart"
    assert metrics["samples"] == 2 and metrics["reward_queries"] == 2


def test_full_draft_checkpointed_equals_plain_backprop(tiny, linear_reward):
    """Per-step checkpointing changes memory, not the gradient (fp32 tolerance)."""
    plain = methods.create("draft-k", tiny, linear_reward, seed=3, num_steps=STEPS, guidance_scale=3.0,
                           truncation_steps=STEPS, checkpoint=False)
    g_plain, _ = _grads_of(plain)
    calls = record_unet_calls(tiny)
    ckpt = methods.create("draft", tiny, linear_reward, seed=3, num_steps=STEPS, guidance_scale=3.0)
    assert ckpt.config.checkpoint and ckpt.config.truncation_steps == STEPS
    g_ckpt, _ = _grads_of(ckpt)
    # checkpointing recomputes each UNet call in backward: 2 calls per step, all with grad
    assert len(calls) == 2 * STEPS and all(c["grad"] for c in calls)
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_ckpt[name], rtol=1e-4, atol=1e-7), name


def test_draft_lv_queries_gradient_and_independent_noise(tiny, linear_reward):
    """DRaFT-LV: n reward queries per image, one gradient-carrying UNet call (the last step) on n·B re-noised copies
    whose noises are independent; prompts stay paired with their own copies."""
    n = 3
    m = methods.create("draft-lv", tiny, linear_reward, seed=5, num_steps=STEPS, guidance_scale=2.0, lv_copies=n)
    calls = record_unet_calls(tiny)
    seen = {}
    original_score = linear_reward.score

    def spy(images, prompts):
        seen["prompts"] = list(prompts)
        seen["n_images"] = images.shape[0]
        return original_score(images, prompts)

    linear_reward.score = spy
    grads, metrics = _grads_of(m)
    assert metrics["samples"] == 2 and metrics["reward_queries"] == 2 * n
    assert seen["n_images"] == 2 * n
    assert seen["prompts"] == ["a cat"] * n + ["a dog"] * n
    grad_calls = [c for c in calls if c["grad"]]
    assert len(grad_calls) == 1 and len(calls) == STEPS + 1
    last_t = int(m.schedule.timesteps[-1])
    assert grad_calls[0]["t"] == last_t and grad_calls[0]["batch"] == 2 * n
    # the n copies of one image were re-noised with different noise: recover the noise and compare
    x_last = grad_calls[0]["input"]
    a = m.schedule.alpha[-1]
    copies = x_last.view(2, n, *x_last.shape[1:])  # copies of one image share x_0: differences are noise only
    for img in range(2):
        for i in range(n):
            for j in range(i + 1, n):
                noise_diff = (copies[img, i] - copies[img, j]) / (1 - a).sqrt()
                assert noise_diff.abs().mean() > 0.5, "copies share their noise"
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_draft_lv_gradient_flows_only_through_the_last_step(tiny, linear_reward):
    """No gradient reaches the parameters through the no-grad chain: the LV gradient equals the one computed with
    the chain's x_0 detached by construction (same noise draws)."""
    m = methods.create("draft-lv", tiny, linear_reward, seed=11, num_steps=STEPS, guidance_scale=2.0, lv_copies=2)
    grads, _ = _grads_of(m)
    # replay with the same generator: chain without grad, then one step with grad on the same re-noised copies
    gen = torch.Generator().manual_seed(11)
    cond = tiny.encode_prompts(PROMPTS)
    noise = torch.randn(tiny.latent_shape(2), generator=gen)
    with torch.no_grad():
        x0 = sample(tiny, cond, noise, num_steps=STEPS, guidance_scale=2.0, eta=0.0).latents
    x0 = x0.repeat_interleave(2, 0)
    fresh = torch.randn(x0.shape, generator=gen)
    sched = DDIMScheduler.from_config(tiny.scheduler.config)
    sched.set_timesteps(STEPS)
    t = sched.timesteps[-1]
    x_last = sched.add_noise(x0, fresh, t.view(1))
    out = sched.step(tiny.predict_noise(x_last, t, cond.repeat(2), 2.0), t, x_last, eta=0.0).prev_sample
    tiny.unet.zero_grad(set_to_none=True)
    (-linear_reward(tiny.decode(out), ["a cat", "a cat", "a dog", "a dog"]).mean()).backward()
    ref = lora_grads(tiny)
    for name in grads:
        assert torch.allclose(grads[name], ref[name], rtol=1e-4, atol=1e-7), name


def test_optimizer_step_changes_lora_only_and_counts(tiny, linear_reward):
    """Frozen weights never change during training; the LoRA does; counts add up over steps."""
    frozen = {n: p.detach().clone() for n, p in tiny.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in tiny.named_parameters() if p.requires_grad}
    assert lora and all("lora" in n for n in lora)
    m = methods.create("draft-1", tiny, linear_reward, seed=0, num_steps=3, guidance_scale=2.0, lr=1e-2)
    for _ in range(2):
        metrics = m.step(PROMPTS)
    assert m.total_samples == 4 and m.total_reward_queries == 4 and metrics["samples"] == 2
    for n, p in tiny.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen weight {n} changed"
    assert any(not torch.equal(p, lora[n]) for n, p in tiny.named_parameters() if n in lora)


@pytest.mark.parametrize("name, kwargs, match", [
    ("draft-k", dict(truncation_steps=9, num_steps=4), "truncation_steps"),
    ("draft-lv", dict(lv_copies=0), "lv_copies"),
    ("draft-k", dict(eta=-1.0), "eta"),
    ("draft-k", dict(bogus=1), "unknown setting"),
])
def test_invalid_settings_fail_clearly(tiny, linear_reward, name, kwargs, match):
    with pytest.raises(MethodError, match=match):
        methods.create(name, tiny, linear_reward, **kwargs)


def test_gradient_method_refuses_non_differentiable_reward(tiny):
    import rewards

    with pytest.raises(MethodError, match="not differentiable"):
        methods.create("draft-k", tiny, rewards.create("jpeg-compressibility"))
