"""How far can a testbed reward be pushed from the base model's samples? Pixel-space gradient ascent (Adam on the
pixels themselves, no diffusion model in the loop) as an upper bound on what fine-tuning could buy, beside the
reward's spread across images and its value under shuffled captions (the floor of a caption-dependent reward).

    python scripts/reward_headroom.py [--rewards shapes-alignment shapes-aesthetic] [--prompts 16] [--steps 30]

A reward whose ascent gains little per unit of pixel change (relative to its spread across images) leaves the
fine-tuning methods little signal against their gradient noise: that is what the ``paper`` preset's shapes-alignment
rows show (README, "Science on the testbed").
"""
from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rewards", nargs="+", default=["shapes-alignment", "shapes-aesthetic"])
    ap.add_argument("--prompts", type=int, default=16, help="the first N training prompts of the shapes world")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import bench.testbed  # noqa: F401  (registers the testbed backbone and rewards)
    import rewards
    from bench import backbones
    from bench.cell import read_prompts
    from methods.sampling import sample

    backbone = backbones.create("shapes", device="cpu", lora_rank=None)
    prompts = read_prompts("shapes")[: args.prompts]
    noise = torch.randn(backbone.latent_shape(len(prompts)), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        out = sample(backbone, backbone.encode_prompts(prompts), noise, num_steps=10, guidance_scale=3.0, eta=0.0)
        base = backbone.decode(out.latents)
    shuffled = prompts[1:] + prompts[:1]
    print(f"{len(prompts)} base-model images (10 DDIM steps, CFG 3); Adam on the pixels, lr {args.lr}")
    for name in args.rewards:
        reward = rewards.create(name)
        if not reward.differentiable:
            print(f"{name}: not differentiable, skipped")
            continue
        x = base.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=args.lr)
        with torch.no_grad():
            s0 = reward(base, prompts)
            floor = reward(base, shuffled).mean().item()
        for _ in range(args.steps):
            s = reward(x.clamp(0, 1), prompts)
            opt.zero_grad()
            (-s.sum()).backward()
            opt.step()
        with torch.no_grad():
            s1 = reward(x.clamp(0, 1), prompts)
        gain = (s1 - s0).mean().item()
        print(f"{name}: base {s0.mean().item():.3f} (sd over images {s0.std().item():.3f}; shuffled captions "
              f"{floor:.3f}) -> {s1.mean().item():.3f} after {args.steps} steps: +{gain:.3f} = "
              f"{gain / s0.std().item():.2f} sd, max pixel change {(x.detach().clamp(0, 1) - base).abs().max():.3f}")


if __name__ == "__main__":
    main()
