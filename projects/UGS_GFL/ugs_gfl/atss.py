"""ATSS, the adaptive training sample selection GFL V1 assigns with (Zhang et al., CVPR 2020).

For each GT box:

1. on every level, the ``topk`` locations whose centres are closest to the GT's centre are
   candidates (``min(topk, R_i)`` on a level with fewer);
2. the IoU threshold is the mean plus the (unbiased) standard deviation of the candidates'
   IoUs, where a location's box is the square of side ``anchor_scale * stride`` at its centre
   (GFL: one anchor per location, octave base scale 8);
3. a candidate is positive if its IoU reaches the threshold and its centre lies inside the GT
   (every side distance > 0.01 pixel, as MMDetection's ``ATSSAssigner``).

A location positive for several GTs takes the one of highest IoU. The reference is
MMDetection's ``ATSSAssigner.assign``; this is a pure function of tensors.

Shapes: L levels, R_i locations of level i, R = sum R_i, G GT boxes.
"""
from typing import List

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = ["atss_assign", "location_boxes"]


def location_boxes(centers: Tensor, stride: float, anchor_scale: float) -> Tensor:
    """(R_i, 2) centres -> (R_i, 4) XYXY squares of side ``anchor_scale * stride``."""
    half = 0.5 * anchor_scale * stride
    return torch.cat([centers - half, centers + half], dim=1)


@torch.no_grad()
def atss_assign(
    centers: List[Tensor],
    strides: List[float],
    gt_boxes: Tensor,
    topk: int = 9,
    anchor_scale: float = 8.0,
) -> Tensor:
    """The GT index of every location, -1 for background.

    Args:
        centers: L tensors (R_i, 2), the (x, y) centres of each level's locations.
        strides: L strides (pixels per location on each level).
        gt_boxes: Tensor[G, 4], XYXY.
        topk: candidates per level and GT (GFL: 9).
        anchor_scale: a location's box side in strides (GFL: 8).

    Returns:
        Tensor[R] (long): the index into ``gt_boxes`` of each positive location, else -1.
    """
    device = gt_boxes.device
    num_locations = sum(len(c) for c in centers)
    assigned = torch.full((num_locations,), -1, dtype=torch.long, device=device)
    num_gt = len(gt_boxes)
    if num_gt == 0 or num_locations == 0:
        return assigned
    all_centers = torch.cat(centers)  # (R, 2)
    boxes = torch.cat([location_boxes(c, s, anchor_scale) for c, s in zip(centers, strides)])
    ious = pairwise_iou(Boxes(boxes), Boxes(gt_boxes))  # (R, G)
    gt_centers = 0.5 * (gt_boxes[:, :2] + gt_boxes[:, 2:])  # (G, 2)
    distances = torch.cdist(all_centers, gt_centers)  # (R, G)

    # 1. per level, the topk closest locations of each GT (indices into all R)
    candidates, start = [], 0
    for level_centers in centers:
        end = start + len(level_centers)
        k = min(topk, end - start)
        _, idx = distances[start:end].topk(k, dim=0, largest=False)  # (k, G)
        candidates.append(idx + start)
        start = end
    candidates = torch.cat(candidates)  # (sum k, G)
    gt_index = torch.arange(num_gt, device=device)
    candidate_ious = ious[candidates, gt_index]  # (sum k, G)

    # 2. the adaptive IoU threshold per GT
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # (G,)
    positive = candidate_ious >= threshold

    # 3. candidate centres strictly inside the GT
    cx, cy = all_centers[candidates, 0], all_centers[candidates, 1]  # (sum k, G)
    sides = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy]
    )
    positive &= sides.min(0).values > 0.01

    # a location positive for several GTs takes the one of highest IoU
    masked = torch.full_like(ious, -1.0)
    masked[candidates[positive], gt_index.expand_as(candidates)[positive]] = ious[candidates, gt_index][positive]
    best_iou, best_gt = masked.max(dim=1)
    assigned[best_iou >= 0] = best_gt[best_iou >= 0]
    return assigned
