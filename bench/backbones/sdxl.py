"""Stable Diffusion XL backbones: two CLIP text encoders, pooled text embeddings and ``add_time_ids``
micro-conditioning, behind the same protocol as SD 1.x/2.x (``bench/backbones/sd.py``; the conditioning stays opaque to
the methods, DESIGN.md "Backbone kinds").

Conditioning as ``StableDiffusionXLPipeline.encode_prompt`` builds it: each encoder's penultimate hidden states,
concatenated on the feature axis; the second encoder's projected pooled embedding; time ids (original size, crop
top-left, target size) = (H, W, 0, 0, H, W) at the sampling resolution. With ``force_zeros_for_empty_prompt`` (SDXL
base's setting, the default here) guidance's unconditional branch gets zero embeddings, as the pipeline does with
no negative prompt; otherwise the empty prompt's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from bench.backbones import (CONFIG_DIR, HUB_IDS, BackboneError, Conditioning, DiffusersBackbone, _ddim, part_loader,
                             register)


class SDXLBackbone(DiffusersBackbone):
    def __init__(self, unet, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler, vae=None, *,
                 force_zeros_for_empty_prompt: bool = True, **kw):
        if text_encoder_2 is None or tokenizer_2 is None:
            raise BackboneError("an SDXL backbone needs its second text encoder and tokenizer (text_encoder_2/, "
                                "tokenizer_2/)")
        super().__init__(unet, text_encoder, tokenizer, scheduler, vae, **kw)
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        text_encoder_2.requires_grad_(False).eval().to(self.device, self.dtype)
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self._uncond_pooled: torch.Tensor | None = None
        if vae is not None and self.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (its config says force_upcast): decode in fp32

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latents.to(dtype) / self.vae.config.scaling_factor).sample.float()

    @torch.no_grad()
    def _embed_xl(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: the projected pooled embedding
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        if pooled is None:
            raise BackboneError("SDXL's second text encoder must be a CLIPTextModelWithProjection (pooled embeddings)")
        return torch.cat(hidden, dim=-1), pooled

    def time_ids(self, batch_size: int) -> torch.Tensor:
        h = w = self.image_size
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=self.device).expand(batch_size, -1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        if isinstance(prompts, str):
            raise BackboneError("encode_prompts takes a list of prompts, not a single string")
        embeds, pooled = self._embed_xl(prompts)
        if self._uncond is None:
            if self.force_zeros_for_empty_prompt:
                self._uncond, self._uncond_pooled = torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1])
            else:
                self._uncond, self._uncond_pooled = self._embed_xl([""])
        n = len(prompts)
        return Conditioning(embeds, self._uncond.expand(n, -1, -1), pooled, self._uncond_pooled.expand(n, -1),
                            self.time_ids(n))

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                      guidance_scale: float) -> torch.Tensor:
        x = latents.to(self.dtype)
        if guidance_scale > 1.0:
            t = torch.cat([timestep, timestep]) if timestep.ndim == 1 and len(timestep) > 1 else timestep
            added = {"text_embeds": torch.cat([cond.uncond_pooled, cond.pooled]).to(self.dtype),
                     "time_ids": torch.cat([cond.time_ids, cond.time_ids]).to(self.dtype)}
            out = self.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond.uncond, cond.embeds]),
                            added_cond_kwargs=added).sample
            uncond, text = out.float().chunk(2)
            return uncond + guidance_scale * (text - uncond)
        added = {"text_embeds": cond.pooled.to(self.dtype), "time_ids": cond.time_ids.to(self.dtype)}
        return self.unet(x, timestep, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample.float()

    def pipeline(self):
        """A diffusers ``StableDiffusionXLPipeline`` over the same modules."""
        from diffusers import StableDiffusionXLPipeline

        if self.vae is None:
            raise BackboneError(f"{self.name} has no VAE; it has no StableDiffusionXLPipeline")
        return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                         text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer,
                                         tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=self.scheduler,
                                         force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)


def from_config_dir(config_dir: str | Path, *, seed: int = 0, name: str | None = None, **kw) -> SDXLBackbone:
    """The SDXL architecture in ``config_dir`` (``unet.json``, ``vae.json``, ``text_encoder.json``,
    ``text_encoder_2.json``, ``scheduler.json``) with random weights drawn from ``seed``; character-level tokenizers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    config_dir = Path(config_dir)
    load = lambda f: json.loads((config_dir / f).read_text())  # noqa: E731
    from bench.backbones import seeded_build

    # built directly in the frozen dtype: SDXL's 2.6B UNet never exists in fp32 when bf16 is asked for (half the peak)
    with seeded_build(seed, kw.get("dtype", torch.float32)):
        unet = UNet2DConditionModel.from_config(load("unet.json"))
        vae = AutoencoderKL.from_config(load("vae.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**load("text_encoder.json")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**load("text_encoder_2.json")))
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIG_DIR / "char_tokenizer"))
    return SDXLBackbone(unet, text_encoder, tokenizer, text_encoder_2, tokenizer, _ddim(load("scheduler.json")), vae,
                        name=name or config_dir.name, **kw)


@register("tiny-xl", "a tiny SDXL-architecture (two text encoders, pooled embeddings, time ids; 32 px) with random "
                     "weights, for tests")
def _tiny_xl(seed: int = 0, path: str | None = None, **kw) -> SDXLBackbone:
    return from_config_dir(CONFIG_DIR / "tiny-xl", seed=seed, name="tiny-xl", **kw)


def from_pretrained(path_or_id: str, *, revision: str | None = None, name: str | None = None, **kw) -> SDXLBackbone:
    """An SDXL checkpoint in diffusers layout (hub id or local directory: unet/, vae/, text_encoder/, text_encoder_2/,
    tokenizer/, tokenizer_2/, scheduler/); its scheduler config as DDIM. An fp16-fixed VAE (e.g.
    madebyollin/sdxl-vae-fp16-fix) can replace vae/ in a local directory."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    part = part_loader(path_or_id, revision=revision, name=name)
    return SDXLBackbone(part(UNet2DConditionModel, "unet"), part(CLIPTextModel, "text_encoder"),
                        part(CLIPTokenizer, "tokenizer"), part(CLIPTextModelWithProjection, "text_encoder_2"),
                        part(CLIPTokenizer, "tokenizer_2"),
                        DDIMScheduler.from_config(part(DDIMScheduler, "scheduler").config), part(AutoencoderKL, "vae"),
                        name=name or str(path_or_id), **kw)


@register("sdxl", f"Stable Diffusion XL base weights ({HUB_IDS['sdxl']} or --backbone-path DIR)")
def _sdxl(path: str | None = None, **kw) -> SDXLBackbone:
    import os

    kw.pop("seed", None)  # weights come from the checkpoint
    return from_pretrained(path or os.environ.get("BENCH_SDXL_PATH") or HUB_IDS["sdxl"], name="sdxl", **kw)


@register("sdxl-random", "the real SDXL-base architecture (2.6B UNet, CLIP-L + OpenCLIP-bigG text encoders, 1024 px) "
                         "with random weights")
def _sdxl_random(seed: int = 0, path: str | None = None, **kw) -> SDXLBackbone:
    return from_config_dir(CONFIG_DIR / "sdxl", seed=seed, name="sdxl-random", **kw)
