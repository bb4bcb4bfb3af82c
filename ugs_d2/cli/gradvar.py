"""``ugs-gradvar RUN_A RUN_B``: compare two runs' localization-gradient variance per GT size.

Both runs must have been trained with ``gradvar.enabled=true`` (see :mod:`ugs_d2.engine.gradvar`
for what is measured). The table shows, per size bucket, each run's variance of the per-sample
gradient magnitude over its window, their ratio var(A) / var(B) (the paper's
variance(Smooth-L1) / variance(UGS) with A = the baseline, B = UGS; Sec. 4.6 reports 2.9 for
``lt32``), the mean magnitudes and the sample counts. Examples::

    ugs-train ugs=off gradvar.enabled=true && ugs-train ugs=full gradvar.enabled=true
    ugs-gradvar outputs/default/gradvar.enabled=true,ugs=off \
                outputs/default/gradvar.enabled=true,ugs=full
    ugs-gradvar RUN_A RUN_B --iteration 999     # the window ending at iteration 999
    ugs-gradvar RUN_A RUN_B --mean              # mean ratio over the iterations both runs logged

Over a sweep (seeds): pair the runs that differ only in one override and report each bucket's
ratio as mean +- std over the pairs, for the last window and averaged over the run, beside the
scale-free ratio of var / mean^2 (the two losses' gradients differ in scale)::

    ugs-gradvar --sweep multirun/embedded_table6 --baseline ugs=off --against ugs=full \
                --out results/embedded/gradvar.md
"""
import argparse
import math
import os
import shlex
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from ugs_d2.evaluation.metrics import metrics_path, read_metrics

__all__ = [
    "GradVarError", "load_gradvar", "compare", "format_table", "pair_sweep", "compare_sweep",
    "format_sweep_markdown", "mean_std", "format_mean_std", "main",
]

PROG = "ugs-gradvar"
PREFIX = "gradvar/"
STATS = ("var", "mean_abs", "count")

#: iteration -> bucket -> stat -> value
Series = Dict[int, Dict[str, Dict[str, float]]]


class GradVarError(ValueError):
    """A run directory is missing or holds no gradvar statistics; the message says which."""


#: row order: ``ugs_d2.engine.gradvar.ALL_BUCKETS`` (not imported: it would load detectron2)
BUCKET_ORDER = ("tiny", "small", "medium", "large", "lt32")


def load_gradvar(run_dir: str) -> Series:
    """The ``gradvar/<bucket>/<stat>`` scalars of a run's ``metrics.json``, per iteration."""
    if not os.path.isdir(run_dir):
        raise GradVarError(f"{run_dir}: no such run directory")
    if not os.path.isfile(metrics_path(run_dir)):
        raise GradVarError(f"{run_dir}: no metrics.json (has this run trained yet?)")
    series: Series = {}
    for record in read_metrics(run_dir):
        for key, value in record.items():
            if not key.startswith(PREFIX) or not isinstance(value, (int, float)):
                continue
            bucket, _, stat = key[len(PREFIX):].rpartition("/")
            if bucket and stat in STATS:
                per_bucket = series.setdefault(record["iteration"], {})
                per_bucket.setdefault(bucket, {})[stat] = float(value)
    if not series:
        raise GradVarError(
            f"{run_dir}: metrics.json has no gradvar statistics; "
            "train it with gradvar.enabled=true"
        )
    return series


def _pick(series: Series, run_dir: str, iteration: Optional[int]) -> int:
    if iteration is None:
        return max(series)
    if iteration not in series:
        logged = sorted(series)
        shown = ", ".join(map(str, logged[:8])) + (", ..." if len(logged) > 8 else "")
        raise GradVarError(
            f"{run_dir}: no gradvar statistics at iteration {iteration} (logged: {shown})"
        )
    return iteration


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def compare(
    a: Series, b: Series, run_a: str = "A", run_b: str = "B",
    iteration: Optional[int] = None, mean: bool = False,
) -> Tuple[str, List[Dict[str, object]]]:
    """Rows (one per bucket present in either run) of the comparison, and a header line.

    Default: each run's last logged window (or the one ending at ``iteration``). ``mean``: over
    the iterations both runs logged, the mean of each statistic and the mean of the per-iteration
    variance ratios.
    """
    if mean:
        common = sorted(set(a) & set(b))
        if not common:
            raise GradVarError(
                f"{run_a} and {run_b} logged gradvar statistics at no common iteration"
            )
        header = f"mean over the {len(common)} iteration(s) both logged ({common[0]}..{common[-1]})"
    else:
        it_a, it_b = _pick(a, run_a, iteration), _pick(b, run_b, iteration)
        common = None
        header = f"iteration A {it_a}, B {it_b}"
    order = BUCKET_ORDER
    present = {bk for s in (a, b) for per_it in s.values() for bk in per_it}
    buckets = [bk for bk in order if bk in present] + sorted(present - set(order))
    rows = []
    for bucket in buckets:
        row: Dict[str, object] = {"bucket": bucket}
        if common is None:
            for side, series, it in (("a", a, it_a), ("b", b, it_b)):
                stats = series[it].get(bucket, {})
                for stat in STATS:
                    row[f"{stat}_{side}"] = stats.get(stat)
            row["ratio"] = _ratio(row["var_a"], row["var_b"])
        else:
            for side, series in (("a", a), ("b", b)):
                for stat in STATS:
                    values = [series[it].get(bucket, {}).get(stat) for it in common]
                    values = [v for v in values if v is not None]
                    row[f"{stat}_{side}"] = sum(values) / len(values) if values else None
            ratios = [
                _ratio(a[it].get(bucket, {}).get("var"), b[it].get(bucket, {}).get("var"))
                for it in common
            ]
            ratios = [r for r in ratios if r is not None]
            row["ratio"] = sum(ratios) / len(ratios) if ratios else None
        rows.append(row)
    return header, rows


def _fmt(value: Optional[float], count: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.0f}" if count else f"{value:.4g}"


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    columns = [
        ("bucket", lambda r: str(r["bucket"])),
        ("var A", lambda r: _fmt(r["var_a"])),
        ("var B", lambda r: _fmt(r["var_b"])),
        ("var A/B", lambda r: _fmt(r["ratio"])),
        ("mean|g| A", lambda r: _fmt(r["mean_abs_a"])),
        ("mean|g| B", lambda r: _fmt(r["mean_abs_b"])),
        ("n A", lambda r: _fmt(r["count_a"], count=True)),
        ("n B", lambda r: _fmt(r["count_b"], count=True)),
    ]
    cells = [[name for name, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(padded))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# over a sweep: seed pairs


def _cv2(var: Optional[float], mean_abs: Optional[float]) -> Optional[float]:
    """Squared coefficient of variation var / mean^2: the variance with the gradient's scale
    divided out (a bin cross-entropy and smooth-L1 give gradients of different magnitude)."""
    if var is None or mean_abs is None or mean_abs <= 0:
        return None
    return var / mean_abs ** 2


def _parse_override(text: str, flag: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise GradVarError(f"{flag} {text!r}: expected KEY=VALUE, e.g. ugs=off")
    return key.lstrip("+"), value


def pair_sweep(sweep_dir: str, baseline: str, against: str) -> List[Tuple[str, str, str]]:
    """(label, baseline run dir, compared run dir) for every pair of complete jobs of
    ``sweep_dir`` that differ only in the key of ``baseline``/``against`` (KEY=VALUE each), e.g.
    one pair per seed. The label is the pair's other overrides (``seed=0``)."""
    from ugs_d2.cli.results import CollectError, find_jobs, group_key

    key_a, value_a = _parse_override(baseline, "--baseline")
    key_b, value_b = _parse_override(against, "--against")
    if key_a != key_b:
        raise GradVarError(f"--baseline {baseline} and --against {against} must set the same key")
    if not os.path.isdir(sweep_dir):
        raise GradVarError(f"{sweep_dir}: no such sweep directory")
    try:
        jobs = [j for j in find_jobs(sweep_dir) if j.status == "complete"]
    except CollectError as e:
        raise GradVarError(str(e)) from None
    sides: Dict[str, Dict[Tuple[Tuple[str, str], ...], str]] = {value_a: {}, value_b: {}}
    for job in jobs:  # pair key: the collector's experiment key without KEY, plus the seed
        pairs = dict(group_key(job.overrides, job.ignored))
        value = pairs.pop(key_a, None)
        if value not in sides:
            continue
        if job.seed is not None:
            pairs["seed"] = job.seed
        rest = tuple(sorted(pairs.items()))
        sides[value][rest] = job.path
    common = sorted(set(sides[value_a]) & set(sides[value_b]))
    if not common:
        raise GradVarError(
            f"{sweep_dir}: no complete {baseline} and {against} runs with otherwise equal overrides"
        )
    return [
        (",".join(f"{k}={v}" for k, v in rest) or "-", sides[value_a][rest], sides[value_b][rest])
        for rest in common
    ]


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, sample std or None below 2 values, n) of the finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, len(values)


def compare_sweep(
    pairs: Sequence[Tuple[str, str, str]], mean: bool = False
) -> Tuple[List[Dict[str, object]], Dict[str, List[Dict[str, object]]]]:
    """Per bucket, over the pairs: mean, std and n of var(A)/var(B) (``ratio``), of the
    scale-free cv2(A)/cv2(B) (``cv2_ratio``) and of mean|g| A / B (``mag_ratio``); plus each
    pair's :func:`compare` rows (label -> rows)."""
    per_pair: Dict[str, List[Dict[str, object]]] = {}
    for label, run_a, run_b in pairs:
        _, rows = compare(load_gradvar(run_a), load_gradvar(run_b), run_a, run_b, mean=mean)
        for row in rows:
            row["cv2_a"] = _cv2(row["var_a"], row["mean_abs_a"])
            row["cv2_b"] = _cv2(row["var_b"], row["mean_abs_b"])
            row["cv2_ratio"] = _ratio(row["cv2_a"], row["cv2_b"])
            row["mag_ratio"] = _ratio(row["mean_abs_a"], row["mean_abs_b"])
        per_pair[label] = rows
    buckets: List[str] = []
    for rows in per_pair.values():
        buckets.extend(str(r["bucket"]) for r in rows if r["bucket"] not in buckets)
    summary = []
    for bucket in buckets:
        rows = [r for rs in per_pair.values() for r in rs if r["bucket"] == bucket]
        out: Dict[str, object] = {"bucket": bucket}
        for name in ("ratio", "cv2_ratio", "mag_ratio"):
            out[name] = mean_std([r[name] for r in rows])
        out["count_a"] = mean_std([r["count_a"] for r in rows])[0]
        out["count_b"] = mean_std([r["count_b"] for r in rows])[0]
        summary.append(out)
    return summary, per_pair


def format_mean_std(stat: Tuple[Optional[float], Optional[float], int]) -> str:
    mean, std, n = stat
    if mean is None:
        return "-"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} +- {std:.2g}"


def format_sweep_markdown(
    sweep_dir: str, baseline: str, against: str, pairs: Sequence[Tuple[str, str, str]],
    last: Tuple[List[Dict[str, object]], Dict[str, List[Dict[str, object]]]],
    averaged: Tuple[List[Dict[str, object]], Dict[str, List[Dict[str, object]]]],
    command: str,
) -> str:
    lines = [
        f"# Localization-gradient variance per GT size: A = `{baseline}` vs B = `{against}`",
        "",
        f"Regenerate: `{command}`",
        "",
        f"Sweep `{sweep_dir}`, {len(pairs)} pair(s) of complete runs: "
        + ", ".join(f"`{label}`" for label, _, _ in pairs) + ".",
        "Statistic (ugs_d2/engine/gradvar.py): per foreground ROI sample, |d loss_box_reg / d box "
        "feature|, bucketed by the GT's sqrt(area) at input scale; `var` is its variance over a "
        "window of iterations. `var A/B` is the paper's ratio (Sec. 4.6: 2.9 for objects under 32 px). "
        "`cv2 A/B` divides each side's variance by its squared mean magnitude first (scale-free), "
        "`mean|g| A/B` is the ratio of the magnitudes. Cells: mean +- sample std over the pairs.",
        "",
    ]
    header = r"| bucket | var A/B | cv2 A/B | mean\|g\| A/B | samples A | samples B |"
    for title, (summary, _) in (
        ("Last window of each run", last), ("Averaged over every logged window", averaged)
    ):
        lines += [f"## {title}", "", header, "|---|---:|---:|---:|---:|---:|"]
        for row in summary:
            lines.append(
                f"| {row['bucket']} | {format_mean_std(row['ratio'])} | "
                f"{format_mean_std(row['cv2_ratio'])} | {format_mean_std(row['mag_ratio'])} | "
                f"{_fmt(row['count_a'], count=True)} | "
                f"{_fmt(row['count_b'], count=True)} |"
            )
        lines.append("")
    lines += ["## Each pair, last window", ""]
    for label, rows in last[1].items():
        lines += [f"`{label}`", "", "```", format_table(rows), "```", ""]
    return "\n".join(lines)


def _sweep_main(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from ugs_d2.fileio import write_text_atomic

    pairs = pair_sweep(args.sweep, args.baseline, args.against)
    last = compare_sweep(pairs, mean=False)
    averaged = compare_sweep(pairs, mean=True)
    command = " ".join([PROG] + [shlex.quote(a) for a in argv])
    text = format_sweep_markdown(
        args.sweep, args.baseline, args.against, pairs, last, averaged, command
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text_atomic(args.out, text)
        print(f"[{PROG}] wrote {args.out}")
    print(text)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare two runs' localization-gradient variance per GT size "
        "(paper Sec. 4.6). Train both with gradvar.enabled=true.",
    )
    parser.add_argument("run_a", metavar="RUN_A", nargs="?", help="run directory, the ratio's numerator")
    parser.add_argument("run_b", metavar="RUN_B", nargs="?", help="run directory, the denominator")
    sweep = parser.add_argument_group("over a sweep (instead of RUN_A RUN_B)")
    sweep.add_argument("--sweep", metavar="SWEEP_DIR", help="a multirun directory (ugs-results reads the same)")
    sweep.add_argument("--baseline", default="ugs=off", help="KEY=VALUE of the numerator runs (default ugs=off)")
    sweep.add_argument("--against", default="ugs=full", help="KEY=VALUE of the denominator runs (default ugs=full)")
    sweep.add_argument("--out", help="also write the markdown report here (atomically)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--iteration", type=int, help="the window ending at this logged iteration")
    when.add_argument("--last", action="store_true", help="each run's last window (default)")
    when.add_argument("--mean", action="store_true", help="mean over iterations both logged")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.sweep is not None:
        if args.run_a or args.run_b or args.iteration is not None or args.mean or args.last:
            parser.error("--sweep takes no RUN_A/RUN_B, --iteration, --last or --mean (it reports both)")
        try:
            _sweep_main(args, argv)
        except GradVarError as e:
            raise SystemExit(f"{PROG}: {e}") from None
        return
    if not (args.run_a and args.run_b):
        parser.error("give RUN_A and RUN_B, or --sweep SWEEP_DIR")
    try:
        a, b = load_gradvar(args.run_a), load_gradvar(args.run_b)
        header, rows = compare(
            a, b, args.run_a, args.run_b, iteration=args.iteration, mean=args.mean
        )
    except GradVarError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    print(f"A = {args.run_a}")
    print(f"B = {args.run_b}")
    print(
        "ROI localization-loss gradient |d loss_box_reg / d box feature| per foreground sample, "
        f"by GT sqrt(area) at input scale; {header}"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
