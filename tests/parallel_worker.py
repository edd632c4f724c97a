"""What each process of the data-parallel equality test runs (tests/test_parallel.py): every method for a few steps
on the tiny backbone with the whole batch's prompts, recording what 1 and 2 processes must agree on."""
from __future__ import annotations

import torch

import methods
from bench.cell import Evaluator
from methods.parallel import SINGLE, Shard
from methods_testkit import CountingReward

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a red square"]
EVAL_PROMPTS = ["a blue circle", "a green square", "a red triangle"]  # 3 × 2 images: an uneven split over 2
#: small settings; DDPO with two PPO minibatches (its rows split unevenly over processes, and an optimiser step
#: inside its epoch; a clip range wide enough that the second minibatch, after that step, still has a gradient)
#: and a buffer its second step reads (the tracker must see every process's rewards)
SMALL = {"ddpo": {"minibatch_size": 2, "clip_range": 10.0, "buffer_size": 8, "min_count": 4}, "refl": {}, "draft": {}, "draft-1": {},
         "draft-k": {"truncation_steps": 2}, "draft-lv": {}, "alignprop": {},
         "drtune": {"trained_steps": 2, "early_stop_max": 2}}
STEPS = 2


def _backbone():
    """The tiny backbone, its LoRA initialised from a fixed seed (the same in every process, as a cell's is)."""
    from bench import backbones

    torch.manual_seed(0)
    backbone = backbones.create("tiny", seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero (peft's init): randomised, so every LoRA weight gets a gradient
        for n, p in backbone.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return backbone


def run(name: str, shard: Shard = SINGLE) -> dict:
    torch.set_num_threads(1)
    backbone = _backbone()
    reward = CountingReward()
    m = methods.create(name, backbone, reward, num_steps=4, guidance_scale=5.0, seed=3, lr=1e-2, shard=shard,
                       **SMALL[name])
    first: list[torch.Tensor] = []  # the gradient the first optimiser step applies (all-reduced and clipped)
    step = m.optimizer.step

    def recording_step(*a, **k):
        if not first:
            first.append(torch.cat([p.grad.reshape(-1) for p in m.params]).clone())
        return step(*a, **k)

    m.optimizer.step = recording_step
    m.step(PROMPTS)
    out = {"images": [i.clone() for i in reward.images], "prompts": [list(p) for p in reward.prompts],
           "rewards": [(i * reward.pattern).mean(dim=(1, 2, 3)) * 10 for i in reward.images], "grad": first[0]}
    for _ in range(STEPS - 1):
        m.step(PROMPTS)
    out["params"] = torch.cat([p.detach().reshape(-1) for p in m.params]).clone()
    out["total_samples"] = m.total_samples
    scores, images = Evaluator(backbone, {"counting": CountingReward()}, EVAL_PROMPTS, num_steps=4,
                               guidance_scale=5.0, images_per_prompt=2, seed=11, shard=shard)()
    out["eval"] = scores["counting"]
    out["eval_images"] = len(images)
    return out


def worker(rank: int, world: int, init_file: str, names: list[str], out_file: str) -> None:
    """Runs ``names`` as rank ``rank`` of ``world``; writes what it recorded to ``out_file`` (torch.save)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({name: run(name, Shard(rank, world)) for name in names}, out_file)
    finally:
        dist.destroy_process_group()
