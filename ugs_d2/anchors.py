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
* :func:`initial_anchors` and :func:`evolve`: the per-level fit, see below;
  :func:`learn_anchors` runs it for every layout, with the settings of :class:`AnchorSearch`.

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
    "AnchorSearch",
    "LearnedAnchors",
    "fit_subset",
    "learn_anchors",
    "floor_level_anchors",
    "enforce_floor",
    "yolov5_style_anchors",
    "DEFAULT_IOU",
    "REPORT_IOUS",
    "D2_OFFSET",
    "SIZE_DIVISIBILITY",
    "BUCKET_EDGES",
    "BUCKET_NAMES",
    "boxes_xyxy_at_input_scale",
    "size_buckets",
    "grid_shapes",
    "level_anchor_wh",
    "detectron2_default_anchors",
    "GridBoxes",
    "nearest_grid_index",
    "centered_iou",
    "grid_iou",
    "grid_best_iou",
    "grid_counts",
    "GridMetrics",
    "grid_metrics",
    "GridObjective",
]

DEFAULT_THR = 4.0  # YOLOv5's anchor_t: a box side may be up to 4x off its anchor's
MIN_SIDE = 3.0  # px at input scale: YOLOv5 warns about labels with a side under 3 px
RANGE_LOW, RANGE_HIGH = 1.0, 8.0  # anchor sizes of a level lie in [1, 8] x its stride
RATIO_LIMITS = (1.0 / 8.0, 8.0)  # learned aspect ratios (h / w) stay within these
MAX_FIT_POINTS = 50_000  # more boxes: k-means and evolution run on a seeded subset of this size
DEFAULT_IOU = 0.7  # detectron2's RPN.IOU_THRESHOLDS [0.3, 0.7]: anchors at IoU >= 0.7 are positives
REPORT_IOUS = (0.5, 0.7)  # the thresholds every grid report shows
D2_OFFSET = 0.0  # detectron2's MODEL.ANCHOR_GENERATOR.OFFSET default
SIZE_DIVISIBILITY = 32  # detectron2's FPN pads every input to a multiple of its res5 stride
BUCKET_EDGES = (8.0, 16.0, 32.0, 96.0)  # px of sqrt(w*h) at input scale
BUCKET_NAMES = ("<8", "8-16", "16-32", "32-96", ">=96")
COUNT_CHUNK = 2_000_000  # grid_counts: at most this many box-position pairs per numpy step


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
    boxes, _, skipped = boxes_xyxy_at_input_scale(coco, min_size, max_size)
    return boxes[:, 2:] - boxes[:, :2], skipped


def boxes_xyxy_at_input_scale(
    coco: Mapping[str, Any], min_size: int, max_size: int
) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """As :func:`boxes_at_input_scale`, with positions: what the grid objective needs.

    Returns:
        boxes: float array (N, 4) ``x0, y0, x1, y1`` in input pixels (after the resize).
        image_hw: int array (N, 2): the resized (height, width) of each box's image.
        skipped: as :func:`boxes_at_input_scale`.
    """
    scales: Dict[Any, Tuple[float, float, int, int]] = {}
    for image in coco.get("images", []):
        try:
            height, width = float(image["height"]), float(image["width"])
        except (KeyError, TypeError, ValueError):
            continue
        if height > 0 and width > 0:
            new_h, new_w = resized_shape(height, width, min_size, max_size)
            scales[image.get("id")] = (new_w / width, new_h / height, new_h, new_w)
    skipped = {"crowd": 0, "unknown_image": 0, "malformed": 0, "non_positive": 0}
    rows: List[Tuple[float, float, float, float]] = []
    sizes: List[Tuple[int, int]] = []
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
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            skipped["malformed"] += 1
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            skipped["malformed"] += 1
        elif w <= 0 or h <= 0:
            skipped["non_positive"] += 1
        else:
            sx, sy, new_h, new_w = scales[image_id]
            rows.append((x * sx, y * sy, (x + w) * sx, (y + h) * sy))
            sizes.append((new_h, new_w))
    return (np.array(rows, dtype=np.float64).reshape(-1, 4), np.array(sizes, dtype=np.int64).reshape(-1, 2),
            skipped)


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


@dataclass(frozen=True)
class AnchorSearch:
    """The settings of :func:`learn_anchors` and :func:`evolve` (defaults: YOLOv5's autoanchor).

    per_level: anchors per position of every level (``n_sizes * n_ratios``); thr: YOLOv5's
    ``anchor_t`` for the ratio fitness; generations, seed: of the evolution (and k-means);
    layouts: ``(n_sizes, n_ratios)`` pairs to try (None: :func:`layouts` of ``per_level``);
    max_points: k-means and evolution run on a seeded subset of this many boxes when there are
    more (each generation costs O(N x anchors)); iou, floor: the grid objective's matcher
    threshold and whether no size bucket may end below detectron2's defaults
    (:class:`GridObjective`); mutation_prob, sigma: the mutation of :func:`evolve`.
    """

    per_level: int = 3
    thr: float = DEFAULT_THR
    generations: int = 1000
    seed: int = 0
    layouts: Optional[Sequence[Tuple[int, int]]] = None
    max_points: int = MAX_FIT_POINTS
    iou: float = DEFAULT_IOU
    floor: bool = True
    mutation_prob: float = 0.9
    sigma: float = 0.1

    def candidate_layouts(self) -> List[Tuple[int, int]]:
        return list(self.layouts or layouts(self.per_level))


def evolve(
    wh: np.ndarray,
    start: LevelAnchors,
    strides: np.ndarray,
    search: AnchorSearch = AnchorSearch(),
    progress: Optional[Callable[[int, float], None]] = None,
    objective: Optional[Callable[[np.ndarray, np.ndarray], float]] = None,
) -> LevelAnchors:
    """YOLOv5's evolutionary refinement of the detectron2 parameters, inside the level rule.

    Each generation multiplies every size and ratio of the levels that serve boxes by
    ``clip(1 + m * u * sigma * n, 0.3, 3)`` (``m`` ~ Bernoulli(``mutation_prob``) per value,
    ``u`` ~ U(0, 1) per generation, ``n`` ~ N(0, 1)), clamps sizes to the level's range and
    ratios to ``RATIO_LIMITS``, and keeps the result only if the fitness of the generated
    anchors (:func:`cell_anchor_wh`) is strictly higher. Fitness therefore never decreases;
    the same seed gives the same result.

    Args:
        search: ``generations``, ``seed``, ``thr`` (of the default objective), ``mutation_prob``
            and ``sigma`` are used.
        progress: called after every generation with (generation, best fitness).
        objective: ``(sizes (L, n_s), ratios (L, n_r)) -> fitness`` to maximise instead of
            YOLOv5's ratio fitness on ``wh`` (e.g. ``lambda s, r:
            GridObjective(...)(level_anchor_wh(s.tolist(), r.tolist()))``).

    Returns:
        the best parameters, with ``history`` = best fitness after each generation.
    """
    if objective is None:
        def objective(s: np.ndarray, r: np.ndarray) -> float:
            return fitness(wh, cell_anchor_wh(s.tolist(), r.tolist()), search.thr)
    rng = np.random.default_rng(search.seed)
    mutation_prob, sigma = search.mutation_prob, search.sigma
    lo, hi = level_ranges(strides)
    mutable = (start.served > 0)[:, None]
    sizes, ratios = start.sizes.copy(), start.ratios.copy()
    best = objective(sizes, ratios)
    history = []
    for generation in range(search.generations):
        factors = []
        for shape in (sizes.shape, ratios.shape):
            v = np.ones(shape)
            while mutable.any() and (v[np.broadcast_to(mutable, shape)] == 1).all():
                v = (rng.random(shape) < mutation_prob) * rng.random() * rng.standard_normal(shape) * sigma + 1
                v = np.where(mutable, v.clip(0.3, 3.0), 1.0)
            factors.append(v)
        new_sizes = np.clip(sizes * factors[0], lo[:, None], hi[:, None])
        new_ratios = np.clip(ratios * factors[1], *RATIO_LIMITS)
        candidate = objective(new_sizes, new_ratios)
        if candidate > best:
            best, sizes, ratios = candidate, new_sizes, new_ratios
        history.append(best)
        if progress is not None:
            progress(generation, best)
    return LevelAnchors(sizes=sizes, ratios=ratios, served=start.served.copy(), history=history)


def round_anchors(anchors: LevelAnchors, strides: np.ndarray, size_decimals: int = 1,
                  ratio_decimals: int = 3) -> LevelAnchors:
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
    tried layout ``(n_sizes, n_ratios)``, the fitness of its k-means start and of its result.

    ``sizes`` / ``ratios`` are what to write (lists per level): ``anchors`` as lists, except for
    the levels in ``floor_levels``, which the final floor check (:func:`enforce_floor`) set to
    detectron2's default anchors of that level. ``deficit``: boxes still short of the floor
    after it (0 unless no floor-compatible fallback exists for this ``per_level``).
    """

    anchors: LevelAnchors
    layout: Tuple[int, int]
    start_fitness: Dict[Tuple[int, int], float]
    final_fitness: Dict[Tuple[int, int], float]
    sizes: List[List[float]] = field(default_factory=list)
    ratios: List[List[float]] = field(default_factory=list)
    floor_levels: List[int] = field(default_factory=list)
    deficit: int = 0
    objective: str = "ratio"
    starts: Dict[Any, LevelAnchors] = field(default_factory=dict)  # by layout, and "floor" (see learn_anchors)
    start: Any = None  # the key of starts the result evolved from


def floor_level_anchors(stride: float, per_level: int) -> Optional[Tuple[List[float], List[float]]]:
    """The fallback of one level for :func:`enforce_floor`: detectron2's default anchors of the
    level (size ``8 x stride``, ratios 0.5, 1, 2) when ``per_level`` is 3; for ``per_level = 3 m``
    those plus ``m - 1`` smaller sizes (``8 s / sqrt(2)^j``) with the same ratios, a superset of
    the defaults; None when ``per_level`` is not a multiple of 3 (no superset exists)."""
    if per_level % 3:
        return None
    m = per_level // 3
    return sorted(8.0 * stride / math.sqrt(2.0) ** j for j in range(m)), [0.5, 1.0, 2.0]


def enforce_floor(objective: "GridObjective", sizes: List[List[float]], ratios: List[List[float]],
                  strides: np.ndarray, per_level: int) -> Tuple[List[List[float]], List[List[float]], List[int], int]:
    """Replace levels by :func:`floor_level_anchors` until no size bucket is below the floor.

    Greedy: while ``objective.deficit`` > 0, replace the not yet replaced level whose
    replacement leaves the smallest deficit (ties: the higher fitness). Replacing every level
    gives a superset of detectron2's defaults on every level, so the deficit ends at 0 whenever
    a fallback exists. Returns (sizes, ratios, replaced level indices, remaining deficit).
    """
    sizes, ratios = [list(s) for s in sizes], [list(r) for r in ratios]

    def best_iou(s, r):
        return grid_best_iou(objective.gb, level_anchor_wh(s, r))

    deficit = objective.deficit(best_iou(sizes, ratios))
    replaced: List[int] = []
    fallbacks = [floor_level_anchors(float(st), per_level) for st in strides]
    while deficit > 0 and any(fb is not None and i not in replaced for i, fb in enumerate(fallbacks)):
        trials = []
        for level, fb in enumerate(fallbacks):
            if fb is None or level in replaced:
                continue
            s = sizes[:level] + [fb[0]] + sizes[level + 1:]
            r = ratios[:level] + [fb[1]] + ratios[level + 1:]
            b = best_iou(s, r)
            trials.append((objective.deficit(b), -objective.score(b), level, s, r))
        deficit, _, level, sizes, ratios = min(trials, key=lambda t: t[:3])
        replaced.append(level)
    return sizes, ratios, sorted(replaced), deficit


def fit_subset(num_boxes: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of the boxes k-means and evolution run on: all ``num_boxes``, or a seeded
    random subset of ``max_points`` when there are more."""
    if num_boxes <= max_points:
        return np.arange(num_boxes)
    return np.sort(np.random.default_rng(seed).choice(num_boxes, max_points, replace=False))


def _grid_objectives(grid: "GridBoxes", index: np.ndarray, strides: np.ndarray,
                     search: AnchorSearch) -> Tuple["GridObjective", "GridObjective"]:
    """The grid objective on all boxes (for the reported fitness and the floor check) and on the
    fitted subset ``index`` (for the evolution; the same object when the subset is everything)."""
    d2 = detectron2_default_anchors(strides) if search.floor else None
    full = GridObjective(grid, search.iou, floor=d2)
    fit = GridObjective(grid.subset(index), search.iou, floor=d2) if len(index) < len(grid) else full
    return full, fit


def _as_written(objective: "GridObjective") -> Callable[[np.ndarray, np.ndarray], float]:
    """``(sizes, ratios) -> fitness`` of the parameters rounded as :func:`round_anchors` writes
    them, so that rounding cannot drop a bucket below the floor after the evolution."""
    def score(s: np.ndarray, r: np.ndarray) -> float:
        return objective(level_anchor_wh(np.round(s, 1).tolist(), np.round(r, 3).tolist()))
    return score


def _starts(fit_wh: np.ndarray, served: np.ndarray, strides: np.ndarray, search: AnchorSearch,
            floor_start: bool) -> List[Tuple[Any, Tuple[int, int], LevelAnchors]]:
    """``(key, layout, start)`` of every evolution: the k-means start of each candidate layout
    (key: the layout) and, with ``floor_start`` and a ``(per_level / 3) x 3`` candidate, one on
    the floor itself (key ``"floor"``)."""
    candidates = search.candidate_layouts()
    runs: List[Tuple[Any, Tuple[int, int], LevelAnchors]] = []
    for layout in candidates:
        start = initial_anchors(fit_wh, strides, *layout, seed=search.seed)
        start.served = served
        runs.append((layout, layout, start))
    floor_layout = (search.per_level // 3, 3)
    if floor_start and floor_layout in candidates:
        # a second start on the floor itself (detectron2's defaults, or a superset): the deficit
        # is 0 there, so its evolution only accepts candidates that stay on or above the floor
        fallbacks = [floor_level_anchors(float(st), search.per_level) for st in strides]
        start = LevelAnchors(sizes=np.array([fb[0] for fb in fallbacks]), ratios=np.array([fb[1] for fb in fallbacks]),
                             served=served)
        runs.append(("floor", floor_layout, start))
    return runs


def learn_anchors(
    wh: np.ndarray,
    strides: np.ndarray,
    search: AnchorSearch = AnchorSearch(),
    grid: Optional["GridBoxes"] = None,
    progress_factory: Optional[Callable[[Any], Optional[Callable[[int, float], None]]]] = None,
) -> LearnedAnchors:
    """k-means start, evolution and rounding for every layout; the fittest rounded result wins.

    Args:
        wh: (N, 2) boxes at input scale, N >= 1; strides: (L,) increasing.
        search: the settings (:class:`AnchorSearch`); the fitness values reported are on all
            boxes, also when k-means and evolution run on a subset (``max_points``).
        grid: the same N boxes with positions (:class:`GridBoxes`): the fitness is then
            detectron2's matching (:class:`GridObjective` at ``search.iou``; with
            ``search.floor``, no size bucket may end below detectron2's defaults, checked on all
            boxes after rounding by :func:`enforce_floor`). None: YOLOv5's ratio fitness
            (``search.thr``). With the floor and a ``(per_level / 3) x 3`` layout, one more
            evolution starts from the floor itself (key ``"floor"`` in ``start_fitness`` /
            ``final_fitness``; :func:`floor_level_anchors`).
        progress_factory: run key (a layout or ``"floor"``) -> the ``progress`` callback of
            :func:`evolve` (or None).
    """
    index = fit_subset(len(wh), search.max_points, search.seed)
    fit_wh = wh[index]
    full_objective, evolve_objective = None, None
    if grid is not None:
        if len(grid) != len(wh):
            raise ValueError(f"grid has {len(grid)} boxes but wh {len(wh)}")
        full_objective, fit_objective = _grid_objectives(grid, index, strides, search)
        evolve_objective = _as_written(fit_objective)
    floored = full_objective is not None and full_objective.floor_covered is not None

    def full_score(anchors: LevelAnchors) -> float:
        if full_objective is None:
            return fitness(wh, anchors.wh(), search.thr)
        return full_objective(level_anchor_wh(anchors.sizes.tolist(), anchors.ratios.tolist()))

    served = np.bincount(assign_levels(np.sqrt(wh.prod(axis=1)), strides), minlength=len(strides))
    results = []
    start_fitness, final_fitness, starts = {}, {}, {}
    for key, layout, start in _starts(fit_wh, served, strides, search, floored):
        starts[key] = start
        start_fitness[key] = full_score(start)
        progress = progress_factory(key) if progress_factory else None
        final = round_anchors(evolve(fit_wh, start, strides, search, progress=progress, objective=evolve_objective),
                              strides)
        final_fitness[key] = full_score(final)
        results.append((final_fitness[key], layout, final, key))
    best = max(results, key=lambda r: r[0])  # first of equals: fewer sizes, more ratios, k-means start
    sizes, ratios = best[2].sizes.tolist(), best[2].ratios.tolist()
    replaced, deficit = [], 0
    if floored:
        sizes, ratios, replaced, deficit = enforce_floor(full_objective, sizes, ratios, strides, search.per_level)
    return LearnedAnchors(anchors=best[2], layout=best[1], start_fitness=start_fitness, final_fitness=final_fitness,
                          sizes=sizes, ratios=ratios, floor_levels=replaced, deficit=deficit,
                          objective="ratio" if grid is None else "grid", starts=starts, start=best[3])


# ------------------------------------------------------------------ YOLOv5-style baseline
def yolov5_style_anchors(
    wh: np.ndarray, n: int = 15, generations: int = 1000, thr: float = DEFAULT_THR, seed: int = 0,
    progress: Optional[Callable[[int, float], None]] = None,
) -> np.ndarray:
    """YOLOv5's ``kmean_anchors`` reimplemented (for comparison and timing, not for training).

    k-means of ``n`` free (w, h) on ``wh / wh.std(0)`` (YOLOv5 whitens, then scales back), then
    ``generations`` of its evolution on all ``n x 2`` values (mutation as :func:`evolve`, anchors
    clipped to >= 2 px) under its ratio fitness. Returns (n, 2) sorted by area.
    """
    std = wh.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    k = kmeans(wh / std, n, seed=seed)[0] * std
    rng = np.random.default_rng(seed)
    best = fitness(wh, k, thr)
    for generation in range(generations):
        v = np.ones(k.shape)
        while (v == 1).all():
            v = ((rng.random(k.shape) < 0.9) * rng.random() * rng.standard_normal(k.shape) * 0.1 + 1).clip(0.3, 3.0)
        candidate = (k * v).clip(min=2.0)
        f = fitness(wh, candidate, thr)
        if f > best:
            best, k = f, candidate
        if progress is not None:
            progress(generation, best)
    return k[np.argsort(k.prod(axis=1))]


# ------------------------------------------------------ grid objective: detectron2's own matching


def size_buckets(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy boxes -> (N,) bucket index of ``sqrt(w*h)``: 0 ``<8``, 1 ``8-16`` (8 included),
    2 ``16-32``, 3 ``32-96``, 4 ``>=96`` (:data:`BUCKET_NAMES`)."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return np.searchsorted(np.array(BUCKET_EDGES), np.sqrt(wh.prod(axis=1)), side="right")


def grid_shapes(image_hw: np.ndarray, strides: np.ndarray, size_divisibility: int = SIZE_DIVISIBILITY) -> np.ndarray:
    """Feature-map (height, width) of every level for images of size ``image_hw`` (N, 2).

    detectron2 pads the batch to a multiple of ``size_divisibility`` (0: no padding); a ResNet +
    FPN level of stride ``s`` (p6: max-pool of p5 with stride 2) then has ``ceil(padded / s)``
    positions per side. Returns an int array (N, L, 2).
    """
    hw = np.asarray(image_hw, dtype=np.float64)
    if size_divisibility and size_divisibility > 0:
        hw = np.ceil(hw / size_divisibility) * size_divisibility
    return np.ceil(hw[:, None, :] / np.asarray(strides, dtype=np.float64)[None, :, None]).astype(np.int64)


def level_anchor_wh(sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]]) -> List[np.ndarray]:
    """:func:`cell_anchor_wh` level by level: one (A_l, 2) array of (w, h) per level."""
    if len(aspect_ratios) == 1 and len(sizes) > 1:
        aspect_ratios = list(aspect_ratios) * len(sizes)
    if len(aspect_ratios) != len(sizes):
        raise ValueError(f"{len(sizes)} size lists but {len(aspect_ratios)} aspect-ratio lists")
    return [cell_anchor_wh([s], [r]) for s, r in zip(sizes, aspect_ratios)]


def detectron2_default_anchors(strides: np.ndarray) -> Tuple[List[List[float]], List[List[float]]]:
    """detectron2's FPN defaults (model zoo Base-RCNN-FPN): one size ``8 x stride`` per level,
    aspect ratios 0.5, 1, 2 -> (sizes, aspect_ratios) per level."""
    return [[8.0 * float(s)] for s in strides], [[0.5, 1.0, 2.0] for _ in strides]


@dataclass(frozen=True)
class GridBoxes:
    """Boxes placed as detectron2 sees them, with each level's anchor grid of their image.

    boxes: (N, 4) xyxy at input scale; grid: (N, L, 2) feature-map (height, width) of each box's
    image per level (:func:`grid_shapes`); strides: (L,); offset: detectron2's anchor offset (the
    anchors of level ``l`` are centred at ``(offset + k) * stride_l``, ``k = 0 .. size - 1``).
    """

    boxes: np.ndarray
    grid: np.ndarray
    strides: np.ndarray
    offset: float = D2_OFFSET

    @classmethod
    def build(cls, boxes: np.ndarray, image_hw: np.ndarray, strides: np.ndarray, offset: float = D2_OFFSET,
              size_divisibility: int = SIZE_DIVISIBILITY) -> "GridBoxes":
        strides = np.asarray(strides, dtype=np.float64)
        return cls(np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                   grid_shapes(image_hw, strides, size_divisibility), strides, float(offset))

    def subset(self, index: np.ndarray) -> "GridBoxes":
        return GridBoxes(self.boxes[index], self.grid[index], self.strides, self.offset)

    def __len__(self) -> int:
        return len(self.boxes)


def nearest_grid_index(centers: np.ndarray, size: np.ndarray, stride: float, offset: float) -> np.ndarray:
    """Index of the grid position nearest to each coordinate: ``clip(round(c / s - offset), 0,
    size - 1)`` (halves round up); centers and size of the same shape."""
    return np.clip(np.floor(centers / stride - offset + 0.5), 0, size - 1)


def centered_iou(boxes: np.ndarray, centers: np.ndarray, anchor_wh: np.ndarray) -> np.ndarray:
    """IoU of box ``i`` (N, 4) with every anchor shape ``j`` (A, 2) centred at ``centers[i]`` (N, 2).

    Returns (N, A)."""
    half = anchor_wh[None, :, :] / 2.0
    lo = centers[:, None, :] - half
    hi = centers[:, None, :] + half
    side = np.clip(np.minimum(hi, boxes[:, None, 2:]) - np.maximum(lo, boxes[:, None, :2]), 0.0, None)
    inter = side[..., 0] * side[..., 1]
    area_b = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    area_a = anchor_wh.prod(axis=1)[None, :]
    return inter / (area_b + area_a - inter)


def grid_iou(gb: GridBoxes, level_wh: Sequence[np.ndarray]) -> np.ndarray:
    """Best IoU of every box with every anchor shape over that shape's whole grid: (N, sum A_l).

    The IoU of two boxes of fixed shapes does not increase with ``|dx|`` or ``|dy|`` of their
    centres, so over a level's grid a shape's best position is the grid point nearest the box's
    centre in x and in y (clipped to the grid): one IoU per (box, shape) instead of one per
    anchor of the image. Equal, up to float rounding, to the maximum of detectron2's
    ``pairwise_iou`` over the anchors ``DefaultAnchorGenerator`` puts on the feature maps
    (tests/test_anchors.py compares the two).
    """
    centers = (gb.boxes[:, :2] + gb.boxes[:, 2:]) / 2.0
    out = []
    for level, wh in enumerate(level_wh):
        stride = gb.strides[level]
        size_xy = gb.grid[:, level, ::-1]  # (w, h) positions, to go with (x, y)
        anchor_centers = (nearest_grid_index(centers, size_xy, stride, gb.offset) + gb.offset) * stride
        out.append(centered_iou(gb.boxes, anchor_centers, np.asarray(wh, dtype=np.float64)))
    return np.concatenate(out, axis=1) if out else np.zeros((len(gb), 0))


def grid_best_iou(gb: GridBoxes, level_wh: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) each box's highest IoU with any anchor of any level (0 without anchors)."""
    iou = grid_iou(gb, level_wh)
    return iou.max(axis=1) if iou.shape[1] else np.zeros(len(gb))


def grid_counts(gb: GridBoxes, level_wh: Sequence[np.ndarray], thr: float) -> np.ndarray:
    """(N,) number of anchors on the grids (all positions, all levels) with IoU >= ``thr`` > 0.

    For a shape ``(aw, ah)`` and a box ``(bw, bh)``, IoU >= thr needs an intersection of at least
    ``thr * max(areas)``, so ``|dx| <= (aw + bw) / 2 - thr * max(areas) / min(ah, bh)`` (and
    likewise ``|dy|``); only grid positions within that window around the nearest one are
    enumerated (in chunks of at most :data:`COUNT_CHUNK` box-position pairs).
    """
    if not thr > 0:
        raise ValueError(f"grid_counts needs a threshold > 0, got {thr}")
    counts = np.zeros(len(gb), dtype=np.int64)
    boxes = gb.boxes
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for level, shapes in enumerate(level_wh):
        stride = gb.strides[level]
        size_xy = gb.grid[:, level, ::-1]
        near = nearest_grid_index(centers, size_xy, stride, gb.offset)
        for aw, ah in np.asarray(shapes, dtype=np.float64):
            big = np.maximum(bw * bh, aw * ah)
            dx_max = (aw + bw) / 2.0 - thr * big / np.minimum(ah, bh)
            dy_max = (ah + bh) / 2.0 - thr * big / np.minimum(aw, bw)
            feasible = np.nonzero((dx_max >= 0) & (dy_max >= 0))[0]
            if not len(feasible):
                continue
            radius = int(np.ceil(max(dx_max[feasible].max(), dy_max[feasible].max()) / stride)) + 1
            steps = np.arange(-radius, radius + 1, dtype=np.float64)
            chunk = max(1, COUNT_CHUNK // len(steps) ** 2)
            for start in range(0, len(feasible), chunk):
                idx = feasible[start:start + chunk]
                overlaps = []
                for axis, extent in ((0, aw), (1, ah)):
                    k = near[idx, axis, None] + steps[None, :]
                    valid = (k >= 0) & (k < size_xy[idx, axis, None])
                    c = (k + gb.offset) * stride
                    o = (np.minimum(c + extent / 2.0, boxes[idx, axis + 2, None])
                         - np.maximum(c - extent / 2.0, boxes[idx, axis, None]))
                    overlaps.append(np.clip(o, 0.0, None) * valid)
                inter = overlaps[0][:, :, None] * overlaps[1][:, None, :]
                union = (bw[idx] * bh[idx] + aw * ah)[:, None, None] - inter
                counts[idx] += (inter >= thr * union).sum(axis=(1, 2))
    return counts


@dataclass(frozen=True)
class GridMetrics:
    """Grid-IoU recall of one anchor set (see :func:`grid_metrics`); dicts keyed by IoU threshold."""

    recall: Dict[float, float]  # share of boxes whose best anchor reaches the threshold
    bucket_recall: Dict[float, Tuple[float, ...]]  # per BUCKET_NAMES (nan: empty bucket)
    bucket_covered: Dict[float, Tuple[int, ...]]  # boxes covered per bucket
    bucket_counts: Tuple[int, ...]  # boxes per bucket
    anchors_per_gt: Dict[float, float]  # mean number of grid anchors at IoU >= threshold per box
    mean_best_iou: float
    num_boxes: int


def grid_metrics(gb: GridBoxes, level_wh: Sequence[np.ndarray], ious: Sequence[float] = REPORT_IOUS,
                 counts: bool = True) -> GridMetrics:
    """Recall of detectron2's matcher per IoU threshold, overall and per size bucket, and (with
    ``counts``) the mean number of anchors per box above each threshold."""
    best = grid_best_iou(gb, level_wh)
    buckets = size_buckets(gb.boxes)
    n_b = np.bincount(buckets, minlength=len(BUCKET_NAMES))
    recall, bucket_recall, bucket_covered, per_gt = {}, {}, {}, {}
    for t in ious:
        covered = np.bincount(buckets[best >= t], minlength=len(BUCKET_NAMES))
        recall[t] = float((best >= t).mean()) if len(gb) else 0.0
        bucket_covered[t] = tuple(int(c) for c in covered)
        bucket_recall[t] = tuple(float(c / n) if n else float("nan") for c, n in zip(covered, n_b))
        per_gt[t] = float(grid_counts(gb, level_wh, t).mean()) if counts and len(gb) else float("nan")
    return GridMetrics(recall, bucket_recall, bucket_covered, tuple(int(n) for n in n_b), per_gt,
                       float(best.mean()) if len(gb) else 0.0, len(gb))


class GridObjective:
    """The evolution's fitness under detectron2's matching, with a floor per size bucket.

    ``fitness = recall@iou + mean_best_iou / (N + 1) - deficit``: the share of boxes whose best
    grid anchor reaches ``iou`` (0.7: the RPN's positive threshold), ties broken by the mean best
    IoU (its weight keeps it below one box of recall), minus ``deficit`` = the number of boxes by
    which any size bucket, at any threshold of ``floor_ious``, falls short of the ``floor``
    anchors (detectron2's defaults). A deficit of one box outweighs any recall gain, so the
    evolution first reaches the floor in every bucket, then maximises recall.
    """

    def __init__(self, gb: GridBoxes, iou: float = DEFAULT_IOU,
                 floor: Optional[Tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]]] = None,
                 floor_ious: Sequence[float] = REPORT_IOUS):
        if not 0 < iou <= 1:
            raise ValueError(f"IoU threshold must be in (0, 1], got {iou}")
        self.gb, self.iou = gb, float(iou)
        self.buckets = size_buckets(gb.boxes)
        self.thresholds = tuple(sorted(set(float(t) for t in floor_ious) | {self.iou}))
        self.floor_covered: Optional[np.ndarray] = None
        if floor is not None:
            self.floor_covered = self.covered(grid_best_iou(gb, level_anchor_wh(*floor)))

    def covered(self, best: np.ndarray) -> np.ndarray:
        """(T, B) boxes covered per threshold of ``thresholds`` and size bucket."""
        return np.stack([np.bincount(self.buckets[best >= t], minlength=len(BUCKET_NAMES)) for t in self.thresholds])

    def deficit(self, best: np.ndarray) -> int:
        """Boxes short of the floor, summed over thresholds and buckets (0 without a floor)."""
        if self.floor_covered is None:
            return 0
        return int(np.clip(self.floor_covered - self.covered(best), 0, None).sum())

    def score(self, best: np.ndarray) -> float:
        n = len(best)
        if not n:
            return 0.0
        return float((best >= self.iou).mean() + best.mean() / (n + 1) - self.deficit(best))

    def __call__(self, level_wh: Sequence[np.ndarray]) -> float:
        return self.score(grid_best_iou(self.gb, level_wh))
