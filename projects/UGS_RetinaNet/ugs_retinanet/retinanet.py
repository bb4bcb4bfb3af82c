"""RetinaNet with UGS: IN-bin classification of the anchor deltas, UM and UR on the FPN levels.

The head's box conv predicts ``K = n + 1`` bin logits per anchor coordinate instead of one
delta; its channels are laid out ``(A, 4, K)``, so detectron2's ``permute_to_N_HWA_K`` with
``4*K`` values per anchor gives ``(N, Hi*Wi*A, 4*K)`` per level, viewed as ``(N, Hi*Wi*A, 4, K)``.
The math is the core package's: ``ugs_d2.bins`` (grid, two-hot, expectation) and
``ugs_d2.losses`` (bin cross-entropy, entropy, the UR perturbation).

Per training step with bins (``MODEL.UGS.RPN.ENABLED``; the dense head reads the RPN's keys:
same encoding, Box2BoxTransform weights (1, 1, 1, 1)):

* ``loss_cls``: detectron2's focal loss, unchanged;
* ``loss_box_reg``: bin cross-entropy (Eq. 10) of the foreground anchors' encoded GT deltas,
  summed and divided by detectron2's normaliser (EMA of the number of foreground anchors);
* ``loss_um``: UM_WEIGHT * entropy (Eq. 12) of the same distributions, same normaliser;
* ``loss_ur``: UR_WEIGHT * (``loss_cls`` + ``loss_box_reg``) recomputed on ``P_l + eps_l`` for
  each level of MODEL.UGS.UR_LEVELS the head reads, ``eps_l = rho * g_l / ||g_l||`` with ``g_l``
  the gradient of the (unweighted) entropy wrt ``P_l`` (Eqs. 14-15).

Inference decodes the expected deltas ``sum_i softmax(z)_i g_i`` and is detectron2's otherwise.
Shapes: N images, R anchors per image over all levels, F foreground anchors, K bins.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage, get_event_storage

from ugs_d2.bins import expectation
from ugs_d2.losses import adversarial_perturbation, bin_cross_entropy, entropy
from ugs_d2.modeling.config import stage_kwargs, validate_ugs_config

__all__ = [
    "UGSRetinaNetHead",
    "UGSRetinaNet",
    "DenseUGSMixin",
    "widen_box_conv",
    "perturb_levels",
    "head_norm",
]

#: loss-dict key of the unweighted entropy that UR differentiates (popped, never a loss)
ENTROPY_KEY = "ugs_entropy"


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


def perturb_levels(
    features: Sequence[Tensor],
    names: Sequence[str],
    ur_levels: Sequence[str],
    uncertainty: Tensor,
    rho: float,
) -> List[Tensor]:
    """Eq. 15 on the levels a dense head reads: ``P_l + rho * g_l / ||g_l||`` for UR's levels.

    Args:
        features: the head's input levels, each (N, C, Hl, Wl), part of the autograd graph.
        names: their names (e.g. ``["p3", ..., "p7"]``), aligned with ``features``.
        ur_levels: the names to perturb; others are returned unchanged.
        uncertainty: scalar computed from ``features`` (the unweighted UM entropy).
        rho: perturbation radius.

    Returns:
        A new list; a perturbed level is ``features[l] + eps_l`` with ``eps_l`` detached (the
        min-max objective treats it as a constant), a level without gradient is unchanged.
    """
    chosen = [i for i, name in enumerate(names) if name in ur_levels]
    # retain_graph: the training losses backpropagate through this graph afterwards
    grads = torch.autograd.grad(
        uncertainty, [features[i] for i in chosen], retain_graph=True, allow_unused=True
    )
    perturbed = list(features)
    for i, grad in zip(chosen, grads):
        if grad is not None:
            perturbed[i] = features[i] + adversarial_perturbation(grad, rho)
    return perturbed


class UGSRetinaNetHead(RetinaNetHead):
    """RetinaNetHead whose box conv outputs ``A*4*P`` channels per level, laid out ``(A, 4, P)``.

    ``forward`` is detectron2's: per level logits ``(N, A*C, Hi, Wi)`` and box parameters
    ``(N, A*4*P, Hi, Wi)``. With ``P = 1`` it is detectron2's head.
    """

    @configurable
    def __init__(self, *, params_per_coord: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.params_per_coord = params_per_coord
        if params_per_coord != 1:
            self.bbox_pred = widen_box_conv(self.bbox_pred, params_per_coord)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["norm"] = head_norm(ret["norm"])
        ret["params_per_coord"] = stage_kwargs(cfg, "RPN")["params_per_coord"]
        return ret


class DenseUGSMixin:
    """UGS pieces shared by the dense detectors (RetinaNet here, FCOS in ``projects/UGS_FCOS``).

    The detector sets, in its ``__init__``, ``mode`` ("bins" or "native"), ``params_per_coord``,
    the ``grid`` buffer, ``um_weight``, ``ur_weight``, ``ur_rho`` and ``ur_levels`` via
    :meth:`_init_ugs`, and has detectron2's ``box2box_transform`` and ``head_in_features``.
    """

    def _init_ugs(
        self,
        mode: str,
        params_per_coord: int,
        grid: Optional[Tensor],
        um_weight: float,
        ur_weight: float,
        ur_rho: float,
        ur_levels: Sequence[str],
    ) -> None:
        if mode not in ("bins", "native"):
            raise ValueError(f"{type(self).__name__} supports bins or native localization, got {mode!r}")
        self.mode = mode
        self.params_per_coord = params_per_coord
        self.um_weight = um_weight
        self.ur_weight = ur_weight
        self.ur_rho = ur_rho
        self.ur_levels = [level for level in ur_levels if level in self.head_in_features]
        if ur_weight > 0 and not self.ur_levels:
            raise ValueError(
                f"MODEL.UGS.UR_LEVELS {list(ur_levels)} names none of the head's levels "
                f"{list(self.head_in_features)}"
            )
        self.register_buffer("grid", grid if grid is not None else torch.zeros(0), persistent=False)

    @property
    def uses_ugs(self) -> bool:
        return self.mode == "bins"

    def box_params(self, per_level: List[Tensor]) -> List[Tensor]:
        """L tensors (N, Hi*Wi*A, 4*P) -> (N, Hi*Wi*A, 4, P)."""
        return [x.view(x.shape[0], x.shape[1], 4, self.params_per_coord) for x in per_level]

    def point_deltas(self, box_params: Tensor) -> Tensor:
        """(..., 4, P) -> (..., 4): the bin expectation (bins) or the delta itself (P = 1)."""
        if self.mode == "bins":
            return expectation(box_params, self.grid)
        return box_params[..., 0]

    def bin_losses(
        self,
        anchors: List[Boxes],
        box_params: List[Tensor],
        gt_boxes: List[Tensor],
        fg_mask: Tensor,
        normalizer: float,
    ) -> Dict[str, Tensor]:
        """Localization (Eq. 10) and UM (Eq. 12) losses of the foreground anchors.

        Args:
            anchors: L Boxes (Hi*Wi*A, 4), as from detectron2's anchor generator.
            box_params: L tensors (N, Hi*Wi*A, 4, K) of bin logits.
            gt_boxes: N tensors or Boxes (R, 4), each anchor's matched GT box.
            fg_mask: (N, R) foreground anchors.
            normalizer: the detector's loss normaliser (sums are divided by it).

        Returns:
            ``loc`` (bin cross-entropy), ``loss_um`` (when UM_WEIGHT > 0) and, when UR is on,
            ``ENTROPY_KEY`` (the unweighted entropy); all normalised the same way.
        """
        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        gt_deltas = torch.stack(
            [
                self.box2box_transform.get_deltas(all_anchors, b.tensor if isinstance(b, Boxes) else b)
                for b in gt_boxes
            ]
        )  # (N, R, 4) in the detector's own encoding
        fg_logits = cat(box_params, dim=1)[fg_mask]  # (F, 4, K)
        out = {"loc": bin_cross_entropy(fg_logits, gt_deltas[fg_mask], self.grid).sum() / normalizer}
        if self.um_weight > 0 or self.ur_weight > 0:
            total_entropy = entropy(fg_logits).sum() / normalizer
            if self.um_weight > 0:
                out["loss_um"] = self.um_weight * total_entropy
            if self.ur_weight > 0:
                out[ENTROPY_KEY] = total_entropy
        return out

    def refinement_loss(
        self,
        features: List[Tensor],
        uncertainty: Tensor,
        detection_losses: Callable[[List[Tensor]], Dict[str, Tensor]],
    ) -> Tensor:
        """``loss_ur`` (Eq. 14): UR_WEIGHT * the detection losses on the perturbed levels.

        Args:
            features: the head's input levels.
            uncertainty: the unweighted entropy (differentiable wrt ``features``).
            detection_losses: maps the head's predictions on given levels to a loss dict, with
                the same anchors, labels and normaliser as the step's first pass.

        The UM terms and the entropy are left out (UM is counted once, by the first pass), and
        the pass logs into a private EventStorage so that its statistics do not overwrite the
        step's.
        """
        perturbed = perturb_levels(
            features, self.head_in_features, self.ur_levels, uncertainty, self.ur_rho
        )
        with EventStorage(get_event_storage().iter):
            refined = detection_losses(self.head(perturbed))
        return self.ur_weight * sum(
            v for k, v in refined.items() if not k.startswith("loss_um") and k != ENTROPY_KEY
        )

    def ugs_training_losses(
        self,
        features: List[Tensor],
        predictions,
        detection_losses: Callable[[object], Dict[str, Tensor]],
    ) -> Dict[str, Tensor]:
        """The training losses with bins: ``detection_losses(predictions)`` plus ``loss_ur``.

        Args:
            features: the head's input levels.
            predictions: the head's outputs on ``features``.
            detection_losses: head outputs -> loss dict, closed over the step's anchors and
                labels; with UR it must emit ``ENTROPY_KEY`` (see :meth:`bin_losses`).
        """
        before = self._keep_normalizer()
        losses = detection_losses(predictions)
        if self.ur_weight > 0:
            after = self._keep_normalizer()
            self._restore_normalizer(before)  # the UR pass sees the first pass's normaliser
            losses["loss_ur"] = self.refinement_loss(
                features, losses.pop(ENTROPY_KEY), detection_losses
            )
            self._restore_normalizer(after)
        return losses

    def _keep_normalizer(self):
        """Snapshot of the EMA loss normaliser (``loss_normalizer``), so that UR's second loss
        pass uses the same value as the first instead of updating the EMA twice per step."""
        return self.__dict__.get("loss_normalizer")

    def _restore_normalizer(self, value) -> None:
        if value is None:
            self.__dict__.pop("loss_normalizer", None)
        else:
            self.loss_normalizer = value


@META_ARCH_REGISTRY.register()
class UGSRetinaNet(DenseUGSMixin, RetinaNet):
    """detectron2's RetinaNet with the UGS box branch, UM and UR (see the module docstring).

    With ``MODEL.UGS.RPN.ENABLED`` false (the baseline) every method is detectron2's
    ``RetinaNet``'s (``super()``), on a head equal to ``RetinaNetHead``; the class is used for
    the baseline too so that ``head_norm: GN`` works on detectron2 0.6 (see :func:`head_norm`).
    """

    @configurable
    def __init__(
        self,
        *,
        mode: str = "native",
        params_per_coord: int = 1,
        grid: Tensor = None,
        um_weight: float = 0.0,
        ur_weight: float = 0.0,
        ur_rho: float = 0.5,
        ur_levels: Sequence[str] = (),
        **kwargs,
    ):
        """
        Args:
            mode: "bins" or "native" (detectron2's regression with BBOX_REG_LOSS_TYPE).
            params_per_coord: P, values per coordinate the head predicts (must match the head).
            grid: Tensor[K], the IN grid (Eq. 9), required for "bins".
            um_weight, ur_weight, ur_rho, ur_levels: MODEL.UGS.UM_WEIGHT, UR_WEIGHT, UR_RHO,
                UR_LEVELS (levels the head does not read are ignored).
            kwargs: detectron2's ``RetinaNet`` arguments.
        """
        super().__init__(**kwargs)
        self._init_ugs(mode, params_per_coord, grid, um_weight, ur_weight, ur_rho, ur_levels)
        if ur_weight > 0 and mode != "bins":
            raise ValueError("MODEL.UGS.UR_WEIGHT > 0 needs MODEL.UGS.RPN.ENABLED for RetinaNet")

    @classmethod
    def from_config(cls, cfg):
        validate_ugs_config(cfg)
        ret = super().from_config(cfg)
        shapes = ret["backbone"].output_shape()
        ret["head"] = UGSRetinaNetHead(cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES])
        kwargs = stage_kwargs(cfg, "RPN")
        if kwargs["mode"] == "kl":
            raise ValueError("MODEL.UGS.RPN.REG_LOSS = kl is not implemented for RetinaNet")
        ret.update(
            mode=kwargs["mode"],
            params_per_coord=kwargs["params_per_coord"],
            grid=kwargs["grid"],
            um_weight=cfg.MODEL.UGS.UM_WEIGHT,
            ur_weight=cfg.MODEL.UGS.UR_WEIGHT,
            ur_rho=cfg.MODEL.UGS.UR_RHO,
            ur_levels=cfg.MODEL.UGS.UR_LEVELS,
        )
        return ret

    def _split_predictions(self, predictions) -> Tuple[List[Tensor], List[Tensor]]:
        """Head outputs -> logits L x (N, R_i, C) and box parameters L x (N, R_i, 4, P)."""
        logits, box = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4 * self.params_per_coord]
        )
        return logits, self.box_params(box)

    def forward_training(self, images, features, predictions, gt_instances):
        if not self.uses_ugs:
            return super().forward_training(images, features, predictions, gt_instances)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)

        def detection_losses(predictions_on_levels):
            logits, params = self._split_predictions(predictions_on_levels)
            return self.losses(anchors, logits, gt_labels, params, gt_boxes)

        return self.ugs_training_losses(features, predictions, detection_losses)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """detectron2's losses with ``loss_box_reg`` = bin cross-entropy (+ ``loss_um``).

        Args:
            pred_anchor_deltas: with bins, L tensors (N, R_i, 4, K) of bin logits; otherwise
                detectron2's (N, R_i, 4) deltas.
            others: as detectron2's ``RetinaNet.losses``.
        """
        if not self.uses_ugs:
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        # The parent computes the focal loss, the normaliser and the statistics; its box term,
        # fed detached point estimates here, is replaced below.
        point = [self.point_deltas(p).detach() for p in pred_anchor_deltas]
        losses = super().losses(anchors, pred_logits, gt_labels, point, gt_boxes)
        labels = torch.stack(gt_labels)
        fg_mask = (labels >= 0) & (labels != self.num_classes)
        extra = self.bin_losses(anchors, pred_anchor_deltas, gt_boxes, fg_mask, self.loss_normalizer)
        losses["loss_box_reg"] = extra.pop("loc")
        losses.update(extra)
        return losses

    def forward_inference(self, images, features, predictions):
        """detectron2's inference on the expected deltas of the bin distributions."""
        if not self.uses_ugs:
            return super().forward_inference(images, features, predictions)
        logits, params = self._split_predictions(predictions)
        deltas = [self.point_deltas(p) for p in params]  # L x (N, R_i, 4)
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            results.append(
                self.inference_single_image(
                    anchors,
                    [x[img_idx].sigmoid() for x in logits],
                    [x[img_idx] for x in deltas],
                    image_size,
                )
            )
        return results
