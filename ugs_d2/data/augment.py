"""Small-object augmentations (issue 7, item 4): a crop that keeps small objects whole, a rotation
whose boxes follow the rotated corners, and mosaic (4 images into one).

All coordinates are detectron2's ``XYXY_ABS`` in continuous pixel units: pixel ``(row i, col j)``
covers ``[j, j + 1) x [i, i + 1)``, so a box ``(x0, y0, x1, y1)`` with integer corners holds
exactly the pixels ``x0 <= j < x1``, ``y0 <= i < y1``.

* :class:`SmallObjectSafeCrop` and :class:`RandomRotationWithBoxes` are detectron2
  ``Augmentation``\\ s (random parameters from ``np.random``, like detectron2's own, which its data
  loader seeds per worker). The crop needs the boxes: feed it ``T.AugInput(image, boxes=...)``
  (:class:`ugs_d2.data.mapper.AugmentingDatasetMapper` does).
* Mosaic needs four dataset records, so the mapper draws them; this module holds the pure
  geometry (:func:`mosaic_placement`, :func:`compose_mosaic`).
* :func:`add_augment_config` adds the detectron2 keys (``INPUT.RESIZE``, ``AUGMENT.*``) that
  :func:`ugs_d2.config.to_detectron2_cfg` fills from the Hydra ``augment:`` block and
  ``model.input.resize``. Every probability defaults to 0: nothing changes unless asked.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T

__all__ = [
    "MOSAIC_FILL",
    "MosaicSettings",
    "RandomRotationWithBoxes",
    "SmallObjectSafeCrop",
    "add_augment_config",
    "build_box_augmentations",
    "clip_boxes",
    "compose_mosaic",
    "crop_size",
    "mosaic_placement",
    "window_cuts_boxes",
]

MOSAIC_FILL = 114  # grey of the canvas where no source image lands (YOLO's value)


def add_augment_config(cfg: CfgNode) -> None:
    """Add ``INPUT.RESIZE`` and the ``AUGMENT`` node (all augmentations off) to a CfgNode."""
    cfg.INPUT.RESIZE = "shortest_edge"  # shortest_edge: detectron2's ResizeShortestEdge | none
    cfg.AUGMENT = CfgNode()
    cfg.AUGMENT.MOSAIC = CfgNode()
    cfg.AUGMENT.MOSAIC.PROB = 0.0
    cfg.AUGMENT.MOSAIC.SIZE = []  # [h, w] of the canvas; []: the size of the sampled image
    cfg.AUGMENT.MOSAIC.MIN_AREA_RATIO = 0.5
    cfg.AUGMENT.MOSAIC.CENTER_RANGE = [0.25, 0.75]
    cfg.AUGMENT.CROP = CfgNode()
    cfg.AUGMENT.CROP.PROB = 0.0
    cfg.AUGMENT.CROP.SIZE = [0.5, 0.5]
    cfg.AUGMENT.CROP.SIZE_TYPE = "relative"  # relative | absolute
    cfg.AUGMENT.CROP.SMALL_OBJECT_MAX_SIDE = 32.0
    cfg.AUGMENT.CROP.MAX_TRIES = 50
    cfg.AUGMENT.ROTATION = CfgNode()
    cfg.AUGMENT.ROTATION.PROB = 0.0
    cfg.AUGMENT.ROTATION.MAX_ANGLE = 0.0


# ----------------------------------------------------------------------------- pure geometry


def window_cuts_boxes(window: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """Which boxes the border of ``window`` passes through.

    Args:
        window: ``(x0, y0, x1, y1)`` of the crop.
        boxes: ``(N, 4)`` XYXY boxes.

    Returns:
        ``(N,)`` bool: the box overlaps the window with positive area but is not contained in
        it. A box touching the window from outside, or lying exactly on its edge, is not cut.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in window)
    overlap_w = np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)
    overlap_h = np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)
    overlaps = (overlap_w > 0) & (overlap_h > 0)
    contained = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
    return overlaps & ~contained


def clip_boxes(boxes: np.ndarray, rect: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Clip boxes to a rectangle.

    Args:
        boxes: ``(N, 4)`` XYXY boxes.
        rect: ``(x0, y0, x1, y1)``.

    Returns:
        ``(clipped (N, 4), kept_area_ratio (N,))``: the share of each box's area inside
        ``rect`` (0 for boxes with no area).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in rect)
    clipped = np.stack(
        [np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
         np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1)], axis=1
    )
    area = (boxes[:, 2] - boxes[:, 0]).clip(min=0) * (boxes[:, 3] - boxes[:, 1]).clip(min=0)
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    ratio = np.divide(kept, area, out=np.zeros_like(area), where=area > 0)
    return clipped, ratio


def crop_size(image_hw: Tuple[int, int], size: Sequence[float], size_type: str) -> Tuple[int, int]:
    """``(crop_h, crop_w)`` in px: ``relative`` = fractions of the image side (rounded, at least
    1 px), ``absolute`` = pixels; never larger than the image."""
    h, w = image_hw
    if size_type == "relative":
        ch, cw = int(round(h * size[0])), int(round(w * size[1]))
    elif size_type == "absolute":
        ch, cw = int(size[0]), int(size[1])
    else:
        raise ValueError(f"crop size_type: expected relative or absolute, got {size_type!r}")
    return min(max(ch, 1), h), min(max(cw, 1), w)


def mosaic_placement(
    quadrant: int, center: Tuple[int, int], canvas_hw: Tuple[int, int], image_hw: Tuple[int, int]
) -> Tuple[Tuple[int, int, int, int], Tuple[int, int, int, int]]:
    """Where one source image goes in a mosaic (the YOLO layout, at the source's own scale).

    The canvas is split at ``center = (cx, cy)`` into quadrants 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right. Each image touches the centre with its corner (quadrant 0:
    its bottom-right corner, ...) and whatever of it falls outside its quadrant is cut away.

    Returns:
        ``(src, dst)``: integer XYXY rectangles of equal size; ``canvas[dst] = image[src]``.
    """
    cx, cy = center
    canvas_h, canvas_w = canvas_hw
    h, w = image_hw
    left, top = quadrant in (0, 2), quadrant in (0, 1)
    dst_x0, dst_x1 = (max(cx - w, 0), cx) if left else (cx, min(cx + w, canvas_w))
    dst_y0, dst_y1 = (max(cy - h, 0), cy) if top else (cy, min(cy + h, canvas_h))
    dw, dh = dst_x1 - dst_x0, dst_y1 - dst_y0
    src_x0 = w - dw if left else 0  # the part of the image next to the centre
    src_y0 = h - dh if top else 0
    return (src_x0, src_y0, src_x0 + dw, src_y0 + dh), (dst_x0, dst_y0, dst_x1, dst_y1)


def compose_mosaic(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    canvas_hw: Tuple[int, int],
    center: Tuple[int, int],
    min_area_ratio: float = 0.5,
    fill: int = MOSAIC_FILL,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste four images into one canvas (image ``k`` in quadrant ``k``, see
    :func:`mosaic_placement`) and move their boxes along.

    Args:
        images: four ``(H_k, W_k, C)`` arrays of one dtype and channel count.
        boxes: four ``(N_k, 4)`` XYXY arrays, in each image's own coordinates.
        canvas_hw: output ``(H, W)``.
        center: ``(cx, cy)``, integers in ``[0, W] x [0, H]``.
        min_area_ratio: a box is kept if at least this share of its area is visible in its
            quadrant (boxes losing most of their area to the cut are dropped).
        fill: value of canvas pixels no image covers.

    Returns:
        ``(canvas (H, W, C), boxes (M, 4) float64 clipped to their quadrant,
        origin (M, 2) int64 = (image index, box index in that image))``.
    """
    if len(images) != 4 or len(boxes) != 4:
        raise ValueError(f"mosaic needs 4 images and 4 box arrays, got {len(images)} and {len(boxes)}")
    canvas = np.full((*canvas_hw, images[0].shape[2]), fill, dtype=images[0].dtype)
    out_boxes, origin = [], []
    for k, (image, image_boxes) in enumerate(zip(images, boxes)):
        src, dst = mosaic_placement(k, center, canvas_hw, image.shape[:2])
        canvas[dst[1]:dst[3], dst[0]:dst[2]] = image[src[1]:src[3], src[0]:src[2]]
        shift = np.array([dst[0] - src[0], dst[1] - src[1]] * 2, dtype=np.float64)
        moved = np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4) + shift
        clipped, ratio = clip_boxes(moved, dst)
        keep = np.flatnonzero((ratio >= min_area_ratio) & (ratio > 0))
        out_boxes.append(clipped[keep])
        origin.extend((k, int(i)) for i in keep)
    return (
        canvas,
        np.concatenate(out_boxes, axis=0),
        np.asarray(origin, dtype=np.int64).reshape(-1, 2),
    )


@dataclass(frozen=True)
class MosaicSettings:
    """Mosaic in the training mapper (``augment.mosaic.*``)."""

    prob: float = 0.0
    """Probability that a training sample is a mosaic."""
    size: Optional[Tuple[int, int]] = None
    """Canvas ``(h, w)``; None: the sampled image's own size (the input size does not change)."""
    min_area_ratio: float = 0.5
    """Keep a box if at least this share of its area stays visible."""
    center_range: Tuple[float, float] = (0.25, 0.75)
    """The centre is drawn uniformly in this share of the canvas width/height."""


# ----------------------------------------------------------------------------- augmentations


class SmallObjectSafeCrop(T.Augmentation):
    """Random crop whose border never cuts through a small box.

    Each try draws a window that contains a randomly chosen box (any box that fits; uniform
    when none does), then accepts it if no small box is cut. Boxes whose longer side is at most
    ``small_object_max_side`` px are either wholly inside the
    crop or wholly outside it; larger boxes may be cut (the mapper clips them to the crop). The
    window is drawn uniformly; after ``max_tries`` windows that would cut a small box the image
    is left uncropped (NoOpTransform). Uses ``T.AugInput(image, boxes=XYXY array)``.
    """

    input_args = ("image", "boxes")

    def __init__(
        self,
        size: Sequence[float],
        size_type: str = "relative",
        small_object_max_side: float = 32.0,
        max_tries: int = 50,
        prob: float = 1.0,
    ):
        """
        Args:
            size: ``(h, w)``: fractions of the image (``relative``) or pixels (``absolute``).
            size_type: ``relative`` | ``absolute``.
            small_object_max_side: px at the input of this augmentation.
            max_tries: windows tried before giving up.
            prob: probability of cropping at all.
        """
        super().__init__()
        if size_type not in ("relative", "absolute"):
            raise ValueError(f"size_type: expected relative or absolute, got {size_type!r}")
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray]) -> T.Transform:
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        crop_h, crop_w = crop_size((h, w), self.size, self.size_type)
        if (crop_h, crop_w) == (h, w):
            return T.NoOpTransform()
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        small = boxes[sides <= self.small_object_max_side]
        # windows are drawn around a random box that fits in them, so that a crop (which zooms in
        # once resized) shows objects rather than the background that is easiest to cut
        fitting = boxes[(boxes[:, 2] - boxes[:, 0] <= crop_w) & (boxes[:, 3] - boxes[:, 1] <= crop_h)]
        for _ in range(self.max_tries):
            target = fitting[np.random.randint(len(fitting))] if len(fitting) else None
            x0 = _window_start(w, crop_w, None if target is None else target[[0, 2]])
            y0 = _window_start(h, crop_h, None if target is None else target[[1, 3]])
            if not window_cuts_boxes((x0, y0, x0 + crop_w, y0 + crop_h), small).any():
                return T.CropTransform(x0, y0, crop_w, crop_h)
        return T.NoOpTransform()


def _window_start(length: int, window: int, span: Optional[np.ndarray]) -> int:
    """A random integer start ``s`` of a window ``[s, s + window]`` inside ``[0, length]`` that
    contains ``span = (lo, hi)`` when given (uniform over all starts when None or impossible)."""
    low, high = 0, length - window
    if span is not None:
        low, high = max(low, int(np.ceil(span[1] - window))), min(high, int(np.floor(span[0])))
        if low > high:
            low, high = 0, length - window
    return int(np.random.randint(low, high + 1))


class RandomRotationWithBoxes(T.Augmentation):
    """Rotate by an angle drawn uniformly from ``[-max_angle, max_angle]`` degrees
    (counter-clockwise, about the image centre), keeping the image size (``expand=False``).

    detectron2's ``RotationTransform`` does the pixels and maps boxes to the box around their 4
    rotated corners; detectron2's annotation transform then clips them to the image and the
    mapper drops those left at most ``MIN_BOX_SIDE`` (1 px) wide or high. The corners
    the rotation uncovers are black.
    """

    def __init__(self, max_angle: float, prob: float = 1.0, interp: Optional[int] = None):
        """
        Args:
            max_angle: degrees, in [0, 180].
            prob: probability of rotating at all.
            interp: a cv2 interpolation flag (None: bilinear).
        """
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        angle = float(self._rand_range(-self.max_angle, self.max_angle))
        if angle == 0.0:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        return self.transform_for(h, w, angle, self.interp)

    @staticmethod
    def transform_for(h: int, w: int, angle: float, interp: Optional[int] = None) -> T.Transform:
        """The transform this augmentation uses for an ``h x w`` image and ``angle`` degrees."""
        return T.RotationTransform(h, w, angle, expand=False, interp=interp)


def build_box_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """The crop and rotation of ``cfg.AUGMENT`` (those with a probability above 0), in the
    order they run: crop first (at the image's own pixels, so ``SMALL_OBJECT_MAX_SIDE`` is in
    dataset pixels), then rotation. Both run before detectron2's resize, so a crop followed by
    the usual resize zooms in."""
    augment = cfg.get("AUGMENT")
    if augment is None:
        return []
    augs: List[T.Augmentation] = []
    if augment.CROP.PROB > 0:
        augs.append(
            SmallObjectSafeCrop(
                size=tuple(augment.CROP.SIZE),
                size_type=augment.CROP.SIZE_TYPE,
                small_object_max_side=augment.CROP.SMALL_OBJECT_MAX_SIDE,
                max_tries=augment.CROP.MAX_TRIES,
                prob=augment.CROP.PROB,
            )
        )
    if augment.ROTATION.PROB > 0 and augment.ROTATION.MAX_ANGLE > 0:
        augs.append(RandomRotationWithBoxes(augment.ROTATION.MAX_ANGLE, prob=augment.ROTATION.PROB))
    return augs


def mosaic_settings(cfg: CfgNode) -> Optional[MosaicSettings]:
    """``cfg.AUGMENT.MOSAIC`` as :class:`MosaicSettings`, or None when mosaic is off."""
    augment = cfg.get("AUGMENT")
    if augment is None or augment.MOSAIC.PROB <= 0:
        return None
    mosaic = augment.MOSAIC
    return MosaicSettings(
        prob=float(mosaic.PROB),
        size=tuple(int(v) for v in mosaic.SIZE) if len(mosaic.SIZE) else None,
        min_area_ratio=float(mosaic.MIN_AREA_RATIO),
        center_range=(float(mosaic.CENTER_RANGE[0]), float(mosaic.CENTER_RANGE[1])),
    )
