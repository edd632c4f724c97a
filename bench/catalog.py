"""The names the project registers, as plain data, so the CLI judges a mistyped name in milliseconds instead of
after importing torch, diffusers and open_clip (seconds). ``tests/test_cli.py`` checks that these lists equal the
registries, so they cannot drift; names that plugins (``--plugins``) register are judged by the registries
themselves, after the imports.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

from bench.args import UsageError
from bench.presets import ALL_METHODS, BEYOND_METHODS

METHODS: tuple[str, ...] = tuple(sorted(ALL_METHODS + BEYOND_METHODS))
REWARDS: tuple[str, ...] = (
    "aesthetic", "hpsv2", "imagereward", "jpeg-compressibility", "jpeg-compressibility-surrogate",
    "jpeg-incompressibility", "jpeg-incompressibility-surrogate", "owlvit", "pickscore", "resnet50-class",
    "shapes-aesthetic", "shapes-alignment", "shapes-classifier", "shapes-detector", "shapes-gold-aesthetic",
)
BACKBONES: tuple[str, ...] = ("flux-dev", "flux-random", "sd15", "sd15-random", "sd21", "sd21-random", "sd35m",
                               "sd35m-random", "sdxl", "sdxl-random", "shapes", "shapes-flow", "tiny", "tiny-flux",
                               "tiny-sd3", "tiny-xl")
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: flow-matching (rectified-flow) backbones: sampled by the flow sampler; a method that cannot run on them (or only on
#: them) is refused from the name, before any weights load
FLOW_BACKBONES: tuple[str, ...] = ("flux-dev", "flux-random", "sd35m", "sd35m-random", "shapes-flow", "tiny-flux",
                                    "tiny-sd3")


def is_flow(backbone: str) -> bool:
    return backbone in FLOW_BACKBONES


#: image sizes each backbone can sample (``--resolution``): a multiple of this (VAE factor × UNet downsampling), or
#: for a pixel-space model its one trained size (negative: exactly that size). A test checks these against the models.
RESOLUTION = {"sd15": 64, "sd15-random": 64, "sd21": 64, "sd21-random": 64, "tiny": 4, "tiny-xl": 4, "sdxl": 32,
              "sdxl-random": 32, "shapes": -24, "shapes-flow": -24, "sd35m": 16, "sd35m-random": 16,
              "tiny-sd3": 4,
              "flux-dev": 16, "flux-random": 16, "tiny-flux": 4}


def check_resolution(backbone: str, resolution: int | None) -> None:
    if resolution is None or backbone not in RESOLUTION:
        return
    rule = RESOLUTION[backbone]
    if rule < 0 and resolution != -rule:
        raise UsageError(f"--resolution {resolution}: {backbone} is a pixel-space model trained at {-rule} px only")
    if rule > 0 and (resolution < rule or resolution % rule):
        raise UsageError(f"--resolution {resolution}: {backbone} needs a positive multiple of {rule} "
                         f"(VAE factor × the UNet's downsampling)")


#: backbones whose weights come from the hub (or --backbone-path DIR, or the variable BENCH_<NAME>_PATH)
HUB_IDS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd21": "stabilityai/stable-diffusion-2-1",
           "sdxl": "stabilityai/stable-diffusion-xl-base-1.0", "sd35m": "stabilityai/stable-diffusion-3.5-medium",
           "flux-dev": "black-forest-labs/FLUX.1-dev"}
#: the subfolders a local diffusers directory of each family must hold
LAYOUT = {"sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
          "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
          "sd3": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
          "flux": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")}


def family(backbone: str) -> str:
    """The LAYOUT family of a backbone name."""
    for prefix, fam in (("sdxl", "sdxl"), ("sd35", "sd3"), ("flux", "flux")):
        if backbone.startswith(prefix):
            return fam
    return "sd"


def path_env(backbone: str) -> str:
    """The environment variable that names a hub backbone's local directory: BENCH_SD15_PATH, BENCH_FLUX_DEV_PATH."""
    return f"BENCH_{backbone.upper().replace('-', '_')}_PATH"
#: the first hub file each real reward loads (repo, file, the argument that takes a local path instead); a test checks
#: these equal the reward modules' constants. ``{hps_file}`` is HPS_FILES[version] (the reward's ``version`` argument).
HPS_FILES = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}
REWARD_HUB_FILES = {
    "aesthetic": ("camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth", "head_path"),
    "hpsv2": ("xswu/HPSv2", "{hps_file}", "checkpoint"),
    "pickscore": ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "tokenizer_config.json", "processor"),
    "imagereward": ("THUDM/ImageReward", "ImageReward.pt", "checkpoint"),
    "owlvit": ("google/owlvit-base-patch32", "config.json", "model"),
}


def check_hub_reward(name: str, kwargs: dict) -> None:
    """A real reward whose first weight file is neither given locally nor cached, on an offline machine: one line now,
    before the model libraries load."""
    if name not in REWARD_HUB_FILES:
        return
    repo, filename, arg = REWARD_HUB_FILES[name]
    if kwargs.get(arg) or kwargs.get("weights", "pretrained") != "pretrained":
        return
    filename = filename.format(hps_file=HPS_FILES.get(str(kwargs.get("version", "2.1")), "HPS_v2.1_compressed.pt"))
    import offline

    if offline.cached(repo, filename) or not offline.offline():
        return
    raise UsageError(f"{name}: {filename!r} of hub repo {repo!r} is not in the local cache and {offline.why()}; "
                     f"download it and pass --reward-arg {arg}=<path>")


def check_backbone_dir(name: str, path: str | None) -> None:
    """A local directory for a hub backbone lacks a subfolder its family needs (SDXL: the second text encoder and
    tokenizer too): one line now, before any model loads."""
    from pathlib import Path

    if name not in HUB_IDS or not path or not Path(path).expanduser().is_dir():
        return
    need = LAYOUT[family(name)]
    missing = [d for d in need if not (Path(path).expanduser() / d).is_dir()]
    if missing:
        raise UsageError(f"--backbone-path {path}: a {name} directory needs {', '.join(d + '/' for d in need)}; "
                         f"missing {', '.join(d + '/' for d in missing)}")


def check_vae_path(backbone: str, path: str | None) -> None:
    """``--vae-path`` on a pixel-space backbone, or a local path that is not an AutoencoderKL directory (its
    ``config.json``, or a pipeline directory's ``vae/config.json``): one line now, before any model loads."""
    from pathlib import Path

    if not path:
        return
    if RESOLUTION.get(backbone, 0) < 0:
        raise UsageError(f"--vae-path: {backbone} is a pixel-space model; it has no VAE to replace")
    local = Path(path).expanduser()
    if path.startswith((".", "/", "~")) and not local.exists():
        raise UsageError(f"--vae-path {path!r} not found: give an AutoencoderKL directory or a hub id")
    if local.exists():
        if not ((local / "config.json").is_file() or (local / "vae" / "config.json").is_file()):
            raise UsageError(f"--vae-path {path}: not an AutoencoderKL directory (no config.json, no vae/config.json)")


def check_hub_backbone(name: str, path: str | None) -> None:
    """A hub backbone with no local path, not in the local cache, on an offline machine: one line now (milliseconds
    with ``HF_HUB_OFFLINE``, at most a 2 s connection probe otherwise), not a minute of retries later."""
    import os

    if name not in HUB_IDS or path or os.environ.get(path_env(name)):
        return
    import offline

    repo, (denoiser, *rest) = HUB_IDS[name], LAYOUT[family(name)]
    if offline.cached(repo, f"{denoiser}/config.json") or not offline.offline():
        return
    raise UsageError(f"backbone {name} needs {denoiser}/diffusion_pytorch_model.safetensors (and "
                     f"{', '.join(d + '/' for d in rest)}) of hub id {repo!r}: not in the local cache and "
                     f"{offline.why()}; pass --backbone-path DIR (a local diffusers directory) or set {path_env(name)}")

_KNOWN = {"method": METHODS, "reward": REWARDS, "backbone": BACKBONES}


def check(kind: str, name: str, *, wildcard: bool = False, extra: Sequence[str] = ()) -> None:
    """``UsageError`` unless ``name`` (or, with ``wildcard``, each comma-separated pattern) names a known ``kind``."""
    known = sorted(set(_KNOWN[kind]) | set(extra))
    parts = [p.strip() for p in name.split(",") if p.strip()] if wildcard else [name]
    for part in parts or [name]:
        if not any(fnmatch.fnmatch(n, part) for n in known) if wildcard else part not in known:
            raise UsageError(f"unknown {kind} {part!r}; valid: {', '.join(known)}")


def load_registries(plugins: Sequence[str] = ()) -> None:
    """Import the modules that register backbones, methods and rewards (the testbed registers its own), then any
    plugins. This is where torch, diffusers and transformers get imported."""
    import importlib

    import methods  # noqa: F401
    import rewards  # noqa: F401
    from bench import backbones  # noqa: F401

    for name in ("bench.testbed",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UsageError(f"--plugins: cannot import {name!r}: {err}") from None
