"""ugs_d2.boxes against hand computations."""
import numpy as np
import pytest
import torch

from ugs_d2.boxes import box_ios, box_iou, clip_boxes, overlap_with, pairwise_overlap

A = np.array([[0, 0, 10, 10], [0, 0, 4, 2]], dtype=float)
B = np.array([[5, 0, 15, 10], [2, 2, 6, 6], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)


def test_iou_by_hand():
    # row 0: inter 50 / union 150 | 16 / 100 (inside) | disjoint | identical
    # row 1 (area 8): touches B0 only on an edge (x 4..5: none) | inter 2x0 = 0 (y 2..2) | disjoint | 8 / 100
    expected = [[50 / 150, 16 / 100, 0, 1], [0, 0, 0, 8 / 100]]
    np.testing.assert_allclose(box_iou(A, B), expected)


def test_ios_by_hand():
    # intersection over the smaller area: 50 / 100 | 16 / 16 | 0 | 100 / 100; 0 | 0 | 0 | 8 / 8
    expected = [[0.5, 1.0, 0, 1], [0, 0, 0, 1]]
    np.testing.assert_allclose(box_ios(A, B), expected)
    np.testing.assert_allclose(box_ios(B, A), np.transpose(expected))  # symmetric


def test_degenerate_and_empty():
    point = [[3, 3, 3, 3]]
    assert box_iou(point, point).tolist() == [[0.0]]  # empty union: 0, not nan
    assert box_ios(point, point).tolist() == [[0.0]]
    inverted = [[10, 10, 0, 0]]  # corners swapped: intersects nothing
    assert box_iou(inverted, A).tolist() == [[0.0, 0.0]]
    assert box_ios(inverted, A).tolist() == [[0.0, 0.0]]
    assert box_iou(A, np.zeros((0, 4))).shape == (2, 0)
    assert box_ios(np.zeros((0, 4)), B).shape == (0, 4)


def test_accepts_tensors_and_returns_float64():
    out = box_iou(torch.tensor(A, dtype=torch.float32), B.tolist())
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out[0, 0], 1 / 3)


def test_pairwise_overlap_dispatches_and_rejects_unknown_metric():
    np.testing.assert_array_equal(pairwise_overlap(A, B, "iou"), box_iou(A, B))
    np.testing.assert_array_equal(pairwise_overlap(A, B, "ios"), box_ios(A, B))
    with pytest.raises(ValueError, match="match metric: expected one of iou, ios, got 'giou'"):
        pairwise_overlap(A, B, "giou")


def test_clip_boxes_by_hand():
    boxes = [[-5, -1, 8, 12], [2, 3, 4, 5], [30, 30, 40, 40]]
    clipped = clip_boxes(boxes, width=10, height=6)
    # x in [0, 10], y in [0, 6]; the box outside collapses onto the corner (10, 6)
    assert clipped.tolist() == [[0, 0, 8, 6], [2, 3, 4, 5], [10, 6, 10, 6]]
    assert clipped.dtype == np.float64
    assert boxes[0] == [-5, -1, 8, 12]  # the input is not modified


@pytest.mark.parametrize("metric", ["iou", "ios"])
def test_overlap_with_equals_pairwise_overlap(metric):
    """The numpy kernel of the greedy merge gives exactly detectron2's values (random boxes, a
    duplicate, a contained one, a point and an inverted one)."""
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 50, (200, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 20, (200, 2))], axis=1)
    boxes[1] = boxes[0]
    boxes[2] = boxes[0] + [1, 1, -1, -1]
    boxes[3] = [5, 5, 5, 5]
    boxes[4] = [30, 30, 10, 10]
    for i in range(10):
        row = pairwise_overlap(boxes[i:i + 1], boxes, metric)[0]
        assert np.array_equal(overlap_with(boxes[i], boxes, metric), row), i
    assert overlap_with(boxes[0], boxes, metric)[1] == 1.0  # the duplicate
