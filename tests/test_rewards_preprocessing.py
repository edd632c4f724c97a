"""Our differentiable preprocessing equals each reward's official (PIL) transform, feeding the same network.

Runs rewards/check_preprocessing.py on reduced configs of the real classes (random and structured images, 256 and
512 px): the median relative score difference must be ≤ 0.2% for every reward and image set. A bilinear,
non-antialiased path (the public-wrapper mistake) must do measurably worse, so the comparison has the power to see it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rewards import check_preprocessing as cp
from rewards import testing
from rewards.preprocess import CLIP_MEAN, CLIP_STD, center_crop, normalize


@pytest.fixture(scope="module")
def built():
    return {name: build() for name, build in cp.builders(full=False).items()}


@pytest.fixture(scope="module")
def rows(built):
    with torch.no_grad():  # measurement only; the same 8 images per row as the committed table
        return cp.run(full=False, n=8, built=built)


def test_every_reward_kind_and_size_is_measured(rows):
    seen = {(r["reward"], r["images"], r["size"]) for r in rows}
    for name in ("aesthetic", "hpsv2", "pickscore", "imagereward", "resnet50-class", "owlvit"):
        for kind in ("random", "structured"):
            for size in (256, 512):
                assert (name, kind, size) in seen


def test_median_relative_score_difference_at_most_0_2_percent(rows):
    bad = [r for r in rows if not r["median"] <= 0.002]
    assert not bad, cp.table(bad)


def bilinear_clip_preprocess(images, size=224):
    """The known-wrong public path: torchvision-tensor-style bilinear resize without antialiasing."""
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=False, align_corners=False)
    return normalize(center_crop(images, size), CLIP_MEAN, CLIP_STD)


STDS = {"resnet50-class": (0.229, 0.224, 0.225)}


def pixel_difference(preprocess, official, imgs, name):
    """Mean |ours − official| over the preprocessed pixels, in [0,1] intensity units (normalisation undone)."""
    from PIL import Image

    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    theirs = torch.stack([official(Image.fromarray(im)) for im in imgs]).float()
    std = torch.tensor(STDS.get(name, CLIP_STD)).view(1, 3, 1, 1)
    return ((preprocess(x) - theirs) * std).abs().mean().item()


@pytest.mark.parametrize("name", ["aesthetic", "hpsv2", "pickscore", "imagereward", "resnet50-class", "owlvit"])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_preprocessed_pixels_match_within_half_a_uint8_step(built, name, kind):
    """The official path rounds its resized image to uint8, so half a grey level (0.5/255) is the resolution floor."""
    make = cp.random_images if kind == "random" else cp.structured_images
    official = cp.official_transforms()[name]
    for size in (256, 512):
        with torch.no_grad():
            diff = pixel_difference(built[name].preprocess, official, make(2, size, seed=size), name)
        assert diff < 0.5 / 255, f"{name} {kind} {size}px: mean pixel difference {diff * 255:.3f}/255"


def test_the_comparison_detects_a_bilinear_resize():
    """Power check: the known-wrong bilinear, non-antialiased path fails the same pixel criterion by far."""
    official = cp.official_transforms()["pickscore"]
    for size in (256, 512):
        with torch.no_grad():
            diff = pixel_difference(bilinear_clip_preprocess, official, cp.random_images(2, size, seed=size), "pickscore")
        assert diff > 5 * 0.5 / 255


@pytest.mark.parametrize("hw", [(256, 256), (512, 384), (300, 512)])
def test_hps_pixels_equal_hpsv2s_tensor_transform_bit_for_bit(hw):
    """hpsv2 resizes the *tensor* (ToTensor, then ResizeMaxSize): our differentiable path gives the same pixels
    exactly, square or not (padding on the right sides)."""
    from PIL import Image

    from rewards.clip_score import hps_preprocess

    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    theirs = cp.hpsv2_transform(224)(Image.fromarray(img))
    ours = hps_preprocess(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0)[0]
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
