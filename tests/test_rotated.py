"""Oriented boxes: projects/UGS_Rotated (UGS on rotated Faster R-CNN), the oriented data pipeline
and the rotated-IoU evaluation.

The detector and the evaluator need detectron2's compiled rotated ops: those tests run on the
source build (CI builds upstream main) and skip on the registry fallback, where instead the
one-line refusal is tested. The data-side pieces (synthetic oriented objects, the reader's rbox,
the mapper) are numpy/torch and run on both builds.
"""
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, run_ugs_train
from detectron2.data import transforms as T
from detectron2.structures import BoxMode, Instances, RotatedBoxes
from detectron2.utils.events import EventStorage

from ugs_d2 import compat
from ugs_d2.config import ConfigError, to_detectron2_cfg
from ugs_d2.data import synth
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.data.datasets import load_coco_detection
from ugs_d2.data.oriented import oriented_annotations
from ugs_d2.harness.compose import compose

needs_ops = pytest.mark.skipif(not compat.HAS_COMPILED_OPS,
                               reason="rotated ops are compiled: registry fallback (make test-upstream)")
SMALL = [o for o in TINY_RUN if o.startswith("model.")]


@pytest.fixture(scope="module")
def oriented_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data") / "synth_oriented")
    synth.generate(root, num_train=8, num_val=4, seed=0, config=synth.SynthConfig(image_size=128, oriented=True),
                   progress=False)
    return root


def rotated_cfg(*overrides, num_classes=6):
    return to_detectron2_cfg(compose(["model=rotated_r18_fpn", "device=cpu", *SMALL, *overrides]),
                             num_classes=num_classes)


# ---- data: numpy/torch only, both builds --------------------------------------------------------

def test_oriented_synth_objects_carry_their_minimum_area_rectangle(oriented_dataset):
    with open(f"{oriented_dataset}/annotations/train.json") as f:
        coco = json.load(f)
    anns = coco["annotations"]
    assert anns and all(len(a["rbox"]) == 5 for a in anns)
    angles = np.array([a["rbox"][4] for a in anns])
    assert angles.min() >= -90 and angles.max() < 90 and angles.std() > 20  # really turned
    for a in anns:
        x, y, w, h = a["bbox"]
        cx, cy, rw, rh, _ = a["rbox"]
        assert a["area"] == pytest.approx(rw * rh, abs=0.02)  # the oriented box's area
        if x > 0 and y > 0 and x + w < 128 and y + h < 128:  # not clipped: same object, same box
            enclosing = BoxMode.convert([cx, cy, rw, rh, a["rbox"][4]], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
            assert enclosing[0] <= x + 0.05 and enclosing[2] >= x + w - 0.05, (a, enclosing)
            assert rw * rh <= w * h + 0.5  # the minimum-area rectangle is no bigger than the upright box


def test_the_reader_keeps_rbox_and_refuses_a_bad_one(oriented_dataset, tmp_path):
    records = load_coco_detection(f"{oriented_dataset}/annotations/train.json", f"{oriented_dataset}/train")
    assert all(len(a["rbox"]) == 5 for r in records for a in r["annotations"])
    with open(f"{oriented_dataset}/annotations/train.json") as f:
        coco = json.load(f)
    coco["annotations"][2]["rbox"] = [1, 2, 3]
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"bad.json: annotations\[2\].rbox: expected 5 finite numbers"):
        load_coco_detection(str(tmp_path / "bad.json"), f"{oriented_dataset}/train")


def test_oriented_annotations_follow_detectron2s_resize_and_flip_by_hand():
    record = {"file_name": "x.png", "annotations": [
        {"rbox": [30.0, 20.0, 10.0, 4.0, 30.0], "category_id": 2, "iscrowd": 0},
        {"rbox": [5.0, 5.0, 2.0, 2.0, 0.0], "category_id": 1, "iscrowd": 1},  # crowd: dropped
    ]}
    transforms = T.TransformList([T.ResizeTransform(40, 60, 80, 120), T.HFlipTransform(120)])  # x2, then flip
    (ann,) = oriented_annotations(record, transforms)
    cx, cy, w, h, angle = ann["bbox"]
    assert ann["bbox_mode"] == BoxMode.XYWHA_ABS and ann["category_id"] == 2
    # resize x2 (isotropic: sizes double, angle kept), then flip: x -> 120 - x, angle -> -angle
    assert (cx, cy, w, h, angle) == pytest.approx((120 - 60, 40, 20, 8, -30))
    with pytest.raises(DatasetError, match=r"x.png: an annotation without 'rbox'"):
        oriented_annotations({"file_name": "x.png", "annotations": [{"bbox": [0, 0, 1, 1], "category_id": 0}]},
                             transforms)


@pytest.mark.skipif(compat.HAS_COMPILED_OPS, reason="the refusal is for the registry fallback")
def test_on_the_fallback_the_rotated_preset_is_one_line(oriented_dataset, tmp_path):
    with pytest.raises(ConfigError) as info:
        rotated_cfg()
    assert "compiled rotated ops" in str(info.value) and "D2_SOURCE" in str(info.value)
    proc = run_ugs_train(TINY_RUN + ["model=rotated_r18_fpn", "dataset=synth_oriented",
                                     f"dataset.root={oriented_dataset}", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=str(tmp_path))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ugs-train: model.project UGS_Rotated: oriented boxes need detectron2's compiled") and \
        "make install D2_SOURCE=" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ---- the detector: source build only ------------------------------------------------------------

@needs_ops
@pytest.mark.parametrize("ugs, proposal_generator, roi_heads", [
    ("off", "RRPN", "RROIHeads"), ("ce_in", "UGSRRPN", "UGSRROIHeads"), ("full", "UGSRRPN", "UGSRROIHeads")])
def test_presets_pick_the_rotated_classes(ugs, proposal_generator, roi_heads):
    cfg = rotated_cfg(f"ugs={ugs}")
    assert (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.ROI_HEADS.NAME) == (proposal_generator, roi_heads)
    assert cfg.MODEL.ANCHOR_GENERATOR.NAME == "RotatedAnchorGenerator" and cfg.INPUT.ORIENTED_BOXES
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignRotated"


@needs_ops
@pytest.mark.parametrize("override, message", [
    ("model.input.random_flip=vertical", "model.input.random_flip vertical: detectron2 has no vertical flip"),
    ("model.rotated.rpn_angle_range=0", "model.rotated.rpn_angle_range must be > 0"),
    ("model.rotated.roi_bbox_reg_weights=[10,10,5,5]", "model.rotated.roi_bbox_reg_weights needs 5 numbers"),
    ("augment=small_objects", "augment.* (mosaic, crop, rotation) and input=native are not supported"),
    ("tiling=on", "tiling.train / tiling.test are not supported with oriented boxes yet (cut the images beforehand with ugs-tile"),
])
def test_what_oriented_boxes_cannot_do_yet_is_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        rotated_cfg("ugs=full", override)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@needs_ops
def test_the_angle_has_its_own_grid_and_a_training_step_is_finite():
    from detectron2.modeling import build_model

    cfg = rotated_cfg("ugs=full")
    model = build_model(cfg)
    rpn, predictor = model.proposal_generator, model.roi_heads.box_predictor
    K = cfg.MODEL.UGS.RPN.NUM_INTERVALS + 1
    assert rpn.localization.num_coords == 5 and rpn.localization.angle_grid.abs().max() == pytest.approx(math.pi / 4)
    anchors_per_position = 3 * 3  # aspect ratios x anchor angles
    assert rpn.rpn_head.anchor_deltas.out_channels == anchors_per_position * 5 * K
    assert predictor.box_dim == 5 and predictor.bbox_pred.out_features == 6 * 5 * (cfg.MODEL.UGS.ROI.NUM_INTERVALS + 1)
    model.train()
    torch.manual_seed(0)
    instances = Instances((128, 128))
    instances.gt_boxes = RotatedBoxes(torch.tensor([[30.0, 40.0, 20.0, 8.0, 30.0], [80.0, 70.0, 12.0, 12.0, -45.0]]))
    instances.gt_classes = torch.tensor([0, 3])
    with EventStorage(0):
        losses = model([{"image": torch.rand(3, 128, 128) * 255, "instances": instances}])
    assert {"loss_rpn_loc", "loss_box_reg", "loss_um_rpn", "loss_um_roi", "loss_ur"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 128, 128) * 255, "height": 128, "width": 128}])[0]["instances"]
    assert isinstance(out.pred_boxes, RotatedBoxes) and out.pred_boxes.tensor.shape[1] == 5


@needs_ops
def test_oriented_evaluation_by_hand():
    """Perfect oriented detections give AP 100; the same boxes turned by 90 degrees about a
    non-square's centre are misses (rotated IoU, not the enclosing box's)."""
    from ugs_d2.evaluation.small_object import evaluate_detections

    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 6, 45.0], "area": 180.0,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 8, 8, 10.0], "area": 64.0,
                           "iscrowd": 0}]}
    perfect = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    results = evaluate_detections(gt, perfect, bucket_sets=["soda"], max_dets=100, oriented=True)
    assert results["AP"] == pytest.approx(100.0) and results["APeS"] == pytest.approx(100.0)  # 64 <= 12^2
    turned = [dict(perfect[0], bbox=[50, 50, 30, 6, -45.0]), perfect[1]]
    half = evaluate_detections(gt, turned, bucket_sets=["soda"], max_dets=100, oriented=True)
    assert half["APrS"] == 0.0  # the elongated object (180 px^2: rS) is missed when turned


@needs_ops
@pytest.mark.slow  # ~1-2 min on 2 cores: two tiny trainings of the rotated detector
def test_ugs_train_rotated_off_and_full_on_oriented_data(oriented_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_ugs_train(
        ["-m", "ugs=off,full", "model=rotated_r18_fpn", "dataset=synth_oriented", "evaluation=soda_a",
         "evaluation.max_dets=100", *TINY_RUN, f"dataset.root={oriented_dataset}", "wandb.enabled=false",
         f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.runtime.choices.ugs}"],
        cwd=str(tmp_path), timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for ugs in ("off", "full"):
        results = json.loads((sweep / ugs / "results.json").read_text())
        assert {"AP", "AP50", "APs", "APeS", "APrS", "APgS", "APN"} <= set(results), (ugs, sorted(results))
        assert "rotated IoU" in (sweep / ugs / "log.txt").read_text()


def test_an_oriented_box_cut_by_a_tile_by_hand():
    from ugs_d2.boxes import clip_polygon, polygon_area, rotated_box_corners
    from ugs_d2.data.tiling import oriented_in_window

    diamond = [10.0, 10.0, 8.0, 8.0, 45.0]  # a square turned 45 degrees: corners at distance 4*sqrt(2)
    assert polygon_area(rotated_box_corners(diamond)) == pytest.approx(64)
    fraction, xyxy, rbox = oriented_in_window(diamond, (10, 0, 40, 40))  # the right half
    assert fraction == pytest.approx(0.5)
    r = 4 * math.sqrt(2)
    assert xyxy == pytest.approx([0, 10 - r, r, 10 + r])  # window coordinates
    assert rbox[2] * rbox[3] == pytest.approx(64)  # a right isosceles triangle's rectangle: its legs
    inside, _, shifted = oriented_in_window(diamond, (2, 2, 30, 30))  # wholly inside: just moved
    assert inside == pytest.approx(1) and shifted[:2] == pytest.approx([8, 8]) and shifted[2] * shifted[3] == pytest.approx(64)
    assert oriented_in_window(diamond, (30, 30, 50, 50))[0] == 0.0
    assert len(clip_polygon(rotated_box_corners(diamond), (30, 30, 50, 50))) == 0


def test_ugs_tile_cuts_oriented_boxes_as_polygons(oriented_dataset, tmp_path):
    from ugs_d2.boxes import rotated_box_corners
    from ugs_d2.data.tiling import tile_coco_dataset

    counts = tile_coco_dataset(f"{oriented_dataset}/annotations/train.json", f"{oriented_dataset}/train",
                               str(tmp_path / "tiles"), tile=64, overlap=0.25, min_area_ratio=0.3, progress=False)
    with open(tmp_path / "tiles" / "annotations.json") as f:
        tiled = json.load(f)
    with open(f"{oriented_dataset}/annotations/train.json") as f:
        source = {a["id"]: a for a in json.load(f)["annotations"]}
    assert counts["tile_boxes"] == len(tiled["annotations"]) > 0
    moved = 0
    for ann in tiled["annotations"]:
        tile = next(i for i in tiled["images"] if i["id"] == ann["image_id"])
        whole = source[ann["source_annotation_id"]]["rbox"]
        # the clipped polygon's rectangle: no bigger than the whole box's, area = its w * h
        assert ann["rbox"][2] * ann["rbox"][3] <= whole[2] * whole[3] * (1 + 1e-6) + 1e-3
        assert ann["area"] == pytest.approx(ann["rbox"][2] * ann["rbox"][3], rel=1e-5)
        shifted = [whole[0] - tile["tile_x0"], whole[1] - tile["tile_y0"], *whole[2:]]
        if rotated_box_corners(shifted).min() > 0 and rotated_box_corners(shifted).max() < 64:
            moved += 1  # wholly inside its tile: the same rectangle, moved (w/h may swap with angle +-90)
            got, want = (sorted(np.round(rotated_box_corners(b), 1).tolist()) for b in (ann["rbox"], shifted))
            assert np.allclose(got, want, atol=0.15), (got, want)
    assert moved > 0


@needs_ops
def test_a_diverging_rotated_run_is_one_line(oriented_dataset, tmp_path):
    """A huge learning rate: the rotated boxes blow up before any loss is non-finite, and
    detectron2's matcher asserts on their NaN IoUs; still the one 'training diverged' line."""
    from test_bad_inputs import assert_one_line_failure

    proc = run_ugs_train(TINY_RUN + ["model=rotated_r18_fpn", "dataset=synth_oriented", f"dataset.root={oriented_dataset}",
                                     "evaluation.max_dets=100", "schedule.base_lr=1e6", "schedule.warmup_iters=0",
                                     "schedule.max_iter=20", "wandb.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=str(tmp_path))
    assert_one_line_failure(proc, "ugs-train", "training diverged:", "at iteration")


def test_the_table3_preset_needs_the_schedule_lengths(tmp_path):
    """configs/experiment/paper_table3_soda_a.yaml: the epoch length depends on the tile count,
    so schedule=soda_a_1x leaves it mandatory: one line naming the key (on both builds)."""
    with pytest.raises(ConfigError, match=r"^schedule\.(max_iter|steps|checkpoint_period): missing"):
        to_detectron2_cfg(compose(["+experiment=paper_table3_soda_a"]), num_classes=9)


@needs_ops
@pytest.mark.parametrize("ugs, proposal_generator", [("off", "RRPN"), ("full", "UGSRRPN")])
def test_the_table3_preset_converts_with_its_lengths(ugs, proposal_generator):
    cfg = to_detectron2_cfg(compose(["+experiment=paper_table3_soda_a", f"ugs={ugs}", "schedule.max_iter=1200",
                                     "schedule.steps=[800,1100]", "schedule.checkpoint_period=100"]), num_classes=9)
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == proposal_generator and cfg.INPUT.ORIENTED_BOXES
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS) == (4, 0.01, (800, 1100))
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.TEST.DETECTIONS_PER_IMAGE) == (1200, 1200, 1500)
    assert cfg.DATASETS.TRAIN == ("soda_a_train",) and cfg.UGS_EVAL.BUCKETS == ["soda"]
