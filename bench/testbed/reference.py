"""Reference outputs of the committed weights on fixed inputs (``weights/reference_outputs.safetensors``).

Written once after training (``python -m bench.testbed.reference``); the tests reload the weights and compare, so a
changed or corrupted weight file, config or tokenizer is caught.
"""
from __future__ import annotations

import torch

from . import models, world

REFERENCE_FILE = models.WEIGHTS_DIR / "reference_outputs.safetensors"


def fixed_inputs():
    images, scenes = world.generate(4, seed=1234, split="heldout")
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(4, 3, world.RESOLUTION, world.RESOLUTION, generator=gen)
    return world.to_float(images), [s.caption for s in scenes], noise


@torch.no_grad()
def compute() -> dict[str, torch.Tensor]:
    from rewards import create

    from . import shapes_backbone

    images, captions, noise = fixed_inputs()
    backbone = shapes_backbone(lora_rank=None)
    cond = backbone.encode_prompts(captions)
    out = {
        "text_embeds": cond.embeds,
        "unet_eps_t500": backbone.predict_noise(noise, torch.tensor(500), cond, guidance_scale=1.0),
        "unet_eps_t500_cfg": backbone.predict_noise(noise, torch.tensor(500), cond, guidance_scale=3.0),
    }
    for name, kw in [("shapes-alignment", {}), ("shapes-aesthetic", {}), ("shapes-classifier", {"target": "square"}),
                     ("shapes-detector", {"query": "red circle"}), ("shapes-gold-aesthetic", {})]:
        out[name] = create(name, **kw)(images, captions)
    return {k: v.float().contiguous() for k, v in out.items()}


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    save_file(compute(), str(REFERENCE_FILE))
    print(f"wrote {REFERENCE_FILE}")


if __name__ == "__main__":
    main()
