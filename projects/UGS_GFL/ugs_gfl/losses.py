"""GFL V1's two losses (Li et al., NeurIPS 2020, Eqs. 6 and 7), as pure functions on tensors.

* Quality Focal Loss: the classification branch predicts a joint class-IoU score; the target
  of a positive at its class is the IoU of its (detached) decoded box with its GT box, 0
  everywhere else; the BCE is modulated by ``|sigmoid(z) - y|^beta``.
* Distribution Focal Loss: each side distance is a discrete distribution over the points
  ``0, 1, ..., reg_max`` (strides); the loss is the cross-entropy with the two neighbours of
  the target, weighted by closeness. It is exactly :func:`ugs_d2.losses.bin_cross_entropy`
  (Eq. 10's two-hot CE) on the uniform grid ``arange(reg_max + 1)`` (tests/test_gfl.py), which
  is why GFL's box branch *is* a UGS stage with a uniform grid.

Shapes: R locations, C classes, F foreground locations, K = reg_max + 1 points.
"""
import torch.nn.functional as F
from torch import Tensor

__all__ = ["quality_focal_loss", "distribution_focal_loss"]


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """QFL (GFL Eq. 6), unreduced: ``-|y - s|^beta ((1 - y) log(1 - s) + y log s)``, ``s = sigmoid(z)``.

    Args:
        logits: Tensor[R, C], the joint class-quality logits.
        targets: Tensor[R, C] in [0, 1]: the IoU at a positive's class, 0 elsewhere.
        beta: the modulating exponent (GFL: 2).

    Returns:
        Tensor[R, C].
    """
    scale = (logits.sigmoid() - targets).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * scale


def distribution_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """DFL (GFL Eq. 7), unreduced: ``-((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})``.

    Args:
        logits: Tensor[F, K] over the points ``0..K-1``.
        targets: Tensor[F], distances in ``[0, K - 1)`` (MMDetection clips them to
            ``reg_max - 0.01`` when encoding, so the right neighbour exists).

    Returns:
        Tensor[F].
    """
    left = targets.long()
    right = left + 1
    weight_left = right.to(targets.dtype) - targets
    weight_right = targets - left.to(targets.dtype)
    return (
        F.cross_entropy(logits, left, reduction="none") * weight_left
        + F.cross_entropy(logits, right, reduction="none") * weight_right
    )
