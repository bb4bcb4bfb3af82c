"""Register COCO-format detection datasets in detectron2's catalogs, with loud validation.

``register_dataset(dataset_cfg)`` registers ``<name>_train`` and ``<name>_test`` from the Hydra
``dataset`` group. The json is checked before training starts, and every problem is one line
naming the file and what was expected: a missing directory, malformed json (with line and
column), an annotation whose image is missing. Boxes with non-positive width or height are
dropped with a counted warning instead of crashing in the middle of training.
"""
import logging
import os
from collections import Counter
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ugs_d2.data.coco_json import DatasetError, read_coco_json

__all__ = ["DatasetError", "load_coco_detection", "register_coco_detection", "register_dataset"]

logger = logging.getLogger(__name__)


def load_coco_detection(json_file: str, image_root: str, check_files: bool = True) -> List[Dict]:
    """Read a COCO detection json into detectron2's dataset dicts.

    Args:
        json_file: COCO json with ``images``, ``annotations`` and ``categories``.
        image_root: directory that ``images[*].file_name`` is relative to.
        check_files: verify that every image file exists (one ``stat`` per image).

    Returns:
        One dict per image: ``file_name``, ``height``, ``width``, ``image_id`` and
        ``annotations`` (``bbox`` in XYWH_ABS, ``category_id`` contiguous from 0, ``iscrowd``).
    """
    data = read_coco_json(json_file)
    category_ids = sorted(c["id"] for c in data["categories"])
    contiguous = {cid: i for i, cid in enumerate(category_ids)}

    records: Dict[int, Dict] = {}
    for position, image in enumerate(data["images"]):
        try:
            image_id, file_name = image["id"], image["file_name"]
            height, width = int(image["height"]), int(image["width"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{json_file}: images[{position}] needs id, file_name, height and width"
            ) from None
        if image_id in records:
            raise DatasetError(f"{json_file}: images[{position}] repeats image id {image_id}")
        path = os.path.join(image_root, file_name)
        if check_files and not os.path.isfile(path):
            raise DatasetError(f"{json_file}: images[{position}] refers to missing file {path}")
        records[image_id] = {
            "file_name": path,
            "height": height,
            "width": width,
            "image_id": image_id,
            "annotations": [],
        }

    dropped = Counter()
    for position, ann in enumerate(data["annotations"]):
        try:
            image_id, category_id = ann["image_id"], ann["category_id"]
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{json_file}: annotations[{position}] needs image_id, category_id and a 4-number bbox"
            ) from None
        if image_id not in records:
            raise DatasetError(
                f"{json_file}: annotations[{position}] refers to image id {image_id}, "
                "which is not in 'images'"
            )
        if category_id not in contiguous:
            raise DatasetError(
                f"{json_file}: annotations[{position}] has category_id {category_id}, "
                f"expected one of {category_ids}"
            )
        if w <= 0 or h <= 0:
            dropped["non-positive width or height"] += 1
            continue
        records[image_id]["annotations"].append(
            {
                "bbox": [x, y, w, h],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous[category_id],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    for reason, count in dropped.items():
        logger.warning(f"{json_file}: dropped {count} box(es) with {reason}")
    return list(records.values())


def register_coco_detection(name: str, json_file: str, image_root: str) -> None:
    """Register one split: ``DatasetCatalog[name]`` loads lazily, metadata is set now.

    The json is validated here (categories, parse errors) so that a bad file fails at start.
    """
    data = read_coco_json(json_file)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_detection(json_file, image_root))
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )


def register_dataset(dataset_cfg) -> Dict[str, str]:
    """Register ``<name>_train`` and ``<name>_test`` from a Hydra ``dataset`` config.

    Generates the embedded synthetic dataset first when ``root`` does not exist and the config
    has a ``generate`` section. Returns ``{split name: json path}``.
    """
    root = os.path.abspath(os.path.expanduser(str(dataset_cfg.root)))
    if not os.path.isdir(root):
        generate = dataset_cfg.get("generate")
        if not generate:
            raise DatasetError(f"dataset.root: directory {root} does not exist")
        from ugs_d2.data import synth  # only needed here

        logger.info(f"dataset.root {root} does not exist: generating the synthetic dataset")
        synth.generate(
            root,
            num_train=int(generate.train),
            num_val=int(generate.val),
            seed=int(generate.seed),
            config=synth.SynthConfig(image_size=int(generate.image_size)),
        )
    registered = {}
    for split in ("train", "test"):
        split_cfg = dataset_cfg[split]
        json_file = os.path.join(root, split_cfg.json)
        image_root = os.path.join(root, split_cfg.images)
        if not os.path.isdir(image_root):
            raise DatasetError(f"dataset.{split}.images: directory {image_root} does not exist")
        name = f"{dataset_cfg.name}_{split}"
        register_coco_detection(name, json_file, image_root)
        registered[name] = json_file
    return registered
