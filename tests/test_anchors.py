"""ugs-anchors: the YOLOv5 metric by hand, k-means, evolution, the per-level rule, the CLI and
the override file with the real Hydra config and detectron2 model."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ugs_d2 import anchors as A
from ugs_d2.cli.anchors import AnchorsError, format_overrides, load_base, main as ugs_anchors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRIDES = A.level_strides(["p2", "p3", "p4", "p5", "p6"])
D2_DEFAULT = ([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]])
TINY_PRESET = ([[8], [16], [32], [64], [128]], [[0.5, 1.0, 2.0]])  # configs/model/tiny_r18_fpn.yaml


def _skewed_tiny_boxes(seed=0, n=600):
    """Most boxes 4-16 px (aspect ratios 1:2 .. 2:1), 10% large (64-200 px), as (w, h)."""
    rng = np.random.default_rng(seed)
    n_large = n // 10
    size = np.concatenate([rng.uniform(4, 16, n - n_large), rng.uniform(64, 200, n_large)])
    ratio = np.exp(rng.uniform(math.log(0.5), math.log(2.0), n))
    return np.stack([size / np.sqrt(ratio), size * np.sqrt(ratio)], axis=1)


# ------------------------------------------------------------------------------------ metric
def test_metric_on_three_boxes_and_two_anchors_by_hand():
    wh = np.array([[10.0, 10.0], [20.0, 10.0], [100.0, 100.0]])
    anchors = np.array([[10.0, 10.0], [40.0, 20.0]])
    # x[i, j] = min over sides of min(box/anchor, anchor/box):
    #   box 1: anchor 1 -> 1, anchor 2 -> min(10/40, 10/20) = 0.25
    #   box 2: anchor 1 -> min(10/20, 10/10) = 0.5, anchor 2 -> min(20/40, 10/20) = 0.5
    #   box 3: anchor 1 -> 0.1, anchor 2 -> min(40/100, 20/100) = 0.2
    assert A.ratio_metric(wh, anchors) == pytest.approx(np.array([[1.0, 0.25], [0.5, 0.5], [0.1, 0.2]]))
    m = A.anchor_metrics(wh, anchors, thr=4.0)  # recallable: x > 0.25 (strictly)
    assert m.fitness == pytest.approx((1.0 + 0.5 + 0.0) / 3)  # box 3's best 0.2 counts 0
    assert m.bpr == pytest.approx(2 / 3)
    assert m.anchors_per_target == pytest.approx((1 + 2 + 0) / 3)  # box 1's 0.25 is not above
    assert m.best_mean == pytest.approx((1.0 + 0.5 + 0.2) / 3)
    assert m.metric_mean == pytest.approx((1 + 0.25 + 0.5 + 0.5 + 0.1 + 0.2) / 6)
    assert m.past_thr_mean == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert (m.num_boxes, m.num_anchors) == (3, 2)
    assert A.fitness(wh, anchors, 4.0) == pytest.approx(m.fitness)
    loose = A.anchor_metrics(wh, anchors, thr=6.0)  # 0.2 > 1/6: box 3 becomes recallable
    assert loose.bpr == 1.0 and loose.fitness == pytest.approx((1.0 + 0.5 + 0.2) / 3)
    assert loose.anchors_per_target == pytest.approx((2 + 2 + 1) / 3)


def test_cell_anchors_are_what_detectron2_generates():
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    sizes, ratios = [[7.8, 10.8], [15.0, 20.0]], [[0.5, 1.0], [1.5, 3.0]]
    generator = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=[4, 8])
    for level, cell in enumerate(generator.cell_anchors):
        d2_wh = (cell[:, 2:] - cell[:, :2]).double().numpy()
        assert A.cell_anchor_wh([sizes[level]], [ratios[level]]) == pytest.approx(d2_wh, rel=1e-6)
    # one ratio list broadcasts to every level, as in detectron2
    assert len(A.cell_anchor_wh([[8], [16], [32]], [[0.5, 1.0, 2.0]])) == 9
    assert A.cell_anchor_wh([[8]], [[4.0]]) == pytest.approx(np.array([[4.0, 16.0]]))  # w = s/2, h = 2s


# ------------------------------------------------------------------------- input-scale boxes
def test_resize_matches_detectron2_and_boxes_are_scaled_per_axis():
    from detectron2.data.transforms import ResizeShortestEdge

    for h, w, short, cap in [(50, 100, 200, 1000), (600, 300, 256, 300), (333, 500, 800, 1333), (480, 640, 256, 10**9)]:
        assert A.resized_shape(h, w, short, cap) == ResizeShortestEdge.get_output_shape(h, w, short, cap)
    coco = {
        "images": [{"id": 1, "width": 100, "height": 50}, {"id": 2, "width": 300, "height": 600}],
        "annotations": [
            {"image_id": 1, "bbox": [0, 0, 10, 5]},  # 50x100 -> 200x400, capped -> 150x300: x3 -> 30 x 15
            {"image_id": 2, "bbox": [0, 0, 30, 60]},  # 600x300 -> 400x200 (short 200), capped -> 300x150: x0.5 -> 15 x 30
            {"image_id": 2, "bbox": [0, 0, 30, 60], "iscrowd": 1},
            {"image_id": 9, "bbox": [0, 0, 10, 10]},
            {"image_id": 1, "bbox": [0, 0, 0, 10]},
            {"image_id": 1, "bbox": [0, 0, 10]},
        ],
        "categories": [],
    }
    wh, skipped = A.boxes_at_input_scale(coco, 200, 300)
    assert wh == pytest.approx(np.array([[30.0, 15.0], [15.0, 30.0]]))
    assert skipped == {"crowd": 1, "unknown_image": 1, "malformed": 1, "non_positive": 1}


def test_labels_under_three_pixels_are_counted():
    wh = np.array([[2.9, 10.0], [10.0, 2.0], [3.0, 3.0], [50.0, 40.0]])
    assert A.count_under_min_side(wh) == 2
    assert A.count_under_min_side(wh, min_side=3.5) == 3
    assert A.count_under_min_side(np.zeros((0, 2))) == 0


# ------------------------------------------------------------------------ k-means, evolution
def test_kmeans_recovers_three_separated_clusters_deterministically():
    rng = np.random.default_rng(1)
    truth = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 0.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (50, 2)) for c in truth])
    centers, labels = A.kmeans(points, 3, seed=0)
    assert centers == pytest.approx(truth, abs=0.3)  # sorted by first coordinate
    assert (labels == np.repeat([0, 1, 2], 50)).all()
    again, _ = A.kmeans(points, 3, seed=0)
    assert np.array_equal(centers, again)
    with pytest.raises(ValueError, match="k=4 for 3 points"):
        A.kmeans(points[:3], 4)


def test_evolution_never_decreases_fitness_and_is_seeded():
    wh = _skewed_tiny_boxes()
    start = A.initial_anchors(wh, STRIDES, 1, 3, seed=0)
    start_fitness = A.fitness(wh, start.wh())
    seen = []
    result = A.evolve(wh, start, STRIDES, generations=150, seed=3, progress=lambda g, f: seen.append((g, f)))
    history = np.array(result.history)
    assert len(history) == 150 and [g for g, _ in seen] == list(range(150))
    assert (np.diff(history) >= 0).all() and history[0] >= start_fitness
    assert history[-1] > start_fitness  # it does improve on the k-means start here
    assert A.fitness(wh, result.wh()) == pytest.approx(history[-1])
    lo, hi = A.level_ranges(STRIDES)
    assert (result.sizes >= lo[:, None]).all() and (result.sizes <= hi[:, None]).all()
    same = A.evolve(wh, start, STRIDES, generations=150, seed=3)
    assert np.array_equal(same.sizes, result.sizes) and np.array_equal(same.ratios, result.ratios)
    # levels that serve no box stay put (p3, p4 here: the boxes are 4-16 or 64-200 px)
    unserved = result.served == 0
    assert unserved.tolist() == [False, True, True, False, False]
    assert np.array_equal(result.sizes[unserved], start.sizes[unserved])


# ------------------------------------------------------------------------------- level rule
def test_level_assignment_and_ranges_by_hand():
    sizes = np.array([1.0, 7.9, 8.0, 16.0, 31.9, 32.0, 127.9, 128.0, 1000.0])
    assert A.assign_levels(sizes, STRIDES).tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 4]
    lo, hi = A.level_ranges(STRIDES)
    assert lo.tolist() == [4, 8, 16, 32, 64] and hi.tolist() == [32, 64, 128, 256, 512]
    assert A.out_of_range_counts(np.array([3.9, 4.0, 512.0, 513.0]), STRIDES) == (1, 1)
    assert A.layouts(3) == [(1, 3), (3, 1)] and A.layouts(4) == [(1, 4), (2, 2), (4, 1)]
    assert A.parse_levels("p2..p6") == ["p2", "p3", "p4", "p5", "p6"]
    assert A.parse_levels("P3, p5") == ["p3", "p5"]
    for bad in ("p2-p6", "2..6", "p6..p2", "p2,p2", "", "p2..p12"):
        with pytest.raises(ValueError):
            A.parse_levels(bad)


def test_learned_anchors_beat_the_defaults_on_skewed_tiny_boxes_and_keep_the_level_rule():
    wh = _skewed_tiny_boxes()
    learned = A.learn_anchors(wh, STRIDES, per_level=3, generations=300, seed=0)
    final = learned.anchors
    sizes, ratios = final.sizes.tolist(), final.ratios.tolist()
    assert set(learned.final_fitness) == {(1, 3), (3, 1)}
    # same number of anchors on every level (the RPN head needs it), 3 each
    assert [len(s) * len(r) for s, r in zip(sizes, ratios)] == [3] * 5
    ours = A.anchor_metrics(wh, final.wh())
    d2 = A.anchor_metrics(wh, A.cell_anchor_wh(*D2_DEFAULT))
    tiny = A.anchor_metrics(wh, A.cell_anchor_wh(*TINY_PRESET))
    assert ours.fitness > d2.fitness + 0.2  # d2's 32 px anchors are > 4x the 4-8 px boxes
    assert ours.fitness >= tiny.fitness
    assert ours.bpr >= tiny.bpr
    # the level rule: every size inside [stride, 8 stride] of its level
    lo, hi = A.level_ranges(STRIDES)
    for level, level_sizes in enumerate(sizes):
        assert all(lo[level] <= s <= hi[level] for s in level_sizes), (level, level_sizes)

    # the failure it prevents: YOLOv5's global k-means of 15 anchors, sliced 3 per level,
    # leaves the upper levels with anchors far below their strides on this data
    centers, _ = A.kmeans(np.log(wh), 15, seed=0)
    naive = np.sort(np.exp(centers.mean(axis=1))).reshape(5, 3)
    assert (naive[2] < STRIDES[2]).all()  # p4 (stride 16): all its anchors under 16 px


def test_many_boxes_are_fitted_on_a_seeded_subset_but_counted_in_full():
    wh = _skewed_tiny_boxes(n=600)
    a = A.learn_anchors(wh, STRIDES, generations=20, seed=1, max_points=100)
    b = A.learn_anchors(wh, STRIDES, generations=20, seed=1, max_points=100)
    assert np.array_equal(a.anchors.sizes, b.anchors.sizes) and a.final_fitness == b.final_fitness
    assert a.anchors.served.sum() == 600
    assert a.final_fitness[a.layout] == pytest.approx(A.fitness(wh, a.anchors.wh()))  # on all boxes


# -------------------------------------------------------------------------------------- CLI
def test_base_anchors_come_from_presets_detectron2_or_the_command_line():
    tiny = load_base("tiny_r18_fpn", None, STRIDES)
    assert (tiny["sizes"], tiny["aspect_ratios"]) == TINY_PRESET and tiny["input"] == (256, 256)
    r50 = load_base("faster_rcnn_r50_fpn", None, STRIDES)
    assert (r50["sizes"], r50["aspect_ratios"]) == D2_DEFAULT and r50["input"] == (800, 1333)
    d2 = load_base("detectron2", None, STRIDES)
    assert (d2["sizes"], d2["aspect_ratios"]) == D2_DEFAULT and d2["input"] == (800, 1333)
    flat = load_base("[8, 16]", "[1.0]", STRIDES)  # a flat list is used on every level, as in detectron2
    assert flat["sizes"] == [[8.0, 16.0]] * 5 and flat["aspect_ratios"] == [[1.0]] and flat["input"] is None
    with pytest.raises(AnchorsError, match=r"--base: expected a list of positive numbers"):
        load_base("[[8], [-1]]", None, STRIDES)


def _write_dataset(path, wh, image_size=256):
    """A COCO json with the given boxes spread over 256 px images (no image files: not needed)."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": image_size, "height": image_size} for i in range(20)]
    anns = [
        {"id": i + 1, "image_id": i % 20 + 1, "category_id": 1, "bbox": [1.0, 1.0, float(w), float(h)], "iscrowd": 0}
        for i, (w, h) in enumerate(wh)
    ]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}, f)
    return str(path)


def test_cli_writes_an_override_file_that_hydra_and_detectron2_accept(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from detectron2.modeling import build_model
    from ugs_d2.cli.validate import CONFIG_DIR
    from ugs_d2.config import to_detectron2_cfg

    wh = np.concatenate([_skewed_tiny_boxes(n=200), [[2.0, 8.0], [1.5, 1.5]]])
    data = _write_dataset(tmp_path / "train.json", wh)
    out = tmp_path / "configs" / "anchors" / "mine.yaml"
    ugs_anchors([data, "--input-size", "256", "--generations", "60", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "WARNING: Extremely small objects found. 2 of 202 labels are < 3 pixels" in printed
    assert "Best Possible Recall (BPR)" in printed and "before (model=tiny_r18_fpn" in printed

    text = out.read_text()
    assert text.splitlines()[0] == "# @package model.anchors"
    written = yaml.safe_load(text)
    assert set(written) == {"sizes", "aspect_ratios"}
    sizes, ratios = written["sizes"], written["aspect_ratios"]
    assert len(sizes) == len(ratios) == 5
    assert len({len(s) * len(r) for s, r in zip(sizes, ratios)}) == 1
    # the printed command-line overrides carry exactly the file's values
    override_line = next(line for line in printed.splitlines() if "or the overrides:" in line)
    assert " ".join(f"'{o}'" for o in format_overrides(sizes, ratios)) in override_line

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        from_file = compose("config", overrides=[
            "+anchors=mine", f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
            "device=cpu", "model.backbone.fpn_channels=32",  # small: only the anchor generator matters here
        ])
        from_overrides = compose("config", overrides=format_overrides(sizes, ratios))
    GlobalHydra.instance().clear()
    for cfg in (from_file, from_overrides):
        assert cfg.model.anchors.sizes == sizes and cfg.model.anchors.aspect_ratios == ratios
    model = build_model(to_detectron2_cfg(from_file, num_classes=1))
    generator = model.proposal_generator.anchor_generator
    assert generator.num_cell_anchors == [len(sizes[0]) * len(ratios[0])] * 5
    generated = np.concatenate([(c[:, 2:] - c[:, :2]).double().numpy() for c in generator.cell_anchors])
    assert generated == pytest.approx(A.cell_anchor_wh(sizes, ratios), rel=1e-6)


def test_shipped_example_works_with_ugs_train():
    """configs/anchors/synth256.yaml (results/anchors/) through the real ugs-train command line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "ugs_d2.train", "--cfg", "job", "+anchors=synth256"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(REPO, "configs", "anchors", "synth256.yaml")) as f:
        shipped = yaml.safe_load(f)
    composed = yaml.safe_load(proc.stdout)["model"]["anchors"]
    assert composed == shipped


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/train.json"], "ugs-anchors: /nonexistent/train.json: annotation file not found"),
        (["{data}", "--per-level", "0"], "ugs-anchors: --per-level: expected a positive integer, got 0"),
        (["{data}", "--levels", "p2-p6"], "ugs-anchors: --levels: expected pA..pB or a comma list like p2,p3,p4, got 'p2-p6'"),
        (["{data}", "--layout", "2x2"], "ugs-anchors: --layout 2x2: sizes x ratios must equal --per-level 3"),
        (["{data}", "--thr", "1"], "ugs-anchors: --thr: expected a number > 1, got 1.0"),
        (["{data}", "--input-size", "256", "128"], "ugs-anchors: --input-size: MAX 128 is smaller than MIN 256"),
        (["{data}", "--base", "[[8],[16]]"], "ugs-anchors: --input-size is needed with explicit --base sizes"),
        (["{data}", "--base", "nosuchpreset"], "ugs-anchors: --base: expected a model preset"),
        (["{data}", "--out", "{tmp}/a.txt"], "ugs-anchors: --out: expected a .yaml file"),
    ],
)
def test_cli_rejects_bad_input_in_one_line_and_writes_nothing(tmp_path, args, message):
    data = _write_dataset(tmp_path / "train.json", _skewed_tiny_boxes(n=30))
    argv = [a.format(data=data, tmp=tmp_path) for a in args] + ["--no-progress", "--generations", "5"]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.yaml")]
    with pytest.raises(SystemExit) as error:
        ugs_anchors(argv)
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text
    assert sorted(os.listdir(tmp_path)) == ["train.json"]


def test_cli_rejects_a_dataset_without_boxes(tmp_path):
    data = _write_dataset(tmp_path / "train.json", np.zeros((0, 2)))
    with pytest.raises(SystemExit, match=r"^ugs-anchors: .*train.json: no box with positive width and height$"):
        ugs_anchors([data, "--no-progress", "--out", str(tmp_path / "a.yaml")])
    assert not (tmp_path / "a.yaml").exists()
