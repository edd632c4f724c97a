"""``bench merge``: shards' results join into one directory; a cell finished twice with different results is an error
naming it (nothing written); a finished row wins over a failed one. The Slurm example's shard → merge path runs under
a fake ``sbatch`` that executes the job array's tasks in turn."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.merge import MergeError, merge

ROOT = Path(__file__).resolve().parent.parent


def _shard(d: Path, rows: list[dict], preset: str = "ci") -> Path:
    (d / "cells").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(d / "cells.csv", index=False)
    curve = [{"cell_id": r["cell_id"], "samples": s, "x_mean": r.get("reward_final", 0.0) * s, "x_std": 0.0}
             for r in rows for s in (0, 4)]
    pd.DataFrame(curve).to_csv(d / "curves.csv", index=False)
    for r in rows:
        (d / "cells" / r["cell_id"]).mkdir()
        (d / "cells" / r["cell_id"] / "from.txt").write_text(str(d))
    (d / "run_info.json").write_text(json.dumps({"preset": preset, "budget": 4}))
    return d


def _row(cell, status="ok", reward=1.0, wall=10.0):
    return {"cell_id": cell, "method": "draft-1", "task": "t", "seed": 0, "status": status, "reward_final": reward,
            "wall_s": wall, "message": ""}


def test_merge_joins_shards_and_a_finished_row_wins(tmp_path):
    a = _shard(tmp_path / "a", [_row("c1"), _row("c2", status="crashed", reward=float("nan"))])
    b = _shard(tmp_path / "b", [_row("c2", reward=2.0), _row("c3", reward=3.0)])
    # the same result, timed differently, on other hardware (last digits): not a conflict
    c = _shard(tmp_path / "c", [_row("c1", wall=99.0, reward=1.0 + 3e-7)])
    summary = merge(tmp_path / "out", [a, b, c])
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert sorted(cells["cell_id"]) == ["c1", "c2", "c3"] and set(cells["status"]) == {"ok"}
    assert summary == {"cells": 3, "sources": 3, "directories_copied": 3, "finished": 3}
    assert (tmp_path / "out" / "cells" / "c2" / "from.txt").read_text() == str(b)  # the kept row's directory
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert curves.groupby("cell_id").size().to_dict() == {"c1": 2, "c2": 2, "c3": 2}
    assert curves.loc[curves["cell_id"] == "c2", "x_mean"].tolist() == [0.0, 8.0]  # b's curve, not a's
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["preset"] == "ci" and len(info["shards"]) == 3
    # merging again into the same OUT (its rows take part) changes nothing
    merge(tmp_path / "out", [b])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "cells.csv"), cells)


def test_two_different_results_for_one_cell_are_an_error_naming_it_and_nothing_is_written(tmp_path):
    a = _shard(tmp_path / "a", [_row("c1", reward=1.0)])
    b = _shard(tmp_path / "b", [_row("c1", reward=1.5)])
    with pytest.raises(MergeError, match="cell c1 has two different results .*reward_final"):
        merge(tmp_path / "out", [a, b])
    assert not (tmp_path / "out" / "cells.csv").exists() and not (tmp_path / "out" / "cells").exists()


def _merge_in_process(out, source, start):
    start.wait()
    merge(out, [source])


def test_concurrent_merges_into_one_directory_keep_every_cell(tmp_path):
    """Two machines' shards merged into the same OUT at the same moment: the lock makes the second read what the first
    wrote, so neither overwrites the other's cells."""
    import multiprocessing as mp

    shards = [_shard(tmp_path / f"s{i}", [_row(f"c{i}{j}", reward=float(j)) for j in range(30)]) for i in range(4)]
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_merge_in_process, args=(tmp_path / "out", s, start)) for s in shards]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert len(cells) == 120 and cells["cell_id"].is_unique
    assert len(pd.read_csv(tmp_path / "out" / "curves.csv")) == 240


def test_merge_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "has no cells.csv" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


FAKE_SBATCH = """#!/usr/bin/env python3
# a fake sbatch: runs the script now (each array task in turn, with Slurm's array variables), records the call
import os, subprocess, sys
args, script = sys.argv[1:-1], sys.argv[-1]
with open(os.environ["FAKE_SBATCH_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
array = next((a.split("=", 1)[1] for a in args if a.startswith("--array=")), None)
env = dict(os.environ)
for a in args:
    if a.startswith("--export=ALL,"):
        env.update(kv.split("=", 1) for kv in a.split(",")[1:])
ids = range(int(array.split("-")[0]), int(array.split("-")[1]) + 1) if array else [None]
for i in ids:
    task = dict(env)
    if i is not None:
        task.update(SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_MIN=str(ids[0]), SLURM_ARRAY_TASK_COUNT=str(len(ids)))
    with open(os.environ["FAKE_SBATCH_LOG"] + f".{i}.out", "w") as out:  # as Slurm: the job's output to a file
        subprocess.run(["bash", script], env=task, check=True, stdout=out, stderr=subprocess.STDOUT)
print("4242")
"""


@pytest.mark.slow  # whole bench processes, minutes: run by .ci/run after the suite
def test_slurm_example_shards_a_preset_over_a_fake_array_and_merges(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH)
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "PYTHON": sys.executable,
           "FAKE_SBATCH_LOG": str(tmp_path / "sbatch.log"), "BENCH_RESULTS": str(tmp_path / "results"),
           "BENCH_CELL_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", str(ROOT / "examples" / "slurm" / "submit.sh"), "ci", "2", "--methods",
                          "draft-1,refl,draft-lv", "--tasks", "shapes-aesthetic", "--budget", "4", "--eval-every", "4"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert "--array=0-1" in calls[0] and "--dependency=afterany:4242" in calls[1]
    shards = [pd.read_csv(tmp_path / "results" / "shards" / "ci" / str(i) / "ci" / "cells.csv") for i in (0, 1)]
    assert sorted(len(s) for s in shards) in ([1, 2], [0, 3])
    assert not set(shards[0]["cell_id"]) & set(shards[1]["cell_id"])  # disjoint shards
    merged = pd.read_csv(tmp_path / "results" / "ci" / "cells.csv")
    assert sorted(merged["cell_id"]) == sorted(pd.concat(shards)["cell_id"]) and len(merged) == 3
    assert set(merged["status"]) == {"ok"}
    board = (tmp_path / "results" / "ci" / "leaderboard.md").read_text()
    assert "merged (`bench merge`) from 2 shard directories" in board and board.count("--shard ") == 2
