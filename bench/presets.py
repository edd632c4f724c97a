"""Grid presets: which methods × tasks × seeds, on which backbone, under one shared protocol and budget.

A preset is plain data (like ddpo-pytorch's named configs). The *shared protocol* (sampler, steps, eta, CFG, LoRA
rank, batch, budget) applies to every method in the preset; ``--protocol reference`` drops the shared sampler
settings and lets each method follow its original paper (its ``REFERENCE`` settings), keeping budget and batch.

Evaluation is the same for every method: the task's held-out prompts × ``eval_images_per_prompt`` fixed initial
noises, deterministic DDIM (eta 0) with the protocol's steps and CFG, at every ``eval_every`` training samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: every method variant the benchmark compares (names not registered yet are skipped with a note)
ALL_METHODS = ["ddpo", "refl", "draft", "draft-k", "draft-1", "draft-lv", "alignprop", "drtune"]
#: beyond the three papers: the GRPO family (likelihood ratio with group-normalised advantages; flow-grpo needs a
#: flow-matching backbone) and DiffusionNFT (forward process)
BEYOND_METHODS = ["grpo", "flow-grpo", "diffusion-nft"]
TESTBED_TASKS = ["shapes-aesthetic", "shapes-alignment", "shapes-circles-to-squares", "shapes-add-red-circle",
                 "shapes-remove-blue-square", "shapes-compressibility"]
REAL_TASKS = ["aesthetic-animals", "hpsv2", "pickscore", "imagereward", "adversarial-cat", "add-strawberries",
              "remove-people", "compressibility", "incompressibility"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    methods: list[str]
    tasks: list[str]
    backbone: str | None = None          # None: each task's own backbone
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: int = 32                     # training samples per cell
    batch_size: int = 4
    eval_every: int = 8                  # evaluation points: 0, eval_every, 2·eval_every, ..., budget
    eval_images_per_prompt: int = 2
    eval_prompts_limit: int | None = None
    #: the shared protocol: applied to every method (a method whose config lacks a key ignores it)
    protocol: dict[str, Any] = field(default_factory=dict)
    #: per-method exceptions to the shared protocol, where the method cannot run under it (e.g. DDPO needs eta > 0)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    lora_rank: int = 4
    device: str | None = None            # None: cuda if available, else cpu
    dtype: str = "fp32"
    jobs: int = 1                        # cells run at once (each in its own process)
    save_images: bool = True
    expected_time: str = ""
    #: explicit (method, task, backbone) cells instead of methods × tasks (on ``backbone``)
    cells: tuple[tuple[str, str, str], ...] = ()
    #: arguments given to every reward that takes them (e.g. ``weights="random"``)
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    resolution: int | None = None        # image size for latent backbones (None: the model's own)
    count_flops: bool = False            # FLOPs of each cell's first step, and MFU on a GPU of known peak


TESTBED_PROTOCOL = dict(sampler="ddim", num_steps=10, guidance_scale=3.0, eta=0.0)
SD_PROTOCOL = dict(sampler="ddim", num_steps=50, guidance_scale=7.5, eta=0.0)
#: DDPO's policy gradient needs stochastic transitions: it samples with eta = 1 (its paper's value); it is still
#: evaluated like every other method (eta 0, fixed noise), and also under its own eta-1 sampler
DDPO_ETA = {"ddpo": {"eta": 1.0}}


def ddpo_epochs(samples_per_epoch: int, minibatch_size: int) -> dict[str, dict[str, Any]]:
    """DDPO run as its paper runs it (ddpo-pytorch's configs): its unit of update is an epoch of on-policy samples
    (reference 256), advantages over the whole epoch, then ``samples_per_epoch / minibatch_size`` PPO steps (reference
    4) over one inner epoch; eta 1. The per-prompt statistics (buffer 16, min_count 16) take over once a prompt has 16
    rewards: with the testbed's 40 training prompts after ≈ 640 samples, as in the reference's animal prompts after
    3 epochs of 256; before that the epoch's mean and standard deviation are the baseline."""
    return {"ddpo": {"eta": 1.0, "samples_per_epoch": samples_per_epoch, "minibatch_size": minibatch_size,
                     "inner_epochs": 1}}


#: DDPO's learning rate on the testbed, chosen by the ``ddpo-lr`` sweep (scripts/ddpo_lr_sweep.sh; results/ddpo-lr/
#: sweep.md, 2048 samples, seed 0): 1e-4 +0.013 ± 0.006, 3e-4 (the reference's) -0.000 ± 0.082, 1e-3 -0.026 ± 0.098
#: on shapes-aesthetic. Fixed for the presets run in the swept epochs (64 samples, minibatches of 16).
DDPO_TESTBED_LR = 1e-4


def ddpo_paper_epochs() -> dict[str, dict[str, Any]]:
    """ddpo_epochs(64, 16) at the swept learning rate: the paper and ddpo-long presets' DDPO."""
    epochs = ddpo_epochs(64, 16)
    return {"ddpo": {**epochs["ddpo"], "lr": DDPO_TESTBED_LR}}

#: SD 3.5 Medium's own sampling settings (diffusers' documented defaults: 40 steps, CFG 4.5), at 512 px as Flow-GRPO
#: and FlowBP train it (1024 px is the model's native size: --resolution 1024)
SD35_PROTOCOL = dict(sampler="ddim", num_steps=40, guidance_scale=4.5, eta=0.0)
#: FLUX.1-dev: 28 steps, guidance 3.5 (the guidance embedding's input; the model has no CFG)
FLUX_PROTOCOL = dict(sampler="ddim", num_steps=28, guidance_scale=3.5, eta=0.0)
EVERY_METHOD = ALL_METHODS + BEYOND_METHODS
#: the flow preset's tasks: the testbed's headline differentiable reward and its non-differentiable one (gradient
#: methods train on the surrogate; GRPO and DiffusionNFT on the reward itself)
FLOW_TASKS = ["shapes-aesthetic", "shapes-compressibility"]
#: every method on both testbed models, DDIM (shapes) and rectified flow (shapes-flow), side by side
FLOW_CELLS = tuple((m, t, bb) for t in FLOW_TASKS for bb in ("shapes", "shapes-flow") for m in EVERY_METHOD)

FLOW_LONG_CELLS = tuple((m, "shapes-aesthetic", bb) for bb in ("shapes", "shapes-flow")
                        for m in ("draft-1", "refl", "ddpo", "grpo", "flow-grpo", "diffusion-nft"))

#: smoke-real: every method on both real architectures, every real reward at its full architecture (random weights)
_SMOKE_TASKS = ["compressibility", "aesthetic-animals", "hpsv2", "pickscore", "imagereward", "adversarial-cat",
                "add-strawberries", "compressibility"]
SMOKE_CELLS = tuple((m, _SMOKE_TASKS[(i + shift) % len(_SMOKE_TASKS)], bb)
                    for shift, bb in ((0, "sd15-random"), (2, "sd21-random")) for i, m in enumerate(ALL_METHODS))

#: smoke-xl: every method on SDXL's architecture, each with a real reward (bf16 frozen weights: fp32 SDXL plus a full
#: reward does not fit in 20 GB)
SMOKE_XL_CELLS = tuple((m, _SMOKE_TASKS[(i + 4) % len(_SMOKE_TASKS)], "sdxl-random") for i, m in enumerate(ALL_METHODS))


def _smoke(name: str, cells, what: str, **kw) -> Preset:
    return Preset(name, f"CPU proof of the real path: {what} (random weights, 256 px, 2 DDIM steps, CFG 7.5), each "
                        f"real reward at its full architecture with random weights, one optimiser step of batch 2",
                  ALL_METHODS, sorted({t for _, t, _ in cells}), cells=cells, seeds=[0], budget=2, batch_size=2,
                  eval_every=2, eval_images_per_prompt=1, eval_prompts_limit=1, resolution=256,
                  reward_kwargs={"weights": "random"}, protocol=dict(SD_PROTOCOL, num_steps=2),
                  method_overrides={"ddpo": {"eta": 1.0}, "draft-k": {"truncation_steps": 2}}, device="cpu", jobs=1,
                  **{"expected_time": "CPU, 2 cores: ≈ 2–3 min a cell, peak RSS ≈ 12 GB (README)", **kw})


def group_size(g: int) -> dict[str, dict[str, Any]]:
    """The group size G of every group method (GRPO, Flow-GRPO, DiffusionNFT)."""
    return {m: {"group_size": g} for m in BEYOND_METHODS}


def _systems_flow(name: str, architecture: str, backbone: str, protocol: dict, extra: str = "") -> Preset:
    return Preset(name, f"peak memory and samples/s of every method on {architecture}, random weights, 512 px, bf16, "
                        f"batch 2{extra} (GPU)",
                  EVERY_METHOD, ["compressibility"], backbone=backbone, seeds=[0], budget=4, batch_size=2,
                  eval_every=4, eval_images_per_prompt=1, eval_prompts_limit=1, resolution=512,
                  protocol=dict(protocol, num_steps=10), method_overrides={**DDPO_ETA, **group_size(2)},
                  device="cuda", dtype="bf16", save_images=False, count_flops=True,
                  expected_time="GPU: not yet measured")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("quick", "every method × every testbed task on shapes, 1 seed, 32 samples, evaluated on 8 held-out prompts "
           "× 4 noises: the default of --grid",
           ALL_METHODS, TESTBED_TASKS, backbone="shapes", seeds=[0], budget=32, batch_size=4, eval_every=16,
           eval_images_per_prompt=4, protocol=TESTBED_PROTOCOL, method_overrides=ddpo_epochs(32, 8), device="cpu",
           jobs=2, expected_time="≈ 16 min on 2 CPU cores (924 s measured)"),
    Preset("ci", "regression subset: 4 methods × 2 testbed tasks, 16 samples (compared with results/ci/baseline.csv)",
           ["ddpo", "draft-1", "draft-lv", "refl"], ["shapes-aesthetic", "shapes-circles-to-squares"],
           backbone="shapes", seeds=[0], budget=16, batch_size=4, eval_every=8, eval_prompts_limit=4,
           protocol=TESTBED_PROTOCOL, method_overrides=ddpo_epochs(16, 4), device="cpu", jobs=2, save_images=False,
           expected_time="≤ 3 min on 2 CPU cores"),
    Preset("paper", "every method × every testbed task, 3 seeds, 512 samples: the testbed's science run",
           ALL_METHODS, TESTBED_TASKS, backbone="shapes", seeds=[0, 1, 2], budget=512, batch_size=8, eval_every=32,
           protocol=TESTBED_PROTOCOL, method_overrides=ddpo_paper_epochs(), device="cpu", jobs=2,
           expected_time="≈ 48 min per task on 2 CPU cores (measured: the shapes-aesthetic slice, 24 cells, "
                         "95 cell-minutes in 2 processes), ≈ 5 h for all 6 tasks; slice it with --tasks"),
    Preset("flow", "every method (the papers' eight, grpo, flow-grpo, diffusion-nft) on both testbed models: shapes "
           "(DDIM) and shapes-flow (rectified flow), 2 tasks, 1 seed, 32 samples (quick's protocol); the leaderboard "
           "puts the two models side by side (flow-grpo needs a flow model: skipped on shapes)",
           EVERY_METHOD, FLOW_TASKS, cells=FLOW_CELLS, seeds=[0], budget=32, batch_size=4, eval_every=16,
           eval_images_per_prompt=4, protocol=TESTBED_PROTOCOL, method_overrides=ddpo_epochs(32, 8), device="cpu",
           jobs=2, expected_time="≈ 15 min on 2 CPU cores (README)"),
    Preset("flow-long", "the likelihood-ratio and forward-process methods given 16x flow's samples (512, batch 8), "
           "beside DRaFT-1 and ReFL, on both testbed models, shapes-aesthetic, 1 seed: does the GRPO family learn "
           "when it has the samples it needs?",
           ["draft-1", "refl", "ddpo", "grpo", "flow-grpo", "diffusion-nft"], ["shapes-aesthetic"],
           cells=FLOW_LONG_CELLS, seeds=[0], budget=512, batch_size=8, eval_every=64, eval_images_per_prompt=4,
           protocol=TESTBED_PROTOCOL, method_overrides=ddpo_epochs(64, 16), device="cpu", jobs=2,
           expected_time="≈ 45 min on 1 CPU core (README)"),
    Preset("ddpo-lr", "DDPO's learning-rate sweep on the testbed: DDPO on shapes-aesthetic, seed 0, 2048 samples in "
           "its paper's epochs (64 samples, minibatches of 16, eta 1); run once per --lr, each into its own --suite "
           "(scripts/ddpo_lr_sweep.sh runs 1e-4, 3e-4, 1e-3 and tabulates them)",
           ["ddpo"], ["shapes-aesthetic"], backbone="shapes", seeds=[0], budget=2048, batch_size=8, eval_every=256,
           eval_images_per_prompt=4, protocol=TESTBED_PROTOCOL, method_overrides=ddpo_epochs(64, 16), device="cpu",
           jobs=1, save_images=False, expected_time="≈ 35 min per learning rate on 1 CPU core"),
    Preset("ddpo-long", "DDPO given the samples its paper gives it: 8192 samples a cell (128 epochs of 64, minibatches "
           "of 16, eta 1) on shapes-aesthetic and shapes-compressibility, 3 seeds, evaluated every 512 samples like "
           "the paper preset (its other settings), so 'samples to reach DDPO's final reward' compares against a DDPO "
           "that has had its chance to plateau; the committed slice is shapes-aesthetic seeds 0-2 and "
           "shapes-compressibility seed 0 (--tasks/--seed)",
           ["ddpo"], ["shapes-aesthetic", "shapes-compressibility"], backbone="shapes", seeds=[0, 1, 2], budget=8192,
           batch_size=8, eval_every=512, protocol=TESTBED_PROTOCOL, method_overrides=ddpo_paper_epochs(),
           device="cpu", jobs=2, save_images=True,
           expected_time="≈ 2 h per cell on 1 CPU core; each evaluation saves the cell's state, so an interrupted "
                         "run resumes from its last evaluation (rerun the same command)"),
    Preset("ddpo-ref-epochs", "DDPO in ddpo-pytorch's own epochs (256 samples, minibatches of 64: each PPO step "
           "averages 4x the samples of ddpo-long's 16) at its own learning rate (3e-4), 8192 samples, "
           "shapes-aesthetic, seed 0: is DDPO flat in ddpo-long because its minibatches are small?",
           ["ddpo"], ["shapes-aesthetic"], backbone="shapes", seeds=[0], budget=8192, batch_size=8,
           eval_every=512, protocol=TESTBED_PROTOCOL,
           method_overrides={"ddpo": {**ddpo_epochs(256, 64)["ddpo"], "lr": 3e-4}}, device="cpu", jobs=1,
           expected_time="≈ 1.3 h on 1 CPU core (ddpo-long's throughput); resumes from its last evaluation"),
    Preset("paper-50", "full vs truncated backpropagation at 50 sampling steps (AlignProp's collapse claim is at 50 "
           "steps): DRaFT (full), DRaFT-K, DRaFT-1 and AlignProp on shapes-aesthetic, 3 seeds, 256 samples, the "
           "paper preset's protocol otherwise",
           ["draft", "draft-k", "draft-1", "alignprop"], ["shapes-aesthetic"], backbone="shapes", seeds=[0, 1, 2],
           budget=256, batch_size=8, eval_every=32, protocol=dict(TESTBED_PROTOCOL, num_steps=50), device="cpu",
           jobs=2, expected_time="≈ 2.5 CPU-hours (estimated from the paper preset's 10-step throughput × 5)"),
    Preset("paper-long", "DRaFT-1 given 8× the paper preset's samples (4096) on shapes-aesthetic, 3 seeds: does the "
           "proxy keep rising while the gold aesthetic falls under long optimisation?",
           ["draft-1"], ["shapes-aesthetic"], backbone="shapes", seeds=[0, 1, 2], budget=4096, batch_size=8,
           eval_every=64, protocol=TESTBED_PROTOCOL, device="cpu", jobs=2,
           expected_time="≈ 18 min a cell on 1 CPU core (1,054 s measured on the previous testbed model)"),
    Preset("sd15", "the real grid: SD 1.5, the real reward zoo, every method, 3 seeds (GPU)",
           ALL_METHODS, REAL_TASKS, backbone="sd15", seeds=[0, 1, 2], budget=4096, batch_size=8, eval_every=512,
           eval_images_per_prompt=4, protocol=SD_PROTOCOL, method_overrides=DDPO_ETA, lora_rank=8, device="cuda",
           dtype="bf16", expected_time="GPU: ≈ 1–3 GPU-hours per cell (DRaFT-1 at ≈ 4 samples/s on an H100)"),
    _smoke("smoke-real", SMOKE_CELLS, "every method on SD-1.5's and SD-2.1's architectures"),
    _smoke("smoke-ci", SMOKE_CELLS[:8], "the CI slice of smoke-real: every method once and every real reward at "
           "least once, on SD-1.5's architecture"),
    _smoke("smoke-xl", SMOKE_XL_CELLS, "every method on SDXL's architecture", dtype="bf16",
           expected_time="CPU, 2 cores: 84–146 s a cell, peak RSS 12.4–19.6 GB (measured; README)"),
    Preset("systems", "peak memory and samples/s of every method on SD-1.5's architecture, random weights, 512 px (GPU)",
           ALL_METHODS, ["compressibility"], backbone="sd15-random", seeds=[0], budget=8, batch_size=2, eval_every=8,
           eval_images_per_prompt=1, eval_prompts_limit=1, protocol=SD_PROTOCOL, method_overrides=DDPO_ETA,
           device="cuda", dtype="bf16", save_images=False, count_flops=True,
           expected_time="GPU: a few minutes per method"),
    Preset("systems-xl", "peak memory and samples/s of the gradient methods on SDXL's architecture, random weights, "
           "1024 px, batch 1 (GPU; DDPO needs batch >= 2: add it with --methods ddpo --batch-size 2)",
           [m for m in ALL_METHODS if m != "ddpo"], ["compressibility"], backbone="sdxl-random", seeds=[0], budget=4,
           batch_size=1, eval_every=4, eval_images_per_prompt=1, eval_prompts_limit=1, protocol=SD_PROTOCOL,
           device="cuda", dtype="bf16", save_images=False, count_flops=True,
           expected_time="GPU: not yet measured; run after `systems` if the device time allows"),
    _systems_flow("systems-sd35m", "SD-3.5-Medium's architecture (MMDiT-X, CLIP-L/G + T5-XXL)", "sd35m-random",
                  SD35_PROTOCOL),
    _systems_flow("systems-flux", "FLUX.1-dev's architecture (12B transformer, CLIP-L + T5-XXL, guidance-distilled)",
                  "flux-random", FLUX_PROTOCOL, ", gradient checkpointing"),
    Preset("sd35m", "the real grid on SD 3.5 Medium (rectified flow): the real reward zoo, HPSv2.1 first, every method "
           "including the GRPO family and DiffusionNFT, 3 seeds, 512 px, 40 steps, CFG 4.5 (GPU)",
           EVERY_METHOD, ["hpsv2", "pickscore", "imagereward", "aesthetic-animals", "compressibility"],
           backbone="sd35m", seeds=[0, 1, 2], budget=2048, batch_size=8, eval_every=256, eval_images_per_prompt=4,
           resolution=512, protocol=SD35_PROTOCOL, method_overrides={**DDPO_ETA, **group_size(8)},
           lora_rank=32, device="cuda", dtype="bf16",
           expected_time="GPU: not yet measured"),
    Preset("sdxl", "the real grid on SDXL base 1.0: the real reward zoo, every method, 3 seeds, 1024 px (GPU)",
           ALL_METHODS, REAL_TASKS, backbone="sdxl", seeds=[0, 1, 2], budget=2048, batch_size=4, eval_every=256,
           eval_images_per_prompt=4, protocol=SD_PROTOCOL, method_overrides=DDPO_ETA, lora_rank=8, device="cuda",
           dtype="bf16", expected_time="GPU: not yet measured (≈ 3–4× SD 1.5's cost per sample)"),
]}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def available() -> list[str]:
    return list(PRESETS)


def describe() -> dict[str, str]:
    return {p.name: f"{p.description} [{p.expected_time}]" for p in PRESETS.values()}
