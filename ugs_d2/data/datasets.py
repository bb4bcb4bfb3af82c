"""Register detection datasets in detectron2's catalogs, with loud validation.

``register_dataset(dataset_cfg)`` registers the splits of the Hydra ``dataset`` group
(``configs/dataset/*.yaml``); ``split_names(dataset_cfg)`` says which of them train and test.
Two layouts of the group exist:

* ``train: {json, images}`` / ``test: {json, images}`` (the embedded synthetic set and any
  COCO-format dataset given by path): registered as ``<name>_train`` and ``<name>_test``;
* ``splits: {NAME: {...}}`` with ``train: NAME or [NAME, ...]`` and ``test: NAME``
  (VisDrone, COCO 2017, VOC): every split is registered under its own name, e.g.
  ``visdrone_train``, ``visdrone_val``, ``visdrone_test_dev``. A split that is neither trained
  nor tested on is registered only when its files exist.

``format`` selects the reader: ``coco`` (this module's :func:`load_coco_detection`, or
detectron2's ``load_coco_json`` with ``reader: detectron2``), ``visdrone`` (the COCO jsons
written by ``ugs-data visdrone``, read like ``coco``) and ``voc`` (detectron2's
``register_pascal_voc``, evaluated by ``PascalVOCDetectionEvaluator``).

``root: null`` takes the root from the environment: ``$<root_env>`` (e.g. ``VISDRONE_ROOT``),
else ``$UGS_DATASETS/<ugs_datasets_subdir>``. Split jsons are relative to ``annotations``
(default: the root), images to the root.

Every problem is one line naming the file or key and what was expected, raised before
training starts: a missing root (with the key and the environment variable to set), malformed
json (line and column), duplicate image ids, annotations of images not listed, an empty split,
category names that differ between the training and test splits, and, with
``verify_images: true``, an image that does not decode or whose size differs from the json.
Boxes with non-positive width or height are dropped with a counted warning, and images with a
side over :data:`GIGANTIC_IMAGE_SIDE` px are reported with a suggestion to tile them.
"""
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from tqdm import tqdm

from ugs_d2.data.coco_json import (
    GIGANTIC_IMAGE_SIDE,
    DatasetError,
    gigantic_warning,
    image_size,
    is_gigantic,
    read_coco_json,
)
from ugs_d2.data.tiling import cached_tiled_split, validate_tiling

__all__ = [
    "DatasetError",
    "GIGANTIC_IMAGE_SIDE",
    "UGS_DATASETS_ENV",
    "check_usable_boxes",
    "load_coco_detection",
    "read_image",
    "register_coco_detection",
    "register_dataset",
    "register_tiled_train_splits",
    "resolve_root",
    "split_names",
]

logger = logging.getLogger(__name__)

UGS_DATASETS_ENV = "UGS_DATASETS"  # a directory holding several datasets (VisDrone/, coco/, ...)
FORMATS = ("coco", "visdrone", "voc")


def _image_records(json_file: str, images: Sequence[Dict], image_root: str, check_files: bool) -> Dict[object, Dict]:
    """``image id -> dataset dict`` (no annotations yet) of every checked ``images`` entry."""
    records: Dict[object, Dict] = {}
    for position, image in enumerate(images):
        try:
            image_id, file_name = image["id"], image["file_name"]
            height, width = image["height"], image["width"]
        except (KeyError, TypeError):
            raise DatasetError(
                f"{json_file}: images[{position}] needs id, file_name, height and width"
            ) from None
        for key, value in (("width", width), ("height", height)):
            if not _is_whole_number(value) or value < 1:
                raise DatasetError(
                    f"{json_file}: images[{position}].{key}: expected a positive integer, got {value!r}"
                )
        height, width = int(height), int(width)
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
    return records


def _annotation_fields(json_file: str, position: int, ann) -> Tuple[object, object, Tuple[float, float, float, float]]:
    """``(image_id, category_id, (x, y, w, h))`` of one ``annotations`` entry, or one clear
    DatasetError when a field is missing or the bbox is not 4 finite numbers."""
    try:
        image_id, category_id, bbox = ann["image_id"], ann["category_id"], ann["bbox"]
        if len(bbox) != 4:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise DatasetError(
            f"{json_file}: annotations[{position}] needs image_id, category_id and a 4-number bbox"
        ) from None
    bad = next((v for v in bbox if not _is_number(v)), None)
    if bad is not None or not all(math.isfinite(v) for v in bbox):
        raise DatasetError(
            f"{json_file}: annotations[{position}].bbox: expected 4 finite numbers, got {bbox!r}"
        )
    x, y, w, h = (float(v) for v in bbox)
    return image_id, category_id, (x, y, w, h)


def load_coco_detection(json_file: str, image_root: str, check_files: bool = True) -> List[Dict]:
    """Read a COCO detection json into detectron2's dataset dicts.

    Args:
        json_file: COCO json with ``images``, ``annotations`` and ``categories``.
        image_root: directory that ``images[*].file_name`` is relative to.
        check_files: verify that every image file exists (one ``stat`` per image).

    Returns:
        One dict per image: ``file_name``, ``height``, ``width``, ``image_id`` and
        ``annotations`` (``bbox`` in XYWH_ABS, ``category_id`` contiguous from 0, ``iscrowd``,
        and ``rbox``, the oriented box in XYWHA_ABS, where the json has one: ugs-data soda-a,
        the synthetic set with oriented objects).
    """
    data = read_coco_json(json_file)
    category_ids = sorted(c["id"] for c in data["categories"])
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    records = _image_records(json_file, data["images"], image_root, check_files)

    dropped = Counter()
    annotation_ids: Dict[object, int] = {}
    for position, ann in enumerate(data["annotations"]):
        image_id, category_id, (x, y, w, h) = _annotation_fields(json_file, position, ann)
        if "id" in ann:
            if ann["id"] in annotation_ids:
                raise DatasetError(
                    f"{json_file}: annotations[{position}] repeats annotation id {ann['id']!r} "
                    f"(of annotations[{annotation_ids[ann['id']]}])"
                )
            annotation_ids[ann["id"]] = position
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
        record = {
            "bbox": [x, y, w, h],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": contiguous[category_id],
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        if "rbox" in ann:
            record["rbox"] = _rbox(json_file, position, ann["rbox"])
        records[image_id]["annotations"].append(record)
    for reason, count in dropped.items():
        logger.warning(f"{json_file}: dropped {count} box(es) with {reason}")
    return list(records.values())


def _rbox(json_file: str, position: int, rbox) -> List[float]:
    """An annotation's oriented box ``[cx, cy, w, h, angle]``, or one clear DatasetError."""
    if not isinstance(rbox, list) or len(rbox) != 5 or not all(_is_number(v) and math.isfinite(v) for v in rbox):
        raise DatasetError(
            f"{json_file}: annotations[{position}].rbox: expected 5 finite numbers (cx, cy, w, h, angle), got {rbox!r}"
        )
    return [float(v) for v in rbox]


def _is_number(value) -> bool:
    """An int or float in the json (not a string, not true/false: those are data errors)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole_number(value) -> bool:
    return _is_number(value) and math.isfinite(value) and float(value).is_integer()


def read_image(file_name: str, format: Optional[str] = None):
    """detectron2's ``read_image`` (grayscale and alpha images come back as 3 channels for
    ``format="BGR"``/``"RGB"``), with a :class:`DatasetError` naming the file instead of a
    bare PIL traceback when the file is missing, truncated or not an image."""
    from detectron2.data import detection_utils

    try:
        return detection_utils.read_image(file_name, format=format)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{file_name}: unreadable image ({e})") from None


def _remove(name: str) -> None:
    """Forget an earlier registration of ``name`` (tests and sweeps register twice)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _warn_gigantic(json_file: str, images: Sequence[Dict], image_root: Optional[str] = None) -> None:
    """Warn about images with a side over GIGANTIC_IMAGE_SIDE; with ``image_root``, first check
    their file headers, so that a json that only lies about the size is named as such."""
    def whole(value) -> int:
        return int(value) if _is_whole_number(value) else 0  # malformed: load_coco_detection says so

    gigantic = [i for i in images if is_gigantic(whole(i.get("width")), whole(i.get("height")))]
    if image_root is not None:
        for image in gigantic:
            path = os.path.join(image_root, str(image.get("file_name")))
            if not os.path.isfile(path):
                continue  # load_coco_detection names the missing file
            width, height = image_size(path, decode=False)
            if (width, height) != (whole(image["width"]), whole(image["height"])):
                raise DatasetError(
                    f"{path}: image is {width}x{height} but {json_file} says {image['width']}x{image['height']}"
                )
    if gigantic:
        largest = max(gigantic, key=lambda i: int(i["width"]) * int(i["height"]))
        logger.warning(
            gigantic_warning(json_file, len(gigantic), (largest["width"], largest["height"], largest["file_name"]))
        )


def register_coco_detection(name: str, json_file: str, image_root: str, preload: bool = False) -> Optional[List[Dict]]:
    """Register one split: ``DatasetCatalog[name]`` loads lazily, metadata is set now.

    The json is validated here (categories, parse errors, an empty split) so that a bad file
    fails at start; gigantic images are reported here. ``preload``: also read every record now
    (every box and image entry checked before training starts); the first
    ``DatasetCatalog.get(name)`` then returns these records instead of reading the json again.
    Returns the preloaded records (None without ``preload``).
    """
    data = read_coco_json(json_file)
    if not data["images"]:
        raise DatasetError(f"{json_file}: no images (empty split {name})")
    _warn_gigantic(json_file, data["images"], image_root)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    pending: Dict[str, List[Dict]] = {}
    usable = None
    if preload:
        pending["records"] = load_coco_detection(json_file, image_root)
        usable = sum(a.get("iscrowd", 0) == 0 for r in pending["records"] for a in r["annotations"])

    def load() -> List[Dict]:
        records = pending.pop("records", None)  # handed out once: detectron2 may modify them
        return records if records is not None else load_coco_detection(json_file, image_root)

    _remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
    if usable is not None:
        MetadataCatalog.get(name).set(usable_boxes=usable)  # read by check_usable_boxes
    return pending.get("records")


def _register_coco_with_detectron2(name: str, json_file: str, image_root: str, builtin: Optional[str]) -> None:
    """detectron2's ``register_coco_instances``; the class names come from detectron2's
    builtin metadata (``builtin: coco``) or from the json's categories."""
    from detectron2.data.datasets import register_coco_instances

    if builtin:
        from ugs_d2.compat import builtin_metadata

        metadata = builtin_metadata(builtin)
    else:
        categories = sorted(read_coco_json(json_file)["categories"], key=lambda c: c["id"])
        metadata = {
            "thing_classes": [c["name"] for c in categories],
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        }
    _remove(name)
    register_coco_instances(name, metadata, json_file, image_root)


def _register_voc(name: str, dirname: str, split: str, year: int, class_names: Sequence[str]) -> None:
    """detectron2's ``register_pascal_voc`` plus ``evaluator_type = "pascal_voc"``."""
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    from ugs_d2.compat import prepare_voc_reader

    image_set = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    with open(image_set, "r") as f:
        if not any(line.strip() for line in f):
            raise DatasetError(f"{image_set}: no image ids (empty split {name})")
    for sub in ("Annotations", "JPEGImages"):
        if not os.path.isdir(os.path.join(dirname, sub)):
            raise DatasetError(f"{os.path.join(dirname, sub)}: directory not found (VOC layout)")
    if year not in (2007, 2012):
        raise DatasetError(f"dataset.splits.{name}.year: expected 2007 or 2012, got {year}")
    prepare_voc_reader()
    _remove(name)
    register_pascal_voc(name, dirname, split, year, tuple(class_names))
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"


def resolve_root(dataset_cfg) -> str:
    """The absolute dataset root: ``dataset.root``, else ``$<root_env>``, else
    ``$UGS_DATASETS/<ugs_datasets_subdir>``. Raises a one-line error naming the key and the
    environment variables when none is given or the directory does not exist."""
    root = dataset_cfg.get("root")
    env = dataset_cfg.get("root_env")
    subdir = dataset_cfg.get("ugs_datasets_subdir")
    source = "dataset.root"
    if root is None:
        if env and os.environ.get(env):
            root, source = os.environ[env], f"dataset.root (from ${env})"
        elif subdir and os.environ.get(UGS_DATASETS_ENV):
            root = os.path.join(os.environ[UGS_DATASETS_ENV], subdir)
            source = f"dataset.root (from ${UGS_DATASETS_ENV}/{subdir})"
        else:
            hints = ([f"{env}=/path"] if env else []) + (
                [f"{UGS_DATASETS_ENV}=/dir/holding/{subdir}"] if subdir else []
            )
            also = f", or set {' or '.join(hints)}" if hints else ""
            raise DatasetError(f"dataset.root is not set: give dataset.root=/path{also}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    if os.path.isdir(root):
        return root
    if os.path.exists(root):
        raise DatasetError(f"{source}: {root} is a file, expected the dataset's directory")
    generate = dataset_cfg.get("generate")
    if not generate:
        raise DatasetError(f"{source}: directory {root} does not exist")
    # generate.root: the preset's own root. Anywhere else a missing directory is far more
    # likely a typo than a wish for a new synthetic dataset there.
    own = generate.get("root")
    if own is not None and os.path.abspath(os.path.expanduser(str(own))) != root:
        raise DatasetError(
            f"{source}: directory {root} does not exist (the synthetic set is generated on first "
            f"use only at {own}; to make one here: ugs-data synth --out {root})"
        )
    return root


def _is_split_list(value) -> bool:
    return isinstance(value, str) or (
        value is not None and not hasattr(value, "keys") and all(isinstance(v, str) for v in value)
    )


def split_names(dataset_cfg) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """``(train names, test names)`` that ``register_dataset`` registers for this config:
    ``<name>_train``/``<name>_test`` for ``train: {json, images}``, else the ``splits`` names
    given by ``train:`` and ``test:`` (a name or a list of names)."""
    names = []
    for key in ("train", "test"):
        value = dataset_cfg.get(key)
        if value is None:
            raise DatasetError(f"dataset.{key}: missing (a split name or {{json, images}})")
        if not _is_split_list(value):  # {json, images}
            names.append((f"{dataset_cfg.name}_{key}",))
            continue
        listed = (value,) if isinstance(value, str) else tuple(value)
        splits = dataset_cfg.get("splits") or {}
        for split in listed:
            if split not in splits:
                raise DatasetError(
                    f"dataset.{key}: split {split!r} is not in dataset.splits "
                    f"(have: {', '.join(splits) or 'none'})"
                )
        if not listed:
            raise DatasetError(f"dataset.{key}: empty list of splits")
        names.append(listed)
    return names[0], names[1]


def _split_specs(dataset_cfg) -> Dict[str, object]:
    """``{registered name: split config}`` for every split of the config."""
    specs = {}
    for key in ("train", "test"):
        value = dataset_cfg.get(key)
        if value is not None and not _is_split_list(value):
            specs[f"{dataset_cfg.name}_{key}"] = value
    specs.update(dict(dataset_cfg.get("splits") or {}))
    return specs


def _generate_synthetic(root: str, generate) -> None:
    from ugs_d2.data import synth  # only needed here

    logger.info(f"dataset.root {root} does not exist: generating the synthetic dataset")
    synth.generate(
        root,
        num_train=int(generate.train),
        num_val=int(generate.val),
        seed=int(generate.seed),
        config=synth.SynthConfig(image_size=int(generate.image_size), oriented=bool(generate.get("oriented", False))),
    )


def _visdrone_hint(root: str, json_root: str) -> str:
    """How to get the missing VisDrone jsons: the conversion command, or what is wrong with
    the root."""
    from ugs_d2.data.visdrone import SPLITS, find_split_dir

    if not any(find_split_dir(root, s) for s in SPLITS):
        return f"; {root} has no VisDrone2019-DET-* folders either (dataset.root: the VisDrone root)"
    out = "" if json_root == root else f" --out {json_root}"
    return f"; convert the official folders first: ugs-data visdrone {root}{out}"


def _register_split(
    dataset_cfg, fmt: str, name: str, spec, root: str, json_root: str, preload: bool = False
) -> str:
    """Register one split; returns its annotation source (json path or VOC directory).

    ``preload``: read every record now (a bad box fails before training, not at evaluation)."""
    if fmt == "voc":
        for key in ("dir", "split", "year"):
            if spec.get(key) is None:
                raise DatasetError(f"dataset.splits.{name}.{key}: missing (VOC split: dir, split, year)")
        dirname = os.path.join(root, str(spec.dir))
        image_set = os.path.join(dirname, "ImageSets", "Main", f"{spec.split}.txt")
        if not os.path.isfile(image_set):
            raise DatasetError(
                f"dataset.splits.{name}: {image_set} not found (VOC layout: {root}/{spec.dir}/ImageSets/Main)"
            )
        classes = dataset_cfg.get("classes")
        if classes is None:
            from detectron2.data.datasets.pascal_voc import CLASS_NAMES as classes
        _register_voc(name, dirname, str(spec.split), int(spec.year), list(classes))
        return dirname

    if spec.get("json") is None:
        raise DatasetError(f"dataset.splits.{name}.json: missing (path of the COCO json)")
    json_file = os.path.join(json_root, str(spec.json))
    image_root = os.path.normpath(os.path.join(root, str(spec.get("images") or ".")))
    if not os.path.isfile(json_file):
        hint = _visdrone_hint(root, json_root) if fmt == "visdrone" else ""
        raise DatasetError(f"{json_file}: annotation file not found{hint}")
    if not os.path.isdir(image_root):
        key = f"dataset.splits.{name}.images" if name in (dataset_cfg.get("splits") or {}) else (
            f"dataset.{name.rsplit('_', 1)[-1]}.images"
        )
        raise DatasetError(f"{key}: directory {image_root} does not exist")
    if dataset_cfg.get("reader", "ugs") == "detectron2":
        _register_coco_with_detectron2(name, json_file, image_root, dataset_cfg.get("builtin_metadata"))
    else:
        register_coco_detection(name, json_file, image_root, preload=preload)
    return json_file


def check_usable_boxes(train_names: Sequence[str]) -> None:
    """detectron2 trains only on images with a non-crowd box; with none in any training split it
    fails with a bare ``AssertionError: No valid data found``. Say which files, before training.
    Splits whose records were not read at registration (other readers, tiles) are not judged."""
    counts = [MetadataCatalog.get(name).get("usable_boxes") for name in train_names]
    if not counts or any(c is None for c in counts) or sum(counts) > 0:
        return
    files = ", ".join(str(MetadataCatalog.get(n).get("json_file")) for n in train_names)
    raise DatasetError(
        f"{files}: no usable box in training split {', '.join(train_names)} "
        "(no annotations, or only crowd / zero-size boxes)"
    )


def _split_files_exist(fmt: str, spec, root: str, json_root: str) -> bool:
    if fmt == "voc":
        return os.path.isfile(os.path.join(root, str(spec.get("dir")), "ImageSets", "Main", f"{spec.get('split')}.txt"))
    return os.path.isfile(os.path.join(json_root, str(spec.get("json"))))


def _check_same_categories(names: Sequence[str], sources: Dict[str, str]) -> None:
    """Training and test splits must name the same classes in the same order."""
    first = names[0]
    expected = list(MetadataCatalog.get(first).thing_classes)
    for other in names[1:]:
        got = list(MetadataCatalog.get(other).thing_classes)
        if got == expected:
            continue
        only_first = [n for n in expected if n not in got]
        only_other = [n for n in got if n not in expected]
        if only_first or only_other:
            detail = f"only in the first: {only_first}, only in the second: {only_other}"
        else:
            detail = f"same names in another order: {expected} vs {got}"
        raise DatasetError(
            f"category names differ between {sources[first]} ({first}) and {sources[other]} ({other}): {detail}"
        )


def _verify_images(name: str, source: str, workers: int = 4) -> None:
    """Decode every image of a registered split; its size must equal the recorded one."""
    records = DatasetCatalog.get(name)
    paths = [r["file_name"] for r in records]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        sizes = pool.map(image_size, paths)
        for record, (width, height) in tqdm(
            zip(records, sizes), total=len(records), desc=f"verify {name}", unit="img"
        ):
            if (width, height) != (record["width"], record["height"]):
                raise DatasetError(
                    f"{record['file_name']}: image is {width}x{height} but {source} says "
                    f"{record['width']}x{record['height']}"
                )


def register_tiled_train_splits(train_names, registered: Dict[str, str], dataset_root: str, tiling) -> None:
    """``tiling.train.enabled``: re-register each training split as its cached tiled version.

    Args:
        train_names: the registered names of the training splits.
        registered: ``{name: json path}`` from ``register_dataset``; updated in place with the
            tiled json paths.
        dataset_root: ``dataset.root``; the cache goes to ``<root>/tiles`` unless
            ``tiling.train.cache_dir`` is set.
        tiling: the Hydra ``tiling`` block (None or ``train.enabled: false``: nothing to do).

    Raises:
        DatasetError: a bad tiling value or a non-COCO training split (one line).
    """
    if tiling is None or not tiling.get("train") or not tiling.train.get("enabled", False):
        return
    train = tiling.train
    try:
        validate_tiling(tiling.tile, tiling.overlap, train.min_area_ratio, where="tiling.")
    except ValueError as e:
        raise DatasetError(str(e)) from None
    cache_dir = train.get("cache_dir") or os.path.join(dataset_root, "tiles")
    for name in train_names:
        json_file = registered.get(name, "")
        image_root = MetadataCatalog.get(name).get("image_root")
        if not str(json_file).endswith(".json") or image_root is None:
            raise DatasetError(f"tiling.train.enabled: training split {name} is not a COCO json dataset")
        tiled_json, tiled_root = cached_tiled_split(
            json_file, image_root, os.path.abspath(os.path.expanduser(str(cache_dir))), name,
            int(tiling.tile), float(tiling.overlap), float(train.min_area_ratio), bool(train.drop_empty),
        )
        register_coco_detection(name, tiled_json, tiled_root)
        registered[name] = tiled_json


def register_dataset(dataset_cfg, tiling=None) -> Dict[str, str]:
    """Register the splits of a Hydra ``dataset`` config (see the module docstring).

    Generates the embedded synthetic dataset first when ``root`` does not exist and the config
    has a ``generate`` section. Returns ``{registered name: annotation source}`` (json path,
    or the VOC directory).
    """
    fmt = dataset_cfg.get("format", "coco")
    if fmt not in FORMATS:
        raise DatasetError(f"dataset.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    root = resolve_root(dataset_cfg)
    if not os.path.isdir(root):  # resolve_root allows this only with `generate`
        _generate_synthetic(root, dataset_cfg.generate)
    annotations = dataset_cfg.get("annotations")
    json_root = root if annotations is None else os.path.abspath(os.path.expanduser(str(annotations)))
    if annotations is not None and not os.path.isdir(json_root):
        hint = _visdrone_hint(root, json_root) if fmt == "visdrone" else ""
        raise DatasetError(f"dataset.annotations: directory {json_root} does not exist{hint}")

    train_names, test_names = split_names(dataset_cfg)
    used = list(dict.fromkeys(train_names + test_names))
    registered: Dict[str, str] = {}
    # tiling.train: the training records are the cached tiles', checked when those are made
    tiling_off = tiling is None or not bool(tiling.get("train", {}).get("enabled", False))
    for name, spec in _split_specs(dataset_cfg).items():
        if name not in used and not _split_files_exist(fmt, spec, root, json_root):
            logger.info(f"dataset split {name}: files not found, not registered")
            continue
        registered[name] = _register_split(
            dataset_cfg, fmt, name, spec, root, json_root,
            preload=name in test_names or (name in train_names and tiling_off)
        )
    if tiling is not None:  # tiling.train.enabled: train on the cached tiles (ugs_d2/data/tiling.py)
        register_tiled_train_splits(train_names, registered, root, tiling)
    _check_same_categories(used, registered)
    if dataset_cfg.get("verify_images", False):
        for name in used:
            _verify_images(name, registered[name])
    return registered
