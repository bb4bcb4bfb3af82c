"""The bridge from the Hydra configuration (``configs/``) to a detectron2 ``CfgNode``.

``to_detectron2_cfg`` is the only place where Hydra keys meet detectron2 keys: reading it shows
every key a run can change. Values are type-checked here, so a wrong type on the command line
fails at start with the key named, e.g. ``schedule.max_iter: expected an integer, got 'ten'``.

A preset with ``model.project: NAME`` (RetinaNet, FCOS, Cascade R-CNN, ...) hands its
detector-specific keys to ``projects/NAME/<name>/``'s ``from_hydra``; the bridge itself reads
Faster R-CNN's ``model.rpn``/``model.roi`` only for an R-CNN meta-architecture.
"""
import importlib
import math
import os
import re
import sys
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from omegaconf import DictConfig, OmegaConf

from ugs_d2.data.augment import add_augment_config
from ugs_d2.modeling import add_ugs_config, apply_ugs_architecture, validate_ugs_config

__all__ = [
    "ConfigError",
    "to_detectron2_cfg",
    "resolve_device",
    "value_types",
    "with_hydra_keys",
    "load_project",
    "PROJECTS_DIR",
    "RCNN_ARCHITECTURES",
]

#: ``projects/`` of the repository: ``model.project: NAME`` imports ``projects/NAME/name/``
PROJECTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects")
#: R-CNN meta-architectures: their presets carry ``model.rpn``/``model.roi`` (read by the bridge
#: itself). Presets name the first; the UGS ones are what the class selection may turn it into.
RCNN_ARCHITECTURES = ("GeneralizedRCNN", "UGSRCNN", "UGSCascadeRCNN")


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
    if not math.isfinite(value):  # nan/inf: every range check after this would pass or mislead
        raise TypeError("a finite number")
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


#: the value checkers of ``get(key, checker)``, for the ``from_hydra`` functions of projects
value_types = SimpleNamespace(
    integer=_integer,
    number=_number,
    boolean=_boolean,
    string=_string,
    optional_string=_optional_string,
    list_of=_list_of,
)


def _known_projects() -> list:
    if not os.path.isdir(PROJECTS_DIR):
        return []
    return sorted(
        name
        for name in os.listdir(PROJECTS_DIR)
        if os.path.isfile(os.path.join(PROJECTS_DIR, name, name.lower(), "__init__.py"))
    )


def load_project(name: str) -> ModuleType:
    """Import the package of ``projects/<name>/`` (its folder ``<name>.lower()``), e.g.
    ``UGS_RetinaNet`` -> ``projects/UGS_RetinaNet/ugs_retinanet``; importing it registers its
    detectron2 classes. The package must define ``from_hydra(cfg, d2, get, num_classes)``.

    Raises:
        ConfigError: naming ``model.project`` when there is no such package.
    """
    directory = os.path.join(PROJECTS_DIR, name)
    package = name.lower()
    if not name or not os.path.isfile(os.path.join(directory, package, "__init__.py")):
        known = ", ".join(_known_projects()) or "none"
        raise ConfigError(
            f"model.project: no package projects/{name}/{package}/ (projects with a package: {known})"
        )
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = importlib.import_module(package)
    if not callable(getattr(module, "from_hydra", None)):
        raise ConfigError(f"model.project: projects/{name}/{package} defines no from_hydra()")
    return module


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
    # evaluation.* first: the model presets' detections_per_image interpolates evaluation.max_dets
    _evaluation(d2, get)

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
    # Faster R-CNN's pieces: read only for an R-CNN preset (a dense detector's preset has no
    # model.rpn / model.roi; its project's from_hydra reads its own keys instead).
    project = OmegaConf.select(cfg, "model.project", default=None)  # absent: the core Faster R-CNN
    rcnn = d2.MODEL.META_ARCHITECTURE in RCNN_ARCHITECTURES
    if not rcnn and not project:
        raise ConfigError(
            f"model.meta_architecture: {d2.MODEL.META_ARCHITECTURE!r} needs model.project "
            f"(a projects/ package that sets its keys), or use {RCNN_ARCHITECTURES[0]}"
        )
    if rcnn:
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
    _input_resize_and_augment(cfg, d2, get)  # model.input.resize + augment: (ugs_d2.data.mapper)

    # dataset (registered under these names by ugs_d2.data.datasets.register_dataset:
    # <name>_train/<name>_test, or the dataset.splits named by dataset.train/dataset.test)
    from ugs_d2.data.datasets import DatasetError, split_names

    get("dataset.name", string)
    try:
        d2.DATASETS.TRAIN, d2.DATASETS.TEST = split_names(_lookup(cfg, "dataset"))
    except DatasetError as e:
        raise ConfigError(str(e)) from None
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
    _check_schedule(d2, warn=bool(output_dir))  # optimiser values, before torch sees them
    _check_weights_path(d2.MODEL.WEIGHTS)

    _ugs(d2, get)  # ugs.*: the Table 6 rows; the architecture names follow from these keys

    # gradient-variance probes (ugs_d2.engine.gradvar); change no training computation
    d2.GRADVAR = CfgNode()
    d2.GRADVAR.ENABLED = get("gradvar.enabled", boolean)
    d2.GRADVAR.PROBE = get("gradvar.probe", string)
    d2.GRADVAR.WINDOW = get("gradvar.window", integer)
    d2.GRADVAR.PERIOD = get("gradvar.period", integer)
    d2.GRADVAR.PROBE_IMAGES = get("gradvar.probe_images", integer)
    d2.GRADVAR.PROBE_PERIOD = get("gradvar.probe_period", integer)
    d2.GRADVAR.CANONICAL_BOX_SIZE = get("gradvar.canonical_box_size", integer)
    d2.GRADVAR.CANONICAL_LEVEL = get("gradvar.canonical_level", integer)
    for key in ("window", "period", "probe_images", "probe_period", "canonical_box_size"):
        if get(f"gradvar.{key}", integer) < 1:
            raise ConfigError(f"gradvar.{key}: expected a positive integer")
    probes = ("across_objects", "across_iterations", "both")  # ugs_d2.engine.gradvar.PROBES
    if d2.GRADVAR.PROBE not in probes:
        raise ConfigError(f"gradvar.probe: expected one of {', '.join(probes)}, got {d2.GRADVAR.PROBE!r}")
    if 2 * d2.GRADVAR.PROBE_PERIOD > d2.GRADVAR.WINDOW and d2.GRADVAR.PROBE != "across_objects":
        raise ConfigError(
            f"gradvar.probe_period: {d2.GRADVAR.PROBE_PERIOD} leaves fewer than 2 probes per "
            f"window of gradvar.window={d2.GRADVAR.WINDOW} iterations (use <= window / 2)"
        )
    if d2.GRADVAR.ENABLED and project and d2.GRADVAR.PROBE != "across_iterations":
        raise ConfigError(  # the across-objects probe hooks the core ROI box predictor
            f"gradvar.enabled: the across-objects probe (gradvar.probe={d2.GRADVAR.PROBE}) measures "
            f"the Faster R-CNN ROI box head; model.project={project} has no such head "
            f"(use gradvar.probe=across_iterations, or a core Faster R-CNN preset)"
        )
    _tiling(cfg, d2, get)  # tiling.*: tiled train split and tiled evaluation
    try:
        validate_ugs_config(d2)
    except ValueError as e:  # name the Hydra key, not the CfgNode key
        raise ConfigError(_hydra_key_message(str(e))) from None
    # recorded so that a tool rebuilding the model from detectron2_config.yaml can import the
    # project (load_project) before build_model; "" = the core package's classes
    d2.UGS_PROJECT = _string(project) if project else ""
    if project:  # the project sets its own keys and picks its classes from the MODEL.UGS keys
        load_project(d2.UGS_PROJECT).from_hydra(cfg, d2, get, num_classes)
    else:
        apply_ugs_architecture(d2)
    _check_detection_budget(d2, num_classes)  # after every model key (projects set theirs above)

    d2.freeze()
    return d2


def _check_schedule(d2: CfgNode, warn: bool = False) -> None:
    """The optimiser's values are finite and in range (torch would fail with a traceback, or
    train silently wrong). ``warn``: log steps/warm-up past ``max_iter`` (a real run only)."""
    solver = d2.SOLVER
    checks = (
        ("schedule.base_lr", solver.BASE_LR, lambda v: v > 0, "a finite number > 0"),
        ("schedule.momentum", solver.MOMENTUM, lambda v: 0 <= v < 1, "a number in [0, 1)"),
        ("schedule.weight_decay", solver.WEIGHT_DECAY, lambda v: v >= 0, "a finite number >= 0"),
        ("schedule.warmup_iters", solver.WARMUP_ITERS, lambda v: v >= 0, "an integer >= 0"),
        ("schedule.eval_period", d2.TEST.EVAL_PERIOD, lambda v: v >= 0, "an integer >= 0 (0: only at the end)"),
    )
    for key, value, ok, expected in checks:
        if not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{key}: expected {expected}, got {value}")
    steps = list(solver.STEPS)
    if any(s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"schedule.steps: expected increasing positive iterations, got {steps}")
    if not warn:
        return
    import logging

    late = [s for s in steps if s >= solver.MAX_ITER]
    if late:
        logging.getLogger("ugs_d2").warning(
            f"schedule.steps: {late} at or after schedule.max_iter={solver.MAX_ITER}: "
            f"the learning rate is not decayed there"
        )
    if solver.WARMUP_ITERS > solver.MAX_ITER:
        logging.getLogger("ugs_d2").warning(
            f"schedule.warmup_iters={solver.WARMUP_ITERS} > schedule.max_iter={solver.MAX_ITER}: "
            f"the learning rate never reaches schedule.base_lr"
        )


def _check_weights_path(weights: str) -> None:
    """A local ``model.weights`` must be an existing file (URLs, ``detectron2://``: at load)."""
    if not weights or "://" in weights:
        return
    path = os.path.expanduser(weights)
    if os.path.isdir(path):
        raise ConfigError(f"model.weights: {weights} is a directory, expected a checkpoint file (.pth/.pkl)")
    if not os.path.isfile(path):
        raise ConfigError(f"model.weights: checkpoint file {weights} not found")


def _size_pair(value: Any) -> list:
    """null -> [] (the sampled image's size); [height, width] -> itself (positive integers)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        raise TypeError("null or [height, width] in px")
    return list(value)


def _input_resize_and_augment(cfg: DictConfig, d2: CfgNode, get: Callable) -> None:
    """``model.input.resize`` and the ``augment:`` block -> ``INPUT.RESIZE``, ``AUGMENT.*``.

    Both are optional (a config without them keeps detectron2's resize and no augmentation).
    """
    add_augment_config(d2)
    resize = "shortest_edge"
    if OmegaConf.select(cfg, "model.input.resize", default=None) is not None:
        resize = get("model.input.resize", _string)
    if resize not in ("shortest_edge", "none"):
        raise ConfigError(f"model.input.resize: expected shortest_edge or none, got {resize!r}")
    d2.INPUT.RESIZE = resize
    if resize == "none":  # size 0 is detectron2's "no resize" (ResizeShortestEdge -> NoOp),
        d2.INPUT.MIN_SIZE_TRAIN = (0,)  # so its own test loader and DefaultPredictor agree
        d2.INPUT.MIN_SIZE_TEST = 0
    if OmegaConf.select(cfg, "augment", default=None) is None:
        return

    def in_range(key: str, convert: Callable, low: float, high: float) -> Any:
        value = get(key, convert)
        if not low <= value <= high:
            raise ConfigError(f"{key}: expected a value in [{low:g}, {high:g}], got {value}")
        return value

    mosaic, crop, rotation = d2.AUGMENT.MOSAIC, d2.AUGMENT.CROP, d2.AUGMENT.ROTATION
    mosaic.PROB = in_range("augment.mosaic.prob", _number, 0, 1)
    mosaic.SIZE = get("augment.mosaic.size", _size_pair)
    mosaic.MIN_AREA_RATIO = in_range("augment.mosaic.min_area_ratio", _number, 0, 1)
    center = get("augment.mosaic.center_range", _list_of(_number))
    if len(center) != 2 or not 0 <= center[0] <= center[1] <= 1:
        raise ConfigError(
            f"augment.mosaic.center_range: expected [low, high] with 0 <= low <= high <= 1, got {center}"
        )
    mosaic.CENTER_RANGE = center
    crop.PROB = in_range("augment.crop.prob", _number, 0, 1)
    crop.SIZE_TYPE = get("augment.crop.size_type", _string)
    if crop.SIZE_TYPE not in ("relative", "absolute"):
        raise ConfigError(f"augment.crop.size_type: expected relative or absolute, got {crop.SIZE_TYPE!r}")
    size = get("augment.crop.size", _list_of(_number))
    relative = crop.SIZE_TYPE == "relative"
    if len(size) != 2 or not all((0 < v <= 1) if relative else v >= 1 for v in size):
        expected = "fractions in (0, 1]" if relative else "pixels >= 1"
        raise ConfigError(f"augment.crop.size: expected [height, width] as {expected}, got {size}")
    crop.SIZE = size
    crop.SMALL_OBJECT_MAX_SIDE = in_range("augment.crop.small_object_max_side", _number, 0, float("inf"))
    crop.MAX_TRIES = in_range("augment.crop.max_tries", _integer, 1, 10_000)
    rotation.PROB = in_range("augment.rotation.prob", _number, 0, 1)
    rotation.MAX_ANGLE = in_range("augment.rotation.max_angle", _number, 0, 180)


def _ugs(d2: CfgNode, get: Callable) -> None:
    """``ugs.*`` (configs/ugs) -> ``d2.MODEL.UGS`` (ugs_d2.modeling.config), the native stages'
    smooth-L1 beta and gradient clipping."""
    for stage in ("rpn", "roi"):
        node = getattr(d2.MODEL.UGS, stage.upper())
        node.ENABLED = get(f"ugs.{stage}.enabled", _boolean)
        node.REG_LOSS = get(f"ugs.{stage}.reg_loss", _string)
        node.RANGE = get(f"ugs.{stage}.range", _number)
        node.MODULATOR = get(f"ugs.{stage}.modulator", _number)
        node.NUM_INTERVALS = get(f"ugs.{stage}.num_intervals", _integer)
        node.GRID_FORM = get(f"ugs.{stage}.grid_form", _string)
    # smooth-L1's beta for a native stage: 0 = L1 (detectron2's default, the paper's
    # "Baseline"), 1.0 = the paper's "Smooth-L1" row (MMDetection's SmoothL1Loss)
    d2.MODEL.RPN.SMOOTH_L1_BETA = get("ugs.rpn.smooth_l1_beta", _number)
    d2.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = get("ugs.roi.smooth_l1_beta", _number)
    d2.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = d2.MODEL.RPN.SMOOTH_L1_BETA  # the dense head reads ugs.rpn
    for stage in ("rpn", "roi"):
        if get(f"ugs.{stage}.smooth_l1_beta", _number) < 0:
            raise ConfigError(f"ugs.{stage}.smooth_l1_beta: expected >= 0 (0 = L1)")
    d2.MODEL.UGS.UM_WEIGHT = get("ugs.um_weight", _number)
    d2.MODEL.UGS.UR_WEIGHT = get("ugs.ur_weight", _number)
    d2.MODEL.UGS.UR_RHO = get("ugs.ur_rho", _number)
    d2.MODEL.UGS.UR_LEVELS = get("ugs.ur_levels", _list_of(_string))
    d2.MODEL.UGS.UR_NORM = get("ugs.ur_norm", _string)
    d2.MODEL.UGS.UR_LOSSES = get("ugs.ur_losses", _string)
    d2.MODEL.UGS.UR_IMPL = get("ugs.ur_impl", _string)
    d2.MODEL.UGS.DET_LOSS_SCALE = get("ugs.det_loss_scale", _number)
    d2.MODEL.UGS.DENSE.LOC_WEIGHT = get("ugs.dense.loc_weight", _number)
    d2.MODEL.UGS.DENSE.COORD_REDUCTION = get("ugs.dense.coord_reduction", _string)
    clip = get("ugs.grad_clip_norm", _number)
    if clip < 0:
        raise ConfigError(f"ugs.grad_clip_norm: expected >= 0, got {clip}")
    d2.SOLVER.CLIP_GRADIENTS.ENABLED = clip > 0
    d2.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    d2.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip if clip > 0 else 1.0


def _tiling(cfg: DictConfig, d2: CfgNode, get: Callable) -> None:
    """``tiling.*`` -> ``d2.TILING`` (read by ugs_d2.data.datasets and UGSTrainer.test).

    A config without a ``tiling`` block (not composed from configs/) means whole images.
    """
    d2.TILING = CfgNode({"TRAIN": CfgNode(), "TEST": CfgNode()})
    if OmegaConf.select(cfg, "tiling", default=None) is None:
        d2.TILING.TILE, d2.TILING.OVERLAP = 512, 0.2
        d2.TILING.TRAIN.ENABLED = d2.TILING.TEST.ENABLED = False
        return
    tiling = d2.TILING
    tiling.TILE = get("tiling.tile", _integer)
    tiling.OVERLAP = get("tiling.overlap", _number)
    if tiling.TILE < 1:
        raise ConfigError(f"tiling.tile: expected a positive integer, got {tiling.TILE}")
    if not 0 <= tiling.OVERLAP < 1:
        raise ConfigError(f"tiling.overlap: expected a number in [0, 1), got {tiling.OVERLAP}")
    tiling.TRAIN.ENABLED = get("tiling.train.enabled", _boolean)
    tiling.TRAIN.MIN_AREA_RATIO = get("tiling.train.min_area_ratio", _number)
    if not 0 < tiling.TRAIN.MIN_AREA_RATIO <= 1:
        raise ConfigError(
            f"tiling.train.min_area_ratio: expected a number in (0, 1], got {tiling.TRAIN.MIN_AREA_RATIO}"
        )
    tiling.TRAIN.DROP_EMPTY = get("tiling.train.drop_empty", _boolean)
    tiling.TRAIN.CACHE_DIR = get("tiling.train.cache_dir", _optional_string)
    tiling.TEST.ENABLED = get("tiling.test.enabled", _boolean)
    tiling.TEST.BATCH_SIZE = get("tiling.test.batch_size", _integer)
    if tiling.TEST.BATCH_SIZE < 1:
        raise ConfigError(f"tiling.test.batch_size: expected a positive integer, got {tiling.TEST.BATCH_SIZE}")
    tiling.TEST.FULL_IMAGE = get("tiling.test.full_image", _boolean)
    tiling.TEST.UPSCALE = get("tiling.test.upscale", _boolean)
    for key, choices in (("merge", ("nms", "nmm")), ("metric", ("iou", "ios"))):
        value = get(f"tiling.test.{key}", _string)
        if value not in choices:
            raise ConfigError(f"tiling.test.{key}: expected {' or '.join(choices)}, got {value!r}")
        setattr(tiling.TEST, key.upper(), value)
    tiling.TEST.THRESHOLD = get("tiling.test.threshold", _number)
    if not 0 <= tiling.TEST.THRESHOLD <= 1:
        raise ConfigError(f"tiling.test.threshold: expected a number in [0, 1], got {tiling.TEST.THRESHOLD}")


def _evaluation(d2: CfgNode, get: Callable) -> None:
    """``evaluation.*`` (configs/evaluation) -> ``d2.UGS_EVAL.*``, read by ``UGSTrainer.build_evaluator``."""
    from ugs_d2.evaluation.backends import BACKENDS, backend_unavailable
    from ugs_d2.evaluation.small_object import BUCKET_SETS, MAX_DETS_CAP

    backend = get("evaluation.backend", _string)
    if backend not in BACKENDS:
        raise ConfigError(f"evaluation.backend: expected {' or '.join(BACKENDS)}, got {backend!r}")
    if backend_unavailable(backend):  # e.g. detectron2_fast on the registry fallback: before training
        raise ConfigError(backend_unavailable(backend))
    max_dets = get("evaluation.max_dets", _integer)
    if not 1 <= max_dets <= MAX_DETS_CAP:
        raise ConfigError(f"evaluation.max_dets: expected an integer in [1, {MAX_DETS_CAP}], got {max_dets}")
    buckets = get("evaluation.buckets", _list_of(_string))
    unknown = [b for b in buckets if b not in BUCKET_SETS]
    if unknown:
        raise ConfigError(
            f"evaluation.buckets: unknown bucket set {unknown[0]!r}; expected some of {', '.join(BUCKET_SETS)}"
        )
    d2.UGS_EVAL = CfgNode()
    d2.UGS_EVAL.BACKEND = backend
    d2.UGS_EVAL.MAX_DETS = max_dets
    d2.UGS_EVAL.BUCKETS = buckets


def _check_detection_budget(d2: CfgNode, num_classes: Optional[int]) -> None:
    """The detector must be able to return ``evaluation.max_dets`` boxes per image.

    Its limit (``TEST.DETECTIONS_PER_IMAGE``, from the model preset, by default
    ``${evaluation.max_dets}``) may not be lower, and for an R-CNN the test-time proposals
    times the classes (each proposal yields at most one box per class) must reach it.
    """
    max_dets, limit = d2.UGS_EVAL.MAX_DETS, d2.TEST.DETECTIONS_PER_IMAGE
    rcnn = d2.MODEL.META_ARCHITECTURE in RCNN_ARCHITECTURES
    if limit < max_dets:
        source = "model.roi.detections_per_image" if rcnn else "the model preset's detections_per_image"
        raise ConfigError(
            f"evaluation.max_dets: {max_dets} detections per image are evaluated, but the detector returns "
            f"at most {limit} ({source}; set it to ${{evaluation.max_dets}} or >= {max_dets})"
        )
    if rcnn and num_classes is not None:
        proposals = d2.MODEL.RPN.POST_NMS_TOPK_TEST
        if proposals * num_classes < max_dets:
            raise ConfigError(
                f"model.rpn.post_nms_topk_test: {proposals} proposals x {num_classes} classes cannot give "
                f"evaluation.max_dets = {max_dets} detections per image; expected >= {-(-max_dets // num_classes)}"
            )


def with_hydra_keys(message: str, renames: Sequence[Tuple[str, str]] = ()) -> str:
    """Name Hydra keys instead of detectron2 keys in a validation message.

    Every ``MODEL.UGS.<STAGE>.<KEY>`` becomes ``ugs.<stage>.<key>``; ``renames`` adds
    ``(detectron2 key, Hydra key)`` pairs for a project's own keys (applied first, in order).
    """
    for d2_key, hydra_key in renames:
        message = message.replace(d2_key, hydra_key)
    return re.sub(r"MODEL\.UGS\.([A-Z_]+(?:\.[A-Z_]+)*)", lambda m: "ugs." + m.group(1).lower(), message)


def _hydra_key_message(message: str) -> str:
    """Rewrite 'MODEL.UGS.RPN.RANGE must ...' as 'ugs.rpn.range must ...'."""
    prefix = "MODEL.UGS."
    if message.startswith(prefix):
        key, _, rest = message[len(prefix):].partition(" ")
        return f"ugs.{key.lower()}: {rest}"
    return message
