"""The grid runner under faults: kill -9 then rerun, Ctrl-C, NaN, a raising cell, resume, shards, bad input.

Each test runs ``python -m bench run --grid`` in a subprocess on the ``tiny`` backbone with a 2-sample budget and
3 sampling steps; the tasks and failing rewards come from ``tests/harness_plugin.py`` (``--plugins``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.results import read_csv

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def grid_cmd(results: Path, methods: str, tasks: str = "test-tiny", *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--grid", "--preset", "ci", "--backbone", "tiny",
            "--plugins", "harness_plugin", "--tasks", tasks, "--methods", methods, "--budget", "2",
            "--batch-size", "2", "--num-steps", "3", "--eval-every", "2", "--jobs", "1",
            "--results-dir", str(results), *extra]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), e.get("PYTHONPATH", "")])
    return e


def run(cmd, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def start(cmd) -> subprocess.Popen:
    # SIGINT at its default: a shell starting pytest in the background (`cmd &`) leaves SIGINT ignored, which the
    # grid, like any program, would inherit and honour
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            try:
                if len(read_csv(path)) >= n:
                    return
            except (pd.errors.EmptyDataError, pd.errors.ParserError):
                pytest.fail(f"{path} was unreadable while the grid ran")
        if proc.poll() is not None:
            pytest.fail(f"grid exited early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    pytest.fail(f"no {n} rows in {path} after {timeout}s")


def assert_consistent(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both CSVs parse, every row is complete, no cell appears twice, no temporary file is left behind."""
    cells, curves = read_csv(out / "cells.csv"), read_csv(out / "curves.csv")
    assert not cells["cell_id"].duplicated().any()
    assert not curves[["cell_id", "samples"]].duplicated().any()
    ok = cells[cells["status"] == "ok"]
    assert ok[["reward_initial", "reward_final", "peak_mem_mb", "samples"]].notna().all().all()
    assert set(ok["cell_id"]) <= set(curves["cell_id"])  # a row exists only after its curve was written
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    return cells, curves


def test_kill9_then_rerun_skips_finished_cells_without_duplicates(tmp_path):
    """kill -9 of the whole grid mid-run, then the same command: finished cells are not rerun (their rows are
    byte-identical, wall_s included), every cell ends with exactly one complete row."""
    cmd = grid_cmd(tmp_path, "draft-1", "test-tiny,test-slow")  # the second cell takes seconds
    out = tmp_path / "ci"
    proc = start(cmd)
    wait_for_rows(out / "cells.csv", 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before, _ = assert_consistent(out)
    assert len(before) == 1, "the kill should land mid-grid"
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stderr
    after, curves = assert_consistent(out)
    assert len(after) == 2 and set(after["status"]) == {"ok"}
    kept = after.set_index("cell_id").loc[before["cell_id"]]
    assert (kept["wall_s"].values == before["wall_s"].values).all(), "a finished cell was rerun"
    assert curves.groupby("cell_id").size().eq(2).all()  # evaluations at 0 and 2 samples, once each


def test_sigint_leaves_files_consistent_and_resumable(tmp_path):
    cmd = grid_cmd(tmp_path, "draft-1", "test-tiny,test-slow")  # the second cell takes seconds
    out = tmp_path / "ci"
    proc = start(cmd)
    wait_for_rows(out / "cells.csv", 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "resume" in output
    cells, _ = assert_consistent(out)
    assert set(cells["status"]) == {"ok"}  # an interrupted cell writes no row
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    assert len(assert_consistent(out)[0]) == 2


def test_nan_and_raising_cells_are_recorded_and_the_grid_goes_on(tmp_path):
    result = run(grid_cmd(tmp_path, "draft-1", "test-nan,test-raise,test-oom,test-tiny"))
    assert result.returncode == 1  # not every cell is ok
    cells, _ = assert_consistent(tmp_path / "ci")
    status = dict(zip(cells["task"], cells["status"]))
    assert status == {"test-nan": "nan", "test-raise": "error", "test-oom": "oom", "test-tiny": "ok"}
    oom = cells[cells["task"] == "test-oom"].iloc[0]["message"]
    assert oom.startswith("OutOfMemoryError: CUDA out of memory") and "(peak reached: " in oom
    nan_row = cells[cells["task"] == "test-nan"].iloc[0]
    assert nan_row["samples"] == 2 and "non-finite loss at optimiser step 1" in nan_row["message"]
    err = cells[cells["task"] == "test-raise"].iloc[0]["message"]
    assert err == "RuntimeError: this reward always fails (test)"
    log = next((tmp_path / "ci" / "cells").glob("*test-raise*")) / "log.txt"
    assert "Traceback" in log.read_text()  # the traceback goes to the cell's log, not the table
    # resume: the nan cell is finished (not rerun); the error cell is tried again
    again = run(grid_cmd(tmp_path, "draft-1", "test-nan,test-raise,test-oom,test-tiny"))
    assert "2 of 4 cells already finished" in again.stderr


@pytest.mark.parametrize("argv, text", [
    (["run", "--grid", "--methods", "no-such-method"], "unknown method 'no-such-method'"),
    (["run", "--grid", "--tasks", "no-such-task"], "unknown task 'no-such-task'"),
    (["run", "--grid", "--preset", "nope"], "unknown preset 'nope'"),
    (["run", "--grid", "--shard", "2/2"], "--shard expects i/n"),
    (["run", "--grid", "--budget", "0"], "--budget must be >= 1"),
    (["run", "--grid", "--seeds", "x"], "--seeds expects"),
    (["run", "--grid", "--jobs", "0"], "--jobs must be >= 1"),
    (["leaderboard", "/no/such/dir"], "not found"),
    (["compare", "/no/a.csv", "/no/b.csv"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, text, capsys):
    from bench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1


def test_shards_are_disjoint_and_cover_the_grid():
    from bench import grid, presets
    from bench.catalog import load_registries as _load_plugins

    _load_plugins()
    specs, _ = grid.plan(presets.get("paper"), backbone="tiny", tasks="shapes-compressibility", device="cpu")
    ids = [s.cell_id for s in specs]
    assert len(set(ids)) == len(ids)  # deterministic, distinct identities
    shards = [{s.cell_id for s in grid.shard(specs, i, 3)} for i in range(3)]
    assert set.union(*shards) == set(ids) and sum(map(len, shards)) == len(ids)
    again, _ = grid.plan(presets.get("paper"), backbone="tiny", tasks="shapes-compressibility", device="cpu")
    assert [s.cell_id for s in again] == ids


def test_unregistered_methods_are_skipped_with_a_note(monkeypatch):
    import methods
    from bench import grid, presets
    from bench.catalog import load_registries as _load_plugins

    _load_plugins()
    real = methods.available
    monkeypatch.setattr(methods, "available", lambda pattern="*": [m for m in real(pattern) if m != "drtune"])
    specs, notes = grid.plan(presets.get("quick"), backbone="tiny", tasks="shapes-compressibility", device="cpu")
    assert "drtune" not in {s.method for s in specs}
    assert any("drtune is not registered" in n for n in notes)


def test_weights_fingerprint_covers_exactly_the_networks_a_cell_uses(tmp_path, monkeypatch):
    """Retraining one testbed network changes the fingerprint (hence the identity) of the cells that use it, and only
    of those; reports beside the networks (manifest, gates) never change it."""
    import shutil

    from bench import grid
    from bench.testbed import models

    for folder in ("unet", "text_encoder", "scheduler", "tokenizer", "clip", "aesthetic", "classifier", "detector"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.safetensors").write_bytes(folder.encode())
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    cells = {"aesthetic": ("shapes-aesthetic", "shapes-gold-aesthetic", "shapes-alignment"),
             "detector": ("shapes-detector", "shapes-alignment"), "classifier": ("shapes-classifier",),
             "jpeg": ("jpeg-compressibility", "shapes-alignment")}

    def versions():
        return {name: grid.weights_version("shapes", rewards) for name, rewards in cells.items()}

    before = versions()
    assert len(set(before.values())) == len(before)  # different networks, different fingerprints
    assert grid.weights_version("tiny", ["jpeg-compressibility"]) is None  # no local weights at all
    (tmp_path / "manifest.json").write_text('{"detector": {"steps": 2000}}')
    assert versions() == before
    (tmp_path / "detector" / "model.safetensors").write_bytes(b"retrained")
    after = versions()
    assert after["detector"] != before["detector"]
    assert {k: v for k, v in after.items() if k != "detector"} == {k: v for k, v in before.items() if k != "detector"}
    (tmp_path / "clip" / "model.safetensors").write_bytes(b"retrained")  # read by aesthetic, alignment (diversity)
    again = versions()
    assert again["classifier"] == after["classifier"]
    assert all(again[k] != after[k] for k in ("aesthetic", "detector", "jpeg"))
    shutil.rmtree(tmp_path / "unet")  # the backbone: every cell
    assert not set(versions().values()) & set(again.values())


def test_planned_cells_carry_their_own_weights_fingerprint():
    from bench import grid, presets
    from bench.catalog import load_registries as _load_plugins

    _load_plugins()
    specs, _ = grid.plan(presets.get("quick"), device="cpu")
    by_task = {s.task: s.weights_version for s in specs}
    assert all(by_task.values())
    assert by_task["shapes-add-red-circle"] == by_task["shapes-remove-blue-square"]  # same networks
    assert by_task["shapes-add-red-circle"] != by_task["shapes-aesthetic"] != by_task["shapes-circles-to-squares"]


def test_run_info_keeps_the_run_that_made_the_results():
    """A no-op resume joins the history instead of replacing the record of the run that trained the cells; a run that
    trains cells (a second shard, a resume after a crash) becomes the header and keeps the earlier one."""
    from bench.grid import merge_run_info

    first = {"command": "run --grid --shard 0/2", "cells_run": 12, "wall_s": 900.0, "interrupted": False}
    noop = {"command": "run --grid", "cells_run": 0, "wall_s": 2.0, "interrupted": False}
    second = {"command": "run --grid --shard 1/2", "cells_run": 12, "wall_s": 950.0, "interrupted": False}
    assert merge_run_info(None, first) == first
    kept = merge_run_info(first, noop)
    assert kept["command"] == first["command"] and kept["wall_s"] == 900.0 and kept["history"] == [noop]
    both = merge_run_info(kept, second)
    assert both["command"] == second["command"] and both["history"] == [noop, first]
    stopped = {"command": "run --grid", "cells_run": 0, "wall_s": 5.0, "interrupted": True}
    assert merge_run_info(both, stopped)["command"] == "run --grid" and len(merge_run_info(both, stopped)["history"]) == 3


def test_no_resume_replaces_a_cells_older_rows_and_keeps_the_others(tmp_path):
    """``--no-resume`` with changed settings (a new cell id for the same method, task, backbone and seed): the new
    row replaces the old one in cells.csv and curves.csv (the leaderboard would count both as seeds); the other
    seed's row stays byte-identical; the old cell's folder goes with its row; a resumed run with changed settings keeps
    both (nothing written is lost)."""
    out = tmp_path / "ci"
    assert run(grid_cmd(tmp_path, "draft-1", "test-tiny", "--seeds", "0,1")).returncode == 0
    first, _ = assert_consistent(out)
    result = run(grid_cmd(tmp_path, "draft-1", "test-tiny", "--seed", "0", "--lr", "0.002", "--no-resume"))
    assert result.returncode == 0, result.stderr
    cells, curves = assert_consistent(out)
    assert sorted(cells["seed"]) == [0, 1]
    old0 = first.loc[first["seed"] == 0, "cell_id"].item()
    assert old0 not in set(cells["cell_id"]) and old0 not in set(curves["cell_id"])
    assert not (out / "cells" / old0).exists() and {p.name for p in (out / "cells").iterdir()} == set(cells["cell_id"])
    seed1 = first[first["seed"] == 1]
    assert cells[cells["seed"] == 1].to_csv(index=False) == seed1.to_csv(index=False)
    assert set(curves["cell_id"]) == set(cells["cell_id"])
    assert run(grid_cmd(tmp_path, "draft-1", "test-tiny", "--seed", "0", "--lr", "0.003")).returncode == 0
    assert len(assert_consistent(out)[0]) == 3


def test_a_grid_imports_its_leaderboard_code_before_its_cells_run(tmp_path, monkeypatch):
    """A grid runs for hours; a ``git pull`` meanwhile must not leave its end importing a newer leaderboard against
    the older modules it already holds (it did: ImportError after every cell had finished)."""
    import sys

    import bench
    from bench import grid
    from bench.cli import main

    for name in ("leaderboard", "plots"):  # as in a fresh process: neither module nor package attribute
        monkeypatch.delitem(sys.modules, f"bench.{name}", raising=False)
        monkeypatch.delattr(bench, name, raising=False)
    seen = {}

    def run_grid(specs, out_dir, **kw):
        seen.update({name: name in sys.modules for name in ("bench.leaderboard", "bench.plots")})
        return {"ran": 0, "skipped": 0, "results": {}}

    monkeypatch.setattr(grid, "run_grid", run_grid)
    assert main(["run", "--grid", "--preset", "ci", "--limit", "1", "--results-dir", str(tmp_path)]) == 0
    assert seen == {"bench.leaderboard": True, "bench.plots": True}
