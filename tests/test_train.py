"""End to end through the real CLI: ugs-train trains a few iterations and writes results.json."""
import importlib.metadata
import json
import os
import platform

from conftest import TINY_RUN, run_ugs_train

from ugs_d2.evaluation.results import COCO_KEYS


def test_ugs_train_writes_results_and_done_marker(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = TINY_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(run_dir / "results.json") as f:
        results = json.load(f)
    for key in COCO_KEYS:
        assert key in results
    assert set(results["per_class_AP"]) == {
        c["name"] for c in json.load(open(os.path.join(tiny_dataset, "annotations", "val.json")))["categories"]
    }
    assert results["iterations"] == 4 and results["wall_time_s"] > 0
    # what ran: this interpreter's detectron2 build, packages and hardware (docs/reproduction.md)
    from ugs_d2 import compat

    env = results["environment"]
    assert env["detectron2"] == compat.detectron2_build()
    assert env["detectron2"]["kind"] in results["detectron2"]
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert env["packages"]["numpy"] == importlib.metadata.version("numpy")
    assert env["python"] == platform.python_version() and env["cpu"] and isinstance(env["gpus"], list)
    assert (run_dir / "done").is_file()
    assert (run_dir / "metrics.json").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "detectron2_config.yaml").is_file()
    assert (run_dir / "model_final.pth").is_file()
    assert "[ugs-train] bbox: AP" in proc.stdout

    # Rerunning the same command finds the finished run and only prints its results.
    again = run_ugs_train(args, cwd=str(tmp_path))
    assert again.returncode == 0 and "already done" in again.stdout


def test_cli_rejects_unknown_key_in_one_line(tmp_path):
    proc = run_ugs_train(["schedule.max_iterr=3"], cwd=str(tmp_path))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("ugs-train: unknown override key 'schedule.max_iterr'")
    assert "did you mean schedule.max_iter" in lines[-1]


def test_missing_dataset_is_one_line(tmp_path):
    proc = run_ugs_train(
        TINY_RUN + [f"dataset.root={tmp_path}/absent", "dataset.generate=null", f"hydra.run.dir={tmp_path}/r"],
        cwd=str(tmp_path),
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ugs-train: dataset.root: directory") and "absent" in last
