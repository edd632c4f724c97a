"""The "auto" memory policies change what is stored, never what is computed: AlignProp's checkpointing and DDPO's
reuse of the sampling graph give the gradient of the plain computation, and each falls back when the activation
budget is small (methods/memory.py)."""
from __future__ import annotations

import pytest
import torch

import methods
from methods import memory
from methods_testkit import CountingReward, tiny_backbone, one_thread  # noqa: F401  (autouse)

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def _grads(m):
    return torch.cat([p.grad.flatten() for p in m.params])


def _backward(m, prompts=PROMPTS):
    m.optimizer.zero_grad(set_to_none=True)
    metrics = m.backward(list(prompts))
    return _grads(m), metrics


def _close(g, ref):
    """Equal to float32 rounding. Other batch compositions and summation orders move DDPO's gradient by up to ~2e-5
    of its largest entry (the log-density divides by σ², small at the last steps); a chain left attached to earlier
    steps moves it by 1.3 (measured), as would a wrong pairing or a lost term."""
    return float((g - ref).abs().max()) <= 1e-3 * float(ref.abs().max())


def _ddpo(**kw):
    return methods.create("ddpo", tiny_backbone(), CountingReward(), num_steps=4, guidance_scale=5.0, eta=1.0,
                          seed=3, **kw)


def test_saved_bytes_counts_what_autograd_keeps():
    x = torch.randn(1000, requires_grad=True)
    w = torch.randn(1000)
    _, n = memory.saved_bytes(lambda: (x * 2).exp().sum())  # exp saves its 1000-float output
    assert n == 4000
    # x * w saves w (for x's gradient): counted, unless w is excluded (a weight is held anyway)
    assert memory.saved_bytes(lambda: (x * w).sum())[1] == 4000
    assert memory.saved_bytes(lambda: (x * w).sum(), exclude=[w])[1] == 0
    with torch.no_grad():
        assert memory.saved_bytes(lambda: (x * 2).exp().sum())[1] == 0


def test_ddpo_reusing_the_sampling_graph_gives_the_recomputed_gradient():
    """Same seed, same samples: the first minibatch's gradient through the sampling graphs equals the one from
    recomputing every term (a chain left attached, a wrong row/step pairing or a lost term would change it)."""
    g_re, m_re = _backward(_ddpo(reuse_sampling_graph=False))
    g_use, m_use = _backward(_ddpo(reuse_sampling_graph=True))
    assert m_re["reused_terms"] == 0 and m_use["reused_terms"] == 3 * 4  # every row at every trainable step
    assert float(m_use["reward"]) == float(m_re["reward"])
    assert _close(g_use, g_re)
    assert float(m_use["approx_kl"]) == 0.0  # ratio exactly one: the same calls
    assert abs(float(m_use["loss"]) - float(m_re["loss"])) < 1e-6


def test_ddpo_reuse_makes_no_denoiser_call_after_sampling():
    backbone = tiny_backbone()
    m = methods.create("ddpo", backbone, CountingReward(), num_steps=4, guidance_scale=5.0, reuse_sampling_graph=True)
    calls = []
    original = type(backbone).predict_noise
    backbone.predict_noise = lambda *a: calls.append(torch.is_grad_enabled()) or original(backbone, *a)
    m.step(PROMPTS)
    assert calls == [True] * 4  # the four sampling calls, with autograd; the PPO pass recomputed nothing
    m.config.reuse_sampling_graph = False
    calls.clear()
    m.step(PROMPTS)
    assert calls == [False] * 4 + [True] * 4


def test_ddpo_auto_measures_first_then_reuses_what_fits(monkeypatch):
    m = _ddpo()
    assert _backward(m)[1]["reused_terms"] == 0  # first call: recompute and measure one call's saved bytes
    assert m._call_bytes[len(PROMPTS)] > 0
    assert _backward(m)[1]["reused_terms"] == 12  # the tiny model fits: every step reused
    monkeypatch.setattr(memory, "activation_budget", lambda device: 2 * m._call_bytes[len(PROMPTS)])
    assert _backward(m)[1]["reused_terms"] == 3 * 2  # two steps' graphs fit: the other two recomputed
    monkeypatch.setattr(memory, "activation_budget", lambda device: 0)
    assert _backward(m)[1]["reused_terms"] == 0


def test_ddpo_partial_reuse_gives_the_recomputed_gradient(monkeypatch):
    ref = _ddpo(reuse_sampling_graph=False)
    m = _ddpo()
    m._call_bytes = {len(PROMPTS): 1}
    monkeypatch.setattr(memory, "activation_budget", lambda device: 2)  # two of the four steps kept
    g, metrics = _backward(m)
    assert metrics["reused_terms"] == 6
    g_ref = _backward(ref)[0]
    assert _close(g, g_ref)


def test_ddpo_no_reuse_when_the_first_minibatch_is_not_the_batch():
    m = _ddpo(minibatch_size=2, reuse_sampling_graph=True)
    assert _backward(m)[1]["reused_terms"] == 0


@pytest.mark.parametrize("budget", ["ample", "none"])
def test_alignprop_auto_checkpointing_gives_the_plain_gradient(monkeypatch, budget):
    kw = dict(num_steps=5, guidance_scale=5.0, fixed_grad_steps=3, seed=1)

    def grad(checkpoint):
        m = methods.create("alignprop", tiny_backbone(), CountingReward(), checkpoint=checkpoint, **kw)
        loss, metrics = m.compute_loss(PROMPTS)
        loss.backward()
        return _grads(m), metrics, m

    g_plain = grad(False)[0]
    g_ckpt = grad(True)[0]
    m = methods.create("alignprop", tiny_backbone(), CountingReward(), **kw)
    first = m.compute_loss(PROMPTS)[1]
    assert first["checkpointed_steps"] == 2  # unmeasured: only the first gradient step holds (and is measured)
    assert m._call_bytes[len(PROMPTS)] > 0
    if budget == "none":
        monkeypatch.setattr(memory, "activation_budget", lambda device: 0)
    m.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    m2 = methods.create("alignprop", tiny_backbone(), CountingReward(), **kw)
    m2._call_bytes = dict(m._call_bytes)
    loss, metrics = m2.compute_loss(PROMPTS)
    assert metrics["checkpointed_steps"] == (0 if budget == "ample" else 3)
    loss.backward()
    for g in (g_ckpt, _grads(m2)):
        assert _close(g, g_plain)


def test_alignprop_auto_holds_the_last_gradient_steps(monkeypatch):
    m = methods.create("alignprop", tiny_backbone(), CountingReward(), num_steps=6, guidance_scale=1.0,
                       fixed_grad_steps=4)
    m._call_bytes = {2: 100}
    monkeypatch.setattr(memory, "activation_budget", lambda device: 250)  # two calls fit
    plan = m.plans(m.draw_grad_steps(), 2)
    assert [(p.grad, p.checkpoint) for p in plan] == [(False, False)] * 2 + [(True, True)] * 2 + [(True, False)] * 2


def test_ddpo_partial_reuse_survives_steps_that_draw_no_kept_transition(monkeypatch):
    """timestep_fraction < 1 with one kept step: some steps train no kept (row, step) pair; they recompute only."""
    m = _ddpo(timestep_fraction=0.25)
    m._call_bytes = {len(PROMPTS): 1}
    monkeypatch.setattr(memory, "activation_budget", lambda device: 1)
    reused = [m.step(PROMPTS)["reused_terms"] for _ in range(6)]
    assert 0 in reused and max(reused) > 0
