"""Weights & Biases logging as a detectron2 ``EventWriter``.

:class:`WandbWriter` logs every scalar of the trainer's event storage (losses, ``lr``, timing,
``bbox/AP*`` after each evaluation, anything a hook puts there such as gradient statistics)
with ``step=<iteration>``, on rank 0 only, at the same cadence and with the same smoothing as
``metrics.json``.

:func:`build_wandb_writer` makes one from the ``wandb:`` block of the Hydra config:

* ``wandb.enabled=false``: no writer, and ``wandb`` is not even imported;
* wandb not installed, or ``wandb.init`` failing (e.g. online without credentials): one warning,
  training goes on without it;
* ``mode: offline`` (the default) writes ``<run dir>/wandb/offline-run-*`` and never touches
  the network (``wandb sync <run dir>/wandb/offline-run-*`` uploads it later); ``online``
  streams to the server;
* group = ``wandb.group`` or the sweep name (``name``); run name = the run's override dirname;
  job_type = the override dirname without ``seed`` (so the seeds of one configuration are one
  job type within the group); config = the resolved Hydra config;
* the run id is kept in ``<run dir>/wandb_run_id``: a rerun that resumes from the run's last
  checkpoint continues the same W&B run (``resume="allow"``), a run that starts from
  iteration 0 (first run, ``resume=false``, a deleted run directory) gets a new id.
"""
import hashlib
import logging
import os
import secrets
import sys
from collections import defaultdict
from typing import Any, Dict, Mapping, Optional, Sequence

from detectron2.utils import comm
from detectron2.utils.events import EventWriter, get_event_storage

from ugs_d2.fileio import run_dirname, write_text_atomic

__all__ = [
    "RUN_ID_FILE",
    "WandbWriter",
    "build_wandb_writer",
    "hydra_run_names",
    "wandb_run_id",
]

logger = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
JOB_TYPE_MAX = 64  # W&B's limit on job_type
SEED_KEYS = ("seed",)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{text[:limit - 9]}-{digest}"


def hydra_run_names(cfg: Any, run_dir: str) -> Dict[str, str]:
    """``{"name", "job_type", "group"}`` for the W&B run of the current Hydra job.

    name: the override dirname (the run directory's name under the default layout);
    job_type: the same without the ``seed`` override; group: ``wandb.group`` or ``name``.
    Outside a Hydra app (``run(cfg, dir)`` called directly) the run directory's name is used.
    """
    from hydra.core.hydra_config import HydraConfig

    group = _select(cfg, "wandb.group") or _select(cfg, "name") or "default"
    if not HydraConfig.initialized():
        base = os.path.basename(os.path.normpath(run_dir)) or "default"
        return {"name": base, "job_type": _shorten(base, JOB_TYPE_MAX), "group": str(group)}
    hydra_cfg = HydraConfig.get()
    dirname_cfg = hydra_cfg.job.config.override_dirname
    exclude = set(dirname_cfg.exclude_keys)
    kept = []
    for line in hydra_cfg.overrides.task:
        key = line.split("=", 1)[0].lstrip("+~")
        if key not in exclude and key not in SEED_KEYS:
            kept.append(line.replace("=", dirname_cfg.kv_sep, 1))
    job_type = dirname_cfg.item_sep.join(sorted(kept)) or "default"
    return {
        "name": run_dirname(hydra_cfg.job.override_dirname),
        "job_type": _shorten(job_type.replace("/", "%"), JOB_TYPE_MAX),
        "group": str(group),
    }


def _select(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    try:
        from omegaconf import OmegaConf

        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # a plain mapping
        node = cfg
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def wandb_run_id(run_dir: str, continuing: bool) -> str:
    """The W&B run id of ``run_dir``: the stored one when the training continues from a
    checkpoint of this run directory, otherwise a new one (a hash of the absolute run
    directory plus a random part), which is stored for the next resume."""
    path = os.path.join(run_dir, RUN_ID_FILE)
    if continuing and os.path.isfile(path):
        with open(path) as f:
            stored = f.read().strip()
        if stored:
            return stored
    digest = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    run_id = f"{digest}{secrets.token_hex(4)}"
    os.makedirs(run_dir, exist_ok=True)
    write_text_atomic(path, run_id + "\n")
    return run_id


class WandbWriter(EventWriter):
    """Log the event storage's new scalars to a W&B run, one ``log`` call per iteration.

    Args:
        run: an initialized ``wandb`` run (``wandb.init(...)``); ``close`` finishes it.
        window_size: the median window for scalars with a smoothing hint (as ``JSONWriter``).
    """

    def __init__(self, run: Any, window_size: int = 20):
        self._run = run
        self._window_size = window_size
        # W&B drops (with a warning) a step below the run's current one, e.g. the iterations
        # re-trained after a resume that the resumed run already holds.
        self._last_write = int(getattr(run, "step", 0) or 0) - 1

    @property
    def run(self) -> Any:
        return self._run

    def write(self) -> None:
        if self._run is None or not comm.is_main_process():
            return
        storage = get_event_storage()
        by_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
        for key, (value, iteration) in storage.latest_with_smoothing_hint(self._window_size).items():
            if iteration > self._last_write:
                by_iter[int(iteration)][key] = float(value)
        for iteration in sorted(by_iter):
            self._run.log(by_iter[iteration], step=iteration)
        if by_iter:
            self._last_write = max(by_iter)

    def close(self) -> None:
        if self._run is None:
            return
        run, self._run = self._run, None
        # close() runs in the trainer's ``finally``: an exception in flight means training failed
        exit_code = 1 if sys.exc_info()[0] is not None else 0
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # never let W&B turn a finished training into a failure
            logger.warning(f"W&B: finishing the run failed: {e}")


def build_wandb_writer(
    cfg: Any,
    run_dir: str,
    *,
    continuing: bool = False,
    window_size: int = 20,
    config: Optional[Mapping[str, Any]] = None,
    names: Optional[Mapping[str, str]] = None,
    tags: Optional[Sequence[str]] = None,
) -> Optional[WandbWriter]:
    """A :class:`WandbWriter` for the run in ``run_dir`` per the config's ``wandb:`` block, or
    None (disabled, not rank 0, wandb not installed, or ``wandb.init`` failed: training goes on).

    Args:
        cfg: the Hydra config (its ``wandb`` block, ``name``; logged resolved as the W&B config
            unless ``config`` is given).
        continuing: the trainer resumes from a checkpoint of this run directory, so the W&B run
            of that training is continued (see :func:`wandb_run_id`).
        names: ``{"name", "job_type", "group"}``; default :func:`hydra_run_names`.
    """
    wandb_cfg = _select(cfg, "wandb") or {}
    if not wandb_cfg.get("enabled", False) or not comm.is_main_process():
        return None
    mode = wandb_cfg.get("mode") or "offline"
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"wandb.mode: expected offline, online or disabled, got {mode!r}")
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # also for anything wandb starts itself
    try:
        import wandb
    except ImportError as e:
        logger.warning(f"W&B logging is on (wandb.enabled=true) but wandb cannot be imported ({e}); "
                       "training without it. Install wandb or set wandb.enabled=false.")
        return None

    if config is None:
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}
        # which detectron2 build and hardware ran (results.json also has the package versions)
        from ugs_d2.environment import run_environment

        config["environment"] = run_environment(packages=False)
    names = dict(names or hydra_run_names(cfg, run_dir))
    wandb_dir = wandb_cfg.get("dir") or run_dir
    os.makedirs(wandb_dir, exist_ok=True)
    run_id = wandb_run_id(run_dir, continuing)
    try:
        settings = wandb.Settings(silent=True, show_info=False)
    except Exception:  # an older wandb without these settings: WANDB_SILENT does it
        settings = None
    try:
        run = wandb.init(
            project=wandb_cfg.get("project") or "ugs_d2",
            entity=wandb_cfg.get("entity") or None,
            group=names["group"],
            job_type=names["job_type"],
            name=names["name"],
            tags=list(tags) if tags else None,
            config=dict(config),
            dir=wandb_dir,
            id=run_id,
            resume="allow",
            mode=mode,
            settings=settings,
        )
    except Exception as e:  # e.g. online without credentials or network
        logger.warning(f"W&B: wandb.init failed ({type(e).__name__}: {e}); training without W&B.")
        return None
    logger.info(
        f"W&B ({mode}): run {run_id} '{names['name']}' in group '{names['group']}' "
        f"({getattr(run, 'dir', wandb_dir)})"
    )
    return WandbWriter(run, window_size=window_size)
