"""UGS losses (paper Eqs. 10, 12, 15) and the Table-6 KL comparison loss, as pure tensor functions.

Every function returns per-element values (no reduction): the detectron2 modules in
``ugs_d2.modeling`` choose the normalisation, exactly as detectron2 does for its own losses.
Smooth-L1 and GIoU, the other Table-6 rows, are detectron2's own (``fvcore.nn.smooth_l1_loss``,
``fvcore.nn.giou_loss``, selected by ``MODEL.*.BBOX_REG_LOSS_TYPE``) and are not reimplemented.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .bins import two_hot

__all__ = [
    "bin_cross_entropy",
    "entropy",
    "adversarial_perturbation",
    "kl_loss",
    "UR_NORMS",
]


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


#: scopes of the UR perturbation's norm (:func:`adversarial_perturbation`)
UR_NORMS = ("image", "relative", "location")


def adversarial_perturbation(
    grad: Tensor, rho: float, norm: str = "image", features: Optional[Tensor] = None
) -> Tensor:
    """Closed-form feature perturbation of uncertainty-guided refinement (Eq. 15).

    ``eps = rho * s * g / ||g||_2`` in the ascent direction of the uncertainty; the scope of the
    norm and the scale ``s`` are the reading of Eq. 15 (``norm``):

    * ``"image"``: ``||g||`` over each image's whole ``C x H x W`` map, ``s = 1``, so
      ``||eps|| = rho`` per image. Against FPN features whose norm is in the thousands this is
      ``||eps|| / ||P|| ~ 1e-3`` (measured), too small to change any loss.
    * ``"relative"``: the same direction, ``s = ||P||`` over the same ``C x H x W`` map, so
      ``||eps|| = rho * ||P||`` per image and level: ``rho`` is a fraction of the feature norm,
      and the perturbation concentrates where the uncertainty's gradient does.
    * ``"location"``: per spatial position, across channels: ``eps[:, y, x] = rho *
      ||P[:, y, x]|| * g[:, y, x] / ||g[:, y, x]||``, so every position is moved by ``rho`` times
      its own feature norm (positions with zero gradient stay).

    The result is detached: the min-max objective (Eq. 14) treats ``eps`` as a constant.

    Args:
        grad: Tensor[N, C, H, W], gradient of the uncertainty wrt one FPN level's features.
        rho: perturbation radius, >= 0.
        norm: one of :data:`UR_NORMS`.
        features: Tensor[N, C, H, W], the level's features ``P``; required unless ``"image"``.

    Returns:
        Tensor[N, C, H, W], detached, in ``grad``'s dtype.
    """
    if norm not in UR_NORMS:
        raise ValueError(f"UR norm must be one of {', '.join(UR_NORMS)}, got {norm!r}")
    g = grad.detach().float()  # the norm in fp32 so that fp16 gradients neither under- nor overflow
    dims = (1,) if norm == "location" else tuple(range(1, g.dim()))
    l2 = lambda x: torch.linalg.vector_norm(x, dim=dims, keepdim=True)  # noqa: E731
    scale = rho / l2(g).clamp_min(1e-12)  # clamp: a zero gradient gives a zero eps
    if norm != "image":
        if features is None:
            raise ValueError(f"UR norm {norm!r} needs the features")
        scale = scale * l2(features.detach().float())
    return (g * scale).to(grad.dtype)


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
