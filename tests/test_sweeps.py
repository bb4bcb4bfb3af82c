"""A real hydra-submitit-launcher ``submitit_local`` multirun of two tiny jobs, collected into a table."""
import csv

from conftest import TINY_RUN, run_ugs_train


def test_submitit_local_sweep_is_collected_into_a_table(tiny_dataset, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_ugs_train(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=20",
            "hydra.launcher.cpus_per_task=1",
            "ugs=off,ce_in",
            "wandb.enabled=false",
            *TINY_RUN,
            f"dataset.root={tiny_dataset}",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweep.subdir=${hydra.runtime.choices.ugs}",
        ],
        cwd=str(tmp_path),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for preset in ("off", "ce_in"):
        assert (sweep_dir / preset / "results.json").is_file(), preset
        assert (sweep_dir / preset / "done").is_file(), preset
    # the CollectResults callback ran at the end of the multirun
    table = (sweep_dir / "results.md").read_text()
    assert "| off | 1 |" in table and "| ce_in | 1 |" in table
    assert "2 of 2 jobs complete." in table
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert [row["ugs"] for row in rows] == ["off", "ce_in"]
    assert all(row["n"] == "1" and row["n_failed"] == "0" for row in rows), rows
