"""Typed schemas (ugs_d2/schema.py), the declarative bridge, d2.* overrides and project registration."""
import configparser
import os
import sys
import types

import pytest
from omegaconf import OmegaConf

from ugs_d2.cli.validate import CommandLineError, d2_overrides_as_hydra, validate_command_line
from ugs_d2.config import BRIDGE, RCNN_BRIDGE, ConfigError, to_detectron2_cfg
from ugs_d2.harness.compose import compose as _compose
from ugs_d2.projects import Project, get_project, register_project
from ugs_d2.schema import TrainSchema, check_ranges, typed_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- schemas: types and ranges ------------------------------------------------------------------


def test_schema_converts_and_types_every_group():
    typed = typed_config(_compose(["schedule.base_lr=1", "model.input.min_size_train=[200]"]))
    assert typed.schedule.base_lr == 1.0 and type(typed.schedule.base_lr) is float
    assert OmegaConf.get_type(typed, "schedule") .__name__ == "ScheduleSchema"
    assert OmegaConf.get_type(typed.model, "backbone").__name__ == "BackboneSchema"
    assert list(typed.model.input.min_size_train) == [200]
    assert typed.d2 == {} and typed.tiling.tile == 512


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.max_iter=ten", "schedule.max_iter: expected an integer, got 'ten'"),
        ("seed=1.5", "seed: expected an integer, got 1.5"),
        ("schedule.base_lr=fast", "schedule.base_lr: expected a number, got 'fast'"),
        ("tiling.train.enabled=maybe", "tiling.train.enabled: expected true or false, got 'maybe'"),
        ("model.input.min_size_train=[256,big]", "model.input.min_size_train[1]: expected an integer, got 'big'"),
    ],
)
def test_wrong_types_are_one_line_naming_the_hydra_key(override, message):
    with pytest.raises(ConfigError) as info:
        typed_config(_compose([override]))
    assert str(info.value) == message


def test_unknown_and_missing_keys_are_named():
    cfg = _compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.schedule.max_iterations = 5
    with pytest.raises(ConfigError, match=r"^schedule.max_iterations: not a key of the schedule schema"):
        typed_config(cfg)
    cfg = _compose([])
    OmegaConf.set_struct(cfg, False)
    del cfg.schedule["max_iter"]
    with pytest.raises(ConfigError, match=r"^schedule.max_iter: missing from the configuration$"):
        typed_config(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.max_iter=0", "schedule.max_iter: expected a positive integer, got 0"),
        ("schedule.momentum=1.5", "schedule.momentum: expected a number in [0, 1), got 1.5"),
        ("schedule.steps=[3,2]", "schedule.steps: expected increasing positive iterations, got [3, 2]"),
        ("schedule.base_lr=nan", "schedule.base_lr: expected a finite number, got nan"),
        ("model.backbone.depth=7", "model.backbone.depth: expected 18, 34, 50, 101 or 152, got 7"),
        ("tiling.overlap=1", "tiling.overlap: expected a number in [0, 1), got 1.0"),
        ("model.anchors.sizes=[[8],[x]]", "model.anchors.sizes: expected a list of lists of numbers"),
    ],
)
def test_ranges_are_checked_in_one_table(override, message):
    with pytest.raises(ConfigError) as info:
        check_ranges(typed_config(_compose([override])))
    assert str(info.value).startswith(message), str(info.value)


# ---- the declarative bridge -----------------------------------------------------------------------


def test_every_bridge_row_names_an_existing_hydra_and_detectron2_key():
    typed = typed_config(_compose([]))
    d2 = to_detectron2_cfg(_compose([]))
    for hydra_key, d2_key, *_ in BRIDGE + RCNN_BRIDGE:
        assert OmegaConf.select(typed, hydra_key, default=KeyError) is not KeyError, hydra_key
        node = d2
        for part in d2_key.split("."):
            assert part in node, d2_key
            node = node[part]


def test_key_properties_of_the_converted_presets():
    """(The full before/after comparison of every model preset x ugs=off|full was run by hand
    against a376353's bridge: byte-identical dumps; these are the properties it relies on.)"""
    full = to_detectron2_cfg(_compose(["model=faster_rcnn_r50_fpn", "ugs=full"]), num_classes=3)
    assert full.MODEL.META_ARCHITECTURE == "UGSRCNN" and full.MODEL.RESNETS.RES2_OUT_CHANNELS == 256
    assert full.MODEL.FPN.NORM == "" and full.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert full.INPUT.MIN_SIZE_TRAIN == (800,) and full.SOLVER.STEPS == (500, 640)
    assert full.MODEL.ANCHOR_GENERATOR.SIZES == [[32.0], [64.0], [128.0], [256.0], [512.0]]
    native = to_detectron2_cfg(_compose(["input=native"]))
    assert native.INPUT.MIN_SIZE_TRAIN == (0,) and native.INPUT.RESIZE == "none"
    tiled = to_detectron2_cfg(_compose(["tiling=on"]))
    assert tiled.TILING.TILE == 128 and tiled.INPUT.MAX_SIZE_TRAIN == 128 and tiled.TILING.TEST.METRIC == "ios"
    fcos = to_detectron2_cfg(_compose(["model=fcos_r50_fpn", "ugs=full"]), num_classes=4)
    assert fcos.MODEL.META_ARCHITECTURE == "UGSFCOS" and fcos.MODEL.FCOS.NUM_CLASSES == 4
    assert fcos.MODEL.BACKBONE.NAME == "build_retinanet_resnet_fpn_backbone"
    assert fcos.MODEL.FCOS.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"] and fcos.UGS_PROJECT == "UGS_FCOS"
    cascade = to_detectron2_cfg(_compose(["model=cascade_r18_fpn"]))
    assert cascade.MODEL.ROI_HEADS.NAME == "UGSCascadeROIHeads"
    assert cascade.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS[1] == [20.0, 20.0, 10.0, 10.0]


# ---- d2.*: any detectron2 key -------------------------------------------------------------------


def test_d2_overrides_reach_the_cfgnode_through_merge_from_list():
    assert d2_overrides_as_hydra(["d2.A=1", "seed=2", "+d2.B=3"]) == ["++d2.A=1", "seed=2", "+d2.B=3"]
    d2 = to_detectron2_cfg(_compose(d2_overrides_as_hydra([
        "d2.MODEL.ROI_HEADS.POSITIVE_FRACTION=0.5", "d2.SOLVER.CLIP_GRADIENTS.NORM_TYPE=1.0",
        "d2.MODEL.RPN.IOU_THRESHOLDS=[0.2,0.8]",
    ])))
    assert d2.MODEL.ROI_HEADS.POSITIVE_FRACTION == 0.5 and d2.SOLVER.CLIP_GRADIENTS.NORM_TYPE == 1.0
    assert d2.MODEL.RPN.IOU_THRESHOLDS == [0.2, 0.8]
    assert "POSITIVE_FRACTION: 0.5" in d2.dump()  # what detectron2_config.yaml records


@pytest.mark.parametrize(
    "override, message",
    [
        ("d2.MODEL.ROI_HEADS.POSITIVE_FRACTON=0.5",
         "d2.MODEL.ROI_HEADS.POSITIVE_FRACTON: not a detectron2 config key; did you mean d2.MODEL.ROI_HEADS.POSITIVE_FRACTION"),
        ("d2.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=128",
         "d2.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE: MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE is set by model.roi.batch_size_per_image"),
        ("d2.SOLVER.CLIP_GRADIENTS.ENABLED=true",
         "d2.SOLVER.CLIP_GRADIENTS.ENABLED: SOLVER.CLIP_GRADIENTS.ENABLED is set by ugs.grad_clip_norm"),
        ("d2.MODEL.RESNETS.RES2_OUT_CHANNELS=64", "is set by model.backbone.depth"),
        ("d2.MODEL.ROI_HEADS.POSITIVE_FRACTION=half", "d2.*: "),  # detectron2's own type check
    ],
)
def test_bad_d2_overrides_fail_at_start_in_one_line(override, message):
    with pytest.raises((ConfigError, CommandLineError)) as info:
        validate_command_line([override])
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_d2_override_is_part_of_the_run_directory_name(tmp_path):
    from hydra import compose, initialize_config_dir

    from ugs_d2.cli.validate import CONFIG_DIR
    from ugs_d2.train import run_dirname  # registers the run_dirname resolver

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=d2_overrides_as_hydra(["d2.MODEL.RPN.NMS_THRESH=0.6"]),
                      return_hydra_config=True)
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    assert run_dirname(cfg.hydra.job.override_dirname) == "++d2.MODEL.RPN.NMS_THRESH=0.6"


# ---- projects registered by import --------------------------------------------------------------


def test_shipped_projects_are_registered_by_importing_their_package():
    project = get_project("UGS_RetinaNet")
    assert project.package == "ugs_retinanet" and project.node == "retinanet"
    assert sys.modules["ugs_retinanet"].PROJECT is project
    with pytest.raises(LookupError, match=r"^model.project: 'UGS_Nothing' is not a registered project"):
        get_project("UGS_Nothing")


def test_setup_cfg_installs_every_package_and_announces_the_projects():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    listed = set(parser["options"]["packages"].split())
    on_disk = {os.path.relpath(root, REPO).replace(os.sep, ".")
               for root, _, files in os.walk(os.path.join(REPO, "ugs_d2")) if "__init__.py" in files}
    assert on_disk <= listed
    mapped = dict(line.split(" = ") for line in parser["options"]["package_dir"].strip().splitlines())
    points = dict(line.split(" = ") for line in parser["options.entry_points"]["ugs_d2.projects"].strip().splitlines())
    for name, package in points.items():
        assert os.path.isfile(os.path.join(REPO, mapped[package], "__init__.py")), name
        assert get_project(name).package == package


def _fake_project_module(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def test_a_project_with_a_schema_node_and_rows(monkeypatch):
    """A new detector: its model.<node> is typed, its rows and checks apply, its d2 keys are owned."""
    from dataclasses import dataclass

    @dataclass
    class ToySchema:
        num_convs: int = 2

    def add_config(d2):
        from detectron2.config import CfgNode

        d2.MODEL.TOY = CfgNode({"NUM_CONVS": 4})

    def finish(typed, d2, num_classes):
        d2.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"

    monkeypatch.delitem(sys.modules, "ugs_toy", raising=False)
    register_project(Project(
        name="UGS_Toy", package="ugs_toy", node="toy", schema=ToySchema,
        bridge=(("model.toy.num_convs", "MODEL.TOY.NUM_CONVS"),),
        checks=(("model.toy.num_convs", lambda v: v >= 1, "a positive integer"),),
        add_config=add_config, finish=finish,
    ))
    base = ["model=fcos_r18_fpn", "~model.fcos", "model.project=UGS_Toy", "+model.toy.num_convs=3"]
    assert to_detectron2_cfg(_compose(base)).MODEL.TOY.NUM_CONVS == 3
    with pytest.raises(ConfigError, match=r"^model.toy.num_convs: expected an integer, got 'x'$"):
        to_detectron2_cfg(_compose(base[:-1] + ["+model.toy.num_convs=x"]))
    with pytest.raises(ConfigError, match=r"^model.toy.num_convs: expected a positive integer, got 0$"):
        to_detectron2_cfg(_compose(base[:-1] + ["+model.toy.num_convs=0"]))
    with pytest.raises(ConfigError, match=r"^d2.MODEL.TOY.NUM_CONVS: .* set by model.toy.num_convs"):
        to_detectron2_cfg(_compose(base + ["++d2.MODEL.TOY.NUM_CONVS=5"]))


def test_a_package_with_only_the_older_from_hydra_hook_still_works(monkeypatch):
    """The adapter for a project written against from_hydra(cfg, d2, get, num_classes)."""
    from ugs_d2.config import value_types as vt

    def from_hydra(cfg, d2, get, num_classes):
        d2.MODEL.RETINANET.NUM_CONVS = get("model.legacy.num_convs", vt.integer)
        d2.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"

    monkeypatch.setitem(sys.modules, "ugs_legacy", _fake_project_module("ugs_legacy", from_hydra=from_hydra))
    base = ["model=fcos_r18_fpn", "~model.fcos", "model.project=UGS_Legacy"]
    d2 = to_detectron2_cfg(_compose(base + ["+model.legacy.num_convs=3"]))
    assert d2.MODEL.RETINANET.NUM_CONVS == 3 and d2.UGS_PROJECT == "UGS_Legacy"
    with pytest.raises(ConfigError, match=r"^model.legacy.num_convs: expected an integer, got 'x'$"):
        to_detectron2_cfg(_compose(base + ["+model.legacy.num_convs=x"]))
    with pytest.raises(ConfigError, match=r"^d2.MODEL.RETINANET.NUM_CONVS: .*set by the bridge"):
        to_detectron2_cfg(_compose(base + ["+model.legacy.num_convs=3", "++d2.MODEL.RETINANET.NUM_CONVS=2"]))


def test_schemas_are_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    from ugs_d2.schema import register_schemas

    register_schemas()
    stored = ConfigStore.instance().list("schema")
    assert {"ugs_train.yaml", "model.yaml", "schedule.yaml", "ugs.yaml"} <= set(stored)
    assert TrainSchema.__dataclass_fields__["d2"].type.__origin__ is dict


def test_ugs_train_records_a_d2_override(tiny_dataset, tmp_path):
    """End to end: the plain d2.KEY=VALUE form trains, lands in detectron2_config.yaml and names
    the run directory."""
    import yaml
    from conftest import TINY_RUN, run_ugs_train

    proc = run_ugs_train(
        [*TINY_RUN, "wandb.enabled=false", f"dataset.root={tiny_dataset}", "d2.MODEL.ROI_HEADS.POSITIVE_FRACTION=0.5",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "run" / "detectron2_config.yaml") as f:
        assert yaml.safe_load(f)["MODEL"]["ROI_HEADS"]["POSITIVE_FRACTION"] == 0.5
    overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    assert "++d2.MODEL.ROI_HEADS.POSITIVE_FRACTION=0.5" in overrides
