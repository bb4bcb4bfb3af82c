"""The installed stack: detectron2 imports (fallback or full build) and one training step runs."""
import torch


def test_detectron2_imports_and_reports_its_build():
    from ugs_d2 import compat

    line = compat.describe_detectron2()
    assert "detectron2" in line and compat.DETECTRON2_VERSION in line
    assert compat.coco_evaluator_kwargs() == {"use_fast_impl": compat.HAS_COMPILED_OPS}
    build = compat.detectron2_build()
    assert build["kind"] in line and build["compiled_ops"] == compat.HAS_COMPILED_OPS
    if build["kind"] == "registry fallback":
        assert build["distribution"] == "pb1-detectron2" and not build["compiled_ops"]
        assert build["source"] is None and build["commit"] is None
    else:
        assert build["distribution"] == "detectron2" and build["source"], build


def test_a_source_build_reports_the_commit_the_installer_recorded():
    """launch/install.sh records D2_SOURCE (and D2_ORIGIN, D2_COMMIT) next to the environment's
    python; CI's upstream environment is built from the vendored tarball's commit."""
    import json
    import os
    import sys

    import pytest

    from ugs_d2 import compat

    record = os.path.join(sys.prefix, compat.SOURCE_RECORD)
    if compat.detectron2_build()["kind"] != "source build" or not os.path.isfile(record):
        pytest.skip("detectron2 was not built from a D2_SOURCE by launch/install.sh")
    with open(record) as f:
        recorded = json.load(f)
    build = compat.detectron2_build()
    assert build["source"] == (recorded["origin"] or recorded["source"])
    assert build["commit"] == recorded["commit"]
    if build["commit"]:
        assert build["commit"][:9] in compat.describe_detectron2()


def test_fallback_placeholder_names_the_missing_op():
    from ugs_d2 import compat

    if compat.HAS_COMPILED_OPS:
        return  # full build: the ops exist, nothing to check
    from detectron2 import _C

    try:
        _C.nms_rotated
    except NotImplementedError as e:
        assert "nms_rotated" in str(e) and "D2_SOURCE" in str(e)
    else:
        raise AssertionError("the placeholder must raise on a missing op")


def test_voc_evaluation_runs_on_this_numpy(tmp_path):
    """detectron2's VOC AP code (np.bool in 0.6) must run on the installed numpy."""
    from detectron2.evaluation.pascal_voc_evaluation import voc_eval

    annotations = tmp_path / "Annotations"
    annotations.mkdir()
    (annotations / "img1.xml").write_text(
        "<annotation><object><name>car</name><pose>Left</pose><truncated>0</truncated>"
        "<difficult>0</difficult><bndbox>"
        "<xmin>10</xmin><ymin>10</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "ids.txt").write_text("img1\n")
    (tmp_path / "det_car.txt").write_text("img1 0.9 10 10 50 40\nimg1 0.3 100 100 120 120\n")
    rec, prec, ap = voc_eval(
        str(tmp_path / "det_{}.txt"),
        str(annotations / "{}.xml"),
        str(tmp_path / "ids.txt"),
        "car",
        ovthresh=0.5,
        use_07_metric=False,
    )
    assert ap == 1.0


def test_one_training_step_runs(tiny_dataset):
    from conftest import TINY_RUN
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from omegaconf import OmegaConf

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.data.datasets import register_dataset
    from ugs_d2.harness.compose import compose as _compose

    cfg = _compose(TINY_RUN + [f"dataset.root={tiny_dataset}"])
    register_dataset(cfg.dataset)
    d2_cfg = to_detectron2_cfg(cfg, num_classes=6)
    model = build_model(d2_cfg)
    loader = build_detection_train_loader(d2_cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    trainer = SimpleTrainer(model, loader, optimizer)
    trainer.train(0, 1)
    assert OmegaConf.select(cfg, "dataset.name") == "synth"
