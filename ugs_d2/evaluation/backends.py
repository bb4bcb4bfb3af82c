"""The COCOeval implementations ``evaluation.backend`` chooses between.

* ``pycocotools``: the official COCO API (pure Python ``evaluateImg``), the reference;
* ``faster_coco_eval``: the same algorithm with matching and accumulation in C++
  (``faster_coco_eval.COCOeval_faster``), about an order of magnitude faster on
  VisDrone-sized inputs (``results/cocoeval_backends.md``);
* ``detectron2_fast``: detectron2's ``COCOeval_opt`` (pycocotools' COCOeval with
  ``evaluateImg``/``accumulate`` in detectron2's C++ ops). Only with a detectron2 built from
  source: the registry fallback has no compiled ops (``ugs_d2/compat.py``).

All produce COCOeval's ``eval["precision"]`` array, from which
:mod:`ugs_d2.evaluation.small_object` computes every metric, so the numbers cannot drift apart
through different summary code.

Only numpy is imported here; the backend's package is imported when it is used.
"""
import contextlib
import io
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["BACKENDS", "CocoEvalOutput", "backend_unavailable", "check_backend", "run_bbox_cocoeval"]

BACKENDS = ("pycocotools", "faster_coco_eval", "detectron2_fast")


@dataclass
class CocoEvalOutput:
    """What COCOeval's ``accumulate`` leaves, independent of the backend.

    Attributes:
        precision: ``(T, R, K, A, M)`` float array: IoU thresholds x 101 recall thresholds x
            categories x area ranges x maxDets; -1 where undefined (no ground truth).
        iou_thresholds: ``(T,)`` the IoU thresholds (0.50:0.05:0.95).
        max_dets: the maxDets values, in the order of the last axis.
        category_ids: the dataset category ids, in the order of the K axis.
    """

    precision: np.ndarray
    iou_thresholds: np.ndarray
    max_dets: List[int]
    category_ids: List[int]


def backend_unavailable(backend: str) -> Optional[str]:
    """None if the known ``backend`` can run here, else one line saying why and what to do."""
    if backend == "detectron2_fast":
        from ugs_d2 import compat

        if not compat.HAS_COMPILED_OPS:
            return (
                "evaluation.backend=detectron2_fast needs detectron2's C++ ops (COCOeval_opt), "
                f"which this detectron2 lacks ({compat.describe_detectron2().split(' at ')[0]}): "
                "build detectron2 from source (make install D2_SOURCE=/path/to/detectron2), "
                "or use evaluation.backend=faster_coco_eval (the same numbers, also C++)"
            )
        return None
    try:
        __import__(backend)
    except ImportError:
        return f"evaluation.backend={backend}: {backend} is not installed (pip install -r launch/requirements.txt)"
    return None


def check_backend(backend: str) -> str:
    """``backend`` if it is known and can run here, else ValueError (one line)."""
    if backend not in BACKENDS:
        raise ValueError(f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
    why = backend_unavailable(backend)
    if why:
        raise ValueError(why)
    return backend


def _copy_detections(detections: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    # loadRes adds id/area/iscrowd (and pycocotools a segmentation) to each dict: copy, so
    # that the caller's detections (e.g. the ones written to coco_instances_results.json)
    # and a second backend run on the same list stay untouched
    return [
        {"image_id": d["image_id"], "category_id": d["category_id"], "bbox": list(d["bbox"]),
         "score": d["score"]}
        for d in detections
    ]


def run_bbox_cocoeval(
    gt_dataset: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    area_ranges: Sequence[Tuple[float, float]],
    max_dets: Sequence[int],
    backend: str = "pycocotools",
    img_ids: Optional[Sequence[int]] = None,
    oriented: bool = False,
) -> CocoEvalOutput:
    """Run COCOeval (``iouType="bbox"``) with the given area ranges and maxDets.

    Args:
        gt_dataset: a COCO ground-truth dict (``images``, ``annotations``, ``categories``).
            Annotations' ``area`` decides their area range and ``iscrowd=1`` marks an ignore
            region, exactly as in pycocotools. COCOeval writes an ``ignore`` flag into each
            annotation dict (both backends; the value depends only on ``iscrowd``).
        detections: COCO results, dicts with ``image_id``, ``category_id`` (dataset ids),
            ``bbox`` (XYWH, px) and ``score``; not modified.
        area_ranges: ``[lo, hi]`` in px^2 per area range, both ends inclusive (pycocotools);
            the first should be "all".
        max_dets: increasing maxDets values; COCOeval keeps the top ``max_dets[-1]``
            detections by score per image *and category*.
        backend: one of :data:`BACKENDS`.
        img_ids: evaluate only these images (None: every image of ``gt_dataset``).
        oriented: ``bbox`` of both sides is XYWHA (cx, cy, w, h, angle): detectron2's
            ``RotatedCOCOeval`` (pycocotools with rotated IoU; needs the compiled ops, no crowd
            regions), whatever ``backend`` says.

    Returns:
        The accumulated precision and the axes it is indexed by.
    """
    max_dets = [int(m) for m in max_dets]
    if max_dets != sorted(set(max_dets)):
        # faster_coco_eval sorts maxDets in place; pycocotools does not: require the order
        raise ValueError(f"max_dets must be strictly increasing, got {max_dets}")
    detections = _copy_detections(detections)
    if oriented or backend in ("pycocotools", "detectron2_fast"):
        from pycocotools.coco import COCO

        if oriented:
            from detectron2.evaluation.rotated_coco_evaluation import RotatedCOCOeval as COCOeval
        elif backend == "pycocotools":
            from pycocotools.cocoeval import COCOeval
        else:  # the same class with evaluate/accumulate in detectron2's C++ ops
            check_backend(backend)
            from detectron2.evaluation.fast_eval_api import COCOeval_opt as COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco_gt = COCO()
            coco_gt.dataset = gt_dataset
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(detections) if detections else COCO()
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            _set_params(evaluator.params, area_ranges, max_dets, img_ids)
            evaluator.evaluate()
            evaluator.accumulate()
    elif backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        quiet = lambda *args, **kwargs: None  # noqa: E731
        coco_gt = COCO(dict(gt_dataset), print_function=quiet)
        coco_dt = coco_gt.loadRes(detections) if detections else COCO(print_function=quiet)
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
        _set_params(evaluator.params, area_ranges, max_dets, img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    else:
        raise ValueError(f"evaluation backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    params = evaluator.params
    return CocoEvalOutput(
        precision=np.asarray(evaluator.eval["precision"], dtype=np.float64),
        iou_thresholds=np.asarray(params.iouThrs, dtype=np.float64),
        max_dets=[int(m) for m in params.maxDets],
        category_ids=[int(c) for c in params.catIds],
    )


def _set_params(params, area_ranges, max_dets, img_ids) -> None:
    params.areaRng = [[float(lo), float(hi)] for lo, hi in area_ranges]
    params.areaRngLbl = [f"range{i}" for i in range(len(area_ranges))]  # labels are unused
    params.maxDets = list(max_dets)
    if img_ids is not None:
        params.imgIds = list(img_ids)
