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
from ugs_d2.analysis.anchors import AnchorsError, format_overrides
from ugs_d2.cli.anchors import load_base
from ugs_d2.cli.anchors import main as ugs_anchors

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
    result = A.evolve(wh, start, STRIDES, A.AnchorSearch(generations=150, seed=3), progress=lambda g, f: seen.append((g, f)))
    history = np.array(result.history)
    assert len(history) == 150 and [g for g, _ in seen] == list(range(150))
    assert (np.diff(history) >= 0).all() and history[0] >= start_fitness
    assert history[-1] > start_fitness  # it does improve on the k-means start here
    assert A.fitness(wh, result.wh()) == pytest.approx(history[-1])
    lo, hi = A.level_ranges(STRIDES)
    assert (result.sizes >= lo[:, None]).all() and (result.sizes <= hi[:, None]).all()
    same = A.evolve(wh, start, STRIDES, A.AnchorSearch(generations=150, seed=3))
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
    learned = A.learn_anchors(wh, STRIDES, A.AnchorSearch(per_level=3, generations=300, seed=0))
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
    a = A.learn_anchors(wh, STRIDES, A.AnchorSearch(generations=20, seed=1, max_points=100))
    b = A.learn_anchors(wh, STRIDES, A.AnchorSearch(generations=20, seed=1, max_points=100))
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
    from detectron2.modeling import build_model
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

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
        (["{data}", "--levels", "p3..p5"], "ugs-anchors: --base tiny_r18_fpn has 5 anchor levels but --levels gives 3"),
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


# ------------------------------------------------------------ grid objective (detectron2 matching)
def _random_boxes(n, height, width, seed=0, lo=2.0, hi=120.0):
    rng = np.random.default_rng(seed)
    size = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    aspect = np.exp(rng.uniform(math.log(0.3), math.log(3.0), n))
    w, h = size / np.sqrt(aspect), size * np.sqrt(aspect)
    cx, cy = rng.uniform(0, width, n), rng.uniform(0, height, n)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_iou_and_counts_equal_detectron2s_anchors_and_pairwise_iou(offset):
    import torch
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.structures import Boxes, pairwise_iou

    height, width = 100, 130
    boxes = _random_boxes(300, height, width, seed=1)
    sizes = [[6.0, 9.0], [12.0, 20.0], [30.0, 50.0], [64.0, 100.0], [130.0, 200.0]]
    ratios = [[0.5], [1.0], [2.0], [0.7], [1.3]]
    gb = A.GridBoxes.build(boxes, np.tile([height, width], (len(boxes), 1)), STRIDES, offset=offset)
    generator = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=[int(s) for s in STRIDES], offset=offset)
    anchors = Boxes.cat(generator([torch.zeros(1, 1, *gb.grid[0, level]) for level in range(5)]))
    iou = pairwise_iou(Boxes(torch.tensor(boxes, dtype=torch.float32)), anchors).numpy()
    level_wh = A.level_anchor_wh(sizes, ratios)
    assert A.grid_best_iou(gb, level_wh) == pytest.approx(iou.max(axis=1), abs=1e-5)
    for t in (0.3, 0.5, 0.7):
        assert A.grid_counts(gb, level_wh, t).tolist() == (iou >= t).sum(axis=1).tolist()


def test_grid_iou_by_hand():
    # a 16 px box centred at (10, 10) and a 16 px anchor on stride 4: the nearest positions are
    # 8 and 12 (a tie, rounded up to 12): overlap 14 x 14 = 196, union 512 - 196 -> 0.6203
    gb = A.GridBoxes(np.array([[2.0, 2.0, 18.0, 18.0]]), np.array([[[8, 8]]]), np.array([4.0]))
    assert A.grid_iou(gb, [np.array([[16.0, 16.0]])])[0, 0] == pytest.approx(196 / 316)
    # with offset 0.5 the centres are at 2, 6, 10, ...: a perfect fit
    half = A.GridBoxes(gb.boxes, gb.grid, gb.strides, offset=0.5)
    assert A.grid_iou(half, [np.array([[16.0, 16.0]])])[0, 0] == pytest.approx(1.0)
    # a box beyond the last grid position (8 positions: centres 0..28) is matched at 28
    far = A.GridBoxes(np.array([[40.0, 0.0, 48.0, 8.0]]), np.array([[[8, 8]]]), np.array([4.0]))
    assert A.grid_iou(far, [np.array([[8.0, 8.0]])])[0, 0] == 0.0
    # the 16 px anchor at IoU >= 0.5 around (10, 10): the positions 8, 12 in x and y, all four
    # at 196 / 316 (4 anchors); at 0.62 none
    assert A.grid_counts(gb, [np.array([[16.0, 16.0]])], 0.5).tolist() == [4]
    assert A.grid_counts(gb, [np.array([[16.0, 16.0]])], 0.63).tolist() == [0]
    assert A.size_buckets(np.array([[0, 0, 7.9, 8], [0, 0, 8, 8], [0, 0, 16, 16], [0, 0, 95, 95], [0, 0, 96, 96]])).tolist() \
        == [0, 1, 2, 3, 4]


def test_grid_shapes_are_the_feature_maps_of_the_real_fpn():
    import torch
    from detectron2.modeling import build_backbone

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.harness.compose import compose as _compose

    cfg = to_detectron2_cfg(_compose(["device=cpu", "model.backbone.fpn_channels=16"]), num_classes=1)
    backbone = build_backbone(cfg).eval()
    assert backbone.size_divisibility == A.SIZE_DIVISIBILITY
    for h, w in [(100, 130), (256, 256), (37, 200)]:
        padded = [int(math.ceil(v / 32) * 32) for v in (h, w)]
        with torch.no_grad():
            feats = backbone(torch.zeros(1, 3, *padded))
        want = [list(feats[f"p{n}"].shape[-2:]) for n in range(2, 7)]
        assert A.grid_shapes(np.array([[h, w]]), STRIDES)[0].tolist() == want


def test_grid_objective_counts_the_deficit_against_the_floor_by_hand():
    # three boxes: 6 px (bucket <8), 20 px (16-32), 100 px (>=96), one 256 px image
    boxes = np.array([[10, 10, 16, 16], [40, 40, 60, 60], [100, 100, 200, 200]], dtype=float)
    gb = A.GridBoxes.build(boxes, np.array([[256, 256]] * 3), STRIDES)
    floor = A.detectron2_default_anchors(STRIDES)
    objective = A.GridObjective(gb, 0.7, floor=floor)
    floor_best = A.grid_best_iou(gb, A.level_anchor_wh(*floor))
    assert objective.deficit(floor_best) == 0
    assert objective.score(floor_best) == pytest.approx((floor_best >= 0.7).mean() + floor_best.mean() / 4)
    # anchors that only fit the tiny box: the 100 px box loses its floor coverage at 0.5 and 0.7
    tiny_only = [np.array([[6.0, 6.0]])] + [np.array([[float(s), float(s)]]) for s in STRIDES[1:]]
    best = A.grid_best_iou(gb, tiny_only)
    covered_floor = [(floor_best[2] >= t) for t in objective.thresholds]
    assert objective.deficit(best) == sum(covered_floor) >= 1
    assert objective.score(best) < 0  # any deficit outweighs all recall


def test_grid_learning_keeps_every_bucket_at_or_above_detectron2_and_beats_it():
    boxes = np.concatenate([_random_boxes(500, 256, 256, seed=2, lo=4, hi=16), _random_boxes(100, 256, 256, seed=3, lo=40, hi=150)])
    boxes = np.clip(boxes, 0, 256)
    boxes = boxes[(boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)]
    gb = A.GridBoxes.build(boxes, np.tile([256, 256], (len(boxes), 1)), STRIDES)
    wh = boxes[:, 2:] - boxes[:, :2]
    learned = A.learn_anchors(wh, STRIDES, A.AnchorSearch(3, generations=60, seed=0), grid=gb)
    assert set(learned.final_fitness) == {(1, 3), (3, 1), "floor"} and learned.objective == "grid"
    assert len({len(s) * len(r) for s, r in zip(learned.sizes, learned.ratios)}) == 1
    ours = A.grid_metrics(gb, A.level_anchor_wh(learned.sizes, learned.ratios), counts=False)
    d2 = A.grid_metrics(gb, A.level_anchor_wh(*A.detectron2_default_anchors(STRIDES)), counts=False)
    for t in A.REPORT_IOUS:
        assert all(a >= b for a, b in zip(ours.bucket_covered[t], d2.bucket_covered[t])), t
    assert ours.recall[0.7] > d2.recall[0.7] and learned.deficit == 0


def test_enforce_floor_resets_levels_until_no_bucket_is_short():
    boxes = np.array([[100, 100, 164, 164], [10, 10, 16, 16]], dtype=float)  # a 64 px and a 6 px box
    gb = A.GridBoxes.build(boxes, np.array([[256, 256]] * 2), STRIDES)
    objective = A.GridObjective(gb, 0.7, floor=A.detectron2_default_anchors(STRIDES))
    tiny = [[6.0]] * 5
    ratios = [[0.5, 1.0, 2.0]] * 5
    assert objective.deficit(A.grid_best_iou(gb, A.level_anchor_wh(tiny, ratios))) > 0
    sizes, new_ratios, replaced, deficit = A.enforce_floor(objective, tiny, ratios, STRIDES, 3)
    assert deficit == 0 and replaced
    for level in replaced:
        assert sizes[level] == [8.0 * STRIDES[level]] and new_ratios[level] == [0.5, 1.0, 2.0]
    assert objective.deficit(A.grid_best_iou(gb, A.level_anchor_wh(sizes, new_ratios))) == 0
    assert A.floor_level_anchors(4.0, 6) == ([32.0 / math.sqrt(2.0), 32.0], [0.5, 1.0, 2.0])
    assert A.floor_level_anchors(4.0, 4) is None


def test_yolov5_style_baseline_is_seeded_and_improves_its_fitness():
    wh = _skewed_tiny_boxes(n=300)
    a = A.yolov5_style_anchors(wh, 15, generations=50, seed=0)
    b = A.yolov5_style_anchors(wh, 15, generations=50, seed=0)
    assert a.shape == (15, 2) and np.array_equal(a, b)
    assert np.all(np.diff(a.prod(axis=1)) >= 0) and (a >= 2.0).all()
    std = wh.std(axis=0)
    start = A.kmeans(wh / std, 15, seed=0)[0] * std
    assert A.fitness(wh, a) >= A.fitness(wh, start)


def test_cli_ratio_objective_still_selectable_and_grid_table_printed(tmp_path, capsys):
    data = _write_dataset(tmp_path / "train.json", _skewed_tiny_boxes(n=120))
    ugs_anchors([data, "--input-size", "256", "--generations", "10", "--no-progress", "--objective", "ratio",
                 "--out", str(tmp_path / "r.yaml")])
    printed = capsys.readouterr().out
    assert "on YOLOv5's ratio fitness (thr 4)" in printed and "objective ratio (thr 4)" in (tmp_path / "r.yaml").read_text()
    assert "| detectron2 FPN defaults | 0.7 |" in printed and "| after (ratio objective) | 0.5 |" in printed
    ugs_anchors([data, "--input-size", "256", "--generations", "10", "--no-progress", "--out", str(tmp_path / "g.yaml")])
    printed = capsys.readouterr().out
    assert "grid IoU >= 0.7" in printed and "| after (grid objective) | 0.7 |" in printed
    with pytest.raises(SystemExit, match=r"^ugs-anchors: --iou: expected a number in \(0, 1\], got 1.5$"):
        ugs_anchors([data, "--iou", "1.5", "--no-progress", "--out", str(tmp_path / "x.yaml")])


def test_bench_anchors_reports_every_set_and_the_timing(tmp_path):
    from ugs_d2.bench.anchors import skewed_box_coco
    from ugs_d2.cli.bench import run_command_line

    coco = skewed_box_coco(2000, seed=1)
    wh = np.array([a["bbox"][2:] for a in coco["annotations"]])
    size = np.sqrt(wh.prod(axis=1))
    assert len(wh) == 2000 and (size < 16).mean() == pytest.approx(0.70, abs=0.01)
    assert ((size >= 40) & (size <= 120)).mean() == pytest.approx(0.12, abs=0.01)
    out = tmp_path / "bench.md"
    outcome = run_command_line(["anchors", "--skewed-boxes", "400", "--generations", "5", "--out", str(out)])
    text = out.read_text()
    assert text == outcome["report"]
    for row in ("| detectron2 FPN defaults | 0.7 |", "| YOLOv5-style k-means+evolution", "| ugs-anchors --objective ratio | 0.5 |",
                "| ugs-anchors --objective grid --no-floor | 0.7 |", "| YOLOv5-style k-means + evolution | 1 | 5 |"):
        assert row in text
    with pytest.raises(SystemExit, match="^ugs-bench: --dataset: expected JSON:INPUT_SIZE"):
        run_command_line(["anchors", "--dataset", "train.json", "--out", str(tmp_path / "x.md")])
