"""Gradient-variance probe (paper Sec. 4.6): statistics, buckets, hooks, and ugs-gradvar."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, run_ugs_train, write_sweep_job
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from ugs_d2.analysis import gradvar as gradvar_analysis
from ugs_d2.config import ConfigError, to_detectron2_cfg
from ugs_d2.engine.gradvar import (
    ALL_BUCKETS,
    GradVarHook,
    IterationGradientProbe,
    LocalizationGradientProbe,
    WindowedStats,
    assign_buckets,
    assign_levels,
    box_cells,
    combine_moments,
    is_localization_loss,
    moments,
    object_series_stats,
    region_means,
    series_summary,
)
from ugs_d2.harness.compose import compose as _compose


# --- statistics ----------------------------------------------------------------------------
def test_windowed_stats_match_numpy_over_the_last_window_iterations():
    rng = np.random.default_rng(0)
    iterations = [
        {"tiny": rng.normal(3.0, 2.0, n), "small": rng.exponential(1.0, 7)}
        for n in (5, 0, 1, 12, 3)
    ]
    iterations[2]["medium"] = np.array([1e6 + 1.0, 1e6 + 3.0])  # large offset: a stable formula
    stats = WindowedStats(window=3, buckets=("tiny", "small", "medium", "large"))
    for values in iterations:
        stats.add(values)
    assert len(stats) == 3
    window = iterations[-3:]  # the first two iterations have left the window
    summary = stats.summary()
    for bucket in ("tiny", "small", "medium"):
        pooled = np.concatenate([it[bucket] for it in window if bucket in it])
        assert summary[bucket]["count"] == pooled.size
        assert summary[bucket]["mean_abs"] == pytest.approx(pooled.mean(), rel=1e-12)
        assert summary[bucket]["var"] == pytest.approx(np.var(pooled), rel=1e-9)
    assert summary["large"] == {"count": 0.0}  # no samples: no mean, no variance


def test_one_sample_has_a_mean_but_no_variance_and_moments_pool_exactly():
    stats = WindowedStats(window=100, buckets=("tiny",))
    stats.add({"tiny": np.array([2.5])})
    assert stats.summary() == {"tiny": {"count": 1.0, "mean_abs": 2.5}}
    a, b = np.arange(5.0), np.array([10.0, -4.0])
    n, mean, m2 = combine_moments([moments(a), moments([]), moments(b)])
    both = np.concatenate([a, b])
    assert n == 7 and mean == pytest.approx(both.mean()) and m2 / n == pytest.approx(both.var())
    with pytest.raises(ValueError):
        WindowedStats(window=0)


@pytest.mark.parametrize(
    "size, bucket",
    [(0.0, "tiny"), (15.9, "tiny"), (16.0, "small"), (31.99, "small"), (32.0, "medium"),
     (95.9, "medium"), (96.0, "large"), (1000.0, "large")],
)
def test_size_buckets_are_half_open(size, bucket):
    assert assign_buckets([size]) == [bucket]


def test_the_cli_knows_the_buckets_in_order():
    assert gradvar_analysis.BUCKET_ORDER == ALL_BUCKETS


# --- the probe on a toy ROI head --------------------------------------------------------------
class ToyPredictor(nn.Module):
    def __init__(self, dim=6, num_classes=2):
        super().__init__()
        self.num_classes = num_classes
        self.cls = nn.Linear(dim, num_classes + 1)
        self.box = nn.Linear(dim, 4)

    def forward(self, x):
        return self.cls(x), self.box(x)


class ToyROIHeads(nn.Module):
    """Returns (proposals, losses) in training, like StandardROIHeads; per-sample box loss
    = sum of squared deltas (so d(loss_i)/d(f_i) is known), summed / R like detectron2."""

    def __init__(self):
        super().__init__()
        self.box_head = nn.Linear(5, 6)
        self.box_predictor = ToyPredictor()

    def forward(self, x, proposals, extra_pass=False):
        features = self.box_head(x)
        scores, deltas = self.box_predictor(features)
        if extra_pass:  # like UR's second box-head pass: must be ignored
            self.box_predictor(features * 2)
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        fg = (gt_classes >= 0) & (gt_classes < self.box_predictor.num_classes)
        box = (deltas[fg] ** 2).sum() / gt_classes.numel()
        cls = nn.functional.cross_entropy(scores, gt_classes)
        return proposals, {"loss_cls": cls, "loss_box_reg": 3.0 * box}


def toy_proposals():
    sides = [[4.0, 10.0, 20.0], [40.0, 100.0, 15.9, 50.0]]
    classes = [[0, 2, 1], [1, 0, 2, 0]]  # 2 = background
    out = []
    for s, c in zip(sides, classes):
        p = Instances((200, 200))
        s = torch.tensor(s)
        p.gt_boxes = Boxes(torch.stack([s * 0, s * 0 + 1, s, s + 1], dim=1))  # w = h = side
        p.gt_classes = torch.tensor(c)
        out.append(p)
    return out


@pytest.mark.parametrize("extra_pass", [False, True])
def test_probe_measures_only_the_per_sample_localization_gradient(extra_pass):
    torch.manual_seed(0)
    heads = ToyROIHeads().train()
    probe = LocalizationGradientProbe(heads).attach()
    x = torch.randn(7, 5)
    proposals = toy_proposals()
    _, losses = heads(x, proposals, extra_pass=extra_pass)
    samples = probe.pop()

    # expected: || d(3 * sum_j(delta_j^2)) / d f_i || for each foreground i, by GT side
    features = heads.box_head(x).detach().requires_grad_()
    deltas = heads.box_predictor.box(features)
    (grad,) = torch.autograd.grad(3.0 * (deltas ** 2).sum(), features)
    norms = grad.norm(dim=1).numpy()
    fg_side = {0: 4.0, 2: 20.0, 3: 40.0, 4: 100.0, 6: 50.0}  # row -> GT side, background skipped
    expected = {"tiny": [0], "small": [2], "medium": [3, 6], "large": [4]}
    for bucket, rows in expected.items():
        np.testing.assert_allclose(np.sort(samples[bucket]), np.sort(norms[rows]), rtol=1e-5)
    np.testing.assert_allclose(np.sort(samples["lt32"]), np.sort(norms[[0, 2]]), rtol=1e-5)
    assert sum(samples[b].size for b in ("tiny", "small", "medium", "large")) == len(fg_side)
    assert all(v.size == 0 for v in probe.pop().values())  # pop clears

    # the probe leaves the training gradients alone; in eval mode and once detached it is idle
    sum(losses.values()).backward()
    assert heads.box_head.weight.grad is not None
    heads.eval()
    heads(x, proposals)
    assert all(v.size == 0 for v in probe.pop().values())
    probe.detach()
    heads.train()
    heads(x, proposals)
    assert all(v.size == 0 for v in probe.pop().values())


# --- the probe on the real heads ------------------------------------------------------------
@pytest.mark.parametrize(
    "ugs", [{}, {"ROI__ENABLED": True, "RPN__ENABLED": True, "UM_WEIGHT": 0.5, "UR_WEIGHT": 0.5}],
    ids=["smooth_l1", "full_ugs"],
)
def test_probe_on_detectron2_heads_changes_no_gradient(ugs):
    from test_modeling import tiny_batch, tiny_cfg

    cfg = tiny_cfg(**ugs)
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = tiny_batch()

    def step(probe):
        model.zero_grad(set_to_none=True)
        model.train()
        torch.manual_seed(1)
        fg = []
        handle = model.roi_heads.register_forward_hook(
            lambda m, i, out: fg.append(sum(int((p.gt_classes < m.num_classes).sum())
                                             for p in out[0]))
        )
        with EventStorage(0):
            losses = model(batch)
        handle.remove()
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return grads, fg[0], probe.pop() if probe else None

    plain, _, _ = step(None)
    probe = LocalizationGradientProbe(model.roi_heads).attach()
    probed, num_fg, samples = step(probe)
    probe.detach()
    assert plain.keys() == probed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], probed[name], rtol=0, atol=0, msg=name)
    # one sample per foreground proposal of the first ROI pass (UR's second pass is ignored)
    assert num_fg > 0
    assert sum(samples[b].size for b in ("tiny", "small", "medium", "large")) == num_fg
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in samples.values())


# --- configuration ----------------------------------------------------------------------------
def test_gradvar_config_is_off_by_default_and_checked():
    d2 = to_detectron2_cfg(_compose([]))
    assert d2.GRADVAR.ENABLED is False and d2.GRADVAR.WINDOW == 100 and d2.GRADVAR.PERIOD == 20
    assert d2.GRADVAR.PROBE == "both" and d2.GRADVAR.PROBE_IMAGES == 4
    assert d2.GRADVAR.PROBE_PERIOD == 10
    assert (d2.GRADVAR.CANONICAL_BOX_SIZE, d2.GRADVAR.CANONICAL_LEVEL) == (224, 4)
    on = to_detectron2_cfg(_compose(["gradvar.enabled=true", "gradvar.period=5"]))
    assert on.GRADVAR.ENABLED is True and on.GRADVAR.PERIOD == 5
    with pytest.raises(ConfigError, match="gradvar.period: expected a positive integer"):
        to_detectron2_cfg(_compose(["gradvar.period=0"]))
    with pytest.raises(ConfigError, match="gradvar.probe_images: expected a positive integer"):
        to_detectron2_cfg(_compose(["gradvar.probe_images=0"]))
    with pytest.raises(ConfigError, match="^gradvar.probe: expected one of across_objects, "
                                          "across_iterations, both, got 'all'$"):
        to_detectron2_cfg(_compose(["gradvar.probe=all"]))
    with pytest.raises(ConfigError, match="^gradvar.probe_period: 60 leaves fewer than 2 probes"):
        to_detectron2_cfg(_compose(["gradvar.probe_period=60"]))
    # the across-objects probe alone does not probe across iterations: any probe_period
    to_detectron2_cfg(_compose(["gradvar.probe=across_objects", "gradvar.probe_period=60"]))
    with pytest.raises(ValueError):
        GradVarHook(period=0)


def test_only_the_faithful_probe_runs_on_project_detectors():
    cfg = _compose(["model=retinanet_r18_fpn", "gradvar.enabled=true", "gradvar.probe=across_iterations"])
    assert to_detectron2_cfg(cfg).GRADVAR.PROBE == "across_iterations"
    with pytest.raises(ConfigError, match="use gradvar.probe=across_iterations"):
        to_detectron2_cfg(_compose(["model=fcos_r18_fpn", "gradvar.enabled=true"]))


# --- end to end: two tiny runs and ugs-gradvar ----------------------------------------------
def run_gradvar(*args):
    return subprocess.run(
        [sys.executable, "-m", "ugs_d2.cli.gradvar", *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )


def test_tiny_runs_log_gradvar_and_ugs_gradvar_compares_them(tiny_dataset, tmp_path):
    run_dirs = {}
    for preset in ("off", "ce_in"):
        run_dir = tmp_path / preset
        args = TINY_RUN + [
            f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", f"ugs={preset}",
            "gradvar.enabled=true", "gradvar.period=1", "schedule.max_iter=4",
        ]
        proc = run_ugs_train(args, cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        records = [json.loads(line) for line in open(run_dir / "metrics.json")]
        logged = [r for r in records if any(k.startswith("gradvar/") for k in r)]
        assert logged, records
        last = logged[-1]
        for bucket in ALL_BUCKETS:
            assert f"gradvar/{bucket}/count" in last
        assert last["gradvar/lt32/count"] > 1 and last["gradvar/lt32/var"] >= 0
        run_dirs[preset] = run_dir

    proc = run_gradvar(run_dirs["off"], run_dirs["ce_in"])
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[4:]}
    series_off, series_ce = (gradvar_analysis.load_gradvar(str(run_dirs[p])) for p in ("off", "ce_in"))
    last_off, last_ce = series_off[max(series_off)], series_ce[max(series_ce)]
    with_var = [
        b for b in ALL_BUCKETS if "var" in last_off.get(b, {}) and "var" in last_ce.get(b, {})
    ]
    assert "lt32" in with_var
    for bucket in with_var:  # a ratio per bucket that both runs measured
        ratio = last_off[bucket]["var"] / last_ce[bucket]["var"]
        assert float(rows[bucket][3]) == pytest.approx(ratio, rel=1e-3)

    mean = run_gradvar(run_dirs["off"], run_dirs["ce_in"], "--mean")
    assert mean.returncode == 0 and "lt32" in mean.stdout


def test_ugs_gradvar_errors_are_one_line(tmp_path):
    missing = run_gradvar(tmp_path / "nope", tmp_path)
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"ugs-gradvar: {tmp_path / 'nope'}: no such run directory"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metrics.json").write_text('{"iteration": 19, "total_loss": 1.0}\n')
    proc = run_gradvar(plain, plain)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "train it with gradvar.enabled=true" in proc.stderr
    probed = tmp_path / "probed"
    probed.mkdir()
    (probed / "metrics.json").write_text(
        '{"iteration": 19, "gradvar/tiny/var": 4.0, "gradvar/tiny/count": 9}\n'
        '{"iteration": 39, "gradvar/tiny/var": 2.0, "gradvar/tiny/count": 9}\n'
    )
    ok = run_gradvar(probed, probed, "--iteration", 19)
    assert ok.returncode == 0 and "iteration A 19, B 19" in ok.stdout
    bad = run_gradvar(probed, probed, "--iteration", 7)
    assert bad.returncode != 0
    assert bad.stderr.strip() == (
        f"ugs-gradvar: {probed}: no gradvar statistics at iteration 7 (logged: 19, 39)"
    )


def _sweep_job(sweep, overrides, metrics, done=True):
    results = {"AP": 1.0, "APs": 1.0} if done else None
    return write_sweep_job(sweep, ",".join(overrides), overrides, metrics=metrics, results=results)


def _gv(*windows):
    """metrics.json records: one per (iteration, var, mean_abs) of the `small` bucket."""
    return [{"iteration": it, "gradvar/small/var": var, "gradvar/small/mean_abs": mag,
             "gradvar/small/count": 10} for it, var, mag in windows]


def test_ugs_gradvar_sweep_pairs_seeds_and_reports_mean_and_std(tmp_path):
    sweep = tmp_path / "multirun" / "t6"
    common = ["+experiment=t6", "name=t6"]
    # seed 0: last window var 8 vs 2 (ratio 4), |g| 2 vs 0.5 -> cv2 2 vs 8 (0.25), |g| ratio 4;
    #         iteration 19: var 4 vs 2 (2) -> averaged ratio 3
    _sweep_job(sweep, [*common, "ugs=off", "seed=0"], _gv((19, 4, 2), (39, 8, 2)))
    _sweep_job(sweep, [*common, "ugs=full", "seed=0"], _gv((19, 2, 1), (39, 2, 0.5)))
    # seed 1: var 12 vs 2 (6), cv2 3 vs 2 (1.5), |g| ratio 2; iteration 19: 6 vs 3 (2) -> 4
    _sweep_job(sweep, [*common, "ugs=off", "seed=1"], _gv((19, 6, 2), (39, 12, 2)))
    _sweep_job(sweep, [*common, "ugs=full", "seed=1"], _gv((19, 3, 1), (39, 2, 1)))
    # unpaired or unfinished runs are left out
    _sweep_job(sweep, [*common, "ugs=off", "seed=2"], _gv((19, 1, 1)))
    _sweep_job(sweep, [*common, "ugs=full", "seed=2"], _gv((19, 1, 1)), done=False)
    _sweep_job(sweep, [*common, "ugs=kl", "seed=0"], _gv((19, 1, 1)))

    pairs = gradvar_analysis.pair_sweep(str(sweep), "ugs=off", "ugs=full")
    assert [label for label, _, _ in pairs] == ["experiment=t6,seed=0", "experiment=t6,seed=1"]
    last, _ = gradvar_analysis.compare_sweep(pairs)
    (small,) = [row for row in last if row["bucket"] == "small"]
    assert small["ratio"][0] == pytest.approx(5.0) and small["ratio"][1] == pytest.approx(2 ** 0.5)
    assert small["cv2_ratio"][0] == pytest.approx(0.875)
    assert small["cv2_ratio"][1] == pytest.approx(1.25 / 2 ** 0.5)
    assert small["mag_ratio"][0] == pytest.approx(3.0) and small["ratio"][2] == 2
    averaged, _ = gradvar_analysis.compare_sweep(pairs, mean=True)
    (small,) = [row for row in averaged if row["bucket"] == "small"]
    assert small["ratio"][0] == pytest.approx(3.5) and small["ratio"][1] == pytest.approx(0.5 ** 0.5)

    out = tmp_path / "gradvar.md"
    proc = run_gradvar("--sweep", sweep, "--baseline", "ugs=off", "--against", "ugs=full", "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "| small | 5 +- 1.4 | 0.875 +- 0.88 | 3 +- 1.4 | 10 | 10 |" in text
    assert "| small | 3.5 +- 0.71 |" in text
    assert f"Regenerate: `ugs-gradvar --sweep {sweep} --baseline ugs=off --against ugs=full" in text


def test_ugs_gradvar_sweep_errors_are_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    _sweep_job(sweep, ["ugs=off", "seed=0"], _gv((19, 1, 1)))
    for args, message in [
        (["--baseline", "ugs"], "--baseline 'ugs': expected KEY=VALUE, e.g. ugs=off"),
        (["--baseline", "seed=0"], "--baseline seed=0 and --against ugs=full must set the same key"),
        ([], f"{sweep}: no complete ugs=off and ugs=full runs with otherwise equal overrides"),
    ]:
        proc = run_gradvar("--sweep", sweep, *args)
        assert proc.returncode != 0
        assert proc.stderr.strip() == f"ugs-gradvar: {message}"
    proc = run_gradvar("--sweep", sweep, "--mean")
    assert proc.returncode == 2 and "--sweep takes no" in proc.stderr


# === the across-iterations (faithful) probe ==================================================
def test_object_series_stats_on_a_hand_made_sequence():
    # 3 probes x 3 objects: m_A = 1, 2, 3 (mean 2, var 2/3, cv2 1/6); m_B = 2, 2, 2 (mean 2,
    # var 0, cv2 0); m_C = 0, 0, 0 (mean 0: in var and mean, left out of cv2)
    series = np.array([[1.0, 2.0, 0.0], [2.0, 2.0, 0.0], [3.0, 2.0, 0.0]])
    stats = object_series_stats(series)
    assert stats["count"] == 3 and stats["probes"] == 3
    assert stats["cv2"] == pytest.approx((1 / 6 + 0) / 2)
    assert stats["var"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert stats["mean"] == pytest.approx((2 + 2 + 0) / 3)
    # scale-free: multiplying every gradient by 1000 leaves cv2 alone, var grows 1e6-fold
    scaled = object_series_stats(1000 * series)
    assert scaled["cv2"] == pytest.approx(stats["cv2"])
    assert scaled["var"] == pytest.approx(1e6 * stats["var"])
    # one probe: a mean but no variance; no object: counts only
    assert object_series_stats(series[:1]) == {"count": 3.0, "probes": 1.0, "mean": pytest.approx(1.0)}
    assert object_series_stats(np.zeros((4, 0))) == {"count": 0.0, "probes": 4.0}
    with pytest.raises(ValueError, match=r"\(T, K\)"):
        object_series_stats(np.zeros(3))


def test_series_summary_buckets_objects_and_pools_lt32():
    # objects: tiny (var 1, mean 2 -> cv2 1/4), small (var 4, mean 4 -> cv2 1/4... ) , large
    series = np.array([[1.0, 2.0, 10.0], [3.0, 6.0, 10.0]])
    summary = series_summary(series, ["tiny", "small", "large"])
    assert set(summary) == set(ALL_BUCKETS)
    assert summary["tiny"]["var"] == pytest.approx(1.0) and summary["tiny"]["cv2"] == pytest.approx(0.25)
    assert summary["small"]["var"] == pytest.approx(4.0) and summary["small"]["cv2"] == pytest.approx(0.25)
    assert summary["lt32"]["count"] == 2 and summary["lt32"]["var"] == pytest.approx(2.5)
    assert summary["lt32"]["mean"] == pytest.approx(3.0)
    assert summary["large"]["cv2"] == 0.0 and summary["medium"] == {"count": 0.0, "probes": 2.0}


def test_region_means_on_a_hand_made_gradient_map():
    norm_map = torch.arange(16.0).reshape(4, 4)  # stride 4: a 16 x 16 px input
    boxes = torch.tensor([
        [2.0, 2.0, 6.0, 6.0],     # cells x 0-1, y 0-1: (0 + 1 + 4 + 5) / 4
        [5.0, 5.0, 6.0, 6.0],     # inside one cell (1, 1): 5
        [0.0, 0.0, 8.0, 4.0],     # aligned to the grid: x 0-1, y 0: (0 + 1) / 2
        [13.0, 9.0, 30.0, 30.0],  # past the map's edge: clipped to x 3, y 2-3: (11 + 15) / 2
        [20.0, 20.0, 24.0, 24.0],  # wholly outside: the last cell, 15
    ])
    expected = [2.5, 5.0, 0.5, 13.0, 15.0]
    np.testing.assert_allclose(region_means(norm_map, boxes, 4).numpy(), expected)
    assert box_cells([5.0, 5.0, 6.0, 6.0], 4, 4, 4) == (1, 2, 1, 2)


@pytest.mark.parametrize(
    "side, raw",  # raw = floor(4 + log2(side / 224)), by hand
    [(8.0, -1), (111.0, 2), (112.0, 3), (223.0, 3), (224.0, 4), (447.0, 4), (448.0, 5), (2000.0, 7)],
)
def test_objects_go_to_the_roi_poolers_level(side, raw):
    # floor(4 + log2(sqrt(area) / 224)) clamped to the levels, as detectron2's ROIPooler
    box = torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])
    assert assign_levels(box, 2, 5, 224, 4).tolist() == [min(max(raw, 2), 5)]  # R-CNN's p2-p5
    assert assign_levels(box, 3, 7, 224, 4).tolist() == [min(max(raw, 3), 7)]  # RetinaNet's p3-p7
    assert assign_levels(box, 2, 5, 112, 3).tolist() == [min(max(raw, 2), 5)]  # same rule, halved


def test_the_localization_losses_are_chosen_by_name():
    chosen = ["loss_rpn_loc", "loss_box_reg", "loss_fcos_loc", "loss_box_reg_stage2", "loss_um",
              "loss_um_rpn", "loss_um_roi_stage1"]
    left_out = ["loss_rpn_cls", "loss_cls", "loss_ur", "loss_fcos_cls", "loss_fcos_ctr",
                "loss_cls_stage0", "rpn_entropy"]
    assert all(is_localization_loss(k) for k in chosen)
    assert not any(is_localization_loss(k) for k in left_out)


def _probe_batch():
    """Two images whose boxes go to p2, p3 and p4 (sides 10, 120, 240 px; 20 and 40 px)."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for (h, w), boxes in (
        ((256, 256), [[5.0, 5.0, 15.0, 15.0], [20.0, 30.0, 140.0, 150.0], [8.0, 8.0, 248.0, 248.0]]),
        ((96, 128), [[60.0, 10.0, 80.0, 30.0], [3.0, 40.0, 43.0, 80.0]]),
    ):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor([0, 1, 2][: len(boxes)])
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


@pytest.mark.parametrize(
    "ugs", [{}, {"ROI__ENABLED": True, "RPN__ENABLED": True, "UM_WEIGHT": 0.5, "UR_WEIGHT": 0.5}],
    ids=["l1", "full_ugs"],
)
def test_faithful_probe_measures_the_localization_gradient_and_leaves_no_trace(ugs):
    import math

    from test_modeling import tiny_cfg

    cfg = tiny_cfg(**ugs)  # BatchNorm in the backbone: train mode updates running statistics
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _probe_batch()
    probe = IterationGradientProbe(model, batch, seed=3)
    assert probe.level_names == ["p2", "p3", "p4", "p5"]
    assert probe.levels.tolist() == [2, 3, 4, 2, 2]
    assert probe.buckets == ["tiny", "large", "large", "small", "medium"]

    buffers = {n: b.clone() for n, b in model.named_buffers()}
    torch.manual_seed(123)
    np.random.seed(5)
    rng = torch.get_rng_state()
    with EventStorage(7) as storage:
        storage.put_scalar("training/scalar", 1.0)
        values = probe.measure()
        assert set(storage.latest()) == {"training/scalar"}  # the heads logged elsewhere
    assert torch.equal(torch.get_rng_state(), rng)
    assert np.random.randint(1 << 30) == np.random.RandomState(5).randint(1 << 30)
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=0, atol=0, msg=name)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and getattr(model, "ur_weight", 0.0) == ugs.get("UR_WEIGHT", 0.0)
    assert "loss_ur" not in probe.seen_keys  # UR was not even computed
    expected_keys = {"loss_rpn_loc", "loss_box_reg"}
    if ugs:
        assert {k for k in probe.loss_keys if k.startswith("loss_um")}, probe.loss_keys
        expected_keys |= {k for k in probe.loss_keys if k.startswith("loss_um")}
    assert set(probe.loss_keys) == expected_keys
    np.testing.assert_array_equal(probe.measure(), values)  # same weights, same seed: same m_o

    # by hand: the plain training forward (with UR's second pass where UGS has it), same seed;
    # dL_loc/dP_l for the named losses; channel norm; the mean over the box's cells
    captured = []
    handle = model.backbone.register_forward_hook(lambda m, i, out: captured.append(out))
    torch.manual_seed(3)
    with EventStorage(0):
        losses = model(batch)
    handle.remove()
    if ugs:
        assert "loss_ur" in losses
    loss = sum(losses[k] for k in expected_keys)
    names = ["p2", "p3", "p4", "p5"]
    grads = dict(zip(names, torch.autograd.grad(loss, [captured[0][n] for n in names])))
    expected = []
    for image, item in enumerate(batch):
        for box in item["instances"].gt_boxes.tensor.tolist():
            side = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            level = min(max(math.floor(4 + math.log2(side / 224)), 2), 5)
            stride = 2 ** level
            norm = grads[f"p{level}"][image].norm(dim=0)
            x0, y0 = math.floor(box[0] / stride), math.floor(box[1] / stride)
            x1, y1 = max(math.ceil(box[2] / stride), x0 + 1), max(math.ceil(box[3] / stride), y0 + 1)
            expected.append(norm[y0:y1, x0:x1].mean().item())
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert (values > 0).all()
    # and a training-mode forward does move the BatchNorm statistics the probe restores
    moved = [n for n, b in model.named_buffers() if "running_mean" in n and not torch.equal(b, buffers[n])]
    assert moved


# --- end to end: tiny runs with the faithful probe ------------------------------------------
def _final_state(run_dir):
    return torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]


def _records(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.json")]


@pytest.mark.slow  # 2 tiny trainings each (about a minute on 2 busy cores)
@pytest.mark.parametrize("preset", ["off", "full"])
def test_faithful_probe_logs_its_window_and_leaves_training_identical(tiny_dataset, tmp_path, preset):
    common = TINY_RUN + [f"dataset.root={tiny_dataset}", f"ugs={preset}", "schedule.max_iter=4",
                         "wandb.enabled=false"]
    probed, plain = tmp_path / "probed", tmp_path / "plain"
    for run_dir, extra in (
        (probed, ["gradvar.enabled=true", "gradvar.probe=both", "gradvar.window=4",
                  "gradvar.probe_period=2", "gradvar.probe_images=3"]),
        (plain, []),
    ):
        proc = run_ugs_train(common + [f"hydra.run.dir={run_dir}", *extra], cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    records = _records(probed)
    logged = [r for r in records if any(k.startswith("gradvar_faithful/") for k in r)]
    assert [r["iteration"] for r in logged] == [3]  # one window: iterations 0-3, probes at 1, 3
    last = logged[0]
    assert last["gradvar_faithful/probes"] == 2
    for bucket in ALL_BUCKETS:
        assert f"gradvar_faithful/{bucket}/count" in last
    assert last["gradvar_faithful/lt32/count"] >= 1
    assert last["gradvar_faithful/lt32/cv2"] >= 0 and last["gradvar_faithful/lt32/var"] >= 0
    assert last["gradvar_faithful/lt32/mean"] > 0
    assert "gradvar/lt32/count" in last  # gradvar.probe=both: the across-objects probe too
    log = (probed / "log.txt").read_text()
    assert "L_loc = loss_box_reg + " in log and ("loss_um" in log) == (preset == "full")

    # the probe changed nothing: same losses at every logged iteration, same final weights
    def losses(run_dir):
        return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss_") or k == "total_loss"}
                for r in _records(run_dir) if "total_loss" in r}

    assert losses(probed) == losses(plain) and losses(plain)
    a, b = _final_state(probed), _final_state(plain)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    expected_loss = {"off": "L1 (SMOOTH_L1_BETA 0) in RPN and ROI head",
                     "full": "UGS bins in RPN and ROI head + UM + UR"}[preset]
    assert gradvar_analysis.describe_loss(str(probed)) == expected_loss


@pytest.mark.slow
@pytest.mark.parametrize("model, loc_key", [("retinanet_r18_fpn", "loss_box_reg"),
                                            ("fcos_r18_fpn", "loss_fcos_loc")])
def test_faithful_probe_runs_on_dense_detectors(tiny_dataset, tmp_path, model, loc_key):
    run_dir = tmp_path / model
    args = TINY_RUN + [
        f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", f"model={model}", "ugs=full",
        "schedule.max_iter=4", "wandb.enabled=false", "gradvar.enabled=true",
        "gradvar.probe=across_iterations", "gradvar.window=4", "gradvar.probe_period=2",
    ]
    args = [a for a in args if not a.startswith("model.roi.") and not a.startswith("model.rpn.")]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (last,) = [r for r in _records(run_dir) if "gradvar_faithful/probes" in r]
    assert last["gradvar_faithful/probes"] == 2 and last["gradvar_faithful/lt32/mean"] > 0
    assert not any(k.startswith("gradvar/") for k in last)
    log = (run_dir / "log.txt").read_text()
    assert f"L_loc = {loc_key} + loss_um" in log and "loss_ur (" not in log


# --- ugs-gradvar on the faithful probe -------------------------------------------------------
def _d2_yaml(beta=0.0, bins=False, um=0.0, ur=0.0, reg="smooth_l1"):
    stage = f"{{ENABLED: {str(bins).lower()}, REG_LOSS: {reg}}}"
    head = f"{{BBOX_REG_LOSS_TYPE: {'giou' if reg == 'giou' else 'smooth_l1'}, SMOOTH_L1_BETA: {beta}}}"
    return (f"MODEL:\n  META_ARCHITECTURE: GeneralizedRCNN\n  RPN: {head}\n  ROI_BOX_HEAD: {head}\n"
            f"  UGS: {{RPN: {stage}, ROI: {stage}, UM_WEIGHT: {um}, UR_WEIGHT: {ur}}}\n")


def test_the_localization_loss_is_named_from_the_run_config(tmp_path):
    import yaml

    def name(text):
        return gradvar_analysis.describe_d2_config(yaml.safe_load(text))

    assert name(_d2_yaml(0.0)) == "L1 (SMOOTH_L1_BETA 0) in RPN and ROI head"
    assert name(_d2_yaml(1.0)) == "Smooth-L1 (beta 1) in RPN and ROI head"
    assert name(_d2_yaml(reg="giou")) == "GIoU in RPN and ROI head"
    assert name(_d2_yaml(reg="kl")) == "KL in RPN and ROI head"
    assert name(_d2_yaml(bins=True, um=0.5, ur=0.5)) == "UGS bins in RPN and ROI head + UM + UR"
    mixed = _d2_yaml(0.0).replace("ROI_BOX_HEAD: {BBOX_REG_LOSS_TYPE: smooth_l1, SMOOTH_L1_BETA: 0.0}",
                                  "ROI_BOX_HEAD: {BBOX_REG_LOSS_TYPE: smooth_l1, SMOOTH_L1_BETA: 1.0}")
    assert name(mixed) == "RPN: L1 (SMOOTH_L1_BETA 0); ROI head: Smooth-L1 (beta 1)"
    assert name("MODEL: {META_ARCHITECTURE: UGSRetinaNet, RETINANET: {BBOX_REG_LOSS_TYPE: smooth_l1, "
                "SMOOTH_L1_LOSS_BETA: 0.1}}") == "Smooth-L1 (beta 0.1)"
    # a run without detectron2_config.yaml: its .hydra/config.yaml ugs: block
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "ugs:\n  rpn: {enabled: false, reg_loss: smooth_l1}\n  roi: {enabled: false, reg_loss: smooth_l1}\n"
        "  um_weight: 0.0\n  ur_weight: 0.0\n")
    assert gradvar_analysis.describe_loss(str(run)) == "L1 (SMOOTH_L1_BETA 0) in RPN and ROI head"
    (run / ".hydra" / "config.yaml").write_text(
        "ugs:\n  rpn: {enabled: false, reg_loss: smooth_l1, smooth_l1_beta: 1.0}\n"
        "  roi: {enabled: false, reg_loss: smooth_l1, smooth_l1_beta: 1.0}\n")
    assert gradvar_analysis.describe_loss(str(run)) == "Smooth-L1 (beta 1) in RPN and ROI head"
    assert gradvar_analysis.describe_loss(str(tmp_path)) == "unknown"


def _fv(*windows):
    """metrics.json records of the faithful probe: (iteration, cv2, var) of `lt32`, mean 1."""
    return [{"iteration": it, "gradvar_faithful/lt32/cv2": cv2, "gradvar_faithful/lt32/var": var,
             "gradvar_faithful/lt32/mean": 1.0, "gradvar_faithful/lt32/count": 5,
             "gradvar_faithful/probes": 10} for it, cv2, var in windows]


def _faithful_sweep(tmp_path):
    sweep = tmp_path / "multirun" / "t6"
    # seed 0: last window cv2 0.3 vs 0.1 (3), var 6 vs 3 (2); window 99: 0.4/0.1 (4), 8/2 (4)
    # seed 1: last window cv2 0.5 vs 0.1 (5), var 10 vs 2 (5); window 99: 0.2/0.1 (2), 4/4 (1)
    runs = {
        ("off", 0): _fv((99, 0.4, 8), (199, 0.3, 6)), ("full", 0): _fv((99, 0.1, 2), (199, 0.1, 3)),
        ("off", 1): _fv((99, 0.2, 4), (199, 0.5, 10)), ("full", 1): _fv((99, 0.1, 4), (199, 0.1, 2)),
        ("smooth_l1", 0): _fv((99, 0.2, 1), (199, 0.2, 1)),
    }
    yamls = {"off": _d2_yaml(0.0), "smooth_l1": _d2_yaml(1.0), "full": _d2_yaml(bins=True, um=0.5, ur=0.5)}
    for (ugs, seed), metrics in runs.items():
        job = _sweep_job(sweep, [f"ugs={ugs}", f"seed={seed}"], metrics)
        (job / "detectron2_config.yaml").write_text(yamls[ugs])
    return sweep


def test_ugs_gradvar_sweep_reports_the_faithful_ratios_and_names_the_baseline(tmp_path):
    sweep = _faithful_sweep(tmp_path)
    pairs = gradvar_analysis.pair_sweep(str(sweep), "ugs=off", "ugs=full")
    last, _ = gradvar_analysis.compare_sweep_faithful(pairs)
    (lt32,) = last
    assert lt32["cv2_ratio"][0] == pytest.approx(4.0) and lt32["cv2_ratio"][1] == pytest.approx(2 ** 0.5)
    assert lt32["var_ratio"][0] == pytest.approx(3.5) and lt32["var_ratio"][1] == pytest.approx(4.5 ** 0.5)
    averaged, _ = gradvar_analysis.compare_sweep_faithful(pairs, mean=True)
    assert averaged[0]["cv2_ratio"][:2] == (pytest.approx(3.5), pytest.approx(0.0))
    assert averaged[0]["var_ratio"][:2] == (pytest.approx(3.0), pytest.approx(0.0))

    out = tmp_path / "gradvar.md"
    proc = run_gradvar("--sweep", sweep, "--baseline", "ugs=off", "--against", "ugs=full", "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "A = `ugs=off`: **L1 (SMOOTH_L1_BETA 0) in RPN and ROI head**" in text
    assert "B = `ugs=full`: **UGS bins in RPN and ROI head + UM + UR**" in text
    assert "| lt32 | 4 +- 1.4 | 3.5 +- 2.1 | 1 +- 0 | 5 | 5 |" in text
    assert "| lt32 | 3.5 +- 0 | 3 +- 0 | 1 +- 0 | 5 | 5 |" in text
    assert "Across objects" not in text  # these runs logged only the faithful probe

    proc = run_gradvar("--sweep", sweep, "--baseline", "ugs=smooth_l1", "--against", "ugs=full")
    assert proc.returncode == 0, proc.stderr
    assert "A = `ugs=smooth_l1`: **Smooth-L1 (beta 1) in RPN and ROI head**" in proc.stdout
    assert "| lt32 | 2 | 0.3333 | 1 | 5 | 5 |" in proc.stdout  # 0.2/0.1, 1/3 (seed 0 only)


def test_ugs_gradvar_compares_two_runs_on_both_probes(tmp_path):
    sweep = _faithful_sweep(tmp_path)
    off, full = sweep / "ugs=off,seed=0", sweep / "ugs=full,seed=0"
    proc = run_gradvar(off, full)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"A = {off}: L1 (SMOOTH_L1_BETA 0) in RPN and ROI head"
    assert lines[1] == f"B = {full}: UGS bins in RPN and ROI head + UM + UR"
    assert lines[2].startswith("Across iterations (paper Sec. 4.6)") and "iteration A 199, B 199" in lines[2]
    assert lines[3].split()[:4] == ["bucket", "cv2", "A", "cv2"]
    cells = lines[4].split()  # bucket cv2A cv2B cv2A/B varA varB varA/B meanA meanB objA objB
    assert cells[0] == "lt32" and len(lines) == 5
    assert [float(c) for c in cells[1:7]] == pytest.approx([0.3, 0.1, 3.0, 6.0, 3.0, 2.0])
    mean = run_gradvar(off, full, "--mean")
    cells = mean.stdout.splitlines()[4].split()
    assert [float(cells[3]), float(cells[6])] == pytest.approx([3.5, 3.0])  # (4 + 3) / 2, (4 + 2) / 2
    # both probes logged: two tables
    for run, records in ((off, _gv((199, 8, 2))), (full, _gv((199, 2, 1)))):
        with open(run / "metrics.json", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
    both = run_gradvar(off, full)
    assert both.returncode == 0 and "Across objects: ROI localization-loss gradient" in both.stdout
