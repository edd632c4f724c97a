"""The reward zoo: registration, score formulas, pairing, gradients, dtypes, batching, missing-weight errors.

No real weights exist here: each property is proven on the real classes with random weights (reduced configs; the
full-size constructions are marked slow). The preprocessing-equals-official proof is in test_rewards_preprocessing.py,
checkpoint formats in test_rewards_checkpoints.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rewards
from rewards import RewardError, WeightsNotFoundError, testing
from rewards.aesthetic import AestheticMLP, AestheticReward
from rewards.classifier import ClassifierReward
from rewards.detection import DetectionReward
from rewards.imagereward import SCORE_MEAN, SCORE_STD
from rewards.loading import embedding

ZOO = ["aesthetic", "hpsv2", "pickscore", "imagereward", "resnet50-class", "owlvit"]
PROMPTS = ["a photo of a cat", "a red circle on a white background", "a bowl of fruit with strawberries",
           "people at a farmer's market"]


@pytest.fixture(scope="module")
def built():
    return {
        "aesthetic": testing.aesthetic(),
        "hpsv2": testing.hpsv2(),
        "pickscore": testing.pickscore(),
        "imagereward": testing.imagereward(),
        "resnet50-class": testing.resnet50_class("cat"),
        "owlvit": testing.owlvit("a strawberry", 1),
    }


def images(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def test_all_six_rewards_registered_with_descriptions():
    for name in ZOO:
        assert name in rewards.available()
        assert rewards.describe()[name]


# ----------------------------------------------------------------------------------------------------- formulas
def test_aesthetic_mlp_has_the_laion_layout_and_no_activations():
    head = AestheticMLP(768)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
                      "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
                      "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16), "layers.7.bias": (1,)}
    assert [type(m).__name__ for m in head.layers] == ["Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout",
                                                       "Linear", "Linear"]
    assert [head.layers[i].p for i in (1, 3, 5)] == [0.2, 0.2, 0.1]
    head.eval()
    x, y = torch.randn(2, 768, dtype=torch.float64), torch.randn(2, 768, dtype=torch.float64)
    head.double()
    # no activations: the head is affine, f(a x + (1-a) y) = a f(x) + (1-a) f(y) (fails for any nonlinearity)
    assert torch.allclose(head(0.3 * x + 0.7 * y), 0.3 * head(x) + 0.7 * head(y), atol=1e-10)


def test_aesthetic_scores_the_l2_normalised_embedding():
    reward = testing.aesthetic()
    x = images(3, 224)
    base = reward(x, ["p"] * 3)
    emb = reward.image_encoder(reward.preprocess(x))
    expected = reward.head(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(base, expected, atol=1e-6)
    scaled = AestheticReward(nn.Sequential(reward.image_encoder, ScaleBy(7.5)), reward.head).freeze()
    assert torch.allclose(scaled(x, ["p"] * 3), base, atol=1e-6)  # invariant to the embedding's norm
    assert not torch.allclose(reward.head(emb * 7.5).squeeze(-1), base, atol=1e-3)  # ...which an unnormalised head is not


class ScaleBy(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def test_pickscore_is_the_models_own_logit_scaled_cosine_per_pair(built):
    reward = built["pickscore"]
    clip = reward.image_encoder.model
    x = images(4, 224)
    tokens = reward.text_encoder.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    out = clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=reward.preprocess(x))
    # CLIPModel's own logits_per_image = logit_scale.exp() · cos; its diagonal is image i against prompt i
    assert torch.allclose(reward(x, PROMPTS), out.logits_per_image.diagonal(), rtol=1e-5, atol=1e-5)
    assert reward.logit_scale == pytest.approx(float(clip.logit_scale.exp()))


def test_hps_is_the_plain_cosine(built):
    reward = built["hpsv2"]
    model = reward.image_encoder.model
    x = images(4, 224)
    img = model.encode_image(reward.preprocess(x), normalize=True)
    txt = model.encode_text(reward.text_encoder.tokenizer(PROMPTS), normalize=True)
    assert torch.allclose(reward(x, PROMPTS), (img * txt).sum(-1), atol=1e-6)
    assert reward.logit_scale == 1.0


def test_imagereward_normalisation_constants():
    assert SCORE_MEAN == pytest.approx(0.16717, abs=1e-5) and SCORE_STD == pytest.approx(1.03334, abs=1e-5)
    reward = testing.imagereward()
    x = images(2, 224)
    feats = reward.encode_text(reward.vision(pixel_values=reward.preprocess(x)).last_hidden_state, PROMPTS[:2])
    raw = reward.head(feats).squeeze(-1)
    assert torch.allclose(reward(x, PROMPTS[:2]), (raw - 0.16717362830052426) / 1.0333394966054072, atol=1e-6)


def test_imagereward_pads_prompts_to_35_tokens():
    reward = testing.imagereward()
    seen = {}
    original = reward.text_encoder.forward

    def spy(**kw):
        seen["ids"] = kw["input_ids"]
        return original(**kw)

    reward.text_encoder.forward = spy
    reward(images(2, 224), ["a cat", "a " * 60 + "dog"])
    assert seen["ids"].shape == (2, 35)


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x):
        return self.logits + 0 * x.mean()


def test_classifier_scores_log_softmax_and_logsumexp_over_a_set():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 3.0, 1.0, -2.0]])
    names = ["tabby", "dog", "mouse", "bear"]
    x = images(2, 8)
    single = ClassifierReward(FixedLogits(logits), lambda z: z, "dog", names).freeze()
    assert torch.allclose(single(x, ["a", "b"]), torch.log_softmax(logits, -1)[:, 1])
    pair = ClassifierReward(FixedLogits(logits), lambda z: z, ["tabby", 2], names).freeze()
    expected = torch.log(torch.softmax(logits, -1)[:, [0, 2]].sum(-1))
    assert torch.allclose(pair(x, ["a", "b"]), expected, atol=1e-6)


def test_cat_is_imagenet_281_to_285_and_unknown_names_suggest_matches():
    assert testing.resnet50_class("cat").targets == [281, 282, 283, 284, 285]
    assert testing.resnet50_class(["tabby", 285]).targets == [281, 285]
    with pytest.raises(RewardError, match="tabby"):
        testing.resnet50_class("tabbby")


def test_detection_is_signed_max_over_boxes_and_sign_is_checked():
    class Boxes(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()), requires_grad=False)

        def forward(self, px, queries):
            assert len(queries) == px.shape[0]
            return torch.tensor([[-3.0, 1.0, 0.2], [-1.0, -2.0, -0.5]]) + self.w

    x = images(2, 8)
    add = DetectionReward(Boxes(), lambda z: z, "a strawberry", +1).freeze()
    remove = DetectionReward(Boxes(), lambda z: z, "a person", -1).freeze()
    expected = torch.sigmoid(torch.tensor([1.0, -0.5]))
    assert torch.allclose(add(x, ["", ""]), expected)
    assert torch.allclose(remove(x, ["", ""]), -expected)
    for bad in (0, 2, True, 0.5):
        with pytest.raises(RewardError):
            DetectionReward(Boxes(), lambda z: z, "x", bad)


def test_embedding_accepts_transformers_4_tensors_and_5_output_objects():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.randn(2, 8)
    assert embedding(t) is t
    assert embedding(BaseModelOutputWithPooling(last_hidden_state=torch.randn(2, 3, 8), pooler_output=t)) is t


# ------------------------------------------------------------------------------------------------------ pairing
@pytest.mark.parametrize("name", ["pickscore", "hpsv2", "imagereward"])
def test_each_image_is_scored_with_its_own_prompt(built, name):
    reward = built[name]
    x = images(4, 224, seed=1)
    perm = [2, 0, 3, 1]
    scores = reward(x, PROMPTS)
    permuted = reward(x, [PROMPTS[i] for i in perm])
    singles = torch.stack([reward(x[i : i + 1], [PROMPTS[perm[i]]])[0] for i in range(4)])
    assert torch.allclose(permuted, singles, atol=1e-4)
    # the prompts matter (so scoring everything against prompt 0 would be caught above)
    assert (permuted - scores).abs().max() > 1e-4
    assert not torch.allclose(permuted, torch.stack([reward(x[i : i + 1], [PROMPTS[perm[0]]])[0] for i in range(4)]), atol=1e-4)


# ------------------------------------------------------------------------------------- batches, gradient, dtype
@pytest.mark.parametrize("name", ZOO)
def test_batches_of_any_size_match_single_images(built, name):
    reward = built[name]
    x = images(3, 96, seed=2)
    batch = reward(x, PROMPTS[:3])
    assert batch.shape == (3,) and batch.dtype == torch.float32
    singles = torch.cat([reward(x[i : i + 1], [PROMPTS[i]]) for i in range(3)])
    assert torch.allclose(batch, singles, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ZOO)
def test_gradient_reaches_the_pixels(built, name):
    reward = built[name]
    x = images(2, 128, seed=3).requires_grad_(True)
    reward(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[0].abs().sum() > 0) and (x.grad[1].abs().sum() > 0)
    assert all(not p.requires_grad for p in reward.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["aesthetic", "pickscore", "hpsv2", "imagereward", "owlvit"])
def test_half_precision_forward_returns_fp32_close_to_fp32(name, dtype):
    build = {"aesthetic": testing.aesthetic, "pickscore": testing.pickscore, "hpsv2": testing.hpsv2,
             "imagereward": testing.imagereward, "owlvit": testing.owlvit}[name]
    reward32, reward_half = build(), build().to(dtype)
    x = images(2, 224, seed=4).requires_grad_(True)
    ref = reward32(x, PROMPTS[:2])
    out = reward_half(x, PROMPTS[:2])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    tolerance = {torch.bfloat16: 0.1, torch.float16: 0.02}[dtype]  # 8-bit vs 11-bit mantissas, through a deep network
    assert ((out - ref).abs() / ref.abs()).max().item() < tolerance
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_resnet_half_precision_forward():
    reward = testing.resnet50_class("cat").to(torch.bfloat16)
    out = reward(images(1, 224), ["a bear"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_input_checks_are_one_line_reward_errors(built):
    with pytest.raises(RewardError, match="one prompt per image"):
        built["pickscore"](images(2, 64), ["only one"])


# ----------------------------------------------------------------------------------------- missing weights
@pytest.mark.parametrize("name,kwargs,needle", [
    ("aesthetic", {}, "head_path="),
    ("hpsv2", {"version": "2.0"}, "HPS_v2_compressed.pt"),
    ("hpsv2", {"version": "2.1"}, "HPS_v2.1_compressed.pt"),
    ("pickscore", {}, "pass "),
    ("imagereward", {}, "ImageReward.pt"),
    ("owlvit", {}, "model="),
    ("resnet50-class", {}, "weights_path="),
])
def test_offline_without_weights_is_one_clear_line(monkeypatch, tmp_path, name, kwargs, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        rewards.create(name, **kwargs)
    message = str(err.value)
    assert "\n" not in message and needle in message and name in message


def test_wrong_local_path_names_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        rewards.create("aesthetic", head_path=str(missing))
    with pytest.raises(WeightsNotFoundError, match="nope"):
        rewards.create("owlvit", model=str(tmp_path / "nope"))


def test_hps_version_is_checked():
    with pytest.raises(RewardError, match="version"):
        rewards.create("hpsv2", version="3")
