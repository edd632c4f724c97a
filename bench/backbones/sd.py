"""Stable Diffusion 1.x/2.x: checkpoints from the hub or a local diffusers directory, and the real and tiny
architectures with random weights (``bench/configs``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from bench.backbones import CONFIG_DIR, HUB_IDS, DiffusersBackbone, _ddim, part_loader, register
from bench.catalog import path_env


def from_config_dir(config_dir: str | os.PathLike, *, seed: int = 0, tokenizer_dir: str | os.PathLike | None = None,
                    name: str | None = None, **kw) -> DiffusersBackbone:
    """The architecture in ``config_dir`` (``unet.json``, ``vae.json``, ``text_encoder.json``, ``scheduler.json``) with
    random weights drawn from ``seed``. Uses a character-level tokenizer unless ``tokenizer_dir`` is given."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    config_dir = Path(config_dir)
    load = lambda f: json.loads((config_dir / f).read_text())  # noqa: E731
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel.from_config(load("unet.json"))
        vae = AutoencoderKL.from_config(load("vae.json")) if (config_dir / "vae.json").exists() else None
        text_encoder = CLIPTextModel(CLIPTextConfig(**load("text_encoder.json")))
    finally:
        torch.random.set_rng_state(state)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir or CONFIG_DIR / "char_tokenizer"))
    return DiffusersBackbone(unet, text_encoder, tokenizer, _ddim(load("scheduler.json")), vae,
                             name=name or config_dir.name, **kw)


#: the file of each diffusers subfolder that a missing-weights error names


def from_pretrained(path_or_id: str, *, revision: str | None = None, name: str | None = None,
                    **kw) -> DiffusersBackbone:
    """A Stable Diffusion 1.x/2.x checkpoint in diffusers layout, from the hub or a local directory. The scheduler is
    the checkpoint's config turned into a DDIM scheduler (what every method here samples with)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    part = part_loader(path_or_id, revision=revision, name=name)
    return DiffusersBackbone(part(UNet2DConditionModel, "unet"), part(CLIPTextModel, "text_encoder"),
                             part(CLIPTokenizer, "tokenizer"), DDIMScheduler.from_config(part(DDIMScheduler, "scheduler").config),
                             part(AutoencoderKL, "vae"), name=name or str(path_or_id), **kw)


# ----------------------------------------------------------------------------------------------------- registry


def _hub_factory(key: str) -> Callable[..., DiffusersBackbone]:
    def factory(path: str | None = None, **kw) -> DiffusersBackbone:
        kw.pop("seed", None)  # weights come from the checkpoint
        return from_pretrained(path or os.environ.get(path_env(key)) or HUB_IDS[key], name=key, **kw)

    return factory


register("sd15", f"Stable Diffusion 1.5 weights ({HUB_IDS['sd15']} or --backbone-path DIR)")(_hub_factory("sd15"))
register("sd21", f"Stable Diffusion 2.1 weights ({HUB_IDS['sd21']} or --backbone-path DIR; v-prediction)")(
    _hub_factory("sd21"))


@register("sd15-random", "the real SD-1.5 architecture (860M UNet, 512 px) with random weights, for memory/throughput")
def _sd15_random(seed: int = 0, path: str | None = None, **kw) -> DiffusersBackbone:
    return from_config_dir(CONFIG_DIR / "sd15", seed=seed, name="sd15-random", **kw)


@register("sd21-random", "the real SD-2.1 architecture (865M UNet, OpenCLIP-H text encoder, v-prediction, 768 px) "
                         "with random weights")
def _sd21_random(seed: int = 0, path: str | None = None, **kw) -> DiffusersBackbone:
    return from_config_dir(CONFIG_DIR / "sd21", seed=seed, name="sd21-random", **kw)


@register("tiny", "a tiny SD-architecture (UNet+VAE+CLIP text, 32 px) with random weights, for tests and CPU runs")
def _tiny(seed: int = 0, path: str | None = None, **kw) -> DiffusersBackbone:
    return from_config_dir(CONFIG_DIR / "tiny", seed=seed, name="tiny", **kw)
