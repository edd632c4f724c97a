"""DRTune: the UNet never sees a latent that carries gradient, yet the loss reaches x_T through the sampler's linear
update; only the K chosen steps give parameter gradients; the chosen steps are evenly spaced with the offset in range;
early stop scores x̂_0 of the stop step."""
from __future__ import annotations

import torch

import methods
from methods_testkit import CountingReward, predicted_x0, sampling_calls, spy, tiny_backbone, one_thread  # noqa: F401  (autouse)

PROMPTS = ["a red circle", "a blue square"]


def _method(backbone, reward, **kw):
    settings = dict(num_steps=6, guidance_scale=1.0, trained_steps=2, early_stop_max=2)
    settings.update(kw)
    return methods.create("drtune", backbone, reward, **settings)


def test_unet_input_never_carries_gradient_but_x_T_gets_gradient():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = _method(backbone, reward, guidance_scale=5.0)
    x_T = m.noise(2).requires_grad_(True)
    m.noise = lambda n: x_T
    with spy(backbone, reward) as calls:
        m.step(PROMPTS)
    assert calls and all(not c.input_requires_grad for c in calls)
    assert x_T.grad is not None and x_T.grad.abs().sum() > 0


def test_only_the_k_chosen_steps_give_parameter_gradients_and_early_stop_scores_x0_hat():
    backbone = tiny_backbone()
    reward = CountingReward()
    m = _method(backbone, reward)
    stops = set()
    for _ in range(3):
        with spy(backbone, reward) as calls:
            out = m.step(PROMPTS)
        chain = sampling_calls(calls)
        stop, trained = m.last_draw
        stops.add(stop)
        assert out["stop_step"] == stop and len(chain) == stop + 1  # runs to the stop step only
        assert [i for i, c in enumerate(chain) if c.output_requires_grad] == trained
        assert all(not c.grad_enabled for i, c in enumerate(chain) if i not in trained)
        assert all(chain[i].out_grad_norm and chain[i].out_grad_norm[0] > 0 for i in trained)
        # early stop: the scored image is the stop step's predicted x̂_0 (not its x_{t−1}, not the final x_0)
        expected = backbone.decode(predicted_x0(backbone, chain[-1]))
        assert torch.allclose(reward.images[-1], expected, atol=1e-5)
    assert stops <= {4, 5}


def test_chosen_steps_are_evenly_spaced_with_offset_in_range():
    m = methods.create("drtune", tiny_backbone(), CountingReward(), num_steps=20, trained_steps=4, early_stop_max=5)
    offsets, stops = {}, set()
    for _ in range(400):
        stop, trained = m.draw()
        stops.add(stop)
        spacing = (stop + 1) // 4
        assert len(trained) == 4 and all(b - a == spacing for a, b in zip(trained, trained[1:]))
        assert 0 <= trained[0] <= stop - 3 * spacing and trained[-1] <= stop
        offsets.setdefault(stop, set()).add(trained[0])
    assert stops == {15, 16, 17, 18, 19}
    for stop, seen in offsets.items():  # every admissible offset is drawn
        assert seen == set(range(stop - 3 * ((stop + 1) // 4) + 1))


def test_k_larger_than_the_shortest_chain_is_refused():
    import pytest

    with pytest.raises(methods.MethodError, match="trained_steps"):
        methods.create("drtune", tiny_backbone(), CountingReward(), num_steps=6, trained_steps=6, early_stop_max=2)
