"""``ugs-bench anchors``: ugs-anchors' grid objective vs its ratio objective vs YOLOv5-style
k-means + evolution, on COCO jsons and on a generated skewed box set.

    ugs-bench anchors --dataset datasets/synth/annotations/train.json:256 --out results/anchors/benchmark.md

For every box set: the grid-IoU table of :func:`ugs_d2.analysis.anchors.grid_table` (recall at IoU
0.5 and 0.7 per size bucket, anchors per GT, BPR line) for detectron2's FPN defaults, the
``tiny_r18_fpn`` preset, ugs-anchors with ``--objective grid`` (its k-means start and result),
ugs-anchors with ``--objective ratio`` and a YOLOv5-style ``kmean_anchors`` (15 free (w, h) by
k-means, then evolution under YOLOv5's ratio fitness, sliced 3 per level by area: how YOLOv5's
anchors would be handed to detectron2), and the wall time of each fit for the same number of
generations, in the same process.
"""
import math
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ugs_d2 import anchors as A
from ugs_d2.bench.common import BenchError

__all__ = ["skewed_box_coco", "box_sets", "bench_one", "run_anchors_bench", "format_report"]

LEVELS = ["p2", "p3", "p4", "p5", "p6"]
TINY_PRESET = ([[8.0], [16.0], [32.0], [64.0], [128.0]], [[0.5, 1.0, 2.0]])


def skewed_box_coco(n: int = 20_000, image_size: int = 1024, images: int = 100, seed: int = 0) -> Dict[str, Any]:
    """A COCO dict of ``n`` boxes on ``images`` square images of ``image_size`` px (no pixels).

    Sizes ``sqrt(w*h)``: 70% log-uniform in [2, 16) px, 12% in [40, 120] px, the other 18% in
    [16, 40); aspect ratios ``h / w`` log-uniform in [0.3, 3]; centres uniform, boxes clipped to
    the image. Boxes are spread round-robin over the images. Seeded.
    """
    rng = np.random.default_rng(seed)
    n_tiny, n_big = int(round(0.70 * n)), int(round(0.12 * n))
    bands = [(2.0, 16.0, n_tiny), (40.0, 120.0, n_big), (16.0, 40.0, n - n_tiny - n_big)]
    size = np.concatenate([np.exp(rng.uniform(math.log(a), math.log(b), k)) for a, b, k in bands])
    aspect = np.exp(rng.uniform(math.log(0.3), math.log(3.0), n))
    w, h = size / np.sqrt(aspect), size * np.sqrt(aspect)
    w, h = np.minimum(w, image_size), np.minimum(h, image_size)
    x = rng.uniform(0, image_size - w)
    y = rng.uniform(0, image_size - h)
    order = rng.permutation(n)
    anns = [{"id": i + 1, "image_id": int(i % images) + 1, "category_id": 1, "iscrowd": 0,
             "bbox": [float(x[j]), float(y[j]), float(w[j]), float(h[j])], "area": float(w[j] * h[j])}
            for i, j in enumerate(order)]
    return {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": image_size, "height": image_size}
                       for i in range(images)],
            "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def box_sets(datasets: Sequence[Tuple[str, int]], skewed_boxes: Optional[int], seed: int
             ) -> List[Tuple[str, Dict[str, Any], int]]:
    """``[(name, COCO dict, input size), ...]``: each ``(COCO json, input size)`` of ``datasets``,
    then, unless ``skewed_boxes`` is None, :func:`skewed_box_coco` of that many boxes at 1024 px.

    Raises:
        BenchError: a json cannot be read, or there is nothing to benchmark.
    """
    from ugs_d2.data.coco_json import DatasetError, read_coco_json

    sets = []
    for path, size in datasets:
        try:
            sets.append((f"{path} (input {size})", read_coco_json(path), size))
        except DatasetError as e:
            raise BenchError(str(e)) from None
    if skewed_boxes is not None:
        n = skewed_boxes
        sets.append((f"skewed synthetic set ({n} boxes: 70% under 16 px, 12% 40-120 px, aspect 0.3-3, "
                     f"1024 px images, seed {seed})", skewed_box_coco(n, seed=seed), 1024))
    if not sets:
        raise BenchError("nothing to benchmark: give --dataset or drop --no-skewed")
    return sets


def _timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def bench_one(name: str, coco: Dict[str, Any], input_size: int, generations: int, seed: int, iou: float,
              log=lambda m: None) -> Dict[str, Any]:
    """Every anchor set and timing for one box set (see the module docstring)."""
    strides = A.level_strides(LEVELS)
    boxes, image_hw, _ = A.boxes_xyxy_at_input_scale(coco, input_size, sys.maxsize)
    wh = boxes[:, 2:] - boxes[:, :2]
    grid = A.GridBoxes.build(boxes, image_hw, strides)
    log(f"{name}: {len(wh)} boxes; grid objective...")
    grid_fit, grid_s, grid_cpu = _timed(lambda: A.learn_anchors(
        wh, strides, A.AnchorSearch(3, generations=generations, seed=seed, iou=iou), grid=grid))
    log(f"{name}: ratio objective...")
    ratio_fit, ratio_s, ratio_cpu = _timed(lambda: A.learn_anchors(
        wh, strides, A.AnchorSearch(3, generations=generations, seed=seed)))
    log(f"{name}: YOLOv5-style...")
    yolo, yolo_s, yolo_cpu = _timed(lambda: A.yolov5_style_anchors(wh, 15, generations=generations, seed=seed))
    log(f"{name}: grid objective without the floor...")
    free_fit, free_s, free_cpu = _timed(lambda: A.learn_anchors(
        wh, strides, A.AnchorSearch(3, generations=generations, seed=seed, iou=iou, floor=False), grid=grid))
    start = grid_fit.starts[grid_fit.layout]
    d2 = A.detectron2_default_anchors(strides)
    sets = [
        ("detectron2 FPN defaults", A.level_anchor_wh(*d2)),
        ("tiny_r18_fpn preset", A.level_anchor_wh(*TINY_PRESET)),
        ("YOLOv5-style k-means+evolution (15 free, 3 per level by area)", [yolo[3 * i:3 * i + 3] for i in range(5)]),
        ("ugs-anchors --objective ratio", A.level_anchor_wh(ratio_fit.sizes, ratio_fit.ratios)),
        (f"ugs-anchors grid: k-means start ({start.sizes.shape[1]}x{start.ratios.shape[1]})",
         A.level_anchor_wh(start.sizes.tolist(), start.ratios.tolist())),
        ("ugs-anchors --objective grid --no-floor", A.level_anchor_wh(free_fit.sizes, free_fit.ratios)),
        (f"ugs-anchors --objective grid (kept: {'floor start' if grid_fit.start == 'floor' else 'k-means start'})",
         A.level_anchor_wh(grid_fit.sizes, grid_fit.ratios)),
    ]
    ious = sorted({0.5, iou})
    rows = [(label, A.grid_metrics(grid, lw, ious), A.anchor_metrics(wh, np.concatenate(lw))) for label, lw in sets]
    floor = rows[0][1]
    below = [(A.BUCKET_NAMES[b], t) for t in ious for b in range(len(A.BUCKET_NAMES))
             if rows[-1][1].bucket_covered[t][b] < floor.bucket_covered[t][b]]
    return {"name": name, "boxes": len(wh), "input_size": input_size, "rows": rows, "below_floor": below,
            "grid": grid_fit, "ratio": ratio_fit, "yolo": yolo,
            "free": free_fit, "times": {"grid": (grid_s, grid_cpu), "ratio": (ratio_s, ratio_cpu),
                                        "yolo": (yolo_s, yolo_cpu), "free": (free_s, free_cpu)},
            "layouts": {"grid": len(grid_fit.final_fitness), "ratio": len(ratio_fit.final_fitness),
                        "free": len(free_fit.final_fitness)}}


def run_anchors_bench(datasets: Sequence[Tuple[str, Dict[str, Any], int]], generations: int, seed: int, iou: float,
                      log=lambda m: None) -> Dict[str, Any]:
    return {"results": [bench_one(n, c, s, generations, seed, iou, log) for n, c, s in datasets],
            "generations": generations, "seed": seed, "iou": iou}


def format_report(outcome: Dict[str, Any], command: str, started: str, wall_s: float, loads: List[float]) -> str:
    from ugs_d2.analysis.anchors import format_lists, grid_table

    g, iou = outcome["generations"], outcome["iou"]
    lines = ["# Anchors: detectron2 matching (grid IoU) vs YOLOv5's ratio objective", "", "```", command, "```", "",
             f"Started {started}, took {wall_s:.0f} s"
             + (f"; load average {loads[0]:.2f} -> {loads[-1]:.2f}" if loads else "")
             + f". Seed {outcome['seed']}, {g} generations per evolution, positive IoU {iou:g}, anchor offset "
             f"{A.D2_OFFSET:g}, inputs padded to multiples of {A.SIZE_DIVISIBILITY}.", ""]
    for r in outcome["results"]:
        t, n_evo = r["times"], r["layouts"]
        ys = t["yolo"][0]
        lines += [f"## {r['name']}", "", f"{r['boxes']} boxes at input size {r['input_size']}.", ""]
        lines += grid_table(r["rows"], A.DEFAULT_THR, A.D2_OFFSET)
        fit = r["grid"]
        lines += ["", f"ugs-anchors grid result: sizes {format_lists(fit.sizes, ',')}, aspect_ratios "
                  f"{format_lists(fit.ratios, ',')}; levels reset to detectron2 defaults by the floor check: "
                  f"{', '.join(LEVELS[i] for i in fit.floor_levels) or 'none'}; buckets below detectron2 defaults "
                  f"after it: {', '.join(f'{b} at {t:g}' for b, t in r['below_floor']) or 'none'}."]
        lines += ["", "| fit | evolutions | generations each | wall s | CPU s | wall per evolution of 1000 "
                  "generations | vs YOLOv5-style | CPU s per evolution of 1000 generations | vs YOLOv5-style (CPU) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ycpu = t["yolo"][1] * 1000.0 / max(g, 1)
        for label, key in [("ugs-anchors --objective grid", "grid"),
                           ("ugs-anchors --objective grid --no-floor", "free"),
                           ("ugs-anchors --objective ratio", "ratio"), ("YOLOv5-style k-means + evolution", "yolo")]:
            (s, c), n = t[key], n_evo.get(key, 1)
            per = s / n * 1000.0 / max(g, 1)
            yper = ys * 1000.0 / max(g, 1)
            cper = c / n * 1000.0 / max(g, 1)
            lines.append(f"| {label} | {n} | {g} | {s:.2f} | {c:.2f} | {per:.2f} | {per / yper:.2f}x | {cper:.2f} | "
                         f"{cper / ycpu:.2f}x |" if ycpu > 0
                         else f"| {label} | {n} | {g} | {s:.2f} | {c:.2f} | {per:.2f} | "
                         f"{per / yper:.2f}x | {cper:.2f} | n/a |")
        lines.append("")
    lines += [
        "Notes:", "",
        "- Grid IoU: each box's best IoU with the anchors detectron2's `DefaultAnchorGenerator` puts on every level's "
        "feature map (stride, offset), computed exactly from the nearest grid position per anchor shape "
        "(`ugs_d2.anchors.grid_iou`; tests/test_anchors.py checks it against detectron2's generator + `pairwise_iou`). "
        "A box is covered at IoU t when its best anchor reaches t; detectron2's RPN matcher also makes each box's best "
        "anchor a positive below 0.7 (`allow_low_quality_matches`), so recall@0.7 counts the boxes with a "
        "*good* positive.",
        "- anchors/GT >= IoU: mean number of anchors (all positions, all levels) at IoU >= t per box.",
        "- BPR line: YOLOv5's ratio test (no side more than 4x off), for comparison only.",
        "- YOLOv5-style: k-means of 15 free (w, h) on whitened sizes, then evolution of all 30 values under YOLOv5's "
        "ratio fitness (`ugs_d2.anchors.yolov5_style_anchors`, a reimplementation; yolov5 itself is not installed), "
        "sliced 3 per level by area. Free (w, h) do not fit detectron2's sizes x ratios per level; the grid numbers "
        "use them as they are.",
        "- ugs-anchors evolves every layout of 3 anchors per level (1x3 and 3x1) from its k-means start, and with the "
        "floor once more from detectron2's defaults (3 evolutions; 2 without the floor or with the ratio objective); "
        "the per-evolution column is comparable with YOLOv5-style's single evolution. The `vs YOLOv5-style` columns "
        "are time ratios (> 1: slower than YOLOv5-style); CPU time is the steadier one on a shared machine.",
        "- The floor: no size bucket, at IoU 0.5 or 0.7, may end with fewer covered boxes than detectron2's defaults "
        "(a deficit of one box outweighs any recall gain in the fitness; after rounding, levels are reset to "
        "detectron2's default anchors of the level until no bucket is short, `ugs_d2.anchors.enforce_floor`). "
        "`--no-floor` shows what the floor costs.",
    ]
    return "\n".join(lines) + "\n"
