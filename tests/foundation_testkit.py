"""Helpers shared by the foundation tests (sampler, DRaFT, backbones): imported as a module, not from conftest."""
import torch

from rewards.base import Reward


def randomize_lora(backbone, scale: float = 0.5, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


class MeanPixelReward(Reward):
    """A simple differentiable reward for gradient tests: a fixed random linear functional of the pixels, so every
    pixel's gradient differs (a wrong pairing or truncation changes the gradient)."""

    name = "test-linear"

    def __init__(self, size: int = 32, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(3, size, size, generator=gen))

    def score(self, images, prompts):
        return (images * self.w).mean(dim=(1, 2, 3))


def lora_grads(backbone) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in backbone.unet.named_parameters()
            if p.requires_grad and p.grad is not None}


def record_unet_calls(backbone):
    """Wrap ``predict_noise`` to record, per call, (timestep, grad enabled, input requires grad, input)."""
    calls = []
    original = backbone.predict_noise

    def wrapped(latents, timestep, cond, guidance_scale):
        calls.append({"t": int(timestep), "grad": torch.is_grad_enabled(), "input_requires_grad": latents.requires_grad,
                      "input": latents.detach().clone(), "batch": latents.shape[0]})
        return original(latents, timestep, cond, guidance_scale)

    backbone.predict_noise = wrapped
    return calls


def perturb_trainable(backbone, scale: float = 0.05) -> None:
    """Add noise to every trainable (LoRA) parameter: peft's init leaves B = 0, so a LoRA saved as initialised
    would change nothing and a round trip through a pipeline could not fail."""
    with torch.no_grad():
        for p in backbone.trainable_parameters():
            p.add_(scale * torch.randn_like(p))


def assert_a_step_trains(backbone, method: str, prompts, guidance_scale: float, **kw) -> None:
    """One ``method`` step on ``backbone`` (3 sampling steps, the JPEG surrogate reward) counts its samples, has a
    finite gradient and changes the trainable weights."""
    import methods
    import rewards

    m = methods.create(method, backbone, rewards.create("jpeg-compressibility-surrogate"), num_steps=3,
                       guidance_scale=guidance_scale, **kw)
    before = [p.detach().clone() for p in backbone.trainable_parameters()]
    out = m.step(prompts)
    assert out["samples"] >= len(prompts) and torch.isfinite(torch.tensor(out["grad_norm"]))
    assert any(not torch.equal(a, p) for a, p in zip(before, backbone.trainable_parameters())), "nothing was trained"
