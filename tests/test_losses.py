"""Bin cross-entropy (Eqs. 10-11), entropy (Eq. 12), perturbation (Eq. 15), KL loss (Table 6)."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.box_regression import Box2BoxTransform
from fvcore.nn import smooth_l1_loss

from ugs_d2.bins import in_grid, two_hot
from ugs_d2.losses import adversarial_perturbation, bin_cross_entropy, entropy, kl_loss

ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # detectron2's MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS


def boxes_of_size(size: float, offset: float = 0.2, scale: float = 1.3):
    """A proposal of side ``size`` px and a GT box shifted by ``offset * size`` and
    ``scale`` times larger: the same relative error at every size. Returns (2, 4) tensors."""
    proposal = torch.tensor([[100.0, 100.0, 100.0 + size, 100.0 + size]], dtype=torch.float64)
    centre, half = 100.0 + size * (0.5 + offset), size * scale / 2
    gt = torch.tensor([[centre - half] * 2 + [centre + half] * 2], dtype=torch.float64)
    return proposal, gt


def test_bin_cross_entropy_matches_soft_target_cross_entropy():
    grid = in_grid(2.0, 1.0, 10, dtype=torch.float64)
    logits = torch.randn(3, 4, 11, dtype=torch.float64)
    targets = torch.randn(3, 4, dtype=torch.float64)
    loss = bin_cross_entropy(logits, targets, grid)
    assert loss.shape == (3, 4)
    soft_labels = two_hot(targets, grid).flatten(0, 1)
    want = F.cross_entropy(logits.flatten(0, 1), soft_labels, reduction="none")
    torch.testing.assert_close(loss, want.view(3, 4))


@pytest.mark.parametrize("size", [2.0, 8.0, 32.0, 256.0, 2048.0])
def test_bin_cross_entropy_gradient_is_bounded_at_every_size(size):
    """Eq. 11: d loss / d logits = softmax - two_hot, in [-1, 1], whatever the box size."""
    grid = in_grid(5.0, 1.0, 5, dtype=torch.float64)
    proposal, gt = boxes_of_size(size)
    targets = Box2BoxTransform(ROI_WEIGHTS).get_deltas(proposal, gt)  # (1, 4)
    logits = (torch.randn(1, 4, 6, dtype=torch.float64) * 5).requires_grad_()
    (grad,) = torch.autograd.grad(bin_cross_entropy(logits, targets, grid).sum(), logits)
    torch.testing.assert_close(grad, logits.softmax(-1).detach() - two_hot(targets, grid))
    assert grad.abs().max() <= 1.0


def test_smooth_l1_gradient_grows_as_boxes_shrink_but_bin_ce_does_not():
    """Section 3.1: with the same relative error, smooth-L1 on encoded deltas has a gradient wrt
    the predicted pixel coordinates ~ 1/size; the bin-CE gradient wrt its logits is the same at
    every size (it only sees the encoded target) and bounded by 1."""
    transform = Box2BoxTransform(ROI_WEIGHTS)
    grid = in_grid(5.0, 1.0, 5, dtype=torch.float64)
    logits = torch.randn(1, 4, 6, dtype=torch.float64)
    smooth_l1_grad, bin_ce_grad = {}, {}
    for size in (8.0, 256.0):
        proposal, gt = boxes_of_size(size)
        predicted = proposal.clone().requires_grad_()  # x1, y1, x2, y2 in pixels
        loss = smooth_l1_loss(
            transform.get_deltas(proposal, predicted), transform.get_deltas(proposal, gt), beta=0.0
        ).sum()  # beta = 0: detectron2's default MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA
        (smooth_l1_grad[size],) = torch.autograd.grad(loss, predicted)
        z = logits.clone().requires_grad_()
        target = transform.get_deltas(proposal, gt)
        (bin_ce_grad[size],) = torch.autograd.grad(bin_cross_entropy(z, target, grid).sum(), z)
    ratio = smooth_l1_grad[8.0].norm() / smooth_l1_grad[256.0].norm()
    assert ratio == pytest.approx(256.0 / 8.0, rel=1e-6)
    assert smooth_l1_grad[8.0].abs().max() > 1.0
    torch.testing.assert_close(bin_ce_grad[8.0], bin_ce_grad[256.0])
    assert bin_ce_grad[8.0].abs().max() <= 1.0


def test_entropy_limits():
    one_hot = torch.zeros(5, 11)
    one_hot[:, 3] = 1e4
    assert entropy(one_hot).max() < 1e-6
    torch.testing.assert_close(entropy(torch.zeros(2, 3, 11)), torch.full((2, 3), math.log(11)))
    logits = torch.randn(7, 6) * 3
    reference = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy(logits), reference)
    assert (entropy(logits) >= 0).all() and (entropy(logits) <= math.log(6) + 1e-6).all()


def test_entropy_gradient_is_finite_when_saturated():
    logits = torch.tensor([[1e4, 0.0, -1e4]], requires_grad=True)
    entropy(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_perturbation_has_norm_rho_per_image():
    grad = torch.randn(3, 8, 5, 7)
    grad[1] *= 1e-6  # tiny and large gradients both give norm rho
    grad[2] *= 1e6
    eps = adversarial_perturbation(grad, 0.5)
    assert eps.shape == grad.shape
    torch.testing.assert_close(eps.flatten(1).norm(dim=1), torch.full((3,), 0.5))
    torch.testing.assert_close(eps / eps.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5, eps)
    assert (torch.sign(eps) == torch.sign(grad)).all()  # ascent direction of the uncertainty


def test_perturbation_of_zero_gradient_is_zero():
    grad = torch.zeros(2, 4, 3, 3)
    grad[1] = 1.0
    eps = adversarial_perturbation(grad, 0.5)
    assert torch.equal(eps[0], torch.zeros_like(eps[0])) and torch.isfinite(eps).all()
    assert eps[1].norm().item() == pytest.approx(0.5)


def test_perturbation_carries_no_gradient():
    """eps is a constant in the min-max objective (Eq. 14): detached even from a graph."""
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    uncertainty = (features.tanh() ** 2).sum()
    (grad,) = torch.autograd.grad(uncertainty, features, create_graph=True)
    assert grad.requires_grad
    eps = adversarial_perturbation(grad, 0.5)
    assert not eps.requires_grad and eps.grad_fn is None
    refined = (features + eps).pow(2).sum()
    (d_features,) = torch.autograd.grad(refined, features)
    torch.testing.assert_close(d_features, 2 * (features + eps).detach())


def test_kl_loss_with_unit_variance_is_smooth_l1():
    pred, target = torch.randn(50) * 2, torch.randn(50) * 2
    zero = torch.zeros(50)
    torch.testing.assert_close(kl_loss(pred, zero, target), smooth_l1_loss(pred, target, beta=1.0))


def test_kl_loss_values_and_continuity():
    log_var = torch.tensor([math.log(4.0)] * 3)
    got = kl_loss(torch.zeros(3), log_var, torch.tensor([0.5, 1.0, 3.0]))
    want = torch.tensor([0.125, 0.5, 2.5]) / 4 + math.log(4.0) / 2
    torch.testing.assert_close(got, want)
    # for a fixed error e = |d| - 1/2 = 1.5 the loss is smallest at alpha = log(2e)
    alpha = torch.linspace(-3, 3, 601)
    loss = kl_loss(torch.zeros(601), alpha, torch.full((601,), 2.0))
    assert alpha[loss.argmin()].item() == pytest.approx(math.log(3.0), abs=0.01)
