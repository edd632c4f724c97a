"""Long cells survive preemption: a method's state round-trips bit for bit; a cell killed mid-way (SIGKILL) and run
again ends with the same LoRA and curve as an uninterrupted run; SIGTERM saves the state, records the cell
``preempted`` and the next run resumes it."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import methods
from methods_testkit import CountingReward, tiny_backbone, one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle", "a blue square"]
#: DDPO with a buffer small enough that its second step reads rewards stored by its first (the tracker must resume)
SMALL = {"ddpo": {"buffer_size": 4, "min_count": 2}, "refl": {}, "draft": {}, "draft-1": {},
         "draft-k": {"truncation_steps": 2}, "draft-lv": {}, "alignprop": {},
         "drtune": {"trained_steps": 2, "early_stop_max": 2}}


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_method_resumed_from_its_state_continues_bit_for_bit(name):
    """Two steps in one run equal one step, a save/load through bytes into a fresh method, and the second step:
    LoRA weights, Adam moments and the generator (every random draw after) all carry over."""
    kw = dict(num_steps=4, guidance_scale=5.0, seed=3, **SMALL[name])
    m = methods.create(name, tiny_backbone(), CountingReward(), **kw)
    m.step(PROMPTS)
    state = _roundtrip(m.state_dict())
    m.step(PROMPTS)
    straight = [p.detach().clone() for p in m.params]
    fresh = methods.create(name, tiny_backbone(), CountingReward(), **kw)
    fresh.load_state_dict(state)
    assert fresh.total_samples == len(PROMPTS)
    fresh.step(PROMPTS)
    assert all(torch.equal(a, b) for a, b in zip(straight, fresh.params)), f"{name}: resumed weights differ"
    if name == "ddpo":
        assert fresh.tracker.buffers.keys() == m.tracker.buffers.keys()
        assert all(list(fresh.tracker.buffers[k]) == list(m.tracker.buffers[k]) for k in m.tracker.buffers)


def test_a_state_of_another_lora_is_refused():
    m = methods.create("draft-1", tiny_backbone(), CountingReward(), num_steps=2)
    state = m.state_dict()
    state["params"] = state["params"][1:]
    with pytest.raises(methods.MethodError, match="do not match"):
        m.load_state_dict(state)


# ----------------------------------------------------------------------------------------------- whole cells
CELL = ["--method", "{method}", "--task", "shapes-aesthetic", "--budget", "24", "--batch-size", "4", "--eval-every",
        "4", "--eval-prompts", "2", "--eval-images", "1", "--device", "cpu", "--set", "samples_per_epoch=8"]


def _cmd(method, results, grid=False):
    args = [a.format(method=method) for a in CELL] + ["--results-dir", str(results)]
    if grid:
        args = ["--grid", "--preset", "ci", "--methods", method, "--tasks", "shapes-aesthetic"] + args[4:]
    return [sys.executable, "-m", "bench", "run", *args]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "BENCH_CELL_THREADS": "1"}


def _wait_for_state(results: Path, proc, min_samples: int, timeout: float = 240) -> None:
    """Until the cell has saved a state at >= min_samples (checked by loading it: the write is atomic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in results.glob("*/cells/*/resume.pt"):
            try:
                state = torch.load(path, weights_only=False)
            except Exception:  # noqa: BLE001 - replaced while reading
                continue
            if state["method"]["attrs"]["total_samples"] >= min_samples:
                return
        assert proc.poll() is None, "the cell finished before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("no saved state appeared")


def _outcome(results: Path):
    suite = next(p for p in results.iterdir() if p.is_dir())
    cell = next((suite / "cells").iterdir())
    from safetensors.torch import load_file

    lora = load_file(str(cell / "lora" / "pytorch_lora_weights.safetensors"))
    curve = pd.read_csv(suite / "curves.csv")
    rows = pd.read_csv(suite / "cells.csv")
    assert not (cell / "resume.pt").exists(), "the state of a finished cell is removed"
    return lora, curve[[c for c in curve.columns if c.endswith(("_mean", "_std")) or c in ("samples",
                                                                                         "reward_queries")]], rows


def _same(a, b):
    lora_a, curve_a, rows_a = a
    lora_b, curve_b, rows_b = b
    for col in ("reward_own_initial", "reward_own_final", "reward_delta_ci95"):  # the first and the own-sampler
        assert rows_a[col].tolist() == rows_b[col].tolist(), col                  # scores survive the resume
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    pd.testing.assert_frame_equal(curve_a.reset_index(drop=True), curve_b.reset_index(drop=True), check_exact=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run the interrupted ones must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    subprocess.run(_cmd("ddpo", out, grid=True), env=_env(), check=True, capture_output=True, cwd=out)
    return _outcome(out)


@pytest.mark.slow  # whole bench processes, minutes: run by .ci/run after the suite
def test_preempted_then_killed_then_resumed_equals_an_uninterrupted_run(tmp_path, straight):
    """A grid gets SIGTERM (a scheduler's, before preemption): its cell saves after the step, records itself
    `preempted` and the grid exits. The next run resumes it and then its cell process is SIGKILLed: the grid records
    it `crashed`. The third run resumes it again and finishes `ok`, with the uninterrupted run's LoRA and curve, bit
    for bit. DDPO: its reward buffers, its graph-reuse policy and the prompt generator must all resume; the other
    methods' state is the unit test's above."""
    import psutil

    cmd = _cmd("ddpo", tmp_path, grid=True)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    _wait_for_state(tmp_path, proc, 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    rows = pd.read_csv(tmp_path / "ci" / "cells.csv")
    assert rows["status"].tolist() == ["preempted"], err
    assert "the same command resumes it" in rows["message"].iloc[0]

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    _wait_for_state(tmp_path, proc, 12)
    (cell,) = psutil.Process(proc.pid).children()
    cell.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    assert pd.read_csv(tmp_path / "ci" / "cells.csv")["status"].tolist() == ["crashed"]

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resumed = _outcome(tmp_path)
    assert resumed[2]["status"].tolist() == ["ok"] and "resumed at" in resumed[2]["message"].iloc[0]
    _same(straight, resumed)
