"""detectron2's compiled ops that the project could use, imported and run against hand-computed
values or an independent implementation (torchvision, pycocotools).

Only a detectron2 built from source has them (``make test-upstream``, or ``make install
D2_SOURCE=...``); on the registry fallback every test here is skipped with that reason. The
deformable-convolution kernels are CUDA-only in detectron2 (on the CPU ``DeformConv`` calls
torchvision's ``deform_conv2d``, ``ModulatedDeformConv`` refuses): their tests compare the CUDA
kernel where a GPU is present.
"""
import math

import numpy as np
import pytest
import torch

from ugs_d2.compat import HAS_COMPILED_OPS

pytestmark = pytest.mark.skipif(
    not HAS_COMPILED_OPS,
    reason="registry fallback detectron2: no C++ ops (make test-upstream, or make install D2_SOURCE=...)",
)
CUDA_ONLY = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="detectron2's deformable-conv kernels are CUDA-only; no GPU here"
)


def test_every_compiled_op_is_there():
    from detectron2 import _C

    for name in ("COCOevalEvaluateImages", "COCOevalAccumulate", "InstanceAnnotation",
                 "deform_conv_forward", "modulated_deform_conv_forward"):
        assert hasattr(_C, name), name
    for name in ("nms_rotated", "box_iou_rotated", "roi_align_rotated_forward"):
        assert hasattr(torch.ops.detectron2, name), name


# ---- rotated boxes: (cx, cy, w, h, angle in degrees, counter-clockwise) ------------------------


def test_box_iou_rotated_by_hand():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    square = [0.0, 0.0, 1.0, 1.0, 0.0]
    # the unit square and itself turned by 45 degrees: the intersection is the regular octagon
    # of area 2 (sqrt(2) - 1), the union 2 - that
    octagon = 2 * (math.sqrt(2) - 1)
    # a 2 x 1 rectangle and itself turned by 90 degrees: a 1 x 1 overlap of 2 + 2 - 1
    boxes1 = torch.tensor([square, [5.0, 5.0, 2.0, 1.0, 0.0]])
    boxes2 = torch.tensor([[0.0, 0.0, 1.0, 1.0, 45.0], [5.0, 5.0, 2.0, 1.0, 90.0], [0.5, 0.0, 1.0, 1.0, 0.0]])
    iou = pairwise_iou_rotated(boxes1, boxes2)
    expected = torch.tensor([[octagon / (2 - octagon), 0.0, 1 / 3], [0.0, 1 / 3, 0.0]])
    assert torch.allclose(iou, expected, atol=1e-5), iou


def test_box_iou_rotated_at_angle_zero_is_torchvisions_box_iou():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(0)
    xyxy = torch.rand(20, 2, generator=g) * 50
    xyxy = torch.cat([xyxy, xyxy + 1 + torch.rand(20, 2, generator=g) * 30], dim=1)
    rotated = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2], torch.zeros(20, 1)], dim=1)
    reference = box_iou(xyxy, xyxy)
    assert (reference > 0.05).sum() > 30  # overlapping pairs, not only zeros
    assert torch.allclose(pairwise_iou_rotated(rotated, rotated), reference, atol=1e-5)


def test_nms_rotated_by_hand():
    from detectron2.layers import nms_rotated

    boxes = torch.tensor([
        [10.0, 10.0, 10.0, 10.0, 0.0],   # A
        [10.0, 10.0, 10.0, 10.0, 45.0],  # A turned by 45 degrees: IoU 0.7071 with A
        [40.0, 40.0, 10.0, 10.0, 30.0],  # far away
        [10.0, 10.0, 10.0, 10.0, 90.0],  # A turned by 90 degrees: A itself
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms_rotated(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms_rotated(boxes, scores, 0.75).tolist() == [3, 1, 2]


def test_roi_align_rotated_at_angle_zero_is_torchvisions_aligned_roi_align_and_180_flips_it():
    from detectron2.layers import ROIAlignRotated
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    features = torch.rand(2, 3, 16, 20, generator=g)
    # (batch index, cx, cy, w, h, angle)
    rois = torch.tensor([[0, 8.0, 7.0, 6.0, 4.0, 0.0], [1, 10.3, 8.6, 9.0, 5.5, 0.0]])
    op = ROIAlignRotated((4, 5), spatial_scale=1.0, sampling_ratio=2)
    out = op(features, rois)
    xyxy = torch.cat([rois[:, :1], rois[:, 1:3] - rois[:, 3:5] / 2, rois[:, 1:3] + rois[:, 3:5] / 2], dim=1)
    reference = roi_align(features, xyxy, (4, 5), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    assert out.shape == (2, 3, 4, 5)
    assert torch.allclose(out, reference, atol=1e-5)
    turned = rois.clone()
    turned[:, 5] = 180.0  # the same box, sampled from the opposite corner
    assert torch.allclose(op(features, turned), reference.flip(-1, -2), atol=1e-5)


# ---- C++ COCOeval -------------------------------------------------------------------------------


def _coco(images, annotations):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 100, "height": 100} for i in images],
        "annotations": [{"id": k + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a}
                        for k, a in enumerate(annotations)],
        "categories": [{"id": 1, "name": "a"}],
    }
    coco.createIndex()
    return coco


def test_cocoeval_opt_by_hand_and_against_pycocotools():
    import contextlib
    import io

    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.cocoeval import COCOeval

    gt = _coco([1, 2], [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
                        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10]}])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [70, 70, 10, 10], "score": 0.95},  # a false positive first
            {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.5}]
    stats, precision = {}, {}
    for name, cls in (("opt", COCOeval_opt), ("pycocotools", COCOeval)):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = cls(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats[name], precision[name] = evaluator.stats, np.asarray(evaluator.eval["precision"])
    # ranked FP, TP, TP: precision 1/2 at recall 1/2 and 2/3 at recall 1, interpolated: 2/3
    # at every recall threshold (every IoU: the true positives are exact)
    assert stats["opt"][0] == pytest.approx(2 / 3, abs=1e-6)
    assert np.array_equal(precision["opt"], precision["pycocotools"])
    assert np.allclose(stats["opt"], stats["pycocotools"], atol=1e-9)


# ---- deformable convolution (CUDA kernels) --------------------------------------------------------


def test_deform_conv_with_zero_offsets_is_a_convolution_and_a_shift_moves_the_input():
    """On the CPU ``DeformConv`` runs torchvision's ``deform_conv2d``; on a GPU detectron2's kernel."""
    from detectron2.layers import DeformConv

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 8, 9, generator=g).to(device)
    conv = DeformConv(2, 3, kernel_size=3, padding=1, bias=False).to(device)
    offset = torch.zeros(1, 2 * 9, 8, 9, device=device)
    expected = torch.nn.functional.conv2d(x, conv.weight, padding=1)
    assert torch.allclose(conv(x, offset), expected, atol=1e-5)
    offset[:, 1::2] = 1.0  # every sample one pixel to the right (offsets are (dy, dx) pairs)
    # = the convolution centred one column to the right: output column o of padding (1, 2) is
    # centred on column o - 1
    wider = torch.nn.functional.conv2d(x, conv.weight, padding=(1, 2))
    assert torch.allclose(conv(x, offset), wider[..., 2:], atol=1e-5)


@CUDA_ONLY
def test_modulated_deform_conv_kernel_matches_torchvision():
    from detectron2.layers import ModulatedDeformConv
    from torchvision.ops import deform_conv2d

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 10, 11, generator=g)
    offset = torch.randn(2, 2 * 9, 10, 11, generator=g)
    mask = torch.rand(2, 9, 10, 11, generator=g)
    conv = ModulatedDeformConv(4, 5, kernel_size=3, padding=1, bias=True)
    reference = deform_conv2d(x, offset, conv.weight, conv.bias, padding=1, mask=mask)
    conv = conv.cuda()
    out = conv(x.cuda(), offset.cuda(), mask.cuda()).cpu()
    assert torch.allclose(out, reference, atol=1e-4)
