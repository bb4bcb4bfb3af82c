"""``ugs-gradvar RUN_A RUN_B``: compare two runs' localization-gradient variance per GT size.

Both runs must have been trained with ``gradvar.enabled=true`` (see :mod:`ugs_d2.engine.gradvar`
for what is measured). Two probes are reported, each where the runs logged it
(``gradvar.probe``, default ``both``):

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
``KL`` or ``UGS bins`` (+ UM, + UR). Examples::

    ugs-train ugs=off gradvar.enabled=true && ugs-train ugs=full gradvar.enabled=true
    ugs-gradvar outputs/default/gradvar.enabled=true,ugs=off \
                outputs/default/gradvar.enabled=true,ugs=full
    ugs-gradvar RUN_A RUN_B --iteration 999     # the windows ending at iteration 999
    ugs-gradvar RUN_A RUN_B --mean              # mean ratio over the iterations both runs logged

Over a sweep (seeds): pair the runs that differ only in one override and report each bucket's
ratios as mean +- std over the pairs, for the last window and averaged over the run::

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
    "GradVarError", "load_gradvar", "load_faithful", "compare", "compare_faithful",
    "format_table", "format_faithful_table", "pair_sweep", "compare_sweep",
    "compare_sweep_faithful", "describe_loss", "describe_d2_config", "sweep_losses",
    "format_sweep_markdown", "mean_std", "format_mean_std", "main",
]

PROG = "ugs-gradvar"
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


def _format_columns(rows: Sequence[Dict[str, object]], columns) -> str:
    cells = [[name for name, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(padded))
    return "\n".join(lines)


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """The across-objects comparison (:func:`compare` rows) as an aligned text table."""
    return _format_columns(rows, [
        ("bucket", lambda r: str(r["bucket"])),
        ("var A", lambda r: _fmt(r["var_a"])),
        ("var B", lambda r: _fmt(r["var_b"])),
        ("var A/B", lambda r: _fmt(r["ratio"])),
        ("mean|g| A", lambda r: _fmt(r["mean_abs_a"])),
        ("mean|g| B", lambda r: _fmt(r["mean_abs_b"])),
        ("n A", lambda r: _fmt(r["count_a"], count=True)),
        ("n B", lambda r: _fmt(r["count_b"], count=True)),
    ])


def format_faithful_table(rows: Sequence[Dict[str, object]]) -> str:
    """The across-iterations comparison (:func:`compare_faithful` rows) as a text table."""
    return _format_columns(rows, [
        ("bucket", lambda r: str(r["bucket"])),
        ("cv2 A", lambda r: _fmt(r["cv2_a"])),
        ("cv2 B", lambda r: _fmt(r["cv2_b"])),
        ("cv2 A/B", lambda r: _fmt(r["cv2_ratio"])),
        ("var A", lambda r: _fmt(r["var_a"])),
        ("var B", lambda r: _fmt(r["var_b"])),
        ("var A/B", lambda r: _fmt(r["var_ratio"])),
        ("mean A", lambda r: _fmt(r["mean_a"])),
        ("mean B", lambda r: _fmt(r["mean_b"])),
        ("objects A", lambda r: _fmt(r["count_a"], count=True)),
        ("objects B", lambda r: _fmt(r["count_b"], count=True)),
    ])


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


def compare_sweep_faithful(
    pairs: Sequence[Tuple[str, str, str]], mean: bool = False
) -> Tuple[List[Dict[str, object]], Dict[str, List[Dict[str, object]]]]:
    """:func:`compare_sweep` for the across-iterations probe: per bucket, mean, std and n over
    the pairs of ``cv2_ratio``, ``var_ratio`` and ``mean_ratio``, and the mean object counts."""
    per_pair: Dict[str, List[Dict[str, object]]] = {}
    for label, run_a, run_b in pairs:
        _, rows = compare_faithful(load_faithful(run_a), load_faithful(run_b), run_a, run_b, mean=mean)
        per_pair[label] = rows
    buckets: List[str] = []
    for rows in per_pair.values():
        buckets.extend(str(r["bucket"]) for r in rows if r["bucket"] not in buckets)
    summary = []
    for bucket in buckets:
        rows = [r for rs in per_pair.values() for r in rs if r["bucket"] == bucket]
        out: Dict[str, object] = {"bucket": bucket}
        for name in FAITHFUL_RATIOS:
            out[name] = mean_std([r[name] for r in rows])
        out["count_a"] = mean_std([r["count_a"] for r in rows])[0]
        out["count_b"] = mean_std([r["count_b"] for r in rows])[0]
        summary.append(out)
    return summary, per_pair


def sweep_losses(pairs: Sequence[Tuple[str, str, str]]) -> Tuple[str, str]:
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


Comparison = Tuple[List[Dict[str, object]], Dict[str, List[Dict[str, object]]]]


def format_sweep_markdown(
    sweep_dir: str, baseline: str, against: str, pairs: Sequence[Tuple[str, str, str]],
    last: Optional[Comparison], averaged: Optional[Comparison], command: str,
    faithful: Optional[Tuple[Comparison, Comparison]] = None,
    losses: Optional[Tuple[str, str]] = None,
) -> str:
    """The sweep report: the across-iterations probe's tables (``faithful``: last window,
    averaged), then the across-objects probe's (``last``, ``averaged``); a probe that is None
    was not logged by the runs. ``losses``: the two sides' localization losses."""
    loss_a, loss_b = losses if losses is not None else ("unknown", "unknown")
    lines = [
        f"# Localization-gradient variance per GT size: A = `{baseline}` vs B = `{against}`",
        "",
        f"Regenerate: `{command}`",
        "",
        f"Sweep `{sweep_dir}`, {len(pairs)} pair(s) of complete runs: "
        + ", ".join(f"`{label}`" for label, _, _ in pairs) + ".",
        "",
        f"Every ratio is A / B = baseline / compared, with A = `{baseline}`: **{loss_a}**, and "
        f"B = `{against}`: **{loss_b}** (from each run's detectron2_config.yaml; detectron2's "
        "default SMOOTH_L1_BETA 0 makes its smooth-L1 an L1 loss). Cells: mean +- sample std "
        "over the pairs.",
        "",
    ]
    if faithful is not None:
        lines += [
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
        for title, (summary, _) in zip(
            ("Last window of each run", "Averaged over every logged window"), faithful
        ):
            lines += [f"### {title}", "", header, "|---|---:|---:|---:|---:|---:|"]
            for row in summary:
                lines.append(
                    f"| {row['bucket']} | {format_mean_std(row['cv2_ratio'])} | "
                    f"{format_mean_std(row['var_ratio'])} | {format_mean_std(row['mean_ratio'])} | "
                    f"{_fmt(row['count_a'], count=True)} | {_fmt(row['count_b'], count=True)} |"
                )
            lines.append("")
        lines += ["### Each pair, last window", ""]
        for label, rows in faithful[0][1].items():
            lines += [f"`{label}`", "", "```", format_faithful_table(rows), "```", ""]
    if last is not None and averaged is not None:
        lines += [
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
        for title, (summary, _) in (
            ("Last window of each run", last), ("Averaged over every logged window", averaged)
        ):
            lines += [f"### {title}", "", header, "|---|---:|---:|---:|---:|---:|"]
            for row in summary:
                lines.append(
                    f"| {row['bucket']} | {format_mean_std(row['ratio'])} | "
                    f"{format_mean_std(row['cv2_ratio'])} | {format_mean_std(row['mag_ratio'])} | "
                    f"{_fmt(row['count_a'], count=True)} | "
                    f"{_fmt(row['count_b'], count=True)} |"
                )
            lines.append("")
        lines += ["### Each pair, last window", ""]
        for label, rows in last[1].items():
            lines += [f"`{label}`", "", "```", format_table(rows), "```", ""]
    return "\n".join(lines)


def _either(fn, *args):
    """``fn(*args)``, or None when a run lacks that probe's statistics."""
    try:
        return fn(*args)
    except GradVarError as e:
        if "no gradvar" not in str(e):
            raise
        return None


def _sweep_main(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from ugs_d2.fileio import write_text_atomic

    pairs = pair_sweep(args.sweep, args.baseline, args.against)
    last = _either(compare_sweep, pairs, False)
    averaged = _either(compare_sweep, pairs, True) if last is not None else None
    faithful_last = _either(compare_sweep_faithful, pairs, False)
    faithful = None
    if faithful_last is not None:
        faithful = (faithful_last, compare_sweep_faithful(pairs, True))
    if last is None and faithful is None:
        raise GradVarError(
            f"{args.sweep}: the {args.baseline} and {args.against} runs have no gradvar "
            "statistics; train them with gradvar.enabled=true"
        )
    command = " ".join([PROG] + [shlex.quote(a) for a in argv])
    text = format_sweep_markdown(
        args.sweep, args.baseline, args.against, pairs, last, averaged, command,
        faithful=faithful, losses=sweep_losses(pairs),
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text_atomic(args.out, text)
        print(f"[{PROG}] wrote {args.out}")
    print(text)


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


def _main(argv: Optional[List[str]] = None) -> None:
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
        for run in (args.run_a, args.run_b):
            _read_series(run, PREFIX, STATS)  # one line for a missing directory or metrics.json
        tables = []
        faithful = [_either(load_faithful, r) for r in (args.run_a, args.run_b)]
        objects = [_either(load_gradvar, r) for r in (args.run_a, args.run_b)]
        if all(s is not None for s in faithful):
            header, rows = compare_faithful(
                *faithful, args.run_a, args.run_b, iteration=args.iteration, mean=args.mean
            )
            tables.append((
                f"{PROBE_TITLES['across_iterations']}; cv2 = Var_t/mean_t^2 (scale-free), "
                f"var = Var_t (raw), each averaged over objects; {header}",
                format_faithful_table(rows),
            ))
        if all(s is not None for s in objects):
            header, rows = compare(
                *objects, args.run_a, args.run_b, iteration=args.iteration, mean=args.mean
            )
            tables.append((
                "Across objects: ROI localization-loss gradient |d loss_box_reg / d box feature| "
                f"per foreground sample, by GT sqrt(area) at input scale; {header}",
                format_table(rows),
            ))
        missing = [r for r, f, o in zip((args.run_a, args.run_b), faithful, objects)
                   if f is None and o is None]
        if missing:
            raise GradVarError(
                f"{missing[0]}: metrics.json has no gradvar statistics; "
                "train it with gradvar.enabled=true"
            )
        if not tables:
            raise GradVarError(
                f"{args.run_a} and {args.run_b} logged no probe in common (gradvar.probe differs)"
            )
    except GradVarError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    print(f"A = {args.run_a}: {describe_loss(args.run_a)}")
    print(f"B = {args.run_b}: {describe_loss(args.run_b)}")
    for title, table in tables:
        print(title)
        print(table)

if __name__ == "__main__":
    main()
