"""The reward zoo: each reward model behind one differentiable interface (see rewards/base.py)."""
from .base import Reward, RewardError, WeightsNotFoundError, available, create, describe, register  # noqa: F401
from . import jpeg  # noqa: F401  (registers jpeg-*)
from . import aesthetic, classifier, clip_score, detection, imagereward  # noqa: F401  (register the zoo)

__all__ = ["Reward", "RewardError", "WeightsNotFoundError", "available", "create", "describe", "register"]
