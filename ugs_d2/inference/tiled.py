"""Batched tiled (sliced) inference inside detectron2.

A model trained on tiles must see tiles at test time, or it looks for objects of the wrong
size. :class:`TiledPredictor` cuts an image of any size into the overlapping windows of
:func:`ugs_d2.data.tiling.tile_windows`, runs them through the detectron2 model
``batch_size`` windows per forward call (SAHI runs one slice per call), optionally adds a
downscaled full-image pass for objects larger than a tile, shifts the boxes back into image
coordinates and merges the duplicates that overlapping windows produce.

Pieces:

* :func:`merge_detections` (on :mod:`ugs_d2.boxes`) -- pure, class-aware NMS or greedy
  non-maximum merging (NMM) under IoU or IOS (intersection over the smaller area).
* :class:`TilingSpec` -- the windows (tile, overlap), their batching and the merging.
* :class:`TiledPredictor` -- ``predictor(image_bgr) -> Instances``; ``predictor.last_timing``
  holds ``total_s`` and ``model_s`` (time inside the model's forward) of the last call.
* :class:`TiledInferenceModel` -- an ``nn.Module`` with the detectron2 inference interface,
  so ``UGSTrainer.test`` / the EvalHook evaluate tiled (``tiling.test.enabled``).
* :func:`predict_whole_image` -- the untiled path (resize to the test size, as
  ``DefaultPredictor``), used for the full-image pass and by ``ugs-predict`` without
  ``--tiled``.
* :func:`load_model` -- a detectron2 model from a ``ugs-train`` run directory.
"""
import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ugs_d2.boxes import MATCH_METRICS, overlap_with
from ugs_d2.data.tiling import tile_windows, validate_tiling

if TYPE_CHECKING:
    from detectron2.structures import Instances

__all__ = [
    "MERGE_METHODS",
    "MATCH_METRICS",
    "merge_detections",
    "DEFAULT_BATCH_SIZE",
    "fuse_conv_bn_",
    "PointwiseLinear",
    "replace_pointwise_heads_",
    "optimize_for_inference",
    "TilingSpec",
    "TiledPredictor",
    "TiledInferenceModel",
    "predict_whole_image",
    "build_tiled_test_loader",
    "load_model",
]

logger = logging.getLogger(__name__)

MERGE_METHODS = ("nms", "nmm")
DEFAULT_TEST_SIZE = (800, 1333)  # detectron2's INPUT.MIN/MAX_SIZE_TEST defaults
#: TiledPredictor's batch_size=None: windows per forward by device type. On CPU batching gains
#: nothing and costs memory (results/sahi_benchmark.md: 0.76x at 8, 1.03x at 1 vs SAHI).
DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 8}
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _check_merge(method: str, metric: str, threshold: float, names: Tuple[str, str, str]) -> None:
    """ValueError (one line, starting with the argument's name in ``names``) unless ``method``
    is one of MERGE_METHODS, ``metric`` one of MATCH_METRICS and ``threshold`` in [0, 1]."""
    if method not in MERGE_METHODS:
        raise ValueError(f"{names[0]}: expected one of {', '.join(MERGE_METHODS)}, got {method!r}")
    if metric not in MATCH_METRICS:
        raise ValueError(f"{names[1]}: expected one of {', '.join(MATCH_METRICS)}, got {metric!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"{names[2]}: expected a number in [0, 1], got {threshold!r}")


def _greedy_owner(boxes: np.ndarray, metric: str, threshold: float) -> np.ndarray:
    """Greedy pass over boxes sorted by descending score.

    A box is kept when no earlier kept box took it; it then takes every later box that is not
    taken yet and whose overlap with it (``metric``) is greater than ``threshold`` (NMS drops
    those, NMM merges them into it).

    Only the rows of kept boxes are computed, and only against boxes whose x-range can
    intersect (found by binary search on the sorted left edges): a large image gives
    thousands of small, spread-out boxes, and an N x N overlap matrix would take seconds and
    gigabytes.

    Args:
        boxes: (N, 4) float ``x0, y0, x1, y1``, sorted by descending score.

    Returns:
        (N,) int array: for every box, the index of the kept box that took it (itself if kept).
    """
    n = len(boxes)
    owner = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return owner
    by_left = np.argsort(boxes[:, 0], kind="stable")
    lefts = boxes[by_left, 0]
    max_width = float(np.max(boxes[:, 2] - boxes[:, 0]))
    for i in range(n):
        if owner[i] >= 0:
            continue
        owner[i] = i
        # box j can intersect box i only if x0_j < x1_i and x1_j > x0_i (so x0_j > x0_i - max width)
        lo = np.searchsorted(lefts, boxes[i, 0] - max_width, side="left")
        hi = np.searchsorted(lefts, boxes[i, 2], side="left")
        candidates = by_left[lo:hi]
        candidates = candidates[(candidates > i) & (owner[candidates] < 0)]
        if candidates.size == 0:
            continue
        overlap = overlap_with(boxes[i], boxes[candidates], metric)
        owner[candidates[overlap > threshold]] = i
    return owner


def merge_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    method: str = "nms",
    metric: str = "iou",
    threshold: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-aware merging of duplicate detections (e.g. from overlapping tiles).

    Boxes are visited by descending score (ties: input order). A visited box that is not yet
    taken is kept; every later box of the same class whose overlap with it (``metric``) is
    greater than ``threshold`` is taken:

    * ``nms``: taken boxes are dropped;
    * ``nmm`` (greedy non-maximum merging): the kept box becomes the union (enclosing box)
      of itself and the boxes it takes; its score stays the maximum (its own).

    Matching is always against the kept box as detected, not the growing union, so a chain
    of boxes does not snowball into one.

    Args:
        boxes: (N, 4) float ``x0, y0, x1, y1``; scores: (N,); classes: (N,) int (tensors or
            arrays).
        method: ``nms`` | ``nmm``; metric: ``iou`` | ``ios`` (see :func:`ugs_d2.boxes.pairwise_overlap`);
        threshold: in [0, 1].

    Returns:
        ``(boxes, scores, classes)`` tensors of the kept detections, by descending score, on
        the input's device.
    """
    _check_merge(method, metric, threshold, names=("merge method", "match metric", "match threshold"))
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.as_tensor(scores, dtype=torch.float32, device=boxes.device).reshape(-1)
    classes = torch.as_tensor(classes, device=boxes.device).reshape(-1)
    if len(boxes) == 0:
        return boxes, scores, classes
    if method == "nms" and metric == "iou":  # torchvision's C++/CUDA kernel, same rule
        from torchvision.ops import batched_nms

        keep = batched_nms(boxes, scores, classes, threshold)
        return boxes[keep], scores[keep], classes[keep]

    # The greedy pass is sequential: numpy on the CPU (tiny per-box torch ops cost far more).
    np_boxes = boxes.detach().cpu().numpy().astype(np.float64)
    np_scores = scores.detach().cpu().numpy()
    np_classes = classes.detach().cpu().numpy()
    kept_all, merged_all = [], []
    for cls in np.unique(np_classes):
        index = np.nonzero(np_classes == cls)[0]
        order = index[np.argsort(-np_scores[index], kind="stable")]
        cls_boxes = np_boxes[order]
        owner = _greedy_owner(cls_boxes, metric, threshold)
        kept = np.nonzero(owner == np.arange(len(order)))[0]
        merged = cls_boxes.copy()
        if method == "nmm":  # union of each kept box and the boxes it took
            np.minimum.at(merged[:, 0], owner, cls_boxes[:, 0])
            np.minimum.at(merged[:, 1], owner, cls_boxes[:, 1])
            np.maximum.at(merged[:, 2], owner, cls_boxes[:, 2])
            np.maximum.at(merged[:, 3], owner, cls_boxes[:, 3])
        kept_all.append(order[kept])
        merged_all.append(merged[kept])
    kept = np.concatenate(kept_all)
    merged = np.concatenate(merged_all)
    by_score = np.argsort(-np_scores[kept], kind="stable")
    kept, merged = kept[by_score], merged[by_score]
    keep = torch.as_tensor(kept, device=boxes.device)
    out_boxes = torch.as_tensor(merged, dtype=boxes.dtype, device=boxes.device)
    return out_boxes, scores[keep], classes[keep]


def fuse_conv_bn_(model: nn.Module) -> int:
    """Fold every eval-mode batch norm that follows a convolution into the convolution, in place.

    detectron2's ``Conv2d`` applies its ``norm`` right after the convolution; for a
    ``BatchNorm2d`` (also ``SyncBatchNorm``) using running statistics or a
    ``FrozenBatchNorm2d``, ``norm(conv(x)) = conv'(x)`` with ``W' = W * g`` and
    ``b' = (b - mean) * g + beta``, ``g = gamma / sqrt(var + eps)`` (per output channel): one
    pass over the activations fewer, the same output up to float rounding. Other norms (GN, or
    batch norm in training mode or without running statistics) are left alone. For inference
    only: the folded model must not be trained further.

    Returns:
        the number of convolutions folded.
    """
    from detectron2.layers import FrozenBatchNorm2d

    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(module, nn.Conv2d) or norm is None:
            continue
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            if norm.training or norm.running_mean is None or norm.running_var is None:
                continue
            gamma = norm.weight if norm.affine else torch.ones_like(norm.running_var)
            beta = norm.bias if norm.affine else torch.zeros_like(norm.running_var)
        elif isinstance(norm, FrozenBatchNorm2d):
            gamma, beta = norm.weight, norm.bias
        else:
            continue
        with torch.no_grad():
            g = gamma.detach() / torch.sqrt(norm.running_var.detach() + norm.eps)
            bias = module.bias.detach() if module.bias is not None else torch.zeros_like(g)
            module.weight.copy_(module.weight.detach() * g.reshape(-1, 1, 1, 1))
            new_bias = (bias - norm.running_mean.detach()) * g + beta.detach()
        module.bias = nn.Parameter(new_bias, requires_grad=False)
        module.norm = None
        folded += 1
    return folded


class PointwiseLinear(nn.Module):
    """A 1x1, stride-1 convolution computed as one matrix product over the channels of an NHWC
    (channels-last) activation: ``out[n, :, y, x] = W @ in[n, :, y, x] + b``.

    PyTorch's CPU convolution takes a slow im2col path for 1x1 convolutions with few output
    channels (the RPN's objectness and box-delta heads: 3 and 12 channels on every level);
    ``F.linear`` on the channels-last view is one GEMM. Returns a tensor with NCHW shape and
    channels-last memory, as the convolution would. Same result up to float rounding.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.out_channels, conv.in_channels).clone(),
                                   requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


POINTWISE_MAX_OUT = 32  # replace_pointwise_heads_: 1x1 convolutions with at most this many outputs


def replace_pointwise_heads_(model: nn.Module, max_out_channels: int = POINTWISE_MAX_OUT) -> int:
    """Replace plain 1x1 convolutions with at most ``max_out_channels`` outputs (no norm, no
    activation, stride 1, no padding, one group) by :class:`PointwiseLinear`, in place.

    Returns the number replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.stride == (1, 1)
                    and child.padding == (0, 0) and child.dilation == (1, 1) and child.groups == 1
                    and child.padding_mode == "zeros" and child.out_channels <= max_out_channels
                    and getattr(child, "norm", None) is None and getattr(child, "activation", None) is None):
                setattr(parent, name, PointwiseLinear(child))
                replaced += 1
    return replaced


def optimize_for_inference(model: nn.Module, channels_last: bool = True, fuse_bn: bool = True) -> nn.Module:
    """A copy of an eval-mode detectron2 model made faster for CPU inference (same outputs up to
    float rounding; tests/test_tiled_inference.py checks them against the original).

    * ``fuse_bn``: :func:`fuse_conv_bn_` (batch norms folded into the convolutions before them);
    * ``channels_last``: 4-D weights in channels-last (NHWC) memory format, so oneDNN's
      convolutions and the max-pools take their NHWC kernels and activations stay NHWC from
      the first convolution on (the input batch itself stays as detectron2 pads it); and the
      small 1x1 heads become one matrix product each (:func:`replace_pointwise_heads_`).

    The original model is not touched (its ``ugs_*`` attributes are carried over); the copy is
    in eval mode with ``requires_grad`` off. Later changes to the original's weights are not
    seen by the copy.
    """
    import copy

    fast = copy.deepcopy(model).eval()
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    if fuse_bn:
        fuse_conv_bn_(fast)
    if channels_last:
        replace_pointwise_heads_(fast)
        fast = fast.to(memory_format=torch.channels_last)
    for name in ("ugs_cfg", "ugs_test_size", "ugs_input_format"):
        if hasattr(model, name):
            setattr(fast, name, getattr(model, name))
    return fast


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _resize_chw(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) tensor (on its device; no round trip through PIL)."""
    if image.shape[1:] == (height, width):
        return image
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized[0]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_model_tensor(image_bgr: np.ndarray, input_format: str) -> torch.Tensor:
    """HxWx3 uint8 BGR -> (3, H, W) tensor in the model's channel order, still uint8: a quarter
    of float32's memory and host-to-GPU transfer; the model's normalisation makes it float."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        shape = getattr(image_bgr, "shape", type(image_bgr).__name__)
        raise ValueError(f"image: expected an HxWx3 numpy array (BGR), got {shape}")
    if input_format == "RGB":
        image_bgr = image_bgr[:, :, ::-1]
    return torch.as_tensor(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)))


def _make_instances(image_size, boxes, scores, classes):
    from detectron2.structures import Boxes, Instances

    instances = Instances(image_size)
    instances.pred_boxes = Boxes(boxes)
    instances.scores = scores
    instances.pred_classes = classes
    return instances


def _normal_instances(instances: "Instances") -> "Instances":
    """A copy of ``instances`` whose tensor fields are clones made outside inference mode."""
    from detectron2.structures import Boxes, Instances

    out = Instances(instances.image_size)
    for name, value in instances.get_fields().items():
        if isinstance(value, Boxes):
            value = Boxes(value.tensor.clone())
        elif isinstance(value, torch.Tensor):
            value = value.clone()
        out.set(name, value)
    return out


def predict_whole_image(
    model: nn.Module,
    image: torch.Tensor,
    test_size: Tuple[int, int],
) -> Tuple["Instances", float]:
    """The untiled path: resize to the model's test size, one forward call, boxes in image
    coordinates (what ``DefaultPredictor`` does, with a bilinear resize on the tensor).

    Args:
        image: (3, H, W) tensor (uint8 or float) in the model's channel order.
        test_size: ``(MIN_SIZE_TEST, MAX_SIZE_TEST)``.

    Returns:
        ``(instances, seconds inside the model's forward)``.
    """
    from detectron2.data.transforms import ResizeShortestEdge

    height, width = image.shape[1:]
    new_h, new_w = ResizeShortestEdge.get_output_shape(height, width, test_size[0], test_size[1])
    device = _model_device(model)
    resized = _resize_chw(image.to(device), new_h, new_w)
    with torch.inference_mode():
        _synchronize(device)
        start = time.perf_counter()
        output = model([{"image": resized, "height": height, "width": width}])[0]["instances"]
        _synchronize(device)
    seconds = time.perf_counter() - start
    # clones made outside inference mode are normal tensors: callers may update them in place
    # (detector_postprocess scales boxes in place)
    return _normal_instances(output), seconds


@dataclass(frozen=True)
class TilingSpec:
    """How :class:`TiledPredictor` cuts an image, batches its windows and merges the result.

    Attributes:
        tile: window side in pixels; overlap: share of a window shared with its neighbour,
            in [0, 1) (see :func:`ugs_d2.data.tiling.tile_windows`).
        batch_size: windows per forward call (one call per batch); None:
            :data:`DEFAULT_BATCH_SIZE` of the model's device (1 on CPU, 8 on CUDA).
        full_image: also run the whole image resized to the model's test size and merge its
            boxes with the tiles' (large objects that no tile holds whole).
        merge, metric, threshold: how duplicates from overlapping windows are merged (see
            :func:`merge_detections`).
        upscale: resize each window to the model's test size (by default windows go in at
            native resolution, as the tiled training data did).
        max_detections: keep at most this many detections per image after merging (None: all).

    Bad values raise ``ValueError`` with one line starting with the field's name.
    """

    tile: int = 512
    overlap: float = 0.2
    batch_size: Optional[int] = None
    full_image: bool = False
    merge: str = "nms"
    metric: str = "iou"
    threshold: float = 0.5
    upscale: bool = False
    max_detections: Optional[int] = None

    def __post_init__(self):
        validate_tiling(self.tile, self.overlap)
        batch_size = self.batch_size  # None: resolved by TiledPredictor for the model's device
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        _check_merge(self.merge, self.metric, self.threshold, names=("merge", "metric", "threshold"))


class TiledPredictor:
    """Batched sliced inference: ``predictor(image_bgr) -> Instances`` in image coordinates.

    Args:
        model: a detectron2 model in eval mode (e.g. from :func:`load_model`).
        spec: the windows, their batching and the merging (:class:`TilingSpec`).
        test_size: ``(MIN_SIZE_TEST, MAX_SIZE_TEST)`` for the full-image pass and ``upscale``;
            None: the model's ``ugs_test_size`` (set by :func:`load_model`), else
            detectron2's default (800, 1333).
        input_format: ``BGR`` | ``RGB``, the model's ``INPUT.FORMAT``; None: the model's
            ``ugs_input_format``, else BGR.
        optimize: run a copy of the model made by :func:`optimize_for_inference` (batch norms
            folded into convolutions, channels-last weights, 1x1 heads as matrix products; same
            detections up to float rounding); None: on for a CPU model, off on CUDA. The copy is
            made here, so later weight changes of ``model`` are not seen: build a new predictor.
        autocast: ``fp16`` | ``bf16``: run the model's forward under ``torch.autocast`` (CUDA
            only; detections change beyond float rounding, so it is off by default).

    ``spec`` holds the batch size resolved for the model's device (never None).

    After each call, ``last_timing`` is ``{"total_s", "model_s", "windows", "batches"}``;
    ``model_s`` is the time inside the model's forward calls (GPU synchronised), so
    ``1 - model_s / total_s`` is the share spent outside the model.

    With a single window (an image no larger than a tile) and no full-image pass there is
    nothing to merge: the result is exactly the model's output on the un-resized image.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: TilingSpec = TilingSpec(),
        *,
        test_size: Optional[Tuple[int, int]] = None,
        input_format: Optional[str] = None,
        optimize: Optional[bool] = None,
        autocast: Optional[str] = None,
    ):
        device_type = _model_device(model).type
        if spec.batch_size is None:
            spec = dataclasses.replace(spec, batch_size=DEFAULT_BATCH_SIZE.get(device_type, 1))
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast: expected one of {', '.join(AUTOCAST_DTYPES)} or None, got {autocast!r}")
        if autocast is not None and device_type != "cuda":
            raise ValueError(f"autocast: {autocast} is for a CUDA model; this one is on {device_type}")
        self.spec = spec
        self.optimize = device_type == "cpu" if optimize is None else bool(optimize)
        self.model = optimize_for_inference(model) if self.optimize else model
        self.autocast = autocast
        self.test_size = tuple(test_size or getattr(model, "ugs_test_size", DEFAULT_TEST_SIZE))
        self.input_format = input_format or getattr(model, "ugs_input_format", "BGR")
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format: expected BGR or RGB, got {self.input_format!r}")
        self.last_timing: Dict[str, float] = {}

    @property
    def batch_size(self) -> int:
        """Windows per forward call, as resolved for the model's device."""
        return self.spec.batch_size

    def __call__(self, image_bgr: np.ndarray):
        """Detect on one HxWx3 uint8 BGR image; returns detectron2 ``Instances``."""
        start = time.perf_counter()
        image = _to_model_tensor(image_bgr, self.input_format)
        return self.predict_tensor(image, _start=start)

    def _window_inputs(self, image: torch.Tensor, windows: Sequence[Tuple[int, int, int, int]]) -> List[dict]:
        inputs = []
        for x0, y0, x1, y1 in windows:
            crop = image[:, y0:y1, x0:x1]  # a view: no copy until the model normalises it
            height, width = y1 - y0, x1 - x0
            if self.spec.upscale:
                from detectron2.data.transforms import ResizeShortestEdge

                new_h, new_w = ResizeShortestEdge.get_output_shape(height, width, *self.test_size)
                crop = _resize_chw(crop, new_h, new_w)
            # height/width = the window's own size: detectron2 maps boxes back to it
            inputs.append({"image": crop, "height": height, "width": width})
        return inputs

    def predict_tensor(self, image: torch.Tensor, _start: Optional[float] = None):
        """Detect on a (3, H, W) tensor already in the model's channel order (float or uint8)."""
        start = time.perf_counter() if _start is None else _start
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected a (3, H, W) tensor, got {tuple(image.shape)}")
        device = _model_device(self.model)
        image = image.to(device)  # once: every window is a view of it
        height, width = image.shape[1:]
        spec = self.spec
        windows = tile_windows(width, height, spec.tile, spec.overlap)

        model_s = 0.0
        boxes, scores, classes = [], [], []
        autocast = (torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[self.autocast])
                    if self.autocast else contextlib.nullcontext())
        with torch.inference_mode():
            for first in range(0, len(windows), spec.batch_size):
                batch = windows[first:first + spec.batch_size]
                inputs = self._window_inputs(image, batch)
                _synchronize(device)
                model_start = time.perf_counter()
                with autocast:
                    outputs = self.model(inputs)
                _synchronize(device)
                model_s += time.perf_counter() - model_start
                for (x0, y0, _, _), output in zip(batch, outputs):
                    instances = output["instances"]
                    offset = torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=device)
                    boxes.append(instances.pred_boxes.tensor.float() + offset)
                    scores.append(instances.scores.float())
                    classes.append(instances.pred_classes)
            if spec.full_image:
                with autocast:
                    instances, seconds = predict_whole_image(self.model, image, self.test_size)
                model_s += seconds
                boxes.append(instances.pred_boxes.tensor.float())
                scores.append(instances.scores.float())
                classes.append(instances.pred_classes)

            boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
            if len(windows) + int(spec.full_image) > 1:  # one source: the model already ran NMS
                boxes, scores, classes = merge_detections(
                    boxes, scores, classes, spec.merge, spec.metric, spec.threshold
                )
            if spec.max_detections is not None and len(scores) > spec.max_detections:
                top = torch.argsort(scores, descending=True, stable=True)[: spec.max_detections]
                boxes, scores, classes = boxes[top], scores[top], classes[top]
        # clones made outside inference mode: normal tensors the caller may update in place
        result = _make_instances((height, width), boxes.clone(), scores.clone(), classes.clone())
        self.last_timing = {
            "total_s": time.perf_counter() - start,
            "model_s": model_s,
            "windows": len(windows),
            "batches": -(-len(windows) // spec.batch_size),
        }
        return result


class TiledInferenceModel(nn.Module):
    """Wraps a detectron2 model so that its inference is tiled; for ``inference_on_dataset``.

    Takes detectron2's batched inputs (``image`` (3, H, W) in the model's channel order,
    un-resized -- see :func:`build_tiled_test_loader` -- plus the original ``height`` and
    ``width``) and returns ``[{"instances": Instances}]`` in original image coordinates. Only
    for inference: calling it in training mode is an error.
    """

    def __init__(self, model: nn.Module, spec: TilingSpec = TilingSpec(), **predictor_kwargs):
        """``predictor_kwargs``: the keyword arguments of :class:`TiledPredictor`."""
        super().__init__()
        self.model = model
        if isinstance(model, nn.parallel.DistributedDataParallel):  # a live DDP model: no private copy
            predictor_kwargs.setdefault("optimize", False)
        self.predictor = TiledPredictor(model, spec, **predictor_kwargs)

    @classmethod
    def from_config(cls, model: nn.Module, cfg) -> "TiledInferenceModel":
        """From a detectron2 cfg with a ``TILING`` node (``ugs_d2.config.to_detectron2_cfg``)."""
        tiling = cfg.TILING
        logger.info(
            f"tiled evaluation: {tiling.TILE} px windows, overlap {tiling.OVERLAP}, "
            f"{tiling.TEST.BATCH_SIZE} per batch, merge {tiling.TEST.MERGE}/{tiling.TEST.METRIC} "
            f"> {tiling.TEST.THRESHOLD}{', + full image' if tiling.TEST.FULL_IMAGE else ''}"
        )
        spec = TilingSpec(
            tile=tiling.TILE,
            overlap=tiling.OVERLAP,
            batch_size=tiling.TEST.BATCH_SIZE,
            full_image=tiling.TEST.FULL_IMAGE,
            merge=tiling.TEST.MERGE,
            metric=tiling.TEST.METRIC,
            threshold=tiling.TEST.THRESHOLD,
            upscale=tiling.TEST.UPSCALE,
            max_detections=cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return cls(
            model, spec, test_size=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST), input_format=cfg.INPUT.FORMAT
        )

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            raise RuntimeError("TiledInferenceModel is for inference only; train the wrapped model")
        from detectron2.modeling.postprocessing import detector_postprocess

        results = []
        for item in batched_inputs:
            instances = self.predictor.predict_tensor(item["image"])
            height, width = item.get("height"), item.get("width")
            if height is not None and (height, width) != tuple(instances.image_size):
                instances = detector_postprocess(instances, height, width)  # a resized input
            results.append({"instances": instances})
        return results


def build_tiled_test_loader(cfg, dataset_name: str):
    """detectron2's test loader with images at their original size (no test-time resize):
    the tiled model cuts them itself."""
    from detectron2.data import DatasetMapper, build_detection_test_loader

    mapper = DatasetMapper(is_train=False, augmentations=[], image_format=cfg.INPUT.FORMAT)
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)


def read_run_config(run_dir_or_config_yaml: str):
    """The detectron2 cfg of a ``ugs-train`` run (``detectron2_config.yaml``), UGS keys known.

    Raises:
        FileNotFoundError: one line naming the missing file.
    """
    from detectron2.config import get_cfg

    from ugs_d2.modeling import add_ugs_config  # importing it registers the UGS classes

    path = run_dir_or_config_yaml
    if os.path.isdir(path):
        path = os.path.join(path, "detectron2_config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no detectron2 config (expected a ugs-train run directory or its "
                                "detectron2_config.yaml)")
    cfg = get_cfg()
    add_ugs_config(cfg)
    cfg.set_new_allowed(True)  # project keys (GRADVAR, TILING) are not in detectron2's defaults
    cfg.merge_from_file(path)
    if cfg.get("UGS_PROJECT"):  # a projects/ detector: importing its package registers its classes
        from ugs_d2.config import load_project

        load_project(cfg.UGS_PROJECT)
    return cfg


def load_model(run_dir_or_config_yaml: str, weights: Optional[str] = None, device: str = "cpu") -> nn.Module:
    """Build a detectron2 model from a ``ugs-train`` run and load its weights, in eval mode.

    Args:
        run_dir_or_config_yaml: a run directory (with ``detectron2_config.yaml``) or the yaml.
        weights: checkpoint path; None: ``model_final.pth`` next to the config.
        device: ``cpu`` | ``cuda`` | ``cuda:N``.

    Returns:
        The model, with ``ugs_cfg`` (the frozen cfg), ``ugs_test_size`` and
        ``ugs_input_format`` attributes that :class:`TiledPredictor` reads.

    Raises:
        FileNotFoundError: the config or the weights are missing (one line).
    """
    from detectron2.modeling import build_model

    from ugs_d2.engine.checkpoint import load_weights

    cfg = read_run_config(run_dir_or_config_yaml)
    config_dir = (run_dir_or_config_yaml if os.path.isdir(run_dir_or_config_yaml)
                  else os.path.dirname(run_dir_or_config_yaml))
    weights = weights or os.path.join(config_dir, "model_final.pth")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: weights not found (train the run to the end, or pass --weights)")
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    model = build_model(cfg)
    # CheckpointError (one line) unless it fits; GridMismatchError for other UGS grids
    load_weights(model, weights, complete=True)
    model.eval()
    model.ugs_cfg = cfg
    model.ugs_test_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    model.ugs_input_format = cfg.INPUT.FORMAT
    return model
