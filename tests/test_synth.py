"""The embedded synthetic dataset: deterministic, small objects, valid COCO, and its CLI."""
import json
import os

import pytest

from ugs_d2.cli.data import main as ugs_data
from ugs_d2.data import synth


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    config = synth.SynthConfig(image_size=128)
    a = synth.generate(tmp_path / "a", 4, 2, seed=3, config=config, progress=False)
    b = synth.generate(tmp_path / "b", 4, 2, seed=3, config=config, progress=False)
    c = synth.generate(tmp_path / "c", 4, 2, seed=4, config=config, progress=False)
    for key in ("train_json", "val_json", "config"):
        assert _read(a[key]) == _read(b[key]), key
    assert _read(a["train_json"]) != _read(c["train_json"])
    for name in sorted(os.listdir(a["train_images"])):
        assert _read(os.path.join(a["train_images"], name)) == _read(os.path.join(b["train_images"], name))


def test_an_image_does_not_depend_on_the_split_size(tmp_path):
    config = synth.SynthConfig(image_size=128)
    small = synth.generate(tmp_path / "small", 2, 1, seed=0, config=config, progress=False)
    large = synth.generate(tmp_path / "large", 5, 3, seed=0, config=config, progress=False)
    assert _read(os.path.join(small["train_images"], "000002.png")) == _read(
        os.path.join(large["train_images"], "000002.png")
    )


def test_objects_are_small_valid_and_images_sometimes_empty(tmp_path):
    paths = synth.generate(tmp_path / "d", 40, 0, seed=0, progress=False)
    stats = synth.dataset_statistics(paths["train_json"])
    assert stats["frac_max_side_lt32"] >= 0.8, stats
    assert stats["frac_max_side_lt16"] >= 0.25, stats
    assert stats["area_buckets"]["large"] == 0
    assert all(count > 0 for count in stats["per_class"].values()), stats
    with open(paths["train_json"]) as f:
        coco = json.load(f)
    category_ids = {c["id"] for c in coco["categories"]}
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= width + 1e-6 and y + h <= height + 1e-6
        assert ann["category_id"] in category_ids
    for img in coco["images"]:
        assert os.path.isfile(os.path.join(paths["train_images"], img["file_name"]))
    empty = synth.generate(
        tmp_path / "e", 3, 0, seed=0, config=synth.SynthConfig(image_size=128, empty_fraction=1.0), progress=False
    )
    assert synth.dataset_statistics(empty["train_json"])["num_annotations"] == 0


def test_cli_writes_the_dataset_and_prints_statistics(tmp_path, capsys):
    out = tmp_path / "synth"
    ugs_data(["synth", "--out", str(out), "--train", "4", "--val", "2", "--seed", "0", "--image-size", "128"])
    assert (out / "annotations" / "train.json").is_file() and (out / "annotations" / "val.json").is_file()
    assert len(os.listdir(out / "val")) == 2
    printed = capsys.readouterr().out
    assert "train: 4 images" in printed and "val: 2 images" in printed
    with pytest.raises(SystemExit, match="already holds a dataset .*--force"):
        ugs_data(["synth", "--out", str(out), "--train", "1", "--val", "1"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train", "-1"], None),  # argparse: exit code 2 and a usage line
        (["--image-size", "32"], "image_size must be >= 64"),
    ],
)
def test_cli_rejects_bad_numbers(tmp_path, argv, message):
    with pytest.raises(SystemExit) as info:
        ugs_data(["synth", "--out", str(tmp_path / "x"), *argv])
    if message is None:
        assert info.value.code == 2
    else:
        assert message in str(info.value.code) and "\n" not in str(info.value.code)


def test_cli_names_an_output_that_is_a_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("")
    with pytest.raises(SystemExit, match=f"--out {target} exists and is not a directory"):
        ugs_data(["synth", "--out", str(target)])
