"""The bridge from the Hydra configuration (``configs/``) to a detectron2 ``CfgNode``.

``to_detectron2_cfg`` is the only place where Hydra keys meet detectron2 keys: reading it shows
every key a run can change. Values are type-checked here, so a wrong type on the command line
fails at start with the key named, e.g. ``schedule.max_iter: expected an integer, got 'ten'``.
"""
from typing import Any, Callable, Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from omegaconf import DictConfig, OmegaConf

from ugs_d2.modeling import add_ugs_config, apply_ugs_architecture, validate_ugs_config

__all__ = ["ConfigError", "to_detectron2_cfg", "resolve_device"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; the message names it."""


def _lookup(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, throw_on_missing=True, default=KeyError)
    if value is KeyError:
        raise ConfigError(f"{key}: missing from the configuration")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a number")
    return float(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _optional_string(value: Any) -> str:
    return "" if value is None else _string(value)


def _list_of(convert: Callable[[Any], Any]) -> Callable[[Any], list]:
    def convert_list(value: Any) -> list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError("a list")
        return [convert(v) for v in value]

    return convert_list


def _typed(cfg: DictConfig, key: str, convert: Callable[[Any], Any]) -> Any:
    value = _lookup(cfg, key)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    try:
        return convert(value)
    except TypeError as e:
        raise ConfigError(f"{key}: expected {e.args[0]}, got {value!r}") from None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {device!r}")
    return device


def to_detectron2_cfg(
    cfg: DictConfig, output_dir: str = "", num_classes: Optional[int] = None
) -> CfgNode:
    """Convert a resolved ``ugs-train`` Hydra config into a frozen detectron2 ``CfgNode``.

    Args:
        cfg: the composed Hydra config (``configs/config.yaml`` and its groups).
        output_dir: the run directory (``OUTPUT_DIR``: checkpoints, metrics.json, evaluation).
        num_classes: the training set's number of categories (known once it is registered);
            None keeps detectron2's default (only for checking a command line).

    Raises:
        ConfigError: one line naming the key when a value has the wrong type or range.
    """
    integer, number, boolean, string = _integer, _number, _boolean, _string
    get = lambda key, convert: _typed(cfg, key, convert)  # noqa: E731

    d2 = get_cfg()
    add_ugs_config(d2)
    d2.OUTPUT_DIR = output_dir
    d2.SEED = get("seed", integer)
    d2.MODEL.DEVICE = resolve_device(get("device", string))

    # model
    d2.MODEL.META_ARCHITECTURE = get("model.meta_architecture", string)
    d2.MODEL.WEIGHTS = get("model.weights", _optional_string)
    d2.MODEL.PIXEL_MEAN = get("model.pixel_mean", _list_of(number))
    d2.MODEL.PIXEL_STD = get("model.pixel_std", _list_of(number))
    d2.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    d2.MODEL.BACKBONE.FREEZE_AT = get("model.backbone.freeze_at", integer)
    depth = get("model.backbone.depth", integer)
    if depth not in (18, 34, 50, 101, 152):
        raise ConfigError(f"model.backbone.depth: expected 18, 34, 50, 101 or 152, got {depth}")
    d2.MODEL.RESNETS.DEPTH = depth
    d2.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256  # basic vs bottleneck blocks
    d2.MODEL.RESNETS.NORM = get("model.backbone.norm", string)
    d2.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    d2.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    d2.MODEL.FPN.OUT_CHANNELS = get("model.backbone.fpn_channels", integer)
    d2.MODEL.FPN.NORM = "" if d2.MODEL.RESNETS.NORM == "FrozenBN" else d2.MODEL.RESNETS.NORM
    d2.MODEL.ANCHOR_GENERATOR.SIZES = get("model.anchors.sizes", _list_of(_list_of(number)))
    d2.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = get(
        "model.anchors.aspect_ratios", _list_of(_list_of(number))
    )
    d2.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    d2.MODEL.RPN.BATCH_SIZE_PER_IMAGE = get("model.rpn.batch_size_per_image", integer)
    d2.MODEL.RPN.PRE_NMS_TOPK_TRAIN = get("model.rpn.pre_nms_topk_train", integer)
    d2.MODEL.RPN.POST_NMS_TOPK_TRAIN = get("model.rpn.post_nms_topk_train", integer)
    d2.MODEL.RPN.PRE_NMS_TOPK_TEST = get("model.rpn.pre_nms_topk_test", integer)
    d2.MODEL.RPN.POST_NMS_TOPK_TEST = get("model.rpn.post_nms_topk_test", integer)
    d2.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    if num_classes is not None:
        d2.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    d2.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    d2.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = get("model.roi.batch_size_per_image", integer)
    d2.MODEL.ROI_HEADS.SCORE_THRESH_TEST = get("model.roi.score_thresh_test", number)
    d2.MODEL.ROI_HEADS.NMS_THRESH_TEST = get("model.roi.nms_thresh_test", number)
    d2.TEST.DETECTIONS_PER_IMAGE = get("model.roi.detections_per_image", integer)
    d2.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    d2.MODEL.ROI_BOX_HEAD.NUM_FC = get("model.roi.num_fc", integer)
    d2.MODEL.ROI_BOX_HEAD.FC_DIM = get("model.roi.fc_dim", integer)
    d2.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    d2.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = get("model.roi.cls_agnostic_bbox_reg", boolean)
    d2.INPUT.MIN_SIZE_TRAIN = tuple(get("model.input.min_size_train", _list_of(integer)))
    d2.INPUT.MAX_SIZE_TRAIN = get("model.input.max_size_train", integer)
    d2.INPUT.MIN_SIZE_TEST = get("model.input.min_size_test", integer)
    d2.INPUT.MAX_SIZE_TEST = get("model.input.max_size_test", integer)
    flip = get("model.input.random_flip", string)
    if flip not in ("horizontal", "vertical", "none"):
        raise ConfigError(f"model.input.random_flip: expected horizontal, vertical or none, got {flip!r}")
    d2.INPUT.RANDOM_FLIP = flip

    # dataset (registered under these names by ugs_d2.data.register_dataset)
    dataset = get("dataset.name", string)
    d2.DATASETS.TRAIN = (f"{dataset}_train",)
    d2.DATASETS.TEST = (f"{dataset}_test",)
    d2.DATALOADER.NUM_WORKERS = get("num_workers", integer)

    # schedule
    d2.SOLVER.IMS_PER_BATCH = get("schedule.ims_per_batch", integer)
    d2.SOLVER.BASE_LR = get("schedule.base_lr", number)
    d2.SOLVER.MOMENTUM = get("schedule.momentum", number)
    d2.SOLVER.WEIGHT_DECAY = get("schedule.weight_decay", number)
    d2.SOLVER.WARMUP_ITERS = get("schedule.warmup_iters", integer)
    d2.SOLVER.MAX_ITER = get("schedule.max_iter", integer)
    d2.SOLVER.STEPS = tuple(get("schedule.steps", _list_of(integer)))
    d2.SOLVER.CHECKPOINT_PERIOD = get("schedule.checkpoint_period", integer)
    d2.TEST.EVAL_PERIOD = get("schedule.eval_period", integer)
    for key in ("ims_per_batch", "max_iter", "checkpoint_period"):
        if get(f"schedule.{key}", integer) < 1:
            raise ConfigError(f"schedule.{key}: expected a positive integer")

    # UGS (Table 6 rows); the architecture names follow from these keys
    for stage in ("rpn", "roi"):
        node = getattr(d2.MODEL.UGS, stage.upper())
        node.ENABLED = get(f"ugs.{stage}.enabled", boolean)
        node.REG_LOSS = get(f"ugs.{stage}.reg_loss", string)
        node.RANGE = get(f"ugs.{stage}.range", number)
        node.MODULATOR = get(f"ugs.{stage}.modulator", number)
        node.NUM_INTERVALS = get(f"ugs.{stage}.num_intervals", integer)
    d2.MODEL.UGS.UM_WEIGHT = get("ugs.um_weight", number)
    d2.MODEL.UGS.UR_WEIGHT = get("ugs.ur_weight", number)
    d2.MODEL.UGS.UR_RHO = get("ugs.ur_rho", number)
    d2.MODEL.UGS.UR_LEVELS = get("ugs.ur_levels", _list_of(string))
    clip = get("ugs.grad_clip_norm", number)
    if clip < 0:
        raise ConfigError(f"ugs.grad_clip_norm: expected >= 0, got {clip}")
    d2.SOLVER.CLIP_GRADIENTS.ENABLED = clip > 0
    d2.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    d2.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip if clip > 0 else 1.0

    # gradient-variance probe (ugs_d2.engine.gradvar); changes no training computation
    d2.GRADVAR = CfgNode()
    d2.GRADVAR.ENABLED = get("gradvar.enabled", boolean)
    d2.GRADVAR.WINDOW = get("gradvar.window", integer)
    d2.GRADVAR.PERIOD = get("gradvar.period", integer)
    for key in ("window", "period"):
        if get(f"gradvar.{key}", integer) < 1:
            raise ConfigError(f"gradvar.{key}: expected a positive integer")
    try:
        validate_ugs_config(d2)
    except ValueError as e:  # name the Hydra key, not the CfgNode key
        raise ConfigError(_hydra_key_message(str(e))) from None
    apply_ugs_architecture(d2)

    d2.freeze()
    return d2


def _hydra_key_message(message: str) -> str:
    """Rewrite 'MODEL.UGS.RPN.RANGE must ...' as 'ugs.rpn.range must ...'."""
    prefix = "MODEL.UGS."
    if message.startswith(prefix):
        key, _, rest = message[len(prefix):].partition(" ")
        return f"ugs.{key.lower()}: {rest}"
    return message
