"""UGS config keys and registered detectron2 modules, on a tiny ResNet-18-FPN Faster R-CNN (CPU)."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from ugs_d2.modeling import (
    UGSRCNN,
    UGSRPN,
    UGSFastRCNNOutputLayers,
    UGSROIHeads,
    UGSRPNHead,
    add_ugs_config,
    apply_ugs_architecture,
    validate_ugs_config,
)
from ugs_d2.modeling.refinement import RefinementSettings, perturb
from ugs_d2.modeling.rpn import unflatten_box_params

NUM_CLASSES = 3
DETECTION_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}


def tiny_cfg(**ugs):
    """A 64-128 px ResNet-18-FPN Faster R-CNN config; ``ugs`` sets MODEL.UGS keys, e.g.
    ``RPN__ENABLED=True``, then the classes are picked by apply_ugs_architecture."""
    cfg = get_cfg()
    add_ugs_config(cfg)
    m = cfg.MODEL
    m.DEVICE = "cpu"
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.DEPTH = 18
    m.RESNETS.RES2_OUT_CHANNELS = 64
    m.RESNETS.NORM = "BN"
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.OUT_CHANNELS = 32
    m.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.BATCH_SIZE_PER_IMAGE = 64
    m.RPN.PRE_NMS_TOPK_TRAIN = m.RPN.PRE_NMS_TOPK_TEST = 200
    m.RPN.POST_NMS_TOPK_TRAIN = m.RPN.POST_NMS_TOPK_TEST = 50
    m.ROI_HEADS.NAME = "StandardROIHeads"
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC = 2
    m.ROI_BOX_HEAD.FC_DIM = 64
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    for key, value in ugs.items():
        node = m.UGS
        *path, leaf = key.split("__")
        for part in path:
            node = node[part]
        node[leaf] = value
    return apply_ugs_architecture(cfg)


def tiny_batch(seed=0):
    """Two random images (128x96, 96x128) with 1-4 random boxes of 6-40 px each."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in ((128, 96), (96, 128)):
        n = int(torch.randint(1, 5, (1,), generator=g))
        size = 6 + 34 * torch.rand(n, 2, generator=g)
        x1y1 = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - size)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([x1y1, x1y1 + size], dim=1))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


def train_losses(model, batch, seed=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage(0):
        return model(batch)


def predict(model, batch):
    model.eval()
    with torch.no_grad():
        return [out["instances"] for out in model(batch)]


@pytest.fixture(scope="module")
def batch():
    return tiny_batch()


@pytest.fixture(scope="module")
def baseline_predictions(batch):
    torch.manual_seed(0)
    return predict(build_model(tiny_cfg()), batch)


# ----------------------------------------------------------------------------- config


def test_defaults_are_the_detectron2_baseline():
    cfg = tiny_cfg()
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN"
    assert cfg.MODEL.RPN.HEAD_NAME == "StandardRPNHead"
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    ugs = cfg.MODEL.UGS
    assert (ugs.RPN.RANGE, ugs.RPN.MODULATOR, ugs.RPN.NUM_INTERVALS) == (2.0, 1.0, 10)
    assert (ugs.ROI.RANGE, ugs.ROI.MODULATOR, ugs.ROI.NUM_INTERVALS) == (5.0, 1.0, 5)
    assert (ugs.UM_WEIGHT, ugs.UR_WEIGHT, ugs.UR_RHO) == (0.0, 0.0, 0.5)
    assert ugs.UR_LEVELS == ["p2", "p3", "p4", "p5", "p6"]

    def keys(node, prefix=""):
        for k, v in node.items():
            yield prefix + k
            if hasattr(v, "items"):
                yield from keys(v, prefix + k + ".")

    assert not any("LAMBDA" in k.upper().split(".")[-1] for k in keys(cfg))


@pytest.mark.parametrize(
    "ugs, names",
    [
        ({"RPN__REG_LOSS": "giou", "ROI__REG_LOSS": "giou"},
         ("GeneralizedRCNN", "RPN", "StandardRPNHead", "StandardROIHeads", "giou", "giou")),
        ({"RPN__ENABLED": True},
         ("UGSRCNN", "UGSRPN", "UGSRPNHead", "StandardROIHeads", "smooth_l1", "smooth_l1")),
        ({"ROI__REG_LOSS": "kl"},
         ("UGSRCNN", "RPN", "StandardRPNHead", "UGSROIHeads", "smooth_l1", "smooth_l1")),
        # UR uses the UGS RPN even for a native stage: its pass reuses the first pass's labels
        ({"ROI__ENABLED": True, "UR_WEIGHT": 0.5},
         ("UGSRCNN", "UGSRPN", "UGSRPNHead", "UGSROIHeads", "smooth_l1", "smooth_l1")),
    ],
)
def test_apply_ugs_architecture_picks_the_classes(ugs, names):
    m = tiny_cfg(**ugs).MODEL
    got = (
        m.META_ARCHITECTURE,
        m.PROPOSAL_GENERATOR.NAME,
        m.RPN.HEAD_NAME,
        m.ROI_HEADS.NAME,
        m.RPN.BBOX_REG_LOSS_TYPE,
        m.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE,
    )
    assert got == names


def test_apply_ugs_architecture_switches_back_only_its_own_names():
    cfg = tiny_cfg(ROI__ENABLED=True)
    cfg.MODEL.UGS.ROI.ENABLED = False
    apply_ugs_architecture(cfg)
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    apply_ugs_architecture(cfg)
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("RPN.RANGE", -1.0, "MODEL.UGS.RPN.RANGE must be > 0, got -1.0"),
        ("ROI.RANGE", 0.0, "MODEL.UGS.ROI.RANGE must be > 0"),
        ("ROI.NUM_INTERVALS", 0, "MODEL.UGS.ROI.NUM_INTERVALS must be an integer >= 1"),
        ("RPN.MODULATOR", float("nan"), "MODEL.UGS.RPN.MODULATOR"),
        ("RPN.REG_LOSS", "l2", "MODEL.UGS.RPN.REG_LOSS must be one of"),
        ("UM_WEIGHT", -0.5, "MODEL.UGS.UM_WEIGHT must be >= 0"),
        ("UR_WEIGHT", -1.0, "MODEL.UGS.UR_WEIGHT must be >= 0"),
        ("UR_RHO", -0.1, "MODEL.UGS.UR_RHO must be >= 0"),
        ("UR_LEVELS", ["p2", "p9"], "MODEL.UGS.UR_LEVELS has unknown level 'p9'"),
        ("UM_WEIGHT", 0.5, "MODEL.UGS.UM_WEIGHT > 0 needs MODEL.UGS.RPN.ENABLED"),
    ],
)
def test_validation_names_the_key(key, value, message):
    cfg = tiny_cfg()
    node = cfg.MODEL.UGS
    *path, leaf = key.split(".")
    for part in path:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError) as err:
        validate_ugs_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- modules

VARIANTS = {
    "baseline": {},
    "giou": {"RPN__REG_LOSS": "giou", "ROI__REG_LOSS": "giou"},
    "rpn_bins": {"RPN__ENABLED": True},
    "roi_bins": {"ROI__ENABLED": True},
    "bins_um": {"RPN__ENABLED": True, "ROI__ENABLED": True, "UM_WEIGHT": 0.5},
    "full_ur": {"RPN__ENABLED": True, "ROI__ENABLED": True, "UM_WEIGHT": 0.5, "UR_WEIGHT": 0.5},
    "ur_without_um": {"ROI__ENABLED": True, "UR_WEIGHT": 0.5, "UR_LEVELS": ["p2", "p3"]},
    "rpn_kl": {"RPN__REG_LOSS": "kl"},
    "roi_kl": {"ROI__REG_LOSS": "kl"},
    "agnostic_roi_bins": {"ROI__ENABLED": True, "UM_WEIGHT": 0.5, "_agnostic": True},
    "agnostic_roi_kl": {"ROI__REG_LOSS": "kl", "_agnostic": True},
    # decodes boxes for the GT classes during training (predict_boxes_for_gt_classes)
    "roi_bins_train_on_pred_boxes": {"ROI__ENABLED": True, "_train_on_pred_boxes": True},
}


def variant_cfg(name):
    ugs = dict(VARIANTS[name])
    agnostic = ugs.pop("_agnostic", False)
    train_on_pred_boxes = ugs.pop("_train_on_pred_boxes", False)
    cfg = tiny_cfg(**ugs)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = agnostic
    cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = train_on_pred_boxes
    return cfg


def expected_keys(cfg):
    ugs = cfg.MODEL.UGS
    keys = set(DETECTION_KEYS)
    if ugs.UM_WEIGHT > 0 and ugs.RPN.ENABLED:
        keys.add("loss_um_rpn")
    if ugs.UM_WEIGHT > 0 and ugs.ROI.ENABLED:
        keys.add("loss_um_roi")
    if ugs.UR_WEIGHT > 0:
        keys.add("loss_ur")
    return keys


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_and_predicts_like_the_baseline(name, batch, baseline_predictions):
    cfg = variant_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = train_losses(model, batch)
    assert set(losses) == expected_keys(cfg)
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    sum(losses.values()).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    predictions = predict(model, batch)
    for got, want in zip(predictions, baseline_predictions):
        assert set(got.get_fields()) == set(want.get_fields())
        assert got.image_size == want.image_size
        assert got.pred_boxes.tensor.shape[1:] == want.pred_boxes.tensor.shape[1:] == (4,)
        assert torch.isfinite(got.pred_boxes.tensor).all()


def test_ugs_modules_are_registered_and_shaped():
    cfg = variant_cfg("full_ur")
    model = build_model(cfg)
    assert isinstance(model, UGSRCNN)
    assert isinstance(model.proposal_generator, UGSRPN)
    assert isinstance(model.proposal_generator.rpn_head, UGSRPNHead)
    assert isinstance(model.roi_heads, UGSROIHeads)
    assert isinstance(model.roi_heads.box_predictor, UGSFastRCNNOutputLayers)
    num_anchors, bins_rpn, bins_roi = 3, 10 + 1, 5 + 1
    rpn_box_conv = model.proposal_generator.rpn_head.anchor_deltas
    assert rpn_box_conv.out_channels == num_anchors * 4 * bins_rpn
    assert model.roi_heads.box_predictor.bbox_pred.out_features == NUM_CLASSES * 4 * bins_roi
    cfg = variant_cfg("agnostic_roi_kl")
    assert build_model(cfg).roi_heads.box_predictor.bbox_pred.out_features == 1 * 4 * 2


@pytest.mark.parametrize("reg_loss", ["smooth_l1", "giou"])
def test_ugs_classes_in_native_mode_equal_detectron2(reg_loss, batch):
    """With bins and KL off, the UGS classes compute exactly detectron2's losses and boxes."""
    base_cfg = tiny_cfg(RPN__REG_LOSS=reg_loss, ROI__REG_LOSS=reg_loss)
    base = build_model(base_cfg)
    ugs_cfg = base_cfg.clone()
    ugs_cfg.MODEL.META_ARCHITECTURE = "UGSRCNN"
    ugs_cfg.MODEL.PROPOSAL_GENERATOR.NAME = "UGSRPN"
    ugs_cfg.MODEL.RPN.HEAD_NAME = "UGSRPNHead"
    ugs_cfg.MODEL.ROI_HEADS.NAME = "UGSROIHeads"
    ugs = build_model(ugs_cfg)
    ugs.load_state_dict(base.state_dict())  # same parameter names: strict load
    want, got = train_losses(base, batch), train_losses(ugs, batch)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    for g, w in zip(predict(ugs, batch), predict(base, batch)):
        torch.testing.assert_close(g.pred_boxes.tensor, w.pred_boxes.tensor, rtol=0, atol=0)


def test_ur_recomputes_only_detection_losses(batch):
    """loss_ur = UR_WEIGHT * (rpn + roi detection losses on perturbed features), no UM inside."""
    cfg = variant_cfg("full_ur")
    torch.manual_seed(0)
    model = build_model(cfg)
    seen = {}
    original = model.refinement_losses

    def spy(*args):
        seen.update(original(*args))
        return seen

    model.refinement_losses = spy
    losses = train_losses(model, batch)
    assert DETECTION_KEYS <= set(seen)  # the UR pass may also return UM terms: not counted
    torch.testing.assert_close(losses["loss_ur"], 0.5 * sum(seen[k] for k in DETECTION_KEYS))
    assert not any(k.startswith("ugs_entropy") for k in losses)
    # loss_ur alone trains the backbone and both heads (through the perturbed features)
    losses["loss_ur"].backward()
    for module in (model.backbone, model.proposal_generator, model.roi_heads):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("norm", ["image", "relative"])
def test_perturbation_is_detached_and_has_the_norm_of_its_scope(norm):
    settings = RefinementSettings(weight=0.5, rho=0.5, levels=["p2", "p3", "p4"], norm=norm)
    features = {k: torch.randn(2, 4, 5, 6, requires_grad=True) for k in ("p2", "p3", "p7")}
    uncertainty = sum((f**3).sum() for f in features.values())
    perturbed, eps = perturb(features, uncertainty, settings)
    assert perturbed["p7"] is features["p7"] and set(eps) == {"p2", "p3"}  # p7 is no UR level
    for level in ("p2", "p3"):
        delta = perturbed[level] - features[level]
        norms = delta.detach().flatten(1).norm(dim=1)
        scale = features[level].detach().flatten(1).norm(dim=1) if norm == "relative" else 1.0
        torch.testing.assert_close(norms, 0.5 * scale * torch.ones(2))
        # the perturbation is a constant: d(perturbed)/d(features) is the identity
        (grad,) = torch.autograd.grad(perturbed[level].sum(), features[level])
        torch.testing.assert_close(grad, torch.ones_like(grad))


def test_ur_needs_levels_the_backbone_has():
    cfg = variant_cfg("full_ur")
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"  # outputs res4 only: no FPN levels
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
    with pytest.raises(ValueError, match="MODEL.UGS.UR_LEVELS"):
        build_model(cfg)


def test_bins_decode_to_the_grid_range(batch):
    """Proposals and boxes come from expectations, so finite and anchored even when untrained."""
    model = build_model(variant_cfg("bins_um"))
    rpn = model.proposal_generator
    logits = torch.randn(2, 7, rpn.params_per_coord, 4) * 50
    deltas = rpn.point_deltas(logits)
    assert deltas.shape == (2, 7, 4) and deltas.abs().max() <= rpn.localization.grid[-1]
    head = model.roi_heads.box_predictor
    params = torch.randn(5, NUM_CLASSES * 4 * head.params_per_coord) * 50
    deltas = head.point_deltas(params)
    assert deltas.shape == (5, NUM_CLASSES * 4) and deltas.abs().max() <= head.localization.grid[-1]
    assert math.isclose(head.localization.grid[-1].item(), 5.0)


def test_rpn_box_params_layout_survives_detectron2_reshape():
    """The head's (A, P, 4) channel layout, reshaped by detectron2's own RPN.forward, unflattens
    to (N, R, P, 4) with R ordered like the anchors (Hi, Wi, A)."""
    rpn = build_model(variant_cfg("rpn_bins")).proposal_generator.eval()
    A, P, H, W = 3, rpn.params_per_coord, 2, 3
    a, p, c, h, w = torch.meshgrid(*(torch.arange(k) for k in (A, P, 4, H, W)), indexing="ij")
    code = (((a * 100 + p) * 10 + c) * 10 + h) * 10 + w  # unique per (a, p, c, h, w)
    head_out = code.reshape(1, A * P * 4, H, W).float()  # channel index = (a * P + p) * 4 + c
    rpn.rpn_head.forward = lambda features: ([torch.zeros(1, A, H, W)], [head_out])
    captured = {}
    rpn.predict_proposals = lambda anchors, logits, deltas, sizes: captured.setdefault("d", deltas)
    rpn.in_features = ["p2"]
    images = ImageList(torch.zeros(1, 3, 4 * H, 4 * W), [(4 * H, 4 * W)])
    rpn(images, {"p2": torch.zeros(1, 32, H, W)})
    params = unflatten_box_params(captured["d"][0], P)  # (1, H*W*A, P, 4)
    r = (h * W + w) * A + a
    assert torch.equal(params[0, r, p, c], code.float())


@pytest.mark.parametrize("training", [False, True])
def test_rpn_decodes_only_selectable_anchors_with_the_same_result(training):
    """UGSRPN.predict_proposals (top-k first, then decode) equals decoding every anchor."""
    from detectron2.modeling.proposal_generator.rpn import RPN

    torch.manual_seed(0)
    cfg = tiny_cfg(RPN__ENABLED=True)
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 50
    model = build_model(cfg).train(training)
    rpn = model.proposal_generator
    images = ImageList(torch.zeros(2, 3, 128, 128), [(128, 96), (96, 128)])
    features = {f: torch.randn(2, 32, 128 // s, 128 // s) for f, s in zip(["p2", "p3", "p4", "p5", "p6"], [4, 8, 16, 32, 64])}
    feats = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(feats)
    logits, params = rpn.rpn_head(feats)
    logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    params = [
        x.view(x.shape[0], -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        for x in params
    ]
    fast = rpn.predict_proposals(anchors, logits, params, images.image_sizes)
    point = [rpn.point_deltas(unflatten_box_params(x, rpn.params_per_coord)) for x in params]
    slow = RPN.predict_proposals(rpn, anchors, logits, point, images.image_sizes)
    for a, b in zip(fast, slow):
        assert torch.allclose(a.proposal_boxes.tensor, b.proposal_boxes.tensor, atol=1e-5)
        assert torch.allclose(a.objectness_logits, b.objectness_logits)
