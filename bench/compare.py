"""``python -m bench compare BASE.csv NEW.csv``: print per-cell differences; exit 1 on a regression.

Cells are matched on (backbone, method, task, seed, protocol, budget). A cell of BASE that finished ``ok``
regresses in NEW when

* it is missing from NEW, or its status there is not ``ok`` (error, oom, crashed, nan); or
* its final evaluation reward drops by more than its noise allows:
  ``base_final − new_final > max(gain_fraction · |base_final − base_initial|, rel_floor · |base_final|, min_drop)``
  (defaults ``--gain-fraction 0.25``, ``--rel-floor 0.001``, ``--min-drop 0``); or
* its peak memory grows by more than 10% (``--memory-tolerance 0.10``).

Why this rule: evaluation uses fixed prompts and fixed initial noise, and a cell's seed is part of its key, so the
spread of scores across evaluation images is shared by both runs and cancels; between two runs of the same cell the
only noise is numerical drift (library versions, hardware), which is small next to what a method learns. A drop of a
quarter of the cell's own learning gain is therefore a real regression (a method that stops learning loses all of
it), and the relative floor keeps cells that barely learn (DDPO at small budgets) from failing on float noise.

Cells only in NEW are listed and never fail the comparison. Exit codes: 0 no regression, 1 regression, 2 bad input.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.args import Parser, UsageError, examples
from bench.results import positional, read_csv

KEY = ["backbone", "method", "task", "seed", "protocol", "budget"]
NEEDED = KEY + ["status", "reward_final"]


def _load(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"compare: {p} not found")
    try:
        df = read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"compare: {p} is not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in NEEDED if c not in df]
    if missing:
        raise UsageError(f"compare: {p} lacks column(s) {', '.join(missing)} (is it a cells.csv?)")
    for c in ("reward_final_std", "eval_images", "peak_mem_mb"):
        if c not in df:
            df[c] = math.nan
    df["_key"] = df[KEY].astype(str).agg("|".join, axis=1)
    return df.drop_duplicates("_key", keep="last").set_index("_key")


def allowed_drop(base_row, *, gain_fraction: float = 0.25, rel_floor: float = 1e-3, min_drop: float = 0.0) -> float:
    """The largest final-reward drop a cell may show before it counts as a regression (see the module docstring)."""
    final = float(base_row["reward_final"])
    initial = float(base_row.get("reward_initial", math.nan))
    gain = abs(final - initial) if math.isfinite(initial) else 0.0
    return max(gain_fraction * gain, rel_floor * abs(final), min_drop)


def compare(base: pd.DataFrame, new: pd.DataFrame, *, gain_fraction: float = 0.25, rel_floor: float = 1e-3,
            min_drop: float = 0.0, memory_tolerance: float = 0.10) -> tuple[list[dict], list[str]]:
    """(per-cell comparison rows, regression messages)."""
    rows, regressions = [], []
    for key, b in base.iterrows():
        name = f"{b['method']} on {b['task']} seed {b['seed']} ({b['backbone']}, budget {b['budget']})"
        if b["status"] != "ok":
            continue
        if key not in new.index:
            regressions.append(f"{name}: missing from the new results")
            rows.append({"cell": name, "verdict": "MISSING"})
            continue
        n = new.loc[key]
        entry = {"cell": name, "base": b["reward_final"], "new": n["reward_final"]}
        verdicts = []
        if n["status"] != "ok":
            verdicts.append(f"status {n['status']}")
            regressions.append(f"{name}: status {n['status']} ({n.get('message', '')})")
        else:
            allowed = allowed_drop(b, gain_fraction=gain_fraction, rel_floor=rel_floor, min_drop=min_drop)
            drop = float(b["reward_final"]) - float(n["reward_final"])
            entry.update(delta=-drop, allowed_drop=allowed)
            if not math.isfinite(drop) or drop > allowed:
                verdicts.append("reward drop")
                regressions.append(f"{name}: final reward {positional(b['reward_final'], 5)} -> "
                                   f"{positional(n['reward_final'], 5)} (drop {positional(drop, 3)} > allowed "
                                   f"{positional(allowed, 3)}: {gain_fraction:g} of the base gain, "
                                   f"or {rel_floor:g} of the base reward)")
            mb, mn = float(b["peak_mem_mb"]), float(n["peak_mem_mb"])
            entry.update(mem_base=mb, mem_new=mn)
            if math.isfinite(mb) and math.isfinite(mn) and mn > mb * (1 + memory_tolerance):
                verdicts.append("memory")
                regressions.append(f"{name}: peak memory {mb:.0f} MB -> {mn:.0f} MB (+{100 * (mn / mb - 1):.1f}% > "
                                   f"{100 * memory_tolerance:.0f}%)")
        entry["verdict"] = ", ".join(verdicts).upper() if verdicts else "ok"
        rows.append(entry)
    for key in new.index.difference(base.index):
        n = new.loc[key]
        rows.append({"cell": f"{n['method']} on {n['task']} seed {n['seed']}", "new": n["reward_final"],
                     "verdict": "new cell"})
    return rows, regressions


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m bench compare", description=__doc__, epilog=examples(
        "python -m bench compare results/quick/cells.csv runs/quick/cells.csv   # a new run vs the committed one",
        "python -m bench compare results/ci/baseline.csv runs/ci/cells.csv"),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--gain-fraction", type=float, default=0.25,
                        help="allowed drop as a fraction of the base cell's gain, final − initial (default 0.25)")
    parser.add_argument("--rel-floor", type=float, default=1e-3,
                        help="allowed drop as a fraction of |base final| at least (default 0.001)")
    parser.add_argument("--min-drop", type=float, default=0.0, help="a drop below this never fails (default 0)")
    parser.add_argument("--memory-tolerance", type=float, default=0.10, help="allowed peak-memory growth (0.10)")
    args = parser.parse_args(argv)
    if min(args.gain_fraction, args.rel_floor, args.min_drop, args.memory_tolerance) < 0:
        raise UsageError("compare: --gain-fraction, --rel-floor, --min-drop and --memory-tolerance must be >= 0")
    rows, regressions = compare(_load(args.base), _load(args.new), gain_fraction=args.gain_fraction,
                                rel_floor=args.rel_floor, min_drop=args.min_drop,
                                memory_tolerance=args.memory_tolerance)

    def f(x, d=5):
        return positional(x, d) if isinstance(x, float) and math.isfinite(x) else ("–" if x is None or (
            isinstance(x, float)) else str(x))

    print(f"{'cell':<60} {'base':>10} {'new':>10} {'delta':>10} {'allowed':>9} {'mem MB':>15}  verdict")
    for r in rows:
        mem = f"{f(r.get('mem_base'), 4)}→{f(r.get('mem_new'), 4)}" if "mem_base" in r else ""
        print(f"{r['cell'][:60]:<60} {f(r.get('base')):>10} {f(r.get('new')):>10} {f(r.get('delta'), 3):>10} "
              f"{f(r.get('allowed_drop'), 3):>9} {mem:>15}  {r['verdict']}")
    if regressions:
        print(f"\n{len(regressions)} regression(s):")
        for msg in regressions:
            print(f"  - {msg}")
        return 1
    print(f"\nno regression ({sum(r['verdict'] == 'ok' for r in rows)} cells compared)")
    return 0
