"""SDXL on the project's sampler: ``tiny-xl`` (the SDXL architecture in miniature: two text encoders, pooled text
embeddings, ``add_time_ids``) gives what diffusers' ``StableDiffusionXLPipeline`` gives for the same noise."""
from __future__ import annotations

import pytest
import torch

from bench import backbones, catalog
from bench.cli import main
from foundation_testkit import assert_a_step_trains, perturb_trainable
from methods.sampling import sample

PROMPTS = ["a red circle on a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def xl():
    catalog.load_registries()
    return backbones.create("tiny-xl", lora_rank=None)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_sampler_equals_the_sdxl_pipeline(xl, guidance):
    torch.manual_seed(0)
    noise = torch.randn(xl.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(1))
    pipe = xl.pipeline()
    size = xl.image_size
    with torch.no_grad():
        expected = pipe(PROMPTS, height=size, width=size, num_inference_steps=4, guidance_scale=guidance, eta=0.0,
                        latents=noise.clone(), output_type="latent").images
        ours = sample(xl, xl.encode_prompts(PROMPTS), noise, num_steps=4, guidance_scale=guidance, eta=0.0).latents
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() < 1e-4


def test_conditioning_is_sdxls(xl):
    cond = xl.encode_prompts(PROMPTS)
    te1, te2 = xl.text_encoder.config.hidden_size, xl.text_encoder_2.config.hidden_size
    assert cond.embeds.shape == (2, 77, te1 + te2) and cond.pooled.shape == (2, xl.text_encoder_2.config.projection_dim)
    assert torch.equal(cond.uncond, torch.zeros_like(cond.uncond))  # force_zeros_for_empty_prompt, as diffusers
    s = xl.image_size
    assert cond.time_ids.tolist() == [[s, s, 0, 0, s, s]] * 2
    sub = cond.index(torch.tensor([1]))
    assert torch.equal(sub.pooled, cond.pooled[1:]) and torch.equal(sub.time_ids, cond.time_ids[1:])
    assert torch.equal(cond.repeat(2).pooled[1], cond.pooled[0])


def test_sdxl_lora_loads_into_a_vanilla_sdxl_pipeline_with_identical_output(tmp_path):
    """save_lora on tiny-xl writes the diffusers SDXL LoRA file; StableDiffusionXLPipeline.load_lora_weights on a
    fresh pipeline of the same base weights reproduces the project's sampling to 1e-4."""
    tuned_bb = backbones.create("tiny-xl", seed=0, lora_rank=4)
    perturb_trainable(tuned_bb)
    noise = torch.randn(tuned_bb.latent_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = sample(tuned_bb, tuned_bb.encode_prompts(PROMPTS), noise, num_steps=3, guidance_scale=5.0).latents
    tuned_bb.save_lora(tmp_path / "lora")
    pipe = backbones.create("tiny-xl", seed=0, lora_rank=None).pipeline()
    pipe.set_progress_bar_config(disable=True)
    size = tuned_bb.image_size
    kw = dict(height=size, width=size, num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    base = pipe(PROMPTS, latents=noise.clone(), **kw).images
    pipe.load_lora_weights(str(tmp_path / "lora"))
    tuned = pipe(PROMPTS, latents=noise.clone(), **kw).images
    assert (base - ours).abs().max() > 1e-3, "the LoRA must change the output"
    assert (tuned - ours).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["ddpo", "refl", "draft", "draft-k", "draft-1", "draft-lv", "alignprop", "drtune"])
def test_every_method_takes_a_step_on_tiny_xl(method):
    """The conditioning is opaque to the methods: each trains the SDXL-shaped UNet's LoRA through the same sampler."""
    assert_a_step_trains(backbones.create("tiny-xl", seed=0, lora_rank=4), method, PROMPTS, 5.0)


def test_export_backbone_writes_an_sdxl_pipeline_that_sdxl_backbone_path_reads(tmp_path, capsys):
    import shutil

    from diffusers import StableDiffusionXLPipeline


    out = tmp_path / "xl"
    assert main(["export-backbone", "tiny-xl", str(out)]) == 0
    assert "--backbone sdxl --backbone-path" in capsys.readouterr().out
    assert (out / "tokenizer_2" / "vocab.json").exists() and (out / "tokenizer_2" / "merges.txt").exists()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(out))
    back = backbones.create("sdxl", path=str(out), lora_rank=None)
    ref = backbones.create("tiny-xl", lora_rank=None)
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    noise = torch.randn(ref.latent_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = sample(ref, ref.encode_prompts(PROMPTS), noise, num_steps=2, guidance_scale=5.0).latents
        b = sample(back, back.encode_prompts(PROMPTS), noise, num_steps=2, guidance_scale=5.0).latents
    assert torch.allclose(a, b, atol=1e-6)
    # a local directory without the second text encoder: one line, exit 2, before any model loads
    shutil.rmtree(out / "text_encoder_2")
    code = main(["run", "--method", "draft-1", "--task", "compressibility", "--backbone", "sdxl", "--backbone-path",
                 str(out), "--budget", "2", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "missing text_encoder_2/" in err and "Traceback" not in err


def test_sdxl_random_is_sdxl_bases_architecture():
    import json

    from bench.backbones import CONFIG_DIR

    unet = json.loads((CONFIG_DIR / "sdxl" / "unet.json").read_text())
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel.from_config(unet)
    assert 2.55e9 < sum(p.numel() for p in model.parameters()) < 2.58e9  # SDXL base: 2.567B
    te2 = json.loads((CONFIG_DIR / "sdxl" / "text_encoder_2.json").read_text())
    assert unet["cross_attention_dim"] == 768 + te2["hidden_size"] == 2048
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + te2["projection_dim"]


def test_fp16_sdxl_keeps_its_vae_in_fp32_and_decodes_finite_images():
    """SDXL's VAE overflows in fp16 (force_upcast in its config): with --dtype fp16 it stays fp32."""
    bb = backbones.create("tiny-xl", lora_rank=None, dtype="fp16")
    assert bb.unet.dtype == torch.float16 and next(bb.vae.parameters()).dtype == torch.float32
    with torch.no_grad():
        images = bb.decode(50 * torch.randn(bb.latent_shape(1)))  # large latents: fp16 activations would overflow
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_smoke_xl_plans_every_method_once_on_sdxls_architecture():
    from bench import grid, presets
    from bench.presets import ALL_METHODS

    specs, notes = grid.plan(presets.get("smoke-xl"))
    assert not notes and sorted(s.method for s in specs) == sorted(ALL_METHODS)
    assert {s.backbone for s in specs} == {"sdxl-random"} and {s.dtype for s in specs} == {"bf16"}
    assert {s.resolution for s in specs} == {256}


def test_sdxl_gpu_presets_plan_on_sdxl():
    from bench import grid, presets

    for name, backbone in (("systems-xl", "sdxl-random"), ("sdxl", "sdxl")):
        specs, notes = grid.plan(presets.get(name))
        assert specs and not notes and {s.backbone for s in specs} == {backbone}
        assert {s.dtype for s in specs} == {"bf16"} and {s.device for s in specs} == {"cuda"}
        if name == "systems-xl":
            assert {s.batch_size for s in specs} == {1} and "ddpo" not in {s.method for s in specs}


def test_fdxl_reference_plans_drtune_on_sdxl_with_hpsv21():
    """DRTune's FDXL setup: `--preset sdxl --protocol reference --methods drtune --tasks hpsv2`."""
    from bench import grid, presets

    specs, _ = grid.plan(presets.get("sdxl"), methods="drtune", tasks="hpsv2", protocol="reference")
    assert {(s.backbone, s.method, s.reward, s.protocol) for s in specs} == {("sdxl", "drtune", "hpsv2", "reference")}
    assert all(s.reward_kwargs.get("version") == "2.1" for s in specs)


def _save_vae(directory, **changes):
    import json

    from diffusers import AutoencoderKL

    from bench.backbones import CONFIG_DIR

    config = {**json.loads((CONFIG_DIR / "tiny-xl" / "vae.json").read_text()), **changes}
    torch.manual_seed(7)
    vae = AutoencoderKL.from_config(config)
    vae.save_pretrained(directory)
    return vae


def test_an_fp16_fixed_vae_by_path_decodes_in_fp16_to_finite_images(tmp_path):
    """An fp16-fixed VAE (config force_upcast false, as madebyollin/sdxl-vae-fp16-fix) given by --vae-path replaces
    the backbone's: its weights are loaded, it stays in fp16, and it decodes to finite images."""
    fixed = _save_vae(tmp_path / "vae-fix", force_upcast=False)
    bb = backbones.create("tiny-xl", lora_rank=None, dtype="fp16", vae_path=str(tmp_path / "vae-fix"))
    mine = dict(bb.vae.named_parameters())
    assert all(p.dtype == torch.float16 for p in mine.values())
    for name, p in fixed.named_parameters():
        assert torch.equal(mine[name].float(), p.half().float()), name
    with torch.no_grad():
        images = bb.decode(torch.randn(bb.latent_shape(2)))
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    # a pipeline directory's vae/ is found too; a VAE of another latent space is refused
    _save_vae(tmp_path / "pipe" / "vae", latent_channels=8)
    with pytest.raises(backbones.BackboneError, match="latent_channels"):
        backbones.create("tiny-xl", lora_rank=None, vae_path=str(tmp_path / "pipe"))


def test_vae_path_joins_a_cells_identity_only_when_given():
    """A cell with another VAE is another cell; cells without one keep the identity they had before the option."""
    import dataclasses

    from bench.cell import CellSpec

    base = CellSpec(method="draft-1", backbone="tiny-xl", reward="compressibility")
    assert base.cell_id == dataclasses.replace(base, vae_path=None).cell_id
    assert base.cell_id != dataclasses.replace(base, vae_path="madebyollin/sdxl-vae-fp16-fix").cell_id


@pytest.mark.parametrize("backbone,path,message", [
    ("shapes", "madebyollin/sdxl-vae-fp16-fix", "pixel-space model"),
    ("tiny-xl", "/no/such/vae", "not found"),
    ("tiny-xl", "{tmp}", "not an AutoencoderKL directory"),
])
def test_bad_vae_path_is_one_line_and_exit_2(tmp_path, capsys, backbone, path, message):
    code = main(["run", "--method", "draft-1", "--task", "compressibility", "--backbone", backbone, "--vae-path",
                 path.format(tmp=tmp_path), "--budget", "2", "--batch-size", "2", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
