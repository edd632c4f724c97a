"""One cell: backbone × method × reward (task) × seed, trained for a sample budget and evaluated on fixed prompts with
fixed initial noise (identical for every method and seed) at fixed sample counts.

``run_cell(spec)`` returns the cell's row (and writes its LoRA, evaluation grid and curve); ``bench.results`` appends
rows atomically. The grid runner runs each cell in its own process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import resource
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import methods
import rewards
from methods import parallel
from bench import backbones, metrics
from methods.parallel import SINGLE, Shard
from methods.sampling import sample

PROMPT_DIR = Path(__file__).parent / "data" / "prompts"


def read_prompts(name_or_path: str) -> list[str]:
    """A prompt list by name (``bench/data/prompts/<name>.txt``) or path; one prompt a line, ``#`` comments."""
    path = Path(name_or_path)
    if not path.exists():
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.exists():
        names = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
        raise ValueError(f"unknown prompt list {name_or_path!r}; valid: {', '.join(names)} or a file path")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


#: fields added after results were committed: left out of a cell's identity while at their default (None), so the
#: ids of existing cells do not change
OPTIONAL_IDENTITY = ("resolution", "vae_path", "cross_rewards")


@dataclass
class CellSpec:
    backbone: str = "tiny"
    method: str = "draft-k"
    reward: str = "jpeg-compressibility-surrogate"  # the training reward
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    #: evaluation rewards (name -> kwargs); the first is the headline. Default: the training reward's reference
    #: (e.g. the true JPEG size for the surrogate) or the training reward itself.
    eval_rewards: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: rewards of the task's world it is not trained on (name -> kwargs), evaluated beside the eval rewards to
    #: expose reward hacking (the trained reward rising while another falls); names already evaluated are skipped
    cross_rewards: dict[str, dict[str, Any]] | None = None
    task: str | None = None
    seed: int = 0
    budget: int = 64             # training samples (chains generated)
    batch_size: int = 4
    eval_every: int = 16         # evaluate after every this many training samples (and at 0 and at the end)
    train_prompts: list[str] = field(default_factory=lambda: read_prompts("animals"))
    eval_prompts: list[str] = field(default_factory=lambda: read_prompts("animals_eval"))
    eval_images_per_prompt: int = 1
    eval_seed: int = 1234        # the fixed evaluation noise: the same for every method and training seed
    eval_num_steps: int | None = None      # default: the method's num_steps
    eval_guidance_scale: float | None = None
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    protocol: str = "shared"
    device: str = "cpu"
    dtype: str = "fp32"
    backbone_path: str | None = None
    #: an AutoencoderKL replacing the backbone's VAE (e.g. an fp16-fixed SDXL VAE); None: the backbone's own
    vae_path: str | None = None
    #: image size (height = width) for latent backbones; None: the backbone's own (512 for SD 1.5)
    resolution: int | None = None
    lora_rank: int = 4
    suite: str = "default"
    results_dir: str = "results"
    save_lora: bool = True
    save_images: bool = True
    #: also save the cell's resumable state every this many minutes of training (it is always saved at every
    #: evaluation); None: at evaluations only. Not part of the identity: it changes when, not what
    checkpoint_minutes: float | None = None
    #: log to an experiment tracker as well (bench/tracking.py: "tensorboard" or "wandb"); not part of the identity
    tracker: str | None = None
    #: reward whose image tower embeds evaluation images for the diversity metric (default: the first eval reward
    #: that has one, else pixels); does not change training, so it is not part of the cell's identity
    diversity_reward: str | None = None
    #: count the FLOPs of the first training step (torch.utils.flop_counter; that step is then left out of the
    #: throughput): reports flops_per_sample and, on a GPU of known peak, the achieved fraction of it (MFU)
    count_flops: bool = False
    #: fingerprint of local weights (e.g. the testbed's manifest): part of the identity, so retrained weights
    #: make new cells instead of resuming old ones
    weights_version: str | None = None

    def validate(self) -> None:
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 sample, got {self.budget}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if not self.train_prompts or not self.eval_prompts:
            raise ValueError("train and eval prompt lists must not be empty")
        factory = methods.get(self.method)
        if hasattr(factory, "check_batch"):
            factory.check_batch(self.batch_size, self.method_kwargs)
        if hasattr(factory, "check_budget"):
            factory.check_budget(self.budget, self.method_kwargs)
        if hasattr(factory, "check_backbone"):
            from bench import catalog

            reference = dict(getattr(factory, "REFERENCE", {})) if self.protocol == "reference" else {}
            factory.check_backbone(catalog.is_flow(self.backbone), {**reference, **self.method_kwargs})
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        if self.device.startswith("cuda:") and int(self.device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device {self.device!r} does not exist: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if self.device.startswith("cuda") and self.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"dtype bf16 is not supported by {torch.cuda.get_device_name(self.device)} "
                             f"(compute capability < 8.0): use --dtype fp16 or fp32")

    @property
    def cell_id(self) -> str:
        """Deterministic identity: readable parts plus a hash of everything that changes the result."""
        keyed = {k: (torch.device(v).type if k == "device" else v) for k, v in dataclasses.asdict(self).items()
                 if k not in ("suite", "results_dir", "save_lora", "save_images", "diversity_reward", "count_flops",
                              "checkpoint_minutes", "tracker")
                 and not (k in OPTIONAL_IDENTITY and v is None)}
        digest = hashlib.sha1(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.backbone}__{self.task or self.reward}__{self.method}__s{self.seed}__{digest}"

    def cell_dir(self) -> Path:
        return Path(self.results_dir) / self.suite / "cells" / self.cell_id


def resolve_training_reward(method_name: str, reward_name: str) -> tuple[str, str | None]:
    """A gradient method given a non-differentiable reward that has a registered surrogate trains on the surrogate
    and reports it; without one, the method refuses (MethodError). Returns (training reward, note)."""
    factory = methods.get(method_name)
    reward_cls = rewards.base.get(reward_name)  # unknown name: the one-line error listing valid names
    if getattr(factory, "needs_gradient_reward", True) and not getattr(reward_cls, "differentiable", True):
        surrogate = f"{reward_name}-surrogate"
        if surrogate in rewards.available():
            return surrogate, (f"{method_name} backpropagates through the reward: training on {surrogate}, "
                               f"evaluating on {reward_name}")
    return reward_name, None


def code_version() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        return rev or "unknown"
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def library_versions() -> str:
    import diffusers
    import peft
    import transformers

    return (f"torch={torch.__version__};diffusers={diffusers.__version__};transformers={transformers.__version__};"
            f"peft={peft.__version__}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}"


#: dense bf16/fp16 tensor-core peak FLOP/s by GPU name (the vendors' spec sheets, without sparsity)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
                   "4090": 165e12}


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The device's peak FLOP/s for the cell's dtype, where known (CUDA bf16/fp16 only; fp32 without TF32 is ~15x
    lower and not listed): the denominator of MFU."""
    if device.type != "cuda" or dtype not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated on the device; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_over_processes(device: torch.device, shard: Shard = SINGLE) -> float:
    """``peak_memory_mb`` of the busiest process of a data-parallel cell (a collective: every rank calls it); the
    memory a GPU of the cell must hold, which rank 0's alone understates when the ranks' loads differ."""
    return max(float(v) for v in shard.gather_objects(peak_memory_mb(device)))


class Evaluator:
    """Fixed prompts × fixed initial noise, deterministic DDIM (eta = 0), no gradient; scores every eval reward.

    ``eta`` > 0 or ``kind="ddpm"`` (a method's own stochastic training sampler) draws the transitions' noise from a
    generator seeded by ``seed`` and the batch's first row at every call, so repeated evaluations see the same noise.

    With several processes (``shard``) each evaluates a contiguous share of the (prompt, noise) pairs and the scores
    and images are gathered in order: every process returns the whole evaluation (a stochastic sampler's transition
    noise then depends on the number of processes)."""

    def __init__(self, backbone, eval_rewards: dict[str, torch.nn.Module], prompts: list[str], *, num_steps: int,
                 guidance_scale: float, images_per_prompt: int, seed: int, batch_size: int = 16,
                 shard: Shard = SINGLE, eta: float = 0.0, kind: str = "ddim"):
        self.backbone, self.rewards, self.shard = backbone, eval_rewards, shard
        self.prompts = [p for p in prompts for _ in range(images_per_prompt)]
        self.num_steps, self.guidance_scale, self.batch_size = num_steps, guidance_scale, batch_size
        self.eta, self.kind, self.seed = eta, kind, seed
        gen = torch.Generator().manual_seed(seed)  # CPU generator: identical noise on every device
        self.noise = torch.randn(backbone.latent_shape(len(self.prompts)), generator=gen).to(backbone.device)
        n, w, r = len(self.prompts), shard.world, shard.rank
        self.rows = (r * (n // w) + min(r, n % w), (r + 1) * (n // w) + min(r + 1, n % w))

    @torch.no_grad()
    def __call__(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        scores: dict[str, list[torch.Tensor]] = {n: [] for n in self.rewards}
        images = []
        lo, hi = self.rows
        for i in range(lo, hi, self.batch_size):
            j = min(i + self.batch_size, hi)
            prompts = self.prompts[i:j]
            cond = self.backbone.encode_prompts(prompts)
            stochastic = self.eta > 0 or self.kind == "ddpm"
            out = sample(self.backbone, cond, self.noise[i:j], num_steps=self.num_steps,
                         guidance_scale=self.guidance_scale, eta=self.eta, kind=self.kind,
                         generator=torch.Generator(self.noise.device).manual_seed(self.seed + 1 + i)
                         if stochastic else None)
            imgs = self.backbone.decode(out.latents)
            for name, reward in self.rewards.items():
                scores[name].append(reward(imgs, prompts).float().cpu())
            images.append(imgs.cpu())
        mine = ({n: torch.cat(v) if v else torch.zeros(0) for n, v in scores.items()},
                torch.cat(images) if images else torch.zeros(0))
        if not self.shard.distributed:
            return mine
        parts = [p for p in self.shard.gather_objects(mine) if len(p[1])]
        return {n: torch.cat([p[0][n] for p in parts]) for n in self.rewards}, torch.cat([p[1] for p in parts])


#: the training metrics a curve point records (as ``train_<name>``): their means over the optimiser calls since the
#: previous point. ``reward`` is the training batches' reward (under the method's own sampler); the others are means
#: over the calls that updated the weights (DDPO's sample-only calls, ``optimizer_steps`` 0, have no loss or gradient).
#: Rank-local where several processes train a cell (rank 0's share of the batch).
TRAIN_METRICS = ("reward", "loss", "grad_norm", "approx_kl", "clipfrac")


def accumulate_train_metrics(interval: dict[str, list[float]], metrics: dict[str, Any]) -> None:
    """Add one step()'s metrics to the interval's [sum, count] per training metric (see TRAIN_METRICS)."""
    updated = int(metrics.get("optimizer_steps", 1)) > 0
    for name in TRAIN_METRICS:
        value = metrics.get(name)
        if value is None or (name != "reward" and not updated):
            continue
        acc = interval.setdefault(name, [0.0, 0])
        acc[0] += float(value)
        acc[1] += 1


def train_columns(interval: dict[str, list[float]]) -> dict[str, float]:
    """The interval's means as curve columns ``train_<name>`` (empty before any step)."""
    return {f"train_{name}": total / count for name, (total, count) in interval.items() if count}


def save_eval_grid(path: Path, eval_images: dict[str, torch.Tensor], prompts: list[str], first: dict, last: dict,
                   headline: str, title: str) -> Path:
    """The evaluation images before and after training, on the same prompts and the same initial noise: one column per
    prompt (the prompt under it); for each of the prompt's noises a row of the initial model and, below it, a row of
    the final one."""
    from bench import images

    unique = list(dict.fromkeys(prompts))
    per_prompt = len(prompts) // max(1, len(unique))
    before, after = eval_images["first"], eval_images.get("last", eval_images["first"])
    rows, labels = [], []
    for k in range(per_prompt):  # prompts are prompt-major: image k of every prompt sits at k, k + K, k + 2K, ...
        rows += [before[k::per_prompt], after[k::per_prompt]]
        labels += [f"noise {k}: initial", f"noise {k}: after {last['samples']} samples"]
    return images.save_grid(path, rows, col_labels=unique, row_labels=labels,
                            title=f"{title}: {first[headline + '_mean']:.3g} -> {last[headline + '_mean']:.3g} "
                                  f"(mean over {len(prompts)} images)")


def area_under_curve(samples: list[int], values: list[float]) -> float:
    """Trapezoidal area under reward-vs-samples, normalised by the sample range (a mean reward over training)."""
    if len(samples) < 2 or samples[-1] == samples[0]:
        return float(values[-1]) if values else math.nan
    area = sum((samples[i + 1] - samples[i]) * (values[i + 1] + values[i]) / 2 for i in range(len(samples) - 1))
    return area / (samples[-1] - samples[0])


def build(spec: CellSpec, shard: Shard = SINGLE):
    """Backbone, training reward, evaluation rewards and method for a spec (validates everything first)."""
    spec.validate()
    train_reward_name, note = resolve_training_reward(spec.method, spec.reward)
    eval_specs = dict(spec.eval_rewards)
    if not eval_specs:
        ref = getattr(rewards.base.get(train_reward_name), "reference", None)
        eval_specs = {ref or spec.reward: dict(spec.reward_kwargs)}
        if ref and spec.reward != ref:  # surrogate trained: also report the surrogate itself
            eval_specs[train_reward_name] = dict(spec.reward_kwargs)
    if train_reward_name not in eval_specs and spec.reward not in eval_specs:
        eval_specs[train_reward_name] = dict(spec.reward_kwargs)
    for name, kw in (spec.cross_rewards or {}).items():
        if name not in eval_specs and name != spec.reward:
            eval_specs[name] = dict(kw)
    methods.get(spec.method)  # unknown name -> one line, before building anything heavy
    for name in eval_specs:
        if name not in rewards.available():
            rewards.create(name)
    # rewards first: a missing reward weight fails in seconds, before the (larger) backbone is built. Their
    # construction leaves the global RNG as it was, so the backbone's LoRA initialisation depends on the seed only
    with torch.random.fork_rng(devices=[]):
        train_reward = rewards.create(train_reward_name, **spec.reward_kwargs)
        eval_rewards = {n: (train_reward if n == train_reward_name else rewards.create(n, **kw))
                        for n, kw in eval_specs.items()}
    backbone = backbones.create(spec.backbone, device=spec.device, dtype=spec.dtype, lora_rank=spec.lora_rank,
                                **({"path": spec.backbone_path} if spec.backbone_path else {}),
                                **({"resolution": spec.resolution} if spec.resolution else {}),
                                **({"vae_path": spec.vae_path} if spec.vae_path else {}))
    train_reward = train_reward.to(backbone.device)
    eval_rewards = {n: r.to(backbone.device) for n, r in eval_rewards.items()}
    method = methods.create(spec.method, backbone, train_reward, seed=spec.seed, protocol=spec.protocol,
                            shard=shard, **spec.method_kwargs)
    return backbone, train_reward, eval_rewards, method, note


def finish_cell(spec: CellSpec) -> None:
    """After the cell's row is written: its resumable state is no longer needed."""
    (spec.cell_dir() / STATE_FILE).unlink(missing_ok=True)


class Preempted(Exception):
    """SIGTERM reached a training cell: its state is saved (``resume.pt``) and the same command resumes it."""


STATE_FILE = "resume.pt"


@contextmanager
def _sigterm_flag():
    """While training, SIGTERM (what Slurm sends before preempting a job) sets a flag the loop reads after each
    step, instead of killing the process mid-step. Only the main thread can install a handler; elsewhere a no-op."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill during the write leaves the previous state intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(spec: CellSpec) -> dict[str, Any] | None:
    path = spec.cell_dir() / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if state.get("cell_id") == spec.cell_id else None


def run_cell(spec: CellSpec, on_progress: Callable[[dict[str, Any]], None] | None = None, *,
             resume: bool = True) -> tuple[dict, list[dict]]:
    """Train and evaluate one cell. Returns (row, curve points). Never raises for a NaN: the row says ``nan``.

    The cell's whole state (LoRA, optimiser, generators, the method's own state such as DDPO's reward buffers, the
    curve so far) is saved atomically to ``cell_dir/resume.pt`` at every evaluation and every
    ``spec.checkpoint_minutes``; with ``resume`` a run finds it and continues from there, bit for bit as the
    uninterrupted run would have. SIGTERM during training saves the state after the current step and raises
    ``Preempted``. The state file is removed once the cell has finished (``finish_cell``).
    """
    shard = parallel.from_environment(spec.device)
    if shard.distributed:
        shard.span(spec.batch_size)  # a batch that does not split evenly: one line, before anything loads
        if spec.device.startswith("cuda"):  # one GPU per process
            spec = dataclasses.replace(spec, device=f"cuda:{os.environ.get('LOCAL_RANK', shard.rank)}")
    lead = shard.rank == 0  # the one process that writes (state, images, LoRA); every process computes alike
    torch.manual_seed(spec.seed)
    start = time.perf_counter()
    if spec.device.startswith("cuda"):  # TF32 for the fp32 matmuls (LoRA, the sampler's arithmetic); SDPA attention
        torch.backends.cuda.matmul.allow_tf32 = True  # is diffusers' default processor
        torch.backends.cudnn.allow_tf32 = True
    backbone, train_reward, eval_rewards, method, note = build(spec, shard)
    cfg = method.config
    evaluator = Evaluator(backbone, eval_rewards, spec.eval_prompts, num_steps=spec.eval_num_steps or cfg.num_steps,
                          guidance_scale=spec.eval_guidance_scale if spec.eval_guidance_scale is not None
                          else cfg.guidance_scale, images_per_prompt=spec.eval_images_per_prompt, seed=spec.eval_seed,
                          shard=shard)
    headline = next(iter(eval_rewards))
    # the headline reward also under the method's own training sampler (DDPO: eta 1), at the first and the final
    # evaluation, on the same prompts and initial noise; where that sampler is the shared one, its values are copied
    own_sampler = dict(num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale, eta=cfg.eta, kind=cfg.sampler)
    own_evaluator = None if own_sampler == dict(num_steps=evaluator.num_steps, guidance_scale=evaluator.guidance_scale,
                                                eta=0.0, kind="ddim") else Evaluator(
        backbone, {headline: eval_rewards[headline]}, spec.eval_prompts, images_per_prompt=spec.eval_images_per_prompt,
        seed=spec.eval_seed, shard=shard, **own_sampler)
    own_scores: dict[str, float] = {}
    curve: list[dict[str, Any]] = []
    interval: dict[str, list[float]] = {}  # training metrics since the last curve point: [sum, count] per name

    eval_images: dict[str, torch.Tensor] = {}
    first_scores: dict[str, torch.Tensor] = {}
    last_scores: dict[str, torch.Tensor] = {}

    def evaluate(samples: int, queries: int, final: bool = False) -> dict[str, float]:
        scores, images = evaluator()
        eval_images["first" if not curve else "last"] = images
        if not curve:
            first_scores.update(scores)
        last_scores.update(scores)
        if own_evaluator is not None and (not curve or final):
            own_scores["initial" if not curve else "final"] = float(own_evaluator()[0][headline].mean())
        point = {"cell_id": spec.cell_id, "samples": samples, "reward_queries": queries,
                 "train_wall_s": round(train_time, 3), **train_columns(interval)}
        interval.clear()
        for name, s in scores.items():
            point[f"{name}_mean"] = float(s.mean())
            point[f"{name}_std"] = float(s.std()) if len(s) > 1 else 0.0
        curve.append(point)
        if tracker is not None:
            tracker.evaluation(point)
        return point

    train_time = 0.0
    tracker = None
    if spec.tracker and lead:
        from bench.tracking import CellTracker

        tracker = CellTracker(spec.tracker, spec)
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backbone.device)
    rng = torch.Generator().manual_seed(spec.seed)
    status, message = "ok", note or ""
    next_eval = spec.eval_every
    totals: dict[str, float] = {}
    flops_per_sample, counted_samples = math.nan, 0
    n_steps = 0          # step() calls (one batch each)
    optimizer_steps = 0  # optimiser updates: DDPO takes several per batch (its metrics say how many)
    last_metrics: dict[str, Any] = {}
    state_path = spec.cell_dir() / STATE_FILE
    saved = load_state(spec) if resume else None
    resumed_at = None
    if saved is not None:
        method.load_state_dict(saved["method"])
        rng.set_state(saved["prompt_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and backbone.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], backbone.device)
        curve[:] = saved["curve"]
        interval.update(saved.get("interval", {}))
        eval_images.update(saved["eval_images"])
        first_scores.update(saved.get("first_scores", {}))
        own_scores.update(saved.get("own_scores", {}))
        train_time, totals, next_eval = saved["train_time"], saved["totals"], saved["next_eval"]
        n_steps, optimizer_steps = saved["n_steps"], saved["optimizer_steps"]
        flops_per_sample, counted_samples = saved["flops_per_sample"], saved["counted_samples"]
        resumed_at = method.total_samples
        message = "; ".join(m for m in (message, f"resumed at {resumed_at} samples") if m)
    else:
        evaluate(0, 0)

    def checkpoint() -> None:
        if not lead:
            return
        save_state(state_path, {
            "cell_id": spec.cell_id, "code_version": code_version(), "method": method.state_dict(),
            "prompt_rng": rng.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(backbone.device) if backbone.device.type == "cuda" else None,
            "curve": curve, "interval": interval, "eval_images": {k: v.cpu() for k, v in eval_images.items()}, "train_time": train_time,
            "first_scores": first_scores, "own_scores": own_scores,
            "totals": totals, "next_eval": next_eval, "n_steps": n_steps, "optimizer_steps": optimizer_steps,
            "flops_per_sample": flops_per_sample, "counted_samples": counted_samples})

    every_s = spec.checkpoint_minutes * 60 if spec.checkpoint_minutes else math.inf
    last_save = time.perf_counter()
    with _sigterm_flag() as sigterm:
        while method.total_samples < spec.budget:
            idx = torch.randint(len(spec.train_prompts), (spec.batch_size,), generator=rng).tolist()
            t0 = time.perf_counter()
            counted = spec.count_flops and n_steps == 0
            if counted:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    last_metrics = method.step([spec.train_prompts[i] for i in idx])
                flops_per_sample = counter.get_total_flops() / max(1, int(last_metrics["samples"]))
                counted_samples = int(last_metrics["samples"])
            else:
                last_metrics = method.step([spec.train_prompts[i] for i in idx])
                train_time += time.perf_counter() - t0
            n_steps += 1
            optimizer_steps += int(last_metrics.get("optimizer_steps", 1))
            accumulate_train_metrics(interval, last_metrics)
            if tracker is not None:
                tracker.train_step(last_metrics, method.total_samples)
            for k, v in last_metrics.items():
                if k.startswith("time_") and not counted:
                    totals[k] = totals.get(k, 0.0) + v
            nonfinite = not math.isfinite(float(last_metrics.get("loss", 0.0)))
            if shard.distributed:  # decisions every process takes together, or one would wait for the others
                nonfinite, sigterm["set"] = shard.any(nonfinite, sigterm["set"])
            if nonfinite:
                status, message = "nan", f"non-finite loss at optimiser step {n_steps}"
                break
            if method.total_samples >= next_eval and method.total_samples < spec.budget:
                point = evaluate(method.total_samples, method.total_reward_queries)
                next_eval = (method.total_samples // spec.eval_every + 1) * spec.eval_every
                if on_progress and lead:
                    on_progress({"samples": method.total_samples, "reward": point[f"{headline}_mean"]})
                checkpoint()
                last_save = time.perf_counter()
            elif time.perf_counter() - last_save > every_s:
                checkpoint()
                last_save = time.perf_counter()
            if sigterm["set"]:
                checkpoint()
                raise Preempted(f"SIGTERM at {method.total_samples} of {spec.budget} samples: state saved in "
                                f"{state_path}; the same command resumes it")
    final = evaluate(method.total_samples, method.total_reward_queries, final=True)
    if spec.save_images and lead:
        save_eval_grid(spec.cell_dir() / "eval.png", eval_images, evaluator.prompts, curve[0], final, headline,
                       title=f"{spec.method} on {spec.task or spec.reward}, seed {spec.seed}: {headline}")
    if on_progress and lead:
        on_progress({"samples": method.total_samples, "reward": final[f"{headline}_mean"]})
    if tracker is not None:
        tracker.images({"initial": eval_images["first"], "final": eval_images.get("last", eval_images["first"])},
                       method.total_samples)
        tracker.finish()
    if spec.save_lora and status == "ok" and lead:
        backbone.save_lora(spec.cell_dir() / "lora", metadata={"cell_id": spec.cell_id, "method": spec.method,
                                                               "reward": spec.reward})
    first = curve[0]
    samples = [p["samples"] for p in curve]
    div_reward = eval_rewards.get(spec.diversity_reward) if spec.diversity_reward else next(
        (r for r in eval_rewards.values() if hasattr(r, "image_encoder")), None)
    if spec.diversity_reward and div_reward is None and spec.diversity_reward in rewards.available():
        try:
            div_reward = rewards.create(spec.diversity_reward).to(backbone.device)
        except Exception:  # noqa: BLE001 - weights not available: fall back to pixels, named in the row
            div_reward = None
    embedding_name, embed = metrics.image_embedder(div_reward)
    diversity = {k: metrics.pairwise_diversity(embed(v.to(backbone.device)), evaluator.prompts)
                 for k, v in eval_images.items()}
    timed = method.total_samples - counted_samples  # the FLOP-counted step is not timed
    timed_steps = max(n_steps - (1 if counted_samples else 0), 1)
    samples_per_s = timed / train_time if train_time > 0 and timed > 0 else math.nan
    row = {
        "cell_id": spec.cell_id, "suite": spec.suite, "backbone": spec.backbone, "method": spec.method,
        "task": spec.task or spec.reward, "train_reward": method.reward.name, "eval_reward": headline,
        "seed": spec.seed, "protocol": spec.protocol, "status": status, "message": message, "budget": spec.budget,
        "samples": method.total_samples, "reward_queries": method.total_reward_queries, "train_steps": n_steps,
        "optimizer_steps": optimizer_steps,
        "reward_initial": first[f"{headline}_mean"], "reward_final": final[f"{headline}_mean"],
        "reward_final_std": final[f"{headline}_std"],
        "eval_images": len(evaluator.prompts),
        # the headline reward of every final evaluation image, in the fixed (prompt, noise) order shared by every
        # method and seed: the leaderboard compares methods image by image (paired) where a cell has one seed
        "reward_final_images": " ".join(f"{v:.6g}" for v in last_scores[headline].tolist()),
        "diversity_initial": diversity.get("first", math.nan),
        "diversity_final": diversity.get("last", diversity.get("first", math.nan)),
        "diversity_embedding": embedding_name,
        "reward_auc": area_under_curve(samples, [p[f"{headline}_mean"] for p in curve]),
        "peak_mem_mb": round(peak_memory_over_processes(backbone.device, shard), 1),
        "samples_per_s": samples_per_s,
        "flops_per_sample": flops_per_sample,
        "mfu": flops_per_sample * samples_per_s / peak if (peak := peak_flops(backbone.device, spec.dtype)) else math.nan,
        "s_per_step_sampling": totals.get("time_sampling", 0.0) / timed_steps,
        "s_per_step_reward": totals.get("time_reward", 0.0) / timed_steps,
        "s_per_step_backward": totals.get("time_backward", 0.0) / timed_steps,
        "train_wall_s": round(train_time, 2), "wall_s": round(time.perf_counter() - start, 2),
        "device": device_name(backbone.device) + (f" ({spec.device})" if ":" in spec.device else ""),
        "processes": shard.world,
        "dtype": spec.dtype,
        "weights_version": spec.weights_version, "versions": library_versions(),
        "code_version": code_version(),
    }
    row["reward_delta_ci95"] = paired_delta_ci95(first_scores.get(headline), last_scores[headline])
    row["own_sampler"] = "shared" if own_evaluator is None else sampler_label(**own_sampler)
    row["reward_own_initial"] = own_scores.get("initial", math.nan) if own_evaluator else row["reward_initial"]
    row["reward_own_final"] = own_scores.get("final", math.nan) if own_evaluator else row["reward_final"]
    for name in list(eval_rewards)[1:]:
        row[f"{name}_initial"] = first[f"{name}_mean"]
        row[f"{name}_final"] = final[f"{name}_mean"]
        row[f"{name}_delta_ci95"] = paired_delta_ci95(first_scores.get(name), last_scores[name])
    return row, curve


def paired_delta_ci95(initial: torch.Tensor | None, final: torch.Tensor) -> float:
    """Half-width of the 95% interval (Student t) of the mean per-image change final − initial: the same prompts and
    initial noise before and after training, so the difference is paired. NaN without the initial scores."""
    if initial is None or len(initial) != len(final) or len(final) < 2:
        return math.nan
    from scipy.stats import t

    d = (final.double() - initial.double())
    return float(t.ppf(0.975, len(d) - 1) * d.std() / math.sqrt(len(d)))


def sampler_label(num_steps: int, guidance_scale: float, eta: float, kind: str) -> str:
    return f"{kind} eta {eta:g}, {num_steps} steps, CFG {guidance_scale:g}"
