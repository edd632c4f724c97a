"""The shapes testbed: a procedurally generated world of coloured shapes, its gold aesthetic, and small networks
trained on it (a pixel-space text-to-image diffusion model and four learned rewards). See DESIGN.md, "The shapes
testbed". It exists so that the whole benchmark runs, is tested and can be trusted on a laptop CPU; it does not
replace the real grid.

Importing this package registers the backbone ``shapes`` and the rewards ``shapes-alignment``, ``shapes-aesthetic``,
``shapes-classifier``, ``shapes-detector`` and ``shapes-gold-aesthetic``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import models, world
from .models import DEFAULT_GUIDANCE, DEFAULT_STEPS, WEIGHTS_DIR

__all__ = ["shapes_backbone", "sample_grid", "generate_images", "world", "models", "DEFAULT_GUIDANCE",
           "DEFAULT_STEPS", "WEIGHTS_DIR"]


def shapes_backbone(device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                    lora_rank: int | None = 4, path: str | None = None, **kw):
    """The committed testbed diffusion model as a ``DiffusersBackbone`` (pixel space: ``vae=None``, 24 px)."""
    from bench.backbones import DiffusersBackbone

    root = Path(path) if path else WEIGHTS_DIR
    kw.pop("seed", None)  # the registry passes seed to random-weight backbones; these weights are fixed
    return DiffusersBackbone(models.load_unet(root / "unet"), models.load_text_encoder(root / "text_encoder"),
                             models.load_tokenizer(root / "tokenizer"), models.load_scheduler(root / "scheduler"),
                             None, device=device, dtype=dtype, lora_rank=lora_rank, name="shapes", **kw)


def shapes_flow_backbone(device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                         lora_rank: int | None = 4, path: str | None = None, **kw):
    """The committed rectified-flow testbed model (``weights/flow/``: the same UNet and text encoder architecture,
    velocity-prediction, a ``FlowMatchEulerDiscreteScheduler``), pixel space, 24 px."""
    from bench.backbones import DiffusersBackbone

    root = Path(path) if path else WEIGHTS_DIR / "flow"
    kw.pop("seed", None)
    return DiffusersBackbone(models.load_unet(root / "unet"), models.load_text_encoder(root / "text_encoder"),
                             models.load_tokenizer(root / "tokenizer"), models.load_flow_scheduler(root / "scheduler"),
                             None, device=device, dtype=dtype, lora_rank=lora_rank, name="shapes-flow", **kw)


def generate_images(backbone, prompts: Sequence[str], seed: int = 0, num_steps: int = DEFAULT_STEPS,
                    guidance_scale: float | None = None, batch_size: int = 64) -> torch.Tensor:
    """Images [len(prompts),3,H,W] in [0,1] with the project's DDIM sampler (eta 0), noise drawn from ``seed``."""
    from methods.sampling import sample

    guidance_scale = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(backbone.latent_shape(len(prompts)), generator=gen).to(backbone.device)
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            cond = backbone.encode_prompts(list(prompts[i:i + batch_size]))
            res = sample(backbone, cond, noise[i:i + batch_size], num_steps=num_steps, guidance_scale=guidance_scale,
                         eta=0.0)
            out.append(backbone.decode(res.latents).cpu())
    return torch.cat(out)


def sample_grid(backbone, prompts: Sequence[str] | str, out_path: str | Path, num_per_prompt: int = 8, seed: int = 0,
                guidance_scale: float | None = None, num_steps: int = DEFAULT_STEPS) -> Path:
    """Write a PNG grid: one column per prompt (the prompt under it), ``num_per_prompt`` samples down each column,
    enlarged with nearest neighbour. Warns (stderr, one line) about prompt words outside the testbed's grammar."""
    import sys

    from bench import images as images_mod

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    for p in prompts:
        if (warning := world.vocabulary_warning(p)) is not None:
            print(warning, file=sys.stderr)
    # noise index i of every prompt sits in row i, so a row shares its seeds' order across prompts
    images = generate_images(backbone, [p for _ in range(num_per_prompt) for p in prompts], seed=seed,
                             num_steps=num_steps, guidance_scale=guidance_scale)
    rows = list(images.split(len(prompts)))
    return images_mod.save_grid(out_path, rows, col_labels=prompts,
                                row_labels=[f"sample {i}" for i in range(num_per_prompt)])


def _register() -> None:
    from bench import backbones

    if "shapes" not in backbones.available():
        backbones.register("shapes", "the shapes testbed: pixel-space 24 px UNet + CLIP text encoder trained here, "
                                     "committed weights (no download)")(shapes_backbone)
    if "shapes-flow" not in backbones.available():
        backbones.register("shapes-flow", "the shapes testbed's rectified-flow model: the same UNet and text encoder "
                                          "trained on the flow-matching objective (velocity, Euler / flow SDE), "
                                          "committed weights")(shapes_flow_backbone)


_register()
from . import rewards  # noqa: E402,F401  (registers the shapes-* rewards)
