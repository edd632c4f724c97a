"""The project's AlignProp and DDPO against trl 0.23.1's AlignPropTrainer and DDPOTrainer, side by side.

Both load the same tiny random Stable Diffusion pipeline (``bench export-backbone tiny``, saved with
``save_pretrained``; its UNet ``sample_size`` set to the resolution under test) and train LoRA r4 (alpha 4, the same
four attention projections, fp32) at equal settings: steps, batch, guidance, eta, truncation, learning rate, grad clip
and reward (the project's own reward objects, called by both). Each side is a persistent worker process, models
loaded once and warmed up by one untimed step; the driver then alternates the two (the order flipped every repetition)
and times one optimiser step (AlignProp) or one DDPO epoch (sample the batch, score it, one PPO pass over every
trained transition, one optimiser step). Both run on one CPU thread.

trl 0.23.1 needs transformers 4.x (the project needs 5.x), so it runs in a separate environment:

    python -m venv --system-site-packages /work/trl-env
    /work/trl-env/bin/pip install "trl==0.23.1" "transformers>=4.56.1,<5" "diffusers==0.35.2"
    python tests/benchmarks/trl_side_by_side.py --trl-python /work/trl-env/bin/python [--reps 3] [--out DIR]

The table (markdown) and the raw times (CSV) are written to ``--out`` (default ``runs/trl``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARK = "@@bench@@ "
PROMPTS = ["a red cat", "a blue dog", "a green bird", "a bowl of fruit"]

# case name -> settings shared by both sides (K: gradient steps at the end of the chain, AlignProp's fixed truncation)
CASES = {
    "alignprop-K1": dict(method="alignprop", steps=10, batch=4, guidance=7.5, eta=0.0, K=1, lr=1e-3, clip=5.0,
                         reward="jpeg-compressibility-surrogate"),
    "alignprop-full": dict(method="alignprop", steps=10, batch=4, guidance=7.5, eta=0.0, K=10, lr=1e-3, clip=5.0,
                           reward="jpeg-compressibility-surrogate"),
    "ddpo": dict(method="ddpo", steps=10, batch=4, guidance=5.0, eta=1.0, lr=3e-4, clip=1.0,
                 reward="jpeg-compressibility"),
}


# ------------------------------------------------------------------------------------------------------ workers
def project_worker(case: dict, pipeline: str, resolution: int):
    import torch

    sys.path.insert(0, str(ROOT))
    import methods
    import rewards
    from bench import backbones, catalog

    catalog.load_registries()
    bb = backbones.create("sd15", path=pipeline, resolution=resolution, lora_rank=4)
    common = dict(num_steps=case["steps"], guidance_scale=case["guidance"], eta=case["eta"], lr=case["lr"],
                  grad_clip=case["clip"])
    if case["method"] == "alignprop":
        m = methods.create("alignprop", bb, rewards.create(case["reward"]), fixed_grad_steps=case["K"], **common)
    else:
        m = methods.create("ddpo", bb, rewards.create(case["reward"]), minibatch_size=case["batch"],
                           clip_range=1e-4, adv_clip_max=5.0, **common)
    prompts = (PROMPTS * case["batch"])[: case["batch"]]

    def step():
        m.step(prompts)
    return step


def trl_worker(case: dict, pipeline: str, resolution: int):
    import torch

    sys.path.insert(0, str(ROOT))
    import rewards

    from accelerate import PartialState

    PartialState()  # trl warns through accelerate's logger before its Accelerator exists
    reward = rewards.create(case["reward"])
    prompts = (PROMPTS * case["batch"])[: case["batch"]]
    counter = iter(range(10**9))

    def prompt_fn():
        return prompts[next(counter) % len(prompts)], {}

    def reward_fn(images, prompts, metadata):
        return reward(images.float(), list(prompts)), {}

    common = dict(sample_num_steps=case["steps"], sample_guidance_scale=case["guidance"], sample_eta=case["eta"],
                  train_learning_rate=case["lr"], train_max_grad_norm=case["clip"], mixed_precision="no",
                  log_with=None, save_freq=10**9, num_epochs=10**6, train_gradient_accumulation_steps=1,
                  project_kwargs=dict(project_dir=tempfile.mkdtemp(prefix="trl-"), automatic_checkpoint_naming=False))
    if case["method"] == "alignprop":
        from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

        config = AlignPropConfig(train_batch_size=case["batch"], truncated_backprop_rand=False,
                                 truncated_backprop_timestep=case["steps"] - case["K"], **common)
        trainer = AlignPropTrainer(config, reward_fn, prompt_fn,
                                   DefaultDDPOStableDiffusionPipeline(pipeline, use_lora=True))
    else:
        from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

        config = DDPOConfig(sample_batch_size=case["batch"], sample_num_batches_per_epoch=1,
                            train_batch_size=case["batch"], train_timestep_fraction=1.0, train_clip_range=1e-4,
                            train_adv_clip_max=5.0, train_num_inner_epochs=1, per_prompt_stat_tracking=False,
                            async_reward_computation=False, **common)
        trainer = DDPOTrainer(config, reward_fn, prompt_fn, DefaultDDPOStableDiffusionPipeline(pipeline, use_lora=True))
    epoch = iter(range(10**9))

    def step():
        trainer.step(next(epoch) + 1, 0)
    return step


def serve(side: str, case_name: str, pipeline: str, resolution: int) -> None:
    """Load once, warm up, then time one step per line read from stdin."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    build = trl_worker if side == "trl" else project_worker
    step = build(CASES[case_name], pipeline, resolution)
    step()
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        step()
        print(MARK + json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


# ------------------------------------------------------------------------------------------------------- driver
class Worker:
    def __init__(self, python: str, side: str, case: str, pipeline: Path, resolution: int):
        self.side = side
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([python, __file__, "--serve", side, "--case", case, "--pipeline", str(pipeline),
                                      "--resolution", str(resolution)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"the {self.side} worker exited ({self.proc.wait()}); rerun it alone with --serve to see why")

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def export_pipeline(directory: Path, resolution: int) -> Path:
    """The tiny pipeline saved by ``bench export-backbone``, its UNet sample size set so both sides sample at
    ``resolution`` (trl's trainers always sample at the UNet's configured size)."""
    out = directory / f"tiny-{resolution}"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "bench", "export-backbone", "tiny", str(out)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        cfg_path = out / "unet" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        vae = json.loads((out / "vae" / "config.json").read_text())
        cfg["sample_size"] = resolution // 2 ** (len(vae["block_out_channels"]) - 1)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trl-python", default="/work/trl-env/bin/python", help="python of the trl 0.23.1 environment")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--resolutions", default="64,128")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=str(ROOT / "runs" / "trl"))
    ap.add_argument("--serve", choices=["trl", "project"], help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--pipeline", help=argparse.SUPPRESS)
    ap.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.case, args.pipeline, args.resolution)
        return
    if not Path(args.trl_python).exists():
        sys.exit(f"error: no trl environment at {args.trl_python} (see this file's docstring to create one)")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"error: unknown case {unknown[0]!r}; valid: {', '.join(CASES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="trl-side-by-side-"))
    rows, raw = [], []
    try:
        for resolution in [int(r) for r in args.resolutions.split(",")]:
            pipeline = export_pipeline(tmp, resolution)
            for case in cases:
                workers = {"trl": Worker(args.trl_python, "trl", case, pipeline, resolution),
                           "project": Worker(sys.executable, "project", case, pipeline, resolution)}
                try:
                    for w in workers.values():
                        w.read()  # loaded and warmed up
                    times = {"trl": [], "project": []}
                    for rep in range(args.reps):
                        for side in (("trl", "project") if rep % 2 == 0 else ("project", "trl")):
                            times[side].append(workers[side].step())
                            raw.append(dict(resolution=resolution, case=case, rep=rep, side=side,
                                            seconds=times[side][-1]))
                finally:
                    for w in workers.values():
                        w.close()
                t, p = statistics.median(times["trl"]), statistics.median(times["project"])
                ratios = [pp / tt for pp, tt in zip(times["project"], times["trl"])]
                rows.append(dict(resolution=resolution, case=case, trl=t, project=p, ratio=p / t,
                                 ratio_min=min(ratios), ratio_max=max(ratios)))
                print(f"{resolution:>4} px  {case:<15} trl {t:7.2f} s  project {p:7.2f} s  ratio {p / t:.2f} "
                      f"(per repetition {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import pandas as pd

    pd.DataFrame(raw).to_csv(out / "times.csv.tmp", index=False)
    os.replace(out / "times.csv.tmp", out / "times.csv")
    unit = {"alignprop-K1": "optimiser step, K=1", "alignprop-full": "optimiser step, full backprop",
            "ddpo": "epoch (sample + score + PPO pass)"}
    lines = ["| resolution | what is timed | trl 0.23.1 (s) | project (s) | ratio (per repetition) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['resolution']} px | {r['case'].split('-')[0]} {unit[r['case']]} | {r['trl']:.2f} | "
              f"{r['project']:.2f} | **{r['ratio']:.2f}** ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) |" for r in rows]
    table = "\n".join(lines) + (f"\n\nMedian of {args.reps} interleaved repetitions, 1 CPU thread each, "
                                f"tiny random SD pipeline, 10 steps, batch 4, LoRA r4, fp32.\n")
    (out / "table.md.tmp").write_text(table)
    os.replace(out / "table.md.tmp", out / "table.md")
    print("\n" + table + f"\nwritten: {out / 'table.md'}, {out / 'times.csv'}")


if __name__ == "__main__":
    main()
