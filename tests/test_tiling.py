"""Tiling of images and COCO boxes: windows, clipping, the ugs-tile CLI and the cached train split."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from ugs_d2.cli.tile import main as ugs_tile
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.data.tiling import (
    cached_tiled_split,
    clip_boxes_to_window,
    tile_coco_dataset,
    tile_windows,
)

# --- windows -------------------------------------------------------------------------------

def test_windows_by_hand():
    # stride round(128 * 0.75) = 96; x: 0, 96, then 300 - 128 = 172 (edge); y: one row of 100 px
    assert tile_windows(300, 100, 128, 0.25) == [(0, 0, 128, 100), (96, 0, 224, 100), (172, 0, 300, 100)]
    # exact fit: 256 = 2 x 128 without overlap
    assert tile_windows(256, 256, 128, 0.0) == [(0, 0, 128, 128), (128, 0, 256, 128),
                                                (0, 128, 128, 256), (128, 128, 256, 256)]
    # 256 with 25% overlap: 0, 96 and the edge-aligned 128
    assert [w[0] for w in tile_windows(256, 64, 128, 0.25)] == [0, 96, 128]


def test_image_smaller_than_a_tile_is_one_window_of_its_own_size():
    assert tile_windows(100, 50, 128, 0.2) == [(0, 0, 100, 50)]
    assert tile_windows(128, 128, 128, 0.5) == [(0, 0, 128, 128)]


@pytest.mark.parametrize("width,height,tile,overlap", [(1000, 700, 256, 0.2), (513, 512, 512, 0.0), (97, 301, 64, 0.5)])
def test_windows_cover_the_image_and_end_at_its_edges(width, height, tile, overlap):
    windows = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (min(tile, width), min(tile, height))  # never cut short
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert max(w[2] for w in windows) == width and max(w[3] for w in windows) == height
    # neighbours overlap by at least the requested share (more only at the aligned edge)
    xs = sorted({w[0] for w in windows})
    for a, b in zip(xs, xs[1:]):
        assert (a + min(tile, width) - b) >= int(tile * overlap) - 1


@pytest.mark.parametrize("tile,overlap,message", [
    (0, 0.2, "tile: expected a positive integer"),
    (-5, 0.2, "tile: expected a positive integer"),
    (64.0, 0.2, "tile: expected a positive integer"),
    (64, 1.0, r"overlap: expected a number in \[0, 1\)"),
    (64, -0.1, r"overlap: expected a number in \[0, 1\)"),
])
def test_bad_tiling_parameters(tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        tile_windows(100, 100, tile, overlap)


# --- clipping ------------------------------------------------------------------------------

def test_clip_boxes_by_hand():
    boxes = np.array([
        [10, 10, 30, 30],    # area 400; inside window (20, 0, 120, 100): x 20..30 -> 200 = 50%
        [40, 40, 50, 60],    # wholly inside
        [130, 10, 140, 20],  # outside
        [15, 15, 15, 25],    # zero width: never kept
    ], dtype=float)
    kept, clipped = clip_boxes_to_window(boxes, (20, 0, 120, 100), 0.5)
    assert kept.tolist() == [0, 1]
    np.testing.assert_allclose(clipped, [[0, 10, 10, 30], [20, 40, 30, 60]])
    kept, _ = clip_boxes_to_window(boxes, (20, 0, 120, 100), 0.51)
    assert kept.tolist() == [1]


# --- dataset round trip ----------------------------------------------------------------------

def _write_dataset(root, boxes, size=(200, 150), crowd=()):
    """One image of ``size`` with random pixels and boxes (x, y, w, h) of category 7."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, "img", "scene.png"))
    annotations = [
        {"id": 10 + i, "image_id": 5, "category_id": 7, "bbox": list(b), "area": b[2] * b[3],
         "iscrowd": int(i in crowd)}
        for i, b in enumerate(boxes)
    ]
    data = {"images": [{"id": 5, "file_name": "scene.png", "width": size[0], "height": size[1]}],
            "annotations": annotations, "categories": [{"id": 7, "name": "car"}],
            "info": {"description": "hand-made"}}
    path = os.path.join(root, "in.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, pixels


BOXES = [
    (10.0, 10.0, 20.0, 20.0),     # in the first tiles only
    (90.0, 30.0, 40.0, 10.0),     # straddles the x = 100 / 136 window borders
    (150.5, 100.25, 30.0, 25.5),  # near the bottom-right corner
    (0.0, 140.0, 200.0, 10.0),    # a long thin box across the whole width
    (60.0, 60.0, 0.0, 5.0),       # degenerate
]


def test_round_trip_every_box_in_exactly_the_tiles_that_hold_enough_of_it(tmp_path):
    in_json, pixels = _write_dataset(str(tmp_path), BOXES)
    tile, overlap, ratio = 64, 0.25, 0.3
    counts = tile_coco_dataset(in_json, str(tmp_path / "img"), str(tmp_path / "out"), tile, overlap, ratio, progress=False)
    out = json.load(open(tmp_path / "out" / "annotations.json"))
    windows = tile_windows(200, 150, tile, overlap)
    assert len(out["images"]) == len(windows) == counts["tiles"]
    assert out["categories"] == [{"id": 7, "name": "car"}] and out["info"] == {"description": "hand-made"}

    by_tile = {}
    for ann in out["annotations"]:
        by_tile.setdefault(ann["image_id"], {})[ann["source_annotation_id"]] = ann
    expected_total = 0
    for record in out["images"]:
        x0, y0 = record["tile_x0"], record["tile_y0"]
        assert record["source_image_id"] == 5 and record["source_file_name"] == "scene.png"
        assert (x0, y0, x0 + record["width"], y0 + record["height"]) in windows
        # the tile's pixels are the source's pixels
        tile_pixels = np.asarray(Image.open(tmp_path / "out" / "images" / record["file_name"]))
        np.testing.assert_array_equal(tile_pixels, pixels[y0:y0 + record["height"], x0:x0 + record["width"]])
        # expected boxes, computed here with plain arithmetic
        for i, (bx, by, bw, bh) in enumerate(BOXES):
            ix0, iy0 = max(bx, x0), max(by, y0)
            ix1, iy1 = min(bx + bw, x0 + record["width"]), min(by + bh, y0 + record["height"])
            inside = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
            held = bw * bh > 0 and inside > 0 and inside >= ratio * bw * bh
            got = by_tile.get(record["id"], {}).get(10 + i)
            assert (got is not None) == held, (record["file_name"], i)
            if held:
                expected_total += 1
                assert got["bbox"] == pytest.approx([ix0 - x0, iy0 - y0, ix1 - ix0, iy1 - iy0], abs=1e-4)
                assert got["area"] == pytest.approx((ix1 - ix0) * (iy1 - iy0), abs=1e-3)
                assert got["category_id"] == 7 and got["iscrowd"] == 0
    assert counts["tile_boxes"] == expected_total == len(out["annotations"])
    assert counts["source_boxes"] == 4 and counts["degenerate_boxes"] == 1
    assert counts["lost_boxes"] == 0 and counts["images"] == 1
    assert out["tiling"]["tile"] == 64 and out["tiling"]["overlap"] == 0.25


def test_crowd_regions_are_kept_in_every_tile_they_touch_and_empty_tiles_can_be_dropped(tmp_path):
    # one crowd region covering a sliver (5%) of the top-left tile only, one box in the middle
    in_json, _ = _write_dataset(str(tmp_path), [(60.0, 0.0, 10.0, 10.0), (80.0, 60.0, 30.0, 30.0)],
                                size=(128, 128), crowd=(0,))
    counts = tile_coco_dataset(in_json, str(tmp_path / "img"), str(tmp_path / "a"), 64, 0.0, 0.9, progress=False)
    out = json.load(open(tmp_path / "a" / "annotations.json"))
    crowd = [a for a in out["annotations"] if a["iscrowd"]]
    # windows x 0..64 and 64..128: the region (60..70) touches both, 4 px and 6 px wide
    assert sorted(a["bbox"][2] for a in crowd) == [4.0, 6.0]
    assert counts["ignore_regions"] == 1
    # the box (x 80..110, y 60..90) touches the right-hand tiles only: 4/30 of it in the top one
    # (13%), 26/30 in the bottom one (87%): both under 90%
    assert counts["tile_boxes"] == 0 and counts["lost_boxes"] == 1 and counts["partial_dropped"] == 2

    for ratio, tiles in ((0.1, 2), (0.5, 1)):
        out_dir = tmp_path / f"drop{ratio}"
        counts = tile_coco_dataset(in_json, str(tmp_path / "img"), str(out_dir), 64, 0.0, ratio,
                                   drop_empty=True, progress=False)
        out = json.load(open(out_dir / "annotations.json"))
        # a tile holding only (part of) the crowd region counts as empty
        assert counts["tiles"] == len(out["images"]) == tiles
        assert counts["empty_tiles_dropped"] == 4 - tiles
        expected = {(64, 0), (64, 64)} if tiles == 2 else {(64, 64)}
        assert {(im["tile_x0"], im["tile_y0"]) for im in out["images"]} == expected


def test_bad_dataset_inputs_are_one_line(tmp_path):
    in_json, _ = _write_dataset(str(tmp_path), BOXES)
    with pytest.raises(DatasetError, match="annotation file not found"):
        tile_coco_dataset(str(tmp_path / "nope.json"), str(tmp_path / "img"), str(tmp_path / "o"), 64, 0.2)
    with pytest.raises(DatasetError, match=r"images\[0\] refers to missing file .*scene.png"):
        tile_coco_dataset(in_json, str(tmp_path), str(tmp_path / "o"), 64, 0.2)
    data = json.load(open(in_json))
    data["images"][0]["width"] = 201
    with open(in_json, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match=r"is 201x150 in the json but 200x150 on disk"):
        tile_coco_dataset(in_json, str(tmp_path / "img"), str(tmp_path / "o"), 64, 0.2)
    assert not os.path.exists(tmp_path / "o" / "annotations.json")  # nothing half-written
    with pytest.raises(ValueError, match="min_area_ratio"):
        tile_coco_dataset(in_json, str(tmp_path / "img"), str(tmp_path / "o"), 64, 0.2, min_area_ratio=0)
    data["images"][0]["width"] = 200
    data["annotations"][2]["bbox"] = [1, 2, 3]
    with open(in_json, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match=r"annotations\[2\] needs image_id, category_id and a 4-number bbox"):
        tile_coco_dataset(in_json, str(tmp_path / "img"), str(tmp_path / "o"), 64, 0.2)
    data["annotations"][2]["bbox"] = [1, 2, 3, 4]
    data["annotations"][3]["image_id"] = 99
    with open(in_json, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match=r"annotations\[3\] refers to image id 99"):
        tile_coco_dataset(in_json, str(tmp_path / "img"), str(tmp_path / "o"), 64, 0.2)
    assert not os.path.exists(tmp_path / "o")  # checked before any tile is written


def test_cached_split_is_reused_and_rebuilt_when_parameters_or_source_change(tmp_path):
    in_json, _ = _write_dataset(str(tmp_path), BOXES)
    cache = str(tmp_path / "tiles")
    args = (in_json, str(tmp_path / "img"), cache, "d_train")
    first_json, first_root = cached_tiled_split(*args, 64, 0.25, 0.1, False)
    assert first_json.endswith("d_train-t64-o0.25-a0.1-keep/annotations.json") and os.path.isdir(first_root)
    stamp = os.stat(first_json).st_mtime_ns
    assert cached_tiled_split(*args, 64, 0.25, 0.1, False) == (first_json, first_root)
    assert os.stat(first_json).st_mtime_ns == stamp  # reused, not rewritten
    other_json, _ = cached_tiled_split(*args, 64, 0.5, 0.1, False)
    assert other_json != first_json and os.path.isfile(other_json)
    # a changed source json invalidates the cache
    data = json.load(open(in_json))
    data["annotations"] = data["annotations"][:1]
    with open(in_json, "w") as f:
        json.dump(data, f)
    again_json, _ = cached_tiled_split(*args, 64, 0.25, 0.1, False)
    assert again_json == first_json
    assert len(json.load(open(again_json))["annotations"]) < len(json.load(open(other_json))["annotations"])


# --- CLI ---------------------------------------------------------------------------------

def test_ugs_tile_cli_on_the_tiny_dataset(tiny_dataset, tmp_path, capsys):
    in_json = os.path.join(tiny_dataset, "annotations", "train.json")
    out = tmp_path / "tiles"
    ugs_tile(["dataset", in_json, os.path.join(tiny_dataset, "train"), "--out", str(out),
              "--tile", "64", "--overlap", "0.25", "--min-area-ratio", "0.2"])
    summary = capsys.readouterr().out
    source = json.load(open(in_json))
    tiled = json.load(open(out / "annotations.json"))
    # 128 px images, 64 px tiles at stride 48: x/y starts 0, 48, 64 -> 9 tiles per image
    assert f"{len(source['images'])} images -> {9 * len(source['images'])} tiles" in summary
    assert f"{len(tiled['annotations'])} kept in tiles" in summary
    assert len(tiled["images"]) == 9 * len(source["images"])
    for record in tiled["images"]:
        assert os.path.isfile(out / "images" / record["file_name"])
        assert record["width"] == record["height"] == 64
    # a second run refuses to overwrite, --force allows it
    with pytest.raises(SystemExit, match="annotations.json exists"):
        ugs_tile(["dataset", in_json, os.path.join(tiny_dataset, "train"), "--out", str(out)])
    ugs_tile(["dataset", in_json, os.path.join(tiny_dataset, "train"), "--out", str(out),
              "--tile", "64", "--drop-empty", "--force"])
    assert "empty dropped" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--tile", "0"], "ugs-tile: --tile: expected a positive integer, got 0"),
    (["--overlap", "1"], r"ugs-tile: --overlap: expected a number in \[0, 1\), got 1.0"),
    (["--min-area-ratio", "1.5"], r"ugs-tile: --min-area-ratio: expected a number in \(0, 1\]"),
])
def test_ugs_tile_cli_rejects_bad_parameters(tiny_dataset, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        ugs_tile(["dataset", os.path.join(tiny_dataset, "annotations", "train.json"),
                  os.path.join(tiny_dataset, "train"), "--out", str(tmp_path / "o"), *extra])
    assert not os.path.exists(tmp_path / "o" / "annotations.json")


def test_ugs_tile_cli_missing_files(tiny_dataset, tmp_path):
    with pytest.raises(SystemExit, match=r"ugs-tile: .*absent.json: annotation file not found"):
        ugs_tile(["dataset", str(tmp_path / "absent.json"), os.path.join(tiny_dataset, "train"),
                  "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="ugs-tile: IMAGE_DIR .*nowhere: directory not found"):
        ugs_tile(["dataset", os.path.join(tiny_dataset, "annotations", "train.json"),
                  str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])


# --- config -------------------------------------------------------------------------------

def test_tiling_preset_and_bad_overrides_name_the_key():
    from ugs_d2.cli.validate import validate_command_line
    from ugs_d2.config import ConfigError, to_detectron2_cfg

    cfg = validate_command_line(["tiling=on"])
    d2 = to_detectron2_cfg(cfg)
    assert d2.TILING.TRAIN.ENABLED and d2.TILING.TEST.ENABLED
    assert (d2.TILING.TILE, d2.TILING.OVERLAP) == (128, 0.25)
    assert d2.INPUT.MIN_SIZE_TRAIN == (128,) and d2.INPUT.MAX_SIZE_TRAIN == 128  # tiles not upscaled
    off = to_detectron2_cfg(validate_command_line([]))
    assert not off.TILING.TRAIN.ENABLED and not off.TILING.TEST.ENABLED
    # the input sizes follow tiling.tile
    assert to_detectron2_cfg(validate_command_line(["tiling=on", "tiling.tile=64"])).INPUT.MAX_SIZE_TEST == 64
    for override, message in [
        ("tiling.overlap=1.5", r"tiling.overlap: expected a number in \[0, 1\)"),
        ("tiling.tile=0", "tiling.tile: expected a positive integer"),
        ("tiling.test.merge=wbf", "tiling.test.merge: expected nms or nmm"),
        ("tiling.test.metric=giou", "tiling.test.metric: expected iou or ios"),
        ("tiling.test.batch_size=0", "tiling.test.batch_size: expected a positive integer"),
        ("tiling.train.min_area_ratio=0", r"tiling.train.min_area_ratio: expected a number in \(0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_command_line(["tiling=on", override])
