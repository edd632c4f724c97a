"""Plots from the CSVs: evaluation reward vs training samples per task (mean and 95% band over seeds, at identical
sample counts), extra evaluation rewards (the gold aesthetic) beside the headline, and memory vs samples/s."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def method_curves(cells: pd.DataFrame, curves: pd.DataFrame, column: str) -> dict[str, tuple[np.ndarray, np.ndarray,
                                                                                              np.ndarray]]:
    """Per method: (sample grid, mean, 95% half-width) over seeds, each seed's curve interpolated on the grid."""
    out = {}
    for method, g in cells.groupby("method"):
        cc = curves[curves["cell_id"].isin(g["cell_id"])]
        if cc.empty or column not in cc:
            continue
        grid = np.array(sorted(cc["samples"].unique()), float)
        per_seed = np.stack([metrics.on_grid(c["samples"], c[column], grid) for _, c in cc.groupby("cell_id")])
        stats = [metrics.mean_ci95(per_seed[:, j].tolist()) for j in range(len(grid))]
        out[method] = (grid, np.array([s[0] for s in stats]), np.array([s[1] for s in stats]))
    return out


#: every method keeps its colour in every plot (matplotlib's cycle has 10 colours and the zoo has 11 methods: two
#: would share one); the line style says the family: through the sampler (solid), likelihood ratio (dashed),
#: forward process (dotted)
METHOD_STYLE = {m: (c, ls) for m, c, ls in [
    ("draft", "#1f77b4", "-"), ("draft-k", "#ff7f0e", "-"), ("draft-1", "#2ca02c", "-"), ("draft-lv", "#d62728", "-"),
    ("alignprop", "#9467bd", "-"), ("drtune", "#8c564b", "-"), ("refl", "#e377c2", "-"), ("ddpo", "#7f7f7f", "--"),
    ("grpo", "#bcbd22", "--"), ("flow-grpo", "#17becf", "--"), ("diffusion-nft", "#000000", ":")]}


def method_style(method: str) -> tuple[str, str]:
    """(colour, line style) of a method; a method not in ``METHOD_STYLE`` gets a colour fixed by its name."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    import zlib

    from matplotlib import colormaps

    return colormaps["tab20b"](zlib.crc32(method.encode()) % 20), "-."


def reward_vs_samples(task: str, cells: pd.DataFrame, curves: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    headline = cells["eval_reward"].dropna().iloc[0]
    columns = [f"{headline}_mean"] + [c for c in curves.columns if c.endswith("_mean") and c != f"{headline}_mean"
                                      and curves.loc[curves["cell_id"].isin(cells["cell_id"]), c].notna().any()]
    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for method, (grid, mean, half) in sorted(method_curves(cells, curves, column).items()):
            colour, style = method_style(method)
            ax.plot(grid, mean, marker="o", ms=3, label=method, color=colour, linestyle=style)
            ax.fill_between(grid, mean - np.nan_to_num(half), mean + np.nan_to_num(half), color=colour, alpha=0.15)
        ax.set_xlabel("training samples")
        ax.set_ylabel(column[: -len("_mean")])
        ax.grid(alpha=0.3)
    axes[0][0].set_title(f"{task}: evaluation reward vs samples")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def throughput_points(cells: pd.DataFrame) -> pd.DataFrame:
    """One point per method and backbone (a method's memory and speed on one model and on another are different
    facts, never averaged): mean samples/s and peak MB over its finished cells."""
    ok = cells[cells["status"] == "ok"]
    keys = ["method", "backbone"] if "backbone" in ok else ["method"]
    pts = ok.groupby(keys, sort=True)[["samples_per_s", "peak_mem_mb"]].mean().reset_index()
    return pts[np.isfinite(pts["samples_per_s"]) & np.isfinite(pts["peak_mem_mb"])]


def memory_vs_throughput(cells: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ok = cells[cells["status"] == "ok"]
    pts = throughput_points(cells)
    backbones = sorted(pts["backbone"].unique()) if "backbone" in pts else []
    markers = dict(zip(backbones, "os^Dv"))
    named = set()
    for r in pts.itertuples():  # a marker per backbone (legend), the method's name once beside its first point
        ax.scatter(r.samples_per_s, r.peak_mem_mb, s=40, color=method_style(r.method)[0],
                   marker=markers.get(getattr(r, "backbone", None), "o"))
        if r.method not in named:
            named.add(r.method)
            ax.annotate(r.method, (r.samples_per_s, r.peak_mem_mb), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
    if len(backbones) > 1:
        for b in backbones:
            ax.scatter([], [], marker=markers.get(b, "o"), color="grey", label=b)
        ax.legend(fontsize=8, title="backbone", title_fontsize=8)
    device = ", ".join(map(str, ok["device"].dropna().unique())) if "device" in ok else ""
    ax.margins(x=0.12, y=0.08)  # room for the names beside the outermost points
    ax.set_xlabel("training samples / s")
    ax.set_ylabel("peak memory (MB)")
    ax.set_title(f"memory vs throughput ({device})")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def write_all(out_dir: Path, cells: pd.DataFrame, curves: pd.DataFrame) -> list[Path]:
    paths = []
    ok = cells[cells["status"] == "ok"]
    if not curves.empty:
        for task, g in ok.groupby("task"):
            p = out_dir / "plots" / f"reward_vs_samples_{task.replace(' ', '_')}.png"
            reward_vs_samples(task, g, curves, p)
            paths.append(p)
    if not ok.empty:
        p = out_dir / "plots" / "memory_vs_throughput.png"
        memory_vs_throughput(cells, p)
        paths.append(p)
    return paths
