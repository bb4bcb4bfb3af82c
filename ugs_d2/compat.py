"""The one place where ugs_d2 guards differences between detectron2 builds, and the one place
that calls private APIs of detectron2, Hydra and submitit.

Two detectron2s are supported:

* the registry fallback (``pb1-detectron2==0.6`` built by ``launch/detectron2_fallback.py``):
  upstream 0.6 Python code with a placeholder ``detectron2._C`` (no compiled ops);
* upstream detectron2 built from its official source (``D2_SOURCE=... make install``),
  the normal case on a GPU cluster.

Everything else in the package imports detectron2 freely; only behaviour that differs between
the two goes through this module, and so does every call of a private (``_``-prefixed)
attribute of detectron2, Hydra or submitit: ``tests/test_upstream_signatures.py`` asserts their
signatures (and those of the detectron2 methods the package overrides), so an upstream change
fails there, in one place. This module imports detectron2 (and torch) only when a function
needs it, so the command line's ``--help`` path (:func:`hydra_args_parser`) stays fast.
"""
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

__all__ = [
    "reset_checkpointer_load_state",
    "DETECTRON2_VERSION",  # noqa: F822 (module __getattr__: computed on first use)
    "HAS_COMPILED_OPS",  # noqa: F822
    "describe_detectron2",
    "detectron2_build",
    "coco_evaluator_kwargs",
    "create_local_process_group",
    "create_ddp_model",
    "use_device_aware_ddp",
    "prepare_voc_reader",
    "fcos_labels_images_without_boxes",
    "forward_box",
    "transpose_dense_predictions",
    "dense_loss_normalizer",
    "restore_dense_loss_normalizer",
    "last_eval_results",
    "coco_evaluator_ground_truth",
    "set_coco_evaluator_results",
    "builtin_metadata",
    "hydra_args_parser",
    "job_return_value",
    "slurm_node_list",
]


def _has_compiled_ops() -> bool:
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "FALLBACK_BUILD", False)


@functools.lru_cache(maxsize=None)
def _lazy_constant(name: str) -> Any:
    if name == "DETECTRON2_VERSION":
        import detectron2

        return detectron2.__version__
    return _has_compiled_ops()


def __getattr__(name: str) -> Any:
    """``DETECTRON2_VERSION``, ``HAS_COMPILED_OPS``: computed (importing detectron2) on first use."""
    if name in ("DETECTRON2_VERSION", "HAS_COMPILED_OPS"):
        return _lazy_constant(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _distribution() -> str:
    for name in ("detectron2", "pb1-detectron2"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "detectron2 (not pip-installed)"


# written by launch/install.sh next to the environment's python when it builds a D2_SOURCE
SOURCE_RECORD = "detectron2-source.json"


def _source_record() -> Dict[str, Any]:
    try:
        with open(os.path.join(sys.prefix, SOURCE_RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _direct_url(distribution: str) -> Dict[str, Any]:
    """pip's record of where a distribution was installed from (PEP 610), or {}."""
    try:
        text = importlib.metadata.distribution(distribution).read_text("direct_url.json")
        return json.loads(text) if text else {}
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return {}


def _git_commit(directory: Optional[str]) -> Optional[str]:
    if not directory or not os.path.exists(os.path.join(directory, ".git")):
        return None  # not a checkout (a folder inside another repository would give its HEAD)
    try:
        out = subprocess.run(
            ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def detectron2_build() -> Dict[str, Any]:
    """Which detectron2 runs, for results files, W&B and benchmark reports.

    Returns:
        ``{"kind": "registry fallback" | "source build", "distribution", "version",
        "compiled_ops": bool, "source": where it was built from or None, "commit": its git
        commit or None, "path": the imported package}``. ``source``/``commit`` come from
        ``launch/install.sh``'s record (``$VENV/detectron2-source.json``: the D2_SOURCE, or the
        tarball it was unpacked from, and its commit), else pip's ``direct_url.json`` (a
        ``git+`` install's commit, a local directory's path, whose git HEAD is read when it
        still exists).
    """
    import detectron2
    from detectron2 import _C  # noqa: F401  (the fallback has a placeholder: always importable)

    distribution = _distribution()
    fallback = distribution == "pb1-detectron2" or getattr(_C, "FALLBACK_BUILD", False)
    source = commit = None
    if not fallback:
        record = _source_record()
        direct = _direct_url(distribution)
        source = record.get("origin") or record.get("source") or direct.get("url")
        commit = record.get("commit") or (direct.get("vcs_info") or {}).get("commit_id")
        if not commit and str(direct.get("url", "")).startswith("file://"):
            commit = _git_commit(direct["url"][len("file://"):])
    return {
        "kind": "registry fallback" if fallback else "source build",
        "distribution": distribution,
        "version": detectron2.__version__,
        "compiled_ops": _lazy_constant("HAS_COMPILED_OPS"),
        "source": source,
        "commit": commit,
        "path": detectron2.__path__[0],
    }


def describe_detectron2() -> str:
    """One line saying which detectron2 is in use, e.g. for logs and results files:
    ``detectron2 0.6 (source build, with C++ ops, commit 02b5c4e29 from <tarball>) at <path>``."""
    build = detectron2_build()
    parts = [build["kind"], "with C++ ops" if build["compiled_ops"] else "no C++ ops"]
    if build["commit"]:
        parts.append(f"commit {build['commit'][:9]}")
    if build["source"]:
        parts.append(f"from {build['source']}")
    return f"{build['distribution']} {build['version']} ({', '.join(parts)}) at {build['path']}"


def coco_evaluator_kwargs() -> dict:
    """Keyword arguments for ``COCOEvaluator`` that work on this build.

    The C++ COCOeval fast path exists only with compiled ops; pycocotools is used otherwise.
    """
    return {"use_fast_impl": _lazy_constant("HAS_COMPILED_OPS")}


def create_local_process_group(num_processes_per_machine: int) -> None:
    """Create detectron2's per-machine process group after ``dist.init_process_group``.

    ``comm.get_local_rank()``/``get_local_size()`` need it. Upstream detectron2 has
    ``comm.create_local_process_group``; 0.6 expects its own ``launch`` to set the private
    ``comm._LOCAL_PROCESS_GROUP``, so the same groups are built here.
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):  # upstream main
        comm.create_local_process_group(num_processes_per_machine)
        return
    world_size, rank = dist.get_world_size(), dist.get_rank()  # 0.6
    assert world_size % num_processes_per_machine == 0, (world_size, num_processes_per_machine)
    for machine in range(world_size // num_processes_per_machine):
        first = machine * num_processes_per_machine
        group = dist.new_group(list(range(first, first + num_processes_per_machine)))  # collective
        if machine == rank // num_processes_per_machine:
            comm._LOCAL_PROCESS_GROUP = group


def create_ddp_model(model, *, fp16_compression: bool = False, **kwargs):
    """detectron2's ``create_ddp_model`` that also works for CPU models (gloo).

    Both 0.6 and upstream pass ``device_ids=[local_rank]``, which ``DistributedDataParallel``
    rejects for a CPU module; for those, ``device_ids`` is left out.
    """
    from detectron2.engine import defaults

    original = getattr(defaults, "_ugs_original_create_ddp_model", defaults.create_ddp_model)
    first_param = next(model.parameters(), None)
    if first_param is not None and first_param.device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return original(model, fp16_compression=fp16_compression, **kwargs)


def use_device_aware_ddp() -> None:
    """Make ``DefaultTrainer`` (which calls ``detectron2.engine.defaults.create_ddp_model``)
    wrap CPU models correctly; called once in each distributed worker process."""
    from detectron2.engine import defaults

    if not hasattr(defaults, "_ugs_original_create_ddp_model"):
        defaults._ugs_original_create_ddp_model = defaults.create_ddp_model
        defaults.create_ddp_model = create_ddp_model


class _NumpyWithRemovedAliases:
    """numpy, plus the ``np.str`` alias that numpy 1.24 removed (it was the builtin ``str``)."""

    str = str

    def __init__(self, numpy_module):
        self._numpy = numpy_module

    def __getattr__(self, name):
        return getattr(self._numpy, name)


def prepare_voc_reader() -> None:
    """Make detectron2's ``load_voc_instances`` run on numpy >= 1.24.

    detectron2 0.6 (the fallback build) reads the image-set file with
    ``np.loadtxt(dtype=np.str)``; numpy 1.24 removed that alias, upstream later switched to
    ``dtype=str``. Only the ``np`` name inside ``detectron2.data.datasets.pascal_voc`` is
    replaced by a view of numpy that has the alias; the reader itself stays detectron2's.
    """
    import numpy
    from detectron2.data.datasets import pascal_voc

    # vars(): hasattr would go through numpy's __getattr__, which warns about the old alias
    if "str" not in vars(numpy) and not isinstance(pascal_voc.np, _NumpyWithRemovedAliases):
        pascal_voc.np = _NumpyWithRemovedAliases(numpy)


def fcos_labels_images_without_boxes() -> bool:
    """Whether detectron2's own ``FCOS.label_anchors`` labels an image without GT boxes.

    Upstream main does: background everywhere, and its matched boxes are plain ``(R, 4)``
    tensors (which its ``losses`` take). 0.6 does not: ``FCOS.match_anchors`` takes a max over
    zero GT boxes and fails, and its matched boxes are ``Boxes`` (its ``losses`` read
    ``.tensor``), so a caller has to label such images itself, as ``Boxes``. Upstream's
    rewrite of that matching renamed ``match_anchors`` to ``_match_anchors``: the public name
    is what tells the two apart.
    """
    from detectron2.modeling.meta_arch.fcos import FCOS

    return not hasattr(FCOS, "match_anchors")


def reset_checkpointer_load_state(checkpointer) -> None:
    """Clear the per-load state of a ``DetectionCheckpointer`` after a load that raised.

    Upstream main's ``DetectionCheckpointer.load`` keeps the URL it is loading in
    ``_parsed_url_during_load``, resets it only when the load succeeds, and asserts that it is
    unset at the start of the next load; so after one unreadable file every later load fails.
    detectron2 0.6 has no such state. Safe to call on both.
    """
    if hasattr(checkpointer, "_parsed_url_during_load"):
        checkpointer._parsed_url_during_load = None


# --- private detectron2 APIs ------------------------------------------------------------------


def forward_box(roi_heads, features, proposals, targets=None):
    """``roi_heads._forward_box(features, proposals[, targets])``: the box head alone, without
    the proposal sampling of ``forward`` (UR's second pass reuses the first pass's samples).

    ``StandardROIHeads._forward_box(features, proposals)``; ``CascadeROIHeads._forward_box(
    features, proposals, targets=None)`` (the cascade re-matches its later stages to
    ``targets``). Same on detectron2 0.6 and upstream main.
    """
    if targets is None:
        return roi_heads._forward_box(features, proposals)
    return roi_heads._forward_box(features, proposals, targets)


def transpose_dense_predictions(model, predictions, dims_per_anchor: List[int]):
    """``model._transpose_dense_predictions(predictions, dims_per_anchor)`` of a detectron2
    ``DenseDetector``: per head output, L tensors (N, Hi*Wi*A, D) (with UGS bins, the box
    branch's ``D`` is widened by ``ugs_d2.modeling.dense.DenseUGSMixin``'s override)."""
    return model._transpose_dense_predictions(predictions, dims_per_anchor)


def dense_loss_normalizer(model):
    """The EMA loss normaliser of a ``DenseDetector`` (RetinaNet, FCOS), or None before its
    first update.

    detectron2 keeps it as the attribute ``loss_normalizer``, written by the private
    ``DenseDetector._ema_update`` into ``self.__dict__`` (so that it stays a plain float, not a
    module attribute); read from there for the same reason.
    """
    return model.__dict__.get("loss_normalizer")


def restore_dense_loss_normalizer(model, value) -> None:
    """Put back a value read by :func:`dense_loss_normalizer` (None: as before the first update)."""
    if value is None:
        model.__dict__.pop("loss_normalizer", None)
    else:
        model.__dict__["loss_normalizer"] = value


def last_eval_results(trainer):
    """The results of the last evaluation of a ``DefaultTrainer`` (None before one), which
    detectron2's ``EvalHook`` keeps in the trainer's private ``_last_eval_results``."""
    return getattr(trainer, "_last_eval_results", None)


def coco_evaluator_ground_truth(evaluator):
    """The pycocotools ``COCO`` of the ground truth a ``COCOEvaluator`` loaded in its
    ``__init__`` (private ``_coco_api``): read once there, after detectron2 converted a
    non-COCO dataset to a cached json, so a subclass need not load it a second time."""
    return evaluator._coco_api


def set_coco_evaluator_results(evaluator, task: str, results: Dict[str, float]) -> None:
    """Store one task's metrics (e.g. ``"bbox"``) where ``COCOEvaluator.evaluate`` returns them
    from: the private ``_results`` dict it resets before calling ``_eval_predictions``, whose
    documented job is to fill it ("Fill self._results with the metrics of the tasks")."""
    evaluator._results[task] = results


def builtin_metadata(dataset_name: str) -> Dict[str, Any]:
    """detectron2's metadata of a builtin dataset (``coco``: its 80 class names and category
    ids), from the private ``detectron2.data.datasets.builtin_meta._get_builtin_metadata``."""
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    return _get_builtin_metadata(dataset_name)


# --- private Hydra and submitit APIs ----------------------------------------------------------


def hydra_args_parser():
    """Hydra's own command-line parser (``hydra._internal.utils.get_args_parser``): the
    ``--help``/``--cfg``/``--multirun`` flags exactly as the ``@hydra.main`` app reads them."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def job_return_value(job_return):
    """What a Hydra job returned, or the exception it raised (a failed ``JobReturn``, whose
    public ``return_value`` property re-raises it; the private ``_return_value`` holds it)."""
    return job_return._return_value


def slurm_node_list(nodes: str) -> List[str]:
    """``node[3-4,7]`` -> ``["node3", "node4", "node7"]`` by submitit's own parser (private
    ``submitit.slurm.slurm._parse_node_list``: no subprocess, unlike ``scontrol``)."""
    from submitit.slurm.slurm import _parse_node_list

    return _parse_node_list(nodes)
