"""The training mapper with the configured small-object augmentations (``augment:``, ``model.input``).

``AugmentingDatasetMapper`` is detectron2's ``DatasetMapper`` plus:

* ``INPUT.RESIZE = none`` (``input=native``): no resize at all, train and test; images reach the
  model at their own size (what tiled training uses: tiles are not upscaled unless asked);
* mosaic: with probability ``AUGMENT.MOSAIC.PROB`` the sample is a mosaic of itself and 3 records
  drawn from the training set with the mapper's own generator, seeded by ``(SEED, rank,
  data-loader worker)``: deterministic for a given seed, number of workers and world size, and
  different in every worker;
* the crop and rotation of :mod:`ugs_d2.data.augment`, before detectron2's resize and flip, with
  the boxes passed along (``AugInput(image, boxes=...)``) so that the crop can avoid small boxes;
* with any of these on, boxes at most ``MIN_BOX_SIDE`` px wide or high after the transforms
  (slivers left by clipping a rotated or cropped box) are dropped.

With everything off (the default) it is exactly ``DatasetMapper``: :func:`needs_augmenting_mapper`
is False and the trainer keeps detectron2's own loader.
"""
import copy
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetFromList, DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ugs_d2.data.augment import (
    MosaicSettings,
    RandomRotationWithBoxes,
    SmallObjectSafeCrop,
    build_box_augmentations,
    compose_mosaic,
    mosaic_settings,
)
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.data.datasets import read_image

__all__ = [
    "MIN_BOX_SIDE",
    "AugmentingDatasetMapper",
    "FileNamingDatasetMapper",
    "build_train_loader",
    "needs_augmenting_mapper",
]

logger = logging.getLogger(__name__)

MIN_BOX_SIDE = 1.0  # px: with augmentations on, boxes not wider and higher are dropped (slivers)


def needs_augmenting_mapper(cfg: CfgNode) -> bool:
    """True when ``cfg`` turns on anything detectron2's ``DatasetMapper`` cannot do."""
    return (
        cfg.INPUT.get("RESIZE", "shortest_edge") == "none"
        or mosaic_settings(cfg) is not None
        or bool(build_box_augmentations(cfg))
    )


def _boxes_xyxy(annotations: Sequence[Dict]) -> np.ndarray:
    """``(N, 4)`` XYXY_ABS boxes of the annotations, in order."""
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


class FileNamingDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper``; an image that fails to decode is a :class:`DatasetError`
    naming its file. A truncated image passes the header checks at registration and PIL's
    "image file is truncated" names no file, so without this it is a traceback mid-training."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # PIL's decoding errors (SyntaxError: broken PNG)
            raise DatasetError(f"{dataset_dict['file_name']}: unreadable image ({e})") from None


class AugmentingDatasetMapper(FileNamingDatasetMapper):
    """``DatasetMapper`` with mosaic, small-object-safe crop, rotation and optional no-resize."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        mosaic: Optional[MosaicSettings] = None,
        mosaic_pool: Optional[Sequence[Dict]] = None,
        seed: int = 0,
        min_box_side: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            is_train, augmentations, image_format, kwargs: as for ``DatasetMapper``;
                ``augmentations`` sees ``AugInput(image, boxes=XYXY)`` in training.
            mosaic: mosaic settings, or None for no mosaic.
            mosaic_pool: the dataset dicts mosaic partners are drawn from (the training set);
                held serialized (``DatasetFromList``) so that workers share it.
            seed: seeds the mosaic generator together with the rank and the worker id
                (negative: a seed drawn from ``np.random``).
            min_box_side: drop boxes at most this wide or high (px) after the transforms;
                0 keeps detectron2's rule (only empty boxes are dropped).
        """
        super().__init__(is_train, augmentations=augmentations, image_format=image_format, **kwargs)
        if mosaic is not None and mosaic.prob > 0 and not mosaic_pool:
            raise ValueError("mosaic needs the dataset dicts to draw partner images from (mosaic_pool)")
        self.mosaic = mosaic if mosaic is not None and mosaic.prob > 0 else None
        self.mosaic_pool = (
            None if self.mosaic is None
            else mosaic_pool if isinstance(mosaic_pool, DatasetFromList)
            else DatasetFromList(list(mosaic_pool), copy=True, serialize=True)
        )
        self.seed = seed
        self.min_box_side = min_box_side
        self._own_path = is_train and (
            self.mosaic is not None or any(_is_box_augmentation(a) for a in augmentations)
        )
        self._rng: Optional[np.random.Generator] = None
        self._rng_owner = None
        if self.mosaic is not None:
            logger.info(f"[AugmentingDatasetMapper] mosaic: {self.mosaic}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True, dataset_dicts: Optional[Sequence[Dict]] = None):
        ret = super().from_config(cfg, is_train)
        augs = ret["augmentations"]
        if cfg.INPUT.get("RESIZE", "shortest_edge") == "none":
            augs = [a for a in augs if not isinstance(a, T.ResizeShortestEdge)]
        if is_train:
            box_augs = build_box_augmentations(cfg)
            augs = box_augs + augs  # at the image's own pixels, before resize and flip
            mosaic = mosaic_settings(cfg)
            ret.update(
                mosaic=mosaic,
                mosaic_pool=dataset_dicts if mosaic is not None else None,
                seed=cfg.SEED,
                min_box_side=MIN_BOX_SIDE if (box_augs or mosaic is not None) else 0.0,
            )
        ret["augmentations"] = augs
        return ret

    def _generator(self) -> np.random.Generator:
        """The mosaic generator of this process / data-loader worker (created on first use there,
        so that forked workers do not share one stream)."""
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else info.id
        owner = (os.getpid(), worker)
        if self._rng is None or self._rng_owner != owner:
            seed = self.seed if self.seed >= 0 else int(np.random.randint(2**31))
            self._rng = np.random.default_rng([seed, comm.get_rank(), worker + 1])
            self._rng_owner = owner
        return self._rng

    def _mosaic(self, dataset_dict: Dict, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace ``dataset_dict``'s annotations, height and width by those of a mosaic of its
        image and 3 drawn records (boxes only; crowd boxes dropped); returns the canvas."""
        settings = self.mosaic
        records = [dataset_dict] + [
            self.mosaic_pool[int(i)] for i in rng.integers(len(self.mosaic_pool), size=3)
        ]
        images = [image]
        for record in records[1:]:
            partner = read_image(record["file_name"], format=self.image_format)
            utils.check_image_size(record, partner)
            images.append(partner)
        annotations = [[a for a in r.get("annotations", []) if a.get("iscrowd", 0) == 0] for r in records]
        quadrant_of = rng.permutation(4)  # record quadrant_of[k] goes to quadrant k
        canvas_h, canvas_w = settings.size if settings.size is not None else image.shape[:2]
        low, high = settings.center_range
        center_x, center_y = rng.uniform(low, high, size=2)
        center = (int(round(center_x * canvas_w)), int(round(center_y * canvas_h)))
        canvas, boxes, origin = compose_mosaic(
            [images[r] for r in quadrant_of],
            [_boxes_xyxy(annotations[r]) for r in quadrant_of],
            (canvas_h, canvas_w),
            center,
            min_area_ratio=settings.min_area_ratio,
        )
        dataset_dict["annotations"] = [
            {
                "bbox": box.tolist(),
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": annotations[quadrant_of[k]][i]["category_id"],
                "iscrowd": 0,
            }
            for box, (k, i) in zip(boxes, origin)
        ]
        dataset_dict["height"], dataset_dict["width"] = canvas_h, canvas_w
        dataset_dict["mosaic_of"] = [records[r].get("image_id") for r in quadrant_of]
        return canvas

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        if self.min_box_side > 0:
            instances = dataset_dict["instances"]
            dataset_dict["instances"] = instances[instances.gt_boxes.nonempty(threshold=self.min_box_side)]

    def __call__(self, dataset_dict: Dict) -> Dict:
        if not self._own_path:  # inference, or training with only resize/flip: detectron2's path
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        if self.mosaic is not None:
            rng = self._generator()
            if rng.random() < self.mosaic.prob:
                image = self._mosaic(dataset_dict, image, rng)
        solid = [a for a in dataset_dict.get("annotations", []) if a.get("iscrowd", 0) == 0]
        aug_input = T.AugInput(image, boxes=_boxes_xyxy(solid))
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict


def _is_box_augmentation(aug) -> bool:
    return isinstance(aug, (SmallObjectSafeCrop, RandomRotationWithBoxes))


def build_train_loader(cfg: CfgNode):
    """detectron2's training loader over ``cfg.DATASETS.TRAIN`` with an ``AugmentingDatasetMapper``
    (which also gets the dataset dicts, for mosaic)."""
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    mapper = AugmentingDatasetMapper(cfg, True, dataset_dicts=dataset)
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
