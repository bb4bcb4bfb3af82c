"""Small-object COCO evaluation: extra area buckets, large detection budgets, two backends.

COCO's small/medium/large split puts every object under 32 px in one bucket; the tiny-object
literature reads finer ones. ``evaluation.buckets`` adds named sets of them to COCO's metrics:

=========  ============  =====================  ==========================================
set        key           area range (px^2)      meaning
=========  ============  =====================  ==========================================
(always)   AP            [0, 1e10]              AP@[.5:.95], all sizes
(always)   APs/APm/APl   [0, 32^2] / [32^2,     COCO small / medium / large
                         96^2] / [96^2, 1e10]
aitod      APvt          [0, 8^2]               AI-TOD very tiny (side < 8 px)
aitod      APt           [8^2, 16^2]            AI-TOD tiny (8-16 px)
aitod      APs_aitod     [16^2, 32^2]           AI-TOD small (16-32 px)
aitod      APm_aitod     [32^2, 1e10]           AI-TOD medium (side >= 32 px)
soda       APeS          [0, 12^2]              SODA extremely small (< 12 px)
soda       APrS          [12^2, 20^2]           SODA relatively small (12-20 px)
soda       APgS          [20^2, 32^2]           SODA generally small (20-32 px)
soda       APN           [32^2, 40*50]          SODA normal (32-40 px; 40*50 = 2000 px^2
                                                is the upper end SODA's devkit uses)
=========  ============  =====================  ==========================================

**Sizes are areas.** As in pycocotools, a ground-truth box is in a bucket by its annotation's
``area`` and a detection by ``w*h``; "side < 8 px" means ``area <= 8^2``. For box-only datasets
``area`` is ``w*h`` (detectron2's ``convert_to_coco_json`` writes ``Boxes.area()``, the
embedded synthetic set and the VisDrone converter write ``w*h``); for COCO itself it is the
mask area. Both ends of a range are inclusive (pycocotools), so a box of exactly 64 px^2 is in
APvt and APt. Ground truth outside a bucket is ignored in it, and so is an unmatched detection
outside it; ``iscrowd=1`` annotations (VisDrone's ignored regions) are ignore regions: a
detection matched to one is neither a true nor a false positive.

**maxDets.** COCOeval runs with maxDets ``[1, 10, max_dets]`` and every AP here is read at
``max_dets`` (pycocotools' own ``summarize()`` hard-codes 100 and would print -1 for other
budgets). COCOeval keeps the ``max_dets`` best detections per image *and category*; the
detector's per-image limit (``model.roi.detections_per_image``, following
``evaluation.max_dets``) caps the total.

All metrics are computed from COCOeval's ``precision`` array by :func:`summarize_precision`, for
either backend (:mod:`ugs_d2.evaluation.backends`). :class:`SmallObjectCOCOEvaluator` is
detectron2's ``COCOEvaluator`` with that evaluation; its results (percent) go to
``results.json``, detectron2's event storage as ``bbox/<key>`` (hence ``metrics.json`` and W&B)
and the ``ugs-results`` sweep tables.
"""
import itertools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table

from ugs_d2 import compat
from ugs_d2.evaluation.backends import BACKENDS, CocoEvalOutput, check_backend, run_bbox_cocoeval
from ugs_d2.fileio import write_json_atomic

__all__ = [
    "AreaBucket",
    "BACKENDS",
    "BUCKET_SETS",
    "COCO_BUCKETS",
    "MAX_DETS_CAP",
    "SmallObjectCOCOEvaluator",
    "average_precision",
    "class_names_by_category_id",
    "contiguous_to_dataset_ids",
    "evaluate_detections",
    "max_dets_list",
    "metric_keys",
    "select_buckets",
    "summarize_precision",
]

logger = logging.getLogger(__name__)

#: COCO's "no upper bound" (pycocotools uses 1e5 ** 2).
UNBOUNDED = 1e5 ** 2
#: Upper limit of ``evaluation.max_dets``: far above any published budget (1500 on VisDrone,
#: AI-TOD), low enough to catch a typo before an evaluation that never ends.
MAX_DETS_CAP = 10000


@dataclass(frozen=True)
class AreaBucket:
    """One COCOeval area range: ``key`` is its result key, the range is in px^2, both ends inclusive."""

    key: str
    area_min: float
    area_max: float
    description: str


COCO_BUCKETS: Tuple[AreaBucket, ...] = (
    AreaBucket("AP", 0.0, UNBOUNDED, "all sizes"),
    AreaBucket("APs", 0.0, 32.0 ** 2, "COCO small (side < 32 px)"),
    AreaBucket("APm", 32.0 ** 2, 96.0 ** 2, "COCO medium (32-96 px)"),
    AreaBucket("APl", 96.0 ** 2, UNBOUNDED, "COCO large (side >= 96 px)"),
)

BUCKET_SETS: Dict[str, Tuple[AreaBucket, ...]] = {
    # AI-TOD (Wang et al. 2021): the areaRng of its evaluation toolkit
    "aitod": (
        AreaBucket("APvt", 0.0, 8.0 ** 2, "AI-TOD very tiny (side < 8 px)"),
        AreaBucket("APt", 8.0 ** 2, 16.0 ** 2, "AI-TOD tiny (8-16 px)"),
        AreaBucket("APs_aitod", 16.0 ** 2, 32.0 ** 2, "AI-TOD small (16-32 px)"),
        AreaBucket("APm_aitod", 32.0 ** 2, UNBOUNDED, "AI-TOD medium (side >= 32 px)"),
    ),
    # SODA (Cheng et al. 2023): its devkit closes "normal" at 40 * 50 px^2, not 40^2
    "soda": (
        AreaBucket("APeS", 0.0, 12.0 ** 2, "SODA extremely small (side < 12 px)"),
        AreaBucket("APrS", 12.0 ** 2, 20.0 ** 2, "SODA relatively small (12-20 px)"),
        AreaBucket("APgS", 20.0 ** 2, 32.0 ** 2, "SODA generally small (20-32 px)"),
        AreaBucket("APN", 32.0 ** 2, 40.0 * 50.0, "SODA normal (32-40 px)"),
    ),
}


def select_buckets(bucket_sets: Sequence[str]) -> Tuple[AreaBucket, ...]:
    """COCO's four area ranges followed by those of the named sets, in the order given.

    Raises:
        ValueError: an unknown set name (the message lists the known ones).
    """
    buckets = list(COCO_BUCKETS)
    for name in bucket_sets:
        if name not in BUCKET_SETS:
            raise ValueError(f"unknown bucket set {name!r}; expected some of {', '.join(BUCKET_SETS)}")
        buckets.extend(b for b in BUCKET_SETS[name] if b not in buckets)  # a set named twice: once
    return tuple(buckets)


def max_dets_list(max_dets: int) -> List[int]:
    """COCOeval's maxDets for a budget: ``[1, 10, max_dets]``, sorted and without repeats
    (the AP index is then ``list.index(max_dets)``, also for budgets under 10)."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or not 1 <= max_dets <= MAX_DETS_CAP:
        raise ValueError(f"max_dets: expected an integer in [1, {MAX_DETS_CAP}], got {max_dets!r}")
    return sorted({1, 10, max_dets})


def metric_keys(buckets: Sequence[AreaBucket]) -> List[str]:
    """The result keys in report order: AP, AP50, AP75, then one per area bucket after "all"."""
    return ["AP", "AP50", "AP75"] + [b.key for b in buckets[1:]]


def average_precision(
    precision: np.ndarray,
    area_index: int,
    max_dets_index: int,
    iou_index: Optional[int] = None,
    category_index: Optional[int] = None,
) -> float:
    """COCO's AP from an accumulated ``precision`` array, as pycocotools' ``_summarize`` does it.

    Args:
        precision: ``(T, R, K, A, M)`` (IoU thresholds, recall thresholds, categories, area
            ranges, maxDets) with -1 where undefined.
        area_index, max_dets_index: the area range (A axis) and maxDets (M axis) to read.
        iou_index: one IoU threshold (e.g. that of 0.5 for AP50); None: the mean over all.
        category_index: one category (per-class AP); None: pooled over all categories.

    Returns:
        The mean of the defined entries (in [0, 1]; pooled over IoU thresholds, recall
        thresholds and categories, not a mean of per-class APs), or NaN when no entry is
        defined (no ground truth in that bucket).
    """
    values = precision[:, :, :, area_index, max_dets_index]
    if iou_index is not None:
        values = values[iou_index : iou_index + 1]
    if category_index is not None:
        values = values[:, :, category_index : category_index + 1]
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else math.nan


def summarize_precision(
    output: CocoEvalOutput,
    buckets: Sequence[AreaBucket],
    max_dets: int,
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, float]:
    """The metrics of one evaluation, in percent (NaN where undefined).

    Args:
        output: the evaluation, run with ``[b.area_min, b.area_max] for b in buckets`` as its
            area ranges (``buckets[0]`` must be "all") and ``max_dets`` among its maxDets.
        buckets: the area buckets, in the order of the precision array's A axis.
        max_dets: the maxDets value every AP is read at.
        class_names: names of ``output.category_ids`` in order; adds ``AP-<name>`` (detectron2's
            per-class keys, all sizes) when there are at least two.

    Returns:
        ``{"AP", "AP50", "AP75", <bucket keys>..., "AP-<class>"...}`` in that order.
    """
    if output.precision.shape[3] != len(buckets):
        raise ValueError(f"precision has {output.precision.shape[3]} area ranges, expected {len(buckets)}")
    m = output.max_dets.index(max_dets)
    iou = {t: int(np.argmin(np.abs(output.iou_thresholds - t))) for t in (0.5, 0.75)}
    results = {
        "AP": average_precision(output.precision, 0, m),
        "AP50": average_precision(output.precision, 0, m, iou_index=iou[0.5]),
        "AP75": average_precision(output.precision, 0, m, iou_index=iou[0.75]),
    }
    for a, bucket in enumerate(buckets[1:], start=1):
        results[bucket.key] = average_precision(output.precision, a, m)
    if class_names is not None and len(class_names) > 1:
        if len(class_names) != len(output.category_ids):
            raise ValueError(f"{len(class_names)} class names for {len(output.category_ids)} categories")
        for k, name in enumerate(class_names):
            results[f"AP-{name}"] = average_precision(output.precision, 0, m, category_index=k)
    return {key: value * 100.0 for key, value in results.items()}


def evaluate_detections(
    gt_dataset: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    bucket_sets: Sequence[str] = (),
    max_dets: int = 100,
    backend: str = "pycocotools",
    class_names: Optional[Sequence[str]] = None,
    img_ids: Optional[Sequence[int]] = None,
    oriented: bool = False,
) -> Dict[str, float]:
    """Evaluate COCO-format detections against a COCO ground-truth dict (see the module doc).

    Args:
        gt_dataset: COCO ground truth (``area`` and ``iscrowd`` per annotation are used).
        detections: COCO results with dataset category ids; must not be empty.
        bucket_sets: names from :data:`BUCKET_SETS` added to COCO's buckets.
        max_dets: COCOeval's maxDets budget (1..MAX_DETS_CAP).
        backend: one of :data:`BACKENDS` (``pycocotools``, ``faster_coco_eval``, ``detectron2_fast``).
        class_names: per-class keys ``AP-<name>``, in the ground truth's category-id order.
        img_ids: evaluate only these images.
        oriented: boxes are XYWHA on both sides, matched by rotated IoU
            (:func:`~ugs_d2.evaluation.backends.run_bbox_cocoeval`).

    Returns:
        ``metric -> value`` in percent, keys as :func:`summarize_precision`.
    """
    if not detections:
        raise ValueError("no detections to evaluate")
    buckets = select_buckets(bucket_sets)
    output = run_bbox_cocoeval(
        gt_dataset,
        detections,
        [(b.area_min, b.area_max) for b in buckets],
        max_dets_list(max_dets),
        backend=backend,
        img_ids=img_ids,
        oriented=oriented,
    )
    return summarize_precision(output, buckets, max_dets, class_names)


class SmallObjectCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` (bbox) with extra area buckets, any maxDets and a choice
    of COCOeval backend.

    Collecting and gathering predictions, ``instances_predictions.pth`` and
    ``coco_instances_results.json`` are detectron2's; only the evaluation of the gathered
    detections is replaced (``_eval_predictions``), so that the metrics are read from the
    precision array with the right area ranges and maxDets for either backend.

    It reads its own constructor arguments and the public ``MetadataCatalog``; the ground truth
    the parent loaded and the results dict it returns are detectron2's private state, reached
    through :mod:`ugs_d2.compat` only.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        bucket_sets: Sequence[str] = (),
        max_dets: int = 100,
        backend: str = "pycocotools",
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        self._buckets = select_buckets(bucket_sets)
        self._bucket_sets = tuple(bucket_sets)
        max_dets_list(max_dets)  # validate before loading the dataset
        self._eval_max_dets = max_dets
        self._backend = check_backend(backend)
        self._results_dir = output_dir
        super().__init__(
            dataset_name,
            tasks=("bbox",),
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets,
            use_fast_impl=False,  # unused: this class runs its own evaluation
        )
        # the parent's metadata object (it may have added a converted json_file to it)
        self._dataset_metadata = MetadataCatalog.get(dataset_name)

    def _eval_predictions(self, predictions, img_ids=None):
        detections = list(itertools.chain.from_iterable(p["instances"] for p in predictions))
        to_dataset_id = contiguous_to_dataset_ids(self._dataset_metadata)
        for det in detections:
            det["category_id"] = to_dataset_id(det["category_id"])
        if self._results_dir:
            path = os.path.join(self._results_dir, "coco_instances_results.json")
            logger.info(f"Saving results to {path}")
            write_json_atomic(path, detections)
        ground_truth = compat.coco_evaluator_ground_truth(self)
        if "annotations" not in ground_truth.dataset:  # a test split: nothing to evaluate against
            logger.info("Annotations are not available for evaluation.")
            return
        buckets_text = ", ".join(self._bucket_sets) or "COCO only"
        logger.info(
            f"Evaluating {len(detections)} detections with {self._backend} "
            f"(maxDets {self._eval_max_dets}, buckets: {buckets_text}) ..."
        )
        class_names = class_names_by_category_id(self._dataset_metadata, ground_truth.getCatIds())
        if not detections:  # as detectron2: no prediction -> every metric undefined
            logger.warning("No predictions from the model!")
            compat.set_coco_evaluator_results(self, "bbox", {key: math.nan for key in metric_keys(self._buckets)})
            return
        results = evaluate_detections(
            ground_truth.dataset,
            detections,
            bucket_sets=self._bucket_sets,
            max_dets=self._eval_max_dets,
            backend=self._backend,
            class_names=class_names,
            img_ids=img_ids,
        )
        overall = {k: v for k, v in results.items() if not k.startswith("AP-")}
        logger.info("Evaluation results for bbox: \n" + create_small_table(overall))
        per_class = {k[3:]: v for k, v in results.items() if k.startswith("AP-")}
        if per_class:
            logger.info("Per-category bbox AP: \n" + create_small_table(per_class))
        compat.set_coco_evaluator_results(self, "bbox", results)


def class_names_by_category_id(metadata, category_ids: Sequence[int]) -> Optional[List[str]]:
    """``thing_classes`` reordered to follow the sorted dataset category ids (COCOeval's K axis)."""
    names = metadata.get("thing_classes")
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if names is None or not mapping:
        return names
    return [names[mapping[c]] for c in sorted(category_ids)]


def contiguous_to_dataset_ids(metadata):
    """The model's contiguous class index -> the dataset's category id (identity when the
    metadata has no mapping, as detectron2's COCOEvaluator)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if not mapping:
        return lambda i: i
    reverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}

    def convert(index: int) -> int:
        if index not in reverse:
            raise ValueError(
                f"a prediction has class {index}, but the dataset has {len(reverse)} classes"
            )
        return reverse[index]

    return convert
