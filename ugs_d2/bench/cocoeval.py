"""``ugs-bench cocoeval``: pycocotools vs faster-coco-eval on a VisDrone-sized evaluation.

A synthetic case shaped like VisDrone-DET val under the DQ-DETR protocol (548 images, 1500
detections each, 50-100 small ground-truth boxes per image over 10 classes, a few ignore
regions) is generated from ``--seed``; both backends evaluate the *same* ground truth and
detections with the same area buckets and maxDets, through the same code path as training
(:func:`ugs_d2.evaluation.small_object.evaluate_detections`: indexing the ground truth, loading
the detections, matching, accumulating, reading every bucket AP). Runs alternate between the
backends (ABBA order) so that load on a shared machine hits both alike; the report gives the
median and minimum wall time per backend, their ratio, and every metric of both with the
largest difference, which must be <= 1e-4 (percent points). ::

    ugs-bench cocoeval                                  # 548 x 1500, 3 repeats -> results/cocoeval_backends.md
    ugs-bench cocoeval --images 50 --dets 300 --repeats 2 --out /tmp/cocoeval.md
"""
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ugs_d2.bench.common import BenchError

__all__ = [
    "AGREEMENT_TOLERANCE",
    "CocoevalSpec",
    "make_case",
    "run_cocoeval",
    "run_cocoeval_bench",
    "available_backends",
    "format_report",
]

#: The largest difference allowed between the backends, in AP percent points.
AGREEMENT_TOLERANCE = 1e-4
VISDRONE_IMAGE_SIZE = (1360, 765)  # width, height: the most common VisDrone-DET image size


@dataclass(frozen=True)
class CocoevalSpec:
    """The case and its evaluation: ``images`` VisDrone-sized images with ``gt_per_image``
    (inclusive range) ground-truth boxes over ``classes`` categories and ``dets`` detections each
    (seeded by ``seed``), evaluated ``repeats`` times per backend with COCO's buckets plus
    ``buckets`` and the maxDets budget ``max_dets`` (None: ``dets``)."""

    images: int = 548
    dets: int = 1500
    seed: int = 0
    classes: int = 10
    gt_per_image: Tuple[int, int] = (50, 100)
    max_dets: Optional[int] = None
    buckets: Sequence[str] = ("aitod", "soda")
    repeats: int = 3

    @property
    def max_dets_budget(self) -> int:
        return self.dets if self.max_dets is None else self.max_dets

    def check(self) -> None:
        """A ``BenchError`` naming the option of the first unusable value."""
        from ugs_d2.evaluation.small_object import BUCKET_SETS, MAX_DETS_CAP

        for name in ("images", "dets", "classes", "repeats"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.max_dets_budget <= MAX_DETS_CAP:
            raise BenchError(f"--max-dets must be in [1, {MAX_DETS_CAP}], got {self.max_dets_budget}")
        unknown = [b for b in self.buckets if b not in BUCKET_SETS]
        if unknown:
            raise BenchError(
                f"--buckets: unknown bucket set {unknown[0]!r}; expected some of {', '.join(BUCKET_SETS)}"
            )


def run_cocoeval(spec: CocoevalSpec, progress: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    """Generate the case of ``spec`` and time every available backend on it
    (:func:`run_cocoeval_bench`); the outcome also holds ``case`` (what was evaluated)."""
    spec.check()
    log(f"generating {spec.images} images x {spec.dets} detections (seed {spec.seed})")
    gt, detections = make_case(spec.images, spec.dets, spec.seed, spec.classes, tuple(spec.gt_per_image))
    real = [a for a in gt["annotations"] if not a["iscrowd"]]
    case = {
        "seed": spec.seed, "images": spec.images, "classes": spec.classes, "gt": len(real),
        "crowd": len(gt["annotations"]) - len(real), "dets": len(detections), "max_dets": spec.max_dets_budget,
        "buckets": list(spec.buckets),
        "median_side": float(np.median([math.sqrt(a["area"]) for a in real])) if real else math.nan,
    }
    outcome = run_cocoeval_bench(gt, detections, list(spec.buckets), spec.max_dets_budget, spec.repeats,
                                 backends=available_backends(), progress=progress)
    outcome["case"] = case
    return outcome


def make_case(
    num_images: int,
    dets_per_image: int,
    seed: int,
    num_classes: int = 10,
    gt_per_image: Tuple[int, int] = (50, 100),
    image_size: Tuple[int, int] = VISDRONE_IMAGE_SIZE,
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A seeded COCO ground truth and detection list shaped like VisDrone-DET.

    Ground truth per image: ``gt_per_image`` (inclusive range) boxes with log-normal sides
    (median 18 px, most between 6 and 50 px: AI-TOD/SODA buckets all populated), aspect ratio
    log-normal, uniform class, ``area = w * h``; plus 0-2 ignore regions (60-200 px,
    ``iscrowd=1``, one annotation per class so that they ignore detections of every class, as
    a VisDrone "ignored region" does). Detections per image, exactly ``dets_per_image``: for
    85% of the boxes one to three jittered copies (right class 90% of the time, score in
    [0.3, 1)), the rest random boxes of the same size distribution (random class, score in
    [0, 0.6)).

    Returns:
        ``(gt_dataset, detections)`` (dataset category ids 1..num_classes).
    """
    rng = np.random.default_rng(seed)
    width, height = image_size
    images, annotations, detections = [], [], []

    def boxes(n: int) -> np.ndarray:  # (n, 4) XYWH inside the image
        side = np.clip(np.exp(rng.normal(np.log(18.0), 0.6, n)), 2.0, 300.0)
        aspect = np.exp(rng.normal(0.0, 0.35, n))
        w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
        x, y = rng.uniform(0, np.maximum(width - w, 1.0)), rng.uniform(0, np.maximum(height - h, 1.0))
        return np.stack([x, y, w, h], axis=1)

    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:07d}.jpg", "width": width, "height": height})
        gt = boxes(int(rng.integers(gt_per_image[0], gt_per_image[1] + 1)))
        gt_classes = rng.integers(1, num_classes + 1, len(gt))
        for box, category in zip(gt, gt_classes):
            annotations.append(_annotation(len(annotations) + 1, image_id, int(category), box, crowd=0))
        for _ in range(int(rng.integers(0, 3))):
            w, h = rng.uniform(60, 200, 2)
            region = np.array([rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])
            for category in range(1, num_classes + 1):
                annotations.append(_annotation(len(annotations) + 1, image_id, category, region, crowd=1))

        found = rng.random(len(gt)) < 0.85
        repeats = rng.integers(1, 4, int(found.sum()))
        copies = np.repeat(gt[found], repeats, axis=0)[:dets_per_image]
        copy_classes = np.repeat(gt_classes[found], repeats)[:dets_per_image]
        wrong = rng.random(len(copies)) < 0.1
        copy_classes = np.where(wrong, rng.integers(1, num_classes + 1, len(copies)), copy_classes)
        copies = copies + rng.normal(0.0, 0.1, copies.shape) * copies[:, [2, 3, 2, 3]]  # x, w by w; y, h by h
        copies[:, 2:] = np.maximum(copies[:, 2:], 1.0)
        false_positives = boxes(dets_per_image - len(copies))
        all_boxes = np.concatenate([copies, false_positives])
        classes = np.concatenate([copy_classes, rng.integers(1, num_classes + 1, len(false_positives))])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(copies)), rng.uniform(0.0, 0.6, len(false_positives))])
        for box, category, score in zip(all_boxes.tolist(), classes.tolist(), scores.tolist()):
            detections.append({"image_id": image_id, "category_id": category,
                               "bbox": [round(v, 2) for v in box], "score": round(score, 4)})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _annotation(ann_id: int, image_id: int, category: int, box: Sequence[float], crowd: int) -> Dict[str, Any]:
    x, y, w, h = (round(float(v), 2) for v in box)
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
            "area": round(w * h, 4), "iscrowd": crowd}


def run_cocoeval_bench(
    gt_dataset: Dict[str, Any],
    detections: List[Dict[str, Any]],
    bucket_sets: Sequence[str],
    max_dets: int,
    repeats: int,
    backends: Sequence[str] = ("pycocotools", "faster_coco_eval"),
    progress: bool = True,
) -> Dict[str, Any]:
    """Time every backend ``repeats`` times on the same inputs (ABBA order) and compare metrics.

    Returns:
        ``{"seconds": {backend: [wall s, ...]}, "cpu_seconds": {backend: [process CPU s, ...]},
        "metrics": {backend: {key: percent}}, "max_abs_diff": float,
        "disagreeing": [keys over AGREEMENT_TOLERANCE]}``.
    """
    from tqdm import tqdm

    from ugs_d2.evaluation.backends import check_backend
    from ugs_d2.evaluation.small_object import evaluate_detections

    for backend in backends:
        check_backend(backend)  # imports it, so that no timed run pays for the import
    seconds: Dict[str, List[float]] = {b: [] for b in backends}
    cpu_seconds: Dict[str, List[float]] = {b: [] for b in backends}
    metrics: Dict[str, Dict[str, float]] = {}
    order = [list(backends) if r % 2 == 0 else list(reversed(backends)) for r in range(repeats)]
    with tqdm(total=repeats * len(backends), desc="cocoeval", unit="run", disable=not progress,
              file=sys.stderr) as bar:
        for round_backends in order:
            for backend in round_backends:
                bar.set_postfix_str(backend)
                start, start_cpu = time.perf_counter(), time.process_time()
                result = evaluate_detections(gt_dataset, detections, bucket_sets, max_dets, backend)
                seconds[backend].append(time.perf_counter() - start)
                cpu_seconds[backend].append(time.process_time() - start_cpu)
                if backend in metrics and _max_abs_diff(metrics[backend], result) > 0:
                    raise RuntimeError(f"{backend} gave different numbers on two runs of the same input")
                metrics[backend] = result
                bar.update(1)
    reference, *others = backends
    diffs = {k: max((_abs_diff(metrics[reference][k], metrics[b][k]) for b in others), default=0.0)
             for k in metrics[reference]}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "metrics": metrics,
        "max_abs_diff": max(diffs.values(), default=0.0),
        "disagreeing": [k for k, d in diffs.items() if not d <= AGREEMENT_TOLERANCE],
    }


def _abs_diff(a: float, b: float) -> float:
    """|a - b|, 0 when both are NaN (an undefined bucket in both), inf when only one is."""
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b)


def _max_abs_diff(a: Dict[str, float], b: Dict[str, float]) -> float:
    return max(_abs_diff(a[k], b[k]) for k in a) if set(a) == set(b) else math.inf


def _join(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _ratio(value: float, baseline: float) -> str:
    """``value / baseline`` and, below 1, how many times faster."""
    ratio = value / baseline
    return f"{ratio:.3f} ({1 / ratio:.1f}x faster)" if ratio < 1 else f"{ratio:.3f}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def available_backends() -> Tuple[str, ...]:
    """The backends this build can run: detectron2_fast only with detectron2's C++ ops."""
    from ugs_d2.compat import HAS_COMPILED_OPS

    return ("pycocotools", "faster_coco_eval") + (("detectron2_fast",) if HAS_COMPILED_OPS else ())


def format_report(outcome: Dict[str, Any], command: str, started: str, wall_s: float, loads: List[float]) -> str:
    """The markdown report: command, machine, case, timing table, per-metric agreement."""
    from ugs_d2.compat import describe_detectron2

    seconds, metrics, case = outcome["seconds"], outcome["metrics"], outcome["case"]
    backends = list(seconds)
    baseline = statistics.median(seconds[backends[0]])
    lines = [
        f"# COCOeval backends: {' vs '.join(backends)}",
        "",
        f"- command: `{command}`",
        f"- date: {started} (wall time of the run incl. generating the case: {wall_s:.0f} s)",
        f"- machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s)"
        + (f", load average (1 min) at start / end {loads[0]:.2f} / {loads[-1]:.2f}" if loads else ""),
        f"- versions: pycocotools {_version('pycocotools')}, faster-coco-eval {_version('faster-coco-eval')}, "
        f"numpy {np.__version__}; {describe_detectron2()}",
        f"- case (seed {case['seed']}): {case['images']} images of {VISDRONE_IMAGE_SIZE[0]}x{VISDRONE_IMAGE_SIZE[1]}, "
        f"{case['classes']} classes, {case['gt']} ground-truth boxes ({case['gt'] / case['images']:.1f}/image, "
        f"median side {case['median_side']:.1f} px) + {case['crowd']} ignore-region annotations (iscrowd=1), "
        f"{case['dets']} detections ({case['dets'] // case['images']}/image)",
        f"- evaluation: maxDets [1, 10, {case['max_dets']}], buckets COCO + {', '.join(case['buckets']) or 'none'}; "
        "timed: `evaluate_detections` as the trainer's evaluator runs it (index ground truth, load "
        "detections, evaluate, accumulate, read every AP); backends alternate (ABBA)",
        "",
        "Wall time is what a user waits for; process CPU time (summed over the process's threads) "
        "is the work done, which other load on a shared machine distorts least.",
        "",
        "| backend | runs | wall s median | wall s min | wall s all runs | wall ratio | CPU s median "
        "| CPU s all runs | CPU ratio |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    cpu = outcome["cpu_seconds"]
    cpu_baseline = statistics.median(cpu[backends[0]])
    for backend in backends:
        runs, cpu_runs = seconds[backend], cpu[backend]
        median, cpu_median = statistics.median(runs), statistics.median(cpu_runs)
        lines.append(
            f"| {backend} | {len(runs)} | {median:.2f} | {min(runs):.2f} | {_join(runs)} | "
            f"{_ratio(median, baseline)} | {cpu_median:.2f} | {_join(cpu_runs)} | {_ratio(cpu_median, cpu_baseline)} |"
        )
    lines += [
        "",
        f"Agreement (AP in percent; tolerance {AGREEMENT_TOLERANCE:g}): largest difference "
        f"{outcome['max_abs_diff']:.2e}, "
        + ("every metric agrees." if not outcome["disagreeing"] else f"DISAGREE: {', '.join(outcome['disagreeing'])}"),
        "",
        "| metric | " + " | ".join(backends) + " | abs. difference |",
        "|---|" + "---:|" * (len(backends) + 1),
    ]
    for key in metrics[backends[0]]:
        values = [metrics[b][key] for b in backends]
        diff = max(_abs_diff(values[0], v) for v in values[1:]) if len(values) > 1 else 0.0
        lines.append(f"| {key} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {diff:.1e} |")
    return "\n".join(lines) + "\n"
