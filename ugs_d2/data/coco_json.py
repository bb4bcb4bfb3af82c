"""Reading a COCO json and checking images, with one-line errors; no detectron2 import, so
light CLIs can use it."""
import json
import os
from typing import Dict, Iterable, Tuple

__all__ = [
    "CocoError",
    "DatasetError",
    "check_one_annotation_file_per_image",
    "GIGANTIC_IMAGE_SIDE",
    "gigantic_warning",
    "image_size",
    "is_gigantic",
    "read_coco_json",
]


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


class CocoError(DatasetError):
    """A COCO dict's content is malformed, or an option does not fit it (a class name that is
    not there); one line."""


def check_one_annotation_file_per_image(
    images: Dict[str, str], annotation_stems: Iterable[str], images_dir: str, annotations_dir: str,
    extension: str, kind: str,
) -> None:
    """The readers of one annotation file per image (VisDrone's ``.txt``, SODA-A's ``.json``):
    every image (``{stem: file name}``) has its file and every file its image, else one line
    naming the first unpaired file and how many there are (``kind`` names the files)."""
    annotation_stems = set(annotation_stems)
    missing, orphans = sorted(set(images) - annotation_stems), sorted(annotation_stems - set(images))
    if missing:
        raise DatasetError(
            f"{os.path.join(annotations_dir, missing[0] + extension)}: missing, but its image "
            f"{images[missing[0]]} exists ({len(missing)} image(s) without {kind})"
        )
    if orphans:
        raise DatasetError(
            f"{os.path.join(annotations_dir, orphans[0] + extension)}: no image of that name in "
            f"{images_dir} ({len(orphans)} {kind}(s) without image)"
        )


def read_coco_json(path: str) -> dict:
    """Read a COCO json that has ``images``, ``annotations`` and ``categories`` lists.

    Raises:
        DatasetError: the file is missing, not UTF-8, malformed (with line and column) or not
            a COCO object.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}:{e.colno}: malformed json: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: expected a COCO json object with a '{key}' list")
    return data


# Images whose longer side exceeds this many pixels are reported with a suggestion to tile them:
# at a typical 1333x800 model input such an image is shrunk more than 3x, and objects that are
# 16 px in the original end up around 5 px, below what an FPN's finest level resolves.
GIGANTIC_IMAGE_SIDE = 4096

# EXIF orientations 5-8 rotate by 90 degrees: detectron2's reader applies them, so the size the
# model sees is the header's size with width and height swapped.
_EXIF_ORIENTATION_TAG = 0x0112
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)


def image_size(path: str, decode: bool = True) -> Tuple[int, int]:
    """``(width, height)`` of an image as detectron2's ``read_image`` will see it.

    Args:
        path: the image file.
        decode: also decode every pixel, which is the only way to find a truncated or corrupt
            file (the header alone reads fine). JPEGs are decoded in PIL's reduced-size draft
            mode, which still reads the whole compressed stream.

    Raises:
        DatasetError: missing, not an image, truncated/corrupt, or too large for PIL's
            decompression-bomb limit; the message names the file.
    """
    from PIL import Image  # light CLIs import this module without needing PIL

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            if decode:
                if image.format == "JPEG":
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(
            f"{path}: too large for PIL ({e}); cut it into tiles with ugs-tile first"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DatasetError(f"{path}: unreadable image ({e})") from None
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return width, height


def is_gigantic(width: int, height: int) -> bool:
    """True when the longer side exceeds :data:`GIGANTIC_IMAGE_SIDE` (tiling is suggested)."""
    return max(width, height) > GIGANTIC_IMAGE_SIDE


def gigantic_warning(source: str, count: int, largest: Tuple[int, int, str]) -> str:
    """The one-line warning for ``count`` gigantic images; ``largest`` = (width, height, file)."""
    width, height, name = largest
    return (
        f"{source}: {count} image(s) with a side over {GIGANTIC_IMAGE_SIDE} px (largest "
        f"{width}x{height}: {name}); small objects vanish when such images are resized to the "
        "model input: cut them into tiles with ugs-tile"
    )
