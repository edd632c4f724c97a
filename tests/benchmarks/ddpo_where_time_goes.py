"""Where DDPO's time goes on the shapes testbed, against the bound its math sets.

DDPO's work per sample is fixed by its estimator: T guided denoiser calls to sample (no gradient), one reward call,
and T guided denoiser calls with backward to recompute each transition's log-prob under the current policy (one
inner epoch, timestep_fraction 1). The bound is those calls timed alone, at the batch sizes the run uses:

    bound per epoch = (E / b) · T · t_fwd(b) + (E / m) · T · t_fwd+bwd(m) + reward calls

(E samples per epoch, b the sampling batch, m the PPO minibatch). The script runs whole epochs through
``Method.step`` (as a cell does) and prints samples/s, the split sampling · reward · backward, and measured / bound.

    PYTHONPATH=. python tests/benchmarks/ddpo_where_time_goes.py [--threads 2] [--epochs 2]
"""
from __future__ import annotations

import argparse
import time

import torch


def timed(fn, reps: int = 3) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import bench.testbed  # noqa: F401  (registers the shapes backbone and rewards)
    import methods
    import rewards
    from bench import backbones
    from bench.cell import read_prompts
    from methods.sampling import GRAD, NO_GRAD, predict

    prompts = read_prompts("shapes")
    configs = {  # the paper preset before (one batch per update, graph reuse) and after (its epochs)
        "per batch of 8 (before)": dict(batch=8, kw=dict(samples_per_epoch=0, minibatch_size=64)),
        "epoch 64 / minibatch 16 (after)": dict(batch=8, kw=dict(samples_per_epoch=64, minibatch_size=16)),
    }
    reward = rewards.create("shapes-aesthetic")
    for name, c in configs.items():
        torch.manual_seed(0)
        bb = backbones.create("shapes")
        m = methods.create("ddpo", bb, reward, seed=0, num_steps=args.steps, guidance_scale=3.0, eta=1.0, **c["kw"])
        b = c["batch"]
        epoch = c["kw"]["samples_per_epoch"] or b
        mb = min(c["kw"]["minibatch_size"], epoch)
        gen = torch.Generator().manual_seed(0)
        batches = args.epochs * epoch // b
        # warm-up epoch (the first call at a batch size measures what the reuse of sampling graphs saves)
        for _ in range(epoch // b):
            m.step([prompts[i] for i in torch.randint(len(prompts), (b,), generator=gen).tolist()])
        totals: dict[str, float] = {}
        start = time.perf_counter()
        for _ in range(batches):
            metrics = m.step([prompts[i] for i in torch.randint(len(prompts), (b,), generator=gen).tolist()])
            for k, v in metrics.items():
                if k.startswith("time_"):
                    totals[k] = totals.get(k, 0.0) + float(v)
        wall = time.perf_counter() - start
        samples = batches * b

        x = torch.randn(bb.latent_shape(b))
        cond = bb.encode_prompts(prompts[:b])
        t = torch.full((b,), 500)
        f = timed(lambda: predict(bb, x, t, cond, 3.0, NO_GRAD))
        mb = b if epoch == b and c["kw"]["minibatch_size"] >= b else mb
        xm = torch.randn(bb.latent_shape(mb))
        cm = bb.encode_prompts(prompts[:mb])
        tm = torch.full((mb,), 500)

        def fwd_bwd():
            out = predict(bb, xm, tm, cm, 3.0, GRAD)
            out.float().pow(2).mean().backward()
            m.optimizer.zero_grad(set_to_none=True)

        fb = timed(fwd_bwd)
        imgs = torch.rand(b, 3, 24, 24)
        r = timed(lambda: reward(imgs, prompts[:b]))
        if epoch == b and c["kw"]["minibatch_size"] >= b:  # the sampling graphs train the only minibatch: no
            per_epoch_bound = args.steps * fb + r            # separate no-grad forward (assumes all steps fit)
        else:
            per_epoch_bound = (epoch / b) * args.steps * f + (epoch / mb) * args.steps * fb + (epoch / b) * r
        bound = per_epoch_bound * samples / epoch
        print(f"{name}: {samples / wall:.3f} samples/s over {samples} samples ({wall:.1f} s); split per sample "
              f"sampling {totals.get('time_sampling', 0) / samples:.3f} s · reward {totals.get('time_reward', 0) / samples:.4f} s"
              f" · backward {totals.get('time_backward', 0) / samples:.3f} s; bound {bound / samples:.3f} s/sample "
              f"(t_fwd({b}) {f * 1e3:.1f} ms, t_fwd+bwd({mb}) {fb * 1e3:.1f} ms); measured / bound "
              f"{wall / bound:.2f}; optimiser steps per epoch {metrics.get('optimizer_steps')}")


if __name__ == "__main__":
    main()
