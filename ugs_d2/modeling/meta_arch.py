"""UGSRCNN: GeneralizedRCNN plus the uncertainty-guided refinement (UR) loss, Eqs. 14-15.

Training step with ``MODEL.UGS.UR_WEIGHT > 0`` (inference, and training without UR, are
detectron2's ``GeneralizedRCNN``):

1. the usual forward: backbone, RPN, ROI heads; their losses (including UM) as usual;
2. the UM uncertainty ``U`` = mean foreground entropy of the RPN's plus the ROI head's bin
   distributions, unweighted (so UR works with ``UM_WEIGHT == 0`` too);
3. for each level ``l`` of ``MODEL.UGS.UR_LEVELS``: ``g_l = dU / dP_l`` and
   ``eps_l = rho * g_l / ||g_l||`` per image (Eq. 15), detached;
4. the RPN's and ROI box head's losses recomputed on ``P_l + eps_l``, the ROI head reusing the
   proposals sampled in step 1; ``loss_ur = UR_WEIGHT * sum`` of their detection losses (UM
   terms excluded, so UM is counted once, by step 1).
"""
from contextlib import contextmanager
from typing import Dict, List

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import EventStorage, get_event_storage

from ..losses import adversarial_perturbation
from .config import validate_ugs_config
from .roi_heads import ENTROPY_KEY as ROI_ENTROPY_KEY
from .rpn import ENTROPY_KEY as RPN_ENTROPY_KEY

__all__ = ["UGSRCNN"]

ENTROPY_KEYS = (RPN_ENTROPY_KEY, ROI_ENTROPY_KEY)


def _is_detection_loss(key: str) -> bool:
    """Losses that UR recomputes: everything but the UM terms and the entropy side outputs."""
    return not key.startswith("loss_um") and key not in ENTROPY_KEYS


@META_ARCH_REGISTRY.register()
class UGSRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with the UR loss ``loss_ur`` (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        ur_weight: float = 0.0,
        ur_rho: float = 0.5,
        ur_levels: List[str] = (),
        **kwargs,
    ):
        """
        Args:
            ur_weight: gamma, weight of ``loss_ur``; 0 disables UR.
            ur_rho: rho of Eq. 15.
            ur_levels: names of the backbone features (FPN levels) to perturb.
            kwargs: detectron2's ``GeneralizedRCNN`` arguments.
        """
        super().__init__(**kwargs)
        self.ur_weight = ur_weight
        self.ur_rho = ur_rho
        self.ur_levels = list(ur_levels)
        if ur_weight > 0:
            missing = set(self.ur_levels) - set(self.backbone.output_shape())
            if missing:
                raise ValueError(
                    f"MODEL.UGS.UR_LEVELS {sorted(missing)} are not backbone outputs "
                    f"{sorted(self.backbone.output_shape())}"
                )
        # UR needs the unweighted entropies from the UGS heads, whatever UM_WEIGHT is.
        for head in (self.proposal_generator, getattr(self.roi_heads, "box_predictor", None)):
            if hasattr(head, "return_entropy"):
                head.return_entropy = ur_weight > 0

    @classmethod
    def from_config(cls, cfg):
        validate_ugs_config(cfg)
        ret = super().from_config(cfg)
        ret.update(
            ur_weight=cfg.MODEL.UGS.UR_WEIGHT,
            ur_rho=cfg.MODEL.UGS.UR_RHO,
            ur_levels=cfg.MODEL.UGS.UR_LEVELS,
        )
        return ret

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """GeneralizedRCNN's forward; in training with UR, its losses plus ``loss_ur``."""
        if not self.training or self.ur_weight <= 0:
            return super().forward(batched_inputs)

        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        if self.proposal_generator is not None:
            proposals, losses = self.proposal_generator(images, features, gt_instances)
        else:  # precomputed proposals
            proposals, losses = [x["proposals"].to(self.device) for x in batched_inputs], {}
        # in training the ROI heads return the proposals they sampled (with their GT)
        sampled_proposals, detector_losses = self.roi_heads(
            images, features, proposals, gt_instances
        )
        losses.update(detector_losses)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)

        entropies = [losses.pop(k) for k in ENTROPY_KEYS if k in losses]
        if not entropies:
            raise RuntimeError(
                "UR needs a UGS head with bins (UGSRPN or UGSROIHeads with MODEL.UGS.*.ENABLED); "
                "call ugs_d2.modeling.apply_ugs_architecture(cfg)"
            )
        uncertainty = sum(entropies)
        perturbed = self.perturb_features(features, uncertainty)
        refined = self.refinement_losses(images, perturbed, gt_instances, sampled_proposals)
        losses["loss_ur"] = self.ur_weight * sum(refined.values())
        return losses

    def perturb_features(
        self, features: Dict[str, Tensor], uncertainty: Tensor
    ) -> Dict[str, Tensor]:
        """Eq. 15: add ``eps_l = rho * grad_l / ||grad_l||`` to each UR level; others unchanged.

        Args:
            features: backbone outputs, level name -> (N, C, Hl, Wl), part of the autograd graph.
            uncertainty: scalar computed from them (the summed UM entropies).

        Returns:
            A new dict; the perturbed levels are ``features[l] + eps_l`` with ``eps_l``
            detached, so the gradient of later losses reaches ``features[l]`` only directly.
        """
        levels = [level for level in self.ur_levels if level in features]
        inputs = [features[level] for level in levels]
        # retain_graph: the training losses backpropagate through this graph afterwards.
        # allow_unused: a level feeds no bin head (e.g. p6 when only the ROI head has bins).
        grads = torch.autograd.grad(uncertainty, inputs, retain_graph=True, allow_unused=True)
        perturbed = dict(features)
        for level, grad in zip(levels, grads):
            if grad is not None:
                perturbed[level] = features[level] + adversarial_perturbation(grad, self.ur_rho)
        return perturbed

    def refinement_losses(self, images, features, gt_instances, sampled_proposals):
        """The RPN's and ROI box head's detection losses on (perturbed) ``features``.

        The ROI box head reuses ``sampled_proposals`` (the first pass's sampled, GT-matched
        proposals), so its loss is deterministic and needs no second proposal sampling. The
        RPN is run as in training, so its anchors are re-sampled (the same distribution).
        Returns the loss dict without UM terms and entropies.
        """
        with _private_event_storage():
            losses = {}
            if self.proposal_generator is not None:
                losses.update(self.proposal_generator(images, features, gt_instances)[1])
            losses.update(self.roi_heads._forward_box(features, sampled_proposals))
        return {k: v for k, v in losses.items() if _is_detection_loss(k)}


@contextmanager
def _private_event_storage():
    """Run a block with its own EventStorage, so that the statistics the heads log during the
    UR pass (anchor counts, ROI accuracy on perturbed features) do not overwrite the step's."""
    with EventStorage(get_event_storage().iter):
        yield
