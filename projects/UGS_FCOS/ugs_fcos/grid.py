"""The one-sided interval-non-uniform grid of UGS FCOS.

FCOS regresses distances from a location to the four box sides, ``(l, t, r, b) >= 0`` (in units
of the level's stride), so a grid over ``[-a, a]`` would waste half its bins on impossible
values. The one-sided grid covers ``[0, a]`` with Eq. 9's spacing, densest at zero. It lives in
``ugs_d2.bins`` (GFL uses it too) and is re-exported here.
"""
from ugs_d2.bins import one_sided_in_grid

__all__ = ["one_sided_in_grid"]
