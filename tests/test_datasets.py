"""Registration and validation of COCO-format datasets: every bad input is one clear line."""
import json
import logging
import os

import pytest
from omegaconf import OmegaConf

from ugs_d2.data.datasets import DatasetError, load_coco_detection, register_dataset


def _write_dataset(root, annotations, images=None, categories=None, make_files=True):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 64},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 64},
    ]
    if make_files:
        for image in images:
            open(os.path.join(root, "images", image["file_name"]), "wb").close()
    data = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "disc"}, {"id": 3, "name": "ring"}],
    }
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _dataset_cfg(root, generate=None):
    return OmegaConf.create(
        {
            "name": "check",
            "root": str(root),
            "train": {"json": "train.json", "images": "images"},
            "test": {"json": "train.json", "images": "images"},
            "generate": generate,
        }
    )


def test_categories_become_contiguous(tmp_path):
    path = _write_dataset(
        str(tmp_path),
        [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 12]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 4, 4]},
        ],
    )
    records = load_coco_detection(path, str(tmp_path / "images"))
    assert [r["annotations"][0]["category_id"] for r in records] == [1, 0]
    assert records[0]["annotations"][0]["bbox"] == [1.0, 2.0, 10.0, 12.0]
    assert records[0]["file_name"] == str(tmp_path / "images" / "a.png")


def test_missing_dataset_directory(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.root: directory .*nowhere does not exist"):
        register_dataset(_dataset_cfg(tmp_path / "nowhere"))


def test_malformed_json_names_file_and_position(tmp_path):
    path = _write_dataset(str(tmp_path), [])
    with open(path, "w") as f:
        f.write('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DatasetError) as info:
        register_dataset(_dataset_cfg(tmp_path))
    assert f"{path}:2:" in str(info.value) and "malformed json" in str(info.value)


def test_json_without_coco_lists(tmp_path):
    path = _write_dataset(str(tmp_path), [])
    with open(path, "w") as f:
        json.dump({"images": []}, f)
    with pytest.raises(DatasetError, match="'annotations' list"):
        load_coco_detection(path, str(tmp_path / "images"))


def test_annotation_for_missing_image_file(tmp_path):
    path = _write_dataset(str(tmp_path), [], make_files=False)
    with pytest.raises(DatasetError, match=r"images\[0\] refers to missing file .*a.png"):
        load_coco_detection(path, str(tmp_path / "images"))


def test_annotation_for_unknown_image_id(tmp_path):
    path = _write_dataset(str(tmp_path), [{"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5]}])
    with pytest.raises(DatasetError, match=r"annotations\[0\] refers to image id 9"):
        load_coco_detection(path, str(tmp_path / "images"))


def test_non_positive_boxes_are_dropped_and_counted(tmp_path, caplog):
    path = _write_dataset(
        str(tmp_path),
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, -2]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="ugs_d2.data.datasets"):
        records = load_coco_detection(path, str(tmp_path / "images"))
    assert len(records[0]["annotations"]) == 1
    assert "dropped 2 box(es) with non-positive width or height" in caplog.text


def test_registered_splits_carry_metadata(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    _write_dataset(str(tmp_path), [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 12]}])
    register_dataset(_dataset_cfg(tmp_path))
    assert MetadataCatalog.get("check_train").thing_classes == ["disc", "ring"]
    assert len(DatasetCatalog.get("check_test")) == 2
