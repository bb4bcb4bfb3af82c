"""The Hydra -> detectron2 bridge and the command-line checks of ugs-train."""
import pytest

from ugs_d2.cli.validate import CommandLineError, validate_command_line
from ugs_d2.config import ConfigError, to_detectron2_cfg
from ugs_d2.harness.compose import compose as _compose


def test_defaults_compose_and_convert():
    d2 = to_detectron2_cfg(_compose([]))
    assert d2.MODEL.RESNETS.DEPTH == 18
    assert d2.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
    assert d2.DATASETS.TRAIN == ("synth_train",) and d2.DATASETS.TEST == ("synth_test",)
    assert d2.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert d2.MODEL.DEVICE in ("cpu", "cuda")
    assert d2.is_frozen()


@pytest.mark.parametrize(
    "override, path, expected",
    [
        ("schedule.max_iter=123", "SOLVER.MAX_ITER", 123),
        ("schedule.base_lr=0.005", "SOLVER.BASE_LR", 0.005),
        ("schedule.base_lr=1", "SOLVER.BASE_LR", 1.0),  # an int where a float is expected is fine
        ("model.backbone.depth=50", "MODEL.RESNETS.RES2_OUT_CHANNELS", 256),
        ("model.input.min_size_train=[224,256]", "INPUT.MIN_SIZE_TRAIN", (224, 256)),
        ("model.anchors.sizes=[[4],[8],[16],[32],[64]]", "MODEL.ANCHOR_GENERATOR.SIZES", [[4.0], [8.0], [16.0], [32.0], [64.0]]),
        ("seed=7", "SEED", 7),
        ("device=cpu", "MODEL.DEVICE", "cpu"),
        ("model=faster_rcnn_r50_fpn", "INPUT.MAX_SIZE_TEST", 1333),
        ("schedule.checkpoints_to_keep=3", "SOLVER.CHECKPOINTS_TO_KEEP", 3),
        ("schedule=1x", "SOLVER.CHECKPOINTS_TO_KEEP", 0),  # keep all, as detectron2
        ("schedule=smoke", "SOLVER.CHECKPOINTS_TO_KEEP", 2),
    ],
)
def test_override_reaches_cfgnode_with_its_type(override, path, expected):
    d2 = to_detectron2_cfg(_compose([override]))
    value = d2
    for part in path.split("."):
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_ugs_presets_set_the_architecture():
    full = to_detectron2_cfg(_compose(["ugs=full"]))
    assert full.MODEL.META_ARCHITECTURE == "UGSRCNN"
    assert full.MODEL.UGS.RPN.ENABLED and full.MODEL.UGS.ROI.ENABLED
    assert full.MODEL.UGS.UR_WEIGHT == 0.5 and full.MODEL.UGS.UM_WEIGHT == 0.5
    uniform = to_detectron2_cfg(_compose(["ugs=ce_uniform"]))
    assert uniform.MODEL.UGS.RPN.MODULATOR == 0.0
    clip = to_detectron2_cfg(_compose(["ugs=grad_clip"]))
    assert clip.SOLVER.CLIP_GRADIENTS.ENABLED and clip.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["schedule.max_iterr=10"], "unknown override key 'schedule.max_iterr'; did you mean schedule.max_iter"),
        (["seeed=1"], "did you mean seed"),
        (["schedule.max_iter=ten"], "schedule.max_iter: expected an integer, got 'ten'"),
        (["schedule.base_lr=fast"], "schedule.base_lr: expected a number, got 'fast'"),
        (["-m", "seed=0,x"], "seed: expected an integer, got 'x'"),
        (["ugs.rpn.range=-1"], "ugs.rpn.range"),
        (["ugs.roi.num_intervals=0"], "ugs.roi.num_intervals"),
        (["ugs.um_weight=-0.5"], "ugs.um_weight"),
        (["device=tpu"], "device: expected auto, cpu or cuda"),
        (["schedule.checkpoints_to_keep=-1"], "schedule.checkpoints_to_keep: expected an integer >= 0"),
    ],
)
def test_bad_overrides_fail_in_one_line_naming_the_key(argv, message):
    with pytest.raises((CommandLineError, ConfigError)) as info:
        validate_command_line(argv)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_unwritable_output_directory_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file
            target = tmp_path / "a_file"
            target.write_text("")
            target = target / "run"
        else:
            target = locked / "run"
        with pytest.raises(CommandLineError, match="^hydra.run.dir: output directory .* cannot be written") as info:
            validate_command_line([f"hydra.run.dir={target}"])
        assert str(target) in str(info.value) and "is not a writable directory" in str(info.value)
    finally:
        locked.chmod(0o700)


def test_help_and_sweeps_are_accepted():
    assert validate_command_line(["--help"]) is None
    cfg = validate_command_line(["-m", "seed=0,1", "ugs=off,full"])
    assert cfg.seed == 0 and cfg.ugs.ur_weight == 0.0


def test_with_hydra_keys_names_hydra_keys_in_messages():
    from ugs_d2.config import with_hydra_keys

    assert with_hydra_keys("MODEL.UGS.UM_WEIGHT > 0 needs MODEL.UGS.RPN.ENABLED.") == (
        "ugs.um_weight > 0 needs ugs.rpn.enabled."
    )
    renames = [("MODEL.FCOS.UGS_RANGE_SCALE", "model.fcos.range_scale")]
    assert with_hydra_keys("MODEL.FCOS.UGS_RANGE_SCALE must be > 0", renames) == "model.fcos.range_scale must be > 0"
