"""SODA-A -> COCO json with oriented boxes (``ugs-data soda-a``).

SODA-A (Cheng et al., "Towards Large-Scale Small Object Detection: Survey and Benchmarks",
TPAMI 2023) is 2,513 aerial images with oriented objects of 9 classes. Its release holds one
annotation json per image, in either of the devkit's two layouts::

    ROOT/Images/<split>/<stem>.jpg       ROOT/Annotations/<split>/<stem>.json
    ROOT/<split>/Images/<stem>.jpg       ROOT/<split>/Annotations/<stem>.json   (rawData/)

Each json has ``"annotations"``: a list of objects ``{"poly": [x0, y0, ..., x3, y3],
"category_id": 0..9, ...}`` (``"images"`` may hold ``width``/``height``). Conversion rules, each
the devkit's (SODA-mmrotate's ``sodaa.py`` loader and ``generate_wo_ignore.py``):

* categories 0..8 (airplane ... windmill) become COCO ids 1..9; category 9 is ``ignore``: the
  devkit removes those regions before evaluation, so they are dropped (and counted); with
  ``keep_ignore`` they become ``iscrowd=1`` regions of every class instead (as VisDrone's
  ignored regions; not the devkit's rule, for experiments only);
* a polygon of more than 4 points is dropped and counted, as the devkit's evaluation does;
* every object gets its minimum-area rectangle as ``rbox`` = ``[cx, cy, w, h, angle]``
  (detectron2's ``XYWHA_ABS``, degrees counter-clockwise, :func:`ugs_d2.boxes.polygon_to_rotated_box`),
  ``bbox`` = the axis-aligned box around the polygon (``XYWH``, clipped to the image, so that
  axis-aligned detectors and tools read the same file), ``segmentation`` = the polygon, and
  ``area`` = ``w * h`` of ``rbox``, the area the devkit's size buckets (eS < 12^2, rS, gS,
  N up to 40 * 50 px^2) are taken on;
* a rectangle with a side under 1e-3 px (collinear corners) is dropped and counted;
* a malformed object (``poly`` not 6-8 finite numbers in pairs, a ``category_id`` outside
  0..9, a missing key) is an error naming ``file: annotations[i]``; an image without json or a
  json without image, an unreadable image, an empty split: one line naming the file.

Image ``file_name``s are relative to ROOT, image ids 1..N in file-name order: the same input
gives the same json.
"""
import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ugs_d2.boxes import polygon_to_rotated_box
from ugs_d2.data.coco_json import DatasetError, check_one_annotation_file_per_image, image_size
from ugs_d2.fileio import write_json_atomic

__all__ = ["CLASSES", "IGNORE", "SPLITS", "categories", "convert", "convert_split", "find_split",
           "format_summary", "parse_object"]

CLASSES = (
    "airplane", "helicopter", "small-vehicle", "large-vehicle", "ship",
    "container", "storage-tank", "swimming-pool", "windmill",
)  # fmt: skip
#: SODA-A's category id of ignore regions
IGNORE = 9
SPLITS = ("train", "val", "test")
MIN_SIDE = 1e-3
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def categories() -> List[Dict]:
    """COCO categories: SODA-A's 0..8 as ids 1..9."""
    return [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]


def parse_object(obj, where: str) -> Tuple[int, Optional[List[float]]]:
    """One entry of a json's ``annotations`` -> ``(category_id 0..9, polygon)``; the polygon is
    None when it has more than 4 points (dropped, as the devkit does).

    Raises:
        DatasetError: naming ``where`` (``file: annotations[i]``) and what was expected.
    """
    if not isinstance(obj, dict) or "poly" not in obj or "category_id" not in obj:
        raise DatasetError(f"{where}: expected an object with 'poly' and 'category_id'")
    category = obj["category_id"]
    if isinstance(category, bool) or not isinstance(category, int) or not 0 <= category <= IGNORE:
        raise DatasetError(f"{where}: category_id: expected an integer 0..{IGNORE}, got {category!r}")
    poly = obj["poly"]
    numeric = isinstance(poly, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)
    if not numeric or len(poly) % 2 or len(poly) < 6 or not all(math.isfinite(v) for v in poly):
        raise DatasetError(f"{where}: poly: expected x, y pairs of at least 3 points (finite numbers), got {poly!r}")
    return category, (None if len(poly) > 8 else [float(v) for v in poly])


def find_split(root: str, split: str) -> Optional[Tuple[str, str]]:
    """``(images dir, annotations dir)`` of ``split`` in either devkit layout, or None."""
    for images, annotations in (
        (os.path.join(root, "Images", split), os.path.join(root, "Annotations", split)),
        (os.path.join(root, split, "Images"), os.path.join(root, split, "Annotations")),
    ):
        if os.path.isdir(images) and os.path.isdir(annotations):
            return images, annotations
    return None


def _pair_files(images_dir: str, annotations_dir: str) -> List[Tuple[str, str]]:
    """Sorted ``(image path, json path)`` pairs; an unpaired file or an empty split is an error."""
    images = {os.path.splitext(n)[0]: n for n in os.listdir(images_dir) if n.lower().endswith(_IMAGE_EXTENSIONS)}
    jsons = {os.path.splitext(n)[0] for n in os.listdir(annotations_dir) if n.endswith(".json")}
    if not images:
        raise DatasetError(f"{images_dir}: no images: empty split")
    check_one_annotation_file_per_image(images, jsons, images_dir, annotations_dir, ".json", "json")
    return [(os.path.join(images_dir, images[s]), os.path.join(annotations_dir, s + ".json")) for s in sorted(images)]


def _read_objects(path: str) -> list:
    try:
        with open(path) as f:
            content = json.load(f) if os.path.getsize(path) else {"annotations": []}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable json ({e})") from None
    objects = content.get("annotations") if isinstance(content, dict) else None
    if not isinstance(objects, list):
        raise DatasetError(f"{path}: expected a json object with an 'annotations' list")
    return objects


def _object_annotations(category: int, poly: List[float], width: int, height: int, keep_ignore: bool, counts: Counter):
    """The COCO annotations (without ids) of one parsed object; counts what is dropped."""
    cx, cy, w, h, angle = polygon_to_rotated_box(poly)
    if min(w, h) < MIN_SIDE:
        counts["degenerate_dropped"] += 1
        return []
    xs, ys = poly[0::2], poly[1::2]
    x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
    x1, y1 = min(float(width), max(xs)), min(float(height), max(ys))
    if x1 <= x0 or y1 <= y0:
        counts["outside_dropped"] += 1
        return []
    common = {"bbox": [x0, y0, x1 - x0, y1 - y0], "rbox": [cx, cy, w, h, angle], "area": w * h,
              "segmentation": [poly]}
    if category == IGNORE:
        if not keep_ignore:
            counts["ignore_dropped"] += 1
            return []
        counts["ignore_regions"] += 1
        return [{"category_id": c["id"], "iscrowd": 1, **common} for c in categories()]
    counts["boxes"] += 1
    return [{"category_id": category + 1, "iscrowd": 0, **common}]


def convert_split(root: str, split: str, keep_ignore: bool = False, decode: bool = True,
                  progress: bool = True) -> Tuple[Dict, Counter]:
    """One split -> ``(coco dict, counts)``; counts: ``images``, ``boxes``, ``ignore_dropped``,
    ``ignore_regions``, ``long_polygons_dropped``, ``degenerate_dropped``, ``outside_dropped``.

    Raises:
        DatasetError: a missing folder or file, a malformed object, an unreadable image.
    """
    found = find_split(root, split)
    if found is None:
        raise DatasetError(f"{root}: no Images/{split} + Annotations/{split} (or {split}/Images + {split}/Annotations)")
    counts = Counter()
    images, annotations = [], []
    pairs = _pair_files(*found)
    for image_id, (image_path, json_path) in enumerate(
            tqdm(pairs, desc=f"soda-a {split}", unit="img", disable=not progress), start=1):
        width, height = image_size(image_path, decode=decode)
        images.append({"id": image_id, "file_name": os.path.relpath(image_path, root),
                       "width": width, "height": height})
        for i, obj in enumerate(_read_objects(json_path)):
            category, poly = parse_object(obj, f"{json_path}: annotations[{i}]")
            if poly is None:
                counts["long_polygons_dropped"] += 1
                continue
            for ann in _object_annotations(category, poly, width, height, keep_ignore, counts):
                annotations.append({"image_id": image_id, **ann})
    counts["images"] = len(images)
    coco = {
        "info": {"description": f"SODA-A {split}, converted by ugs-data soda-a", "keep_ignore": keep_ignore,
                 "rbox": "XYWHA_ABS: cx, cy, w, h, angle (degrees, counter-clockwise)"},
        "images": images,
        "annotations": [{"id": i, **ann} for i, ann in enumerate(annotations, start=1)],
        "categories": categories(),
    }
    return coco, counts


def format_summary(split: str, counts: Counter, path: str) -> str:
    """One line per split: what was converted and everything that was dropped."""
    return (
        f"{split}: {counts['images']} images, {counts['boxes']} oriented boxes, "
        f"{counts['ignore_dropped']} ignore regions dropped (the devkit's rule), "
        f"{counts['ignore_regions']} kept as crowd regions, {counts['long_polygons_dropped']} polygons "
        f"of more than 4 points dropped, {counts['degenerate_dropped']} degenerate, "
        f"{counts['outside_dropped']} outside the image -> {path}"
    )


def convert(root: str, out: str, splits: Optional[Sequence[str]] = None, keep_ignore: bool = False,
            decode: bool = True, overwrite: bool = False, progress: bool = True) -> Dict[str, Tuple[str, Counter]]:
    """The splits found under ``root`` -> ``out/annotations/<split>.json`` (``{split: (path, counts)}``).

    Every split is converted in memory first and written only when all succeeded, each file
    atomically: a failure leaves no json behind.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: directory not found (expected the SODA-A root)")
    unknown = [s for s in splits or () if s not in SPLITS]
    if unknown:
        raise DatasetError(f"unknown split {unknown[0]!r}, expected some of {', '.join(SPLITS)}")
    splits = list(splits) if splits else [s for s in SPLITS if find_split(root, s) is not None]
    if not splits:
        raise DatasetError(f"{root}: no SODA-A split (expected Images/<split> and Annotations/<split>)")
    paths = {s: os.path.join(out, "annotations", f"{s}.json") for s in splits}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists")
    converted = {s: convert_split(root, s, keep_ignore, decode=decode, progress=progress) for s in splits}
    for split, (coco, _) in converted.items():
        write_json_atomic(paths[split], coco)
    return {s: (paths[s], counts) for s, (_, counts) in converted.items()}
