"""Uncertainty-guided refinement (UR, Eqs. 14-15), shared by every UGS meta-architecture.

A training step with UR, whatever the detector:

1. the first pass gives the detection losses, the UM losses and the unweighted entropies
   (keys starting with :data:`~.stage.ENTROPY_PREFIX`); :func:`pop_uncertainty` sums the
   latter into the uncertainty ``U``;
2. :func:`perturb` computes ``g_l = dU / dP_l`` for each UR level and adds
   ``eps_l = adversarial_perturbation(g_l, rho, norm, P_l)`` (detached, Eq. 15);
3. the detector recomputes its losses on the perturbed levels with the first pass's anchors,
   labels and samples, inside :func:`private_event_storage`;
4. :func:`refinement_loss` keeps the terms that ``ur_losses`` names (``"all"``: every detection
   loss; ``"loc"``: the localization losses only — the two readings of Eq. 14), logs
   ``ur/eps_ratio`` (``||eps|| / ||P||``, mean over the perturbed levels and images) and ``ur/loss_delta``
   (refined minus first-pass value of the same terms), and weights the sum by gamma.

:func:`scale_detection_losses` is the control of Table 6 that separates UR from re-weighting:
the detection losses times ``1 + gamma`` without any perturbation.
"""
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence, Tuple

import torch
from detectron2.utils.events import EventStorage, get_event_storage
from torch import Tensor

from ..losses import UR_NORMS, adversarial_perturbation
from .stage import ENTROPY_PREFIX

__all__ = [
    "RefinementSettings",
    "UR_LOSSES",
    "UR_IMPLS",
    "is_localization_loss",
    "pop_uncertainty",
    "perturb",
    "refinement_terms",
    "refinement_loss",
    "private_event_storage",
    "scale_detection_losses",
]

#: which losses UR recomputes on the perturbed features (Eq. 14's two readings)
UR_LOSSES = ("all", "loc")
#: "lean": reuse the first pass's matching/sampling and ROIAlign's linearity; "plain": rerun
#: the heads' training forward unchanged (the reference the lean pass is tested against)
UR_IMPLS = ("lean", "plain")

# localization losses of every detector here (a Cascade stage appends "_stage<k>")
_LOC_LOSS = re.compile(r"^loss_(rpn_loc|box_reg|fcos_loc|gfl_dfl|gfl_giou)(_stage\d+)?$")


def is_localization_loss(key: str) -> bool:
    """``loss_rpn_loc``, ``loss_box_reg``, ``loss_fcos_loc``, GFL's ``loss_gfl_dfl`` and
    ``loss_gfl_giou`` (and the Cascade stage keys)."""
    return bool(_LOC_LOSS.match(key))


def _is_detection_loss(key: str) -> bool:
    return key.startswith("loss_") and not key.startswith(("loss_um", "loss_ur"))


@dataclass
class RefinementSettings:
    """``MODEL.UGS.UR_*``: weight (gamma), rho, levels, norm scope, recomputed losses, impl."""

    weight: float = 0.0
    rho: float = 0.5
    levels: Sequence[str] = field(default_factory=list)
    norm: str = "relative"
    losses: str = "all"
    impl: str = "lean"

    def __post_init__(self):
        for name, value, allowed in (
            ("norm", self.norm, UR_NORMS),
            ("losses", self.losses, UR_LOSSES),
            ("impl", self.impl, UR_IMPLS),
        ):
            if value not in allowed:
                raise ValueError(f"MODEL.UGS.UR_{name.upper()} must be one of {', '.join(allowed)}, got {value!r}")
        self.levels = list(self.levels)

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    @classmethod
    def from_config(cls, cfg) -> "RefinementSettings":
        ugs = cfg.MODEL.UGS
        return cls(
            weight=ugs.UR_WEIGHT,
            rho=ugs.UR_RHO,
            levels=ugs.UR_LEVELS,
            norm=ugs.UR_NORM,
            losses=ugs.UR_LOSSES,
            impl=ugs.UR_IMPL,
        )


def pop_uncertainty(losses: Dict[str, Tensor]) -> Tensor:
    """Remove the entropy side outputs from ``losses`` and return their sum (the ``U`` of UR).

    Raises:
        RuntimeError: when no head emitted one (UR without any bin stage).
    """
    keys = [k for k in losses if k.startswith(ENTROPY_PREFIX)]
    if not keys:
        raise RuntimeError(
            "UR needs a UGS head with bins (MODEL.UGS.RPN.ENABLED or MODEL.UGS.ROI.ENABLED); "
            "call the detector's apply_*_architecture(cfg)"
        )
    return sum(losses.pop(k) for k in keys)


def perturb(
    features: Mapping[str, Tensor], uncertainty: Tensor, settings: RefinementSettings
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Eq. 15 on the UR levels present in ``features``.

    Args:
        features: level name -> (N, C, Hl, Wl), part of the autograd graph of ``uncertainty``.
        uncertainty: scalar, the unweighted entropies.
        settings: rho, norm and levels.

    Returns:
        ``(perturbed, eps)``: a new dict with ``features[l] + eps_l`` for each perturbed level
        (others unchanged), and the ``eps_l`` themselves (detached). A level without gradient
        (it feeds no bin head) is not perturbed.
    """
    levels = [level for level in settings.levels if level in features]
    # retain_graph: the training losses backpropagate through this graph afterwards.
    # allow_unused: a level may feed no bin head (e.g. p6 when only the ROI head has bins).
    grads = torch.autograd.grad(
        uncertainty, [features[level] for level in levels], retain_graph=True, allow_unused=True
    )
    perturbed, eps = dict(features), {}
    for level, grad in zip(levels, grads):
        if grad is not None:
            eps[level] = adversarial_perturbation(grad, settings.rho, settings.norm, features[level])
            perturbed[level] = features[level] + eps[level]
    return perturbed, eps


def refinement_terms(losses: Mapping[str, Tensor], which: str) -> Dict[str, Tensor]:
    """The terms UR keeps: detection losses (no UM, no entropy), or only localization ones."""
    keep = is_localization_loss if which == "loc" else _is_detection_loss
    return {k: v for k, v in losses.items() if keep(k)}


def refinement_loss(
    refined: Mapping[str, Tensor],
    first_pass: Mapping[str, Tensor],
    eps: Mapping[str, Tensor],
    features: Mapping[str, Tensor],
    settings: RefinementSettings,
) -> Tensor:
    """``loss_ur = gamma * sum`` of the kept refined terms; logs ``ur/eps_ratio`` and
    ``ur/loss_delta`` into the step's EventStorage (when one is open)."""
    terms = refinement_terms(refined, settings.losses)
    total = sum(terms.values())
    with torch.no_grad():
        delta = total - sum(first_pass[k] for k in terms if k in first_pass)
        # per (level, image) that is perturbed at all: an image without foreground at a level
        # has no gradient there and no perturbation, which is not a small ratio
        ratios = [
            e.flatten(1).norm(dim=1) / features[level].flatten(1).norm(dim=1).clamp_min(1e-12)
            for level, e in eps.items()
        ]
        ratios = torch.cat(ratios) if ratios else torch.zeros(0)
        ratios = ratios[ratios > 0]
    storage = _current_storage()
    if storage is not None:
        storage.put_scalar("ur/loss_delta", float(delta))
        if ratios.numel():
            storage.put_scalar("ur/eps_ratio", float(ratios.mean()))
    return settings.weight * total


def scale_detection_losses(losses: Dict[str, Tensor], scale: float) -> Dict[str, Tensor]:
    """Multiply the detection losses (not UM, not UR) by ``scale``, in place; returns ``losses``."""
    if scale != 1.0:
        for key in [k for k in losses if _is_detection_loss(k)]:
            losses[key] = losses[key] * scale
    return losses


def _current_storage():
    try:
        return get_event_storage()
    except AssertionError:  # outside a trainer (tests, scripts): nothing to log into
        return None


@contextmanager
def private_event_storage():
    """Run a block with its own EventStorage, so that the statistics the heads log during the
    UR pass (anchor counts, ROI accuracy on perturbed features) do not overwrite the step's."""
    storage = _current_storage()
    with EventStorage(storage.iter if storage is not None else 0):
        yield
