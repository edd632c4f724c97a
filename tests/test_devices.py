"""``--devices``: a grid runs one cell per device of the list at once (tested with CPU devices); a device that does
not exist, or a malformed list, is one line and exit 2 before any cell starts."""
from __future__ import annotations

import pandas as pd
import pytest

from bench.cell import CellSpec
from bench.cli import main


def test_a_grid_over_two_devices_runs_a_cell_on_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BENCH_CELL_THREADS", "1")
    code = main(["run", "--grid", "--preset", "ci", "--methods", "draft-1,refl", "--tasks", "shapes-aesthetic",
                 "--budget", "4", "--eval-every", "4", "--devices", "cpu:0,cpu:1", "--results-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err[-2000:]
    cells = pd.read_csv(tmp_path / "ci" / "cells.csv")
    assert set(cells["status"]) == {"ok"}
    assert sorted(d.rsplit(" ", 1)[-1] for d in cells["device"]) == ["(cpu:0)", "(cpu:1)"]


def test_the_device_index_is_not_part_of_a_cells_identity():
    """cuda:0 and cuda:3 compute the same cell (resume finds it whichever device it ran on); cpu and cuda do not."""
    spec = CellSpec(method="draft-1", backbone="shapes", reward="shapes-aesthetic", device="cuda:0")
    import dataclasses

    assert spec.cell_id == dataclasses.replace(spec, device="cuda:3").cell_id == \
        dataclasses.replace(spec, device="cuda").cell_id
    assert spec.cell_id != dataclasses.replace(spec, device="cpu").cell_id


@pytest.mark.parametrize("devices,message", [("gpu0,cpu", "comma-separated list"), ("cuda:7", "cuda:7"),
                                             (",", "comma-separated list")])
def test_bad_devices_are_one_line_exit_2(tmp_path, capsys, devices, message):
    code = main(["run", "--grid", "--preset", "ci", "--devices", devices, "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ci" / "cells.csv").exists()
