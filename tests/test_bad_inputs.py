"""Bad inputs through the real command lines: each one ends with one line naming the file, field
or override, a non-zero exit code, no traceback, and nothing half-written.

The command lines run in forked processes of one interpreter (tests/cli_batch.py), so that the
~5 s import of torch + detectron2 is paid once per batch, not once per case; each case is still
its own process calling the console script's ``main()``.
"""
import json
import os
import shutil

import pytest
import torch
from cli_batch import run_batch
from conftest import TINY_RUN, run_ugs_train

TRAIN = "ugs_d2.train"
PREDICT = "ugs_d2.cli.predict"
ANCHORS = "ugs_d2.cli.anchors"


def _last_line(proc):
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_line_failure(proc, prog, *expected, rc=1):
    """Exit code, no traceback anywhere, and the last stderr line: ``prog: ...`` naming it."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"rc={proc.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    last = _last_line(proc)
    assert last.startswith(f"{prog}: "), last
    for text in expected:
        assert text in last, f"{text!r} not in {last!r}"
    return last


def _copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(root, split, edit):
    path = os.path.join(root, "annotations", f"{split}.json")
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _train_args(root, run_dir, *extra):
    return TINY_RUN + [f"dataset.root={root}", f"hydra.run.dir={run_dir}", *extra]


def _nothing_written(run_dir):
    return not os.path.exists(os.path.join(run_dir, "results.json")) and not os.path.exists(
        os.path.join(run_dir, "done")
    )


# -- ugs-train: command-line values and datasets (fail before or at the first iteration) -------

def _set_bbox(value):
    def edit(data):
        for ann in data["annotations"]:
            ann["bbox"][0] = value
    return edit


def _image_field(key, value):
    def edit(data):
        data["images"][0][key] = value
    return edit


def _duplicate_annotation_id(data):
    data["annotations"][1]["id"] = data["annotations"][0]["id"]


def _no_boxes(data):
    data["annotations"] = []


def _crowd_only(data):
    for ann in data["annotations"]:
        ann["iscrowd"] = 1


def _claim_size(width, height):
    def edit(data):
        data["images"][0]["width"], data["images"][0]["height"] = width, height
    return edit


def _replace_first_image(content):
    def prepare(root):
        with open(os.path.join(root, "annotations", "train.json")) as f:
            first = json.load(f)["images"][0]["file_name"]
        with open(os.path.join(root, "train", first), "wb") as f:
            f.write(content)
        return os.path.join(root, "train", first)
    return prepare


def _truncate_first_image(root):
    """The first training image cut in half: its header (and so its size) reads fine, decoding fails."""
    with open(os.path.join(root, "annotations", "train.json")) as f:
        first = json.load(f)["images"][0]["file_name"]
    path = os.path.join(root, "train", first)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


# (id, overrides or None, json edit of train.json or None, image preparation or None, expected)
TRAIN_CASES = [
    ("negative_lr", ["schedule.base_lr=-0.01"], None, None, ["schedule.base_lr", "-0.01"]),
    ("nan_lr", ["schedule.base_lr=nan"], None, None, ["schedule.base_lr", "finite"]),
    ("inf_lr", ["schedule.base_lr=inf"], None, None, ["schedule.base_lr", "finite"]),
    ("momentum_1.5", ["schedule.momentum=1.5"], None, None, ["schedule.momentum", "[0, 1)"]),
    ("negative_weight_decay", ["schedule.weight_decay=-1"], None, None, ["schedule.weight_decay"]),
    ("decreasing_steps", ["schedule.steps=[3,2]"], None, None, ["schedule.steps", "[3, 2]"]),
    ("negative_warmup", ["schedule.warmup_iters=-1"], None, None, ["schedule.warmup_iters"]),
    ("negative_eval_period", ["schedule.eval_period=-5"], None, None, ["schedule.eval_period"]),
    ("nan_grad_clip", ["ugs.grad_clip_norm=nan"], None, None, ["ugs.grad_clip_norm", "finite"]),
    ("missing_weights", ["model.weights=/nonexistent/model.pth"], None, None,
     ["model.weights", "/nonexistent/model.pth", "not found"]),
    ("nan_box", None, _set_bbox(float("nan")), None, ["train.json", "annotations[0].bbox", "finite"]),
    ("inf_box", None, _set_bbox(float("inf")), None, ["train.json", "annotations[0].bbox", "finite"]),
    ("string_coordinate", None, _set_bbox("10"), None, ["annotations[0].bbox", "'10'"]),
    ("string_width", None, _image_field("width", "128"), None, ["images[0].width", "'128'"]),
    ("fractional_height", None, _image_field("height", 127.5), None, ["images[0].height"]),
    ("duplicate_annotation_id", None, _duplicate_annotation_id, None,
     ["annotations[1] repeats annotation id"]),
    ("nan_box_in_val", None, ("val", _set_bbox(float("nan"))), None, ["val.json", "annotations[0].bbox"]),
    ("no_usable_box", None, _no_boxes, None, ["train.json", "no usable box"]),
    ("crowd_only", None, _crowd_only, None, ["train.json", "no usable box"]),
    ("zero_byte_image", None, None, _replace_first_image(b""), ["000001.png", "unreadable image"]),
    ("not_an_image", None, None, _replace_first_image(b"this is not a png\n"),
     ["000001.png", "unreadable image"]),
    ("truncated_image", None, None, _truncate_first_image, ["000001.png", "unreadable image", "truncated"]),
    ("json_lies_about_size", None, _claim_size(96, 128), None,
     ["000001.png", "image is 128x128", "96x128"]),
    ("json_claims_gigantic", None, _claim_size(5000, 5000), None,
     ["000001.png", "image is 128x128", "5000x5000"]),
]


@pytest.fixture(scope="module")
def train_failures(tiny_dataset, tmp_path_factory):
    """Every TRAIN_CASES command line run once: {case id: (proc, run_dir, prepared file)}."""
    base = tmp_path_factory.mktemp("bad_train")
    jobs, where = [], {}
    for case, overrides, edit, prepare, _ in TRAIN_CASES:
        root = tiny_dataset
        prepared = None
        if edit is not None or prepare is not None:
            root = _copy_dataset(tiny_dataset, str(base / f"data_{case}"))
            if edit is not None:
                split, edit = edit if isinstance(edit, tuple) else ("train", edit)
                _edit_json(root, split, edit)
            if prepare is not None:
                prepared = prepare(root)
        run_dir = base / f"run_{case}"
        jobs.append((TRAIN, _train_args(root, run_dir, *(overrides or [])), base))
        where[case] = (run_dir, prepared)
    procs = run_batch(jobs)
    return {case: (proc, *where[case]) for (case, *_), proc in zip(TRAIN_CASES, procs)}


@pytest.mark.parametrize("case,expected", [(c[0], c[4]) for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_ugs_train_bad_input_is_one_line(train_failures, case, expected):
    proc, run_dir, _ = train_failures[case]
    last = assert_one_line_failure(proc, "ugs-train", *expected)
    assert _nothing_written(run_dir), last
    if case == "json_claims_gigantic":  # the size check comes first, not the tiling hint
        assert "ugs-tile" not in proc.stdout + proc.stderr


def test_misspelled_dataset_root_is_not_generated(tmp_path):
    """A typo'd root of the synthetic preset is an error, not a new 136 MB dataset there."""
    typo = tmp_path / "datasets" / "synht"
    (tmp_path / "a_file").write_text("x")
    procs = run_batch([
        (TRAIN, TINY_RUN + [f"dataset.root={typo}", f"hydra.run.dir={tmp_path}/run"], tmp_path),
        (TRAIN, TINY_RUN + [f"dataset.root={tmp_path / 'a_file'}", f"hydra.run.dir={tmp_path}/run2"], tmp_path),
        (TRAIN, TINY_RUN + [f"model.weights={tmp_path}", f"hydra.run.dir={tmp_path}/run3"], tmp_path),
    ])
    assert_one_line_failure(procs[0], "ugs-train", "dataset.root", str(typo), "ugs-data synth --out")
    assert not typo.exists() and not (tmp_path / "datasets").exists()
    assert_one_line_failure(procs[1], "ugs-train", "dataset.root", "is a file")
    assert_one_line_failure(procs[2], "ugs-train", "model.weights", "is a directory")


def test_ugs_anchors_levels_in_the_wrong_order(tmp_path):
    json_file = tmp_path / "a.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    proc = run_batch([(ANCHORS, [json_file, "--levels", "p9..p2"], tmp_path)])[0]
    assert_one_line_failure(proc, "ugs-anchors", "--levels", "p9..p2", "downwards", "p2..p9")


# -- weights and checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """A finished tiny run (checkpoints at iterations 1 and 3, model_final.pth)."""
    base = tmp_path_factory.mktemp("trained")
    run_dir = base / "run"
    proc = run_ugs_train(_train_args(tiny_dataset, run_dir), cwd=str(base))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def _weights_files(run_dir, where):
    """Bad weight files: text, truncated, another model's state dict, a backbone-only dict."""
    final = torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=False)
    files = {}
    files["text"] = where / "notes.pth"
    files["text"].write_text("not a checkpoint\n")
    files["truncated"] = where / "truncated.pth"
    files["truncated"].write_bytes((run_dir / "model_final.pth").read_bytes()[:5000])
    files["other_model"] = where / "classifier.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, files["other_model"])
    files["other_shape"] = where / "wide.pth"
    wide = {k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.startswith("backbone.fpn") and v.dim() else v)
            for k, v in final["model"].items()}
    torch.save({"model": wide}, files["other_shape"])
    files["backbone_only"] = where / "backbone.pth"
    torch.save({"model": {k: v for k, v in final["model"].items() if k.startswith("backbone.")}}, files["backbone_only"])
    return files


def test_bad_weights_are_one_line(trained_run, tiny_dataset, tmp_path):
    files = _weights_files(trained_run, tmp_path)
    cases = [
        ("text", [], ["notes.pth", "not a readable checkpoint"]),
        ("truncated", [], ["truncated.pth", "not a readable checkpoint"]),
        ("other_model", [], ["classifier.pth", "no parameter of the model", "conv1.weight"]),
        ("other_shape", [], ["wide.pth", "another shape", "backbone.fpn"]),
        ("backbone_only", ["eval_only=true"], ["backbone.pth", "does not match the model", "missing"]),
    ]
    jobs = [(TRAIN, _train_args(tiny_dataset, tmp_path / f"run_{name}", f"model.weights={files[name]}", *extra), tmp_path)
            for name, extra, _ in cases]
    jobs.append((TRAIN, _train_args(tiny_dataset, tmp_path / "run_eval", "eval_only=true"), tmp_path))
    # tolerated: a backbone-only checkpoint as the initial weights of a training run
    jobs.append((TRAIN, _train_args(tiny_dataset, tmp_path / "run_ok", f"model.weights={files['backbone_only']}"), tmp_path))
    procs = run_batch(jobs)
    for (name, _, expected), proc in zip(cases, procs):
        assert_one_line_failure(proc, "ugs-train", *expected)
        assert _nothing_written(tmp_path / f"run_{name}")
    assert_one_line_failure(procs[-2], "ugs-train", "eval_only", "nothing to evaluate", "model.weights")
    ok = procs[-1]
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    log = (tmp_path / "run_ok" / "log.txt").read_text()
    assert "backbone.pth: loaded" in log and "start from their initialisation" in log


def test_ugs_predict_refuses_bad_or_mismatched_weights(trained_run, tiny_dataset, tmp_path):
    files = _weights_files(trained_run, tmp_path)
    images = os.path.join(tiny_dataset, "val")
    cases = [
        ("missing", tmp_path / "absent.pth", ["absent.pth", "not found"]),
        ("text", files["text"], ["notes.pth", "not a readable checkpoint"]),
        ("other_shape", files["other_shape"], ["wide.pth", "does not match the model", "another shape"]),
        ("backbone_only", files["backbone_only"], ["backbone.pth", "does not match the model", "missing"]),
    ]
    jobs = [(PREDICT, [trained_run, images, "--out", tmp_path / f"{name}.json", "--weights", weights, "--device", "cpu"], tmp_path)
            for name, weights, _ in cases]
    (tmp_path / "a_file").write_text("x")
    usage = [
        (["--out", tmp_path / "zero.json", "--tiled", "--max-detections", "0"], ["--max-detections", "positive"]),
        (["--out", tmp_path / "untiled.json", "--max-detections", "5"], ["--max-detections", "--tiled"]),
        (["--out", tmp_path], ["--out", "exists and is not a file name"]),
        (["--out", tmp_path / "a_file" / "dets.json"], ["--out", "not a writable directory"]),
        (["--out", tmp_path / "v.json", "--vis", tmp_path / "a_file"], ["--vis", "exists and is not a directory"]),
    ]
    jobs += [(PREDICT, [trained_run, images, *argv], tmp_path) for argv, _ in usage]
    jobs.append((PREDICT, [trained_run, tmp_path / "no_images_here", "--out", tmp_path / "n.json"], tmp_path))
    procs = run_batch(jobs)
    for (name, _, expected), proc in zip(cases, procs):
        assert_one_line_failure(proc, "ugs-predict", *expected)
        assert not (tmp_path / f"{name}.json").exists()
    for (_, expected), proc in zip(usage, procs[len(cases):]):
        assert_one_line_failure(proc, "ugs-predict", *expected)
    assert_one_line_failure(procs[-1], "ugs-predict", "no_images_here", "no such image file or directory")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".json")]


def test_truncated_last_checkpoint_falls_back_to_an_intact_one(trained_run, tiny_dataset, tmp_path):
    """last_checkpoint names a truncated file: resume from the newest intact one (a warning
    names the broken file); with no intact one, train from the start."""
    one, two = tmp_path / "one", tmp_path / "two"
    for run, keep in ((one, ["model_0000001.pth"]), (two, [])):
        run.mkdir()
        for name in keep:
            shutil.copy(trained_run / name, run / name)
        (run / "model_0000003.pth").write_bytes((trained_run / "model_0000003.pth").read_bytes()[:4096])
        (run / "last_checkpoint").write_text("model_0000003.pth")
    procs = run_batch([
        (TRAIN, _train_args(tiny_dataset, one), tmp_path),
        (TRAIN, _train_args(tiny_dataset, two), tmp_path),
    ])
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Traceback" not in proc.stdout + proc.stderr
    log_one = (one / "log.txt").read_text()
    assert f"{one / 'model_0000003.pth'}: not a readable checkpoint" in log_one
    assert f"resuming from {one / 'model_0000001.pth'}, the newest intact checkpoint" in log_one
    assert "continuing at iteration 2" in log_one
    assert "no intact checkpoint beside it: training from the start" in (two / "log.txt").read_text()
    for run in (one, two):
        assert (run / "done").is_file() and json.loads((run / "results.json").read_text())["iterations"] == 4


# -- ugs-predict: the detection budget of a tiled image -------------------------------------------

def test_detection_budget_is_per_area():
    from ugs_d2.inference.predict import detection_budget

    assert detection_budget((1800, 2400), 512, 100) == 1700  # 16.48 tile areas -> 17
    assert detection_budget((512, 512), 512, 100) == 100
    assert detection_budget((100, 100), 512, 100) == 100  # never below the per-image limit
    assert detection_budget((513, 512), 512, 50) == 100


def test_tiled_prediction_keeps_more_than_the_per_tile_limit(trained_run, tmp_path):
    """An untrained-ish model at score threshold 0 on a 512 px image in 128 px tiles finds far
    more than the run's 100 per image; the default budget (100 per tile area: 1600) keeps them,
    --max-detections cuts with a warning."""
    from PIL import Image

    image = tmp_path / "big.png"
    Image.fromarray((torch.rand(512, 512, 3) * 255).to(torch.uint8).numpy()).save(image)
    common = [trained_run, image, "--tiled", "--tile", "128", "--score-thresh", "0", "--device", "cpu"]
    procs = run_batch([
        (PREDICT, common + ["--out", tmp_path / "all.json"], tmp_path),
        (PREDICT, common + ["--out", tmp_path / "cut.json", "--max-detections", "7"], tmp_path),
    ])
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = json.loads((tmp_path / "all.json").read_text())
    assert 100 < len(found) <= 1600  # never the per-tile 100 for the whole image
    if len(found) == 1600:  # the per-area budget cut: a line says so
        assert "detection budget (100 per 128 px tile area; --max-detections) kept 1600 of" in procs[0].stderr
    else:
        assert "detection budget" not in procs[0].stderr
    assert len(json.loads((tmp_path / "cut.json").read_text())) == 7
    assert "detection budget (--max-detections) kept 7 of " in procs[1].stderr


def test_steps_and_warmup_past_max_iter_are_a_warning_line(caplog):
    """Quick runs shorten schedule.max_iter on purpose, so steps past it are not an error, but
    the run says that the learning rate is then never decayed (detectron2 drops them quietly)."""
    import logging

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.harness.compose import compose as _compose

    cfg = _compose(["schedule.max_iter=20", "device=cpu"])  # cpu_default: steps [500, 640], warm-up 100
    with caplog.at_level(logging.WARNING, logger="ugs_d2"):
        to_detectron2_cfg(cfg)  # the command-line check: silent
        assert caplog.text == ""
        to_detectron2_cfg(cfg, output_dir="run")
    assert "schedule.steps: [500, 640] at or after schedule.max_iter=20: the learning rate is not decayed there" in caplog.text
    assert "schedule.warmup_iters=100 > schedule.max_iter=20" in caplog.text


@pytest.mark.parametrize("command", ["cocoeval", "anchors", "ur", "overfit", "tiling", "sahi", "help"])
def test_ugs_bench_refuses_an_unwritable_out_before_running(tmp_path, command):
    """The report's --out is checked before the benchmark runs (they take minutes to hours)."""
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "report.md"
    proc = run_batch([("ugs_d2.cli.bench", [command, "--out", out], tmp_path)])[0]
    assert_one_line_failure(proc, "ugs-bench", f"--out {out} cannot be written", "is not a writable directory")
