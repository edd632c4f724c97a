"""DDPO: stored log-probs re-score exactly, the PPO clip cuts gradient where it should, the per-prompt tracker,
a non-differentiable reward, and the log-prob against an independent Gaussian computed through diffusers."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

import methods
import rewards
from methods.ddpo import ppo_clipped_loss, ppo_clipped_terms
from methods.ddpo_stats import PerPromptStatTracker
from methods_testkit import CountingReward, lora_and_frozen, spy, tiny_backbone, one_thread  # noqa: F401  (autouse)

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def test_stored_transitions_rescore_exactly_before_any_update():
    """Ratio exactly 1 before the first update: same eta, same guidance, each x_t paired with its own x_{t−1} and its
    own prompt. A wrong guidance or a prompt shifted by one row must be visible at this precision."""
    backbone = tiny_backbone()
    m = methods.create("ddpo", backbone, CountingReward(), num_steps=5, guidance_scale=5.0, eta=1.0)
    cond, traj, old, _ = m.collect(PROMPTS)
    rows = torch.arange(len(PROMPTS))
    for i in range(5):  # the sampling batch's composition: bit-identical
        new = m.transition_log_probs(traj, cond, rows, torch.full((3,), i))
        assert torch.equal(new.detach(), old[:, i])
    shuffled = torch.tensor([4, 0, 2])  # rows at different steps (the PPO loop's layout): equal to float rounding
    new = m.transition_log_probs(traj, cond, rows, shuffled)
    assert (new.detach() - old[rows, shuffled]).abs().max() < 1e-6
    # the classic mistakes, for scale: guidance off when re-scoring, and prompts paired with the wrong images
    m.config.guidance_scale = 1.0
    assert (m.transition_log_probs(traj, cond, rows, shuffled).detach() - old[rows, shuffled]).abs().max() > 1e-3
    m.config.guidance_scale = 5.0
    rolled = cond.index(torch.tensor([1, 2, 0]))
    assert (m.transition_log_probs(traj, rolled, rows, shuffled).detach() - old[rows, shuffled]).abs().max() > 1e-3


def test_ppo_loop_sees_ratio_one_before_its_update():
    """In step() itself (one minibatch: every term is computed before the optimiser step): no term is clipped and the
    approximate KL is at float rounding."""
    m = methods.create("ddpo", tiny_backbone(), CountingReward(), num_steps=4, guidance_scale=5.0, minibatch_size=8)
    out = m.step(PROMPTS)
    assert out["optimizer_steps"] == 1 and out["ppo_terms"] == 4
    assert out["clipfrac"] == 0.0
    assert out["approx_kl"] < 1e-12


def test_clipped_objective_gradient_is_zero_outside_the_clip_range_in_the_advantage_direction():
    eps = 0.1
    old = torch.zeros(6)
    log_ratio = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5, 1.05, 0.95]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    new = log_ratio.clone().requires_grad_(True)
    loss, info = ppo_clipped_loss(new, old, adv, eps)
    loss.backward()
    g = new.grad
    # ρ > 1+ε with A > 0, ρ < 1−ε with A < 0: the clipped branch wins, constant in θ
    assert g[0] == 0 and g[1] == 0
    # ρ outside the range *against* the advantage's direction, and ρ inside: the unclipped term, d/dlogρ = −A·ρ/N
    ratio = log_ratio.exp()
    for k in (2, 3, 4, 5):
        assert g[k] == pytest.approx(float(-adv[k] * ratio[k] / 6), rel=1e-6)
    expected = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(info["clipfrac"]) == pytest.approx(4 / 6)


def test_per_prompt_tracker_normalises_per_prompt_and_falls_back_below_min_count():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["a", "a", "b", "b"]
    r1 = torch.tensor([1.0, 3.0, 10.0, 30.0])
    adv = tracker.update(prompts, r1)
    batch_mean, batch_std = r1.mean(), r1.std(unbiased=False)
    assert torch.allclose(adv, (r1 - batch_mean) / (batch_std + 1e-6))  # 2 < min_count: batch statistics
    r2 = torch.tensor([2.0, 4.0, 20.0, 40.0])
    adv = tracker.update(prompts, r2)  # 4 rewards per prompt now: each prompt its own buffer
    a_buf, b_buf = torch.tensor([1.0, 3.0, 2.0, 4.0]), torch.tensor([10.0, 30.0, 20.0, 40.0])
    assert torch.allclose(adv[:2], (r2[:2] - a_buf.mean()) / (a_buf.std(unbiased=False) + 1e-6))
    assert torch.allclose(adv[2:], (r2[2:] - b_buf.mean()) / (b_buf.std(unbiased=False) + 1e-6))
    # a new prompt in the same batch still falls back to the batch's statistics
    r3 = torch.tensor([5.0, 7.0])
    adv = tracker.update(["a", "c"], r3)
    a_buf = torch.tensor([3.0, 2.0, 4.0, 5.0])  # the buffer keeps the 4 most recent
    assert adv[0] == pytest.approx(float((5.0 - a_buf.mean()) / (a_buf.std(unbiased=False) + 1e-6)), rel=1e-5)
    assert adv[1] == pytest.approx(float((7.0 - r3.mean()) / (r3.std(unbiased=False) + 1e-6)), rel=1e-5)
    assert tracker.stats() == {"tracked_prompts": 3, "prompts_with_own_stats": 2}


def test_non_differentiable_reward_trains_lora_only():
    """The real JPEG file size (PIL encode, no gradient) drives DDPO; only LoRA weights move."""
    backbone = tiny_backbone()
    reward = rewards.create("jpeg-compressibility")
    assert not reward.differentiable
    m = methods.create("ddpo", backbone, reward, num_steps=4, guidance_scale=5.0)
    lora, frozen = lora_and_frozen(backbone)
    before_lora = {n: p.detach().clone() for n, p in lora.items()}
    before_frozen = {n: p.detach().clone() for n, p in frozen.items()}
    out = m.step(PROMPTS)
    assert out["grad_norm"] > 0 and math.isfinite(out["loss"])
    assert any(not torch.equal(p, before_lora[n]) for n, p in lora.items())
    assert all(torch.equal(p, before_frozen[n]) for n, p in frozen.items())
    assert out["samples"] == 3 and out["reward_queries"] == 3


def test_log_prob_matches_an_independent_gaussian_through_diffusers():
    """log N(x_{t−1}; μ, σ²), mean over pixels, with μ from diffusers' DDIMScheduler.step (eta = 1, zero variance
    noise) and σ from its own variance formula, on the guided outputs the chain actually used."""
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("ddpo", backbone, reward, num_steps=4, guidance_scale=5.0, eta=1.0)
    with spy(backbone, reward) as calls:
        _, traj, stored, _ = m.collect(PROMPTS[:2])
    ref = DDIMScheduler.from_config(backbone.scheduler.config)
    ref.set_timesteps(4)
    for i, (t, call) in enumerate(zip(ref.timesteps, calls)):
        assert call.timestep == int(t)
        mean = ref.step(call.output, t, traj[:, i], eta=1.0, variance_noise=torch.zeros_like(call.output)).prev_sample
        prev_t = int(t) - ref.config.num_train_timesteps // 4
        std = ref._get_variance(t, torch.tensor(prev_t)).sqrt()
        direct = torch.distributions.Normal(mean.double(), std.double()).log_prob(traj[:, i + 1].double())
        assert torch.allclose(stored[:, i].double(), direct.mean(dim=(1, 2, 3)), atol=1e-4, rtol=1e-5)


def test_zero_sigma_steps_are_excluded_from_ppo_terms():
    """DDPM's last transition is deterministic (σ = 0, log-density 0/0): it is never a PPO term."""
    m = methods.create("ddpo", tiny_backbone(), CountingReward(), num_steps=4, guidance_scale=1.0, sampler="ddpm")
    assert m.trainable_indices.tolist() == [0, 1, 2]
    out = m.step(PROMPTS[:2])
    assert out["ppo_terms"] == 3 and math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"])


def test_inner_epochs_and_minibatches_take_several_optimizer_steps_and_count_samples_once():
    reward = CountingReward()
    m = methods.create("ddpo", tiny_backbone(), reward, num_steps=4, guidance_scale=1.0, inner_epochs=2,
                       minibatch_size=2, timestep_fraction=0.5)
    out = m.step(PROMPTS)
    assert out["optimizer_steps"] == 4  # 2 epochs × ceil(3 / 2)
    assert out["ppo_terms"] == 4 * 2     # each minibatch: ⌊0.5 · 4⌋ trained positions
    assert out["samples"] == 3 and out["reward_queries"] == 3 == reward.queries


def test_rows_at_different_steps_take_one_guided_denoiser_call():
    """The PPO loop scores each minibatch's rows at their own steps with one UNet call (a per-row timestep vector),
    not one call per distinct step."""
    backbone = tiny_backbone()
    m = methods.create("ddpo", backbone, CountingReward(), num_steps=5, guidance_scale=5.0, eta=1.0)
    cond, traj, old, _ = m.collect(PROMPTS)
    calls = []
    handle = backbone.unet.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        new = m.transition_log_probs(traj, cond, torch.arange(3), torch.tensor([4, 0, 2]))
    finally:
        handle.remove()
    assert calls == [6]  # one call: 3 rows x (uncond, cond)
    assert (new.detach() - old[torch.arange(3), torch.tensor([4, 0, 2])]).abs().max() < 1e-6


def test_an_epoch_of_several_batches_samples_first_then_updates_on_all_of_it(monkeypatch):
    """samples_per_epoch = 8 with batches of 4: the first call only samples (no optimiser step, LoRA and Adam
    untouched); the second computes the advantages of all 8 rewards at once and trains every row of the epoch with
    its own advantage, its own trajectory and its own prompt (checked by re-scoring each trained row's final image)."""
    import methods.ddpo as ddpo_mod

    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("ddpo", backbone, reward, num_steps=3, guidance_scale=5.0, eta=1.0, samples_per_epoch=8,
                       minibatch_size=4, buffer_size=16, min_count=16)
    before = [p.detach().clone() for p in m.params]
    first = m.step(PROMPTS[:2] * 2)
    assert first["optimizer_steps"] == 0 and first["epoch_samples"] == 4
    assert all(torch.equal(p, b) for p, b in zip(m.params, before)) and not m.optimizer.state
    assert sum(len(b) for b in m.tracker.buffers.values()) == 0  # no advantages before the epoch is complete
    seen = []
    real_terms = ddpo_mod.ppo_clipped_terms

    def recording(new, old, advantages, clip_range):
        seen.append(advantages.detach().clone())
        return real_terms(new, old, advantages, clip_range)

    recorded_rows = []
    real_log_probs = m.transition_log_probs

    def recording_rows(trajectory, cond, rows, indices, grad=True):
        recorded_rows.append((trajectory, rows.clone()))
        return real_log_probs(trajectory, cond, rows, indices, grad)

    monkeypatch.setattr(ddpo_mod, "ppo_clipped_terms", recording)
    monkeypatch.setattr(m, "transition_log_probs", recording_rows)
    second = m.step([PROMPTS[2]] * 4)
    assert second["optimizer_steps"] == 2 and second["epoch_samples"] == 8
    assert any(not torch.equal(p, b) for p, b in zip(m.params, before))
    assert sum(len(b) for b in m.tracker.buffers.values()) == 8  # all 8 rewards reached the tracker together
    all_rewards = torch.cat([(img * reward.pattern).mean(dim=(1, 2, 3)) * 10 for img in reward.images])
    expected_adv = ((all_rewards - all_rewards.mean()) / (all_rewards.std(unbiased=False) + 1e-6)).clamp(-5, 5)
    trajectory = recorded_rows[0][0]
    assert trajectory.shape[0] == 8
    final_images = backbone.decode(trajectory[:, -1])
    own = (final_images * reward.pattern).mean(dim=(1, 2, 3)) * 10
    torch.testing.assert_close(own, all_rewards, rtol=1e-5, atol=1e-6)  # trajectories in the rewards' order
    for (_, rows), adv in zip(recorded_rows, seen):
        torch.testing.assert_close(adv, expected_adv[rows], rtol=1e-5, atol=1e-6)
    assert sorted(torch.cat([r for _, r in recorded_rows]).unique().tolist()) == list(range(8))


def test_samples_per_epoch_must_be_a_whole_number_of_batches():
    with pytest.raises(methods.MethodError, match="not a multiple"):
        methods.get("ddpo").check_batch(3, {"samples_per_epoch": 8})
    methods.get("ddpo").check_batch(4, {"samples_per_epoch": 8})


def test_a_budget_must_be_a_whole_number_of_epochs_and_the_cell_refuses_it_before_loading():
    """The last partial epoch would be sampled and never trained on: refused with one line (a CellSpec validates
    it before anything heavy is built)."""
    from bench.cell import CellSpec

    with pytest.raises(methods.MethodError, match="budget 24 is not a multiple of samples_per_epoch 16"):
        methods.get("ddpo").check_budget(24, {"samples_per_epoch": 16})
    methods.get("ddpo").check_budget(32, {"samples_per_epoch": 16})
    methods.get("ddpo").check_budget(24, {})  # one batch per epoch: any budget
    with pytest.raises(methods.MethodError, match="samples_per_epoch=N"):
        CellSpec(method="ddpo", budget=24, batch_size=4, method_kwargs={"samples_per_epoch": 16}).validate()


def _score_function_vs_pathwise(pair_rewards, batches: int = 16, batch: int = 64) -> float:
    """Cosine between DDPO's policy gradient, −E[A · ∇θ Σ_t log p_θ(x_{t−1} | x_t)] over stored eta-1 trajectories,
    and the pathwise gradient of −E[r] through the same eta-1 chain (full DRaFT, reparametrised). Both estimate
    ∇θ E[r] under the eta-1 sampler (Stein's lemma), so their averages must point the same way. Every row starts
    from one initial noise and one prompt: the reward then varies only through the steps' own noise, the variance a
    per-prompt baseline cannot remove otherwise (with a fresh x_T per row and 4 prompts the score-function average
    over 1,024 samples is not even consistent with itself, cosine 0.04 between its halves: that variance is why
    DDPO learns slowly, not a wrong sign)."""
    torch.manual_seed(0)
    backbone, reward = tiny_backbone(), CountingReward()
    params = [p for p in backbone.parameters() if p.requires_grad]

    def take() -> torch.Tensor:
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        for p in params:
            p.grad = None
        return g

    ddpo = methods.create("ddpo", backbone, reward, num_steps=2, guidance_scale=1.0, eta=1.0, seed=1)
    full = methods.create("draft", backbone, reward, num_steps=2, guidance_scale=1.0, eta=1.0, seed=2)
    x_T = ddpo.noise(1)
    ddpo.noise = full.noise = lambda n: x_T.expand(n, *x_T.shape[1:]).clone()
    prompts = ["a red circle"] * batch
    rows = torch.arange(batch)
    score_fn = pathwise = 0
    for _ in range(batches):
        cond, traj, _, r = ddpo.collect(prompts)
        log_p = sum(ddpo.transition_log_probs(traj, cond, rows, torch.full((batch,), t)) for t in range(2))
        advantages = pair_rewards(r - r.mean())
        ppo_clipped_terms(log_p, log_p.detach(), advantages, 1e-4).mean().backward()  # ρ = 1: −A·∇θ log p
        score_fn = score_fn + take()
    full.compute_loss(prompts)[0].backward()
    pathwise = take()
    return float(torch.nn.functional.cosine_similarity(score_fn, pathwise, dim=0))


@pytest.mark.slow  # 1,024 samples twice: ≈ 1 min on a free core (run by .ci/run with the other slow tests)
def test_policy_gradient_points_where_backprop_through_the_stochastic_chain_points():
    """The objective DDPO trains on (the PPO term at ρ = 1: −A·∇θ log p) estimates the true gradient: over 1,024
    samples its average agrees with the pathwise gradient (measured cosine 0.63), rewards paired with the wrong
    trajectories (rolled by one row) do not (0.18; expected 0); a sign error would give the negative."""
    assert _score_function_vs_pathwise(lambda a: a) > 0.4
    assert abs(_score_function_vs_pathwise(lambda a: a.roll(1))) < 0.2
