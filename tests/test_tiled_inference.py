"""Tiled inference: merging by hand, tiled vs untiled with a real detectron2 model, batching,
the ugs-predict CLI, and `ugs-train tiling=on` end to end."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, run_ugs_train

from ugs_d2.boxes import pairwise_overlap
from ugs_d2.inference.tiled import (
    TiledInferenceModel,
    TiledPredictor,
    TilingSpec,
    _greedy_owner,
    merge_detections,
    predict_whole_image,
)

# --- merging by hand -------------------------------------------------------------------------


def test_pairwise_overlap_by_hand():
    a = np.array([[0, 0, 10, 10]], dtype=float)
    b = np.array([[5, 0, 15, 10], [2, 2, 6, 6], [20, 20, 30, 30], [3, 3, 3, 8]], dtype=float)
    # inter 50, union 150 | inter 16 inside: IoU 16/100, IOS 16/16 | disjoint | zero-area box
    np.testing.assert_allclose(pairwise_overlap(a, b, "iou"), [[50 / 150, 0.16, 0, 0]])
    np.testing.assert_allclose(pairwise_overlap(a, b, "ios"), [[0.5, 1.0, 0, 0]])
    with pytest.raises(ValueError, match="match metric: expected one of iou, ios, got 'giou'"):
        pairwise_overlap(a, b, "giou")


# A, B: same class, IoU 90/110 = 0.82, IOS 0.9; C: A's box in another class; D: inside A (IoU 0.16,
# IOS 1); E: far away.
BOXES = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [2, 2, 6, 6], [50, 50, 60, 60]],
                     dtype=torch.float32)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
CLASSES = torch.tensor([0, 0, 1, 0, 0])


@pytest.mark.parametrize("method,metric,expected", [
    ("nms", "iou", [([0, 0, 10, 10], 0.9, 0), ([0, 0, 10, 10], 0.7, 1), ([2, 2, 6, 6], 0.6, 0),
                    ([50, 50, 60, 60], 0.5, 0)]),
    ("nms", "ios", [([0, 0, 10, 10], 0.9, 0), ([0, 0, 10, 10], 0.7, 1), ([50, 50, 60, 60], 0.5, 0)]),
    ("nmm", "iou", [([0, 0, 11, 10], 0.9, 0), ([0, 0, 10, 10], 0.7, 1), ([2, 2, 6, 6], 0.6, 0),
                    ([50, 50, 60, 60], 0.5, 0)]),
    ("nmm", "ios", [([0, 0, 11, 10], 0.9, 0), ([0, 0, 10, 10], 0.7, 1), ([50, 50, 60, 60], 0.5, 0)]),
])
def test_merge_on_hand_made_overlaps(method, metric, expected):
    boxes, scores, classes = merge_detections(BOXES, SCORES, CLASSES, method, metric, 0.5)
    got = [(b, round(s, 4), c) for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())]
    assert got == [(b, s, c) for b, s, c in expected]


def test_nmm_matches_against_the_kept_box_not_the_growing_union():
    # G matches F (IoU 0.67): F becomes [0, 0, 12, 10]. H has IoU 0.43 with F but 0.57 with that
    # union: it stays a separate detection.
    boxes = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], dtype=torch.float32)
    out, scores, _ = merge_detections(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), "nmm", "iou", 0.5)
    assert out.tolist() == [[0, 0, 12, 10], [4, 0, 14, 10]]
    assert scores.tolist() == pytest.approx([0.9, 0.7])


def test_threshold_is_strict_and_empty_input_is_fine():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)  # IOS exactly 0.5
    for method in ("nms", "nmm"):
        assert len(merge_detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), method, "ios", 0.5)[0]) == 2
        assert len(merge_detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), method, "ios", 0.49)[0]) == 1
    empty = merge_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), "nmm", "ios", 0.5)
    assert [len(t) for t in empty] == [0, 0, 0]
    with pytest.raises(ValueError, match="merge method: expected one of nms, nmm"):
        merge_detections(boxes, torch.ones(2), torch.zeros(2), "wbf")


def test_greedy_core_equals_torchvision_nms():
    """The greedy pass (with its x-range culling) keeps what torchvision's NMS keeps."""
    from torchvision.ops import nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], axis=1)
    scores = rng.permutation(300) / 300.0  # distinct scores: one order
    order = np.argsort(-scores, kind="stable")
    owner = _greedy_owner(boxes[order], "iou", 0.4)
    ours = order[owner == np.arange(300)]
    reference = nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32), 0.4)
    assert ours.tolist() == reference.tolist()
    # and every taken box overlaps its owner by more than the threshold, by the plain formula
    taken = np.nonzero(owner != np.arange(300))[0]
    sorted_boxes = boxes[order]
    overlaps = [pairwise_overlap(sorted_boxes[[owner[j]]], sorted_boxes[[j]], "iou")[0, 0] for j in taken]
    assert len(taken) > 0 and min(overlaps) > 0.4


# --- with a real detectron2 model ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    """A randomly initialised tiny R18-FPN (3 classes) in eval mode: real detectron2 inference,
    hundreds of low-score boxes per image."""
    from detectron2.modeling import build_model

    from ugs_d2.cli.validate import validate_command_line
    from ugs_d2.config import to_detectron2_cfg

    cfg = validate_command_line([
        "device=cpu", "model.backbone.fpn_channels=16", "model.roi.fc_dim=32",
        "model.rpn.post_nms_topk_test=40",
    ])
    torch.manual_seed(0)
    return build_model(to_detectron2_cfg(cfg, "", num_classes=3)).eval()


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _as_rows(instances):
    return torch.cat([instances.pred_boxes.tensor, instances.scores[:, None],
                      instances.pred_classes[:, None].float()], dim=1)


def _assert_same_detections(a, b, atol=1e-3):
    """The same detections up to float noise of batched convolutions (order may differ on ties)."""
    assert len(a) == len(b) > 0
    rows_a, rows_b = _as_rows(a), _as_rows(b)
    distance = (rows_a[:, None, :] - rows_b[None, :, :]).abs().amax(dim=2)
    assert bool((distance.amin(dim=1) <= atol).all()) and bool((distance.amin(dim=0) <= atol).all())


def test_tiled_equals_untiled_on_an_image_smaller_than_a_tile(tiny_model):
    image = _image(50, 60)
    predictor = TiledPredictor(tiny_model, TilingSpec(tile=64, overlap=0.2, batch_size=4), optimize=False)  # exact: the model itself
    tiled = predictor(image)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))
    with torch.no_grad():
        plain = tiny_model([{"image": tensor, "height": 50, "width": 60}])[0]["instances"]
    whole, _ = predict_whole_image(tiny_model, tensor, test_size=(50, 60))  # no resize at this size
    assert len(plain) > 0 and tiled.image_size == (50, 60)
    for other in (plain, whole):
        assert torch.equal(tiled.pred_boxes.tensor, other.pred_boxes.tensor)
        assert torch.equal(tiled.scores, other.scores)
        assert torch.equal(tiled.pred_classes, other.pred_classes)
    assert predictor.last_timing["windows"] == 1
    assert 0 < predictor.last_timing["model_s"] <= predictor.last_timing["total_s"]


def test_boxes_are_mapped_back_to_image_coordinates(tiny_model):
    # a 2 x 2 mosaic of one 64 px image, cut at its seams: every window sees that image, so the
    # result is its detections shifted to the 4 quadrants (threshold 1: nothing is merged)
    small = _image(64, 64, seed=1)
    mosaic = np.tile(small, (2, 2, 1))
    single = TiledPredictor(tiny_model, TilingSpec(tile=64, overlap=0.0))(small)
    predictor = TiledPredictor(tiny_model, TilingSpec(tile=64, overlap=0.0, batch_size=4, merge="nms", metric="ios", threshold=1.0))
    tiled = predictor(mosaic)
    assert predictor.last_timing["windows"] == 4 and predictor.last_timing["batches"] == 1
    expected = []
    for dx, dy in ((0, 0), (64, 0), (0, 64), (64, 64)):
        shifted = single.pred_boxes.tensor + torch.tensor([dx, dy, dx, dy], dtype=torch.float32)
        expected.append(torch.cat([shifted, single.scores[:, None], single.pred_classes[:, None].float()], 1))
    from detectron2.structures import Boxes, Instances

    reference = Instances((128, 128))
    rows = torch.cat(expected)
    reference.pred_boxes, reference.scores, reference.pred_classes = Boxes(rows[:, :4]), rows[:, 4], rows[:, 5].long()
    _assert_same_detections(tiled, reference)


def test_batch_size_does_not_change_the_result(tiny_model):
    image = _image(100, 120, seed=2)  # 64 px windows, overlap 0.25: 3 x 2 windows
    results = {}
    for batch_size in (1, 4, 8):
        predictor = TiledPredictor(tiny_model, TilingSpec(tile=64, overlap=0.25, batch_size=batch_size, merge="nmm", metric="ios"))
        results[batch_size] = predictor(image)
        assert predictor.last_timing["batches"] == -(-6 // batch_size)
    _assert_same_detections(results[1], results[4])
    _assert_same_detections(results[1], results[8])


def test_full_image_pass_and_the_evaluation_wrapper(tiny_model):
    image = _image(100, 120, seed=3)
    tiles_only = TiledPredictor(tiny_model, TilingSpec(tile=64, overlap=0.25, threshold=1.0))(image)
    with_full = TiledPredictor(tiny_model, TilingSpec(tile=64, overlap=0.25, threshold=1.0, full_image=True), test_size=(64, 80))(image)
    # threshold 1 merges nothing: the full-image pass only adds boxes
    assert len(with_full) > len(tiles_only)

    wrapper = TiledInferenceModel(tiny_model, TilingSpec(tile=64, overlap=0.25, batch_size=8, max_detections=30)).eval()
    tensor = torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))
    out = wrapper([{"image": tensor, "height": 100, "width": 120}, {"image": tensor, "height": 200, "width": 240}])
    first, second = out[0]["instances"], out[1]["instances"]
    assert first.image_size == (100, 120) and 0 < len(first) <= 30
    # an input whose height/width differ from the tensor (a resized image) is scaled back
    torch.testing.assert_close(second.pred_boxes.tensor, first.pred_boxes.tensor * 2)
    try:
        with pytest.raises(RuntimeError, match="inference only"):
            wrapper.train()([{"image": tensor}])
    finally:
        wrapper.eval()  # the fixture's model is shared by the other tests


@pytest.mark.parametrize("kwargs,message", [
    ({"tile": 0}, "tile: expected a positive integer, got 0"),
    ({"overlap": 1.0}, r"overlap: expected a number in \[0, 1\)"),
    ({"batch_size": 0}, "batch_size: expected a positive integer"),
    ({"merge": "soft"}, "merge: expected one of nms, nmm"),
    ({"metric": "giou"}, "metric: expected one of iou, ios"),
    ({"threshold": 1.5}, r"threshold: expected a number in \[0, 1\]"),
])
def test_bad_predictor_arguments(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TiledPredictor(tiny_model, TilingSpec(**kwargs))


def _perturbed_bn_model(tiny_model):
    """A copy of the tiny model whose batch norms have non-trivial running statistics."""
    import copy

    model = copy.deepcopy(tiny_model).eval()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model


def test_fused_conv_bn_and_pointwise_heads_by_hand():
    from detectron2.layers import Conv2d, FrozenBatchNorm2d

    from ugs_d2.inference.tiled import PointwiseLinear, fuse_conv_bn_, replace_pointwise_heads_

    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 7)
    for norm in (torch.nn.BatchNorm2d(6), FrozenBatchNorm2d(6)):
        norm.running_mean.copy_(torch.linspace(-1, 1, 6))
        norm.running_var.copy_(torch.linspace(0.5, 2, 6))
        norm.weight.data.copy_(torch.linspace(0.5, 1.5, 6))
        norm.bias.data.copy_(torch.linspace(-0.2, 0.2, 6))
        conv = Conv2d(4, 6, 3, padding=1, bias=False, norm=norm).eval()
        with torch.no_grad():
            want = conv(x)
            assert fuse_conv_bn_(conv) == 1 and conv.norm is None
            assert torch.allclose(conv(x), want, atol=1e-5)
    training = Conv2d(4, 6, 3, norm=torch.nn.BatchNorm2d(6)).train()
    assert fuse_conv_bn_(training) == 0  # batch statistics: nothing to fold
    head = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 1), torch.nn.Conv2d(4, 64, 1), torch.nn.Conv2d(4, 3, 3))
    with torch.no_grad():
        want = head[0](x)
        assert replace_pointwise_heads_(head) == 1  # only the 1x1 with <= 32 outputs
        assert isinstance(head[0], PointwiseLinear) and isinstance(head[1], torch.nn.Conv2d)
        got = head[0](x.contiguous(memory_format=torch.channels_last))
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)


def test_optimized_predictor_gives_the_same_detections_and_leaves_the_model_alone(tiny_model):
    from ugs_d2.inference.tiled import optimize_for_inference

    model = _perturbed_bn_model(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched
    assert not any(getattr(m, "norm", None) is not None for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    image = _image(100, 120, seed=3)
    plain = TiledPredictor(model, TilingSpec(tile=64, overlap=0.25, batch_size=1), optimize=False)
    auto = TiledPredictor(model, TilingSpec(tile=64, overlap=0.25))  # CPU: optimized copy, batch size 1
    assert auto.optimize and auto.batch_size == 1 and auto.model is not model and not plain.optimize
    _assert_same_detections(plain(image), auto(image))
    with pytest.raises(ValueError, match="autocast: bf16 is for a CUDA model; this one is on cpu"):
        TiledPredictor(model, autocast="bf16")
    with pytest.raises(ValueError, match="autocast: expected one of fp16, bf16 or None"):
        TiledPredictor(model, autocast="int8")


def test_bad_image(tiny_model):
    with pytest.raises(ValueError, match=r"image: expected an HxWx3 numpy array \(BGR\), got \(10, 10\)"):
        TiledPredictor(tiny_model, TilingSpec(tile=64))(np.zeros((10, 10), dtype=np.uint8))


# --- CLI and training ---------------------------------------------------------------------------

def test_ugs_predict_errors_are_one_line(tmp_path, tiny_dataset):
    from ugs_d2.cli.predict import main as ugs_predict

    image = os.path.join(tiny_dataset, "val", "000001.png")
    with pytest.raises(SystemExit, match=r"ugs-predict: .*absent.png: no such image file or directory"):
        ugs_predict([str(tmp_path), str(tmp_path / "absent.png"), "--out", str(tmp_path / "d.json")])
    with pytest.raises(SystemExit, match=r"ugs-predict: .*detectron2_config.yaml: no detectron2 config"):
        ugs_predict([str(tmp_path), image, "--out", str(tmp_path / "d.json")])
    assert not (tmp_path / "d.json").exists()


def test_ugs_train_tiling_on_trains_on_tiles_evaluates_tiled_and_predicts(tiny_dataset, tmp_path, capsys):
    """`ugs-train tiling=on`: the train split is tiled (cached), evaluation runs tiled on whole
    val images; then ugs-predict --tiled on the run writes COCO detections."""
    from ugs_d2.cli.predict import main as ugs_predict

    run_dir = tmp_path / "run"
    cache = tmp_path / "tiles"
    # the preset's input sizes follow tiling.tile: drop TINY_RUN's model.input overrides
    args = [a for a in TINY_RUN if not a.startswith("model.input.")] + [
        "tiling=on", "tiling.tile=64", f"tiling.train.cache_dir={cache}",
        f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "wandb.enabled=false",
    ]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = open(run_dir / "log.txt").read()
    assert "tiled evaluation: 64 px windows" in log
    tiled_json = cache / "synth_train-t64-o0.25-a0.1-keep" / "annotations.json"
    tiled = json.load(open(tiled_json))
    assert len(tiled["images"]) == 9 * 8  # 8 train images of 128 px -> 3 x 3 tiles each
    assert {im["width"] for im in tiled["images"]} == {64}
    assert json.load(open(run_dir / "results.json"))["iterations"] == 4

    out, vis = tmp_path / "dets.json", tmp_path / "vis"
    ugs_predict([str(run_dir), os.path.join(tiny_dataset, "val"), "--out", str(out), "--tiled",
                 "--overlap", "0", "--batch-size", "4", "--merge", "nmm",
                 "--match-metric", "ios", "--vis", str(vis)])
    assert "(tiled 64 px, overlap 0.0, batch 4)" in capsys.readouterr().out  # --tile: the run's tiling.tile
    detections = json.load(open(out))
    val = json.load(open(os.path.join(tiny_dataset, "annotations", "val.json")))
    assert detections, "the model produced no detection"
    assert {d["image_id"] for d in detections} <= {im["id"] for im in val["images"]}
    assert {d["category_id"] for d in detections} <= {c["id"] for c in val["categories"]}
    for d in detections:
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 128.01 and y + h <= 128.01
        assert 0 <= d["score"] <= 1
    assert sorted(os.listdir(vis)) == sorted(im["file_name"] for im in val["images"])
    # the detections load into pycocotools against the val json
    from pycocotools.coco import COCO

    assert len(COCO(os.path.join(tiny_dataset, "annotations", "val.json")).loadRes(str(out)).anns) == len(detections)
