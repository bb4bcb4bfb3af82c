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
"""
import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from ugs_d2.evaluation.metrics import metrics_path, read_metrics

__all__ = ["GradVarError", "load_gradvar", "compare", "format_table", "main"]

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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare two runs' localization-gradient variance per GT size "
        "(paper Sec. 4.6). Train both with gradvar.enabled=true.",
    )
    parser.add_argument("run_a", metavar="RUN_A", help="run directory, the ratio's numerator")
    parser.add_argument("run_b", metavar="RUN_B", help="run directory, the denominator")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--iteration", type=int, help="the window ending at this logged iteration")
    when.add_argument("--last", action="store_true", help="each run's last window (default)")
    when.add_argument("--mean", action="store_true", help="mean over iterations both logged")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
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
