"""setup.cfg holds the metadata; this adds what setup.cfg cannot say next to ``packages = find:``:
the top-level ``configs/`` installed as the package ``ugs_d2.configs`` (each folder a
subpackage, every YAML with it), so a wheel or ``pip install .`` carries the Hydra configs and
``pkg://ugs_d2.configs`` finds them from any directory."""
import os

from setuptools import setup
from setuptools.config.setupcfg import read_configuration


def config_packages(top: str = "configs") -> dict:
    """``{"ugs_d2.configs": "configs", "ugs_d2.configs.model": "configs/model", ...}``"""
    packages = {}
    for root, dirs, _ in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        relative = os.path.relpath(root, top)
        parts = [] if relative == os.curdir else relative.split(os.sep)
        packages[".".join(["ugs_d2", "configs", *parts])] = root
    return packages


options = read_configuration("setup.cfg")["options"]
configs = config_packages()
setup(
    packages=list(options.get("packages", [])) + sorted(configs),
    package_dir={**options.get("package_dir", {}), **configs},
    package_data={**options.get("package_data", {}), **{name: ["*.yaml"] for name in configs}},
)
