"""The augmentation preview behind ``ugs-augment``: training samples after one small-object
augmentation (always applied: probability 1), drawn through the same mapper as training
(:class:`ugs_d2.data.mapper.AugmentingDatasetMapper`, without resize or flip), as one PNG grid
with the boxes outlined in one colour per class.

Each cell's caption names the source image id(s); ``(no crop)`` marks a sample where no window
avoided the small boxes. Without a dataset, :func:`preview_dataset` uses ``datasets/synth``
(``annotations/train.json``, ``train/``) when that exists, else a 16-image synthetic set
generated into a temporary directory. The same seed gives the same grid. detectron2 and PIL are
imported inside the functions (``ugs-augment --help`` imports neither).
"""
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ugs_d2.data.coco_json import DatasetError

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_JSON",
    "DEFAULT_IMAGES",
    "PreviewAugmentation",
    "preview_dataset",
    "annotated_records",
    "build_preview_mapper",
    "augmented_samples",
    "render_grid",
]

AUGMENTATIONS = ("mosaic", "crop", "rotation")
DEFAULT_JSON = os.path.join("datasets", "synth", "annotations", "train.json")
DEFAULT_IMAGES = os.path.join("datasets", "synth", "train")
FALLBACK_IMAGES = 16  # images of the synthetic set generated when no dataset is given
# one outline colour per class (RGB), cycled
PALETTE = ((0, 255, 0), (255, 64, 64), (64, 160, 255), (255, 220, 0), (255, 0, 255), (0, 255, 255),
           (255, 140, 0), (180, 120, 255))


@dataclass(frozen=True)
class PreviewAugmentation:
    """The one augmentation to show (``name`` in :data:`AUGMENTATIONS`) and its settings, as in
    the ``augment:`` config block: mosaic canvas (h, w; None: the sampled image's size) and the
    share of a box that must stay visible; crop size (fractions of the image) and the longest
    side of the boxes it never cuts; rotation angle (uniform in [-a, a] degrees)."""

    name: str
    mosaic_size: Optional[Tuple[int, int]] = None
    min_area_ratio: float = 0.5
    crop_size: Tuple[float, float] = (0.5, 0.5)
    small_object_max_side: float = 32.0
    max_angle: float = 15.0


def preview_dataset(json_path: Optional[str], image_dir: Optional[str], workdir: str,
                    log: Callable[[str], None] = print) -> Tuple[str, str]:
    """(json, image dir): the given ones, datasets/synth, or a small generated set in workdir."""
    if json_path is not None:
        return json_path, image_dir
    if os.path.isfile(DEFAULT_JSON) and os.path.isdir(DEFAULT_IMAGES):
        return DEFAULT_JSON, DEFAULT_IMAGES
    from ugs_d2.data import synth

    log(f"no {DEFAULT_JSON}: generating {FALLBACK_IMAGES} synthetic images in {workdir}")
    paths = synth.generate(os.path.join(workdir, "synth"), FALLBACK_IMAGES, 0, seed=0, progress=False)
    return paths["train_json"], paths["train_images"]


def annotated_records(json_path: str, image_dir: str) -> List[Dict]:
    """detectron2 dataset dicts of the images that have annotations.

    Raises:
        DatasetError: ``image_dir`` is not a directory, the json is unusable, or no image has
            an annotation.
    """
    from ugs_d2.data.datasets import load_coco_detection

    if not os.path.isdir(image_dir):
        raise DatasetError(f"IMAGE_DIR {image_dir} is not a directory")
    records = [r for r in load_coco_detection(json_path, image_dir) if r["annotations"]]
    if not records:
        raise DatasetError(f"{json_path}: no image with annotations")
    return records


def build_preview_mapper(aug: PreviewAugmentation, records: Sequence[Dict], seed: int):
    """The training mapper with only the chosen augmentation, always applied."""
    from ugs_d2.data.augment import MosaicSettings, RandomRotationWithBoxes, SmallObjectSafeCrop
    from ugs_d2.data.mapper import MIN_BOX_SIDE, AugmentingDatasetMapper

    augmentations, mosaic = [], None
    if aug.name == "crop":
        augmentations.append(SmallObjectSafeCrop(tuple(aug.crop_size), "relative", aug.small_object_max_side))
    elif aug.name == "rotation":
        augmentations.append(RandomRotationWithBoxes(aug.max_angle))
    else:
        mosaic = MosaicSettings(
            prob=1.0,
            size=tuple(aug.mosaic_size) if aug.mosaic_size else None,
            min_area_ratio=aug.min_area_ratio,
        )
    return AugmentingDatasetMapper(
        True,
        augmentations=augmentations,
        image_format="RGB",
        mosaic=mosaic,
        mosaic_pool=records if mosaic else None,
        seed=seed,
        min_box_side=MIN_BOX_SIDE,
    )


def augmented_samples(mapper, records: Sequence[Dict], n: int, seed: int, progress: bool = True,
                      desc: str = "augment") -> List[Dict]:
    """Map ``n`` records drawn (with ``seed``) from ``records``.

    Returns dicts with ``image`` (H, W, 3 uint8, the mapper's channel order), ``boxes`` (M, 4)
    XYXY, ``classes`` (M,), ``source_ids`` (the image ids it came from) and ``input_hw``.
    """
    from tqdm import tqdm

    np.random.seed(seed)  # detectron2-style augmentations draw from np.random
    picks = np.random.default_rng(seed).integers(len(records), size=n)
    samples = []
    for index in tqdm(picks, desc=desc, unit="sample", disable=not progress):
        record = records[int(index)]
        out = mapper(record)
        instances = out["instances"]
        samples.append(
            {
                "image": out["image"].permute(1, 2, 0).numpy(),
                "boxes": instances.gt_boxes.tensor.numpy().astype(np.float64),
                "classes": instances.gt_classes.numpy(),
                "source_ids": out.get("mosaic_of", [record.get("image_id")]),
                "input_hw": (int(record["height"]), int(record["width"])),
            }
        )
    return samples


def _caption(sample: Dict, aug: str) -> str:
    ids = ",".join(str(i) for i in sample["source_ids"])
    text = f"{'mosaic ' if aug == 'mosaic' else 'image '}{ids}: {len(sample['boxes'])} boxes"
    if aug == "crop" and sample["image"].shape[:2] == sample["input_hw"]:
        text += " (no crop)"
    return text


def render_grid(samples: Sequence[Dict], aug: str, cols: Optional[int] = None, scale: int = 2):
    """A PIL image: one cell per sample (upscaled ``scale`` x, boxes outlined, a caption),
    ``cols`` per row (default ``ceil(sqrt(n))``)."""
    from PIL import Image, ImageDraw

    cols = cols or math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / cols)
    caption_h, pad = 14, 4
    cell_h = max(s["image"].shape[0] for s in samples) * scale + caption_h
    cell_w = max(s["image"].shape[1] for s in samples) * scale
    grid = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(grid)
    for k, sample in enumerate(samples):
        x0 = pad + (k % cols) * (cell_w + pad)
        y0 = pad + (k // cols) * (cell_h + pad)
        image = Image.fromarray(np.ascontiguousarray(sample["image"]))
        grid.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST), (x0, y0 + caption_h))
        for box, cls in zip(sample["boxes"], sample["classes"]):
            bx0, by0, bx1, by1 = (float(v) * scale for v in box)
            draw.rectangle(
                [x0 + bx0, y0 + caption_h + by0, x0 + bx1 - 1, y0 + caption_h + by1 - 1],
                outline=PALETTE[int(cls) % len(PALETTE)],
            )
        draw.text((x0 + 2, y0 + 1), _caption(sample, aug), fill=(230, 230, 230))
    return grid
