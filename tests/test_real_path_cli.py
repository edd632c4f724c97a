"""The real-model path as a user types it (issue 13, "what a user hits today"): settings a variant replaces are not
judged on their defaults, grid flags are honoured, updates that are identically zero are refused."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def registries():
    from bench import catalog

    catalog.load_registries()


@pytest.mark.parametrize("method", ["draft-1", "draft", "draft-lv", "drtune"])
def test_two_sampling_steps_are_accepted_by_every_variant_that_fixes_its_own_k(method):
    from bench import grid, presets

    specs, _ = grid.plan(presets.get("ci"), methods=method, tasks="shapes-aesthetic", method_settings={"num_steps": 2})
    assert specs and specs[0].method_kwargs["num_steps"] == 2


def test_draft_k_still_refuses_a_k_larger_than_the_chain():
    from bench import grid, presets
    from bench.args import UsageError

    with pytest.raises(UsageError, match=r"truncation_steps \(K\) must be in \[1, num_steps=2\]"):
        grid.plan(presets.get("ci"), methods="draft-k", tasks="shapes-aesthetic", method_settings={"num_steps": 2})


def test_variants_settle_their_fixed_settings():
    import methods
    from methods.draft import DraftConfig
    from methods.drtune import DRTuneConfig

    c = DraftConfig(num_steps=7, truncation_steps=3)
    assert methods.get("draft-1").settle(c).truncation_steps == 1
    full = methods.get("draft").settle(c)
    assert full.truncation_steps == 7 and full.checkpoint
    assert DRTuneConfig(num_steps=2).k == 2 and DRTuneConfig(num_steps=50, early_stop_max=10).k == 5
    assert DRTuneConfig(num_steps=10, trained_steps=3).k == 3


def test_ddpo_refuses_a_batch_of_one(capsys, tmp_path):
    from bench.cli import main

    code = main(["run", "--method", "ddpo", "--task", "shapes-aesthetic", "--batch-size", "1",
                 "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "batch_size 1 makes every advantage zero" in err


def test_grid_honours_backbone_path_and_dtype(monkeypatch, tmp_path):
    from bench import grid
    from bench.cli import main

    seen = []
    monkeypatch.setattr(grid, "run_grid", lambda specs, out, **kw: (seen.extend(specs),
                                                                    {"ran": 0, "skipped": 0, "results": {}})[1])
    weights = tmp_path / "sd15"
    weights.mkdir()
    main(["run", "--grid", "--preset", "ci", "--methods", "refl", "--tasks", "shapes-aesthetic", "--backbone", "tiny",
          "--backbone-path", str(weights), "--dtype", "bf16", "--results-dir", str(tmp_path)])
    assert seen and all(s.backbone_path == str(weights) and s.dtype == "bf16" for s in seen)
    plain = grid.plan(__import__("bench.presets", fromlist=["get"]).get("ci"), methods="refl",
                      tasks="shapes-aesthetic", backbone="tiny")[0][0]
    assert seen[0].cell_id != plain.cell_id  # the weights a cell used are part of its identity


def test_single_run_takes_plugins(tmp_path, capsys):
    from bench.cli import main

    code = main(["run", "--method", "refl", "--task", "shapes-aesthetic", "--plugins", "no_such_plugin_module",
                 "--results-dir", str(tmp_path)])
    assert code == 2 and "--plugins: cannot import 'no_such_plugin_module'" in capsys.readouterr().err
