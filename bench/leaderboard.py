"""``python -m bench leaderboard DIR``: rebuild ``leaderboard.md`` and ``plots/`` from ``cells.csv`` and
``curves.csv`` (nothing is recomputed from images or weights).

Per task, methods are ranked by their final evaluation reward at the same budget: mean ± 95% interval over seeds
(Student t). Beside it: the initial reward, the area under the reward-vs-samples curve, samples to threshold (the
first evaluated sample count reaching half the task's best gain: initial + ½·(best final − initial)), extra evaluation
rewards (the testbed's gold aesthetic beside the proxy), diversity, peak memory, samples/s and seconds per optimiser
step split into sampling / reward / backward.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench import metrics
from bench.results import read_csv, write_atomic


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _pm(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.4g} ± {half:.2g}" if math.isfinite(half) else f"{mean:.4g}"


def extra_reward_columns(cells: pd.DataFrame) -> list[str]:
    """Evaluation rewards reported beside the headline (``<name>_final``), e.g. the gold aesthetic."""
    skip = {"reward_final", "diversity_final"}
    return [c for c in cells.columns if c.endswith("_final") and c not in skip]


def curve_column(row) -> str:
    return f"{row['eval_reward']}_mean"


def task_summary(cells: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, budget, protocol) of one task's finished cells, ranked by final reward."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    initial = float(ok["reward_initial"].mean())
    best_final = ok.groupby("method")["reward_final"].mean().max()
    threshold = initial + 0.5 * (best_final - initial)
    extras = [c for c in extra_reward_columns(ok) if ok[c].notna().any()]
    out = []
    for (method, budget, protocol), g in ok.groupby(["method", "budget", "protocol"]):
        final, half = metrics.mean_ci95(g["reward_final"].tolist())
        s2t = []
        for _, row in g.iterrows():
            c = curves[curves["cell_id"] == row["cell_id"]] if not curves.empty else pd.DataFrame()
            col = curve_column(row)
            if not c.empty and col in c:
                s2t.append(metrics.samples_to_threshold(c["samples"].tolist(), c[col].tolist(), threshold))
        entry = {"method": method, "budget": int(budget), "protocol": protocol, "seeds": len(g),
                 "final": final, "final_ci95": half, "initial": float(g["reward_initial"].mean()),
                 "auc": float(g["reward_auc"].mean()),
                 "samples_to_threshold": float(np.nanmedian(s2t)) if s2t and not all(map(math.isnan, s2t))
                 else math.nan,
                 "threshold": threshold, "reward_queries": float(g["reward_queries"].mean()),
                 "diversity_final": float(g["diversity_final"].mean()) if "diversity_final" in g else math.nan,
                 "peak_mem_mb": float(g["peak_mem_mb"].mean()), "samples_per_s": float(g["samples_per_s"].mean()),
                 "s_sampling": float(g["s_per_step_sampling"].mean()), "s_reward": float(g["s_per_step_reward"].mean()),
                 "s_backward": float(g["s_per_step_backward"].mean())}
        for c in extras:
            m, h = metrics.mean_ci95(g[c].tolist())
            entry[c] = m
            entry[c + "_ci95"] = h
        out.append(entry)
    return pd.DataFrame(out).sort_values("final", ascending=False).reset_index(drop=True)


def markdown(out_dir: Path, cells: pd.DataFrame, curves: pd.DataFrame, info: dict) -> str:
    lines = [f"# Leaderboard: {info.get('preset', out_dir.name)}", ""]
    if info:
        lines += [f"- preset: `{info.get('preset')}` (protocol: {info.get('protocol')}; shared settings "
                  f"{json.dumps(info.get('shared_protocol', {}))}; exceptions {json.dumps(info.get('method_overrides', {}))})",
                  f"- budget: {info.get('budget')} training samples per cell, batch {info.get('batch_size')}, "
                  f"evaluation every {info.get('eval_every')} samples on fixed held-out prompts × "
                  f"{info.get('eval_images_per_prompt')} fixed noises (DDIM, eta 0), seeds {info.get('seeds')}",
                  f"- machine: {info.get('machine')}; load average at the end {info.get('load_average')}",
                  f"- command: `{info.get('command')}`",
                  f"- started {info.get('started')}, wall time {info.get('wall_s')} s for {info.get('cells_run')} cells "
                  f"run ({info.get('cells_skipped_resume')} already finished), {info.get('jobs')} at a time"]
        earlier = [h for h in info.get("history", []) if h.get("cells_run")]
        if earlier:
            lines.append("- earlier runs into this directory (shards, resumes): " + "; ".join(
                f"`{h.get('command')}` started {h.get('started')}, {h.get('cells_run')} cells in {h.get('wall_s')} s"
                for h in earlier))
        for note in info.get("notes", []):
            lines.append(f"- note: {note}")
    versions = cells["versions"].dropna().unique().tolist() if "versions" in cells else []
    codes = cells["code_version"].dropna().unique().tolist() if "code_version" in cells else []
    devices = cells["device"].dropna().unique().tolist() if "device" in cells else []
    lines += [f"- devices: {', '.join(map(str, devices))}; libraries: {'; '.join(map(str, versions))}; "
              f"code: {', '.join(map(str, codes))}", "",
              "Ranked by final evaluation reward (mean ± 95% interval over seeds; ± 0 with one seed). "
              "AUC: mean reward over training (area under reward vs samples). Samples→thr: first evaluated sample "
              "count reaching half the task's best gain. Memory: CUDA max allocated (GPU) or process peak RSS (CPU).",
              ""]
    for task in sorted(cells["task"].dropna().unique()):
        tc = cells[cells["task"] == task]
        summary = task_summary(tc, curves)
        headline = tc["eval_reward"].dropna().iloc[0] if "eval_reward" in tc and tc["eval_reward"].notna().any() \
            else "reward"
        lines += [f"## {task}", "", f"Evaluation reward: `{headline}`" + (
            f"; threshold {summary['threshold'].iloc[0]:.4g}" if not summary.empty else ""), ""]
        if not summary.empty:
            extras = [c for c in summary.columns if c.endswith("_final") and not c.endswith("_ci95")
                      and c != "diversity_final"]
            head = ["#", "method", "final", "initial", "AUC", "samples→thr"] + \
                   [c[: -len("_final")] for c in extras] + \
                   ["diversity", "seeds", "samples", "queries", "peak MB", "samples/s", "s/step sample·reward·backward"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for i, r in summary.iterrows():
                cols = [str(i + 1), f"**{r['method']}**" if i == 0 else r["method"], _pm(r["final"], r["final_ci95"]),
                        _fmt(r["initial"]), _fmt(r["auc"]), _fmt(r["samples_to_threshold"])]
                cols += [_pm(r[c], r[c + "_ci95"]) for c in extras]
                cols += [_fmt(r["diversity_final"], 3), str(r["seeds"]), str(r["budget"]), _fmt(r["reward_queries"]),
                         _fmt(r["peak_mem_mb"], 5), _fmt(r["samples_per_s"], 3),
                         f"{_fmt(r['s_sampling'], 2)}·{_fmt(r['s_reward'], 2)}·{_fmt(r['s_backward'], 2)}"]
                lines.append("| " + " | ".join(cols) + " |")
        failed = tc[tc["status"] != "ok"]
        if not failed.empty:
            lines += ["", "Cells that did not finish cleanly:", ""]
            for _, r in failed.iterrows():
                lines.append(f"- {r['method']} seed {r['seed']}: **{r['status']}** — {r.get('message', '')}")
        lines.append("")
    lines += claims(cells, curves)
    lines += ["Plots: `plots/reward_vs_samples_<task>.png` (mean and 95% band over seeds), "
              "`plots/memory_vs_throughput.png`.", ""]
    return "\n".join(lines)


GRADIENT_METHODS = ("refl", "draft", "draft-k", "draft-1", "draft-lv", "alignprop", "drtune")


def _mean_curve(cells: pd.DataFrame, curves: pd.DataFrame, method: str,
                column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The method's curve (its training reward's, or ``column``) averaged over seeds on the common sample grid."""
    g = cells[cells["method"] == method]
    if g.empty or curves.empty:
        return np.array([]), np.array([])
    col = column or curve_column(g.iloc[0])
    cc = curves[curves["cell_id"].isin(g["cell_id"])]
    if col not in cc:
        return np.array([]), np.array([])
    grid = np.array(sorted(cc["samples"].unique()), float)
    per_seed = np.stack([metrics.on_grid(c["samples"], c[col], grid) for _, c in cc.groupby("cell_id")])
    return grid, np.nanmean(per_seed, axis=0)


def claims(cells: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """The papers' qualitative claims, checked on this suite's numbers (no claim is assumed)."""
    ok = cells[cells["status"] == "ok"]
    seeds = sorted(ok.groupby(["task", "method"]).size().unique().tolist())
    out = ["## The papers' claims, as measured here", "",
           f"Seeds per cell: {seeds}" + ("; with fewer than 3 seeds these are indications, not evidence."
                                         if min(seeds, default=0) < 3 else "; means over seeds."), ""]
    for task in sorted(ok["task"].unique()):
        tc = ok[ok["task"] == task]
        finals = tc.groupby("method")["reward_final"].mean()
        if "ddpo" in finals:
            target = finals["ddpo"]
            ddpo_initial = tc.loc[tc["method"] == "ddpo", "reward_initial"].mean()
            ddpo_budget = int(tc.loc[tc["method"] == "ddpo", "budget"].max())  # DDPO's own (cells may differ)
            gains = []
            for m in [m for m in GRADIENT_METHODS if m in finals]:
                grid, mean = _mean_curve(tc, curves, m)
                s = metrics.samples_to_threshold(grid, mean, target) if len(grid) else math.nan
                gains.append(f"{m} {'never' if math.isnan(s) else int(s)}")
            out.append(f"- {task}: samples to reach DDPO's final reward {target:.4g} (DDPO used {ddpo_budget}; the "
                       f"claim needs ≤ {ddpo_budget // 10}): " + ", ".join(gains) + (
                "" if target > ddpo_initial else " — DDPO did not improve on its initial reward, so this is "
                "not a test of the claim"))
        if "draft-lv" in finals and "draft-1" in finals:
            grid, mean = _mean_curve(tc, curves, "draft-lv")
            s = metrics.samples_to_threshold(grid, mean, finals["draft-1"]) if len(grid) else math.nan
            out.append(f"- {task}: DRaFT-LV reaches DRaFT-1's final {finals['draft-1']:.4g} after "
                       f"{'never' if math.isnan(s) else int(s)} samples (DRaFT-1 used "
                       f"{int(tc.loc[tc['method'] == 'draft-1', 'budget'].max())})")
    trunc = [m for m in ("draft-1", "draft-k") if m in ok["method"].unique()]
    if "draft" in cells["method"].unique() and trunc:
        for task in sorted(cells["task"].unique()):
            parts = []
            for m in ["draft"] + trunc:
                g = cells[(cells["method"] == m) & (cells["task"] == task)]
                if g.empty:
                    continue
                fails = int((g["status"] != "ok").sum())
                drops = []
                for _, r in g[g["status"] == "ok"].iterrows():
                    c = curves[curves["cell_id"] == r["cell_id"]].sort_values("samples")
                    col = curve_column(r)
                    if col in c and len(c) > 1:
                        drops.append(float(np.max(np.maximum.accumulate(c[col].values) - c[col].values)))
                finals = g.loc[g["status"] == "ok", "reward_final"]
                parts.append(f"{m}: {fails} failed cells, mean largest drop below its running best "
                             f"{np.mean(drops) if drops else math.nan:.3g}, final reward sd over seeds "
                             f"{finals.std(ddof=1) if len(finals) > 1 else math.nan:.3g}")
            out.append(f"- {task}: stability (full backprop vs truncated): " + "; ".join(parts))
    gold_col = next((c for c in cells.columns if c.startswith("shapes-gold-aesthetic") and c.endswith("_final")), None)
    if gold_col:
        init_col = gold_col.replace("_final", "_initial")
        gold_curve = gold_col.replace("_final", "_mean")
        ga = ok[ok[gold_col].notna()]
        for m, g in ga.groupby("method"):
            line = (f"- over-optimisation, {m}: proxy {g['reward_initial'].mean():.4g} → {g['reward_final'].mean():.4g}, "
                    f"gold {g[init_col].mean():.4g} → {g[gold_col].mean():.4g}")
            grid, gold = _mean_curve(ga, curves, m, gold_curve)
            if len(grid) > 2 and np.isfinite(gold).any():
                peak = int(np.nanargmax(gold))
                _, proxy = _mean_curve(ga, curves, m)
                line += (f"; gold peaks at {gold[peak]:.4g} after {int(grid[peak])} samples" + (
                    f", then falls by {gold[peak] - gold[-1]:.3g} while the proxy changes by "
                    f"{proxy[-1] - proxy[peak]:+.3g}" if peak < len(grid) - 1 else " (the last evaluation)"))
            out.append(line)
    out.append("")
    return out


def build(out_dir: str | Path, plots: bool = True) -> str:
    out_dir = Path(out_dir)
    cells = read_csv(out_dir / "cells.csv")
    if cells.empty:
        raise FileNotFoundError(f"no cells in {out_dir / 'cells.csv'}")
    curves = read_csv(out_dir / "curves.csv")
    info_path = out_dir / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    for col in ("eval_reward", "reward_final", "reward_initial", "reward_auc", "peak_mem_mb", "samples_per_s",
                "s_per_step_sampling", "s_per_step_reward", "s_per_step_backward", "reward_queries", "protocol",
                "budget"):
        if col not in cells:
            cells[col] = math.nan
    text = markdown(out_dir, cells, curves, info)
    write_atomic(out_dir / "leaderboard.md", text)
    if plots:
        from bench import plots as plots_mod

        plots_mod.write_all(out_dir, cells, curves)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    from bench.cli import UsageError, _Parser

    parser = _Parser(prog="python -m bench leaderboard", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="a results directory holding cells.csv and curves.csv")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    if not (directory / "cells.csv").exists():
        raise UsageError(f"leaderboard: {directory / 'cells.csv'} not found")
    print(build(directory, plots=not args.no_plots))
    return 0
