"""Stable Diffusion 3.x (MMDiT, rectified flow): an ``SD3Transformer2DModel`` over a 16-channel VAE, conditioned on two
CLIP text encoders and an optional T5, sampled by the one sampler's ``flow`` kind (``methods/sampling.py``).

Conditioning as ``StableDiffusion3Pipeline.encode_prompt`` builds it: each CLIP encoder's penultimate hidden states
concatenated on the feature axis, zero-padded to T5's width, followed on the sequence axis by T5's last hidden
states (zeros when T5 is left out, as the pipeline does with ``text_encoder_3=None``: it saves ≈ 9 GB at a small
cost in prompt following); the two projected pooled embeddings concatenated. Guidance's unconditional branch is the
empty prompt's, encoded the same way. The transformer predicts the velocity; the timestep it is given is the
scheduler's (sigma × 1000). The VAE latents are ``(z - shift_factor) * scaling_factor``.

LoRA sits on the joint attention's projections of both streams (image: to_q/k/v/out; text: add_q/k/v_proj,
to_add_out), Flow-GRPO's targets, saved with the ``transformer.`` prefix that ``StableDiffusion3Pipeline
.load_lora_weights`` reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from bench.backbones import (CONFIG_DIR, HUB_IDS, BackboneError, Conditioning, DiffusersBackbone, part_loader, register,
                             t5_sequence_length)

T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length

MMDIT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class TransformerBackbone(DiffusersBackbone):
    """What the rectified-flow transformer families (SD3, FLUX) share: the LoRA on the attention projections of both
    streams under ``transformer.`` in peft's key format, and the VAE's shift factor."""

    denoiser_prefix = "transformer"
    lora_targets = MMDIT_LORA_TARGETS

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """peft's keys (``lora_A``/``lora_B``) under ``transformer.``: what diffusers' SD3/FLUX training scripts save
        with the pipelines' ``save_lora_weights`` (the UNet's ``lora.down``/``lora.up`` renaming does not apply)."""
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.unet, adapter_name="default")
        return {f"{self.denoiser_prefix}.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        z = latents.to(self.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return self.vae.decode(z).sample.float()


class SD3Backbone(TransformerBackbone):
    T5_TOKENIZER = "tokenizer_3"  # where a saved pipeline keeps T5's tokenizer

    def __init__(self, transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3, tokenizer_3,
                 scheduler, vae, *, max_sequence_length: int = T5_TOKENS, **kw):
        if text_encoder_2 is None or tokenizer_2 is None:
            raise BackboneError("an SD3 backbone needs both CLIP text encoders (text_encoder/, text_encoder_2/)")
        super().__init__(transformer, text_encoder, tokenizer, scheduler, vae, **kw)
        self.transformer = transformer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.text_encoder_3, self.tokenizer_3 = text_encoder_3, tokenizer_3
        for module in (text_encoder_2, text_encoder_3):
            if module is not None:
                module.requires_grad_(False).eval().to(self.device, self.dtype)
        self.max_sequence_length = max_sequence_length
        self._uncond_pooled: torch.Tensor | None = None

    @property
    def resolution_multiple(self) -> int:
        return self.vae_factor * self.transformer.config.patch_size

    @torch.no_grad()
    def _embed_sd3(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        width = self.transformer.config.joint_attention_dim
        if self.text_encoder_3 is None:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, width, device=self.device, dtype=clip.dtype)
        else:
            ids = self.tokenizer_3(list(prompts), padding="max_length", max_length=self.max_sequence_length,
                                   truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
            t5 = self.text_encoder_3(ids.to(self.device))[0].to(clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        if isinstance(prompts, str):
            raise BackboneError("encode_prompts takes a list of prompts, not a single string")
        embeds, pooled = self._embed_sd3(prompts)
        if self._uncond is None:
            self._uncond, self._uncond_pooled = self._embed_sd3([""])
        n = len(prompts)
        return Conditioning(embeds, self._uncond.expand(n, -1, -1), pooled, self._uncond_pooled.expand(n, -1))

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                      guidance_scale: float) -> torch.Tensor:
        """The transformer's velocity, with classifier-free guidance when ``guidance_scale > 1`` (as the pipeline)."""
        x = latents.to(self.dtype)
        t = timestep.to(self.device).float().reshape(-1).expand(x.shape[0]) if timestep.numel() == 1 else timestep
        if guidance_scale > 1.0:
            out = self.transformer(hidden_states=torch.cat([x, x]), timestep=torch.cat([t, t]),
                                   encoder_hidden_states=torch.cat([cond.uncond, cond.embeds]).to(self.dtype),
                                   pooled_projections=torch.cat([cond.uncond_pooled, cond.pooled]).to(self.dtype)).sample
            uncond, text = out.float().chunk(2)
            return uncond + guidance_scale * (text - uncond)
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond.embeds.to(self.dtype),
                                pooled_projections=cond.pooled.to(self.dtype)).sample.float()

    def pipeline(self):
        """A diffusers ``StableDiffusion3Pipeline`` over the same modules."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(transformer=self.transformer, scheduler=self.scheduler, vae=self.vae,
                                        text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                        text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                                        text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3)


def flow_scheduler(config: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(config)


def from_config_dir(config_dir: str | Path, *, seed: int = 0, name: str | None = None, t5: bool = True,
                    max_sequence_length: int = T5_TOKENS, **kw) -> SD3Backbone:
    """The SD3 architecture in ``config_dir`` (``transformer.json``, ``vae.json``, ``text_encoder.json``,
    ``text_encoder_2.json``, optional ``text_encoder_3.json`` (T5), ``scheduler.json``) with random weights drawn from
    ``seed``, built in the frozen dtype; character-level tokenizers (T5's too)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel

    from bench.backbones import seeded_build

    config_dir = Path(config_dir)
    load = lambda f: json.loads((config_dir / f).read_text())  # noqa: E731
    with seeded_build(seed, kw.get("dtype", torch.float32)):
        transformer = SD3Transformer2DModel.from_config(load("transformer.json"))
        vae = AutoencoderKL.from_config(load("vae.json"))
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**load("text_encoder.json")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**load("text_encoder_2.json")))
        text_encoder_3 = (T5EncoderModel(T5Config(**load("text_encoder_3.json")))
                          if t5 and (config_dir / "text_encoder_3.json").exists() else None)
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIG_DIR / "char_tokenizer"))
    return SD3Backbone(transformer, text_encoder, tokenizer, text_encoder_2, tokenizer, text_encoder_3,
                       tokenizer if text_encoder_3 is not None else None, flow_scheduler(load("scheduler.json")), vae,
                       name=name or config_dir.name, max_sequence_length=max_sequence_length, **kw)


def from_pretrained(path_or_id: str, *, revision: str | None = None, name: str | None = None, t5: bool = True,
                    **kw) -> SD3Backbone:
    """An SD 3.x checkpoint in diffusers layout (hub id or local directory: transformer/, vae/, text_encoder/,
    text_encoder_2/, text_encoder_3/, tokenizer/, tokenizer_2/, tokenizer_3/, scheduler/). ``t5=False`` leaves T5 out
    (its directories are then not needed)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    part = part_loader(path_or_id, revision=revision, name=name)
    tokenizer_3 = part(AutoTokenizer, "tokenizer_3") if t5 else None
    kw.setdefault("max_sequence_length", t5_sequence_length(tokenizer_3, T5_TOKENS))
    return SD3Backbone(part(SD3Transformer2DModel, "transformer"), part(CLIPTextModelWithProjection, "text_encoder"),
                       part(CLIPTokenizer, "tokenizer"), part(CLIPTextModelWithProjection, "text_encoder_2"),
                       part(CLIPTokenizer, "tokenizer_2"), part(T5EncoderModel, "text_encoder_3") if t5 else None,
                       tokenizer_3,
                       FlowMatchEulerDiscreteScheduler.from_config(part(FlowMatchEulerDiscreteScheduler,
                                                                        "scheduler").config),
                       part(AutoencoderKL, "vae"), name=name or str(path_or_id), **kw)


@register("tiny-sd3", "a tiny SD3-architecture (MMDiT transformer, 16-channel VAE, two CLIP encoders + T5, rectified "
                      "flow; 32 px) with random weights, for tests")
def _tiny_sd3(seed: int = 0, path: str | None = None, **kw) -> SD3Backbone:
    return from_config_dir(CONFIG_DIR / "tiny-sd3", seed=seed, name="tiny-sd3", max_sequence_length=32, **kw)


@register("sd35m", f"Stable Diffusion 3.5 Medium weights ({HUB_IDS['sd35m']} or --backbone-path DIR; rectified flow; "
                   f"BENCH_SD35M_T5=0 leaves T5 out)")
def _sd35m(path: str | None = None, **kw) -> SD3Backbone:
    kw.pop("seed", None)  # weights come from the checkpoint
    return from_pretrained(path or os.environ.get("BENCH_SD35M_PATH") or HUB_IDS["sd35m"], name="sd35m",
                           t5=os.environ.get("BENCH_SD35M_T5", "1") != "0", **kw)


@register("sd35m-random", "the real SD-3.5-Medium architecture (2.5B MMDiT-X, CLIP-L + CLIP-G + T5-XXL, 1024 px) with "
                          "random weights (BENCH_SD35M_T5=0 leaves T5 out)")
def _sd35m_random(seed: int = 0, path: str | None = None, **kw) -> SD3Backbone:
    return from_config_dir(CONFIG_DIR / "sd35m", seed=seed, name="sd35m-random",
                           t5=os.environ.get("BENCH_SD35M_T5", "1") != "0", **kw)
