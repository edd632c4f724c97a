"""The shapes world: a seeded generator of small captioned images, and the caption splits.

An image is 24x24 RGB: 1-3 objects (3 shapes x 6 colours, varied size and position) on a plain background, with a
caption from a small grammar::

    a red circle on a white background
    a red circle and a blue square on a black background
    a red circle, a blue square and a green triangle on a gray background

Shapes are rendered analytically at 4x resolution and box-filtered down (anti-aliased edges). Everything is driven by
a ``numpy.random.Generator`` seeded by the caller, so a seed fixes every pixel.

Splits. A *composition* is the caption itself (the multiset of coloured shapes and the background). The held-out split
holds compositions never seen in training: single-object compositions (colour, shape, background) with
``background == (colour + shape) % 3`` for the (colour, shape) pairs with even ``colour + shape`` (9 of the 54), and
multi-object compositions whose CRC32 is 0 mod 5. Every (colour, shape) pair still appears in training, with other
backgrounds and in other scenes, so held-out captions test composition, not new words.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import torch

RESOLUTION = 24
SUPERSAMPLE = 4
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
COLOR_NAMES = tuple(COLORS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
#: probability of 1, 2, 3 objects in a scene
NUM_OBJECTS_P = (0.5, 0.3, 0.2)


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    cx: float  # centre, in pixels of the final image
    cy: float
    radius: float  # half the bounding-box side

    @property
    def words(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str

    @property
    def caption(self) -> str:
        return caption_of([o.words for o in self.objects], self.background)


def caption_of(objects: list[str], background: str) -> str:
    """``["red circle", "blue square"]``, ``"white"`` -> "a red circle and a blue square on a white background"."""
    parts = [f"{article(o)} {o}" for o in objects]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} on {article(background)} {background} background"


#: every word the caption grammar uses
VOCABULARY = frozenset({"a", "an", "and", "on", "background", *SHAPES, *COLOR_NAMES, *BACKGROUND_NAMES})


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` outside the testbed's caption grammar (the model has never seen them: it draws blobs)."""
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    return list(dict.fromkeys(w for w in words if w not in VOCABULARY))


def vocabulary_warning(prompt: str) -> str | None:
    """One line for a prompt with words outside the grammar, else None."""
    bad = unknown_words(prompt)
    if not bad:
        return None
    return (f"warning: the shapes testbed's captions never use {', '.join(repr(w) for w in bad)} (prompt {prompt!r}); "
            f"it knows {'/'.join(COLOR_NAMES)} {'/'.join(SHAPES)} on a {'/'.join(BACKGROUND_NAMES)} background, "
            f"e.g. 'a red circle on a white background'")


def article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None]:
    """Inverse of ``caption_of`` (lenient): ([(colour, shape), ...], background or None)."""
    words = caption.lower().replace(",", " ").split()
    objects, background = [], None
    for i, w in enumerate(words):
        if w in SHAPES and i > 0 and words[i - 1] in COLORS:
            objects.append((words[i - 1], w))
        if w == "background" and i > 0 and words[i - 1] in BACKGROUNDS:
            background = words[i - 1]
    return objects, background


# ------------------------------------------------------------------------------------------------------------ splits
def composition_key(objects: list[tuple[str, str]], background: str) -> str:
    return "|".join(sorted(f"{c} {s}" for c, s in objects)) + "@" + background


def is_held_out(objects: list[tuple[str, str]], background: str) -> bool:
    if len(objects) == 1:
        c, s = COLOR_NAMES.index(objects[0][0]), SHAPES.index(objects[0][1])
        return (c + s) % 2 == 0 and BACKGROUND_NAMES.index(background) == (c + s) % 3
    return zlib.crc32(composition_key(objects, background).encode()) % 5 == 0


def all_single_captions(split: str) -> list[str]:
    """Every single-object caption of a split ("train" or "heldout"), in a fixed order."""
    out = []
    for c, s, b in itertools.product(COLOR_NAMES, SHAPES, BACKGROUND_NAMES):
        if is_held_out([(c, s)], b) == (split == "heldout"):
            out.append(caption_of([f"{c} {s}"], b))
    return out


# --------------------------------------------------------------------------------------------------------- rendering
def _shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.85  # a square of the same visual weight as the circle
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":  # upright isosceles, apex at the top, base at the bottom
        top, bottom = cy - r, cy + r * 0.8
        t = (ys - top) / (bottom - top)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """Scene -> uint8 [H,W,3], anti-aliased by ``SUPERSAMPLE``x box filtering."""
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    xs, ys = np.meshgrid(coords, coords)
    img = np.empty((n, n, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:  # later objects are drawn on top
        img[_shape_mask(o.shape, xs, ys, o.cx, o.cy, o.radius)] = COLORS[o.color]
    img = img.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def object_masks(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """Visible-coverage fraction [num_objects, H, W] in [0,1] of each object (occlusion by later objects removed)."""
    n = resolution * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    xs, ys = np.meshgrid(coords, coords)
    masks = np.stack([_shape_mask(o.shape, xs, ys, o.cx, o.cy, o.radius) for o in scene.objects]).astype(np.float32)
    for i in range(len(masks)):
        masks[i] *= 1 - masks[i + 1:].max(axis=0) if i + 1 < len(masks) else 1
    return masks.reshape(len(masks), resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(2, 4))


# ---------------------------------------------------------------------------------------------------------- sampling
def _place(rng: np.random.Generator, k: int, resolution: int) -> list[tuple[float, float, float]]:
    """k non-overlapping (cx, cy, r), fully inside the image; sizes shrink with the number of objects."""
    r_lo, r_hi = {1: (4.0, 7.5), 2: (3.0, 5.0), 3: (2.6, 4.2)}[k]
    for _ in range(200):
        out = []
        for _ in range(k):
            r = rng.uniform(r_lo, r_hi)
            cx, cy = rng.uniform(r + 0.5, resolution - r - 0.5, size=2)
            out.append((cx, cy, r))
        if all(np.hypot(a[0] - b[0], a[1] - b[1]) > a[2] + b[2] + 0.5 for a, b in itertools.combinations(out, 2)):
            return out
    raise RuntimeError("could not place objects")  # pragma: no cover - never with these sizes


def sample_scene(rng: np.random.Generator, split: str | None = "train", num_objects: int | None = None,
                 resolution: int = RESOLUTION, objects: list[tuple[str, str]] | None = None,
                 background: str | None = None) -> Scene:
    """A random scene whose caption is in ``split`` ("train", "heldout", or None for any).

    ``objects``/``background`` fix the composition (then ``split`` is not checked) and only the layout is random.
    """
    while True:
        if objects is None:
            k = num_objects or int(rng.choice([1, 2, 3], p=NUM_OBJECTS_P))
            # distinct (colour, shape) pairs, so "a red circle and a red circle" never occurs
            pairs = list(itertools.product(COLOR_NAMES, SHAPES))
            comp = [pairs[i] for i in rng.choice(len(pairs), size=k, replace=False)]
            bg_choices = [b for b in BACKGROUND_NAMES]
            bg = background or bg_choices[int(rng.integers(len(bg_choices)))]
            if split is not None and is_held_out(comp, bg) != (split == "heldout"):
                continue
        else:
            comp, bg = list(objects), background or BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
        places = _place(rng, len(comp), resolution)
        return Scene(tuple(Obj(c, s, *p) for (c, s), p in zip(comp, places)), bg)


def generate(n: int, seed: int, split: str | None = "train", num_objects: int | None = None,
             resolution: int = RESOLUTION) -> tuple[torch.Tensor, list[Scene]]:
    """``n`` scenes from ``seed``: (uint8 images [n,3,H,W], scenes). Same seed, same pixels."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, split, num_objects, resolution) for _ in range(n)]
    images = np.stack([render(s, resolution) for s in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), scenes


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 255.0
