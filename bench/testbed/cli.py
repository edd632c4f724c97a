"""``python -m bench testbed ...``: train the testbed's networks, measure its quality gates, sample it.

    python -m bench testbed train <diffusion|flow|clip|aesthetic|classifier|detector|all> [--steps N] [--seed S]
    python -m bench testbed gates [--samples 256] [--guidance G] [--out runs/testbed/gates.json]
    python -m bench testbed sample --prompt "a red circle on a white background" --out grid.png [--lora PATH[:SCALE]]

Outputs go under runs/ (untracked) unless asked otherwise: ``train --out-dir bench/testbed/weights`` replaces the
committed networks (and records them in its manifest.json), ``gates --out bench/testbed/weights/gates.json`` the
committed gate report.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.args import Parser, UsageError, examples

from . import models

DEFAULT_OUT = Path("runs") / "testbed"


def add_testbed_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("testbed", help="train / gate / sample the shapes testbed")
    build_parser(parser)
    return parser


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from . import train

    parser = parser or Parser(prog="python -m bench testbed", description=__doc__, epilog=examples(
        "python -m bench testbed gates --samples 64", "python -m bench testbed train --help"))
    sub = parser.add_subparsers(dest="testbed_command", required=True, parser_class=Parser)
    tr = sub.add_parser("train", help="train a testbed network from scratch",
                        description="Train one testbed network (or all, in dependency order) from scratch.",
                        epilog=examples("python -m bench testbed train aesthetic --steps 200   # -> runs/testbed/weights",
                                        "python -m bench testbed train all --out-dir bench/testbed/weights  # replace "
                                        "the committed networks"))
    tr.add_argument("part", choices=[*train.PARTS, "all"])
    tr.add_argument("--steps", type=int, default=None, help=f"default per part: {train.DEFAULT_STEPS}")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--max-minutes", type=float, default=None,
                    help="diffusion and flow only: wall-time cap; the learning-rate schedule follows the cap")
    tr.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    tr.add_argument("--resume", action="store_true", help="diffusion and flow only: continue from the committed weights")
    tr.add_argument("--offset-noise", type=float, default=None,
                    help="diffusion and flow only: std of a per-image, per-channel constant added to the training noise")
    tr.add_argument("--lr", type=float, default=None, help="diffusion and flow only: peak learning rate (default 1e-3)")
    tr.add_argument("--caption-order", choices=("drawn", "left-to-right"), default="drawn",
                    help="diffusion and flow only: name a training scene's objects in drawing order (the world's "
                         "captions) or left to right")
    tr.add_argument("--unet-layout", choices=tuple(models.UNET_LAYOUTS), default="base",
                    help="diffusion and flow only: the UNet's attention layout (models.UNET_LAYOUTS; base: the "
                         "committed model's); with --init-from a base model, it is grown into the layout")
    tr.add_argument("--init-from", default=None, metavar="DIR",
                    help="diffusion and flow only: start from the unet/ and text_encoder/ in DIR (e.g. the committed "
                         "DDIM model bench/testbed/weights for the flow model)")
    tr.add_argument("--out-dir", default=str(DEFAULT_OUT / "weights"),
                    help="where the weights go (default runs/testbed/weights; bench/testbed/weights replaces the "
                         "committed ones and records them in its manifest.json)")
    g = sub.add_parser("gates", help="measure the quality gates on held-out captions, write gates.json",
                       description="Measure the testbed's quality gates on held-out captions.",
                       epilog=examples("python -m bench testbed gates --samples 64   # -> runs/testbed/gates.json"))
    g.add_argument("--samples", type=int, default=256)
    g.add_argument("--guidance", type=float, default=None, help="default: models.DEFAULT_GUIDANCE")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--out", default=str(DEFAULT_OUT / "gates.json"),
                   help="default runs/testbed/gates.json (bench/testbed/weights/gates.json: the committed report)")
    g.add_argument("--backbone", choices=("shapes", "shapes-flow"), default="shapes",
                   help="the DDIM model (default) or the rectified-flow one (bench/testbed/weights/flow)")
    g.add_argument("--model-dir", default=None, metavar="DIR",
                   help="a candidate diffusion model (what `testbed train --out-dir DIR` wrote; for shapes-flow the "
                        "flow/ folder) instead of the committed one")
    g.add_argument("--sweep", action="store_true", help="only sweep the guidance scale on training captions")
    s = sub.add_parser("sample", help="write a PNG grid of testbed samples",
                       description="Sample the testbed (one column per prompt), optionally with LoRAs.",
                       epilog=examples('python -m bench testbed sample --prompt "a red circle on a white background" '
                                       '--out runs/testbed/red-circle.png'))
    s.add_argument("--prompt", action="append", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--lora", action="append", default=[], help="PATH[:SCALE], repeatable (mixing)")
    s.add_argument("--num", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=None)
    return parser


def parse_lora(spec: str) -> tuple[str, float]:
    """"PATH" or "PATH:SCALE" -> (path, scale)."""
    path, _, scale = spec.rpartition(":")
    try:
        return (path, float(scale)) if path else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import torch

    from . import train

    if args.testbed_command == "train":
        torch.set_num_threads(args.threads)
        out_dir = Path(args.out_dir)
        committed = out_dir.resolve() == Path(models.WEIGHTS_DIR).resolve()
        extra = {"max_minutes": args.max_minutes} if args.max_minutes else {}
        if args.resume:
            extra["resume"] = True
        if args.lr:
            extra["lr"] = args.lr
        if args.offset_noise:
            extra["offset_noise"] = args.offset_noise
        if args.init_from:
            extra["init_from"] = Path(args.init_from)
        if args.caption_order != "drawn":
            extra["caption_order"] = args.caption_order
        if args.unet_layout != "base":
            extra["unet_layout"] = args.unet_layout
        out_dir.mkdir(parents=True, exist_ok=True)
        if not committed and args.part == "aesthetic" and not (out_dir / "clip").exists():
            import shutil  # the aesthetic head reads the small CLIP's features: start from the committed CLIP

            shutil.copytree(Path(models.WEIGHTS_DIR) / "clip", out_dir / "clip")
        train.run(args.part, args.steps, args.seed, argv[2:], out_dir=out_dir, record_manifest=committed, **extra)
        print(f"wrote {out_dir}" + ("" if committed else " (to use them, train with --out-dir bench/testbed/weights)"))
        return 0
    if args.testbed_command == "gates":
        from .gates import guidance_sweep, run_gates

        torch.set_num_threads(args.threads)
        if args.model_dir and not (Path(args.model_dir) / "unet" / "config.json").exists():
            raise UsageError(f"testbed gates: --model-dir {args.model_dir} has no unet/config.json (a model directory "
                             "holds unet/, text_encoder/, tokenizer/ and scheduler/)")
        if args.sweep:
            guidance_sweep()
            return 0
        results = run_gates(samples=args.samples, guidance_scale=args.guidance, seed=args.seed, out=args.out,
                            backbone=args.backbone, model_dir=args.model_dir)
        return 0 if all(g["passed"] for g in results["gates"].values()) else 1
    if args.testbed_command == "sample":
        from . import sample_grid, shapes_backbone

        backbone = shapes_backbone(lora_rank=None)
        if args.lora:
            backbone.load_loras([parse_lora(spec) for spec in args.lora])
        sample_grid(backbone, args.prompt, args.out, num_per_prompt=args.num, seed=args.seed,
                    guidance_scale=args.guidance)
        print(f"wrote {args.out}")
        return 0
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
