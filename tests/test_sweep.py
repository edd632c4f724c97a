"""``python -m bench sweep``: one table across the suites of a folder."""
from __future__ import annotations

import pandas as pd

from bench import sweep


def _suite(path, final, ci, curve):
    path.mkdir(parents=True)
    cell = dict(cell_id="c", method="ddpo", task="shapes-aesthetic", backbone="shapes", seed=0, status="ok",
                samples=curve[-1][0], reward_initial=curve[0][1], reward_final=final, reward_delta_ci95=ci,
                eval_reward="shapes-aesthetic", reward_own_initial=5.0, reward_own_final=5.5)
    pd.DataFrame([cell]).to_csv(path / "cells.csv", index=False)
    pd.DataFrame([{"cell_id": "c", "samples": s, "shapes-aesthetic_mean": r} for s, r in curve]).to_csv(
        path / "curves.csv", index=False)


def test_sweep_table_names_the_best_suite_and_its_ties_and_the_last_quarter_gain(tmp_path):
    _suite(tmp_path / "lr-1e-4", 4.6, 0.05, [(0, 4.5), (512, 4.55), (1536, 4.58), (2048, 4.6)])
    _suite(tmp_path / "lr-3e-4", 5.0, 0.08, [(0, 4.5), (512, 4.7), (1536, 4.8), (2048, 5.0)])
    _suite(tmp_path / "lr-1e-3", 4.95, 0.3, [(0, 4.5), (1536, 5.1), (2048, 4.95)])
    lines, rows = sweep.table(tmp_path)
    by = {r["suite"]: r for r in rows}
    assert abs(by["lr-3e-4"]["last_quarter"] - 0.2) < 1e-9  # 2048 vs the evaluation at 1536 (= 3/4 of 2048)
    assert abs(by["lr-1e-3"]["last_quarter"] + 0.15) < 1e-9
    verdict = lines[-1]
    assert "**lr-3e-4**" in verdict and "lr-1e-3" in verdict and "lr-1e-4" not in verdict, verdict
    assert sweep.main([str(tmp_path)]) == 0 and (tmp_path / "sweep.md").read_text().startswith("# Sweep")
