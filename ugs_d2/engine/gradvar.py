"""Gradient-variance probe (paper Sec. 4.6, Fig. 2 and 6), on with ``gradvar.enabled=true``.

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

``ugs-gradvar RUN_A RUN_B`` (:mod:`ugs_d2.cli.gradvar`) prints the ratio var(A) / var(B).
"""
import math
from collections import deque
from typing import Deque, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = [
    "BUCKETS",
    "ALL_BUCKETS",
    "SIZE_EDGES",
    "GradVarHook",
    "LocalizationGradientProbe",
    "WindowedStats",
    "assign_buckets",
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
