"""A Hydra multirun sweep as data: its jobs, their status, the groups of jobs that are one
experiment over seeds, and mean +- sample std over a group.

Every finished job directory holds ``results.json`` and a ``done`` marker (see
:mod:`ugs_d2.evaluation.results`); only those are read, so a sweep can be collected while it is
still going and shows what is missing.

* **jobs** (:func:`find_jobs`): every directory under the sweep holding
  ``.hydra/overrides.yaml``. A job is *complete* when it has ``done`` and ``results.json``;
  otherwise *failed* when it has a ``failed`` marker (written by the ``CollectResults`` Hydra
  callback when the job raised) or its logs hold a traceback, else *incomplete* (still running,
  killed, or not started);
* **groups** (:func:`group_key`, :func:`collect`): jobs with the same overrides once ``seed``
  and the keys that do not change the experiment are dropped: ``name``, ``resume``,
  ``eval_only``, ``num_workers``, ``device``, ``hydra.*`` and whatever else the run's
  ``hydra.job.config.override_dirname.exclude_keys`` lists (W&B and launcher keys). Overrides
  shared by every group are the collection's ``common``, the others its ``varying`` keys;
* **statistics** (:func:`mean_std`): mean and sample standard deviation (n - 1) of the finite
  values; a single value has no std. ``ugs-results``' table, ``ugs-gradvar --sweep`` and the
  embedded benchmark's summary all use it.

:mod:`ugs_d2.analysis.sweep_report` writes a collection as a table, a CSV and plots.
"""
import math
import os
import re
import shlex
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.evaluation.results import COCO_KEYS, RESULTS_FILE, is_done, read_results

__all__ = [
    "FAILED_MARKER",
    "IGNORED_KEYS",
    "Job",
    "Group",
    "Collection",
    "CollectError",
    "mean_std",
    "find_jobs",
    "group_key",
    "collect",
]

FAILED_MARKER = "failed"
# override keys that do not change what a run measures (seed is what a group averages over)
IGNORED_KEYS = ("seed", "name", "resume", "eval_only", "num_workers", "device")
_SKIP_DIRS = {".hydra", ".submitit", "inference", "__pycache__"}
_ERROR_PATTERNS = (
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r"training diverged"),
    re.compile(r"\bERROR\b"),
)


class CollectError(ValueError):
    """SWEEP_DIR does not exist or holds no Hydra job."""


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, sample std (n - 1) or None below 2 values, n) of the finite values; ``(None, None,
    0)`` when there is none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


# --------------------------------------------------------------------------------------------
# jobs and groups


@dataclass
class Job:
    """One Hydra job directory of a sweep and what it left behind."""

    path: str
    overrides: List[str]
    status: str  # complete | failed | incomplete
    num: int = 1 << 30  # hydra.job.num (sweep order)
    ignored: Tuple[str, ...] = ()  # keys left out of the run directory name (exclude_keys)
    results: Optional[Dict[str, Any]] = None
    detail: str = ""

    @property
    def seed(self) -> Optional[str]:
        for key, value in (_split(o) for o in self.overrides):
            if key == "seed":
                return value
        return None


@dataclass
class Group:
    """The jobs of one experiment: equal overrides but for the seed (and ``IGNORED_KEYS``)."""

    key: Tuple[Tuple[str, str], ...]  # the group's overrides as sorted (key, value) pairs
    jobs: List[Job] = field(default_factory=list)

    @property
    def complete(self) -> List[Job]:
        return [j for j in self.jobs if j.status == "complete"]

    def values(self, metric: str) -> List[float]:
        out = []
        for job in self.complete:
            value = job.results.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append(float(value))
        return out

    def stats(self, metric: str) -> Tuple[Optional[float], Optional[float], int]:
        """:func:`mean_std` of the metric over the group's complete runs."""
        return mean_std(self.values(metric))


@dataclass
class Collection:
    """A sweep's jobs and groups, and which overrides tell the groups apart."""

    sweep_dir: str
    name: str
    jobs: List[Job]
    groups: List[Group]
    varying: List[str]  # override keys whose value differs between groups (table columns)
    common: List[str]  # overrides shared by all groups
    metrics: List[str]  # COCO_KEYS + extra buckets present
    command: Optional[str] = None  # the latest sweep command (multirun.yaml)

    def value(self, group: Group, key: str) -> str:
        return dict(group.key).get(key, "")


def _split(override: str) -> Tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+"), value


def group_key(overrides: Sequence[str], ignored: Sequence[str] = ()) -> Tuple[Tuple[str, str], ...]:
    """A job's overrides as sorted (key, value) pairs, without seed and the keys that do not
    change a result: jobs with equal keys are the same experiment."""
    pairs = []
    for override in overrides:
        key, value = _split(override)
        if key in IGNORED_KEYS or key in ignored or key.startswith(("hydra.", "hydra/")):
            continue
        pairs.append((key, value))
    return tuple(sorted(pairs))


def _load_yaml(path: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _job_meta(job_dir: str) -> Tuple[int, Tuple[str, ...]]:
    """(hydra.job.num, the override_dirname exclude_keys) from the job's ``.hydra/hydra.yaml``."""
    try:
        from omegaconf import OmegaConf

        job = OmegaConf.load(os.path.join(job_dir, ".hydra", "hydra.yaml")).hydra.job
    except Exception:
        return 1 << 30, ()
    num = OmegaConf.select(job, "num", default=None)
    exclude = OmegaConf.select(job, "config.override_dirname.exclude_keys", default=None)
    return (
        int(num) if isinstance(num, int) else 1 << 30,
        tuple(str(k) for k in exclude) if exclude is not None else (),
    )


def _failure(job_dir: str) -> Optional[str]:
    """A one-line reason if the job failed, else None."""
    marker = os.path.join(job_dir, FAILED_MARKER)
    if os.path.isfile(marker):
        with open(marker, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[0] if lines else "failed"
    logs = [os.path.join(job_dir, "log.txt")] + [
        os.path.join(job_dir, n) for n in sorted(os.listdir(job_dir)) if n.endswith(".log")
    ]
    for log in logs:
        if not os.path.isfile(log):
            continue
        with open(log, errors="replace") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if any(p.search(line) for p in _ERROR_PATTERNS):
                if "Traceback" in line:  # the exception line is the last non-indented line after it
                    tail = [rest for rest in lines[i + 1:] if rest and not rest.startswith((" ", "\t"))]
                    return (tail[0] if tail else line).strip()[:200]
                return line.strip()[:200]
    return None


def _last_iteration(job_dir: str) -> Optional[int]:
    path = os.path.join(job_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    try:
        records = read_metrics(path)
    except OSError:
        return None
    iters = [r["iteration"] for r in records if isinstance(r.get("iteration"), int)]
    return max(iters) if iters else None


def find_jobs(sweep_dir: str) -> List[Job]:
    """Every Hydra job directory under ``sweep_dir`` with its status, in sweep order."""
    jobs = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        overrides_file = os.path.join(root, ".hydra", "overrides.yaml")
        if not os.path.isfile(overrides_file):
            continue
        dirs[:] = []  # no job inside a job
        overrides = [str(o) for o in (_load_yaml(overrides_file) or [])]
        num, ignored = _job_meta(root)
        job = Job(path=root, overrides=overrides, status="incomplete", num=num, ignored=ignored)
        if is_done(root):
            try:
                job.results = read_results(root)
                job.status = "complete"
            except (OSError, ValueError) as e:
                job.status, job.detail = "failed", f"unreadable {RESULTS_FILE}: {e}"
        if job.status != "complete" and not job.detail:
            reason = _failure(root)
            if reason is not None:
                job.status, job.detail = "failed", reason
            else:
                last = _last_iteration(root)
                job.detail = "not started" if last is None else f"last logged iteration {last}"
        jobs.append(job)
    jobs.sort(key=lambda j: (j.num, j.path))
    return jobs


def _sweep_info(sweep_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(name, the command line of the latest multirun) from ``multirun.yaml`` if present."""
    path = os.path.join(sweep_dir, "multirun.yaml")
    if not os.path.isfile(path):
        return None, None
    try:
        cfg = _load_yaml(path)
    except Exception:
        return None, None
    name = cfg.get("name") if isinstance(cfg.get("name"), str) else None
    task = ((cfg.get("hydra") or {}).get("overrides") or {}).get("task") or []
    command = "ugs-train -m " + " ".join(shlex.quote(str(o)) for o in task)
    return name, command.strip()


def _extra_metrics(results: Sequence[Dict[str, Any]]) -> List[str]:
    """The ``AP*`` keys beyond COCO's (area buckets such as APvt, APeS) of any job: first in
    the evaluator's order (``metric_order`` in results.json, i.e. by bucket size), then any
    other key alphabetically."""
    present = {
        k
        for r in results
        for k, v in r.items()
        if k.startswith("AP") and k not in COCO_KEYS and (v is None or isinstance(v, (int, float)))
    }
    ordered: List[str] = []
    for r in results:
        order = r.get("metric_order")
        if isinstance(order, list):
            ordered.extend(k for k in order if k in present and k not in ordered)
    return ordered + sorted(present - set(ordered))


def collect(sweep_dir: str) -> Collection:
    """The jobs of ``sweep_dir`` grouped into experiments (in sweep order), with the overrides
    that vary between groups and those they share; raises CollectError when there is no sweep."""
    if not os.path.isdir(sweep_dir):
        raise CollectError(f"{sweep_dir} is not a directory")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise CollectError(f"no Hydra job directory (.hydra/overrides.yaml) under {sweep_dir}")
    groups: Dict[Tuple[Tuple[str, str], ...], Group] = {}
    for job in jobs:  # sweep order: a group's position is its first job's
        key = group_key(job.overrides, job.ignored)
        groups.setdefault(key, Group(key)).jobs.append(job)
    keys: List[str] = []
    for group in groups.values():
        keys.extend(k for k, _ in group.key if k not in keys)
    varying = [k for k in keys if len({dict(g.key).get(k) for g in groups.values()}) > 1]
    common = [f"{k}={v}" for k, v in next(iter(groups)) if k not in varying]
    extra = _extra_metrics([j.results for j in jobs if j.results])
    name, command = _sweep_info(sweep_dir)
    return Collection(
        sweep_dir=sweep_dir,
        name=name or os.path.basename(os.path.normpath(os.path.abspath(sweep_dir))),
        jobs=jobs,
        groups=list(groups.values()),
        varying=varying,
        common=common,
        metrics=list(COCO_KEYS) + extra,
        command=command,
    )
