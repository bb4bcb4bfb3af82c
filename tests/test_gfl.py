"""projects/UGS_GFL: GFL V1's losses, ATSS and integral decode against hand computations, the
detector with ugs=off and ugs=full (CPU, 128 px). The parametrised detector tests of
tests/test_projects.py cover GFL too (presets, empty images, inference format, ugs-train)."""
import json
import math
import statistics

import pytest
import torch
from conftest import run_ugs_train
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from test_projects import DENSE_TINY_RUN, NUM_CLASSES, d2_config, image_without_boxes, training_batch

from ugs_d2.bins import one_sided_in_grid
from ugs_d2.config import load_project
from ugs_d2.losses import bin_cross_entropy
from ugs_d2.modeling.refinement import is_localization_loss

gfl = load_project("UGS_GFL")


# ---- the losses ------------------------------------------------------------------------------


def test_quality_focal_loss_matches_hand_computation():
    # z = 0 (s = 1/2), IoU target 0.8: BCE = ln 2, scale |0.5 - 0.8|^2 = 0.09
    # z = ln 3 (s = 3/4), target 0 (a negative): BCE = -ln(1/4) = ln 4, scale (3/4)^2
    logits = torch.tensor([[0.0, math.log(3.0)]])
    targets = torch.tensor([[0.8, 0.0]])
    loss = gfl.quality_focal_loss(logits, targets, beta=2.0)
    expected = torch.tensor([[0.09 * math.log(2), 0.5625 * math.log(4)]])
    assert torch.allclose(loss, expected, atol=1e-6)
    # beta = 0 is the plain BCE; a perfect score costs only the target's own entropy
    assert torch.allclose(gfl.quality_focal_loss(logits, targets, beta=0.0)[0, 0], torch.tensor(math.log(2)))
    assert gfl.quality_focal_loss(torch.tensor([[0.0]]), torch.tensor([[0.5]]))[0, 0] == 0


def test_distribution_focal_loss_matches_hand_computation():
    # softmax = (1/4, 1/2, 1/4) over the points 0, 1, 2; target 0.25 lies between 0 and 1 with
    # weights 0.75 (on 0) and 0.25 (on 1): 0.75 ln 4 + 0.25 ln 2
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))
    loss = gfl.distribution_focal_loss(logits, torch.tensor([0.25]))
    assert torch.allclose(loss, torch.tensor([0.75 * math.log(4) + 0.25 * math.log(2)]), atol=1e-6)
    # on a grid point the loss is the plain CE of that point: -ln(1/2)
    assert torch.allclose(gfl.distribution_focal_loss(logits, torch.tensor([1.0])), torch.tensor([math.log(2)]))


def test_dfl_is_the_two_hot_bin_cross_entropy_on_the_uniform_grid():
    """GFL's DFL == UGS's Eq. 10 on the grid 0..reg_max: the baseline's box branch is a UGS stage."""
    torch.manual_seed(0)
    reg_max = 16
    logits = torch.randn(50, 4, reg_max + 1) * 3
    targets = torch.rand(50, 4) * (reg_max - 0.01)  # MMDetection clips the targets to reg_max - 0.01
    dfl = gfl.distribution_focal_loss(logits.view(-1, reg_max + 1), targets.view(-1)).view(50, 4)
    ce = bin_cross_entropy(logits, targets, torch.arange(reg_max + 1, dtype=torch.float32))
    assert torch.allclose(dfl, ce, atol=1e-5)


def test_gfl_box_losses_are_localization_losses_for_ur():
    assert is_localization_loss("loss_gfl_dfl") and is_localization_loss("loss_gfl_giou")
    assert not is_localization_loss("loss_gfl_cls")


# ---- ATSS --------------------------------------------------------------------------------------

# one level, stride 8, five locations on the line y = 0; boxes of 2 strides (16 px) for the IoU
CENTERS = [torch.tensor([[0.0, 0.0], [8.0, 0.0], [16.0, 0.0], [24.0, 0.0], [32.0, 0.0]])]
ATSS = dict(strides=[8], topk=3, anchor_scale=2.0)


def test_atss_threshold_and_centre_rule_by_hand():
    """GT A = (4, -8, 28, 8), centre x = 16: candidates x = 16, 8, 24 with IoUs 256/384 and twice
    192/448; threshold = mean + std = 0.645: only x = 16 is positive (8 and 24 have their
    centres inside A but fall under the threshold). GT B = (33, -4, 47, 4), centre x = 40:
    candidates x = 32 (IoU 56/312), 24, 16 (IoU 0); threshold 0.163 < 0.179, but x = 32 lies
    left of B's x1 = 33: the centre rule rejects it, and B has no positive."""
    ious_a = [256 / 384, 192 / 448, 192 / 448]
    ious_b = [56 / 312, 0.0, 0.0]
    threshold_a = statistics.mean(ious_a) + statistics.stdev(ious_a)
    threshold_b = statistics.mean(ious_b) + statistics.stdev(ious_b)
    assert ious_a[0] >= threshold_a > ious_a[1]
    assert ious_b[0] >= threshold_b  # B's best candidate passes the IoU test ...
    gt = torch.tensor([[4.0, -8.0, 28.0, 8.0], [33.0, -4.0, 47.0, 4.0]])
    assigned = gfl.atss_assign(CENTERS, gt_boxes=gt, **ATSS)
    assert assigned.tolist() == [-1, -1, 0, -1, -1]  # ... and fails the centre rule
    # without the centre rule B's candidate x = 32 would be positive: move B to contain it
    moved = gfl.atss_assign(CENTERS, gt_boxes=torch.tensor([[31.0, -4.0, 45.0, 4.0]]), **ATSS)
    assert moved.tolist() == [-1, -1, -1, -1, 0]


def test_atss_location_of_two_gts_takes_the_higher_iou():
    """GT C = (10, -8, 22, 8) makes x = 16 positive with IoU 0.75 (threshold 0.707), above A's
    0.667: the location goes to C whichever order the GTs come in."""
    a, c = [4.0, -8.0, 28.0, 8.0], [10.0, -8.0, 22.0, 8.0]
    assert gfl.atss_assign(CENTERS, gt_boxes=torch.tensor([a, c]), **ATSS).tolist() == [-1, -1, 1, -1, -1]
    assert gfl.atss_assign(CENTERS, gt_boxes=torch.tensor([c, a]), **ATSS).tolist() == [-1, -1, 0, -1, -1]


def test_atss_takes_every_location_of_a_level_smaller_than_topk_and_no_gt():
    centers = CENTERS + [torch.tensor([[16.0, 0.0]])]  # a second level of one location
    gt = torch.tensor([[4.0, -8.0, 28.0, 8.0]])
    assigned = gfl.atss_assign(centers, [8, 16], gt, topk=3, anchor_scale=2.0)
    assert assigned.shape == (6,)
    assert gfl.atss_assign(centers, [8, 16], torch.zeros(0, 4)).tolist() == [-1] * 6


def test_label_anchors_marks_an_image_without_boxes_background():
    model = build_model(d2_config("gfl_r18_fpn", "ugs=off"))
    batch = training_batch()[:1] + [image_without_boxes()]
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    labels, boxes = model.label_anchors(anchors, [b["instances"] for b in batch])
    assert (labels[0] < NUM_CLASSES).sum() > 0 and set(labels[0][labels[0] < NUM_CLASSES].tolist()) == {0, 2}
    assert bool((labels[1] == NUM_CLASSES).all()) and boxes[1].abs().sum() == 0


# ---- the grid and the integral decode ----------------------------------------------------------


def test_grid_is_gfls_uniform_one_off_and_the_one_sided_in_grid_with_ugs():
    grid = lambda *o: build_model(d2_config("gfl_r18_fpn", *o)).localization.grid  # noqa: E731
    assert torch.equal(grid("ugs=off"), torch.arange(17, dtype=torch.float32))
    assert torch.equal(grid("ugs=off", "model.gfl.reg_max=7"), torch.arange(8, dtype=torch.float32))
    assert torch.allclose(grid("ugs=full"), one_sided_in_grid(2.0, 1.0, 10, 8.0))  # [0, 16] strides
    normalized = grid("ugs=full", "ugs.rpn.grid_form=normalized")
    assert torch.allclose(normalized, one_sided_in_grid(2.0, 1.0, 10, 8.0, form="normalized"))
    assert not torch.allclose(normalized, grid("ugs=full"))
    assert torch.allclose(grid("ugs=ce_uniform"), torch.linspace(0, 16, 11), atol=1e-5)


def test_integral_decode_by_hand():
    """Probabilities 1/2 on the points 2 and 3 (strides) give 2.5 strides: the location at (4, 4)
    on stride 8 decodes to (4 - 20, 4 - 20, 4 + 20, 4 + 20); with the left side 1/2 on 0 and 16,
    8 strides = 64 px."""
    model = build_model(d2_config("gfl_r18_fpn", "ugs=off"))
    logits = torch.full((4, 17), -30.0)
    logits[:, 2:4] = 0.0
    logits[0] = -30.0
    logits[0, [0, 16]] = 0.0
    anchor = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # the stride-8 location at (4, 4)
    box = model.box2box_transform.apply_deltas(logits.view(1, 4 * 17), anchor)
    assert torch.allclose(box, torch.tensor([[4.0 - 64, 4.0 - 20, 4.0 + 20, 4.0 + 20]]), atol=1e-3)


# ---- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ugs", ["off", "full", "full ugs.ur_losses=loc"])
def test_training_step_losses_and_inference(ugs):
    """With ``ugs.ur_losses=loc`` UR recomputes GFL's box losses only (``loss_gfl_dfl`` and
    ``loss_gfl_giou`` are localization losses for ``ugs_d2.modeling.refinement``)."""
    model = build_model(d2_config("gfl_r18_fpn", *f"ugs={ugs}".split()))
    model.train()
    with EventStorage(0):
        losses = model(training_batch() + [image_without_boxes()])
    expected = {"loss_gfl_cls", "loss_gfl_giou", "loss_gfl_dfl"} | ({"loss_um", "loss_ur"} if ugs != "off" else set())
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.head.scales.grad is not None and torch.isfinite(model.head.scales.grad).all()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 128, 128) * 255}])
    assert set(out[0]["instances"].get_fields()) == {"pred_boxes", "scores", "pred_classes"}


@pytest.mark.slow  # 20 iterations: 30-110 s on 2 loaded cores (102 s measured at load 6)
def test_tiny_overfit_qfl_falls():
    torch.manual_seed(0)
    model = build_model(d2_config("gfl_r18_fpn", "ugs=off"))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = training_batch()
    history = []
    with EventStorage(0):
        for _ in range(20):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
    first = statistics.mean(h["loss_gfl_cls"] for h in history[:3])
    last = statistics.mean(h["loss_gfl_cls"] for h in history[-3:])
    assert last < 0.5 * first, (first, last)
    assert statistics.mean(h["loss_gfl_giou"] for h in history[-3:]) < statistics.mean(
        h["loss_gfl_giou"] for h in history[:3]
    )


@pytest.mark.slow  # a real ugs-train multirun, ugs=off and ugs=full: 30-120 s on 2 cores
def test_ugs_train_trains_and_evaluates_off_and_full(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_ugs_train(
        ["-m", "model=gfl_r18_fpn", "ugs=off,full", *DENSE_TINY_RUN, f"dataset.root={tiny_dataset}",
         "wandb.enabled=false", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.runtime.choices.ugs}"],
        cwd=str(tmp_path),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for ugs in ("off", "full"):
        run_dir = sweep_dir / ugs
        assert (run_dir / "done").is_file(), ugs
        with open(run_dir / "results.json") as f:
            assert {"AP", "AP50", "APs"} <= set(json.load(f)), ugs
