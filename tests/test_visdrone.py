"""ugs-data visdrone: a VisDrone-format fixture converted and checked box by box, the dataset
preset's registration, ignore regions really ignored by pycocotools, and every malformed input."""
import copy
import json
import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from ugs_d2.cli.data import main as ugs_data
from ugs_d2.data import visdrone
from ugs_d2.data.coco_json import GIGANTIC_IMAGE_SIDE, DatasetError

# image name -> (width, height, annotation file text). Every category 0..11 occurs, with
# truncation 0/1 and occlusion 0/1/2, a trailing-comma line, a blank line and CRLF endings.
TRAIN = {
    "0000001_00000_d_0000001.jpg": (64, 48, (
        "10,5,20,10,1,1,0,0\n"        # pedestrian
        "0,0,8,8,1,2,1,2,\n"          # people, trailing comma
        "30,20,10,10,0,0,0,0\n"       # ignored region
        "50,40,20,20,1,4,0,1\n"       # car reaching outside 64x48: clipped to 14x8
        "5,5,6,4,1,11,0,0\n"          # others
        "5,5,0,4,1,3,0,0\n"           # zero width: dropped
        "70,10,5,5,1,5,0,0\n"         # entirely right of the image: dropped
        "\n"
        "1,1,3,3,1,3,0,1\n"           # bicycle
    )),
    "0000002_00000_d_0000002.jpg": (40, 30, (
        "1,1,5,5,1,5,0,0\r\n"         # van
        "2,2,6,6,1,6,1,0\r\n"         # truck
        "3,3,7,7,1,7,0,2\r\n"         # tricycle
        "4,4,8,8,1,8,1,1\r\n"         # awning-tricycle
        "10,10,9,9,1,9,0,0\r\n"       # bus
        "-2,-1,6,5,1,10,1,1\r\n"      # motor with negative x, y: clipped to 4x4
        "20,20,4,-3,1,10,0,0\r\n"     # negative height: dropped
    )),
    "0000003_00000_d_0000003.jpg": (32, 36, ""),  # an image without objects
}
VAL = {
    "0000010_00000_d_0000010.jpg": (50, 40, (
        "5,5,10,10,1,4,0,0\n"         # car
        "30,5,12,12,1,1,0,0\n"        # pedestrian
        "20,20,16,16,0,0,0,0\n"       # ignored region
    )),
}
TEST_DEV = {"0000020_00000_d_0000020.jpg": (24, 24, "2,2,10,10,1,4,0,0\n")}


def _write_split(root, folder, images):
    os.makedirs(os.path.join(root, folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, folder, "annotations"), exist_ok=True)
    for name, (width, height, text) in images.items():
        pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, folder, "images", name), quality=90)
        with open(os.path.join(root, folder, "annotations", os.path.splitext(name)[0] + ".txt"), "w", newline="") as f:
            f.write(text)


def _write_visdrone(root, train=TRAIN, val=VAL, test_dev=TEST_DEV):
    _write_split(root, "VisDrone2019-DET-train", train)
    if val is not None:
        _write_split(root, "VisDrone2019-DET-val", val)
    if test_dev is not None:
        _write_split(root, "VisDrone2019-DET-test-dev", test_dev)
    return str(root)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _boxes(coco, image_id):
    """(category_id, bbox, iscrowd, truncation, occlusion) of one image, in file order."""
    return [
        (a["category_id"], a["bbox"], a["iscrowd"], a["truncation"], a["occlusion"])
        for a in coco["annotations"]
        if a["image_id"] == image_id
    ]


def test_convert_box_by_box(tmp_path, capsys):
    root = _write_visdrone(tmp_path / "VisDrone")
    ugs_data(["visdrone", root, "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    train = _load(tmp_path / "out" / "annotations" / "train.json")

    assert [c["name"] for c in train["categories"]] == list(visdrone.CLASSES)
    assert [c["id"] for c in train["categories"]] == list(range(1, 11))
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in train["images"]] == [
        (1, "VisDrone2019-DET-train/images/0000001_00000_d_0000001.jpg", 64, 48),
        (2, "VisDrone2019-DET-train/images/0000002_00000_d_0000002.jpg", 40, 30),
        (3, "VisDrone2019-DET-train/images/0000003_00000_d_0000003.jpg", 32, 36),
    ]
    ignore = [(c, [30.0, 20.0, 10.0, 10.0], 1, 0, 0) for c in range(1, 11)]  # one per class
    assert _boxes(train, 1) == [
        (1, [10.0, 5.0, 20.0, 10.0], 0, 0, 0),
        (2, [0.0, 0.0, 8.0, 8.0], 0, 1, 2),
        *ignore,
        (4, [50.0, 40.0, 14.0, 8.0], 0, 0, 1),
        (3, [1.0, 1.0, 3.0, 3.0], 0, 0, 1),
    ]
    assert _boxes(train, 2) == [
        (5, [1.0, 1.0, 5.0, 5.0], 0, 0, 0),
        (6, [2.0, 2.0, 6.0, 6.0], 0, 1, 0),
        (7, [3.0, 3.0, 7.0, 7.0], 0, 0, 2),
        (8, [4.0, 4.0, 8.0, 8.0], 0, 1, 1),
        (9, [10.0, 10.0, 9.0, 9.0], 0, 0, 0),
        (10, [0.0, 0.0, 4.0, 4.0], 0, 1, 1),
    ]
    assert _boxes(train, 3) == []
    assert [a["id"] for a in train["annotations"]] == list(range(1, len(train["annotations"]) + 1))
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in train["annotations"])

    val = _load(tmp_path / "out" / "annotations" / "val.json")
    assert val["images"][0]["file_name"] == "VisDrone2019-DET-val/images/0000010_00000_d_0000010.jpg"
    assert len(_boxes(val, 1)) == 2 + 10
    test_dev = _load(tmp_path / "out" / "annotations" / "test_dev.json")
    assert _boxes(test_dev, 1) == [(4, [2.0, 2.0, 10.0, 10.0], 0, 0, 0)]

    train_line = next(line for line in out.splitlines() if "visdrone train:" in line)
    assert (
        "train: 3 images, 10 boxes, 1 ignore regions, 1 'others' dropped, 2 clipped to the image, "
        "1 outside the image dropped, 2 with zero/negative size dropped, 0 over the gigantic-image threshold"
    ) in train_line


def test_keep_others_adds_an_eleventh_class(tmp_path):
    root = _write_visdrone(tmp_path / "VisDrone", val=None, test_dev=None)
    ugs_data(["visdrone", root, "--keep-others"])  # --out defaults to the root
    train = _load(os.path.join(root, "annotations", "train.json"))
    assert [c["name"] for c in train["categories"]][-1] == "others"
    assert [c["id"] for c in train["categories"]] == list(range(1, 12))
    boxes = _boxes(train, 1)
    assert (11, [5.0, 5.0, 6.0, 4.0], 0, 0, 0) in boxes
    assert [b[0] for b in boxes if b[2] == 1] == list(range(1, 12))  # ignore region for "others" too
    assert not os.path.exists(os.path.join(root, "annotations", "val.json"))


def test_rerun_needs_force(tmp_path):
    root = _write_visdrone(tmp_path / "VisDrone", val=None, test_dev=None)
    ugs_data(["visdrone", root])
    with pytest.raises(SystemExit, match=r"annotations/train.json exists \(use --force"):
        ugs_data(["visdrone", root])
    ugs_data(["visdrone", root, "--force", "--keep-others"])
    assert _load(os.path.join(root, "annotations", "train.json"))["categories"][-1]["name"] == "others"


def _visdrone_cfg(*overrides):
    from ugs_d2.harness.compose import compose as _compose

    return _compose(["dataset=visdrone", *overrides])


def test_registered_names_and_detectron2_config(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.data.datasets import register_dataset

    root = _write_visdrone(tmp_path / "VisDrone")
    ugs_data(["visdrone", root, "--out", str(tmp_path / "ann")])
    cfg = _visdrone_cfg(f"dataset.root={root}", f"dataset.annotations={tmp_path / 'ann'}", "device=cpu")
    registered = register_dataset(cfg.dataset)
    assert sorted(registered) == ["visdrone_test_dev", "visdrone_train", "visdrone_val"]
    assert registered["visdrone_val"] == str(tmp_path / "ann" / "annotations" / "val.json")
    assert MetadataCatalog.get("visdrone_train").thing_classes == list(visdrone.CLASSES)
    assert MetadataCatalog.get("visdrone_val").evaluator_type == "coco"
    train = DatasetCatalog.get("visdrone_train")
    assert train[0]["file_name"] == os.path.join(root, "VisDrone2019-DET-train/images/0000001_00000_d_0000001.jpg")
    assert [a["category_id"] for a in train[0]["annotations"] if not a["iscrowd"]] == [0, 1, 3, 2]  # 0-based

    d2 = to_detectron2_cfg(cfg, str(tmp_path / "run"), num_classes=10)
    assert d2.DATASETS.TRAIN == ("visdrone_train",) and d2.DATASETS.TEST == ("visdrone_val",)
    d2 = to_detectron2_cfg(_visdrone_cfg("dataset.test=visdrone_test_dev", "device=cpu"), str(tmp_path / "r"), 10)
    assert d2.DATASETS.TEST == ("visdrone_test_dev",)


def test_root_from_environment(tmp_path, monkeypatch):
    from ugs_d2.data.datasets import register_dataset, resolve_root

    root = _write_visdrone(tmp_path / "VisDrone", test_dev=None)
    ugs_data(["visdrone", root])
    cfg = _visdrone_cfg()
    monkeypatch.delenv("VISDRONE_ROOT", raising=False)
    monkeypatch.setenv("UGS_DATASETS", str(tmp_path))
    assert resolve_root(cfg.dataset) == root
    registered = register_dataset(cfg.dataset)
    assert sorted(registered) == ["visdrone_train", "visdrone_val"]  # no test-dev json: not registered
    monkeypatch.setenv("VISDRONE_ROOT", str(tmp_path / "elsewhere"))  # wins over UGS_DATASETS
    with pytest.raises(DatasetError, match=r"^dataset.root \(from \$VISDRONE_ROOT\): directory .*elsewhere does not exist$"):
        resolve_root(cfg.dataset)


def test_missing_root_names_the_key_and_the_environment(monkeypatch):
    from ugs_d2.data.datasets import register_dataset

    monkeypatch.delenv("VISDRONE_ROOT", raising=False)
    monkeypatch.delenv("UGS_DATASETS", raising=False)
    with pytest.raises(DatasetError) as info:
        register_dataset(_visdrone_cfg().dataset)
    assert str(info.value) == (
        "dataset.root is not set: give dataset.root=/path, or set VISDRONE_ROOT=/path or "
        "UGS_DATASETS=/dir/holding/VisDrone"
    )


def test_unconverted_root_gives_the_conversion_command(tmp_path):
    from ugs_d2.data.datasets import register_dataset

    root = _write_visdrone(tmp_path / "VisDrone")
    with pytest.raises(DatasetError) as info:
        register_dataset(_visdrone_cfg(f"dataset.root={root}").dataset)
    message = str(info.value)
    assert message.startswith(f"{root}/annotations/train.json: annotation file not found")
    assert message.endswith(f"convert the official folders first: ugs-data visdrone {root}")
    with pytest.raises(DatasetError, match=f"--out {tmp_path / 'ann'}$"):
        os.makedirs(tmp_path / "ann")
        register_dataset(_visdrone_cfg(f"dataset.root={root}", f"dataset.annotations={tmp_path / 'ann'}").dataset)
    with pytest.raises(DatasetError, match=r"has no VisDrone2019-DET-\* folders"):
        register_dataset(_visdrone_cfg(f"dataset.root={tmp_path}").dataset)


def test_ignore_regions_are_ignored_by_pycocotools(tmp_path):
    """A detection inside an ignored region is neither TP nor FP; outside, the same box is an FP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = _write_visdrone(tmp_path / "VisDrone", train=VAL, val=None, test_dev=None)
    ugs_data(["visdrone", root])
    path = os.path.join(root, "annotations", "train.json")

    def ap(detections, gt_path=path):
        gt = COCO(gt_path)
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        return evaluator.stats[0]

    perfect = [
        {"image_id": 1, "category_id": 4, "bbox": [5, 5, 10, 10], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [30, 5, 12, 12], "score": 0.5},
    ]
    # a confident car inside the ignored region [20, 20, 16, 16]
    inside = {"image_id": 1, "category_id": 4, "bbox": [22, 22, 10, 10], "score": 0.9}
    assert ap(perfect) == pytest.approx(1.0)
    assert ap(perfect + [inside]) == pytest.approx(1.0)
    # the same file without its ignore regions: the detection is a false positive above the TP
    coco = _load(path)
    coco["annotations"] = [a for a in coco["annotations"] if not a["iscrowd"]]
    plain = str(tmp_path / "plain.json")
    with open(plain, "w") as f:
        json.dump(coco, f)
    assert ap(perfect + [inside], plain) < 0.8


def test_clip_box():
    assert visdrone.clip_box(-2, -1, 6, 5, 40, 30) == (0.0, 0.0, 4.0, 4.0)
    assert visdrone.clip_box(50, 40, 20, 20, 64, 48) == (50.0, 40.0, 14.0, 8.0)
    assert visdrone.clip_box(1, 2, 3, 4, 64, 48) == (1.0, 2.0, 3.0, 4.0)
    assert visdrone.clip_box(64, 0, 5, 5, 64, 48) is None  # touches the right edge only
    assert visdrone.clip_box(-10, 0, 10, 5, 64, 48) is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("1,2,3,4,1,1,0\n", r":2: 7 fields, expected 8 \(x,y,w,h,score,category,truncation,occlusion\)$"),
        ("1,2,3,4,1,1,0,0,5\n", r":2: 9 fields, expected 8"),
        ("1,2,three,4,1,1,0,0\n", r":2: field w is 'three', expected a number$"),
        ("1,2,3,4,1,1.5,0,0\n", r":2: field category is '1.5', expected an integer$"),
        ("1,2,3,4,1,12,0,0\n", r":2: category 12 is not a VisDrone-DET category"),
        ("1,2,3,4,1,-1,0,0\n", r":2: category -1 is not a VisDrone-DET category"),
        ("1,2,3,4,2,1,0,0\n", r":2: score is 2, expected 0 \(ignored\) or 1 in ground truth$"),
        ("1,2,nan,4,1,1,0,0\n", r":2: field w is 'nan', expected a finite number$"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    train = copy.deepcopy(TRAIN)
    name = "0000002_00000_d_0000002.jpg"
    width, height, text = train[name]
    train[name] = (width, height, "1,1,5,5,1,5,0,0\n" + line)
    root = _write_visdrone(tmp_path / "VisDrone", train=train)
    with pytest.raises(SystemExit) as info:
        ugs_data(["visdrone", root])
    txt = os.path.join(root, "VisDrone2019-DET-train", "annotations", "0000002_00000_d_0000002.txt")
    assert str(info.value).startswith(f"ugs-data: {txt}:2: ")
    assert "\n" not in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)
    assert not os.path.exists(os.path.join(root, "annotations"))  # nothing written, no split


def test_truncated_image_is_an_error_and_nothing_is_written(tmp_path):
    root = _write_visdrone(tmp_path / "VisDrone")
    bad = os.path.join(root, "VisDrone2019-DET-val", "images", "0000010_00000_d_0000010.jpg")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(SystemExit, match=f"^ugs-data: {bad}: unreadable image \\(image file is truncated"):
        ugs_data(["visdrone", root, "--out", str(tmp_path / "out")])
    assert not os.path.exists(tmp_path / "out" / "annotations")  # train converted fine, but not written
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(SystemExit, match=f"^ugs-data: {bad}: unreadable image \\(cannot identify image file"):
        ugs_data(["visdrone", root, "--out", str(tmp_path / "out"), "--no-decode"])


def test_missing_or_empty_split_parts(tmp_path):
    root = _write_visdrone(tmp_path / "VisDrone", val=None, test_dev=None)
    txt = os.path.join(root, "VisDrone2019-DET-train", "annotations", "0000003_00000_d_0000003.txt")
    os.remove(txt)
    with pytest.raises(SystemExit, match=f"^ugs-data: {txt}: missing, but its image 0000003_00000_d_0000003.jpg exists"):
        ugs_data(["visdrone", root])
    open(txt, "w").close()
    orphan = os.path.join(root, "VisDrone2019-DET-train", "annotations", "0000099.txt")
    open(orphan, "w").close()
    with pytest.raises(SystemExit, match=f"^ugs-data: {orphan}: no image of that name"):
        ugs_data(["visdrone", root])
    _write_split(root, "VisDrone2019-DET-val", {})
    os.remove(orphan)
    with pytest.raises(SystemExit, match=r"VisDrone2019-DET-val/images: no images \(.jpg/.png\): empty split$"):
        ugs_data(["visdrone", root])
    with pytest.raises(SystemExit, match=r"no VisDrone2019-DET-\{train,val,test-dev\} folder"):
        ugs_data(["visdrone", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"unknown split 'test', expected some of train, val, test_dev"):
        ugs_data(["visdrone", root, "--splits", "train,test"])


def test_gigantic_image_warns_and_suggests_tiling(tmp_path, caplog):
    side = GIGANTIC_IMAGE_SIDE + 4
    root = _write_visdrone(
        tmp_path / "VisDrone", train={"big.jpg": (side, 8, "1,1,5,5,1,4,0,0\n")}, val=None, test_dev=None
    )
    with caplog.at_level(logging.WARNING, logger="ugs_d2.data.visdrone"):
        ugs_data(["visdrone", root])
    assert f"1 image(s) with a side over {GIGANTIC_IMAGE_SIDE} px (largest {side}x8" in caplog.text
    assert "ugs-tile" in caplog.text


def test_score_zero_boxes_are_ignore_regions(tmp_path):
    """VisDrone's ground truth marks "ignored in evaluation" by score 0, whatever the category."""
    root = _write_visdrone(
        tmp_path / "VisDrone", train={"x.jpg": (32, 32, "2,2,8,8,0,4,0,0\n3,3,5,5,1,4,0,0\n")}, val=None, test_dev=None
    )
    ((_, counts),) = visdrone.convert(root, root, progress=False).values()
    assert (counts["ignore_regions"], counts["boxes"]) == (1, 1)
    train = _load(os.path.join(root, "annotations", "train.json"))
    assert _boxes(train, 1) == [(c, [2.0, 2.0, 8.0, 8.0], 1, 0, 0) for c in range(1, 11)] + [
        (4, [3.0, 3.0, 5.0, 5.0], 0, 0, 0)
    ]


def test_ugs_train_reports_a_missing_root_in_one_line(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("VISDRONE_ROOT", "UGS_DATASETS")}
    proc = subprocess.run(
        [sys.executable, "-m", "ugs_d2.train", "dataset=visdrone", "device=cpu", "wandb.enabled=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "ugs-train: dataset.root is not set: give dataset.root=/path, or set VISDRONE_ROOT=/path or "
        "UGS_DATASETS=/dir/holding/VisDrone"
    )
