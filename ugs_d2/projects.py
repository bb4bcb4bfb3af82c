"""The registry of detector projects (``model.project: NAME``): their schema node, bridge rows, hooks.

A project registers itself when its package is imported::

    # projects/UGS_FCOS/ugs_fcos/config.py
    register_project(Project(
        name="UGS_FCOS", package="ugs_fcos", node="fcos", schema=FCOSSchema,
        bridge=(("model.fcos.num_convs", "MODEL.FCOS.NUM_CONVS"), ...),
        checks=(("model.fcos.num_convs", lambda v: v >= 1, "a positive integer"),),
        add_config=add_ugs_fcos_config, finish=finish_fcos,
    ))

``get_project(NAME)`` imports the package that registers NAME: the one named by the setuptools
entry point ``NAME`` of the group ``ugs_d2.projects`` (setup.cfg lists the three shipped ones),
else the importable package ``NAME.lower()`` (e.g. ``ugs_retinanet``). No ``sys.path`` edits,
no file paths: a project is an installed package.

A package that registers nothing but defines the older hook ``from_hydra(cfg, d2, get,
num_classes)`` still works: it is wrapped in a ``Project`` whose model keys are untyped.
"""
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["Project", "register_project", "get_project", "registered_projects", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "ugs_d2.projects"


@dataclass(frozen=True)
class Project:
    """What a project adds to the bridge (``ugs_d2.config.to_detectron2_cfg``).

    Attributes:
        name: the value of ``model.project`` (e.g. ``UGS_FCOS``).
        node: the key of its own node under ``model.`` (e.g. ``fcos``), typed by ``schema``.
        schema: a dataclass for that node (None: the node is not typed).
        bridge: ``(Hydra key, detectron2 key[, converter])`` rows, applied after the core's.
        checks: ``(Hydra key, condition, expected)`` rows, checked with the core's ranges.
        add_config: adds the project's detectron2 keys to a ``CfgNode`` (before ``bridge``).
        finish: ``finish(typed_cfg, d2, num_classes)``, after ``bridge``: the special cases
            and the class selection (raises ``ConfigError`` naming the Hydra key).
        legacy_from_hydra: the older hook, for a package that only defines ``from_hydra``.
        package: the importable package (``ugs_d2.config.load_project`` returns it).
    """

    name: str
    node: Optional[str] = None
    schema: Optional[type] = None
    bridge: Tuple[tuple, ...] = ()
    checks: Tuple[tuple, ...] = ()
    add_config: Optional[Callable[[Any], None]] = None
    finish: Optional[Callable[[Any, Any, Optional[int]], None]] = None
    legacy_from_hydra: Optional[Callable[..., None]] = None
    package: str = ""


_REGISTRY: Dict[str, Project] = {}


def register_project(project: Project) -> Project:
    """Add ``project`` under its name (importing its package again is harmless)."""
    _REGISTRY[project.name] = project
    return project


def registered_projects() -> Tuple[str, ...]:
    """The names registered so far, and those the installed entry points announce."""
    return tuple(sorted(set(_REGISTRY) | set(_entry_points())))


def _entry_points() -> Dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_project(name: str) -> Project:
    """The registered project ``name``, importing its package first if needed.

    Raises:
        LookupError: one line naming ``model.project``, with the known projects.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    package = _entry_points().get(name) or (name.lower() if name else "")
    module = None
    if package:
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError as e:
            if e.name != package.split(".")[0]:  # the package exists but one of its imports fails
                raise
    if name in _REGISTRY:
        return _REGISTRY[name]
    if module is not None and callable(getattr(module, "from_hydra", None)):
        return register_project(Project(name=name, legacy_from_hydra=module.from_hydra, package=package))
    known = ", ".join(registered_projects()) or "none"
    why = f"no importable package {package!r}" if module is None else f"{package!r} registers none"
    raise LookupError(
        f"model.project: {name!r} is not a registered project ({why}; known: {known}); "
        f"install it (pip install -e .) or see docs/configuration.md"
    )
