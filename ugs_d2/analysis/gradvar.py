"""Two runs' localization-gradient variance per GT size, side by side (paper Sec. 4.6): the
tables ``ugs-gradvar`` prints and the sweep report it writes.

The runs must have been trained with ``gradvar.enabled=true`` (see :mod:`ugs_d2.engine.gradvar`
for what is measured). Two probes are compared, each where the runs logged it (``gradvar.probe``,
default ``both``):

* **across iterations** (the paper's Sec. 4.6 measure; ``gradvar_faithful/<bucket>/*``): per
  bucket, ``cv2`` = Var_t(m_o) / mean_t(m_o)^2 averaged over the probe batch's objects (the
  scale-free statistic) and ``var`` = Var_t(m_o) averaged over them (raw), and their ratios
  A / B. With A = the baseline, B = UGS, ``cv2 A/B`` for ``lt32`` is the paper's
  variance(Smooth-L1) / variance(UGS) = 2.9, read scale-free.
* **across objects** (``gradvar/<bucket>/*``): each run's variance of the per-sample ROI
  gradient magnitude over its window, and var(A) / var(B).

Each run's localization loss is named from its ``detectron2_config.yaml`` (or its
``.hydra/config.yaml``), so that a ratio says which baseline it is against: ``L1`` (detectron2's
smooth-L1 with its default ``SMOOTH_L1_BETA`` 0, which is L1), ``Smooth-L1 (beta 1)``, ``GIoU``,
``KL`` or ``UGS bins`` (+ UM, + UR).

Over a sweep (:func:`report_sweep`), the runs that differ only in one override are paired (one
pair per seed) and each bucket's ratios are reported as mean +- std over the pairs
(:func:`ugs_d2.analysis.results.mean_std`), for the last window and averaged over the run.
"""
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ugs_d2.analysis.results import CollectError, find_jobs, group_key, mean_std
from ugs_d2.evaluation.metrics import metrics_path, read_metrics

__all__ = [
    "GradVarError", "load_gradvar", "load_faithful", "compare", "compare_faithful",
    "compare_runs", "format_table", "format_faithful_table", "pair_sweep", "compare_sweep",
    "compare_sweep_faithful", "describe_loss", "describe_d2_config", "sweep_losses",
    "SweepReportSpec", "format_sweep_markdown", "format_mean_std", "report_sweep",
]

PREFIX = "gradvar/"
STATS = ("var", "mean_abs", "count")
#: the across-iterations probe (ugs_d2.engine.gradvar.FAITHFUL_PREFIX + "/")
FAITHFUL_PREFIX = "gradvar_faithful/"
FAITHFUL_STATS = ("cv2", "var", "mean", "count")
#: the probes as ``gradvar.probe`` names them -> their title in the reports
PROBE_TITLES = {
    "across_iterations": (
        "Across iterations (paper Sec. 4.6): |dL_loc/dP_l| per object over a fixed probe batch"
    ),
    "across_objects": "Across objects: |d loss_box_reg / d box feature| per ROI sample",
}

#: iteration -> bucket -> stat -> value
Series = Dict[int, Dict[str, Dict[str, float]]]


class GradVarError(ValueError):
    """A run directory is missing or holds no gradvar statistics; the message says which."""


#: row order: ``ugs_d2.engine.gradvar.ALL_BUCKETS`` (not imported: it would load detectron2)
BUCKET_ORDER = ("tiny", "small", "medium", "large", "lt32")


def _read_series(run_dir: str, prefix: str, stats: Sequence[str]) -> Series:
    """The ``<prefix><bucket>/<stat>`` scalars of a run's ``metrics.json``, per iteration."""
    if not os.path.isdir(run_dir):
        raise GradVarError(f"{run_dir}: no such run directory")
    if not os.path.isfile(metrics_path(run_dir)):
        raise GradVarError(f"{run_dir}: no metrics.json (has this run trained yet?)")
    series: Series = {}
    for record in read_metrics(run_dir):
        for key, value in record.items():
            if not key.startswith(prefix) or not isinstance(value, (int, float)):
                continue
            bucket, _, stat = key[len(prefix):].rpartition("/")
            if bucket and stat in stats:
                per_bucket = series.setdefault(record["iteration"], {})
                per_bucket.setdefault(bucket, {})[stat] = float(value)
    return series


def load_gradvar(run_dir: str) -> Series:
    """The across-objects probe's ``gradvar/<bucket>/<stat>`` scalars, per iteration."""
    series = _read_series(run_dir, PREFIX, STATS)
    if not series:
        raise GradVarError(
            f"{run_dir}: metrics.json has no gradvar statistics; "
            "train it with gradvar.enabled=true"
        )
    return series


def load_faithful(run_dir: str) -> Series:
    """The across-iterations probe's ``gradvar_faithful/<bucket>/<stat>`` scalars, per
    iteration (the end of each window); raises GradVarError when the run has none."""
    series = _read_series(run_dir, FAITHFUL_PREFIX, FAITHFUL_STATS)
    if not series:
        raise GradVarError(
            f"{run_dir}: metrics.json has no gradvar_faithful statistics; train it with "
            "gradvar.enabled=true gradvar.probe=both (or across_iterations)"
        )
    return series


# --------------------------------------------------------------------------------------------
# which localization loss a run trained with (the baseline a ratio is against)


def _d2_node(config: Dict, *path: str):
    node = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _stage_loss(config: Dict, stage: str) -> Optional[str]:
    """The localization loss of one stage (RPN, ROI, RETINANET) of a detectron2 config dict."""
    ugs = _d2_node(config, "MODEL", "UGS", "RPN" if stage == "RETINANET" else stage) or {}
    if ugs.get("ENABLED"):
        return "UGS bins"
    if ugs.get("REG_LOSS") == "kl":
        return "KL"
    head = {"RPN": "RPN", "ROI": "ROI_BOX_HEAD", "RETINANET": "RETINANET"}[stage]
    node = _d2_node(config, "MODEL", head)
    if not isinstance(node, dict):
        return None
    kind = node.get("BBOX_REG_LOSS_TYPE", "smooth_l1")
    if kind == "giou":
        return "GIoU"
    if kind != "smooth_l1":
        return str(kind)
    beta = node.get("SMOOTH_L1_BETA", node.get("SMOOTH_L1_LOSS_BETA"))
    if beta is None:
        return "smooth_l1 (beta unrecorded)"
    beta = float(beta)
    return "L1 (SMOOTH_L1_BETA 0)" if beta == 0 else f"Smooth-L1 (beta {beta:g})"


def describe_d2_config(config: Dict) -> str:
    """One phrase naming a detectron2 config's localization loss, e.g. ``L1 (SMOOTH_L1_BETA 0)
    in RPN and ROI head``, ``Smooth-L1 (beta 1)``, ``UGS bins + UM + UR``."""
    arch = str(_d2_node(config, "MODEL", "META_ARCHITECTURE") or "")
    stages = ("RETINANET",) if "RetinaNet" in arch else ("FCOS",) if "FCOS" in arch else ("RPN", "ROI")
    if stages == ("FCOS",):
        bins = bool(_d2_node(config, "MODEL", "UGS", "RPN", "ENABLED"))
        losses = {"FCOS": "UGS bins" if bins else "FCOS's GIoU"}
    else:
        losses = {s: _stage_loss(config, s) for s in stages}
    names = {s: loss for s, loss in losses.items() if loss is not None}
    if not names:
        return "unknown"
    where = {"RPN": "RPN", "ROI": "ROI head", "RETINANET": "RetinaNet head", "FCOS": "FCOS head"}
    if len(set(names.values())) == 1:
        text = next(iter(names.values()))
        if len(names) > 1:
            text += " in " + " and ".join(where[s] for s in names)
    else:
        text = "; ".join(f"{where[s]}: {loss}" for s, loss in names.items())
    if any(loss == "UGS bins" for loss in names.values()):
        for key, label in (("UM_WEIGHT", "UM"), ("UR_WEIGHT", "UR")):
            weight = _d2_node(config, "MODEL", "UGS", key)
            if isinstance(weight, (int, float)) and weight > 0:
                text += f" + {label}"
    return text


def describe_loss(run_dir: str) -> str:
    """The localization loss a run trained with (:func:`describe_d2_config`), from its
    ``detectron2_config.yaml``; else ``.hydra/config.yaml``'s ``ugs:`` block (no beta there
    means detectron2's default beta 0, i.e. L1, unless the block sets one); else ``unknown``."""
    import yaml

    path = os.path.join(run_dir, "detectron2_config.yaml")
    if os.path.isfile(path):
        with open(path) as f:
            return describe_d2_config(yaml.safe_load(f) or {})
    path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.isfile(path):
        return "unknown"
    with open(path) as f:
        ugs = (yaml.safe_load(f) or {}).get("ugs") or {}

    def beta(node: Dict) -> Optional[float]:
        found = [v for k, v in node.items() if "beta" in str(k) and isinstance(v, (int, float))]
        return float(found[0]) if found else None

    config: Dict = {"MODEL": {"UGS": {}, "RPN": {}, "ROI_BOX_HEAD": {}}}
    for stage, head in (("rpn", "RPN"), ("roi", "ROI_BOX_HEAD")):
        node = ugs.get(stage) or {}
        config["MODEL"]["UGS"][stage.upper()] = {
            "ENABLED": node.get("enabled"), "REG_LOSS": node.get("reg_loss"),
        }
        b = beta(node) if beta(node) is not None else beta(ugs)
        config["MODEL"][head] = {
            "BBOX_REG_LOSS_TYPE": "giou" if node.get("reg_loss") == "giou" else "smooth_l1",
            "SMOOTH_L1_BETA": 0.0 if b is None else b,
        }
    config["MODEL"]["UGS"]["UM_WEIGHT"] = ugs.get("um_weight", 0)
    config["MODEL"]["UGS"]["UR_WEIGHT"] = ugs.get("ur_weight", 0)
    return describe_d2_config(config)


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
    stats: Sequence[str] = STATS, ratios: Optional[Dict[str, str]] = None,
) -> Tuple[str, List[Dict[str, object]]]:
    """Rows (one per bucket present in either run) of the comparison, and a header line.

    Default: each run's last logged window (or the one ending at ``iteration``). ``mean``: over
    the iterations both runs logged, the mean of each statistic and the mean of the per-iteration
    ratios. ``stats``: the statistics read (row keys ``<stat>_a``, ``<stat>_b``); ``ratios``:
    row key -> the statistic whose A / B it holds (default ``{"ratio": "var"}``).
    """
    ratios = {"ratio": "var"} if ratios is None else ratios
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
                values = series[it].get(bucket, {})
                for stat in stats:
                    row[f"{stat}_{side}"] = values.get(stat)
            for name, stat in ratios.items():
                row[name] = _ratio(row[f"{stat}_a"], row[f"{stat}_b"])
        else:
            for side, series in (("a", a), ("b", b)):
                for stat in stats:
                    values = [series[it].get(bucket, {}).get(stat) for it in common]
                    values = [v for v in values if v is not None]
                    row[f"{stat}_{side}"] = sum(values) / len(values) if values else None
            for name, stat in ratios.items():
                per_it = [
                    _ratio(a[it].get(bucket, {}).get(stat), b[it].get(bucket, {}).get(stat))
                    for it in common
                ]
                per_it = [r for r in per_it if r is not None]
                row[name] = sum(per_it) / len(per_it) if per_it else None
        rows.append(row)
    return header, rows


#: the across-iterations probe's ratios: row key -> statistic
FAITHFUL_RATIOS = {"cv2_ratio": "cv2", "var_ratio": "var", "mean_ratio": "mean"}


def compare_faithful(
    a: Series, b: Series, run_a: str = "A", run_b: str = "B",
    iteration: Optional[int] = None, mean: bool = False,
) -> Tuple[str, List[Dict[str, object]]]:
    """:func:`compare` for the across-iterations probe: rows with ``cv2``, ``var``, ``mean``
    and ``count`` (objects) of each side and ``cv2_ratio``, ``var_ratio``, ``mean_ratio``."""
    return compare(a, b, run_a, run_b, iteration, mean, FAITHFUL_STATS, FAITHFUL_RATIOS)


def _fmt(value: Optional[float], count: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.0f}" if count else f"{value:.4g}"


#: a text table's columns after ``bucket``: (header, row key, whether the value is a count)
Columns = Sequence[Tuple[str, str, bool]]
OBJECT_COLUMNS: Columns = (
    ("var A", "var_a", False), ("var B", "var_b", False), ("var A/B", "ratio", False),
    ("mean|g| A", "mean_abs_a", False), ("mean|g| B", "mean_abs_b", False),
    ("n A", "count_a", True), ("n B", "count_b", True),
)
FAITHFUL_COLUMNS: Columns = (
    ("cv2 A", "cv2_a", False), ("cv2 B", "cv2_b", False), ("cv2 A/B", "cv2_ratio", False),
    ("var A", "var_a", False), ("var B", "var_b", False), ("var A/B", "var_ratio", False),
    ("mean A", "mean_a", False), ("mean B", "mean_b", False),
    ("objects A", "count_a", True), ("objects B", "count_b", True),
)


def _format_columns(rows: Sequence[Dict[str, object]], columns: Columns) -> str:
    """Rows as an aligned text table: the bucket left-aligned, the numbers right-aligned."""
    cells = [["bucket"] + [name for name, _, _ in columns]]
    cells += [[str(r["bucket"])] + [_fmt(r[key], count) for _, key, count in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(padded))
    return "\n".join(lines)


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """The across-objects comparison (:func:`compare` rows) as an aligned text table."""
    return _format_columns(rows, OBJECT_COLUMNS)


def format_faithful_table(rows: Sequence[Dict[str, object]]) -> str:
    """The across-iterations comparison (:func:`compare_faithful` rows) as a text table."""
    return _format_columns(rows, FAITHFUL_COLUMNS)


def _either(fn: Callable, *args):
    """``fn(*args)``, or None when a run lacks that probe's statistics."""
    try:
        return fn(*args)
    except GradVarError as e:
        if "no gradvar" not in str(e):
            raise
        return None


def compare_runs(
    run_a: str, run_b: str, iteration: Optional[int] = None, mean: bool = False
) -> List[Tuple[str, str]]:
    """(title, text table) for each probe both runs logged, across iterations first; raises
    GradVarError (one line) when a run is missing or the runs logged no probe in common."""
    for run in (run_a, run_b):
        _read_series(run, PREFIX, STATS)  # one line for a missing directory or metrics.json
    tables = []
    faithful = [_either(load_faithful, r) for r in (run_a, run_b)]
    objects = [_either(load_gradvar, r) for r in (run_a, run_b)]
    if all(s is not None for s in faithful):
        header, rows = compare_faithful(*faithful, run_a, run_b, iteration=iteration, mean=mean)
        tables.append((
            f"{PROBE_TITLES['across_iterations']}; cv2 = Var_t/mean_t^2 (scale-free), "
            f"var = Var_t (raw), each averaged over objects; {header}",
            format_faithful_table(rows),
        ))
    if all(s is not None for s in objects):
        header, rows = compare(*objects, run_a, run_b, iteration=iteration, mean=mean)
        tables.append((
            "Across objects: ROI localization-loss gradient |d loss_box_reg / d box feature| "
            f"per foreground sample, by GT sqrt(area) at input scale; {header}",
            format_table(rows),
        ))
    missing = [r for r, f, o in zip((run_a, run_b), faithful, objects) if f is None and o is None]
    if missing:
        raise GradVarError(
            f"{missing[0]}: metrics.json has no gradvar statistics; train it with gradvar.enabled=true"
        )
    if not tables:
        raise GradVarError(f"{run_a} and {run_b} logged no probe in common (gradvar.probe differs)")
    return tables


# --------------------------------------------------------------------------------------------
# over a sweep: seed pairs


#: (label, baseline run dir, compared run dir), one per pair of runs (:func:`pair_sweep`)
Pair = Tuple[str, str, str]
#: per bucket, the ratios' mean_std over the pairs; and each pair's rows (label -> rows)
Comparison = Tuple[List[Dict[str, object]], Dict[str, List[Dict[str, object]]]]


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


def pair_sweep(sweep_dir: str, baseline: str, against: str) -> List[Pair]:
    """(label, baseline run dir, compared run dir) for every pair of complete jobs of
    ``sweep_dir`` that differ only in the key of ``baseline``/``against`` (KEY=VALUE each), e.g.
    one pair per seed. The label is the pair's other overrides (``seed=0``)."""
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


def _over_pairs(per_pair: Dict[str, List[Dict[str, object]]], ratios: Sequence[str]) -> Comparison:
    """Per bucket (in the order the pairs name them): :func:`mean_std` over the pairs of each
    of ``ratios``, and the mean object counts ``count_a``, ``count_b``."""
    buckets: List[str] = []
    for rows in per_pair.values():
        buckets.extend(str(r["bucket"]) for r in rows if r["bucket"] not in buckets)
    summary = []
    for bucket in buckets:
        rows = [r for rs in per_pair.values() for r in rs if r["bucket"] == bucket]
        out: Dict[str, object] = {"bucket": bucket}
        for name in ratios:
            out[name] = mean_std([r[name] for r in rows])
        out["count_a"] = mean_std([r["count_a"] for r in rows])[0]
        out["count_b"] = mean_std([r["count_b"] for r in rows])[0]
        summary.append(out)
    return summary, per_pair


def compare_sweep(pairs: Sequence[Pair], mean: bool = False) -> Comparison:
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
    return _over_pairs(per_pair, ("ratio", "cv2_ratio", "mag_ratio"))


def compare_sweep_faithful(pairs: Sequence[Pair], mean: bool = False,
                           iteration: Optional[int] = None) -> Comparison:
    """:func:`compare_sweep` for the across-iterations probe: per bucket, mean, std and n over
    the pairs of ``cv2_ratio``, ``var_ratio`` and ``mean_ratio``, and the mean object counts.
    ``iteration``: the windows that end there instead of each run's last (see :func:`compare`)."""
    per_pair: Dict[str, List[Dict[str, object]]] = {}
    for label, run_a, run_b in pairs:
        _, rows = compare_faithful(load_faithful(run_a), load_faithful(run_b), run_a, run_b,
                                   iteration=iteration, mean=mean)
        per_pair[label] = rows
    return _over_pairs(per_pair, tuple(FAITHFUL_RATIOS))


def format_mean_std(stat: Tuple[Optional[float], Optional[float], int]) -> str:
    """A :func:`mean_std` triple as ``mean +- std`` (4 and 2 significant digits), ``-`` if empty."""
    mean, std, n = stat
    if mean is None:
        return "-"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} +- {std:.2g}"


def sweep_losses(pairs: Sequence[Pair]) -> Tuple[str, str]:
    """(baseline side, compared side): the localization losses of the pairs' runs
    (:func:`describe_loss`), distinct ones joined with `` / ``."""
    sides = []
    for index in (1, 2):
        names: List[str] = []
        for pair in pairs:
            name = describe_loss(pair[index])
            if name not in names:
                names.append(name)
        sides.append(" / ".join(names))
    return sides[0], sides[1]


# --------------------------------------------------------------------------------------------
# the sweep report (markdown)


@dataclass(frozen=True)
class SweepReportSpec:
    """What the sweep report is of: the sweep, its two sides (KEY=VALUE each), the command that
    regenerates it and the two sides' localization losses (:func:`sweep_losses`)."""

    sweep_dir: str
    baseline: str
    against: str
    command: str
    losses: Tuple[str, str] = ("unknown", "unknown")


WINDOW_TITLES = ("Last window of each run", "Averaged over every logged window")
SUMMARY_RULE = "|---|---:|---:|---:|---:|---:|"


def _intro_lines(spec: SweepReportSpec, pairs: Sequence[Pair]) -> List[str]:
    loss_a, loss_b = spec.losses
    return [
        f"# Localization-gradient variance per GT size: A = `{spec.baseline}` vs B = `{spec.against}`",
        "",
        f"Regenerate: `{spec.command}`",
        "",
        f"Sweep `{spec.sweep_dir}`, {len(pairs)} pair(s) of complete runs: "
        + ", ".join(f"`{label}`" for label, _, _ in pairs) + ".",
        "",
        f"Every ratio is A / B = baseline / compared, with A = `{spec.baseline}`: **{loss_a}**, and "
        f"B = `{spec.against}`: **{loss_b}** (from each run's detectron2_config.yaml; detectron2's "
        "default SMOOTH_L1_BETA 0 makes its smooth-L1 an L1 loss). Cells: mean +- sample std "
        "over the pairs.",
        "",
    ]


def _summary_lines(header: str, comparisons: Sequence[Comparison], ratios: Sequence[str]) -> List[str]:
    """One table per comparison (last window, averaged): a row per bucket with the ratios'
    mean +- std over the pairs and the mean object counts."""
    lines: List[str] = []
    for title, (summary, _) in zip(WINDOW_TITLES, comparisons):
        lines += [f"### {title}", "", header, SUMMARY_RULE]
        for row in summary:
            cells = [str(row["bucket"]), *(format_mean_std(row[name]) for name in ratios),
                     _fmt(row["count_a"], count=True), _fmt(row["count_b"], count=True)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _pair_lines(per_pair: Dict[str, List[Dict[str, object]]], table: Callable) -> List[str]:
    lines = ["### Each pair, last window", ""]
    for label, rows in per_pair.items():
        lines += [f"`{label}`", "", "```", table(rows), "```", ""]
    return lines


def _faithful_lines(faithful: Tuple[Comparison, Comparison]) -> List[str]:
    """The across-iterations probe's section."""
    lines = [
        f"## {PROBE_TITLES['across_iterations']}",
        "",
        "Statistic (ugs_d2/engine/gradvar.py, `gradvar_faithful/*`): a fixed probe batch, "
        "probed every `gradvar.probe_period` iterations; per GT object, m_o = mean of "
        "||dL_loc/dP_l|| over its box at its FPN level (L_loc: RPN + box localization losses "
        "and UM; no classification, no UR). Per window of `gradvar.window` iterations, "
        "`cv2` = Var_t(m_o)/mean_t(m_o)^2 averaged over objects (scale-free: the paper's "
        "Sec. 4.6 ratio is 2.9 for objects under 32 px), `var` = Var_t(m_o) averaged over "
        "objects (raw), `mean` = mean_t(m_o).",
        "",
    ]
    header = "| bucket | cv2 A/B | var A/B | mean A/B | objects A | objects B |"
    lines += _summary_lines(header, faithful, ("cv2_ratio", "var_ratio", "mean_ratio"))
    return lines + _pair_lines(faithful[0][1], format_faithful_table)


def _objects_lines(last: Comparison, averaged: Comparison) -> List[str]:
    """The across-objects probe's section."""
    lines = [
        f"## {PROBE_TITLES['across_objects']}",
        "",
        "Statistic (ugs_d2/engine/gradvar.py, `gradvar/*`): per foreground ROI sample, "
        "|d loss_box_reg / d box feature|, bucketed by the GT's sqrt(area) at input scale; "
        "`var` is its variance over a window of iterations, pooled over objects. `var A/B` "
        "is the raw ratio. `cv2 A/B` divides each side's variance by its squared mean "
        "magnitude first (scale-free), `mean|g| A/B` is the ratio of the magnitudes.",
        "",
    ]
    header = r"| bucket | var A/B | cv2 A/B | mean\|g\| A/B | samples A | samples B |"
    lines += _summary_lines(header, (last, averaged), ("ratio", "cv2_ratio", "mag_ratio"))
    return lines + _pair_lines(last[1], format_table)


def format_sweep_markdown(
    spec: SweepReportSpec, pairs: Sequence[Pair], last: Optional[Comparison],
    averaged: Optional[Comparison], faithful: Optional[Tuple[Comparison, Comparison]] = None,
) -> str:
    """The sweep report: the across-iterations probe's tables (``faithful``: last window,
    averaged), then the across-objects probe's (``last``, ``averaged``); a probe that is None
    was not logged by the runs."""
    lines = _intro_lines(spec, pairs)
    if faithful is not None:
        lines += _faithful_lines(faithful)
    if last is not None and averaged is not None:
        lines += _objects_lines(last, averaged)
    return "\n".join(lines)


def report_sweep(sweep_dir: str, baseline: str, against: str, command: str) -> str:
    """The markdown report of ``sweep_dir``: its ``baseline`` runs against its ``against`` runs
    (KEY=VALUE each) on every probe they logged; ``command`` regenerates it."""
    pairs = pair_sweep(sweep_dir, baseline, against)
    last = _either(compare_sweep, pairs, False)
    averaged = _either(compare_sweep, pairs, True) if last is not None else None
    faithful_last = _either(compare_sweep_faithful, pairs, False)
    faithful = None
    if faithful_last is not None:
        faithful = (faithful_last, compare_sweep_faithful(pairs, True))
    if last is None and faithful is None:
        raise GradVarError(
            f"{sweep_dir}: the {baseline} and {against} runs have no gradvar "
            "statistics; train them with gradvar.enabled=true"
        )
    spec = SweepReportSpec(sweep_dir, baseline, against, command, sweep_losses(pairs))
    return format_sweep_markdown(spec, pairs, last, averaged, faithful)
