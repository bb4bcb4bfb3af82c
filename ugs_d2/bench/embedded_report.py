"""The second embedded benchmark's report, from the committed runs alone
(``results/embedded_v2/runs/<part>/<job>/``, see :mod:`ugs_d2.bench.embedded`):

* ``<part>.{md,csv}`` + plots: ``ugs-results`` of each part (every metric, every row);
* ``gradvar_l1.md``, ``gradvar_smooth_l1.md``: ``ugs-gradvar --sweep`` of the Table 6 part, the
  baseline (L1, smooth-L1) against full UGS, per size bucket, both probes;
* ``summary.md`` + ``summary.png`` (AP and APs per detector, baseline vs UGS), ``curves.png``
  (AP over training per detector, mean over seeds) and ``gradvar.png`` (the faithful ratio per
  bucket): baseline vs full UGS per detector, Table 6 against L1, the grid readings, and the
  issue's targets, each met / missed / not measured.

Differences are paired by seed (run of seed s minus the baseline's run of seed s); "mean +- std"
is over the pairs. Missing runs are counted, never guessed.
"""
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ugs_d2.analysis.gradvar import (
    GradVarError,
    compare_sweep_faithful,
    format_mean_std,
    load_faithful,
    pair_sweep,
    report_sweep,
)
from ugs_d2.analysis.results import CollectError, Collection, Group, collect, mean_std
from ugs_d2.analysis.sweep_report import write_outputs
from ugs_d2.bench.embedded import PARTS, RUNS_SUBDIR, SEEDS, EmbeddedSpec, job_status
from ugs_d2.evaluation.metrics import read_metrics
from ugs_d2.fileio import write_text_atomic

__all__ = ["DETECTORS", "summarize", "render_summary", "write_report", "format_status"]

# detector -> (part, overrides that select it, baseline ugs preset)
DETECTORS: Tuple[Tuple[str, str, Dict[str, str], str], ...] = (
    ("Faster R-CNN", "table6", {}, "l1"),
    ("RetinaNet", "detectors", {"model": "retinanet_r18_fpn"}, "off"),
    ("FCOS", "detectors", {"model": "fcos_r18_fpn"}, "off"),
    ("Cascade R-CNN", "cascade", {}, "off"),
    ("GFL V1", "detectors", {"model": "gfl_r18_fpn"}, "off"),
)
METRICS = ("AP", "AP50", "AP75", "APs", "APm")
APS_GAIN_TARGET = 1.5  # issue 13: full UGS vs L1 on Faster R-CNN, APs points, paired over seeds
GRADVAR_TARGET = 2.9   # paper Sec. 4.6: smooth-L1 / UGS, objects under 32 px
GRID_KEYS = ("ugs.rpn.grid_form", "ugs.roi.grid_form")
TABLE6_ORDER = ("l1", "smooth_l1", "giou", "grad_clip", "kl", "ce_uniform", "ce_in", "ce_in_um", "full",
                "full_rho0", "ce_in_um_scaled")
Stat = Tuple[Optional[float], Optional[float], int]


def find_group(groups: Sequence[Group], **selected: str) -> Optional[Group]:
    """The one group whose overrides are exactly ``selected`` plus keys it does not set."""
    matches = [g for g in groups if all(dict(g.key).get(k) == v for k, v in selected.items())
               and not any(k in dict(g.key) for k in GRID_KEYS if k not in selected)]
    return matches[0] if len(matches) == 1 else None


def per_seed(group: Optional[Group], metric: str) -> Dict[str, float]:
    out = {}
    for job in group.complete if group else []:
        value = job.results.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[job.seed] = float(value)
    return out


def paired(base: Dict[str, float], other: Dict[str, float]) -> List[float]:
    """other - base for every seed both have."""
    return [other[s] - base[s] for s in sorted(set(base) & set(other))]


def compare_groups(base: Optional[Group], other: Optional[Group]) -> Dict[str, Tuple[Stat, Stat, Stat]]:
    """metric -> (baseline stats, other stats, paired difference stats)."""
    out = {}
    for metric in METRICS:
        a, b = per_seed(base, metric), per_seed(other, metric)
        out[metric] = (mean_std(list(a.values())), mean_std(list(b.values())), mean_std(paired(a, b)))
    return out


def fmt(stat: Optional[Stat], sign: bool = False, seeds: int = 3) -> str:
    if stat is None or stat[0] is None:
        return "-"
    mean, std, n = stat
    text = f"{mean:+.2f}" if sign else f"{mean:.2f}"
    return text + (f" +- {std:.2f}" if std is not None else "") + ("" if n == seeds else f" (n={n})")


def _collect(results_dir: str, part: str) -> Optional[Collection]:
    try:
        return collect(os.path.join(results_dir, RUNS_SUBDIR, part))
    except CollectError:
        return None


def _row_label(group: Group) -> str:
    key = dict(group.key)
    label = key.pop("ugs", "?")
    key.pop("experiment", None)
    extra = ",".join(f"{k.split('.', 1)[1]}={v}" if k in GRID_KEYS else f"{k}={v}"
                     for k, v in sorted(key.items()))
    return label + (f" ({extra})" if extra else "")


def _table6_order(group: Group) -> Tuple[int, str]:
    """The paper's Table 6 order, then the controls, then other readings of a row."""
    ugs = dict(group.key).get("ugs", "")
    rank = TABLE6_ORDER.index(ugs) if ugs in TABLE6_ORDER else len(TABLE6_ORDER)
    other_reading = any(k in GRID_KEYS for k, _ in group.key)
    return (rank + (len(TABLE6_ORDER) if other_reading else 0), _row_label(group))


def _gradvar(results_dir: str, baseline: str) -> Optional[Dict[str, object]]:
    """The faithful probe's ratio ``baseline`` / full per bucket, last window and mean over windows."""
    try:
        pairs = pair_sweep(os.path.join(results_dir, RUNS_SUBDIR, "table6"), f"ugs={baseline}", "ugs=full")
        if not pairs:
            return None
        last, _ = compare_sweep_faithful(pairs, mean=False)
        averaged, _ = compare_sweep_faithful(pairs, mean=True)
        # the windows every run logged, each as its own comparison: where in training they differ
        common = sorted(set.intersection(*(set(load_faithful(run)) for _, a, b in pairs for run in (a, b))))
        windows = {it: {r["bucket"]: r for r in compare_sweep_faithful(pairs, iteration=it)[0]} for it in common}
    except GradVarError:
        return None
    return {"pairs": len(pairs), "last": {r["bucket"]: r for r in last},
            "mean": {r["bucket"]: r for r in averaged}, "windows": windows}


def summarize(results_dir: str) -> Dict[str, object]:
    """Everything the summary shows, as numbers (None where runs are missing)."""
    collections = {part: _collect(results_dir, part) for part in PARTS}
    groups = {part: (c.groups if c else []) for part, c in collections.items()}
    detectors = []
    for name, part, selected, baseline in DETECTORS:
        base = find_group(groups[part], ugs=baseline, **selected)
        full = find_group(groups[part], ugs="full", **selected)
        row: Dict[str, object] = {"detector": name, "baseline": baseline, "stats": compare_groups(base, full),
                                  "curves": {baseline: _curve(base), "full": _curve(full)}}
        ap_base, ap_full, _ = row["stats"]["AP"]
        row["not_worse"] = (None if min(ap_base[2], ap_full[2]) < len(SEEDS)  # a verdict needs every seed
                            else ap_full[0] >= ap_base[0] - ap_base[1])
        detectors.append(row)
    l1 = find_group(groups["table6"], ugs="l1")
    table6 = [{"row": _row_label(g), "ugs": dict(g.key).get("ugs"), "stats": compare_groups(l1, g),
               "n": len(g.complete)} for g in sorted(groups["table6"], key=_table6_order)]
    smooth = find_group(groups["table6"], ugs="smooth_l1")
    full = find_group(groups["table6"], ugs="full")
    return {"detectors": detectors, "table6": table6,
            "full_vs_smooth_l1": compare_groups(smooth, full),
            "gradvar": {b: _gradvar(results_dir, b) for b in ("l1", "smooth_l1")},
            "committed": {p: (len(c.jobs) if c else 0) for p, c in collections.items()}}


def _curve(group: Optional[Group]) -> Dict[int, Stat]:
    """iteration -> AP stats over the group's seeds, at every evaluation its runs logged."""
    by_iteration: Dict[int, List[float]] = {}
    for job in group.complete if group else []:
        for record in read_metrics(job.path):
            value = record.get("bbox/AP")
            if isinstance(value, (int, float)) and math.isfinite(value):
                # a periodic evaluation is logged at the index of the step before it (99 for
                # 100 steps done), the final one at max_iter
                it = int(record["iteration"])
                by_iteration.setdefault(it if it % 10 == 0 else it + 1, []).append(float(value))
    return {it: mean_std(values) for it, values in sorted(by_iteration.items())}


def _target_lines(summary: Dict[str, object]) -> List[str]:
    faster = summary["detectors"][0]["stats"]["APs"][2]
    lines = ["## Targets (issue 13)", ""]
    target = f"- Faster R-CNN full UGS vs L1, APs >= +{APS_GAIN_TARGET} with paired std below the gain"
    if faster[0] is None:
        lines.append(f"{target}: not measured")
    elif faster[2] < len(SEEDS):
        lines.append(f"{target}: {fmt(faster, True)} -> **not established** ({faster[2]} of {len(SEEDS)} seed pairs)")
    else:
        met = faster[0] >= APS_GAIN_TARGET and faster[1] is not None and faster[1] < faster[0]
        lines.append(f"{target}: {fmt(faster, True)} -> **{'met' if met else 'missed'}**")
    for row in summary["detectors"]:
        verdict = {None: f"not established (needs all {len(SEEDS)} seeds of both)", True: "met",
                   False: "missed"}[row["not_worse"]]
        lines.append(f"- {row['detector']}: full UGS not worse than its baseline beyond one std (AP): **{verdict}**")
    gradvar = summary["gradvar"].get("smooth_l1")
    # two readings of the paper's "variance across 100 training iterations ... the mean variance
    # ratio": the run's last window, and the per-window ratios averaged over training
    for reading, label in (("last", "last window"), ("mean", "mean over windows")):
        lt32 = gradvar[reading].get("lt32") if gradvar else None
        if not (lt32 and lt32["cv2_ratio"][0] is not None):
            lines.append(f"- Faithful gradient-variance ratio smooth-L1 / UGS, {label}: not measured "
                         "(no finished pair)")
            continue
        ratio = lt32["cv2_ratio"]
        verdict = ("met" if ratio[0] >= GRADVAR_TARGET else "missed") if gradvar["pairs"] >= len(SEEDS) \
            else "not established"
        lines.append(f"- Faithful gradient-variance ratio smooth-L1 / UGS, objects < 32 px, {label}, "
                     f"{gradvar['pairs']} seed pair(s): {format_mean_std(ratio)} (paper >= {GRADVAR_TARGET}) -> "
                     f"**{verdict}**")
    return lines + [""]


def _window_labels(iterations: Sequence[int]) -> List[str]:
    """Window end iterations (99, 199, ...) as spans: ``0-99``, ``100-199``, ..."""
    starts = [0] + [it + 1 for it in iterations[:-1]]
    return [f"{a}-{b}" for a, b in zip(starts, iterations)]


def _window_lines(summary: Dict[str, object], bucket: str = "lt32") -> List[str]:
    """The ``bucket`` cv2 ratio baseline / full per window: where in training the two differ."""
    rows = [(b, g) for b, g in summary["gradvar"].items() if g and g.get("windows")]
    if not rows:
        return []
    iterations = sorted(rows[0][1]["windows"])
    lines = [f"Per window, objects under 32 px (`{bucket}`): cv2 ratio baseline / full UGS, mean +- std over "
             "the pairs.", "",
             "| baseline | " + " | ".join(_window_labels(iterations)) + " |",
             "|---|" + "---:|" * len(iterations)]
    for baseline, gradvar in rows:
        cells = [format_mean_std(gradvar["windows"].get(it, {}).get(bucket, {}).get("cv2_ratio", (None, None, 0)))
                 for it in iterations]
        lines.append(f"| {baseline} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_summary(summary: Dict[str, object], command: str) -> str:
    committed = ", ".join(f"{p} {n}" for p, n in summary["committed"].items())
    lines = [
        "# Second embedded benchmark: summary", "",
        f"Regenerate from the committed runs alone: `{command}`", "",
        f"Committed runs: {committed}. Mean +- sample std over seeds (`(n=k)`: k runs); Δ = UGS minus",
        "baseline, paired by seed. Every row and metric: `table6.md`, `detectors.md`, `cascade.md`; gradient variance:",
        "`gradvar_l1.md`, `gradvar_smooth_l1.md`.", "",
        "## Baseline vs full UGS per detector", "",
        "| detector | baseline | AP base | AP UGS | Δ AP | APs base | APs UGS | Δ APs | Δ AP75 | not worse (AP) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in summary["detectors"]:
        ap, aps, ap75 = (row["stats"][m] for m in ("AP", "APs", "AP75"))
        verdict = {None: "-", True: "yes", False: "**no**"}[row["not_worse"]]
        lines.append(f"| {row['detector']} | {row['baseline']} | {fmt(ap[0])} | {fmt(ap[1])} | {fmt(ap[2], True)} | "
                     f"{fmt(aps[0])} | {fmt(aps[1])} | {fmt(aps[2], True)} | {fmt(ap75[2], True)} | {verdict} |")
    lines += ["", "\"not worse\": mean AP(UGS) >= mean AP(baseline) - std AP(baseline).", "",
              "## Table 6 on Faster R-CNN, against L1 (the paper's baseline)", "",
              "| row | AP | Δ AP vs l1 | APs | Δ APs vs l1 | AP75 | Δ AP75 vs l1 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in summary["table6"]:
        s = row["stats"]
        own = row["ugs"] == "l1" and "(" not in row["row"]
        lines.append(f"| {row['row']} | {fmt(s['AP'][1])} | {'' if own else fmt(s['AP'][2], True)} | "
                     f"{fmt(s['APs'][1])} | {'' if own else fmt(s['APs'][2], True)} | "
                     f"{fmt(s['AP75'][1])} | {'' if own else fmt(s['AP75'][2], True)} |")
    vs = summary["full_vs_smooth_l1"]
    lines += ["", f"Full UGS against smooth-L1 (paired): Δ AP {fmt(vs['AP'][2], True)}, "
              f"Δ APs {fmt(vs['APs'][2], True)}.", ""]
    lines += ["## Faithful gradient-variance ratio (across iterations, paper Sec. 4.6), baseline / full UGS", "",
              "| baseline | pairs | bucket | cv2 ratio, last window | cv2 ratio, mean over windows "
              "| var ratio, last window |",
              "|---|---:|---|---:|---:|---:|"]
    for baseline, gradvar in summary["gradvar"].items():
        if not gradvar:
            lines.append(f"| {baseline} | 0 | - | - | - | - |")
            continue
        for bucket, row in gradvar["last"].items():
            averaged = gradvar["mean"].get(bucket, {}).get("cv2_ratio", (None, None, 0))
            lines.append(f"| {baseline} | {gradvar['pairs']} | {bucket} | {format_mean_std(row['cv2_ratio'])} | "
                         f"{format_mean_std(averaged)} | {format_mean_std(row['var_ratio'])} |")
    return "\n".join(lines + [""] + _window_lines(summary) + _target_lines(summary))


def _save(fig, path: str) -> str:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def pair_bars(names: Sequence[str], stats: Dict[str, Sequence[Tuple[Stat, Stat]]], labels: Tuple[str, str]):
    """One panel per metric of ``stats`` (metric -> per name (baseline, UGS) stats): grouped bars
    of the means, error bars the std. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stats), figsize=(max(10.0, 1.1 * len(names) * len(stats)), 3.8), squeeze=False)
    for ax, (metric, rows) in zip(axes[0], stats.items()):
        for k, (label, colour) in enumerate(zip(labels, ("#888888", "#1f77b4"))):
            ax.bar([i + (k - 0.5) * 0.38 for i in range(len(rows))], [r[k][0] or 0.0 for r in rows], 0.38,
                   yerr=[r[k][1] or 0.0 for r in rows], capsize=3, label=label, color=colour)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(f"{metric} (mean +- std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_summary(summary: Dict[str, object], out: str) -> List[str]:
    """``out``.png (AP, APs per detector), ``out``_curves.png, ``out``_gradvar.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = summary["detectors"]
    fig = pair_bars([r["detector"] for r in rows], {m: [r["stats"][m][:2] for r in rows] for m in ("AP", "APs")},
                    ("baseline", "full UGS"))
    written.append(_save(fig, out + ".png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for label, curve in row["curves"].items():
            if curve:
                its = list(curve)
                ax.errorbar(its, [curve[i][0] for i in its], yerr=[curve[i][1] or 0.0 for i in its],
                            marker="o", ms=3, capsize=2, label=label)
        ax.set_title(row["detector"], fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0][0].set_ylabel("bbox AP (val)")
    fig.tight_layout()
    written.append(_save(fig, out + "_curves.png"))
    plt.close(fig)

    fig, (ax, ax_windows) = plt.subplots(1, 2, figsize=(11, 3.5))
    for k, (baseline, gradvar) in enumerate(summary["gradvar"].items()):
        if not gradvar:
            continue
        windows = sorted(it for it, rows in gradvar.get("windows", {}).items()
                         if rows.get("lt32", {}).get("cv2_ratio", (None,))[0] is not None)
        if windows:
            stats = [gradvar["windows"][it]["lt32"]["cv2_ratio"] for it in windows]
            ax_windows.errorbar([it + 1 for it in windows], [m for m, _, _ in stats],
                                yerr=[sd or 0.0 for _, sd, _ in stats], marker="o", ms=3, capsize=2,
                                label=f"{baseline} / full")
        buckets = [b for b, r in gradvar["last"].items() if r["cv2_ratio"][0] is not None]
        ax.bar([i + (k - 0.5) * 0.38 for i in range(len(buckets))],
               [gradvar["last"][b]["cv2_ratio"][0] for b in buckets], 0.38,
               yerr=[gradvar["last"][b]["cv2_ratio"][1] or 0.0 for b in buckets], capsize=3,
               label=f"{baseline} / full")
        ax.set_xticks(range(len(buckets)))
        ax.set_xticklabels(buckets)
    ax.axhline(GRADVAR_TARGET, color="red", ls="--", lw=1, label=f"paper {GRADVAR_TARGET}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_title("faithful gradient-variance ratio (cv2), last window", fontsize=9)
    ax.legend(fontsize=8)
    ax_windows.axhline(GRADVAR_TARGET, color="red", ls="--", lw=1, label=f"paper {GRADVAR_TARGET}")
    ax_windows.axhline(1.0, color="black", lw=0.8)
    ax_windows.set_yscale("log")
    ax_windows.set_xlabel("iteration (end of the window)", fontsize=8)
    ax_windows.set_title("the same ratio, objects under 32 px, per window", fontsize=9)
    ax_windows.grid(alpha=0.3)
    ax_windows.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out + "_gradvar.png"))
    plt.close(fig)
    return written


def write_report(results_dir: str, log: Callable[[str], None]) -> str:
    """Every table, plot and the summary under ``results_dir``; returns the summary markdown."""
    for part in PARTS:
        collection = _collect(results_dir, part)
        if collection is not None:
            write_outputs(collection, os.path.join(results_dir, part))
    for baseline in ("l1", "smooth_l1"):
        sweep = os.path.join(results_dir, RUNS_SUBDIR, "table6")
        command = f"ugs-gradvar --sweep {sweep} --baseline ugs={baseline} --against ugs=full"
        try:
            text = report_sweep(sweep, f"ugs={baseline}", "ugs=full", command)
        except GradVarError as e:
            log(f"gradvar {baseline} vs full: {e}")
            continue
        write_text_atomic(os.path.join(results_dir, f"gradvar_{baseline}.md"), text + "\n")
    summary = summarize(results_dir)
    text = render_summary(summary, f"ugs-bench embedded --report-only --results-dir {results_dir}")
    write_text_atomic(os.path.join(results_dir, "summary.md"), text)
    if any(summary["committed"].values()):
        plot_summary(summary, os.path.join(results_dir, "summary"))
    log(f"wrote {results_dir}/summary.md and the tables")
    return text


def format_status(spec: EmbeddedSpec) -> str:
    """One line per job of the plan: part, overrides, status."""
    rows = [(job, job_status(spec.results_dir, spec.work_dir, job)) for job in spec.jobs]
    counts: Dict[str, int] = {}
    for _, status in rows:
        counts[status] = counts.get(status, 0) + 1
    lines = [f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]
    lines += [f"{status:9s}  {job.part:9s}  {job.name}" for job, status in rows]
    return "\n".join(lines) + "\n"
