"""AlignProp: with cutoff c only the steps >= c give parameter gradients (earlier steps under no_grad), per-step
redraw keeps the chain through no-grad steps, and checkpointed and plain runs give the same gradient."""
from __future__ import annotations

import torch

import methods
from methods_testkit import CountingReward, sampling_calls, spy, tiny_backbone, one_thread  # noqa: F401  (autouse)

PROMPTS = ["a red circle", "a blue square"]


def _grad_steps(chain):
    return [i for i, c in enumerate(chain) if c.output_requires_grad]


def test_only_steps_after_the_cutoff_give_parameter_gradients():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("alignprop", backbone, reward, num_steps=6, guidance_scale=1.0, fixed_grad_steps=2)
    with spy(backbone, reward) as calls:
        out = m.step(PROMPTS)
    chain = sampling_calls(calls)
    assert len(chain) == 6 and out["cutoff"] == 4
    assert _grad_steps(chain) == [4, 5]
    assert all(not c.grad_enabled for c in chain[:4])  # no graph kept before the cutoff
    assert all(c.out_grad_norm and c.out_grad_norm[0] > 0 for c in chain[4:])


def test_random_cutoff_per_trajectory_is_a_suffix_and_varies():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("alignprop", backbone, reward, num_steps=5, guidance_scale=1.0, checkpoint=False)
    cutoffs = set()
    for _ in range(4):
        with spy(backbone, reward) as calls:
            out = m.step(PROMPTS)
        chain = sampling_calls(calls)
        c = out["cutoff"]
        cutoffs.add(c)
        assert 0 <= c <= 4 and _grad_steps(chain) == list(range(c, 5))
        assert all(call.out_grad_norm and call.out_grad_norm[0] > 0 for call in chain[c:])
    assert len(cutoffs) > 1


def test_per_step_redraw_keeps_the_chain_through_no_grad_steps():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = methods.create("alignprop", backbone, reward, num_steps=5, guidance_scale=1.0, truncation="step", seed=2)
    patterns = set()
    for _ in range(2):
        with spy(backbone, reward) as calls:
            m.step(PROMPTS)
        chain = sampling_calls(calls)
        drawn = [i for i, g in enumerate(m.last_grad_steps) if g]
        patterns.add(tuple(drawn))
        assert _grad_steps(chain) == drawn
        # every gradient step, even one followed by no-grad steps, receives gradient through their linear update
        assert all(chain[i].out_grad_norm and chain[i].out_grad_norm[0] > 0 for i in drawn)
    assert any(p and list(p) != list(range(p[0], 5)) for p in patterns), patterns  # non-suffix patterns occur


def test_checkpointed_and_plain_runs_give_the_same_gradient():
    grads = []
    for checkpoint in (True, False):
        backbone = tiny_backbone()
        m = methods.create("alignprop", backbone, CountingReward(), num_steps=4, guidance_scale=5.0,
                           fixed_grad_steps=3, checkpoint=checkpoint, seed=7)
        m.backward(PROMPTS[:1])
        grads.append([p.grad.clone() for p in m.params])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
