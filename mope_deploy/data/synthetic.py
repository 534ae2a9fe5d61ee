"""Seeded compositional scenes with captions: the embedded default data of the demo (no files needed).

A scene holds one or two *groups* of identical objects on a textured background. A group has a shape (10),
a colour (8), a size (2), a count (1-3) and a region of the canvas (left/right/top/bottom/
centre). Five captions per image describe it in varied phrasing and at varied detail (some omit size, count,
position or background), so several images can fit a caption: retrieval is deliberately ambiguous.

Validation and test scenes come in *families* of :data:`FAMILY` minimal pairs: variants of one base scene
that differ in a single attribute (colours swapped between the groups, a count, a size, a shape, the layout,
the background). A test set full of near-duplicates is what makes fine detail and attribute binding count,
so a weakened (pruned) model loses recall visibly instead of every model scoring near 100%. Training scenes
are independent (minimal pairs in a training batch are mostly false negatives and slowed learning 4x).

Held-out combinations: :data:`HELD_OUT` lists (colour, shape) pairs that never occur in the ``train``
stream; every ``val``/``test`` scene contains at least one of them, so evaluation measures compositional
generalisation (the model has seen "red" and "star", never a red star).

Every image is a pure function of ``(seed, split, index)``: the stream and the splits are bit-for-bit
reproducible and the stream can restart at any sample index (for resuming training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass
from typing import Iterator

from PIL import Image, ImageDraw
from torch.utils.data import IterableDataset, get_worker_info

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 225, 40), "green": (40, 170, 60),
    "blue": (40, 90, 230), "purple": (140, 50, 190), "pink": (250, 130, 190), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "heart", "crescent", "arrow")
SIZES = ("small", "large")
REGIONS = ("left", "right", "top", "bottom", "centre")
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "grey": (110, 110, 110), "navy": (20, 30, 80), "brown": (90, 60, 30),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")

# (colour, shape) pairs never drawn in training: two shifted diagonals, so each colour is held out with two
# shapes and each shape with one or two colours; every colour and shape still appears in training.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    (c, SHAPES[(i + k) % len(SHAPES)]) for i, c in enumerate(COLOURS) for k in (0, 5)
)
TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT)
HELD_OUT_PAIRS = tuple(sorted(HELD_OUT))
ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)

SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"val": 250, "test": 500, "train": 1000}  # train: a fixed sample of the stream, for inspection
CAPTIONS_PER_IMAGE = 5
FAMILY = 4  # val/test: consecutive indices are minimal-pair variants of one base scene
DEFAULT_SEED = 0
IMAGE_SIZE = 64

# Phrasing variants (chosen per caption) so the text tower must learn meaning, not one template.
_SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disc", "discs"), ("round dot", "round dots")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "ring": (("ring", "rings"), ("hoop", "hoops"), ("donut", "donuts")),
    "heart": (("heart", "hearts"),),
    "crescent": (("crescent", "crescents"), ("moon", "moons")),
    "arrow": (("arrow", "arrows"),),
}
_COLOUR_WORDS = {"purple": ("purple", "violet"), "grey": ("grey", "gray"), "navy": ("navy", "dark blue")}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_COUNT_WORDS = {1: ("a", "one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
_REGION_WORDS = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
    "centre": ("in the centre", "in the middle", "in the center"),
}
_TEXTURE_WORDS = {"plain": ("plain", ""), "striped": ("striped", "stripy"), "dotted": ("dotted", "spotted"),
                  "checkered": ("checkered", "chequered")}


@dataclass(frozen=True)
class Group:
    """Identical objects in one region of the canvas."""

    shape: str
    colour: str
    size: str
    count: int
    region: str


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]
    background: str
    texture: str

    @property
    def pairs(self) -> set[tuple[str, str]]:
        """The (colour, shape) combinations drawn in this scene."""
        return {(g.colour, g.shape) for g in self.groups}


def _rng(seed: int, split: str, index: int, what: str = "") -> random.Random:
    # A hash of the full key, not seed + index, so nearby seeds do not share images.
    h = hashlib.sha256(f"{seed}:{split}:{index}:{what}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; use one of {', '.join(SPLITS)}")


def _valid(scene: Scene, split: str) -> bool:
    if split == "train":
        return not scene.pairs & HELD_OUT
    return bool(scene.pairs & HELD_OUT)


def _perturb(scene: Scene, r: random.Random) -> Scene:
    """``scene`` with one attribute changed (the minimal pair of a family)."""
    gs = list(scene.groups)
    k = r.randrange(len(gs))
    g = gs[k]
    kind = r.choice(("swap_colours", "swap_layout", "count", "size", "shape", "colour", "background"))
    if kind == "swap_colours" and len(gs) == 2 and gs[0].colour != gs[1].colour:
        a, b = gs
        gs = [dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)]
    elif kind == "swap_layout" and len(gs) == 2:
        a, b = gs
        gs = [dataclasses.replace(a, region=b.region), dataclasses.replace(b, region=a.region)]
    elif kind == "swap_layout":
        gs[k] = dataclasses.replace(g, region=r.choice([x for x in REGIONS if x != g.region]))
    elif kind == "count":
        gs[k] = dataclasses.replace(g, count=r.choice([x for x in (1, 2, 3) if x != g.count]))
    elif kind == "size":
        gs[k] = dataclasses.replace(g, size=r.choice([x for x in SIZES if x != g.size]))
    elif kind == "shape":
        gs[k] = dataclasses.replace(g, shape=r.choice([x for x in SHAPES if x != g.shape]))
    elif kind == "colour":
        gs[k] = dataclasses.replace(g, colour=r.choice([x for x in COLOURS if x != g.colour]))
    else:
        return dataclasses.replace(scene, texture=r.choice([x for x in TEXTURES if x != scene.texture]))
    return dataclasses.replace(scene, groups=tuple(gs))


def sample_scene(seed: int, split: str, index: int) -> Scene:
    """The scene at ``index`` of ``split``: train scenes never use a held-out pair; val/test always do.

    In val/test, index ``FAMILY * f`` is a fresh scene and the next ``FAMILY - 1`` indices are its
    minimal-pair variants; training scenes are all independent.
    """
    _check_split(split)
    if split == "train":
        return _base_scene(seed, split, index)
    family, k = divmod(index, FAMILY)
    base = _base_scene(seed, split, family)
    if k == 0:
        return base
    r = _rng(seed, split, index, "variant")
    earlier = {base} | {sample_scene(seed, split, family * FAMILY + j) for j in range(1, k)}
    for _ in range(100):
        v = _perturb(base, r)
        if v not in earlier and _valid(v, split):
            return v
    return _base_scene(seed, split, -1 - index)  # no valid variant left: an unrelated scene


def _base_scene(seed: int, split: str, family: int) -> Scene:
    r = _rng(seed, split, family, "scene")
    n_groups = 1 if r.random() < 0.45 else 2
    if n_groups == 1:
        regions: tuple[str, ...] = (r.choice(REGIONS),)
    else:
        regions = ("left", "right") if r.random() < 0.5 else ("top", "bottom")
    groups = []
    for k, region in enumerate(regions):
        if split == "train":
            colour, shape = r.choice(TRAIN_PAIRS)
        elif k == 0:
            colour, shape = r.choice(HELD_OUT_PAIRS)
        else:
            colour, shape = r.choice(ALL_PAIRS)
        groups.append(Group(shape, colour, r.choice(SIZES), r.choice((1, 1, 2, 3)), region))
    if len(groups) == 2 and r.random() < 0.5:  # the held-out group is not always the first one
        groups.reverse()
        groups = [Group(g.shape, g.colour, g.size, g.count, reg) for g, reg in zip(groups, regions)]
    return Scene(tuple(groups), r.choice(tuple(BACKGROUND_COLOURS)), r.choice(TEXTURES))


# ----------------------------------------------------------------------------------------------- drawing

def _jitter(rgb: tuple[int, int, int], r: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + r.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _draw_background(draw: ImageDraw.ImageDraw, scene: Scene, S: int, r: random.Random) -> None:
    base = _jitter(BACKGROUND_COLOURS[scene.background], r, 12)
    draw.rectangle([0, 0, S, S], fill=base)
    alt = tuple(min(255, c + 45) for c in base)
    step = S // r.choice((8, 10, 12))
    if scene.texture == "striped":
        w = max(1, step // 3)
        if r.random() < 0.5:
            for y in range(0, S, step):
                draw.rectangle([0, y, S, y + w], fill=alt)
        else:
            for x in range(-S, S, step):
                draw.line([(x, 0), (x + S, S)], fill=alt, width=w)
    elif scene.texture == "dotted":
        d = max(1, step // 4)
        for y in range(step // 2, S, step):
            for x in range(step // 2, S, step):
                draw.ellipse([x - d, y - d, x + d, y + d], fill=alt)
    elif scene.texture == "checkered":
        for y in range(0, S, step):
            for x in range(0, S, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=alt)


def _polygon(cx: float, cy: float, radii: list[float], rot: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + rr * math.cos(rot + 2 * math.pi * i / n), cy + rr * math.sin(rot + 2 * math.pi * i / n))
            for i, rr in enumerate(radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, rad: float, fill, r: random.Random):
    rot = r.uniform(-0.35, 0.35)
    if shape == "circle":
        draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], outline=fill, width=max(2, int(rad * 0.4)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [rad * 1.1] * 4, math.pi / 4 + rot), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, [rad * 1.15, rad * 0.7] * 2, -math.pi / 2 + rot * 0.3), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + rad * 0.15, [rad * 1.2] * 3, -math.pi / 2 + rot), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [rad * 1.2, rad * 0.5] * 5, -math.pi / 2 + rot), fill=fill)
    elif shape == "heart":
        pts = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
               for t in (2 * math.pi * i / 40 for i in range(40))]
        draw.polygon([(cx + x * rad / 15, cy + y * rad / 15) for x, y in pts], fill=fill)
    elif shape == "crescent":
        # the disc of radius R minus a disc of radius 0.85 R shifted right: a moon opening to the right
        R, r2, d = rad * 1.1, rad * 0.85 * 1.1, rad * 0.55 * 1.1
        x = (R * R - r2 * r2 + d * d) / (2 * d)
        y = math.sqrt(max(R * R - x * x, 0.0))
        t0, p0 = math.atan2(y, x), math.atan2(y, x - d)
        outer = [(R * math.cos(t), R * math.sin(t)) for t in (t0 + (2 * math.pi - 2 * t0) * i / 24 for i in range(25))]
        inner = [(d + r2 * math.cos(t), r2 * math.sin(t)) for t in (2 * math.pi - p0 - (2 * math.pi - 2 * p0) * i / 24
                                                                      for i in range(25))]
        c, s_ = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + x * c - y * s_, cy + x * s_ + y * c) for x, y in outer + inner], fill=fill)
    elif shape == "arrow":
        a = rad * 1.15
        pts = [(-a, -a * 0.25), (a * 0.2, -a * 0.25), (a * 0.2, -a * 0.65), (a, 0), (a * 0.2, a * 0.65),
               (a * 0.2, a * 0.25), (-a, a * 0.25)]
        c, s_ = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + x * c - y * s_, cy + x * s_ + y * c) for x, y in pts], fill=fill)
    elif shape == "cross":
        a, b = rad * 1.1, rad * 0.38
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=fill)
    else:  # pragma: no cover - SHAPES and this function are kept in step
        raise ValueError(f"unknown shape {shape!r}")


_REGION_BOX = {  # (x0, y0, x1, y1) in units of the canvas
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0), "centre": (0.2, 0.2, 0.8, 0.8),
}


def render(scene: Scene, r: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` at 2x and downsample (anti-aliased edges, like a photo rather than pixel art)."""
    S = size * 2
    img = Image.new("RGB", (S, S))
    draw = ImageDraw.Draw(img)
    _draw_background(draw, scene, S, r)
    for g in scene.groups:
        x0, y0, x1, y1 = (v * S for v in _REGION_BOX[g.region])
        lo, hi = {"small": (0.07, 0.09), "large": (0.12, 0.15)}[g.size]
        rad = S * r.uniform(lo, hi)
        if g.region != "centre" and g.count > 1:
            rad *= 0.85
        fill = _jitter(COLOURS[g.colour], r, 22)
        # Objects of a group sit side by side along the region's long axis, with a little jitter.
        horizontal = (x1 - x0) >= (y1 - y0)
        for k in range(g.count):
            t = (k + 0.5) / g.count
            cx = (x0 + (x1 - x0) * t) if horizontal else (x0 + x1) / 2
            cy = (y0 + y1) / 2 if horizontal else (y0 + (y1 - y0) * t)
            j = 0.08 * S
            cx = min(max(cx + r.uniform(-j, j), x0 + rad), x1 - rad)
            cy = min(max(cy + r.uniform(-j, j), y0 + rad), y1 - rad)
            _draw_shape(draw, g.shape, cx, cy, rad, fill, r)
    return img.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------------------------------------- captions

def _w(r: random.Random, options) -> str:
    return r.choice(options) if isinstance(options, tuple) else options


def _colour(r: random.Random, c: str) -> str:
    return _w(r, _COLOUR_WORDS.get(c, c))


def _noun_phrase(g: Group, r: random.Random, detail: float) -> str:
    """``"two small red stars"``: colour nearly always, size and count only sometimes (like people do)."""
    singular, plural = r.choice(_SHAPE_WORDS[g.shape])
    words = []
    if g.count == 1:
        words.append(r.choice(_COUNT_WORDS[1]))
    elif r.random() < 0.3 + 0.6 * detail:
        words.append(r.choice(_COUNT_WORDS[g.count]))
    else:
        words.append("some")
    if r.random() < 0.2 + 0.7 * detail:
        words.append(_w(r, _SIZE_WORDS[g.size]))
    if r.random() < 0.9:
        words.append(_colour(r, g.colour))
    words.append(singular if g.count == 1 else plural)
    phrase = " ".join(words)
    if phrase.startswith("a ") and phrase[2] in "aeiou":
        phrase = "an " + phrase[2:]
    return phrase


def _background_phrase(scene: Scene, r: random.Random) -> str:
    tex = r.choice(_TEXTURE_WORDS[scene.texture])
    words = [w for w in (tex, _colour(r, scene.background)) if w]
    return " ".join(words) + " background"


def caption(scene: Scene, r: random.Random) -> str:
    """One caption of ``scene`` in a randomly chosen phrasing and level of detail."""
    detail = r.random()
    bg = _background_phrase(scene, r)
    with_bg = r.random() < 0.4 + 0.4 * detail
    if len(scene.groups) == 1:
        g = scene.groups[0]
        np_, where = _noun_phrase(g, r, detail), r.choice(_REGION_WORDS[g.region])
        pos = where if r.random() < 0.3 + 0.6 * detail else ""
        templates = [
            f"{np_} {pos}", f"a picture of {np_} {pos}", f"there {'is' if g.count == 1 else 'are'} {np_} {pos}",
            f"{np_} {pos} on a {bg}" if with_bg else f"an image showing {np_} {pos}",
            f"a {bg} with {np_} {pos}" if with_bg else f"{np_} drawn {pos}",
        ]
    else:
        a, b = scene.groups
        na, nb = _noun_phrase(a, r, detail), _noun_phrase(b, r, detail)
        rel_ab = {"left": "to the left of", "top": "above"}[a.region] if a.region in ("left", "top") else \
            {"right": "to the right of", "bottom": "below"}[a.region]
        rel_ba = {"to the left of": "to the right of", "above": "below", "to the right of": "to the left of",
                  "below": "above"}[rel_ab]
        tail = f" on a {bg}" if with_bg else ""
        templates = [
            f"{na} {rel_ab} {nb}{tail}", f"{nb} {rel_ba} {na}{tail}",
            f"{na} {r.choice(_REGION_WORDS[a.region])} and {nb} {r.choice(_REGION_WORDS[b.region])}",
            f"{na} and {nb}{tail}", f"a picture of {nb} and {na}",
            f"a {bg} with {na} and {nb}" if with_bg else f"{na} next to {nb}",
        ]
    text = " ".join(r.choice(templates).split())
    if r.random() < 0.3:
        text = text[0].upper() + text[1:] + "."
    return text


# ------------------------------------------------------------------------------------------------- access

def sample(seed: int, split: str, index: int, size: int = IMAGE_SIZE,
           n_captions: int = CAPTIONS_PER_IMAGE) -> tuple[Image.Image, list[str], Scene]:
    """Image, ``n_captions`` distinct captions and the scene at ``index`` of ``split``."""
    scene = sample_scene(seed, split, index)
    image = render(scene, _rng(seed, split, index, "draw"), size)
    r = _rng(seed, split, index, "text")
    caps: list[str] = []
    for _ in range(50 * n_captions):  # distinct captions where the phrasing allows it
        c = caption(scene, r)
        if c not in caps:
            caps.append(c)
        if len(caps) == n_captions:
            break
    while len(caps) < n_captions:
        caps.append(caption(scene, r))
    return image, caps, scene


def stream(seed: int = DEFAULT_SEED, start: int = 0, size: int = IMAGE_SIZE, stride: int = 1
           ) -> Iterator[tuple[Image.Image, str]]:
    """Endless training pairs ``(image, caption)`` from sample ``start`` on (every ``stride``-th, for workers).

    Sample ``i`` is the same whatever ``start`` was, so training resumes exactly by passing
    ``start = samples already seen``.
    """
    i = start
    while True:
        image, caps, _ = sample(seed, "train", i, size, n_captions=1)
        yield image, caps[0]
        i += stride


class SyntheticStream(IterableDataset):
    """The endless training stream as a ``torch.utils.data.IterableDataset``; DataLoader workers take
    interleaved indices, so together they produce exactly :func:`stream`'s samples."""

    def __init__(self, seed: int = DEFAULT_SEED, start: int = 0, size: int = IMAGE_SIZE, transform=None):
        self.seed, self.start, self.size, self.transform = seed, start, size, transform

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for image, text in stream(self.seed, self.start + wid, self.size, stride=n):
            yield (self.transform(image) if self.transform else image), text


def split_items(split: str = "test", seed: int = DEFAULT_SEED, size: int = IMAGE_SIZE,
                n_images: int | None = None) -> tuple[list[Image.Image], list[str], list[int]]:
    """The fixed ``split`` as ``(images, captions, txt2img)`` (5 captions per image); wrapped as a dataset by
    :func:`mope_deploy.data.datasets.load_synthetic`.

    ``val`` has 250 images and ``test`` 500, each with at least one held-out colour-shape pair, in families
    of :data:`FAMILY` minimal pairs; ``train`` is the first 1000 samples of the training stream.
    ``n_images`` takes the first images only (quick checks).
    """
    _check_split(split)
    n = SPLIT_SIZES[split] if n_images is None else n_images
    if n <= 0:
        raise ValueError(f"n_images must be positive, got {n}")
    images, captions, txt2img = [], [], []
    for i in range(n):
        image, caps, _ = sample(seed, split, i, size)
        images.append(image)
        captions.extend(caps)
        txt2img.extend([i] * len(caps))
    return images, captions, txt2img
