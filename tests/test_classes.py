"""ugs-classes: drop / keep / rename / merge give contiguous ids 1..K and the right counts."""
import json

import pytest

from ugs_d2.cli.classes import main as ugs_classes
from ugs_d2.data.classes import remap_categories
from ugs_d2.data.coco_json import CocoError


def _dataset():
    """Category ids 3, 7, 9, 12, 20 (listed out of order); 11 boxes; image 4 has only a bike."""
    per_class = [(3, 3), (7, 2), (9, 1), (12, 4), (20, 1)]  # (category id, boxes)
    annotations, ann_id = [], 0
    for cid, n in per_class:
        for _ in range(n):
            ann_id += 1
            image_id = 4 if cid == 20 else 1 + ann_id % 3
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": cid,
                                "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0})
    return {
        "info": {"description": "hand-made"},
        "images": [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in (1, 2, 3, 4)],
        "annotations": annotations,
        "categories": [
            {"id": 12, "name": "person", "supercategory": "human"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
            {"id": 9, "name": "bus", "supercategory": "vehicle"},
            {"id": 7, "name": "truck", "supercategory": "vehicle"},
            {"id": 20, "name": "bike", "supercategory": "vehicle"},
        ],
    }


def _counts(coco):
    out = {}
    for a in coco["annotations"]:
        out[a["category_id"]] = out.get(a["category_id"], 0) + 1
    return out


def test_drop_rename_merge_give_contiguous_ids_in_original_order():
    coco = _dataset()
    before = json.dumps(coco, sort_keys=True)
    new, summary = remap_categories(
        coco, drop=["bike"], rename={"person": "pedestrian"}, merge=[(["bus", "truck"], "heavy")]
    )
    assert json.dumps(coco, sort_keys=True) == before  # input untouched
    assert [(c["id"], c["name"]) for c in new["categories"]] == [(1, "car"), (2, "heavy"), (3, "pedestrian")]
    assert new["categories"][1]["supercategory"] == "vehicle"  # the first member's fields (truck, id 7)
    assert _counts(new) == {1: 3, 2: 3, 3: 4}
    assert len(new["images"]) == 4 and new["info"] == coco["info"]
    assert list(new) == list(coco)  # key order kept
    assert sorted(a["id"] for a in new["annotations"]) == list(range(1, 11))  # ids kept, bike's removed
    assert summary["annotations_before"] == 11 and summary["annotations_after"] == 10
    assert [(r["name"], r["action"], r["new_id"], r["annotations"]) for r in summary["classes"]] == [
        ("car", "kept", 1, 3), ("truck", "merged", 2, 2), ("bus", "merged", 2, 1),
        ("person", "renamed", 3, 4), ("bike", "dropped", None, 1),
    ]
    assert summary["result"] == [
        {"id": 1, "name": "car", "sources": ["car"], "annotations": 3},
        {"id": 2, "name": "heavy", "sources": ["truck", "bus"], "annotations": 3},
        {"id": 3, "name": "pedestrian", "sources": ["person"], "annotations": 4},
    ]


def test_keep_and_plain_renumbering():
    new, _ = remap_categories(_dataset(), keep=["person", "car"])
    assert [(c["id"], c["name"]) for c in new["categories"]] == [(1, "car"), (2, "person")]
    assert _counts(new) == {1: 3, 2: 4}
    new, summary = remap_categories(_dataset())
    assert [c["id"] for c in new["categories"]] == [1, 2, 3, 4, 5]
    assert summary["annotations_after"] == 11


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(drop=["nope"]), "--drop: unknown class 'nope' (available: car, truck, bus, person, bike)"),
        (dict(keep=["car"], drop=["bus"]), "--keep and --drop exclude each other"),
        (dict(rename={"car": "bus"}), "two classes would be named 'bus'"),
        (dict(merge=[(["car", "bus"], "truck")]), "two classes would be named 'truck'"),
        (dict(merge=[(["car"], "x")]), "needs at least two classes"),
        (dict(drop=["car"], rename={"car": "x"}), "class 'car' is renamed or merged, but --drop removes it"),
        (dict(rename={"car": "x"}, merge=[(["car", "bus"], "y")]), "both renamed and merged"),
    ],
)
def test_bad_requests_are_one_line_errors(kwargs, message):
    with pytest.raises(CocoError) as e:
        remap_categories(_dataset(), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_writes_output_and_prints_summary(tmp_path, capsys):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_dataset()))
    out = tmp_path / "sub" / "out.json"
    ugs_classes([str(src), "--drop", "bike", "--rename", "person=pedestrian",
                 "--merge", "truck,bus=heavy", "--out", str(out)])
    new = json.loads(out.read_text())
    assert [c["id"] for c in new["categories"]] == [1, 2, 3]
    assert _counts(new) == {1: 3, 2: 3, 3: 4}
    printed = capsys.readouterr().out
    assert printed.startswith("classes: 5 -> 3; annotations: 11 -> 10 (1 removed); images: 4 (all kept)\n")
    assert "1 kept, 1 dropped, 1 renamed, 2 merged" in printed
    assert any(line.split()[:6] == ["9", "bus", "merged", "2", "heavy", "1"] for line in printed.splitlines())

    ugs_classes([str(src), "--keep", "car,person", "--out", str(out)])  # an existing output is replaced
    assert [c["name"] for c in json.loads(out.read_text())["categories"]] == ["car", "person"]


def test_cli_errors(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_dataset()))
    original = src.read_text()
    for argv, message in [
        ([str(src), "--keep", "car", "cat", "--out", str(tmp_path / "o.json")],
         "ugs-classes: --keep: unknown class 'cat' (available: car, truck, bus, person, bike)"),
        ([str(src), "--rename", "car", "--out", str(tmp_path / "o.json")], "expected OLD=NEW"),
        ([str(src), "--drop", "bike", "--out", str(src)], "is the input file (use --force"),
        ([str(tmp_path / "missing.json"), "--out", str(tmp_path / "o.json")], "annotation file not found"),
    ]:
        with pytest.raises(SystemExit) as e:
            ugs_classes(argv)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert src.read_text() == original and not (tmp_path / "o.json").exists()
    with pytest.raises(SystemExit) as e:  # argparse: mutually exclusive
        ugs_classes([str(src), "--keep", "car", "--drop", "bus", "--out", str(tmp_path / "o.json")])
    assert e.value.code == 2
    ugs_classes([str(src), "--drop", "bike", "--out", str(src), "--force"])
    assert len(json.loads(src.read_text())["categories"]) == 4
