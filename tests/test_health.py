"""ugs-health: every count of the report on a hand-made dataset, and the files the CLI writes."""
import json
import math
import os

import pytest

from ugs_d2.analysis.health import health_report, render_markdown
from ugs_d2.cli.health import main as ugs_health


def _ann(ann_id, image_id, category_id, bbox):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0}


def _dataset():
    """Images 1 (100x100) and 2 (50x40) annotated, 3 and 4 empty; category ids 1, 2, 5 (+7 unknown)."""
    return {
        "images": [
            {"id": 1, "file_name": "1.png", "width": 100, "height": 100},
            {"id": 2, "file_name": "2.png", "width": 50, "height": 40},
            {"id": 3, "file_name": "3.png", "width": 64, "height": 64},
            {"id": 4, "file_name": "4.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 5, "name": "person"}, {"id": 1, "name": "car"}, {"id": 2, "name": "truck"}],
        "annotations": [
            _ann(1, 1, 1, [10, 10, 20, 20]),  # s 20
            _ann(2, 1, 1, [10.5, 10, 20, 20]),  # IoU 390/410 = 0.951 with 1: duplicate
            _ann(3, 1, 2, [10, 10, 20, 20]),  # same box, other class: not a duplicate
            _ann(4, 1, 1, [0, 50, 5, 2]),  # edge (x = 0), min side 2 < 3, s 3.16
            _ann(5, 1, 5, [30, 30, 0, 10]),  # degenerate: w = 0
            _ann(6, 1, 5, [90, 90, 20, 20]),  # degenerate: 10 px outside
            _ann(7, 2, 5, [5, 5, 40, 30]),  # s 34.6, 4-5 px from the right/bottom edges
            _ann(8, 2, 2, [1, 2, 10, 12]),  # edge (x = 1), s 10.95
            _ann(9, 1, 2, [0, 0, 100, 100]),  # whole image: edge, s 100
            _ann(10, 2, 1, [10, 10, -5, 5]),  # degenerate: w < 0
            _ann(11, 2, 1, [1, 2, 3]),  # degenerate: malformed
            _ann(12, 99, 1, [0, 0, 10, 10]),  # unknown image
            _ann(13, 2, 7, [20, 20, 6, 6]),  # unknown category, s 6
            _ann(14, 1, 1, [10, 10, 20, 20]),  # copy of 1: duplicate
            _ann(15, 1, 2, [11, 10, 20, 20]),  # IoU 380/420 = 0.905 with 3: not a duplicate
            _ann(16, 2, 2, [49.5, 30, 1, 10.5]),  # touches right and bottom edges within 1 px, min side 1
        ],
    }


def test_report_counts_on_a_hand_made_dataset():
    coco = _dataset()
    before = json.dumps(coco, sort_keys=True)
    r = health_report(coco)
    assert json.dumps(coco, sort_keys=True) == before  # pure

    assert (r["num_images"], r["num_annotations"], r["num_categories"]) == (4, 16, 3)
    assert r["empty_images"] == 2 and r["examples"]["empty_images"] == [3, 4]
    assert r["valid_boxes"] == 11
    assert r["per_class"] == [
        {"id": 1, "name": "car", "boxes": 7, "images": 2},
        {"id": 2, "name": "truck", "boxes": 5, "images": 2},
        {"id": 5, "name": "person", "boxes": 3, "images": 2},
        {"id": 7, "name": "7 (unknown)", "boxes": 1, "images": 1},
    ]
    assert r["coco_buckets"] == {"small": 9, "medium": 1, "large": 1}
    assert r["tiny_buckets"] == {"very_tiny": 3, "tiny": 1, "small": 5, "not_tiny": 2}
    assert sorted(r["box_sides"]) == pytest.approx(
        sorted([20, 20, 20, math.sqrt(10), math.sqrt(1200), math.sqrt(120), 100, 6, 20, 20, math.sqrt(10.5)])
    )
    assert r["under_min_side"] == 2 and r["examples"]["under_min_side"] == [4, 16]
    assert r["touching_edge"] == 4 and r["examples"]["touching_edge"] == [4, 8, 9, 16]
    assert r["duplicates"] == 2 and r["examples"]["duplicates"] == [2, 14]
    assert r["degenerate"] == {"total": 4, "malformed": 1, "non_positive_size": 2, "outside_image": 1}
    assert r["examples"]["non_positive_size"] == [5, 10]
    assert r["examples"]["outside_image"] == [6] and r["examples"]["malformed"] == [11]
    assert r["unknown_image"] == 1 and r["examples"]["unknown_image"] == [12]
    assert r["unknown_category"] == 1 and r["examples"]["unknown_category"] == [13]
    assert r["duplicate_iou"] == 0.95


def test_duplicate_threshold_is_a_parameter():
    assert health_report(_dataset(), duplicate_iou=0.9)["duplicates"] == 3  # + box 15


def test_markdown_names_the_thresholds_and_counts():
    md = render_markdown(health_report(_dataset()), title="t")
    assert md.startswith("# t\n")
    assert "| duplicate boxes (same image and class, IoU >= 0.95) | 2 |" in md
    assert "| labels with min side < 3 px | 2 |" in md
    assert "| boxes touching an image edge (within 1 px) | 4 |" in md
    assert "| degenerate boxes | 4 |" in md
    assert "| empty images (no annotation) | 2 | 50.0% of images | 3, 4 (image ids) |" in md
    assert "| AI-TOD very tiny (s < 8) | 3 |" in md and "| COCO large (s >= 96) | 1 |" in md
    assert "| 7 | 7 (unknown) | 1 |" in md


def test_empty_dataset():
    r = health_report({"images": [], "annotations": [], "categories": []})
    assert r["valid_boxes"] == 0 and r["box_sides"] == []
    assert "No valid boxes." in render_markdown(r)


def test_cli_writes_markdown_and_two_plots(tmp_path, capsys):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_dataset()))
    ugs_health([str(path)])
    out_dir = tmp_path / "train_health"
    assert sorted(os.listdir(out_dir)) == ["box_sizes.png", "class_counts.png", "health.md"]
    for name in ("box_sizes.png", "class_counts.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert printed == (out_dir / "health.md").read_text()
    assert "| degenerate boxes | 4 |" in printed

    ugs_health([str(path), "--out", str(tmp_path / "elsewhere"), "--quiet"])
    assert len(os.listdir(tmp_path / "elsewhere")) == 3
    assert capsys.readouterr().out == ""


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        ugs_health([str(tmp_path / "missing.json")])
    assert str(e.value).startswith("ugs-health: ") and "\n" not in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": []}')
    with pytest.raises(SystemExit) as e:
        ugs_health([str(bad)])
    assert "'categories' list" in str(e.value) and "\n" not in str(e.value)
