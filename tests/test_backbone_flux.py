"""FLUX.1 on the project's sampler: ``tiny-flux`` (the FLUX architecture in miniature: double- and single-stream
blocks, rotary ids, a guidance embedding, CLIP-L pooled + T5, 2×2 packed latents, the resolution-dependent shift)
gives what diffusers' ``FluxPipeline`` gives for the same noise; its LoRA loads into a vanilla pipeline."""
from __future__ import annotations

import pytest
import torch

from bench import backbones, catalog
from foundation_testkit import assert_a_step_trains, perturb_trainable
from methods.sampling import FlowSchedule, sample, schedule_for

PROMPTS = ["a red circle on a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def flux():
    catalog.load_registries()
    return backbones.create("tiny-flux", lora_rank=None)


def _pipe(bb):
    pipe = bb.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipe_call(pipe, bb, noise, guidance, steps=4, output_type="pt", size=None):
    """FluxPipeline on the same initial noise: it takes latents packed."""
    b, c, h, w = noise.shape
    size = size or bb.image_size
    packed = pipe._pack_latents(noise.clone(), b, c, h, w)
    with torch.no_grad():
        return pipe(PROMPTS, latents=packed, height=size, width=size, num_inference_steps=steps,
                    guidance_scale=guidance, output_type=output_type, max_sequence_length=bb.max_sequence_length).images


@pytest.mark.parametrize("guidance", [1.0, 3.5])
def test_ode_sampler_equals_the_flux_pipeline(flux, guidance):
    noise = torch.randn(flux.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(1))
    expected = _pipe_call(_pipe(flux), flux, noise, guidance)
    with torch.no_grad():
        ours = flux.decode(sample(flux, flux.encode_prompts(PROMPTS), noise, num_steps=4, guidance_scale=guidance,
                                  eta=0.0).latents)
    assert ours.shape == expected.shape == (2, 3, 32, 32)
    assert (ours - expected).abs().max() < 1e-4
    assert isinstance(schedule_for(flux, 4, "cpu"), FlowSchedule)


def test_the_shift_follows_the_resolution_as_the_pipeline_does():
    """``mu`` grows with the image's token count: tiny-flux at 32 px has 8×8 packed tokens, at 64 px 16×16; the two
    schedules differ, and each equals the scheduler's timesteps after the pipeline's own call at that size."""
    big = backbones.create("tiny-flux", lora_rank=None, resolution=64)
    small = backbones.create("tiny-flux", lora_rank=None)
    a, b = schedule_for(small, 4, "cpu").timesteps, schedule_for(big, 4, "cpu").timesteps
    assert not torch.allclose(a, b)
    for bb, ours in ((small, a), (big, b)):
        pipe = _pipe(bb)
        noise = torch.randn(bb.latent_shape(2), generator=torch.Generator().manual_seed(3))
        _pipe_call(pipe, bb, noise, 3.5, output_type="latent", size=bb.image_size)
        assert torch.allclose(pipe.scheduler.timesteps.float(), ours, atol=1e-4)


def test_guidance_is_an_input_of_the_model_not_cfg(flux):
    """FLUX.1-dev is guidance-distilled: one transformer forward per step whatever the guidance scale, no empty-prompt
    branch in the conditioning, and the scale changes the output through the guidance embedding."""
    cond = flux.encode_prompts(PROMPTS)
    assert cond.uncond is None and cond.embeds.shape == (2, flux.max_sequence_length, 64)
    assert cond.pooled.shape == (2, flux.transformer.config.pooled_projection_dim)
    calls = []
    hook = flux.transformer.register_forward_hook(lambda m, i, o: calls.append(1))
    noise = torch.randn(flux.latent_shape(2), generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            lo = sample(flux, cond, noise, num_steps=3, guidance_scale=1.0).latents
            hi = sample(flux, cond, noise, num_steps=3, guidance_scale=5.0).latents
    finally:
        hook.remove()
    assert len(calls) == 6
    assert (lo - hi).abs().max() > 1e-4


def test_flux_lora_loads_into_a_vanilla_flux_pipeline_with_identical_output(tmp_path):
    """save_lora on tiny-flux writes the diffusers FLUX LoRA file (``transformer.`` keys, double and single blocks);
    FluxPipeline.load_lora_weights on a fresh pipeline of the same base weights reproduces our sampling."""
    from safetensors.torch import load_file

    tuned = backbones.create("tiny-flux", seed=0, lora_rank=4)
    perturb_trainable(tuned)
    noise = torch.randn(tuned.latent_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = tuned.decode(sample(tuned, tuned.encode_prompts(PROMPTS), noise, num_steps=3,
                                   guidance_scale=3.5).latents)
    keys = load_file(str(tuned.save_lora(tmp_path / "lora"))).keys()
    assert all(k.startswith("transformer.") for k in keys)
    assert any("single_transformer_blocks" in k for k in keys) and any(".add_q_proj." in k for k in keys)
    pipe = _pipe(backbones.create("tiny-flux", seed=0, lora_rank=None))
    base = _pipe_call(pipe, tuned, noise, 3.5, steps=3)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    again = _pipe_call(pipe, tuned, noise, 3.5, steps=3)
    assert (base - ours).abs().max() > 1e-3, "the LoRA must change the output"
    assert (again - ours).abs().max() < 1e-4


#: one method of each family runs in the default suite (gradient through the sampler, likelihood ratio, forward
#: process); the rest are `-m slow` (every method also steps on tiny-sd3 in the default suite, same flow sampler)
_FAST = ("draft-lv", "flow-grpo", "diffusion-nft")


@pytest.mark.parametrize("method", [m if m in _FAST else pytest.param(m, marks=pytest.mark.slow)
                                    for m in ["ddpo", "refl", "draft", "draft-k", "draft-1", "draft-lv", "alignprop",
                                              "drtune", "grpo", "flow-grpo", "diffusion-nft"]])
def test_every_method_takes_a_step_on_tiny_flux(method):
    """Every method trains the FLUX transformer's LoRA on the flow sampler (the likelihood-ratio ones through the flow
    SDE's log-prob; diffusion-nft on the forward process)."""
    extra = {"group_size": 2} if method in ("grpo", "flow-grpo", "diffusion-nft") else {}
    assert_a_step_trains(backbones.create("tiny-flux", seed=0, lora_rank=4), method, PROMPTS, 3.5, **extra)


def test_export_backbone_writes_a_flux_pipeline_that_flux_dev_backbone_path_reads(tmp_path, flux):
    """``export-backbone tiny-flux DIR`` writes the official FLUX layout; ``--backbone flux-dev --backbone-path DIR``
    loads it back to the same model (same samples for the same noise)."""
    from bench.cli import main

    assert main(["export-backbone", "tiny-flux", str(tmp_path / "flux")]) == 0
    assert {p.name for p in (tmp_path / "flux").iterdir()} >= set(catalog.LAYOUT["flux"]) | {"model_index.json"}
    back = backbones.create("flux-dev", path=str(tmp_path / "flux"), lora_rank=None)
    assert back.max_sequence_length == flux.max_sequence_length  # recorded by the export
    noise = torch.randn(flux.latent_shape(2), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = sample(flux, flux.encode_prompts(PROMPTS), noise, num_steps=3, guidance_scale=3.5).latents
        b = sample(back, back.encode_prompts(PROMPTS), noise, num_steps=3, guidance_scale=3.5).latents
    assert torch.equal(a, b)
