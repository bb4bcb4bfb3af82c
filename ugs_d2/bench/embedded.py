"""The second embedded benchmark (``ugs-bench embedded``; results/embedded_v2): a fixed plan of
single ``ugs-train`` runs, trained in lanes, each finished run's small result files committed
under ``results/embedded_v2/runs/<part>/<job>/`` so that the benchmark can be run in parts, on
different machines and in different sittings, and every table regenerates from the repository.

* **plan** (:func:`plan`): every job is ``ugs-train +experiment=embedded_v2_<part> OVERRIDES``
  (``configs/experiment/embedded_v2_*.yaml``), in priority order: the rows the headline claims
  need first, the rows the issue lets one cut (second grid reading, GIoU, CE uniform) last, so
  a partial benchmark is the most useful one.
* **committed run** (:func:`commit_run`): ``results.json``, ``done``, ``.hydra/overrides.yaml``,
  ``.hydra/config.yaml``, a ``.hydra/hydra.yaml`` cut to the job and the config-group choices,
  and ``metrics.json`` thinned to the losses, the learning rate, the AP checkpoints and the
  gradient-variance statistics (:func:`thin_metrics`). Written to a temporary directory that
  is renamed into place, so a killed runner never leaves half a run. ``ugs-results`` and
  ``ugs-gradvar --sweep`` read ``runs/<part>`` as they read a multirun directory.
* **lanes** (:func:`run_plan`): ``lanes`` worker threads, each training the next job that is
  neither committed nor taken, as a subprocess with ``threads`` torch threads, in
  ``<work_dir>/<part>/<job>`` (a killed job resumes there from its last checkpoint, and a job
  that finished but was not committed is committed on the next pass). No job starts after
  ``stop_after_s``; optionally each committed run becomes its own git commit.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ugs_d2.bench.common import BenchError
from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.evaluation.results import DONE_MARKER, RESULTS_FILE, is_done, read_results
from ugs_d2.fileio import TMP_PREFIX

__all__ = [
    "Job", "EmbeddedSpec", "PARTS", "SEEDS", "plan", "select_jobs", "job_status", "thin_metrics",
    "commit_run", "run_plan", "RESULTS_DIR", "RUNS_SUBDIR", "WORK_DIR",
]

RESULTS_DIR = "results/embedded_v2"
WORK_DIR = "outputs/embedded_v2"
RUNS_SUBDIR = "runs"
SEEDS = (0, 1, 2)
PARTS = ("table6", "detectors", "cascade")
NORMALIZED_GRID = ("ugs.rpn.grid_form=normalized", "ugs.roi.grid_form=normalized")

# (part, rows) in the order they are trained; a row is its overrides without the seed. The last
# three tiers are the cut order reversed: the second grid reading is cut first.
_TIERS: Tuple[Tuple[str, Tuple[Tuple[str, ...], ...]], ...] = (
    ("table6", (("ugs=l1",), ("ugs=full",), ("ugs=smooth_l1",))),
    ("detectors", tuple((f"model={m}", f"ugs={u}") for m in ("retinanet_r18_fpn", "fcos_r18_fpn")
                        for u in ("off", "full"))),
    ("table6", tuple((f"ugs={u}",) for u in ("grad_clip", "kl", "ce_in", "ce_in_um", "full_rho0",
                                              "ce_in_um_scaled"))),
    ("cascade", (("ugs=off",), ("ugs=full",))),
    ("detectors", tuple(("model=gfl_r18_fpn", f"ugs={u}") for u in ("off", "full"))),
    ("table6", (("ugs=ce_uniform",),)),
    ("table6", (("ugs=giou",),)),
    ("table6", (("ugs=full",) + NORMALIZED_GRID,)),
)

# metrics.json keys a committed run keeps: what the tables, curves and gradvar reports read
_KEEP_PREFIXES = ("iteration", "total_loss", "loss_", "lr", "bbox/", "rotated/", "gradvar", "ugs/")


@dataclass(frozen=True)
class Job:
    """One run of the plan: ``ugs-train +experiment=embedded_v2_<part> *overrides``."""

    part: str
    overrides: Tuple[str, ...]   # sorted KEY=VALUE, the seed included

    @property
    def name(self) -> str:
        """The run's directory name: its overrides as Hydra's ``override_dirname`` joins them."""
        return ",".join(self.overrides)

    @property
    def experiment(self) -> str:
        return f"embedded_v2_{self.part}"

    def command(self, ugs_train: Sequence[str], run_dir: str, extra: Sequence[str] = ()) -> List[str]:
        # quoted: the directory name holds '=' and ',' (Hydra's override grammar)
        return [*ugs_train, f"+experiment={self.experiment}", *self.overrides, *extra,
                f"hydra.run.dir='{run_dir}'"]


def plan(seeds: Iterable[int] = SEEDS) -> List[Job]:
    """Every job, in training order: tier by tier, each row's seeds together."""
    jobs = []
    for part, rows in _TIERS:
        for row in rows:
            for seed in seeds:
                jobs.append(Job(part, tuple(sorted(row + (f"seed={seed}",)))))
    return jobs


def select_jobs(jobs: Sequence[Job], parts: Optional[Sequence[str]] = None,
                only: Optional[Sequence[str]] = None) -> List[Job]:
    """The jobs of ``parts`` (all if None) that hold every ``KEY=VALUE`` of ``only``; a
    ``BenchError`` naming an unknown part or a filter that selects nothing."""
    unknown = sorted(set(parts or ()) - set(PARTS))
    if unknown:
        raise BenchError(f"--parts: unknown part(s) {', '.join(unknown)} (expected some of {', '.join(PARTS)})")
    selected = [j for j in jobs if (not parts or j.part in parts)
                and all(o in j.overrides for o in (only or ()))]
    if not selected:
        raise BenchError(f"--only {' '.join(only or ())}: no job of the plan has these overrides")
    return selected


def run_dir_of(work_dir: str, job: Job) -> str:
    """Where ``job`` trains (checkpoints, logs) under ``work_dir``."""
    return os.path.join(work_dir, job.part, job.name)


def committed_dir(results_dir: str, job: Job) -> str:
    return os.path.join(results_dir, RUNS_SUBDIR, job.part, job.name)


def job_status(results_dir: str, work_dir: str, job: Job) -> str:
    """``committed`` (its files are under ``results_dir``), ``finished`` (trained in ``work_dir``,
    not committed yet), ``started`` (a run directory without ``done``) or ``missing``."""
    if is_done(committed_dir(results_dir, job)):
        return "committed"
    run_dir = run_dir_of(work_dir, job)
    if is_done(run_dir):
        return "finished"
    return "started" if os.path.isdir(run_dir) else "missing"


def thin_metrics(records: Sequence[Dict]) -> List[Dict]:
    """``metrics.json`` records cut to the keys the reports read (losses, lr, AP checkpoints,
    gradient variance); timing keys (``time``, ``data_time``, ``eta_seconds``) are dropped."""
    thinned = []
    for record in records:
        kept = {k: v for k, v in record.items() if k.startswith(_KEEP_PREFIXES)}
        if len(kept) > 1:  # more than the iteration
            thinned.append(kept)
    return thinned


def _thin_hydra(hydra_yaml: str) -> Dict:
    """``.hydra/hydra.yaml`` cut to what describes the job: ``hydra.job`` (its name, overrides
    and the override_dirname settings the collector reads) and the config-group choices;
    machine paths, environment and launcher settings are left out."""
    from omegaconf import OmegaConf

    hydra = OmegaConf.to_container(OmegaConf.load(hydra_yaml).hydra, resolve=False)
    job = {k: hydra["job"][k] for k in ("name", "override_dirname", "num", "config") if k in hydra["job"]}
    runtime = hydra.get("runtime", {})
    return {"hydra": {"job": job, "runtime": {k: runtime[k] for k in ("version", "choices") if k in runtime}}}


def commit_run(run_dir: str, dest: str) -> str:
    """Copy a finished run's small files to ``dest`` (see the module docstring), atomically:
    built in a temporary sibling directory, then renamed. Returns ``dest``."""
    from omegaconf import OmegaConf

    if not is_done(run_dir):
        raise BenchError(f"{run_dir}: not finished (no {DONE_MARKER} and {RESULTS_FILE})")
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{os.path.basename(dest)}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, ".hydra"))
    try:
        for name in (RESULTS_FILE, DONE_MARKER, ".hydra/overrides.yaml", ".hydra/config.yaml"):
            shutil.copyfile(os.path.join(run_dir, name), os.path.join(tmp, name))
        hydra_yaml = os.path.join(run_dir, ".hydra", "hydra.yaml")
        if os.path.isfile(hydra_yaml):
            with open(os.path.join(tmp, ".hydra", "hydra.yaml"), "w") as f:
                f.write(OmegaConf.to_yaml(_thin_hydra(hydra_yaml)))
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            for record in thin_metrics(read_metrics(run_dir)):
                f.write(json.dumps(record, sort_keys=True) + "\n")
        if os.path.isdir(dest):  # an earlier commit of the same job: the new one replaces it
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def remove_stale_commits(results_dir: str) -> None:
    """Temporary directories a killed runner left under ``runs/``."""
    runs = os.path.join(results_dir, RUNS_SUBDIR)
    for directory, subdirs, _ in os.walk(runs):
        for name in list(subdirs):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                subdirs.remove(name)


@dataclass
class EmbeddedSpec:
    """What ``ugs-bench embedded`` runs (see :func:`run_plan`)."""

    jobs: List[Job]
    results_dir: str = RESULTS_DIR
    work_dir: str = WORK_DIR
    lanes: int = 2
    threads: int = 1                    # torch threads per lane
    stop_after_s: Optional[float] = None  # start no job after this many seconds
    git_commit: bool = False
    extra_overrides: Tuple[str, ...] = ()
    ugs_train: Tuple[str, ...] = (sys.executable, "-m", "ugs_d2.train")  # this interpreter's ugs-train


@dataclass
class Outcome:
    job: Job
    status: str        # committed | skipped (committed before) | busy | failed | not started
    detail: str = ""


def _git_commit(path: str, message: str, lock: threading.Lock, log: Callable[[str], None]) -> None:
    """``git add PATH`` and a commit of PATH alone; a failure is a warning (the files stay)."""
    with lock:
        for attempt in range(3):
            add = subprocess.run(["git", "add", "--", path], capture_output=True, text=True)
            commit = add.returncode == 0 and subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", path], capture_output=True, text=True)
            if commit and commit.returncode == 0:
                return
            time.sleep(2 + 3 * attempt)  # another git command may hold the index lock
        reason = (commit or add).stderr.strip()[:200]
        log(f"warning: git commit of {path} failed ({reason}); the files are there, commit them by hand")


def _train(spec: EmbeddedSpec, job: Job, log_dir: str) -> Tuple[int, str]:
    """Train one job in its run directory (resuming it); (exit code, last line of its log)."""
    run_dir = run_dir_of(spec.work_dir, job)
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads), MKL_NUM_THREADS=str(spec.threads))
    log_path = os.path.join(log_dir, f"{job.part}.{job.name}.log")
    with open(log_path, "a") as out:
        rc = subprocess.run(job.command(spec.ugs_train, run_dir, spec.extra_overrides),
                            stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return rc, lines[-1] if lines else ""


def _summary_line(run_dir: str) -> str:
    results = read_results(run_dir)
    parts = [f"{k} {results[k]:.2f}" for k in ("AP", "APs") if isinstance(results.get(k), (int, float))]
    wall = results.get("wall_time_s")
    return ", ".join(parts + ([f"{wall:.0f} s"] if isinstance(wall, (int, float)) else []))


def run_plan(spec: EmbeddedSpec, log: Callable[[str], None]) -> List[Outcome]:
    """Train and commit every job of ``spec.jobs`` that is not committed yet; the outcomes in
    plan order. Safe to run again after any interruption (see the module docstring)."""
    remove_stale_commits(spec.results_dir)
    log_dir = os.path.join(spec.work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    started = time.monotonic()
    pending = [j for j in spec.jobs if job_status(spec.results_dir, spec.work_dir, j) != "committed"]
    outcomes = {j: Outcome(j, "skipped", "committed before") for j in spec.jobs if j not in pending}
    log(f"{len(spec.jobs)} jobs, {len(outcomes)} committed before, {len(pending)} to run in {spec.lanes} lane(s)")
    queue_lock, git_lock = threading.Lock(), threading.Lock()

    def next_job() -> Optional[Job]:
        with queue_lock:
            if not pending:
                return None
            if spec.stop_after_s is not None and time.monotonic() - started > spec.stop_after_s:
                for job in pending:
                    outcomes[job] = Outcome(job, "not started", "past --stop-after")
                pending.clear()
                return None
            return pending.pop(0)

    def lane(number: int) -> None:
        while (job := next_job()) is not None:
            log(f"lane {number}: {job.part} {job.name}")
            rc, last = _train(spec, job, log_dir)
            run_dir = run_dir_of(spec.work_dir, job)
            if rc != 0 or not is_done(run_dir):
                busy = "being trained by another process" in last
                outcomes[job] = Outcome(job, "busy" if busy else "failed", last[:300])
                log(f"lane {number}: {job.part} {job.name}: {'busy' if busy else f'FAILED (exit {rc})'}: {last[:300]}")
                continue
            dest = commit_run(run_dir, committed_dir(spec.results_dir, job))
            summary = _summary_line(dest)
            outcomes[job] = Outcome(job, "committed", summary)
            log(f"lane {number}: {job.part} {job.name}: committed ({summary})")
            if spec.git_commit:
                _git_commit(dest, f"{spec.results_dir}: {job.part} {job.name} ({summary})", git_lock, log)

    threads = [threading.Thread(target=lane, args=(i + 1,), daemon=True) for i in range(spec.lanes)]
    for i, thread in enumerate(threads):
        thread.start()
        if i + 1 < len(threads):
            time.sleep(5)  # the lanes' first data loading and model building do not coincide
    for thread in threads:
        thread.join()
    return [outcomes.get(j, Outcome(j, "not started")) for j in spec.jobs]

