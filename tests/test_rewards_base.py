"""The reward interface and the JPEG pair: shapes, gradients, one prompt per image, the surrogate's rank agreement."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import rewards
from rewards.base import RewardError
from rewards.jpeg import jpeg_size_kb, surrogate_size_kb
from rewards.jpeg_fit import evaluate, load_eval_set
from rewards.preprocess import center_crop, clip_preprocess, resize_longest_and_pad


@pytest.mark.parametrize("name", ["jpeg-compressibility", "jpeg-incompressibility", "jpeg-compressibility-surrogate",
                                  "jpeg-incompressibility-surrogate"])
def test_jpeg_rewards_shape_and_dtype(name):
    images = torch.rand(5, 3, 32, 32)
    out = rewards.create(name)(images, ["p"] * 5)
    assert out.shape == (5,) and out.dtype == torch.float32


def test_true_jpeg_reward_is_pil_quality_95_size_in_kb():
    """Exactly DDPO's definition: uint8 RGB saved by PIL at quality 95, size/1000; compressibility is its negative."""
    images = torch.rand(2, 3, 32, 32)
    arr = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    expected = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        expected.append(buf.tell() / 1000)
    assert torch.allclose(jpeg_size_kb(images), torch.tensor(expected))
    assert torch.allclose(rewards.create("jpeg-compressibility")(images, ["a", "b"]), -torch.tensor(expected))
    assert not rewards.create("jpeg-compressibility").differentiable


def test_surrogate_gradient_reaches_pixels_and_points_to_smaller_files():
    """The surrogate is differentiable, and a small step along its gradient shrinks the real JPEG file."""
    images = (torch.rand(4, 3, 32, 32) * 0.5 + 0.25).requires_grad_()
    reward = rewards.create("jpeg-compressibility-surrogate")
    reward(images, ["x"] * 4).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    before = jpeg_size_kb(images)
    after = jpeg_size_kb((images + 0.02 * images.grad.sign()).clamp(0, 1))
    assert (after < before).all(), (before, after)


def test_surrogate_rank_correlation_on_the_committed_set():
    """Spearman(surrogate, real JPEG size) ≥ 0.9 on the committed 240-image set (measured 0.994)."""
    result = evaluate(load_eval_set())
    assert result["n"] >= 200
    assert result["spearman"] >= 0.9, result


def test_surrogate_estimates_size_in_kb():
    images = load_eval_set()[:40]
    err = (surrogate_size_kb(images) - jpeg_size_kb(images)).abs().mean()
    assert err < 0.1, err


@pytest.mark.parametrize("bad, match", [
    (lambda: (torch.rand(2, 3, 8, 8), ["only one"]), "one prompt per image"),
    (lambda: (torch.rand(2, 3, 8, 8), "a string"), "sequence of strings"),
    (lambda: (torch.rand(2, 1, 8, 8), ["a", "b"]), r"\[B,3,H,W\]"),
])
def test_reward_inputs_are_validated(bad, match):
    images, prompts = bad()
    with pytest.raises(RewardError, match=match):
        rewards.create("jpeg-compressibility-surrogate")(images, prompts)


def test_unknown_reward_lists_valid_names():
    with pytest.raises(RewardError, match="valid: .*jpeg-compressibility"):
        rewards.create("no-such-reward")


def test_available_filters_by_wildcard():
    assert set(rewards.available("jpeg-*")) >= {"jpeg-compressibility", "jpeg-incompressibility"}
    assert all(n.startswith("jpeg-") for n in rewards.available("jpeg-*"))


def test_preprocessing_is_differentiable_and_matches_sizes():
    x = torch.rand(2, 3, 40, 60, requires_grad=True)
    out = clip_preprocess(x, 24)
    assert out.shape == (2, 3, 24, 24)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert center_crop(torch.rand(1, 3, 10, 12), 4).shape[-2:] == (4, 4)
    padded = resize_longest_and_pad(torch.ones(1, 3, 20, 40), 16, fill=0.0)
    assert padded.shape[-2:] == (16, 16) and padded[..., 0, :].abs().sum() == 0  # top row is padding


def test_bicubic_antialias_resize_tracks_pil_bicubic():
    """Our differentiable resize stays close to PIL's BICUBIC (the official scorers' transform) on a smooth image."""
    yy, xx = np.mgrid[0:128, 0:128] / 128
    img = np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy], -1) * 0.5 + 0.5
    pil = np.asarray(Image.fromarray((img * 255).round().astype(np.uint8)).resize((32, 32), Image.BICUBIC)) / 255
    ours = clip_preprocess(torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)[None], 32,
                           mean=(0, 0, 0), std=(1, 1, 1))[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - pil).mean() < 0.01
