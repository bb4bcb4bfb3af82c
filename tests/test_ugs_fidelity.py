"""UGS where it matters: grid readings, the UR perturbation's scope, the lean UR pass, grids in
checkpoints, the Table-6 controls and the loss balance of dense heads and Cascade."""
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from test_modeling import tiny_batch, tiny_cfg, train_losses

from ugs_d2.bins import GRID_FORMS, in_grid
from ugs_d2.engine.checkpoint import AtomicCheckpointer
from ugs_d2.losses import adversarial_perturbation
from ugs_d2.modeling.stage import BinLocalization, GridMismatchError, check_grids


@pytest.fixture(scope="module")
def batch():
    return tiny_batch()


def full_cfg(**keys):
    ugs = dict(RPN__ENABLED=True, ROI__ENABLED=True, UM_WEIGHT=0.5, UR_WEIGHT=0.5, UR_RHO=0.5)
    ugs.update(keys)
    return tiny_cfg(**ugs)


# ---- grid readings (Eq. 9) ----------------------------------------------------------------------


@pytest.mark.parametrize("form", GRID_FORMS)
@pytest.mark.parametrize("a, b, n", [(2.0, 1.0, 10), (5.0, 1.0, 5), (5.0, 3.0, 6), (1.0, 0.5, 1)])
def test_both_grid_forms_are_odd_increasing_with_endpoints(form, a, b, n):
    grid = in_grid(a, b, n, form=form, dtype=torch.float64)
    assert grid.numel() == n + 1
    assert torch.all(grid[1:] > grid[:-1])
    torch.testing.assert_close(grid, -grid.flip(0), rtol=0, atol=1e-12)
    assert grid[0].item() == -a and grid[-1].item() == a
    assert torch.equal(in_grid(a, 0.0, n, form=form, dtype=torch.float64), in_grid(a, 0.0, n, dtype=torch.float64))


def test_grid_forms_by_hand():
    # coupled: g = a (e^{b|u|} - 1)/(e^{ab} - 1); normalized: g = a (e^{b|u|/a} - 1)/(e - 1)
    a, u = 5.0, 3.0  # the point i = 4 of n = 5: u = -5 + 10 * 4 / 5 = 3
    coupled = in_grid(a, 1.0, 5, dtype=torch.float64)[4].item()
    normalized = in_grid(a, 1.0, 5, form="normalized", dtype=torch.float64)[4].item()
    assert coupled == pytest.approx(a * math.expm1(u) / math.expm1(a), rel=1e-12)
    assert normalized == pytest.approx(a * math.expm1(u / a) / math.expm1(1.0), rel=1e-12)
    # the normalized grid's shape does not depend on the range: a and b independent (Table 7)
    torch.testing.assert_close(
        in_grid(2.0, 1.5, 8, form="normalized", dtype=torch.float64) / 2.0,
        in_grid(7.0, 1.5, 8, form="normalized", dtype=torch.float64) / 7.0,
    )
    with pytest.raises(ValueError, match="grid form"):
        in_grid(2.0, 1.0, 4, form="other")


def test_grid_form_reaches_the_model_and_the_hydra_key_is_checked():
    model = build_model(tiny_cfg(ROI__ENABLED=True, ROI__GRID_FORM="normalized"))
    torch.testing.assert_close(
        model.roi_heads.box_predictor.localization.grid, in_grid(5.0, 1.0, 5, form="normalized")
    )
    with pytest.raises(ValueError, match="MODEL.UGS.RPN.GRID_FORM must be one of coupled, normalized"):
        tiny_cfg(RPN__GRID_FORM="log")


# ---- UR's perturbation (Eq. 15) -----------------------------------------------------------------


def test_location_scope_moves_each_position_by_rho_times_its_norm():
    features = torch.randn(2, 8, 3, 4) * 100
    grad = torch.randn(2, 8, 3, 4)
    grad[0, :, 1, 2] = 0  # a position without gradient stays
    eps = adversarial_perturbation(grad, 0.5, "location", features)
    expected = 0.5 * features.norm(dim=1)
    expected[0, 1, 2] = 0
    torch.testing.assert_close(eps.norm(dim=1), expected, rtol=1e-5, atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(eps[1].flatten(1), grad[1].flatten(1), dim=0)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_relative_scope_is_rho_times_the_level_norm_and_needs_features():
    features, grad = torch.randn(3, 4, 5, 5) * 1000, torch.randn(3, 4, 5, 5)
    eps = adversarial_perturbation(grad, 0.25, "relative", features)
    torch.testing.assert_close(eps.flatten(1).norm(dim=1), 0.25 * features.flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="needs the features"):
        adversarial_perturbation(grad, 0.25, "relative")
    with pytest.raises(ValueError, match="UR norm must be one of image, relative, location"):
        adversarial_perturbation(grad, 0.25, "global", features)


@pytest.mark.parametrize("norm, lo, hi", [("relative", 0.4999, 0.5001), ("image", 0.0, 0.05)])
def test_ur_logs_eps_ratio_and_loss_delta(batch, norm, lo, hi):
    model = build_model(full_cfg(UR_NORM=norm))
    model.train()
    torch.manual_seed(0)
    with EventStorage(0) as storage:
        model(batch)
        latest = {k: v[0] for k, v in storage.latest().items()}
    assert lo <= latest["ur/eps_ratio"] <= hi, latest["ur/eps_ratio"]
    assert math.isfinite(latest["ur/loss_delta"])


def test_rho_zero_ur_is_the_first_pass_reweighted(batch):
    """rho = 0: the UR pass sees the clean features, so loss_ur = gamma x the detection losses."""
    torch.manual_seed(0)
    model = build_model(full_cfg(UR_RHO=0.0, RPN__ENABLED=False, ROI__ENABLED=True))
    # deterministic RPN sampling (every anchor kept) so that both passes see the same samples
    model.proposal_generator.batch_size_per_image = 10**6
    losses = train_losses(model, batch)
    detection = losses["loss_rpn_cls"] + losses["loss_rpn_loc"] + losses["loss_cls"] + losses["loss_box_reg"]
    torch.testing.assert_close(losses["loss_ur"], 0.5 * detection, rtol=1e-5, atol=1e-6)


def test_ur_losses_loc_keeps_only_localization_terms(batch):
    torch.manual_seed(0)
    model = build_model(full_cfg(UR_RHO=0.0, UR_LOSSES="loc"))
    model.proposal_generator.batch_size_per_image = 10**6
    losses = train_losses(model, batch)
    torch.testing.assert_close(
        losses["loss_ur"], 0.5 * (losses["loss_rpn_loc"] + losses["loss_box_reg"]), rtol=1e-5, atol=1e-6
    )


# ---- the lean UR pass equals the plain recomputation ---------------------------------------------


@pytest.mark.parametrize("norm", ["relative", "image", "location"])
def test_lean_ur_equals_plain_recomputation(batch, norm):
    torch.manual_seed(0)
    model = build_model(full_cfg(UR_NORM=norm))
    # every anchor kept: the plain pass's second matching and sampling select the same anchors
    model.proposal_generator.batch_size_per_image = 10**6
    calls = {"n": 0}
    matcher = model.proposal_generator.anchor_matcher

    def counting_matcher(*args):
        calls["n"] += 1
        return matcher(*args)

    model.proposal_generator.anchor_matcher = counting_matcher
    lean = train_losses(model, batch)
    lean_calls, calls["n"] = calls["n"], 0
    model.refinement.impl = "plain"
    plain = train_losses(model, batch)
    assert (lean_calls, calls["n"]) == (len(batch), 2 * len(batch))  # lean matches once per image
    for key in plain:
        torch.testing.assert_close(lean[key], plain[key], rtol=1e-5, atol=1e-5, msg=key)
    # and the gradients agree too (ROIAlign's linearity keeps the backward exact)
    grads = []
    for impl in ("lean", "plain"):
        model.refinement.impl = impl
        model.zero_grad()
        train_losses(model, batch)["loss_ur"].backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for g_lean, g_plain in zip(*grads):
        torch.testing.assert_close(g_lean, g_plain, rtol=1e-4, atol=1e-6)


# ---- grids travel with the checkpoint ------------------------------------------------------------


def test_check_grids_names_the_key_and_both_grids():
    mine = {"roi_heads.box_predictor.localization.grid": torch.tensor([-1.0, 0.0, 1.0]), "w": torch.zeros(1)}
    check_grids(mine, dict(mine), "ckpt.pth")  # equal: fine
    check_grids(mine, {"w": torch.zeros(1)}, "ckpt.pth")  # an old checkpoint without grids: fine
    with pytest.raises(GridMismatchError) as err:
        check_grids(mine, {"roi_heads.box_predictor.localization.grid": torch.tensor([-2.0, 0.0, 2.0])}, "ckpt.pth")
    message = str(err.value)
    assert "\n" not in message and "ckpt.pth" in message and "localization.grid" in message
    assert "[-2, 0, 2]" in message and "[-1, 0, 1]" in message


@pytest.mark.parametrize("change", [{"ROI__MODULATOR": 2.0}, {"ROI__NUM_INTERVALS": 7}, {"ROI__GRID_FORM": "normalized"}])
def test_a_checkpoint_with_another_grid_is_refused(tmp_path, change):
    trained = build_model(tiny_cfg(ROI__ENABLED=True))
    AtomicCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    AtomicCheckpointer(build_model(tiny_cfg(ROI__ENABLED=True))).load(path)  # same grid: loads
    with pytest.raises(GridMismatchError, match="roi_heads.box_predictor.localization.grid"):
        AtomicCheckpointer(build_model(tiny_cfg(ROI__ENABLED=True, **change))).load(path)


# ---- Table 6 controls and loss balance -----------------------------------------------------------


def test_det_loss_scale_multiplies_detection_losses_only(batch):
    torch.manual_seed(0)
    base = build_model(tiny_cfg(RPN__ENABLED=True, ROI__ENABLED=True, UM_WEIGHT=0.5))
    scaled = build_model(tiny_cfg(RPN__ENABLED=True, ROI__ENABLED=True, UM_WEIGHT=0.5, DET_LOSS_SCALE=1.5))
    scaled.load_state_dict(base.state_dict())
    want, got = train_losses(base, batch), train_losses(scaled, batch)
    for key in want:
        factor = 1.0 if key.startswith("loss_um") else 1.5
        torch.testing.assert_close(got[key], factor * want[key], msg=key)


def test_dense_balance_is_gfl_style_by_hand():
    """Uniform logits: CE = entropy = ln K per coordinate; GFL balance = 0.25 x the mean over 4."""
    K = 11
    stage = BinLocalization(
        "bins", in_grid(2.0, 1.0, K - 1), um_weight=0.5, loc_weight=0.25, coord_reduction="mean"
    )
    stage.return_entropy = True
    logits, targets = torch.zeros(3, 4, K), torch.zeros(3, 4)
    out = stage.losses(logits, targets, normalizer=3.0)
    # n = 10 puts a grid point at 0: the two-hot label is one-hot there, CE = -log(1/K) = ln K
    assert out["loc"].item() == pytest.approx(0.25 * math.log(K))
    assert out["loss_um"].item() == pytest.approx(0.5 * 0.25 * math.log(K))
    assert out["ugs_entropy"].item() == pytest.approx(0.25 * math.log(K))
    summed = BinLocalization("bins", in_grid(2.0, 1.0, K - 1)).losses(logits, targets, normalizer=3.0)
    assert summed["loc"].item() == pytest.approx(4 * math.log(K))  # R-CNN: sum over 4, weight 1


def test_cascade_stage_weights_apply_to_stage_losses_not_entropies():
    from ugs_d2.config import load_project

    weight_stage_losses = load_project("UGS_Cascade").cascade.weight_stage_losses
    losses = {
        "loss_cls_stage0": torch.tensor(1.0),
        "loss_box_reg_stage1": torch.tensor(1.0),
        "loss_um_roi_stage2": torch.tensor(1.0),
        "ugs_entropy_roi_stage2": torch.tensor(1.0),
        "loss_rpn_cls": torch.tensor(1.0),
    }
    out = weight_stage_losses(losses, [1.0, 0.5, 0.25])
    assert {k: v.item() for k, v in out.items()} == {
        "loss_cls_stage0": 1.0,
        "loss_box_reg_stage1": 0.5,
        "loss_um_roi_stage2": 0.25,
        "ugs_entropy_roi_stage2": 1.0,
        "loss_rpn_cls": 1.0,
    }


def test_dense_decoding_transform_decodes_only_the_rows_it_applies():
    from detectron2.modeling.box_regression import Box2BoxTransform

    from ugs_d2.bins import expectation
    from ugs_d2.modeling.stage import BinDecodingTransform

    grid = in_grid(2.0, 1.0, 10)
    transform = BinDecodingTransform(Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), BinLocalization("bins", grid))
    logits, anchors = torch.randn(5, 4 * 11), torch.tensor([[0.0, 0.0, 10.0, 20.0]]).repeat(5, 1)
    want = Box2BoxTransform((1.0, 1.0, 1.0, 1.0)).apply_deltas(expectation(logits.view(5, 4, 11), grid), anchors)
    torch.testing.assert_close(transform.apply_deltas(logits, anchors), want)
    deltas = torch.randn(5, 4)  # plain deltas pass through
    torch.testing.assert_close(transform.apply_deltas(deltas, anchors), transform.transform.apply_deltas(deltas, anchors))
    assert transform.apply_deltas(torch.zeros(0, 44), anchors[:0]).shape == (0, 4)  # no detection
    assert transform.weights == (1.0, 1.0, 1.0, 1.0)  # other attributes are the wrapped one's


def test_an_angle_grid_bins_the_fifth_coordinate_on_its_own_grid_by_hand():
    """Oriented boxes: dx, dy, dw, dh on the stage grid, da on the angle grid (same K)."""
    from ugs_d2.bins import expectation
    from ugs_d2.losses import bin_cross_entropy

    grid, angle_grid = in_grid(2.0, 1.0, 4), in_grid(0.5, 1.0, 4)
    stage = BinLocalization("bins", grid, angle_grid=angle_grid)
    assert stage.num_coords == 5 and BinLocalization("bins", grid).num_coords == 4
    logits, targets = torch.randn(3, 5, 5), torch.tensor([[0.1, -0.3, 1.2, 0.0, 0.2]] * 3)
    point = stage.point(logits)
    torch.testing.assert_close(point[:, :4], expectation(logits[:, :4], grid))
    torch.testing.assert_close(point[:, 4], expectation(logits[:, 4], angle_grid))
    assert point[:, 4].abs().max() <= 0.5  # the angle decodes inside its own range
    want = (bin_cross_entropy(logits[:, :4], targets[:, :4], grid).sum()
            + bin_cross_entropy(logits[:, 4], targets[:, 4], angle_grid).sum()) / 2.0
    torch.testing.assert_close(stage.loc_loss(logits, targets, normalizer=2.0), want)
    # a target of 0.2 on the angle grid is not what it would be on the stage grid
    assert not torch.allclose(stage.loc_loss(logits, targets, 2.0), BinLocalization("bins", in_grid(
        2.0, 1.0, 4)).loc_loss(logits[:, :4], targets[:, :4], 2.0) + bin_cross_entropy(
        logits[:, 4], targets[:, 4], grid).sum() / 2.0)
    with pytest.raises(ValueError, match="angle grid needs bins and as many points"):
        BinLocalization("bins", grid, angle_grid=in_grid(0.5, 1.0, 6))
    # the angle grid travels with the checkpoint and a different one is refused
    other = BinLocalization("bins", grid, angle_grid=in_grid(0.7, 1.0, 4))
    with pytest.raises(GridMismatchError, match="angle_grid was trained with grid"):
        check_grids(other.state_dict(), stage.state_dict(), "ckpt.pth")
