"""COCO-style evaluation of oriented boxes: rotated IoU, the small-object buckets, any maxDets.

:class:`OrientedCOCOEvaluator` is what the trainer uses for a detector with
``INPUT.ORIENTED_BOXES`` (``projects/UGS_Rotated``). The ground truth is the test split's
records with their ``rbox`` (the reader keeps it), as a COCO dict whose ``bbox`` is the
XYWHA box and whose ``area`` is its ``w * h`` -- the area SODA-A's devkit puts objects into
its buckets by (eS < 12^2, rS, gS, N up to 40 * 50 px^2). Detections are the model's
``RotatedBoxes``. Matching is detectron2's ``RotatedCOCOeval`` (pycocotools with rotated IoU);
every metric comes from its precision array through the same code as the axis-aligned
evaluator (:func:`ugs_d2.evaluation.small_object.evaluate_detections`), so the keys are the
same: AP, AP50, AP75, APs/APm/APl, the bucket sets' keys and ``AP-<class>``.

Crowd regions are not supported by rotated IoU (detectron2 asserts it): ``iscrowd=1``
annotations are left out of the ground truth, and how many is logged. As in the devkit (which
removes SODA-A's ignore regions before evaluating), a detection on one is a false positive.
"""
import itertools
import logging
import math
from collections import OrderedDict
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from ugs_d2.evaluation.small_object import (
    class_names_by_category_id,
    contiguous_to_dataset_ids,
    evaluate_detections,
    max_dets_list,
    metric_keys,
    select_buckets,
)

__all__ = ["OrientedCOCOEvaluator", "oriented_ground_truth"]

logger = logging.getLogger(__name__)


def oriented_ground_truth(dataset_name: str) -> Dict:
    """The COCO ground-truth dict of a registered split with oriented boxes: ``bbox`` = the
    records' ``rbox`` (XYWHA), ``area`` = its w * h, dataset category ids; crowd regions left out."""
    metadata = MetadataCatalog.get(dataset_name)
    to_dataset_id = contiguous_to_dataset_ids(metadata)
    images, annotations, crowd = [], [], 0
    for record in DatasetCatalog.get(dataset_name):
        images.append({"id": record["image_id"], "width": record["width"], "height": record["height"]})
        for ann in record.get("annotations", []):
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            box = ann["rbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": record["image_id"], "bbox": list(box),
                                "area": box[2] * box[3], "iscrowd": 0,
                                "category_id": to_dataset_id(ann["category_id"])})
    if crowd:
        logger.warning(f"{dataset_name}: {crowd} crowd region(s) left out (rotated IoU has no crowd matching)")
    names = metadata.get("thing_classes", [])
    categories = [{"id": to_dataset_id(i), "name": name} for i, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


class OrientedCOCOEvaluator(DatasetEvaluator):
    """Rotated-IoU COCO evaluation of ``instances.pred_boxes`` (``RotatedBoxes``), see the module doc."""

    def __init__(self, dataset_name: str, *, bucket_sets: Sequence[str] = (), max_dets: int = 100,
                 distributed: bool = True):
        self.dataset_name = dataset_name
        self.bucket_sets = tuple(bucket_sets)
        self.buckets = select_buckets(bucket_sets)
        max_dets_list(max_dets)  # validates
        self.max_dets = max_dets
        self.distributed = distributed
        self.metadata = MetadataCatalog.get(dataset_name)
        self.to_dataset_id = contiguous_to_dataset_ids(self.metadata)
        self.detections: List[Dict] = []

    def reset(self):
        self.detections = []

    def process(self, inputs, outputs):
        for image, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.tolist()
            for box, score, cls in zip(boxes, instances.scores.tolist(), instances.pred_classes.tolist()):
                self.detections.append({"image_id": image["image_id"], "category_id": self.to_dataset_id(cls),
                                        "bbox": box, "score": score})

    def evaluate(self):
        detections = self.detections
        if self.distributed:
            comm.synchronize()
            detections = list(itertools.chain.from_iterable(comm.gather(detections, dst=0)))
            if not comm.is_main_process():
                return {}
        ground_truth = oriented_ground_truth(self.dataset_name)
        if not detections:
            logger.warning("No predictions from the model!")
            return OrderedDict(bbox={key: math.nan for key in metric_keys(self.buckets)})
        category_ids = [c["id"] for c in ground_truth["categories"]]
        logger.info(f"Evaluating {len(detections)} oriented detections with rotated IoU "
                    f"(maxDets {self.max_dets}, buckets: {', '.join(self.bucket_sets) or 'COCO only'}) ...")
        results = evaluate_detections(
            ground_truth, detections, bucket_sets=self.bucket_sets, max_dets=self.max_dets,
            class_names=class_names_by_category_id(self.metadata, category_ids), oriented=True,
        )
        logger.info("Evaluation results for bbox: \n"
                    + create_small_table({k: v for k, v in results.items() if not k.startswith("AP-")}))
        return OrderedDict(bbox=results)
