"""ugs-bench tiling: large scenes, whole / tiled / tiled+full, end to end with a tiny random model."""
import numpy as np
import pytest

from ugs_d2.bench.scenes import scene_coco
from ugs_d2.bench.tiling import MODES
from ugs_d2.cli.bench import run_command_line


def test_scene_ground_truth_is_coco_by_hand():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    coco = scene_coco([(image, np.array([[1.0, 2.0, 5.0, 10.0]], dtype=np.float32), np.array([2]))], num_classes=3)
    assert coco["images"] == [{"id": 1, "file_name": "scene_1.png", "height": 20, "width": 30}]
    assert coco["annotations"] == [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 4.0, 8.0],
                                    "area": 32.0, "iscrowd": 0}]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A randomly initialised tiny R18-FPN saved like a ugs-train run (config yaml + weights)."""
    import torch
    from detectron2.modeling import build_model

    from ugs_d2.cli.validate import validate_command_line
    from ugs_d2.config import to_detectron2_cfg

    cfg = to_detectron2_cfg(validate_command_line([
        "device=cpu", "model.backbone.fpn_channels=16", "model.roi.fc_dim=32", "model.rpn.post_nms_topk_test=40",
        "model.roi.score_thresh_test=0.0",
    ]), "", num_classes=6)
    torch.manual_seed(0)
    model = build_model(cfg)
    run = tmp_path_factory.mktemp("tiny_run")
    with open(run / "detectron2_config.yaml", "w") as f:
        f.write(cfg.dump())
    torch.save({"model": model.state_dict()}, run / "model_final.pth")
    return run


def test_every_model_and_mode_is_evaluated_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "t.md"
    outcome = run_command_line(["tiling", "--run", f"a={tiny_run}", "--run", f"b={tiny_run}", "--images", "1",
                                "--size", "400x300", "--tile", "256", "--max-dets", "300", "--out", str(out)])
    rows = outcome["rows"]
    assert [(r["run"], r["mode"]) for r in rows] == [(n, m) for n in ("a", "b") for m in MODES]
    assert all(r["s_per_image"] > 0 and r["detections_per_image"] > 0 for r in rows)
    for r in rows:  # a random model: AP near 0 but defined (the scene has small objects of every class)
        assert 0.0 <= r["metrics"]["AP"] <= 100.0
    # the same model twice: the same numbers
    assert rows[0]["metrics"] == rows[3]["metrics"]
    tiled, full = rows[1], rows[2]
    assert full["detections_per_image"] >= tiled["detections_per_image"] * 0.5
    text = out.read_text()
    assert text == outcome["report"] and "| a | no | tiled+full | 256 px, overlap 0.2 |" in text
    assert outcome["setup"]["gt_per_image"] > 10 and outcome["setup"]["share_under_16"] > 0.2


def test_whole_image_budget_is_raised_for_the_block_and_restored(tiny_run):
    from ugs_d2.bench.tiling import whole_image_budget
    from ugs_d2.inference.tiled import load_model

    model = load_model(str(tiny_run))
    before = (model.roi_heads.box_predictor.test_topk_per_image, dict(model.proposal_generator.post_nms_topk),
              dict(model.proposal_generator.pre_nms_topk))
    with whole_image_budget(model, 700):
        assert model.roi_heads.box_predictor.test_topk_per_image == 700
        assert model.proposal_generator.post_nms_topk[False] == 700
        assert model.proposal_generator.pre_nms_topk[False] == max(before[2][False], 1400)
        assert model.proposal_generator.post_nms_topk[True] == before[1][True]  # training values untouched
    assert (model.roi_heads.box_predictor.test_topk_per_image, dict(model.proposal_generator.post_nms_topk),
            dict(model.proposal_generator.pre_nms_topk)) == before


def test_bad_options_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^ugs-bench: --run: expected NAME=RUN_DIR, got 'x'$"):
        run_command_line(["tiling", "--run", "x", "--out", str(tmp_path / "a.md")])
    with pytest.raises(SystemExit, match=r"^ugs-bench: --run m=/nonexistent: /nonexistent: no detectron2 config"):
        run_command_line(["tiling", "--run", "m=/nonexistent", "--images", "1", "--size", "64x64",
                          "--out", str(tmp_path / "a.md")])
    assert not (tmp_path / "a.md").exists()


def test_a_model_trained_on_tiles_gets_its_own_tiles_by_default(tiny_run, tmp_path):
    import shutil

    from detectron2.config import CfgNode

    tiles_run = tmp_path / "tiles_run"
    shutil.copytree(tiny_run, tiles_run)
    with open(tiles_run / "detectron2_config.yaml") as f:
        cfg = CfgNode.load_cfg(f)
    cfg.TILING.TRAIN.ENABLED, cfg.TILING.TILE, cfg.TILING.OVERLAP = True, 96, 0.25
    with open(tiles_run / "detectron2_config.yaml", "w") as f:
        f.write(cfg.dump())
    outcome = run_command_line(["tiling", "--run", f"full={tiny_run}", "--run", f"tiles={tiles_run}", "--images", "1",
                                "--size", "300x200", "--max-dets", "300", "--out", str(tmp_path / "t.md")])
    tiles = {(r["run"], r["mode"]): r["tile"] for r in outcome["rows"]}
    assert tiles[("full", "tiled")] == (512, 0.2) and tiles[("tiles", "tiled")] == (96, 0.25)
    assert tiles[("tiles", "whole")] is None
    assert "| tiles | yes | tiled | 96 px, overlap 0.25 |" in outcome["report"]
