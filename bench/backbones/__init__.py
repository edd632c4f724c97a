"""Backbones, one module per family behind this registry: ``sd`` (Stable Diffusion 1.x/2.x), ``sdxl`` (SDXL), and
(registered by ``bench.testbed``) the pixel-space shapes testbed. All implement ``methods.backbone.Backbone``; this
module holds what the families share (the diffusers backbone, its conditioning, LoRA, checkpoint loading).

Loading follows diffusers' conventions: ``from_pretrained(hub_id_or_local_dir)`` with the usual subfolders
(``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``). Architectures with random weights are built from
configs committed in ``bench/configs/<name>/`` (nothing is downloaded); memory and throughput do not depend on weight
values. The LoRA (peft) sits on the UNet attention projections; it is saved as the diffusers LoRA safetensors that
``pipeline.load_lora_weights`` reads.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

import offline
from bench.catalog import HUB_IDS
from registry import Registry
from rewards.base import WeightsNotFoundError

CONFIG_DIR = Path(__file__).parent.parent / "configs"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class BackboneError(ValueError):
    """Bad backbone name or setting; one line, user-facing."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; valid: fp32, bf16, fp16")
    return DTYPES[dtype]


@dataclass
class Conditioning:
    """Frozen text conditioning of a batch: prompt embeddings and the empty prompt's (for guidance). SDXL adds the
    pooled text embeddings (of the prompt and of the empty prompt) and the micro-conditioning time ids."""

    embeds: torch.Tensor  # [B, L, D]
    uncond: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor | None = None         # [B, P]   (SDXL)
    uncond_pooled: torch.Tensor | None = None  # [B, P]   (SDXL)
    time_ids: torch.Tensor | None = None       # [B, 6]   (SDXL: original size, crop top-left, target size)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> "Conditioning":
        return Conditioning(*(None if v is None else fn(v) for v in
                              (self.embeds, self.uncond, self.pooled, self.uncond_pooled, self.time_ids)))

    def repeat(self, n: int) -> "Conditioning":
        """Each prompt ``n`` times in a row (``repeat_interleave``), matching ``latents.repeat_interleave(n)``."""
        return self._map(lambda v: v.repeat_interleave(n, 0))

    def index(self, idx: torch.Tensor | slice) -> "Conditioning":
        return self._map(lambda v: v[idx])


class DiffusersBackbone(nn.Module):
    """A text-conditioned ``UNet2DConditionModel`` with a CLIP text encoder, a DDIM schedule and (optionally) a VAE.

    ``vae=None`` means pixel space (the shapes testbed): ``decode(x) = (x + 1) / 2``. Frozen weights are held in
    ``dtype``; LoRA weights stay fp32 (peft's adapter autocast). The sampling chain itself runs in fp32.
    """

    #: the denoiser's key prefix in diffusers' LoRA files (``unet.`` here; SD3/FLUX: ``transformer.``)
    denoiser_prefix = "unet"
    #: the attention projections the LoRA adapts
    lora_targets = LORA_TARGETS

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, *, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32, lora_rank: int | None = 4, lora_alpha: float | None = None,
                 gradient_checkpointing: bool = False, name: str = "diffusers", resolution: int | None = None,
                 vae_path: str | None = None):
        super().__init__()
        self.name = name
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        if vae_path is not None:
            vae = load_vae(vae_path, vae, name)
        self.unet, self.text_encoder, self.tokenizer, self.scheduler, self.vae = unet, text_encoder, tokenizer, scheduler, vae
        for module in (unet, text_encoder, vae):
            if module is not None:
                module.requires_grad_(False).eval().to(self.device, self.dtype)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.lora_rank = lora_rank
        if lora_rank:
            if lora_rank < 1:
                raise BackboneError(f"lora_rank must be >= 1, got {lora_rank}")
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank, init_lora_weights="gaussian",
                                        target_modules=self.lora_targets), adapter_name="default")
            for p in self.trainable_parameters():
                p.data = p.data.float()
        self._uncond: torch.Tensor | None = None
        self._latent_size = self.default_latent_size()
        if resolution is not None:
            self._latent_size = self.check_resolution(resolution) // self.vae_factor

    # ------------------------------------------------------------------------------------------------- protocol
    def default_latent_size(self) -> int:
        """The latent size the model samples at without ``--resolution``: its denoiser's trained size."""
        return self.unet.config.sample_size

    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel (1 in pixel space)."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution_multiple(self) -> int:
        """Image sizes this backbone can sample: multiples of the VAE factor × the UNet's total downsampling."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_resolution(self, resolution: int) -> int:
        if self.vae is None and resolution != self.unet.config.sample_size:
            raise BackboneError(f"{self.name} is a pixel-space model trained at {self.unet.config.sample_size} px: "
                                f"--resolution {resolution} is not available")
        if resolution < 1 or resolution % self.resolution_multiple:
            raise BackboneError(f"--resolution {resolution}: {self.name} needs a positive multiple of "
                                f"{self.resolution_multiple} (VAE factor {self.vae_factor} × the UNet's downsampling)")
        return resolution
    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def latent_size(self) -> int:
        return self._latent_size

    @property
    def image_size(self) -> int:
        return self.latent_size * self.vae_factor

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.latent_channels, self.latent_size, self.latent_size)

    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        if isinstance(prompts, str):
            raise BackboneError("encode_prompts takes a list of prompts, not a single string")
        if self._uncond is None:
            self._uncond = self._embed([""])
        embeds = self._embed(prompts)
        return Conditioning(embeds, self._uncond.expand(len(prompts), -1, -1))

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                      guidance_scale: float) -> torch.Tensor:
        """UNet output with classifier-free guidance (applied when ``guidance_scale > 1``, as diffusers does).
        ``timestep``: one for the batch, or one per row ([B])."""
        x = latents.to(self.dtype)
        if guidance_scale > 1.0:
            t = torch.cat([timestep, timestep]) if timestep.ndim == 1 and len(timestep) > 1 else timestep
            out = self.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond.uncond, cond.embeds])).sample
            uncond, text = out.float().chunk(2)
            return uncond + guidance_scale * (text - uncond)
        return self.unet(x, timestep, encoder_hidden_states=cond.embeds).sample.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]. Under gradient the VAE decode is checkpointed: its activations (the largest of
        any module at 512 px) are recomputed in backward instead of held through the reward's forward and backward."""
        if self.vae is None:
            images = latents.float()
        elif torch.is_grad_enabled() and latents.requires_grad:
            from torch.utils.checkpoint import checkpoint

            images = checkpoint(self._vae_decode, latents, use_reentrant=False)
        else:
            images = self._vae_decode(latents)
        return (images / 2 + 0.5).clamp(0, 1)

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.dtype) / self.vae.config.scaling_factor).sample.float()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    # --------------------------------------------------------------------------------------------------- LoRA
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA in diffusers' key format (``unet.…lora_A.weight``; ``transformer.…`` for SD3), as the pipelines'
        ``load_lora_weights`` expect."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name="default"))
        return {f"{self.denoiser_prefix}.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}

    def save_lora(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` atomically (a crash never leaves a half-written file)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "pytorch_lora_weights.safetensors"
        tmp = path.with_suffix(".tmp")
        meta = {"format": "pt", "lora_rank": str(self.lora_rank), "backbone": self.name}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        save_file(self.lora_state_dict(), str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    def load_loras(self, loras: Sequence[tuple[str, float]]) -> None:
        """Apply LoRA files with scales (``[(path, 0.6), (path2, 0.4)]``): θ + Σ scale_i · Δ_i. Replaces the trainable
        adapter's role for sampling; the files are diffusers LoRA safetensors (a file or a directory holding one)."""
        names, weights = [], []
        for i, (path, scale) in enumerate(loras):
            path = Path(path)
            if path.is_dir():
                path = path / "pytorch_lora_weights.safetensors"
            if not path.exists():
                raise WeightsNotFoundError(f"LoRA file not found: {path}")
            name = f"lora{i}"
            self.unet.load_lora_adapter(str(path), prefix=self.denoiser_prefix, adapter_name=name)
            names.append(name)
            weights.append(float(scale))
        self.unet.set_adapters(names, weights)
        self.unet.to(self.device)
        self.unet.requires_grad_(False)

    def set_lora_scale(self, scale: float) -> None:
        """Scale the trainable adapter: 0 = the base model, 1 = the tuned model."""
        self.unet.set_adapters(["default"], [float(scale)])

    # ---------------------------------------------------------------------------------------------- pipeline
    def pipeline(self):
        """A diffusers ``StableDiffusionPipeline`` over the same modules (needs a VAE)."""
        from diffusers import StableDiffusionPipeline

        if self.vae is None:
            raise BackboneError(f"{self.name} is pixel-space; it has no StableDiffusionPipeline")
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


def write_slow_tokenizer_files(directory: str | os.PathLike) -> None:
    """Add ``vocab.json`` and ``merges.txt`` (the official SD checkpoints' tokenizer layout) beside the
    ``tokenizer.json`` that transformers 5 saves: transformers 4.x's ``CLIPTokenizer`` (what diffusers pipelines and
    trl load with it) reads only those two files."""
    d = Path(directory)
    model = json.loads((d / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (d / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))


def t5_sequence_length(tokenizer, default: int) -> int:
    """T5 tokens per prompt for a checkpoint: the pipeline's default (SD3 256, FLUX 512), or the T5 tokenizer's
    ``model_max_length`` where that is shorter (``export-backbone`` records a small model's own length there, so a
    tiny model read back through ``--backbone-path`` encodes prompts as it did before)."""
    n = getattr(tokenizer, "model_max_length", None)
    return min(default, int(n)) if isinstance(n, int) and n > 0 else default


def record_t5_sequence_length(directory: str | os.PathLike, length: int) -> None:
    """Write ``length`` as the ``model_max_length`` of the tokenizer saved in ``directory``
    (``tokenizer_config.json``), which ``t5_sequence_length`` reads back."""
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["model_max_length"] = int(length)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------- builders
@contextlib.contextmanager
def seeded_build(seed: int, dtype: str | torch.dtype = torch.float32):
    """Random weights drawn from ``seed`` and built directly in ``dtype`` (a multi-billion-parameter model never
    exists in fp32 when bf16 is asked for: half the peak); the global RNG and default dtype are restored after."""
    state, default = torch.random.get_rng_state(), torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(parse_dtype(dtype))
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
        torch.set_default_dtype(default)


def _ddim(config: dict) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config)


PART_FILES = {"unet": "diffusion_pytorch_model.safetensors", "transformer": "diffusion_pytorch_model.safetensors",
              "vae": "diffusion_pytorch_model.safetensors", "text_encoder_3": "model.safetensors",
              "text_encoder_2": "model.safetensors",
              "text_encoder": "model.safetensors", "tokenizer": "vocab.json", "scheduler": "scheduler_config.json"}


def part_loader(path_or_id: str, *, revision: str | None = None, name: str | None = None) -> Callable[..., Any]:
    """``part(cls, subfolder)``: one component of a diffusers checkpoint (hub id or local directory), local files
    first (an offline machine never waits on the network); a missing one raises one line naming the file and the
    flag that supplies it."""
    local = Path(path_or_id).expanduser().exists()
    from bench.catalog import path_env

    env = path_env(name) if name in HUB_IDS else None
    supply = f"--backbone-path DIR (a local diffusers directory){f' or set {env}' if env else ''}"

    def part(cls, sub, **extra):
        where = f"local directory {str(path_or_id)!r}" if local else f"hub id {path_or_id!r}"
        try:
            return cls.from_pretrained(path_or_id, subfolder=sub, revision=revision, local_files_only=True, **extra)
        except (OSError, ValueError) as err:
            if local or offline.offline():
                why = type(err).__name__ if local else f"not in the local cache and {offline.why()}"
                raise WeightsNotFoundError(f"backbone weights missing: {sub}/{PART_FILES.get(sub, '')} of {where} "
                                           f"({why}); pass {supply}") from None
        try:
            return cls.from_pretrained(path_or_id, subfolder=sub, revision=revision, **extra)
        except (OSError, ValueError) as err:
            raise WeightsNotFoundError(
                f"backbone weights missing: {sub}/{PART_FILES.get(sub, '')} of {where} could not be loaded "
                f"({type(err).__name__}); download it on a machine with access, or pass {supply}") from None

    return part


REGISTRY = Registry("backbone", BackboneError)
register, available, describe = REGISTRY.register, REGISTRY.available, REGISTRY.describe


def load_vae(path: str, current, backbone: str):
    """An ``AutoencoderKL`` (local directory or hub id; a pipeline directory's ``vae/`` too) that replaces
    ``backbone``'s own, e.g. an fp16-fixed SDXL VAE (madebyollin/sdxl-vae-fp16-fix, whose config says
    ``force_upcast: false``, so it decodes in fp16). It must have the same latent space: channels and downsampling."""
    from diffusers import AutoencoderKL

    if current is None:
        raise BackboneError(f"--vae-path: {backbone} is a pixel-space model; it has no VAE to replace")
    sub = Path(path).expanduser()
    vae = AutoencoderKL.from_pretrained(str(sub), subfolder="vae" if (sub / "vae" / "config.json").is_file() else None)
    for key in ("latent_channels", "block_out_channels"):
        mine, theirs = current.config[key], vae.config[key]
        if key == "block_out_channels":
            mine, theirs = len(mine), len(theirs)
        if mine != theirs:
            raise BackboneError(f"--vae-path {path}: its {key} ({theirs}) differs from {backbone}'s VAE ({mine}); "
                                f"it would not decode this model's latents")
    return vae


def create(name: str, **kw) -> DiffusersBackbone:
    return REGISTRY.get(name)(**kw)


from bench.backbones import flux, sd, sd3, sdxl  # noqa: E402,F401  (each family registers its backbones)
from bench.backbones.sd import from_config_dir, from_pretrained  # noqa: E402,F401
