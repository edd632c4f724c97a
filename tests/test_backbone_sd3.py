"""SD 3.x on the project's sampler: ``tiny-sd3`` (the SD3 architecture in miniature: MMDiT with a dual-attention
block and qk RMS-norm, 16-channel VAE with a shift factor, two CLIP encoders and T5, rectified flow with shift 3) gives
what diffusers' ``StableDiffusion3Pipeline`` gives for the same noise; its LoRA loads into a vanilla pipeline."""
from __future__ import annotations

import pytest
import torch

from bench import backbones, catalog
from foundation_testkit import assert_a_step_trains, perturb_trainable
from methods.sampling import FlowSchedule, sample

PROMPTS = ["a red circle on a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def sd3():
    catalog.load_registries()
    return backbones.create("tiny-sd3", lora_rank=None)


def _pipe_kw(bb, guidance, steps=4, output_type="latent"):
    size = bb.image_size
    return dict(height=size, width=size, num_inference_steps=steps, guidance_scale=guidance, output_type=output_type,
                max_sequence_length=bb.max_sequence_length)


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_ode_sampler_equals_the_sd3_pipeline(sd3, guidance):
    noise = torch.randn(sd3.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(1))
    pipe = sd3.pipeline()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = pipe(PROMPTS, latents=noise.clone(), **_pipe_kw(sd3, guidance, output_type="pt")).images
        out = sample(sd3, sd3.encode_prompts(PROMPTS), noise, num_steps=4, guidance_scale=guidance, eta=0.0)
        ours = sd3.decode(out.latents)
    assert ours.shape == expected.shape == (2, 3, 32, 32)
    assert (ours - expected).abs().max() < 1e-4
    assert isinstance(sample.__globals__["schedule_for"](sd3, 4, "cpu"), FlowSchedule)


def test_without_t5_the_conditioning_is_zeros_as_the_pipeline_does():
    bb = backbones.create("tiny-sd3", lora_rank=None, t5=False)
    assert bb.text_encoder_3 is None
    cond = bb.encode_prompts(PROMPTS)
    assert cond.embeds.shape == (2, 77 + bb.max_sequence_length, bb.transformer.config.joint_attention_dim)
    assert torch.equal(cond.embeds[:, 77:], torch.zeros_like(cond.embeds[:, 77:]))
    noise = torch.randn(bb.latent_shape(2), generator=torch.Generator().manual_seed(2))
    pipe = bb.pipeline()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = pipe(PROMPTS, latents=noise.clone(), **_pipe_kw(bb, 4.5)).images
        ours = sample(bb, cond, noise, num_steps=4, guidance_scale=4.5).latents
    assert (ours - expected).abs().max() < 1e-4


def test_conditioning_is_sd3s(sd3):
    cond = sd3.encode_prompts(PROMPTS)
    width = sd3.transformer.config.joint_attention_dim
    clip = sd3.text_encoder.config.hidden_size + sd3.text_encoder_2.config.hidden_size
    assert cond.embeds.shape == (2, 77 + sd3.max_sequence_length, width)
    assert torch.equal(cond.embeds[:, :77, clip:], torch.zeros(2, 77, width - clip))  # CLIP zero-padded to T5's width
    assert cond.pooled.shape == (2, sd3.transformer.config.pooled_projection_dim)
    assert not torch.equal(cond.uncond, torch.zeros_like(cond.uncond))  # the empty prompt's, not zeros
    assert torch.equal(cond.repeat(2).pooled[1], cond.pooled[0])


def test_sd3_lora_loads_into_a_vanilla_sd3_pipeline_with_identical_output(tmp_path):
    """save_lora on tiny-sd3 writes the diffusers SD3 LoRA file (``transformer.`` keys, both attention streams);
    StableDiffusion3Pipeline.load_lora_weights on a fresh pipeline of the same base weights reproduces our sampling."""
    from safetensors.torch import load_file

    tuned = backbones.create("tiny-sd3", seed=0, lora_rank=4)
    perturb_trainable(tuned)
    noise = torch.randn(tuned.latent_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = sample(tuned, tuned.encode_prompts(PROMPTS), noise, num_steps=3, guidance_scale=4.5).latents
    path = tuned.save_lora(tmp_path / "lora")
    keys = load_file(str(path)).keys()
    assert all(k.startswith("transformer.") for k in keys) and any(".add_q_proj." in k for k in keys)
    pipe = backbones.create("tiny-sd3", seed=0, lora_rank=None).pipeline()
    pipe.set_progress_bar_config(disable=True)
    kw = _pipe_kw(tuned, 4.5, steps=3)
    with torch.no_grad():
        base = pipe(PROMPTS, latents=noise.clone(), **kw).images
        pipe.load_lora_weights(str(tmp_path / "lora"))
        again = pipe(PROMPTS, latents=noise.clone(), **kw).images
    assert (base - ours).abs().max() > 1e-3, "the LoRA must change the output"
    assert (again - ours).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["ddpo", "refl", "draft", "draft-k", "draft-1", "draft-lv", "alignprop", "drtune"])
def test_every_method_takes_a_step_on_tiny_sd3(method):
    """The step plan keeps its meaning on the flow sampler: each method trains the MMDiT's LoRA (DDPO through the
    flow SDE's log-prob)."""
    assert_a_step_trains(backbones.create("tiny-sd3", seed=0, lora_rank=4), method, PROMPTS, 4.5)


def test_export_backbone_writes_an_sd3_pipeline_that_sd35m_backbone_path_reads(tmp_path, sd3):
    """``export-backbone tiny-sd3 DIR`` writes the official SD3 layout; ``--backbone sd35m --backbone-path DIR``
    loads it back to the same model (same samples for the same noise)."""
    from bench.cli import main

    assert main(["export-backbone", "tiny-sd3", str(tmp_path / "sd3")]) == 0
    assert {p.name for p in (tmp_path / "sd3").iterdir()} >= {"transformer", "vae", "text_encoder", "text_encoder_2",
                                                              "text_encoder_3", "tokenizer_3", "scheduler",
                                                              "model_index.json"}
    back = backbones.create("sd35m", path=str(tmp_path / "sd3"), lora_rank=None)
    assert back.max_sequence_length == sd3.max_sequence_length  # recorded by the export
    noise = torch.randn(sd3.latent_shape(2), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = sample(sd3, sd3.encode_prompts(PROMPTS), noise, num_steps=3, guidance_scale=4.5).latents
        b = sample(back, back.encode_prompts(PROMPTS), noise, num_steps=3, guidance_scale=4.5).latents
    assert torch.equal(a, b)


def test_a_checkpoint_s_t5_length_is_the_pipeline_default_unless_its_tokenizer_is_shorter():
    """Real checkpoints keep the pipelines' defaults (SD3 256 tokens, FLUX 512: their T5 tokenizers say 512, or
    transformers' 'no limit'); a tiny model exported with 32 tokens reads back 32."""
    from types import SimpleNamespace

    from bench.backbones import flux as flux_module, sd3 as sd3_module, t5_sequence_length

    t5 = SimpleNamespace(model_max_length=512)
    assert t5_sequence_length(t5, sd3_module.T5_TOKENS) == 256 and t5_sequence_length(t5, flux_module.T5_TOKENS) == 512
    assert t5_sequence_length(SimpleNamespace(model_max_length=int(1e30)), 256) == 256
    assert t5_sequence_length(SimpleNamespace(model_max_length=32), 256) == 32 and t5_sequence_length(None, 512) == 512
