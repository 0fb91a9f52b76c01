"""Seeded renderer of the shapes world: small images of 1-4 non-overlapping coloured shapes on white.

Shapes (circle, square, upright triangle) are rasterised analytically on a supersampled grid (`supersample`^2
sub-pixels per pixel) and box-filtered down, so edges are antialiased and every render is exact and cheap (no
drawing library). Each shape occupies a square box of side `size` pixels: the circle is inscribed in it, the square
fills it, the triangle has its apex at the top centre and its base along the bottom edge (height = width). Boxes are
kept `gap` pixels apart, so shapes never touch and a connected-components detector separates them.

Returns the uint8 image plus the ground truth of every object: class, colour, box (x0, y0, x1, y1 in pixels, the
GenEval/mmdet box convention) and mask (pixels at least half covered).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")  # object classes of the world
COLORS: dict[str, tuple[int, int, int]] = {  # colour name -> RGB drawn (the shapes detector's palette)
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)  # plain white background


@dataclass(frozen=True)
class RenderConfig:
    """Geometry of the rendered images."""

    image_size: int = 32  # image side, pixels (square images)
    min_size_fraction: float = 0.28  # smallest shape box side, as a fraction of image_size
    max_size_fraction: float = 0.40  # largest shape box side, as a fraction of image_size
    gap: float = 2.0  # minimum distance between two shape boxes, pixels
    margin: float = 1.0  # minimum distance between a shape box and the image border, pixels
    supersample: int = 4  # sub-pixels per pixel side when rasterising
    max_tries: int = 200  # layout redraws per scene before shrinking the shapes
    candidates_per_shape: int = 32  # random positions tried per shape within one layout draw


@dataclass(frozen=True)
class ShapeSpec:
    """What to draw: a class and a colour."""

    cls: str  # one of CLASSES
    color: str  # one of COLORS


@dataclass(frozen=True)
class Placement:
    """Where a shape is drawn: its box centre and side, in pixels."""

    cx: float  # box centre x, pixels from the left edge
    cy: float  # box centre y, pixels from the top edge
    size: float  # box side, pixels

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass
class RenderedObject:
    """Ground truth for one drawn shape."""

    cls: str  # class name
    color: str  # colour name
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    mask: np.ndarray  # [H, W] bool, pixels at least half covered by this shape


@dataclass
class Scene:
    """A rendered image and what is in it."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    objects: list[RenderedObject]


def coverage(cls: str, placement: Placement, image_size: int, supersample: int) -> np.ndarray:
    """Fraction in [0, 1] of each pixel covered by the shape: [H, W] float32 (rasterised only inside its box)."""
    x0, y0, x1, y1 = placement.box
    px0, py0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    px1, py1 = min(int(np.ceil(x1)), image_size), min(int(np.ceil(y1)), image_size)
    cov = np.zeros((image_size, image_size), dtype=np.float32)
    if px1 <= px0 or py1 <= py0:
        return cov
    x = (np.arange(px0 * supersample, px1 * supersample, dtype=np.float32) + 0.5)[None, :] / supersample
    y = (np.arange(py0 * supersample, py1 * supersample, dtype=np.float32) + 0.5)[:, None] / supersample
    h = placement.size / 2
    dx, dy = x - placement.cx, y - placement.cy
    if cls == "circle":
        inside = dx * dx + dy * dy <= h * h
    elif cls == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif cls == "triangle":
        # apex (0, -h), base corners (+-h, +h): inside when below the top and within the two slanted edges
        inside = (dy <= h) & (dy >= -h) & (np.abs(dx) <= (dy + h) / 2)
    else:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")
    cov[py0:py1, px0:px1] = inside.astype(np.float32).reshape(
        py1 - py0, supersample, px1 - px0, supersample).mean(axis=(1, 3))
    return cov


def draw(specs: Sequence[ShapeSpec], placements: Sequence[Placement], config: RenderConfig = RenderConfig()) -> Scene:
    """Render shapes at given placements (which must not overlap)."""
    size = config.image_size
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = np.asarray(BACKGROUND, dtype=np.float32)
    objects = []
    for spec, place in zip(specs, placements, strict=True):
        if spec.color not in COLORS:
            raise ValueError(f"unknown colour {spec.color!r}; expected one of {tuple(COLORS)}")
        cov = coverage(spec.cls, place, size, config.supersample)
        image += cov[..., None] * (np.asarray(COLORS[spec.color], dtype=np.float32) - image)
        objects.append(RenderedObject(spec.cls, spec.color, place.box, cov >= 0.5))
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), objects)


def _first_separated(centres: np.ndarray, size: float, layout: list[Placement], gap: float) -> int | None:
    """Index of the first candidate centre ([K, 2]) whose box keeps `gap` from every placed box, or None."""
    ok = np.ones(len(centres), dtype=bool)
    h = size / 2
    for other in layout:
        ox0, oy0, ox1, oy1 = other.box
        cx, cy = centres[:, 0], centres[:, 1]
        ok &= (cx + h + gap <= ox0) | (ox1 + gap <= cx - h) | (cy + h + gap <= oy0) | (oy1 + gap <= cy - h)
    hits = np.flatnonzero(ok)
    return int(hits[0]) if len(hits) else None


def place(n: int, rng: np.random.Generator, config: RenderConfig = RenderConfig(),
          accept: Callable[[list[Placement]], bool] | None = None) -> list[Placement]:
    """Sample n non-overlapping placements; `accept` (optional) must also hold for the whole layout.

    Shapes are placed one at a time, each at the first of `candidates_per_shape` uniform positions that keeps its
    distance from those already placed; a layout that cannot be completed or is not accepted is redrawn. After
    `max_tries` redraws the largest size shrinks towards the smallest."""
    lo = config.min_size_fraction * config.image_size
    hi = config.max_size_fraction * config.image_size
    for _ in range(8):
        for _ in range(config.max_tries):
            layout: list[Placement] = []
            for _ in range(n):
                s = float(rng.uniform(lo, hi))
                low = config.margin + s / 2
                high = config.image_size - config.margin - s / 2
                centres = rng.uniform(low, high, size=(config.candidates_per_shape, 2))
                k = _first_separated(centres, s, layout, config.gap)
                if k is None:
                    break
                layout.append(Placement(float(centres[k, 0]), float(centres[k, 1]), s))
            if len(layout) == n and (accept is None or accept(layout)):
                return layout
        hi = lo + 0.5 * (hi - lo)
    raise RuntimeError(f"could not place {n} shapes in a {config.image_size}px image under the given constraints")


def render_scene(specs: Sequence[ShapeSpec], rng: np.random.Generator, config: RenderConfig = RenderConfig(),
                 accept: Callable[[list[Placement]], bool] | None = None) -> Scene:
    """Render the given shapes at random non-overlapping placements (optionally constrained by `accept`)."""
    return draw(specs, place(len(specs), rng, config, accept), config)


def random_specs(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 4) -> list[ShapeSpec]:
    """1-4 shapes of random class and colour."""
    n = int(rng.integers(min_objects, max_objects, endpoint=True))
    return [ShapeSpec(CLASSES[int(rng.integers(len(CLASSES)))], tuple(COLORS)[int(rng.integers(len(COLORS)))])
            for _ in range(n)]


def random_scene(rng: np.random.Generator, config: RenderConfig = RenderConfig()) -> Scene:
    """A scene of 1-4 random shapes."""
    return render_scene(random_specs(rng), rng, config)
