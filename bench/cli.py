"""``python -m bench``: run cells and grids, list what is registered, sample images.

Bad input (unknown names, invalid numbers, missing weights) prints one line and exits 2, never a traceback.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from bench import catalog
from bench.args import EXIT_USAGE, Parser, UsageError, examples, parse_seeds, parse_settings

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)

# ----------------------------------------------------------------------------------------------------------- run
RUN_EXAMPLES = examples(
    "python -m bench run --grid                                    # the quick preset: every method x testbed task",
    "python -m bench run --grid --preset ci --methods 'draft*' --seeds 2",
    "python -m bench run --method draft-lv --task shapes-aesthetic --seeds 3   # one grid cell, 3 seeds",
    "python -m bench run --method draft-k --reward jpeg-compressibility --backbone tiny --set truncation_steps=1")


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate one cell, or a grid of cells (--grid)",
                       description="Train and evaluate one cell (--method with --task or --reward), or a preset's grid "
                                   "(--grid). A cell with --task uses the same protocol, evaluation set and budget as "
                                   "that task's cell in the default grid (the `quick` preset on the testbed, `sd15` "
                                   "on real tasks), so it reproduces one leaderboard cell.", epilog=RUN_EXAMPLES)
    p.add_argument("--grid", action="store_true", help="run a preset grid (default preset: quick)")
    p.add_argument("--preset", default=None, help="preset (`python -m bench list presets` lists them): the grid to run, or the "
                   "protocol of one cell (default: quick for testbed tasks, sd15 for real ones)")
    p.add_argument("--method", "--methods", dest="method", default=None,
                   help="method name (grid: comma-separated list or wildcard)")
    p.add_argument("--task", "--tasks", dest="task", default=None, help="task name (grid: comma-separated)")
    p.add_argument("--reward", default=None, help="reward name, when no task is given")
    p.add_argument("--reward-arg", action="append", metavar="KEY=VALUE", help="reward constructor argument (one cell)")
    p.add_argument("--backbone", default=None, help="backbone name (see `bench list`)")
    p.add_argument("--backbone-path", default=None, help="local diffusers directory (or hub id) for the backbone")
    p.add_argument("--vae-path", default=None, help="an AutoencoderKL (local directory or hub id) replacing the "
                   "backbone's VAE, e.g. madebyollin/sdxl-vae-fp16-fix to decode SDXL in fp16")
    p.add_argument("--seed", default=None, help="exactly this one seed (e.g. --seed 1)")
    p.add_argument("--seeds", default=None, help="several seeds: a count (--seeds 3 = 0,1,2) or a list (0,4,7)")
    p.add_argument("--budget", type=int, default=None, help="training samples per cell")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N training samples")
    p.add_argument("--eval-prompts", type=int, default=None, help="evaluate on the first N held-out prompts "
                   "(default: the preset's)")
    p.add_argument("--eval-images", type=int, default=None, help="fixed noises (images) per evaluation prompt "
                   "(default: the preset's)")
    p.add_argument("--num-steps", type=int, default=None, help="sampling steps")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting, e.g. truncation_steps=3")
    p.add_argument("--protocol", choices=["shared", "reference"], default="shared")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the preset's, else cuda if available)")
    p.add_argument("--dtype", default=None, help="fp32, bf16, fp16")
    p.add_argument("--resolution", type=int, default=None, help="image size (height = width) for Stable Diffusion "
                   "backbones, a multiple of 64 (default: the model's own, 512 for SD 1.5)")
    p.add_argument("--count-flops", action="store_true", help="count the FLOPs of each cell's first step "
                   "(torch.utils.flop_counter); reports flops_per_sample and MFU on a GPU of known peak")
    p.add_argument("--suite", default=None, help="write to RESULTS_DIR/SUITE/ (default: the preset's name; 'single' "
                   "for a --reward cell)")
    p.add_argument("--results-dir", default="runs", help="where runs are written (default: runs/, untracked; the "
                   "committed reference results are in results/)")
    p.add_argument("--checkpoint-minutes", type=float, default=None, help="also save each cell's resumable state "
                   "every N minutes of training (it is always saved at every evaluation)")
    p.add_argument("--tracker", default=None, help="also log curves, step timings and evaluation images to "
                   "tensorboard (RESULTS/SUITE/tensorboard) or wandb (offline unless WANDB_MODE says otherwise)")
    p.add_argument("--no-resume", action="store_true", help="grid: rerun cells that already finished; each rerun cell's new row replaces the older rows "
                        "of its method, task, backbone and seed (other settings or weights)")
    p.add_argument("--shard", default=None, help="grid: run shard i of n, as i/n")
    p.add_argument("--limit", type=int, default=None, help="grid: run at most N cells")
    p.add_argument("--num-processes", type=int, default=None, help="one cell, data-parallel over N processes "
                   "(one GPU each, or CPU processes with gloo): the same as `accelerate launch --num_processes N -m "
                   "bench run ...`; results do not depend on N")
    p.add_argument("--devices", default=None, help="grid: run one cell per device at once, e.g. cuda:0,cuda:1,cuda:2 "
                   "(each cell on one device; see README 'Scaling out')")
    p.add_argument("--jobs", type=int, default=None, help="grid: cells run at once, each in its own process "
                   "(default: the preset's)")
    p.add_argument("--plugins", default=None, help="comma-separated modules to import (in every grid cell), "
                   "registering extra methods, rewards or tasks")


_DEVICE = re.compile(r"^(cpu(:\d+)?|mps|cuda(:\d+)?)$")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or os.sep in path.strip(os.sep) and path.count("/") != 1 \
        or Path(path).expanduser().exists()


def precheck_run(args) -> None:
    """Everything about a ``run`` command that can be judged without a model library: names, numbers, paths,
    ``KEY=VALUE`` syntax. Runs before torch is imported, so a typo costs milliseconds, not seconds."""
    from bench import presets, tasks

    grid = is_grid(args)
    args.seed_list = parse_seeds(args.seed, args.seeds)
    args.method_settings = parse_settings(args.set)
    args.reward_kwargs = parse_settings(args.reward_arg, "--reward-arg")
    plugins = bool(args.plugins)  # plugins register names the catalog does not know: the registries judge them
    if args.preset is not None:
        presets.get(args.preset)
    if not grid:
        if not args.method:
            raise UsageError("run: --method is required (or --grid to run a preset's grid); see `python -m bench list`")
        if "," in args.method or any(c in args.method for c in "*?["):
            raise UsageError(f"run: one cell takes one method, got {args.method!r}; several: add --grid")
        if not args.task and not args.reward:
            raise UsageError("run: give --task (see `python -m bench list tasks`) or --reward")
        if args.task and args.reward:
            raise UsageError("run: give --task or --reward, not both (a task names its reward)")
    elif args.reward or args.reward_arg:
        raise UsageError("run --grid: a grid's rewards come from its tasks; select tasks with --tasks")
    if args.method and not plugins:
        catalog.check("method", args.method, wildcard=grid)
    if args.task:
        known = tasks.available()
        for part in [p.strip() for p in args.task.split(",")] if grid else [args.task]:
            if not plugins and not any(fnmatch.fnmatch(n, part) for n in known):
                raise UsageError(f"unknown task {part!r}; valid: {', '.join(known)}")
    if args.reward and not plugins:
        catalog.check("reward", args.reward)
    if args.backbone and not plugins:
        catalog.check("backbone", args.backbone)
    for flag, value, low in (("--budget", args.budget, 1), ("--batch-size", args.batch_size, 1),
                             ("--eval-every", args.eval_every, 1), ("--num-steps", args.num_steps, 1),
                             ("--eval-prompts", args.eval_prompts, 1), ("--eval-images", args.eval_images, 1),
                             ("--jobs", args.jobs, 1), ("--limit", args.limit, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--guidance-scale", args.guidance_scale), ("--eta", args.eta)):
        if value is not None and not value >= 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    from bench import tracking

    tracking.check(args.tracker)
    if args.checkpoint_minutes is not None and not args.checkpoint_minutes > 0:
        raise UsageError(f"--checkpoint-minutes must be > 0, got {args.checkpoint_minutes}")
    if args.dtype is not None and args.dtype not in catalog.DTYPES:
        raise UsageError(f"--dtype {args.dtype!r}: valid: {', '.join(catalog.DTYPES)}")
    if args.device is not None and not _DEVICE.match(args.device):
        raise UsageError(f"--device {args.device!r}: valid: cpu, cuda, cuda:N, mps")
    if args.backbone_path and _looks_local(args.backbone_path) and not Path(args.backbone_path).expanduser().exists():
        raise UsageError(f"--backbone-path {args.backbone_path!r} not found: give a local diffusers directory "
                         f"(unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id")
    for name in _backbones_used(args, grid):
        catalog.check_resolution(name, args.resolution)
        catalog.check_hub_backbone(name, args.backbone_path)
        catalog.check_backbone_dir(name, args.backbone_path)
        catalog.check_vae_path(name, args.vae_path)
    for name, kwargs in _rewards_used(args, grid):
        catalog.check_hub_reward(name, kwargs)
    if grid:
        from bench.args import parse_shard

        parse_shard(args.shard)
    elif args.shard or args.limit or args.jobs or args.no_resume or args.devices:
        raise UsageError("run: --shard, --limit, --jobs, --devices and --no-resume apply to a grid (add --grid)")
    world = args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    if args.num_processes is not None:
        if args.num_processes < 1:
            raise UsageError(f"--num-processes must be >= 1, got {args.num_processes}")
        if grid:
            raise UsageError("--num-processes runs one cell over several processes; a grid takes --devices "
                             "cuda:0,cuda:1,... (one cell per device at once) or --shard i/n")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--num-processes inside a launcher (accelerate launch, torchrun): give one of the two")
    if world > 1 and grid:
        raise UsageError(f"a grid under a launcher ({world} processes): launch a single cell (--method, --task), or "
                         f"run the grid with --devices cuda:0,cuda:1,...")
    if world > 1 and args.batch_size is not None and args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} does not split evenly over {world} processes")
    if args.devices is not None:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        bad = [d for d in devices if not _DEVICE.match(d)]
        if not devices or bad:
            raise UsageError(f"--devices {args.devices!r}: a comma-separated list of cpu, cuda:N, mps")
        if args.device is not None:
            raise UsageError("--device and --devices: give one (--devices assigns each cell a device of its list)")
        if args.jobs is not None and args.jobs != len(devices):
            raise UsageError(f"--jobs {args.jobs} with {len(devices)} --devices: one cell runs per device")


def _backbones_used(args, grid: bool) -> set[str]:
    """The backbones a run command will load (as the grid's plan and the single cell choose them)."""
    from bench import presets, tasks

    if args.backbone:
        return {args.backbone}
    if not args.task and not grid:
        return {"tiny"}
    preset = presets.get(args.preset) if args.preset else None
    names = [n for n in tasks.available() if not args.task or any(fnmatch.fnmatch(n, p.strip())
                                                                    for p in args.task.split(","))]
    if grid:
        preset = preset or presets.get("quick")
        if preset.cells:
            return {bb for _, t, bb in preset.cells if t in names}
        names = names if args.task else preset.tasks
    out = set()
    for n in names:
        task = tasks.get(n) if n in tasks.available() else None
        p = preset or (presets.get("quick" if task and task.suite == "testbed" else "sd15"))
        out.add(p.backbone or (task.backbone if task else "tiny"))
    return out


def _rewards_used(args, grid: bool) -> list[tuple[str, dict]]:
    """(reward, its arguments) for every reward a run command trains on or evaluates with."""
    from bench import presets, tasks

    if args.reward:
        return [(args.reward, dict(args.reward_kwargs))]
    preset = presets.get(args.preset) if args.preset else presets.get("quick") if grid else None
    patterns = [p.strip() for p in args.task.split(",")] if args.task else preset.tasks if grid else []
    extra = preset.reward_kwargs if preset is not None else {}
    out = []
    for n in tasks.available():
        if any(fnmatch.fnmatch(n, p) for p in patterns):
            task = tasks.get(n)
            out.append((task.reward, {**extra, **task.reward_kwargs, **args.reward_kwargs}))
            out += [(r, {**extra, **kw}) for r, kw in task.eval_rewards.items()]
    return out


def is_grid(args) -> bool:
    """``--grid``, or ``--preset`` without a single --method (``run --preset ci`` runs the ci grid)."""
    return bool(args.grid or (args.preset and not args.method))


def launch_processes(args, specs) -> int:
    """``--num-processes N``: this same command under torch's launcher (what ``accelerate launch`` runs for several
    processes), N workers on this machine; a worker that dies takes the others down (no hang), and a cell left
    without a row of this run is recorded ``crashed`` (its last saved state stays: the same command resumes it)."""
    import signal
    import subprocess

    from bench.grid import FINISHED, _row_status, failure_row, row_fingerprint
    from bench.results import append_rows

    argv, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
        elif a == "--num-processes":
            skip = True
        elif not a.startswith("--num-processes="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.num_processes}",
           "-m", "bench", *argv]
    suite = {spec.cell_id: Path(spec.results_dir) / spec.suite for spec in specs}
    before = {cell: row_fingerprint(out, cell) for cell, out in suite.items()}
    proc = subprocess.Popen(cmd)
    # SIGTERM (a scheduler's, before preemption) reaches the workers through the launcher: they save and stop
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        for spec in specs:
            out = suite[spec.cell_id]
            written = row_fingerprint(out, spec.cell_id) not in (None, before[spec.cell_id])
            if not written or _row_status(out, spec.cell_id)[spec.cell_id] not in FINISHED + ("preempted",):
                append_rows(out / "cells.csv", [failure_row(spec, "crashed", f"a process of {args.num_processes} "
                                                f"failed (launcher exit code {code}); see the output above")],
                            key=["cell_id"])
    return code


def cmd_run(args) -> int:
    if is_grid(args):
        from bench import grid

        return grid.run_from_args(args)
    import dataclasses

    from bench import grid, presets, tasks
    from bench.cell import CellSpec, Preempted, finish_cell, run_cell
    from bench.results import append_rows, read_csv

    settings = dict(args.method_settings)
    for key in ("num_steps", "guidance_scale", "eta", "lr"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    seeds = args.seed_list or [0]
    import methods
    import rewards

    methods.get(args.method)  # a plugin's unknown name: one line, before any work
    if args.task:
        task = tasks.get(args.task)
        preset = presets.get(args.preset or ("quick" if task.suite == "testbed" else "sd15"))
        specs, notes = grid.plan(preset, methods=args.method, tasks=args.task, seeds=seeds, budget=args.budget,
                                 device=args.device, protocol=args.protocol, suite=args.suite,
                                 results_dir=args.results_dir, method_settings=settings, backbone=args.backbone)
        if not specs:
            why = "; ".join(notes) or "a reward or backbone is not registered"
            raise UsageError(f"run: task {args.task} cannot run here: {why}")
        reward_name = task.reward
        protocol_note = (f"protocol of preset {preset.name!r} ({_protocol_text(preset)})" if args.protocol == "shared"
                         else f"{args.method}'s reference protocol, budget and evaluation of preset {preset.name!r}")
    else:
        reward_name = args.reward
        rewards.base.get(reward_name)
        settings = grid.check_settings(args.method, settings, args.protocol)
        specs = [CellSpec(method=args.method, backbone=args.backbone or "tiny", reward=reward_name, seed=s,
                          method_kwargs=settings, protocol=args.protocol, device=args.device or grid._default_device(),
                          suite=args.suite or "single", results_dir=args.results_dir,
                          **({"budget": args.budget} if args.budget is not None else {}))
                 for s in seeds]
        protocol_note = "no task, so no preset: the method's own defaults and the CellSpec's evaluation defaults"
        preset = None
    reward_kwargs = check_reward_args(reward_name, args.reward_kwargs) if args.reward_kwargs else None
    changes: dict[str, Any] = {}
    for key in ("batch_size", "eval_every", "dtype", "backbone_path", "resolution", "vae_path", "checkpoint_minutes",
                "tracker"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.count_flops:
        changes["count_flops"] = True
    specs = [dataclasses.replace(s, **changes, **({"reward_kwargs": {**s.reward_kwargs, **reward_kwargs}}
                                                 if reward_kwargs else {})) for s in specs]
    specs = grid.apply_eval_size(specs, args.eval_prompts, args.eval_images)
    for s in specs:
        s.validate()
    rows = []
    world = args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    for s in specs:
        if s.batch_size % world:
            raise UsageError(f"batch size {s.batch_size} does not split evenly over {world} processes: give "
                             f"--batch-size a multiple of {world}")
    if args.num_processes and args.num_processes > 1:
        return launch_processes(args, specs)
    lead = int(os.environ.get("RANK", "0")) == 0  # with several processes, one prints and writes
    print_ = print if lead else (lambda *a, **k: None)
    for spec in specs:
        out = Path(spec.results_dir) / spec.suite
        print_(f"cell {spec.cell_id}: {spec.method} on {spec.backbone}, "
              f"{'task ' + spec.task + ', ' if spec.task else ''}reward {spec.reward}, seed {spec.seed}\n"
              f"  {protocol_note}; budget {spec.budget} samples, batch {spec.batch_size}, evaluation every "
              f"{spec.eval_every} samples on {len(spec.eval_prompts)} prompts x {spec.eval_images_per_prompt} "
              f"images; device {spec.device}", flush=True)
        try:
            row, curve = run_cell(spec, on_progress=lambda p: print(
                f"  samples {p['samples']:>5}  eval reward {p['reward']:.4f}", flush=True))
        except Preempted as err:
            if lead:
                append_rows(out / "cells.csv", [grid.failure_row(spec, "preempted", str(err))], key=["cell_id"])
            print_(f"  preempted: {err}", flush=True)
            return 143
        rows.append(row)
        if not lead:
            continue
        if row["message"]:
            print(f"  note: {row['message']}")
        append_rows(out / "curves.csv", curve, key=["cell_id", "samples"])
        append_rows(out / "cells.csv", [row], key=["cell_id"])
        finish_cell(spec)
        print(f"  {row['status']}: {row['eval_reward']} {row['reward_initial']:.4f} -> {row['reward_final']:.4f} "
              f"in {row['train_wall_s']:.1f}s training ({row['samples_per_s']:.2f} samples/s, "
              f"peak {row['peak_mem_mb']:.0f} MB); row appended to {out / 'cells.csv'}; images in {spec.cell_dir()}",
              flush=True)
        if preset is not None:
            committed = read_csv(Path("results") / preset.name / "cells.csv")
            hit = committed[committed["cell_id"] == spec.cell_id] if "cell_id" in committed else committed
            if len(hit):
                r = hit.iloc[-1]
                print(f"  the committed grid has this cell (results/{preset.name}/cells.csv): "
                      f"{r['reward_initial']:.4f} -> {r['reward_final']:.4f}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _protocol_text(preset) -> str:
    p = preset.protocol
    text = ", ".join(f"{k} {v}" for k, v in p.items())
    if preset.method_overrides:
        text += "; " + "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in o.items())
                                 for m, o in preset.method_overrides.items())
    return text


def check_reward_args(reward: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``--reward-arg`` keys and value types against the reward factory's signature (before anything loads)."""
    import rewards

    from bench.args import check_typed, factory_hints

    return check_typed(reward, kwargs, factory_hints(rewards.base.get(reward)), flag="--reward-arg")


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

    from bench import backbones, images
    from methods.sampling import sample

    if args.num < 1 or args.num_steps < 1:
        raise UsageError("sample: --num and --num-steps must be >= 1")
    if args.backbone in ("shapes", "shapes-flow"):
        from bench.testbed.world import vocabulary_warning

        for p in args.prompt:
            if (warning := vocabulary_warning(p)) is not None:
                print(warning, file=sys.stderr)
    loras = [parse_lora(x) for x in args.lora or []]
    for path, _ in loras:
        if not Path(path).exists():
            raise UsageError(f"sample: --lora {path!r} not found (a directory holding pytorch_lora_weights.safetensors,"
                             f" e.g. runs/quick/cells/<cell>/lora)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kw = {"path": args.backbone_path} if args.backbone_path else {}
    backbone = backbones.create(args.backbone, device=device, lora_rank=None if loras else 4, **kw)
    if loras:
        backbone.load_loras(loras)
    # row i holds noise i of every prompt: one column per prompt
    prompts = [p for _ in range(args.num) for p in args.prompt]
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(backbone.latent_shape(len(prompts)), generator=gen).to(backbone.device)
    with torch.no_grad():
        out = sample(backbone, backbone.encode_prompts(prompts), noise, num_steps=args.num_steps,
                     guidance_scale=args.guidance_scale, eta=0.0)
        imgs = backbone.decode(out.latents).cpu()
    lora_text = ", ".join(f"{Path(p).parent.name or p} x{s:g}" for p, s in loras) if loras else "no LoRA"
    steps = "flow (Euler)" if catalog.is_flow(args.backbone) else "DDIM"
    guidance = "guidance" if getattr(backbone, "guidance_embedded", False) else "CFG"
    images.save_grid(args.out, list(imgs.split(len(args.prompt))), col_labels=args.prompt,
                     row_labels=[f"seed {args.seed}, #{i}" for i in range(args.num)],
                     title=f"{args.backbone} ({lora_text}), {args.num_steps} {steps} steps, "
                           f"{guidance} {args.guidance_scale:g}")
    print(f"wrote {args.out} ({len(prompts)} images: {len(args.prompt)} prompts x {args.num})")
    return 0


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a PNG grid from a backbone, optionally with LoRAs",
                       description="Sample images for prompts (one column per prompt, the prompt under it) from a "
                                   "backbone, optionally with trained LoRAs mixed at given scales.",
                       epilog=examples(
                           'python -m bench sample --prompt "a red circle on a white background" --out grid.png',
                           'python -m bench sample --lora runs/quick/cells/<cell>/lora:0.6 '
                           '--prompt "a blue square on a black background"'))
    p.add_argument("--backbone", default="shapes")
    p.add_argument("--backbone-path", default=None)
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]", help="repeatable: mixes LoRAs")
    p.add_argument("--num", type=int, default=4, help="images per prompt")
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/sample.png")


# ------------------------------------------------------------------------------------------------ export-backbone
def add_export_parser(sub) -> None:
    p = sub.add_parser("export-backbone", help="write a backbone as a diffusers StableDiffusionPipeline directory",
                       description="Write a registered latent backbone (random-weight ones included) as a diffusers "
                                   "pipeline directory: StableDiffusionPipeline.from_pretrained(DIR) loads it, and "
                                   "--backbone sd15 --backbone-path DIR reads it back.",
                       epilog=examples("python -m bench export-backbone sd15-random runs/sd15-random",
                                       "python -m bench run --method draft-1 --task aesthetic-animals --backbone sd15 "
                                       "--backbone-path runs/sd15-random --reward-arg weights=random"))
    p.add_argument("name", help="backbone name (see `bench list backbones`)")
    p.add_argument("directory")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16, fp16 (the weights as saved)")
    p.add_argument("--seed", type=int, default=0, help="random-weight backbones: the seed of their weights")
    p.add_argument("--force", action="store_true", help="replace a directory that is not empty")


def precheck_export(args) -> None:
    catalog.check("backbone", args.name)
    if catalog.RESOLUTION.get(args.name, 1) < 0:
        raise UsageError(f"export-backbone: {args.name} is pixel-space (no VAE): it has no StableDiffusionPipeline")
    if args.dtype not in catalog.DTYPES:
        raise UsageError(f"--dtype {args.dtype!r}: valid: {', '.join(catalog.DTYPES)}")
    out = Path(args.directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise UsageError(f"export-backbone: {out} exists and is not empty (--force replaces it)")
    catalog.check_hub_backbone(args.name, None)


def cmd_export(args) -> int:
    import shutil

    from bench import backbones

    bb = backbones.create(args.name, lora_rank=None, dtype=args.dtype, seed=args.seed)
    out = Path(args.directory)
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    bb.pipeline().save_pretrained(str(tmp), safe_serialization=True)
    for tok in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if (tmp / tok / "tokenizer.json").exists() and type(getattr(bb, tok, None)).__name__.startswith("CLIP"):
            backbones.write_slow_tokenizer_files(tmp / tok)
    t5 = getattr(bb, "T5_TOKENIZER", None)
    if t5 and (tmp / t5 / "tokenizer_config.json").exists():  # the model's own T5 length (tiny models: 32 tokens)
        backbones.record_t5_sequence_length(tmp / t5, bb.max_sequence_length)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    kind = type(bb.pipeline()).__name__
    family = {"StableDiffusion3Pipeline": "sd35m", "StableDiffusionXLPipeline": "sdxl",
              "FluxPipeline": "flux-dev"}.get(kind, "sd15")
    print(f"wrote {out}: a {kind} ({args.name}, {args.dtype}); read it back with "
          f"--backbone {family} --backbone-path {out}")
    return 0


# ----------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m bench", description=__doc__, epilog=examples(
        "python -m bench run --grid", "python -m bench list methods", "python -m bench run --help"))
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    add_run_parser(sub)
    p = sub.add_parser("list", help="backbones, methods, rewards, tasks, presets",
                       description="List what is registered: backbones, methods, rewards, tasks, presets.",
                       epilog=examples("python -m bench list", "python -m bench list tasks"))
    p.add_argument("what", nargs="?", choices=["backbones", "methods", "rewards", "tasks", "presets"])
    add_sample_parser(sub)
    add_export_parser(sub)
    for name, module, help_ in EXTRA_COMMANDS:
        sp = sub.add_parser(name, help=help_, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


#: subcommands whose modules parse their own arguments (and have their own --help): (name, module, help)
EXTRA_COMMANDS = [
    ("testbed", "bench.testbed.cli", "train the shapes testbed's models, measure its quality gates"),
    ("leaderboard", "bench.leaderboard", "rebuild markdown tables and plots from a results directory"),
    ("compare", "bench.compare", "compare two cells.csv files; exit 1 on a regression"),
    ("merge", "bench.merge", "merge grid shards' results (--shard i/n, Slurm arrays) into one directory"),
    ("lora-sweep", "bench.lora_sweep", "evaluate LoRA scales and mixtures"),
    ("sweep", "bench.sweep", "one table across the suites of a folder (a hyperparameter sweep)"),
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    try:
        extra = {name: module for name, module, _ in EXTRA_COMMANDS}
        if argv and argv[0] in extra:  # these parse their own arguments, --help included
            return int(importlib.import_module(extra[argv[0]]).main(argv[1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = argv
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "run":
            precheck_run(args)  # before any model library is imported
        if args.command == "export-backbone":
            precheck_export(args)
        catalog.load_registries([p for p in (getattr(args, "plugins", None) or "").split(",") if p])
        return {"run": cmd_run, "list": cmd_list, "sample": cmd_sample, "export-backbone": cmd_export}[args.command](args)
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
    """Quiet diffusers' and transformers' info logs and progress bars, by environment (importing them costs
    seconds, which a mistyped name should not pay)."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers 5: "Loading weights" bars
    warnings.filterwarnings("ignore", message=".*kept in float32.*")
