"""The world the built-in model (models/builtin/shapes-tiny.safetensors) was trained on.

One flat-coloured shape (circle, square or triangle; varied size and position) on a plain background
of another colour, 128x128, with captions such as "a red circle on a blue background". Shared by the
training script (tools/train_tiny_model.py) and the test judge (tests/support/shapes_judge.py), so both agree
on the palette, the geometry and which colour/shape/background combinations were never trained on.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# area of the shape / area of its bounding box
FILL_RATIO = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}

MIN_SIDE, MAX_SIDE = 52, 92  # the shape's bounding box side in pixels (at SIZE 128)
MARGIN = 8  # the shape never comes closer than this to the image border

ALL_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(
    (c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c)

# (colour, shape, background) never shown in training, in any caption form: 17 of 168 (~10%); every
# colour is held out twice as a foreground (orange three times) and about twice as a background.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "square", "green"),
    ("red", "triangle", "white"),
    ("green", "circle", "purple"),
    ("green", "triangle", "black"),
    ("blue", "circle", "yellow"),
    ("blue", "square", "orange"),
    ("blue", "triangle", "red"),
    ("yellow", "triangle", "blue"),
    ("yellow", "square", "black"),
    ("white", "circle", "red"),
    ("white", "triangle", "orange"),
    ("black", "square", "white"),
    ("black", "circle", "yellow"),
    ("orange", "circle", "green"),
    ("orange", "square", "purple"),
    ("purple", "triangle", "green"),
    ("purple", "square", "blue"),
)
_held = set(HELD_OUT)
TRAIN_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(t for t in ALL_TRIPLES if t not in _held)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float  # centre of the bounding box, pixels
    cy: float
    side: float  # bounding box side, pixels

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.background


def random_scene(rng: random.Random, triples=TRAIN_TRIPLES, spread: float = 1.0) -> Scene:
    """A random scene; `spread` < 1 keeps the shape's centre that close (as a fraction of the full
    range) to the middle of the image."""
    colour, shape, background = rng.choice(triples)
    side = rng.uniform(MIN_SIDE, MAX_SIDE)
    lo, hi = MARGIN + side / 2, SIZE - MARGIN - side / 2
    mid, half = SIZE / 2, (hi - lo) / 2 * spread
    cx, cy = rng.uniform(mid - half, mid + half), rng.uniform(mid - half, mid + half)
    return Scene(colour, shape, background, cx, cy, side)


def render(scene: Scene, size: int = SIZE, supersample: int = 4) -> np.ndarray:
    """The scene as uint8 HxWx3, anti-aliased (drawn `supersample` times larger, then box-filtered)."""
    k = supersample * size / SIZE
    img = Image.new("RGB", (size * supersample,) * 2, PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    x0, y0 = (scene.cx - scene.side / 2) * k, (scene.cy - scene.side / 2) * k
    x1, y1 = (scene.cx + scene.side / 2) * k, (scene.cy + scene.side / 2) * k
    fill = PALETTE[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "triangle":  # upright: apex at the top centre, base along the bottom
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(scene.shape)
    if supersample > 1:
        img = img.resize((size, size), Image.BOX)
    return np.asarray(img)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def prompt(colour: str | None, shape: str | None, background: str | None = None) -> str:
    """The canonical caption: "a red circle on a blue background", "a circle", "a red shape"."""
    obj = " ".join(w for w in (colour, shape or "shape") if w)
    text = with_article(obj)
    if background:
        text += f" on {with_article(background)} background"
    return text


def claim_probability_random(wrong: float, weight: float) -> float:
    """How likely a caption word is a random draw rather than the truth, given its emphasis weight: `wrong`
    at weight 1 (captions are noisy, as on the web), rising to 1 (the word says nothing) at weight 0 and
    falling to 0 at weight 2. So `(red:1.5)` is a surer "red" than `red`, and `(red:0.5)` a weaker one."""
    if weight <= 1:
        return 1 - weight * (1 - wrong)
    return wrong * max(0.0, 2 - weight)


def caption(scene: Scene, rng: random.Random, wrong: float = 0.0, emphasis: float = 0.0,
            weight_range: tuple[float, float] = (0.2, 1.8)) -> str:
    """A random caption of `scene`: it names the shape's colour and/or its kind, and maybe the background.
    A bare colour word ("red", "a red shape") always means the shape's colour, never the background's,
    which is always named with the word "background".

    Each word named is a random draw instead of the truth with probability `wrong` (noisy captions: this
    is what gives classifier-free guidance something to sharpen, and what teaches the model to trust the
    picture over the text when they disagree at low noise). With probability `emphasis` one of the words
    carries an A1111 emphasis weight, "(red:1.3)", drawn from `weight_range`, and its chance of being a
    random draw follows `claim_probability_random`. A full caption never names a HELD_OUT combination."""
    mention_colour = rng.random() < 0.85
    mention_shape = rng.random() < 0.85 or not mention_colour
    mention_bg = rng.random() < 0.6
    words = {"colour": scene.colour if mention_colour else None, "shape": scene.shape if mention_shape else None,
             "background": scene.background if mention_bg else None}
    named = [k for k, v in words.items() if v]
    weighted = rng.choice(named) if rng.random() < emphasis else None
    weight = round(rng.uniform(*weight_range), 2) if weighted else 1.0
    truth = dict(words)
    for key in named:
        if rng.random() < claim_probability_random(wrong, weight if key == weighted else 1.0):
            words[key] = rng.choice(SHAPES if key == "shape" else COLOURS)
    if (words["colour"], words["shape"], words["background"]) in _held:
        words = truth

    def word(key: str) -> str:
        return f"({words[key]}:{weight:g})" if key == weighted else words[key]

    colour = word("colour") if words["colour"] else None
    shape = word("shape") if words["shape"] else None
    background = word("background") if words["background"] else None
    first = article(words["colour"] or words["shape"]) + " "  # by the word, not by a bracket before it
    style = rng.random()
    if style < 0.55:  # "a red circle on a blue background", "a circle", "a red shape"
        text = first + " ".join(w for w in (colour, shape or "shape") if w)
        if background:
            text += f" on {article(words['background'])} {background} background"
        return text
    obj = rng.choice([colour, f"{colour} shape"]) if shape is None else " ".join(w for w in (colour, shape) if w)
    if rng.random() < 0.3:
        obj = first + obj
    if not background:
        return obj
    if style < 0.9:  # "red circle, blue background"
        return f"{obj}, {background} background"
    return f"{background} background, {obj}"  # background first
