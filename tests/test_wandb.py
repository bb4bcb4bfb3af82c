"""W&B: an offline run writes wandb's own run file with every logged scalar, read back here;
``wandb.enabled=false`` and a missing wandb both train normally."""
import glob
import json
import os
import struct

import pytest
from conftest import TINY_RUN, run_ugs_train

from ugs_d2.engine.wandb_writer import RUN_ID_FILE, wandb_run_id
from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.train import run_dirname

# wandb's transaction log (``run-<id>.wandb``): a 7-byte file header (":W&B", magic, version),
# then leveldb-log records (crc32 4, length 2, type 1, data) in 32 KiB blocks; the data of
# FULL/FIRST..MIDDLE..LAST records is one serialized ``wandb_internal_pb2.Record``.
_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path):
    """Every protobuf ``Record`` of an offline wandb run file (wandb ships no Python reader)."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic, version)
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # zero padding up to the next block
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding
            pos += left_in_block
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            pending = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        elif kind == _LAST:
            pending += chunk
        else:
            raise AssertionError(f"unknown record type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def _history(records):
    """{step: {key: value}} of the run's history records."""
    steps = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json) if item.value_json else None
        step = record.history.step.num if record.history.HasField("step") else row.get("_step")
        steps.setdefault(int(step), {}).update(row)
    return steps


def test_offline_wandb_run_holds_every_logged_scalar(tiny_dataset, tmp_path):
    pytest.importorskip("wandb")
    run_dir = tmp_path / "run"
    args = TINY_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "seed=3"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    files = glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 1, os.listdir(run_dir / "wandb")
    records = read_wandb_records(files[0])

    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].run_id == run_id and runs[0].project == "ugs_d2"
    assert runs[0].run_group == "default"  # the sweep name (`name`)
    # name: the override dirname (as the default run directory's name); job_type: without seed
    excluded = {"num_workers", "device"}
    task = sorted(a for a in args if a.split("=")[0] not in excluded and not a.startswith("hydra."))
    assert runs[0].display_name == run_dirname(",".join(task))
    assert runs[0].job_type.startswith("dataset.root=") and "seed=3" not in runs[0].job_type
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["schedule"]["max_iter"] == 4 and config["seed"] == 3  # the resolved config
    from ugs_d2.compat import detectron2_build

    assert config["environment"]["detectron2"] == detectron2_build()  # which build ran, and where
    assert config["environment"]["cpu"] and "packages" not in config["environment"]

    history = _history(records)
    logged = set().union(*history.values())
    assert {"total_loss", "loss_rpn_cls", "loss_cls", "lr", "bbox/AP", "bbox/AP50"} <= logged
    assert isinstance(history[4]["bbox/AP"], (int, float))  # the final evaluation, at max_iter
    # what metrics.json holds, at the same steps, with the same values
    for record in read_metrics(str(run_dir / "metrics.json")):
        step = record.pop("iteration")
        assert set(record) <= set(history[step]), (step, set(record) - set(history[step]))
        for key, value in record.items():
            logged_value = history[step][key]
            assert logged_value == pytest.approx(value, rel=1e-6, nan_ok=True), (step, key)
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits and exits[-1].exit_code == 0


def test_wandb_run_id_is_kept_only_for_a_resumed_training(tmp_path):
    first = wandb_run_id(str(tmp_path), continuing=False)
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == first
    assert wandb_run_id(str(tmp_path), continuing=True) == first  # rerun resuming a checkpoint
    fresh = wandb_run_id(str(tmp_path), continuing=False)  # resume=false / no checkpoint yet
    assert fresh != first and fresh[:12] == first[:12]  # prefix: a hash of the run directory
    assert wandb_run_id(str(tmp_path), continuing=True) == fresh


SHORT_RUN = ["schedule.max_iter=2", "schedule.steps=[1]", "schedule.checkpoint_period=100"]


def _blocked_wandb(tmp_path, monkeypatch, body):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "wandb.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")])))


def test_wandb_disabled_never_imports_wandb(tiny_dataset, tmp_path, monkeypatch):
    # any import of wandb fails the run
    _blocked_wandb(tmp_path, monkeypatch, 'raise RuntimeError("wandb was imported")\n')
    run_dir = tmp_path / "run"
    args = TINY_RUN + SHORT_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}", "wandb.enabled=false"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "done").is_file()
    assert not (run_dir / "wandb").exists() and not (run_dir / RUN_ID_FILE).exists()
    assert "W&B" not in (run_dir / "log.txt").read_text()


def test_training_goes_on_without_wandb_installed(tiny_dataset, tmp_path, monkeypatch):
    _blocked_wandb(tmp_path, monkeypatch, 'raise ImportError("No module named wandb")\n')
    run_dir = tmp_path / "run"
    args = TINY_RUN + SHORT_RUN + [f"dataset.root={tiny_dataset}", f"hydra.run.dir={run_dir}"]
    proc = run_ugs_train(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "done").is_file()
    assert not (run_dir / "wandb").exists()
    log = (run_dir / "log.txt").read_text()
    assert log.count("wandb cannot be imported") == 1
