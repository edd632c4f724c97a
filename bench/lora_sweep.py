"""``python -m bench lora-sweep DIR --method M --task A [--task-b B]``: LoRA scaling and mixing (DRaFT slides).

Loads the LoRAs that a grid saved in ``DIR/cells/<cell>/lora`` and evaluates, on the tasks' fixed evaluation prompts
and fixed noise:

* scaling: θ + α·Δ_A for α in ``--scales`` (default 0, .25, .5, .75, 1; α=0 is the base model, α=1 the tuned one);
* mixing (with ``--task-b``): θ + α·Δ_A + β·Δ_B for α, β in ``--mix-scales`` (default 0, .5, 1), each mixture
  scored by both tasks' rewards.

Writes ``runs/lora-sweep/<method>__<A>[__<B>].csv`` (``--out``), a markdown table, a plot and an image grid (one
row per α, the prompt under each column, the same noise in every row).
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench.args import Parser, UsageError, examples
from bench.results import read_csv, write_atomic


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"lora-sweep: expected comma-separated numbers, got {text!r}") from None


def find_cell(cells: pd.DataFrame, method: str, task: str, seed: int) -> pd.Series:
    hit = cells[(cells["method"] == method) & (cells["task"] == task) & (cells["seed"] == seed) &
                (cells["status"] == "ok")]
    if hit.empty:
        raise UsageError(f"lora-sweep: no finished cell for method {method!r}, task {task!r}, seed {seed}")
    return hit.iloc[-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m bench lora-sweep", description=__doc__, epilog=examples(
        "python -m bench lora-sweep results/quick --method draft-lv --task shapes-aesthetic --task-b shapes-alignment"),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", default="results/quick")
    parser.add_argument("--method", default="draft-lv")
    parser.add_argument("--task", default="shapes-aesthetic", help="task A (its LoRA is scaled)")
    parser.add_argument("--task-b", default=None, help="task B: mix A's and B's LoRAs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--mix-scales", default="0,0.5,1")
    parser.add_argument("--num-steps", type=int, default=None, help="default: the grid's protocol")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--images-per-prompt", type=int, default=None,
                        help="default: the grid's (run_info.json), so α = 1 reproduces the leaderboard's final reward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/lora-sweep", help="output directory (default runs/lora-sweep)")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    cells = read_csv(directory / "cells.csv")
    if cells.empty:
        raise UsageError(f"lora-sweep: {directory / 'cells.csv'} not found or empty")
    info_path = directory / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    protocol = info.get("shared_protocol", {})
    num_steps = args.num_steps or protocol.get("num_steps", 20)
    guidance = args.guidance_scale if args.guidance_scale is not None else protocol.get("guidance_scale", 5.0)
    scales, mix = _floats(args.scales), _floats(args.mix_scales)
    args.images_per_prompt = args.images_per_prompt or int(info.get("eval_images_per_prompt") or 2)

    import torch

    import rewards
    from bench import backbones, catalog, tasks

    catalog.load_registries()
    from bench.cell import Evaluator

    task_names = [args.task] + ([args.task_b] if args.task_b else [])
    rows_cells = [find_cell(cells, args.method, t, args.seed) for t in task_names]
    loras = []
    for r in rows_cells:
        path = directory / "cells" / r["cell_id"] / "lora"
        if not path.exists():
            raise UsageError(f"lora-sweep: LoRA of cell {r['cell_id']} not found at {path}")
        loras.append(path)
    backbone_name = rows_cells[0]["backbone"]
    backbone = backbones.create(backbone_name, device=args.device, lora_rank=None)
    backbone.load_loras([(p, 1.0) for p in loras])
    names = [f"lora{i}" for i in range(len(loras))]
    evaluators = {}
    for t in task_names:
        task = tasks.get(t)
        kw = task.cell_kwargs()
        reward_name = next(iter(kw["eval_rewards"])) if kw["eval_rewards"] else task.reward
        reward_kwargs = kw["eval_rewards"].get(reward_name, kw["reward_kwargs"]) if kw["eval_rewards"] \
            else kw["reward_kwargs"]
        reward = rewards.create(reward_name, **reward_kwargs).to(backbone.device)
        evaluators[t] = (reward_name, Evaluator(backbone, {reward_name: reward}, kw["eval_prompts"],
                                                num_steps=num_steps, guidance_scale=guidance,
                                                images_per_prompt=args.images_per_prompt, seed=1234))

    sweep_images = []

    def score(weights: list[float], keep: bool = False) -> dict[str, float]:
        backbone.unet.set_adapters(names, weights)
        out = {}
        for i, (t, (reward_name, ev)) in enumerate(evaluators.items()):
            s, imgs = ev()
            out[f"{t}:{reward_name}"] = float(s[reward_name].mean())
            if keep and i == 0:
                sweep_images.append((weights[0], out[f"{t}:{reward_name}"], imgs[:: args.images_per_prompt]))
        return out

    results = []
    torch.manual_seed(0)
    for a in scales:
        weights = [a] + [0.0] * (len(loras) - 1)
        results.append({"kind": "scale", "alpha": a, "beta": 0.0, **score(weights, keep=True)})
    if args.task_b:
        for a, b in itertools.product(mix, mix):
            results.append({"kind": "mix", "alpha": a, "beta": b, **score([a, b])})
    table = pd.DataFrame(results)
    out = Path(args.out)
    stem = "__".join([args.method, *task_names])
    write_atomic(out / f"{stem}.csv", table.to_csv(index=False))
    md = [f"# LoRA sweep: {args.method}, A = {args.task}" + (f", B = {args.task_b}" if args.task_b else ""), "",
          f"θ + α·Δ_A{' + β·Δ_B' if args.task_b else ''}; fixed evaluation prompts and noise, {num_steps} steps, "
          f"CFG {guidance}, {args.images_per_prompt} images per prompt.", "",
          "| kind | α | β | " + " | ".join(c for c in table.columns if ":" in c) + " |",
          "|---|---|---|" + "---|" * sum(":" in c for c in table.columns)]
    for _, r in table.iterrows():
        md.append(f"| {r['kind']} | {r['alpha']:g} | {r['beta']:g} | " +
                  " | ".join(f"{r[c]:.4g}" for c in table.columns if ":" in c) + " |")
    write_atomic(out / f"{stem}.md", "\n".join(md) + "\n")
    _plot(table, out / f"{stem}.png", args)
    from bench import images

    first_prompts = evaluators[args.task][1].prompts[:: args.images_per_prompt]
    images.save_grid(out / f"{stem}_images.png", [im for _, _, im in sweep_images], col_labels=first_prompts,
                     row_labels=[f"α = {a:g} ({r:.3g})" for a, r, _ in sweep_images],
                     title=f"{args.method} LoRA of {args.task} scaled by α; reward per row; same noise per column")
    print("\n".join(md))
    print(f"wrote {out / stem}.csv, .md, .png (plot) and {stem}_images.png")
    return 0


def _plot(table: pd.DataFrame, path: Path, args) -> None:
    """α against each task's reward (one axis per reward: their scales differ), legend below the data."""
    from bench.plots import _plt, _save

    plt = _plt()
    cols = [c for c in table.columns if ":" in c]
    sc = table[table["kind"] == "scale"]
    mx = table[table["kind"] == "mix"]
    ncols = len(cols) * (1 + bool(args.task_b))
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4.2), squeeze=False)
    for i, c in enumerate(cols):
        ax = axes[0][i]
        ax.plot(sc["alpha"], sc[c], marker="o", lw=2)
        ax.set_xlabel(f"α: scale of the {args.task} LoRA", fontsize=11)
        ax.set_ylabel(c.split(":", 1)[1], fontsize=11)
        ax.set_title(f"task {c.split(':', 1)[0]}", fontsize=12)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        if args.task_b:
            ax = axes[0][len(cols) + i]
            for beta, g in mx.groupby("beta"):
                ax.plot(g["alpha"], g[c], marker="o", lw=2, label=f"β = {beta:g}")
            ax.set_xlabel(f"α ({args.task} LoRA); lines: β ({args.task_b} LoRA)", fontsize=11)
            ax.set_ylabel(c.split(":", 1)[1], fontsize=11)
            ax.set_title(f"mixing: task {c.split(':', 1)[0]}", fontsize=12)
            ax.tick_params(labelsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    fig.suptitle(f"LoRA sweep: {args.method}", fontsize=13)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
