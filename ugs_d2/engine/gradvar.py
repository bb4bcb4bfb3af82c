"""Gradient-variance probes (paper Sec. 4.6, Fig. 2 and 6), on with ``gradvar.enabled=true``.

Two probes, chosen with ``gradvar.probe`` (``across_objects`` | ``across_iterations`` |
``both``, default ``both``):

* **across objects** (:class:`LocalizationGradientProbe`, :class:`GradVarHook`; scalars
  ``gradvar/<bucket>/*``): the spread, over all foreground ROI samples of a window of training
  iterations, of the per-sample gradient of ``loss_box_reg`` at the box-predictor input. Cheap
  (every iteration, no backbone backward), defined for the core Faster R-CNN only, and not what
  the paper measures (it pools different objects, excludes UM and compares raw variances).
* **across iterations** (:class:`IterationGradientProbe`, :class:`IterationGradVarHook`;
  scalars ``gradvar_faithful/<bucket>/*``): the paper's measure as DESIGN.md section 3 reads it,
  the variance *over training iterations* of each small object's localization-gradient
  magnitude at the FPN features, with UM included, scale-free. See "Across iterations" below.

Across objects
--------------

What is measured, identically for every localization loss (smooth-L1, GIoU, KL, IN bins):

* **Gradient.** For each foreground proposal ``i`` sampled by the ROI heads, the per-sample
  gradient magnitude ``g_i = || d(R * loss_box_reg) / d f_i ||_2``, where ``f_i`` is the
  feature vector entering the box predictor (the box head's output, ``MODEL.ROI_BOX_HEAD.FC_DIM``
  values for every method) and ``R`` the number of proposals sampled in the batch.
  ``loss_box_reg`` is the ROI head's localization loss as logged (detectron2's loss weight
  included) and is normalised by ``R``; multiplying by ``R`` makes ``g_i`` the gradient of that
  sample's own loss, independent of the batch size. The bin and regression heads predict
  outputs of different sizes (``4 x K`` logits vs 4 deltas), so the gradient is taken at their
  common input, not at their outputs. Only ``loss_box_reg`` contributes: it is computed with
  a separate ``torch.autograd.grad(loss_box_reg, f, retain_graph=True)`` after the ROI heads'
  forward, so classification, UM and UR gradients (which reach the same features in the
  training backward) are excluded, and training itself is unchanged. The extra backward only
  goes through the box predictor and the loss (no backbone), so it runs every iteration.
* **Size.** ``s = sqrt(w * h)`` of the proposal's matched GT box (``gt_boxes`` after
  ``label_and_sample_proposals``) at network input scale (after resizing), as COCO's size
  ranges (area < 32^2 = small) are. Buckets, half-open: ``tiny`` s < 16, ``small`` 16 <= s < 32,
  ``medium`` 32 <= s < 96, ``large`` s >= 96; plus ``lt32`` = tiny and small together, the
  paper's "small objects (area < 32^2)".
* **Statistics.** Over the last ``gradvar.window`` iterations (default 100), per bucket, pooled
  over all samples of those iterations (and of all processes): ``var`` = population variance
  (numpy's ``var``, ddof=0) of ``g_i``, ``mean_abs`` = mean of ``g_i`` (its magnitude), ``count``
  = number of samples. Every ``gradvar.period`` iterations (and the last one) they go to the
  EventStorage as ``gradvar/<bucket>/{var,mean_abs,count}`` (unsmoothed), hence to
  ``metrics.json`` and every other writer. ``count`` is logged for each bucket, ``mean_abs``
  from 1 sample, ``var`` from 2. The JSON writer flushes every 20 iterations and keeps the
  latest value, so a period that divides 20 (or is a multiple of it) loses nothing.

Across iterations (the faithful probe)
--------------------------------------

* **Probe batch.** ``gradvar.probe_images`` images (default 4): the first records of the
  training split (``DATASETS.TRAIN[0]``) with at least one non-crowd box, read once before
  training through the *test-time* transforms (test resize, no flip, no crop, no mosaic) with
  their annotations kept. The same batch, hence the same objects, is probed every time.
* **Loss.** Every ``gradvar.probe_period`` iterations (default 10; after the optimizer step of
  that iteration) the model runs a training-mode forward on the probe batch, and
  ``L_loc`` = the sum of its localization losses, chosen by name (:func:`is_localization_loss`):
  ``loss_rpn_loc``, ``loss_box_reg``, ``loss_fcos_loc``, ``loss_box_reg_stage*`` and every key
  starting with ``loss_um`` (UGS's UM terms). Classification and ``loss_ur`` are excluded.
  Every UR setting ``refinement.weight > 0`` (UGSRCNN, the dense UGS detectors) is set to 0 for
  the probe's forward, so UR's second pass is not even computed; were it computed anyway,
  ``loss_ur`` would still be left out by name.
* **Gradient.** ``G_l = dL_loc / dP_l`` for each backbone output ``P_l`` (the FPN levels,
  taken by a forward hook on ``model.backbone``), with ``torch.autograd.grad``: nothing
  accumulates into any ``.grad``. ``|G_l|`` = its L2 norm over channels at each location,
  (N, H_l, W_l).
* **Per object.** Each GT box ``o`` of the probe batch is assigned to a level like
  detectron2's ROI pooler (``assign_boxes_to_levels``: ``floor(canonical_level + log2(
  sqrt(area) / canonical_box_size))`` clamped to the levels the detector's heads read;
  ``gradvar.canonical_box_size`` 224 and ``gradvar.canonical_level`` 4, detectron2's
  ``ROIPooler`` defaults). ``m_o(t)`` = mean of ``|G_l|`` over the cells the box covers at that
  level's stride (:func:`box_cells`: every cell the box overlaps, at least one).
* **Statistic.** Windows are the blocks of ``gradvar.window`` iterations (default 100:
  iterations 0-99, 100-199, ...; the last one may be partial). At the end of each window, per
  size bucket (same buckets as above, by the GT's ``sqrt(w * h)`` at input scale) and over the
  ``T`` probes of the window: per object ``var_o = Var_t(m_o)`` (population variance, ddof=0) and
  ``mean_o = mean_t(m_o)``; logged are ``cv2`` = mean over objects of ``var_o / mean_o^2`` (the
  scale-free statistic; objects with ``mean_o == 0`` are left out of it), ``var`` = mean over
  objects of ``var_o`` (raw), ``mean`` = mean over objects of ``mean_o``, ``count`` = the
  number of objects, as ``gradvar_faithful/<bucket>/{cv2,var,mean,count}``, plus
  ``gradvar_faithful/probes`` = ``T``. ``cv2`` and ``var`` need ``T >= 2``.
* **No side effect on training.** The probe runs on the unwrapped model (no DDP hooks) in its
  current mode (train; BatchNorm in train mode uses the probe batch's statistics), inside a
  private EventStorage (the heads' statistics of the probe pass are dropped), with the torch
  (CPU and the model's CUDA device), numpy and Python RNG states saved and restored and a fixed
  seed (the run's ``SEED``) for its own anchor and proposal sampling, so ``m_o(t)`` changes
  only as the weights do. Every buffer of the model (BatchNorm running statistics included) is
  copied before and restored after. No optimizer step, no ``.grad``. Each process probes the
  same batch (SyncBN stays in step); only the main process's storage is written out.

``ugs-gradvar RUN_A RUN_B`` (:mod:`ugs_d2.cli.gradvar`) prints, for both probes, A / B ratios.
"""
import logging
import math
import random
from collections import deque
from contextlib import contextmanager
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage, get_event_storage

from ugs_d2.modeling import refinement
from ugs_d2.modeling.refinement import RefinementSettings

logger = logging.getLogger(__name__)

__all__ = [
    "BUCKETS",
    "ALL_BUCKETS",
    "SIZE_EDGES",
    "FAITHFUL_PREFIX",
    "GradVarHook",
    "IterationGradVarHook",
    "IterationGradientProbe",
    "LocalizationGradientProbe",
    "PROBES",
    "WindowedStats",
    "assign_buckets",
    "assign_levels",
    "box_cells",
    "build_probe_batch",
    "is_localization_loss",
    "object_series_stats",
    "region_means",
    "series_summary",
    "combine_moments",
    "moments",
]

#: (name, lower edge inclusive, upper edge exclusive) of the GT size sqrt(w * h) in input pixels
SIZE_EDGES: Tuple[Tuple[str, float, float], ...] = (
    ("tiny", 0.0, 16.0),
    ("small", 16.0, 32.0),
    ("medium", 32.0, 96.0),
    ("large", 96.0, math.inf),
)
BUCKETS: Tuple[str, ...] = tuple(name for name, _, _ in SIZE_EDGES)
#: pooled buckets: name -> the size buckets they join (the paper's "small": area < 32^2)
POOLED = {"lt32": ("tiny", "small")}
ALL_BUCKETS: Tuple[str, ...] = BUCKETS + tuple(POOLED)

#: (count, mean, M2 = sum of squared deviations from the mean) of a set of samples
Moments = Tuple[int, float, float]
EMPTY: Moments = (0, 0.0, 0.0)


def assign_buckets(sizes: Iterable[float]) -> List[str]:
    """Size bucket name of each GT size ``sqrt(w * h)`` (see :data:`SIZE_EDGES`)."""
    out = []
    for s in map(float, sizes):
        out.append(next((name for name, _, hi in SIZE_EDGES if s < hi), BUCKETS[-1]))
    return out


def moments(values) -> Moments:
    """(count, mean, M2) of a 1-d array of samples."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return EMPTY
    mean = float(values.mean())
    return int(values.size), mean, float(((values - mean) ** 2).sum())


def combine_moments(parts: Iterable[Moments]) -> Moments:
    """Pool (count, mean, M2) triples exactly (Chan et al.'s parallel update)."""
    n, mean, m2 = EMPTY
    for nb, mean_b, m2_b in parts:
        if nb == 0:
            continue
        total = n + nb
        delta = mean_b - mean
        mean += delta * nb / total
        m2 += m2_b + delta * delta * n * nb / total
        n = total
    return n, mean, m2


class WindowedStats:
    """Per-bucket statistics of per-sample values over the last ``window`` iterations.

    ``add`` is called once per iteration (with empty buckets too, so that the window always
    spans ``window`` iterations); ``summary`` pools every sample in the window.
    """

    def __init__(self, window: int = 100, buckets: Iterable[str] = ALL_BUCKETS):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.buckets = tuple(buckets)
        self._history: Deque[Dict[str, Moments]] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._history)

    def add(self, values_per_bucket: Dict[str, "np.ndarray"]) -> None:
        """One iteration's samples: bucket name -> 1-d array (missing buckets: no samples)."""
        self._history.append(
            {b: moments(values_per_bucket[b]) for b in self.buckets if b in values_per_bucket}
        )

    def moments(self) -> Dict[str, Moments]:
        """Bucket -> (count, mean, M2) pooled over the window."""
        return {b: combine_moments(it.get(b, EMPTY) for it in self._history) for b in self.buckets}

    def summary(self, extra: Iterable[Dict[str, Moments]] = ()) -> Dict[str, Dict[str, float]]:
        """Bucket -> {"count", "mean_abs" (count >= 1), "var" (count >= 2)}.

        ``extra``: other processes' :meth:`moments`, pooled with this one's.
        """
        parts = [self.moments(), *extra]
        out = {}
        for b in self.buckets:
            n, mean, m2 = combine_moments(p.get(b, EMPTY) for p in parts)
            stats = {"count": float(n)}
            if n >= 1:
                stats["mean_abs"] = mean
            if n >= 2:
                stats["var"] = m2 / n
            out[b] = stats
        return out


class LocalizationGradientProbe:
    """Module hooks on a detectron2 ``StandardROIHeads`` that measure, at each training forward,
    the per-sample gradient magnitudes of the localization loss (see the module docstring).

    ``attach()`` registers three hooks: a pre-hook on ``roi_heads`` arms the probe, a forward
    hook on ``roi_heads.box_predictor`` keeps its input features (the first call while armed
    only, so UR's extra box-head passes are ignored), and a forward hook on ``roi_heads`` takes
    the sampled proposals and ``loss_box_reg`` it returns in training and computes the gradient.
    ``pop()`` returns (and clears) the samples gathered since the last call.
    """

    def __init__(self, roi_heads: torch.nn.Module):
        predictor = getattr(roi_heads, "box_predictor", None)
        if predictor is None or not hasattr(predictor, "num_classes"):
            raise TypeError(
                f"gradvar: {type(roi_heads).__name__} has no FastRCNNOutputLayers box_predictor"
            )
        self.roi_heads = roi_heads
        self.predictor = predictor
        self._handles = []
        self._armed = False
        self._features: Optional[torch.Tensor] = None
        self._samples: Dict[str, List[np.ndarray]] = {}

    def attach(self) -> "LocalizationGradientProbe":
        if not self._handles:
            self._handles = [
                self.roi_heads.register_forward_pre_hook(self._arm),
                self.predictor.register_forward_hook(self._keep_features),
                self.roi_heads.register_forward_hook(self._measure),
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._armed, self._features = False, None

    def pop(self) -> Dict[str, np.ndarray]:
        """Bucket -> per-sample gradient magnitudes since the last call (every bucket present)."""
        out = {
            b: np.concatenate(self._samples[b]) if self._samples.get(b) else np.zeros(0)
            for b in BUCKETS
        }
        for name, parts in POOLED.items():
            out[name] = np.concatenate([out[b] for b in parts])
        self._samples = {}
        return out

    # hooks -------------------------------------------------------------------------------
    def _arm(self, module, inputs) -> None:
        self._armed = module.training and torch.is_grad_enabled()
        self._features = None

    def _keep_features(self, module, inputs, output) -> None:
        if self._armed and self._features is None and inputs and torch.is_tensor(inputs[0]):
            self._features = inputs[0]

    def _measure(self, module, inputs, output) -> None:
        features, self._features = self._features, None
        if not self._armed:
            return
        self._armed = False
        if features is None or not features.requires_grad:
            return
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict)):
            return
        proposals, losses = output
        loss = losses.get("loss_box_reg")
        if loss is None or not loss.requires_grad or not proposals:
            return
        if not all(p.has("gt_classes") and p.has("gt_boxes") for p in proposals):
            return
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        if gt_classes.numel() != features.shape[0]:
            return  # not the features of these proposals
        fg = (gt_classes >= 0) & (gt_classes < self.predictor.num_classes)
        if not bool(fg.any()):
            return
        (grad,) = torch.autograd.grad(loss, [features], retain_graph=True, allow_unused=True)
        if grad is None:
            return
        normalizer = max(gt_classes.numel(), 1)
        magnitude = grad.detach()[fg].flatten(1).float().norm(dim=1) * normalizer
        gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals])[fg].detach().float()
        wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0)
        sizes = (wh[:, 0] * wh[:, 1]).sqrt().cpu().numpy()
        magnitude = magnitude.cpu().numpy().astype(np.float64)
        buckets = np.asarray(assign_buckets(sizes))
        for b in BUCKETS:
            selected = magnitude[buckets == b]
            if selected.size:
                self._samples.setdefault(b, []).append(selected)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class GradVarHook(HookBase):
    """Trainer hook: run :class:`LocalizationGradientProbe` every iteration and put the windowed
    statistics into the EventStorage every ``period`` iterations (see the module docstring).

    Must come before detectron2's ``PeriodicWriter`` in the trainer's hooks.
    """

    def __init__(self, window: int = 100, period: int = 20, prefix: str = "gradvar"):
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.stats = WindowedStats(window)
        self.period = period
        self.prefix = prefix
        self.probe: Optional[LocalizationGradientProbe] = None

    def before_train(self):
        self.probe = LocalizationGradientProbe(_unwrap(self.trainer.model).roi_heads).attach()

    def after_train(self):
        if self.probe is not None:
            self.probe.detach()

    def after_step(self):
        self.stats.add(self.probe.pop())
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            self.log(get_event_storage())

    def log(self, storage) -> Dict[str, Dict[str, float]]:
        """Put the window's statistics (pooled over all processes) into ``storage``."""
        local = self.stats.moments()
        # every process reaches this step together; pool their samples (a no-op on one process)
        others = [m for rank, m in enumerate(comm.all_gather(local)) if rank != comm.get_rank()]
        summary = self.stats.summary(extra=others)
        for bucket, stats in summary.items():
            for key, value in stats.items():
                storage.put_scalar(f"{self.prefix}/{bucket}/{key}", value, smoothing_hint=False)
        return summary


# --------------------------------------------------------------------------------------------
# Across iterations: the faithful probe (see the module docstring)

#: ``gradvar.probe`` values
PROBES: Tuple[str, ...] = ("across_objects", "across_iterations", "both")
#: EventStorage prefix of the across-iterations probe's scalars
FAITHFUL_PREFIX = "gradvar_faithful"
def is_localization_loss(key: str) -> bool:
    """True for the losses in ``L_loc``: RPN / ROI / dense-head box losses, Cascade's per-stage
    box losses (:func:`ugs_d2.modeling.refinement.is_localization_loss`) and UGS's UM terms;
    False for classification, centerness and ``loss_ur``."""
    return refinement.is_localization_loss(key) or key.startswith("loss_um")


def assign_levels(
    boxes: torch.Tensor, min_level: int, max_level: int,
    canonical_box_size: float = 224.0, canonical_level: int = 4,
) -> torch.Tensor:
    """FPN level of each box, as detectron2's ROI pooler assigns it.

    Args:
        boxes: (K, 4) XYXY boxes at network input scale.
        min_level, max_level: the levels available (e.g. 2 and 5 for p2-p5).

    Returns:
        (K,) int64 absolute levels in [min_level, max_level].
    """
    from detectron2.modeling.poolers import assign_boxes_to_levels
    from detectron2.structures import Boxes

    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    offsets = assign_boxes_to_levels(
        [Boxes(boxes.reshape(-1, 4).float())], min_level, max_level,
        canonical_box_size, canonical_level,
    )
    return offsets + min_level


def box_cells(box: Sequence[float], stride: float, height: int, width: int) -> Tuple[int, int, int, int]:
    """Cells ``[y0, y1) x [x0, x1)`` of an (height, width) feature map of ``stride`` that the
    XYXY ``box`` (input pixels) overlaps: ``x0 = floor(x_min / stride)``, ``x1 = ceil(x_max /
    stride)``, at least one cell on each axis, clipped to the map."""
    x_min, y_min, x_max, y_max = (float(v) for v in box)

    def span(lo: float, hi: float, size: int) -> Tuple[int, int]:
        a = min(max(int(math.floor(lo / stride)), 0), size - 1)
        b = min(max(int(math.ceil(hi / stride)), a + 1), size)
        return a, b

    x0, x1 = span(x_min, x_max, width)
    y0, y1 = span(y_min, y_max, height)
    return y0, y1, x0, x1


def region_means(norm_map: torch.Tensor, boxes: torch.Tensor, stride: float) -> torch.Tensor:
    """Mean of a per-location map over each box's cells (:func:`box_cells`).

    Args:
        norm_map: (H, W), e.g. ``||dL/dP_l||`` over channels at each location.
        boxes: (K, 4) XYXY boxes in input pixels.
        stride: input pixels per cell of ``norm_map``.

    Returns:
        (K,) float64 means.
    """
    height, width = norm_map.shape[-2:]
    out = torch.zeros(len(boxes), dtype=torch.float64)
    for k, box in enumerate(boxes.tolist()):
        y0, y1, x0, x1 = box_cells(box, stride, height, width)
        out[k] = norm_map[y0:y1, x0:x1].double().mean()
    return out


def object_series_stats(series) -> Dict[str, float]:
    """Across-iterations statistics of per-object series.

    Args:
        series: (T, K) array, ``series[t, o] = m_o(t)`` for T probes and K objects.

    Returns:
        ``count`` = K and ``probes`` = T always; ``mean`` = mean over objects of ``mean_t(m_o)``
        (T >= 1, K >= 1); ``var`` = mean over objects of ``Var_t(m_o)`` (ddof=0) and ``cv2`` =
        mean over the objects with ``mean_t(m_o) > 0`` of ``Var_t(m_o) / mean_t(m_o)^2``
        (T >= 2; ``cv2`` also needs one such object).
    """
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2:
        raise ValueError(f"series must be (T, K), got shape {series.shape}")
    num_probes, num_objects = series.shape
    out = {"count": float(num_objects), "probes": float(num_probes)}
    if num_probes == 0 or num_objects == 0:
        return out
    mean = series.mean(axis=0)
    out["mean"] = float(mean.mean())
    if num_probes >= 2:
        var = series.var(axis=0)
        out["var"] = float(var.mean())
        positive = mean > 0
        if positive.any():
            out["cv2"] = float((var[positive] / mean[positive] ** 2).mean())
    return out


def series_summary(series, buckets: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Bucket -> :func:`object_series_stats` of that bucket's objects (every bucket of
    :data:`ALL_BUCKETS`, ``lt32`` pooling tiny and small).

    Args:
        series: (T, K) per-object series.
        buckets: K bucket names (:func:`assign_buckets`), one per object.
    """
    series = np.asarray(series, dtype=np.float64).reshape(-1, len(buckets))
    names = np.asarray(list(buckets), dtype=object)
    out = {}
    for bucket in ALL_BUCKETS:
        members = POOLED.get(bucket, (bucket,))
        selected = np.isin(names, members) if len(names) else np.zeros(0, dtype=bool)
        out[bucket] = object_series_stats(series[:, selected])
    return out


def build_probe_batch(cfg, num_images: int) -> List[dict]:
    """The probe batch: the first ``num_images`` records of ``cfg.DATASETS.TRAIN[0]`` with a
    non-crowd box, mapped by the test-time transforms with their annotations kept.

    Reads images with ``np.random`` untouched (its state is restored).
    """
    from detectron2.data import DatasetCatalog, DatasetMapper

    from ugs_d2.data.mapper import AugmentingDatasetMapper

    name = cfg.DATASETS.TRAIN[0]
    records = [
        r for r in DatasetCatalog.get(name)
        if any(a.get("iscrowd", 0) == 0 for a in r.get("annotations", []))
    ][:num_images]
    if not records:
        raise ValueError(f"gradvar.probe_images: dataset {name} has no image with a box to probe")
    # test-time transforms (resize to the test size, or none for input=native); is_train=True
    # only so that the mapper keeps the annotations
    augmentations = AugmentingDatasetMapper.from_config(cfg, is_train=False)["augmentations"]
    mapper = DatasetMapper(is_train=True, augmentations=augmentations, image_format=cfg.INPUT.FORMAT)
    with preserved_rng([]):
        batch = [mapper(r) for r in records]
    return [b for b in batch if len(b["instances"]) > 0]


@contextmanager
def preserved_rng(cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Run a block and restore the torch (CPU + ``cuda_devices``), numpy and Python RNGs."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(cuda_devices)):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextmanager
def _without_side_effects(model: torch.nn.Module, seed: int) -> Iterator[None]:
    """The probe's sandbox (see the module docstring): RNGs forked and seeded, buffers restored,
    UR off (``refinement.weight = 0``), train mode, a private EventStorage."""
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    # UGS meta-architectures hold UR's settings as ``refinement`` (RefinementSettings)
    ur_settings = [
        m.refinement for m in model.modules()
        if isinstance(getattr(m, "refinement", None), RefinementSettings) and m.refinement.weight > 0
    ]
    saved_ur = [r.weight for r in ur_settings]
    was_training = model.training
    try:
        iteration = get_event_storage().iter
    except AssertionError:
        iteration = 0
    try:
        with preserved_rng(cuda), EventStorage(iteration):
            torch.manual_seed(seed)
            for r in ur_settings:
                r.weight = 0.0
            model.train()
            yield
    finally:
        model.train(was_training)
        for r, weight in zip(ur_settings, saved_ur):
            r.weight = weight
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def _feature_levels(model: torch.nn.Module) -> List[str]:
    """The backbone outputs the detector's heads read for boxes: the ROI heads' box features
    (R-CNN, Cascade), else the dense head's ``head_in_features`` (RetinaNet, FCOS), else all."""
    roi_heads = getattr(model, "roi_heads", None)
    for names in (
        getattr(roi_heads, "box_in_features", None) or getattr(roi_heads, "in_features", None),
        getattr(model, "head_in_features", None),
    ):
        if names:
            return list(names)
    return list(model.backbone.output_shape())


class IterationGradientProbe:
    """``m_o`` for every GT object of a fixed probe batch (see the module docstring).

    ``measure()`` runs one side-effect-free training-mode forward and returns the (K,) values in
    a fixed object order (images in batch order, boxes in annotation order); ``sizes``,
    ``buckets`` and ``levels`` describe the K objects.
    """

    def __init__(
        self, model: torch.nn.Module, batch: List[dict], canonical_box_size: float = 224.0,
        canonical_level: int = 4, seed: int = 0, levels: Optional[Sequence[str]] = None,
    ):
        self.model = _unwrap(model)
        if not hasattr(self.model, "backbone"):
            raise TypeError(f"gradvar: {type(self.model).__name__} has no backbone to probe")
        self.batch = batch
        self.seed = seed
        shapes = self.model.backbone.output_shape()
        self.level_names = list(levels) if levels else _feature_levels(self.model)
        missing = [n for n in self.level_names if n not in shapes]
        if missing:
            raise ValueError(f"gradvar: levels {missing} are not backbone outputs {sorted(shapes)}")
        self.strides = {n: shapes[n].stride for n in self.level_names}
        by_level = {int(round(math.log2(s))): n for n, s in self.strides.items()}
        lo, hi = min(by_level), max(by_level)
        if sorted(by_level) != list(range(lo, hi + 1)):
            raise ValueError(f"gradvar: levels {self.level_names} are not consecutive FPN levels")
        self._name_of_level = by_level
        boxes = [b["instances"].gt_boxes.tensor.detach().float().cpu() for b in batch]
        self.image_index = torch.cat([torch.full((len(x),), i) for i, x in enumerate(boxes)])
        self.boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        self.sizes = (wh[:, 0] * wh[:, 1]).sqrt().numpy()
        self.buckets = assign_buckets(self.sizes)
        self.levels = assign_levels(self.boxes, lo, hi, canonical_box_size, canonical_level)
        self.seen_keys: List[str] = []
        self.loss_keys: List[str] = []

    def localization_loss(self, losses: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """``L_loc``: the sum of the localization terms of ``losses`` (:func:`is_localization_loss`);
        records ``seen_keys`` (every key) and ``loss_keys`` (those summed)."""
        first = not self.loss_keys and not self.seen_keys
        self.seen_keys = sorted(losses)
        self.loss_keys = sorted(
            k for k, v in losses.items()
            if is_localization_loss(k) and torch.is_tensor(v) and v.requires_grad
        )
        if first:
            logger.info(
                f"[gradvar] across-iterations probe: {len(self.boxes)} objects in "
                f"{len(self.batch)} images; L_loc = {' + '.join(self.loss_keys) or 'nothing'} "
                f"(of {', '.join(self.seen_keys)})"
            )
        return sum(losses[k] for k in self.loss_keys) if self.loss_keys else None

    def measure(self) -> np.ndarray:
        """(K,) ``m_o`` at the current weights (zeros where ``L_loc`` does not reach)."""
        captured: List[Dict[str, torch.Tensor]] = []
        handle = self.model.backbone.register_forward_hook(
            lambda module, inputs, output: captured.append(output) if not captured else None
        )
        try:
            with _without_side_effects(self.model, self.seed):
                losses = self.model(self.batch)
                loss = self.localization_loss(losses)
                features = captured[0] if captured else {}
                inputs = [features.get(n) for n in self.level_names]
                if loss is None or not all(torch.is_tensor(x) and x.requires_grad for x in inputs):
                    return np.zeros(len(self.boxes))  # nothing to differentiate (frozen FPN)
                grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        finally:
            handle.remove()
        values = torch.zeros(len(self.boxes), dtype=torch.float64)
        for name, grad in zip(self.level_names, grads):
            if grad is None:
                continue
            level = int(round(math.log2(self.strides[name])))
            norms = grad.detach().float().norm(dim=1).cpu()  # (N, H, W)
            for image in range(norms.shape[0]):
                selected = (self.levels == level) & (self.image_index == image)
                if bool(selected.any()):
                    values[selected] = region_means(
                        norms[image], self.boxes[selected], self.strides[name]
                    )
        return values.numpy()


class IterationGradVarHook(HookBase):
    """Trainer hook of the across-iterations probe: probe every ``probe_period`` iterations,
    log :func:`series_summary` at the end of every ``window``-iteration block (and at the last
    iteration) as ``gradvar_faithful/<bucket>/<stat>`` and ``gradvar_faithful/probes``.

    Must come before detectron2's ``PeriodicWriter`` in the trainer's hooks.
    """

    def __init__(
        self, cfg, window: int = 100, probe_period: int = 10, probe_images: int = 4,
        canonical_box_size: float = 224.0, canonical_level: int = 4,
        prefix: str = FAITHFUL_PREFIX,
    ):
        if window < 1 or probe_period < 1 or probe_images < 1:
            raise ValueError(
                f"window, probe_period and probe_images must be >= 1, "
                f"got {window}, {probe_period}, {probe_images}"
            )
        self.cfg = cfg
        self.window, self.probe_period, self.probe_images = window, probe_period, probe_images
        self.canonical = (canonical_box_size, canonical_level)
        self.prefix = prefix
        self.probe: Optional[IterationGradientProbe] = None
        self.values: List[np.ndarray] = []

    def before_train(self):
        batch = build_probe_batch(self.cfg, self.probe_images)
        self.probe = IterationGradientProbe(
            self.trainer.model, batch, *self.canonical, seed=int(self.cfg.SEED),
        )
        self.values = []

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.probe_period == 0:
            self.values.append(self.probe.measure())
        if (it + 1) % self.window == 0 or it == self.trainer.max_iter - 1:
            if self.values:
                self.log(get_event_storage())
            self.values = []

    def log(self, storage) -> Dict[str, Dict[str, float]]:
        """Put the window's statistics into ``storage``."""
        summary = series_summary(np.stack(self.values), self.probe.buckets)
        storage.put_scalar(f"{self.prefix}/probes", float(len(self.values)), smoothing_hint=False)
        for bucket, stats in summary.items():
            for key, value in stats.items():
                if key != "probes":
                    storage.put_scalar(f"{self.prefix}/{bucket}/{key}", value, smoothing_hint=False)
        return summary
