"""Auto-learned anchors for detectron2 FPN models (YOLOv5 "autoanchor", per FPN level).

The pieces, each a small pure function (numpy only; no detectron2 import):

* :func:`boxes_at_input_scale`: box widths/heights of a COCO dict at the size the model sees
  them, after detectron2's ``ResizeShortestEdge`` (:func:`resized_shape`).
* :func:`anchor_metrics`: YOLOv5's anchor metric. For a box ``(w, h)`` and an anchor
  ``(aw, ah)`` the ratio ``x = min(w/aw, aw/w, h/ah, ah/h)`` is 1 for a perfect fit and falls
  off symmetrically in scale; a box is *recallable* by an anchor when ``x > 1/thr``
  (``thr = 4``: no side off by more than 4x). ``best`` is a box's largest ``x`` over all
  anchors; **fitness** = mean of ``best`` over boxes, counting 0 for boxes with
  ``best <= 1/thr``; **BPR** (best possible recall) = share of boxes with ``best > 1/thr``;
  **anchors/target** (anchors above threshold) = mean number of anchors with ``x > 1/thr`` per
  box.
* :func:`kmeans`: seeded k-means++ / Lloyd on any points (here ``log w, log h``).
* :func:`cell_anchor_wh`: the ``(w, h)`` that detectron2's ``DefaultAnchorGenerator``
  generates from ``SIZES`` x ``ASPECT_RATIOS`` (``w = s / sqrt(a)``, ``h = s * sqrt(a)``, ``a``
  = height / width), so every metric is of the anchors a model really gets.
* :func:`initial_anchors` and :func:`evolve`: the per-level fit, see below.

**The level rule.** detectron2 puts ``len(sizes[l]) * len(aspect_ratios[l])`` anchors at every
position of level ``l`` (stride ``s_l``), and the RPN head needs the same count on every level.
An anchor much smaller than its level's stride is useless there: its centres are ``s_l`` apart,
so most boxes of its size overlap none of them. YOLOv5's global k-means on tiny-object data puts
all anchors under ~16 px, and slicing the sorted list 3 per level leaves p4-p6 with anchors far
below their strides. Here instead:

* level ``l`` may only have anchor sizes (``sqrt(w*h)``) in ``[s_l, 8 s_l]``
  (:func:`level_ranges`; detectron2's defaults use ``8 s_l``, this repo's tiny preset ``2 s_l``);
* level ``l`` *serves* the boxes of size ``[2 s_l, 4 s_l)``, the middle octave of its range, the
  lowest level also everything smaller and the top level everything larger
  (:func:`assign_levels`);
* each level's anchors start from a k-means of the boxes it serves (a level serving fewer boxes
  than anchors starts from a default around ``2 sqrt(2) s_l``, the centre of its range), are
  clamped to its range, and are then refined together by the evolution under the global
  fitness, each level staying inside its range. A level that serves no box is not mutated.

Boxes smaller than the lowest level's stride (or larger than ``8 x`` the top stride) cannot get
an anchor of their size; :func:`out_of_range_counts` counts them for the report.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "DEFAULT_THR",
    "MIN_SIDE",
    "RANGE_LOW",
    "RANGE_HIGH",
    "RATIO_LIMITS",
    "MAX_FIT_POINTS",
    "AnchorMetrics",
    "LevelAnchors",
    "parse_levels",
    "level_strides",
    "resized_shape",
    "boxes_at_input_scale",
    "count_under_min_side",
    "cell_anchor_wh",
    "ratio_metric",
    "anchor_metrics",
    "fitness",
    "kmeans",
    "level_ranges",
    "assign_levels",
    "out_of_range_counts",
    "layouts",
    "initial_anchors",
    "evolve",
    "round_anchors",
    "LearnedAnchors",
    "learn_anchors",
]

DEFAULT_THR = 4.0  # YOLOv5's anchor_t: a box side may be up to 4x off its anchor's
MIN_SIDE = 3.0  # px at input scale: YOLOv5 warns about labels with a side under 3 px
RANGE_LOW, RANGE_HIGH = 1.0, 8.0  # anchor sizes of a level lie in [1, 8] x its stride
RATIO_LIMITS = (1.0 / 8.0, 8.0)  # learned aspect ratios (h / w) stay within these
MAX_FIT_POINTS = 50_000  # more boxes: k-means and evolution run on a seeded subset of this size


# ---------------------------------------------------------------------------------- levels
def parse_levels(text: str) -> List[str]:
    """``"p2..p6"`` -> ``["p2", ..., "p6"]``; ``"p3,p4,p5"`` -> that list.

    Raises:
        ValueError: anything else, levels not strictly increasing, or a level outside p0..p9.
    """
    text = text.strip().lower()
    try:
        if ".." in text:
            first, last = text.split("..")
            if not (first.startswith("p") and last.startswith("p")):
                raise ValueError
            numbers = list(range(int(first[1:]), int(last[1:]) + 1))
        else:
            parts = [p.strip() for p in text.split(",")]
            if not all(p.startswith("p") for p in parts):
                raise ValueError
            numbers = [int(p[1:]) for p in parts]
    except ValueError:
        raise ValueError(f"expected pA..pB or a comma list like p2,p3,p4, got {text!r}") from None
    if not numbers or any(n < 0 or n > 9 for n in numbers):
        raise ValueError(f"expected levels between p0 and p9, got {text!r}")
    if any(b <= a for a, b in zip(numbers, numbers[1:])):
        raise ValueError(f"levels must be strictly increasing, got {text!r}")
    return [f"p{n}" for n in numbers]


def level_strides(levels: Sequence[str]) -> np.ndarray:
    """Level names ``pN`` -> strides ``2**N`` (float array of shape (L,))."""
    return np.array([2.0 ** int(name[1:]) for name in levels], dtype=np.float64)


# ------------------------------------------------------------------------------ box sizes
def resized_shape(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """The (height, width) detectron2's ``ResizeShortestEdge`` gives an image.

    The shorter side becomes ``min_size`` unless the longer one would then exceed ``max_size``,
    in which case the longer side becomes ``max_size``; both are rounded to integers the same
    way detectron2 does (``int(x + 0.5)``).
    """
    scale = min_size / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def boxes_at_input_scale(
    coco: Mapping[str, Any], min_size: int, max_size: int
) -> Tuple[np.ndarray, Dict[str, int]]:
    """Box (w, h) of a COCO dict after each image is resized as detectron2 resizes it.

    A box is scaled by ``new_w / W`` horizontally and ``new_h / H`` vertically (the resize
    transform's own factors, so non-square rounding is exact). Crowd boxes (``iscrowd`` 1) are
    left out because detectron2 does not train on them.

    Returns:
        wh: float array (N, 2) of the kept boxes' widths and heights in input pixels.
        skipped: counts of annotations left out: ``crowd``, ``unknown_image``, ``malformed``
            (not 4 finite numbers), ``non_positive`` (w or h <= 0).
    """
    scales: Dict[Any, Tuple[float, float]] = {}
    for image in coco.get("images", []):
        try:
            height, width = float(image["height"]), float(image["width"])
        except (KeyError, TypeError, ValueError):
            continue
        if height > 0 and width > 0:
            new_h, new_w = resized_shape(height, width, min_size, max_size)
            scales[image.get("id")] = (new_w / width, new_h / height)
    skipped = {"crowd": 0, "unknown_image": 0, "malformed": 0, "non_positive": 0}
    rows: List[Tuple[float, float]] = []
    for ann in coco.get("annotations", []):
        if not isinstance(ann, dict):
            skipped["malformed"] += 1
            continue
        if ann.get("iscrowd", 0):
            skipped["crowd"] += 1
            continue
        image_id = ann.get("image_id")
        if not isinstance(image_id, (int, str)) or image_id not in scales:
            skipped["unknown_image"] += 1
            continue
        bbox = ann.get("bbox")
        try:
            if isinstance(bbox, (str, bytes)) or len(bbox) != 4 or any(isinstance(v, bool) for v in bbox):
                raise ValueError
            w, h = float(bbox[2]), float(bbox[3])
        except (TypeError, ValueError):
            skipped["malformed"] += 1
            continue
        if not (math.isfinite(w) and math.isfinite(h)):
            skipped["malformed"] += 1
        elif w <= 0 or h <= 0:
            skipped["non_positive"] += 1
        else:
            sx, sy = scales[image_id]
            rows.append((w * sx, h * sy))
    return np.array(rows, dtype=np.float64).reshape(-1, 2), skipped


def count_under_min_side(wh: np.ndarray, min_side: float = MIN_SIDE) -> int:
    """Number of boxes (rows of ``wh``, shape (N, 2)) with a side under ``min_side`` px."""
    return int((wh.min(axis=1) < min_side).sum()) if len(wh) else 0


# -------------------------------------------------------------------------------- metric
def cell_anchor_wh(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]]) -> np.ndarray:
    """The anchors detectron2's ``DefaultAnchorGenerator`` generates, as (w, h) rows.

    Args:
        sizes: one list of sizes (``sqrt(w*h)``) per level, shape (L, n_s_l).
        aspect_ratios: ``h / w``; one list per level, or a single list for every level
            (detectron2's broadcast rule).

    Returns:
        float array (sum_l n_s_l * n_r_l, 2): level by level, size-major then ratio, the order
        of ``generate_cell_anchors``.
    """
    if len(aspect_ratios) == 1 and len(sizes) > 1:
        aspect_ratios = list(aspect_ratios) * len(sizes)
    if len(aspect_ratios) != len(sizes):
        raise ValueError(f"{len(sizes)} size lists but {len(aspect_ratios)} aspect-ratio lists")
    rows = [
        (s / math.sqrt(a), s * math.sqrt(a))
        for level_sizes, level_ratios in zip(sizes, aspect_ratios)
        for s in level_sizes
        for a in level_ratios
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def ratio_metric(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """YOLOv5's box/anchor ratio: ``x[i, j] = min over sides of min(wh/anchor, anchor/wh)``.

    Args:
        wh: (N, 2) box widths and heights; anchors: (A, 2) anchor widths and heights.

    Returns:
        (N, A) array in (0, 1]; 1 means the anchor has exactly the box's width and height.
    """
    r = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(r, 1.0 / r).min(axis=2)


@dataclass(frozen=True)
class AnchorMetrics:
    """YOLOv5's numbers for one anchor set on one box set (see the module docstring)."""

    fitness: float  # mean over boxes of best * (best > 1/thr)
    bpr: float  # share of boxes with best > 1/thr
    anchors_per_target: float  # mean number of anchors with x > 1/thr per box
    best_mean: float  # mean of best (YOLOv5's metric_all "best")
    metric_mean: float  # mean of x over all box-anchor pairs (metric_all "mean")
    past_thr_mean: float  # mean of x over the pairs with x > 1/thr
    num_boxes: int
    num_anchors: int


def anchor_metrics(wh: np.ndarray, anchors: np.ndarray, thr: float = DEFAULT_THR) -> AnchorMetrics:
    """Fitness, BPR and anchors/target of ``anchors`` (A, 2) on boxes ``wh`` (N, 2)."""
    if len(wh) == 0 or len(anchors) == 0:
        return AnchorMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, len(wh), len(anchors))
    x = ratio_metric(wh, anchors)
    best = x.max(axis=1)
    above = x > 1.0 / thr
    return AnchorMetrics(
        fitness=float((best * (best > 1.0 / thr)).mean()),
        bpr=float((best > 1.0 / thr).mean()),
        anchors_per_target=float(above.sum(axis=1).mean()),
        best_mean=float(best.mean()),
        metric_mean=float(x.mean()),
        past_thr_mean=float(x[above].mean()) if above.any() else 0.0,
        num_boxes=len(wh),
        num_anchors=len(anchors),
    )


def fitness(wh: np.ndarray, anchors: np.ndarray, thr: float = DEFAULT_THR) -> float:
    """YOLOv5's fitness alone: mean over boxes of ``best * (best > 1/thr)``."""
    best = ratio_metric(wh, anchors).max(axis=1)
    return float((best * (best > 1.0 / thr)).mean())


# -------------------------------------------------------------------------------- k-means
def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded k-means (k-means++ start, Lloyd iterations) on ``points`` (N, D), ``N >= k``.

    Returns:
        centers (k, D) sorted by their first coordinate (then the others), and labels (N,)
        indexing them. The same points and seed give the same result.
    """
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    if not 1 <= k <= len(points):
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {len(points)} points")
    rng = np.random.default_rng(seed)
    centers = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = ((points[:, None, :] - np.array(centers)[None]) ** 2).sum(axis=2).min(axis=1)
        # duplicates only: any point will do (its distance is 0 to an existing center anyway)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centers.append(points[rng.choice(len(points), p=p)])
    centers = np.array(centers)
    labels = np.zeros(len(points), dtype=np.int64)
    for step in range(iterations):
        new_labels = ((points[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
        if step > 0 and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(k):
            if (labels == j).any():  # an emptied cluster keeps its old center
                centers[j] = points[labels == j].mean(axis=0)
    order = np.lexsort(centers.T[::-1])
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return centers[order], remap[labels]


# ------------------------------------------------------------------------ per-level anchors
def level_ranges(strides: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Allowed anchor sizes per level: ``[RANGE_LOW * stride, RANGE_HIGH * stride]``, (L,) each."""
    strides = np.asarray(strides, dtype=np.float64)
    return RANGE_LOW * strides, RANGE_HIGH * strides


def assign_levels(box_sizes: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """The level each box serves: the last level ``l`` with ``2 * stride_l <= size``, else 0.

    Args:
        box_sizes: (N,) ``sqrt(w*h)`` at input scale; strides: (L,) increasing.

    Returns:
        (N,) level indices: level ``l`` gets ``[2 s_l, 2 s_{l+1})`` (``[2 s_l, 4 s_l)`` for
        consecutive levels), level 0 also all smaller boxes, the top level all larger ones.
    """
    lower = 2.0 * np.asarray(strides, dtype=np.float64)
    return np.clip(np.searchsorted(lower, box_sizes, side="right") - 1, 0, len(lower) - 1)


def out_of_range_counts(box_sizes: np.ndarray, strides: np.ndarray) -> Tuple[int, int]:
    """Boxes smaller than the lowest level's smallest allowed anchor, and larger than the top
    level's largest: no anchor of their size exists under the level rule."""
    lo, hi = level_ranges(strides)
    return int((box_sizes < lo[0]).sum()), int((box_sizes > hi[-1]).sum())


def layouts(per_level: int) -> List[Tuple[int, int]]:
    """Every (sizes, ratios) count pair with ``sizes * ratios == per_level``, e.g. 3 ->
    [(1, 3), (3, 1)]: detectron2 generates the cartesian product on each level."""
    return [(n, per_level // n) for n in range(1, per_level + 1) if per_level % n == 0]


@dataclass
class LevelAnchors:
    """detectron2 anchor parameters for L levels with the same layout on every level.

    sizes: (L, n_s) anchor sizes ``sqrt(w*h)`` per level; ratios: (L, n_r) ``h / w`` per level;
    served: (L,) number of boxes each level serves (:func:`assign_levels`).
    """

    sizes: np.ndarray
    ratios: np.ndarray
    served: np.ndarray
    history: List[float] = field(default_factory=list)  # best fitness after each generation

    def wh(self) -> np.ndarray:
        """The (L * n_s * n_r, 2) anchors detectron2 generates from these parameters."""
        return cell_anchor_wh(self.sizes.tolist(), self.ratios.tolist())


def _spread(center: float, n: int, octaves: float) -> np.ndarray:
    """``n`` values geometrically spaced over ``octaves`` octaves around ``center``."""
    if n == 1:
        return np.array([center])
    return center * 2.0 ** np.linspace(-octaves / 2, octaves / 2, n)


def _cluster_1d(log_values: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` sorted cluster centres of 1-D log values (their mean when n == 1)."""
    if n == 1:
        return np.array([log_values.mean()])
    if len(np.unique(log_values)) < n:
        return np.sort(log_values.mean() + np.linspace(-0.5, 0.5, n))
    return np.sort(kmeans(log_values[:, None], n, seed=seed)[0][:, 0])


def initial_anchors(
    wh: np.ndarray, strides: np.ndarray, n_sizes: int, n_ratios: int, seed: int = 0
) -> LevelAnchors:
    """k-means start of the per-level anchors (the level rule of the module docstring).

    A level serving at least ``n_sizes * n_ratios`` distinct boxes: k-means with that many
    clusters on its boxes' ``(log w, log h)``; each centre is a size ``sqrt(w h)`` and a ratio
    ``h / w``, and the sizes (ratios) are clustered into ``n_sizes`` (``n_ratios``) values to fit
    detectron2's sizes x ratios product. Other levels: ``n_sizes`` sizes over one octave around
    ``2 sqrt(2) stride`` and the ratios clustered from all boxes. Sizes are clamped to the
    level's range, ratios to ``RATIO_LIMITS``.

    Args:
        wh: (N, 2) boxes at input scale, N >= 1; strides: (L,) increasing.
    """
    strides = np.asarray(strides, dtype=np.float64)
    k = n_sizes * n_ratios
    log_wh = np.log(wh)
    log_size, log_ratio = log_wh.mean(axis=1), log_wh[:, 1] - log_wh[:, 0]
    levels = assign_levels(np.exp(log_size), strides)
    global_ratios = np.exp(_cluster_1d(log_ratio, n_ratios, seed))
    if n_ratios > 1 and len(np.unique(log_ratio)) < n_ratios:
        global_ratios = _spread(1.0, n_ratios, 2.0)  # d2's 0.5, 1, 2 for three
    lo, hi = level_ranges(strides)
    sizes = np.empty((len(strides), n_sizes))
    ratios = np.empty((len(strides), n_ratios))
    for level in range(len(strides)):
        mine = levels == level
        if len(np.unique(log_wh[mine], axis=0)) >= k:
            centers, _ = kmeans(log_wh[mine], k, seed=seed + level)
            sizes[level] = np.exp(_cluster_1d(centers.mean(axis=1), n_sizes, seed))
            ratios[level] = np.exp(_cluster_1d(centers[:, 1] - centers[:, 0], n_ratios, seed))
        else:
            sizes[level] = _spread(2.0 * math.sqrt(2.0) * strides[level], n_sizes, 1.0)
            ratios[level] = global_ratios
    return LevelAnchors(
        sizes=np.clip(sizes, lo[:, None], hi[:, None]),
        ratios=np.clip(ratios, *RATIO_LIMITS),
        served=np.bincount(levels, minlength=len(strides)),
    )


def evolve(
    wh: np.ndarray,
    start: LevelAnchors,
    strides: np.ndarray,
    generations: int = 1000,
    thr: float = DEFAULT_THR,
    seed: int = 0,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
    progress: Optional[Callable[[int, float], None]] = None,
) -> LevelAnchors:
    """YOLOv5's evolutionary refinement of the detectron2 parameters, inside the level rule.

    Each generation multiplies every size and ratio of the levels that serve boxes by
    ``clip(1 + m * u * sigma * n, 0.3, 3)`` (``m`` ~ Bernoulli(``mutation_prob``) per value,
    ``u`` ~ U(0, 1) per generation, ``n`` ~ N(0, 1)), clamps sizes to the level's range and
    ratios to ``RATIO_LIMITS``, and keeps the result only if the fitness of the generated
    anchors (:func:`cell_anchor_wh`) is strictly higher. Fitness therefore never decreases;
    the same seed gives the same result.

    Args:
        progress: called after every generation with (generation, best fitness).

    Returns:
        the best parameters, with ``history`` = best fitness after each generation.
    """
    rng = np.random.default_rng(seed)
    lo, hi = level_ranges(strides)
    mutable = (start.served > 0)[:, None]
    sizes, ratios = start.sizes.copy(), start.ratios.copy()
    best = fitness(wh, start.wh(), thr)
    history = []
    for generation in range(generations):
        factors = []
        for shape in (sizes.shape, ratios.shape):
            v = np.ones(shape)
            while mutable.any() and (v[np.broadcast_to(mutable, shape)] == 1).all():
                v = (rng.random(shape) < mutation_prob) * rng.random() * rng.standard_normal(shape) * sigma + 1
                v = np.where(mutable, v.clip(0.3, 3.0), 1.0)
            factors.append(v)
        new_sizes = np.clip(sizes * factors[0], lo[:, None], hi[:, None])
        new_ratios = np.clip(ratios * factors[1], *RATIO_LIMITS)
        candidate = fitness(wh, cell_anchor_wh(new_sizes.tolist(), new_ratios.tolist()), thr)
        if candidate > best:
            best, sizes, ratios = candidate, new_sizes, new_ratios
        history.append(best)
        if progress is not None:
            progress(generation, best)
    return LevelAnchors(sizes=sizes, ratios=ratios, served=start.served.copy(), history=history)


def round_anchors(anchors: LevelAnchors, strides: np.ndarray, size_decimals: int = 1, ratio_decimals: int = 3) -> LevelAnchors:
    """Sorted, rounded parameters as they are written to the override file (sizes stay inside
    the level ranges after rounding)."""
    lo, hi = level_ranges(strides)
    # strides are powers of two, so the rounded bounds are the bounds themselves
    sizes = np.clip(np.round(np.sort(anchors.sizes, axis=1), size_decimals),
                    np.round(lo, size_decimals)[:, None], np.round(hi, size_decimals)[:, None])
    ratios = np.round(np.sort(anchors.ratios, axis=1), ratio_decimals)
    return LevelAnchors(sizes=sizes, ratios=ratios, served=anchors.served.copy(), history=list(anchors.history))


@dataclass
class LearnedAnchors:
    """The result of :func:`learn_anchors`: the fittest layout's rounded parameters and, per
    tried layout ``(n_sizes, n_ratios)``, the fitness of its k-means start and of its result."""

    anchors: LevelAnchors
    layout: Tuple[int, int]
    start_fitness: Dict[Tuple[int, int], float]
    final_fitness: Dict[Tuple[int, int], float]


def learn_anchors(
    wh: np.ndarray,
    strides: np.ndarray,
    per_level: int = 3,
    thr: float = DEFAULT_THR,
    generations: int = 1000,
    seed: int = 0,
    candidate_layouts: Optional[Sequence[Tuple[int, int]]] = None,
    progress_factory: Optional[Callable[[Tuple[int, int]], Optional[Callable[[int, float], None]]]] = None,
    max_points: int = MAX_FIT_POINTS,
) -> LearnedAnchors:
    """k-means start, evolution and rounding for every layout; the fittest rounded result wins.

    Args:
        wh: (N, 2) boxes at input scale, N >= 1; strides: (L,) increasing.
        candidate_layouts: (n_sizes, n_ratios) pairs to try; default :func:`layouts` (per_level).
        progress_factory: layout -> the ``progress`` callback of :func:`evolve` (or None).
        max_points: k-means and evolution use a seeded random subset of this many boxes when
            there are more (each generation costs O(N x anchors)); the reported fitness values
            are on all boxes.
    """
    candidate_layouts = list(candidate_layouts or layouts(per_level))
    fit_wh = wh
    if len(wh) > max_points:
        fit_wh = wh[np.sort(np.random.default_rng(seed).choice(len(wh), max_points, replace=False))]
    results = []
    start_fitness, final_fitness = {}, {}
    for layout in candidate_layouts:
        start = initial_anchors(fit_wh, strides, *layout, seed=seed)
        start.served = np.bincount(assign_levels(np.sqrt(wh.prod(axis=1)), strides), minlength=len(strides))
        start_fitness[layout] = fitness(wh, start.wh(), thr)
        progress = progress_factory(layout) if progress_factory else None
        final = round_anchors(evolve(fit_wh, start, strides, generations, thr, seed=seed, progress=progress), strides)
        final_fitness[layout] = fitness(wh, final.wh(), thr)
        results.append((final_fitness[layout], layout, final))
    best = max(results, key=lambda r: r[0])  # first of equals: fewer sizes, more ratios
    return LearnedAnchors(anchors=best[2], layout=best[1], start_fitness=start_fitness, final_fitness=final_fitness)
