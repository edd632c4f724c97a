"""``--tracker tensorboard``: a cell's evaluation curve (the same numbers as curves.csv), one set of training scalars
per optimiser step and its before/after evaluation images land in RESULTS/SUITE/tensorboard/<cell_id>/, offline;
an unknown tracker or a missing package is one line, exit 2."""
from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from bench.cli import main


def test_tensorboard_logs_the_curve_the_steps_and_the_images(tmp_path, capsys):
    pytest.importorskip("tensorboard")  # in the test extra: installed wherever the suite runs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code = main(["run", "--method", "draft-1", "--task", "shapes-aesthetic", "--budget", "12", "--batch-size", "4",
                 "--eval-every", "4", "--eval-prompts", "2", "--eval-images", "1", "--tracker", "tensorboard",
                 "--results-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    curve = pd.read_csv(tmp_path / "quick" / "curves.csv")
    (run,) = (tmp_path / "quick" / "tensorboard").iterdir()
    assert run.name == curve["cell_id"].iloc[0]
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("eval/shapes-aesthetic_mean")]
    assert [s for s, _ in logged] == curve["samples"].tolist() == [0, 4, 8, 12]
    assert [v for _, v in logged] == pytest.approx(curve["shapes-aesthetic_mean"].tolist(), abs=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8, 12]  # one per optimiser step
    assert {"train/time_sampling", "train/time_backward", "train/grad_norm"} <= set(events.Tags()["scalars"])
    assert {"eval/initial", "eval/final"} <= set(events.Tags()["images"])


@pytest.mark.parametrize("tracker,message", [("mlflow", "valid: tensorboard, wandb"),
                                             ("wandb", "needs the wandb package")])
def test_bad_tracker_is_one_line_exit_2(tmp_path, capsys, monkeypatch, tracker, message):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = main(["run", "--method", "draft-1", "--task", "shapes-aesthetic", "--tracker", tracker, "--results-dir",
                 str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
