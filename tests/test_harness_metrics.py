"""Metrics, compare's regression rule, tasks and presets as data, and the leaderboard built from CSVs."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from bench import metrics


def test_mean_ci95_is_the_student_t_interval():
    mean, half = metrics.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert metrics.mean_ci95([5.0]) == (5.0, 0.0)
    assert metrics.mean_ci95([1.0, float("nan"), 3.0])[0] == 2.0  # NaN cells do not poison the mean


def test_samples_to_threshold_and_grid_interpolation():
    assert metrics.samples_to_threshold([0, 8, 16, 24], [0.0, 0.4, 0.6, 0.9], 0.5) == 16
    assert math.isnan(metrics.samples_to_threshold([0, 8], [0.0, 0.1], 0.5))
    # a method evaluated at 0, 12, 24 read at the common grid 0, 8, 16, 24
    v = metrics.on_grid([0, 12, 24], [0.0, 1.2, 2.4], [0, 8, 16, 24, 32])
    assert v[:4] == pytest.approx([0.0, 0.8, 1.6, 2.4]) and math.isnan(v[4])


def test_diversity_is_zero_for_identical_images_and_grows_with_spread():
    same = torch.ones(4, 8).repeat(1, 1)
    assert metrics.pairwise_diversity(same, ["a", "a", "b", "b"]) == pytest.approx(0.0, abs=1e-6)
    spread = torch.eye(4)
    assert metrics.pairwise_diversity(spread, ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert math.isnan(metrics.pairwise_diversity(spread, ["a", "b", "c", "d"]))  # one image per prompt: undefined


def _cells(**over):
    row = dict(cell_id="c1", backbone="shapes", method="draft-1", task="t", seed=0, protocol="shared", budget=32,
               status="ok", reward_initial=0.5, reward_final=1.0, reward_final_std=0.4, eval_images=16,
               peak_mem_mb=1000.0)
    row.update(over)
    return pd.DataFrame([row])


@pytest.mark.parametrize("new, regressed", [
    (dict(reward_final=0.90), False),   # drop 0.10 < 0.25 · gain 0.5 = 0.125
    (dict(reward_final=0.86), True),    # drop 0.14 > 0.125
    (dict(reward_final=0.50), True),    # the method stopped learning: its whole gain is gone
    (dict(reward_final=1.20), False),   # an improvement never fails
    (dict(peak_mem_mb=1099.0), False),  # +9.9%
    (dict(peak_mem_mb=1101.0), True),   # +10.1%
    (dict(status="nan", reward_final=float("nan")), True),
    (dict(status="crashed"), True),
])
def test_compare_rule(tmp_path, new, regressed):
    from bench.cli import main

    base, after = tmp_path / "base.csv", tmp_path / "new.csv"
    _cells().to_csv(base, index=False)
    _cells(**new).to_csv(after, index=False)
    assert main(["compare", str(base), str(after)]) == (1 if regressed else 0)


def test_compare_floor_for_cells_that_barely_learn(tmp_path):
    """A cell with no gain may still drift by 0.1% of its reward (float noise), not more."""
    from bench.cli import main

    base, after = tmp_path / "base.csv", tmp_path / "new.csv"
    _cells(reward_initial=4.1, reward_final=4.1).to_csv(base, index=False)
    _cells(reward_initial=4.1, reward_final=4.097).to_csv(after, index=False)  # drop 0.003 < 0.0041
    assert main(["compare", str(base), str(after)]) == 0
    _cells(reward_initial=4.1, reward_final=4.09).to_csv(after, index=False)   # drop 0.01 > 0.0041
    assert main(["compare", str(base), str(after)]) == 1


def test_compare_prints_changes_in_positional_notation(tmp_path, capsys):
    """The console table and the regression lines print a tiny drift as ``-0.00000286``, not ``-2.86e-06``."""
    import re

    from bench.cli import main

    base, after = tmp_path / "base.csv", tmp_path / "new.csv"
    _cells(reward_initial=4.1, reward_final=4.1).to_csv(base, index=False)
    _cells(reward_initial=4.1, reward_final=4.1 - 2.86e-06).to_csv(after, index=False)
    assert main(["compare", str(base), str(after)]) == 0
    out = capsys.readouterr().out
    assert main(["compare", str(base), str(base)]) == 0
    same = capsys.readouterr().out
    _cells(reward_initial=0.0005, reward_final=0.00003).to_csv(after, index=False)
    _cells(reward_initial=0.0001, reward_final=0.00009).to_csv(base, index=False)
    assert main(["compare", str(base), str(after)]) == 1
    out += capsys.readouterr().out
    assert "-0.00000286" in out and "drop 0.00006 >" in out, out
    assert not re.search(r"\d(\.\d+)?e[+-]\d\d", out), out
    assert re.search(r"\s0\s+0\.0041\s", same) and " -0 " not in same, same  # unchanged: 0, not -0


def test_compare_flags_a_missing_cell_and_rejects_a_non_cells_file(tmp_path, capsys):
    from bench.cli import main

    base, after, junk = tmp_path / "base.csv", tmp_path / "new.csv", tmp_path / "junk.csv"
    _cells().to_csv(base, index=False)
    _cells(method="ddpo").to_csv(after, index=False)
    assert main(["compare", str(base), str(after)]) == 1
    junk.write_text("a,b\n1,2\n")
    assert main(["compare", str(base), str(junk)]) == 2
    assert "lacks column" in capsys.readouterr().err


def test_every_task_loads_with_disjoint_train_and_eval_prompts():
    from bench import presets, tasks

    names = tasks.available()
    for required in presets.TESTBED_TASKS + presets.REAL_TASKS:
        assert required in names
    for name in names:
        kw = tasks.get(name).cell_kwargs()
        assert kw["train_prompts"] and kw["eval_prompts"]
        assert not set(kw["train_prompts"]) & set(kw["eval_prompts"]), f"{name}: eval prompts seen in training"


def test_presets_share_one_protocol_and_the_paper_preset_has_three_seeds():
    from bench import presets

    quick = presets.get("quick")
    assert set(quick.methods) == set(presets.ALL_METHODS) and set(quick.tasks) == set(presets.TESTBED_TASKS)
    assert quick.budget % quick.eval_every == 0
    assert len(presets.get("paper").seeds) >= 3
    assert presets.get("systems").backbone == "sd15-random"
    ddpo = presets.get("paper").method_overrides["ddpo"]  # DDPO's epoch of on-policy samples, as its paper runs it
    assert ddpo["samples_per_epoch"] >= 64 and ddpo["eta"] > 0
    for p in (presets.get(n) for n in presets.available()):
        epoch = p.method_overrides.get("ddpo", {}).get("samples_per_epoch", 0)
        assert not epoch or p.budget % epoch == 0, p.name
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get("nope")


def test_leaderboard_ranks_by_final_reward_with_intervals(tmp_path):
    from bench import leaderboard

    rows, curves = [], []
    for method, finals in [("a", [1.0, 1.2, 1.1]), ("b", [2.0, 2.2, 2.1])]:
        for seed, f in enumerate(finals):
            cid = f"{method}{seed}"
            rows.append(dict(cell_id=cid, backbone="tiny", method=method, task="t", seed=seed, protocol="shared",
                             budget=8, status="ok", message="", eval_reward="r", reward_initial=0.0, reward_final=f,
                             reward_final_std=0.1, reward_auc=f / 2, samples=8, reward_queries=8, peak_mem_mb=10.0,
                             samples_per_s=1.0, s_per_step_sampling=0.1, s_per_step_reward=0.1,
                             s_per_step_backward=0.1, diversity_final=0.2, **{"gold_final": -f}))
            curves += [dict(cell_id=cid, samples=0, r_mean=0.0), dict(cell_id=cid, samples=8, r_mean=f)]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    pd.DataFrame(curves).to_csv(tmp_path / "curves.csv", index=False)
    text = leaderboard.build(tmp_path)
    table = [ln for ln in text.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 2 ")]
    assert "**b**" in table[0] and "2.1 ± 0.25" in table[0]  # t(0.975, 2)·0.1/√3 = 0.248
    assert "gold" in text
    assert (tmp_path / "plots" / "reward_vs_samples_t.png").exists()
    assert (tmp_path / "plots" / "memory_vs_throughput.png").exists()


def test_claims_read_each_method_at_its_own_budget_and_find_the_gold_peak():
    """The claims section compares with DDPO's final reward at DDPO's own budget (a longer gradient-method cell in
    the same suite must not change it), finds when each method first reaches it, and reports where the gold
    aesthetic peaks and how far it falls afterwards."""
    import pandas as pd

    from bench.leaderboard import claims

    def cell(method, budget, curve, gold):
        cid = f"{method}-{budget}"
        cells.append(dict(cell_id=cid, task="t", method=method, status="ok", budget=budget, eval_reward="r",
                          reward_initial=curve[0][1], reward_final=curve[-1][1],
                          **{"shapes-gold-aesthetic_initial": gold[0], "shapes-gold-aesthetic_final": gold[-1]}))
        curves.extend(dict(cell_id=cid, samples=s, r_mean=v, **{"shapes-gold-aesthetic_mean": g})
                      for (s, v), g in zip(curve, gold))

    cells, curves = [], []
    cell("ddpo", 1000, [(0, 0.0), (500, 0.5), (1000, 1.0)], [5.0, 5.0, 5.0])
    cell("draft-1", 4000, [(0, 0.0), (50, 0.4), (100, 1.2), (4000, 3.0)], [5.0, 6.0, 6.5, 4.5])
    text = "\n".join(claims(pd.DataFrame(cells), pd.DataFrame(curves)))
    assert ("a gradient method reaches DDPO's final reward 1 (DDPO: 0 → 1 in 1000 samples) within 100 samples "
            "(10× fewer). Measured: draft-1 100. Verdict: holds.") in text
    assert ("Measured: proxy 0 → 3, gold 5 → 4.5; gold peaks at 6.5 after 100 samples, then falls by 2 while the "
            "proxy changes by +1.8. Verdict: holds.") in text
    # without the gold's spread across images the peak-then-fall rule cannot tell a fall from noise
    assert "fall 2 (interval ± nan" in text and "Verdict: not testable: no gold spread." in text


@pytest.mark.parametrize("spread, proxy_end, verdict", [(1.0, 3.0, "holds"), (6.0, 3.0, "does not hold"),
                                                        (1.0, 0.5, "does not hold")])
def test_gold_peak_then_fall_is_judged_against_the_gold_s_interval_at_its_peak(spread, proxy_end, verdict):
    """Gao et al.'s over-optimisation: the gold falls after its peak by more than the 95% interval of its mean there
    (Student t over the evaluation images of every seed) while the proxy goes on rising."""
    from scipy.stats import t

    from bench.leaderboard import claims

    cells = [dict(cell_id=f"s{seed}", task="t", method="draft-1", status="ok", budget=300, eval_reward="r",
                  reward_initial=0.0, reward_final=3.0, eval_images=16,
                  **{"shapes-gold-aesthetic_initial": 5.0, "shapes-gold-aesthetic_final": 4.5}) for seed in (0, 1)]
    curves = [dict(cell_id=c["cell_id"], samples=s, r_mean=r, **{"shapes-gold-aesthetic_mean": gm,
                                                              "shapes-gold-aesthetic_std": spread})
              for c in cells for s, r, gm in [(0, 0.0, 5.0), (100, 1.0, 6.5), (200, 2.0, 6.0), (300, proxy_end, 4.5)]]
    text = "\n".join(claims(pd.DataFrame(cells), pd.DataFrame(curves)))
    half = t.ppf(0.975, 31) * spread / math.sqrt(32)
    assert f"gold peak 6.5 at 100 of 300 samples, fall 2 (interval ± {half:.3g} over 32 images)" in text
    assert f"proxy {proxy_end - 1:+.3g} after the peak. Verdict: {verdict}." in text


def test_paired_delta_interval_is_the_student_t_interval_of_per_image_changes():
    from scipy.stats import t

    from bench.cell import paired_delta_ci95

    initial = torch.tensor([1.0, 2.0, 3.0, 4.0])
    final = initial + torch.tensor([0.5, 0.7, 0.4, 0.8])  # a shift common to all images is not noise
    d = torch.tensor([0.5, 0.7, 0.4, 0.8], dtype=torch.float64)
    assert paired_delta_ci95(initial, final) == pytest.approx(float(t.ppf(0.975, 3) * d.std() / 2))
    assert paired_delta_ci95(initial, final + 10) == pytest.approx(paired_delta_ci95(initial, final))
    assert math.isnan(paired_delta_ci95(None, final)) and math.isnan(paired_delta_ci95(initial[:3], final))


def _hacking_board(tmp_path, cells):
    from bench import leaderboard

    rows, curves = [], []
    for i, c in enumerate(cells):
        cid = f"c{i}"
        rows.append(dict(cell_id=cid, backbone="shapes", method=c["method"], task="t", seed=c.get("seed", 0),
                         protocol="shared", budget=8, status="ok", message="", eval_reward="r", reward_initial=1.0,
                         reward_final=c["final"], reward_final_std=0.1, reward_auc=1.0, samples=8, reward_queries=8,
                         peak_mem_mb=1.0, samples_per_s=1.0, s_per_step_sampling=0.1, s_per_step_reward=0.1,
                         s_per_step_backward=0.1, diversity_initial=0.2, diversity_final=0.2, eval_images=32,
                         reward_delta_ci95=c["half"], **{"gold_initial": 5.0, "gold_final": c["gold"],
                                                         "gold_delta_ci95": c["gold_half"]}))
        curves += [dict(cell_id=cid, samples=0, r_mean=1.0), dict(cell_id=cid, samples=8, r_mean=c["final"])]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    pd.DataFrame(curves).to_csv(tmp_path / "curves.csv", index=False)
    text = leaderboard.build(tmp_path, plots=False)
    return {ln.split(" | ")[1].strip("*"): ln for ln in text.splitlines() if ln.startswith("| ") and " | t" not in ln
            and not ln.startswith("| #") and not ln.startswith("|---")}


def test_leaderboard_never_averages_one_task_across_backbones_and_puts_them_side_by_side(tmp_path):
    """A task run on a DDIM and a flow model: one ranked section per backbone (each with its own initial value and
    plot), and one table with each method's change on both; a method run on one backbone only shows `–` on the
    other."""
    from bench import leaderboard

    rows = [dict(cell_id=f"{m}-{b}", backbone=b, method=m, task="t", seed=0, protocol="shared", budget=8, status="ok",
                 message="", eval_reward="r", reward_initial=init, reward_final=init + gain, reward_final_std=0.1,
                 reward_auc=init, samples=8, reward_queries=8, peak_mem_mb=10.0, samples_per_s=1.0,
                 s_per_step_sampling=0.1, s_per_step_reward=0.1, s_per_step_backward=0.1, reward_delta_ci95=0.05)
            for m, b, init, gain in [("draft-1", "shapes", 1.0, 0.5), ("draft-1", "shapes-flow", 3.0, 0.25),
                                     ("flow-grpo", "shapes-flow", 3.0, 0.125)]]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    pd.DataFrame([dict(cell_id=r["cell_id"], samples=n, r_mean=r["reward_initial"]) for r in rows
                  for n in (0, 8)]).to_csv(tmp_path / "curves.csv", index=False)
    text = leaderboard.build(tmp_path)
    assert "## t on shapes\n" in text and "## t on shapes-flow\n" in text and "\n## t\n" not in text
    flow = text.split("## t on shapes-flow")[1].split("##")[0]
    ranked = [ln.split(" | ") for ln in flow.splitlines() if ln.startswith("| 1 ") or ln.startswith("| 2 ")]
    assert [(r[1].strip("*"), r[3]) for r in ranked] == [("draft-1", "3"), ("flow-grpo", "3")]  # its own initial
    table = text.split("## t: backbones side by side")[1].split("\n## ")[0]
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert "Δ +0.5 ± 0.05 (1.5)" in lines["draft-1"] and "Δ +0.25 ± 0.05 (3.25)" in lines["draft-1"]
    assert lines["flow-grpo"].split(" | ")[1] == "–"
    assert (tmp_path / "plots" / "reward_vs_samples_t_on_shapes-flow.png").exists()


def test_leaderboard_puts_every_task_at_a_glance_before_their_sections(tmp_path):
    """Several tasks: one table of each method's change and rank per task (its largest budget), bold where first;
    a method not run on a task shows `–`; one task: no such table."""
    from bench import leaderboard

    def row(method, task, seed, final, budget=8):
        return dict(cell_id=f"{method}-{task}-{seed}-{budget}", backbone="shapes", method=method, task=task,
                    seed=seed, protocol="shared", budget=budget, status="ok", message="", eval_reward="r",
                    reward_initial=1.0, reward_final=final, reward_final_std=0.1, reward_auc=1.0, samples=budget,
                    reward_queries=budget, peak_mem_mb=1.0, samples_per_s=1.0, s_per_step_sampling=0.1,
                    s_per_step_reward=0.1, s_per_step_backward=0.1)

    rows = [row("a", "t1", s, 3.0 + s / 10) for s in range(3)] + [row("b", "t1", s, 1.5 + s / 10) for s in range(3)]
    rows += [row("b", "t2", s, 2.0 + s / 10) for s in range(3)] + [row("b", "t2", s, 9.0, budget=4) for s in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    pd.DataFrame([dict(cell_id=r["cell_id"], samples=n, r_mean=1.0) for r in rows for n in (0, r["budget"])]
                 ).to_csv(tmp_path / "curves.csv", index=False)
    text = leaderboard.build(tmp_path, plots=False)
    glance = text.split("## Every task at a glance")[1].split("\n## ")[0]
    assert text.index("## Every task at a glance") < text.index("## t1")
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in glance.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert lines["a"] == "| a | **Δ +2.1 ± 0.25 (1)** | – |"
    assert lines["b"] == "| b | Δ +0.6 ± 0.25 (2) | Δ +1.1 ± 0.25 (2) |"  # t2: the 8-sample cells, ranked 2nd
    one = tmp_path / "one"
    one.mkdir()
    pd.DataFrame(rows[:6]).to_csv(one / "cells.csv", index=False)
    pd.DataFrame([dict(cell_id=r["cell_id"], samples=0, r_mean=1.0) for r in rows[:6]]).to_csv(one / "curves.csv",
                                                                                            index=False)
    assert "at a glance" not in leaderboard.build(one, plots=False)


def test_memory_vs_throughput_keeps_one_point_per_method_and_backbone():
    """A method's speed on two models is two facts: averaging them would place a point where no run was."""
    from bench.plots import throughput_points

    cells = pd.DataFrame([dict(method="draft-1", backbone="shapes", status="ok", samples_per_s=6.0, peak_mem_mb=800),
                          dict(method="draft-1", backbone="shapes", status="ok", samples_per_s=4.0, peak_mem_mb=900),
                          dict(method="draft-1", backbone="shapes-flow", status="ok", samples_per_s=2.0,
                               peak_mem_mb=1000),
                          dict(method="refl", backbone="shapes", status="error", samples_per_s=9.0, peak_mem_mb=1)])
    pts = throughput_points(cells).set_index(["method", "backbone"])
    assert sorted(pts.index) == [("draft-1", "shapes"), ("draft-1", "shapes-flow")]  # the failed cell is no point
    assert list(pts.loc[("draft-1", "shapes")]) == [5.0, 850.0]  # samples/s, peak MB: the mean of its two cells
    assert pts.loc[("draft-1", "shapes-flow"), "samples_per_s"] == 2.0


def test_leaderboard_flags_a_trained_reward_rising_while_another_falls_beyond_its_interval(tmp_path):
    """One seed: the paired per-image intervals decide. The flag needs both ends: the trained reward's change above
    0 and the other's below 0; an interval that straddles 0 on either side does not flag."""
    rows = _hacking_board(tmp_path, [
        dict(method="hacks", final=2.0, half=0.5, gold=4.0, gold_half=0.5),        # +1 ± 0.5 and −1 ± 0.5
        dict(method="noisy-gold", final=2.0, half=0.5, gold=4.0, gold_half=1.5),   # gold's interval holds 0
        dict(method="not-rising", final=1.2, half=0.5, gold=4.0, gold_half=0.5),   # trained change holds 0
        dict(method="both-up", final=2.0, half=0.5, gold=6.0, gold_half=0.5)])
    assert "**gold**" in rows["hacks"] and "gold: Δ" not in rows["hacks"]
    assert "Δ -1 ± 0.5" in rows["hacks"]
    for name in ("noisy-gold", "not-rising", "both-up"):
        assert "**gold**" not in rows[name], name


def test_leaderboard_change_intervals_are_over_seeds_when_there_are_several(tmp_path):
    """Three seeds: the interval is Student t over the seeds' changes, the per-image halves are not used (they
    would call this a clear fall)."""
    rows = _hacking_board(tmp_path, [dict(method="m", seed=s, final=2.0, half=0.01, gold=g, gold_half=0.01)
                                     for s, g in enumerate([3.0, 5.5, 5.2])])
    from scipy.stats import t

    d = pd.Series([-2.0, 0.5, 0.2])
    half = t.ppf(0.975, 2) * d.std() / math.sqrt(3)
    assert f"{half:.2g}" == "3.4" and round(d.mean(), 1) == -0.4  # the change shown to the interval's digits
    assert "Δ -0.4 ± 3.4" in rows["m"] and "**gold**" not in rows["m"]


def test_a_cell_reports_cross_rewards_and_its_own_sampler_beside_the_shared_evaluation(tmp_path):
    """A testbed cell evaluates the task's cross rewards (not trained on) beside its headline, which stays first;
    DDPO's headline is also scored under its own eta-1 sampler, the same each time it is evaluated on the same
    weights, and different from the eta-0 shared value; a method sampling like the evaluation copies the shared
    value."""
    import bench.testbed  # noqa: F401  (registers the shapes backbone and rewards)
    from bench import tasks
    from bench import backbones
    from bench.cell import CellSpec, Evaluator, run_cell
    from foundation_testkit import MeanPixelReward

    kw = tasks.get("shapes-add-red-circle").cell_kwargs()
    kw["eval_prompts"] = kw["eval_prompts"][:2]
    assert set(kw["cross_rewards"]) == {"shapes-gold-aesthetic", "shapes-alignment"}
    common = dict(budget=2, batch_size=2, eval_every=2, save_lora=False, save_images=False, results_dir=str(tmp_path),
                  method_kwargs=dict(num_steps=3, guidance_scale=3.0))
    spec = CellSpec(method="ddpo", **kw, **{**common, "method_kwargs": dict(common["method_kwargs"], eta=1.0)})
    backbone = backbones.create("shapes")
    reward = {"mean": MeanPixelReward(size=24)}
    own = Evaluator(backbone, reward, spec.eval_prompts, num_steps=3, guidance_scale=3.0, images_per_prompt=1,
                    seed=5, eta=1.0)
    shared = Evaluator(backbone, reward, spec.eval_prompts, num_steps=3, guidance_scale=3.0, images_per_prompt=1,
                       seed=5)
    a, b, c = own()[1], own()[1], shared()[1]
    assert torch.equal(a, b) and not torch.allclose(a, c)

    row, curve = run_cell(spec)
    assert row["eval_reward"] == "shapes-detector" and row["own_sampler"] == "ddim eta 1, 3 steps, CFG 3"
    assert [k[: -len("_mean")] for k in curve[0] if k.endswith("_mean")] == [
        "shapes-detector", "shapes-gold-aesthetic", "shapes-alignment"]
    for name in ("shapes-gold-aesthetic", "shapes-alignment"):
        assert math.isfinite(row[f"{name}_final"]) and math.isfinite(row[f"{name}_delta_ci95"])
    assert math.isfinite(row["reward_own_final"]) and row["reward_own_initial"] != row["reward_initial"]
    row, _ = run_cell(CellSpec(method="draft-1", **kw, **common))
    assert row["own_sampler"] == "shared" and row["reward_own_final"] == row["reward_final"]


def test_over_optimisation_claim_is_per_task_and_backbone_and_only_where_the_proxy_is_trained():
    """The proxy-up/gold-down claim reads the task whose reward is the gold's learned proxy (shapes-aesthetic, which
    evaluates both), one line per backbone with that backbone's own numbers; a task where the gold is only a cross
    reward (shapes-compressibility) makes no such claim, and nothing is averaged across tasks or models."""
    from bench import leaderboard

    gold = "shapes-gold-aesthetic"
    rows = [dict(cell_id=f"{t}-{b}", task=t, base_task=t.split(" on ")[0], backbone=b, method="draft-1", seed=0,
                 status="ok", reward_initial=p0, reward_final=p1, **{f"{gold}_initial": g0, f"{gold}_final": g1})
            for t, b, p0, p1, g0, g1 in [("shapes-aesthetic on shapes", "shapes", 4.5, 5.0, 5.0, 4.9),
                                         ("shapes-aesthetic on shapes-flow", "shapes-flow", 6.0, 6.2, 5.7, 5.8),
                                         ("shapes-compressibility", "shapes", -1.0, -0.9, 5.0, 4.0)]]
    lines = [ln for ln in leaderboard.claims(pd.DataFrame(rows), pd.DataFrame(columns=["cell_id", "samples"]))
             if "over-optimisation" in ln]
    assert len(lines) == 2, lines
    on_ddim, on_flow = sorted(lines)
    assert "shapes-aesthetic on shapes, draft-1" in on_ddim and "proxy 4.5 → 5" in on_ddim
    assert "gold 5 → 4.9" in on_ddim and on_ddim.endswith("Verdict: holds.")
    assert "shapes-aesthetic on shapes-flow, draft-1" in on_flow and "proxy 6 → 6.2" in on_flow
    assert on_flow.endswith("Verdict: does not hold.")


def test_every_registered_method_has_its_own_colour_in_the_plots():
    """Eleven methods, matplotlib's cycle has ten colours: without a fixed map two methods (alignprop and refl in the
    flow grid) were drawn in the same colour."""
    import methods
    from bench.plots import method_style

    names = methods.available()
    colours = [method_style(m)[0] for m in names]
    assert len(names) >= 11 and len(set(colours)) == len(colours), dict(zip(names, colours))
    assert method_style("ddpo")[1] != method_style("draft-1")[1]  # the family shows in the line style


def _ddpo_epoch_cell(tmp_path, **over):
    """A DDPO cell in epochs of 4 samples (2 calls of 2: the first only samples) evaluated every 4 samples."""
    import bench.testbed  # noqa: F401  (registers the shapes backbone and rewards)
    from bench import tasks
    from bench.cell import CellSpec

    kw = tasks.get("shapes-aesthetic").cell_kwargs()
    kw["eval_prompts"] = kw["eval_prompts"][:2]
    kw["cross_rewards"] = []
    return CellSpec(method="ddpo", **kw, budget=8, batch_size=2, eval_every=4, save_lora=False, save_images=False,
                    eval_images_per_prompt=1, results_dir=str(tmp_path),
                    method_kwargs=dict(num_steps=3, guidance_scale=3.0, eta=1.0, samples_per_epoch=4,
                                       minibatch_size=2), **over)


def _record_steps(monkeypatch, fail_at: int | None = None) -> list[dict]:
    """Record every DDPO.step()'s metrics; with fail_at, the fail_at-th call raises (a crash mid-interval)."""
    from methods.ddpo import DDPO

    monkeypatch.undo()  # a previous recorder's wrapper is not wrapped again
    calls: list[dict] = []
    original = DDPO.step

    def step(self, prompts):
        if fail_at is not None and len(calls) + 1 == fail_at:
            raise RuntimeError("crash")
        calls.append(original(self, prompts))
        return calls[-1]

    monkeypatch.setattr(DDPO, "step", step)
    return calls


def test_curve_points_record_the_training_metrics_of_their_interval(tmp_path, monkeypatch):
    """Each curve point after the first carries train_<metric>: the mean over the step() calls since the previous
    point — the reward over every call, the loss, gradient norm, approx-KL and clip fraction over the calls that
    updated the weights only (DDPO's sample-only calls have no loss to average in)."""
    from bench.cell import TRAIN_METRICS, run_cell

    calls = _record_steps(monkeypatch)
    _, curve = run_cell(_ddpo_epoch_cell(tmp_path))
    assert [p["samples"] for p in curve] == [0, 4, 8] and len(calls) == 4
    assert [c["optimizer_steps"] for c in calls] == [0, 2, 0, 2]
    assert not {f"train_{name}" for name in TRAIN_METRICS} & set(curve[0])
    for point, (sampled, updated) in zip(curve[1:], (calls[0:2], calls[2:4])):
        assert point["train_reward"] == pytest.approx((sampled["reward"] + updated["reward"]) / 2)
        for name in ("loss", "grad_norm", "approx_kl", "clipfrac"):
            assert point[f"train_{name}"] == pytest.approx(updated[name]), name
    assert curve[1]["train_reward"] != curve[2]["train_reward"]  # the sums restart at each point


def test_a_cell_resumed_mid_interval_keeps_the_interval_s_training_metrics(tmp_path, monkeypatch):
    """A cell that saved its state between two evaluations (checkpoint_minutes) and crashed resumes with the
    training metrics it had summed so far: its curve equals an uninterrupted run's, train_ columns included."""
    from bench.cell import TRAIN_METRICS, run_cell

    _record_steps(monkeypatch)
    _, straight = run_cell(_ddpo_epoch_cell(tmp_path / "straight"))
    _record_steps(monkeypatch, fail_at=2)  # the state saved after call 1 holds call 1's reward only
    spec = _ddpo_epoch_cell(tmp_path / "resumed", checkpoint_minutes=1e-9)
    with pytest.raises(RuntimeError, match="crash"):
        run_cell(spec)
    _record_steps(monkeypatch)
    _, resumed = run_cell(spec)
    columns = [f"train_{name}" for name in TRAIN_METRICS]
    assert columns and [{k: p.get(k) for k in columns} for p in resumed] == [
        {k: p.get(k) for k in columns} for p in straight]


def test_each_claim_is_summarised_across_the_tasks_that_could_test_it():
    """The claims section ends with each claim over tasks: reproduced where every testable task holds, not
    reproduced where none does, mixed (naming where it held) otherwise; a task where DDPO did not improve is named
    as untestable and not counted."""
    from bench.leaderboard import claims

    def text(spec):
        cells, curves = [], []
        for task, method, curve in spec:
            cid = f"{task}-{method}"
            cells.append(dict(cell_id=cid, task=task, method=method, status="ok", budget=1000, eval_reward="r",
                              reward_initial=curve[0][1], reward_final=curve[-1][1]))
            curves.extend(dict(cell_id=cid, samples=s, r_mean=v) for s, v in curve)
        lines = claims(pd.DataFrame(cells), pd.DataFrame(curves))
        return [ln for ln in lines[lines.index("### Each claim across tasks"):] if ln.startswith("- ")]

    ddpo = ("ddpo", [(0, 0.0), (1000, 1.0)])
    fast, slow = [(0, 0.0), (100, 1.2), (1000, 2.0)], [(0, 0.0), (100, 0.2), (1000, 2.0)]
    flat_ddpo = ("ddpo", [(0, 1.0), (1000, 0.5)])
    mixed = text([("a", *ddpo), ("a", "draft-1", fast), ("b", *ddpo), ("b", "draft-1", slow),
                  ("c", *flat_ddpo), ("c", "draft-1", slow)])
    assert mixed == ["- a gradient method reaches DDPO's final reward with 10× fewer samples: mixed — holds in 1 of 2 "
                     "(a); not testable in c."]
    assert text([("a", *ddpo), ("a", "draft-1", fast), ("b", *ddpo), ("b", "draft-1", fast)])[0].endswith(
        ": reproduced — holds in 2 of 2.")
    assert text([("a", *ddpo), ("a", "draft-1", slow)])[0].endswith(": not reproduced — holds in 0 of 1.")
    lv = text([("a", "draft-1", slow), ("a", "draft-lv", [(0, 0.0), (100, 2.1), (1000, 2.5)])])
    assert lv == ["- DRaFT-LV reaches DRaFT-1's final reward with fewer samples: reproduced — holds in 1 of 1."]
    alone = claims(pd.DataFrame([dict(cell_id="d", task="a", method="ddpo", status="ok", budget=1000, eval_reward="r",
                                      reward_initial=0.0, reward_final=1.0)]),
                   pd.DataFrame([dict(cell_id="d", samples=s, r_mean=v) for s, v in ddpo[1]]))
    assert not any("DDPO's final reward" in ln for ln in alone), alone  # a DDPO-only suite compares nothing


def test_a_rerun_under_other_weights_supersedes_the_earlier_row_instead_of_counting_as_a_seed(tmp_path):
    """A retrained testbed reruns every cell under new ids (the fingerprint is in the id): the tables use the last
    row of each backbone, method, task, seed, budget and protocol, and the header says how many earlier rows they left out."""
    stale = dict(method="m", seed=0, final=9.0, half=0.01, gold=5.0, gold_half=0.01)  # the old weights' seed 0
    rows = _hacking_board(tmp_path, [stale] + [dict(method="m", seed=s, final=f, half=0.01, gold=5.0, gold_half=0.01)
                                               for s, f in enumerate([2.0, 2.2, 2.1])])
    assert "| 2.1 ± " in rows["m"] and "| 3 | 8 |" in rows["m"], rows["m"]  # three seeds, mean 2.1: not 3.8 over 4
    text = (tmp_path / "leaderboard.md").read_text()
    assert "- 1 earlier row left out: a later run of the same backbone, method, task, seed, budget and protocol" in text
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 4  # the file keeps it
