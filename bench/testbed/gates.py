"""The testbed's quality gates, measured on held-out captions: ``python -m bench testbed gates``.

Gates (numbers as in the issue; a missed gate is reported with its margin, never relaxed):

- shape:      generated images of held-out single-object captions whose shape the classifier judges right ≥ 0.85
- colour:     the same images whose dominant non-background colour (pixel statistics, ``dominant_color``) is the
              prompt's ≥ 0.85
- alignment:  AUC of the alignment reward on generated images of held-out captions, own caption vs a shuffled one ≥ 0.8
- classifier: accuracy of the shape classifier on rendered held-out single-object scenes ≥ 0.95
- aesthetic:  Spearman of the learned aesthetic head against the gold score on rendered held-out scenes ≥ 0.8
- detector:   accuracy of the detector (present iff max sigmoid > 0.5) on rendered held-out scenes, present and
              absent queries ≥ 0.9, and on each kind of query (``query_kind``: present, absent with a present
              object's colour, absent with a present object's shape, ...) ≥ 0.8
- caption:    on generated images of held-out captions (1-3 objects; the alignment gate's images), read by pixel
              statistics (``read_scene``): the background the caption names ≥ 0.85; in multi-object captions, every
              named object's colour present ≥ 0.85 (per caption: all of them); the number of objects ≥ 0.8
- speed:      16 images, 20 DDIM steps, classifier-free guidance, ≤ 3 s (median of 3 runs after one warm-up)

Sampling uses the default sampler settings: DDIM, eta 0, 20 steps, guidance ``models.DEFAULT_GUIDANCE``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import generate_images, models, shapes_backbone, shapes_flow_backbone, world
from .gold import background, gold_aesthetic
from .world import COLORS, COLOR_NAMES, SHAPES

THRESHOLDS = {"shape": 0.85, "colour": 0.85, "background": 0.85, "multi_object_colours": 0.85, "object_count": 0.8,
              "alignment_auc": 0.8, "classifier_accuracy": 0.95,
              "aesthetic_spearman": 0.8, "detector_accuracy": 0.9, "detector_worst_query_kind": 0.8, "speed_s": 3.0}
PALETTE = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32) / 255


def detector_accuracy(model, tokenizer, scenes, images: torch.Tensor, rng) -> tuple[float, dict]:
    """Accuracy of "present iff max over cells of sigmoid > 0.5" on each scene's queries (``detector_queries``), overall
    and per kind of query."""
    from .rewards import detector_pixels
    from .train import detector_queries

    correct, kinds = [], []
    for scene, img in zip(scenes, images):
        qs = detector_queries(scene, rng)
        ids, mask = models.tokenize(tokenizer, [q for q, _ in qs])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=detector_pixels(img[None])).logits[0]
        present = torch.sigmoid(logits).amax(0) > 0.5  # [cells, Q] -> per query
        correct += [bool(p) == (i >= 0) for p, (_, i) in zip(present, qs)]
        kinds += [query_kind(scene, q, i) for q, i in qs]
    by_kind = {k: {"queries": int(sum(kk == k for kk in kinds)),
                   "accuracy": round(float(np.mean([c for c, kk in zip(correct, kinds) if kk == k])), 4)}
               for k in dict.fromkeys(sorted(kinds))}
    return float(np.mean(correct)), by_kind


def dominant_color(images: torch.Tensor, threshold: float = 0.25) -> list[str | None]:
    """Per image: the palette colour most foreground pixels are nearest to. Foreground = pixels farther than
    ``threshold`` (RGB Euclidean, [0,1]) from the background (median border colour). None when nothing stands out."""
    bg = background(images)
    out = []
    for img, b in zip(images, bg):
        px = img.flatten(1).T  # [HW,3]
        fg = px[(px - b.flatten()).norm(dim=1) > threshold]
        if len(fg) == 0:
            out.append(None)
            continue
        nearest = torch.cdist(fg, PALETTE).argmin(dim=1)
        out.append(COLOR_NAMES[int(torch.bincount(nearest, minlength=len(COLOR_NAMES)).argmax())])
    return out


BACKGROUND_PALETTE = torch.tensor([world.BACKGROUNDS[b] for b in world.BACKGROUND_NAMES], dtype=torch.float32) / 255
#: a foreground pixel within this RGB distance of a palette colour is "solid" (anti-aliased edges, which blend the
#: object's colour with the background's, mostly are not, so they do not count as another colour)
SOLID = 0.15
#: a colour is present with at least this many solid pixels; an object is a connected foreground region this large
MIN_PIXELS = 3


@dataclass(frozen=True)
class Reading:
    background: str
    colours: frozenset[str]
    count: int


def read_scene(images: torch.Tensor, threshold: float = 0.25) -> list[Reading]:
    """What an image shows, by pixel statistics: the background (the named background nearest the border median),
    the colours present (palette colours with at least ``MIN_PIXELS`` solid pixels) and the number of objects
    (4-connected regions of foreground pixels, farther than ``threshold`` from the background, of at least
    ``MIN_PIXELS`` pixels). On 1,024 rendered held-out scenes it reads 1.0 / 1.0 / 0.974 (the misses: two objects
    placed half a pixel apart, joined by their anti-aliased edges), so the count gate's 0.8 is not the reader's
    limit (``tests/test_testbed.py``)."""
    from scipy import ndimage

    bg = background(images)
    names = torch.cdist(bg.flatten(1), BACKGROUND_PALETTE).argmin(1)
    out = []
    for img, b, name in zip(images, bg, names.tolist()):
        px = img.flatten(1).T  # [HW,3]
        fg = (px - b.flatten()).norm(dim=1) > threshold
        dist = torch.cdist(px[fg], PALETTE)
        near, idx = dist.min(dim=1)
        counts = torch.bincount(idx[near < SOLID], minlength=len(COLOR_NAMES))
        colours = frozenset(COLOR_NAMES[i] for i in range(len(COLOR_NAMES)) if counts[i] >= MIN_PIXELS)
        labels, n = ndimage.label(fg.view(img.shape[1:]).numpy())
        sizes = np.bincount(labels.ravel())[1:]
        out.append(Reading(world.BACKGROUND_NAMES[name], colours, int((sizes >= MIN_PIXELS).sum())))
    return out


def caption_following(images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Fractions of images that show their caption's background, all its named colours (multi-object captions only)
    and its number of objects; plus the per-background and per-object figures behind them."""
    readings = read_scene(images)
    parsed = [world.parse_caption(c) for c in captions]
    bg_ok = [r.background == b for r, (_, b) in zip(readings, parsed)]
    multi = [(r, objs) for r, (objs, _) in zip(readings, parsed) if len(objs) > 1]
    out = {"background": float(np.mean(bg_ok)),
           "multi_object_colours": float(np.mean([all(c in r.colours for c, _ in objs) for r, objs in multi])),
           "object_count": float(np.mean([r.count == len(objs) for r, (objs, _) in zip(readings, parsed)]))}
    out["background_by_name"] = {b: round(float(np.mean([ok for ok, (_, bb) in zip(bg_ok, parsed) if bb == b])), 4)
                                 for b in world.BACKGROUND_NAMES if any(bb == b for _, bb in parsed)}
    out["multi_object_colours_per_object"] = float(np.mean([c in r.colours for r, objs in multi for c, _ in objs]))
    out["multi_object_captions"] = len(multi)
    return out


def query_kind(scene: world.Scene, query: str, index: int) -> str:
    """present; or absent and sharing the colour (not the shape) of a present object, its shape (not the colour),
    both with different objects, or neither."""
    if index >= 0:
        return "present"
    colour, shape = query.split()
    same_colour = any(o.color == colour for o in scene.objects)
    same_shape = any(o.shape == shape for o in scene.objects)
    return {(True, False): "absent, same colour", (False, True): "absent, same shape",
            (True, True): "absent, colour and shape of different objects"}.get((same_colour, same_shape),
                                                                                "absent, unrelated")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half): the Mann-Whitney AUC."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def shuffled(captions: list[str], rng: np.random.Generator) -> list[str]:
    """A permutation of the captions in which no image gets a caption with the same text as its own (a random
    permutation, then swaps that remove each collision)."""
    perm = [captions[i] for i in rng.permutation(len(captions))]
    for _ in range(100):
        bad = [i for i in range(len(perm)) if perm[i] == captions[i]]
        if not bad:
            return perm
        for i in bad:
            j = int(rng.integers(len(perm)))
            if perm[j] != captions[i] and perm[i] != captions[j]:
                perm[i], perm[j] = perm[j], perm[i]
    raise RuntimeError("could not shuffle the captions without collisions")  # pragma: no cover


def heldout_single_prompts(n: int) -> list[str]:
    captions = world.all_single_captions("heldout")
    return [captions[i % len(captions)] for i in range(n)]


def single_object_accuracy(backbone, prompts: list[str], guidance_scale: float, seed: int = 0,
                           classifier=None) -> tuple[float, float, torch.Tensor]:
    """(shape accuracy by the classifier, colour accuracy by pixel statistics, images) for single-object prompts."""
    from rewards import create

    classifier = classifier or create("shapes-classifier", target="circle")
    images = generate_images(backbone, prompts, seed=seed, guidance_scale=guidance_scale)
    with torch.no_grad():
        logits = classifier.model(classifier.preprocess(images))
    want = [world.parse_caption(p)[0][0] for p in prompts]
    shape = float(np.mean([SHAPES[int(i)] == s for i, (_, s) in zip(logits.argmax(1), want)]))
    colour = float(np.mean([d == c for d, (c, _) in zip(dominant_color(images), want)]))
    return shape, colour, images


def guidance_sweep(values=(2.0, 3.0, 5.0, 7.5), repeats: int = 2, seed: int = 100) -> dict:
    """Choose the default guidance on *training* captions (every training single-object caption, ``repeats`` times),
    never on the held-out ones the gates use."""
    backbone = shapes_backbone(lora_rank=None)
    prompts = world.all_single_captions("train") * repeats
    out = {}
    for g in values:
        shape, colour, _ = single_object_accuracy(backbone, prompts, g, seed=seed)
        out[g] = {"shape": shape, "colour": colour}
        print(f"guidance {g}: shape {shape:.3f} colour {colour:.3f} ({len(prompts)} training prompts)", flush=True)
    return out


def measure_speed(backbone, guidance_scale: float, repeats: int = 3) -> dict:
    prompts = heldout_single_prompts(16)
    generate_images(backbone, prompts, seed=0, guidance_scale=guidance_scale)  # warm-up (allocator, oneDNN)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate_images(backbone, prompts, seed=r, guidance_scale=guidance_scale)
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "runs_s": [round(t, 3) for t in times],
            "threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 2)}


def run_gates(samples: int = 256, guidance_scale: float | None = None, seed: int = 0, out: str | None = None,
              verbose: bool = True, backbone: str = "shapes", model_dir: str | None = None) -> dict:
    """Measure the gates on one testbed diffusion model: ``shapes`` (the DDIM model) or ``shapes-flow`` (the
    rectified-flow one); both are held to the same thresholds. ``model_dir``: a candidate model's directory (what
    ``testbed train --out-dir`` wrote) instead of the committed one; the reward networks are the committed ones."""
    from rewards import create

    guidance_scale = models.DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
    rng = np.random.default_rng(seed)
    model_name = backbone
    factory = shapes_flow_backbone if model_name == "shapes-flow" else shapes_backbone
    backbone = factory(lora_rank=None, path=model_dir)
    classifier = create("shapes-classifier", target="circle")
    alignment = create("shapes-alignment")
    aesthetic = create("shapes-aesthetic")
    detector_model = models.load_detector()
    detector_tok = models.load_tokenizer(models.WEIGHTS_DIR / "detector")
    measured: dict[str, float] = {}
    details: dict[str, object] = {"guidance_scale": guidance_scale, "num_steps": models.DEFAULT_STEPS, "eta": 0.0,
                                  "samples": samples, "seed": seed, "backbone": model_name,
                                  **({"model_dir": str(model_dir)} if model_dir else {})}

    def log(msg):
        if verbose:
            print(msg, flush=True)

    # 1-2. shape and colour of generated single-object held-out prompts
    t0 = time.time()
    prompts = heldout_single_prompts(samples)
    measured["shape"], measured["colour"], images = single_object_accuracy(backbone, prompts, guidance_scale, seed,
                                                                           classifier)
    details["generated_single_gold_mean"] = float(gold_aesthetic(images).mean())
    log(f"generated {samples} single-object images in {time.time() - t0:.0f}s")

    # 3. alignment AUC on generated images of held-out captions (1-3 objects)
    _, scenes = world.generate(samples, seed=seed + 1, split="heldout")
    captions = [s.caption for s in scenes]
    gen_images = generate_images(backbone, captions, seed=seed + 1, guidance_scale=guidance_scale)
    with torch.no_grad():
        own = alignment(gen_images, captions).numpy()
        other = alignment(gen_images, shuffled(captions, rng)).numpy()
    measured["alignment_auc"] = auc(own, other)
    following = caption_following(gen_images, captions)
    for key in ("background", "multi_object_colours", "object_count"):
        measured[key] = following.pop(key)
    details["caption_following"] = following

    # 4. reward models on rendered held-out scenes
    rendered_single, single_scenes = world.generate(samples, seed=seed + 2, split="heldout", num_objects=1)
    x = world.to_float(rendered_single)
    with torch.no_grad():
        pred = classifier.model(classifier.preprocess(x)).argmax(1)
    measured["classifier_accuracy"] = float(np.mean([SHAPES[int(p)] == s.objects[0].shape
                                                     for p, s in zip(pred, single_scenes)]))
    rendered, scenes = world.generate(samples, seed=seed + 3, split="heldout")
    x = world.to_float(rendered)
    from scipy.stats import spearmanr

    with torch.no_grad():
        proxy = aesthetic(x, [s.caption for s in scenes]).numpy()
    measured["aesthetic_spearman"] = float(spearmanr(proxy, gold_aesthetic(x).numpy()).statistic)

    accuracy, by_kind = detector_accuracy(detector_model, detector_tok, scenes, x, rng)
    measured["detector_accuracy"] = accuracy
    measured["detector_worst_query_kind"] = min(v["accuracy"] for v in by_kind.values())
    details["detector_queries"] = sum(v["queries"] for v in by_kind.values())
    details["detector_accuracy_by_query"] = by_kind  # where the errors are

    # 5. speed
    speed = measure_speed(backbone, guidance_scale)
    measured["speed_s"] = speed["median_s"]
    details["speed"] = speed

    gates = {}
    for name, value in measured.items():
        limit = THRESHOLDS[name]
        passed = value <= limit if name == "speed_s" else value >= limit
        gates[name] = {"value": round(value, 4), "threshold": limit, "passed": bool(passed),
                       "margin": round(limit - value if name == "speed_s" else value - limit, 4)}
    result = {"gates": gates, "details": details}
    out_path = Path(out) if out else models.WEIGHTS_DIR / "gates.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    if verbose:
        _table(gates)
        print(f"wrote {out_path}")
    return result


def _table(gates: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="shapes testbed quality gates (held-out captions)")
    for col in ("gate", "value", "threshold", "passed", "margin"):
        table.add_column(col)
    for name, g in gates.items():
        op = "≤" if name == "speed_s" else "≥"
        table.add_row(name, f"{g['value']:.4f}", f"{op} {g['threshold']}", "yes" if g["passed"] else "NO",
                      f"{g['margin']:+.4f}")
    Console().print(table)
