"""``UGSTrainer``: detectron2's ``DefaultTrainer`` with the project's evaluator and writers."""
import logging
import os
import re
import traceback
from typing import Optional

import torch
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, get_event_storage

from ugs_d2 import compat
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.engine.checkpoint import AtomicCheckpointer, CheckpointError
from ugs_d2.engine.wandb_writer import build_wandb_writer
from ugs_d2.evaluation.metrics import repair_truncated_tail

__all__ = ["TrainingDiverged", "UGSTrainer", "first_non_finite_parameter", "keep_last_checkpoints", "one_line_error",
           "stop_on_non_finite_loss"]

logger = logging.getLogger(__name__)


_PERIODIC_CHECKPOINT = re.compile(r"model_\d{7}\.pth")


def keep_last_checkpoints(hooks: list, checkpointer, period: int, keep: int) -> list:
    """``hooks`` with detectron2's ``PeriodicCheckpointer`` rebuilt to keep only the ``keep``
    newest periodic checkpoints (``model_final.pth`` is never deleted).

    fvcore's ``max_to_keep`` only counts what this process saved; the periodic checkpoints a
    preempted attempt left in the run directory are counted first, so a requeued job does not
    pile them up either.
    """
    from detectron2.engine.hooks import PeriodicCheckpointer

    rebuilt = []
    for hook in hooks:
        if isinstance(hook, PeriodicCheckpointer):
            hook = PeriodicCheckpointer(checkpointer, period, max_to_keep=keep)
            run_dir = checkpointer.save_dir
            left = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
            hook.recent_checkpoints = [os.path.join(run_dir, n) for n in left if _PERIODIC_CHECKPOINT.fullmatch(n)]
        rebuilt.append(hook)
    return rebuilt


def first_non_finite_parameter(model) -> Optional[str]:
    """The name of the first parameter holding a NaN or Inf, or None."""
    return next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)


class TrainingDiverged(FloatingPointError):
    """A training loss became NaN or infinite; the message names the loss and the iteration."""


# detectron2's check_image_size: "Mismatched image shape for image F, got (w, h), expect (w, h)."
_SIZE_MISMATCH = re.compile(
    r"for image (?P<file>.+?), got \((?P<w>\d+), (?P<h>\d+)\), expect \((?P<W>\d+), (?P<H>\d+)\)"
)


def one_line_error(error: BaseException, known_only: bool = False) -> Optional[str]:
    """The one line that names what failed, for an error that ends a run.

    * errors re-raised from a data-loader worker carry the worker's traceback in their
      message: the last line is kept, without its ``module.Type:`` prefix;
    * detectron2's ``SizeMismatchError`` and PIL's unreadable-image errors name the file.

    ``known_only``: None for any other exception (the caller re-raises it with its traceback).
    """
    from detectron2.data.detection_utils import SizeMismatchError
    from PIL import UnidentifiedImageError

    text = str(error).strip()
    if "Original Traceback" in text or "\nTraceback" in text:
        text = text.splitlines()[-1]
        text = re.sub(r"^[\w.]+(Error|Diverged|Exception): ", "", text)
    hint = " (dataset.verify_images=true checks every image before training)"
    if isinstance(error, SizeMismatchError):
        m = _SIZE_MISMATCH.search(text)
        if m:
            return (f"{m['file']}: image is {m['w']}x{m['h']} but the dataset json says "
                    f"{m['W']}x{m['H']}{hint}")
        return text.splitlines()[0] + hint
    if isinstance(error, UnidentifiedImageError):
        m = re.search(r"cannot identify image file '?(.+?)'?$", text)
        return f"{m[1] if m else text}: unreadable image (empty or not an image file){hint}"
    if known_only:
        return None
    return (text.splitlines() or [type(error).__name__])[0]


class _QuietOneLineErrors(logging.Filter):
    """detectron2 logs every exception that ends training with its traceback ("Exception during
    training:"); for the errors that ``ugs-train`` reports in one line that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Exception during training"):
            error = record.exc_info[1]
            if isinstance(error, (DatasetError, TrainingDiverged, CheckpointError)):
                return False
            if one_line_error(error, known_only=True) is not None:
                return False
        return True


_QUIET = _QuietOneLineErrors()


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


def _tiled_test(cfg) -> bool:
    """tiling.test.enabled (d2.TILING, set by to_detectron2_cfg; absent: whole images)."""
    tiling = cfg.get("TILING")
    return tiling is not None and bool(tiling.TEST.ENABLED)


class UGSTrainer(DefaultTrainer):
    """DefaultTrainer with the project's data path, evaluation and writers.

    Evaluates with ``SmallObjectCOCOEvaluator`` (``evaluation.*``: size buckets, max detections,
    pycocotools or faster-coco-eval; Pascal VOC datasets with VOC's evaluator), tiled when
    ``tiling.test`` is on; trains with the augmenting mapper when ``augment.*`` asks for it;
    writes ``metrics.json`` and console logs, and stops on the first non-finite loss."""

    def run_step(self):
        try:
            super().run_step()
        except TrainingDiverged:
            raise
        except FloatingPointError as e:  # raised inside the forward (e.g. the RPN's NaN boxes)
            first = (str(e).strip().splitlines() or ["non-finite values"])[0]
            first = re.sub(r"\s*Training has diverged\.?", "", first).rstrip(".")
            raise TrainingDiverged(
                f"training diverged: {first} at iteration {self.iter} (raised in the forward pass, "
                "before the losses: lower schedule.base_lr or set ugs.grad_clip_norm)"
            ) from None
        except AssertionError as e:  # detectron2's matcher on the NaN IoUs of diverged boxes
            name = first_non_finite_parameter(self.model)
            if name is not None:
                what = f"parameter {name} is not finite"
            elif traceback.extract_tb(e.__traceback__)[-1].filename.endswith(os.path.join("modeling", "matcher.py")):
                what = "the box matcher got NaN or negative IoUs (diverged boxes)"
            else:
                raise
            raise TrainingDiverged(
                f"training diverged: {what} at iteration {self.iter} (raised in the forward pass, before "
                "the losses: lower schedule.base_lr or set ugs.grad_clip_norm)"
            ) from None

    def train(self):
        train_loop = logging.getLogger("detectron2.engine.train_loop")
        train_loop.addFilter(_QUIET)
        try:
            return super().train()
        finally:
            train_loop.removeFilter(_QUIET)

    def __init__(self, cfg, run_cfg=None):
        """
        Args:
            cfg: the detectron2 CfgNode.
            run_cfg: the resolved Hydra config of the run (its ``wandb:`` block and ``resume``;
                logged as the W&B config), or None for no W&B.
        """
        self.run_cfg = run_cfg  # read by build_writers, which DefaultTrainer.__init__ calls
        super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        model.register_forward_hook(stop_on_non_finite_loss)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        # augment: / input=native need ugs_d2's mapper; otherwise detectron2's loader, unchanged
        from detectron2.data import build_detection_train_loader

        from ugs_d2.data.mapper import FileNamingDatasetMapper, build_train_loader, needs_augmenting_mapper

        try:
            if cfg.INPUT.get("ORIENTED_BOXES", False):  # a rotated detector: the records' rbox
                from ugs_d2.data.oriented import OrientedDatasetMapper

                return build_detection_train_loader(cfg, mapper=OrientedDatasetMapper(cfg, True))
            if needs_augmenting_mapper(cfg):
                return build_train_loader(cfg)
            # detectron2's default loader, with a mapper that names an image it cannot decode
            return build_detection_train_loader(cfg, mapper=FileNamingDatasetMapper(cfg, True))
        except AssertionError as e:  # detectron2's "No valid data found in <names>."
            if "No valid data found" not in str(e):
                raise
            raise DatasetError(
                f"dataset.train: no usable box in {', '.join(cfg.DATASETS.TRAIN)} (every image is "
                "empty, crowd-only or was filtered out)"
            ) from None

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # tiling.test: whole, un-resized images; TiledInferenceModel cuts them into windows
        if _tiled_test(cfg):
            from ugs_d2.inference.tiled import build_tiled_test_loader

            return build_tiled_test_loader(cfg, dataset_name)
        from detectron2.data import build_detection_test_loader

        from ugs_d2.data.mapper import FileNamingDatasetMapper

        return build_detection_test_loader(cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, False))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # tiling.test: a model trained on tiles is evaluated on tiles (EvalHook and eval_only)
        if _tiled_test(cfg):
            from ugs_d2.inference.tiled import TiledInferenceModel

            model = TiledInferenceModel.from_config(model, cfg)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        from detectron2.data import MetadataCatalog

        if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
            from detectron2.evaluation import PascalVOCDetectionEvaluator

            return PascalVOCDetectionEvaluator(dataset_name)  # VOC's own AP50 (11-point for 2007)
        evaluation = cfg.get("UGS_EVAL")  # evaluation.* of the run (to_detectron2_cfg)
        if cfg.INPUT.get("ORIENTED_BOXES", False):  # rotated IoU on the records' rbox
            from ugs_d2.evaluation.oriented import OrientedCOCOEvaluator

            return OrientedCOCOEvaluator(dataset_name, bucket_sets=tuple(evaluation.BUCKETS) if evaluation else (),
                                         max_dets=evaluation.MAX_DETS if evaluation else 100)
        if evaluation is not None:
            from ugs_d2.evaluation.small_object import SmallObjectCOCOEvaluator

            return SmallObjectCOCOEvaluator(
                dataset_name,
                bucket_sets=tuple(evaluation.BUCKETS),
                max_dets=evaluation.MAX_DETS,
                backend=evaluation.BACKEND,
                distributed=True,
                output_dir=output_folder,
            )
        return COCOEvaluator(  # a CfgNode not made by to_detectron2_cfg: detectron2's own
            dataset_name,
            tasks=("bbox",),
            distributed=True,
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            **compat.coco_evaluator_kwargs(),
        )

    def build_hooks(self):
        # Atomic checkpoints (a kill never leaves a truncated one behind): DefaultTrainer.__init__
        # builds its checkpointer just before it calls build_hooks, whose PeriodicCheckpointer
        # keeps it, so it is replaced here, before any hook holds it.
        if not isinstance(self.checkpointer, AtomicCheckpointer):
            self.checkpointer = AtomicCheckpointer.replacing(self.checkpointer)
        hooks = super().build_hooks()
        keep = self.cfg.SOLVER.get("CHECKPOINTS_TO_KEEP", 0)  # absent from configs not made by to_detectron2_cfg
        if keep:
            hooks = keep_last_checkpoints(hooks, self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD, keep)
        gradvar = self.cfg.get("GRADVAR")  # absent from configs not made by to_detectron2_cfg
        if gradvar is not None and gradvar.ENABLED:  # gradient-variance probe, paper Sec. 4.6
            from detectron2.engine.hooks import PeriodicWriter

            from ugs_d2.engine.gradvar import GradVarHook, IterationGradVarHook

            kind = gradvar.get("PROBE", "across_objects")  # configs older than the faithful probe
            probes = []
            if kind in ("across_objects", "both"):
                probes.append(GradVarHook(gradvar.WINDOW, gradvar.PERIOD))
            if kind in ("across_iterations", "both"):
                probes.append(IterationGradVarHook(
                    self.cfg, gradvar.WINDOW, gradvar.PROBE_PERIOD, gradvar.PROBE_IMAGES,
                    gradvar.CANONICAL_BOX_SIZE, gradvar.CANONICAL_LEVEL,
                ))
            # before the writers, so that they see the statistics of the same step
            writer = next((i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)), None)
            at = len(hooks) if writer is None else writer
            hooks[at:at] = probes
        return hooks

    def build_writers(self):
        metrics_file = os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")
        repair_truncated_tail(metrics_file)  # a line cut by a kill; JSONWriter appends after it
        writers = [CommonMetricPrinter(self.max_iter), JSONWriter(metrics_file)]
        if self.run_cfg is not None:  # W&B per the run config's wandb: block (None: off)
            wandb_writer = build_wandb_writer(
                self.run_cfg,
                self.cfg.OUTPUT_DIR,
                continuing=bool(self.run_cfg.get("resume", False)) and self.checkpointer.has_checkpoint(),
            )
            if wandb_writer is not None:
                writers.append(wandb_writer)
        return writers

    @property
    def last_eval_results(self):
        """The results of the evaluation at the end of training (set by detectron2's EvalHook)."""
        return compat.last_eval_results(self)
