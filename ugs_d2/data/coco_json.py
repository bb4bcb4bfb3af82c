"""Reading a COCO json with one-line errors; no detectron2 import, so light CLIs can use it."""
import json
import os

__all__ = ["DatasetError", "read_coco_json"]


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


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
