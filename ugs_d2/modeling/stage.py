"""The localization mechanics of one UGS stage, shared by every detector.

:class:`BinLocalization` is what the RPN, the ROI box predictor (one per Cascade stage) and the
dense heads (RetinaNet, FCOS) hold instead of writing the same pieces three times:

* the IN grid (Eq. 9) as a *persistent* buffer, so it travels with the checkpoint and a
  checkpoint trained with another grid is refused (:func:`check_grids`);
* the decode of the head's parameters to one value per coordinate (bin expectation, or the KL
  mean);
* the localization loss of the foreground coordinates (bin cross-entropy, Eq. 10, or the KL
  loss), reduced over the 4 coordinates by a sum (R-CNN, detectron2's convention) or a mean
  (dense heads, GFL's convention), times a weight;
* the UM loss (Eq. 12) with the same reduction and, for UR, the unweighted entropy as a side
  output under a key starting with :data:`ENTROPY_PREFIX` (never a loss).

:class:`BinDecodingTransform` lets detectron2's own decoding code (dense heads' top-k
inference) take bin logits: it decodes only the rows it is asked to apply.

Oriented boxes (detectron2's ``XYWHA``, five deltas dx, dy, dw, dh, da) add a fifth
coordinate, the angle delta, which lives in other units (radians times the box transform's
angle weight) and range than the other four: given an ``angle_grid`` it is binned, decoded and
scored on that grid, the first four on ``grid`` (both with K points, so the parameters stay one
tensor).

Shapes: F foreground elements, C = 4 coordinates (5 with an angle grid), K = n + 1 grid points,
P values per coordinate (K for bins, 2 for KL, 1 native).
"""
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from ..bins import expectation
from ..losses import bin_cross_entropy, entropy, kl_loss

__all__ = [
    "BinLocalization",
    "BinDecodingTransform",
    "GridMismatchError",
    "check_grids",
    "ENTROPY_PREFIX",
    "MODES",
    "REDUCTIONS",
]

#: loss-dict keys starting with this are the unweighted entropies UR differentiates (not losses)
ENTROPY_PREFIX = "ugs_entropy"
#: how a stage localizes: IN bins, He et al.'s KL loss, or detectron2's own regression
MODES = ("bins", "kl", "native")
#: how the 4 coordinates' losses of one element are combined
REDUCTIONS = ("sum", "mean")


class GridMismatchError(ValueError):
    """A checkpoint's IN grid differs from the model's (other range, modulator, intervals, form)."""


class BinLocalization(nn.Module):
    """One stage's localization: grid, decode, localization loss, UM loss, entropy side output.

    Parameters are laid out ``(..., C, P)`` (coordinates, then values per coordinate).
    """

    def __init__(
        self,
        mode: str,
        grid: Tensor = None,
        *,
        um_weight: float = 0.0,
        loc_weight: float = 1.0,
        coord_reduction: str = "sum",
        um_key: str = "loss_um",
        entropy_key: str = ENTROPY_PREFIX,
        angle_grid: Tensor = None,
    ):
        """
        Args:
            mode: one of :data:`MODES`.
            grid: Tensor[K], the IN grid; required for "bins".
            um_weight: lambda of Eq. 16, weight of the UM loss.
            loc_weight: weight of the localization (and, as a factor, the UM) loss.
            coord_reduction: "sum" or "mean" over the C coordinates of an element.
            um_key: loss-dict key of the UM loss.
            entropy_key: loss-dict key of the entropy side output (starts with ENTROPY_PREFIX).
            angle_grid: Tensor[K], the grid of a fifth (angle) coordinate; bins only.
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"localization mode must be one of {', '.join(MODES)}, got {mode!r}")
        if coord_reduction not in REDUCTIONS:
            raise ValueError(f"coordinate reduction must be sum or mean, got {coord_reduction!r}")
        if mode == "bins" and (grid is None or grid.numel() < 2):
            raise ValueError("bins need a grid of at least 2 points")
        if angle_grid is not None and (mode != "bins" or angle_grid.shape != grid.shape):
            raise ValueError("an angle grid needs bins and as many points as the grid")
        if not entropy_key.startswith(ENTROPY_PREFIX):
            raise ValueError(f"entropy key must start with {ENTROPY_PREFIX!r}, got {entropy_key!r}")
        self.mode = mode
        self.um_weight = um_weight
        self.loc_weight = loc_weight
        self.coord_reduction = coord_reduction
        self.um_key = um_key
        self.entropy_key = entropy_key
        # set by the meta-architecture when UR needs the entropy even though um_weight is 0
        self.return_entropy = False
        # persistent: the grid is part of what a checkpoint was trained with (check_grids);
        # None (no state-dict entry) without bins, so native stages keep detectron2's keys
        self.register_buffer("grid", grid if mode == "bins" else None)
        self.register_buffer("angle_grid", angle_grid)  # persistent too: check_grids compares it

    @property
    def params_per_coord(self) -> int:
        """P: K for bins, 2 for KL (mean, log-variance), 1 native."""
        if self.mode == "bins":
            return self.grid.numel()
        return 2 if self.mode == "kl" else 1

    @property
    def num_coords(self) -> int:
        """C: 4, or 5 with an angle grid."""
        return 4 if self.angle_grid is None else 5

    def point(self, params: Tensor) -> Tensor:
        """(..., C, P) -> (..., C): the bin expectation, the KL mean, or the value itself."""
        if self.mode != "bins":
            return params[..., 0]
        if self.angle_grid is None:
            return expectation(params, self.grid)
        return torch.cat([expectation(params[..., :4, :], self.grid),
                          expectation(params[..., 4:, :], self.angle_grid)], dim=-1)

    def _bin_cross_entropy(self, fg_params: Tensor, fg_targets: Tensor) -> Tensor:
        """(F, C, K), (F, C) -> (F, C): Eq. 10 per coordinate, the angle on its own grid."""
        if self.angle_grid is None:
            return bin_cross_entropy(fg_params, fg_targets, self.grid)
        return torch.cat([bin_cross_entropy(fg_params[:, :4], fg_targets[:, :4], self.grid),
                          bin_cross_entropy(fg_params[:, 4:], fg_targets[:, 4:], self.angle_grid)], dim=-1)

    def _reduce(self, per_coord: Tensor, weights: Optional[Tensor] = None) -> Tensor:
        """(F, C) -> scalar: sum over elements of the sum or mean over the coordinates, each
        element times ``weights`` (F,) if given (GFL weighs its DFL by the predicted score)."""
        per_element = per_coord.sum(-1) if self.coord_reduction == "sum" else per_coord.mean(-1)
        if weights is not None:
            per_element = per_element * weights
        return per_element.sum()

    def loc_loss(
        self, fg_params: Tensor, fg_targets: Tensor, normalizer: float, weights: Optional[Tensor] = None
    ) -> Tensor:
        """Localization loss of the foreground elements, divided by ``normalizer``.

        Args:
            fg_params: Tensor[F, C, P]; fg_targets: Tensor[F, C] encoded targets.
            weights: optional Tensor[F], a factor per element (see :meth:`_reduce`).
        """
        if self.mode == "bins":
            per_coord = self._bin_cross_entropy(fg_params, fg_targets)
        elif self.mode == "kl":
            per_coord = kl_loss(fg_params[..., 0], fg_params[..., 1], fg_targets)
        else:
            raise RuntimeError("native localization is detectron2's own loss")
        return self.loc_weight * self._reduce(per_coord, weights) / normalizer

    def uncertainty_losses(
        self, fg_logits: Tensor, normalizer: float, weights: Optional[Tensor] = None
    ) -> Dict[str, Tensor]:
        """UM loss (Eq. 12) and the entropy side output of the foreground bin logits (F, C, K).

        Normalised exactly like :meth:`loc_loss` (same reduction, weight and normaliser), so
        ``um_weight`` weighs the entropy against the localization loss itself.
        """
        out: Dict[str, Tensor] = {}
        if self.mode != "bins" or not (self.um_weight > 0 or self.return_entropy):
            return out
        total_entropy = self.loc_weight * self._reduce(entropy(fg_logits), weights) / normalizer
        if self.um_weight > 0:
            out[self.um_key] = self.um_weight * total_entropy
        if self.return_entropy:
            out[self.entropy_key] = total_entropy
        return out

    def losses(
        self, fg_params: Tensor, fg_targets: Tensor, normalizer: float, weights: Optional[Tensor] = None
    ) -> Dict[str, Tensor]:
        """``{"loc": ...}`` plus :meth:`uncertainty_losses`, both with the same ``weights``."""
        out = {"loc": self.loc_loss(fg_params, fg_targets, normalizer, weights)}
        out.update(self.uncertainty_losses(fg_params, normalizer, weights))
        return out

    def extra_repr(self) -> str:
        fmt = lambda g: [round(v, 4) for v in g.tolist()] if g is not None else None  # noqa: E731
        angle = f", angle_grid={fmt(self.angle_grid)}" if self.angle_grid is not None else ""
        return (f"mode={self.mode}, grid={fmt(self.grid)}{angle}, um_weight={self.um_weight}, "
                f"loc_weight={self.loc_weight}")


class BinDecodingTransform:
    """A detectron2 box transform whose ``apply_deltas`` also takes bin parameters.

    detectron2's dense detectors pick the top-k anchors first and then call
    ``box2box_transform.apply_deltas(pred_deltas[top_k], anchors[top_k])``. Given the heads'
    raw parameters ``(..., 4 * P)`` instead of deltas, this transform decodes exactly those
    rows (:meth:`BinLocalization.point`) and hands the deltas to the wrapped transform, so the
    bin expectation is computed after top-k, never for every anchor. ``(..., 4)`` deltas pass
    through unchanged; every other attribute is the wrapped transform's.
    """

    def __init__(self, transform, localization: BinLocalization):
        self.transform = transform
        self.localization = localization

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        coords = self.localization.num_coords
        if deltas.shape[-1] != coords:
            deltas = self.localization.point(deltas.view(*deltas.shape[:-1], coords, deltas.shape[-1] // coords))
        return self.transform.apply_deltas(deltas, boxes)

    def __getattr__(self, name):
        return getattr(self.transform, name)


def check_grids(model_state: Mapping[str, Tensor], checkpoint_state: Mapping[str, Tensor], source: str) -> None:
    """Refuse a checkpoint whose UGS grids differ from the model's.

    Every ``*.grid`` / ``*.angle_grid`` buffer of the model that the checkpoint also holds must be equal in shape
    and value (to 1e-6): a model decodes with the grid it was trained with, so evaluating a
    checkpoint under another range, modulator, number of intervals or grid form would silently
    give wrong boxes. Checkpoints without the key (written before grids were saved) pass.

    Raises:
        GridMismatchError: one line naming the first differing key and both grids.
    """
    for key, mine in model_state.items():
        if key.split(".")[-1] not in ("grid", "angle_grid") or key not in checkpoint_state:
            continue
        theirs = torch.as_tensor(checkpoint_state[key])
        same = theirs.shape == mine.shape and torch.allclose(
            theirs.double().cpu(), mine.double().cpu(), atol=1e-6, rtol=0
        )
        if not same:
            fmt = lambda t: "[" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + "]"  # noqa: E731
            raise GridMismatchError(
                f"{source}: {key} was trained with grid {fmt(theirs)} but this config builds "
                f"{fmt(mine)} (check ugs.*.range, modulator, num_intervals, grid_form)"
            )
