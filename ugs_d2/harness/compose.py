"""The ``configs/`` tree and Hydra's compose API, for whatever composes ``ugs-train``'s config
outside a Hydra job: the command-line check of ``ugs-train`` (:mod:`ugs_d2.cli.validate`), the
benchmarks (:mod:`ugs_d2.bench`) and the tests.

Light on purpose (Hydra and OmegaConf only): ``--help`` paths import it.
"""
import difflib
import importlib.util
import os
from typing import Iterable, List

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

__all__ = ["CONFIG_DIR", "CONFIG_PATH", "compose", "config_groups", "leaf_keys", "unknown_key_message"]


def _find_configs():
    """``(directory, Hydra config_path)`` of the ``configs/`` tree.

    Installed (a wheel, ``pip install .``, or an editable install made after setup.py mapped
    it), ``configs/`` is the package ``ugs_d2.configs``, found by import from any directory and
    given to Hydra as ``pkg://ugs_d2.configs``. Only a source checkout that is not installed
    (``PYTHONPATH=<checkout>``) falls back to the checkout's top-level ``configs/``.
    """
    spec = importlib.util.find_spec("ugs_d2.configs")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0], "pkg://ugs_d2.configs"
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
    return checkout, checkout


#: the configs/ directory (for listings and Hydra's compose API) and Hydra's config_path for it
CONFIG_DIR, CONFIG_PATH = _find_configs()


def compose(overrides: Iterable[str]) -> DictConfig:
    """``configs/config.yaml`` with ``overrides`` (Hydra override strings), as ``ugs-train`` would
    compose it; Hydra's exceptions as they are (see :func:`unknown_key_message`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def leaf_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Every dotted key of ``cfg``, nodes and leaves (interpolations unresolved)."""
    keys = []
    for key, value in cfg.items_ex(resolve=False):
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(leaf_keys(value, full + "."))
    return keys


def config_groups() -> List[str]:
    """The config groups of ``configs/`` (``model``, ``ugs``, ``hydra/launcher``, ...)."""
    return sorted(
        os.path.relpath(root, CONFIG_DIR)
        for root, dirs, files in os.walk(CONFIG_DIR)
        if root != CONFIG_DIR and any(f.endswith(".yaml") for f in files)
    )


def unknown_key_message(overrides: List[Override], error: Exception) -> str:
    """One line for a failed :func:`compose`: the plain override whose key the composed config
    lacks, with close keys suggested; else the first line of Hydra's ``error``."""
    groups = set(config_groups())
    group_overrides = [o.input_line for o in overrides if o.key_or_group in groups]
    try:
        base = compose(group_overrides)
    except Exception as e:  # a group option itself is wrong: Hydra's message lists the options
        return str(e).strip().splitlines()[0]
    known = leaf_keys(base)
    for override in overrides:
        key = override.key_or_group
        if key in groups or key.startswith("hydra") or override.type == OverrideType.ADD:
            continue
        if OmegaConf.select(base, key, default=KeyError) is KeyError:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            return f"unknown override key '{key}'{hint} (use +{key}=... to add a new key)"
    return str(error).strip().splitlines()[0]
