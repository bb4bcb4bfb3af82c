"""Small-object augmentations: boxes stay consistent with the pixels.

Every image here is a flat background with solid rectangles of unique colours at known boxes, one
class per rectangle, so a box after an augmentation can be checked against where its colour ended
up (class k <-> COLOURS[k]).
"""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_RUN, run_ugs_train
from detectron2.data import DatasetFromList, MapDataset
from detectron2.data import transforms as T
from PIL import Image

from ugs_d2.cli.augment import main as ugs_augment
from ugs_d2.data.augment import (
    MOSAIC_FILL,
    MosaicSettings,
    RandomRotationWithBoxes,
    SmallObjectSafeCrop,
    clip_boxes,
    compose_mosaic,
    crop_size,
    mosaic_placement,
    window_cuts_boxes,
)
from ugs_d2.data.datasets import load_coco_detection
from ugs_d2.data.mapper import MIN_BOX_SIDE, AugmentingDatasetMapper

BACKGROUND = (40, 40, 40)
# 24 distinct, saturated colours (RGB), none equal to the background or to the mosaic fill
COLOURS = [
    (int(r), int(g), int(b))
    for r in (90, 170, 250) for g in (60, 140, 220) for b in (80, 200)
][:24]
assert len(set(COLOURS)) == len(COLOURS) and BACKGROUND not in COLOURS


def _draw(h, w, boxes, colours):
    """(h, w, 3) uint8 RGB image: background plus a solid rectangle per integer XYXY box."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    for (x0, y0, x1, y1), colour in zip(boxes, colours):
        image[y0:y1, x0:x1] = colour
    return image


def _region(image, colour, tolerance=0):
    """XYXY extent of the pixels within ``tolerance`` of ``colour`` (None if there are none)."""
    mask = (np.abs(image.astype(int) - np.array(colour)).max(axis=2) <= tolerance)
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)


def _write_dataset(root, images):
    """COCO json + PNGs from [(image array, [boxes], [class indices])]; category id = class + 1."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(len(COLOURS))]}
    for image_id, (image, boxes, classes) in enumerate(images, start=1):
        name = f"{image_id}.png"
        Image.fromarray(image).save(os.path.join(root, "images", name))
        coco["images"].append({"id": image_id, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for (x0, y0, x1, y1), cls in zip(boxes, classes):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                                        "category_id": cls + 1, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return load_coco_detection(path, os.path.join(root, "images"))


def _mapper(augmentations, **kwargs):
    return AugmentingDatasetMapper(True, augmentations=augmentations, image_format="RGB", **kwargs)


def _output(out):
    """(image (H, W, 3), boxes (N, 4), classes (N,)) of a mapper output."""
    inst = out["instances"]
    return out["image"].permute(1, 2, 0).numpy(), inst.gt_boxes.tensor.numpy(), inst.gt_classes.numpy()


# ------------------------------------------------------------------------------- pure geometry


def test_window_cuts_boxes_hand_cases():
    window = (10, 10, 50, 50)
    boxes = np.array([
        [20, 20, 30, 30],  # inside
        [60, 60, 70, 70],  # outside
        [45, 20, 55, 30],  # straddles the right border: cut
        [50, 20, 60, 30],  # touches the right border from outside
        [10, 10, 20, 20],  # inside, on the top-left corner
        [0, 0, 100, 100],  # encloses the window: cut
        [5, 5, 15, 8],  # overlaps in x only
    ])
    assert window_cuts_boxes(window, boxes).tolist() == [False, False, True, False, False, True, False]
    assert window_cuts_boxes(window, np.zeros((0, 4))).shape == (0,)


def test_clip_boxes_and_kept_area():
    clipped, ratio = clip_boxes(np.array([[0, 0, 10, 10], [30, 30, 40, 40], [5, 5, 5, 9]]), (5, 0, 20, 20))
    assert clipped.tolist() == [[5, 0, 10, 10], [20, 20, 20, 20], [5, 5, 5, 9]]
    assert ratio.tolist() == [0.5, 0.0, 0.0]


def test_crop_size():
    assert crop_size((100, 200), (0.5, 0.25), "relative") == (50, 50)
    assert crop_size((100, 200), (64, 300), "absolute") == (64, 200)  # never larger than the image
    with pytest.raises(ValueError):
        crop_size((100, 200), (1, 1), "bogus")


def test_mosaic_placement_hand_computed():
    canvas, center = (100, 100), (40, 60)
    # a small image fits in its quadrant, touching the centre with the matching corner
    assert mosaic_placement(0, center, canvas, (50, 30)) == ((0, 0, 30, 50), (10, 10, 40, 60))
    # a large image is cut to the quadrant; the part next to the centre is kept
    big = (80, 80)
    assert mosaic_placement(0, center, canvas, big) == ((40, 20, 80, 80), (0, 0, 40, 60))
    assert mosaic_placement(1, center, canvas, big) == ((0, 20, 60, 80), (40, 0, 100, 60))
    assert mosaic_placement(2, center, canvas, big) == ((40, 0, 80, 40), (0, 60, 40, 100))
    assert mosaic_placement(3, center, canvas, big) == ((0, 0, 60, 40), (40, 60, 100, 100))


def _three_boxes(h, w, k):
    """3 non-overlapping integer boxes in an h x w image (h, w >= 50), varying with k."""
    return [[2 + k, 3, 14 + k, 13 + k],
            [w // 2 - 5, h // 2 - 8, w // 2 + 7 + k, h // 2 + 4],
            [w - 20, h - 16 + k, w - 3, h - 2]]


def test_compose_mosaic_boxes_follow_their_colours():
    # four images of different sizes, 3 rectangles each; some get cut by the quadrant borders
    sizes = [(60, 80), (70, 50), (64, 64), (90, 90)]
    sources, boxes, colour_of = [], [], {}
    for k, (h, w) in enumerate(sizes):
        b = _three_boxes(h, w, k)
        for j in range(3):
            colour_of[(k, j)] = COLOURS[3 * k + j]
        sources.append(_draw(h, w, b, [colour_of[(k, j)] for j in range(3)]))
        boxes.append(np.array(b, dtype=float))
    canvas, out_boxes, origin = compose_mosaic(sources, boxes, (100, 120), (50, 45), min_area_ratio=0.5)

    assert canvas.shape == (100, 120, 3)
    assert ((out_boxes >= 0) & (out_boxes <= [120, 100, 120, 100])).all()
    kept = {tuple(o) for o in origin.tolist()}
    for (k, j), colour in colour_of.items():
        region = _region(canvas, colour)
        (x0, y0, x1, y1) = boxes[k][j]
        visible = 0.0 if region is None else np.count_nonzero((canvas == colour).all(axis=2)) / ((x1 - x0) * (y1 - y0))
        if (k, j) in kept:  # the box is exactly the visible part of its rectangle
            i = [tuple(o) for o in origin.tolist()].index((k, j))
            assert np.array_equal(out_boxes[i], region), (k, j)
            assert visible >= 0.5
        else:  # dropped: it lost more than half of its area (or all of it)
            assert visible < 0.5, (k, j)
    assert len(kept) >= 4  # the layout keeps a fair share
    assert (canvas == MOSAIC_FILL).all(axis=2).any()  # some canvas is not covered (images smaller)


# ------------------------------------------------------------------------------- crop


def _crowded_image(seed):
    """160x160: 14 small boxes (6-16 px) on a grid, one large (70x40) box; class = index."""
    rng = np.random.default_rng(seed)
    boxes = []
    for i in range(14):
        cx, cy = 20 + 40 * (i % 4) + rng.integers(-6, 6), 20 + 40 * (i // 4) + rng.integers(-6, 6)
        s = int(rng.integers(6, 17))
        boxes.append([int(cx - s // 2), int(cy - s // 2), int(cx - s // 2 + s), int(cy - s // 2 + s)])
    boxes[-1] = [80, 110, 150, 150]  # the large one (longer side 70 > 32)
    return _draw(160, 160, boxes, COLOURS[:15]), boxes


def test_crop_never_cuts_a_small_box_and_boxes_match_pixels(tmp_path):
    image, boxes = _crowded_image(0)
    records = _write_dataset(str(tmp_path), [(image, boxes, list(range(len(boxes))))])
    mapper = _mapper([SmallObjectSafeCrop((0.5, 0.5), "relative", small_object_max_side=32)],
                     min_box_side=MIN_BOX_SIDE)
    cropped = 0
    for seed in range(30):
        np.random.seed(seed)
        out_image, out_boxes, out_classes = _output(mapper(records[0]))
        if out_image.shape[:2] == (160, 160):
            continue  # fell back to no crop: allowed
        cropped += 1
        assert out_image.shape[:2] == (80, 80)
        for cls in range(len(boxes)):
            region = _region(out_image, COLOURS[cls])
            present = cls in out_classes.tolist()
            small = cls < len(boxes) - 1
            if small:  # wholly in (same size) or wholly out
                w, h = boxes[cls][2] - boxes[cls][0], boxes[cls][3] - boxes[cls][1]
                assert region is None or (region[2] - region[0], region[3] - region[1]) == (w, h), (seed, cls)
            # kept iff visible and more than MIN_BOX_SIDE px on both sides (a 1-px sliver is dropped)
            visible = region is not None and min(region[2] - region[0], region[3] - region[1]) > MIN_BOX_SIDE
            assert present == visible, (seed, cls)
            if present:  # the box is exactly the coloured region (the large one: clipped)
                assert np.array_equal(out_boxes[out_classes.tolist().index(cls)], region), (seed, cls)
        assert len(out_classes) >= 1  # windows are drawn around a box
    assert cropped >= 20


def test_crop_falls_back_to_no_crop_when_every_window_cuts():
    # small boxes tile the whole image: any 30x30 window border cuts one
    boxes = np.array([[x, y, x + 20, y + 20] for x in range(0, 100, 20) for y in range(0, 100, 20)], float)
    aug = SmallObjectSafeCrop((30, 30), "absolute", small_object_max_side=32, max_tries=20)
    np.random.seed(0)
    assert isinstance(aug.get_transform(np.zeros((100, 100, 3), np.uint8), boxes), T.NoOpTransform)
    # the same boxes count as large under a lower threshold: now the crop happens
    aug = SmallObjectSafeCrop((30, 30), "absolute", small_object_max_side=10)
    assert isinstance(aug.get_transform(np.zeros((100, 100, 3), np.uint8), boxes), T.CropTransform)


# ------------------------------------------------------------------------------- rotation


def test_rotation_by_90_degrees_maps_corners_exactly(tmp_path):
    boxes = [[10, 4, 30, 12], [40, 44, 60, 60]]
    image = _draw(64, 64, boxes, COLOURS[:2])
    records = _write_dataset(str(tmp_path), [(image, boxes, [0, 1])])
    tfm = RandomRotationWithBoxes.transform_for(64, 64, 90.0, interp=cv2.INTER_NEAREST)
    out_image, out_boxes, out_classes = _output(_mapper([tfm])(records[0]))
    # 90 degrees counter-clockwise about (32, 32): (x, y) -> (y, 64 - x)
    expected = {0: [4, 34, 12, 54], 1: [44, 4, 60, 24]}
    for cls, box in zip(out_classes.tolist(), out_boxes):
        np.testing.assert_allclose(box, expected[cls], atol=1e-4)
        np.testing.assert_allclose(_region(out_image, COLOURS[cls]), expected[cls])
    assert sorted(out_classes.tolist()) == [0, 1]


def test_random_rotation_boxes_follow_the_pixels(tmp_path):
    # rectangles near the centre stay inside for |angle| <= 30
    boxes = [[50, 50, 70, 60], [80, 70, 88, 92], [60, 80, 72, 86], [40, 66, 46, 78]]
    image = _draw(128, 128, boxes, COLOURS[:4])
    records = _write_dataset(str(tmp_path), [(image, boxes, [0, 1, 2, 3])])
    aug = RandomRotationWithBoxes(30.0, interp=cv2.INTER_NEAREST)
    mapper = _mapper([aug], min_box_side=MIN_BOX_SIDE)
    angles = []
    for seed in range(6):
        np.random.seed(seed)
        angles.append(aug.get_transform(image).angle)
        np.random.seed(seed)
        out_image, out_boxes, out_classes = _output(mapper(records[0]))
        assert sorted(out_classes.tolist()) == [0, 1, 2, 3]
        for cls, box in zip(out_classes.tolist(), out_boxes):
            # the box of the rotated corners is tight to the rotated rectangle (1-2 px of rasterisation)
            np.testing.assert_allclose(box, _region(out_image, COLOURS[cls]), atol=2.0)
    assert all(-30 <= a <= 30 for a in angles) and len({round(a, 3) for a in angles}) == 6


def test_rotation_clips_boxes_and_drops_degenerate_ones(tmp_path):
    # 64x64, rotated 45 degrees: a corner box leaves the image entirely, an edge box is clipped
    boxes = [[0, 0, 6, 6], [28, 0, 36, 10], [28, 28, 36, 36]]
    image = _draw(64, 64, boxes, COLOURS[:3])
    records = _write_dataset(str(tmp_path), [(image, boxes, [0, 1, 2])])
    tfm = RandomRotationWithBoxes.transform_for(64, 64, 45.0, interp=cv2.INTER_NEAREST)
    out_image, out_boxes, out_classes = _output(_mapper([tfm], min_box_side=MIN_BOX_SIDE)(records[0]))
    assert _region(out_image, COLOURS[0]) is None and 0 not in out_classes.tolist()
    assert sorted(out_classes.tolist()) == [1, 2]
    assert ((out_boxes >= 0) & (out_boxes <= 64)).all()  # clipped to the image
    for cls, box in zip(out_classes.tolist(), out_boxes):
        np.testing.assert_allclose(box, _region(out_image, COLOURS[cls]), atol=2.0)


def test_min_box_side_drops_slivers(tmp_path):
    # a 0.5 px wide box survives detectron2's rule but not MIN_BOX_SIDE
    image = _draw(32, 32, [[4, 4, 20, 20]], COLOURS[:1])
    records = _write_dataset(str(tmp_path), [(image, [[4, 4, 20, 20]], [0])])
    records[0]["annotations"].append(dict(records[0]["annotations"][0], bbox=[25.0, 4.0, 0.5, 10.0], category_id=1))
    keep_all = _mapper([T.NoOpTransform()])(records[0])
    drop = _mapper([T.NoOpTransform()], min_box_side=MIN_BOX_SIDE)(records[0])
    assert keep_all["instances"].gt_classes.tolist() == [0, 1]
    assert drop["instances"].gt_classes.tolist() == [0]


# ------------------------------------------------------------------------------- mosaic (mapper)


def _mosaic_dataset(root):
    """4 images (different sizes), 3 non-overlapping boxes each, 12 classes/colours."""
    images = []
    for k, (h, w) in enumerate([(96, 96), (80, 120), (120, 72), (64, 64)]):
        boxes = _three_boxes(h, w, k)
        classes = [3 * k + j for j in range(3)]
        images.append((_draw(h, w, boxes, [COLOURS[c] for c in classes]), boxes, classes))
    return _write_dataset(root, images)


def test_mosaic_mapper_boxes_inside_canvas_and_on_their_colour(tmp_path):
    records = _mosaic_dataset(str(tmp_path))
    source_area = {a["category_id"]: a["bbox"][2] * a["bbox"][3] for r in records for a in r["annotations"]}
    mapper = _mapper([], mosaic=MosaicSettings(prob=1.0, size=(100, 110)), mosaic_pool=records,
                     seed=0, min_box_side=MIN_BOX_SIDE)
    total = 0
    for i in range(8):
        out = mapper(records[i % 4])
        image, boxes, classes = _output(out)
        assert image.shape == (100, 110, 3) and (out["height"], out["width"]) == (100, 110)
        assert len(out["mosaic_of"]) == 4 and records[i % 4]["image_id"] in out["mosaic_of"]
        assert ((boxes >= 0) & (boxes <= [110, 100, 110, 100])).all()
        for box, cls in zip(boxes, classes.tolist()):
            x0, y0, x1, y1 = box.astype(int)
            np.testing.assert_array_equal(box, [x0, y0, x1, y1])  # integer shifts and cuts
            assert x1 > x0 and y1 > y0
            # the box covers only pixels of its own rectangle (the visible part of it)
            assert (image[y0:y1, x0:x1] == COLOURS[cls]).all(), (i, cls)
            # and at least min_area_ratio of the source rectangle (class -> one source box)
            assert 0.5 * source_area[cls] <= (x1 - x0) * (y1 - y0) <= source_area[cls], (i, cls)
        total += len(classes)
    assert total > 8


def test_mosaic_is_deterministic_per_seed_and_differs_per_worker(tmp_path):
    records = _mosaic_dataset(str(tmp_path))

    def run(seed, num_workers):
        mapper = _mapper([], mosaic=MosaicSettings(prob=1.0), mosaic_pool=records, seed=seed)
        # the first record twice: worker 0 and worker 1 each map it first
        dataset = MapDataset(DatasetFromList([records[0], records[0], records[1], records[2]], copy=True), mapper)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
        return [(tuple(d["mosaic_of"]), d["image"].clone()) for d in loader]

    first, again, other = run(0, 2), run(0, 2), run(1, 2)
    assert [a[0] for a in first] == [a[0] for a in again]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert [a[0] for a in first] != [a[0] for a in other]
    # workers do not share one stream: the same record in worker 0 and worker 1 gives different mosaics
    assert first[0][0] != first[1][0] or not torch.equal(first[0][1], first[1][1])


def test_mosaic_needs_a_pool():
    with pytest.raises(ValueError, match="mosaic_pool"):
        _mapper([], mosaic=MosaicSettings(prob=1.0))


# ------------------------------------------------------------------------------- CLI + training


def test_ugs_augment_writes_a_grid(tmp_path, capsys):
    records_root = str(tmp_path / "data")
    _mosaic_dataset(records_root)
    out = tmp_path / "grid.png"
    ugs_augment([os.path.join(records_root, "train.json"), os.path.join(records_root, "images"),
                 "--aug", "rotation", "--n", "4", "--scale", "1", "--out", str(out)])
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 3 and grid.shape[0] > 64 and grid.shape[1] > 64
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="ugs-augment: .*missing"):
        ugs_augment([str(tmp_path / "missing.json"), records_root, "--aug", "crop", "--out", str(out)])
    with pytest.raises(SystemExit, match="ugs-augment: --n: expected at least 1"):
        ugs_augment(["--aug", "crop", "--n", "0", "--out", str(out)])


def test_training_with_small_object_augmentations_runs(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = TINY_RUN + ["augment=small_objects", "schedule.max_iter=2", "schedule.steps=[1]",
                       f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "wandb.enabled=false"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "done").is_file()
    log = (run_dir / "log.txt").read_text()
    assert "AugmentingDatasetMapper" in log and "SmallObjectSafeCrop" in log and "RandomRotationWithBoxes" in log
