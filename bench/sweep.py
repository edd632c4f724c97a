"""``python -m bench sweep DIR``: one table across the suites under DIR (e.g. a learning-rate sweep run as one suite
per value, ``scripts/ddpo_lr_sweep.sh``), written to ``DIR/sweep.md`` and printed.

Per finished cell: the suite (the swept value), the headline reward's initial and final evaluation with the paired 95%
interval of the change, the change over the last quarter of the budget (a curve still rising there has not
plateaued), and the gold and cross rewards' changes where the task has them. The pick is the suite with the highest
final reward among the suites of the same method, task, backbone and seed; a suite within the best cell's 95% interval
of its change is named beside it (a tie, not broken).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.args import Parser, UsageError, examples
from bench.results import read_csv, write_atomic


def last_quarter_gain(curve, column: str) -> float:
    """Reward at the last evaluation minus the reward at the evaluation nearest 3/4 of the samples."""
    curve = curve.sort_values("samples")
    s, r = curve["samples"].to_numpy(float), curve[column].to_numpy(float)
    if len(s) < 2:
        return float("nan")
    return float(r[-1] - r[np.argmin(np.abs(s - 0.75 * s[-1]))])


def table(directory: Path) -> tuple[list[str], list[dict]]:
    rows = []
    for suite in sorted(p for p in directory.iterdir() if (p / "cells.csv").exists()):
        cells, curves = read_csv(suite / "cells.csv"), read_csv(suite / "curves.csv")
        other_rewards = [col.removesuffix("_final") for col in cells.columns if col.endswith("_final")
                         and not col.startswith("reward") and col.removesuffix("_final") + "_initial" in cells]
        for _, c in cells.iterrows():
            row = {"suite": suite.name, "method": c["method"], "task": c["task"], "backbone": c["backbone"],
                   "seed": int(c["seed"]),
                   "status": c["status"], "samples": c.get("samples")}
            if c["status"] == "ok":
                curve = curves[curves["cell_id"] == c["cell_id"]]
                row.update(initial=c["reward_initial"], final=c["reward_final"], ci=c.get("reward_delta_ci95"),
                           last_quarter=last_quarter_gain(curve, f"{c['eval_reward']}_mean"),
                           own=(c.get("reward_own_initial"), c.get("reward_own_final")),
                           cross={name: c[f"{name}_final"] - c[f"{name}_initial"] for name in other_rewards
                                  if np.isfinite(c[f"{name}_final"])})
            rows.append(row)
    if not rows:
        raise UsageError(f"sweep: no suite with a cells.csv under {directory}")
    lines = [f"# Sweep: {directory}", "", "| suite | method | task | backbone | seed | samples | "
             "reward initial → final (Δ ± 95%) | Δ over the last quarter | own sampler initial → final | "
             "other rewards' Δ |", "|---|---|---|---|---|---:|---|---:|---|---|"]
    for r in rows:
        head = f"| {r['suite']} | {r['method']} | {r['task']} | {r['backbone']} | {r['seed']} |"
        if r["status"] != "ok":
            lines.append(f"{head} – | {r['status']} | – | – | – |")
            continue
        lines.append(f"{head} {int(r['samples'])} | {r['initial']:.3f} → {r['final']:.3f} "
                     f"({r['final'] - r['initial']:+.3f} ± {r['ci']:.3f}) | {r['last_quarter']:+.3f} | "
                     f"{r['own'][0]:.3f} → {r['own'][1]:.3f} | "
                     f"{', '.join(f'{k} {v:+.3f}' for k, v in r['cross'].items()) or '–'} |")
    lines.append("")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["method"], r["task"], r["backbone"], r["seed"]), []).append(r)
    for (method, task, backbone, seed), g in groups.items():
        if len(g) < 2:
            continue
        best = max(g, key=lambda r: r["final"])
        ties = [r["suite"] for r in g if r is not best and best["final"] - r["final"] <= best["ci"]]
        lines.append(f"{method} on {task} ({backbone}, seed {seed}): highest final reward **{best['suite']}** "
                     f"({best['final']:.3f})" + (f", within its interval of {', '.join(ties)}" if ties else "") + ".")
    return lines, rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m bench sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog=examples("bash scripts/ddpo_lr_sweep.sh runs/ddpo-lr", "python -m bench sweep runs/ddpo-lr"))
    parser.add_argument("directory", help="a folder of suites (each with cells.csv and curves.csv)")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"sweep: {directory} is not a directory")
    lines, _ = table(directory)
    write_atomic(directory / "sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
