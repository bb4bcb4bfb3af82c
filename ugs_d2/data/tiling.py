"""Cut images (and their COCO boxes) into overlapping tiles: more pixels per small object.

The guide's advice: tiling zooms the detector in on small objects while the network input
stays small. A model trained on tiles must also *see* tiles at test time (see
:mod:`ugs_d2.inference.tiled`), so both sides use :func:`tile_windows`.

Pure functions:

* :func:`tile_windows` -- the windows ``(x0, y0, x1, y1)`` that cover an image: stride
  ``tile * (1 - overlap)``, the last row/column moved back to end exactly at the image edge
  (so no window sticks out and none is smaller than the others), one window of the image's
  own size when the image is smaller than a tile (tiles are never upscaled here).
* :func:`clip_boxes_to_window` -- boxes that keep at least ``min_area_ratio`` of their area
  inside a window, clipped and shifted into window coordinates.

And the dataset step behind ``ugs-tile dataset`` and ``tiling.train.enabled``:

* :func:`tile_coco_dataset` -- one image in memory at a time; writes tile images and a COCO
  json whose image records carry ``source_image_id``, ``source_file_name``, ``tile_x0`` and
  ``tile_y0``; every file is written atomically, the json last.
* :func:`cached_tiled_split` -- the tiled train split under ``<dataset root>/tiles/<key>``,
  keyed by the tiling parameters and regenerated only when they or the source json change.
"""
import hashlib
import io
import json
import logging
import os
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ugs_d2.boxes import clip_polygon, polygon_area, polygon_to_rotated_box, rotated_box_corners
from ugs_d2.data.coco_json import DatasetError, read_coco_json
from ugs_d2.fileio import write_atomic, write_json_atomic

__all__ = [
    "MAX_IMAGE_PIXELS",
    "allow_large_images",
    "TILING_VERSION",
    "validate_tiling",
    "tile_windows",
    "clip_boxes_to_window",
    "oriented_in_window",
    "tile_coco_dataset",
    "cached_tiled_split",
    "format_counts",
]

logger = logging.getLogger(__name__)

# Pillow refuses images over ~179 Mpixel by default ("decompression bomb"); aerial and
# satellite scenes are routinely larger, and these are the user's own files. One gigapixel
# (~3 GB as RGB) is the limit we accept while tiling; Pillow's default is restored afterwards.
MAX_IMAGE_PIXELS = 1_000_000_000

# Bump when the tile layout or json fields change, so cached tiled splits are rebuilt.
TILING_VERSION = 1

Window = Tuple[int, int, int, int]


def validate_tiling(tile, overlap, min_area_ratio: Optional[float] = None, where: str = "") -> None:
    """Raise ``ValueError`` (one line, prefixed by ``where``) unless the parameters make sense.

    ``tile`` must be a positive integer, ``overlap`` in [0, 1) and ``min_area_ratio`` (when
    given) in (0, 1].
    """
    prefix = f"{where}" if where else ""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0:
        raise ValueError(f"{prefix}tile: expected a positive integer, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ValueError(f"{prefix}overlap: expected a number in [0, 1), got {overlap!r}")
    if min_area_ratio is not None and (
        isinstance(min_area_ratio, bool)
        or not isinstance(min_area_ratio, (int, float))
        or not 0 < min_area_ratio <= 1
    ):
        raise ValueError(f"{prefix}min_area_ratio: expected a number in (0, 1], got {min_area_ratio!r}")


def _starts(length: int, tile: int, stride: int) -> List[int]:
    """Window starts along one axis: 0, stride, 2*stride, ... and a last one at length - tile."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # align the last window with the edge
    return starts


def tile_windows(width: int, height: int, tile: int, overlap: float) -> List[Window]:
    """The windows that cover a ``width`` x ``height`` image, row by row.

    Args:
        width, height: image size in pixels (positive integers).
        tile: window side in pixels.
        overlap: share of a window shared with its neighbour, in [0, 1); the stride is
            ``max(1, round(tile * (1 - overlap)))``.

    Returns:
        ``[(x0, y0, x1, y1), ...]`` in pixel coordinates (x1, y1 exclusive), ordered by y0
        then x0. Every window is ``min(tile, width)`` x ``min(tile, height)``; the last
        column/row ends exactly at the image edge (it may overlap its neighbour by more than
        ``overlap``). An image no larger than a tile gives the single window ``(0, 0, width,
        height)``.

    Example: ``tile_windows(300, 100, 128, 0.25)`` -> stride 96, x starts 0, 96, 172 (edge),
    one row: ``[(0, 0, 128, 100), (96, 0, 224, 100), (172, 0, 300, 100)]``.
    """
    validate_tiling(tile, overlap)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    stride = max(1, int(round(tile * (1 - overlap))))
    tw, th = min(tile, width), min(tile, height)
    return [
        (x0, y0, x0 + tw, y0 + th)
        for y0 in _starts(height, tile, stride)
        for x0 in _starts(width, tile, stride)
    ]


def clip_boxes_to_window(
    boxes_xyxy: np.ndarray, window: Window, min_area_ratio: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes that keep at least ``min_area_ratio`` of their area inside ``window``.

    Args:
        boxes_xyxy: (N, 4) float array of ``x0, y0, x1, y1`` in image coordinates.
        window: ``(x0, y0, x1, y1)`` of the tile.
        min_area_ratio: in (0, 1]; a box is kept when ``area(box & window) >= min_area_ratio *
            area(box)``. Boxes of zero area are never kept.

    Returns:
        ``(kept, clipped)``: ``kept`` is an int64 array (K,) of indices into ``boxes_xyxy``
        (ascending); ``clipped`` is a (K, 4) float64 array: the kept boxes clipped to the
        window and shifted so that the window's top-left corner is (0, 0).
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    wx0, wy0, wx1, wy1 = window
    x0 = np.clip(boxes[:, 0], wx0, wx1)
    y0 = np.clip(boxes[:, 1], wy0, wy1)
    x1 = np.clip(boxes[:, 2], wx0, wx1)
    y1 = np.clip(boxes[:, 3], wy0, wy1)
    inside = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = (area > 0) & (inside > 0) & (inside >= min_area_ratio * area)
    kept = np.nonzero(keep)[0].astype(np.int64)
    clipped = np.stack([x0 - wx0, y0 - wy0, x1 - wx0, y1 - wy0], axis=1)[kept]
    return kept, clipped


@contextmanager
def allow_large_images():
    """Within the block, Pillow opens images up to :data:`MAX_IMAGE_PIXELS` pixels."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _is_ignore(ann: dict) -> bool:
    """Crowd and ignore regions: kept in every tile they touch (see tile_coco_dataset)."""
    return bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))


def _save_image(image: Image.Image, path: str) -> None:
    """Save a tile atomically: JPEG sources stay JPEG (quality 95), everything else PNG."""
    fmt = "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    write_atomic(path, lambda f: f.write(buffer.getvalue()))


def _tile_file_name(file_name: str, window: Window) -> str:
    """``dir/a.png`` + window (x0, y0) -> ``dir/a_x0_y0.png`` (non-JPEG sources become PNG)."""
    stem, ext = os.path.splitext(file_name)
    ext = ext if ext.lower() in (".jpg", ".jpeg", ".png") else ".png"
    return f"{stem}_{window[0]}_{window[1]}{ext}"


def _annotations_by_image(json_file: str, data: dict) -> Dict[object, List[Tuple[int, dict]]]:
    image_ids = {image.get("id") for image in data["images"]}
    by_image: Dict[object, List[Tuple[int, dict]]] = defaultdict(list)
    for position, ann in enumerate(data["annotations"]):
        try:
            image_id = ann["image_id"]
            well_formed = "category_id" in ann and len([float(v) for v in ann["bbox"]]) == 4
        except (KeyError, TypeError, ValueError):
            well_formed = False
        if not well_formed:
            raise DatasetError(
                f"{json_file}: annotations[{position}] needs image_id, category_id and a 4-number bbox"
            ) from None
        if image_id not in image_ids:
            raise DatasetError(
                f"{json_file}: annotations[{position}] refers to image id {image_id}, which is not in 'images'"
            )
        by_image[image_id].append((position, ann))
    return by_image


def _check_images(json_file: str, images: Sequence[dict], image_dir: str) -> None:
    """Every image record is complete and its file exists, before anything is written."""
    for position, image in enumerate(images):
        try:
            complete = "id" in image and int(image["width"]) > 0 and int(image["height"]) > 0
            path = os.path.join(image_dir, str(image["file_name"]))
        except (KeyError, TypeError, ValueError):
            complete = False
        if not complete:
            raise DatasetError(
                f"{json_file}: images[{position}] needs id, file_name and a positive height and width"
            )
        if not os.path.isfile(path):
            raise DatasetError(f"{json_file}: images[{position}] refers to missing file {path}")
        try:
            with Image.open(path) as opened:  # reads the header only
                size = opened.size
        except OSError as e:
            raise DatasetError(f"{json_file}: images[{position}]: cannot read {path} ({e})") from None
        if size != (int(image["width"]), int(image["height"])):
            raise DatasetError(
                f"{json_file}: images[{position}] ({image['file_name']}) is {image['width']}x{image['height']} "
                f"in the json but {size[0]}x{size[1]} on disk"
            )


_COUNT_KEYS = ("images", "tiles", "empty_tiles_dropped", "source_boxes", "tile_boxes",
               "partial_dropped", "lost_boxes", "degenerate_boxes", "ignore_regions")


def _usable_boxes(anns: Sequence[Tuple[int, dict]], counts: Counter) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """An image's annotations with a positive width and height (the others are counted).

    Returns:
        ``(boxes, ignore, kept)``: (N, 4) float64 ``x0, y0, x1, y1``, an (N,) bool mask of the
        crowd / ignore regions among them, and the N annotations themselves.
    """
    boxes, kept = [], []
    for _, ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            counts["degenerate_boxes"] += 1
            continue
        boxes.append((x, y, x + w, y + h))
        kept.append(ann)
    ignore = np.array([_is_ignore(a) for a in kept], dtype=bool)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), ignore, kept


def oriented_in_window(rbox: Sequence[float], window: Window) -> Tuple[float, np.ndarray, List[float]]:
    """An oriented box (XYWHA) cut by a tile: its polygon clipped to the window.

    Returns:
        ``(fraction, xyxy, rbox)``: the share of its area inside, the enclosing box of the
        clipped polygon and that polygon's minimum-area rectangle, both in window coordinates
        (fraction 0 and empty boxes when they do not overlap).
    """
    corners = rotated_box_corners(rbox)
    area = float(rbox[2]) * float(rbox[3])
    inside = clip_polygon(corners, window)
    fraction = polygon_area(inside) / area if area > 0 and len(inside) >= 3 else 0.0
    if fraction <= 0:
        return 0.0, np.zeros(4), []
    shifted = inside - np.asarray(window[:2], dtype=np.float64)
    xyxy = np.concatenate([shifted.min(axis=0), shifted.max(axis=0)])
    return fraction, xyxy, list(polygon_to_rotated_box(shifted))


def _boxes_in_window(
    boxes: np.ndarray, ignore: np.ndarray, window: Window, min_area_ratio: float,
    rboxes: Optional[Sequence[Optional[Sequence[float]]]] = None,
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray, Optional[List[float]]]], int]:
    """What a tile holds: boxes keeping ``min_area_ratio`` of their area, ignore regions any of it.

    An annotation with an oriented box (``rboxes[i]`` not None) is cut as a polygon
    (:func:`oriented_in_window`): kept by the share of the *oriented* box inside, its tile
    ``bbox`` the enclosing box of what is inside, its ``rbox`` the clipped polygon's rectangle.

    Returns:
        ``(regular_kept, rows, partial_dropped)``: the indices of the regular (non-ignore)
        boxes kept, ``(index, clipped xyxy in window coordinates, rbox or None)`` of every
        annotation the tile gets (regular boxes first, then ignore regions), and how many
        regular boxes touch the window but hold less than ``min_area_ratio`` of their area in it.
    """
    kept, clipped = clip_boxes_to_window(boxes, window, min_area_ratio)
    # every box that overlaps the window at all (ignore regions keep any overlap)
    touching, clipped_touching = clip_boxes_to_window(boxes, window, 1e-12)
    rows = [(i, b, None) for i, b in zip(kept, clipped) if not ignore[i] and not (rboxes and rboxes[i])]
    for i in touching:
        if not ignore[i] and rboxes and rboxes[i]:
            fraction, xyxy, rbox = oriented_in_window(rboxes[i], window)
            if fraction > 0 and fraction >= min_area_ratio:
                rows.append((i, xyxy, rbox))
    rows.sort(key=lambda row: row[0])
    regular_kept = np.asarray([i for i, _, _ in rows], dtype=np.int64)
    partial_dropped = int(len(np.setdiff1d(touching[~ignore[touching]], regular_kept)))
    rows += [(i, b, None) for i, b in zip(touching, clipped_touching) if ignore[i]]
    return regular_kept, rows, partial_dropped


def _tile_record(tile_id: int, tile_name: str, source: dict, window: Window) -> dict:
    """The COCO image record of one tile, pointing back at its source image."""
    return {
        "id": tile_id,
        "file_name": tile_name,
        "width": window[2] - window[0],
        "height": window[3] - window[1],
        "source_image_id": source["id"],
        "source_file_name": source["file_name"],
        "tile_x0": window[0],
        "tile_y0": window[1],
    }


def _tile_annotation(source: dict, box: np.ndarray, ann_id: int, tile_id: int,
                     rbox: Optional[List[float]] = None) -> dict:
    """A source annotation moved into a tile: the clipped box (window coordinates, XYWH
    rounded to 4 decimals), its area, and ``source_annotation_id``; the segmentation is dropped.
    With ``rbox`` (the clipped oriented box) also that, and ``area`` is its ``w * h``."""
    ann = {k: v for k, v in source.items() if k not in ("segmentation", "area", "bbox", "rbox", "id", "image_id")}
    bx0, by0, bx1, by1 = box
    w, h = bx1 - bx0, by1 - by0
    ann.update(
        id=ann_id,
        image_id=tile_id,
        bbox=[round(float(bx0), 4), round(float(by0), 4), round(float(w), 4), round(float(h), 4)],
        area=round(float(w * h), 4),
        source_annotation_id=source.get("id"),
    )
    if rbox:
        ann["rbox"] = [round(float(v), 4) for v in rbox]
        ann["area"] = round(float(rbox[2] * rbox[3]), 4)
    return ann


class _TiledDataset:
    """The tiles of a dataset, written one source image at a time (see tile_coco_dataset)."""

    def __init__(self, out_dir: str, tile: int, overlap: float, min_area_ratio: float, drop_empty: bool):
        self.out_dir, self.tile, self.overlap = out_dir, tile, overlap
        self.min_area_ratio, self.drop_empty = min_area_ratio, drop_empty
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        self.counts = Counter({key: 0 for key in _COUNT_KEYS})

    def add_image(self, record: dict, path: str, anns: Sequence[Tuple[int, dict]]) -> None:
        """Cut one source image (``record``, its file ``path``) into tiles and write them."""
        counts = self.counts
        boxes, ignore, regular = _usable_boxes(anns, counts)
        rboxes = [a.get("rbox") for a in regular] if any("rbox" in a for a in regular) else None
        counts["source_boxes"] += int((~ignore).sum())
        counts["ignore_regions"] += int(ignore.sum())
        seen = np.zeros(len(regular), dtype=bool)
        width, height = int(record["width"]), int(record["height"])
        with Image.open(path) as image:
            image.load()  # decode once; every crop below reads the decoded pixels
            for window in tile_windows(width, height, self.tile, self.overlap):
                regular_kept, rows, partial_dropped = _boxes_in_window(boxes, ignore, window, self.min_area_ratio,
                                                                       rboxes)
                counts["partial_dropped"] += partial_dropped
                if self.drop_empty and len(regular_kept) == 0:
                    counts["empty_tiles_dropped"] += 1
                    continue
                seen[regular_kept] = True
                tile_id = len(self.images) + 1
                tile_name = _tile_file_name(record["file_name"], window)
                _save_image(image.crop(window), os.path.join(self.out_dir, "images", tile_name))
                self.images.append(_tile_record(tile_id, tile_name, record, window))
                for index, box, rbox in rows:
                    self.annotations.append(
                        _tile_annotation(regular[index], box, len(self.annotations) + 1, tile_id, rbox))
                counts["tile_boxes"] += len(regular_kept)
                counts["tiles"] += 1
        counts["lost_boxes"] += int((~seen & ~ignore).sum())
        counts["images"] += 1


def tile_coco_dataset(
    in_json: str,
    image_dir: str,
    out_dir: str,
    tile: int,
    overlap: float,
    min_area_ratio: float = 0.1,
    drop_empty: bool = False,
    progress: bool = True,
) -> Dict[str, int]:
    """Tile every image of a COCO detection json; write the tiles and a new COCO json.

    Writes ``out_dir/images/<file_name stem>_<x0>_<y0>.<ext>`` and ``out_dir/annotations.json``.
    Images are read one at a time, so the peak memory is one decoded image.

    * Boxes follow :func:`clip_boxes_to_window`: clipped to the tile, kept if they retain at
      least ``min_area_ratio`` of their area, ``area`` recomputed as the clipped box's area
      (``segmentation`` is not carried over: polygons are not clipped).
    * An oriented box (``rbox``, XYWHA: ``ugs-data soda-a``, ``ugs-data synth --oriented``) is
      cut as a polygon (:func:`oriented_in_window`): kept if its oriented box keeps
      ``min_area_ratio`` of its area, ``rbox`` = the clipped polygon's minimum-area rectangle,
      ``bbox`` = the box around that polygon, ``area`` = the new rbox's ``w * h``.
    * Crowd / ignore regions (``iscrowd`` or ``ignore`` set) are clipped too and kept in every
      tile they overlap at all: a partly visible ignore region must still mute detections there.
    * Boxes with zero or negative width/height are dropped and counted.
    * Tile image records: ``id`` (1..), ``file_name`` (relative to ``out_dir/images``),
      ``width``, ``height``, ``source_image_id``, ``source_file_name``, ``tile_x0``, ``tile_y0``.
      Tile annotations: new ``id``, the tile's ``image_id``, ``source_annotation_id`` and the
      other fields of the source annotation.
    * ``drop_empty``: leave out tiles without any (non-ignore) box.

    Returns:
        counts: ``images``, ``tiles`` (written), ``empty_tiles_dropped``, ``source_boxes``,
        ``tile_boxes`` (box-in-tile annotations written, ignore regions excluded),
        ``partial_dropped`` (box/tile overlaps under ``min_area_ratio``), ``lost_boxes`` (source
        boxes in no tile at all), ``degenerate_boxes``, ``ignore_regions``.

    Raises:
        DatasetError: missing/malformed json, a missing or unreadable image file, an image
            whose size differs from its json record (all checked before anything is written).
        ValueError: bad ``tile`` / ``overlap`` / ``min_area_ratio``.
    """
    validate_tiling(tile, overlap, min_area_ratio)
    data = read_coco_json(in_json)
    with allow_large_images():
        _check_images(in_json, data["images"], image_dir)
    by_image = _annotations_by_image(in_json, data)

    tiled = _TiledDataset(out_dir, tile, overlap, min_area_ratio, drop_empty)
    with allow_large_images():
        for record in tqdm(data["images"], desc="ugs-tile", unit="img", disable=not progress):
            tiled.add_image(record, os.path.join(image_dir, record["file_name"]), by_image.get(record["id"], []))

    out = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    out.update(images=tiled.images, annotations=tiled.annotations)
    out["tiling"] = {"tile": tile, "overlap": overlap, "min_area_ratio": min_area_ratio,
                     "drop_empty": drop_empty, "source_json": os.path.abspath(in_json),
                     "version": TILING_VERSION}
    write_json_atomic(os.path.join(out_dir, "annotations.json"), out)
    return dict(tiled.counts)


def _sha1_of_file(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_tiled_split(
    json_file: str,
    image_root: str,
    cache_dir: str,
    split: str,
    tile: int,
    overlap: float,
    min_area_ratio: float,
    drop_empty: bool,
) -> Tuple[str, str]:
    """The tiled version of one split, generated on first use and cached.

    The cache lives in ``cache_dir/<split>-t<tile>-o<overlap>-a<min_area_ratio>-<keep|drop>``;
    its ``manifest.json`` records the parameters, :data:`TILING_VERSION` and the source json's
    SHA-1, and is written last: a cache whose manifest does not match (other parameters, a
    changed source json, an interrupted run) is regenerated.

    Returns:
        ``(tiled json path, tiled image root)`` to register instead of the originals.
    """
    validate_tiling(tile, overlap, min_area_ratio, where="tiling.")
    key = f"{split}-t{tile}-o{overlap:g}-a{min_area_ratio:g}-{'drop' if drop_empty else 'keep'}"
    directory = os.path.join(cache_dir, key)
    manifest_path = os.path.join(directory, "manifest.json")
    tiled_json = os.path.join(directory, "annotations.json")
    expected = {"tile": tile, "overlap": overlap, "min_area_ratio": min_area_ratio,
                "drop_empty": drop_empty, "version": TILING_VERSION,
                "source_json_sha1": _sha1_of_file(json_file)}
    if os.path.isfile(manifest_path) and os.path.isfile(tiled_json):
        try:
            manifest = read_json(manifest_path)
        except (OSError, ValueError):
            manifest = None
        if manifest == expected:
            return tiled_json, os.path.join(directory, "images")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"tiling.train.cache_dir: cannot create {directory} ({e.strerror}); set tiling.train.cache_dir"
        ) from None
    logger.info(f"tiling {json_file} into {directory} ({tile} px tiles, overlap {overlap})")
    counts = tile_coco_dataset(json_file, image_root, directory, tile, overlap, min_area_ratio,
                               drop_empty, progress=False)
    logger.info(f"tiled {split}: {format_counts(counts)}")
    write_json_atomic(manifest_path, expected, sort_keys=True)
    return tiled_json, os.path.join(directory, "images")


def read_json(path: str):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def format_counts(counts: Dict[str, int]) -> str:
    """One summary line: images, tiles, boxes kept/dropped."""
    return (
        f"{counts['images']} images -> {counts['tiles']} tiles"
        f" ({counts['empty_tiles_dropped']} empty dropped);"
        f" boxes: {counts['source_boxes']} source, {counts['tile_boxes']} kept in tiles,"
        f" {counts['partial_dropped']} partial dropped (< min area ratio),"
        f" {counts['lost_boxes']} in no tile, {counts['degenerate_boxes']} degenerate;"
        f" {counts['ignore_regions']} crowd/ignore regions"
    )
