"""Resolution presets (``input=<name>``) and the ``augment:`` block through the Hydra -> detectron2
bridge, and what the mapper then feeds the model."""
import json
import os

import numpy as np
import pytest
from conftest import TINY_RUN
from detectron2.data import DatasetMapper
from PIL import Image

from ugs_d2.config import ConfigError, to_detectron2_cfg
from ugs_d2.data.augment import RandomRotationWithBoxes, SmallObjectSafeCrop
from ugs_d2.data.datasets import load_coco_detection
from ugs_d2.data.mapper import AugmentingDatasetMapper, needs_augmenting_mapper
from ugs_d2.harness.compose import compose as _compose

# preset -> (MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TEST, MAX_SIZE_TEST, RESIZE) with the default model
EXPECTED = {
    "default": ((256,), 256, 256, 256, "shortest_edge"),
    "paper_1333x800": ((800,), 1333, 800, 1333, "shortest_edge"),
    "native": ((0,), 256, 0, 256, "none"),
    "multiscale_synth": ((192, 224, 256, 288, 320), 320, 256, 256, "shortest_edge"),
    "synth_2x": ((512,), 512, 512, 512, "shortest_edge"),
}


def _d2(overrides):
    return to_detectron2_cfg(_compose(overrides), num_classes=2)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_input_preset_composes_and_converts(preset):
    d2 = _d2([f"input={preset}"])
    got = (tuple(d2.INPUT.MIN_SIZE_TRAIN), d2.INPUT.MAX_SIZE_TRAIN, d2.INPUT.MIN_SIZE_TEST,
           d2.INPUT.MAX_SIZE_TEST, d2.INPUT.RESIZE)
    assert got == EXPECTED[preset]
    assert d2.INPUT.RANDOM_FLIP == "horizontal"
    assert needs_augmenting_mapper(d2) == (preset == "native")


def test_paper_preset_on_the_r50_model_and_default_keeps_the_model_sizes():
    r50 = _d2(["model=faster_rcnn_r50_fpn"])  # input=default: the model preset's own sizes
    assert (tuple(r50.INPUT.MIN_SIZE_TRAIN), r50.INPUT.MAX_SIZE_TRAIN) == ((800,), 1333)
    tiny_paper = _d2(["input=paper_1333x800"])
    assert (tiny_paper.INPUT.MIN_SIZE_TEST, tiny_paper.INPUT.MAX_SIZE_TEST) == (800, 1333)


def _image_dataset(root, sizes):
    """PNGs of the given (h, w) with one box each; returns detectron2 dataset dicts."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes, start=1):
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(os.path.join(root, "images", f"{i}.png"))
        coco["images"].append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                                    "bbox": [5, 6, 20, 10]})
    with open(os.path.join(root, "train.json"), "w") as f:
        json.dump(coco, f)
    return load_coco_detection(os.path.join(root, "train.json"), os.path.join(root, "images"))


def test_native_feeds_images_at_their_own_size(tmp_path):
    records = _image_dataset(str(tmp_path), [(100, 150), (300, 90)])
    # TINY_RUN's 128-px sizes are still on the command line: resize=none ignores them
    d2 = _d2(TINY_RUN + ["input=native"])
    train = AugmentingDatasetMapper(d2, True)
    test = DatasetMapper(d2, False)  # detectron2's own test mapper: size 0 = no resize
    for record in records:
        for mapper in (train, test):
            out = mapper(record)
            assert tuple(out["image"].shape) == (3, record["height"], record["width"])
        np.testing.assert_allclose(train(record)["instances"].gt_boxes.tensor.numpy()[0][[1, 3]], [6, 16])
    # under the default preset the same 100x150 image is resized: shortest side 128 would make
    # the long side 192 > max 128, so the long side becomes 128 and the short one 128 * 100/150
    resized = AugmentingDatasetMapper(_d2(TINY_RUN), True)(records[0])
    assert tuple(resized["image"].shape[1:]) == (85, 128)


def test_default_config_is_unchanged_detectron2(tmp_path):
    d2 = _d2([])
    assert not needs_augmenting_mapper(d2)  # the trainer keeps detectron2's own loader
    assert (d2.AUGMENT.MOSAIC.PROB, d2.AUGMENT.CROP.PROB, d2.AUGMENT.ROTATION.PROB) == (0.0, 0.0, 0.0)
    # and our mapper with everything off maps exactly like DatasetMapper (same random draws)
    records = _image_dataset(str(tmp_path), [(100, 150), (300, 90), (64, 64)])
    ours, theirs = AugmentingDatasetMapper(d2, True), DatasetMapper(d2, True)
    for seed, record in enumerate(records * 3):
        np.random.seed(seed)
        a = ours(record)
        np.random.seed(seed)
        b = theirs(record)
        assert a["image"].equal(b["image"])
        assert a["instances"].gt_boxes.tensor.equal(b["instances"].gt_boxes.tensor)


def test_small_objects_preset_turns_on_all_three():
    d2 = _d2(["augment=small_objects"])
    assert needs_augmenting_mapper(d2)
    assert (d2.AUGMENT.MOSAIC.PROB, d2.AUGMENT.CROP.PROB, d2.AUGMENT.ROTATION.PROB) == (0.5, 0.33, 0.33)
    mapper = AugmentingDatasetMapper(d2, True, dataset_dicts=[{"file_name": "x", "annotations": []}])
    kinds = [type(a) for a in mapper.augmentations.augs]
    assert kinds[:2] == [SmallObjectSafeCrop, RandomRotationWithBoxes]  # before resize and flip
    assert mapper.mosaic is not None and mapper.mosaic.prob == 0.5
    assert not AugmentingDatasetMapper(d2, False).mosaic  # never at test time


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.input.resize=bogus", "model.input.resize: expected shortest_edge or none, got 'bogus'"),
        ("augment.crop.prob=1.5", "augment.crop.prob: expected a value in [0, 1], got 1.5"),
        ("augment.crop.size=[0,0.5]", "augment.crop.size: expected [height, width] as fractions in (0, 1]"),
        ("augment.mosaic.size=[256]", "augment.mosaic.size: expected null or [height, width] in px"),
        ("augment.rotation.max_angle=270", "augment.rotation.max_angle: expected a value in [0, 180]"),
        ("augment.mosaic.center_range=[0.8,0.2]", "augment.mosaic.center_range: expected [low, high]"),
        ("augment.crop.size_type=pixels", "augment.crop.size_type: expected relative or absolute"),
    ],
)
def test_bad_values_fail_in_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        _d2([override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
