"""Box geometry shared by the package: IoU, IOS (intersection over the smaller box), clipping.

One place for it, on detectron2's own ops (``pairwise_iou``, ``pairwise_ioa``, ``Boxes.clip``),
so that tiled inference, the SAHI benchmark and the dataset health report agree to the last
bit on what an overlap is. Boxes are ``x0, y0, x1, y1`` (XYXY_ABS) everywhere here; numpy
arrays and tensors are both accepted and numpy arrays come back (the callers are numpy code).

Oriented boxes are detectron2's ``XYWHA_ABS``: centre, width, height and an angle in degrees,
counter-clockwise as seen on the image (whose y axis points down). :func:`polygon_to_rotated_box`
turns an annotated polygon (SODA-A's 4 corners) into one.

One exception, :func:`overlap_with`, is numpy: one box against a few others, called once per
kept box inside the sequential greedy merge of tiled inference, where the fixed cost of a torch
op (tens of microseconds, against one for numpy) made merging 3-4x slower; it is tested equal
to :func:`pairwise_overlap`.

Degenerate pairs follow detectron2: a pair whose intersection is empty has overlap 0 (never
NaN), and a box whose corners are inverted has no intersection with anything.
"""
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    import torch
    from detectron2.structures import Boxes

# torch and detectron2 are imported in the functions: the command-line tools import this module
# at start, and their --help must not pay for (or print the warnings of) importing torch.

__all__ = [
    "MATCH_METRICS", "box_iou", "box_ios", "pairwise_overlap", "overlap_with", "clip_boxes",
    "convex_hull", "polygon_to_rotated_box", "rotated_box_corners", "clip_polygon", "polygon_area",
]

MATCH_METRICS = ("iou", "ios")

ArrayLike = Union[np.ndarray, "torch.Tensor", list, tuple]


def _as_boxes(boxes: ArrayLike) -> "Boxes":
    """(N, 4) array-like -> ``Boxes`` holding a float64 tensor.

    ``Boxes.__init__`` casts to float32; the pairwise ops compute in their tensor's dtype, so
    the float64 tensor is put back: a threshold such as 0.95 then compares exactly as the
    float64 numpy code this module replaced did (float32 could flip a pair at the threshold).
    """
    import torch
    from detectron2.structures import Boxes

    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu()
    tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)
    wrapped = Boxes(tensor)  # validates the (N, 4) shape
    wrapped.tensor = tensor
    return wrapped


def box_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pairwise intersection over union.

    Args:
        a: (N, 4) XYXY boxes; b: (M, 4).

    Returns:
        (N, M) float64 in [0, 1]; 0 where the intersection is empty.
    """
    from detectron2.structures import pairwise_iou

    return pairwise_iou(_as_boxes(a), _as_boxes(b)).numpy()


def box_ios(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pairwise intersection over the smaller of the two areas.

    1 when one box lies inside the other: the case of an object cut by a tile edge, whose
    partial box has a low IoU with the whole one. ``inter / min(area_a, area_b)`` is the larger
    of detectron2's two intersections-over-area, ``ioa(a, b)`` and ``ioa(b, a)``.

    Args:
        a: (N, 4) XYXY boxes; b: (M, 4).

    Returns:
        (N, M) float64 in [0, 1]; 0 where the intersection is empty.
    """
    import torch
    from detectron2.structures import pairwise_ioa

    boxes_a, boxes_b = _as_boxes(a), _as_boxes(b)
    return torch.maximum(pairwise_ioa(boxes_a, boxes_b), pairwise_ioa(boxes_b, boxes_a).T).numpy()


def pairwise_overlap(a: ArrayLike, b: ArrayLike, metric: str = "iou") -> np.ndarray:
    """:func:`box_iou` or :func:`box_ios` by name (``metric``: ``iou`` | ``ios``).

    Returns:
        (N, M) float64 array in [0, 1].
    """
    if metric not in MATCH_METRICS:
        raise ValueError(f"match metric: expected one of {', '.join(MATCH_METRICS)}, got {metric!r}")
    return box_iou(a, b) if metric == "iou" else box_ios(a, b)


def overlap_with(box: np.ndarray, others: np.ndarray, metric: str = "iou") -> np.ndarray:
    """``pairwise_overlap(box[None], others, metric)[0]`` in numpy, for sequential loops.

    Args:
        box: (4,) float64 XYXY; others: (M, 4) float64.

    Returns:
        (M,) float64 in [0, 1]; 0 where the intersection is empty.
    """
    w = np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0])
    h = np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    denominator = area + areas - inter if metric == "iou" else np.minimum(area, areas)
    # inter > 0 implies both areas > 0 (as detectron2's pairwise ops: 0 unless they intersect)
    return np.divide(inter, denominator, out=np.zeros_like(inter), where=inter > 0)


def clip_boxes(boxes: ArrayLike, width: float, height: float) -> np.ndarray:
    """Clip XYXY boxes to the image ``[0, width] x [0, height]``.

    Args:
        boxes: (N, 4).

    Returns:
        (N, 4) float64 copy; a box outside the image collapses onto its border (zero area).
    """
    clipped = _as_boxes(boxes)
    clipped.clip((height, width))  # detectron2's order: (h, w)
    return clipped.tensor.numpy()


def convex_hull(points: np.ndarray) -> np.ndarray:
    """(K, 2) points -> (H, 2) their convex hull, counter-clockwise in x-right/y-up axes, no
    repeated or collinear points (Andrew's monotone chain). Fewer than 3 distinct points come
    back as they are (deduplicated)."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).reshape(-1, 2).tolist())))
    if len(pts) < 3:
        return np.asarray(pts, dtype=np.float64).reshape(-1, 2)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(sequence):
        chain = []
        for p in sequence:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.asarray(half(pts) + half(pts[::-1]), dtype=np.float64)


def polygon_to_rotated_box(polygon: ArrayLike) -> tuple:
    """The minimum-area rectangle around a polygon, as a detectron2 ``XYWHA_ABS`` box.

    The rectangle has a side on an edge of the polygon's convex hull (Freeman & Shapira), so
    each hull edge is tried. Of equally small rectangles (a rectangle's 4 sides give the same
    one) the one whose ``w`` side is closest to horizontal is returned, so the box is canonical:
    an axis-aligned rectangle gives angle 0 and ``w`` = its horizontal extent.

    Args:
        polygon: ``[x0, y0, x1, y1, ...]`` or (K, 2), K >= 1 (SODA-A: 4 corners, any order).

    Returns:
        ``(cx, cy, w, h, angle)`` floats: the ``w`` side points along ``(cos a, -sin a)`` in image
        coordinates, ``angle`` in degrees in ``[-90, 90)``; ``w`` or ``h`` is 0 for collinear points.
    """
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    hull = convex_hull(points)
    if len(hull) < 2:
        (cx, cy), = hull if len(hull) else points[:1]
        return float(cx), float(cy), 0.0, 0.0, 0.0
    best = None
    for start, end in zip(hull, np.roll(hull, -1, axis=0)):
        edge = end - start
        length = float(np.hypot(*edge))
        if length == 0:
            continue
        u = edge / length
        v = np.array([-u[1], u[0]])
        along, across = points @ u, points @ v
        w, h = float(np.ptp(along)), float(np.ptp(across))
        angle = float(np.degrees(np.arctan2(-u[1], u[0])))  # counter-clockwise on screen
        angle = (angle + 90.0) % 180.0 - 90.0  # u and -u give the same rectangle: [-90, 90)
        centre = u * (along.max() + along.min()) / 2 + v * (across.max() + across.min()) / 2
        key = (round(w * h, 6), abs(angle))  # smallest area, then the most horizontal w side
        if best is None or key < best[0]:
            best = (key, (float(centre[0]), float(centre[1]), w, h, angle))
    return best[1]


def rotated_box_corners(rbox: ArrayLike) -> np.ndarray:
    """``[cx, cy, w, h, angle]`` (XYWHA) -> (4, 2) corners, counter-clockwise on screen
    (detectron2's Visualizer order: the inverse of :func:`polygon_to_rotated_box`)."""
    cx, cy, w, h, angle = (float(v) for v in rbox)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    half = np.array([[-w, h], [-w, -h], [w, -h], [w, h]]) / 2  # (x, y) in the box's own axes
    return np.stack([cx + c * half[:, 0] + s * half[:, 1], cy - s * half[:, 0] + c * half[:, 1]], axis=1)


def clip_polygon(points: ArrayLike, window: ArrayLike) -> np.ndarray:
    """A convex polygon (K, 2) clipped to the rectangle ``window`` = ``(x0, y0, x1, y1)``
    (Sutherland-Hodgman, one window side at a time); (0, 2) when they do not overlap."""
    x0, y0, x1, y1 = (float(v) for v in window)
    polygon = [tuple(p) for p in np.asarray(points, dtype=np.float64).reshape(-1, 2)]
    # each side: (is a point inside?, where the segment a-b crosses the side)
    sides = (
        (lambda p: p[0] >= x0, lambda a, b: (x0, a[1] + (b[1] - a[1]) * (x0 - a[0]) / (b[0] - a[0]))),
        (lambda p: p[0] <= x1, lambda a, b: (x1, a[1] + (b[1] - a[1]) * (x1 - a[0]) / (b[0] - a[0]))),
        (lambda p: p[1] >= y0, lambda a, b: (a[0] + (b[0] - a[0]) * (y0 - a[1]) / (b[1] - a[1]), y0)),
        (lambda p: p[1] <= y1, lambda a, b: (a[0] + (b[0] - a[0]) * (y1 - a[1]) / (b[1] - a[1]), y1)),
    )
    for inside, cross in sides:
        clipped = []
        for a, b in zip(polygon, polygon[1:] + polygon[:1]):
            if inside(b):
                if not inside(a):
                    clipped.append(cross(a, b))
                clipped.append(b)
            elif inside(a):
                clipped.append(cross(a, b))
        polygon = clipped
        if not polygon:
            break
    return np.asarray(polygon, dtype=np.float64).reshape(-1, 2)


def polygon_area(points: ArrayLike) -> float:
    """Area of a simple polygon (K, 2) (shoelace formula); 0 for fewer than 3 points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)
