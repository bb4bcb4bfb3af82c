"""Deterministic generator of a hard, COCO-format, small-object detection dataset.

The dataset is the project's embedded benchmark: it needs no download, is identical on every
machine for a given seed, and is hard enough that a small detector does not saturate it (an
earlier, easy version -- flat shapes on grey noise -- gave AP50 ~99 and so could not tell
methods apart). Difficulty comes from:

* **textured backgrounds**: a smooth random colour field, a mid-frequency luminance texture
  and random lines / irregular blobs ("clutter"), some of which are drawn *over* the objects;
* **look-alike distractors that are not annotated**: a class shape in a wrong colour (hue
  shifted, washed out, or another class's colour), or a class colour on a near-miss shape
  (ring vs disc, ellipse vs disc, X vs cross, ...). Distractors share the objects' size,
  shading and contrast distributions, so only shape *and* colour together identify a class;
* **small, varied objects**: log-normal sizes (by default ~40% of boxes under 16 px, ~90%
  under 32 px, none over 48 px, none under 4 px), per-object colour jitter, a brightness
  gradient, random rotation / aspect, anti-aliased edges, and a share of low-contrast objects
  whose colour is blended toward the local background;
* **occlusion and crowding**: objects, distractors and foreground clutter overlap; objects
  are often placed in clusters; an object is annotated only if at least
  ``SynthConfig.min_visible_fraction`` of it is visible (inside the image and not covered);
* **a long tail of objects per image** (0 to ``max_objects``) and some empty images (which
  still contain distractors and clutter).

Every knob is a field of the frozen dataclass :class:`SynthConfig`.

Layout written by :func:`generate`::

    out_dir/
      train/000001.png ...          RGB PNG, image_size x image_size
      val/000001.png ...
      annotations/train.json        COCO: images, annotations, categories (+ info, licenses)
      annotations/val.json
      synth_config.json             the config, the seed and the generator version

Determinism: image ``index`` of split ``split`` is drawn from
``numpy.random.default_rng([seed, SPLIT_IDS[split], index])`` alone, so it does not depend on
the order of generation or on the size of either split; the json holds no timestamps or
absolute paths and is written with ``sort_keys=True``, so the same seed gives byte-identical
json (and identical PNG bytes with the same zlib).
"""
from __future__ import annotations

import colorsys
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from ugs_d2.boxes import polygon_to_rotated_box
from ugs_d2.fileio import write_atomic, write_json_atomic

__all__ = [
    "GENERATOR_VERSION",
    "SPLIT_IDS",
    "SHAPES",
    "ObjectClass",
    "DEFAULT_CLASSES",
    "SynthConfig",
    "render_sample",
    "generate_split",
    "generate",
    "dataset_statistics",
]

# Bump when the same (seed, config) would produce different images or json; recorded in
# synth_config.json and the json "info" so results can be traced to a generator version.
GENERATOR_VERSION = 1

# Split name -> the second word of each image's seed. Fixed ids (not the split's position in a
# list) keep an image independent of which other splits are generated.
SPLIT_IDS: Dict[str, int] = {"train": 0, "val": 1, "test": 2}

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Shape library. A shape is a list of filled polygons in a unit frame (about [-1, 1]^2, y down),
# drawn in order with fill 255 (ink) or 0 (a hole), plus its base aspect ratio (width / height
# before rotation) and whether it may take any rotation (otherwise only +-rotation_jitter_deg,
# so that e.g. square and diamond, or cross and X, stay distinct).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    parts: Tuple[Tuple[np.ndarray, int], ...]
    aspect: float = 1.0
    free_rotation: bool = False


def _arc(r: float, a0: float, a1: float, n: int) -> np.ndarray:
    t = np.linspace(a0, a1, n, endpoint=False) if a1 - a0 >= 2 * math.pi - 1e-9 else np.linspace(a0, a1, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _rot(pts: np.ndarray, deg: float) -> np.ndarray:
    a = math.radians(deg)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ m.T


_CIRCLE = _arc(1.0, 0.0, 2 * math.pi, 48)
_SQUARE = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
_TRIANGLE = np.array([[0.0, -1.0], [1.0, 0.85], [-1.0, 0.85]])
_W = 0.34  # half-width of the cross arms
_CROSS = np.array(
    [[-_W, -1], [_W, -1], [_W, -_W], [1, -_W], [1, _W], [_W, _W],
     [_W, 1], [-_W, 1], [-_W, _W], [-1, _W], [-1, -_W], [-_W, -_W]], dtype=float
)
_RHOMBUS = np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
_C_GAP = math.radians(40)  # half-angle of the gap in the "C" near-miss of the ring
_C_RING = np.concatenate(
    [_arc(1.0, _C_GAP, 2 * math.pi - _C_GAP, 40), _arc(0.55, _C_GAP, 2 * math.pi - _C_GAP, 40)[::-1]]
)

SHAPES: Dict[str, _Shape] = {
    # class shapes
    "disc": _Shape(((_CIRCLE, 255),)),
    "ring": _Shape(((_CIRCLE, 255), (0.55 * _CIRCLE, 0))),
    "square": _Shape(((_SQUARE, 255),)),
    "triangle": _Shape(((_TRIANGLE, 255),)),
    "cross": _Shape(((_CROSS, 255),)),
    "diamond": _Shape(((_RHOMBUS, 255),), aspect=0.62),
    # near-miss shapes, used for distractors
    "ellipse": _Shape(((_CIRCLE, 255),), aspect=0.5, free_rotation=True),
    "half_disc": _Shape(((_arc(1.0, 0.0, math.pi, 25), 255),), free_rotation=True),
    "c_ring": _Shape(((_C_RING, 255),), free_rotation=True),
    "rectangle": _Shape(((_SQUARE, 255),), aspect=0.5, free_rotation=True),
    "frame": _Shape(((_SQUARE, 255), (0.5 * _SQUARE, 0))),
    "flipped_triangle": _Shape(((-_TRIANGLE, 255),)),
    "trapezoid": _Shape(((np.array([[-0.45, -0.8], [0.45, -0.8], [1.0, 0.8], [-1.0, 0.8]]), 255),)),
    "x_cross": _Shape(((_rot(_CROSS, 45.0), 255),)),
    "t_shape": _Shape(((np.array([[-1, -1], [1, -1], [1, -0.35], [0.33, -0.35], [0.33, 1],
                                  [-0.33, 1], [-0.33, -0.35], [-1, -0.35]], dtype=float), 255),)),
    "wide_rhombus": _Shape(((_RHOMBUS, 255),), aspect=1.7),
    "hexagon": _Shape(((_arc(1.0, 0.0, 2 * math.pi, 6), 255),)),
}

# Class shape -> shapes that are "almost" it; a distractor in the class colour uses one of them.
_NEAR_MISS: Dict[str, Tuple[str, ...]] = {
    "disc": ("ellipse", "half_disc"),
    "ring": ("disc", "c_ring"),
    "square": ("rectangle", "frame"),
    "triangle": ("flipped_triangle", "trapezoid"),
    "cross": ("x_cross", "t_shape"),
    "diamond": ("wide_rhombus", "hexagon"),
}


@dataclass(frozen=True)
class ObjectClass:
    """One object category: a COCO category name, a key of :data:`SHAPES` and an RGB colour."""

    name: str
    shape: str
    color: Tuple[int, int, int]


# Distinct shape AND colour per class; hues are >= 40 degrees apart so that the per-object hue
# jitter (+-hue_jitter_deg) never turns one class colour into another.
DEFAULT_CLASSES: Tuple[ObjectClass, ...] = (
    ObjectClass("disc", "disc", (220, 45, 40)),  # red, hue ~1
    ObjectClass("square", "square", (45, 85, 225)),  # blue, hue ~226
    ObjectClass("triangle", "triangle", (235, 200, 35)),  # yellow, hue ~50
    ObjectClass("cross", "cross", (45, 175, 60)),  # green, hue ~128
    ObjectClass("ring", "ring", (205, 55, 205)),  # magenta, hue ~300
    ObjectClass("diamond", "diamond", (35, 200, 210)),  # cyan, hue ~184
)


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the synthetic dataset. Sizes are in pixels of the output image.

    The defaults are calibrated so that a small Faster R-CNN (R18-FPN from scratch, ~15 min of
    CPU at 256x256) stays well below saturation. Change them to make the data easier/harder;
    the config is saved with the dataset (``synth_config.json``).
    """

    image_size: int = 256
    """Side of the square images (px). At least 64 (objects can be up to ``size_max``)."""
    classes: Tuple[ObjectClass, ...] = DEFAULT_CLASSES
    """Object categories; COCO category ids are 1..len(classes) in this order."""

    # --- object size: log-normal on the max side of the object's box, truncated by resampling.
    size_median: float = 18.0
    """Median max side (px). With sigma 0.5: ~41% under 16 px, ~90% under 32 px."""
    size_sigma: float = 0.5
    """Sigma of log(max side)."""
    size_min: float = 4.0
    """Smallest max side (px)."""
    size_max: float = 48.0
    """Largest max side (px)."""
    aspect_jitter: float = 0.15
    """Aspect ratio is the shape's base aspect times exp(U(-a, a))."""
    rotation_jitter_deg: float = 15.0
    """Rotation of shapes without free rotation is U(-r, r) degrees."""
    oriented: bool = False
    """Oriented objects: every shape turned by U(-90, 90) degrees, and each annotation gets
    ``rbox``, the minimum-area rectangle of the object's outline (``[cx, cy, w, h, angle]``,
    detectron2's XYWHA_ABS), with ``area`` its ``w * h`` (as SODA-A's). False: the same draws and
    files as before this option existed (but for this key in ``synth_config.json``)."""

    # --- objects per image
    objects_mean: float = 9.0
    """Mean number of objects in a non-empty image (before the occlusion filter)."""
    objects_dispersion: float = 1.5
    """Negative-binomial shape of (objects - 1): smaller = longer tail."""
    max_objects: int = 30
    """Hard cap on objects per image."""
    empty_fraction: float = 0.07
    """Probability that an image has no objects (it still has distractors and clutter)."""
    cluster_prob: float = 0.5
    """Probability that an image places its objects/distractors in 1-3 clusters (crowding)."""
    cluster_sigma: float = 20.0
    """Spread (px, std) of a cluster."""

    # --- distractors (not annotated)
    distractors_base: float = 2.0
    """Mean distractors per image regardless of the number of objects."""
    distractor_rate: float = 0.6
    """Additional mean distractors per object."""
    distractor_mix: Tuple[float, float, float] = (0.35, 0.25, 0.40)
    """Probabilities of distractor kinds: (class shape in a shifted/washed-out colour, class
    shape in another class's colour, near-miss shape in the class colour)."""
    distractor_hue_shift_deg: Tuple[float, float] = (40.0, 90.0)
    """Range of the hue shift (degrees, either sign) of an off-colour distractor."""

    # --- appearance
    hue_jitter_deg: float = 10.0
    """Max hue deviation of an object from its class colour (degrees)."""
    shading: float = 0.3
    """Max amplitude of the brightness gradient across an object (fraction of its colour)."""
    low_contrast_fraction: float = 0.3
    """Share of objects/distractors whose colour is blended toward the local background."""
    low_contrast_blend: Tuple[float, float] = (0.35, 0.65)
    """Range of the blend weight toward the background mean for low-contrast instances."""

    # --- clutter and occlusion
    clutter_lines: float = 8.0
    """Mean number of lines (1-3 segments, 1-3 px wide) per image."""
    clutter_blobs: float = 8.0
    """Mean number of irregular polygons / thin ellipses / bars (6-90 px) per image."""
    foreground_clutter_fraction: float = 0.25
    """Share of the clutter drawn over the objects (occluding them)."""
    min_visible_fraction: float = 0.5
    """An object is annotated only if this share of its area is visible (in the image, not
    covered by later objects, distractors or clutter)."""

    # --- sensor
    noise_sigma: float = 8.0
    """Mean std (0-255 units) of the per-pixel Gaussian noise; per image x U(0.5, 1.5)."""
    blur_prob: float = 0.3
    """Probability of a slight Gaussian blur (radius 0.4-0.9 px) of the whole image."""
    supersample: int = 4
    """Shapes are rasterised at this factor and box-filtered down (anti-aliasing)."""

    def __post_init__(self) -> None:
        # Coerce lists (e.g. from json / Hydra) to tuples so the dataclass stays hashable.
        classes = tuple(
            c if isinstance(c, ObjectClass) else ObjectClass(c["name"], c["shape"], tuple(c["color"]))
            for c in self.classes
        )
        object.__setattr__(self, "classes", classes)
        for name in ("distractor_mix", "distractor_hue_shift_deg", "low_contrast_blend"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SynthConfig: {msg}")

        check(self.image_size >= 64, f"image_size must be >= 64, got {self.image_size}")
        check(len(self.classes) >= 1, "classes must not be empty")
        check(len({c.name for c in self.classes}) == len(self.classes), "class names must be unique")
        for c in self.classes:
            check(c.shape in SHAPES, f"unknown shape {c.shape!r} of class {c.name!r}; known: {sorted(SHAPES)}")
            check(len(c.color) == 3 and all(0 <= v <= 255 for v in c.color), f"bad colour {c.color}")
        check(0 < self.size_min <= self.size_median <= self.size_max, "need 0 < size_min <= size_median <= size_max")
        check(self.size_max <= self.image_size / 2, "size_max must be <= image_size / 2")
        check(self.size_sigma > 0, "size_sigma must be > 0")
        check(self.objects_mean >= 1 and self.objects_dispersion > 0, "objects_mean >= 1, objects_dispersion > 0")
        check(self.max_objects >= 1, "max_objects must be >= 1")
        for name in ("empty_fraction", "cluster_prob", "low_contrast_fraction", "foreground_clutter_fraction",
                     "min_visible_fraction", "blur_prob"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        for name in ("distractors_base", "distractor_rate", "clutter_lines", "clutter_blobs", "noise_sigma",
                     "cluster_sigma", "hue_jitter_deg", "shading", "aspect_jitter", "rotation_jitter_deg"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")
        check(len(self.distractor_mix) == 3 and min(self.distractor_mix) >= 0 and sum(self.distractor_mix) > 0,
              "distractor_mix must be 3 non-negative weights, not all 0")
        lo, hi = self.low_contrast_blend
        check(0 <= lo <= hi < 1, "low_contrast_blend must be a range within [0, 1)")
        lo, hi = self.distractor_hue_shift_deg
        check(0 <= lo <= hi <= 180, "distractor_hue_shift_deg must be a range within [0, 180]")
        check(1 <= self.supersample <= 8, "supersample must be in [1, 8]")

    def to_dict(self) -> Dict[str, Any]:
        """Plain, json-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SynthConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
@dataclass
class _Patch:
    """An anti-aliased coverage patch: alpha (h, w) float32 in [0, 1] with its top-left pixel."""

    x0: int
    y0: int
    alpha: np.ndarray


@dataclass
class _LiveObject:
    """An annotated-so-far object: its full box, category and remaining visibility."""

    category_id: int
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1 of the full (unclipped) object
    x0: int
    y0: int
    visible: np.ndarray  # (h, w) float32: alpha, zero outside the image, x (1 - cover) so far
    area: float  # sum of the full alpha, including any part outside the image
    outline: Optional[np.ndarray] = None  # (K, 2) the object's outer outline in px (oriented data)


def _transform(shape: _Shape, size: float, aspect: float, angle_deg: float, cx: float, cy: float):
    """Scale/rotate/translate a shape so its axis-aligned box has max side ``size`` px, centred
    on (cx, cy). Returns the transformed parts and the exact box (x0, y0, x1, y1)."""
    sx, sy = (aspect, 1.0) if aspect <= 1.0 else (1.0, 1.0 / aspect)
    a = math.radians(angle_deg)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * np.array([sx, sy])
    pts = [p @ m.T for p, _ in shape.parts]
    allp = np.concatenate(pts)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    scale = size / float((hi - lo).max())
    mid = (lo + hi) / 2
    centre = np.array([cx, cy])
    parts = [((p - mid) * scale + centre, fill) for p, (_, fill) in zip(pts, shape.parts)]
    b0, b1 = (lo - mid) * scale + centre, (hi - mid) * scale + centre
    return parts, (float(b0[0]), float(b0[1]), float(b1[0]), float(b1[1]))


def _rasterize(
    parts: Sequence[Tuple[np.ndarray, int]], box: Tuple[float, float, float, float], ss: int,
    line_width: Optional[float] = None,
) -> _Patch:
    """Draw polygons (or, with ``line_width`` in px, polylines) at ``ss``x and box-filter down.

    Only the box's pixels are drawn, so cost scales with the shape, not the image.
    """
    pad = 0 if line_width is None else line_width / 2 + 1
    x0, y0 = math.floor(box[0] - pad), math.floor(box[1] - pad)
    x1, y1 = math.ceil(box[2] + pad), math.ceil(box[3] + pad)
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    canvas = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(canvas)
    origin = np.array([x0, y0], dtype=float)
    for pts, fill in parts:
        # Continuous coordinate u covers supersampled pixel centres at u * ss - 0.5.
        xy = [tuple(p) for p in ((pts - origin) * ss - 0.5).tolist()]
        if line_width is None:
            draw.polygon(xy, fill=fill)
        else:
            draw.line(xy, fill=fill, width=max(1, int(round(line_width * ss))), joint="curve")
    if ss > 1:
        canvas = canvas.reduce(ss)
    return _Patch(x0, y0, np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0))


def _clip(patch: _Patch, size: int):
    """Intersection of a patch with the image: (image slices, patch slices), or None."""
    h, w = patch.alpha.shape
    ix0, iy0 = max(patch.x0, 0), max(patch.y0, 0)
    ix1, iy1 = min(patch.x0 + w, size), min(patch.y0 + h, size)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    img_sl = (slice(iy0, iy1), slice(ix0, ix1))
    pat_sl = (slice(iy0 - patch.y0, iy1 - patch.y0), slice(ix0 - patch.x0, ix1 - patch.x0))
    return img_sl, pat_sl


def _shaded_colour(rng: np.random.Generator, colour: np.ndarray, img_sl, cx: float, cy: float,
                   radius: float, amplitude: float) -> np.ndarray:
    """Colour field (h, w, 3) with a random linear brightness gradient of +-``amplitude``
    across an object of half-size ``radius`` centred at (cx, cy): cheap 3-D-looking shading."""
    g = rng.uniform(0.0, amplitude)
    phi = rng.uniform(0.0, 2 * math.pi)
    ys = np.arange(img_sl[0].start, img_sl[0].stop, dtype=np.float32) + 0.5 - cy
    xs = np.arange(img_sl[1].start, img_sl[1].stop, dtype=np.float32) + 0.5 - cx
    ramp = (xs[None, :] * math.cos(phi) + ys[:, None] * math.sin(phi)) / max(radius, 1.0)
    gain = 1.0 + g * np.clip(ramp, -1.0, 1.0)
    return gain[..., None] * colour.astype(np.float32)


def _paint(img: np.ndarray, patch: _Patch, colour: Union[np.ndarray, Any], opacity: float,
           live: List[_LiveObject], clipped=None) -> None:
    """Alpha-blend ``colour`` ((3,) or a field matching the clipped patch) into ``img`` in place
    and reduce the visibility of every earlier object that the patch covers."""
    clipped = clipped if clipped is not None else _clip(patch, img.shape[0])
    if clipped is None:
        return
    img_sl, pat_sl = clipped
    a = patch.alpha[pat_sl] * opacity
    region = img[img_sl]
    region += a[..., None] * (colour - region)
    # Occlusion bookkeeping: intersect with each earlier object's patch.
    iy0, iy1, ix0, ix1 = img_sl[0].start, img_sl[0].stop, img_sl[1].start, img_sl[1].stop
    for obj in live:
        oh, ow = obj.visible.shape
        y0, y1 = max(iy0, obj.y0), min(iy1, obj.y0 + oh)
        x0, x1 = max(ix0, obj.x0), min(ix1, obj.x0 + ow)
        if y1 <= y0 or x1 <= x0:
            continue
        obj.visible[y0 - obj.y0:y1 - obj.y0, x0 - obj.x0:x1 - obj.x0] *= 1.0 - a[y0 - iy0:y1 - iy0, x0 - ix0:x1 - ix0]


def _hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


def _random_clutter_colour(rng: np.random.Generator) -> np.ndarray:
    """Any colour, half of the time a muted one (typical of real scenes)."""
    sat = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else rng.uniform(0.3, 0.9)
    return _hsv_colour(rng.random(), sat, rng.uniform(0.15, 0.95))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background (size, size, 3) float32 in 0-255.

    A 2-6 cell random colour grid around a mostly muted base colour, bicubically upsampled
    (large smooth regions, like fields or roofs), plus a luminance texture whose grain is drawn
    between size/16 and size/4 cells (so some of it is at the scale of the smallest objects).
    """
    base = _hsv_colour(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.85))
    g = int(rng.integers(2, 7))
    grid = base + rng.normal(0.0, 40.0, size=(g, g, 3))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(grid[..., c], dtype=np.float32))
                   .resize((size, size), Image.BICUBIC))
        for c in range(3)
    ]
    img = np.stack(channels, axis=-1)
    t = int(rng.integers(size // 16, size // 4 + 1))
    tex = rng.normal(0.0, 1.0, size=(t, t)).astype(np.float32)
    tex = np.asarray(Image.fromarray(tex).resize((size, size), Image.BILINEAR))
    img += rng.uniform(4.0, 22.0) * tex[..., None]
    return np.ascontiguousarray(img, dtype=np.float32)


def _clutter_patch(rng: np.random.Generator, size: int, ss: int) -> Tuple[_Patch, float, float, float]:
    """A random line or blob. Returns (patch, centre x, centre y, radius) for shading."""
    if rng.random() < 0.45:
        # A polyline of 1-3 segments (roads, wires, edges).
        n = int(rng.integers(1, 4))
        p = rng.uniform(-10, size + 10, size=2)
        ang = rng.uniform(0, 2 * math.pi)
        pts = [p]
        for _ in range(n):
            ang += rng.uniform(-0.5, 0.5)
            p = p + rng.uniform(15.0, 80.0) * np.array([math.cos(ang), math.sin(ang)])
            pts.append(p)
        pts_arr = np.stack(pts)
        width = rng.uniform(0.8, 3.0)
        lo, hi = pts_arr.min(axis=0), pts_arr.max(axis=0)
        patch = _rasterize([(pts_arr, 255)], (lo[0], lo[1], hi[0], hi[1]), ss, line_width=width)
        mid = (lo + hi) / 2
        return patch, float(mid[0]), float(mid[1]), float((hi - lo).max() / 2)
    # A blob: irregular polygon, thin ellipse or bar. Thin/irregular on purpose: a round or
    # square blob of an object's size and colour would be an unannotated object, i.e. label noise.
    side = math.exp(rng.uniform(math.log(6.0), math.log(90.0)))
    kind = rng.random()
    if kind < 0.5:
        k = int(rng.integers(5, 10))
        t = np.sort(rng.uniform(0, 2 * math.pi, size=k))
        r = rng.uniform(0.35, 1.0, size=k)
        shape = _Shape(((np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 255),))
        aspect = rng.uniform(0.4, 1.0)
    elif kind < 0.75:
        shape, aspect = SHAPES["disc"], rng.uniform(0.15, 0.45)
    else:
        shape, aspect = SHAPES["square"], rng.uniform(0.1, 0.4)
    cx, cy = rng.uniform(0, size, size=2)
    parts, box = _transform(shape, side, aspect, rng.uniform(0, 360), cx, cy)
    return _rasterize(parts, box, ss), float(cx), float(cy), side / 2


def _sample_sizes(rng: np.random.Generator, n: int, cfg: SynthConfig) -> np.ndarray:
    """Truncated log-normal max sides (px): resample out-of-range draws (no pile-up at bounds)."""
    out = np.empty(0)
    while out.size < n:
        s = np.exp(rng.normal(math.log(cfg.size_median), cfg.size_sigma, size=2 * (n - out.size) + 4))
        out = np.concatenate([out, s[(s >= cfg.size_min) & (s <= cfg.size_max)]])
    return out[:n]


def _sample_centres(rng: np.random.Generator, n: int, cfg: SynthConfig) -> np.ndarray:
    """(n, 2) centres in image px: uniform, or (cluster_prob) 70% of them around 1-3 centres."""
    size = cfg.image_size
    xy = rng.uniform(0, size, size=(n, 2))
    if n and rng.random() < cfg.cluster_prob:
        k = int(rng.integers(1, 4))
        centres = rng.uniform(0.15 * size, 0.85 * size, size=(k, 2))
        in_cluster = rng.random(n) < 0.7
        which = rng.integers(0, k, size=n)
        jitter = rng.normal(0.0, cfg.cluster_sigma, size=(n, 2))
        xy = np.where(in_cluster[:, None], np.clip(centres[which] + jitter, 0, size - 1e-3), xy)
    return xy


@dataclass
class _Canvas:
    """The image being painted, (S, S, 3) float32 RGB, and the objects annotated on it so far
    (each later patch reduces their visibility)."""

    img: np.ndarray
    live: List[_LiveObject] = dataclasses.field(default_factory=list)


def _paint_clutter(rng: np.random.Generator, canvas: _Canvas, count: int, cfg: SynthConfig) -> None:
    """Paint ``count`` clutter strokes and blobs (random colours, shaded, partly transparent)."""
    size = cfg.image_size
    for _ in range(count):
        patch, cx, cy, r = _clutter_patch(rng, size, cfg.supersample)
        clipped = _clip(patch, size)
        if clipped is not None:
            colour = _shaded_colour(rng, _random_clutter_colour(rng), clipped[0], cx, cy, r, cfg.shading)
            _paint(canvas.img, patch, colour, rng.uniform(0.4, 1.0), canvas.live, clipped)


def _object_count(rng: np.random.Generator, cfg: SynthConfig) -> int:
    """Objects in one image: none with probability ``empty_fraction``, else 1 + a negative
    binomial of mean ``objects_mean - 1`` and dispersion ``objects_dispersion``, capped."""
    if rng.random() < cfg.empty_fraction:
        return 0
    p = cfg.objects_dispersion / (cfg.objects_dispersion + cfg.objects_mean - 1.0)
    return min(cfg.max_objects, 1 + int(rng.negative_binomial(cfg.objects_dispersion, p)))


def _appearance(
    rng: np.random.Generator, cfg: SynthConfig, class_index: int, is_object: bool, mix: np.ndarray
) -> Tuple[str, np.ndarray]:
    """``(shape name, (3,) RGB colour)`` of one item of class ``class_index``.

    An object keeps its class's shape and colour, jittered in hue, saturation and value. A
    distractor is changed in one of the ways of ``distractor_mix`` (probabilities ``mix``): 0
    a shifted hue (or washed out to nearly grey), 1 another class's colour, 2 a near-miss shape.
    """
    cls = cfg.classes[class_index]
    shape_name, base_rgb = cls.shape, cls.color
    hue_shift = rng.uniform(-cfg.hue_jitter_deg, cfg.hue_jitter_deg) / 360.0
    sat_scale, val_scale = rng.uniform(0.7, 1.05), rng.uniform(0.65, 1.1)
    if not is_object:
        kind = int(rng.choice(3, p=mix))
        if kind == 2 and shape_name not in _NEAR_MISS:
            kind = 0
        if kind == 0:
            if rng.random() < 0.3:  # washed out: same shape, nearly grey
                sat_scale *= rng.uniform(0.1, 0.35)
            else:
                lo, hi = cfg.distractor_hue_shift_deg
                hue_shift += rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi) / 360.0
        elif kind == 1 and len(cfg.classes) > 1:  # another class's colour
            other = int(rng.integers(0, len(cfg.classes) - 1))
            base_rgb = cfg.classes[other + (other >= class_index)].color
        elif kind == 2:
            names = _NEAR_MISS[shape_name]
            shape_name = names[int(rng.integers(0, len(names)))]
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in base_rgb))
    return shape_name, _hsv_colour(h + hue_shift, s * sat_scale, v * val_scale)


def _draw_shape(
    rng: np.random.Generator,
    canvas: _Canvas,
    cfg: SynthConfig,
    shape: _Shape,
    colour: np.ndarray,
    size: float,
    centre: Tuple[float, float],
    category_id: Optional[int],
) -> None:
    """Paint one shape (``size`` px box side, jittered aspect and rotation) at ``centre``; an
    object (``category_id`` not None) joins ``canvas.live`` with the part of it inside the image."""
    aspect = shape.aspect * math.exp(rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter))
    if cfg.oriented:  # one draw, as in the other branch: the rest of the sequence is unchanged
        angle = rng.uniform(-90.0, 90.0)
    else:
        angle = (rng.uniform(0, 360) if shape.free_rotation
                 else rng.uniform(-cfg.rotation_jitter_deg, cfg.rotation_jitter_deg))
    cx, cy = centre
    parts, box = _transform(shape, size, aspect, angle, cx, cy)
    patch = _rasterize(parts, box, cfg.supersample)
    clipped = _clip(patch, cfg.image_size)
    low_contrast = rng.random() < cfg.low_contrast_fraction
    blend = rng.uniform(*cfg.low_contrast_blend)
    if clipped is None:
        return
    if low_contrast:
        # Blend toward the mean of what is under the object now: low contrast *locally*.
        colour = (1.0 - blend) * colour + blend * canvas.img[clipped[0]].reshape(-1, 3).mean(axis=0)
    field = _shaded_colour(rng, colour, clipped[0], cx, cy, size / 2, cfg.shading)
    _paint(canvas.img, patch, field, 1.0, canvas.live, clipped)
    if category_id is not None:
        visible = np.zeros_like(patch.alpha)
        visible[clipped[1]] = patch.alpha[clipped[1]]  # the part outside the image is lost
        outline = parts[0][0] if cfg.oriented else None  # the first part is the filled outline
        canvas.live.append(_LiveObject(category_id, box, patch.x0, patch.y0, visible, float(patch.alpha.sum()),
                                       outline))


def _draw_objects_and_distractors(rng: np.random.Generator, canvas: _Canvas, cfg: SynthConfig) -> None:
    """The objects and distractors, drawn in a random interleaved order so each can hide the other."""
    n_obj = _object_count(rng, cfg)
    n_dis = int(rng.poisson(cfg.distractors_base + cfg.distractor_rate * n_obj))
    n = n_obj + n_dis
    sizes = _sample_sizes(rng, n, cfg)
    centres = _sample_centres(rng, n, cfg)
    classes = rng.integers(0, len(cfg.classes), size=n)
    mix = np.asarray(cfg.distractor_mix) / sum(cfg.distractor_mix)
    for i in rng.permutation(n):
        is_object = i < n_obj
        shape_name, colour = _appearance(rng, cfg, int(classes[i]), is_object, mix)
        centre = (float(centres[i, 0]), float(centres[i, 1]))
        category_id = int(classes[i]) + 1 if is_object else None
        _draw_shape(rng, canvas, cfg, SHAPES[shape_name], colour, float(sizes[i]), centre, category_id)


def _sensor(rng: np.random.Generator, img: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """The camera: optional slight blur, then Gaussian noise, then quantisation to uint8."""
    if rng.random() < cfg.blur_prob:
        radius = rng.uniform(0.4, 0.9)
        pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    sigma = cfg.noise_sigma * rng.uniform(0.5, 1.5)
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _visible_annotations(live: Sequence[_LiveObject], cfg: SynthConfig) -> List[Dict[str, Any]]:
    """The objects at least ``min_visible_fraction`` visible, as ``{"category_id", "bbox"}``."""
    size = cfg.image_size
    annotations = []
    for obj in live:
        if obj.area <= 0 or float(obj.visible.sum()) < cfg.min_visible_fraction * obj.area:
            continue
        # The full object's box clipped to the image. Round the corners (not w/h) so that
        # x + w never exceeds the image by a rounding step.
        x0, y0 = round(max(obj.box[0], 0.0), 2), round(max(obj.box[1], 0.0), 2)
        x1, y1 = round(min(obj.box[2], float(size)), 2), round(min(obj.box[3], float(size)), 2)
        w, h = round(x1 - x0, 2), round(y1 - y0, 2)
        if w < 1.0 or h < 1.0:
            continue
        annotation = {"category_id": obj.category_id, "bbox": [x0, y0, w, h]}
        if obj.outline is not None:
            annotation["rbox"] = [round(v, 2) for v in polygon_to_rotated_box(obj.outline)]
        annotations.append(annotation)
    return annotations


def render_sample(rng: np.random.Generator,
                  config: SynthConfig = SynthConfig()) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Render one image and its annotations.

    Args:
        rng: the image's own generator (``generate_split`` uses
            ``default_rng([seed, SPLIT_IDS[split], index])``).
        config: difficulty knobs.

    Returns:
        image: (S, S, 3) uint8 RGB, S = ``config.image_size``.
        annotations: list of ``{"category_id": int (1-based), "bbox": [x, y, w, h]}`` with the
            box in px (XYWH, floats rounded to 2 decimals), the full object's box clipped to
            the image, w and h >= 1. Only objects at least ``min_visible_fraction`` visible.
            With ``config.oriented`` also ``"rbox": [cx, cy, w, h, angle]`` (not clipped).

    The draws from ``rng`` come in a fixed order (background, clutter, objects and
    distractors, foreground clutter, sensor): the same generator gives the same sample.
    """
    cfg = config
    canvas = _Canvas(_background(rng, cfg.image_size))  # occlusion only matters once objects exist
    # Clutter: decide all of it up front; the foreground part is drawn after the objects.
    n_clutter = int(rng.poisson(cfg.clutter_lines * rng.uniform(0.3, 1.7))) + int(
        rng.poisson(cfg.clutter_blobs * rng.uniform(0.3, 1.7))
    )
    foreground = rng.random(n_clutter) < cfg.foreground_clutter_fraction
    _paint_clutter(rng, canvas, int((~foreground).sum()), cfg)
    _draw_objects_and_distractors(rng, canvas, cfg)
    _paint_clutter(rng, canvas, int(foreground.sum()), cfg)
    return _sensor(rng, canvas.img, cfg), _visible_annotations(canvas.live, cfg)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
_IMAGE_NAME = re.compile(r"^(\d{6,})\.png$")


def _atomic_write_bytes(path: str, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def _atomic_write_json(path: str, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=True, separators=(",", ":"))


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    # No metadata (no time chunk), so the bytes depend only on the pixels.
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _categories(config: SynthConfig) -> List[Dict[str, Any]]:
    return [{"id": i + 1, "name": c.name, "supercategory": "shape"} for i, c in enumerate(config.classes)]


def generate_split(
    out_dir: PathLike, split: str, num_images: int, seed: int, config: SynthConfig = SynthConfig(),
    progress: bool = True,
) -> str:
    """Write ``out_dir/<split>/000001.png ...`` and ``out_dir/annotations/<split>.json``.

    Args:
        out_dir: dataset root (created if missing).
        split: one of :data:`SPLIT_IDS` ("train", "val", "test").
        num_images: number of images (>= 0; 0 writes a json without images).
        seed: non-negative integer; image i uses ``default_rng([seed, SPLIT_IDS[split], i])``.
        config: difficulty knobs.
        progress: show a tqdm bar.

    Returns:
        Path of the json file. Stale numbered PNGs from an earlier, larger run are removed.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = os.fspath(out_dir)
    image_dir = os.path.join(out_dir, split)
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in tqdm(range(1, num_images + 1), desc=f"synth {split}", unit="img", disable=not progress,
                      dynamic_ncols=True):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
        image, anns = render_sample(rng, config)
        file_name = f"{index:06d}.png"
        _atomic_write_bytes(os.path.join(image_dir, file_name), _png_bytes(image))
        images.append({"id": index, "file_name": file_name, "width": config.image_size, "height": config.image_size})
        for a in anns:
            w, h = a["rbox"][2:4] if "rbox" in a else a["bbox"][2:]
            # area = box area (of the oriented box if there is one): there are no masks, and
            # COCO's small/medium/large ranges are then about box size, which is what "small
            # object" means here.
            oriented = {"rbox": a["rbox"]} if "rbox" in a else {}
            annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": a["category_id"],
                                "bbox": a["bbox"], **oriented, "area": round(w * h, 2), "iscrowd": 0})

    for name in os.listdir(image_dir):
        m = _IMAGE_NAME.match(name)
        if m and int(m.group(1)) > num_images:
            os.unlink(os.path.join(image_dir, name))

    coco = {
        "info": {"description": f"ugs_d2 synthetic small-object dataset, split {split}",
                 "generator_version": GENERATOR_VERSION, "seed": seed, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(config),
    }
    json_path = os.path.join(ann_dir, f"{split}.json")
    _atomic_write_json(json_path, coco)
    return json_path


_DATASET_ENTRIES = ("train", "val", "annotations", "synth_config.json")


def generate(
    out_dir: PathLike, num_train: int, num_val: int, seed: int, config: SynthConfig = SynthConfig(),
    *, overwrite: bool = False, progress: bool = True,
) -> Dict[str, str]:
    """Generate the train and val splits and ``synth_config.json`` under ``out_dir``.

    Raises ``NotADirectoryError`` if ``out_dir`` is a file, ``FileExistsError`` if it already
    holds a dataset (train/, val/, annotations/ or synth_config.json) and not ``overwrite``.

    Everything is written into ``out_dir/.tmp-synth/`` first and moved into place only when
    complete (``synth_config.json`` last), so an interrupted or killed run leaves no half
    dataset: the staging folder is removed on an exception (Ctrl-C included), and a later run
    removes one that a ``kill -9`` left behind.

    Returns:
        dict of paths: ``root``, ``train_images``, ``train_json``, ``val_images``,
        ``val_json``, ``config``.
    """
    import shutil

    from ugs_d2.fileio import TMP_PREFIX

    out = os.fspath(out_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if not overwrite and os.path.isdir(out):
        present = [e for e in _DATASET_ENTRIES if os.path.exists(os.path.join(out, e))]
        if present:
            raise FileExistsError(f"{out} already holds a dataset ({', '.join(present)})")
    os.makedirs(out, exist_ok=True)
    stage = os.path.join(out, f"{TMP_PREFIX}synth")
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed run
    try:
        meta = {"generator_version": GENERATOR_VERSION, "seed": seed, "num_train": num_train,
                "num_val": num_val, "config": config.to_dict()}
        generate_split(stage, "train", num_train, seed, config, progress)
        generate_split(stage, "val", num_val, seed, config, progress)
        _atomic_write_json(os.path.join(stage, "synth_config.json"), meta)
        for entry in _DATASET_ENTRIES:  # synth_config.json last: it marks a complete dataset
            target = os.path.join(out, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.remove(target)
            os.replace(os.path.join(stage, entry), target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "root": out,
        "train_images": os.path.join(out, "train"),
        "train_json": os.path.join(out, "annotations", "train.json"),
        "val_images": os.path.join(out, "val"),
        "val_json": os.path.join(out, "annotations", "val.json"),
        "config": os.path.join(out, "synth_config.json"),
    }


def dataset_statistics(json_path: PathLike) -> Dict[str, Any]:
    """Summary of a COCO json (any COCO bbox json, not only synthetic ones).

    Returns a dict with ``num_images``, ``num_empty_images``, ``num_annotations``,
    ``objects_per_image_mean`` / ``_max``, ``per_class`` (name -> count, in category order),
    ``frac_max_side_lt16`` / ``frac_max_side_lt32`` (share of boxes whose longer side is under
    16 / 32 px) and ``area_buckets`` (COCO ranges on ``area``: small < 32^2 <= medium < 96^2
    <= large).
    """
    with open(json_path, "r", encoding="utf-8") as f:
        coco = json.load(f)
    anns = coco.get("annotations", [])
    cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
    per_image: Dict[int, int] = {img["id"]: 0 for img in coco.get("images", [])}
    per_class = {c["name"]: 0 for c in cats}
    id_to_name = {c["id"]: c["name"] for c in cats}
    max_sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in anns], dtype=np.float64)
    areas = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float64)
    for a in anns:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        name = id_to_name.get(a["category_id"], str(a["category_id"]))
        per_class[name] = per_class.get(name, 0) + 1
    n_ann = len(anns)
    counts = list(per_image.values())

    def frac(mask: np.ndarray) -> float:
        return float(mask.mean()) if n_ann else 0.0

    return {
        "num_images": len(per_image),
        "num_empty_images": sum(1 for c in counts if c == 0),
        "num_annotations": n_ann,
        "objects_per_image_mean": float(np.mean(counts)) if counts else 0.0,
        "objects_per_image_max": max(counts) if counts else 0,
        "per_class": per_class,
        "frac_max_side_lt16": frac(max_sides < 16),
        "frac_max_side_lt32": frac(max_sides < 32),
        "area_buckets": {
            "small": int((areas < 32 ** 2).sum()),
            "medium": int(((areas >= 32 ** 2) & (areas < 96 ** 2)).sum()),
            "large": int((areas >= 96 ** 2).sum()),
        },
    }
