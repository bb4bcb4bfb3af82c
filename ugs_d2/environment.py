"""What a run ran on: the detectron2 build, the resolved package versions, the CPU and GPU.

``results.json`` keeps all of it (``environment``), W&B's config and the benchmark reports the
short part (:func:`run_environment` with ``packages=False``): numbers are reproducible to the
digit only on the same hardware with the same packages (docs/reproduction.md, "Reproducing these numbers").
"""
import importlib.metadata
import os
import platform
from typing import Any, Dict, List

__all__ = ["cpu_model", "gpu_models", "package_versions", "run_environment"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_models() -> List[str]:
    """The name of every visible CUDA device; [] without one."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def package_versions() -> Dict[str, str]:
    """``{distribution name: version}`` of every package installed in this interpreter,
    sorted by name (lower case), as ``pip freeze`` would list them."""
    versions = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions[name.lower()] = dist.version
    return dict(sorted(versions.items()))


def run_environment(packages: bool = True) -> Dict[str, Any]:
    """The environment of this process.

    Returns:
        ``{"detectron2": compat.detectron2_build(), "python", "torch", "cuda": torch's CUDA
        version or None, "platform", "cpu": model name, "cpus": logical CPUs, "gpus": [names],
        "packages": {name: version}}`` (``packages`` only when asked for).
    """
    import torch

    from ugs_d2.compat import detectron2_build

    env: Dict[str, Any] = {
        "detectron2": detectron2_build(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "gpus": gpu_models(),
    }
    if packages:
        env["packages"] = package_versions()
    return env
