"""Random-weight builds of every zoo architecture, for tests and ``rewards/check_preprocessing.py``.

No weights can be downloaded where the tests run, so the pipeline is proven on the same classes with random weights:
``full=True`` gives the real architecture, ``full=False`` a reduced config of the same class at the real input
resolution and patch size (fast on a CPU). Tokenizers are built offline: CLIP's BPE from the vocabulary that
open_clip ships (the same 49408-token vocabulary as the hub tokenizers), BERT's from a small word list.
"""
from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from .aesthetic import AestheticMLP, AestheticReward
from .classifier import IMAGENET_GROUPS, ClassifierReward, imagenet_preprocess
from .clip_score import ClipScoreReward, hps_preprocess
from .detection import DetectionReward, OwlViTDetector, owlvit_preprocess
from .encoders import HFImageEncoder, HFTextEncoder, OpenCLIPImageEncoder, OpenCLIPTextEncoder
from .imagereward import ImageReward, build_imagereward
from .preprocess import clip_preprocess

BERT_WORDS = ("a an the of on in with and photo picture painting drawing cat dog bear mouse red blue green white black "
              "circle square triangle bowl fruit strawberry strawberries people market farmer beautiful sunset house "
              "tree sky mountain river city car portrait woman man child flower garden").split()


@functools.lru_cache(maxsize=None)
def _tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="reward-zoo-"))


@functools.lru_cache(maxsize=None)
def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP BPE tokenizer (transformers ``CLIPTokenizer``) rebuilt from open_clip's bundled merges file.

    Vocabulary order as in CLIP: 256 byte symbols, the same with ``</w>``, one token per merge, then the two specials.
    OWL-ViT pads with "!" (``pad_token="!"``)."""
    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer

    merges = gzip.open(oct.default_bpe(), "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(oct.bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    d = _tmpdir() / f"clip-tokenizer-{abs(hash(pad_token))}"
    d.mkdir(exist_ok=True)
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), pad_token=pad_token)


@functools.lru_cache(maxsize=None)
def bert_tokenizer():
    """A bert-base-uncased-style WordPiece tokenizer over a small word list, with BLIP's [DEC]/[ENC] added."""
    from transformers import BertTokenizer

    d = _tmpdir() / "bert-tokenizer"
    d.mkdir(exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (d / "vocab.txt").write_text("\n".join(specials + list("abcdefghijklmnopqrstuvwxyz") + BERT_WORDS) + "\n")
    tok = BertTokenizer(str(d / "vocab.txt"), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def aesthetic(full: bool = False, seed: int = 0) -> AestheticReward:
    """CLIP ViT-L/14 (transformers ``CLIPVisionModelWithProjection``) + the LAION MLP, random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _seed(seed)
    cfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, projection_dim=768,
               image_size=224, patch_size=14, hidden_act="quick_gelu")
    if not full:
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
    return AestheticReward(HFImageEncoder(model), AestheticMLP(768)).freeze()


def pickscore(full: bool = False, seed: int = 0) -> ClipScoreReward:
    """CLIP ViT-H/14 as a transformers ``CLIPModel`` (PickScore's class), its logit scale, random weights."""
    from transformers import CLIPConfig, CLIPModel

    _seed(seed)
    vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
                  patch_size=14, hidden_act="gelu")
    text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, hidden_act="gelu",
                vocab_size=49408, max_position_embeddings=77)
    proj = 1024
    if not full:
        vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        proj = 64
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=proj, logit_scale_init_value=4.6052))
    model.eval()
    tokenizer = clip_tokenizer()
    return ClipScoreReward(HFImageEncoder(model), HFTextEncoder(model, tokenizer), clip_preprocess,
                           float(model.logit_scale.detach().exp()), name="pickscore").freeze()


def hps_model(full: bool = False, seed: int = 0) -> nn.Module:
    """open_clip ``CLIP``: ViT-H-14 (``full``) or a reduced config of the same class."""
    import open_clip

    _seed(seed)
    if full:
        return open_clip.create_model("ViT-H-14", pretrained=None).eval()
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    return open_clip.CLIP(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=14, image_size=224),
                          text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)).eval()


def hpsv2(full: bool = False, seed: int = 0) -> ClipScoreReward:
    import open_clip

    model = hps_model(full, seed)
    return ClipScoreReward(OpenCLIPImageEncoder(model), OpenCLIPTextEncoder(model, open_clip.get_tokenizer("ViT-H-14")),
                           hps_preprocess, None, name="hpsv2.1").freeze()


def imagereward(full: bool = False, seed: int = 0) -> ImageReward:
    """BLIP ViT-L/16 + BLIP's BERT with cross-attention + MLP (transformers BLIP classes), random weights."""
    _seed(seed)
    tok = bert_tokenizer()
    if full:
        return build_imagereward(tok).eval().freeze()
    med = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, hidden_size=64,
               num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)  # 4x width, as BERT and BLIP's ViT
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
    return build_imagereward(tok, med, vision).eval().freeze()


def imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def resnet50_class(target="cat", resize_size: int = 232, seed: int = 0) -> ClassifierReward:
    """torchvision ResNet-50 (always the full architecture: it is cheap), random weights."""
    from torchvision.models import resnet50

    _seed(seed)
    return ClassifierReward(resnet50().eval(), functools.partial(imagenet_preprocess, resize_size=resize_size, crop_size=224),
                            target, imagenet_class_names(), name="resnet50-class", groups=IMAGENET_GROUPS).freeze()


def owlvit(query: str = "a strawberry", sign: int = 1, full: bool = False, seed: int = 0) -> DetectionReward:
    """transformers ``OwlViTForObjectDetection`` (base-patch32 at 768 px, or reduced width/depth), random weights."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection

    _seed(seed)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=768,
                  patch_size=32)
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=16)
    proj = 512
    if not full:
        vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        proj = 64
    model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=proj)).eval()
    with torch.no_grad():  # random weights saturate the sigmoid (logits ~ ±100); the trained head's are O(1):
        head = model.class_head  # unit logit scale (elu(0)+1), zero shift, so logits = cos(box, query) ∈ [-1, 1]
        for layer in (head.logit_scale, head.logit_shift):
            layer.weight.zero_()
            layer.bias.zero_()
    return DetectionReward(OwlViTDetector(model, clip_tokenizer("!")), owlvit_preprocess, query, sign, name="owlvit").freeze()
