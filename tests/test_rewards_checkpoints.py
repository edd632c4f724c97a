"""Checkpoints written in each official format (keys, nesting, dtype) load strictly; wrong or truncated files fail
with one clear line. Random models stand in for the real weights (same classes, reduced configs)."""
from __future__ import annotations

import pytest
import torch

import rewards
from rewards import RewardError, WeightsNotFoundError, testing
from rewards.aesthetic import load_aesthetic_head
from rewards.clip_score import load_hps_checkpoint
from rewards.imagereward import load_imagereward_checkpoint

X = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a photo of a cat", "a bowl of fruit with strawberries"]


def truncated_copy(path, tmp_path):
    data = path.read_bytes()
    out = tmp_path / ("truncated-" + path.name)
    out.write_bytes(data[: len(data) // 2])
    return out


# --------------------------------------------------------------------------------------------------- aesthetic
def official_aesthetic_head(seed=0):
    """The LAION file: a flat state dict, fp32, keys layers.{0,2,4,6,7}.{weight,bias}."""
    g = torch.Generator().manual_seed(seed)
    dims = [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    state = {}
    for idx, (o, i) in zip((0, 2, 4, 6, 7), dims):
        state[f"layers.{idx}.weight"] = torch.randn(o, i, generator=g) / i ** 0.5
        state[f"layers.{idx}.bias"] = torch.randn(o, generator=g)
    return state


def test_aesthetic_head_file_loads_strictly(tmp_path):
    state = official_aesthetic_head()
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, path)
    head = load_aesthetic_head(path)
    for k, v in state.items():
        assert torch.equal(head.state_dict()[k], v)
    with pytest.raises(WeightsNotFoundError, match="not a readable checkpoint"):
        load_aesthetic_head(truncated_copy(path, tmp_path))
    del state["layers.7.bias"]
    state["layers.8.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(WeightsNotFoundError, match="missing.*layers.7.bias.*unexpected.*layers.8.weight"):
        load_aesthetic_head(tmp_path / "wrong.pth")


def test_aesthetic_factory_from_local_paths(tmp_path):
    reference = testing.aesthetic(seed=1)
    reference.image_encoder.model.save_pretrained(tmp_path / "clip")
    torch.save(official_aesthetic_head(), tmp_path / "head.pth")
    reward = rewards.create("aesthetic", clip=str(tmp_path / "clip"), head_path=str(tmp_path / "head.pth"))
    reference.head.load_state_dict(official_aesthetic_head())
    assert torch.allclose(reward(X, PROMPTS), reference(X, PROMPTS), atol=1e-5)


# -------------------------------------------------------------------------------------------------------- HPS
def test_hps_checkpoint_loads_strictly_from_fp16_state_dict(tmp_path):
    source, target = testing.hps_model(seed=1), testing.hps_model(seed=2)
    path = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {k: v.half() for k, v in source.state_dict().items()}}, path)  # the compressed files are fp16
    load_hps_checkpoint(target, path)
    for k, v in source.state_dict().items():
        assert target.state_dict()[k].dtype == torch.float32
        assert torch.equal(target.state_dict()[k], v.half().float()), k
    torch.save(source.state_dict(), tmp_path / "flat.pt")
    with pytest.raises(RewardError, match="state_dict"):
        load_hps_checkpoint(target, tmp_path / "flat.pt")
    with pytest.raises(WeightsNotFoundError, match="not a readable checkpoint"):
        load_hps_checkpoint(target, truncated_copy(path, tmp_path))
    state = {k: v for k, v in source.state_dict().items() if k != "logit_scale"}
    torch.save({"state_dict": state}, tmp_path / "missing.pt")
    with pytest.raises(WeightsNotFoundError, match="missing.*logit_scale"):
        load_hps_checkpoint(target, tmp_path / "missing.pt")


# -------------------------------------------------------------------------------------------------- PickScore, OWL-ViT
def test_pickscore_factory_from_local_transformers_directory(tmp_path):
    reference = testing.pickscore(seed=3)
    reference.image_encoder.model.save_pretrained(tmp_path / "model")
    testing.clip_tokenizer().save_pretrained(tmp_path / "processor")
    reward = rewards.create("pickscore", model=str(tmp_path / "model"), processor=str(tmp_path / "processor"))
    assert torch.allclose(reward(X, PROMPTS), reference(X, PROMPTS), atol=1e-4)


def test_owlvit_factory_from_local_transformers_directory(tmp_path):
    reference = testing.owlvit("a strawberry", -1, seed=4)
    reference.detector.model.save_pretrained(tmp_path)
    reference.detector.tokenizer.save_pretrained(tmp_path)
    reward = rewards.create("owlvit", query="a strawberry", sign=-1, model=str(tmp_path))
    assert torch.allclose(reward(X, PROMPTS), reference(X, PROMPTS), atol=1e-5)


# ------------------------------------------------------------------------------------------------- ResNet-50
def test_resnet_weights_path_loads_torchvision_state_dict(tmp_path):
    reference = testing.resnet50_class("cat", seed=5)
    torch.save(reference.model.state_dict(), tmp_path / "resnet50.pth")
    reward = rewards.create("resnet50-class", target="cat", weights_path=str(tmp_path / "resnet50.pth"))
    assert torch.allclose(reward(X, PROMPTS), reference(X, PROMPTS), atol=1e-4)
    with pytest.raises(WeightsNotFoundError, match="not a readable checkpoint"):
        rewards.create("resnet50-class", weights_path=str(truncated_copy(tmp_path / "resnet50.pth", tmp_path)))


# ----------------------------------------------------------------------------------------------- ImageReward
def official_imagereward_state_dict(vision_layers, text_layers, vision_width, text_width, vocab, positions=512,
                                    image_size=224, patch=16, embed_dim=256, seed=0):
    """ImageReward.pt's layout, written out from ImageReward's module tree (BLIP's timm-style ViT, med.py's BERT,
    the contrastive projections, the MLP), independently of our key map."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    v, t = vision_width, text_width
    sd = {"blip.visual_encoder.cls_token": r(1, 1, v),
          "blip.visual_encoder.pos_embed": r(1, (image_size // patch) ** 2 + 1, v),
          "blip.visual_encoder.patch_embed.proj.weight": r(v, 3, patch, patch),
          "blip.visual_encoder.patch_embed.proj.bias": r(v)}
    for i in range(vision_layers):
        p = f"blip.visual_encoder.blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(v), p + "norm1.bias": r(v), p + "attn.qkv.weight": r(3 * v, v),
                   p + "attn.qkv.bias": r(3 * v), p + "attn.proj.weight": r(v, v), p + "attn.proj.bias": r(v),
                   p + "norm2.weight": 1 + r(v), p + "norm2.bias": r(v), p + "mlp.fc1.weight": r(4 * v, v),
                   p + "mlp.fc1.bias": r(4 * v), p + "mlp.fc2.weight": r(v, 4 * v), p + "mlp.fc2.bias": r(v)})
    sd.update({"blip.visual_encoder.norm.weight": 1 + r(v), "blip.visual_encoder.norm.bias": r(v)})
    p = "blip.text_encoder."
    sd.update({p + "embeddings.position_ids": torch.arange(positions).expand(1, -1),
               p + "embeddings.word_embeddings.weight": r(vocab, t), p + "embeddings.position_embeddings.weight": r(positions, t),
               p + "embeddings.LayerNorm.weight": 1 + r(t), p + "embeddings.LayerNorm.bias": r(t)})
    for i in range(text_layers):
        q = f"{p}encoder.layer.{i}."
        for block, kv_width in (("attention", t), ("crossattention", v)):
            sd.update({q + f"{block}.self.query.weight": r(t, t), q + f"{block}.self.query.bias": r(t),
                       q + f"{block}.self.key.weight": r(t, kv_width), q + f"{block}.self.key.bias": r(t),
                       q + f"{block}.self.value.weight": r(t, kv_width), q + f"{block}.self.value.bias": r(t),
                       q + f"{block}.output.dense.weight": r(t, t), q + f"{block}.output.dense.bias": r(t),
                       q + f"{block}.output.LayerNorm.weight": 1 + r(t), q + f"{block}.output.LayerNorm.bias": r(t)})
        sd.update({q + "intermediate.dense.weight": r(4 * t, t), q + "intermediate.dense.bias": r(4 * t),
                   q + "output.dense.weight": r(t, 4 * t), q + "output.dense.bias": r(t),
                   q + "output.LayerNorm.weight": 1 + r(t), q + "output.LayerNorm.bias": r(t)})
    sd.update({"blip.vision_proj.weight": r(embed_dim, v), "blip.vision_proj.bias": r(embed_dim),
               "blip.text_proj.weight": r(embed_dim, t), "blip.text_proj.bias": r(embed_dim)})
    for idx, (o, i) in zip((0, 2, 4, 6, 7), [(1024, t), (128, 1024), (64, 128), (16, 64), (1, 16)]):
        sd[f"mlp.layers.{idx}.weight"], sd[f"mlp.layers.{idx}.bias"] = r(o, i), r(o)
    return sd


def test_imagereward_official_layout_loads_through_the_explicit_key_map(tmp_path):
    reward = testing.imagereward()
    tok = testing.bert_tokenizer()
    sd = official_imagereward_state_dict(2, 2, 64, 64, len(tok))
    path = tmp_path / "ImageReward.pt"
    torch.save(sd, path)
    before = reward(X, PROMPTS)
    load_imagereward_checkpoint(reward, path)
    own = reward.state_dict()
    assert torch.equal(own["vision.embeddings.class_embedding"], sd["blip.visual_encoder.cls_token"])
    assert torch.equal(own["vision.encoder.layers.1.self_attn.qkv.weight"], sd["blip.visual_encoder.blocks.1.attn.qkv.weight"])
    assert torch.equal(own["vision.encoder.layers.0.self_attn.projection.bias"], sd["blip.visual_encoder.blocks.0.attn.proj.bias"])
    assert torch.equal(own["vision.post_layernorm.weight"], sd["blip.visual_encoder.norm.weight"])
    assert torch.equal(own["text_encoder.encoder.layer.1.crossattention.self.key.weight"],
                       sd["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"])
    assert torch.equal(own["head.layers.7.weight"], sd["mlp.layers.7.weight"])
    assert not torch.allclose(reward(X, PROMPTS), before)


@pytest.mark.parametrize("break_it,needle", [
    (lambda sd: sd.pop("blip.visual_encoder.blocks.1.norm2.bias"), "missing.*layer_norm2"),
    (lambda sd: sd.__setitem__("blip.visual_encoder.extra.weight", torch.zeros(1)), "unexpected.*extra"),
    (lambda sd: sd.__setitem__("mlp.layers.0.weight", torch.zeros(1024, 32)), "wrong shapes.*head.layers.0.weight"),
])
def test_imagereward_wrong_files_fail_clearly(tmp_path, break_it, needle):
    reward = testing.imagereward()
    sd = official_imagereward_state_dict(2, 2, 64, 64, len(testing.bert_tokenizer()))
    break_it(sd)
    torch.save(sd, tmp_path / "ImageReward.pt")
    with pytest.raises(WeightsNotFoundError, match=needle):
        load_imagereward_checkpoint(reward, tmp_path / "ImageReward.pt")


def test_imagereward_truncated_file(tmp_path):
    sd = official_imagereward_state_dict(2, 2, 64, 64, len(testing.bert_tokenizer()))
    torch.save(sd, tmp_path / "ImageReward.pt")
    with pytest.raises(WeightsNotFoundError, match="not a readable checkpoint"):
        load_imagereward_checkpoint(testing.imagereward(), truncated_copy(tmp_path / "ImageReward.pt", tmp_path))


# -------------------------------------------------------------------------------------------- full size (slow)
@pytest.mark.slow
def test_full_size_imagereward_loads_the_official_layout(tmp_path):
    import json

    tok = testing.bert_tokenizer()
    sd = official_imagereward_state_dict(24, 12, 1024, 768, 30524)
    torch.save(sd, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps({"vocab_size": 30524, "hidden_size": 768, "num_hidden_layers": 12,
                                                          "num_attention_heads": 12, "intermediate_size": 3072,
                                                          "add_cross_attention": True, "encoder_width": 768}))
    tok.save_pretrained(tmp_path / "tokenizer")
    reward = rewards.create("imagereward", checkpoint=str(tmp_path / "ImageReward.pt"),
                            med_config=str(tmp_path / "med_config.json"), tokenizer=str(tmp_path / "tokenizer"))
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    reward(x, ["a cat"]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.slow
def test_full_size_hps_factory_loads_a_vit_h_checkpoint(tmp_path):
    source = testing.hps_model(full=True, seed=1)
    torch.save({"state_dict": {k: v.half() for k, v in source.state_dict().items()}}, tmp_path / "HPS_v2_compressed.pt")
    del source
    reward = rewards.create("hpsv2", version="2.0", checkpoint=str(tmp_path / "HPS_v2_compressed.pt"))
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    reward(x, ["a cat"]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
