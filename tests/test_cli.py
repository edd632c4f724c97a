"""`python -m bench`: one cell end to end, and bad input as one line with exit code 2."""
import subprocess
import sys

import pandas as pd
import pytest
import torch


def bench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.parametrize("args, match", [
    (["run", "--method", "nope", "--reward", "jpeg-compressibility"], "unknown method 'nope'; valid: "),
    (["run", "--method", "draft-k", "--reward", "nope"], "unknown reward 'nope'; valid: "),
    (["run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--backbone", "sd99"],
     "unknown backbone 'sd99'; valid: "),
    (["run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--set", "truncation_steps=50"],
     "truncation_steps"),
    (["run", "--method", "draft-lv", "--reward", "jpeg-compressibility", "--set", "lv_copies=0"], "lv_copies"),
    (["run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--eta", "-1"], "eta must be >= 0"),
    (["run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--budget", "0"], "budget"),
    (["run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--backbone", "sd15",
      "--backbone-path", "/nonexistent/sd"], "--backbone-path"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, match, tmp_path, capsys):
    """In-process (fast): main() returns 2 and prints exactly one line naming the problem, no traceback."""
    from bench.cli import main

    code = main(args + ["--results-dir", str(tmp_path)] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0]
    assert not (tmp_path / "runs" / "cells.csv").exists()


def test_bad_input_through_the_real_entry_point_exits_2():
    res = bench("run", "--method", "nope", "--reward", "jpeg-compressibility")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "unknown method" in res.stderr


def test_one_cell_end_to_end_writes_row_curve_and_loadable_lora(tmp_path):
    res = bench("run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--backbone", "tiny",
                "--budget", "4", "--batch-size", "2", "--eval-every", "2", "--num-steps", "3",
                "--results-dir", str(tmp_path), "--suite", "t")
    assert res.returncode == 0, res.stderr
    cells = pd.read_csv(tmp_path / "t" / "cells.csv")
    assert len(cells) == 1
    row = cells.iloc[0]
    assert row["status"] == "ok" and row["samples"] == 4 and row["reward_queries"] == 4
    assert row["train_reward"] == "jpeg-compressibility-surrogate" and row["eval_reward"] == "jpeg-compressibility"
    curve = pd.read_csv(tmp_path / "t" / "curves.csv")
    assert list(curve["samples"]) == [0, 2, 4]
    lora = tmp_path / "t" / "cells" / row["cell_id"] / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.exists()
    from bench import backbones

    bb = backbones.create("tiny", lora_rank=None)
    bb.load_loras([(str(lora), 1.0)])
    # the same command again replaces the row instead of duplicating it
    res = bench("run", "--method", "draft-k", "--reward", "jpeg-compressibility", "--backbone", "tiny",
                "--budget", "4", "--batch-size", "2", "--eval-every", "2", "--num-steps", "3",
                "--results-dir", str(tmp_path), "--suite", "t")
    assert res.returncode == 0 and len(pd.read_csv(tmp_path / "t" / "cells.csv")) == 1


def test_list_shows_backbones_methods_rewards():
    res = bench("list")
    assert res.returncode == 0
    for name in ("tiny", "sd15-random", "draft-lv", "jpeg-compressibility-surrogate"):
        assert name in res.stdout
