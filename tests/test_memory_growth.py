"""Full backpropagation through the chain keeps only each step's input when every UNet call is checkpointed: the
peak of allocated tensor memory (the profiler's allocator events, not process RSS) hardly grows with the number of
sampling steps, and the VAE decode under gradient is checkpointed too."""
import json
import os
import tempfile

import pytest
import torch

import methods
import rewards
from bench import backbones


def peak_allocated_bytes(fn) -> int:
    """Peak of the CPU allocator's total allocated bytes while ``fn`` runs, above the level when it started."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    path = tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    try:
        events = [e for e in json.load(open(path))["traceEvents"] if e.get("name") == "[memory]"]
    finally:
        os.remove(path)
    events.sort(key=lambda e: e["ts"])
    start = events[0]["args"]["Total Allocated"] - events[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in events) - start


def one_step_peak(method: str, num_steps: int, **settings) -> int:
    torch.manual_seed(0)
    bb = backbones.create("tiny", lora_rank=4)
    reward = rewards.create("jpeg-compressibility-surrogate")
    m = methods.create(method, bb, reward, seed=0, num_steps=num_steps, guidance_scale=1.0, **settings)
    return peak_allocated_bytes(lambda: m.step(["a red circle", "a blue square"]))


@pytest.mark.parametrize("method, settings", [("draft", {}), ("alignprop", {"fixed_grad_steps": -1, "checkpoint": True})])
# -1: all steps
def test_full_backprop_peak_at_5x_the_steps_is_at_most_1_2x(method, settings):
    def run(n):
        s = {k: (n if v == -1 else v) for k, v in settings.items()}
        return one_step_peak(method, n, **s)

    p10, p50 = run(6), run(30)
    assert p50 <= 1.2 * p10, f"{method}: peak {p50 / 2**20:.1f} MiB at 30 steps vs {p10 / 2**20:.1f} MiB at 6"


def test_alignprop_auto_checkpointing_stays_within_its_budget(monkeypatch):
    """"auto" holds only as many calls' activations as the budget allows (here two): the peak of a full-backprop step
    does not grow with the steps either, once the per-call bytes are measured."""
    from methods import memory

    def second_step_peak(n):
        torch.manual_seed(0)
        m = methods.create("alignprop", backbones.create("tiny", lora_rank=4),
                           rewards.create("jpeg-compressibility-surrogate"), seed=0, num_steps=n, guidance_scale=1.0,
                           fixed_grad_steps=n)
        m.step(["a red circle", "a blue square"])  # measures one call's saved bytes
        monkeypatch.setattr(memory, "activation_budget", lambda device: 2 * m._call_bytes[2])
        peak = peak_allocated_bytes(lambda: m.step(["a red circle", "a blue square"]))
        assert m.last_plan.count(methods.sampling.GRAD) == 2
        return peak

    p10, p50 = second_step_peak(6), second_step_peak(30)
    assert p50 <= 1.2 * p10


def test_the_measure_sees_growth_without_checkpointing():
    """Power check: DRaFT-K over every step without checkpointing stores every UNet call's activations."""
    p10 = one_step_peak("draft-k", 6, truncation_steps=6, checkpoint=False)
    p50 = one_step_peak("draft-k", 30, truncation_steps=30, checkpoint=False)
    assert p50 > 2 * p10


def test_vae_decode_is_checkpointed_under_gradient():
    bb = backbones.create("tiny", lora_rank=None)
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    held_plain = peak_allocated_bytes(lambda: bb._vae_decode(z).sum().backward())
    held_ckpt = peak_allocated_bytes(lambda: bb.decode(z).sum().backward())
    with torch.no_grad():
        assert torch.equal(bb.decode(z), (bb._vae_decode(z) / 2 + 0.5).clamp(0, 1))
    assert held_ckpt <= held_plain  # recomputed in backward, never more than holding the activations


if __name__ == "__main__":  # the figures: python tests/test_memory_growth.py
    for method, kw in (("draft", {}), ("alignprop", "full"), ("draft-k", "plain")):
        row = []
        for n in (6, 30):
            s = {"fixed_grad_steps": n} if kw == "full" else {"truncation_steps": n, "checkpoint": False} \
                if kw == "plain" else {}
            row.append(one_step_peak(method, n, **s) / 2**20)
        print(f"{method:10s} {'(no checkpoint)' if kw == 'plain' else ''} peak MiB at 6 / 30 steps: "
              f"{row[0]:.2f} / {row[1]:.2f} ({row[1] / row[0]:.2f}x)")
