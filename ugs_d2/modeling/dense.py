"""UGS for detectron2's dense detectors (RetinaNet, FCOS, and GFL in projects/UGS_GFL): the
shared pieces.

A dense head's box conv predicts ``P`` values per coordinate (``K = n + 1`` bin logits)
instead of one, laid out ``(A, 4, P)`` per location. :class:`DenseUGSMixin`, mixed in before
detectron2's ``RetinaNet`` or ``FCOS``:

* widens the box branch in ``_transpose_dense_predictions`` (``4 -> 4 * P`` values per
  anchor), so detectron2's own ``forward_inference`` runs unchanged: its top-k selection picks
  the anchors first and the :class:`~.stage.BinDecodingTransform` decodes the bin expectation
  of those only;
* replaces the box loss by the stage's bin cross-entropy and UM loss, balanced like GFL's DFL
  (``MODEL.UGS.DENSE``: mean over the 4 coordinates, weight 0.25 by default);
* adds ``loss_ur`` (UR, :mod:`.refinement`) on the levels of ``MODEL.UGS.UR_LEVELS`` the head
  reads, with the first pass's anchors, labels and loss normaliser.

Shapes: N images, L levels, R_i anchors of level i per image, F foreground anchors.
"""
import math
from typing import Callable, Dict, List

import torch
from detectron2.layers import cat
from detectron2.structures import Boxes
from torch import Tensor, nn

from ugs_d2.compat import dense_loss_normalizer, restore_dense_loss_normalizer

from .refinement import (
    RefinementSettings,
    perturb,
    pop_uncertainty,
    private_event_storage,
    refinement_loss,
    scale_detection_losses,
)
from .stage import BinDecodingTransform, BinLocalization

__all__ = ["DenseUGSMixin", "widen_box_conv", "head_norm"]


def head_norm(norm: str):
    """A dense head's ``norm`` argument for detectron2's ``RetinaNetHead``: "GN" as a callable.

    detectron2 0.6's ``RetinaNetHead`` probes ``get_norm(norm, 1)``, which cannot build
    ``GroupNorm(32, 1)``; the callable uses ``gcd(32, channels)`` groups (32 for every real
    layer, whose channels are multiples of 32). Other values are passed through.
    """
    if norm == "GN":
        return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)
    return norm


def widen_box_conv(conv: nn.Conv2d, params_per_coord: int) -> nn.Conv2d:
    """A conv like ``conv`` with ``params_per_coord`` times its output channels.

    ``conv`` predicts ``A*4`` deltas; the result predicts ``A*4*P`` values laid out ``(A, 4, P)``.
    Initialised like detectron2's dense heads (normal std 0.01, bias 0): near-zero logits give
    a uniform bin distribution, whose expectation is the grid's mean (0 for the odd IN grid, so
    boxes start at the anchors as in the baseline).
    """
    wide = nn.Conv2d(
        conv.in_channels,
        conv.out_channels * params_per_coord,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
    )
    nn.init.normal_(wide.weight, mean=0, std=0.01)
    nn.init.constant_(wide.bias, 0)
    return wide


class DenseUGSMixin:
    """UGS pieces shared by the dense detectors; see the module docstring.

    The detector calls :meth:`_init_ugs` at the end of its ``__init__`` (it has detectron2's
    ``box2box_transform``, ``head_in_features`` and ``loss_normalizer``).
    """

    #: position of the box branch in ``dims_per_anchor`` (RetinaNet: [C, 4], FCOS: [C, 4, 1])
    BOX_BRANCH = 1

    def _init_ugs(
        self,
        localization: BinLocalization,
        refinement: RefinementSettings,
        det_loss_scale: float = 1.0,
    ) -> None:
        name = type(self).__name__
        if localization.mode not in ("bins", "native"):
            raise ValueError(f"{name} supports bins or native localization, got {localization.mode!r}")
        if refinement.enabled and localization.mode != "bins":
            raise ValueError(f"MODEL.UGS.UR_WEIGHT > 0 needs MODEL.UGS.RPN.ENABLED for {name}")
        self.localization = localization
        levels = [level for level in refinement.levels if level in self.head_in_features]
        if refinement.enabled and not levels:
            raise ValueError(
                f"MODEL.UGS.UR_LEVELS {list(refinement.levels)} names none of the head's levels "
                f"{list(self.head_in_features)}"
            )
        refinement.levels = levels
        self.refinement = refinement
        self.det_loss_scale = det_loss_scale
        localization.return_entropy = refinement.enabled
        if self.uses_ugs:
            self.box2box_transform = BinDecodingTransform(self.box2box_transform, localization)

    @property
    def uses_ugs(self) -> bool:
        return self.localization.mode == "bins"

    @property
    def params_per_coord(self) -> int:
        return self.localization.params_per_coord

    def _transpose_dense_predictions(self, predictions, dims_per_anchor: List[int]):
        """detectron2's transpose to (N, Hi*Wi*A, D), with ``4 * P`` box values per anchor."""
        dims = list(dims_per_anchor)
        dims[self.BOX_BRANCH] *= self.params_per_coord
        return super()._transpose_dense_predictions(predictions, dims)

    def box_params(self, per_level: List[Tensor]) -> List[Tensor]:
        """L tensors (N, Hi*Wi*A, 4*P) -> (N, Hi*Wi*A, 4, P)."""
        return [x.view(x.shape[0], x.shape[1], 4, self.params_per_coord) for x in per_level]

    def point_deltas(self, per_level: List[Tensor]) -> List[Tensor]:
        """L tensors (N, R_i, 4*P) -> detached point deltas (N, R_i, 4): the bin expectations."""
        return [self.localization.point(p).detach() for p in self.box_params(per_level)]

    @staticmethod
    def placeholder_deltas(per_level: List[Tensor]) -> List[Tensor]:
        """L tensors (N, R_i, 4*P) -> L zero tensors (N, R_i, 4) (expanded views: no memory).

        What detectron2's ``losses`` gets for its box term, which :meth:`bin_losses` replaces:
        the parent still computes the classification (and centerness) losses, the EMA
        normaliser and the statistics, none of which reads the box predictions, but the bins
        are not decoded for a term that is thrown away.
        """
        return [x.new_zeros(()).expand(x.shape[0], x.shape[1], 4) for x in per_level]

    def bin_losses(
        self,
        anchors: List[Boxes],
        per_level: List[Tensor],
        gt_boxes: List[Tensor],
        fg_mask: Tensor,
        normalizer: float,
    ) -> Dict[str, Tensor]:
        """Localization (Eq. 10) and UM (Eq. 12) losses of the foreground anchors.

        Args:
            anchors: L Boxes (Hi*Wi*A, 4), as from detectron2's anchor generator.
            per_level: L tensors (N, Hi*Wi*A, 4*K) of bin logits.
            gt_boxes: N tensors or Boxes (R, 4), each anchor's matched GT box.
            fg_mask: (N, R) foreground anchors.
            normalizer: the detector's loss normaliser (sums are divided by it).

        Returns:
            ``loc``, and the stage's UM loss / entropy (:meth:`BinLocalization.losses`).
        """
        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        gt_deltas = torch.stack(
            [
                self.box2box_transform.get_deltas(all_anchors, b.tensor if isinstance(b, Boxes) else b)
                for b in gt_boxes
            ]
        )  # (N, R, 4) in the detector's own encoding
        fg_logits = cat(self.box_params(per_level), dim=1)[fg_mask]  # (F, 4, K)
        return self.localization.losses(fg_logits, gt_deltas[fg_mask], normalizer)

    def ugs_training_losses(
        self,
        features: List[Tensor],
        predictions,
        detection_losses: Callable[[object], Dict[str, Tensor]],
    ) -> Dict[str, Tensor]:
        """The training losses with bins: ``detection_losses(predictions)`` plus ``loss_ur``.

        Args:
            features: the head's input levels (aligned with ``head_in_features``).
            predictions: the head's outputs on ``features``.
            detection_losses: head outputs -> loss dict, closed over the step's anchors and
                labels; with UR it emits the entropy (see :meth:`bin_losses`).

        The UR pass runs the head on the perturbed levels and the same closure (same anchors
        and labels), with the first pass's EMA loss normaliser, in a private EventStorage.
        """
        # the UR pass sees the first pass's EMA normaliser instead of updating the EMA twice a step
        before = dense_loss_normalizer(self)
        losses = detection_losses(predictions)
        if self.refinement.enabled:
            after = dense_loss_normalizer(self)
            restore_dense_loss_normalizer(self, before)
            levels = dict(zip(self.head_in_features, features))
            perturbed, eps = perturb(levels, pop_uncertainty(losses), self.refinement)
            with private_event_storage():
                refined = detection_losses(self.head([perturbed[k] for k in self.head_in_features]))
            losses["loss_ur"] = refinement_loss(refined, losses, eps, levels, self.refinement)
            restore_dense_loss_normalizer(self, after)
        return scale_detection_losses(losses, self.det_loss_scale)
