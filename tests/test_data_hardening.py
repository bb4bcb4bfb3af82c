"""The hardened data path: COCO 2017 and VOC through detectron2's own readers (VOC evaluated end
to end with hand-computed APs), and every bad input as one clear line or a counted warning."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ugs_d2.data.coco_json import GIGANTIC_IMAGE_SIDE, DatasetError
from ugs_d2.data.datasets import read_image, register_dataset


def _compose(*overrides):
    from ugs_d2.harness.compose import compose

    return compose(list(overrides))


def _save_image(path, width, height, mode="RGB", value=100):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    pixels = np.full((height, width, *channels), value, dtype=np.uint8)
    Image.fromarray(pixels, mode=mode).save(path)


def _coco_split(root, split, images, categories, annotations=()):
    """Write root/<split>.json and the images (``(file_name, width, height[, mode])``)."""
    for image in images:
        _save_image(os.path.join(root, "images", image[0]), image[1], image[2], *image[3:])
    data = {
        "images": [{"id": i, "file_name": im[0], "width": im[1], "height": im[2]} for i, im in enumerate(images, 1)],
        "annotations": [
            {"id": i, "image_id": a[0], "category_id": a[1], "bbox": a[2], "area": a[2][2] * a[2][3], "iscrowd": 0}
            for i, a in enumerate(annotations, 1)
        ],
        "categories": [{"id": i, "name": n} for i, n in categories],
    }
    path = os.path.join(root, f"{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _coco_cfg(root, **extra):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "name": "hard",
            "root": str(root),
            "train": {"json": "train.json", "images": "images"},
            "test": {"json": "val.json", "images": "images"},
            **extra,
        }
    )


CATS = [(1, "car"), (2, "person")]


# --- train/val consistency, empty splits ------------------------------------------------------


def test_category_names_differing_between_train_and_val(tmp_path):
    train = _coco_split(str(tmp_path), "train", [("a.png", 16, 16)], CATS)
    val = _coco_split(str(tmp_path), "val", [("b.png", 16, 16)], [(1, "car"), (2, "pedestrian")])
    with pytest.raises(DatasetError) as info:
        register_dataset(_coco_cfg(tmp_path))
    assert str(info.value) == (
        f"category names differ between {train} (hard_train) and {val} (hard_test): "
        "only in the first: ['person'], only in the second: ['pedestrian']"
    )
    _coco_split(str(tmp_path), "val", [("b.png", 16, 16)], [(1, "person"), (2, "car")])
    with pytest.raises(DatasetError, match=r"same names in another order: \['car', 'person'\] vs \['person', 'car'\]$"):
        register_dataset(_coco_cfg(tmp_path))


def test_empty_split_is_an_error_at_registration(tmp_path):
    _coco_split(str(tmp_path), "train", [("a.png", 16, 16)], CATS)
    val = _coco_split(str(tmp_path), "val", [], CATS)
    with pytest.raises(DatasetError, match=f"^{val}: no images \\(empty split hard_test\\)$"):
        register_dataset(_coco_cfg(tmp_path))


def test_split_names_must_exist(tmp_path):
    from ugs_d2.config import ConfigError, to_detectron2_cfg

    with pytest.raises(ConfigError, match=r"^dataset.test: split 'visdrone_tset' is not in dataset.splits "
                                          r"\(have: visdrone_train, visdrone_val, visdrone_test_dev\)$"):
        to_detectron2_cfg(_compose("dataset=visdrone", "dataset.test=visdrone_tset", "device=cpu"), str(tmp_path))


# --- images: unreadable, truncated, wrong size, gigantic, grayscale/alpha ----------------------


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_verify_images_finds_truncated_and_resized_files(tmp_path):
    _coco_split(str(tmp_path), "train", [("a.jpg", 64, 48), ("b.jpg", 32, 32)], CATS)
    _coco_split(str(tmp_path), "val", [("c.jpg", 40, 40)], CATS)
    register_dataset(_coco_cfg(tmp_path, verify_images=True))  # all fine

    bad = str(tmp_path / "images" / "b.jpg")
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad, quality=95)
    _truncate(bad)
    register_dataset(_coco_cfg(tmp_path))  # without the option: headers are not even read
    with pytest.raises(DatasetError, match=f"^{bad}: unreadable image \\(image file is truncated"):
        register_dataset(_coco_cfg(tmp_path, verify_images=True))
    with pytest.raises(DatasetError, match=f"^{bad}: unreadable image \\(image file is truncated"):
        read_image(bad, format="BGR")  # the mapper's reader: names the file too

    _save_image(bad, 30, 32)
    with pytest.raises(DatasetError, match=f"^{bad}: image is 30x32 but {tmp_path}/train.json says 32x32$"):
        register_dataset(_coco_cfg(tmp_path, verify_images=True))
    with open(bad, "wb") as f:
        f.write(b"GIF89a but not really")
    with pytest.raises(DatasetError, match=f"^{bad}: unreadable image \\(cannot identify image file"):
        register_dataset(_coco_cfg(tmp_path, verify_images=True))


def test_gigantic_images_are_reported_at_registration(tmp_path, caplog):
    # the json's sizes, confirmed by the file headers only (the pixels are not decoded)
    train = _coco_split(str(tmp_path), "train", [("a.png", 16, 16), ("wide.png", GIGANTIC_IMAGE_SIDE + 1, 3000, "L"),
                                                 ("huge.png", 5000, 5000, "L")], CATS)
    with open(train) as f:
        data = json.load(f)
    data["images"] += [  # at the limit: not gigantic, and its header is not read
        {"id": 4, "file_name": "a.png", "width": GIGANTIC_IMAGE_SIDE, "height": GIGANTIC_IMAGE_SIDE},
    ]
    with open(train, "w") as f:
        json.dump(data, f)
    _coco_split(str(tmp_path), "val", [("b.png", 16, 16)], CATS)
    with caplog.at_level(logging.WARNING, logger="ugs_d2.data.datasets"):
        register_dataset(_coco_cfg(tmp_path))
    assert (
        f"{train}: 2 image(s) with a side over {GIGANTIC_IMAGE_SIDE} px (largest 5000x5000: huge.png); "
        "small objects vanish when such images are resized to the model input: cut them into tiles with ugs-tile"
    ) in caplog.text
    assert "val.json: " not in caplog.text

    # a json that only claims a gigantic size is named as such, without the tiling hint
    data["images"][0].update(width=5000, height=5000)
    with open(train, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match=f"^{tmp_path}/images/a.png: image is 16x16 but {train} says 5000x5000$"):
        register_dataset(_coco_cfg(tmp_path))


def test_grayscale_and_alpha_images_train_as_three_channels(tmp_path):
    """Mapped by detectron2's DatasetMapper to (3, H, W) and accepted by a training step."""
    import torch
    from conftest import TINY_RUN
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from ugs_d2.config import to_detectron2_cfg

    images = [("gray.png", 48, 40, "L", 90), ("alpha.png", 40, 48, "RGBA", 200), ("rgb.png", 32, 32)]
    boxes = [(1, 1, [4, 4, 20, 16]), (2, 2, [8, 8, 12, 30]), (3, 1, [1, 1, 8, 8])]
    _coco_split(str(tmp_path), "train", images, CATS, boxes)
    _coco_split(str(tmp_path), "val", images, CATS, boxes)
    cfg = _compose(*TINY_RUN, f"dataset.root={tmp_path}", "dataset.train.images=images",
                   "dataset.train.json=train.json", "dataset.test.images=images", "dataset.test.json=val.json",
                   "model.input.min_size_train=[48]", "model.input.max_size_train=48", "model.input.random_flip=none")
    register_dataset(cfg.dataset)
    d2 = to_detectron2_cfg(cfg, str(tmp_path / "run"), num_classes=2)
    mapper = DatasetMapper(d2, is_train=True)
    mapped = [mapper(r) for r in DatasetCatalog.get("synth_train")]
    assert [tuple(m["image"].shape) for m in mapped] == [(3, 40, 48), (3, 48, 40), (3, 48, 48)]
    assert (mapped[0]["image"] == 90).all()  # gray value copied into all three channels
    assert (mapped[1]["image"] == 200).all()  # alpha dropped, colour kept
    model = build_model(d2)
    model.train()
    with EventStorage(0):
        losses = model(mapped)
    assert losses and all(torch.isfinite(v) for v in losses.values())


# --- COCO 2017 with detectron2's reader --------------------------------------------------------


def test_coco2017_preset_uses_detectron2_reader(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    from ugs_d2.config import to_detectron2_cfg

    categories = [(c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]]
    for split in ("train2017", "val2017"):
        root = str(tmp_path / "coco")
        path = _coco_split(root, split, [("1.jpg", 32, 24)], categories, [(1, 3, [2, 3, 10, 8])])
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        os.replace(path, os.path.join(root, "annotations", f"instances_{split}.json"))
        os.replace(os.path.join(root, "images"), os.path.join(root, split))
    monkeypatch.delenv("COCO_ROOT", raising=False)
    monkeypatch.setenv("UGS_DATASETS", str(tmp_path))
    cfg = _compose("dataset=coco2017", "device=cpu")
    assert sorted(register_dataset(cfg.dataset)) == ["coco2017_train", "coco2017_val"]
    meta = MetadataCatalog.get("coco2017_val")
    assert len(meta.thing_classes) == 80 and meta.thing_classes[2] == "car"
    assert meta.evaluator_type == "coco" and meta.json_file.endswith("annotations/instances_val2017.json")
    (record,) = DatasetCatalog.get("coco2017_train")
    assert record["file_name"] == str(tmp_path / "coco" / "train2017" / "1.jpg")
    assert [(a["category_id"], a["bbox"]) for a in record["annotations"]] == [(2, [2, 3, 10, 8])]
    d2 = to_detectron2_cfg(cfg, str(tmp_path / "run"), num_classes=80)
    assert (d2.DATASETS.TRAIN, d2.DATASETS.TEST) == (("coco2017_train",), ("coco2017_val",))

    monkeypatch.delenv("UGS_DATASETS")
    with pytest.raises(DatasetError, match=r"^dataset.root is not set: give dataset.root=/path, or set "
                                           r"COCO_ROOT=/path or UGS_DATASETS=/dir/holding/coco$"):
        register_dataset(cfg.dataset)
    monkeypatch.setenv("COCO_ROOT", str(tmp_path))
    with pytest.raises(DatasetError, match=f"^{tmp_path}/annotations/instances_train2017.json: annotation file not found$"):
        register_dataset(cfg.dataset)


# --- VOC with detectron2's reader and PascalVOCDetectionEvaluator ------------------------------

# image id -> (width, height, [(class, xmin, ymin, xmax, ymax, difficult)]), VOC's 1-based pixels
VOC_IMAGES = {
    "000001": (100, 80, [("car", 11, 11, 50, 40, 0), ("person", 60, 20, 79, 59, 0)]),
    "000002": (60, 60, [("car", 5, 5, 30, 30, 0), ("car", 35, 35, 55, 55, 1)]),
}


def _write_voc(devkit, year=2007, images=VOC_IMAGES):
    base = os.path.join(devkit, f"VOC{year}")
    os.makedirs(os.path.join(base, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(base, "ImageSets", "Main"), exist_ok=True)
    for image_id, (width, height, objects) in images.items():
        _save_image(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), width, height)
        xml_objects = "".join(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1, difficult in objects
        )
        with open(os.path.join(base, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width>"
                f"<height>{height}</height><depth>3</depth></size>{xml_objects}</annotation>"
            )
    for split in ("trainval", "test"):
        with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{image_id}\n" for image_id in images))
    return base


def test_voc_evaluation_end_to_end(tmp_path):
    """PascalVOCDetectionEvaluator on the fallback detectron2 and this numpy, APs by hand.

    car (2 GTs + 1 difficult): by score, a hit on the difficult car (ignored), a hit (TP),
    a miss (FP), a hit (TP): recall/precision .5/1, .5/.5, 1/(2/3) at every IoU threshold.
    VOC07 11-point AP = (6 * 1 + 5 * 2/3) / 11 = 84.848. person: one detection with IoU 23/40 =
    0.575 (VOC's +1 pixel areas): TP at IoU 0.5 and 0.55, FP from 0.6 on: AP 100, 100, then 0.
    AP50 = (84.848 + 100) / 2, AP75 = 84.848 / 2, AP = (84.848 + 20) / 2.
    """
    import numpy
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    _write_voc(str(tmp_path / "VOCdevkit"))
    cfg = _compose("dataset=voc2007", f"dataset.root={tmp_path / 'VOCdevkit'}", "dataset.classes=[car,person]")
    assert sorted(register_dataset(cfg.dataset)) == ["voc2007_test", "voc2007_trainval"]
    meta = MetadataCatalog.get("voc2007_test")
    assert (meta.evaluator_type, meta.year, meta.split, meta.thing_classes) == ("pascal_voc", 2007, "test", ["car", "person"])
    records = DatasetCatalog.get("voc2007_test")  # detectron2's load_voc_instances (np.str on 0.6)
    assert [(r["image_id"], r["width"], r["height"]) for r in records] == [("000001", 100, 80), ("000002", 60, 60)]
    assert [(a["category_id"], a["bbox"], a["bbox_mode"]) for a in records[0]["annotations"]] == [
        (0, [10.0, 10.0, 50.0, 40.0], BoxMode.XYXY_ABS), (1, [59.0, 19.0, 79.0, 59.0], BoxMode.XYXY_ABS),
    ]

    def detections(image_size, rows):  # rows: (class, score, x0, y0, x1, y1) in detectron2 pixels
        instances = Instances(image_size)
        instances.pred_boxes = Boxes(torch.tensor([r[2:] for r in rows], dtype=torch.float32))
        instances.scores = torch.tensor([r[1] for r in rows])
        instances.pred_classes = torch.tensor([r[0] for r in rows])
        return {"instances": instances}

    evaluator = PascalVOCDetectionEvaluator("voc2007_test")
    evaluator.reset()
    evaluator.process(
        [{"image_id": "000001"}, {"image_id": "000002"}],
        [
            detections((80, 100), [(0, 0.9, 10, 10, 50, 40), (0, 0.8, 0, 60, 10, 70), (1, 0.6, 59, 19, 79, 42)]),
            detections((60, 60), [(0, 0.7, 4, 4, 30, 30), (0, 0.95, 34, 34, 55, 55)]),
        ],
    )
    result = evaluator.evaluate()["bbox"]
    car = (6 + 5 * 2 / 3) / 11 * 100
    assert result["AP50"] == pytest.approx((car + 100) / 2, abs=1e-6)
    assert result["AP75"] == pytest.approx(car / 2, abs=1e-6)
    assert result["AP"] == pytest.approx((car + 20) / 2, abs=1e-6)
    assert "str" not in vars(numpy)  # numpy >= 1.24: the case that needs ugs_d2.compat.prepare_voc_reader


def test_voc0712_needs_both_years_and_says_which_is_missing(tmp_path, monkeypatch):
    from ugs_d2.config import to_detectron2_cfg

    _write_voc(str(tmp_path / "VOCdevkit"))
    cfg = _compose("dataset=voc0712", "device=cpu")
    monkeypatch.delenv("UGS_DATASETS", raising=False)
    monkeypatch.delenv("VOC_ROOT", raising=False)
    with pytest.raises(DatasetError, match=r"^dataset.root is not set: give dataset.root=/path, or set "
                                           r"VOC_ROOT=/path or UGS_DATASETS=/dir/holding/VOCdevkit$"):
        register_dataset(cfg.dataset)
    monkeypatch.setenv("VOC_ROOT", str(tmp_path / "VOCdevkit"))
    devkit = tmp_path / "VOCdevkit"
    with pytest.raises(DatasetError, match=f"^dataset.splits.voc2012_trainval: {devkit}/VOC2012/ImageSets/Main/"
                                           "trainval.txt not found"):
        register_dataset(cfg.dataset)
    _write_voc(str(devkit), year=2012)
    assert sorted(register_dataset(cfg.dataset)) == ["voc2007_test", "voc2007_trainval", "voc2012_trainval"]
    d2 = to_detectron2_cfg(cfg, str(tmp_path / "run"), num_classes=20)
    assert d2.DATASETS.TRAIN == ("voc2007_trainval", "voc2012_trainval") and d2.DATASETS.TEST == ("voc2007_test",)
    with open(devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt", "w") as f:
        f.write("\n")
    with pytest.raises(DatasetError, match=r"VOC2007/ImageSets/Main/test.txt: no image ids \(empty split voc2007_test\)$"):
        register_dataset(cfg.dataset)


def test_split_names_of_both_layouts():
    from omegaconf import OmegaConf

    from ugs_d2.data.datasets import split_names

    legacy = OmegaConf.create({"name": "x", "train": {"json": "a.json", "images": "."}, "test": {"json": "b.json"}})
    assert split_names(legacy) == (("x_train",), ("x_test",))
    splits = {"s_a": {"json": "a"}, "s_b": {"json": "b"}, "s_c": {"json": "c"}}
    named = OmegaConf.create({"name": "s", "splits": splits, "train": ["s_a", "s_b"], "test": "s_c"})
    assert split_names(named) == (("s_a", "s_b"), ("s_c",))
    with pytest.raises(DatasetError, match=r"^dataset.train: empty list of splits$"):
        split_names(OmegaConf.create({"name": "s", "splits": splits, "train": [], "test": "s_c"}))
    with pytest.raises(DatasetError, match=r"^dataset.test: missing"):
        split_names(OmegaConf.create({"name": "s", "splits": splits, "train": "s_a"}))
