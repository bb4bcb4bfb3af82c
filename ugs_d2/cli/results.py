"""``ugs-results``: collect a Hydra multirun sweep into a table (DomainBed style).

Every finished job directory holds ``results.json`` and a ``done`` marker (see
``ugs_d2.evaluation.results``); this tool reads only those, so it can run while a sweep is still
going and shows what is missing. ::

    ugs-results multirun/table6                       # -> results/table6.{md,csv} + plots
    ugs-results multirun/table6 --out /tmp/t6         # -> /tmp/t6.md, /tmp/t6.csv, /tmp/t6_*.png

What it does:

* **jobs**: every directory under SWEEP_DIR holding ``.hydra/overrides.yaml``. A job is
  *complete* when it has ``done`` and ``results.json``; otherwise *failed* when it has a
  ``failed`` marker (written by the ``CollectResults`` Hydra callback when the job raised) or
  its logs hold a traceback, else *incomplete* (still running, killed, or not started);
* **groups**: jobs with the same overrides once ``seed`` and the keys that do not change the
  experiment are dropped: ``name``, ``resume``, ``eval_only``, ``num_workers``, ``device``,
  ``hydra.*`` and whatever else the run's ``hydra.job.config.override_dirname.exclude_keys``
  lists (W&B and launcher keys). Overrides shared by every group go to the header, the others become columns;
* **table**: per group the number of complete runs and AP, AP50, AP75, APs, APm, APl (plus any
  extra ``AP*`` bucket in results.json, e.g. APvt or APeS from ``evaluation.buckets``, in the
  evaluator's order) as mean +- sample standard deviation (n - 1) over the
  runs; a group of one run shows its value without +-. ``n/a``: the metric is undefined (no
  object of that size); ``(k/n)``: only k of the n runs define it. Written as ``<out>.md``
  (its header is the command that regenerates it) and ``<out>.csv``, both atomically;
* **plots**: ``<out>_<param>.png``, AP and APs against each swept parameter (error bars: std,
  one line per setting of the other swept parameters), and ``<out>_gradvar.png``, the
  gradient variance per size bucket (``gradvar/<bucket>/var`` in metrics.json, logged with
  ``gradvar.enabled=true``) over iterations, one line per group.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ugs_d2.evaluation.results import COCO_KEYS, RESULTS_FILE, is_done, read_results
from ugs_d2.fileio import write_atomic, write_text_atomic

__all__ = [
    "FAILED_MARKER",
    "IGNORED_KEYS",
    "Job",
    "Group",
    "Collection",
    "CollectError",
    "find_jobs",
    "group_key",
    "collect",
    "write_outputs",
    "main",
]

PROG = "ugs-results"
FAILED_MARKER = "failed"
# override keys that do not change what a run measures (seed is what a group averages over)
IGNORED_KEYS = ("seed", "name", "resume", "eval_only", "num_workers", "device")
PLOT_METRICS = ("AP", "APs")
GRADVAR_BUCKET_ORDER = ("tiny", "small", "lt32", "medium", "large")  # ugs_d2.engine.gradvar
_SKIP_DIRS = {".hydra", ".submitit", "inference", "__pycache__"}
_ERROR_PATTERNS = (
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r"training diverged"),
    re.compile(r"\bERROR\b"),
)

try:  # the shared reader (deduplicated by iteration) when it is there
    from ugs_d2.evaluation.metrics import read_metrics as _read_metrics
except ImportError:  # pragma: no cover - depends on the checkout
    _read_metrics = None


class CollectError(ValueError):
    """SWEEP_DIR does not exist or holds no Hydra job."""


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """metrics.json records (one json object per line), one per iteration (the last one wins)."""
    if _read_metrics is not None:
        return list(_read_metrics(path))
    by_iter: Dict[Any, Dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut off by a crash
                continue
            if isinstance(record, dict):
                by_iter[record.get("iteration")] = record
    return [by_iter[k] for k in sorted(by_iter, key=lambda i: (i is None, i if i is not None else 0))]


# --------------------------------------------------------------------------------------------
# jobs and groups


@dataclass
class Job:
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
        """(mean, sample std or None for fewer than 2 values, number of values)."""
        values = self.values(metric)
        if not values:
            return None, None, 0
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
        return mean, std, len(values)


@dataclass
class Collection:
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


def collect(sweep_dir: str) -> Collection:
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


# --------------------------------------------------------------------------------------------
# table


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


def _cell(group: Group, metric: str) -> str:
    mean, std, count = group.stats(metric)
    if mean is None:
        return "n/a"
    text = f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"
    n = len(group.complete)
    return text if count == n else f"{text} ({count}/{n})"


def _job_label(collection: Collection, job: Job) -> str:
    rel = os.path.relpath(job.path, collection.sweep_dir)
    return rel if rel != "." else os.path.basename(job.path)


def render_markdown(collection: Collection, regenerate: str) -> str:
    c = collection
    out = io.StringIO()
    out.write(f"# {c.name}\n\n")
    out.write(f"Regenerate this file: `{regenerate}`\n\n")
    if c.command:
        out.write(f"Sweep (latest invocation): `{c.command}` -> `{c.sweep_dir}`\n\n")
    if c.common:
        out.write("Common overrides: " + ", ".join(f"`{o}`" for o in c.common) + "\n\n")
    out.write(
        "Box AP (%) on the test set: mean ± sample std (n - 1) over the complete runs of each row "
        "(seeds); a row of one run shows its value alone. n/a: undefined (no object of that "
        "size); (k/n): defined in k of n runs.\n\n"
    )
    columns = (c.varying or ["overrides"]) + ["n"] + c.metrics
    out.write("| " + " | ".join(columns) + " |\n")
    out.write("|" + "|".join("---" if i < len(c.varying or [0]) else "---:" for i in range(len(columns))) + "|\n")
    for group in c.groups:
        if c.varying:
            cells = [c.value(group, k) for k in c.varying]
        else:
            cells = [", ".join(f"{k}={v}" for k, v in group.key) or "(none)"]
        cells.append(str(len(group.complete)))
        cells.extend(_cell(group, m) for m in c.metrics)
        out.write("| " + " | ".join(cells) + " |\n")
    complete = sum(j.status == "complete" for j in c.jobs)
    out.write(f"\n{complete} of {len(c.jobs)} jobs complete.\n")
    missing = [j for j in c.jobs if j.status != "complete"]
    if missing:
        out.write("\n## Incomplete or failed jobs\n\n| job | status | detail |\n|---|---|---|\n")
        for job in missing:
            detail = job.detail.replace("|", "\\|")
            out.write(f"| `{_job_label(c, job)}` | {job.status} | {detail} |\n")
    return out.getvalue()


def render_csv(collection: Collection) -> str:
    c = collection
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = list(c.varying) + ["overrides", "n", "n_failed", "n_incomplete"]
    for metric in c.metrics:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_n"]
    writer.writerow(header)
    for group in c.groups:
        row: List[Any] = [c.value(group, k) for k in c.varying]
        row.append(",".join(f"{k}={v}" for k, v in group.key))
        row.append(len(group.complete))
        row.append(sum(j.status == "failed" for j in group.jobs))
        row.append(sum(j.status == "incomplete" for j in group.jobs))
        for metric in c.metrics:
            mean, std, count = group.stats(metric)
            row += ["" if mean is None else repr(mean), "" if std is None else repr(std), count]
        writer.writerow(row)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# plots


def _as_float(value: str) -> Optional[float]:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _save_figure(fig: Any, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "param"


def plot_params(collection: Collection, out: str) -> List[str]:
    """``<out>_<param>.png`` per swept parameter: AP and APs against it, error bars = std."""
    from matplotlib.figure import Figure

    c = collection
    written = []
    for param in c.varying:
        others = [k for k in c.varying if k != param]
        values = []
        for group in c.groups:
            v = c.value(group, param)
            if v not in values:
                values.append(v)
        numeric = all(_as_float(v) is not None for v in values)
        positions = {v: (_as_float(v) if numeric else i) for i, v in enumerate(values)}
        fig = Figure(figsize=(5.0 * len(PLOT_METRICS), 3.6), layout="constrained")
        axes = fig.subplots(1, len(PLOT_METRICS), squeeze=False)[0]
        lines: Dict[Tuple[str, ...], List[Group]] = {}
        for group in c.groups:
            lines.setdefault(tuple(c.value(group, k) for k in others), []).append(group)
        for ax, metric in zip(axes, PLOT_METRICS):
            for setting, groups in lines.items():
                groups = sorted(groups, key=lambda g: positions[c.value(g, param)])
                xs, ys, es = [], [], []
                for g in groups:
                    mean, std, _ = g.stats(metric)
                    if mean is None:
                        continue
                    xs.append(positions[c.value(g, param)])
                    ys.append(mean)
                    es.append(std or 0.0)
                if not xs:
                    continue
                label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or None
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label,
                            linestyle="-" if numeric else "none")
            ax.set_xlabel(param)
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{c.name}: {metric}")
            if not numeric:
                ax.set_xticks(list(range(len(values))))
                ax.set_xticklabels(values, rotation=30, ha="right")
            ax.grid(True, alpha=0.3)
            if others and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        path = f"{out}_{_safe(param)}.png"
        _save_figure(fig, path)
        written.append(path)
    return written


def _gradvar_series(job: Job) -> Dict[str, Dict[int, float]]:
    """{bucket: {iteration: variance}} from the job's metrics.json."""
    path = os.path.join(job.path, "metrics.json")
    series: Dict[str, Dict[int, float]] = {}
    if not os.path.isfile(path):
        return series
    for record in read_metrics(path):
        it = record.get("iteration")
        for key, value in record.items():
            if not key.startswith("gradvar/") or not isinstance(it, int):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            parts = key.split("/")
            # gradvar/<bucket>/var (ugs_d2.engine.gradvar; mean_abs and count are not plotted),
            # or a plain gradvar/<bucket>
            if len(parts) == 3 and parts[2] == "var" or len(parts) == 2:
                series.setdefault(parts[1], {})[it] = float(value)
    return series


def plot_gradvar(collection: Collection, out: str) -> Optional[str]:
    """``<out>_gradvar.png``: the gradient variance of each size bucket
    (``gradvar/<bucket>/var``) over iterations, one line per group (mean over the group's runs
    at each iteration); None when no run logged any."""
    from matplotlib.figure import Figure

    c = collection
    per_group: List[Tuple[str, Dict[str, Dict[int, float]]]] = []
    buckets: List[str] = []
    for group in c.groups:
        merged: Dict[str, Dict[int, List[float]]] = {}
        for job in group.jobs:
            for bucket, points in _gradvar_series(job).items():
                for it, v in points.items():
                    merged.setdefault(bucket, {}).setdefault(it, []).append(v)
        if merged:
            label = ", ".join(f"{k}={c.value(group, k)}" for k in c.varying) or c.name
            per_group.append((label, {b: {i: statistics.fmean(v) for i, v in p.items()} for b, p in merged.items()}))
            buckets.extend(b for b in merged if b not in buckets)
    if not per_group:
        return None
    order = {b: i for i, b in enumerate(GRADVAR_BUCKET_ORDER)}
    buckets.sort(key=lambda b: (order.get(b, len(order)), b))
    fig = Figure(figsize=(4.8 * len(buckets), 3.6), layout="constrained")
    axes = fig.subplots(1, len(buckets), squeeze=False)[0]
    for ax, bucket in zip(axes, buckets):
        positive = True
        for label, series in per_group:
            points = sorted(series.get(bucket, {}).items())
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=label, marker=".")
                positive = positive and all(p[1] > 0 for p in points)
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("gradient variance")
        ax.set_title(f"gradvar/{bucket}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    path = f"{out}_gradvar.png"
    _save_figure(fig, path)
    return path


# --------------------------------------------------------------------------------------------
# entry points


def regenerate_command(sweep_dir: str, out: str) -> str:
    return f"{PROG} {shlex.quote(sweep_dir)} --out {shlex.quote(out)}"


def write_outputs(collection: Collection, out: str, plots: bool = True) -> Dict[str, Any]:
    """Write ``<out>.md``, ``<out>.csv`` and (``plots``) the PNGs; returns their paths."""
    markdown = render_markdown(collection, regenerate_command(collection.sweep_dir, out))
    written: Dict[str, Any] = {"md": f"{out}.md", "csv": f"{out}.csv", "png": []}
    write_text_atomic(written["md"], markdown)
    write_text_atomic(written["csv"], render_csv(collection))
    if plots:
        written["png"] = plot_params(collection, out)
        gradvar = plot_gradvar(collection, out)
        if gradvar:
            written["png"].append(gradvar)
    written["markdown"] = markdown
    return written


def collect_and_write(sweep_dir: str, out: Optional[str] = None, plots: bool = True) -> Dict[str, Any]:
    """``collect`` + ``write_outputs``; ``out`` defaults to ``results/<sweep name>``."""
    collection = collect(sweep_dir)
    out = out or os.path.join("results", collection.name)
    written = write_outputs(collection, out, plots=plots)
    written["collection"] = collection
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Collect a ugs-train multirun sweep into a markdown table, a CSV and plots "
        "(mean ± std over seeds; incomplete and failed jobs listed).",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a multirun directory, e.g. multirun/table6")
    parser.add_argument(
        "--out", default=None,
        help="output prefix: writes OUT.md, OUT.csv, OUT_<param>.png (default: results/<sweep name>)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write only the table and the CSV")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-results: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = collect_and_write(args.sweep_dir, args.out, plots=not args.no_plots)
    except (CollectError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    if not args.quiet:
        print(written["markdown"], end="")
    for path in [written["md"], written["csv"], *written["png"]]:
        print(f"[{PROG}] wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
