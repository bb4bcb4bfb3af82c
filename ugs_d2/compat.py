"""The one place where ugs_d2 guards differences between detectron2 builds.

Two detectron2s are supported:

* the registry fallback (``pb1-detectron2==0.6`` built by ``launch/detectron2_fallback.py``):
  upstream 0.6 Python code with a placeholder ``detectron2._C`` (no compiled ops);
* upstream detectron2 built from its official source (``D2_SOURCE=... make install``),
  the normal case on a GPU cluster.

Everything else in the package imports detectron2 freely; only behaviour that differs between
the two goes through this module.
"""
import importlib.metadata

import detectron2

__all__ = [
    "DETECTRON2_VERSION",
    "HAS_COMPILED_OPS",
    "describe_detectron2",
    "coco_evaluator_kwargs",
]

DETECTRON2_VERSION = detectron2.__version__


def _has_compiled_ops() -> bool:
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "FALLBACK_BUILD", False)


HAS_COMPILED_OPS = _has_compiled_ops()


def _distribution() -> str:
    for name in ("detectron2", "pb1-detectron2"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "detectron2 (not pip-installed)"


def describe_detectron2() -> str:
    """One line saying which detectron2 is in use, e.g. for logs and results files."""
    ops = "with C++ ops" if HAS_COMPILED_OPS else "fallback build, no C++ ops"
    return f"{_distribution()} {DETECTRON2_VERSION} ({ops}) at {detectron2.__path__[0]}"


def coco_evaluator_kwargs() -> dict:
    """Keyword arguments for ``COCOEvaluator`` that work on this build.

    The C++ COCOeval fast path exists only with compiled ops; pycocotools is used otherwise.
    """
    return {"use_fast_impl": HAS_COMPILED_OPS}
