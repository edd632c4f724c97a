"""What a new user meets first: seeds that mean what they say, settings judged before anything loads (and names
before torch is imported), --help everywhere, runs that leave the checkout clean, offline in seconds, leaderboards
that rebuild from their CSVs, a warning for prompts outside the testbed's language."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.args import UsageError, coerce, parse_seeds

ROOT = Path(__file__).resolve().parent.parent


def bench(*args, env=None, timeout=120):
    import os

    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("seed, seeds, expected", [
    (None, "3", [0, 1, 2]), (None, "0,3,7", [0, 3, 7]), ("1", None, [1]), ("0", None, [0]), (None, "1", [0]),
    (None, None, None)])
def test_seed_flags(seed, seeds, expected):
    assert parse_seeds(seed, seeds) == expected


@pytest.mark.parametrize("seed, seeds", [("1", "2"), (None, "0"), (None, "-1"), (None, "a"), ("x", None),
                                         (None, "1,1"), ("-2", None)])
def test_bad_seed_flags(seed, seeds):
    with pytest.raises(UsageError):
        parse_seeds(seed, seeds)


def test_seeds_3_runs_three_cells_on_the_tasks_backbone(monkeypatch, tmp_path):
    """The bug: the backbone was popped inside the seed loop, so seed 1 ran on `tiny`."""
    import bench.cell
    from bench.cli import main

    seen = []
    monkeypatch.setattr(bench.cell, "run_cell", lambda spec, on_progress=None: (seen.append(spec), (_row(spec), [{"cell_id": spec.cell_id, "samples": 0}]))[1])
    code = main(["run", "--method", "draft-lv", "--task", "shapes-aesthetic", "--seeds", "3",
                 "--results-dir", str(tmp_path)])
    assert code == 0
    assert [s.seed for s in seen] == [0, 1, 2]
    assert {s.backbone for s in seen} == {"shapes"}


def test_seed_1_is_exactly_seed_1(monkeypatch, tmp_path):
    import bench.cell
    from bench.cli import main

    seen = []
    monkeypatch.setattr(bench.cell, "run_cell", lambda spec, on_progress=None: (seen.append(spec), (_row(spec), [{"cell_id": spec.cell_id, "samples": 0}]))[1])
    assert main(["run", "--method", "refl", "--task", "shapes-aesthetic", "--seed", "1",
                 "--results-dir", str(tmp_path)]) == 0
    assert [s.seed for s in seen] == [1]


@pytest.mark.parametrize("flags, expected", [(["--seeds", "2"], [0, 1]), (["--seeds", "0,5"], [0, 5]),
                                             (["--seed", "4"], [4]), ([], [0])])
def test_grid_seed_flags(monkeypatch, tmp_path, flags, expected):
    from bench import grid
    from bench.cli import main

    seen = []

    def fake_run_grid(specs, out_dir, **kw):
        seen.extend(specs)
        return {"ran": 0, "skipped": 0, "results": {}}

    monkeypatch.setattr(grid, "run_grid", fake_run_grid)
    main(["run", "--grid", "--preset", "ci", "--methods", "refl", "--tasks", "shapes-aesthetic", *flags,
          "--results-dir", str(tmp_path)])
    assert sorted({s.seed for s in seen}) == expected


def _row(spec):
    return {"cell_id": spec.cell_id, "status": "ok", "message": "", "eval_reward": spec.reward, "reward_initial": 0.0,
            "reward_final": 0.0, "train_wall_s": 0.0, "samples_per_s": 0.0, "peak_mem_mb": 0.0}


# -------------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("args, match", [
    (["--set", "lr=abc"], 'lr="abc" is not valid: lr takes a number'),
    (["--set", "truncation_steps=2.5"], "truncation_steps=2.5 is not valid: truncation_steps takes an integer"),
    (["--set", "nope=1"], "unknown --set key(s) nope; valid: "),
    (["--set", "checkpoint=1"], "checkpoint takes true or false"),
    (["--set", "adam_betas=[0.9]"], "adam_betas takes a list of 2"),
    (["--set", "truncation_steps=50"], "truncation_steps"),
    (["--reward-arg", "sign=x"], "shapes-aesthetic: unknown --reward-arg key(s) sign"),
    (["--set", "lr"], "--set expects KEY=VALUE"),
])
def test_bad_settings_fail_before_any_model_loads(monkeypatch, capsys, tmp_path, args, match):
    from bench import backbones
    from bench.cli import main

    def no_loading(*a, **k):
        raise AssertionError("a backbone was built before the settings were checked")

    monkeypatch.setattr(backbones, "create", no_loading)
    code = main(["run", "--method", "draft-k", "--task", "shapes-aesthetic", *args, "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and match in lines[0], err


def test_typed_values_are_coerced():
    assert coerce(2.0, int) == 2 and coerce(3, float) == 3.0 and coerce([0.8, 1.0], tuple[float, float]) == (0.8, 1.0)
    from bench.args import _NO

    assert coerce(True, int) is _NO and coerce(2.5, int) is _NO and coerce("x", float | None) is _NO
    assert coerce(None, float | None) is None


@pytest.mark.parametrize("args", [
    ["--method", "draft-k", "--reward", "jpeg-compressibility", "--backbone", "sd99"],
    ["--method", "nope", "--task", "shapes-aesthetic"],
    ["--method", "draft-k", "--task", "nope"],
    ["--grid", "--preset", "nope"],
    ["--grid", "--methods", "nope*"],
    ["--method", "draft-k", "--task", "shapes-aesthetic", "--budget", "0"],
    ["--method", "draft-k", "--task", "shapes-aesthetic", "--dtype", "fp8"],
    ["--method", "draft-k", "--task", "shapes-aesthetic", "--seeds", "1", "--seed", "2"],
    ["--method", "draft-k", "--reward", "aesthetic", "--backbone", "sd15", "--backbone-path", "/nonexistent/sd"],
])
def test_names_and_numbers_are_judged_before_torch_is_imported(args):
    code = ("import sys, time; t = time.perf_counter(); from bench.cli import main; c = main(%r); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "print(round(time.perf_counter() - t, 3)); sys.exit(c)" % (["run", *args],))
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    wall = time.perf_counter() - start
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: "), res.stderr
    assert wall < 2.0, f"{wall:.1f} s to report {res.stderr.strip()}"


def test_catalog_names_equal_the_registries():
    import methods
    import rewards
    from bench import backbones, catalog

    catalog.load_registries()
    assert list(catalog.METHODS) == methods.available()
    assert list(catalog.REWARDS) == rewards.available()
    assert list(catalog.BACKBONES) == backbones.available()


# ------------------------------------------------------------------------------------------------------- help
HELP = [["run"], ["list"], ["sample"], ["export-backbone"], ["leaderboard"], ["compare"], ["lora-sweep"], ["testbed"],
        ["testbed", "train"], ["testbed", "gates"], ["testbed", "sample"], []]


@pytest.mark.parametrize("cmd", HELP, ids=lambda c: " ".join(c) or "bench")
def test_help_works_with_an_example(cmd):
    res = bench(*cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert "examples:" in res.stdout and "python -m bench" in res.stdout.split("examples:")[1]


# ------------------------------------------------------------------------------------------- clean checkout
def test_runs_write_to_an_ignored_directory_by_default():
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", "--grid"])
    assert args.results_dir == "runs"
    sample = build_parser().parse_args(["sample", "--prompt", "x"])
    for path in (f"{args.results_dir}/quick/cells.csv", sample.out, "runs/testbed/gates.json",
                 "runs/lora-sweep/x.csv"):
        res = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert res.returncode == 0, f"{path} is not ignored by git"
    from bench.testbed.cli import DEFAULT_OUT

    assert str(DEFAULT_OUT).startswith("runs")


# -------------------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("args", [["--reward", "jpeg-compressibility", "--backbone", "sd15"],
                                  ["--task", "aesthetic-animals", "--device", "cpu"]])
def test_offline_hub_backbone_fails_in_seconds_naming_the_file_and_the_flag(args):
    start = time.perf_counter()
    res = bench("run", "--method", "draft-k", *args, env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"})
    wall = time.perf_counter() - start
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "unet/diffusion_pytorch_model.safetensors" in line and "--backbone-path" in line and "BENCH_SD15_PATH" in line
    assert wall < 5.0, f"{wall:.1f} s"


@pytest.mark.parametrize("reward", ["aesthetic", "hpsv2", "pickscore", "imagereward", "owlvit"])
def test_offline_hub_reward_fails_in_seconds_naming_the_file_and_the_argument(reward):
    from bench.catalog import REWARD_HUB_FILES

    start = time.perf_counter()
    res = bench("run", "--method", "ddpo", "--reward", reward, "--backbone", "tiny",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"})
    wall = time.perf_counter() - start
    line = res.stderr.strip()
    repo, filename, arg = REWARD_HUB_FILES[reward]
    assert res.returncode == 2 and len(line.splitlines()) == 1, line
    assert filename.format(hps_file="HPS_v2.1_compressed.pt") in line and f"--reward-arg {arg}=" in line
    assert wall < 5.0, f"{wall:.1f} s"


def test_reward_hub_files_match_the_reward_modules():
    from rewards import aesthetic, clip_score, detection, imagereward
    from bench.catalog import REWARD_HUB_FILES as F

    assert F["aesthetic"][:2] == (aesthetic.HEAD_REPO, aesthetic.HEAD_FILE)
    assert F["hpsv2"][0] == clip_score.HPS_REPO
    from bench.catalog import HPS_FILES

    assert HPS_FILES == clip_score.HPS_FILES
    assert F["pickscore"][0] == clip_score.PICKSCORE_PROCESSOR
    assert F["imagereward"][:2] == (imagereward.REPO, imagereward.CHECKPOINT)
    assert F["owlvit"][0] == detection.OWLVIT


def test_unreachable_hub_is_detected_by_one_probe(monkeypatch):
    import offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    offline._probe.cache_clear()
    try:
        assert offline.offline() and "unreachable" in offline.why()
        import os

        assert os.environ["HF_HUB_OFFLINE"] == "1"  # no library retries after the probe failed
    finally:
        offline._probe.cache_clear()


# ----------------------------------------------------------------------------------------------- leaderboards
#: results/<preset>/ and a sweep's suites, results/<sweep>/<suite>/
COMMITTED = sorted(p.parent for pattern in ("*/leaderboard.md", "*/*/leaderboard.md")
                   for p in (ROOT / "results").glob(pattern))


@pytest.mark.parametrize("directory", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_leaderboards_equal_their_rebuild(directory):
    from bench import leaderboard

    assert (directory / "leaderboard.md").read_text() == leaderboard.render(directory), \
        f"stale: python -m bench leaderboard {directory.relative_to(ROOT)}"


def test_tables_print_numbers_in_positional_notation():
    """A reader skims past ``-4.62e-06 ± 2e-05``; the same significant digits print as positional decimals."""
    import re

    from bench.leaderboard import _change, _fmt, _loads, _pm

    assert _change(-4.62e-06, 2e-05) == "Δ -0.000005 ± 0.00002" and _change(-3.39e-05, 0.018) == "Δ 0 ± 0.018"
    assert _change(0.1234, 0.0456) == "Δ +0.123 ± 0.046" and _change(0.1234, 0.456) == "Δ +0.12 ± 0.46"
    assert _change(0.5, 0.05) == "Δ +0.5 ± 0.05" and _change(-0.2, float("nan")) == "Δ -0.2"
    assert _pm(0.0008344, 0.000123, 3) == "0.0008344 ± 0.00012" and _fmt(12345.6) == "12350"
    assert _loads([3.0751953125, 3.02880859375, 2.98828125]) == "3.08, 3.03, 2.99"  # os.getloadavg()'s float noise
    scientific = re.compile(r"\d(\.\d+)?e[+-]\d\d")
    for directory in COMMITTED:
        assert not scientific.search((directory / "leaderboard.md").read_text()), directory


def test_there_are_committed_leaderboards():
    assert {"quick", "paper"} <= {p.name for p in COMMITTED}


def test_one_seed_shows_no_interval_and_overlapping_intervals_tie():
    from bench.leaderboard import _pm, tie_groups

    assert _pm(4.2, 0.0, 1) == "4.2" and _pm(4.2, 0.31, 3) == "4.2 ± 0.31"
    assert tie_groups([6.0, 5.8, 5.0, 4.9], [0.3, 0.3, 0.05, 0.2]) == [1, 1, 2, 2]
    assert tie_groups([6.0, 5.0], [0.1, 0.1]) == [1, 2]


# ------------------------------------------------------------------------------------------------- prompts
def test_prompts_outside_the_testbed_grammar_are_named():
    from bench.testbed.world import unknown_words, vocabulary_warning

    assert unknown_words("a red circle and a blue square on a white background") == []
    assert unknown_words("a photo of a cat on a white background") == ["photo", "of", "cat"]
    assert vocabulary_warning("a red circle on a white background") is None
    assert "'cat'" in vocabulary_warning("a cat")


def test_readme_sample_prompts_are_in_the_grammar():
    import re

    from bench.testbed.world import unknown_words

    prompts = re.findall(r'--prompt "([^"]+)"', (ROOT / "README.md").read_text())
    assert prompts
    assert all(not unknown_words(p) for p in prompts), prompts


def test_sample_warns_once_per_prompt_outside_the_grammar_and_writes_a_labelled_grid(tmp_path, capsys):
    from PIL import Image

    from bench.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--prompt", "a photo of a cat", "--prompt", "a red circle on a white background",
                 "--num", "2", "--num-steps", "2", "--out", str(out)]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(err) == 1 and "'cat'" in err[0]
    width, height = Image.open(out).size
    assert width >= 2 * 96 and height >= 2 * 96  # two prompts x two samples, enlarged from 24 px


def _claims(spec):
    import pandas as pd

    from bench.leaderboard import claims

    cells, curves = [], []
    for method, budget, curve in spec:
        cid = f"{method}-{budget}"
        cells.append(dict(cell_id=cid, task="t", method=method, status="ok", budget=budget, eval_reward="r",
                          reward_initial=curve[0][1], reward_final=curve[-1][1]))
        curves.extend(dict(cell_id=cid, samples=s, r_mean=v) for s, v in curve)
    return "\n".join(claims(pd.DataFrame(cells), pd.DataFrame(curves)))


def test_claim_verdicts_follow_their_stated_rules():
    late = _claims([("ddpo", 1000, [(0, 0.0), (1000, 1.0)]), ("draft-1", 1000, [(0, 0.0), (100, 0.5), (500, 1.0)])])
    assert "within 100 samples (10× fewer)" in late and "draft-1 500. Verdict: does not hold." in late
    never = _claims([("ddpo", 1000, [(0, 0.0), (1000, 1.0)]), ("draft-1", 200, [(0, 0.0), (100, 0.3), (200, 0.5)])])
    assert "draft-1 not within its 200 samples. Verdict: does not hold." in never
    flat = _claims([("ddpo", 1000, [(0, 1.0), (1000, 0.9)]), ("draft-1", 100, [(0, 1.0), (100, 2.0)])])
    assert "Verdict: not testable: DDPO did not improve" in flat
    coarse = _claims([("ddpo", 100, [(0, 0.0), (100, 1.0)]), ("draft-1", 100, [(0, 0.0), (50, 2.0), (100, 2.0)])])
    assert "not testable at this evaluation grid" in coarse
    lv = _claims([("draft-1", 100, [(0, 0.0), (100, 1.0)]), ("draft-lv", 100, [(0, 0.0), (50, 1.2), (100, 1.5)])])
    assert "DRaFT-LV 50 samples (final 1.5). Verdict: holds." in lv
    assert "after never" not in late + never + flat + lv
    # a reference that did not improve leaves nothing to reach: DRaFT-1 ending below its start is reached "at 0"
    down = _claims([("draft-1", 100, [(0, 1.0), (100, 0.8)]), ("draft-lv", 100, [(0, 1.0), (50, 0.9), (100, 0.7)])])
    assert "Verdict: not testable: DRaFT-1 did not improve on its initial reward (Δ -0.2)." in down


def test_a_reference_method_improves_only_beyond_its_interval():
    """DDPO's gain inside its 95% interval over seeds (+0.05 ± 0.25) is no target for the sample-efficiency claim;
    the same mean gain with a tight interval is."""
    import pandas as pd

    from bench.leaderboard import claims

    def text(ddpo_finals):
        cells, curves = [], []
        for seed, final in enumerate(ddpo_finals):
            cells.append(dict(cell_id=f"d{seed}", task="t", method="ddpo", seed=seed, status="ok", budget=1000,
                              eval_reward="r", reward_initial=1.0, reward_final=final))
            curves += [dict(cell_id=f"d{seed}", samples=s, r_mean=v) for s, v in [(0, 1.0), (1000, final)]]
        cells.append(dict(cell_id="g", task="t", method="draft-1", seed=0, status="ok", budget=100, eval_reward="r",
                          reward_initial=1.0, reward_final=3.0))
        curves += [dict(cell_id="g", samples=s, r_mean=v) for s, v in [(0, 1.0), (50, 2.0), (100, 3.0)]]
        return "\n".join(claims(pd.DataFrame(cells), pd.DataFrame(curves)))

    assert "not testable: DDPO did not improve on its initial reward (Δ +0.05 ± 0.25)" in text([0.95, 1.15, 1.05])
    assert "Verdict: holds." in text([1.04, 1.06, 1.05])


def test_stability_claim_compares_full_backprop_with_every_truncated_variant_alignprop_included():
    """Rule: full DRaFT is less stable when it has more failed cells, or a larger mean drop below its running best,
    than *every* truncated variant (DRaFT-1, DRaFT-K and AlignProp's random cutoff)."""
    rising = [(0, 0.0), (100, 1.0), (200, 2.0)]
    dropping = [(0, 0.0), (100, 2.0), (200, 1.0)]  # drop below the running best: 1.0
    held = _claims([("draft", 200, dropping), ("draft-1", 200, rising), ("alignprop", 200, rising)])
    assert "truncated (draft-1/alignprop)" in held and "draft: 0 failed, mean drop 1" in held
    assert "alignprop: 0 failed, mean drop 0" in held and "Verdict: holds." in held
    # AlignProp as unstable as full backprop: the claim no longer holds against every truncated variant
    tie = _claims([("draft", 200, dropping), ("draft-1", 200, rising), ("alignprop", 200, dropping)])
    assert "truncated (draft-1/alignprop)" in tie and "Verdict: does not hold." in tie
    assert "truncated" not in _claims([("draft", 200, dropping), ("refl", 200, rising)])


@pytest.mark.parametrize("full_drops, verdict", [((1.0, 1.1, 0.9), "holds"), ((0.1, 1.5, 0.0), "does not hold")])
def test_stability_claim_needs_the_drops_intervals_over_seeds_apart(full_drops, verdict):
    """Three seeds each: full DRaFT's mean drop (≈ 1 in both cases) is larger than DRaFT-1's (0.1) in both, but the
    claim holds only where the 95% intervals over seeds do not overlap."""
    import pandas as pd

    from bench.leaderboard import claims

    cells, curves = [], []
    for method, drops in [("draft", full_drops), ("draft-1", (0.1, 0.1, 0.1))]:
        for seed, drop in enumerate(drops):
            cid = f"{method}-s{seed}"
            cells.append(dict(cell_id=cid, task="t", method=method, seed=seed, status="ok", budget=200,
                              eval_reward="r", reward_initial=0.0, reward_final=2.0 - drop))
            curves += [dict(cell_id=cid, samples=s, r_mean=v) for s, v in [(0, 0.0), (100, 2.0), (200, 2.0 - drop)]]
    text = "\n".join(claims(pd.DataFrame(cells), pd.DataFrame(curves)))
    assert "draft-1: 0 failed, mean drop 0.1 ± 0" in text and f"Verdict: {verdict}." in text


def test_one_seed_cells_are_compared_image_by_image():
    """Same prompts and noise for every method: a small but consistent per-image gain separates two methods whose
    unpaired intervals overlap; noise-sized differences tie."""
    import numpy as np
    import pandas as pd

    from bench.leaderboard import paired_tie, rank_groups

    rng = np.random.default_rng(0)
    base = rng.normal(5.0, 1.0, 32)  # image-to-image spread 1.0 (the unpaired 95% interval is about ±0.36)
    better = base + 0.2 + rng.normal(0, 0.02, 32)
    noisy = base + rng.normal(0, 0.3, 32)
    assert not paired_tie(better, base) and paired_tie(noisy, base) and paired_tie(base, base)
    table = pd.DataFrame([
        {"final": better.mean(), "tie_half": 0.36, "images": better},
        {"final": noisy.mean(), "tie_half": 0.36, "images": noisy},
        {"final": base.mean(), "tie_half": 0.36, "images": base}]).sort_values("final", ascending=False)
    groups = dict(zip(table["final"], rank_groups(table)))
    assert groups[better.mean()] == 1 and groups[base.mean()] == 2
