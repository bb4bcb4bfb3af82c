"""``UGSTrainer``: detectron2's ``DefaultTrainer`` with the project's evaluator and writers."""
import logging
import os

import torch
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, get_event_storage

from ugs_d2 import compat

__all__ = ["TrainingDiverged", "UGSTrainer", "stop_on_non_finite_loss"]

logger = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """A training loss became NaN or infinite; the message names the loss and the iteration."""


def stop_on_non_finite_loss(module: torch.nn.Module, inputs, outputs) -> None:
    """Forward hook: in training, raise ``TrainingDiverged`` naming the first non-finite loss.

    detectron2 itself only reports that the *sum* became non-finite; naming the loss tells the
    user which head diverged.
    """
    if not module.training or not isinstance(outputs, dict) or not outputs:
        return
    values = torch.stack([v.detach().float().reshape(()) for v in outputs.values()])
    if bool(torch.isfinite(values).all()):
        return
    try:
        iteration = get_event_storage().iter
    except AssertionError:  # called outside a trainer
        iteration = "unknown"
    for name, value in outputs.items():
        if not torch.isfinite(value).all():
            raise TrainingDiverged(
                f"training diverged: {name} = {value.item()} at iteration {iteration}"
            )


class UGSTrainer(DefaultTrainer):
    """DefaultTrainer that evaluates with COCOEvaluator (pycocotools where no C++ ops exist),
    writes ``metrics.json`` and console logs, and stops on the first non-finite loss."""

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        model.register_forward_hook(stop_on_non_finite_loss)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            distributed=True,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            **compat.coco_evaluator_kwargs(),
        )

    def build_writers(self):
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]

    @property
    def last_eval_results(self):
        """The results of the evaluation at the end of training (set by detectron2's EvalHook)."""
        return getattr(self, "_last_eval_results", None)
