"""``python -m bench merge OUT DIR...``: join the results of grid shards (``--shard i/n`` on several machines, or a
Slurm job array) into one results directory, and rebuild its leaderboard.

Each DIR is a suite directory a shard wrote (``cells.csv``, ``curves.csv``, ``cells/<cell_id>/``, ``run_info.json``).
OUT may already hold results: its rows take part like any shard's. Per cell:

* a finished row (``ok``, ``nan``) wins over a failed one (``error``, ``oom``, ``crashed``, ``preempted``): a cell that
  crashed on one machine and finished on another is finished;
* the same cell finished twice must agree on every value that does not measure time or place (rewards, samples,
  curve), numbers to ``RTOL`` (two runs of one cell on other hardware or thread counts differ in the last digits):
  two different results for one cell are an error naming it, and nothing is written;
* the cell's curve and its directory (LoRA, images) come from the shard whose row was kept.

Everything is checked before anything is written; each file is then replaced atomically, under the same lock as a
running grid's appends.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.args import UsageError
from bench.results import locked, read_csv, write_atomic

FINISHED = ("ok", "nan")
#: columns that measure when, where and how fast a cell ran: they differ between two runs of the same cell
VOLATILE = {"message", "processes", "wall_s", "train_wall_s", "samples_per_s", "s_per_step_sampling", "s_per_step_reward",
            "s_per_step_backward", "peak_mem_mb", "mfu", "flops_per_sample", "device", "versions", "code_version"}


#: relative (and 1e-6 absolute) tolerance within which two runs of one cell agree
RTOL = 1e-4


def _numbers(value) -> list[float] | None:
    """A number, or a space-separated list of them (``reward_final_images``), as floats; None if not numeric."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    try:
        return [float(v) for v in str(value).split()] or None
    except ValueError:
        return None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _agree(x, y) -> bool:
    if _missing(x) or _missing(y):
        return _missing(x) and _missing(y)
    if x == y:
        return True
    a, b = _numbers(x), _numbers(y)
    if a is None or b is None or len(a) != len(b):
        return False
    return all(math.isclose(u, v, rel_tol=RTOL, abs_tol=1e-6) or (math.isnan(u) and math.isnan(v))
               for u, v in zip(a, b))


class MergeError(UsageError):
    """Shards that cannot be merged (a missing directory, two different results for one cell): one line, exit 2."""


def _same(a: pd.Series, b: pd.Series) -> list[str]:
    """The non-volatile columns where two rows of one cell differ."""
    return [col for col in sorted((set(a.index) | set(b.index)) - VOLATILE) if not _agree(a.get(col), b.get(col))]


def _curve_of(curves: pd.DataFrame, cell_id: str) -> pd.DataFrame:
    if curves.empty or "cell_id" not in curves:
        return curves
    return curves[curves["cell_id"] == cell_id]


def merge(out: str | Path, sources: Sequence[str | Path]) -> dict[str, int]:
    out = Path(out)
    dirs = [Path(d) for d in sources]
    for d in dirs:
        if not (d / "cells.csv").is_file():
            raise MergeError(f"merge: {d} has no cells.csv (give the suite directories the shards wrote, e.g. "
                             f"results/sd15)")
    if any(d.resolve() == out.resolve() for d in dirs):
        raise MergeError(f"merge: {out} is both the output and a source")
    # OUT's files stay locked from reading them to replacing them: a grid appending to OUT, or another merge into
    # it, waits (the grid takes these locks one at a time, so holding both cannot deadlock with it)
    with locked(out / "curves.csv"), locked(out / "cells.csv"):
        return _merge(out, dirs)


def _merge(out: Path, dirs: list[Path]) -> dict[str, int]:
    inputs = ([out] if (out / "cells.csv").is_file() else []) + dirs
    chosen: dict[str, tuple[pd.Series, Path]] = {}
    tables = {d: (read_csv(d / "cells.csv"), read_csv(d / "curves.csv")) for d in inputs}
    for d in inputs:
        cells, curves = tables[d]
        for _, row in cells.iterrows():
            cell_id = str(row["cell_id"])
            if cell_id not in chosen:
                chosen[cell_id] = (row, d)
                continue
            kept, where = chosen[cell_id]
            done_kept, done_new = kept["status"] in FINISHED, row["status"] in FINISHED
            if done_kept and done_new:
                differ = _same(kept, row)
                if not differ:
                    a, b = _curve_of(tables[where][1], cell_id), _curve_of(curves, cell_id)
                    cols = [c for c in a.columns if c.endswith(("_mean", "_std")) or c == "samples"]
                    if len(a) != len(b) or not all(_agree(x, y) for c in cols
                                                   for x, y in zip(a[c].tolist(), b.get(c, pd.Series()).tolist())):
                        differ = ["its curve"]
                if differ:
                    raise MergeError(f"merge: cell {cell_id} has two different results ({where} and {d} differ in "
                                     f"{', '.join(differ[:4])}); remove one of them and merge again")
            elif done_new and not done_kept:
                chosen[cell_id] = (row, d)
    rows = [r for r, _ in chosen.values()]
    curve_parts = [_curve_of(tables[d][1], cid) for cid, (_, d) in chosen.items()]
    curve_parts = [c for c in curve_parts if not c.empty]
    out.mkdir(parents=True, exist_ok=True)
    copied = 0
    for cell_id, (_, d) in chosen.items():
        src = d / "cells" / cell_id
        if d != out and src.is_dir():
            dst = out / "cells" / cell_id
            tmp = dst.with_name(dst.name + ".merging")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("resume.pt*"))
            if dst.exists():
                shutil.rmtree(dst)
            tmp.rename(dst)
            copied += 1
    infos, earlier = [], []
    for d in inputs:
        path = d / "run_info.json"
        if path.is_file():
            info = json.loads(path.read_text())
            infos += info.get("shards", [info]) if d == out else [dict(info, source=str(d))]
            if d == out:
                earlier = info.get("merged_from", [])
    write_atomic(out / "curves.csv", pd.concat(curve_parts).to_csv(index=False) if curve_parts else "")
    write_atomic(out / "cells.csv", pd.DataFrame(rows).to_csv(index=False))
    sources = list(dict.fromkeys([*earlier, *(str(d) for d in dirs)]))
    merged_info = {"merged_from": sources, "cells": len(rows), "shards": infos}
    for key in ("preset", "protocol", "shared_protocol", "method_overrides", "budget", "batch_size", "eval_every",
                "eval_images_per_prompt"):
        values = {json.dumps(i.get(key), sort_keys=True) for i in infos if key in i}
        if len(values) == 1:
            merged_info[key] = infos[0][key] if key in infos[0] else next(i[key] for i in infos if key in i)
    write_atomic(out / "run_info.json", json.dumps(merged_info, indent=1, default=str))
    return {"cells": len(rows), "sources": len(dirs), "directories_copied": copied,
            "finished": sum(str(r["status"]) in FINISHED for r in rows)}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from bench.args import Parser

    p = Parser(prog="python -m bench merge", description="Merge grid shards' results into OUT (cells, curves, cell "
               "directories, run info) and rebuild its leaderboard. A cell finished in two shards with different "
               "results is an error naming it; a finished row wins over a failed one.",
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="example:\n  python -m bench merge results/sd15 shard0/sd15 shard1/sd15 shard2/sd15")
    p.add_argument("out", help="the merged suite directory (may already hold results)")
    p.add_argument("dirs", nargs="+", help="the shards' suite directories")
    p.add_argument("--no-plots", action="store_true", help="leaderboard.md only")
    args = p.parse_args(argv)
    summary = merge(args.out, args.dirs)
    from bench import leaderboard

    leaderboard.build(args.out, plots=not args.no_plots)
    print(f"merged {summary['sources']} shard(s) into {args.out}: {summary['cells']} cells "
          f"({summary['finished']} finished), {summary['directories_copied']} cell directories copied; "
          f"leaderboard: {Path(args.out) / 'leaderboard.md'}")
    return 0
