"""``--help`` of every console script: exit 0, no warning, torch never imported (issue 15).

The latency itself is measured by ``ugs-bench help`` (results/help_latency.md), not here:
a timed test would fail on a loaded machine for no fault of the code.
"""
import os

import pytest

from ugs_d2.bench.help_latency import console_scripts, probe

COMMANDS = console_scripts()


def test_console_scripts_are_read_from_setup_cfg():
    names = [name for name, _ in COMMANDS]
    assert names[:2] == ["ugs-train", "ugs-train-net"] and "ugs-bench" in names
    assert dict(COMMANDS)["ugs-train-net"] == "ugs_d2.train_net:main"


@pytest.mark.parametrize("name, target", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_help_is_clean_and_does_not_import_torch(name, target, tmp_path):
    result = probe(name, target, cwd=str(tmp_path))  # an unrelated directory
    assert result.returncode == 0, result.output[-2000:]
    assert not result.warned, result.output[-2000:]
    assert not result.torch_imported, f"{name} --help imported torch"
    assert "usage" in result.output.lower() or name == "ugs-train"
    assert os.listdir(tmp_path) == [], "--help wrote files"


def test_ugs_train_help_names_the_command_groups_and_docs():
    output = probe("ugs-train", dict(COMMANDS)["ugs-train"]).output
    assert output.startswith("ugs-train: ")
    assert "powered by Hydra" not in output
    groups = [line.split(":")[0] for line in output.splitlines() if ": " in line and "," in line]
    assert {"model", "dataset", "schedule", "ugs", "input", "evaluation", "tiling", "augment"} <= set(groups)
    assert "docs/" in output and "ugs-train-net" in output
