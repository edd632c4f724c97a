import os
import warnings

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*kept in float32.*")

from bench import backbones  # noqa: E402
from foundation_testkit import MeanPixelReward, randomize_lora  # noqa: E402


def _quiet():
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


_quiet()


@pytest.fixture
def tiny():
    """A fresh tiny random SD-architecture backbone (LoRA rank 4) with its LoRA B matrices randomised, so the LoRA
    changes the output and both A and B receive gradients."""
    torch.manual_seed(0)
    bb = backbones.create("tiny", seed=0)
    randomize_lora(bb)
    return bb


@pytest.fixture
def linear_reward():
    return MeanPixelReward().freeze()
