"""The shapes testbed: the world generator, the gold score, the committed weights and rewards, the training scripts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bench.testbed  # noqa: F401  (registers the backbone and rewards)
from bench.testbed import gold, models, train, world

torch.set_num_threads(2)
REWARDS = {"shapes-alignment": {}, "shapes-aesthetic": {}, "shapes-classifier": {"target": "square"},
           "shapes-detector": {"query": "red circle"}, "shapes-detector-remove": {"query": "red circle", "sign": -1}}


# ------------------------------------------------------------------------------------------------------------ world
def test_generator_is_deterministic_per_seed():
    a, sa = world.generate(16, seed=7)
    b, sb = world.generate(16, seed=7)
    c, _ = world.generate(16, seed=8)
    assert torch.equal(a, b) and [s.caption for s in sa] == [s.caption for s in sb]
    assert not torch.equal(a, c)
    assert a.shape == (16, 3, world.RESOLUTION, world.RESOLUTION) and a.dtype == torch.uint8


def test_world_has_the_promised_variety():
    assert len(world.SHAPES) >= 3 and len(world.COLORS) >= 6
    _, scenes = world.generate(400, seed=0)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    radii = [o.radius for s in scenes for o in s.objects]
    xs = [o.cx for s in scenes for o in s.objects]
    assert max(radii) - min(radii) > 3 and max(xs) - min(xs) > 10


def test_held_out_compositions_never_appear_in_training():
    _, train_scenes = world.generate(1500, seed=1, split="train")
    _, held_scenes = world.generate(300, seed=2, split="heldout")
    train_caps = {s.caption for s in train_scenes}
    held_caps = {s.caption for s in held_scenes}
    assert held_caps and not (train_caps & held_caps)
    assert not set(world.all_single_captions("heldout")) & set(world.all_single_captions("train"))
    # every (colour, shape) pair is still seen in training singles: held out is a composition, not a word
    seen = {tuple(world.parse_caption(c)[0][0]) for c in world.all_single_captions("train")}
    assert seen == {(c, s) for c in world.COLOR_NAMES for s in world.SHAPES}


def test_caption_grammar_round_trips():
    cap = world.caption_of(["red circle", "blue square", "orange triangle"], "white")
    assert cap == "a red circle, a blue square and an orange triangle on a white background"
    assert world.parse_caption(cap) == ([("red", "circle"), ("blue", "square"), ("orange", "triangle")], "white")
    ids, _ = models.tokenize(models.build_tokenizer(), [cap])
    assert models.SPECIAL_TOKENS["unk"] not in models.build_tokenizer().convert_ids_to_tokens(ids[0])


def test_rendered_colours_and_shapes_are_what_the_caption_says():
    rng = np.random.default_rng(0)
    scene = world.sample_scene(rng, objects=[("red", "square")], background="white")
    img = world.render(scene).reshape(-1, 3)
    counts = {tuple(c): n for c, n in zip(*np.unique(img, axis=0, return_counts=True))}
    assert counts[world.BACKGROUNDS["white"]] > counts[world.COLORS["red"]] > 20


# ------------------------------------------------------------------------------------------------------------- gold
def _scene_image(cx, cy, r=5.0, shape="circle"):
    scene = world.Scene((world.Obj("red", shape, cx, cy, r),), "white")
    return world.to_float(torch.from_numpy(world.render(scene)).permute(2, 0, 1)[None])


def test_gold_prefers_centred_symmetric_objects_and_penalises_texture():
    centred, corner = _scene_image(12, 12), _scene_image(6, 6)
    assert gold.gold_aesthetic(centred) > gold.gold_aesthetic(corner) + 1
    noisy = (centred + 0.3 * torch.randn(centred.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert gold.gold_aesthetic(noisy) < gold.gold_aesthetic(centred) - 1
    x, _ = world.generate(64, seed=3)
    g = gold.gold_aesthetic(world.to_float(x))
    assert g.shape == (64,) and g.std() > 0.5 and 0 <= g.min() and g.max() <= 10


# ---------------------------------------------------------------------------------------- committed weights, rewards
def test_registered_names():
    from bench import backbones
    from rewards import available

    assert "shapes" in backbones.available()
    for name in ("shapes-alignment", "shapes-aesthetic", "shapes-classifier", "shapes-detector",
                 "shapes-gold-aesthetic"):
        assert name in available()


def test_committed_weights_reproduce_reference_outputs():
    from safetensors.torch import load_file

    from bench.testbed import reference

    expected = load_file(str(reference.REFERENCE_FILE))
    got = reference.compute()
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4, msg=lambda m: f"{key}: {m}")


def test_weights_are_small_and_documented():
    import json

    total = sum(p.stat().st_size for p in models.WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 2**20
    manifest = json.loads((models.WEIGHTS_DIR / "manifest.json").read_text())
    for part in train.PARTS:
        entry = manifest[part]
        assert entry["command"].startswith("python -m bench testbed train " + part)
        assert {"seed", "steps", "wall_time_s", "final_losses"} <= set(entry)


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_testbed_reward_is_differentiable_wrt_pixels(name):
    from rewards import create

    kw = dict(REWARDS[name])
    reward = create(name.replace("-remove", ""), **kw)
    assert reward.differentiable
    x, scenes = world.generate(3, seed=5)
    pixels = world.to_float(x).requires_grad_(True)
    scores = reward(pixels, [s.caption for s in scenes])
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.parameters())


def test_detector_sign_flips_the_score():
    from rewards import create

    x, scenes = world.generate(2, seed=6)
    caps = [s.caption for s in scenes]
    add, remove = create("shapes-detector", query="red circle"), create("shapes-detector", query="red circle", sign=-1)
    torch.testing.assert_close(add(world.to_float(x), caps), -remove(world.to_float(x), caps))


def test_the_committed_detector_reads_shape_not_only_colour():
    """Scenes rendered with one object: the detector says its own query is present and the query of the same colour
    with another shape absent (the ViT detector answered "present" to all of these), through the reward the tasks
    use (``shapes-detector``: sign · max over cells of the sigmoid)."""
    from rewards import create

    from bench.testbed.world import SHAPES

    x, scenes = world.generate(24, seed=11, split="heldout", num_objects=1)
    images = world.to_float(x)
    own, other, made = [], [], {}

    def score(query, img, caption):
        made.setdefault(query, create("shapes-detector", query=query))
        return float(made[query](img[None], [caption]))

    for img, scene in zip(images, scenes):
        obj = scene.objects[0]
        wrong = SHAPES[(SHAPES.index(obj.shape) + 1) % len(SHAPES)]
        own.append(score(f"{obj.color} {obj.shape}", img, scene.caption))
        other.append(score(f"{obj.color} {wrong}", img, scene.caption))
    assert sum(o > 0.5 for o in own) >= 22 and sum(o < 0.5 for o in other) >= 22, (own, other)


def test_gold_reward_is_evaluation_only():
    from rewards import create

    reward = create("shapes-gold-aesthetic")
    assert not reward.differentiable
    x, scenes = world.generate(2, seed=6)
    torch.testing.assert_close(reward(world.to_float(x), [s.caption for s in scenes]),
                               gold.gold_aesthetic(world.to_float(x)))


def test_backbone_samples_images_and_grid(tmp_path):
    from bench.testbed import generate_images, sample_grid, shapes_backbone

    backbone = shapes_backbone(lora_rank=4)
    assert backbone.trainable_parameters() and backbone.latent_shape(2) == (2, 3, 24, 24)
    imgs = generate_images(backbone, ["a red circle on a white background"] * 2, num_steps=4)
    assert imgs.shape == (2, 3, 24, 24) and 0 <= imgs.min() and imgs.max() <= 1
    path = sample_grid(backbone, ["a red circle on a white background"], tmp_path / "grid.png", num_per_prompt=2,
                       num_steps=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- training smoke tests
@pytest.mark.parametrize("part,steps,kw", [
    ("diffusion", 20, {"batch_size": 4}),
    ("flow", 20, {"batch_size": 4}),
    ("clip", 25, {"batch_size": 32}),
    ("aesthetic", 40, {"num_images": 256, "batch_size": 64, "clip_dir": models.WEIGHTS_DIR / "clip"}),
    ("classifier", 25, {"batch_size": 32}),
    ("detector", 25, {"batch_size": 16}),
])
def test_a_few_training_steps_lower_the_loss(part, steps, kw, tmp_path):
    history: list[float] = []
    train.TRAINERS[part](steps, 0, tmp_path, history=history, **kw)
    assert len(history) == steps
    k = max(3, steps // 5)
    assert np.mean(history[-k:]) < np.mean(history[:k]), history


def test_the_flow_trainer_writes_a_rectified_flow_model_that_shapes_flow_loads(tmp_path):
    """``train flow`` saves the UNet, text encoder, tokenizer and a FlowMatchEulerDiscreteScheduler under flow/;
    ``shapes-flow`` with that path samples it with the flow sampler. ``init_from`` starts from the DDIM model's
    weights: two warm-up steps (learning rate 1e-5) leave every parameter within 1e-2 of them (a fresh init would
    differ everywhere)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bench import backbones
    from methods.sampling import FlowSchedule, schedule_for

    train.TRAINERS["flow"](2, 0, tmp_path, batch_size=4, init_from=models.WEIGHTS_DIR)
    assert {p.name for p in (tmp_path / "flow").iterdir()} == {"unet", "text_encoder", "tokenizer", "scheduler"}
    bb = backbones.create("shapes-flow", path=str(tmp_path / "flow"), lora_rank=None)
    assert isinstance(bb.scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(schedule_for(bb, 4, "cpu"), FlowSchedule)
    from bench.testbed import generate_images

    imgs = generate_images(bb, ["a red circle on a white background"] * 2, num_steps=4)
    assert imgs.shape == (2, 3, 24, 24) and torch.isfinite(imgs).all()
    ddim = models.load_unet()
    start = {n: p for n, p in ddim.named_parameters()}
    moved = [n for n, p in bb.unet.named_parameters() if not torch.allclose(p, start[n], atol=1e-2)]
    assert not moved, moved[:3]


def test_caption_reader_reads_rendered_scenes_and_catches_a_wrong_caption():
    """The caption-following gates' reader is right on rendered scenes (they show their caption exactly), and the
    same images scored against other scenes' captions fail the gates."""
    from bench.testbed.gates import caption_following

    images, scenes = world.generate(256, seed=11, split="heldout")
    captions = [s.caption for s in scenes]
    right = caption_following(world.to_float(images), captions)
    assert right["background"] == 1.0 and right["multi_object_colours"] == 1.0, right
    assert right["object_count"] >= 0.95, right
    wrong = caption_following(world.to_float(images), captions[1:] + captions[:1])
    assert wrong["background"] < 0.6 and wrong["multi_object_colours"] < 0.6 and wrong["object_count"] < 0.7, wrong


def test_gate_query_kinds():
    from bench.testbed.gates import query_kind

    scene = world.Scene(objects=(world.Obj("red", "circle", 6.0, 6.0, 4.0), world.Obj("blue", "square", 16.0, 16.0, 4.0)),
                        background="white")
    assert query_kind(scene, "red circle", 0) == "present"
    assert query_kind(scene, "red square", -1) == "absent, colour and shape of different objects"
    assert query_kind(scene, "red triangle", -1) == "absent, same colour"
    assert query_kind(scene, "green circle", -1) == "absent, same shape"
    assert query_kind(scene, "green triangle", -1) == "absent, unrelated"


def test_left_to_right_training_captions_name_the_objects_by_their_position():
    """``--caption-order left-to-right``: the same scene (image unchanged), its objects named by their centre's x;
    the default keeps the world's caption (drawing order)."""
    from bench.testbed import world
    from bench.testbed.train import training_caption

    scene = world.Scene((world.Obj("red", "circle", 18.0, 6.0, 3.0), world.Obj("blue", "square", 4.0, 12.0, 3.0),
                         world.Obj("green", "triangle", 11.0, 18.0, 3.0)), "gray")
    assert training_caption(scene) == scene.caption == ("a red circle, a blue square and a green triangle on a gray "
                                                        "background")
    assert training_caption(scene, "left-to-right") == ("a blue square, a green triangle and a red circle on a gray "
                                                        "background")
    assert world.parse_caption(training_caption(scene, "left-to-right"))[1] == "gray"


def test_grow_unet_keeps_the_source_function_and_trains_the_new_blocks(tmp_path):
    """A ``base`` UNet (cross-attention at 12 and 6 px) grown into the ``text-24px`` layout computes the same noise
    prediction to the last bit (new transformer blocks start with a zero output projection), its new blocks receive
    gradient, and a source of another width is refused."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    base = models.unet_config("base")
    UNet2DConditionModel(**base).save_pretrained(tmp_path / "old")
    old, grown = models.load_unet(tmp_path / "old"), models.grow_unet(tmp_path / "old", models.unet_config("text-24px"))
    x, t, text = torch.randn(2, 3, 24, 24), torch.tensor([5, 900]), torch.randn(2, models.MAX_LENGTH, 64)
    with torch.no_grad():
        assert torch.equal(old(x, t, encoder_hidden_states=text).sample, grown(x, t, encoder_hidden_states=text).sample)
    assert len(grown.down_blocks[0].attentions) == 1 and len(grown.up_blocks[2].attentions) == 2  # up: one per resnet
    grown(x, t, encoder_hidden_states=text).sample.square().mean().backward()
    new_out = grown.down_blocks[0].attentions[0].proj_out.weight
    assert new_out.grad is not None and new_out.grad.abs().sum() > 0
    UNet2DConditionModel(**{**base, "block_out_channels": (16, 32, 48)}).save_pretrained(tmp_path / "narrow")
    with pytest.raises(ValueError, match="cannot grow"):
        models.grow_unet(tmp_path / "narrow", models.unet_config("text-24px"))
    with pytest.raises(ValueError, match="unknown UNet layout"):
        models.unet_config("nope")
