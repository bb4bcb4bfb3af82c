"""VisDrone2019-DET -> COCO json (``ugs-data visdrone``).

The official release has one folder per split under a root::

    ROOT/VisDrone2019-DET-train/{images/*.jpg, annotations/*.txt}
    ROOT/VisDrone2019-DET-val/...
    ROOT/VisDrone2019-DET-test-dev/...

Each annotation file holds one object per line, ``x,y,w,h,score,category,truncation,occlusion``
(top-left corner and size in pixels), sometimes with a trailing comma. Conversion rules:

* categories 1..10 (pedestrian ... motor) keep their numbers as COCO ids 1..10; category 11
  ("others") is dropped, or kept as id 11 with ``keep_others``;
* category 0 ("ignored regions"), and any box whose ``score`` is 0 (the VisDrone definition of
  "ignored in evaluation"), become ignore areas: ``iscrowd=1`` annotations with the region's
  bbox and area, **one per class**, because pycocotools (and faster-coco-eval) match crowd
  regions only against detections of the same category. A detection inside such a region is
  then neither a false positive nor a true positive, and the region is never a miss.
  detectron2's ``DatasetMapper`` drops ``iscrowd`` annotations from training targets;
* ``truncation`` and ``occlusion`` are kept as annotation fields of the same names;
* boxes with zero or negative width/height are dropped and counted; boxes reaching outside the
  image are clipped to it and counted (dropped and counted if nothing is left);
* a line with a wrong number of fields, a non-numeric field, a score other than 0/1 or a
  category outside 0..11 is an error naming ``file:line`` -- a file like that is not VisDrone
  ground truth, and guessing would silently change the benchmark;
* image sizes come from the image headers, and every image is decoded once (a truncated or
  corrupt image is an error naming the file, at conversion rather than mid-training).

Image ``file_name``s are relative to ROOT (``VisDrone2019-DET-train/images/x.jpg``), image ids
are 1..N in file-name order, so the same input always gives the same json.
"""
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ugs_d2.data.coco_json import (
    DatasetError,
    check_one_annotation_file_per_image,
    gigantic_warning,
    image_size,
    is_gigantic,
)
from ugs_d2.fileio import write_json_atomic

__all__ = [
    "CLASSES",
    "SPLITS",
    "VisDroneBox",
    "categories",
    "clip_box",
    "convert",
    "convert_split",
    "find_split_dir",
    "format_summary",
    "parse_annotation_file",
    "parse_annotation_line",
]

logger = logging.getLogger(__name__)

CLASSES = (
    "pedestrian", "people", "bicycle", "car", "van",
    "truck", "tricycle", "awning-tricycle", "bus", "motor",
)  # fmt: skip
IGNORED_REGION = 0
OTHERS = 11
OTHERS_NAME = "others"

# output split name -> the official folder suffix (VisDrone2019-DET-<suffix>)
SPLITS = {"train": "train", "val": "val", "test_dev": "test-dev"}

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_NUM_FIELDS = 8


@dataclass(frozen=True)
class VisDroneBox:
    """One annotation line. ``x, y`` is the top-left corner, ``w, h`` the size, in pixels."""

    x: float
    y: float
    w: float
    h: float
    score: int
    category: int
    truncation: int
    occlusion: int


def _number(text: str, integral: bool, where: str, field: str):
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: field {field} is {text!r}, expected a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise DatasetError(f"{where}: field {field} is {text!r}, expected a finite number")
    if integral:
        if value != int(value):
            raise DatasetError(f"{where}: field {field} is {text!r}, expected an integer")
        return int(value)
    return value


def parse_annotation_line(text: str, where: str) -> Optional[VisDroneBox]:
    """Parse one line; ``None`` for a blank line.

    Args:
        text: the line, with or without its newline and a trailing comma.
        where: ``file:line``, put at the start of every error.

    Raises:
        DatasetError: not 8 comma-separated fields, a non-numeric or non-integer field where an
            integer is expected, a score other than 0 or 1, a category outside 0..11.
    """
    text = text.strip()
    if not text:
        return None
    fields = [f.strip() for f in text.split(",")]
    if len(fields) == _NUM_FIELDS + 1 and fields[-1] == "":  # the trailing comma of some files
        fields.pop()
    if len(fields) != _NUM_FIELDS:
        raise DatasetError(
            f"{where}: {len(fields)} fields, expected {_NUM_FIELDS} "
            "(x,y,w,h,score,category,truncation,occlusion)"
        )
    names = ("x", "y", "w", "h", "score", "category", "truncation", "occlusion")
    x, y, w, h = (_number(fields[i], False, where, names[i]) for i in range(4))
    score, category, truncation, occlusion = (_number(fields[i], True, where, names[i]) for i in range(4, 8))
    if score not in (0, 1):
        raise DatasetError(f"{where}: score is {score}, expected 0 (ignored) or 1 in ground truth")
    if not IGNORED_REGION <= category <= OTHERS:
        raise DatasetError(
            f"{where}: category {category} is not a VisDrone-DET category "
            f"(0 ignored regions, 1..10 {', '.join(CLASSES)}, 11 others)"
        )
    return VisDroneBox(x, y, w, h, score, category, truncation, occlusion)


def parse_annotation_file(path: str) -> List[VisDroneBox]:
    """All boxes of one annotation file, in file order (errors name ``path:line``)."""
    boxes = []
    try:
        with open(path, "r", encoding="utf-8-sig") as f:  # -sig: tolerate a BOM
            for number, line in enumerate(f, start=1):
                box = parse_annotation_line(line, f"{path}:{number}")
                if box is not None:
                    boxes.append(box)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return boxes


def clip_box(
    x: float, y: float, w: float, h: float, width: int, height: int
) -> Optional[Tuple[float, float, float, float]]:
    """Clip the XYWH box to the image ``[0, width] x [0, height]``.

    Returns:
        The clipped ``(x, y, w, h)``, or ``None`` when nothing of the box is inside the image.
        The caller checks ``w > 0`` and ``h > 0`` first.
    """
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def categories(keep_others: bool) -> List[Dict]:
    """COCO categories: ids 1..10 in VisDrone order, plus 11 "others" with ``keep_others``."""
    names = list(CLASSES) + ([OTHERS_NAME] if keep_others else [])
    return [{"id": i, "name": name, "supercategory": "visdrone"} for i, name in enumerate(names, start=1)]


def find_split_dir(root: str, split: str) -> Optional[str]:
    """The official folder of ``split`` (train, val, test_dev) under ``root``, or None.

    ``VisDrone2019-DET-<split>`` is looked for first; any single ``VisDrone*-DET-<split>``
    (e.g. the 2018 release) is accepted too.
    """
    suffix = SPLITS[split]
    preferred = os.path.join(root, f"VisDrone2019-DET-{suffix}")
    if os.path.isdir(preferred):
        return preferred
    pattern = re.compile(rf"^VisDrone\d*-DET-{re.escape(suffix)}$")
    matches = sorted(d for d in os.listdir(root) if pattern.match(d) and os.path.isdir(os.path.join(root, d)))
    if len(matches) > 1:
        raise DatasetError(f"{root}: several folders for the {split} split: {', '.join(matches)}")
    return os.path.join(root, matches[0]) if matches else None


def _list_images(split_dir: str) -> List[str]:
    images_dir = os.path.join(split_dir, "images")
    if not os.path.isdir(images_dir):
        raise DatasetError(f"{images_dir}: directory not found (expected the split's images)")
    names = sorted(n for n in os.listdir(images_dir) if n.lower().endswith(_IMAGE_EXTENSIONS))
    if not names:
        raise DatasetError(f"{images_dir}: no images (.jpg/.png): empty split")
    return names


def _paired_images(split_dir: str, annotations_dir: str) -> List[str]:
    """The split's image names, after checking that every image has its ``.txt`` and vice versa."""
    image_names = _list_images(split_dir)
    txt_stems = [os.path.splitext(n)[0] for n in os.listdir(annotations_dir) if n.endswith(".txt")]
    check_one_annotation_file_per_image({os.path.splitext(n)[0]: n for n in image_names}, txt_stems,
                                        os.path.join(split_dir, "images"), annotations_dir, ".txt", "annotation file")
    return image_names


def _image_annotations(
    txt: str, image_id: int, size: Tuple[int, int], keep_others: bool, class_ids: List[int], counts: Counter
) -> List[Dict]:
    """The COCO annotations (without ``id``) of one image's ``.txt``; drops and clips counted.

    ``size`` is the image's ``(width, height)``; ``class_ids`` the categories an ignored region
    is repeated for (one crowd annotation per class, see the module docstring).
    """
    annotations = []
    for box in parse_annotation_file(txt):
        if box.category == OTHERS and not keep_others:
            counts["others_dropped"] += 1
            continue
        if box.w <= 0 or box.h <= 0:
            counts["non_positive_dropped"] += 1
            continue
        clipped = clip_box(box.x, box.y, box.w, box.h, *size)
        if clipped is None:
            counts["outside_dropped"] += 1
            continue
        if clipped != (box.x, box.y, box.w, box.h):
            counts["clipped"] += 1
        x, y, w, h = clipped
        common = {"image_id": image_id, "bbox": [x, y, w, h], "area": w * h,
                  "truncation": box.truncation, "occlusion": box.occlusion}
        if box.category == IGNORED_REGION or box.score == 0:
            counts["ignore_regions"] += 1
            for class_id in class_ids:
                annotations.append({"category_id": class_id, "iscrowd": 1, **common})
        else:
            counts["boxes"] += 1
            annotations.append({"category_id": box.category, "iscrowd": 0, **common})
    return annotations


def convert_split(
    root: str,
    split: str,
    keep_others: bool = False,
    decode: bool = True,
    workers: int = 4,
    progress: bool = True,
) -> Tuple[Dict, Counter]:
    """Convert one official split folder to a COCO dict.

    Args:
        root: the folder holding ``VisDrone2019-DET-<split>``.
        split: ``train``, ``val`` or ``test_dev``.
        keep_others: keep category 11 as class "others" (id 11) instead of dropping it.
        decode: decode every image to find truncated/corrupt files (else headers only).
        workers: threads reading images (PIL releases the GIL while decoding).
        progress: show a tqdm bar.

    Returns:
        ``(coco, counts)``: the COCO dict, and counts of ``images``, ``boxes``,
        ``ignore_regions``, ``others_dropped``, ``clipped``, ``outside_dropped``,
        ``non_positive_dropped``, ``gigantic``.

    Raises:
        DatasetError: a missing folder, an image without annotation file or vice versa, an empty
            split, a malformed line (``file:line``), an unreadable image (its path).
    """
    split_dir = find_split_dir(root, split)
    if split_dir is None:
        raise DatasetError(f"{root}: no VisDrone2019-DET-{SPLITS[split]} folder")
    annotations_dir = os.path.join(split_dir, "annotations")
    if not os.path.isdir(annotations_dir):
        raise DatasetError(f"{annotations_dir}: directory not found (expected the split's .txt files)")
    image_names = _paired_images(split_dir, annotations_dir)

    image_paths = [os.path.join(split_dir, "images", n) for n in image_names]
    folder = os.path.relpath(split_dir, root)
    class_ids = [c["id"] for c in categories(keep_others)]
    counts = Counter()
    coco_images, coco_annotations = [], []
    gigantic_largest = None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        sizes = pool.map(lambda p: image_size(p, decode=decode), image_paths)
        bar = tqdm(
            zip(image_names, sizes), total=len(image_names), desc=f"visdrone {split}",
            unit="img", disable=not progress,
        )
        for image_id, (name, (width, height)) in enumerate(bar, start=1):
            coco_images.append(
                {"id": image_id, "file_name": f"{folder}/images/{name}", "width": width, "height": height}
            )
            if is_gigantic(width, height):
                counts["gigantic"] += 1
                if gigantic_largest is None or width * height > gigantic_largest[0] * gigantic_largest[1]:
                    gigantic_largest = (width, height, coco_images[-1]["file_name"])
            txt = os.path.join(annotations_dir, os.path.splitext(name)[0] + ".txt")
            coco_annotations += _image_annotations(txt, image_id, (width, height), keep_others, class_ids, counts)
    coco_annotations = [{"id": ann_id, **ann} for ann_id, ann in enumerate(coco_annotations, start=1)]
    counts["images"] = len(coco_images)
    if gigantic_largest is not None:
        logger.warning(gigantic_warning(split_dir, counts["gigantic"], gigantic_largest))
    coco = {
        "info": {
            "description": f"VisDrone-DET {split} ({folder}), converted by ugs-data visdrone",
            "keep_others": keep_others,
        },
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": categories(keep_others),
    }
    return coco, counts


def format_summary(split: str, counts: Counter, path: str) -> str:
    """One line per split: what was converted and everything that was dropped or changed."""
    return (
        f"{split}: {counts['images']} images, {counts['boxes']} boxes, "
        f"{counts['ignore_regions']} ignore regions, {counts['others_dropped']} 'others' dropped, "
        f"{counts['clipped']} clipped to the image, {counts['outside_dropped']} outside the image "
        f"dropped, {counts['non_positive_dropped']} with zero/negative size dropped, "
        f"{counts['gigantic']} over the gigantic-image threshold -> {path}"
    )


def convert(
    root: str,
    out: str,
    splits: Optional[Sequence[str]] = None,
    keep_others: bool = False,
    decode: bool = True,
    workers: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> Dict[str, Tuple[str, Counter]]:
    """Convert the splits found under ``root`` into ``out/annotations/<split>.json``.

    Args:
        root: the VisDrone root (image paths in the jsons are relative to it).
        out: output directory.
        splits: subset of ``train, val, test_dev``; None: every split whose folder exists.
        overwrite: replace existing jsons (else a json that exists is an error).
        Other arguments: see :func:`convert_split`.

    Every split is converted in memory first and written only when all succeeded, each file
    atomically: a failure leaves no json behind and never a partial one.

    Returns:
        ``{split: (json path, counts)}``.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: directory not found (expected the VisDrone root)")
    if splits is None:
        splits = [s for s in SPLITS if find_split_dir(root, s) is not None]
        if not splits:
            raise DatasetError(
                f"{root}: no VisDrone2019-DET-{{train,val,test-dev}} folder (expected the VisDrone root)"
            )
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown split {unknown[0]!r}, expected some of {', '.join(SPLITS)}")
    paths = {s: os.path.join(out, "annotations", f"{s}.json") for s in splits}
    if not overwrite:
        existing = [p for p in paths.values() if os.path.exists(p)]
        if existing:
            raise FileExistsError(f"{existing[0]} exists")
    converted = {
        s: convert_split(root, s, keep_others, decode=decode, workers=workers, progress=progress)
        for s in splits
    }
    for split, (coco, _) in converted.items():
        write_json_atomic(paths[split], coco)
    return {s: (paths[s], counts) for s, (_, counts) in converted.items()}
