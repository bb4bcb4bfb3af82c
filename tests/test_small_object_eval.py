"""Small-object evaluation: bucket APs against pycocotools itself, ignore regions, detection
budgets above 100, both backends equal, config errors, and a real ``ugs-train`` run whose
results.json, metrics.json and W&B run hold the bucket keys."""
import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from conftest import TINY_RUN, run_ugs_train

from ugs_d2.analysis.results import collect
from ugs_d2.bench.cocoeval import make_case
from ugs_d2.cli.validate import validate_command_line
from ugs_d2.compat import HAS_COMPILED_OPS
from ugs_d2.config import ConfigError, to_detectron2_cfg
from ugs_d2.evaluation.backends import BACKENDS, run_bbox_cocoeval
from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.evaluation.small_object import (
    BUCKET_SETS,
    COCO_BUCKETS,
    average_precision,
    evaluate_detections,
    max_dets_list,
    select_buckets,
)
from ugs_d2.harness.compose import compose as _compose

ALL_SETS = list(BUCKET_SETS)
NO_COMPILED_OPS = "detectron2_fast needs detectron2's C++ ops; this is the registry fallback (make test-upstream)"


def _backend(name):
    """A BACKENDS entry as a parameter, skipped where it cannot run (with the reason)."""
    if name == "detectron2_fast":
        return pytest.param(name, marks=pytest.mark.skipif(not HAS_COMPILED_OPS, reason=NO_COMPILED_OPS))
    return name


BACKEND_PARAMS = [_backend(b) for b in BACKENDS]
BUCKET_KEYS = [b.key for s in ALL_SETS for b in BUCKET_SETS[s]]


def _gt(images, annotations, num_classes=1):
    for i, a in enumerate(annotations, start=1):
        a.setdefault("id", i)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in images.items()],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_classes + 1)],
    }


def _det(image_id, bbox, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def _random_case(seed=0, images=6, classes=3):
    """Boxes of 2-70 px side (every AI-TOD and SODA bucket populated), jittered detections,
    false positives and some crowd regions."""
    gt, dets = make_case(images, 120, seed, num_classes=classes, gt_per_image=(20, 40), image_size=(400, 300))
    return gt, dets


# --------------------------------------------------------------------------------------------
# the math


def test_average_precision_reads_the_right_slice():
    # (T=2, R=3, K=2, A=2, M=2): distinct values per slice; -1 entries are left out of means
    p = np.full((2, 3, 2, 2, 2), -1.0)
    p[:, :, 0, 1, 1] = [[0.2, 0.4, 0.6], [0.0, 0.0, 0.0]]  # class 0, area 1, maxDets 1
    p[:, :, 1, 1, 1] = [[1.0, 1.0, -1], [1.0, -1, -1]]  # class 1: three undefined entries
    assert average_precision(p, 1, 1) == pytest.approx((0.2 + 0.4 + 0.6 + 1 + 1 + 1) / 9)
    assert average_precision(p, 1, 1, iou_index=0) == pytest.approx((0.2 + 0.4 + 0.6 + 1 + 1) / 5)
    assert average_precision(p, 1, 1, category_index=0) == pytest.approx(1.2 / 6)
    assert math.isnan(average_precision(p, 0, 1))  # nothing defined: no ground truth there
    assert math.isnan(average_precision(p, 1, 0))


def test_bucket_sets_and_max_dets_list():
    assert [b.key for b in select_buckets([])] == ["AP", "APs", "APm", "APl"]
    aitod = select_buckets(["aitod"])
    assert [(b.key, b.area_min, b.area_max) for b in aitod[4:]] == [
        ("APvt", 0, 64), ("APt", 64, 256), ("APs_aitod", 256, 1024), ("APm_aitod", 1024, 1e10)]
    soda = select_buckets(["soda"])
    assert [(b.key, b.area_min, b.area_max) for b in soda[4:]] == [
        ("APeS", 0, 144), ("APrS", 144, 400), ("APgS", 400, 1024), ("APN", 1024, 2000)]
    assert len(select_buckets(["aitod", "aitod"])) == 8
    with pytest.raises(ValueError, match="unknown bucket set 'tiny'"):
        select_buckets(["tiny"])
    assert max_dets_list(100) == [1, 10, 100]
    assert max_dets_list(1500) == [1, 10, 1500]
    assert max_dets_list(5) == [1, 5, 10] and max_dets_list(1) == [1, 10]
    for bad in (0, 10001, 1.5, True):
        with pytest.raises(ValueError, match="max_dets"):
            max_dets_list(bad)


# --------------------------------------------------------------------------------------------
# against pycocotools itself


def _pycocotools_summary(gt, dets, area_range, max_dets=(1, 10, 100)):
    """pycocotools' own summarize() with one area range labelled 'all': stats[0..2] = AP, AP50, AP75."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = [list(area_range)], ["all"], list(max_dets)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [100 * s if s >= 0 else math.nan for s in e.stats[:3]]


def test_bucket_aps_equal_a_direct_pycocotools_evaluation_with_that_area_range():
    gt, dets = _random_case(seed=0)
    results = evaluate_detections(gt, dets, ALL_SETS, max_dets=100, backend="pycocotools",
                                  class_names=["c1", "c2", "c3"])
    buckets = select_buckets(ALL_SETS)
    assert list(results)[: 3 + len(buckets) - 1] == ["AP", "AP50", "AP75"] + [b.key for b in buckets[1:]]
    ap, ap50, ap75 = _pycocotools_summary(gt, dets, (0, 1e10))
    assert (results["AP"], results["AP50"], results["AP75"]) == pytest.approx((ap, ap50, ap75), abs=1e-9)
    checked = 0
    for bucket in buckets[1:]:
        expected = _pycocotools_summary(gt, dets, (bucket.area_min, bucket.area_max))[0]
        if math.isnan(expected):
            assert math.isnan(results[bucket.key]), bucket.key
        else:
            assert results[bucket.key] == pytest.approx(expected, abs=1e-9), bucket.key
            checked += 1
    assert checked >= 10  # the case populates (nearly) every bucket: not a comparison of NaNs
    assert len({round(results[b.key], 6) for b in buckets[1:] if not math.isnan(results[b.key])}) > 5


# --------------------------------------------------------------------------------------------
# ignore regions and budgets (hand-computed)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_detection_inside_an_ignore_region_is_neither_tp_nor_fp(backend):
    # one object A and one VisDrone ignored region (iscrowd=1) of the same class
    gt = _gt({1: (100, 100)}, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10]},
                               {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "iscrowd": 1}])
    on_a = _det(1, [10, 10, 10, 10], 0.8)
    inside_region = _det(1, [60, 60, 10, 10], 0.9)  # the best-scored detection
    outside = _det(1, [5, 70, 10, 10], 0.9)
    # ignored: A found at rank 1 of the counted detections, and the region is not a miss -> AP 100
    assert evaluate_detections(gt, [on_a, inside_region], backend=backend)["AP"] == pytest.approx(100.0)
    # the same box outside the region is a false positive ranked first: precision 1/2 at
    # recall 1, interpolated to every recall threshold -> AP 50
    assert evaluate_detections(gt, [on_a, outside], backend=backend)["AP"] == pytest.approx(50.0)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_budgets_above_100_detections_per_image_count(backend):
    # 150 objects of 8x8 px in a grid on one image, each detected exactly (scores descending)
    boxes = [[12.0 * (i % 15), 12.0 * (i // 15), 8.0, 8.0] for i in range(150)]
    gt = _gt({1: (200, 200)}, [{"image_id": 1, "category_id": 1, "bbox": b} for b in boxes])
    dets = [_det(1, b, 1.0 - i / 1000) for i, b in enumerate(boxes)]
    at_100 = evaluate_detections(gt, dets, ["aitod"], max_dets=100, backend=backend)
    at_1500 = evaluate_detections(gt, dets, ["aitod"], max_dets=1500, backend=backend)
    # 100 of 150 found: precision 1 up to recall 2/3, i.e. at recall thresholds 0.00..0.66 (67 of 101)
    # area 64 = 8^2 lies on the APvt/APt boundary, which pycocotools includes in both ranges
    for key in ("AP", "AP50", "AP75", "APs", "APvt", "APt"):
        assert at_100[key] == pytest.approx(100 * 67 / 101), key
        assert at_1500[key] == pytest.approx(100.0), key
    assert math.isnan(at_1500["APm"]) and math.isnan(at_1500["APs_aitod"])  # no object there


# --------------------------------------------------------------------------------------------
# backends


@pytest.mark.parametrize("backend", [b for b in BACKEND_PARAMS if b != "pycocotools"])
def test_every_backend_gives_the_numbers_of_pycocotools_for_every_bucket(backend):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    gt, dets = make_case(6, 300, seed=1, num_classes=4, gt_per_image=(30, 60), image_size=(640, 480))
    assert sum(a["iscrowd"] for a in gt["annotations"]) > 0
    buckets = select_buckets(ALL_SETS)
    ranges = [(b.area_min, b.area_max) for b in buckets]
    outputs = {b: run_bbox_cocoeval(copy.deepcopy(gt), dets, ranges, [1, 10, 300], b) for b in ("pycocotools", backend)}
    reference, other = outputs["pycocotools"], outputs[backend]
    assert reference.precision.shape == other.precision.shape == (10, 101, 4, len(buckets), 3)
    assert np.abs(reference.precision - other.precision).max() <= 1e-6
    results = {b: evaluate_detections(copy.deepcopy(gt), dets, ALL_SETS, 300, b, class_names=list("abcd"))
               for b in ("pycocotools", backend)}
    assert list(results["pycocotools"]) == list(results[backend])
    for key, value in results["pycocotools"].items():
        assert results[backend][key] == pytest.approx(value, abs=1e-4, nan_ok=True), key
    assert sum(not math.isnan(v) for v in results["pycocotools"].values()) >= 15


def test_detectron2_fast_is_accepted_with_compiled_ops_and_refused_in_one_line_on_the_fallback():
    if HAS_COMPILED_OPS:
        d2 = to_detectron2_cfg(_compose(["evaluation.backend=detectron2_fast"]), num_classes=6)
        assert d2.UGS_EVAL.BACKEND == "detectron2_fast"
        return
    with pytest.raises(ConfigError) as info:
        validate_command_line(["evaluation.backend=detectron2_fast"])
    message = str(info.value)
    assert "\n" not in message and "evaluation.backend=detectron2_fast" in message
    assert "C++ ops" in message and "D2_SOURCE" in message and "registry fallback" in message


def test_detections_are_not_modified():
    gt, dets = _random_case(seed=2, images=2)
    before = copy.deepcopy(dets)
    evaluate_detections(gt, dets, ALL_SETS)
    assert dets == before


# --------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluation.backend=cocoapi"], "evaluation.backend: expected pycocotools or faster_coco_eval or detectron2_fast, got 'cocoapi'"),
        (["evaluation.max_dets=0"], "evaluation.max_dets: expected an integer in [1, 10000], got 0"),
        (["evaluation.max_dets=20000"], "evaluation.max_dets: expected an integer in [1, 10000], got 20000"),
        (["evaluation.max_dets=many"], "evaluation.max_dets: expected an integer, got 'many'"),
        (["evaluation.buckets=[aitod,tiny]"], "evaluation.buckets: unknown bucket set 'tiny'; expected some of aitod, soda"),
        (["evaluation=visdrone", "model.roi.detections_per_image=100"],
         "evaluation.max_dets: 1500 detections per image are evaluated, but the detector returns at most 100"),
    ],
)
def test_bad_evaluation_settings_fail_in_one_line_naming_the_key(argv, message):
    with pytest.raises(ConfigError) as info:
        validate_command_line(argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_evaluation_presets_reach_the_detectron2_config():
    d2 = to_detectron2_cfg(_compose([]), num_classes=6)
    assert (d2.UGS_EVAL.BACKEND, d2.UGS_EVAL.MAX_DETS, list(d2.UGS_EVAL.BUCKETS)) == ("pycocotools", 100, [])
    assert d2.TEST.DETECTIONS_PER_IMAGE == 100
    d2 = to_detectron2_cfg(_compose(["evaluation=visdrone"]), num_classes=6)
    assert (d2.UGS_EVAL.BACKEND, d2.UGS_EVAL.MAX_DETS, list(d2.UGS_EVAL.BUCKETS)) == (
        "faster_coco_eval", 1500, ["aitod", "soda"])
    assert d2.TEST.DETECTIONS_PER_IMAGE == 1500  # the detector's limit follows max_dets
    # each proposal yields at most one box per class: 100 x 6 < 1500
    with pytest.raises(ConfigError, match=r"model.rpn.post_nms_topk_test: 100 proposals x 6 classes .* expected >= 250"):
        to_detectron2_cfg(_compose(["evaluation=visdrone", "model.rpn.post_nms_topk_test=100"]), num_classes=6)


# --------------------------------------------------------------------------------------------
# end to end


def test_tiny_run_reports_the_buckets_in_results_metrics_wandb_and_the_sweep_table(tiny_dataset, tmp_path):
    from test_wandb import _history, read_wandb_records

    run_dir = tmp_path / "sweep" / "run"
    args = TINY_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "evaluation=visdrone",
                       "model.rpn.post_nms_topk_test=300"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "with faster_coco_eval (maxDets 1500, buckets: aitod, soda)" in proc.stdout + proc.stderr
    summary = [line for line in proc.stdout.splitlines() if line.startswith("[ugs-train] bbox: ")]
    assert summary and "| APvt " in summary[0] and "| APN " in summary[0]  # the buckets, also in the log

    results = json.loads((run_dir / "results.json").read_text())
    assert set(BUCKET_KEYS) <= set(results)
    assert results["metric_order"] == ["AP", "AP50", "AP75"] + [b.key for b in COCO_BUCKETS[1:]] + BUCKET_KEYS
    assert any(results[k] is not None for k in BUCKET_KEYS)  # 128 px synth objects: small ones exist

    last = read_metrics(str(run_dir / "metrics.json"))[-1]
    for key in ["AP"] + BUCKET_KEYS:
        assert f"bbox/{key}" in last, key
        stored = last[f"bbox/{key}"]
        assert (results[key] is None and math.isnan(stored)) or stored == pytest.approx(results[key]), key

    wandb_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    logged = set().union(*_history(read_wandb_records(str(wandb_files[0]))).values())
    assert {f"bbox/{k}" for k in BUCKET_KEYS} <= logged

    collection = collect(str(tmp_path / "sweep"))
    assert collection.metrics == ["AP", "AP50", "AP75", "APs", "APm", "APl"] + BUCKET_KEYS


# --------------------------------------------------------------------------------------------
# ugs-bench cocoeval


def test_bench_case_has_the_requested_shape():
    gt, dets = make_case(5, 200, seed=3, num_classes=4, gt_per_image=(10, 20))
    real = [a for a in gt["annotations"] if not a["iscrowd"]]
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    per_image = {i: sum(a["image_id"] == i for a in real) for i in range(1, 6)}
    assert all(10 <= n <= 20 for n in per_image.values())
    assert all(sum(d["image_id"] == i for d in dets) == 200 for i in range(1, 6))
    assert len(crowd) % 4 == 0  # each ignore region once per class
    assert all(a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], rel=1e-3) for a in gt["annotations"])
    assert make_case(5, 200, seed=3, num_classes=4, gt_per_image=(10, 20)) == (gt, dets)  # seeded


def test_bench_cli_writes_the_report_and_rejects_bad_arguments(tmp_path):
    from ugs_d2.cli.bench import run_command_line

    out = tmp_path / "cocoeval.md"
    outcome = run_command_line(["cocoeval", "--images", "3", "--dets", "60", "--repeats", "2",
                                "--out", str(out), "--quiet"])
    text = out.read_text()
    assert "ugs-bench cocoeval --images 3 --dets 60" in text and "every metric agrees" in text
    assert outcome["disagreeing"] == [] and len(outcome["seconds"]["pycocotools"]) == 2
    # detectron2's C++ COCOeval too where this build has it; the report names the build
    expected = ["pycocotools", "faster_coco_eval"] + (["detectron2_fast"] if HAS_COMPILED_OPS else [])
    assert list(outcome["seconds"]) == expected and all(f"| {b} |" in text for b in expected)
    from ugs_d2.compat import describe_detectron2

    assert describe_detectron2() in text
    assert "| APvt |" in text and "| APN |" in text
    for argv, message in [(["--images", "0"], "--images must be >= 1"),
                          (["--buckets", "aitod,tiny"], "--buckets: unknown bucket set 'tiny'"),
                          (["--gt-per-image", "9"], "--gt-per-image: expected MIN,MAX")]:
        with pytest.raises(SystemExit, match=message):
            run_command_line(["cocoeval", *argv, "--out", str(tmp_path / "x.md"), "--quiet"])
    assert not (tmp_path / "x.md").exists()
