"""Typed schemas of the ``ugs-train`` config groups, and the range checks of their values.

One dataclass per group of ``configs/`` (``model``, ``dataset``, ``schedule``, ``ugs``,
``evaluation``, ``tiling``, ``augment``) plus the root keys, registered in Hydra's ConfigStore
under ``schema/<group>`` (and the root as ``schema/ugs_train``). ``typed_config(cfg)`` merges
a composed config into them, so OmegaConf enforces the types (``schedule.max_iter=ten`` fails,
``schedule.base_lr=1`` becomes 1.0); ``check_ranges`` then checks the values against
``CHECKS``, the one table of allowed ranges. Both raise one line naming the Hydra key.

A ``model.project`` adds its own node under ``model.`` (e.g. ``model.fcos``) through
``ugs_d2.projects.register_project``; ``model_schema(project)`` is the core model schema plus it.

This module imports neither torch nor detectron2.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

__all__ = [
    "TrainSchema",
    "ModelSchema",
    "DatasetSchema",
    "ScheduleSchema",
    "UGSSchema",
    "EvaluationSchema",
    "TilingSchema",
    "AugmentSchema",
    "CHECKS",
    "Check",
    "ConfigError",
    "model_schema",
    "typed_config",
    "check_ranges",
    "register_schemas",
]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range; the message names it.

    (Defined here so that this module stays free of detectron2; ``ugs_d2.config`` exports it.)
    """


# ---- model ----------------------------------------------------------------------------------


@dataclass
class BackboneSchema:
    depth: int = MISSING  # ResNet depth: 18 | 34 | 50 | 101 | 152
    norm: str = MISSING  # BN | SyncBN | GN | FrozenBN
    freeze_at: int = MISSING
    fpn_channels: int = MISSING


@dataclass
class AnchorsSchema:
    # one list of numbers per level (OmegaConf 2.3 cannot convert the ints of nested lists:
    # CHECKS checks these, ugs_d2.config.float_lists converts them)
    sizes: List[Any] = MISSING
    aspect_ratios: List[Any] = MISSING


@dataclass
class RPNSchema:
    batch_size_per_image: int = MISSING
    pre_nms_topk_train: int = MISSING
    post_nms_topk_train: int = MISSING
    pre_nms_topk_test: int = MISSING
    post_nms_topk_test: int = MISSING


@dataclass
class ROISchema:
    batch_size_per_image: int = MISSING
    num_fc: int = MISSING
    fc_dim: int = MISSING
    cls_agnostic_bbox_reg: bool = MISSING
    score_thresh_test: float = MISSING
    nms_thresh_test: float = MISSING
    detections_per_image: int = MISSING


@dataclass
class InputSchema:
    min_size_train: List[int] = MISSING
    max_size_train: int = MISSING
    min_size_test: int = MISSING
    max_size_test: int = MISSING
    random_flip: str = MISSING  # horizontal | vertical | none
    resize: str = "shortest_edge"  # shortest_edge | none (configs/input)


@dataclass
class ModelSchema:
    """The core keys of ``configs/model``; ``rpn``/``roi``/``anchors`` only in presets that have them."""

    meta_architecture: str = MISSING
    project: Optional[str] = None  # a registered project (ugs_d2.projects) that sets its own keys
    weights: Optional[str] = None
    backbone: BackboneSchema = MISSING
    anchors: Optional[AnchorsSchema] = None
    rpn: Optional[RPNSchema] = None
    roi: Optional[ROISchema] = None
    input: InputSchema = MISSING
    pixel_mean: List[float] = MISSING
    pixel_std: List[float] = MISSING


# ---- the other groups -------------------------------------------------------------------------


@dataclass
class DatasetSchema:
    """``configs/dataset``: the keys read by ``ugs_d2.data.datasets`` (which checks their content)."""

    name: str = MISSING
    format: str = "coco"  # coco | visdrone | voc
    root: Optional[str] = None
    train: Any = MISSING  # a split name, a list of names, or {json, images}
    test: Any = MISSING
    splits: Optional[Dict[str, Any]] = None
    annotations: Optional[str] = None
    root_env: Optional[str] = None
    ugs_datasets_subdir: Optional[str] = None
    reader: str = "ugs"  # ugs | detectron2
    builtin_metadata: Optional[str] = None
    classes: Optional[List[str]] = None
    verify_images: bool = False
    generate: Optional[Dict[str, Any]] = None


@dataclass
class ScheduleSchema:
    ims_per_batch: int = MISSING
    base_lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    warmup_iters: int = MISSING
    max_iter: int = MISSING
    steps: List[int] = MISSING
    checkpoint_period: int = MISSING
    eval_period: int = MISSING
    # the newest periodic checkpoints kept in the run directory; 0 keeps them all (detectron2)
    checkpoints_to_keep: int = 0


@dataclass
class StageSchema:
    enabled: bool = MISSING
    reg_loss: str = MISSING
    smooth_l1_beta: float = MISSING
    range: float = MISSING
    modulator: float = MISSING
    num_intervals: int = MISSING
    grid_form: str = MISSING


@dataclass
class DenseSchema:
    loc_weight: float = MISSING
    coord_reduction: str = MISSING


@dataclass
class UGSSchema:
    rpn: StageSchema = MISSING
    roi: StageSchema = MISSING
    um_weight: float = MISSING
    ur_weight: float = MISSING
    ur_rho: float = MISSING
    ur_norm: str = MISSING
    ur_losses: str = MISSING
    ur_impl: str = MISSING
    ur_levels: List[str] = MISSING
    det_loss_scale: float = MISSING
    dense: DenseSchema = MISSING
    grad_clip_norm: float = MISSING


@dataclass
class EvaluationSchema:
    backend: str = MISSING
    max_dets: int = MISSING
    buckets: List[str] = MISSING


@dataclass
class TilingTrainSchema:
    enabled: bool = MISSING
    min_area_ratio: float = MISSING
    drop_empty: bool = MISSING
    cache_dir: Optional[str] = None


@dataclass
class TilingTestSchema:
    enabled: bool = MISSING
    batch_size: int = MISSING
    full_image: bool = MISSING
    merge: str = MISSING
    metric: str = MISSING
    threshold: float = MISSING
    upscale: bool = MISSING


@dataclass
class TilingSchema:
    tile: int = MISSING
    overlap: float = MISSING
    train: TilingTrainSchema = MISSING
    test: TilingTestSchema = MISSING


@dataclass
class MosaicSchema:
    prob: float = MISSING
    size: Optional[List[int]] = None  # [height, width] in px; None: the sampled image's size
    min_area_ratio: float = MISSING
    center_range: List[float] = MISSING


@dataclass
class CropSchema:
    prob: float = MISSING
    size: List[float] = MISSING
    size_type: str = MISSING
    small_object_max_side: float = MISSING
    max_tries: int = MISSING


@dataclass
class RotationSchema:
    prob: float = MISSING
    max_angle: float = MISSING


@dataclass
class AugmentSchema:
    mosaic: MosaicSchema = MISSING
    crop: CropSchema = MISSING
    rotation: RotationSchema = MISSING


@dataclass
class GradvarSchema:
    enabled: bool = MISSING
    probe: str = MISSING
    window: int = MISSING
    period: int = MISSING
    probe_images: int = MISSING
    probe_period: int = MISSING
    canonical_box_size: int = MISSING
    canonical_level: int = MISSING


@dataclass
class WandbSchema:
    enabled: bool = True
    mode: str = "offline"
    project: str = "ugs_d2"
    entity: Optional[str] = None
    group: Optional[str] = None
    dir: Optional[str] = None


@dataclass
class LauncherSchema:
    num_gpus: Any = "auto"  # auto | an integer (ugs_d2.engine.launch checks it)
    num_machines: Any = "auto"
    machine_rank: Any = "auto"
    dist_url: str = "auto"
    check_weights: bool = False


@dataclass
class TrainSchema:
    """The root of ``configs/config.yaml``."""

    name: str = MISSING
    seed: int = MISSING
    device: str = MISSING  # auto | cpu | cuda
    num_workers: int = MISSING
    resume: bool = True
    eval_only: bool = False
    model: ModelSchema = MISSING
    dataset: DatasetSchema = MISSING
    schedule: ScheduleSchema = MISSING
    ugs: UGSSchema = MISSING
    evaluation: EvaluationSchema = MISSING
    tiling: Optional[TilingSchema] = None  # None: whole images
    augment: Optional[AugmentSchema] = None  # None: no augmentation
    gradvar: GradvarSchema = MISSING
    wandb: WandbSchema = field(default_factory=WandbSchema)
    launcher: LauncherSchema = field(default_factory=LauncherSchema)
    # any detectron2 key, applied after the bridge (ugs_d2.config.apply_d2_overrides)
    d2: Dict[str, Any] = field(default_factory=dict)
    hydra: Optional[Any] = None  # present when a caller kept Hydra's own node; not read


GROUP_SCHEMAS = {
    "model": ModelSchema,
    "dataset": DatasetSchema,
    "schedule": ScheduleSchema,
    "ugs": UGSSchema,
    "evaluation": EvaluationSchema,
    "tiling": TilingSchema,
    "augment": AugmentSchema,
}


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore: ``schema/ugs_train`` and ``schema/<group>``.

    ``configs/`` does not list them in its defaults: the bridge applies them (``typed_config``),
    so that a type error is one line from ``ugs-train`` rather than Hydra's composition error."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="ugs_train", node=TrainSchema)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group="schema", name=group, node=schema)


# ---- typing a composed config -----------------------------------------------------------------

_EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def model_schema(extra: Iterable[Tuple[str, Any]] = ()) -> type:
    """``ModelSchema`` with ``(key, type)`` nodes added (a project's ``model.<key>``)."""
    extra = list(extra)
    if not extra:
        return ModelSchema
    fields = [(key, Optional[schema], field(default=None)) for key, schema in extra]
    return dataclasses.make_dataclass("ProjectModelSchema", fields, bases=(ModelSchema,))


def typed_config(cfg: DictConfig, model: type = ModelSchema) -> DictConfig:
    """``cfg`` merged into ``TrainSchema`` (with ``model`` as the model node's schema), resolved.

    Raises:
        ConfigError: one line naming the key: ``schedule.max_iter: expected an integer, got 'ten'``,
            ``seed: missing from the configuration``, ``model.foo: not a key of the model schema``.
    """
    root = TrainSchema if model is ModelSchema else _with_model(model)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(root), cfg)
        OmegaConf.resolve(typed)
        _require_all(typed)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    return typed


def _with_model(model: type) -> type:
    return dataclasses.make_dataclass(
        "ProjectTrainSchema", [("model", model, field(default=MISSING))], bases=(TrainSchema,)
    )


def _require_all(node: Any, prefix: str = "") -> None:
    """Every mandatory (``???``) value is set; a missing one is named by its key."""
    if not isinstance(node, DictConfig):
        return
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing from the configuration")


def _one_line(e: OmegaConfBaseException) -> str:
    key, msg = e.full_key or "config", (e.msg or str(e)).strip().splitlines()[0]
    if isinstance(e, ValidationError) and "could not be converted to" in msg:
        target = msg.rsplit(" ", 1)[-1]
        return f"{key}: expected {_EXPECTED.get(target, target)}, got {e.value!r}"
    if isinstance(e, ValidationError) and "is not a valid bool" in msg:
        return f"{key}: expected true or false, got {e.value!r}"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: missing from the configuration"
    if isinstance(e, ConfigKeyError) and "not in" in msg:
        group = key.rsplit(".", 1)[0] if "." in key else "configuration"
        return f"{key}: not a key of the {group} schema (ugs_d2/schema.py)"
    return f"{key}: {msg}"


# ---- ranges -------------------------------------------------------------------------------------

#: (Hydra key, the condition its value must meet, what is expected): the allowed ranges.
Check = Tuple[str, Callable[[Any], bool], str]


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _within(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: low <= v <= high


def _increasing_positive(v: Sequence[int]) -> bool:
    return all(s >= 1 for s in v) and all(b > a for a, b in zip(v, v[1:]))


def lists_of_numbers(v: Any) -> bool:
    """``[[8], [16, 20.5]]``: a list of non-empty lists of (non-boolean) numbers."""
    return isinstance(v, list) and all(
        isinstance(level, list) and level
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in level)
        for level in v
    )


def _pair_within(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: len(v) == 2 and low <= v[0] <= v[1] <= high


CHECKS: Tuple[Check, ...] = (
    ("device", _one_of("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    ("model.backbone.depth", _one_of(18, 34, 50, 101, 152), "18, 34, 50, 101 or 152"),
    ("model.anchors.sizes", lists_of_numbers, "a list of lists of numbers (one per level)"),
    ("model.anchors.aspect_ratios", lists_of_numbers, "a list of lists of numbers (one per level)"),
    ("model.input.random_flip", _one_of("horizontal", "vertical", "none"), "horizontal, vertical or none"),
    ("model.input.resize", _one_of("shortest_edge", "none"), "shortest_edge or none"),
    ("schedule.ims_per_batch", _at_least(1), "a positive integer"),
    ("schedule.max_iter", _at_least(1), "a positive integer"),
    ("schedule.checkpoint_period", _at_least(1), "a positive integer"),
    ("schedule.base_lr", lambda v: v > 0, "a finite number > 0"),
    ("schedule.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("schedule.weight_decay", _at_least(0), "a finite number >= 0"),
    ("schedule.warmup_iters", _at_least(0), "an integer >= 0"),
    ("schedule.eval_period", _at_least(0), "an integer >= 0 (0: only at the end)"),
    ("schedule.checkpoints_to_keep", _at_least(0), "an integer >= 0 (0: keep every checkpoint)"),
    ("schedule.steps", _increasing_positive, "increasing positive iterations"),
    ("ugs.rpn.smooth_l1_beta", _at_least(0), ">= 0 (0 = L1)"),
    ("ugs.roi.smooth_l1_beta", _at_least(0), ">= 0 (0 = L1)"),
    ("ugs.grad_clip_norm", _at_least(0), ">= 0"),
    ("gradvar.probe", _one_of("across_objects", "across_iterations", "both"),
     "one of across_objects, across_iterations, both"),
    *((f"gradvar.{k}", _at_least(1), "a positive integer")
      for k in ("window", "period", "probe_images", "probe_period", "canonical_box_size")),
    ("tiling.tile", _at_least(1), "a positive integer"),
    ("tiling.overlap", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("tiling.train.min_area_ratio", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("tiling.test.batch_size", _at_least(1), "a positive integer"),
    ("tiling.test.merge", _one_of("nms", "nmm"), "nms or nmm"),
    ("tiling.test.metric", _one_of("iou", "ios"), "iou or ios"),
    ("tiling.test.threshold", _within(0, 1), "a number in [0, 1]"),
    ("augment.mosaic.prob", _within(0, 1), "a value in [0, 1]"),
    ("augment.mosaic.size", lambda v: v is None or (len(v) == 2 and min(v) >= 1), "null or [height, width] in px"),
    ("augment.mosaic.min_area_ratio", _within(0, 1), "a value in [0, 1]"),
    ("augment.mosaic.center_range", _pair_within(0, 1), "[low, high] with 0 <= low <= high <= 1"),
    ("augment.crop.prob", _within(0, 1), "a value in [0, 1]"),
    ("augment.crop.size_type", _one_of("relative", "absolute"), "relative or absolute"),
    ("augment.crop.small_object_max_side", _at_least(0), "a value in [0, inf]"),
    ("augment.crop.max_tries", _within(1, 10_000), "a value in [1, 10000]"),
    ("augment.rotation.prob", _within(0, 1), "a value in [0, 1]"),
    ("augment.rotation.max_angle", _within(0, 180), "a value in [0, 180]"),
)


def check_ranges(typed: DictConfig, checks: Iterable[Check] = CHECKS) -> None:
    """Every float of ``typed`` is finite (outside ``d2``), and every ``checks`` row holds.

    Rows whose key is absent (an optional group such as ``tiling``, a preset without the key)
    are skipped. Raises ``ConfigError`` for the first failure: ``KEY: expected WHAT, got VALUE``.
    """
    _check_finite(typed)
    for key, ok, expected in checks:
        value = OmegaConf.select(typed, key, default=None)
        if value is None:  # an absent group or key, or an optional value left at null
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not ok(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}" if isinstance(value, str)
                              else f"{key}: expected {expected}, got {value}")


def _check_finite(node: Any, prefix: str = "") -> None:
    """nan/inf pass every range check (or mislead it): refuse them wherever a number is typed."""
    if not OmegaConf.is_config(node):
        return
    # unresolved: interpolations (``${hydra:...}``) stay strings, so this needs no Hydra context
    tree = OmegaConf.to_container(node, resolve=False)
    if isinstance(tree, dict) and prefix == "":
        tree = {k: v for k, v in tree.items() if k not in ("d2", "hydra")}
    _refuse_non_finite(tree, prefix)


def _refuse_non_finite(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key.rstrip('.')}: expected a finite number, got {value}")
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for child_key, child in children:
        _refuse_non_finite(child, f"{key}{child_key}.")


