"""The health report of a COCO detection json (counts, sizes, suspicious boxes) behind
``ugs-health``.

:func:`write_health` writes ``DIR/health.md``, ``DIR/class_counts.png`` (boxes per
class) and ``DIR/box_sizes.png`` (histogram of ``sqrt(w*h)`` at the native image scale, log x
axis, bucket boundaries 8 / 16 / 32 / 96 px marked), all atomically. The default DIR is
``<json stem>_health/`` next to the json.

Definitions (every annotation is in exactly one of the first three groups):

* **unknown image**: ``image_id`` is not in ``images`` (no geometry check is possible);
* **degenerate**: the bbox is not 4 finite numbers (*malformed*), or ``w <= 0`` or ``h <= 0``
  (*non-positive size*), or it extends more than 1 px beyond the image (*outside the image*,
  which includes boxes wholly outside);
* **valid**: every other box. Sizes, buckets and the checks below use valid boxes only:
* box size ``s = sqrt(w*h)`` in px. COCO buckets: small ``s < 32``, medium ``32 <= s < 96``,
  large ``s >= 96`` (COCOeval uses the annotation's ``area``, which is ``w*h`` for box-only
  datasets). AI-TOD tiny buckets: very tiny ``s < 8``, tiny ``8 <= s < 16``, small
  ``16 <= s < 32`` (and ``>= 32``: not tiny);
* **under 3 px**: ``min(w, h) < 3``;
* **touching an edge**: within 1 px of an image border (``x <= 1``, ``y <= 1``,
  ``x + w >= W - 1`` or ``y + h >= H - 1``);
* **duplicate**: same image and class as an earlier box (json order) with IoU >= 0.95; three
  copies of one box count as two duplicates. O(n^2) per image and class.

Other counts: **empty images** (no annotation at all) and **unknown category** (a
``category_id`` not in ``categories``; such boxes are still checked, under their id).
:func:`health_report` is pure (a COCO dict in, a dict out); :func:`render_markdown` formats it.
"""
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from ugs_d2.boxes import box_iou
from ugs_d2.data.coco_json import CocoError, read_coco_json
from ugs_d2.fileio import write_atomic, write_text_atomic

__all__ = [
    "DUPLICATE_IOU",
    "EDGE_TOLERANCE",
    "MIN_SIDE",
    "COCO_BUCKETS",
    "TINY_BUCKETS",
    "health_report",
    "render_markdown",
    "plot_class_counts",
    "plot_box_sizes",
    "default_out_dir",
    "write_health",
    "format_statistics",
]

DUPLICATE_IOU = 0.95
EDGE_TOLERANCE = 1.0  # px: "touching an edge" and "outside the image"
MIN_SIDE = 3.0  # px: labels with a shorter side are reported
# (key, label, lower bound, upper bound) on s = sqrt(w*h), px
COCO_BUCKETS: Tuple[Tuple[str, str, float, float], ...] = (
    ("small", "COCO small (s < 32)", 0.0, 32.0),
    ("medium", "COCO medium (32 <= s < 96)", 32.0, 96.0),
    ("large", "COCO large (s >= 96)", 96.0, math.inf),
)
TINY_BUCKETS: Tuple[Tuple[str, str, float, float], ...] = (
    ("very_tiny", "AI-TOD very tiny (s < 8)", 0.0, 8.0),
    ("tiny", "AI-TOD tiny (8 <= s < 16)", 8.0, 16.0),
    ("small", "AI-TOD small (16 <= s < 32)", 16.0, 32.0),
    ("not_tiny", "not tiny (s >= 32)", 32.0, math.inf),
)
_EXAMPLES = 5  # annotation / image ids listed per problem


def _bbox(ann: Mapping[str, Any]) -> Optional[Tuple[float, float, float, float]]:
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in values) or any(isinstance(v, bool) for v in bbox):
        return None
    return values  # type: ignore[return-value]


def _key(value: Any) -> Any:
    """A json value usable as a dict key (a malformed list / object id becomes its repr)."""
    return value if value is None or isinstance(value, (int, float, str)) else repr(value)


def _duplicates(boxes: np.ndarray, threshold: float) -> List[int]:
    """Indices of boxes (x, y, w, h rows) with IoU >= threshold with an earlier box."""
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    iou = box_iou(xyxy, xyxy)
    return [i for i in range(1, len(boxes)) if (iou[i, :i] >= threshold).any()]


def _image_sizes(coco: Mapping[str, Any]) -> Dict[Any, Tuple[float, float]]:
    """Image id -> (width, height)."""
    images: Dict[Any, Tuple[float, float]] = {}
    for position, image in enumerate(coco.get("images", [])):
        try:
            images[image["id"]] = (float(image["width"]), float(image["height"]))
        except (KeyError, TypeError, ValueError):
            raise CocoError(f"images[{position}] needs id, width and height") from None
    return images


def _category_names(coco: Mapping[str, Any]) -> Dict[Any, str]:
    """Category id -> name, in id order."""
    categories = coco.get("categories", [])
    for position, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), (int, float, str)):
            raise CocoError(f"categories[{position}] needs an id")
    try:
        categories = sorted(categories, key=lambda c: c["id"])
    except TypeError:
        raise CocoError("category ids must all be numbers") from None
    return {c["id"]: str(c.get("name", c["id"])) for c in categories}


@dataclass
class _Tally:
    """What the pass over the annotations counts: problems (with their first ids), boxes and
    images per class, the sizes of the valid boxes and the valid boxes per (image, class)."""

    counts: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: Dict[str, List[Any]] = field(default_factory=lambda: defaultdict(list))
    class_boxes: Dict[Any, int] = field(default_factory=dict)
    class_images: Dict[Any, Set[Any]] = field(default_factory=dict)
    annotated_images: Set[Any] = field(default_factory=set)
    sides: List[float] = field(default_factory=list)
    groups: Dict[Tuple[Any, Any], List[Tuple[Any, Tuple[float, float, float, float]]]] = field(
        default_factory=lambda: defaultdict(list))

    def note(self, problem: str, ann_id: Any) -> None:
        self.counts[problem] += 1
        if len(self.examples[problem]) < _EXAMPLES:
            self.examples[problem].append(ann_id)


def _check_box(tally: _Tally, ann_id: Any, box: Optional[Tuple[float, float, float, float]],
               image_wh: Tuple[float, float]) -> bool:
    """Note the box's problems; True when it is valid (4 finite numbers, positive size, inside)."""
    if box is None:
        tally.note("malformed", ann_id)
        return False
    (x, y, w, h), (width, height), tol = box, image_wh, EDGE_TOLERANCE
    if w <= 0 or h <= 0:
        tally.note("non_positive_size", ann_id)
        return False
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        tally.note("outside_image", ann_id)
        return False
    tally.counts["valid"] += 1
    tally.sides.append(math.sqrt(w * h))
    if min(w, h) < MIN_SIDE:
        tally.note("under_min_side", ann_id)
    if x <= tol or y <= tol or x + w >= width - tol or y + h >= height - tol:
        tally.note("touching_edge", ann_id)
    return True


def _tally(annotations: Sequence[Any], images: Mapping[Any, Tuple[float, float]], names: Mapping[Any, str],
           duplicate_iou: float) -> _Tally:
    """One pass over the annotations (json order), then the duplicates and the empty images."""
    tally = _Tally(class_boxes={cid: 0 for cid in names}, class_images={cid: set() for cid in names})
    for position, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise CocoError(f"annotations[{position}] is not an object")
        ann_id = ann.get("id", f"#{position}")
        image_id, cid = (_key(ann.get(k)) for k in ("image_id", "category_id"))
        if cid not in names:
            tally.note("unknown_category", ann_id)
        tally.class_boxes[cid] = tally.class_boxes.get(cid, 0) + 1
        if image_id not in images:
            tally.note("unknown_image", ann_id)
            continue
        tally.annotated_images.add(image_id)
        tally.class_images.setdefault(cid, set()).add(image_id)
        box = _bbox(ann)
        if _check_box(tally, ann_id, box, images[image_id]):
            tally.groups[(image_id, cid)].append((ann_id, box))
    for members in tally.groups.values():
        if len(members) > 1:
            for i in _duplicates(np.array([b for _, b in members], dtype=np.float64), duplicate_iou):
                tally.note("duplicates", members[i][0])
    for image_id in images:
        if image_id not in tally.annotated_images:
            tally.note("empty_images", image_id)
    return tally


def _per_class(tally: _Tally, names: Mapping[Any, str]) -> List[Dict[str, Any]]:
    """Rows ``id``, ``name``, ``boxes``, ``images``: the categories in id order, then the unknown ids."""
    known = [{"id": cid, "name": names[cid], "boxes": tally.class_boxes[cid], "images": len(tally.class_images[cid])}
             for cid in names]
    unknown = [{"id": cid, "name": f"{cid} (unknown)", "boxes": n, "images": len(tally.class_images.get(cid, ()))}
               for cid, n in tally.class_boxes.items() if cid not in names]
    return known + unknown


def _buckets(sides: np.ndarray, spec: Sequence[Tuple[str, str, float, float]]) -> Dict[str, int]:
    return {key: int(((sides >= lo) & (sides < hi)).sum()) for key, _, lo, hi in spec}


def health_report(coco: Mapping[str, Any], duplicate_iou: float = DUPLICATE_IOU) -> Dict[str, Any]:
    """Counts and size statistics of a COCO detection dict (see the module docstring).

    Returns a dict: ``num_images``, ``num_annotations``, ``num_categories``, ``empty_images``,
    ``valid_boxes``, ``per_class`` (rows ``id``, ``name``, ``boxes``, ``images`` in id order,
    then unknown category ids named ``"<id> (unknown)"``), ``coco_buckets`` and ``tiny_buckets``
    (key -> count of valid boxes), ``box_sides`` (``sqrt(w*h)`` of every valid box, json order),
    ``under_min_side``, ``touching_edge``, ``duplicates``, ``degenerate`` (``total``,
    ``malformed``, ``non_positive_size``, ``outside_image``), ``unknown_image``,
    ``unknown_category``, ``examples`` (problem -> first annotation ids, or image ids for
    ``empty_images``) and the thresholds used (``duplicate_iou``, ``edge_tolerance``,
    ``min_side``).
    """
    images = _image_sizes(coco)
    names = _category_names(coco)
    annotations = coco.get("annotations", [])
    tally = _tally(annotations, images, names, duplicate_iou)
    counts = tally.counts
    s = np.array(tally.sides, dtype=np.float64)
    degenerate = {k: counts[k] for k in ("malformed", "non_positive_size", "outside_image")}
    return {
        "num_images": len(images),
        "num_annotations": len(annotations),
        "num_categories": len(coco.get("categories", [])),  # a repeated id counts twice here
        "empty_images": counts["empty_images"],
        "valid_boxes": counts["valid"],
        "per_class": _per_class(tally, names),
        "coco_buckets": _buckets(s, COCO_BUCKETS),
        "tiny_buckets": _buckets(s, TINY_BUCKETS),
        "box_sides": [float(v) for v in s],
        "under_min_side": counts["under_min_side"],
        "touching_edge": counts["touching_edge"],
        "duplicates": counts["duplicates"],
        "degenerate": {"total": sum(degenerate.values()), **degenerate},
        "unknown_image": counts["unknown_image"],
        "unknown_category": counts["unknown_category"],
        "examples": dict(tally.examples),
        "duplicate_iou": duplicate_iou,
        "edge_tolerance": EDGE_TOLERANCE,
        "min_side": MIN_SIDE,
    }


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def _g(v: float) -> str:
    return f"{v:g}"


def render_markdown(report: Mapping[str, Any], title: str = "Dataset health", figures: bool = True) -> str:
    """The report as markdown; ``figures`` adds links to ``class_counts.png`` / ``box_sizes.png``."""
    r = report
    n_img, n_ann, n_valid = r["num_images"], r["num_annotations"], r["valid_boxes"]
    ex, deg = r["examples"], r["degenerate"]
    tol = _g(r["edge_tolerance"])
    counts = dict(deg, **{k: r[k] for k in ("under_min_side", "touching_edge", "duplicates",
                                             "unknown_image", "unknown_category", "empty_images")})

    def examples(key: str) -> str:
        return _examples(ex, key, counts)

    deg_examples = [i for k in ("malformed", "non_positive_size", "outside_image") for i in ex.get(k, [])]
    lines = [
        f"# {title}",
        "",
        f"{n_img} images ({r['empty_images']} empty), {n_ann} annotations ({n_valid} valid boxes), "
        f"{r['num_categories']} classes.",
        "",
        "## Problems",
        "",
        "| check | count | share | first ids |",
        "|---|---:|---:|---|",
        f"| labels with min side < {_g(r['min_side'])} px | {r['under_min_side']} | "
        f"{_share(r['under_min_side'], n_valid)} of valid | {examples('under_min_side')} |",
        f"| boxes touching an image edge (within {tol} px) | {r['touching_edge']} | "
        f"{_share(r['touching_edge'], n_valid)} of valid | {examples('touching_edge')} |",
        f"| duplicate boxes (same image and class, IoU >= {_g(r['duplicate_iou'])}) | {r['duplicates']} | "
        f"{_share(r['duplicates'], n_valid)} of valid | {examples('duplicates')} |",
        f"| degenerate boxes | {deg['total']} | {_share(deg['total'], n_ann)} of all | "
        f"{', '.join(str(i) for i in deg_examples[:_EXAMPLES])}{', ...' if deg['total'] > _EXAMPLES else ''} |",
        f"| - malformed bbox (not 4 finite numbers) | {deg['malformed']} | | {examples('malformed')} |",
        f"| - width or height <= 0 | {deg['non_positive_size']} | | {examples('non_positive_size')} |",
        f"| - more than {tol} px outside the image | {deg['outside_image']} | | "
        f"{examples('outside_image')} |",
        f"| annotations of an unknown image id | {r['unknown_image']} | {_share(r['unknown_image'], n_ann)} of all | "
        f"{examples('unknown_image')} |",
        f"| annotations of an unknown category id | {r['unknown_category']} | "
        f"{_share(r['unknown_category'], n_ann)} of all | {examples('unknown_category')} |",
        f"| empty images (no annotation) | {r['empty_images']} | {_share(r['empty_images'], n_img)} of images | "
        f"{examples('empty_images')} (image ids) |",
        "",
        "## Boxes per class",
        "",
        "| id | class | boxes | share | images |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in r["per_class"]:
        lines.append(f"| {row['id']} | {row['name']} | {row['boxes']} | {_share(row['boxes'], n_ann)} | "
                     f"{row['images']} |")
    sides = np.array(r["box_sides"], dtype=np.float64)
    lines += ["", "## Box sizes", ""]
    if len(sides):
        q = np.percentile(sides, [0, 10, 50, 90, 100])
        lines.append(
            "Size s = sqrt(w*h) of the valid boxes, px at the native image scale: "
            f"min {q[0]:.1f}, p10 {q[1]:.1f}, median {q[2]:.1f}, p90 {q[3]:.1f}, max {q[4]:.1f}."
        )
    else:
        lines.append("No valid boxes.")
    lines += ["", "| bucket | boxes | share of valid |", "|---|---:|---:|"]
    for spec, key in ((COCO_BUCKETS, "coco_buckets"), (TINY_BUCKETS, "tiny_buckets")):
        for name, label, _, _ in spec:
            n = r[key][name]
            lines.append(f"| {label} | {n} | {_share(n, n_valid)} |")
    if figures:
        lines += ["", "![boxes per class](class_counts.png)", "", "![box sizes](box_sizes.png)"]
    return "\n".join(lines) + "\n"


def _examples(ex: Mapping[str, List[Any]], key: str, counts: Mapping[str, int]) -> str:
    ids = ex.get(key, [])
    return ", ".join(str(i) for i in ids) + (", ..." if counts[key] > len(ids) else "")


def _save_figure(fig: Any, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_class_counts(report: Mapping[str, Any], path: str, title: str = "") -> None:
    """Bar chart of the boxes per class."""
    from matplotlib.figure import Figure

    rows = report["per_class"]
    fig = Figure(figsize=(min(max(5.0, 0.35 * len(rows) + 1.5), 30.0), 3.8))
    ax = fig.subplots()
    bars = ax.bar(range(len(rows)), [row["boxes"] for row in rows], color="tab:blue")
    ax.set_xticks(list(range(len(rows))))
    ax.set_xticklabels([row["name"] for row in rows], rotation=45 if len(rows) > 6 else 0,
                       ha="right" if len(rows) > 6 else "center")
    if 0 < len(rows) <= 30:
        ax.bar_label(bars, fontsize="small")
    ax.set_ylabel("boxes")
    ax.set_title(f"{title}: boxes per class" if title else "boxes per class")
    ax.grid(True, axis="y", alpha=0.3)
    _save_figure(fig, path)


def plot_box_sizes(report: Mapping[str, Any], path: str, title: str = "") -> None:
    """Histogram of sqrt(w*h) (log x axis) with the AI-TOD and COCO bucket boundaries."""
    from matplotlib.figure import Figure

    sides = np.array(report["box_sides"], dtype=np.float64)
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    if len(sides):
        lo, hi = max(sides.min(), 0.5), max(sides.max(), 128.0)
        bins = np.logspace(math.log10(min(lo, 1.0)), math.log10(hi * 1.05), 40)
        ax.hist(sides, bins=bins, color="tab:blue", alpha=0.8)
    else:
        ax.text(0.5, 0.5, "no valid boxes", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(1, 128)
    ax.set_xscale("log")
    for edge, label, color in ((8, "8", "tab:orange"), (16, "16", "tab:orange"),
                               (32, "32", "tab:red"), (96, "96", "tab:red")):
        ax.axvline(edge, color=color, linestyle="--", linewidth=1)
        ax.text(edge, 1.0, f" {label}", color=color, transform=ax.get_xaxis_transform(), va="top", fontsize="small")
    ax.set_xlabel("box size sqrt(w*h), px (native scale); AI-TOD 8/16/32, COCO 32/96")
    ax.set_ylabel("boxes")
    ax.set_title(f"{title}: box sizes" if title else "box sizes")
    ax.grid(True, alpha=0.3)
    _save_figure(fig, path)


def default_out_dir(json_path: str) -> str:
    stem = os.path.splitext(os.path.basename(json_path))[0]
    return os.path.join(os.path.dirname(os.path.abspath(json_path)), f"{stem}_health")


def write_health(json_path: str, out_dir: Optional[str] = None) -> Dict[str, Any]:
    """Read ``json_path``, write ``health.md`` and the two PNGs to ``out_dir``.

    Returns ``report``, ``markdown`` and the written ``paths``.
    """
    coco = read_coco_json(json_path)
    out_dir = out_dir or default_out_dir(json_path)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CocoError(f"--out {out_dir} exists and is not a directory")
    report = health_report(coco)
    markdown = render_markdown(report, title=f"Dataset health: {json_path}")
    title = os.path.basename(json_path)
    paths = [os.path.join(out_dir, name) for name in ("health.md", "class_counts.png", "box_sizes.png")]
    write_text_atomic(paths[0], markdown)
    plot_class_counts(report, paths[1], title)
    plot_box_sizes(report, paths[2], title)
    return {"report": report, "markdown": markdown, "paths": paths}


def format_statistics(split: str, stats: Mapping[str, Any]) -> str:
    """One line of :func:`ugs_d2.data.synth.dataset_statistics` (what ``ugs-data synth`` prints per split)."""
    buckets = stats["area_buckets"]
    return (
        f"{split}: {stats['num_images']} images ({stats['num_empty_images']} empty), "
        f"{stats['num_annotations']} boxes, {stats['objects_per_image_mean']:.1f} per image "
        f"(max {stats['objects_per_image_max']}); longer side < 16 px: "
        f"{100 * stats['frac_max_side_lt16']:.0f}%, < 32 px: {100 * stats['frac_max_side_lt32']:.0f}%; "
        f"COCO small/medium/large: {buckets['small']}/{buckets['medium']}/{buckets['large']}"
    )
