"""The one-sided interval-non-uniform grid of UGS FCOS.

FCOS regresses distances from a location to the four box sides, ``(l, t, r, b) >= 0`` (in units
of the level's stride), so a grid over ``[-a, a]`` would waste half its bins on impossible
values. The one-sided grid covers ``[0, a]`` with Eq. 9's spacing, densest at zero.
"""
from torch import Tensor

from ugs_d2.bins import in_grid

__all__ = ["one_sided_in_grid"]


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
    ``b == 0`` gives the uniform grid exactly. ``scale`` changes the unit only: the grid's shape
    is set by ``b * a``, as for the two-sided grid, so the RPN keys (a = 2, b = 1, n = 10) with
    ``scale = 4`` give FCOS 11 bins over ``[0, 8]`` strides, spaced 0.28 near zero to 1.6 at the end.

    Args:
        value_range: ``a > 0``.
        modulator: ``b``; 0 = uniform.
        num_intervals: ``n >= 1``; the grid has ``n + 1`` points.
        scale: ``> 0``, multiplies every point (FCOS: MODEL.FCOS.UGS_RANGE_SCALE).
        form: the reading of Eq. 9 (``ugs_d2.bins.in_grid``); for "normalized" the half-grid's
            shape is set by ``b`` alone.

    Returns:
        Tensor[n + 1], increasing from 0.
    """
    if scale <= 0:
        raise ValueError(f"need scale > 0, got {scale}")
    return scale * in_grid(value_range, modulator, 2 * num_intervals, form=form)[num_intervals:]
