"""Oriented boxes in the data pipeline: the records' ``rbox`` to detectron2's rotated targets.

The dataset jsons of ``ugs-data soda-a`` and of the synthetic set drawn with oriented objects
hold, per object, ``bbox`` (axis-aligned, XYWH) and ``rbox`` (``[cx, cy, w, h, angle]``,
detectron2's ``XYWHA_ABS``, degrees counter-clockwise); the reader keeps both
(:func:`ugs_d2.data.datasets.load_coco_detection`). With ``INPUT.ORIENTED_BOXES`` (set by the
rotated detector's project) the trainer maps the records with :class:`OrientedDatasetMapper`:
the ``rbox`` goes through detectron2's own rotated-box transforms (``apply_rotated_box`` of the
resize and the horizontal flip) into ``Instances.gt_boxes`` as ``RotatedBoxes``.
"""
from typing import Dict, List

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode

from ugs_d2.data.coco_json import DatasetError
from ugs_d2.data.mapper import FileNamingDatasetMapper

__all__ = ["OrientedDatasetMapper", "oriented_annotations"]


def oriented_annotations(dataset_dict: Dict, transforms) -> List[Dict]:
    """The non-crowd annotations of a record as XYWHA boxes after ``transforms``.

    Raises:
        DatasetError: naming the image, when an annotation has no ``rbox`` (a dataset without
            oriented boxes given to an oriented detector).
    """
    annotations = [a for a in dataset_dict["annotations"] if a.get("iscrowd", 0) == 0]
    if any("rbox" not in a for a in annotations):
        raise DatasetError(
            f"{dataset_dict['file_name']}: an annotation without 'rbox' (oriented box): an oriented "
            "detector needs a dataset with oriented boxes (ugs-data soda-a, or dataset=synth_oriented)"
        )
    if not annotations:
        return []
    boxes = transforms.apply_rotated_box(np.asarray([a["rbox"] for a in annotations], dtype=np.float64))
    return [{"bbox": box.tolist(), "bbox_mode": BoxMode.XYWHA_ABS, "category_id": a["category_id"]}
            for a, box in zip(annotations, boxes)]


class OrientedDatasetMapper(FileNamingDatasetMapper):
    """``DatasetMapper`` whose targets are the records' oriented boxes (``RotatedBoxes``).

    Only the transforms detectron2 can apply to rotated boxes are supported: resize and
    horizontal flip (the config refuses vertical flips and the crop/rotation/mosaic of
    ``augment:`` for oriented detectors).
    """

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        annotations = oriented_annotations(dataset_dict, transforms)
        dataset_dict.pop("annotations")
        instances = utils.annotations_to_instances_rotated(annotations, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
