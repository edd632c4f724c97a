"""FLUX.1 (rectified flow, guidance-distilled): a ``FluxTransformer2DModel`` (double-stream then single-stream blocks,
rotary positions over image and text ids) over a 16-channel VAE, conditioned on CLIP-L's pooled embedding and T5's
hidden states, sampled by the one sampler's ``flow`` kind (``methods/sampling.py``).

As ``FluxPipeline`` does:
- the latents the sampler sees are the VAE's ``[B, C, H, W]``; the transformer takes them packed as 2×2 patches
  (``[B, H/2 · W/2, 4C]``, ``FluxPipeline._pack_latents``) with their ``(0, row, col)`` ids, text ids all zero;
- FLUX.1-dev is guidance-*distilled*: ``guidance_scale`` is an input of the transformer (its guidance embedding),
  not classifier-free guidance — one forward per step, no empty-prompt branch;
- the transformer is given ``sigma`` (the scheduler's timestep / 1000);
- the schedule is ``linspace(1, 1/N, N)`` shifted by ``mu``, which grows with the image's token count
  (``calculate_shift``: 0.5 at 256 tokens to 1.15 at 4096): ``timestep_kwargs`` hands both to ``set_timesteps``.

LoRA on the attention projections of both streams (double blocks: to_q/k/v/out, add_q/k/v_proj, to_add_out; single
blocks: to_q/k/v), saved under ``transformer.`` as ``FluxPipeline.load_lora_weights`` reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.backbones import (CONFIG_DIR, HUB_IDS, BackboneError, Conditioning, part_loader, register,
                             t5_sequence_length)
from bench.backbones.sd3 import TransformerBackbone, flow_scheduler
from bench.catalog import path_env

T5_TOKENS = 512  # FluxPipeline's default max_sequence_length


class FluxBackbone(TransformerBackbone):
    T5_TOKENIZER = "tokenizer_2"  # where a saved pipeline keeps T5's tokenizer

    def __init__(self, transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler, vae, *,
                 max_sequence_length: int = T5_TOKENS, **kw):
        if text_encoder_2 is None or tokenizer_2 is None:
            raise BackboneError("a FLUX backbone needs its T5 encoder and tokenizer (text_encoder_2/, tokenizer_2/)")
        self._vae_sample_size = vae.config.sample_size
        super().__init__(transformer, text_encoder, tokenizer, scheduler, vae, **kw)
        self.transformer = transformer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        text_encoder_2.requires_grad_(False).eval().to(self.device, self.dtype)
        self.max_sequence_length = max_sequence_length
        self._ids: dict[tuple[int, int], torch.Tensor] = {}

    def default_latent_size(self) -> int:
        """The transformer has no trained size of its own: the VAE's (FLUX.1: 1024 px)."""
        return self._vae_sample_size // self.vae_factor

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels // 4

    @property
    def resolution_multiple(self) -> int:
        return self.vae_factor * 2  # the 2×2 packing

    @property
    def guidance_embedded(self) -> bool:
        """Guidance is an input of the model (FLUX.1-dev), not classifier-free guidance."""
        return bool(self.transformer.config.guidance_embeds)

    def timestep_kwargs(self, num_steps: int) -> dict:
        """``FluxPipeline``'s schedule: sigmas ``linspace(1, 1/N, N)``, and ``mu`` for this resolution's tokens."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = self.scheduler.config
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        if not cfg.get("use_dynamic_shifting", False):
            return {"sigmas": sigmas}
        tokens = (self.latent_size // 2) ** 2
        mu = calculate_shift(tokens, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return {"sigmas": sigmas, "mu": mu}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """T5's last hidden states (``max_sequence_length`` tokens) and CLIP's pooled output, as
        ``FluxPipeline.encode_prompt``; no unconditional branch (``uncond`` is None: FLUX.1-dev does not use CFG)."""
        if isinstance(prompts, str):
            raise BackboneError("encode_prompts takes a list of prompts, not a single string")
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output
        ids = self.tokenizer_2(list(prompts), padding="max_length", max_length=self.max_sequence_length,
                               truncation=True, return_tensors="pt").input_ids.to(self.device)
        embeds = self.text_encoder_2(ids, output_hidden_states=False)[0]
        return Conditioning(embeds, None, pooled)

    def _image_ids(self, h: int, w: int) -> torch.Tensor:
        from diffusers import FluxPipeline

        if (h, w) not in self._ids:
            self._ids[(h, w)] = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)
        return self._ids[(h, w)]

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                      guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity for ``[B, C, H, W]`` latents (packed, then unpacked). ``guidance_scale`` goes to
        the guidance embedding; a model without one (FLUX.1-schnell) ignores it."""
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        x = FluxPipeline._pack_latents(latents.to(self.dtype), b, c, h, w)
        t = timestep.to(self.device).float().reshape(-1).expand(b) if timestep.numel() == 1 else timestep.float()
        guidance = (torch.full((b,), float(guidance_scale), device=self.device, dtype=torch.float32)
                    if self.guidance_embedded else None)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        out = self.transformer(hidden_states=x, timestep=(t / 1000).to(self.dtype), guidance=guidance,
                               pooled_projections=cond.pooled.to(self.dtype),
                               encoder_hidden_states=cond.embeds.to(self.dtype), txt_ids=txt_ids,
                               img_ids=self._image_ids(h, w)).sample
        return FluxPipeline._unpack_latents(out.float(), h * self.vae_factor, w * self.vae_factor, self.vae_factor)

    def pipeline(self):
        """A diffusers ``FluxPipeline`` over the same modules."""
        from diffusers import FluxPipeline

        return FluxPipeline(transformer=self.transformer, scheduler=self.scheduler, vae=self.vae,
                            text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)


def from_config_dir(config_dir: str | Path, *, seed: int = 0, name: str | None = None,
                    max_sequence_length: int = T5_TOKENS, **kw) -> FluxBackbone:
    """The FLUX architecture in ``config_dir`` (``transformer.json``, ``vae.json``, ``text_encoder.json`` (CLIP-L),
    ``text_encoder_2.json`` (T5), ``scheduler.json``) with random weights drawn from ``seed``, built in the frozen
    dtype; character-level tokenizers."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from bench.backbones import seeded_build

    config_dir = Path(config_dir)
    load = lambda f: json.loads((config_dir / f).read_text())  # noqa: E731
    with seeded_build(seed, kw.get("dtype", torch.float32)):
        transformer = FluxTransformer2DModel.from_config(load("transformer.json"))
        vae = AutoencoderKL.from_config(load("vae.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**load("text_encoder.json")))
        text_encoder_2 = T5EncoderModel(T5Config(**load("text_encoder_2.json")))
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIG_DIR / "char_tokenizer"))
    return FluxBackbone(transformer, text_encoder, tokenizer, text_encoder_2, tokenizer,
                        flow_scheduler(load("scheduler.json")), vae, name=name or config_dir.name,
                        max_sequence_length=max_sequence_length, **kw)


def from_pretrained(path_or_id: str, *, revision: str | None = None, name: str | None = None,
                    **kw) -> FluxBackbone:
    """A FLUX.1 checkpoint in diffusers layout (hub id or local directory: transformer/, vae/, text_encoder/,
    text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    part = part_loader(path_or_id, revision=revision, name=name)
    tokenizer_2 = part(AutoTokenizer, "tokenizer_2")
    kw.setdefault("max_sequence_length", t5_sequence_length(tokenizer_2, T5_TOKENS))
    return FluxBackbone(part(FluxTransformer2DModel, "transformer"), part(CLIPTextModel, "text_encoder"),
                        part(CLIPTokenizer, "tokenizer"), part(T5EncoderModel, "text_encoder_2"), tokenizer_2,
                        FlowMatchEulerDiscreteScheduler.from_config(part(FlowMatchEulerDiscreteScheduler,
                                                                         "scheduler").config),
                        part(AutoencoderKL, "vae"), name=name or str(path_or_id), **kw)


@register("tiny-flux", "a tiny FLUX-architecture (double- and single-stream blocks, rotary ids, guidance embedding, "
                       "CLIP-L pooled + T5, 2x2 packed latents, dynamic shift; 32 px) with random weights, for tests")
def _tiny_flux(seed: int = 0, path: str | None = None, **kw) -> FluxBackbone:
    return from_config_dir(CONFIG_DIR / "tiny-flux", seed=seed, name="tiny-flux", max_sequence_length=32, **kw)


@register("flux-dev", f"FLUX.1-dev weights ({HUB_IDS['flux-dev']} or --backbone-path DIR; rectified flow, "
                      f"guidance-distilled: --guidance-scale is the model's guidance input, no CFG)")
def _flux_dev(path: str | None = None, **kw) -> FluxBackbone:
    kw.pop("seed", None)  # weights come from the checkpoint
    return from_pretrained(path or os.environ.get(path_env("flux-dev")) or HUB_IDS["flux-dev"], name="flux-dev", **kw)


@register("flux-random", "the real FLUX.1-dev architecture (12B transformer: 19 double + 38 single blocks, CLIP-L + "
                         "T5-XXL, 1024 px) with random weights")
def _flux_random(seed: int = 0, path: str | None = None, **kw) -> FluxBackbone:
    return from_config_dir(CONFIG_DIR / "flux-dev", seed=seed, name="flux-random", **kw)
