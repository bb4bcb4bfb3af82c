"""SODA-A reader (ugs_d2.data.soda_a) on a fixture in the official per-image json format, and
the polygon -> oriented box geometry it uses (ugs_d2.boxes.polygon_to_rotated_box)."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from ugs_d2.boxes import convex_hull, polygon_to_rotated_box
from ugs_d2.data import soda_a
from ugs_d2.data.coco_json import DatasetError


def corners(cx, cy, w, h, angle):
    """The 4 corners of an XYWHA box, as detectron2's Visualizer.draw_rotated_box_with_label."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rect = [(-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2)]
    return [(cx + c * x + s * y, cy - s * x + c * y) for x, y in rect]


def flat(points):
    return [v for p in points for v in p]


@pytest.mark.parametrize("box", [(50, 40, 10, 4, 0), (50, 40, 10, 4, 30), (20, 30, 6, 12, -60), (5, 5, 3, 3, 10)])
def test_polygon_to_rotated_box_inverts_detectron2s_corners(box):
    for start in range(4):  # whichever corner the annotator started at
        points = corners(*box)
        got = polygon_to_rotated_box(flat(points[start:] + points[:start]))
        assert got[4] >= -90 and got[4] < 90
        # the same rectangle: same corners as a set (w/h may swap with angle +-90 for a square)
        assert sorted(np.round(corners(*got), 6).tolist()) == sorted(np.round(points, 6).tolist())
        assert got[2] * got[3] == pytest.approx(box[2] * box[3])


def test_polygon_to_rotated_box_by_hand():
    # axis-aligned: angle 0, w the horizontal side, whatever the corner order
    assert polygon_to_rotated_box([0, 0, 10, 0, 10, 4, 0, 4]) == (5.0, 2.0, 10.0, 4.0, 0.0)
    assert polygon_to_rotated_box([[0, 4], [0, 0], [10, 0], [10, 4]]) == (5.0, 2.0, 10.0, 4.0, 0.0)
    # a square turned 45 degrees: diagonal 2 -> side sqrt(2), |angle| 45
    cx, cy, w, h, a = polygon_to_rotated_box([1, 0, 2, 1, 1, 2, 0, 1])
    assert (cx, cy) == pytest.approx((1, 1)) and w == pytest.approx(math.sqrt(2)) and h == pytest.approx(math.sqrt(2))
    assert abs(a) == pytest.approx(45)
    # a general quadrilateral: the rectangle holds every point and touches the hull
    quad = [0, 0, 10, 1, 9, 6, 1, 4]
    box = polygon_to_rotated_box(quad)
    c, s = math.cos(math.radians(box[4])), math.sin(math.radians(box[4]))
    u, v = np.array([c, -s]), np.array([s, c])
    pts = np.array(quad, dtype=float).reshape(-1, 2) - box[:2]
    assert np.all(np.abs(pts @ u) <= box[2] / 2 + 1e-9) and np.all(np.abs(pts @ v) <= box[3] / 2 + 1e-9)
    # collinear corners: zero height
    assert polygon_to_rotated_box([0, 0, 1, 1, 2, 2, 3, 3])[3] == pytest.approx(0, abs=1e-9)


def test_rotated_box_encloses_like_detectron2():
    from detectron2.structures import BoxMode

    points = corners(40, 30, 16, 6, 25)
    box = polygon_to_rotated_box(flat(points))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    assert BoxMode.convert(list(box), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS) == pytest.approx(
        [min(xs), min(ys), max(xs), max(ys)])


def test_convex_hull_drops_inner_and_collinear_points():
    hull = convex_hull([[0, 0], [2, 0], [1, 0], [2, 2], [0, 2], [1, 1]])
    assert sorted(map(tuple, hull.tolist())) == [(0, 0), (0, 2), (2, 0), (2, 2)]


def write_soda_a(root, objects_by_stem, split="train", size=(64, 48), layout="devkit"):
    """A SODA-A tree in the official format: one json per image with images/annotations/categories."""
    images_dir, ann_dir = ((root / "Images" / split, root / "Annotations" / split) if layout == "devkit"
                           else (root / split / "Images", root / split / "Annotations"))
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    cats = [{"id": i, "name": n} for i, n in enumerate(soda_a.CLASSES + ("ignore",))]
    for n, (stem, objects) in enumerate(sorted(objects_by_stem.items())):
        Image.new("RGB", size, (n * 40 % 255, 90, 120)).save(images_dir / f"{stem}.jpg")
        anns = [{**o, "area": 0.0, "image_id": n, "id": k} for k, o in enumerate(objects)]
        content = {"images": {"file_name": f"{stem}.jpg", "height": size[1], "width": size[0], "id": n},
                   "annotations": anns, "categories": cats}
        (ann_dir / f"{stem}.json").write_text(json.dumps(content))
    return root


OBJECTS = {
    "00001": [
        {"poly": flat(corners(20, 20, 10, 4, 30)), "category_id": 2},   # small-vehicle
        {"poly": [30, 5, 40, 5, 40, 15, 30, 15], "category_id": 9},      # ignore region
        {"poly": [1, 1, 5, 1, 6, 3, 5, 5, 1, 5], "category_id": 0},      # 5 points: dropped
    ],
    "00002": [
        {"poly": [60, 40, 70, 40, 70, 44, 60, 44], "category_id": 8},    # windmill, crosses the border
        {"poly": [0, 0, 1, 1, 2, 2, 3, 3], "category_id": 4},            # collinear: degenerate
    ],
}


@pytest.mark.parametrize("layout", ["devkit", "rawData"])
def test_convert_split_follows_the_devkit(tmp_path, layout):
    root = write_soda_a(tmp_path / "soda", OBJECTS, layout=layout)
    coco, counts = soda_a.convert_split(str(root), "train", progress=False)
    assert [i["file_name"] for i in coco["images"]] == (
        ["Images/train/00001.jpg", "Images/train/00002.jpg"] if layout == "devkit"
        else ["train/Images/00001.jpg", "train/Images/00002.jpg"])
    assert [(i["id"], i["width"], i["height"]) for i in coco["images"]] == [(1, 64, 48), (2, 64, 48)]
    assert dict(counts) == {"images": 2, "boxes": 2, "ignore_dropped": 1, "long_polygons_dropped": 1,
                            "degenerate_dropped": 1}
    vehicle, windmill = coco["annotations"]
    assert vehicle["category_id"] == 3 and windmill["category_id"] == 9 and vehicle["iscrowd"] == 0
    assert vehicle["rbox"] == pytest.approx([20, 20, 10, 4, 30])
    assert vehicle["area"] == pytest.approx(40)  # w * h of the oriented box: the buckets' area
    xs, ys = vehicle["segmentation"][0][0::2], vehicle["segmentation"][0][1::2]
    assert vehicle["bbox"] == pytest.approx([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)])
    assert windmill["bbox"] == [60.0, 40.0, 4.0, 4.0]  # clipped to the 64 px wide image
    assert windmill["rbox"] == pytest.approx([65, 42, 10, 4, 0])  # the oriented box is not clipped
    assert [c["name"] for c in coco["categories"]] == list(soda_a.CLASSES)


def test_keep_ignore_writes_crowd_regions_of_every_class(tmp_path):
    root = write_soda_a(tmp_path / "soda", {"00001": OBJECTS["00001"]})
    coco, counts = soda_a.convert_split(str(root), "train", keep_ignore=True, progress=False)
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert counts["ignore_regions"] == 1 and sorted(a["category_id"] for a in crowd) == list(range(1, 10))


def test_convert_writes_every_split_atomically_and_deterministically(tmp_path):
    root = write_soda_a(tmp_path / "soda", OBJECTS)
    write_soda_a(root, {"00003": OBJECTS["00001"]}, split="val")
    out = soda_a.convert(str(root), str(tmp_path / "out"), progress=False)
    assert sorted(out) == ["train", "val"]
    first = (tmp_path / "out" / "annotations" / "train.json").read_bytes()
    with pytest.raises(FileExistsError, match="train.json exists"):
        soda_a.convert(str(root), str(tmp_path / "out"), progress=False)
    soda_a.convert(str(root), str(tmp_path / "out"), overwrite=True, progress=False)
    assert (tmp_path / "out" / "annotations" / "train.json").read_bytes() == first
    assert "2 oriented boxes" in soda_a.format_summary("train", out["train"][1], out["train"][0])


@pytest.mark.parametrize("obj, message", [
    ({"poly": [0, 0, 1, 0, 1], "category_id": 1}, "poly: expected x, y pairs of at least 3 points"),
    ({"poly": [0, 0, 1, 0], "category_id": 1}, "poly: expected x, y pairs"),
    ({"poly": [0, 0, 1, 0, "a", 1], "category_id": 1}, "poly: expected x, y pairs"),
    ({"poly": [0, 0, 1, 0, float("nan"), 1], "category_id": 1}, "finite numbers"),
    ({"poly": [0, 0, 1, 0, 1, 1, 0, 1], "category_id": 10}, "category_id: expected an integer 0..9, got 10"),
    ({"poly": [0, 0, 1, 0, 1, 1, 0, 1], "category_id": "car"}, "category_id: expected an integer 0..9"),
    ({"category_id": 1}, "expected an object with 'poly' and 'category_id'"),
])
def test_a_malformed_object_is_one_line_naming_file_and_index(tmp_path, obj, message):
    root = write_soda_a(tmp_path / "soda", {"00001": [OBJECTS["00001"][0], obj]})
    with pytest.raises(DatasetError) as info:
        soda_a.convert_split(str(root), "train", progress=False)
    text = str(info.value)
    assert text.startswith(f"{root}/Annotations/train/00001.json: annotations[1]: ") and message in text, text
    assert "\n" not in text


def test_unpaired_files_and_bad_json_are_one_line(tmp_path):
    root = write_soda_a(tmp_path / "soda", OBJECTS)
    (root / "Annotations" / "train" / "00002.json").unlink()
    with pytest.raises(DatasetError, match=r"00002.json: missing, but its image 00002.jpg exists"):
        soda_a.convert_split(str(root), "train", progress=False)
    (root / "Annotations" / "train" / "00002.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"00002.json: not a readable json"):
        soda_a.convert_split(str(root), "train", progress=False)
    (root / "Annotations" / "train" / "00002.json").write_text('{"images": {}}')
    with pytest.raises(DatasetError, match=r"00002.json: expected a json object with an 'annotations' list"):
        soda_a.convert_split(str(root), "train", progress=False)
    with pytest.raises(DatasetError, match=r"no SODA-A split"):
        soda_a.convert(str(tmp_path), str(tmp_path / "out"), progress=False)


def test_ugs_data_soda_a_then_ugs_train_on_it(tmp_path, capsys):
    """The command converts the official layout, and an axis-aligned detector trains on the
    jsons' bbox and evaluates with the SODA buckets (evaluation=soda_a)."""
    from conftest import TINY_RUN, run_ugs_train

    from ugs_d2.cli.data import main as ugs_data

    objects = {f"{i:05d}": [{"poly": flat(corners(20 + 3 * i, 24, 12, 6, 15 * i)), "category_id": i % 3},
                            {"poly": flat(corners(44, 30, 8, 8, 0)), "category_id": 8}] for i in range(1, 5)}
    root = write_soda_a(tmp_path / "soda", objects, size=(96, 64))
    write_soda_a(root, objects, split="val", size=(96, 64))
    ugs_data(["soda-a", str(root)])
    out = capsys.readouterr().out
    assert "[ugs-data] soda-a train: 4 images, 8 oriented boxes, 0 ignore regions dropped" in out, out
    with pytest.raises(SystemExit, match=r"train.json exists \(use --force to overwrite\)"):
        ugs_data(["soda-a", str(root)])
    run = tmp_path / "run"
    proc = run_ugs_train(TINY_RUN + ["dataset=soda_a", "evaluation=soda_a", "evaluation.max_dets=100", f"dataset.root={root}",
                                     "schedule.max_iter=2", f"hydra.run.dir={run}", "wandb.enabled=false"],
                         cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert {"AP", "APs", "APeS", "APrS", "APgS", "APN"} <= set(results), sorted(results)
