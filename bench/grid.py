"""The grid runner: methods × tasks × seeds of a preset, each cell in its own process.

* Each cell runs in a child process forked from this one (``fork`` on CPU: torch and diffusers are already imported,
  so a cell starts in milliseconds; ``forkserver`` when CUDA is used, since CUDA does not survive a fork). Memory
  figures are per process, and a crash, OOM or NaN stays inside its cell.
* A finished cell appends its curve to ``curves.csv`` and then its row to ``cells.csv`` (atomic, locked, keyed by
  ``cell_id``: a rerun replaces, never duplicates). The row is written last, so a row means a complete cell.
* ``--resume`` (default): cells whose row says ``ok`` or ``nan`` are skipped; failed cells (``error``, ``oom``,
  ``crashed``) are tried again.
* A failing cell is recorded with its ``status`` and a one-line ``message`` (the traceback goes to the cell's
  ``log.txt``) and the grid goes on. Ctrl-C stops the running cells without writing partial rows.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import importlib
import json
import math
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import shutil
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench import catalog
from bench import presets as presets_mod
from bench import tasks as tasks_mod
from bench.args import (UsageError, check_typed, config_hints, factory_hints, parse_seeds, parse_settings,
                        parse_shard)
from bench.results import append_rows, drop_rows, read_csv, write_atomic

FINISHED = ("ok", "nan")
FAILED = ("error", "oom", "crashed", "preempted")  # tried again by the next run (a preempted cell resumes mid-way)
#: seconds the grid waits, after SIGTERM, for its cells to save their state before it kills them
PREEMPT_GRACE_S = float(os.environ.get("BENCH_PREEMPT_GRACE_S", "120"))


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the grid: its cells are asked to save their state (SIGTERM) rather than stop (SIGINT)."""


class GridError(UsageError):
    """Bad grid input (unknown preset, method, task; malformed option): one line, exit 2."""


# ---------------------------------------------------------------------------------------------------- the plan
def _select(names: Sequence[str], spec: str | None, kind: str, known: Sequence[str]) -> list[str]:
    """Comma-separated names or wildcards, each of which must match something known."""
    if spec is None:
        return list(names)
    out: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        matches = [n for n in known if fnmatch.fnmatch(n, part)]
        if not matches:
            raise GridError(f"unknown {kind} {part!r}; valid: {', '.join(known)}")
        out += [m for m in matches if m not in out]
    if not out:
        raise GridError(f"--{kind}s selects nothing")
    return out


def plan(preset: presets_mod.Preset, *, methods: str | None = None, tasks: str | None = None,
         seeds: list[int] | None = None, budget: int | None = None, device: str | None = None,
         protocol: str = "shared", suite: str | None = None, results_dir: str = "results",
         method_settings: dict[str, Any] | None = None, backbone: str | None = None,
         ) -> tuple[list, list[str]]:
    """The preset's cells (CellSpecs, in a fixed order) and notes on what was skipped (unregistered names)."""
    import methods as methods_pkg
    import rewards
    from bench import backbones
    from bench.cell import CellSpec

    method_names = _select(preset.methods, methods, "method", sorted(set(presets_mod.ALL_METHODS) |
                                                                       set(methods_pkg.available())))
    task_names = _select(preset.tasks, tasks, "task", tasks_mod.available())
    if budget is not None and budget < 1:
        raise GridError(f"--budget must be >= 1 sample, got {budget}")
    notes, specs = [], []
    registered = set(methods_pkg.available())
    for m in [m for m in method_names if m not in registered]:
        notes.append(f"method {m} is not registered yet: skipped")
    method_names = [m for m in method_names if m in registered]
    if preset.cells:  # explicit (method, task, backbone) cells instead of the product
        triples = [(t, m, backbone or bb) for m, t, bb in preset.cells if m in method_names and t in task_names]
    else:
        triples = [(t, m, backbone or preset.backbone or tasks_mod.get(t).backbone)
                   for t in task_names for m in method_names]
    usable = []
    for t, m, bb in triples:
        missing = tasks_mod.missing_rewards(tasks_mod.get(t))
        if missing:
            note = f"task {t}: reward(s) {', '.join(missing)} not registered yet: skipped"
        elif bb not in backbones.available():
            note = f"task {t}: backbone {bb} not registered yet: skipped"
        else:
            usable.append((t, m, bb))
            continue
        if note not in notes:
            notes.append(note)
    dev = device or preset.device or _default_device()
    b = budget or preset.budget
    eval_every = min(preset.eval_every, b)
    fingerprints: dict[tuple[str, ...], str | None] = {}
    for t, m, bb in usable:
        kw = tasks_mod.get(t).cell_kwargs()
        kw["backbone"] = bb
        if preset.eval_prompts_limit:
            kw["eval_prompts"] = kw["eval_prompts"][: preset.eval_prompts_limit]
        if preset.reward_kwargs:
            kw["reward_kwargs"] = _with_reward_kwargs(kw["reward"], kw["reward_kwargs"], preset.reward_kwargs)
            kw["eval_rewards"] = {n: _with_reward_kwargs(n, v, preset.reward_kwargs)
                                  for n, v in kw["eval_rewards"].items()}
        config_fields = {f.name for f in dataclasses.fields(getattr(methods_pkg.get(m), "Config", object))} \
            if dataclasses.is_dataclass(getattr(methods_pkg.get(m), "Config", None)) else set()
        settings: dict[str, Any] = {}
        if protocol == "shared":
            # a likelihood-ratio method keeps its own stochastic sampler (the shared eta 0 has no log-probs); it is
            # evaluated like every other method
            own = getattr(methods_pkg.get(m), "OWN_SAMPLER_SETTINGS", ())
            settings.update({k: v for k, v in preset.protocol.items() if k in config_fields and k not in own})
            settings.update(preset.method_overrides.get(m, {}))
        settings.update(method_settings or {})
        settings = check_settings(m, settings, protocol)
        try:  # a method that cannot run on this kind of backbone: skipped with its reason, never a failure
            methods_pkg.get(m).check_backbone(catalog.is_flow(bb), settings)
        except methods_pkg.MethodError as err:
            notes.append(f"{m} on {bb} (task {t}) skipped: {str(err).removeprefix(m + ': ')}")
            continue
        for seed in (seeds if seeds is not None else preset.seeds):
            key = (kw["backbone"], *weights_rewards(kw))
            if key not in fingerprints:
                fingerprints[key] = weights_version(key[0], key[1:])
            specs.append(CellSpec(weights_version=fingerprints[key],
                method=m, seed=seed, budget=b, batch_size=preset.batch_size, eval_every=eval_every,
                eval_images_per_prompt=preset.eval_images_per_prompt,
                eval_num_steps=(method_settings or {}).get("num_steps", preset.protocol.get("num_steps")),
                eval_guidance_scale=(method_settings or {}).get("guidance_scale",
                                                                preset.protocol.get("guidance_scale")),
                method_kwargs=settings, resolution=preset.resolution,
                protocol=protocol, device=dev, dtype=preset.dtype, lora_rank=preset.lora_rank,
                suite=suite or preset.name, results_dir=results_dir, save_images=preset.save_images,
                count_flops=preset.count_flops, **kw))
    return specs, notes


def _with_reward_kwargs(reward: str, kwargs: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A preset's reward arguments (e.g. ``weights="random"``) added where the reward takes them."""
    import rewards

    accepted = factory_hints(rewards.base.get(reward))
    return {**kwargs, **{k: v for k, v in extra.items() if k in accepted}}


def apply_eval_size(specs: list, prompts: int | None, images: int | None) -> list:
    """``--eval-prompts N`` (the first N held-out prompts) and ``--eval-images K`` (noises per prompt)."""
    if prompts is not None:
        specs = [dataclasses.replace(s, eval_prompts=s.eval_prompts[:prompts]) for s in specs]
    if images is not None:
        specs = [dataclasses.replace(s, eval_images_per_prompt=images) for s in specs]
    return specs


def check_settings(method: str, settings: dict[str, Any], protocol: str) -> dict[str, Any]:
    """Method settings checked before anything loads (one line, exit 2): every key a field of the method's config,
    every value of the field's type (``truncation_steps=2.5`` is not an integer), then the config's own range checks.
    Returns the settings with values coerced to their types (``2.0`` -> ``2``)."""
    import methods as methods_pkg

    factory = methods_pkg.get(method)
    config_cls = getattr(factory, "Config", None)
    if not dataclasses.is_dataclass(config_cls):
        return settings
    hints = config_hints(config_cls)
    settings = check_typed(method, settings, hints)
    merged = dict(getattr(factory, "REFERENCE", {})) if protocol == "reference" else {}
    merged.update(settings)
    try:
        config = config_cls(**merged)
        (factory.settle(config) if hasattr(factory, "settle") else config).validate()
    except (ValueError, TypeError) as err:
        raise GridError(f"{method}: {err}") from None
    return settings


def merge_run_info(previous: dict | None, new: dict) -> dict:
    """run_info.json keeps every invocation that wrote into a results directory: the top level describes the latest
    run that trained cells (what the leaderboard header shows); ``history`` lists every earlier record, oldest first.
    A run that trained nothing (a no-op resume) only joins the history, so it never hides the run that made the
    results; shards and resumed runs each add their own record."""
    if not previous:
        return dict(new)
    history = list(previous.get("history", [])) + [{k: v for k, v in previous.items() if k != "history"}]
    if not new.get("cells_run") and not new.get("interrupted") and previous.get("cells_run"):
        history.pop()
        return {**{k: v for k, v in previous.items() if k != "history"}, "history": history + [new]}
    return {**new, "history": history}


def weights_rewards(cell: dict[str, Any]) -> tuple[str, ...]:
    """The rewards whose weights a cell's results depend on: training, evaluation, cross and diversity rewards."""
    return tuple(dict.fromkeys((cell["reward"], *cell.get("eval_rewards", {}), *(cell.get("cross_rewards") or {}),
                                *([cell["diversity_reward"]] if cell.get("diversity_reward") else []))))


def weights_version(backbone: str, reward_names: Sequence[str]) -> str | None:
    """A fingerprint of the local weights a cell uses: the testbed folders of its backbone and of every reward it
    trains on or is evaluated with (``models.WEIGHT_FOLDERS``), so a resumed grid never mixes cells trained on
    different weights, and retraining one network invalidates only the cells that use it. None when the cell uses
    no local weights."""
    import hashlib

    names = [n for n in (backbone, *reward_names) if n == "shapes" or n.startswith("shapes-")]
    if not names:
        return None
    try:
        from bench.testbed import models
    except ImportError:
        return None
    root = Path(models.WEIGHTS_DIR)
    # an unknown shapes-* name counts every network folder (conservative); the reports beside the folders
    # (manifest.json, gates.json) never change a result and are not hashed
    every = sorted({p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file() and p.parent != root})
    folders = sorted({f for n in names for f in models.WEIGHT_FOLDERS.get(n, every)})
    files = sorted(p for f in folders for p in (root / f).rglob("*") if p.is_file())
    if not files:
        return None
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _default_device() -> str:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # check without initialising CUDA (fork-safe)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def shard(specs: list, i: int, n: int) -> list:
    """Shard i of n: every n-th cell in the sorted order of cell ids, so shards are disjoint and cover the grid."""
    ordered = sorted(specs, key=lambda s: s.cell_id)
    mine = {s.cell_id for s in ordered[i::n]}
    return [s for s in specs if s.cell_id in mine]


def finished_cells(out_dir: Path) -> set[str]:
    cells = read_csv(out_dir / "cells.csv")
    if cells.empty or "status" not in cells:
        return set()
    return set(cells.loc[cells["status"].isin(FINISHED), "cell_id"].astype(str))


# ------------------------------------------------------------------------------------------------- one cell
def failure_row(spec, status: str, message: str, wall_s: float = math.nan) -> dict[str, Any]:
    return {"cell_id": spec.cell_id, "suite": spec.suite, "backbone": spec.backbone, "method": spec.method,
            "task": spec.task or spec.reward, "seed": spec.seed, "protocol": spec.protocol, "status": status,
            "message": message.replace("\n", " ")[:300], "budget": spec.budget, "wall_s": round(wall_s, 2),
            "device": spec.device}


def _die_with_parent() -> None:
    """Linux: the cell gets SIGKILL when the grid process dies (kill -9 of the grid leaves no orphan cell)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


#: a suite holds one cell per coordinate: the leaderboard counts the rows of a (method, task, backbone) as seeds
COORDINATES = ("method", "task", "backbone", "seed")


def drop_superseded(out_dir: Path, spec) -> list[str]:
    """``--no-resume`` reruns a cell: once its new row is written, rows of the same method, task, backbone and seed
    under another cell id (older weights, code or settings) are removed from cells.csv and curves.csv, so the
    leaderboard does not count them as extra seeds, and so are their folders under cells/ (the LoRA and images of a
    row that no longer exists). Returns the removed cell ids."""
    cells = read_csv(out_dir / "cells.csv")
    if cells.empty:
        return []
    same = np.ones(len(cells), bool)
    for k in COORDINATES:
        same &= cells[k].astype(str).values == str(getattr(spec, k))
    stale = sorted(set(cells.loc[same & (cells["cell_id"].astype(str) != spec.cell_id), "cell_id"].astype(str)))
    if stale:  # drop_rows re-reads under the lock: rows other cells append meanwhile are kept
        drop_rows(out_dir / "cells.csv", "cell_id", stale)
        drop_rows(out_dir / "curves.csv", "cell_id", stale)
        for cell_id in stale:
            shutil.rmtree(out_dir / "cells" / cell_id, ignore_errors=True)
    return stale


def _cell_process(spec, events, threads: int, plugins: Sequence[str], resume: bool = True) -> None:
    """Runs in the child: train and evaluate one cell, append its curve then its row, report progress."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log_dir = spec.cell_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "log.txt", "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    start = time.perf_counter()
    import torch

    torch.set_num_threads(max(1, threads))
    for name in plugins:
        importlib.import_module(name)
    from bench.cell import Preempted, finish_cell, run_cell

    out = Path(spec.results_dir) / spec.suite
    if spec.weights_version and weights_version(spec.backbone, weights_rewards(dataclasses.asdict(spec))) \
            != spec.weights_version:
        append_rows(out / "cells.csv", [failure_row(spec, "error", "the local weights changed since the grid was "
                                                    "planned; run the grid again")], key=["cell_id"])
        events.put(("done", spec.cell_id, "error", None))
        events.close()
        events.join_thread()
        os._exit(0)

    def progress(p):
        events.put(("progress", spec.cell_id, p["samples"], p["reward"]))

    try:
        row, curve = run_cell(spec, on_progress=progress, resume=resume)
        append_rows(out / "curves.csv", curve, key=["cell_id"])
        append_rows(out / "cells.csv", [row], key=["cell_id"])
        if not resume:
            drop_superseded(out, spec)
        finish_cell(spec)
        events.put(("done", spec.cell_id, row["status"], row.get("reward_final")))
    except Preempted as err:
        append_rows(out / "cells.csv", [failure_row(spec, "preempted", str(err), time.perf_counter() - start)],
                    key=["cell_id"])
        events.put(("done", spec.cell_id, "preempted", None))
    except KeyboardInterrupt:
        os._exit(130)  # no row: the cell is not finished (its curve rows, if any, are replaced on the rerun)
    except BaseException as err:  # noqa: BLE001 - any failure is the cell's result, not the grid's
        traceback.print_exc()
        oom = isinstance(err, MemoryError) or "out of memory" in str(err).lower()
        status = "oom" if oom else "error"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        message = f"{type(err).__name__}: {first}"
        if oom:
            message += f" (peak reached: {_peak_mb(spec.device):.0f} MB)"
        append_rows(out / "cells.csv", [failure_row(spec, status, message, time.perf_counter() - start)],
                    key=["cell_id"])
        events.put(("done", spec.cell_id, status, None))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        events.close()
        events.join_thread()  # flush the queue's feeder thread before os._exit
    os._exit(0)


def _peak_mb(device: str) -> float:
    """The peak this process reached: CUDA max allocated on a GPU, else the peak resident set size."""
    import resource

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_imports() -> float:
    """Import (in this process, before forking) the lazily loaded library modules every cell needs, so each cell
    starts without paying for them. Only imports: no tensor work happens before the fork."""
    start = time.perf_counter()
    import diffusers
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torchvision.utils  # noqa: F401
    import transformers

    for name in ("UNet2DConditionModel", "AutoencoderKL", "DDIMScheduler", "DDPMScheduler"):
        getattr(diffusers, name, None)
    for name in ("CLIPTextModel", "CLIPTokenizer", "CLIPModel", "CLIPTextConfig", "CLIPConfig",
                 "PreTrainedTokenizerFast", "ResNetForImageClassification", "ResNetConfig",
                 "OwlViTForObjectDetection", "OwlViTConfig"):
        try:
            getattr(transformers, name)
        except (AttributeError, ImportError):
            pass
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import scipy.stats  # noqa: F401

    return time.perf_counter() - start


def _context(device: str):
    if device.startswith("cuda"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["bench.cell", "methods", "rewards", "bench.backbones", "bench.testbed"])
        return ctx
    return mp.get_context("fork")


# ------------------------------------------------------------------------------------------------- the runner
def run_grid(specs: list, out_dir: Path, *, jobs: int = 1, resume: bool = True, plugins: Sequence[str] = (),
             console=None, devices: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the cells not yet finished; returns a summary. Cells run ``jobs`` at a time, each in its own process;
    with ``devices``, one cell per device at once, each cell given a free device of the list."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = console or Console(stderr=True)
    done = finished_cells(out_dir) if resume else set()
    todo = [s for s in specs if s.cell_id not in done]
    skipped = len(specs) - len(todo)
    if skipped:
        console.print(f"resume: {skipped} of {len(specs)} cells already finished in {out_dir}/cells.csv; skipping them")
    free_devices = list(devices or [])
    if free_devices:
        jobs = len(free_devices)
    ctx = _context(free_devices[0] if free_devices else todo[0].device if todo else "cpu")
    if ctx.get_start_method() == "fork":
        console.print(f"pre-imported the libraries for every cell in {warm_imports():.1f} s")
    events = ctx.Queue()
    # one core stays free for the grid process and the machine; oversubscribed intra-op threads are catastrophic
    # for small models (measured: 40x slower training with 2 threads on a loaded 2-core machine)
    threads = int(os.environ.get("BENCH_CELL_THREADS", max(1, ((os.cpu_count() or 1) - 1) // max(1, jobs))))
    running: dict[str, tuple[Any, Any, float]] = {}  # cell_id -> (process, spec, start)
    before: dict[str, str | None] = {}  # each cell's row before this run started it (a stale row is not a result)
    results: dict[str, str] = {}
    last_reward: dict[str, str] = {}
    pending = list(todo)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}")]
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task(out_dir.name, total=len(specs), completed=skipped, current="")
        try:
            while pending or running:
                while pending and len(running) < max(1, jobs):
                    spec = pending.pop(0)
                    if free_devices:
                        spec = dataclasses.replace(spec, device=free_devices.pop(0))
                    proc = ctx.Process(target=_cell_process, args=(spec, events, threads, list(plugins), resume),
                                       name=f"cell-{spec.cell_id}")
                    before[spec.cell_id] = row_fingerprint(out_dir, spec.cell_id)
                    proc.start()
                    running[spec.cell_id] = (proc, spec, time.perf_counter())
                try:
                    kind, cell_id, a, b = events.get(timeout=0.5)
                    if kind == "progress":
                        last_reward[cell_id] = f"{running.get(cell_id, (None, None))[1].method if cell_id in running else ''}" \
                                               f" on {cell_id.split('__')[1]}: samples {a}, eval reward {b:.4g}"
                    elif kind == "done":
                        results[cell_id] = a
                        final = f", final {b:.4g}" if isinstance(b, float) and math.isfinite(b) else ""
                        console.print(f"  {a:<8} {cell_id}{final}")
                except queue_mod.Empty:
                    pass
                for cell_id, (proc, spec, t0) in list(running.items()):
                    if proc.is_alive():
                        continue
                    proc.join()
                    del running[cell_id]
                    if devices:
                        free_devices.append(spec.device)
                    _drain(events, results, console)
                    if cell_id not in results and row_fingerprint(out_dir, cell_id) != before.get(cell_id):
                        results.update(_row_status(out_dir, cell_id))  # it wrote its row; the report was lost
                    if cell_id not in results and proc.exitcode == 130:  # Ctrl-C reached the cell: not finished
                        raise KeyboardInterrupt
                    if cell_id not in results:  # died without writing its row: segfault, OOM kill, kill -9
                        code = proc.exitcode
                        why = f"cell process died (exit code {code}" + (
                            f", signal {-code}{' SIGKILL: out of memory?' if code == -9 else ''})" if code and code < 0
                            else ")")
                        append_rows(out_dir / "cells.csv", [failure_row(spec, "crashed", why,
                                                                        time.perf_counter() - t0)], key=["cell_id"])
                        results[cell_id] = "crashed"
                        console.print(f"  crashed  {cell_id}: {why}")
                    bar.advance(task_id)
                current = "; ".join(last_reward.get(c, f"{s.method} on {s.task}: starting")
                                    for c, (_, s, _) in running.items())
                bar.update(task_id, current=current)
        except KeyboardInterrupt as err:
            # Ctrl-C stops the cells (no rows; their last saved state stays for the next run); SIGTERM asks them to
            # save their state after the current step and record themselves `preempted`
            preempt = isinstance(err, Terminated)
            for proc, _, _ in running.values():
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM if preempt else signal.SIGINT)
            deadline = time.perf_counter() + (PREEMPT_GRACE_S if preempt else 30)
            for proc, _, _ in running.values():
                proc.join(timeout=max(0.0, deadline - time.perf_counter()))
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            _drain(events, results, console)
            raise
    return {"ran": len(todo), "skipped": skipped, "results": results, "wall_s": time.perf_counter() - start}


def row_fingerprint(out_dir: Path, cell_id: str) -> str | None:
    """The cell's row as written now (None: no row), to tell a row a run wrote from one it found."""
    cells = read_csv(out_dir / "cells.csv")
    if cells.empty or "cell_id" not in cells:
        return None
    hit = cells[cells["cell_id"] == cell_id]
    return None if hit.empty else repr(sorted(hit.iloc[-1].to_dict().items()))  # NaN-safe to compare


def _row_status(out_dir: Path, cell_id: str) -> dict[str, str]:
    cells = read_csv(out_dir / "cells.csv")
    if cells.empty or "cell_id" not in cells:
        return {}
    hit = cells[cells["cell_id"] == cell_id]
    return {cell_id: str(hit["status"].iloc[-1])} if not hit.empty else {}


def _drain(events, results: dict[str, str], console) -> None:
    while True:
        try:
            kind, cell_id, a, b = events.get_nowait()
        except (queue_mod.Empty, OSError, ValueError):
            return
        if kind == "done":
            results[cell_id] = a
            final = f", final {b:.4g}" if isinstance(b, float) and math.isfinite(b) else ""
            console.print(f"  {a:<8} {cell_id}{final}")


# ------------------------------------------------------------------------------------------------- the command
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = ""
    if torch.cuda.is_available():
        gpu = ", " + torch.cuda.get_device_name(0)
    return f"{socket.gethostname()}: {os.cpu_count()} CPU cores ({cpu}){gpu}, Python {platform.python_version()}, " \
           f"torch {torch.__version__}"


def run_from_args(args) -> int:
    """``python -m bench run --grid [--preset P] [--methods ..] [--tasks ..] [--seeds ..] [--budget N] ...``."""
    try:
        preset = presets_mod.get(args.preset or "quick")
        plugins = [p for p in (getattr(args, "plugins", None) or "").split(",") if p]
        for name in plugins:
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise GridError(f"--plugins: cannot import {name!r}: {err}") from None
        seeds = parse_seeds(getattr(args, "seed", None), args.seeds)
        jobs = args.jobs if getattr(args, "jobs", None) is not None else preset.jobs
        if jobs < 1:
            raise GridError(f"--jobs must be >= 1, got {jobs}")
        i, n = parse_shard(args.shard)
        settings = parse_settings(args.set)
        for key in ("num_steps", "guidance_scale", "eta", "lr"):
            if getattr(args, key, None) is not None:
                settings[key] = getattr(args, key)
        specs, notes = plan(preset, methods=args.method, tasks=args.task, seeds=seeds, budget=args.budget,
                            device=args.device, protocol=args.protocol, suite=args.suite,
                            results_dir=args.results_dir, method_settings=settings, backbone=args.backbone)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.batch_size is not None:
        specs = [dataclasses.replace(s, batch_size=args.batch_size) for s in specs]
    if args.eval_every is not None:
        specs = [dataclasses.replace(s, eval_every=args.eval_every) for s in specs]
    for key in ("dtype", "backbone_path", "resolution", "vae_path", "checkpoint_minutes", "tracker"):
        if getattr(args, key, None) is not None:
            specs = [dataclasses.replace(s, **{key: getattr(args, key)}) for s in specs]
    specs = apply_eval_size(specs, getattr(args, "eval_prompts", None), getattr(args, "eval_images", None))
    if getattr(args, "count_flops", False):
        specs = [dataclasses.replace(s, count_flops=True) for s in specs]
    specs = shard(specs, i, n)
    if args.limit is not None:
        specs = specs[: args.limit]
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if getattr(args, "devices", None) else None
    if devices:
        jobs = len(devices)
        specs = [dataclasses.replace(s, device=devices[0]) for s in specs]
    for s in specs:
        s.validate()
    for d in devices or []:
        if specs:
            dataclasses.replace(specs[0], device=d).validate()  # a device that does not exist: before any cell
    out_dir = Path(args.results_dir) / (args.suite or preset.name)
    from rich.console import Console

    console = Console(stderr=True)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    if not specs:
        console.print("nothing to run: no registered method × task in this selection")
        return 1 if not notes else 0
    command = "python -m bench " + " ".join(getattr(args, "argv", None) or ["run", "--grid"])
    info_path = out_dir / "run_info.json"
    n_backbones = len({s.backbone for s in specs})
    console.print(f"grid {preset.name}: {len(specs)} cells ({len({s.method for s in specs})} methods × "
                  f"{len({s.task for s in specs})} tasks × {len({s.seed for s in specs})} seeds"
                  f"{f' × {n_backbones} backbones' if n_backbones > 1 else ''}), budget "
                  f"{specs[0].budget} samples, device {', '.join(devices) if devices else specs[0].device}, {jobs} at a "
                  f"time -> {out_dir}")
    # the leaderboard's and plots' code, imported now rather than after hours of cells: a tree updated meanwhile (a
    # git pull beside a running grid) would otherwise mix this run's modules with the new ones at its very end
    from bench import leaderboard, plots  # noqa: F401

    started = time.time()
    interrupted = False

    def _terminate(signum, frame):  # SIGTERM (job schedulers before preemption, `kill`): cells save and stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a scheduler may signal again while the cells save
        raise Terminated

    signal.signal(signal.SIGTERM, _terminate)
    summary: dict[str, Any] = {}
    try:
        summary = run_grid(specs, out_dir, jobs=jobs, resume=not args.no_resume, plugins=plugins, console=console,
                           devices=devices)
    except KeyboardInterrupt:
        interrupted = True
    info = {"preset": preset.name, "command": command, "machine": machine(), "protocol": args.protocol,
            "shared_protocol": preset.protocol, "method_overrides": preset.method_overrides,
            "budget": specs[0].budget, "batch_size": specs[0].batch_size, "eval_every": specs[0].eval_every,
            "eval_images_per_prompt": preset.eval_images_per_prompt, "seeds": sorted({s.seed for s in specs}),
            "cells_planned": len(specs), "cells_run": summary.get("ran"), "cells_skipped_resume": summary.get("skipped"),
            "notes": notes, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "wall_s": round(time.time() - started, 1), "interrupted": interrupted, "jobs": jobs,
            "load_average": os.getloadavg(), "devices": devices}
    previous = json.loads(info_path.read_text()) if info_path.exists() else None
    write_atomic(info_path, json.dumps(merge_run_info(previous, info), indent=1, default=str))
    if (out_dir / "cells.csv").exists():
        from bench import leaderboard

        leaderboard.build(out_dir)
        console.print(f"leaderboard: {out_dir / 'leaderboard.md'}")
        if not interrupted:
            print((out_dir / "leaderboard.md").read_text())
    if interrupted:
        raise KeyboardInterrupt
    console.print(f"grid finished in {info['wall_s']:.0f} s")
    statuses = summary.get("results", {}).values()
    return 0 if all(s == "ok" for s in statuses) else 1
