"""The testbed's networks: configs, the word-level tokenizer, and loading the committed weights.

Every network is a library class that a real system uses, configured small:

=================  ======================================================  ============================================
part               class                                                   stands in for
=================  ======================================================  ============================================
tokenizer          ``transformers.PreTrainedTokenizerFast`` (WordLevel)    the CLIP BPE tokenizer
text encoder       ``transformers.CLIPTextModel``                          SD 1.x's CLIP ViT-L/14 text tower
diffusion model    ``diffusers.UNet2DConditionModel`` (pixel space, eps)   SD's latent UNet
scheduler          ``diffusers.DDIMScheduler``                             SD's DDIM/PNDM schedule
flow model         the same UNet + text encoder, velocity-prediction,      SD 3.5 / FLUX's rectified flow
                   ``FlowMatchEulerDiscreteScheduler`` (``flow/``)
CLIP               ``transformers.CLIPModel`` (image + text towers)        PickScore / HPSv2 CLIP-H
aesthetic head     ``AestheticHead`` (MLP) on CLIP image features          LAION aesthetic v2 MLP on CLIP ViT-L/14
classifier         ``transformers.ResNetForImageClassification``           torchvision ResNet-50 (ImageNet)
detector           ``transformers.OwlViTForObjectDetection``               google/owlvit-base-patch32
=================  ======================================================  ============================================

Weights live in ``bench/testbed/weights/<part>/`` in the diffusers/transformers ``save_pretrained`` layout
(``config.json`` + safetensors), written by ``python -m bench testbed train <part>``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .world import BACKGROUND_NAMES, COLOR_NAMES, RESOLUTION, SHAPES

WEIGHTS_DIR = Path(__file__).parent / "weights"
#: the folders under WEIGHTS_DIR that each registered testbed name reads. A grid cell's weights fingerprint covers
#: only the folders of its backbone and rewards, so retraining one network invalidates only the cells that use it.
WEIGHT_FOLDERS = {"shapes": ("unet", "text_encoder", "scheduler", "tokenizer"), "shapes-flow": ("flow",),
                  "shapes-alignment": ("clip",), "shapes-aesthetic": ("clip", "aesthetic"),
                  "shapes-classifier": ("classifier",), "shapes-detector": ("detector",),
                  "shapes-gold-aesthetic": ()}
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "bos": "<bos>", "eos": "<eos>"}
# ids: [PAD]=0 [UNK]=1 <bos>=2, words, <eos> last. <eos> has the highest id because OWL-ViT's text tower pools at
# argmax(input_ids); CLIPTextModel (eos_token_id != 2) pools at the first <eos>: both land on <eos>.
VOCAB = [SPECIAL_TOKENS[k] for k in ("pad", "unk", "bos")] + [
    "a", "an", "and", "on", "background", ",", *SHAPES, *COLOR_NAMES, *BACKGROUND_NAMES] + [SPECIAL_TOKENS["eos"]]
EOS_ID = len(VOCAB) - 1
MAX_LENGTH = 20  # the longest caption is 16 words + bos/eos
#: default classifier-free guidance scale of the testbed (chosen on training captions, see gates.py)
DEFAULT_GUIDANCE = 3.0
DEFAULT_STEPS = 20


def _check(path: Path, part: str) -> Path:
    if not path.exists():
        from rewards.base import WeightsNotFoundError

        raise WeightsNotFoundError(
            f"shapes testbed {part} weights not found at {path}; they are committed with the repository "
            f"(restore them with git) or rebuilt with `python -m bench testbed train {part}`")
    return path


# ----------------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer():
    """A word-level tokenizer over the closed vocabulary: lower-case, split on whitespace and punctuation,
    ``<bos> ... <eos>``, padded with ``[PAD]``. Built offline; saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_LENGTH, pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"], bos_token=SPECIAL_TOKENS["bos"], eos_token=SPECIAL_TOKENS["eos"])


def load_tokenizer(path: Path | None = None):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(_check(path or WEIGHTS_DIR / "tokenizer", "tokenizer")))


def tokenize(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return enc.input_ids, enc.attention_mask


# -------------------------------------------------------------------------------------------------------- configs
def _text_tower(hidden: int = 64, layers: int = 2) -> dict:
    return dict(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, pad_token_id=0, bos_token_id=2,
                eos_token_id=EOS_ID, projection_dim=hidden)


def text_encoder_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**_text_tower())


#: the diffusion UNet's layouts: ``base`` (the committed model) has cross-attention at 12 and 6 px and in the middle;
#: ``text-24px`` adds caption-only transformer blocks at 24 px (``only_cross_attention``: self-attention over 576
#: pixels would cost 2.5x the step), +0.08 M parameters, 1.4x the training step, 1.57x the sampling time. Tried for
#: the colour leaks of multi-object captions (the text encoder's shape tokens carry their own colour, a linear probe
#: reads it at 0.997, yet both objects get one colour): 4,107 steps grown from the committed model lifted "every named
#: colour present" from 0.674 to 0.769, short of the 0.85 gate (``train_diffusion``'s docstring), so the committed
#: model keeps ``base``.
UNET_LAYOUTS = {
    "base": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    "text-24px": dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                      only_cross_attention=(True, False, False)),
}


def unet_config(layout: str = "base") -> dict:
    """3 levels (24 -> 12 -> 6 px), cross-attention as ``UNET_LAYOUTS[layout]`` says: ~2.7 M parameters, a batch-32
    forward in ~100 ms on 2 CPU cores (the speed gate)."""
    if layout not in UNET_LAYOUTS:
        raise ValueError(f"unknown UNet layout {layout!r}; valid: {', '.join(UNET_LAYOUTS)}")
    return dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=(32, 64, 96),
                layers_per_block=1, mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=64,
                attention_head_dim=4, norm_num_groups=16, **UNET_LAYOUTS[layout])


def grow_unet(source: Path, config: dict):
    """The UNet of ``config`` (e.g. ``unet_config("text-24px")``) initialised from a trained one with fewer blocks: every
    tensor they share is copied, and each transformer block the source lacks starts with its output projection at
    zero, so the grown network computes the source's function exactly until training moves the new blocks.
    Refuses a source whose tensors do not all fit (a different width, not a subset)."""
    from diffusers import UNet2DConditionModel

    old = load_unet(source)
    grown = UNet2DConditionModel(**config)
    try:
        result = grown.load_state_dict(old.state_dict(), strict=False)
    except RuntimeError as e:  # a shared tensor of another shape
        raise ValueError(f"cannot grow {source} into this UNet: {str(e).splitlines()[1].strip()}") from None
    if result.unexpected_keys or any(".attentions." not in k for k in result.missing_keys):
        raise ValueError(f"cannot grow {source} into this UNet: unexpected {result.unexpected_keys[:3]}, "
                         f"missing outside attention blocks {[k for k in result.missing_keys if '.attentions.' not in k][:3]}")
    with torch.no_grad():
        for name, module in grown.named_modules():
            if name.endswith("proj_out") and any(k.startswith(name + ".") for k in result.missing_keys):
                module.weight.zero_()
                module.bias.zero_()
    return grown


def scheduler_config() -> dict:
    """Cosine (squaredcos_cap_v2) betas suit pixel space. Sampling timesteps are SD's "leading" spacing with
    ``steps_offset=1`` (951, 901, ..., 1 at 20 steps), not "trailing" (999, 949, ...): at t=999 the cosine schedule
    has alpha-bar = 2e-9, so an eps-prediction's error is amplified ~1/sqrt(alpha-bar) into x0_hat and the first DDIM
    step leaves visible noise everywhere (measured: total variation 0.36 vs 0.10). At t=951 alpha-bar = 0.0056, about
    SD's terminal 0.0047. Training draws t uniformly from 0..999 either way; ``clip_sample`` is off so that gradient
    methods see no clamp."""
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def flow_scheduler_config() -> dict:
    """Plain rectified flow (shift 1): sigmas evenly spaced from 1 to 0, the Euler step between them. FLUX's
    resolution rule would give a shift of ≈ 1.7 at 24 × 24 = 576 values per channel; at 20 steps the plain schedule
    already spends its first steps where the layout and background are decided."""
    return dict(num_train_timesteps=1000, shift=1.0)


def clip_config():
    from transformers import CLIPConfig

    vision = dict(image_size=RESOLUTION, patch_size=4, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_channels=3)
    return CLIPConfig(text_config=_text_tower(), vision_config=vision, projection_dim=64)


def classifier_config():
    from transformers import ResNetConfig

    return ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                        layer_type="basic", hidden_act="relu", num_labels=len(SHAPES),
                        id2label=dict(enumerate(SHAPES)), label2id={s: i for i, s in enumerate(SHAPES)})


def detector_config() -> dict:
    """The convolutional detector (``ConvDetector``): a 24 px image to a 6 × 6 grid of cells, 96 channels."""
    return dict(kind="conv-owl", widths=(32, 64, 96), blocks=(1, 1, 2), embed_dim=64, text=_text_tower())


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(8, width),
                                  nn.SiLU(), nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(8, width))

    def forward(self, x):
        return torch.nn.functional.silu(x + self.body(x))


class DetectorOutput(dict):
    """``logits`` [B, cells, queries per image] and ``pred_boxes`` [B, cells, 4] (cx, cy, w, h in [0, 1]), as
    transformers' OWL-ViT output names them."""

    __getattr__ = dict.__getitem__


class ConvDetector(nn.Module):
    """The testbed's open-vocabulary detector: OWL-ViT's head on a small convolutional trunk.

    At 24 px a ViT did not separate a circle from a square (``train_detector``'s docstring), while convolutions do (the
    ResNet classifier is at 1.000). The trunk (stride 1, 2, 2: 24 → 12 → 6 px, residual blocks, a receptive field
    that covers the image) gives one feature per cell of a 6 × 6 grid; OWL-ViT's head turns each into a class
    embedding compared with the text query's embedding (cosine, then a per-cell learned shift and scale) and a box.
    Called like ``OwlViTForObjectDetection``: ``model(input_ids, attention_mask, pixel_values).logits`` with the
    queries of every image stacked, so the OWL-ViT reward wrapper scores it unchanged (sign · max over cells of the
    sigmoid)."""

    def __init__(self, config: dict):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        self.config = dict(config)
        w, blocks, e = config["widths"], config["blocks"], config["embed_dim"]
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], 3, padding=1, bias=False), nn.GroupNorm(8, w[0]), nn.SiLU()]
        for i, (width, n) in enumerate(zip(w, blocks)):
            if i:
                layers += [nn.Conv2d(w[i - 1], width, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, width),
                           nn.SiLU()]
            layers += [_Residual(width) for _ in range(n)]
        self.trunk = nn.Sequential(*layers)
        self.class_head = nn.Conv2d(w[-1], e, 1)
        self.logit_shift = nn.Conv2d(w[-1], 1, 1)
        self.logit_scale = nn.Conv2d(w[-1], 1, 1)
        self.box_head = nn.Conv2d(w[-1], 4, 1)
        self.text = CLIPTextModelWithProjection(CLIPTextConfig(**{**config["text"], "projection_dim": e}))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor):
        feats = self.trunk(pixel_values)  # [B, C, g, g]
        b = feats.shape[0]
        cls = nn.functional.normalize(self.class_head(feats).flatten(2).transpose(1, 2), dim=-1)  # [B, cells, E]
        query = self.text(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        query = nn.functional.normalize(query, dim=-1).view(b, -1, query.shape[-1])  # [B, Q, E]
        shift = self.logit_shift(feats).flatten(2).transpose(1, 2)  # [B, cells, 1]
        scale = nn.functional.elu(self.logit_scale(feats).flatten(2).transpose(1, 2)) + 1
        logits = (torch.einsum("bpe,bqe->bpq", cls, query) + shift) * scale  # OWL-ViT's class head
        boxes = torch.sigmoid(self.box_head(feats).flatten(2).transpose(1, 2))
        return DetectorOutput(logits=logits, pred_boxes=boxes)

    def save_pretrained(self, directory: Path) -> None:
        import json

        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: Path) -> "ConvDetector":
        import json

        from safetensors.torch import load_file

        directory = Path(directory)
        model = cls(json.loads((directory / "config.json").read_text()))
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model


# ------------------------------------------------------------------------------------------------------ loaders
def load_unet(path: Path | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(_check(path or WEIGHTS_DIR / "unet", "diffusion")),
                                                torch_dtype=torch.float32)  # the flow UNet is stored in fp16


def load_text_encoder(path: Path | None = None):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(str(_check(path or WEIGHTS_DIR / "text_encoder", "diffusion")))


def load_scheduler(path: Path | None = None):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_pretrained(str(_check(path or WEIGHTS_DIR / "scheduler", "diffusion")))


def load_flow_scheduler(path: Path | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(str(_check(path or WEIGHTS_DIR / "flow" / "scheduler",
                                                                      "flow")))


def load_clip(path: Path | None = None):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(_check(path or WEIGHTS_DIR / "clip", "clip"))).eval()


def load_classifier(path: Path | None = None):
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification.from_pretrained(str(_check(path or WEIGHTS_DIR / "classifier",
                                                                    "classifier"))).eval()


def load_detector(path: Path | None = None) -> ConvDetector:
    return ConvDetector.from_pretrained(_check(path or WEIGHTS_DIR / "detector", "detector")).eval()


def features(output) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features (the embedding is ``pooler_output``)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPPatchFeatures(nn.Module):
    """The testbed CLIP image tower's patch tokens, flattened ([B, 36*64]): the image features the aesthetic head reads.

    Why not the pooled 64-d contrastive embedding (what LAION uses on ViT-L/14)? Captions never mention position or
    size, so a 3-layer CLIP trained on them keeps little of either in its pooled embedding, and the gold score is
    mostly about composition: measured on held-out scenes, heads on the pooled embedding reach Spearman 0.60
    (linear) / 0.68 (MLP); on the patch tokens 0.83 (linear) / 0.94 (MLP). Still the same CLIP, frozen.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:].flatten(1)


class AestheticHead(nn.Module):
    """MLP (d -> 256 -> 64 -> 1, GELU) on standardised L2-normalised features; the standardisation (feature mean/std
    of the training set) is a buffer saved with the weights. Unlike LAION's head it has activations: the gold score is
    not linear in the features (linear: Spearman 0.83, MLP 0.94 on held-out scenes)."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.layers = nn.Sequential(nn.Linear(input_dim, 256), nn.GELU(), nn.Linear(256, 64), nn.GELU(),
                                    nn.Linear(64, 1))

    def set_standardisation(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0) + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.mean) / self.std)
