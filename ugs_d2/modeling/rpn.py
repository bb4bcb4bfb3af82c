"""UGS region proposal network: IN-bin classification (or the KL loss) replaces delta regression.

Only the box branch changes. The head's 1x1 box conv predicts ``P`` values per anchor coordinate
instead of 1: ``P = n + 1`` bin logits with ``MODEL.UGS.RPN.ENABLED``, or ``P = 2`` (mean and
log-variance) with ``MODEL.UGS.RPN.REG_LOSS = "kl"``. Its channels are laid out as
``(A, P, 4)`` so that detectron2's unchanged ``RPN.forward`` reshape, which views them as
``A*P`` groups of 4, yields ``(N, Hi*Wi*A*P, 4)`` per level; :func:`unflatten_box_params` turns
that into ``(N, Hi*Wi*A, P, 4)``. With neither option (``P = 1``) both classes are detectron2's.

The box dimension B is the anchors': 4 (``Boxes``), or 5 (``RotatedBoxes``: a rotated RPN,
whose localization then has an angle grid); the layout is the same with B in place of 4.

Shapes: N images, L levels, A cell anchors, R = sum_i Hi*Wi*A anchors per image, K = n + 1.
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY, StandardRPNHead
from detectron2.structures import Boxes
from torch import Tensor, nn

from .config import StageFromConfig, params_per_coordinate, validate_ugs_config
from .stage import ENTROPY_PREFIX, BinLocalization

__all__ = ["UGSRPNHead", "UGSRPN", "unflatten_box_params"]

#: loss-dict key of the unweighted (normalised) entropy, emitted only for UR (never a loss)
ENTROPY_KEY = ENTROPY_PREFIX + "_rpn"


def unflatten_box_params(x: Tensor, params: int) -> Tensor:
    """(N, R*P, 4) as reshaped by detectron2's ``RPN.forward`` -> (N, R, P, 4)."""
    return x.view(x.shape[0], -1, params, x.shape[-1])


@RPN_HEAD_REGISTRY.register()
class UGSRPNHead(StandardRPNHead):
    """StandardRPNHead whose box conv outputs ``A * P * 4`` channels, laid out ``(A, P, 4)``.

    ``forward`` is detectron2's: it returns per level objectness ``(N, A, Hi, Wi)`` and box
    parameters ``(N, A*P*4, Hi, Wi)``.
    """

    @configurable
    def __init__(self, *, params_per_coord: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.params_per_coord = params_per_coord
        if params_per_coord != 1:
            old = self.anchor_deltas
            self.anchor_deltas = nn.Conv2d(
                old.in_channels, old.out_channels * params_per_coord, kernel_size=1, stride=1
            )
            # detectron2's init: near-zero logits give a uniform distribution whose expectation
            # is 0 (the grid is odd), i.e. proposals start at the anchors as in the baseline;
            # for KL, log-variance ~ 0.
            nn.init.normal_(self.anchor_deltas.weight, std=0.01)
            nn.init.constant_(self.anchor_deltas.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_ugs_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["params_per_coord"] = params_per_coordinate(cfg, "RPN")
        return ret


@PROPOSAL_GENERATOR_REGISTRY.register()
class UGSRPN(StageFromConfig, RPN):
    """detectron2's RPN with the localization loss and the proposal decoding of UGS.

    * bins: ``loss_rpn_loc`` = bin cross-entropy (Eq. 10) of the foreground anchors' encoded GT
      deltas, summed and divided by ``batch_size_per_image * N`` like detectron2's smooth-L1;
      ``loss_um_rpn`` = UM_WEIGHT * entropy (Eq. 12) of the foreground anchors' coordinates,
      normalised the same way (only when UM_WEIGHT > 0); proposals decode the expected deltas.
    * kl: ``loss_rpn_loc`` = KL loss of He et al. with the same normalisation; proposals decode
      the means.
    * native: detectron2's RPN (used under UR so that the UR pass can reuse the labels).

    For UR, :meth:`refinement_losses` recomputes the losses on perturbed features with the
    anchor labels of the step's first pass: no second matching, sampling, top-k or NMS.
    """

    UGS_STAGE = "RPN"
    UM_KEY = "loss_um_rpn"
    ENTROPY_KEY = ENTROPY_KEY
    #: detectron2's NMS and top-k of the decoded proposals (a rotated RPN: find_top_rrpn_proposals)
    find_top_proposals = staticmethod(find_top_rpn_proposals)

    @configurable
    def __init__(self, *, localization: BinLocalization, **kwargs):
        """
        Args:
            localization: the stage's grid, decode and losses (``MODEL.UGS.RPN``).
            kwargs: detectron2's ``RPN`` arguments.
        """
        super().__init__(**kwargs)
        self.localization = localization
        self._first_pass_labels: Optional[Tuple[List[Tensor], List[Tensor]]] = None
        self._reuse_labels = False

    def point_deltas(self, box_params: Tensor) -> Tensor:
        """(..., P, B) head outputs -> (..., B) deltas: bin expectation, or the KL mean."""
        return self.localization.point(box_params.transpose(-1, -2))

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors, gt_instances):
        """detectron2's matching and sampling; kept for the UR pass, or reused by it."""
        if self._reuse_labels:
            return self._first_pass_labels
        labels = super().label_and_sample_anchors(anchors, gt_instances)
        self._first_pass_labels = labels if self.training else None
        return labels

    @contextmanager
    def reusing_first_pass(self):
        """Inside: a training forward takes the first pass's anchor labels and returns no
        proposals (the UR pass reads only the sampled anchors' losses)."""
        if self._first_pass_labels is None:
            raise RuntimeError("the UR pass needs a training forward of the RPN first")
        self._reuse_labels = True
        try:
            yield
        finally:
            self._reuse_labels = False
            self._first_pass_labels = None

    def refinement_losses(self, images, features: Dict[str, Tensor], gt_instances) -> Dict[str, Tensor]:
        """The RPN's losses on (perturbed) ``features``, with the first pass's anchor labels."""
        with self.reusing_first_pass():
            return self(images, features, gt_instances)[1]

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """detectron2's RPN losses with ``loss_rpn_loc`` replaced (and ``loss_um_rpn`` added).

        Args:
            pred_anchor_deltas: L tensors (N, Hi*Wi*A*P, 4), see the module docstring.
            others: as detectron2's ``RPN.losses``; ``gt_boxes`` are the matched GT boxes (N x
                (R, 4)).
        """
        if self.mode == "native":
            return super().losses(
                anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
            )
        P = self.params_per_coord
        params = cat([unflatten_box_params(x, P) for x in pred_anchor_deltas], dim=1)  # (N,R,P,4)
        # The parent computes the objectness loss and logs the anchor statistics; its
        # localization term, fed detached point estimates here, is replaced below.
        point = [self.point_deltas(params).detach()]
        losses = super().losses(anchors, pred_objectness_logits, gt_labels, point, gt_boxes)
        fg_mask = torch.stack(gt_labels) == 1  # (N, R)
        all_anchors = type(anchors[0]).cat(anchors).tensor  # (R, B): Boxes or RotatedBoxes
        gt_deltas = torch.stack(
            [self.box2box_transform.get_deltas(all_anchors, b) for b in gt_boxes]
        )  # (N, R, B), detectron2's encoding with MODEL.RPN.BBOX_REG_WEIGHTS
        fg_params = params[fg_mask].transpose(1, 2)  # (F, B, P)
        normalizer = self.batch_size_per_image * len(gt_labels)  # as detectron2's loss_rpn_loc
        extra = self.localization.losses(fg_params, gt_deltas[fg_mask], normalizer)
        losses["loss_rpn_loc"] = extra.pop("loc") * self.loss_weight.get("loss_rpn_loc", 1.0)
        losses.update(extra)
        return losses

    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        image_sizes,
    ):
        """detectron2's proposal selection, decoding only the anchors that can be selected.

        ``find_top_rpn_proposals`` keeps the ``pre_nms_topk`` anchors of each level by
        objectness before NMS. Decoding a bin distribution (a softmax over K bins) is costlier
        than applying a delta, so those anchors are picked first and only they are decoded; the
        selection and the result are the same as decoding every anchor. The UR pass
        (:meth:`reusing_first_pass`) needs no proposals and gets ``None``.
        """
        if self._reuse_labels:
            return None
        if self.mode == "native":
            return super().predict_proposals(
                anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes
            )
        pre_nms_topk = self.pre_nms_topk[self.training]
        with torch.no_grad():  # proposals are constants for the ROI heads, as in detectron2
            top_logits, top_proposals = [], []
            for anchors_i, logits_i, params_i in zip(anchors, pred_objectness_logits, pred_anchor_deltas):
                logits_i, keep = logits_i.topk(min(pre_nms_topk, logits_i.shape[1]), dim=1)  # (N, k)
                params = unflatten_box_params(params_i, self.params_per_coord)  # (N, R_i, P, 4)
                params = torch.gather(
                    params, 1, keep[:, :, None, None].expand(-1, -1, *params.shape[2:])
                )  # (N, k, P, 4)
                deltas = self.point_deltas(params)  # (N, k, B)
                box_dim = deltas.shape[-1]
                boxes = self.box2box_transform.apply_deltas(
                    deltas.reshape(-1, box_dim), anchors_i.tensor[keep].reshape(-1, box_dim)
                )
                top_logits.append(logits_i)
                top_proposals.append(boxes.view(*keep.shape, -1))
            return self.find_top_proposals(
                top_proposals,
                top_logits,
                image_sizes,
                self.nms_thresh,
                pre_nms_topk,
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            )
