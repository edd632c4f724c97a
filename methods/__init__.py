"""Fine-tuning methods. Each is a plan on the one sampler (methods/sampling.py) plus a loss; see DESIGN.md."""
from .base import Method, MethodConfig, MethodError, available, create, describe, get, register  # noqa: F401
from . import draft  # noqa: F401  (registers draft, draft-1, draft-k, draft-lv)
from . import alignprop, ddpo, drtune, grpo, nft, refl  # noqa: F401  (register alignprop, ddpo, drtune, grpo, flow-grpo, diffusion-nft, refl)

__all__ = ["Method", "MethodConfig", "MethodError", "available", "create", "describe", "get", "register"]
