"""Component timings: one sampling step per backbone, forward+backward per reward, one optimiser step per method.

Run: ``python -m pytest tests/benchmarks --benchmark-only --benchmark-json=benchmarks.json``. Backbones, rewards and
methods that are not registered (or whose weights are absent) are skipped, never failed.
"""
from __future__ import annotations

import pytest
import torch

import methods
import rewards
from bench import backbones
from bench.catalog import load_registries as _load_plugins
from methods.sampling import sample

_load_plugins()
CPU_BACKBONES = ["tiny", "shapes"]
CPU_REWARDS = ["jpeg-compressibility-surrogate", "shapes-aesthetic", "shapes-alignment", "shapes-classifier",
               "shapes-detector"]
METHODS = ["ddpo", "refl", "draft", "draft-k", "draft-1", "draft-lv", "alignprop", "drtune"]


def _backbone(name: str):
    if name not in backbones.available():
        pytest.skip(f"backbone {name} not registered")
    try:
        return backbones.create(name, device="cpu", lora_rank=4)
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"backbone {name}: {err}")


@pytest.mark.parametrize("name", CPU_BACKBONES)
def test_one_sampling_step(benchmark, name):
    torch.set_num_threads(1)
    bb = _backbone(name)
    cond = bb.encode_prompts(["a red circle on a white background"] * 4)
    noise = torch.randn(bb.latent_shape(4))

    def step():
        with torch.no_grad():
            return sample(bb, cond, noise, num_steps=1, guidance_scale=3.0, eta=0.0)

    benchmark(step)


@pytest.mark.parametrize("name", CPU_REWARDS)
def test_reward_forward_backward(benchmark, name):
    torch.set_num_threads(1)
    if name not in rewards.available():
        pytest.skip(f"reward {name} not registered")
    try:
        reward = rewards.create(name)
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"reward {name}: {err}")
    images = torch.rand(4, 3, 24, 24, requires_grad=True)
    prompts = ["a red circle on a white background"] * 4

    def fwd_bwd():
        images.grad = None
        reward(images, prompts).sum().backward()

    benchmark(fwd_bwd)


@pytest.mark.parametrize("name", METHODS)
def test_one_optimiser_step(benchmark, name):
    torch.set_num_threads(1)
    if name not in methods.available():
        pytest.skip(f"method {name} not registered")
    bb = _backbone("tiny")
    method = methods.create(name, bb, rewards.create("jpeg-compressibility-surrogate"), num_steps=4,
                            **({"eta": 1.0} if name == "ddpo" else {}))
    prompts = ["a photo of a cat", "a photo of a dog"]
    benchmark.pedantic(method.step, args=(prompts,), rounds=3, iterations=1, warmup_rounds=1)
