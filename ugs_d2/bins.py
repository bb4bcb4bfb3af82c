"""Interval-non-uniform (IN) bins, the discretisation of UGS's classification-based localization.

A box coordinate target ``y`` (one detectron2 ``Box2BoxTransform`` delta) is represented as a
distribution over ``K = n + 1`` grid points ``g_0 < ... < g_n`` spanning ``[-a, a]``:

* :func:`in_grid` builds the grid (paper Eq. 9),
* :func:`two_hot` turns a continuous target into the soft label on its two neighbouring grid
  points (Eq. 8),
* :func:`expectation` decodes predicted logits back to a continuous value (the prediction
  ``y_hat = sum_i softmax(z)_i * g_i`` that follows Eq. 10).

Shapes: ``K`` is the number of grid points (``num_intervals + 1``); ``...`` is any batch shape.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["in_grid", "one_sided_in_grid", "two_hot", "expectation", "GRID_FORMS"]

#: the two readings of Eq. 9 (see :func:`in_grid`)
GRID_FORMS = ("coupled", "normalized")


def in_grid(
    value_range: float,
    modulator: float,
    num_intervals: int,
    *,
    form: str = "coupled",
    dtype: torch.dtype = None,
) -> Tensor:
    """Interval-non-uniform grid (Eq. 9), in one of its two readings.

    With uniform points ``u_i = -a + 2a*i/n`` (``i = 0..n``):

    * ``form="coupled"`` (the formula as printed: ``b`` multiplies the unnormalised ``u``)::

          g_i = sign(u_i) * a * (exp(b*|u_i|) - 1) / (exp(b*a) - 1)

      The shape depends on ``b * a``: at the R-CNN default (a=5, b=1, n=5) the grid is
      ``[-5, -0.65, -0.058, 0.058, 0.65, 5]``, so the range also changes the density.
    * ``form="normalized"`` (``b`` acts on ``u / a``, so range and modulator are independent,
      as Table 7 varies them)::

          g_i = sign(u_i) * a * (exp(b*|u_i|/a) - 1) / (exp(b) - 1)

      a=5, b=1, n=5 gives ``[-5, -2.39, -0.64, 0.64, 2.39, 5]``; the shape depends on ``b`` only.

    Both are odd (``g_{n-i} = -g_i``), strictly increasing, and has endpoints ``-a`` and ``a``.
    With this formula a LARGER modulator ``b`` packs the points closer to zero (the spacing grows
    exponentially away from zero); ``b -> 0`` is the uniform grid and ``b == 0`` returns it exactly
    (the limit, not a 0/0). A negative ``b`` packs points towards the ends instead. The paper's
    prose says both "larger b -> denser near zero" and "smaller b (1.0) ... denser around zero";
    we follow the formula.

    Args:
        value_range: ``a > 0``, half-width of the covered target interval.
        modulator: ``b``, density control; 0 gives the uniform grid.
        num_intervals: ``n >= 1``; the grid has ``n + 1`` points.
        form: ``"coupled"`` or ``"normalized"`` (:data:`GRID_FORMS`).
        dtype: result dtype (default: torch's default dtype). Computed in float64 first.

    Returns:
        Tensor[n + 1]: the grid points, increasing.
    """
    if value_range <= 0 or num_intervals < 1:
        raise ValueError(
            f"need value_range > 0 and num_intervals >= 1, got {value_range}, {num_intervals}"
        )
    if form not in GRID_FORMS:
        raise ValueError(f"grid form must be one of {', '.join(GRID_FORMS)}, got {form!r}")
    dtype = dtype or torch.get_default_dtype()
    # a * (k / n) with integer k in [-n, n]: exactly odd, and exactly +-a at the ends.
    steps = torch.arange(-num_intervals, num_intervals + 1, 2, dtype=torch.float64)
    uniform = value_range * (steps / num_intervals)
    if modulator == 0:
        return uniform.to(dtype)
    # expm1 keeps the ratio accurate for tiny |b| (where exp(.) - 1 would cancel).
    if form == "coupled":
        exponent, end = modulator * uniform.abs(), modulator * value_range
    else:
        exponent, end = modulator * uniform.abs() / value_range, modulator
    scale = torch.expm1(exponent) / torch.expm1(torch.tensor(end, dtype=torch.float64))
    return (torch.sign(uniform) * value_range * scale).to(dtype)


def one_sided_in_grid(
    value_range: float,
    modulator: float,
    num_intervals: int,
    scale: float = 1.0,
    *,
    form: str = "coupled",
) -> Tensor:
    """Interval-non-uniform grid on ``[0, scale * a]`` with its dense end at zero.

    The non-negative half of Eq. 9's grid with ``2n`` intervals, times ``scale``::

        g_i = scale * a * (exp(b * a * i / n) - 1) / (exp(b * a) - 1),    i = 0..n

    so ``g_0 = 0``, ``g_n = scale * a``, and the spacing grows away from zero (``b > 0``);
    ``b == 0`` gives the uniform grid exactly. Dense heads that regress the distances to the
    box sides (FCOS, GFL), which are ``>= 0``, use it instead of the two-sided grid. ``scale``
    changes the unit only: the grid's shape is set by ``b * a``, as for the two-sided grid, so
    the RPN keys (a = 2, b = 1, n = 10) with ``scale = 4`` give FCOS 11 bins over ``[0, 8]``
    strides, spaced 0.28 near zero to 1.6 at the end.

    Args:
        value_range: ``a > 0``.
        modulator: ``b``; 0 = uniform.
        num_intervals: ``n >= 1``; the grid has ``n + 1`` points.
        scale: ``> 0``, multiplies every point (MODEL.FCOS.UGS_RANGE_SCALE,
            MODEL.GFL.UGS_RANGE_SCALE).
        form: the reading of Eq. 9 (``ugs_d2.bins.in_grid``); for "normalized" the half-grid's
            shape is set by ``b`` alone.

    Returns:
        Tensor[n + 1], increasing from 0.
    """
    if scale <= 0:
        raise ValueError(f"need scale > 0, got {scale}")
    return scale * in_grid(value_range, modulator, 2 * num_intervals, form=form)[num_intervals:]


def two_hot(targets: Tensor, grid: Tensor) -> Tensor:
    """Two-hot soft label of continuous targets on a grid (Eq. 8).

    Targets are clamped to ``[g_0, g_n]``. For ``g_k <= y <= g_{k+1}`` the label puts
    ``(g_{k+1} - y) / (g_{k+1} - g_k)`` on bin ``k`` and ``(y - g_k) / (g_{k+1} - g_k)`` on bin
    ``k + 1``, so the weights sum to 1 and ``sum_i w_i * g_i == y``.

    Args:
        targets: Tensor[...], continuous targets (e.g. encoded box deltas).
        grid: Tensor[K], increasing grid points (:func:`in_grid`).

    Returns:
        Tensor[..., K] in the targets' dtype; no gradient flows to the targets through the bin
        index, only through the weights.
    """
    grid = grid.to(device=targets.device, dtype=targets.dtype)
    y = targets.clamp(min=grid[0].item(), max=grid[-1].item())
    # index of the left neighbour; the last interval also takes y == g_n
    left = torch.searchsorted(grid, y.detach().contiguous(), right=True) - 1
    left = left.clamp(0, grid.numel() - 2)
    g_left, g_right = grid[left], grid[left + 1]
    w_right = (y - g_left) / (g_right - g_left)
    # 1 - w_right rather than (g_right - y)/(...) makes the two weights sum to exactly 1
    label = torch.zeros(*y.shape, grid.numel(), dtype=y.dtype, device=y.device)
    label.scatter_(-1, left.unsqueeze(-1), (1 - w_right).unsqueeze(-1))
    label.scatter_(-1, (left + 1).unsqueeze(-1), w_right.unsqueeze(-1))
    return label


def expectation(logits: Tensor, grid: Tensor) -> Tensor:
    """Decode bin logits to a continuous value: ``y_hat = sum_i softmax(z)_i * g_i``.

    Args:
        logits: Tensor[..., K].
        grid: Tensor[K].

    Returns:
        Tensor[...]; always inside ``[g_0, g_n]``.
    """
    return F.softmax(logits, dim=-1) @ grid.to(device=logits.device, dtype=logits.dtype)
