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


@pytest.mark.parametrize("epoch", ["0", "1"])
def test_ddpo_refuses_an_update_over_one_sample(capsys, tmp_path, epoch):
    """One sample per update (a batch of one without epochs, or an epoch of one) makes every advantage zero."""
    from bench.cli import main

    code = main(["run", "--method", "ddpo", "--task", "shapes-aesthetic", "--batch-size", "1",
                 "--set", f"samples_per_epoch={epoch}", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    what = "batch_size 1" if epoch == "0" else "samples_per_epoch 1"
    assert code == 2 and len(err.splitlines()) == 1 and f"{what} makes every advantage zero" in err


def test_ddpo_takes_a_batch_of_one_inside_an_epoch():
    """A batch of one is fine when an epoch gathers several: the advantages are over the whole epoch."""
    from methods.ddpo import DDPO

    DDPO.check_batch(1, {"samples_per_epoch": 8})


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


def test_resolution_changes_the_sampled_size_and_is_checked(tmp_path):
    import torch

    from bench import backbones
    from methods.sampling import sample

    bb = backbones.create("tiny", resolution=48, lora_rank=None)
    assert bb.latent_shape(2) == (2, 4, 24, 24) and bb.image_size == 48
    with torch.no_grad():
        out = sample(bb, bb.encode_prompts(["a", "b"]), torch.randn(bb.latent_shape(2)), num_steps=2,
                     guidance_scale=1.0, eta=0.0)
        assert bb.decode(out.latents).shape == (2, 3, 48, 48)
    with pytest.raises(backbones.BackboneError, match="multiple of 4"):
        backbones.create("tiny", resolution=30, lora_rank=None)
    with pytest.raises(backbones.BackboneError, match="pixel-space"):
        backbones.create("shapes", resolution=32, lora_rank=None)


def test_catalog_resolution_rules_match_the_architectures():
    import json
    from pathlib import Path

    from bench import backbones, catalog

    assert catalog.RESOLUTION["tiny"] == backbones.create("tiny", lora_rank=None).resolution_multiple
    assert catalog.RESOLUTION["shapes"] == -backbones.create("shapes", lora_rank=None).image_size
    cfg = backbones.CONFIG_DIR / "sd15"
    vae, unet = (json.loads((cfg / f).read_text()) for f in ("vae.json", "unet.json"))
    sd = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["block_out_channels"]) - 1)
    assert catalog.RESOLUTION["sd15-random"] == catalog.RESOLUTION["sd15"] == sd == 64
    for tiny in ("tiny-sd3", "tiny-flux"):
        assert catalog.RESOLUTION[tiny] == backbones.create(tiny, lora_rank=None).resolution_multiple
    for real, random_, cfg in (("sd35m", "sd35m-random", "sd35m"), ("flux-dev", "flux-random", "flux-dev")):
        vae, tr = (json.loads((backbones.CONFIG_DIR / cfg / f).read_text()) for f in ("vae.json", "transformer.json"))
        patch = 2 if real.startswith("flux") else tr["patch_size"]  # FLUX packs 2×2 latent patches
        assert catalog.RESOLUTION[real] == catalog.RESOLUTION[random_] == 2 ** (len(vae["block_out_channels"]) - 1) * patch


@pytest.mark.parametrize("args, match", [(["--backbone", "tiny", "--resolution", "30"], "multiple of 4"),
                                         (["--backbone", "sd15-random", "--resolution", "500"], "multiple of 64"),
                                         (["--resolution", "32"], "pixel-space")])
def test_bad_resolution_is_one_line_before_anything_loads(args, match, capsys, tmp_path):
    import sys

    from bench.cli import main

    task = ["--reward", "jpeg-compressibility"] if "--backbone" in args else ["--task", "shapes-aesthetic"]
    assert main(["run", "--method", "draft-k", *task, *args, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_a_cell_trains_and_evaluates_at_the_chosen_resolution(tmp_path):
    import pandas as pd

    from bench.cli import main

    assert main(["run", "--method", "draft-1", "--reward", "jpeg-compressibility", "--backbone", "tiny",
                 "--resolution", "48", "--budget", "2", "--batch-size", "2", "--eval-every", "2", "--num-steps", "2",
                 "--results-dir", str(tmp_path)]) == 0
    row = pd.read_csv(tmp_path / "single" / "cells.csv").iloc[0]
    assert row["status"] == "ok"
    from PIL import Image

    grid = Image.open(tmp_path / "single" / "cells" / row["cell_id"] / "eval.png")
    assert grid.size[1] > 2 * 96  # two rows of enlarged 48-px images


def test_new_optional_fields_keep_the_committed_cell_ids():
    """Adding CellSpec fields (resolution) must not rename the committed cells: the ci grid still plans exactly the
    baseline's cell ids."""
    from pathlib import Path

    import pandas as pd

    from bench import grid, presets

    baseline = pd.read_csv(Path(__file__).resolve().parent.parent / "results" / "ci" / "baseline.csv")
    specs, _ = grid.plan(presets.get("ci"))
    assert {s.cell_id for s in specs} == set(baseline["cell_id"])


@pytest.mark.parametrize("reward", ["aesthetic", "hpsv2", "pickscore", "imagereward", "owlvit", "resnet50-class"])
def test_random_weight_rewards_are_selectable_by_name(reward):
    """`--reward-arg weights=random` (full architecture) / `random-small`: no download, a differentiable reward of the
    real class, deterministic in its seed."""
    import torch

    import rewards

    weights = "random" if reward == "resnet50-class" else "random-small"
    a, b = rewards.create(reward, weights=weights), rewards.create(reward, weights=weights)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    s = a(x, ["a photo of a cat", "a strawberry"])
    assert s.shape == (2,) and torch.equal(s.detach(), b(x, ["a photo of a cat", "a strawberry"]).detach())
    s.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_random_weight_reward_cell_from_the_cli(tmp_path, capsys):
    import pandas as pd

    from bench.cli import main

    assert main(["run", "--method", "draft-1", "--reward", "hpsv2", "--reward-arg", "weights=random-small",
                 "--backbone", "tiny", "--budget", "2", "--batch-size", "2", "--eval-every", "2", "--num-steps", "2",
                 "--results-dir", str(tmp_path)], ) == 0
    assert pd.read_csv(tmp_path / "single" / "cells.csv").iloc[0]["status"] == "ok"
    assert main(["run", "--method", "draft-1", "--reward", "hpsv2", "--reward-arg", "weights=nope",
                 "--backbone", "tiny", "--results-dir", str(tmp_path)]) == 2
    assert "weights must be one of pretrained, random, random-small" in capsys.readouterr().err


@pytest.mark.parametrize("grid_flag", [[], ["--grid", "--preset", "ci"]])
def test_evaluation_size_is_the_users_choice(monkeypatch, tmp_path, grid_flag):
    import bench.cell
    from bench import grid
    from bench.cli import main

    seen = []
    monkeypatch.setattr(bench.cell, "run_cell", lambda spec, on_progress=None: (
        seen.append(spec), ({"cell_id": spec.cell_id, "status": "ok", "message": "", "eval_reward": "r",
                             "reward_initial": 0.0, "reward_final": 0.0, "train_wall_s": 0.0, "samples_per_s": 0.0,
                             "peak_mem_mb": 0.0}, [{"cell_id": spec.cell_id, "samples": 0}]))[1])
    monkeypatch.setattr(grid, "run_grid", lambda specs, out, **kw: (seen.extend(specs),
                                                                    {"ran": 0, "skipped": 0, "results": {}})[1])
    method = ["--methods", "refl", "--tasks", "shapes-aesthetic"] if grid_flag else ["--method", "refl", "--task",
                                                                                      "shapes-aesthetic"]
    main(["run", *grid_flag, *method, "--eval-prompts", "2", "--eval-images", "1", "--results-dir", str(tmp_path)])
    assert seen and all(len(s.eval_prompts) == 2 and s.eval_images_per_prompt == 1 for s in seen)


def test_export_backbone_writes_a_pipeline_that_diffusers_and_backbone_path_load(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    from bench import backbones
    from bench.cli import main

    out = tmp_path / "tiny-pipe"
    assert main(["export-backbone", "tiny", str(out)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, requires_safety_checker=False)
    back = backbones.create("sd15", path=str(out), lora_rank=None)
    ref = backbones.create("tiny", lora_rank=None)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        cond = ref.encode_prompts(["a cat"])
        expected = ref.unet(x, t, encoder_hidden_states=cond.embeds).sample
        for unet in (pipe.unet, back.unet):
            assert torch.allclose(unet(x, t, encoder_hidden_states=cond.embeds).sample, expected, atol=1e-6)
        assert torch.equal(back.encode_prompts(["a cat"]).embeds, cond.embeds)
    # the official tokenizer layout too (transformers 4.x's CLIPTokenizer reads only vocab.json + merges.txt)
    from transformers import CLIPTokenizer
    slow = CLIPTokenizer(str(out / "tokenizer" / "vocab.json"), str(out / "tokenizer" / "merges.txt"))
    for text in ["a cat", "a bowl of strawberries on a red table"]:
        assert slow(text).input_ids == pipe.tokenizer(text).input_ids
    assert main(["export-backbone", "tiny", str(out)]) == 2  # not empty: refuses without --force
    assert main(["export-backbone", "shapes", str(tmp_path / "s")]) == 2  # pixel space: no pipeline


def test_sd21_random_is_sd21s_architecture():
    import json
    from pathlib import Path

    from bench import backbones

    cfg = backbones.CONFIG_DIR / "sd21"
    unet, text, sched = (json.loads((cfg / f).read_text()) for f in ("unet.json", "text_encoder.json",
                                                                     "scheduler.json"))
    assert sched["prediction_type"] == "v_prediction" and unet["sample_size"] * 8 == 768
    assert unet["cross_attention_dim"] == text["hidden_size"] == 1024 and unet["use_linear_projection"]
    assert text["num_hidden_layers"] == 23 and text["hidden_act"] == "gelu"  # OpenCLIP-H without its last layer


@pytest.mark.slow
def test_sd21_random_builds_at_its_real_size():
    from bench import backbones

    bb = backbones.create("sd21-random", dtype="bf16", lora_rank=4)
    assert 860e6 < sum(p.numel() for p in bb.unet.parameters()) < 875e6
    assert bb.image_size == 768 and bb.scheduler.config.prediction_type == "v_prediction"
    assert bb.encode_prompts(["a cat"]).embeds.shape == (1, 77, 1024)


@pytest.mark.slow
def test_sd15_architecture_lora_loads_into_a_vanilla_pipeline_with_the_same_unet_output(tmp_path):
    """SD-1.5's architecture (random weights): a LoRA saved by the project, loaded by diffusers'
    StableDiffusionPipeline.load_lora_weights, changes the UNet output exactly as the project's own LoRA does."""
    import torch
    from diffusers import StableDiffusionPipeline

    from bench import backbones
    from bench.cli import main
    from foundation_testkit import randomize_lora

    assert main(["export-backbone", "sd15-random", str(tmp_path / "pipe")]) == 0
    ours = backbones.create("sd15", path=str(tmp_path / "pipe"), lora_rank=4)
    randomize_lora(ours, seed=1)
    ours.save_lora(tmp_path / "lora")
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipe"), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([400])
    with torch.no_grad():
        emb = ours.encode_prompts(["a cat"]).embeds
        a = ours.unet(x, t, encoder_hidden_states=emb).sample
        b = pipe.unet(x, t, encoder_hidden_states=emb).sample
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_flops_per_sample_are_counted_once_and_scale_with_the_steps_that_carry_gradient(tmp_path):
    import pandas as pd

    from bench.cli import main

    def flops(method, *extra):
        out = tmp_path / method
        assert main(["run", "--method", method, "--reward", "jpeg-compressibility", "--backbone", "tiny",
                     "--budget", "4", "--batch-size", "2", "--num-steps", "4", "--eval-prompts", "1",
                     "--eval-images", "1", "--count-flops", *extra, "--results-dir", str(out)]) == 0
        row = pd.read_csv(out / "single" / "cells.csv").iloc[0]
        assert row["samples_per_s"] > 0 and pd.isna(row["mfu"])  # CPU: no known peak
        return row["flops_per_sample"]

    one, three = flops("draft-1"), flops("draft-k", "--set", "truncation_steps=3")
    assert 0 < one < three  # backward through 3 UNet calls costs more than through 1


def test_a_dtype_the_device_cannot_run_is_refused_before_loading(monkeypatch):
    import torch

    from bench.cell import CellSpec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ValueError, match="bf16 is not supported by Tesla V100"):
        CellSpec(device="cuda", dtype="bf16").validate()
    CellSpec(device="cuda", dtype="fp16").validate()


def test_slow_tokenizer_files_reproduce_a_bpe_tokenizer(tmp_path):
    """The vocab.json + merges.txt written beside tokenizer.json tokenize like it (real CLIP BPE, 48894 merges)."""
    from transformers import CLIPTokenizer

    from bench.backbones import write_slow_tokenizer_files
    from rewards.testing import clip_tokenizer

    fast = clip_tokenizer()
    fast.save_pretrained(str(tmp_path))
    for f in ("vocab.json", "merges.txt"):
        (tmp_path / f).unlink(missing_ok=True)
    write_slow_tokenizer_files(tmp_path)
    slow = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in ["a photograph of an astronaut riding a horse", "strawberries, unbelievable!"]:
        assert slow(text).input_ids == fast(text).input_ids
