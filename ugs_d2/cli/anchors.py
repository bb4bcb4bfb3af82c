"""``ugs-anchors``: learn detectron2 FPN anchors for a COCO dataset (YOLOv5 autoanchor, per level).

    ugs-anchors datasets/synth/annotations/train.json --out configs/anchors/synth256.yaml
    ugs-train +anchors=synth256

Reads the boxes at the size the model sees them (``--input-size``, default: the ``--base``
model preset's test size), reports YOLOv5's anchors/target, best possible recall (BPR) and
fitness of the ``--base`` anchors, learns anchors per FPN level (k-means, then evolution; the
level rule and the metric are documented in :mod:`ugs_d2.anchors`), reports the same numbers for
the anchors detectron2 will generate from the result, and writes a Hydra override file
(``# @package model.anchors`` with ``sizes`` and ``aspect_ratios``). Every layout of
``--per-level`` anchors as sizes x ratios (3: 1x3 and 3x1) is tried and the fittest kept,
unless ``--layout`` fixes one.
"""
import argparse
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ugs_d2 import anchors as A
from ugs_d2.cli.validate import CONFIG_DIR
from ugs_d2.data.coco_json import DatasetError, read_coco_json
from ugs_d2.fileio import write_text_atomic

__all__ = ["load_base", "format_overrides", "render_override_file", "grid_table", "main"]

PROG = "ugs-anchors"
PROJECT_LEVELS = ["p2", "p3", "p4", "p5", "p6"]  # RPN.IN_FEATURES of every model in configs/model/


class AnchorsError(ValueError):
    """A bad option or input; the message is one line."""


def _model_presets() -> List[str]:
    model_dir = os.path.join(CONFIG_DIR, "model")
    return sorted(f[:-5] for f in os.listdir(model_dir) if f.endswith(".yaml")) if os.path.isdir(model_dir) else []


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


def load_base(base: str, base_ratios: Optional[str], strides: Sequence[float]) -> Dict[str, Any]:
    """The "before" anchors: a model preset name, ``detectron2`` or explicit sizes.

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
    if base in _model_presets():
        path = os.path.join(CONFIG_DIR, "model", f"{base}.yaml")
        with open(path, "r", encoding="utf-8") as f:
            preset = yaml.safe_load(f)
        try:
            anchors, size = preset["anchors"], preset["input"]
            return {
                "name": f"model={base}",
                "sizes": _number_lists(anchors["sizes"], f"{path}: anchors.sizes"),
                "aspect_ratios": _number_lists(anchors["aspect_ratios"], f"{path}: anchors.aspect_ratios"),
                "input": (int(size["min_size_test"]), int(size["max_size_test"])),
            }
        except (KeyError, TypeError):
            raise AnchorsError(f"{path}: expected anchors.sizes, anchors.aspect_ratios and input.*_size_test") from None
    try:
        sizes = yaml.safe_load(base)
        ratios = yaml.safe_load(base_ratios) if base_ratios is not None else [[0.5, 1.0, 2.0]]
    except yaml.YAMLError:
        sizes = ratios = None
    if not isinstance(sizes, list):
        raise AnchorsError(
            f"--base: expected a model preset ({', '.join(_model_presets())}), detectron2, or sizes like "
            f"[[8],[16],[32],[64],[128]], got {base!r}"
        )
    sizes = _number_lists(sizes, "--base")
    if len(sizes) == 1:  # detectron2's broadcast: one list for every level
        sizes = sizes * len(strides)
    return {"name": "given", "sizes": sizes, "aspect_ratios": _number_lists(ratios, "--base-ratios"), "input": None}


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Learn anchors for detectron2's per-FPN-level anchor generator from a COCO json: k-means "
            "on the box sizes at input scale, then evolutionary refinement (YOLOv5 autoanchor), each "
            "level's anchor sizes kept within [stride, 8 x stride]. Reports anchors/target, best "
            "possible recall and fitness before and after, and writes a Hydra override file."
        ),
        epilog=(
            "examples:\n"
            "  ugs-anchors datasets/synth/annotations/train.json --out configs/anchors/synth256.yaml\n"
            "  ugs-train +anchors=synth256\n"
            "  ugs-anchors train.json --base faster_rcnn_r50_fpn --per-level 9 --out /tmp/a.yaml\n"
            "  ugs-anchors train.json --base '[[8],[16],[32],[64],[128]]' --input-size 512 --thr 3\n"
        ),
    )
    parser.add_argument("json", metavar="DATASET_JSON", help="COCO json (the training split)")
    parser.add_argument("--levels", default="p2..p6",
                        help="FPN levels, pA..pB or p2,p3,...; stride of pN = 2^N (default p2..p6, "
                        "what this project's models use)")
    parser.add_argument("--per-level", type=int, default=3, metavar="N", help="anchors per level (default 3)")
    parser.add_argument("--layout", default="auto",
                        help="SIZESxRATIOS per level, e.g. 3x1 or 1x3 (default auto: try each, keep the fittest)")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="SIZE",
                        help="MIN [MAX]: detectron2's ResizeShortestEdge (shorter side MIN, longer side at most MAX, "
                        "default no cap); default: the --base preset's test size")
    parser.add_argument("--base", default="tiny_r18_fpn",
                        help="the anchors to compare with: a configs/model preset (default tiny_r18_fpn), detectron2 "
                        "(its FPN defaults: 8 x stride, ratios 0.5,1,2, 800/1333), or sizes like "
                        "'[[8],[16],[32],[64],[128]]' (a flat list is used on every level, as detectron2 does)")
    parser.add_argument("--base-ratios", default=None,
                        help="aspect ratios for explicit --base sizes (default [[0.5,1.0,2.0]])")
    parser.add_argument("--generations", type=int, default=1000, help="evolution generations per layout (default 1000)")
    parser.add_argument("--thr", type=float, default=A.DEFAULT_THR,
                        help="YOLOv5 anchor_t: a side may be up to thr x off (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="k-means and evolution seed (default 0)")
    parser.add_argument("--out", default=None, metavar="FILE.yaml",
                        help="override file (default <json stem>_anchors.yaml next to the json); in configs/anchors/ "
                        "it is usable as ugs-train +anchors=<stem>")
    parser.add_argument("--objective", choices=["grid", "ratio"], default="grid",
                        help="what the evolution maximises: grid (default): detectron2's matching, the share of boxes "
                        "whose best anchor on its level's real grid (stride, --anchor-offset) reaches IoU --iou, with "
                        "no size bucket below detectron2's defaults; ratio: YOLOv5's ratio fitness (--thr)")
    parser.add_argument("--iou", type=float, default=A.DEFAULT_IOU,
                        help="grid objective: the RPN matcher's positive IoU threshold (default 0.7, detectron2's)")
    parser.add_argument("--anchor-offset", type=float, default=A.D2_OFFSET,
                        help="detectron2's MODEL.ANCHOR_GENERATOR.OFFSET (default 0.0, detectron2's default)")
    parser.add_argument("--size-divisibility", type=int, default=A.SIZE_DIVISIBILITY,
                        help="inputs are padded to a multiple of this (default 32, detectron2's FPN; 0: no padding)")
    parser.add_argument("--no-floor", action="store_true",
                        help="grid objective: allow size buckets to end below detectron2's defaults")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def _check_args(args: argparse.Namespace) -> Tuple[List[str], Tuple[Optional[int], Optional[int]], str]:
    backwards = re.fullmatch(r"\s*p(\d)\s*\.\.\s*p(\d)\s*", args.levels.lower())
    if backwards and int(backwards[1]) > int(backwards[2]):  # else "levels between p0 and p9"
        first, last = backwards[2], backwards[1]
        raise AnchorsError(f"--levels: {args.levels} runs downwards; levels go from fine to coarse: p{first}..p{last}")
    try:
        levels = A.parse_levels(args.levels)
    except ValueError as e:
        raise AnchorsError(f"--levels: {e}") from None
    if args.per_level < 1:
        raise AnchorsError(f"--per-level: expected a positive integer, got {args.per_level}")
    if args.generations < 0:
        raise AnchorsError(f"--generations: expected >= 0, got {args.generations}")
    if not (math.isfinite(args.thr) and args.thr > 1.0):
        raise AnchorsError(f"--thr: expected a number > 1, got {args.thr}")
    if not (math.isfinite(args.iou) and 0.0 < args.iou <= 1.0):
        raise AnchorsError(f"--iou: expected a number in (0, 1], got {args.iou}")
    if not (math.isfinite(args.anchor_offset) and 0.0 <= args.anchor_offset < 1.0):
        raise AnchorsError(f"--anchor-offset: expected a number in [0, 1), got {args.anchor_offset}")
    if args.size_divisibility < 0:
        raise AnchorsError(f"--size-divisibility: expected >= 0, got {args.size_divisibility}")
    size: Tuple[Optional[int], Optional[int]] = (None, None)
    if args.input_size is not None:
        if len(args.input_size) > 2 or any(v < 1 for v in args.input_size):
            raise AnchorsError("--input-size: expected MIN [MAX], positive integers, got "
                               f"{' '.join(map(str, args.input_size))}")
        size = (args.input_size[0], args.input_size[1] if len(args.input_size) == 2 else sys.maxsize)
        if size[1] < size[0]:
            raise AnchorsError(f"--input-size: MAX {size[1]} is smaller than MIN {size[0]}")
    out = args.out
    if out is None:
        stem = os.path.splitext(os.path.basename(args.json))[0]
        out = os.path.join(os.path.dirname(os.path.abspath(args.json)), f"{stem}_anchors.yaml")
    if not out.endswith((".yaml", ".yml")):
        raise AnchorsError(f"--out: expected a .yaml file, got {out}")
    if os.path.isdir(out):
        raise AnchorsError(f"--out {out} is a directory")
    return levels, size, out


def learn(args: argparse.Namespace, print_line=print) -> Dict[str, Any]:
    """Everything the CLI does except argument parsing; returns the numbers and the file text."""
    levels, (min_size, max_size), out = _check_args(args)
    layouts = _parse_layout(args.layout, args.per_level)
    strides = A.level_strides(levels)
    base = load_base(args.base, args.base_ratios, strides)
    if min_size is None:
        if base["input"] is None:
            raise AnchorsError("--input-size is needed with explicit --base sizes")
        min_size, max_size = base["input"]
    coco = read_coco_json(args.json)
    boxes, image_hw, skipped = A.boxes_xyxy_at_input_scale(coco, min_size, max_size)
    wh = boxes[:, 2:] - boxes[:, :2]
    if len(wh) == 0:
        raise AnchorsError(f"{args.json}: no box with positive width and height")
    grid = A.GridBoxes.build(boxes, image_hw, strides, args.anchor_offset, args.size_divisibility)

    cap = "no cap" if max_size == sys.maxsize else f"<= {max_size}"
    print_line(f"[{PROG}] {args.json}: {len(wh)} boxes at input scale (shorter side {min_size}, longer side {cap}); "
               f"levels {','.join(levels)} (strides {', '.join(f'{s:g}' for s in strides)}), "
               f"{args.per_level} anchors per level")
    left_out = {k: v for k, v in skipped.items() if v}
    if left_out:
        print_line(f"WARNING: {sum(left_out.values())} annotations left out: "
                   + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left_out.items()))
    tiny = A.count_under_min_side(wh)
    if tiny:
        print_line(f"WARNING: Extremely small objects found. {tiny} of {len(wh)} labels are < {A.MIN_SIDE:g} pixels "
                   "in width or height (at input scale).")
    box_sizes = np.sqrt(wh.prod(axis=1))
    below, above = A.out_of_range_counts(box_sizes, strides)
    lo, hi = A.level_ranges(strides)
    print_line(f"[{PROG}] {below} boxes are smaller than {levels[0]}'s smallest allowed anchor ({lo[0]:g} px), "
               f"{above} larger than {levels[-1]}'s largest ({hi[-1]:g} px)")
    if levels != PROJECT_LEVELS:
        print_line(f"WARNING: this project's models use p2..p6; the file needs a model with levels {','.join(levels)}")

    before = A.anchor_metrics(wh, A.cell_anchor_wh(base["sizes"], base["aspect_ratios"]), args.thr)
    print_line("")
    print_line(f"before ({base['name']}: sizes {format_lists(base['sizes'], ',')}, aspect_ratios "
               f"{format_lists(base['aspect_ratios'], ',')}):")
    for line in _metrics_lines("  before", before, args.thr):
        print_line(line)

    bars: List[Any] = []

    def progress_factory(layout: Tuple[int, int]):
        if args.no_progress or not args.generations:
            return None
        from tqdm import tqdm

        label = "Evolving from the floor" if layout == "floor" else f"Evolving {layout[0]}x{layout[1]} anchors"
        bar = tqdm(total=args.generations, desc=label, file=sys.stderr, leave=False)
        bars.append(bar)

        def progress(generation: int, best: float) -> None:
            bar.update(1)
            if generation % 50 == 0 or generation == args.generations - 1:
                bar.set_description(f"{label}: fitness = {best:.4f}", refresh=False)
            if generation == args.generations - 1:
                bar.close()

        return progress

    fit_points = min(len(wh), A.MAX_FIT_POINTS)
    what = (f"detectron2's matching (grid IoU >= {args.iou:g}, offset {args.anchor_offset:g}"
            f"{', no bucket below detectron2 defaults' if not args.no_floor else ''})" if args.objective == "grid"
            else f"YOLOv5's ratio fitness (thr {args.thr:g})")
    print_line(f"Running k-means for {args.per_level} anchors per level on {fit_points} points, then evolving "
               f"{args.generations} generations per layout ({', '.join(f'{a}x{b}' for a, b in layouts)} sizes x "
               f"ratios) on {what}...")
    try:
        learned = A.learn_anchors(wh, strides, args.per_level, args.thr, args.generations, args.seed,
                                  candidate_layouts=layouts, progress_factory=progress_factory,
                                  grid=grid if args.objective == "grid" else None, iou=args.iou,
                                  floor=not args.no_floor)
    finally:
        for bar in bars:
            bar.close()
    for key in learned.start_fitness:
        label = (f"{key[0]} size(s) x {key[1]} ratio(s) per level: k-means" if key != "floor"
                 else "start on detectron2's defaults (the floor):")
        print_line(f"  {label} fitness {learned.start_fitness[key]:.4f}, after {args.generations} generations "
                   f"(rounded as written) {learned.final_fitness[key]:.4f}"
                   + (" <- kept" if key == learned.start else ""))
    if learned.floor_levels:
        print_line(f"  floor check: {', '.join(levels[i] for i in learned.floor_levels)} set to detectron2's default "
                   "anchors of the level (a size bucket was below detectron2's defaults)")
    if learned.deficit:
        print_line(f"WARNING: {learned.deficit} box(es) short of detectron2's defaults in some size bucket; no "
                   f"fallback exists for --per-level {args.per_level} (needs a multiple of 3)")
    final, (n_sizes, n_ratios) = learned.anchors, learned.layout
    sizes, ratios = learned.sizes, learned.ratios
    after = A.anchor_metrics(wh, A.cell_anchor_wh(sizes, ratios), args.thr)
    print_line("")
    print_line(f"after ({n_sizes} size(s) x {n_ratios} aspect ratio(s) per level):")
    for line in _metrics_lines("  after", after, args.thr):
        print_line(line)
    print_line("")
    print_line("| level | stride | allowed sizes | boxes served | sizes | aspect ratios (h/w) |")
    print_line("|---|---:|---|---:|---|---|")
    for i, level in enumerate(levels):
        print_line(f"| {level} | {strides[i]:g} | {lo[i]:g}-{hi[i]:g} | {final.served[i]} | "
                   f"{', '.join(_fmt(v) for v in sizes[i])} | {', '.join(_fmt(v) for v in ratios[i])} |")

    d2_sizes, d2_ratios = A.detectron2_default_anchors(strides)
    start = learned.starts[learned.start]
    start_name = "start: detectron2 defaults" if learned.start == "floor" else f"k-means start ({n_sizes}x{n_ratios})"
    rows = [(f"before ({base['name']})", base["sizes"], base["aspect_ratios"]),
            ("detectron2 FPN defaults", d2_sizes, d2_ratios),
            (start_name, start.sizes.tolist(), start.ratios.tolist()),
            (f"after ({args.objective} objective)", sizes, ratios)]
    grid_rows = [(name, A.grid_metrics(grid, A.level_anchor_wh(s, r), sorted({0.5, args.iou})),
                  A.anchor_metrics(wh, A.cell_anchor_wh(s, r), args.thr)) for name, s, r in rows]
    print_line("")
    for line in grid_table(grid_rows, args.thr, args.anchor_offset):
        print_line(line)
    if args.objective == "grid":
        if after.fitness < before.fitness:
            print_line(f"note: YOLOv5's ratio fitness is lower than the base's ({before.fitness:.4f} > "
                       f"{after.fitness:.4f}); the grid objective does not maximise it")
    elif after.fitness < before.fitness:
        print_line(f"WARNING: the base anchors fit better ({before.fitness:.4f} > {after.fitness:.4f}); keep them")
    grid_after = grid_rows[-1][1]

    comments = [
        f"Learned by {PROG} from {args.json} at input size {min_size} (longer side {cap}), levels "
        f"{','.join(levels)}, objective {args.objective}"
        + (f" (IoU {args.iou:g}, offset {args.anchor_offset:g})" if args.objective == "grid"
           else f" (thr {args.thr:g})")
        + f", seed {args.seed}, {args.generations} generations.",
        f"grid recall@{args.iou:g} {grid_rows[0][1].recall[args.iou]:.4f} -> {grid_after.recall[args.iou]:.4f}, "
        f"BPR {before.bpr:.4f} -> {after.bpr:.4f}, ratio fitness {before.fitness:.4f} -> {after.fitness:.4f} "
        f"(before: {base['name']}).",
        "Use: put it in configs/anchors/ and run `ugs-train +anchors=<file stem>`.",
    ]
    text = render_override_file(sizes, ratios, comments)
    write_text_atomic(out, text)
    print_line("")
    print_line(f"[{PROG}] wrote {out}")
    stem = os.path.splitext(os.path.basename(out))[0]
    anchors_dir = os.path.join(CONFIG_DIR, "anchors")
    if os.path.abspath(os.path.dirname(out)) == os.path.abspath(anchors_dir):
        print_line(f"[{PROG}] use: ugs-train +anchors={stem}")
    else:
        shown = os.path.relpath(anchors_dir)
        shown = anchors_dir if shown.startswith("..") else shown
        print_line(f"[{PROG}] use: copy it to {shown}/{stem}.yaml and run ugs-train +anchors={stem}")
    print_line(f"[{PROG}] or the overrides: " + " ".join(f"'{o}'" for o in format_overrides(sizes, ratios)))
    return {
        "before": before, "after": after, "sizes": sizes, "aspect_ratios": ratios, "layout": (n_sizes, n_ratios),
        "served": final.served.tolist(), "under_min_side": tiny, "below_range": below, "above_range": above,
        "out": out, "text": text, "final_fitness": learned.final_fitness, "grid": {n: g for n, g, _ in grid_rows},
        "floor_levels": learned.floor_levels, "deficit": learned.deficit,
    }


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


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-anchors: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        learn(args)
    except (AnchorsError, DatasetError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None


if __name__ == "__main__":
    main()
