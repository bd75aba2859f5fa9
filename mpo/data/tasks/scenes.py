"""Synthetic scenes for the image tasks: a few flat-coloured shapes on a small white canvas.

Why so plain: a tiny vision encoder must be able to see every shape (at least MIN_SIZE pixels, no
overlap, no anti-aliasing) and the drawing must be byte-for-byte reproducible from the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mpo.data.tasks._common import join_words

CANVAS = 64
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
#: Flat fill colours; far apart so that a tiny encoder tells them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
# --- difficulty knobs -------------------------------------------------------------------------------
#: Relative frequency of scenes with 1..6 shapes.
SHAPE_COUNT_WEIGHTS: dict[int, float] = {1: 1.0, 2: 2.0, 3: 2.0, 4: 2.0, 5: 1.5, 6: 1.5}
#: Shape side / diameter in pixels (inclusive).
SIZE_RANGE = (10, 16)
#: Minimum empty pixels between two shapes' bounding boxes.
GAP = 2
OPENERS = ("I see", "The image shows")

Scene = list[dict[str, Any]]


def _bbox(shape: dict[str, Any]) -> tuple[int, int, int, int]:
    """Inclusive pixel box; (x, y) is the shape's centre pixel."""
    x0, y0 = shape["x"] - shape["size"] // 2, shape["y"] - shape["size"] // 2
    return x0, y0, x0 + shape["size"] - 1, y0 + shape["size"] - 1


def _apart(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ax0, ay0, ax1, ay1 = _bbox(a)
    bx0, by0, bx1, by1 = _bbox(b)
    return ax1 + GAP < bx0 or bx1 + GAP < ax0 or ay1 + GAP < by0 or by1 + GAP < ay0


def random_scene(rng: random.Random, count: int | None = None) -> Scene:
    """1-6 non-overlapping shapes, each fully inside the canvas; placement by rejection."""
    if count is None:
        count = rng.choices(list(SHAPE_COUNT_WEIGHTS), weights=list(SHAPE_COUNT_WEIGHTS.values()))[0]
    while True:
        scene: Scene = []
        for _ in range(count):
            size = rng.randint(*SIZE_RANGE)
            half = size // 2
            shape = {"shape": rng.choice(SHAPES), "colour": rng.choice(list(COLOURS)), "size": size}
            for _ in range(200):
                shape["x"] = rng.randint(half + 1, CANVAS - 2 - (size - 1 - half))
                shape["y"] = rng.randint(half + 1, CANVAS - 2 - (size - 1 - half))
                if all(_apart(shape, other) for other in scene):
                    scene.append(dict(shape))
                    break
            else:
                break  # no room left: start the scene again
        if len(scene) == count:
            return [{k: s[k] for k in ("shape", "colour", "x", "y", "size")} for s in scene]


def render_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene:
        x0, y0, x1, y1 = _bbox(shape)
        fill = COLOURS[shape["colour"]]
        if shape["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:  # apex at the top centre, base along the bottom edge: the centre pixel is inside
            draw.polygon([(shape["x"], y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def save_png(image: Image.Image, path: Path) -> None:
    """Fixed encoder settings and no metadata, so equal scenes give byte-identical files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False, compress_level=6)


def scene_key(scene: Scene) -> str:
    return json.dumps(scene, sort_keys=True, separators=(",", ":"))


def shape_phrase(shape: dict[str, Any]) -> str:
    return f"a {shape['colour']} {shape['shape']}"


def describe_scene(scene: Sequence[dict[str, Any]], rng: random.Random) -> str:
    """'I see a red circle, a blue square and a red triangle.' in a random order; shared by the
    demonstrations, and usable as a reference description for `describe` warm-up."""
    shuffled = list(scene)
    rng.shuffle(shuffled)
    return f"{rng.choice(OPENERS)} {join_words([shape_phrase(s) for s in shuffled])}."
