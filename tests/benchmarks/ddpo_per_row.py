"""DDPO's PPO epoch: one guided UNet call per minibatch position (per-row timesteps, the current code) against one
call per distinct step (the previous grouping), measured interleaved in one process on the tiny SD pipeline.

    python tests/benchmarks/ddpo_per_row.py [--reps 3] [--resolution 64]
"""
from __future__ import annotations

import argparse
import time

import torch


def grouped_log_probs(m, trajectory, cond, rows, indices):
    """The previous implementation: rows grouped by step, one denoiser call per distinct step."""
    from methods.sampling import GRAD, transition_log_prob

    out = torch.empty(len(rows), device=trajectory.device)
    for index in torch.unique(indices).tolist():
        where = torch.nonzero(indices == index).flatten()
        r = rows[where]
        lp = transition_log_prob(m.backbone, m.schedule, index, trajectory[r, index], trajectory[r, index + 1],
                                 cond.index(r), m.config.guidance_scale, m.config.eta, GRAD)
        out = out.index_put((where,), lp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import methods
    import rewards
    from bench import backbones, catalog

    catalog.load_registries()
    bb = backbones.create("tiny", resolution=args.resolution, lora_rank=4)
    m = methods.create("ddpo", bb, rewards.create("jpeg-compressibility"), num_steps=args.steps, guidance_scale=5.0,
                       eta=1.0, minibatch_size=args.batch, reuse_sampling_graph=False)  # every term recomputed
    prompts = ["a red cat", "a blue dog", "a green bird", "a bowl of fruit"][: args.batch] * max(1, args.batch // 4)
    per_row = type(m).transition_log_probs
    times = {"per-row": [], "grouped": []}
    for rep in range(args.reps):
        for name in ("grouped", "per-row"):
            m.transition_log_probs = (lambda *a, **k: grouped_log_probs(m, *a[:4])) if name == "grouped" \
                else per_row.__get__(m)
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            m.step(prompts)
            times[name].append(time.perf_counter() - t0)
    g, p = min(times["grouped"]), min(times["per-row"])
    print(f"DDPO step (sampling + PPO epoch), tiny SD at {args.resolution} px, {args.steps} steps, batch {args.batch}, "
          f"1 thread, best of {args.reps}: grouped {g:.2f} s, per-row {p:.2f} s, ratio {p / g:.2f}")


if __name__ == "__main__":
    main()
