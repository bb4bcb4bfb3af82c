"""UGS beyond Faster R-CNN: projects/UGS_RetinaNet, UGS_FCOS, UGS_GFL and UGS_Cascade (CPU, 128 px)."""
import json
import math

import pytest
import torch
from conftest import TINY_RUN, run_ugs_train
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ugs_d2 import compat
from ugs_d2.bins import in_grid
from ugs_d2.config import ConfigError, load_project, to_detectron2_cfg
from ugs_d2.harness.compose import compose as _compose

NUM_CLASSES = 3
DETECTORS = ["retinanet_r18_fpn", "fcos_r18_fpn", "gfl_r18_fpn", "cascade_r18_fpn"]
# TINY_RUN's model.rpn/model.roi keys exist only in the R-CNN presets
DENSE_TINY_RUN = [o for o in TINY_RUN if not o.startswith(("model.rpn.", "model.roi."))]
SMALL = [o for o in DENSE_TINY_RUN if o.startswith("model.")]

# the localization loss each detector's UGS replaces, and its UM key
LOSS_KEYS = {
    "retinanet_r18_fpn": {"loss_cls", "loss_box_reg", "loss_um", "loss_ur"},
    "fcos_r18_fpn": {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_um", "loss_ur"},
    "gfl_r18_fpn": {"loss_gfl_cls", "loss_gfl_giou", "loss_gfl_dfl", "loss_um", "loss_ur"},
    "cascade_r18_fpn": {
        "loss_rpn_loc", "loss_um_rpn", "loss_ur",
        *(f"loss_{k}_stage{s}" for k in ("box_reg", "um_roi") for s in range(3)),
    },
}


def d2_config(model, *overrides, num_classes=NUM_CLASSES):
    tiny = SMALL + (["model.roi.fc_dim=64", "model.roi.batch_size_per_image=32"] if "cascade" in model else [])
    return to_detectron2_cfg(
        _compose([f"model={model}", "device=cpu", *tiny, *overrides]), num_classes=num_classes
    )


def training_batch(size=128):
    torch.manual_seed(0)
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 22.0, 20.0], [60.0, 50.0, 90.0, 84.0]]))
    instances.gt_classes = torch.tensor([0, 2])
    return [{"image": torch.rand(3, size, size) * 255, "instances": instances} for _ in range(2)]


# ---- pure functions, against hand computations -------------------------------------------------


def test_one_sided_grid_is_the_positive_half_of_eq9():
    one_sided_in_grid = load_project("UGS_FCOS").one_sided_in_grid
    # n = 2, a = 2, b = 1: g_1 = 2 (e^1 - 1) / (e^2 - 1) = 2 / (e + 1)
    assert torch.allclose(
        one_sided_in_grid(2.0, 1.0, 2), torch.tensor([0.0, 2 / (math.e + 1), 2.0]), atol=1e-6
    )
    assert torch.equal(one_sided_in_grid(2.0, 0.0, 2), torch.tensor([0.0, 1.0, 2.0]))  # b = 0: uniform
    grid = one_sided_in_grid(2.0, 1.0, 10, scale=4.0)  # the FCOS preset: 11 bins over [0, 8] strides
    assert grid.numel() == 11 and grid[0] == 0 and math.isclose(grid[-1].item(), 8.0, rel_tol=1e-6)
    steps = grid.diff()
    assert bool((steps[1:] > steps[:-1]).all())  # densest at zero
    with pytest.raises(ValueError):
        one_sided_in_grid(2.0, 1.0, 10, scale=0.0)


def test_cascade_stage_scales_from_iou_and_weights():
    cascade = load_project("UGS_Cascade")
    # IoU 0.5, weights (10, 10, 5, 5): shift 10 * 0.5 / 1.5 = 3.333, scale 5 ln 2 = 3.466
    assert math.isclose(cascade.max_encoded_delta(0.5, (10, 10, 5, 5)), 5 * math.log(2))
    # shift dominates when the centre weight is large: 30 * 0.3 / 1.7 = 5.294 > 5 ln(1/0.7) = 1.78
    assert math.isclose(cascade.max_encoded_delta(0.7, (30, 30, 5, 5)), 30 * 0.3 / 1.7)
    scales = cascade.stage_range_scales([0.5, 0.6, 0.7], [[10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15]])
    expected = [1.0, 10 * math.log(1 / 0.6) / (5 * math.log(2)), 15 * math.log(1 / 0.7) / (5 * math.log(2))]
    assert all(math.isclose(s, e) for s, e in zip(scales, expected)), scales


# ---- the Hydra presets -> detectron2 classes ---------------------------------------------------


@pytest.mark.parametrize(
    "model, ugs, meta, roi_heads",
    [
        ("retinanet_r18_fpn", "off", "UGSRetinaNet", None),
        ("fcos_r18_fpn", "off", "UGSFCOS", None),
        ("gfl_r18_fpn", "off", "UGSGFL", None),
        ("gfl_r18_fpn", "full", "UGSGFL", None),
        # the baseline cascade is detectron2's with the stage loss weights (UGSCascadeROIHeads)
        ("cascade_r18_fpn", "off", "GeneralizedRCNN", "UGSCascadeROIHeads"),
        ("cascade_r18_fpn", "ce_in", "UGSCascadeRCNN", "UGSCascadeROIHeads"),
        ("cascade_r18_fpn", "full", "UGSCascadeRCNN", "UGSCascadeROIHeads"),
    ],
)
def test_presets_pick_classes(model, ugs, meta, roi_heads):
    d2 = d2_config(model, f"ugs={ugs}")
    assert d2.MODEL.META_ARCHITECTURE == meta
    if roi_heads:
        assert d2.MODEL.ROI_HEADS.NAME == roi_heads


@pytest.mark.parametrize("model", DETECTORS)
def test_every_ugs_preset_converts_or_is_refused_by_name(model):
    """The same ugs= presets sweep across detectors; only the KL loss has no dense version."""
    for preset in ("off", "giou", "grad_clip", "kl", "ce_uniform", "ce_in", "ce_in_um", "full"):
        if preset == "kl" and "cascade" not in model:
            with pytest.raises(ConfigError, match="ugs.rpn.reg_loss"):
                d2_config(model, f"ugs={preset}")
            continue
        d2 = d2_config(model, f"ugs={preset}")
        assert d2.MODEL.UGS.RPN.ENABLED == (preset in ("ce_uniform", "ce_in", "ce_in_um", "full")), preset


@pytest.mark.parametrize(
    "model, override, key",
    [
        ("retinanet_r18_fpn", "ugs.rpn.reg_loss=kl", "ugs.rpn.reg_loss"),
        ("fcos_r18_fpn", "ugs.rpn.reg_loss=kl", "ugs.rpn.reg_loss"),
        ("retinanet_r18_fpn", "model.retinanet.levels=p4-p8", "model.retinanet.levels"),
        ("fcos_r18_fpn", "model.fcos.range_scale=-1", "model.fcos.range_scale"),
        ("gfl_r18_fpn", "ugs.rpn.reg_loss=kl", "ugs.rpn.reg_loss"),
        ("gfl_r18_fpn", "model.gfl.range_scale=0", "model.gfl.range_scale"),
        ("gfl_r18_fpn", "model.gfl.reg_max=0", "model.gfl.reg_max"),
        ("gfl_r18_fpn", "model.gfl.levels=p4-p8", "model.gfl.levels"),
        ("cascade_r18_fpn", "model.roi.cls_agnostic_bbox_reg=false", "model.roi.cls_agnostic_bbox_reg"),
        ("cascade_r18_fpn", "model.cascade.range_scales=[1,2]", "model.cascade.range_scales"),
        ("retinanet_r18_fpn", "model.project=UGS_Nothing", "model.project"),
    ],
)
def test_bad_settings_fail_in_one_line_naming_the_key(model, override, key):
    with pytest.raises(ConfigError) as e:
        d2_config(model, override)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_ugs_on_dense_detector_without_bins_is_refused():
    with pytest.raises(ConfigError, match="ugs.um_weight"):
        d2_config("retinanet_r18_fpn", "ugs=ce_in_um", "ugs.rpn.enabled=false")


# ---- built models --------------------------------------------------------------------------------


def test_cascade_stages_have_their_own_grid_and_transform():
    model = build_model(d2_config("cascade_r18_fpn", "ugs=ce_in"))
    base = in_grid(5.0, 1.0, 5)
    scales = load_project("UGS_Cascade").stage_range_scales(
        [0.5, 0.6, 0.7], [[10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15]]
    )
    for stage, (predictor, weights) in enumerate(
        zip(model.roi_heads.box_predictor, [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)])
    ):
        assert type(predictor).__name__ == "UGSFastRCNNOutputLayers"
        assert torch.allclose(predictor.localization.grid, scales[stage] * base), stage
        assert tuple(predictor.box2box_transform.weights) == weights
        assert predictor.bbox_pred.out_features == 4 * 6  # class-agnostic, 4 coordinates x 6 bins


def test_fcos_bins_target_the_stride_normalised_distances():
    """A location at (10, 10) on stride 4 and the box (6, 9, 16, 20): by hand, (l, t, r, b) =
    (4, 1, 6, 10) px = (1.0, 0.25, 1.5, 2.5) strides. Logits that put the two-hot label of
    exactly these values give the lowest loss, and decode back to them."""
    from ugs_d2.bins import two_hot

    model = build_model(d2_config("fcos_r18_fpn", "ugs=ce_in"))
    anchors = [Boxes(torch.tensor([[8.0, 8.0, 12.0, 12.0]]))]
    gt = [torch.tensor([[6.0, 9.0, 16.0, 20.0]])]
    fg = torch.tensor([[True]])

    def loss_for(values):
        logits = torch.log(two_hot(torch.tensor(values), model.localization.grid) + 1e-9).view(1, 1, -1)
        return model.bin_losses(anchors, [logits], gt, fg, normalizer=1.0)["loc"], logits

    best, logits = loss_for([1.0, 0.25, 1.5, 2.5])
    decoded = model.point_deltas([logits])[0].flatten()
    assert torch.allclose(decoded, torch.tensor([1.0, 0.25, 1.5, 2.5]), atol=1e-4)
    for other in ([1.2, 0.25, 1.5, 2.5], [1.0, 0.25, 1.5, 3.0], [0.25, 1.0, 2.5, 1.5]):
        assert loss_for(other)[0] > best + 1e-3, other


@pytest.mark.parametrize("model_name", DETECTORS)
def test_ugs_training_step_gives_finite_losses_and_gradients(model_name):
    model = build_model(d2_config(model_name, "ugs=full"))
    model.train()
    batch = training_batch()
    empty = Instances((128, 128))  # an image without objects (detectron2 0.6's FCOS fails on it)
    empty.gt_boxes, empty.gt_classes = Boxes(torch.zeros(0, 4)), torch.zeros(0, dtype=torch.int64)
    batch.append({"image": torch.rand(3, 128, 128) * 255, "instances": empty})
    with EventStorage(0):
        losses = model(batch)
    assert LOSS_KEYS[model_name] <= set(losses), set(losses)
    assert not any(k.startswith("ugs_entropy") for k in losses)  # UR's side output is consumed
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("model_name", ["retinanet_r18_fpn", "fcos_r18_fpn"])
def test_dense_losses_equal_detectron2s_on_the_point_estimates_with_the_box_term_replaced(model_name):
    """``losses`` hands detectron2 placeholders for the box term it replaces (no decoding of the
    bins for a thrown-away term); every loss is what detectron2's ``losses`` on the decoded point
    estimates gives, with the box term overwritten by the bin losses (the earlier reading)."""
    from detectron2.modeling.meta_arch.fcos import FCOS
    from detectron2.modeling.meta_arch.retinanet import RetinaNet

    from ugs_d2.compat import dense_loss_normalizer, restore_dense_loss_normalizer, transpose_dense_predictions

    model = build_model(d2_config(model_name, "ugs=full"))
    model.train()
    batch = training_batch()
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    gt_labels, gt_boxes = model.label_anchors(anchors, [b["instances"] for b in batch])
    dense = model_name.startswith("fcos")
    dims = [model.num_classes, 4, 1] if dense else [model.num_classes, 4]
    logits, params, *centerness = transpose_dense_predictions(model, model.head(features), dims)
    before = dense_loss_normalizer(model)
    with EventStorage(0):
        losses = model.losses(anchors, logits, gt_labels, params, gt_boxes, *centerness)
        restore_dense_loss_normalizer(model, before)
        parent = FCOS if dense else RetinaNet
        reference = parent.losses(model, anchors, logits, gt_labels, model.point_deltas(params), gt_boxes, *centerness)
    labels = torch.stack(gt_labels)
    fg = (labels >= 0) & (labels != model.num_classes)
    extra = model.bin_losses(anchors, params, gt_boxes, fg, dense_loss_normalizer(model))
    reference["loss_fcos_loc" if dense else "loss_box_reg"] = extra.pop("loc")
    reference.update(extra)
    assert set(losses) == set(reference)
    for key, value in reference.items():
        assert torch.equal(losses[key], value), key


def image_without_boxes(size=128):
    empty = Instances((size, size))
    empty.gt_boxes, empty.gt_classes = Boxes(torch.zeros(0, 4)), torch.zeros(0, dtype=torch.int64)
    return {"image": torch.rand(3, size, size) * 255, "instances": empty}


@pytest.mark.parametrize("ugs", ["off", "full"])
@pytest.mark.parametrize("model_name", ["tiny_r18_fpn", *DETECTORS])
def test_a_batch_with_an_image_without_boxes_trains(model_name, ugs):
    """Every detector, baseline and UGS, on both detectron2 builds: one image with boxes and
    one without (crops and real datasets have them; the default loader filters them out).
    Upstream main's FCOS once failed here (`Boxes` from our 0.6 workaround mixed into its
    tensors)."""
    rcnn = ["model.roi.fc_dim=64", "model.roi.batch_size_per_image=32"] if model_name == "tiny_r18_fpn" else []
    model = build_model(d2_config(model_name, f"ugs={ugs}", *rcnn))
    model.train()
    batch = training_batch()[:1] + [image_without_boxes()]
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_fcos_labels_an_image_without_boxes_as_background_in_detectron2s_types():
    """UGSFCOS.label_anchors on [boxes, no boxes] and [no boxes]: the image with boxes gets
    exactly detectron2's labels for it alone, the other background everywhere (class index
    C), and all matched boxes have the one type this build's FCOS.losses takes."""
    model = build_model(d2_config("fcos_r18_fpn", "ugs=off"))
    batch = training_batch()[:1] + [image_without_boxes()]
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    gt = [b["instances"] for b in batch]
    alone_labels, alone_boxes = model.label_anchors(anchors, gt[:1])
    labels, boxes = model.label_anchors(anchors, gt)
    num_anchors = sum(len(a) for a in anchors)
    assert torch.equal(labels[0], alone_labels[0]) and (labels[0] < NUM_CLASSES).any()
    assert labels[1].shape == (num_anchors,) and bool((labels[1] == NUM_CLASSES).all())
    assert {type(b) for b in boxes} == {type(alone_boxes[0])}
    as_tensor = lambda b: b.tensor if isinstance(b, Boxes) else b  # noqa: E731
    assert torch.equal(as_tensor(boxes[0]), as_tensor(alone_boxes[0]))
    assert as_tensor(boxes[1]).shape == (num_anchors, 4)
    only_empty_labels, only_empty_boxes = model.label_anchors(anchors, gt[1:])
    assert bool((only_empty_labels[0] == NUM_CLASSES).all())
    assert type(only_empty_boxes[0]) is type(alone_boxes[0])


@pytest.mark.parametrize("model_name", DETECTORS)
def test_inference_output_matches_the_baseline_format(model_name):
    thresholds = {
        "retinanet_r18_fpn": "model.retinanet.score_thresh_test=0.0",
        "fcos_r18_fpn": "model.fcos.score_thresh_test=0.0",
        "gfl_r18_fpn": "model.gfl.score_thresh_test=0.0",
        "cascade_r18_fpn": "model.roi.score_thresh_test=0.0",
    }
    outputs = {}
    for ugs in ("off", "full"):
        torch.manual_seed(0)
        model = build_model(d2_config(model_name, f"ugs={ugs}", thresholds[model_name]))
        model.eval()
        with torch.no_grad():
            outputs[ugs] = model([{"image": torch.rand(3, 128, 96) * 255, "height": 256, "width": 192}])
    for ugs, out in outputs.items():
        assert len(out) == 1 and set(out[0]) == {"instances"}, ugs
        inst = out[0]["instances"]
        assert inst.image_size == (256, 192), ugs
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}, ugs
        n = len(inst)
        assert 0 < n <= 100, (ugs, n)
        assert inst.pred_boxes.tensor.shape == (n, 4) and inst.scores.shape == (n,), ugs
        assert inst.pred_classes.dtype == torch.int64 and int(inst.pred_classes.max()) < NUM_CLASSES, ugs
        boxes = inst.pred_boxes.tensor  # in the requested output resolution
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 192).all() and (boxes[:, 3] <= 256).all()), ugs
    base, ugs = outputs["off"][0]["instances"], outputs["full"][0]["instances"]
    assert base.scores.dtype == ugs.scores.dtype and base.pred_boxes.tensor.dtype == ugs.pred_boxes.tensor.dtype


# ---- end to end: the real ugs-train ----------------------------------------------------------------


@pytest.mark.slow  # 17-160 s on 2 cores, depending on other load: the rest of this file stays under a minute
def test_every_detector_trains_and_evaluates_with_ugs_full(tiny_dataset, tmp_path):
    """One real ``ugs-train`` multirun over the four presets."""
    sweep_dir = tmp_path / "sweep"
    proc = run_ugs_train(
        ["-m", f"model={','.join(DETECTORS)}", "ugs=full", *DENSE_TINY_RUN, f"dataset.root={tiny_dataset}",
         "wandb.enabled=false", f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.runtime.choices.model}"],
        cwd=str(tmp_path),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for model_name in DETECTORS:
        run_dir = sweep_dir / model_name
        assert (run_dir / "done").is_file(), model_name
        with open(run_dir / "results.json") as f:
            results = json.load(f)
        assert {"AP", "AP50", "APs", "per_class_AP"} <= set(results), model_name
        with open(run_dir / "metrics.json") as f:
            records = [json.loads(line) for line in f if line.strip()]
        logged = set([r for r in records if "total_loss" in r][-1])
        assert LOSS_KEYS[model_name] <= logged, (model_name, logged)
        assert (run_dir / "inference" / "synth_test" / "coco_instances_results.json").is_file()


@pytest.mark.parametrize(
    "project, yaml, add, apply, meta",
    [
        ("UGS_RetinaNet", "ugs_retinanet_R_18_FPN.yaml", "add_ugs_retinanet_config", "apply_retinanet_architecture", "UGSRetinaNet"),
        ("UGS_FCOS", "ugs_fcos_R_18_FPN.yaml", "add_ugs_fcos_config", "apply_fcos_architecture", "UGSFCOS"),
        ("UGS_GFL", "ugs_gfl_R_18_FPN.yaml", "add_ugs_gfl_config", "apply_gfl_architecture", "UGSGFL"),
        ("UGS_Cascade", "ugs_cascade_R_18_FPN.yaml", "add_ugs_cascade_config", "apply_cascade_architecture", "UGSCascadeRCNN"),
        pytest.param("UGS_Rotated", "ugs_rotated_R_18_FPN.yaml", "add_ugs_rotated_config", "apply_rotated_architecture",
                     "UGSRCNN", marks=pytest.mark.skipif(not compat.HAS_COMPILED_OPS, reason="rotated ops are compiled")),
    ],
)
def test_project_yaml_builds_with_plain_detectron2(project, yaml, add, apply, meta):
    """The READMEs' detectron2 usage: get_cfg + add_x_config + merge the project's yaml + apply."""
    import os

    from detectron2.config import get_cfg

    package = load_project(project)
    cfg = get_cfg()
    getattr(package, add)(cfg)
    projects_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects")
    cfg.merge_from_file(os.path.join(projects_dir, project, "configs", yaml))
    cfg.MODEL.DEVICE = "cpu"
    getattr(package, apply)(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == meta
    model = build_model(cfg)
    assert type(model).__name__ == meta


def test_gradvar_probe_refuses_project_detectors():
    """The probe hooks the core ROI box predictor: a project detector fails at start, by key."""
    cfg = _compose(["model=retinanet_r18_fpn", "gradvar.enabled=true"])
    with pytest.raises(ConfigError, match="^gradvar.enabled: .*model.project=UGS_RetinaNet"):
        to_detectron2_cfg(cfg, "/tmp/unused", num_classes=6)
