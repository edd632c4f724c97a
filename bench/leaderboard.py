"""``python -m bench leaderboard DIR``: rebuild ``leaderboard.md`` and ``plots/`` from ``cells.csv`` and
``curves.csv`` (nothing is recomputed from images or weights).

Per task, methods are ranked by their final evaluation reward at the same budget: mean ± 95% interval over seeds
(Student t; with one seed the value alone). Methods whose 95% intervals overlap the group leader's share a rank (a
tie): over seeds where there are several, else over the cell's evaluation images (the only noise one seed
measures). Beside it: the initial reward, the area under the reward-vs-samples curve, samples to threshold (the
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
from bench.args import Parser, UsageError, examples
from bench.results import positional as _g, read_csv, write_atomic


def _loads(loads) -> str:
    """``os.getloadavg()``'s 1, 5 and 15 minute averages as a reader wants them: ``1.88, 1.95, 2.01``."""
    return ", ".join(f"{float(v):.2f}" for v in loads) if isinstance(loads, (list, tuple)) else str(loads)


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return _g(x, digits)


def _pm(mean: float, half: float, seeds: int = 2) -> str:
    """``mean ± half`` over seeds; with one seed there is no interval over seeds: the value alone."""
    if not math.isfinite(mean):
        return "–"
    return f"{_g(mean, 4)} ± {_g(half, 2)}" if seeds > 1 and math.isfinite(half) else _g(mean, 4)


def _change(delta: float, half: float) -> str:
    """A change with its 95% half-width where it has one: ``+0.12 ± 0.05``."""
    if not math.isfinite(delta):
        return "Δ –"
    if not (math.isfinite(half) and half > 0):
        text = f"Δ {_g(delta, 3, sign=True)}"
        return f"{text} ± {_g(half, 2)}" if math.isfinite(half) else text
    # no digit finer than the interval's second: ``Δ -0.0000339 ± 0.018`` reads ``Δ 0 ± 0.018``
    shown = round(delta, 1 - math.floor(math.log10(half)))
    return f"Δ {_g(shown, 3, sign=True) if shown else '0'} ± {_g(half, 2)}"


def tie_groups(means: Sequence[float], halves: Sequence[float]) -> list[int]:
    """Rank groups for methods sorted by mean (descending): a method joins the current group when its 95% interval
    overlaps the group leader's (the best method not yet ranked); the next method that does not starts a new group.
    Returns the group number (1-based) of each method. A NaN half-width never ties."""
    groups, leader, g = [], None, 0
    for m, h in zip(means, halves):
        h = h if math.isfinite(h) else 0.0
        if leader is None or not (m + h >= leader[0] - leader[1]):
            g += 1
            leader = (m, h)
        groups.append(g)
    return groups


def image_scores(g: pd.DataFrame) -> np.ndarray | None:
    """A one-seed group's final headline reward per evaluation image (``reward_final_images``), else None."""
    if len(g) != 1 or "reward_final_images" not in g or not isinstance(g["reward_final_images"].iloc[0], str):
        return None
    return np.array([float(v) for v in g["reward_final_images"].iloc[0].split()])


def paired_tie(a: np.ndarray, b: np.ndarray) -> bool:
    """Every method is evaluated on the same prompts and the same initial noise, so two one-seed cells are compared
    image by image: tied unless the 95% interval of the mean difference a − b lies above 0 (Student t)."""
    d = a - b
    if len(d) < 2:
        return True
    from scipy.stats import t

    half = t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return not d.mean() - half > 0


def rank_groups(table: pd.DataFrame) -> list[int]:
    """Rank groups (table sorted by final, descending): a method joins the group of the best method not yet ranked
    when it is tied with it: paired per-image comparison where both have one seed and per-image scores, else
    overlapping 95% intervals (over seeds, or over evaluation images)."""
    groups, leader, g = [], None, 0
    for _, r in table.iterrows():
        a = leader.get("images") if leader is not None else None
        b = r.get("images")
        if leader is None:
            tied = False
        elif isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and len(a) == len(b):
            tied = paired_tie(a, b)
        else:
            lh = leader["tie_half"] if math.isfinite(leader["tie_half"]) else 0.0
            rh = r["tie_half"] if math.isfinite(r["tie_half"]) else 0.0
            tied = r["final"] + rh >= leader["final"] - lh
        if not tied:
            g += 1
            leader = r
        groups.append(g)
    return groups


def _ci_images(std: float, n: float) -> float:
    """Half-width of the 95% interval of a mean over ``n`` evaluation images with standard deviation ``std``."""
    if not (n and n > 1 and math.isfinite(std)):
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, int(n) - 1) * std / math.sqrt(n))


def extra_reward_columns(cells: pd.DataFrame) -> list[str]:
    """Evaluation rewards reported beside the headline (``<name>_final``), e.g. the gold aesthetic."""
    skip = {"reward_final", "diversity_final", "reward_own_final"}
    return [c for c in cells.columns if c.endswith("_final") and c not in skip]


def change_ci95(g: pd.DataFrame, final: str, initial: str, image_half: str) -> tuple[float, float]:
    """Mean change final − initial of a group's cells and its 95% half-width: Student t over seeds with several
    seeds, else the cell's paired per-image interval (``image_half``; NaN where the row has none)."""
    if final not in g or initial not in g:
        return math.nan, math.nan
    d = (g[final] - g[initial]).tolist()
    m, h = metrics.mean_ci95(d)
    if len(g) == 1:
        h = float(g[image_half].iloc[0]) if image_half in g and pd.notna(g[image_half].iloc[0]) else math.nan
    return m, h


def hacking_flags(entry: dict, extras: Sequence[str]) -> list[str]:
    """The untrained rewards (and diversity) that fell beyond their interval while the trained reward rose beyond
    its own: the lower end of the trained change > 0 and the upper end of the other's < 0 (NaN intervals never
    flag)."""
    m, h = entry["delta"], entry["delta_ci95"]
    if not (math.isfinite(m) and math.isfinite(h) and m - h > 0):
        return []
    names = [c[: -len("_final")] for c in extras] + ["diversity"]
    return [n for n in names if math.isfinite(entry.get(f"{n}_delta", math.nan))
            and math.isfinite(entry.get(f"{n}_delta_ci95", math.nan))
            and entry[f"{n}_delta"] + entry[f"{n}_delta_ci95"] < 0]


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
        n_images = float(g["eval_images"].mean()) if "eval_images" in g else math.nan
        image_half = _ci_images(float(g["reward_final_std"].mean()), n_images) if "reward_final_std" in g \
            else math.nan
        entry = {"method": method, "budget": int(budget), "protocol": protocol, "seeds": len(g),
                 "final": final, "final_ci95": half, "eval_images": n_images,
                 "tie_half": half if len(g) > 1 else image_half, "images": image_scores(g), "initial": float(g["reward_initial"].mean()),
                 "auc": float(g["reward_auc"].mean()),
                 "samples_to_threshold": float(np.nanmedian(s2t)) if s2t and not all(map(math.isnan, s2t))
                 else math.nan,
                 "threshold": threshold, "reward_queries": float(g["reward_queries"].mean()),
                 "diversity_final": float(g["diversity_final"].mean()) if "diversity_final" in g else math.nan,
                 "peak_mem_mb": float(g["peak_mem_mb"].mean()), "samples_per_s": float(g["samples_per_s"].mean()),
                 "s_sampling": float(g["s_per_step_sampling"].mean()), "s_reward": float(g["s_per_step_reward"].mean()),
                 "s_backward": float(g["s_per_step_backward"].mean()),
                 "flops_per_sample": float(g["flops_per_sample"].mean()) if "flops_per_sample" in g else math.nan,
                 "mfu": float(g["mfu"].mean()) if "mfu" in g else math.nan}
        for c in extras:
            m, h = metrics.mean_ci95(g[c].tolist())
            entry[c] = m
            entry[c + "_ci95"] = h
            name = c[: -len("_final")]
            entry[f"{name}_delta"], entry[f"{name}_delta_ci95"] = change_ci95(g, c, f"{name}_initial",
                                                                              f"{name}_delta_ci95")
        entry["delta"], entry["delta_ci95"] = change_ci95(g, "reward_final", "reward_initial", "reward_delta_ci95")
        entry["diversity_delta"], entry["diversity_delta_ci95"] = change_ci95(
            g, "diversity_final", "diversity_initial", "diversity_delta_ci95")  # no per-image interval: seeds only
        entry["flags"] = hacking_flags(entry, extras)
        own = g["own_sampler"].dropna().unique().tolist() if "own_sampler" in g else []
        entry["own_sampler"] = own[0] if len(own) == 1 else ("; ".join(own) if own else "")
        entry["own_end"] = float(g["reward_own_final"].mean()) if "reward_own_final" in g else math.nan
        entry["own_start"] = float(g["reward_own_initial"].mean()) if "reward_own_initial" in g else math.nan
        out.append(entry)
    table = pd.DataFrame(out).sort_values("final", ascending=False).reset_index(drop=True)
    table["group"] = rank_groups(table)
    return table


def split_backbones(cells: pd.DataFrame) -> pd.DataFrame:
    """A task run on several backbones (DDIM and flow testbeds; SD 1.5 and 2.1) becomes one entry per backbone,
    ``"<task> on <backbone>"`` (the original in ``base_task``): its rows are never averaged across models, and each
    gets its own ranking, threshold, claims and plot."""
    cells = cells.copy()
    cells["base_task"] = cells["task"]
    if "backbone" not in cells:
        return cells
    for task, g in cells.groupby("task"):
        if g["backbone"].nunique() > 1:
            cells.loc[g.index, "task"] = [f"{task} on {b}" for b in g["backbone"]]
    return cells


def side_by_side(cells: pd.DataFrame) -> list[str]:
    """Per task run on several backbones: each method's change in the evaluation reward (final − initial, 95%
    interval: over seeds, or with one seed over the evaluation images, paired) on each backbone, in one table."""
    ok = cells[cells["status"] == "ok"]
    out = []
    for task, g in ok.groupby("base_task"):
        models = sorted(g["backbone"].unique())
        if len(models) < 2 or g.groupby("method")["backbone"].nunique().max() < 2:
            continue  # no method ran on two of them: nothing to put side by side
        out += [f"## {task}: backbones side by side", "",
                "Change in the evaluation reward, final − initial (95% interval), and the final value, per backbone "
                "(`–`: not run, or skipped on that backbone).", "",
                "| method | " + " | ".join(f"{b}" for b in models) + " |", "|---|" + "---|" * len(models)]
        for method in sorted(g["method"].unique()):
            row = [method]
            for b in models:
                c = g[(g["method"] == method) & (g["backbone"] == b)]
                if c.empty:
                    row.append("–")
                    continue
                d, h = change_ci95(c, "reward_final", "reward_initial", "reward_delta_ci95")
                row.append(f"{_change(d, h)} ({_fmt(float(c['reward_final'].mean()))})")
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return out


def _rank(group: int, sizes: pd.Series) -> str:
    return f"{group}=" if sizes[group] > 1 else str(group)


def at_a_glance(summaries: dict[str, pd.DataFrame]) -> list[str]:
    """With several tasks, one table before their sections: each method's change in each task's evaluation reward
    (final − initial, 95% interval as in the task's own table) and its rank there (bold: first rank, ties included).
    A method run at several budgets or protocols in one task shows its largest budget."""
    summaries = {t: s for t, s in summaries.items() if not s.empty}
    if len(summaries) < 2:
        return []
    methods = sorted({m for s in summaries.values() for m in s["method"]})
    out = ["## Every task at a glance", "",
           "Change in each task's evaluation reward, final − initial (95% interval), and the method's rank in that "
           "task; **bold**: the first rank (ties share it). Details, other rewards and the claims: the sections below.",
           "", "| method | " + " | ".join(summaries) + " |", "|---|" + "---|" * len(summaries)]
    for method in methods:
        row = [method]
        for s in summaries.values():
            entry = s[s["method"] == method].sort_values("budget")
            if entry.empty:
                row.append("–")
                continue
            r = entry.iloc[-1]
            text = f"{_change(r['delta'], r['delta_ci95'])} ({_rank(r['group'], s['group'].value_counts())})"
            row.append(f"**{text}**" if r["group"] == 1 else text)
        out.append("| " + " | ".join(row) + " |")
    return out + [""]


def markdown(out_dir: Path, cells: pd.DataFrame, curves: pd.DataFrame, info: dict, superseded: int = 0) -> str:
    lines = [f"# Leaderboard: {info.get('preset', out_dir.name)}", ""]
    if info.get("merged_from") is not None:  # `bench merge`: what the shards agree on, then each shard's run
        if "preset" in info:
            lines.append(f"- preset: `{info['preset']}` (protocol: {info.get('protocol')}; shared settings "
                         f"{json.dumps(info.get('shared_protocol', {}))}; exceptions "
                         f"{json.dumps(info.get('method_overrides', {}))})")
        if "budget" in info:
            lines.append(f"- budget: {info['budget']} training samples per cell, batch {info.get('batch_size')}, "
                         f"evaluation every {info.get('eval_every')} samples")
        n = len(info["merged_from"])
        lines.append(f"- merged (`bench merge`) from {n} shard director{'y' if n == 1 else 'ies'}: "
                     f"{', '.join(f'`{d}`' for d in info['merged_from'])}")
        for shard in info.get("shards", []):
            lines.append(f"  - `{shard.get('command')}` on {shard.get('machine')}, started {shard.get('started')}: "
                         f"{shard.get('cells_run')} cells in {shard.get('wall_s')} s")
    elif info:
        lines += [f"- preset: `{info.get('preset')}` (protocol: {info.get('protocol')}; shared settings "
                  f"{json.dumps(info.get('shared_protocol', {}))}; exceptions {json.dumps(info.get('method_overrides', {}))})",
                  f"- budget: {info.get('budget')} training samples per cell, batch {info.get('batch_size')}, "
                  f"evaluation every {info.get('eval_every')} samples on fixed held-out prompts × "
                  f"{info.get('eval_images_per_prompt')} fixed noises (DDIM, eta 0), seeds {info.get('seeds')}",
                  f"- machine: {info.get('machine')}; load average at the end {_loads(info.get('load_average'))}",
                  f"- command: `{info.get('command')}`",
                  f"- started {info.get('started')}, " + (
                      f"interrupted after {info.get('wall_s')} s (the same command resumes it)"
                      if info.get("interrupted") and info.get("cells_run") is None else
                      f"wall time {info.get('wall_s')} s for {info.get('cells_run')} cells run "
                      f"({info.get('cells_skipped_resume')} already finished)") + f", {info.get('jobs')} at a time"]
        earlier = [h for h in info.get("history", []) if h.get("cells_run")]
        if earlier:
            lines.append("- earlier runs into this directory (shards, resumes): " + "; ".join(
                f"`{h.get('command')}` started {h.get('started')}, {h.get('cells_run')} cells in {h.get('wall_s')} s"
                for h in earlier))
        for note in info.get("notes", []):
            lines.append(f"- note: {note}")
    if superseded:
        lines.append(f"- {superseded} earlier row{'s' if superseded > 1 else ''} left out: a later run of the same "
                     f"backbone, method, task, seed, budget and protocol (other weights or settings) replaces "
                     f"{'each' if superseded > 1 else 'it'} in these tables; `cells.csv` keeps "
                     f"{'them' if superseded > 1 else 'it'}")
    versions = cells["versions"].dropna().unique().tolist() if "versions" in cells else []
    codes = cells["code_version"].dropna().unique().tolist() if "code_version" in cells else []
    devices = cells["device"].dropna().unique().tolist() if "device" in cells else []
    n_images = sorted({int(x) for x in cells["eval_images"].dropna()}) if "eval_images" in cells else []
    seed_counts = sorted(cells[cells["status"] == "ok"].groupby(["task", "method"]).size().unique().tolist())
    one_seed = seed_counts == [1]
    lines += [f"- devices: {', '.join(map(str, devices))}; libraries: {'; '.join(map(str, versions))}; "
              f"code: {', '.join(map(str, codes))}",
              f"- evaluation: {' or '.join(map(str, n_images)) or '?'} images per cell (held-out prompts × fixed "
              f"noises); seeds per method: {', '.join(map(str, seed_counts)) or '–'}", "",
              ("Ranked by final evaluation reward: 1 seed, so the value alone (no interval over seeds). "
               if one_seed else "Ranked by final evaluation reward: mean ± 95% interval over seeds (Student t). ") +
              "Methods share a rank (shown `=`) when they are tied with the best method not yet ranked: " +
              ("with one seed, compared image by image (every method is evaluated on the same prompts and noise): "
               "tied unless the 95% interval of the mean per-image difference lies above 0. A rank says the "
               "evaluation tells the two apart on this seed, not that another training seed would agree. "
               if one_seed else "their 95% intervals over seeds overlap (one-seed methods: compared image by image "
                                "where both have one seed). ") +
              "AUC: mean reward over training (area under reward vs samples). Samples→thr: first evaluated sample "
              "count reaching the task's threshold, half its best gain (initial + ½·(best final − initial)). "
              "Memory: CUDA max allocated (GPU) or process peak RSS (CPU). "
              "Other rewards (the world's rewards a cell was not trained on, and the trained reward's reference) "
              "are shown as final (Δ = final − initial ± 95% interval: over seeds, or with one seed over the "
              "evaluation images, paired); \"falls while trained rises\" names those whose interval lies below 0 "
              "while the headline reward's change lies above 0 (reward hacking). \"Own sampler\": the headline "
              "reward under the method's training sampler (e.g. DDPO's eta 1) on the same prompts and initial "
              "noise, where it differs from the shared evaluation's.", ""]
    summaries = {task: task_summary(cells[cells["task"] == task], curves)
                 for task in sorted(cells["task"].dropna().unique())}
    lines += at_a_glance(summaries)
    for task, summary in summaries.items():
        tc = cells[cells["task"] == task]
        headline = tc["eval_reward"].dropna().iloc[0] if "eval_reward" in tc and tc["eval_reward"].notna().any() \
            else "reward"
        lines += [f"## {task}", "", f"Evaluation reward: `{headline}`" + (
            f"; threshold {_g(summary['threshold'].iloc[0], 4)}" if not summary.empty else ""), ""]
        if not summary.empty:
            extras = [c for c in summary.columns if c.endswith("_final") and not c.endswith("_ci95")
                      and c != "diversity_final"]
            flops = bool(summary["flops_per_sample"].notna().any())
            own = bool((summary["own_sampler"].fillna("shared").replace("", "shared") != "shared").any())
            head = ["#", "method", "final", "initial", "AUC", "samples→thr"] + \
                   (["final, own sampler"] if own else []) + \
                   [f"{c[: -len('_final')]} (Δ)" for c in extras] + \
                   ["diversity (Δ)", "falls while trained rises", "seeds", "samples", "queries", "peak MB",
                    "samples/s", "s/step sample·reward·backward"] \
                   + (["TFLOP/sample", "MFU"] if flops else [])
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            sizes = summary["group"].value_counts()
            for i, r in summary.iterrows():
                cols = [_rank(r["group"], sizes), f"**{r['method']}**" if r["group"] == 1 else r["method"],
                        _pm(r["final"], r["final_ci95"], r["seeds"]),
                        _fmt(r["initial"]), _fmt(r["auc"]), _fmt(r["samples_to_threshold"])]
                if own:
                    cols.append("= shared" if r["own_sampler"] in ("shared", "") else
                                f"{_fmt(r['own_end'])} (from {_fmt(r['own_start'])})")
                cols += [f"{_pm(r[c], r[c + '_ci95'], r['seeds'])} "
                         f"({_change(r[c[: -len('_final')] + '_delta'], r[c[: -len('_final')] + '_delta_ci95'])})"
                         for c in extras]
                cols += [f"{_fmt(r['diversity_final'], 3)} ({_change(r['diversity_delta'], r['diversity_delta_ci95'])})",
                         ", ".join(f"**{f}**" for f in r["flags"]) or "–",
                         str(r["seeds"]), str(r["budget"]), _fmt(r["reward_queries"]),
                         _fmt(r["peak_mem_mb"], 5), _fmt(r["samples_per_s"], 3),
                         f"{_fmt(r['s_sampling'], 2)}·{_fmt(r['s_reward'], 2)}·{_fmt(r['s_backward'], 2)}"]
                if flops:
                    cols += [_fmt(r["flops_per_sample"] / 1e12, 3),
                             f"{r['mfu']:.1%}" if math.isfinite(r["mfu"]) else "–"]
                lines.append("| " + " | ".join(cols) + " |")
            if own:
                lines += ["", "Own training samplers: " + "; ".join(
                    f"{r['method']}: {r['own_sampler']}" for _, r in summary.iterrows()
                    if r["own_sampler"] not in ("shared", "")) + " (the others train with the shared sampler)."]
        failed = tc[tc["status"] != "ok"]
        if not failed.empty:
            lines += ["", "Cells that did not finish cleanly:", ""]
            for _, r in failed.iterrows():
                lines.append(f"- {r['method']} seed {r['seed']}: **{r['status']}** — {r.get('message', '')}")
        lines.append("")
    lines += side_by_side(cells)
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


def _gain(tc: pd.DataFrame, method: str) -> tuple[float, float]:
    """The method's change in evaluation reward, final − initial, with its 95% interval (over seeds, or with one
    seed the paired per-image interval)."""
    g = tc[tc["method"] == method]
    g = g[g["budget"] == g["budget"].max()]
    return change_ci95(g, "reward_final", "reward_initial", "reward_delta_ci95")


def _improved(d: float, h: float) -> bool:
    """A reference method's change ``d`` ± ``h`` (``_gain``) is an improvement when its 95% interval lies above 0
    (no interval: the change > 0)."""
    return math.isfinite(d) and d - (h if math.isfinite(h) else 0.0) > 0


def _reach(grid: np.ndarray, mean: np.ndarray, target: float, budget: int) -> str:
    s = metrics.samples_to_threshold(grid, mean, target) if len(grid) else math.nan
    return f"not within its {budget} samples" if math.isnan(s) else f"{int(s)}"


def claims(cells: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """The papers' qualitative claims, each with the rule it tests, the numbers it uses (curves averaged over seeds,
    at the evaluated sample counts) and a verdict. No claim is assumed."""
    ok = cells[cells["status"] == "ok"]
    seeds = sorted(ok.groupby(["task", "method"]).size().unique().tolist())
    out = ["## The papers' claims, as measured here", "",
           f"Seeds per method: {', '.join(map(str, seeds)) or '–'}" +
           ("; with fewer than 3 seeds these are indications, not evidence." if min(seeds, default=0) < 3
            else "; curves are means over seeds.") +
           " \"Reaches X at N\": N is the first evaluated sample count at which the method's mean evaluation reward "
           "is ≥ X.", ""]
    budget_of = lambda tc, m: int(tc.loc[tc["method"] == m, "budget"].max())  # noqa: E731
    tally: list[tuple[str, str, str]] = []  # (claim, where, verdict) for the across-tasks summary
    for task in sorted(ok["task"].unique()):
        tc = ok[ok["task"] == task]
        finals = tc.groupby("method")["reward_final"].mean()
        if "ddpo" in finals and any(m in finals for m in GRADIENT_METHODS):  # a DDPO-only suite compares nothing
            target = finals["ddpo"]
            ddpo_initial = tc.loc[tc["method"] == "ddpo", "reward_initial"].mean()
            ddpo_budget = budget_of(tc, "ddpo")
            limit = ddpo_budget / 10
            reached = {}
            for m in [m for m in GRADIENT_METHODS if m in finals]:
                grid, mean = _mean_curve(tc, curves, m)
                reached[m] = (metrics.samples_to_threshold(grid, mean, target) if len(grid) else math.nan,
                              _reach(grid, mean, target, budget_of(tc, m)))
            first_eval = min((g.min() for g in [np.array(sorted(curves.loc[curves["cell_id"].isin(tc["cell_id"]),
                                                                            "samples"].unique()))] if len(g)
                              for g in [g[g > 0]] if len(g)), default=math.nan)
            d, h = _gain(tc, "ddpo")
            if not _improved(d, h):
                verdict = f"not testable: DDPO did not improve on its initial reward ({_change(d, h)})"
            elif any(v[0] <= limit for v in reached.values() if math.isfinite(v[0])):
                verdict = "holds"
            elif math.isfinite(first_eval) and first_eval > limit:
                verdict = (f"not testable at this evaluation grid: the first evaluation after training is at "
                           f"{int(first_eval)} samples, more than {limit:g}")
            else:
                verdict = "does not hold"
            out.append(f"- {task} — claim: a gradient method reaches DDPO's final reward {_g(target, 4)} (DDPO: "
                       f"{_g(ddpo_initial, 4)} → {_g(target, 4)} in {ddpo_budget} samples) within {limit:g} samples "
                       f"(10× fewer). Measured: " + ", ".join(f"{m} {v[1]}" for m, v in reached.items()) +
                       f". Verdict: {verdict}.")
            tally.append((CLAIM_SAMPLE_EFFICIENCY, task, verdict))
        if "draft-lv" in finals and "draft-1" in finals:
            grid, mean = _mean_curve(tc, curves, "draft-lv")
            b1 = budget_of(tc, "draft-1")
            s = metrics.samples_to_threshold(grid, mean, finals["draft-1"]) if len(grid) else math.nan
            verdict = "holds" if math.isfinite(s) and s < b1 else "does not hold"
            d, h = _gain(tc, "draft-1")
            if not _improved(d, h):  # reaching a final at or below the start says nothing of speed
                verdict = f"not testable: DRaFT-1 did not improve on its initial reward ({_change(d, h)})"
            out.append(f"- {task} — claim: DRaFT-LV reaches DRaFT-1's final reward {_g(finals['draft-1'], 4)} "
                       f"(at {b1} samples) with fewer samples than {b1}. Measured: DRaFT-LV "
                       f"{_reach(grid, mean, finals['draft-1'], budget_of(tc, 'draft-lv'))}"
                       f"{' samples' if math.isfinite(s) else ''} (final {_g(finals['draft-lv'], 4)}). "
                       f"Verdict: {verdict}.")
            tally.append((CLAIM_LV, task, verdict))
    # the truncated variants: DRaFT-K/-1 (the last K steps) and AlignProp (a random cutoff: its paper's remedy for the
    # collapse of full backpropagation)
    trunc = [m for m in TRUNCATED_METHODS if m in ok["method"].unique()]
    if "draft" in cells["method"].unique() and trunc:
        for task in sorted(cells["task"].unique()):
            stats = {}
            for m in ["draft"] + trunc:
                g = cells[(cells["method"] == m) & (cells["task"] == task)]
                if g.empty:
                    continue
                drops = []
                for _, r in g[g["status"] == "ok"].iterrows():
                    c = curves[curves["cell_id"] == r["cell_id"]].sort_values("samples")
                    col = curve_column(r)
                    if col in c and len(c) > 1:
                        drops.append(float(np.max(np.maximum.accumulate(c[col].values) - c[col].values)))
                finals_m = g.loc[g["status"] == "ok", "reward_final"]
                drop, half = metrics.mean_ci95(drops)
                stats[m] = dict(failed=int((g["status"] != "ok").sum()), drop=drop, half=half, seeds=len(drops),
                                sd=finals_m.std(ddof=1) if len(finals_m) > 1 else math.nan)
            if "draft" not in stats or len(stats) < 2:
                continue
            full = stats["draft"]
            others = [v for k, v in stats.items() if k != "draft"]
            # a larger drop counts where the intervals over seeds do not overlap (one seed: the values themselves)
            holds = all(full["failed"] > o["failed"] for o in others) or all(
                math.isfinite(full["drop"]) and math.isfinite(o["drop"])
                and full["drop"] - full["half"] > o["drop"] + o["half"] for o in others)
            out.append(f"- {task} — claim: full backpropagation (DRaFT) is less stable than truncated (" +
                       "/".join(k for k in stats if k != "draft") + "); rule: more failed cells, or a larger mean "
                       "drop below the running best reward during training than every truncated variant, their 95% "
                       "intervals over seeds apart. Measured: " +
                       "; ".join(f"{m}: {v['failed']} failed, mean drop {_pm(v['drop'], v['half'], v['seeds'])}, "
                                 f"final sd over seeds {_fmt(v['sd'], 3)}" for m, v in stats.items())
                       + f". Verdict: {'holds' if holds else 'does not hold'}.")
            tally.append((CLAIM_STABILITY, task, "holds" if holds else "does not hold"))
    gold_col = next((c for c in cells.columns if c.startswith("shapes-gold-aesthetic") and c.endswith("_final")), None)
    if gold_col:
        init_col = gold_col.replace("_final", "_initial")
        gold_name = gold_col[: -len("_final")]
        # only where the trained reward is the gold's learned proxy (the task evaluates both: shapes-aesthetic), per
        # task and backbone: elsewhere the gold is a cross reward (its fall is the "falls while trained rises" flag),
        # and a proxy averaged over tasks or models with different scales means nothing
        for task, tg in ok[ok[gold_col].notna()].groupby("task"):
            if not _evaluates(tg["base_task"].iloc[0] if "base_task" in tg else task, gold_name):
                continue
            out += _overoptimisation(task, tg, curves, init_col, gold_col, gold_col.replace("_final", "_mean"), tally)
    out += across_tasks(tally)
    out.append("")
    return out


CLAIM_SAMPLE_EFFICIENCY = "a gradient method reaches DDPO's final reward with 10× fewer samples"
CLAIM_LV = "DRaFT-LV reaches DRaFT-1's final reward with fewer samples"
CLAIM_STABILITY = "full backpropagation is less stable than truncated"
TRUNCATED_METHODS = ("draft-1", "draft-k", "alignprop")
CLAIM_OVEROPTIMISATION = "the proxy rises while the gold falls"
CLAIM_PEAK_THEN_FALL = "the gold peaks, then falls while the proxy goes on rising"


def across_tasks(tally: list[tuple[str, str, str]]) -> list[str]:
    """Each claim's verdicts over the tasks (and, for over-optimisation, the methods) that tested it: reproduced
    where every testable one holds, not reproduced where none does, mixed otherwise; untestable ones are named."""
    if not tally:
        return []
    out = ["", "### Each claim across tasks", ""]
    for claim in dict.fromkeys(c for c, _, _ in tally):
        results = [(where, v) for c, where, v in tally if c == claim]
        tested = [(where, v) for where, v in results if not v.startswith("not testable")]
        held = [where for where, v in tested if v == "holds"]
        summary = ("not testable" if not tested else "reproduced" if len(held) == len(tested)
                   else "not reproduced" if not held else "mixed")
        untestable = [where for where, v in results if v.startswith("not testable")]
        parts = [f"holds in {len(held)} of {len(tested)}" + (f" ({', '.join(held)})" if 0 < len(held) < len(tested)
                                                              else "")] if tested else []
        if untestable:
            parts.append(f"not testable in {', '.join(untestable)}")
        out.append(f"- {claim}: " + (f"{summary} — {'; '.join(parts)}." if tested else f"{parts[0]}."))
    return out


def _evaluates(task: str, reward: str) -> bool:
    """Whether ``task``'s definition evaluates ``reward`` beside its own (its ``eval_rewards``); a task not
    registered here (results from elsewhere) is judged by its rows, which report the reward beside its own."""
    from bench import tasks as tasks_mod

    try:
        definition = tasks_mod.get(task)
    except Exception:
        return True
    return reward in definition.eval_rewards


def _overoptimisation(task: str, ga: pd.DataFrame, curves: pd.DataFrame, init_col: str, gold_col: str,
                      gold_curve: str, tally: list[tuple[str, str, str]]) -> list[str]:
    out = []
    for m, g in ga.groupby("method"):
        p0, p1 = g["reward_initial"].mean(), g["reward_final"].mean()
        g0, g1 = g[init_col].mean(), g[gold_col].mean()
        line = (f"- over-optimisation, {task}, {m} — claim: the proxy reward rises while the gold one falls; rule: "
                f"proxy final > initial and gold final < initial. Measured: proxy {_g(p0, 4)} → {_g(p1, 4)}, gold "
                f"{_g(g0, 4)} → {_g(g1, 4)}")
        grid, gold = _mean_curve(ga, curves, m, gold_curve)
        peak_line = None
        if len(grid) > 2 and np.isfinite(gold).any():
            peak = int(np.nanargmax(gold))
            _, proxy = _mean_curve(ga, curves, m)
            line += f"; gold peaks at {_g(gold[peak], 4)} after {int(grid[peak])} samples" + (
                f", then falls by {_g(gold[peak] - gold[-1], 3)} while the proxy changes by "
                f"{_g(proxy[-1] - proxy[peak], 3, sign=True)}" if peak < len(grid) - 1 else " (the last evaluation)")
            peak_line = _gold_peak_then_fall(task, m, g, ga, curves, grid, gold, proxy, peak, gold_curve, tally)
        verdict = "holds" if p1 > p0 and g1 < g0 else "does not hold"
        line += f". Verdict: {verdict}."
        out.append(line)
        tally.append((CLAIM_OVEROPTIMISATION, f"{task} {m}", verdict))
        if peak_line:
            out.append(peak_line)
    return out


def _gold_peak_then_fall(task: str, m: str, g: pd.DataFrame, ga: pd.DataFrame, curves: pd.DataFrame,
                         grid: np.ndarray, gold: np.ndarray, proxy: np.ndarray, peak: int, gold_curve: str,
                         tally: list[tuple[str, str, str]]) -> str:
    """Over-optimisation as the reward-model literature measures it (Gao et al. 2022): the gold rises, peaks, then
    falls while the proxy goes on rising. Rule: after the gold's peak (not the last evaluation) the gold falls by
    more than the 95% interval of its mean at the peak (over the evaluation images × seeds, unpaired: conservative)
    and the proxy ends above its value at the peak."""
    fall, rise = gold[peak] - gold[-1], proxy[-1] - proxy[peak]
    _, spread = _mean_curve(ga, curves, m, gold_curve.replace("_mean", "_std"))
    n = float(g["eval_images"].sum()) if "eval_images" in g else math.nan
    half = _ci_images(float(spread[peak]), n) if len(spread) else math.nan
    holds = peak < len(grid) - 1 and rise > 0 and math.isfinite(half) and fall > half
    verdict = "holds" if holds else "does not hold" if math.isfinite(half) else "not testable: no gold spread"
    tally.append((CLAIM_PEAK_THEN_FALL, f"{task} {m}", verdict))
    return (f"- over-optimisation after a peak, {task}, {m} — claim: the gold peaks, then falls while the proxy "
            f"goes on rising; rule: after the gold's peak (not the last evaluation) the gold falls by more than its "
            f"95% interval at the peak and the proxy ends above its value there. Measured: gold peak "
            f"{_g(gold[peak], 4)} at {int(grid[peak])} of {int(grid[-1])} samples, fall {_g(fall, 3)} (interval "
            f"± {_g(half, 3)} over {n:.0f} images), proxy {_g(rise, 3, sign=True)} after the peak. "
            f"Verdict: {verdict}.")


def build(out_dir: str | Path, plots: bool = True) -> str:
    """Write ``leaderboard.md`` (and ``plots/``) from the CSVs; returns the markdown."""
    out_dir = Path(out_dir)
    text, cells, curves = _render(out_dir)
    write_atomic(out_dir / "leaderboard.md", text)
    if plots:
        from bench import plots as plots_mod

        plots_mod.write_all(out_dir, cells, curves)
    return text


def render(out_dir: str | Path) -> str:
    """The markdown that ``build`` would write, without writing anything."""
    return _render(Path(out_dir))[0]


#: what makes two rows the same cell for the tables (budget and protocol: a directory may rank several of each
#: side by side): a rerun of it under other weights or settings (a retrained testbed puts its fingerprint in the cell
#: id, so the rerun is a new row) supersedes the earlier row
CELL_KEY = ("backbone", "method", "task", "seed", "budget", "protocol")


def latest_per_cell(cells: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per backbone, method, task, seed, budget and protocol, the last written (rows are appended in the
    order runs finish), and how many earlier rows it left out: they stay in ``cells.csv`` but must not count as
    further seeds."""
    key = [k for k in CELL_KEY if k in cells]
    if cells.empty or not set(CELL_KEY[:4]) <= set(key):
        return cells, 0
    keep = ~cells.astype({k: str for k in key})[key].duplicated(keep="last")  # NaN budgets compare as text
    return cells[keep].reset_index(drop=True), int((~keep).sum())


def _render(out_dir: Path):
    cells = read_csv(out_dir / "cells.csv")
    if cells.empty:
        raise FileNotFoundError(f"no cells in {out_dir / 'cells.csv'}")
    cells, superseded = latest_per_cell(cells)
    curves = read_csv(out_dir / "curves.csv")
    info_path = out_dir / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    for col in ("eval_reward", "reward_final", "reward_initial", "reward_auc", "peak_mem_mb", "samples_per_s",
                "s_per_step_sampling", "s_per_step_reward", "s_per_step_backward", "reward_queries", "protocol",
                "budget"):
        if col not in cells:
            cells[col] = math.nan
    cells = split_backbones(cells)
    return markdown(out_dir, cells, curves, info, superseded=superseded), cells, curves


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m bench leaderboard", description=__doc__, epilog=examples(
        "python -m bench leaderboard runs/quick             # rewrite runs/quick/leaderboard.md and plots/",
        "python -m bench leaderboard results/quick --check  # exit 1 if the committed leaderboard.md is stale"),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="a results directory holding cells.csv and curves.csv")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if DIR/leaderboard.md differs "
                        "from what the CSVs rebuild")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    if not (directory / "cells.csv").exists():
        raise UsageError(f"leaderboard: {directory / 'cells.csv'} not found")
    if args.check:
        current = (directory / "leaderboard.md").read_text() if (directory / "leaderboard.md").exists() else ""
        if current != render(directory):
            print(f"{directory / 'leaderboard.md'} is stale: rebuild it with python -m bench leaderboard {directory}")
            return 1
        print(f"{directory / 'leaderboard.md'} matches its CSVs")
        return 0
    print(build(directory, plots=not args.no_plots))
    return 0
