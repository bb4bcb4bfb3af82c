"""The bridge from the Hydra configuration (``configs/``) to a detectron2 ``CfgNode``.

``to_detectron2_cfg(cfg)`` types the composed config with the schemas of ``ugs_d2.schema``
(wrong type or range: one line naming the Hydra key, e.g. ``schedule.max_iter: expected an
integer, got 'ten'``), then applies ``BRIDGE``: the table of Hydra key -> detectron2 key that
shows every key a run can change. What a row cannot say (derived keys, optional groups, the
evaluation budget, the class selection) are the small functions below the table. A preset
with ``model.project: NAME`` adds its own rows and hooks (``ugs_d2.projects``). Last, the
``d2.*`` overrides set any other detectron2 key (``apply_d2_overrides``).
"""
import difflib
import logging
import os
import re
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from omegaconf import DictConfig, OmegaConf

from ugs_d2.data.augment import add_augment_config
from ugs_d2.modeling import add_ugs_config, apply_ugs_architecture, validate_ugs_config
from ugs_d2.projects import Project, get_project
from ugs_d2.schema import CHECKS, ConfigError, check_ranges, model_schema, typed_config

__all__ = [
    "ConfigError",
    "to_detectron2_cfg",
    "apply_d2_overrides",
    "bridged_keys",
    "resolve_device",
    "value_types",
    "with_hydra_keys",
    "float_lists",
    "load_project",
    "BRIDGE",
    "RCNN_ARCHITECTURES",
]

#: R-CNN meta-architectures: their presets carry ``model.rpn``/``model.roi`` (read by the bridge
#: itself). Presets name the first; the UGS ones are what the class selection may turn it into.
RCNN_ARCHITECTURES = ("GeneralizedRCNN", "UGSRCNN", "UGSCascadeRCNN")


def _same(hydra: str, d2: str, keys: str) -> Tuple[Tuple[str, str], ...]:
    """Rows whose detectron2 key is the Hydra key upper-cased: ``_same("a", "A", "x y")``."""
    return tuple((f"{hydra}.{k}", f"{d2}.{k.upper()}") for k in keys.split())


def float_lists(value: List[List[float]]) -> List[List[float]]:
    """``[[8], [16]]`` -> ``[[8.0], [16.0]]`` (detectron2's anchor keys hold floats)."""
    return [[float(x) for x in level] for level in value]


def _or_empty(value: Optional[str]) -> str:
    return "" if value is None else value


#: Hydra key -> detectron2 key [, converter of the typed value]. Every key here is refused as
#: a ``d2.*`` override (``ugs-train d2.SOLVER.MAX_ITER=5`` -> use schedule.max_iter).
BRIDGE = (
    ("seed", "SEED"), ("num_workers", "DATALOADER.NUM_WORKERS"),
    ("device", "MODEL.DEVICE", lambda v: resolve_device(v)),
    ("model.meta_architecture", "MODEL.META_ARCHITECTURE"),
    ("model.weights", "MODEL.WEIGHTS", _or_empty),
    ("model.pixel_mean", "MODEL.PIXEL_MEAN"), ("model.pixel_std", "MODEL.PIXEL_STD"),
    ("model.backbone.freeze_at", "MODEL.BACKBONE.FREEZE_AT"), ("model.backbone.depth", "MODEL.RESNETS.DEPTH"),
    ("model.backbone.norm", "MODEL.RESNETS.NORM"), ("model.backbone.fpn_channels", "MODEL.FPN.OUT_CHANNELS"),
    ("model.input.min_size_train", "INPUT.MIN_SIZE_TRAIN", tuple),
    *_same("model.input", "INPUT", "max_size_train min_size_test max_size_test random_flip resize"),
    *_same("schedule", "SOLVER", "ims_per_batch base_lr momentum weight_decay warmup_iters max_iter "
           "checkpoint_period checkpoints_to_keep"),
    ("schedule.steps", "SOLVER.STEPS", tuple), ("schedule.eval_period", "TEST.EVAL_PERIOD"),
    *(row for s in ("rpn", "roi") for row in _same(f"ugs.{s}", f"MODEL.UGS.{s.upper()}",
                                                   "enabled reg_loss range modulator num_intervals grid_form")),
    # smooth-L1's beta of a native stage: 0 = L1 (detectron2's default, the paper's "Baseline"),
    # 1.0 = the paper's "Smooth-L1" row; RetinaNet's dense head reads ugs.rpn's
    ("ugs.rpn.smooth_l1_beta", "MODEL.RPN.SMOOTH_L1_BETA"),
    ("ugs.roi.smooth_l1_beta", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA"),
    ("ugs.rpn.smooth_l1_beta", "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA"),
    *_same("ugs", "MODEL.UGS", "um_weight ur_weight ur_rho ur_levels ur_norm ur_losses ur_impl det_loss_scale"),
    *_same("ugs.dense", "MODEL.UGS.DENSE", "loc_weight coord_reduction"),
    ("ugs.grad_clip_norm", "SOLVER.CLIP_GRADIENTS.ENABLED", lambda v: v > 0),
    ("ugs.grad_clip_norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", lambda v: v if v > 0 else 1.0),
    *_same("evaluation", "UGS_EVAL", "backend max_dets buckets"),
    *_same("gradvar", "GRADVAR", "enabled probe window period probe_images probe_period "
           "canonical_box_size canonical_level"),
)
#: the Faster R-CNN pieces: only for an R-CNN meta-architecture (a dense preset has no model.rpn)
RCNN_BRIDGE = (
    ("model.anchors.sizes", "MODEL.ANCHOR_GENERATOR.SIZES", float_lists),
    ("model.anchors.aspect_ratios", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", float_lists),
    *_same("model.rpn", "MODEL.RPN", "batch_size_per_image pre_nms_topk_train post_nms_topk_train "
           "pre_nms_topk_test post_nms_topk_test"),
    *_same("model.roi", "MODEL.ROI_HEADS", "batch_size_per_image score_thresh_test nms_thresh_test"),
    *_same("model.roi", "MODEL.ROI_BOX_HEAD", "num_fc fc_dim cls_agnostic_bbox_reg"),
    ("model.roi.detections_per_image", "TEST.DETECTIONS_PER_IMAGE"),
)
#: only when the config has the group (a config without it: whole images / no augmentation)
TILING_BRIDGE = (*_same("tiling", "TILING", "tile overlap"),
                 *_same("tiling.train", "TILING.TRAIN", "enabled min_area_ratio drop_empty"),
                 ("tiling.train.cache_dir", "TILING.TRAIN.CACHE_DIR", _or_empty),
                 *_same("tiling.test", "TILING.TEST", "enabled batch_size full_image upscale merge metric threshold"))
AUGMENT_BRIDGE = (*_same("augment.mosaic", "AUGMENT.MOSAIC", "prob min_area_ratio center_range"),
                  ("augment.mosaic.size", "AUGMENT.MOSAIC.SIZE", lambda v: [] if v is None else v),
                  *_same("augment.crop", "AUGMENT.CROP", "prob size_type size small_object_max_side max_tries"),
                  *_same("augment.rotation", "AUGMENT.ROTATION", "prob max_angle"))
#: detectron2 keys every preset shares (a project may change them in its hooks)
FIXED = (
    ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"),
    ("MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]),
    ("MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"]),
    ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"),
)
RCNN_FIXED = (
    ("MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"]),
    ("MODEL.ROI_HEADS.NAME", "StandardROIHeads"),
    ("MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"]),
    ("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead"),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7),
)
#: keys derived by the functions below, and the Hydra key they come from
DERIVED = {
    "MODEL.RESNETS.RES2_OUT_CHANNELS": "model.backbone.depth",
    "MODEL.FPN.NORM": "model.backbone.norm",
    "MODEL.ROI_HEADS.NUM_CLASSES": "the training set's classes",
    "DATASETS.TRAIN": "dataset.train", "DATASETS.TEST": "dataset.test",
    "OUTPUT_DIR": "the run directory", "UGS_PROJECT": "model.project",
}


def to_detectron2_cfg(
    cfg: DictConfig, output_dir: str = "", num_classes: Optional[int] = None
) -> CfgNode:
    """Convert a composed ``ugs-train`` Hydra config into a frozen detectron2 ``CfgNode``.

    Args:
        cfg: the composed Hydra config (``configs/config.yaml`` and its groups).
        output_dir: the run directory (``OUTPUT_DIR``: checkpoints, metrics.json, evaluation).
        num_classes: the training set's number of categories (known once it is registered);
            None keeps detectron2's default (only for checking a command line).

    Raises:
        ConfigError: one line naming the key when a value has the wrong type or range.
    """
    project = _project(cfg)
    typed = typed_config(cfg, _model_schema(project, cfg))
    check_ranges(typed, CHECKS + (project.checks if project else ()))
    rcnn = typed.model.meta_architecture in RCNN_ARCHITECTURES
    if not rcnn and project is None:
        raise ConfigError(
            f"model.meta_architecture: {typed.model.meta_architecture!r} needs model.project "
            f"(a registered project that sets its keys), or use {RCNN_ARCHITECTURES[0]}"
        )

    d2 = get_cfg()
    add_ugs_config(d2)
    add_augment_config(d2)
    d2.GRADVAR, d2.UGS_EVAL = CfgNode(), CfgNode()
    d2.TILING = CfgNode({"TRAIN": CfgNode(), "TEST": CfgNode()})
    defaults = _flat(d2)
    rows = [*BRIDGE, *(RCNN_BRIDGE if rcnn else ()), *(TILING_BRIDGE if typed.tiling is not None else ()),
            *(AUGMENT_BRIDGE if typed.augment is not None else ())]
    _apply_rows(d2, typed, rows)
    for key, value in FIXED + (RCNN_FIXED if rcnn else ()):
        _set(d2, key, value)
    d2.OUTPUT_DIR = output_dir
    _backbone(d2)
    _input_resize(d2)
    _dataset(d2, cfg)
    _evaluation(d2)
    _gradvar(d2, project)
    if typed.augment is not None:
        _crop_size(d2)
    if typed.tiling is None:
        d2.TILING.TILE, d2.TILING.OVERLAP = 512, 0.2
        d2.TILING.TRAIN.ENABLED = d2.TILING.TEST.ENABLED = False
    if rcnn and num_classes is not None:
        d2.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    _warn_schedule(d2, warn=bool(output_dir))
    _check_weights_path(d2.MODEL.WEIGHTS)
    try:
        validate_ugs_config(d2)
    except ValueError as e:  # name the Hydra key, not the CfgNode key
        raise ConfigError(_hydra_key_message(str(e))) from None
    # recorded so that a tool rebuilding the model from detectron2_config.yaml can import the
    # project (load_project) before build_model; "" = the core package's classes
    d2.UGS_PROJECT = project.name if project else ""
    project_rows = _apply_project(project, typed, d2, num_classes)
    if project is None:
        apply_ugs_architecture(d2)
    _check_detection_budget(d2, num_classes)  # after every model key (projects set theirs above)
    apply_d2_overrides(d2, typed.d2, bridged_keys(rows + project_rows, defaults, d2))
    d2.freeze()
    return d2


def _project(cfg: DictConfig) -> Optional[Project]:
    name = OmegaConf.select(cfg, "model.project", default=None)
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"model.project: expected a string, got {name!r}")
    try:
        return get_project(name)
    except LookupError as e:
        raise ConfigError(str(e)) from None


def _model_schema(project: Optional[Project], cfg: DictConfig) -> type:
    """The model node's schema: the core one, plus the project's node (typed by its schema, or
    ``Any`` for every extra key of a project with only the older ``from_hydra`` hook)."""
    from ugs_d2.schema import ModelSchema

    if project is None:
        return ModelSchema
    if project.node:
        return model_schema([(project.node, project.schema or Any)])
    return model_schema([(key, Any) for key in cfg.model.keys() if key not in ModelSchema.__dataclass_fields__])


def _apply_project(project: Optional[Project], typed: DictConfig, d2: CfgNode,
                   num_classes: Optional[int]) -> List[tuple]:
    """The project's detectron2 keys, rows and hooks; returns its rows."""
    if project is None:
        return []
    if project.legacy_from_hydra is not None:  # the older hook: reads the config through get()
        project.legacy_from_hydra(typed, d2, lambda key, convert: _typed(typed, key, convert), num_classes)
        return []
    if project.add_config is not None:
        project.add_config(d2)
    _apply_rows(d2, typed, project.bridge)
    if project.finish is not None:
        project.finish(typed, d2, num_classes)
    return list(project.bridge)


def _apply_rows(d2: CfgNode, typed: DictConfig, rows: Iterable[tuple]) -> None:
    for hydra_key, d2_key, *convert in rows:
        value = OmegaConf.select(typed, hydra_key)
        parent = hydra_key.rpartition(".")[0]
        if value is None and parent and OmegaConf.select(typed, parent) is None:
            raise ConfigError(f"{parent}: missing from the configuration ({hydra_key} is read)")
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        _set(d2, d2_key, convert[0](value) if convert else value)


def _set(d2: CfgNode, key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    node = d2
    for part in path:
        node = node[part]
    node[leaf] = value


def _flat(node: CfgNode, prefix: str = "") -> Dict[str, Any]:
    """``{"MODEL.RPN.IN_FEATURES": [...], ...}``: every leaf of a CfgNode by its full key."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---- the special cases ----------------------------------------------------------------------


def _backbone(d2: CfgNode) -> None:
    """Basic blocks (R18/34) have 64 channels in res2, bottlenecks 256; FrozenBN has no FPN norm."""
    d2.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if d2.MODEL.RESNETS.DEPTH in (18, 34) else 256
    d2.MODEL.FPN.NORM = "" if d2.MODEL.RESNETS.NORM == "FrozenBN" else d2.MODEL.RESNETS.NORM


def _input_resize(d2: CfgNode) -> None:
    """``model.input.resize=none``: size 0 is detectron2's "no resize" (ResizeShortestEdge ->
    NoOp), so its own test loader and DefaultPredictor agree with ugs_d2.data.mapper."""
    if d2.INPUT.RESIZE == "none":
        d2.INPUT.MIN_SIZE_TRAIN = (0,)
        d2.INPUT.MIN_SIZE_TEST = 0


def _dataset(d2: CfgNode, cfg: DictConfig) -> None:
    """``DATASETS.TRAIN/TEST``: the names ``ugs_d2.data.datasets.register_dataset`` registers
    (<name>_train/<name>_test, or the dataset.splits named by dataset.train/dataset.test)."""
    from ugs_d2.data.datasets import DatasetError, split_names

    try:
        d2.DATASETS.TRAIN, d2.DATASETS.TEST = split_names(cfg.dataset)
    except DatasetError as e:
        raise ConfigError(str(e)) from None


def _evaluation(d2: CfgNode) -> None:
    """The evaluation keys name registries (``ugs_d2.evaluation``): checked against them here."""
    from ugs_d2.evaluation.backends import BACKENDS, backend_unavailable
    from ugs_d2.evaluation.small_object import BUCKET_SETS, MAX_DETS_CAP

    ev = d2.UGS_EVAL
    if ev.BACKEND not in BACKENDS:
        raise ConfigError(f"evaluation.backend: expected {' or '.join(BACKENDS)}, got {ev.BACKEND!r}")
    if backend_unavailable(ev.BACKEND):  # e.g. detectron2_fast on the registry fallback: before training
        raise ConfigError(backend_unavailable(ev.BACKEND))
    if not 1 <= ev.MAX_DETS <= MAX_DETS_CAP:
        raise ConfigError(f"evaluation.max_dets: expected an integer in [1, {MAX_DETS_CAP}], got {ev.MAX_DETS}")
    unknown = [b for b in ev.BUCKETS if b not in BUCKET_SETS]
    if unknown:
        raise ConfigError(
            f"evaluation.buckets: unknown bucket set {unknown[0]!r}; expected some of {', '.join(BUCKET_SETS)}"
        )


def _crop_size(d2: CfgNode) -> None:
    """``augment.crop.size`` is read in the unit ``augment.crop.size_type`` names."""
    crop = d2.AUGMENT.CROP
    relative = crop.SIZE_TYPE == "relative"
    if len(crop.SIZE) != 2 or not all((0 < v <= 1) if relative else v >= 1 for v in crop.SIZE):
        expected = "fractions in (0, 1]" if relative else "pixels >= 1"
        raise ConfigError(f"augment.crop.size: expected [height, width] as {expected}, got {list(crop.SIZE)}")


def _gradvar(d2: CfgNode, project: Optional[Project]) -> None:
    """The probes' settings that depend on each other (ugs_d2.engine.gradvar)."""
    g = d2.GRADVAR
    if 2 * g.PROBE_PERIOD > g.WINDOW and g.PROBE != "across_objects":
        raise ConfigError(
            f"gradvar.probe_period: {g.PROBE_PERIOD} leaves fewer than 2 probes per "
            f"window of gradvar.window={g.WINDOW} iterations (use <= window / 2)"
        )
    if g.ENABLED and project and g.PROBE != "across_iterations":
        raise ConfigError(  # the across-objects probe hooks the core ROI box predictor
            f"gradvar.enabled: the across-objects probe (gradvar.probe={g.PROBE}) measures "
            f"the Faster R-CNN ROI box head; model.project={project.name} has no such head "
            f"(use gradvar.probe=across_iterations, or a core Faster R-CNN preset)"
        )


def _warn_schedule(d2: CfgNode, warn: bool = False) -> None:
    """Log steps/warm-up past ``max_iter`` (a real run only: ``warn``)."""
    solver, log = d2.SOLVER, logging.getLogger("ugs_d2")
    if not warn:
        return
    late = [s for s in solver.STEPS if s >= solver.MAX_ITER]
    if late:
        log.warning(f"schedule.steps: {late} at or after schedule.max_iter={solver.MAX_ITER}: "
                    f"the learning rate is not decayed there")
    if solver.WARMUP_ITERS > solver.MAX_ITER:
        log.warning(f"schedule.warmup_iters={solver.WARMUP_ITERS} > schedule.max_iter={solver.MAX_ITER}: "
                    f"the learning rate never reaches schedule.base_lr")


def _check_weights_path(weights: str) -> None:
    """A local ``model.weights`` must be an existing file (URLs, ``detectron2://``: at load)."""
    if not weights or "://" in weights:
        return
    path = os.path.expanduser(weights)
    if os.path.isdir(path):
        raise ConfigError(f"model.weights: {weights} is a directory, expected a checkpoint file (.pth/.pkl)")
    if not os.path.isfile(path):
        raise ConfigError(f"model.weights: checkpoint file {weights} not found")


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


# ---- d2.*: any other detectron2 key ----------------------------------------------------------


def bridged_keys(rows: Iterable[tuple], defaults: Dict[str, Any], d2: CfgNode) -> Dict[str, str]:
    """``{detectron2 key: what sets it}`` for every key the bridge owns: the rows' (named by
    their Hydra key), the fixed and derived ones, and any other the bridge changed."""
    owners = {row[1]: row[0] for row in rows}
    owners.update({key: "the bridge (fixed for every preset)" for key, _ in FIXED + RCNN_FIXED})
    owners.update(DERIVED)
    for key, value in _flat(d2).items():
        if key not in owners and (key not in defaults or defaults[key] != value):
            owners[key] = "the bridge (derived from the model and ugs.* keys)"
    return owners


def _flat_overrides(node: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in _flat_overrides(v, f"{prefix}{k}.")]
    return [(prefix[:-1], node)]


def apply_d2_overrides(d2: CfgNode, overrides: Any, owners: Dict[str, str]) -> None:
    """``d2.KEY=VALUE`` overrides -> detectron2's own ``merge_from_list`` (its type checks).

    Raises:
        ConfigError: ``d2.KEY`` unknown to detectron2 (with close matches), set by the bridge
            (naming the Hydra key to use instead), or of the wrong type.
    """
    if OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    pairs = _flat_overrides(overrides or {})
    known = _flat(d2)
    for key, value in pairs:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join('d2.' + c for c in close)}?" if close else ""
            raise ConfigError(f"d2.{key}: not a detectron2 config key{hint}")
        if key in owners:
            raise ConfigError(
                f"d2.{key}: {key} is set by {owners[key]}; change that instead of overriding it "
                f"(a d2.* override never silently wins over the bridge)"
            )
    try:
        d2.merge_from_list([item for key, value in pairs for item in (key, value)])
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f"d2.*: {str(e).strip().splitlines()[0]}") from None


# ---- for projects and tools ------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {device!r}")
    return device


def load_project(name: str) -> ModuleType:
    """Import the package of the registered project ``name`` (registering its detectron2
    classes) and return it; e.g. ``UGS_RetinaNet`` -> ``ugs_retinanet``.

    Raises:
        ConfigError: naming ``model.project`` when no installed package registers ``name``.
    """
    import importlib

    try:
        return importlib.import_module(get_project(name).package)
    except LookupError as e:
        raise ConfigError(str(e)) from None


# ---- the older project hook: from_hydra(cfg, d2, get, num_classes) ---------------------------


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise TypeError("a finite number" if isinstance(value, float) else "a number")
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
    value = OmegaConf.select(cfg, key, throw_on_missing=True, default=KeyError)
    if value is KeyError:
        raise ConfigError(f"{key}: missing from the configuration")
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    try:
        return convert(value)
    except TypeError as e:
        raise ConfigError(f"{key}: expected {e.args[0]}, got {value!r}") from None


#: the value checkers of ``get(key, checker)`` for a project's older ``from_hydra`` hook
value_types = SimpleNamespace(
    integer=_integer, number=_number, boolean=_boolean, string=_string,
    optional_string=_optional_string, list_of=_list_of,
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
