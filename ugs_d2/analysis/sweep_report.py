"""The report ``ugs-results`` (and the ``CollectResults`` Hydra callback) writes from a
:class:`~ugs_d2.analysis.results.Collection`:

* **table**: per group the number of complete runs and AP, AP50, AP75, APs, APm, APl (plus any
  extra ``AP*`` bucket in results.json, e.g. APvt or APeS from ``evaluation.buckets``, in the
  evaluator's order) as mean +- sample standard deviation (n - 1) over the
  runs; a group of one run shows its value without +-. ``n/a``: the metric is undefined (no
  object of that size); ``(k/n)``: only k of the n runs define it. Written as ``<out>.md``
  (its header is the command that regenerates it) and ``<out>.csv``, both atomically;
* **plots**: ``<out>_<param>.png``, AP and APs against each swept parameter (error bars: std,
  one line per setting of the other swept parameters), and ``<out>_gradvar.png``, the
  gradient variance per size bucket (``gradvar/<bucket>/var`` in metrics.json, logged with
  ``gradvar.enabled=true``) over iterations, one line per group. matplotlib is imported only
  when a plot is drawn.
"""
import csv
import io
import math
import os
import re
import shlex
import statistics
from typing import Any, Dict, List, Optional, Tuple

from ugs_d2.analysis.results import Collection, Group, Job, collect
from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.fileio import write_atomic, write_text_atomic

__all__ = [
    "PROG",
    "render_markdown",
    "render_csv",
    "plot_params",
    "plot_gradvar",
    "regenerate_command",
    "write_outputs",
    "collect_and_write",
]

PROG = "ugs-results"  # the command the table's header says regenerates it
PLOT_METRICS = ("AP", "APs")
GRADVAR_BUCKET_ORDER = ("tiny", "small", "lt32", "medium", "large")  # ugs_d2.engine.gradvar


# --------------------------------------------------------------------------------------------
# table and CSV


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
    """The ``<out>.md`` table: one row per group, then the jobs that are not complete;
    ``regenerate`` is the command its header names."""
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
    """The ``<out>.csv`` table: per group and metric its mean, std and n, unrounded."""
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
# writing the report


def regenerate_command(sweep_dir: str, out: str) -> str:
    """The ``ugs-results`` command line that writes ``<out>.*`` from ``sweep_dir`` again."""
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
