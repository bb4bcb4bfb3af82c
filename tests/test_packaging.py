"""configs/ ships inside the package: a wheel carries it as ugs_d2.configs and a non-editable
install composes the Hydra config from any directory through pkg://ugs_d2.configs (issue 15)."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

# what setuptools reads to build (copied, so that the build leaves nothing in the checkout)
BUILD_INPUTS = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "ugs_d2", "configs", "projects")


def _yaml_files(top):
    return sorted(
        os.path.relpath(os.path.join(root, f), top)
        for root, _, files in os.walk(top) for f in files if f.endswith(".yaml")
    )


def test_wheel_carries_the_configs_and_runs_from_anywhere(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    (wheel,) = glob.glob(str(wheels / "ugs_d2-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n[len("ugs_d2/configs/"):] for n in names if n.startswith("ugs_d2/configs/") and n.endswith(".yaml"))
    assert shipped == _yaml_files(os.path.join(REPO, "configs"))  # every YAML, the layout kept
    assert "ugs_d2/configs/hydra/help/ugs_train.yaml" in names
    assert {"ugs_retinanet/__init__.py", "ugs_fcos/__init__.py", "ugs_cascade/__init__.py"} <= set(names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), wheel],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"  # no configs/ here or above
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import ugs_d2.cli.validate as v; print(v.CONFIG_DIR); print(v.CONFIG_PATH)"],
        check=True, capture_output=True, text=True, cwd=elsewhere, env=env,
    ).stdout.split()
    assert where == [str(site / "ugs_d2" / "configs"), "pkg://ugs_d2.configs"]
    job = subprocess.run(
        [sys.executable, "-m", "ugs_d2.train", "--cfg", "job", "ugs=full"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    assert "meta_architecture: GeneralizedRCNN" in job.stdout and "um_weight: 0.5" in job.stdout
    assert os.listdir(elsewhere) == []  # --cfg job only prints
    project = subprocess.run(  # a project preset: found through the wheel's ugs_d2.projects entry point
        [sys.executable, "-m", "ugs_d2.train", "--cfg", "job", "model=fcos_r18_fpn", "ugs=full"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300,
    )
    assert project.returncode == 0, project.stderr[-2000:]
    assert "project: UGS_FCOS" in project.stdout


def test_source_checkout_falls_back_to_its_configs():
    """PYTHONPATH=<checkout> without an install: the checkout's own configs/ (the tests' case)."""
    from ugs_d2.cli import validate

    if validate.CONFIG_PATH.startswith("pkg://"):
        pytest.skip("ugs_d2.configs is installed here; the fallback is not in use")
    assert validate.CONFIG_DIR == os.path.join(REPO, "configs") == validate.CONFIG_PATH
