"""``ugs-results`` on a hand-made sweep directory with known numbers, and the Hydra callback."""
import csv
import os

import pytest
from conftest import write_sweep_job
from omegaconf import OmegaConf

from ugs_d2.analysis import sweep_report
from ugs_d2.analysis.results import collect
from ugs_d2.cli import results as collector
from ugs_d2.harness.callbacks import CollectResults

COMMON = ["+experiment=fake", "dataset.root=/data/synth", "num_workers=0", "device=cpu"]
# wandb.mode differs between jobs but is an exclude_key of the runs: no effect on the rows


def _job(sweep, name, overrides, num, results=None, metrics=None, failed=None):
    if results is not None:
        results = {"AP50": 40.0, "AP75": 10.0, "APm": 30.0, "APl": None, "per_class_AP": {"a": 1.0},
                   "iterations": 100, "wall_time_s": 1.0, **results}
    return write_sweep_job(sweep, name, overrides, num, results, metrics, failed)


@pytest.fixture
def sweep(tmp_path):
    """ugs=off: 3 seeds; ugs=full: 2 seeds done + 1 incomplete; ugs=kl: 1 failed job."""
    sweep = tmp_path / "multirun" / "fake"
    gradvar = lambda scale: [  # noqa: E731
        {"iteration": i, "gradvar/small/var": scale * (i + 1), "gradvar/small/count": 7,
         "gradvar/large/var": 0.5 * scale} for i in range(0, 40, 10)
    ] + [{"iteration": 30, "gradvar/small/var": scale * 40}]  # a duplicated iteration (resumed run)
    for seed, (ap, aps) in enumerate([(20.0, 10.0), (21.0, 11.0), (23.0, 11.0)]):
        mode = "wandb.mode=online" if seed else "wandb.mode=offline"
        _job(sweep, f"ugs=off,seed={seed}", [*COMMON, "ugs=off", f"seed={seed}", mode], num=seed,
             results={"AP": ap, "APs": aps, "APt": 5.0}, metrics=gradvar(2.0))
    for seed, (ap, aps) in enumerate([(24.0, 15.0), (25.0, 16.0)]):
        _job(sweep, f"ugs=full,seed={seed}", [*COMMON, "ugs=full", f"seed={seed}"], num=3 + seed,
             results={"AP": ap, "APs": aps, "APt": None}, metrics=gradvar(1.0))
    _job(sweep, "ugs=full,seed=2", [*COMMON, "ugs=full", "seed=2"], num=5,
         metrics=[{"iteration": 99, "total_loss": 1.0}])
    _job(sweep, "ugs=kl,seed=0", [*COMMON, "ugs=kl", "seed=0"], num=6,
         failed="RuntimeError: boom\n\nTraceback ...\n")
    (sweep / "multirun.yaml").write_text(
        "name: fake\nhydra:\n  overrides:\n    task:\n    - +experiment=fake\n    - seed=0,1,2\n"
    )
    return sweep


def test_collect_groups_and_statuses(sweep):
    c = collect(str(sweep))
    assert c.name == "fake"
    assert c.varying == ["ugs"]
    # num_workers, device, seed and the runs' exclude_keys (wandb.mode) are dropped
    assert c.common == ["dataset.root=/data/synth", "experiment=fake"]
    assert [c.value(g, "ugs") for g in c.groups] == ["off", "full", "kl"]  # sweep order
    statuses = {os.path.basename(j.path): (j.status, j.detail) for j in c.jobs}
    assert statuses["ugs=full,seed=2"] == ("incomplete", "last logged iteration 99")
    assert statuses["ugs=kl,seed=0"] == ("failed", "RuntimeError: boom")
    assert c.metrics == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APt"]
    off, full, kl = c.groups
    mean, std, n = off.stats("AP")
    assert (round(mean, 6), round(std, 6), n) == (21.333333, 1.527525, 3)  # sample std (n - 1)
    mean, std, n = full.stats("AP")
    assert (mean, round(std, 6), n) == (24.5, 0.707107, 2)
    assert off.stats("AP50") == (40.0, 0.0, 3)
    assert full.stats("APl") == (None, None, 0)
    assert kl.stats("AP") == (None, None, 0)


def test_cli_writes_table_csv_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "results" / "fake"
    collector.main([str(sweep), "--out", str(out)])
    md = (tmp_path / "results" / "fake.md").read_text()
    assert capsys.readouterr().out == md
    assert md.startswith(f"# fake\n\nRegenerate this file: `ugs-results {sweep} --out {out}`")
    assert "`ugs-train -m +experiment=fake seed=0,1,2`" in md
    assert "| ugs | n | AP | AP50 | AP75 | APs | APm | APl | APt |" in md
    assert "| off | 3 | 21.3 ± 1.5 | 40.0 ± 0.0 | 10.0 ± 0.0 | 10.7 ± 0.6 | 30.0 ± 0.0 | n/a | 5.0 ± 0.0 |" in md
    assert "| full | 2 | 24.5 ± 0.7 | 40.0 ± 0.0 | 10.0 ± 0.0 | 15.5 ± 0.7 | 30.0 ± 0.0 | n/a | n/a |" in md
    assert "| kl | 0 | n/a |" in md
    assert "5 of 7 jobs complete." in md
    assert "| `ugs=full,seed=2` | incomplete | last logged iteration 99 |" in md
    assert "| `ugs=kl,seed=0` | failed | RuntimeError: boom |" in md

    with open(tmp_path / "results" / "fake.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["ugs"] for r in rows] == ["off", "full", "kl"]
    assert float(rows[0]["AP_mean"]) == pytest.approx(64 / 3)
    assert float(rows[0]["AP_std"]) == pytest.approx((7 / 3) ** 0.5)
    assert (rows[1]["n"], rows[1]["n_incomplete"], rows[2]["n_failed"]) == ("2", "1", "1")
    assert rows[2]["AP_mean"] == rows[2]["AP_std"] == ""
    assert rows[0]["overrides"] == "dataset.root=/data/synth,experiment=fake,ugs=off"

    for png in ("fake_ugs.png", "fake_gradvar.png"):
        with open(tmp_path / "results" / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    assert not [n for n in os.listdir(tmp_path / "results") if n.startswith(".tmp-")]
    series = sweep_report._gradvar_series(collect(str(sweep)).groups[0].jobs[0])
    assert series == {"small": {0: 2.0, 10: 22.0, 20: 42.0, 30: 80.0}, "large": {0: 1.0, 10: 1.0, 20: 1.0}}


def test_single_run_numeric_sweep_and_default_out(tmp_path, monkeypatch):
    sweep = tmp_path / "sw"
    for i, (w, rho) in enumerate([(0.1, 0.5), (0.5, 0.5), (0.1, 1.0)]):
        _job(sweep, f"j{i}", [f"ugs.um_weight={w}", f"ugs.ur_rho={rho}", "seed=0"], num=i,
             results={"AP": 10.0 + i, "APs": 5.0 + i})
    monkeypatch.chdir(tmp_path)
    written = sweep_report.collect_and_write(str(sweep))  # no multirun.yaml: name = the folder's
    assert written["md"] == os.path.join("results", "sw.md")
    assert "| 0.1 | 0.5 | 1 | 10.0 | 40.0 |" in written["markdown"]  # one run: no ±
    assert sorted(os.listdir(tmp_path / "results")) == [
        "sw.csv", "sw.md", "sw_ugs.um_weight.png", "sw_ugs.ur_rho.png"]


def test_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="^ugs-results: .* is not a directory$"):
        collector.main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="no Hydra job directory"):
        collector.main([str(tmp_path)])


def test_callback_writes_into_sweep_and_results_dir(sweep, tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    CollectResults(results_dir=str(tmp_path / "res")).on_multirun_end(config)
    assert (sweep / "results.md").is_file() and (sweep / "results_ugs.png").is_file()
    assert "| off | 3 | 21.3 ± 1.5 |" in (tmp_path / "res" / "fake.md").read_text()


def test_callback_never_raises(tmp_path, caplog):
    CollectResults().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "no")}}}))
    CollectResults().on_multirun_end(OmegaConf.create({}))  # no hydra node at all
    assert "CollectResults" in caplog.text


def test_callback_collects_at_exit_when_the_sweep_raised(sweep):
    callback = CollectResults()
    callback.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    callback._collect_at_exit()  # what atexit runs when Hydra skipped on_multirun_end
    assert (sweep / "results.md").is_file()
    os.remove(sweep / "results.md")
    callback._collect_at_exit()  # only once
    assert not (sweep / "results.md").exists()


def test_callback_marks_failed_jobs(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    callback = CollectResults()
    ret = JobReturn()
    ret.status, ret._return_value = JobStatus.FAILED, ValueError("bad value")
    callback.on_job_end(config, ret)
    assert (tmp_path / "failed").read_text().startswith("ValueError: bad value\n")
    callback.on_job_start(config)  # a rerun clears it
    assert not (tmp_path / "failed").exists()
