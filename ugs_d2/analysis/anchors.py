"""What ``ugs-anchors`` reports and writes: the "before" anchors, the learning run with its
report lines, the grid-IoU comparison table and the Hydra override file.

The learning itself (k-means, evolution, the level rule and the metrics) is
:mod:`ugs_d2.anchors`; this module reads the dataset, runs it with the command's options
(:class:`AnchorOptions`, checked by :func:`check_options`) and says what happened, one line at
a time through ``print_line`` so that the command prints and a caller can collect.
"""
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ugs_d2 import anchors as A
from ugs_d2.data.coco_json import read_coco_json
from ugs_d2.fileio import write_text_atomic

__all__ = [
    "PROG",
    "PROJECT_LEVELS",
    "AnchorsError",
    "AnchorOptions",
    "AnchorPlan",
    "check_options",
    "base_anchors",
    "format_lists",
    "format_overrides",
    "render_override_file",
    "grid_table",
    "learn_and_report",
    "usage_lines",
]

PROG = "ugs-anchors"
PROJECT_LEVELS = ["p2", "p3", "p4", "p5", "p6"]  # RPN.IN_FEATURES of every model in configs/model/

PrintLine = Callable[[str], Any]


class AnchorsError(ValueError):
    """A bad option or input; the message is one line."""


@dataclass(frozen=True)
class AnchorOptions:
    """The options of ``ugs-anchors`` (named as its argparse destinations; see its ``--help``)."""

    json: str
    levels: str = "p2..p6"
    per_level: int = 3
    layout: str = "auto"
    input_size: Optional[Sequence[int]] = None
    base: str = "tiny_r18_fpn"
    base_ratios: Optional[str] = None
    generations: int = 1000
    thr: float = A.DEFAULT_THR
    seed: int = 0
    out: Optional[str] = None
    objective: str = "grid"
    iou: float = A.DEFAULT_IOU
    anchor_offset: float = A.D2_OFFSET
    size_divisibility: int = A.SIZE_DIVISIBILITY
    no_floor: bool = False
    no_progress: bool = False


@dataclass(frozen=True)
class AnchorPlan:
    """What the checked options mean: the FPN levels and their strides (L,), the input size
    (``(None, None)``: the base preset's), the override file and the layouts to try."""

    levels: List[str]
    strides: np.ndarray
    input_size: Tuple[Optional[int], Optional[int]]
    out: str
    layouts: List[Tuple[int, int]]


# ------------------------------------------------------------------------------ options
def _parse_layout(text: str, per_level: int) -> List[Tuple[int, int]]:
    if text == "auto":
        return A.layouts(per_level)
    try:
        n_sizes, n_ratios = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise AnchorsError(f"--layout: expected auto or SIZESxRATIOS like 3x1, got {text!r}") from None
    if n_sizes < 1 or n_ratios < 1 or n_sizes * n_ratios != per_level:
        raise AnchorsError(f"--layout {text}: sizes x ratios must equal --per-level {per_level}")
    return [(n_sizes, n_ratios)]


def _parse_levels(text: str) -> List[str]:
    backwards = re.fullmatch(r"\s*p(\d)\s*\.\.\s*p(\d)\s*", text.lower())
    if backwards and int(backwards[1]) > int(backwards[2]):  # else "levels between p0 and p9"
        first, last = backwards[2], backwards[1]
        raise AnchorsError(f"--levels: {text} runs downwards; levels go from fine to coarse: p{first}..p{last}")
    try:
        return A.parse_levels(text)
    except ValueError as e:
        raise AnchorsError(f"--levels: {e}") from None


def _check_numbers(o: AnchorOptions) -> None:
    problems = [
        (o.per_level < 1, f"--per-level: expected a positive integer, got {o.per_level}"),
        (o.generations < 0, f"--generations: expected >= 0, got {o.generations}"),
        (not (math.isfinite(o.thr) and o.thr > 1.0), f"--thr: expected a number > 1, got {o.thr}"),
        (not (math.isfinite(o.iou) and 0.0 < o.iou <= 1.0), f"--iou: expected a number in (0, 1], got {o.iou}"),
        (not (math.isfinite(o.anchor_offset) and 0.0 <= o.anchor_offset < 1.0),
         f"--anchor-offset: expected a number in [0, 1), got {o.anchor_offset}"),
        (o.size_divisibility < 0, f"--size-divisibility: expected >= 0, got {o.size_divisibility}"),
    ]
    for failed, message in problems:
        if failed:
            raise AnchorsError(message)


def _input_size(values: Optional[Sequence[int]]) -> Tuple[Optional[int], Optional[int]]:
    """``--input-size MIN [MAX]`` -> (min, max); no MAX: no cap (``sys.maxsize``)."""
    if values is None:
        return None, None
    if len(values) > 2 or any(v < 1 for v in values):
        raise AnchorsError(f"--input-size: expected MIN [MAX], positive integers, got {' '.join(map(str, values))}")
    size = (values[0], values[1] if len(values) == 2 else sys.maxsize)
    if size[1] < size[0]:
        raise AnchorsError(f"--input-size: MAX {size[1]} is smaller than MIN {size[0]}")
    return size


def _out_path(json_path: str, out: Optional[str]) -> str:
    """``--out``, by default ``<json stem>_anchors.yaml`` next to the json."""
    if out is None:
        stem = os.path.splitext(os.path.basename(json_path))[0]
        out = os.path.join(os.path.dirname(os.path.abspath(json_path)), f"{stem}_anchors.yaml")
    if not out.endswith((".yaml", ".yml")):
        raise AnchorsError(f"--out: expected a .yaml file, got {out}")
    if os.path.isdir(out):
        raise AnchorsError(f"--out {out} is a directory")
    return out


def check_options(options: AnchorOptions) -> AnchorPlan:
    """The plan of a run, or :class:`AnchorsError` naming the first bad option (in the order
    levels, numbers, input size, output, layout)."""
    levels = _parse_levels(options.levels)
    _check_numbers(options)
    size = _input_size(options.input_size)
    out = _out_path(options.json, options.out)
    return AnchorPlan(levels, A.level_strides(levels), size, out, _parse_layout(options.layout, options.per_level))


def _number_lists(value: Any, what: str) -> List[List[float]]:
    """A list of numbers (one list, detectron2's broadcast) or a list of lists -> list of lists."""
    if isinstance(value, list) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        value = [value]
    if not (isinstance(value, list) and value and all(
        isinstance(row, list) and row
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in row)
        for row in value
    )):
        raise AnchorsError(f"{what}: expected a list of positive numbers or a list of such lists, got {value!r}")
    return [[float(v) for v in row] for row in value]


def _preset_anchors(name: str, path: str) -> Dict[str, Any]:
    with open(path, "r", encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    try:
        anchors, size = preset["anchors"], preset["input"]
        return {
            "name": f"model={name}",
            "sizes": _number_lists(anchors["sizes"], f"{path}: anchors.sizes"),
            "aspect_ratios": _number_lists(anchors["aspect_ratios"], f"{path}: anchors.aspect_ratios"),
            "input": (int(size["min_size_test"]), int(size["max_size_test"])),
        }
    except (KeyError, TypeError):
        raise AnchorsError(f"{path}: expected anchors.sizes, anchors.aspect_ratios and input.*_size_test") from None


def base_anchors(base: str, base_ratios: Optional[str], strides: Sequence[float], model_dir: str) -> Dict[str, Any]:
    """The "before" anchors: a model preset name (a yaml of ``model_dir``), ``detectron2`` or
    explicit sizes (yaml text; ``base_ratios`` their aspect ratios).

    Returns ``name``, ``sizes`` and ``aspect_ratios`` (lists of lists) and ``input``
    (``(min_size, max_size)`` of the preset's test resize, None for explicit sizes).
    """
    if base == "detectron2":
        # detectron2's FPN defaults (configs/Base-RCNN-FPN.yaml in its model zoo, not installed
        # with the package): one size of 8 x stride per level, ratios 0.5/1/2, test size 800/1333.
        # get_cfg()'s own SIZES ([[32, ..., 512]]) are for single-level RPNs, so not used here.
        return {
            "name": "detectron2 FPN defaults",
            "sizes": [[8.0 * s] for s in strides],
            "aspect_ratios": [[0.5, 1.0, 2.0]],
            "input": (800, 1333),
        }
    presets = sorted(f[:-5] for f in os.listdir(model_dir) if f.endswith(".yaml")) if os.path.isdir(model_dir) else []
    if base in presets:
        return _preset_anchors(base, os.path.join(model_dir, f"{base}.yaml"))
    try:
        sizes = yaml.safe_load(base)
        ratios = yaml.safe_load(base_ratios) if base_ratios is not None else [[0.5, 1.0, 2.0]]
    except yaml.YAMLError:
        sizes = ratios = None
    if not isinstance(sizes, list):
        raise AnchorsError(
            f"--base: expected a model preset ({', '.join(presets)}), detectron2, or sizes like "
            f"[[8],[16],[32],[64],[128]], got {base!r}"
        )
    sizes = _number_lists(sizes, "--base")
    if len(sizes) == 1:  # detectron2's broadcast: one list for every level
        sizes = sizes * len(strides)
    return {"name": "given", "sizes": sizes, "aspect_ratios": _number_lists(ratios, "--base-ratios"), "input": None}


def _check_same_levels(options: AnchorOptions, plan: AnchorPlan, base: Dict[str, Any]) -> None:
    """The base anchors need one size list per level of ``--levels`` (the comparison pairs them)."""
    if len(base["sizes"]) != len(plan.strides):
        raise AnchorsError(
            f"--base {options.base} has {len(base['sizes'])} anchor levels but --levels gives "
            f"{len(plan.strides)} (strides {', '.join(f'{s:g}' for s in plan.strides)}): give --levels "
            "to match, or --base detectron2 / sizes with one list per level"
        )


# ------------------------------------------------------------------------------ formatting
def _fmt(v: float) -> str:
    return repr(float(v))


def format_lists(rows: Sequence[Sequence[float]], sep: str = ", ") -> str:
    """``[[1.0, 2.0], [3.0]]`` as yaml / Hydra flow text (``sep`` between numbers and lists)."""
    return "[" + sep.join("[" + sep.join(_fmt(v) for v in row) + "]" for row in rows) + "]"


def format_overrides(sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]]) -> List[str]:
    """The ``ugs-train`` command-line overrides (no spaces: one shell word each)."""
    return [f"model.anchors.sizes={format_lists(sizes, ',')}",
            f"model.anchors.aspect_ratios={format_lists(ratios, ',')}"]


def render_override_file(sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]],
                         comments: Sequence[str]) -> str:
    """The Hydra override file: ``# @package model.anchors`` first, then comments and the keys."""
    lines = ["# @package model.anchors"] + [f"# {c}" for c in comments]
    lines += ["# sizes: sqrt(w*h) in input pixels, one list per FPN level; aspect_ratios: height / width",
              f"sizes: {format_lists(sizes)}", f"aspect_ratios: {format_lists(ratios)}"]
    return "\n".join(lines) + "\n"


def _metrics_lines(label: str, m: A.AnchorMetrics, thr: float) -> List[str]:
    return [
        f"{label}: thr={1.0 / thr:.2f}: {m.anchors_per_target:.2f} anchors/target, {m.bpr:.4f} Best Possible "
        f"Recall (BPR), fitness {m.fitness:.4f}",
        f"    n={m.num_anchors}, metric_all={m.metric_mean:.3f}/{m.best_mean:.3f}-mean/best, "
        f"past_thr={m.past_thr_mean:.3f}-mean",
    ]


def grid_table(rows: Sequence[Tuple[str, A.GridMetrics, A.AnchorMetrics]], thr: float, offset: float) -> List[str]:
    """Markdown: per anchor set and IoU threshold, grid-IoU recall overall and per size bucket,
    anchors per GT above the threshold; then the BPR line (YOLOv5's ratio test) of each set."""
    first = rows[0][1]
    counts = ", ".join(f"{name} {n}" for name, n in zip(A.BUCKET_NAMES, first.bucket_counts))
    lines = [f"Grid-IoU recall (detectron2 matching: anchors on each level's grid, offset {offset:g}; a box is covered "
             f"when its best anchor reaches the IoU; buckets of sqrt(w*h) at input scale: {counts}):", "",
             "| anchors | IoU | all | " + " | ".join(A.BUCKET_NAMES) + " | anchors/GT >= IoU | mean best IoU |",
             "|---|---:|---:|" + "---:|" * len(A.BUCKET_NAMES) + "---:|---:|"]
    for name, g, _ in rows:
        for t in sorted(g.recall):
            cells = " | ".join("-" if math.isnan(v) else f"{v:.3f}" for v in g.bucket_recall[t])
            lines.append(f"| {name} | {t:g} | {g.recall[t]:.3f} | {cells} | {g.anchors_per_gt[t]:.2f} | "
                         f"{g.mean_best_iou:.3f} |")
    lines.append("")
    for name, _, m in rows:
        lines.append(f"{name}: thr={1.0 / thr:.2f}: {m.anchors_per_target:.2f} anchors/target, {m.bpr:.4f} Best "
                     f"Possible Recall (BPR), ratio fitness {m.fitness:.4f}")
    return lines


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class _Boxes:
    """The dataset's boxes at input scale: xyxy (N, 4), their (w, h) (N, 2), each level's grid
    of their image (:class:`ugs_d2.anchors.GridBoxes`), the annotations left out, and the size."""

    wh: np.ndarray
    grid: A.GridBoxes
    skipped: Dict[str, int]
    min_size: int
    max_size: int


def _read_boxes(options: AnchorOptions, plan: AnchorPlan, base: Dict[str, Any]) -> _Boxes:
    min_size, max_size = plan.input_size
    if min_size is None:
        if base["input"] is None:
            raise AnchorsError("--input-size is needed with explicit --base sizes")
        min_size, max_size = base["input"]
    boxes, image_hw, skipped = A.boxes_xyxy_at_input_scale(read_coco_json(options.json), min_size, max_size)
    wh = boxes[:, 2:] - boxes[:, :2]
    if len(wh) == 0:
        raise AnchorsError(f"{options.json}: no box with positive width and height")
    grid = A.GridBoxes.build(boxes, image_hw, plan.strides, options.anchor_offset, options.size_divisibility)
    return _Boxes(wh, grid, skipped, min_size, max_size)


def _cap(max_size: int) -> str:
    return "no cap" if max_size == sys.maxsize else f"<= {max_size}"


def _dataset_lines(options: AnchorOptions, plan: AnchorPlan, data: _Boxes) -> Tuple[List[str], Dict[str, int]]:
    """What the boxes are (count, input size, levels), warnings about them, and the counts of
    boxes under 3 px and out of the levels' anchor range."""
    levels, strides, wh = plan.levels, plan.strides, data.wh
    lines = [f"[{PROG}] {options.json}: {len(wh)} boxes at input scale (shorter side {data.min_size}, longer side "
             f"{_cap(data.max_size)}); levels {','.join(levels)} (strides {', '.join(f'{s:g}' for s in strides)}), "
             f"{options.per_level} anchors per level"]
    left_out = {k: v for k, v in data.skipped.items() if v}
    if left_out:
        lines.append(f"WARNING: {sum(left_out.values())} annotations left out: "
                     + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left_out.items()))
    tiny = A.count_under_min_side(wh)
    if tiny:
        lines.append(f"WARNING: Extremely small objects found. {tiny} of {len(wh)} labels are < {A.MIN_SIDE:g} "
                     "pixels in width or height (at input scale).")
    below, above = A.out_of_range_counts(np.sqrt(wh.prod(axis=1)), strides)
    lo, hi = A.level_ranges(strides)
    lines.append(f"[{PROG}] {below} boxes are smaller than {levels[0]}'s smallest allowed anchor ({lo[0]:g} px), "
                 f"{above} larger than {levels[-1]}'s largest ({hi[-1]:g} px)")
    if levels != PROJECT_LEVELS:
        lines.append("WARNING: this project's models use p2..p6; the file needs a model with levels "
                     + ",".join(levels))
    return lines, {"under_min_side": tiny, "below_range": below, "above_range": above}


def _progress_bars(options: AnchorOptions, bars: List[Any]):
    """The ``progress_factory`` of :func:`ugs_d2.anchors.learn_anchors`: one tqdm bar on stderr
    per evolution (appended to ``bars``, so that an interrupted run can close them); None
    without progress."""
    if options.no_progress or not options.generations:
        return None
    from tqdm import tqdm

    last = options.generations - 1

    def factory(key: Any):
        label = "Evolving from the floor" if key == "floor" else f"Evolving {key[0]}x{key[1]} anchors"
        bar = tqdm(total=options.generations, desc=label, file=sys.stderr, leave=False)
        bars.append(bar)

        def progress(generation: int, best: float) -> None:
            bar.update(1)
            if generation % 50 == 0 or generation == last:
                bar.set_description(f"{label}: fitness = {best:.4f}", refresh=False)
            if generation == last:
                bar.close()

        return progress

    return factory


def _search(options: AnchorOptions, plan: AnchorPlan, data: _Boxes, print_line: PrintLine) -> A.LearnedAnchors:
    """k-means and evolution (:func:`ugs_d2.anchors.learn_anchors`) with a line saying what runs."""
    what = (f"detectron2's matching (grid IoU >= {options.iou:g}, offset {options.anchor_offset:g}"
            f"{', no bucket below detectron2 defaults' if not options.no_floor else ''})"
            if options.objective == "grid" else f"YOLOv5's ratio fitness (thr {options.thr:g})")
    print_line(f"Running k-means for {options.per_level} anchors per level on {min(len(data.wh), A.MAX_FIT_POINTS)} "
               f"points, then evolving {options.generations} generations per layout "
               f"({', '.join(f'{a}x{b}' for a, b in plan.layouts)} sizes x ratios) on {what}...")
    search = A.AnchorSearch(per_level=options.per_level, thr=options.thr, generations=options.generations,
                            seed=options.seed, layouts=tuple(plan.layouts), iou=options.iou,
                            floor=not options.no_floor)
    bars: List[Any] = []
    try:
        return A.learn_anchors(data.wh, plan.strides, search, grid=data.grid if options.objective == "grid" else None,
                               progress_factory=_progress_bars(options, bars))
    finally:
        for bar in bars:
            bar.close()


def _search_lines(options: AnchorOptions, plan: AnchorPlan, learned: A.LearnedAnchors) -> List[str]:
    """Each evolution's start and final fitness, the floor check and its deficit."""
    lines = []
    for key in learned.start_fitness:
        label = (f"{key[0]} size(s) x {key[1]} ratio(s) per level: k-means" if key != "floor"
                 else "start on detectron2's defaults (the floor):")
        lines.append(f"  {label} fitness {learned.start_fitness[key]:.4f}, after {options.generations} generations "
                     f"(rounded as written) {learned.final_fitness[key]:.4f}"
                     + (" <- kept" if key == learned.start else ""))
    if learned.floor_levels:
        lines.append(f"  floor check: {', '.join(plan.levels[i] for i in learned.floor_levels)} set to detectron2's "
                     "default anchors of the level (a size bucket was below detectron2's defaults)")
    if learned.deficit:
        lines.append(f"WARNING: {learned.deficit} box(es) short of detectron2's defaults in some size bucket; no "
                     f"fallback exists for --per-level {options.per_level} (needs a multiple of 3)")
    return lines


def _level_table(plan: AnchorPlan, learned: A.LearnedAnchors) -> List[str]:
    """Markdown: per level its stride, allowed sizes, boxes served and the learned anchors."""
    lo, hi = A.level_ranges(plan.strides)
    lines = ["| level | stride | allowed sizes | boxes served | sizes | aspect ratios (h/w) |",
             "|---|---:|---|---:|---|---|"]
    for i, level in enumerate(plan.levels):
        lines.append(f"| {level} | {plan.strides[i]:g} | {lo[i]:g}-{hi[i]:g} | {learned.anchors.served[i]} | "
                     f"{', '.join(_fmt(v) for v in learned.sizes[i])} | "
                     f"{', '.join(_fmt(v) for v in learned.ratios[i])} |")
    return lines


def _comparison(options: AnchorOptions, plan: AnchorPlan, data: _Boxes, base: Dict[str, Any],
                learned: A.LearnedAnchors) -> List[Tuple[str, A.GridMetrics, A.AnchorMetrics]]:
    """Grid and ratio metrics of the base, detectron2's defaults, the kept start and the result."""
    d2_sizes, d2_ratios = A.detectron2_default_anchors(plan.strides)
    start = learned.starts[learned.start]
    n_sizes, n_ratios = learned.layout
    start_name = "start: detectron2 defaults" if learned.start == "floor" else f"k-means start ({n_sizes}x{n_ratios})"
    rows = [(f"before ({base['name']})", base["sizes"], base["aspect_ratios"]),
            ("detectron2 FPN defaults", d2_sizes, d2_ratios),
            (start_name, start.sizes.tolist(), start.ratios.tolist()),
            (f"after ({options.objective} objective)", learned.sizes, learned.ratios)]
    return [(name, A.grid_metrics(data.grid, A.level_anchor_wh(s, r), sorted({0.5, options.iou})),
             A.anchor_metrics(data.wh, A.cell_anchor_wh(s, r), options.thr)) for name, s, r in rows]


def _fitness_note(objective: str, before: A.AnchorMetrics, after: A.AnchorMetrics) -> List[str]:
    if after.fitness >= before.fitness:
        return []
    if objective == "grid":
        return [f"note: YOLOv5's ratio fitness is lower than the base's ({before.fitness:.4f} > "
                f"{after.fitness:.4f}); the grid objective does not maximise it"]
    return [f"WARNING: the base anchors fit better ({before.fitness:.4f} > {after.fitness:.4f}); keep them"]


def _file_comments(options: AnchorOptions, plan: AnchorPlan, data: _Boxes, base: Dict[str, Any],
                   grid_rows: Sequence[Tuple[str, A.GridMetrics, A.AnchorMetrics]]) -> List[str]:
    """The override file's header: how it was learned and the numbers before -> after."""
    before, after = grid_rows[0], grid_rows[-1]
    setting = (f" (IoU {options.iou:g}, offset {options.anchor_offset:g})" if options.objective == "grid"
               else f" (thr {options.thr:g})")
    return [
        f"Learned by {PROG} from {options.json} at input size {data.min_size} (longer side {_cap(data.max_size)}), "
        f"levels {','.join(plan.levels)}, objective {options.objective}{setting}, seed {options.seed}, "
        f"{options.generations} generations.",
        f"grid recall@{options.iou:g} {before[1].recall[options.iou]:.4f} -> {after[1].recall[options.iou]:.4f}, "
        f"BPR {before[2].bpr:.4f} -> {after[2].bpr:.4f}, ratio fitness {before[2].fitness:.4f} -> "
        f"{after[2].fitness:.4f} (before: {base['name']}).",
        "Use: put it in configs/anchors/ and run `ugs-train +anchors=<file stem>`.",
    ]


def learn_and_report(options: AnchorOptions, plan: AnchorPlan, base: Dict[str, Any],
                     print_line: PrintLine = print) -> Dict[str, Any]:
    """Read the boxes, report the base anchors, learn, report and compare, write the override
    file (``plan.out``). ``base``: :func:`base_anchors`.

    Returns ``before`` / ``after`` (:class:`ugs_d2.anchors.AnchorMetrics`), ``sizes``,
    ``aspect_ratios``, ``layout``, ``served``, the box counts of the report (``under_min_side``,
    ``below_range``, ``above_range``), ``out``, ``text`` (the file), ``final_fitness``,
    ``grid`` (anchor set name -> :class:`ugs_d2.anchors.GridMetrics`), ``floor_levels`` and
    ``deficit``.
    """
    data = _read_boxes(options, plan, base)
    _check_same_levels(options, plan, base)
    lines, counts = _dataset_lines(options, plan, data)
    before = A.anchor_metrics(data.wh, A.cell_anchor_wh(base["sizes"], base["aspect_ratios"]), options.thr)
    lines += ["", f"before ({base['name']}: sizes {format_lists(base['sizes'], ',')}, aspect_ratios "
              f"{format_lists(base['aspect_ratios'], ',')}):"] + _metrics_lines("  before", before, options.thr)
    for line in lines:
        print_line(line)
    learned = _search(options, plan, data, print_line)
    after = A.anchor_metrics(data.wh, A.cell_anchor_wh(learned.sizes, learned.ratios), options.thr)
    lines = _search_lines(options, plan, learned)
    lines += ["", f"after ({learned.layout[0]} size(s) x {learned.layout[1]} aspect ratio(s) per level):"]
    lines += _metrics_lines("  after", after, options.thr) + [""] + _level_table(plan, learned)
    for line in lines:
        print_line(line)
    grid_rows = _comparison(options, plan, data, base, learned)
    for line in [""] + grid_table(grid_rows, options.thr, options.anchor_offset) + _fitness_note(
            options.objective, before, after):
        print_line(line)
    text = render_override_file(learned.sizes, learned.ratios, _file_comments(options, plan, data, base, grid_rows))
    write_text_atomic(plan.out, text)
    print_line("")
    print_line(f"[{PROG}] wrote {plan.out}")
    return {
        "before": before, "after": after, "sizes": learned.sizes, "aspect_ratios": learned.ratios,
        "layout": learned.layout, "served": learned.anchors.served.tolist(), **counts, "out": plan.out, "text": text,
        "final_fitness": learned.final_fitness, "grid": {n: g for n, g, _ in grid_rows},
        "floor_levels": learned.floor_levels, "deficit": learned.deficit,
    }


def usage_lines(out: str, sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]],
                anchors_dir: str) -> List[str]:
    """How to use the written file: ``+anchors=<stem>`` when it is in ``anchors_dir`` (else copy
    it there first), or the two command-line overrides."""
    stem = os.path.splitext(os.path.basename(out))[0]
    if os.path.abspath(os.path.dirname(out)) == os.path.abspath(anchors_dir):
        lines = [f"[{PROG}] use: ugs-train +anchors={stem}"]
    else:
        shown = os.path.relpath(anchors_dir)
        shown = anchors_dir if shown.startswith("..") else shown
        lines = [f"[{PROG}] use: copy it to {shown}/{stem}.yaml and run ugs-train +anchors={stem}"]
    return lines + [f"[{PROG}] or the overrides: " + " ".join(f"'{o}'" for o in format_overrides(sizes, ratios))]
