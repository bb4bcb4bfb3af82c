"""Gradient-variance probe (paper Sec. 4.6): statistics, buckets, hooks, and ugs-gradvar."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from ugs_d2.cli import gradvar as gradvar_cli

from conftest import TINY_RUN, run_ugs_train, write_sweep_job
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ugs_d2.cli import gradvar as cli
from ugs_d2.cli.validate import _compose
from ugs_d2.config import ConfigError, to_detectron2_cfg
from ugs_d2.engine.gradvar import (
    ALL_BUCKETS,
    GradVarHook,
    LocalizationGradientProbe,
    WindowedStats,
    assign_buckets,
    combine_moments,
    moments,
)


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
    assert cli.BUCKET_ORDER == ALL_BUCKETS


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
    on = to_detectron2_cfg(_compose(["gradvar.enabled=true", "gradvar.period=5"]))
    assert on.GRADVAR.ENABLED is True and on.GRADVAR.PERIOD == 5
    with pytest.raises(ConfigError, match="gradvar.period: expected a positive integer"):
        to_detectron2_cfg(_compose(["gradvar.period=0"]))
    with pytest.raises(ValueError):
        GradVarHook(period=0)


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
    series_off, series_ce = (cli.load_gradvar(str(run_dirs[p])) for p in ("off", "ce_in"))
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

    pairs = gradvar_cli.pair_sweep(str(sweep), "ugs=off", "ugs=full")
    assert [label for label, _, _ in pairs] == ["experiment=t6,seed=0", "experiment=t6,seed=1"]
    last, _ = gradvar_cli.compare_sweep(pairs)
    (small,) = [row for row in last if row["bucket"] == "small"]
    assert small["ratio"][0] == pytest.approx(5.0) and small["ratio"][1] == pytest.approx(2 ** 0.5)
    assert small["cv2_ratio"][0] == pytest.approx(0.875)
    assert small["cv2_ratio"][1] == pytest.approx(1.25 / 2 ** 0.5)
    assert small["mag_ratio"][0] == pytest.approx(3.0) and small["ratio"][2] == 2
    averaged, _ = gradvar_cli.compare_sweep(pairs, mean=True)
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
