"""``python -m bench``: run cells and grids, list what is registered, sample images.

Bad input (unknown names, invalid numbers, missing weights) prints one line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message}")


def _load_plugins() -> None:
    """Import the modules that register backbones, methods and rewards (the testbed registers its own)."""
    import methods  # noqa: F401
    import rewards  # noqa: F401
    from bench import backbones  # noqa: F401

    for name in ("bench.testbed",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def parse_value(text: str) -> Any:
    """``--set key=value`` values: JSON where it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: Sequence[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


# ----------------------------------------------------------------------------------------------------------- run
def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate one cell, or a grid of cells (--grid)")
    p.add_argument("--grid", action="store_true", help="run a preset grid (default preset: quick)")
    p.add_argument("--preset", default=None, help="grid preset (quick, ci, paper, sd15, systems)")
    p.add_argument("--method", "--methods", dest="method", default=None,
                   help="method name (grid: comma-separated list or wildcard)")
    p.add_argument("--task", "--tasks", dest="task", default=None, help="task name (grid: comma-separated)")
    p.add_argument("--reward", default=None, help="reward name, when no task is given")
    p.add_argument("--reward-arg", action="append", metavar="KEY=VALUE", help="reward constructor argument")
    p.add_argument("--backbone", default=None, help="backbone name (see `bench list`)")
    p.add_argument("--backbone-path", default=None, help="local diffusers directory (or hub id) for the backbone")
    p.add_argument("--seed", "--seeds", dest="seeds", default=None,
                   help="seed, or for several: a count (`--seeds 3` = 0,1,2) or a list (`0,4,7`)")
    p.add_argument("--budget", type=int, default=None, help="training samples per cell")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N training samples")
    p.add_argument("--num-steps", type=int, default=None, help="sampling steps")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting, e.g. truncation_steps=3")
    p.add_argument("--protocol", choices=["shared", "reference"], default="shared")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16")
    p.add_argument("--suite", default=None, help="results/<suite>/ (default: the preset's name, or 'runs')")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--no-resume", action="store_true", help="grid: rerun cells that already finished")
    p.add_argument("--shard", default=None, help="grid: run shard i of n, as i/n")
    p.add_argument("--limit", type=int, default=None, help="grid: run at most N cells")
    p.add_argument("--jobs", type=int, default=None, help="grid: cells run at once, each in its own process "
                   "(default: the preset's)")
    p.add_argument("--plugins", default=None, help="grid: comma-separated modules to import in every cell "
                   "(registering extra methods, rewards or tasks)")


def _seed_list(text: str | None, default: Sequence[int] = (0,)) -> list[int]:
    if text is None:
        return list(default)
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise UsageError(f"--seeds expects a count or a comma-separated list of integers, got {text!r}") from None
    return [n] if n == 0 else list(range(n)) if n > 0 else [n]


def cmd_run(args) -> int:
    if args.grid or args.preset:
        from bench import grid

        return grid.run_from_args(args)
    from bench.cell import CellSpec, run_cell
    from bench.results import append_rows

    if not args.method:
        raise UsageError("run: --method is required (or --grid); see `python -m bench list`")
    method_kwargs = parse_settings(args.set)
    for key in ("num_steps", "guidance_scale", "eta", "lr"):
        if getattr(args, key) is not None:
            method_kwargs[key] = getattr(args, key)
    spec_kwargs: dict[str, Any] = {}
    if args.task:
        from bench import tasks

        spec_kwargs.update(tasks.get(args.task).cell_kwargs(args.method))
    elif args.reward:
        spec_kwargs["reward"] = args.reward
        spec_kwargs["reward_kwargs"] = parse_settings(args.reward_arg)
    else:
        raise UsageError("run: give --task or --reward")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for key in ("budget", "batch_size", "eval_every", "dtype", "backbone_path"):
        if getattr(args, key) is not None:
            spec_kwargs[key] = getattr(args, key)
    seeds = _seed_list(args.seeds)
    suite = args.suite or "runs"
    import methods
    import rewards

    methods.get(args.method)  # unknown names: one line before any work
    if spec_kwargs.get("reward") not in rewards.available():
        rewards.create(spec_kwargs.get("reward"))
    rows = []
    for seed in seeds:
        spec = CellSpec(method=args.method, backbone=args.backbone or spec_kwargs.pop("backbone", "tiny"),
                        seed=seed, method_kwargs=method_kwargs, protocol=args.protocol, device=device,
                        suite=suite, results_dir=args.results_dir, **spec_kwargs)
        print(f"cell {spec.cell_id}: {spec.method} on {spec.backbone}, reward {spec.reward}, "
              f"budget {spec.budget} samples, seed {seed}", flush=True)
        row, curve = run_cell(spec, on_progress=lambda p: print(
            f"  samples {p['samples']:>5}  eval reward {p['reward']:.4f}", flush=True))
        if row["message"]:
            print(f"  note: {row['message']}")
        out = Path(args.results_dir) / suite
        append_rows(out / "cells.csv", [row], key=["cell_id"])
        append_rows(out / "curves.csv", curve, key=["cell_id", "samples"])
        print(f"  {row['status']}: {row['eval_reward']} {row['reward_initial']:.4f} -> {row['reward_final']:.4f} "
              f"in {row['train_wall_s']:.1f}s training ({row['samples_per_s']:.2f} samples/s, "
              f"peak {row['peak_mem_mb']:.0f} MB); row appended to {out / 'cells.csv'}", flush=True)
        rows.append(row)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


# ---------------------------------------------------------------------------------------------------------- list
def cmd_list(args) -> int:
    import methods
    import rewards
    from bench import backbones

    sections = [("backbones", backbones.describe()), ("methods", methods.describe()), ("rewards", rewards.describe())]
    try:
        from bench import tasks

        sections.append(("tasks", tasks.describe()))
    except ImportError:
        pass
    try:
        from bench import presets

        sections.append(("presets", presets.describe()))
    except ImportError:
        pass
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, items in sections:
        if args.what and args.what != title:
            continue
        table = Table(title=title, show_header=False, title_justify="left")
        for name, doc in items.items():
            table.add_row(name, doc)
        console.print(table)
    return 0


# -------------------------------------------------------------------------------------------------------- sample
def parse_lora(text: str) -> tuple[str, float]:
    path, _, scale = text.rpartition(":") if ":" in text else (text, "", "1")
    if not path:
        path, scale = text, "1"
    try:
        return path, float(scale)
    except ValueError:
        raise UsageError(f"--lora expects PATH[:SCALE], got {text!r}") from None


def cmd_sample(args) -> int:
    import torch

    from bench import backbones
    from bench.cell import save_image_grid
    from methods.sampling import sample

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kw = {"path": args.backbone_path} if args.backbone_path else {}
    backbone = backbones.create(args.backbone, device=device, lora_rank=None if args.lora else 4, **kw)
    if args.lora:
        backbone.load_loras([parse_lora(x) for x in args.lora])
    prompts = [p for p in args.prompt for _ in range(args.num)]
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(backbone.latent_shape(len(prompts)), generator=gen).to(backbone.device)
    with torch.no_grad():
        out = sample(backbone, backbone.encode_prompts(prompts), noise, num_steps=args.num_steps,
                     guidance_scale=args.guidance_scale, eta=0.0)
        images = backbone.decode(out.latents)
    save_image_grid(images.cpu(), Path(args.out), nrow=args.num)
    print(f"wrote {args.out} ({len(prompts)} images)")
    return 0


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a PNG grid from a backbone, optionally with LoRAs")
    p.add_argument("--backbone", default="shapes")
    p.add_argument("--backbone-path", default=None)
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]", help="repeatable: mixes LoRAs")
    p.add_argument("--num", type=int, default=8, help="images per prompt")
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="grid.png")


# ----------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_run_parser(sub)
    p = sub.add_parser("list", help="backbones, methods, rewards, tasks, presets")
    p.add_argument("what", nargs="?", choices=["backbones", "methods", "rewards", "tasks", "presets"])
    add_sample_parser(sub)
    for name, module, help_ in EXTRA_COMMANDS:
        sp = sub.add_parser(name, help=help_, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


#: subcommands whose modules parse their own arguments: (name, module with main(argv), help)
EXTRA_COMMANDS = [
    ("testbed", "bench.testbed.cli", "train the shapes testbed's models, measure its quality gates"),
    ("leaderboard", "bench.leaderboard", "rebuild markdown tables and plots from a results directory"),
    ("compare", "bench.compare", "compare two cells.csv files; exit 1 on a regression"),
    ("lora-sweep", "bench.lora_sweep", "evaluate LoRA scales and mixtures"),
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = argv
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        extra = {name: module for name, module, _ in EXTRA_COMMANDS}
        _load_plugins()
        if args.command in extra:
            return int(importlib.import_module(extra[args.command]).main(args.rest) or 0)
        return {"run": cmd_run, "list": cmd_list, "sample": cmd_sample}[args.command](args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*kept in float32.*")
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
    except ImportError:
        pass
