"""Finding weights (hub or local path) and reading model outputs across transformers versions.

Every reward factory takes a local path for each weight it needs; without one it asks the Hugging Face hub (cache
first). When neither works the user gets one line naming the file and how to supply it (``WeightsNotFoundError``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from .base import WeightsNotFoundError


def _offline() -> bool:
    """``HF_HUB_OFFLINE``, or the hub did not answer a first connection (``offline.py``; then no retries)."""
    import offline

    return offline.offline()


WEIGHTS = ("pretrained", "random", "random-small")


def random_weights(reward: str, weights: str, build: Callable[[bool], Any], device="cpu", dtype=None) -> Any:
    """``weights="random"``: the reward's full architecture with seeded random weights in its official layout, built
    in memory (no download; memory and speed are the real model's, scores are meaningless). ``"random-small"``: a
    reduced config of the same classes at the real input size. Used by the ``smoke-real`` preset and systems runs."""
    if weights not in WEIGHTS[1:]:
        from .base import RewardError

        raise RewardError(f"{reward}: weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    out = build(weights == "random").to(device=device, **({"dtype": dtype} if dtype is not None else {}))
    out.name = reward
    return out


def weight_file(path: str | os.PathLike | None, repo_id: str, filename: str, arg: str, reward: str) -> Path:
    """A local weight file: ``path`` if given (it must exist), else ``filename`` from hub repo ``repo_id``.

    ``arg`` is the factory argument that takes a local path; it is named in the error message.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / filename
        if not p.is_file():
            raise WeightsNotFoundError(f"{reward}: weight file {str(p)!r} not found; pass {arg}=<path to {filename}>")
        return p
    try:
        from huggingface_hub import hf_hub_download

        try:  # the cache first, so an offline machine with a warm cache never waits on the network
            return Path(hf_hub_download(repo_id, filename, local_files_only=True))
        except Exception:
            if _offline():
                raise
            return Path(hf_hub_download(repo_id, filename))
    except Exception as err:
        raise WeightsNotFoundError(
            f"{reward}: cannot get {filename!r} from hub repo {repo_id!r} (offline or not cached: {type(err).__name__}); "
            f"download it and pass {arg}=<path to {filename}>"
        ) from None


def from_pretrained(cls: Any, name_or_path: str | os.PathLike, arg: str, reward: str, **kwargs) -> Any:
    """``cls.from_pretrained`` (a transformers model, tokenizer or processor) with the one-line missing-weights error."""
    local = Path(name_or_path).expanduser()
    looks_local = local.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1
    if looks_local and not local.exists():
        raise WeightsNotFoundError(f"{reward}: {str(local)!r} not found; pass {arg}=<local directory or hub id>")
    try:
        try:
            return cls.from_pretrained(str(name_or_path), local_files_only=True, **kwargs)
        except Exception:
            if looks_local or _offline():
                raise
            return cls.from_pretrained(str(name_or_path), **kwargs)
    except Exception as err:
        raise WeightsNotFoundError(
            f"{reward}: cannot load {cls.__name__} from {str(name_or_path)!r} (offline or not cached: {type(err).__name__}); "
            f"download it and pass {arg}=<local directory>"
        ) from None


def load_state_dict(path: str | os.PathLike, reward: str, arg: str) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth``/``.bin`` (torch pickle, weights only) or ``.safetensors`` file; a corrupt or truncated file
    gives one clear line."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsNotFoundError(
            f"{reward}: {str(path)!r} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            f"re-download it and pass {arg}=<path>"
        ) from None


def check_keys(reward: str, path: str | os.PathLike, missing: list[str], unexpected: list[str]) -> None:
    """Strict loading: any missing or unexpected key is an error naming the first few."""
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsNotFoundError(f"{reward}: {str(path)!r} is not the expected checkpoint: {'; '.join(parts)}")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], reward: str, path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with shape errors and key errors reported on one line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    check_keys(reward, path, missing, unexpected)
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsNotFoundError(f"{reward}: {str(path)!r} has wrong shapes: {'; '.join(bad[:3])}")
    module.load_state_dict(state, strict=True)


def embedding(output: Any, attr: str = "image_embeds") -> torch.Tensor:
    """The embedding from a transformers output: a tensor (transformers 4 ``get_*_features``), an output object whose
    ``attr`` (``image_embeds``/``text_embeds``) or ``pooler_output`` holds it (transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in (attr, "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an embedding in {type(output).__name__}")


def module_dtype_device(module: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in module.parameters():
        return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def to_module(images: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """Move (differentiably) preprocessed pixels to the module's device and floating dtype."""
    dtype, device = module_dtype_device(module)
    return images.to(device=device, dtype=dtype)


Preprocess = Callable[[torch.Tensor], torch.Tensor]
