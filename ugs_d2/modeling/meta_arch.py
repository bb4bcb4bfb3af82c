"""UGSRCNN: GeneralizedRCNN plus the uncertainty-guided refinement (UR) loss, Eqs. 14-15.

Training step with ``MODEL.UGS.UR_WEIGHT > 0`` (inference, and training without UR, are
detectron2's ``GeneralizedRCNN``):

1. the usual forward: backbone, RPN, ROI heads; their losses (including UM) as usual;
2. the UM uncertainty ``U`` = mean foreground entropy of the RPN's plus the ROI head's bin
   distributions, unweighted (so UR works with ``UM_WEIGHT == 0`` too);
3. for each level ``l`` of ``MODEL.UGS.UR_LEVELS``: ``g_l = dU / dP_l`` and ``eps_l`` of
   Eq. 15 in the scope ``MODEL.UGS.UR_NORM`` (:func:`ugs_d2.losses.adversarial_perturbation`);
4. the RPN's and ROI box head's losses recomputed on ``P_l + eps_l`` with the first pass's
   anchor labels and sampled proposals; ``loss_ur = UR_WEIGHT * sum`` of the terms
   ``MODEL.UGS.UR_LOSSES`` names (:mod:`.refinement`).

``MODEL.UGS.UR_IMPL = "lean"`` (default) runs step 4 without a second anchor matching, sampling,
top-k or NMS and pools only ``eps`` (ROIAlign is linear); ``"plain"`` reruns the RPN's training
forward and pools ``P + eps``. Both give the same ``loss_ur`` when sampling is deterministic
(tested). ``MODEL.UGS.DET_LOSS_SCALE`` multiplies the detection losses (Table 6's re-weighting
control).
"""
from typing import Dict, List

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ugs_d2.compat import forward_box

from .config import validate_ugs_config
from .refinement import (
    RefinementSettings,
    perturb,
    pop_uncertainty,
    private_event_storage,
    refinement_loss,
    scale_detection_losses,
)
from .stage import BinLocalization

__all__ = ["UGSRCNN"]


@META_ARCH_REGISTRY.register()
class UGSRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with the UR loss ``loss_ur`` (see the module docstring)."""

    @configurable
    def __init__(self, *, refinement: RefinementSettings = None, det_loss_scale: float = 1.0, **kwargs):
        """
        Args:
            refinement: UR's settings (``MODEL.UGS.UR_*``); None or weight 0 disables UR.
            det_loss_scale: factor on the detection losses (``MODEL.UGS.DET_LOSS_SCALE``).
            kwargs: detectron2's ``GeneralizedRCNN`` arguments.
        """
        super().__init__(**kwargs)
        self.refinement = refinement or RefinementSettings()
        self.det_loss_scale = det_loss_scale
        if self.refinement.enabled:
            missing = set(self.refinement.levels) - set(self.backbone.output_shape())
            if missing:
                raise ValueError(
                    f"MODEL.UGS.UR_LEVELS {sorted(missing)} are not backbone outputs "
                    f"{sorted(self.backbone.output_shape())}"
                )
        # UR needs the unweighted entropies from the UGS heads, whatever UM_WEIGHT is.
        for module in self.modules():
            if isinstance(module, BinLocalization):
                module.return_entropy = self.refinement.enabled

    @classmethod
    def from_config(cls, cfg):
        validate_ugs_config(cfg)
        ret = super().from_config(cfg)
        ret.update(
            refinement=RefinementSettings.from_config(cfg),
            det_loss_scale=cfg.MODEL.UGS.DET_LOSS_SCALE,
        )
        return ret

    @property
    def ur_weight(self) -> float:
        """gamma (``refinement.weight``); 0 when UR is off."""
        return self.refinement.weight

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """GeneralizedRCNN's forward; in training with UR, its losses plus ``loss_ur``."""
        if not self.training:
            return super().forward(batched_inputs)
        if not self.refinement.enabled:
            return scale_detection_losses(super().forward(batched_inputs), self.det_loss_scale)

        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        if self.proposal_generator is not None:
            proposals, losses = self.proposal_generator(images, features, gt_instances)
        else:  # precomputed proposals
            proposals, losses = [x["proposals"].to(self.device) for x in batched_inputs], {}
        lean = self.refinement.impl == "lean" and hasattr(self.roi_heads, "keeping_pooled_features")
        # in training the ROI heads return the proposals they sampled (with their GT)
        if lean:
            with self.roi_heads.keeping_pooled_features() as kept:
                sampled, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        else:
            sampled, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
            kept = {}
        losses.update(detector_losses)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)

        uncertainty = pop_uncertainty(losses)
        perturbed, eps = perturb(features, uncertainty, self.refinement)
        with private_event_storage():
            refined = self.refinement_losses(
                images, features, perturbed, eps, gt_instances, sampled, kept.get("pooled")
            )
        losses["loss_ur"] = refinement_loss(refined, losses, eps, features, self.refinement)
        return scale_detection_losses(losses, self.det_loss_scale)

    def refinement_losses(self, images, features, perturbed, eps, gt_instances, sampled, pooled):
        """The RPN's and ROI heads' losses on the perturbed features (all terms; the caller
        keeps what ``MODEL.UGS.UR_LOSSES`` names)."""
        losses = self.rpn_refinement_losses(images, perturbed, gt_instances)
        losses.update(self.roi_refinement_losses(features, perturbed, eps, gt_instances, sampled, pooled))
        return losses

    def rpn_refinement_losses(self, images, perturbed, gt_instances) -> Dict[str, Tensor]:
        """Lean: the RPN reuses its first-pass anchor labels and proposes nothing. Plain: its
        training forward runs again (matching, sampling, top-k, NMS)."""
        if self.proposal_generator is None:
            return {}
        if self.refinement.impl == "lean" and hasattr(self.proposal_generator, "refinement_losses"):
            return self.proposal_generator.refinement_losses(images, perturbed, gt_instances)
        return self.proposal_generator(images, perturbed, gt_instances)[1]

    def roi_refinement_losses(self, features, perturbed, eps, gt_instances, sampled, pooled):
        """The box head's losses for the first pass's sampled proposals; with the first pass's
        ``pooled`` features (lean) only ``eps`` is pooled, else ``perturbed``."""
        if hasattr(self.roi_heads, "refinement_losses"):
            return self.roi_heads.refinement_losses(features, eps, sampled, pooled)
        return forward_box(self.roi_heads, perturbed, sampled)
