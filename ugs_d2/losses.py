"""UGS losses (paper Eqs. 10, 12, 15) and the Table-6 KL comparison loss, as pure tensor functions.

Every function returns per-element values (no reduction): the detectron2 modules in
``ugs_d2.modeling`` choose the normalisation, exactly as detectron2 does for its own losses.
Smooth-L1 and GIoU, the other Table-6 rows, are detectron2's own (``fvcore.nn.smooth_l1_loss``,
``fvcore.nn.giou_loss``, selected by ``MODEL.*.BBOX_REG_LOSS_TYPE``) and are not reimplemented.
"""
import torch
from torch import Tensor
import torch.nn.functional as F

from .bins import two_hot

__all__ = ["bin_cross_entropy", "entropy", "adversarial_perturbation", "kl_loss"]


def bin_cross_entropy(logits: Tensor, targets: Tensor, grid: Tensor) -> Tensor:
    """Classification-based localization loss (Eq. 10).

    Cross-entropy between ``softmax(logits)`` and the two-hot label of ``targets`` on ``grid``
    (Eq. 8). Its gradient with respect to the logits is ``softmax(logits) - two_hot(targets)``,
    so every component lies in ``[-1, 1]`` whatever the object size (Eq. 11).

    Args:
        logits: Tensor[..., K], one distribution per target value.
        targets: Tensor[...], continuous targets (clamped to the grid's range).
        grid: Tensor[K].

    Returns:
        Tensor[...], the per-element loss.
    """
    label = two_hot(targets.detach().to(logits.dtype), grid)
    return -(label * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def entropy(logits: Tensor) -> Tensor:
    """Uncertainty of a bin distribution: Shannon entropy of ``softmax(logits)`` (Eq. 12).

    Computed from ``log_softmax`` so that saturated (near one-hot) logits give 0, not NaN.
    Ranges from 0 (one-hot) to ``log(K)`` (uniform). Logits must be finite.

    Args:
        logits: Tensor[..., K].

    Returns:
        Tensor[...], the per-element entropy in nats.
    """
    log_prob = F.log_softmax(logits, dim=-1)
    return -(log_prob.exp() * log_prob).sum(dim=-1)


def adversarial_perturbation(grad: Tensor, rho: float) -> Tensor:
    """Closed-form feature perturbation of uncertainty-guided refinement (Eq. 15).

    ``eps = rho * g / ||g||_2`` with the L2 norm taken over each image's whole feature map
    (all dims but the first), so every image's perturbation has norm ``rho`` (or is 0 where
    ``g == 0``). The result is detached: the min-max objective (Eq. 14) treats ``eps`` as a
    constant, so no gradient may flow into it.

    Args:
        grad: Tensor[N, C, H, W], gradient of the uncertainty loss wrt one FPN level's features.
        rho: perturbation radius, >= 0.

    Returns:
        Tensor[N, C, H, W], detached, in ``grad``'s dtype.
    """
    g = grad.detach().float()  # the norm in fp32 so that fp16 gradients neither under- nor overflow
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)  # clamp: a zero gradient gives a zero eps
    return (g * (rho / norm).view(-1, *([1] * (g.dim() - 1)))).to(grad.dtype)


def kl_loss(pred: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """KL-divergence box loss with predicted uncertainty (He et al. 2019, "Bounding box
    regression with uncertainty"), the "Bayesian/Gaussian uncertainty" row of Table 6.

    With ``d = target - pred`` and ``alpha = log(sigma^2)`` (predicted), per element::

        |d| > 1:  exp(-alpha) * (|d| - 1/2) + alpha / 2
        else:     exp(-alpha) * d^2 / 2     + alpha / 2

    (the Gaussian negative log-likelihood up to a constant, in smooth-L1 form for large errors).

    Args:
        pred: Tensor[...], predicted values (e.g. box deltas).
        log_var: Tensor[...], predicted ``alpha = log(sigma^2)``.
        target: Tensor[...].

    Returns:
        Tensor[...], the per-element loss.
    """
    abs_diff = (target - pred).abs()
    error = torch.where(abs_diff > 1, abs_diff - 0.5, 0.5 * abs_diff**2)
    return torch.exp(-log_var) * error + 0.5 * log_var
