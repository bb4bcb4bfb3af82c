"""Summarize the embedded benchmark: baseline vs full UGS per detector, Table 6 against its
baseline, and the issue's targets. Reads only the finished runs (as ``ugs-results`` does), so it
can run while the benchmark is still going; missing runs are counted, never guessed.

    python projects/embedded_benchmark/summarize.py                      # print
    python projects/embedded_benchmark/summarize.py --out results/embedded/summary
        # -> summary.md + summary.png (AP and APs, baseline vs UGS per detector, error bars: std)

Differences are paired by seed (UGS seed s minus baseline seed s), so seed-to-seed variation
shared by both runs cancels; "mean +- std" is over the pairs.
"""
import argparse
import os
import shlex
import sys
from typing import Dict, List, Optional, Tuple

from ugs_d2.analysis.gradvar import GradVarError, compare_sweep, format_mean_std, pair_sweep
from ugs_d2.analysis.results import CollectError, collect, mean_std
from ugs_d2.bench.embedded_report import find_group, fmt, pair_bars, paired, per_seed  # shared with v2
from ugs_d2.fileio import write_text_atomic

# detector -> (sweep name, overrides that select it in that sweep)
DETECTORS: List[Tuple[str, str, Dict[str, str]]] = [
    ("Faster R-CNN", "embedded_table6", {}),
    ("RetinaNet", "embedded_detectors", {"model": "retinanet_r18_fpn"}),
    ("FCOS", "embedded_detectors", {"model": "fcos_r18_fpn"}),
    ("Cascade R-CNN", "embedded_cascade", {}),
    ("GFL", "embedded_gfl", {}),
]
TABLE6 = "embedded_table6"
METRICS = ("AP", "AP50", "APs", "APm")
APS_GAIN_TARGET = 1.5   # issue 6: UGS full vs baseline on Faster R-CNN, APs points
GRADVAR_TARGET = 2.9    # paper Sec. 4.6: var(smooth-L1) / var(UGS), objects under 32 px


def _collect(multirun: str, sweep: str):
    try:
        return collect(os.path.join(multirun, sweep))
    except CollectError:
        return None


def summarize(multirun: str = "multirun") -> Dict[str, object]:
    """Everything the report shows, as numbers (None where runs are missing)."""
    groups_of = {}  # sweep -> its groups, each sweep read once
    for _, sweep, _ in DETECTORS:
        if sweep not in groups_of:
            collection = _collect(multirun, sweep)
            groups_of[sweep] = collection.groups if collection else []
    detectors = []
    for name, sweep, selected in DETECTORS:
        groups = groups_of[sweep]
        off = find_group(groups, ugs="off", **selected)
        full = find_group(groups, ugs="full", **selected)
        row: Dict[str, object] = {"detector": name, "sweep": sweep}
        for metric in METRICS:
            a, b = per_seed(off, metric), per_seed(full, metric)
            row[metric] = (mean_std(list(a.values())), mean_std(list(b.values())),
                           mean_std(paired(a, b)))
        ap_off, ap_full, _ = row["AP"]
        # "not worse beyond one std": mean(UGS) >= mean(baseline) - std(baseline)
        row["not_worse"] = (
            None if ap_off[1] is None or ap_full[0] is None
            else ap_full[0] >= ap_off[0] - ap_off[1]
        )
        detectors.append(row)

    table6 = []
    groups = groups_of[TABLE6]
    base = find_group(groups, ugs="off")
    for group in groups:
        ugs = dict(group.key).get("ugs")
        row = {"ugs": ugs}
        for metric in ("AP", "APs"):
            values = per_seed(group, metric)
            row[metric] = (mean_std(list(values.values())),
                           mean_std(paired(per_seed(base, metric), values)) if ugs != "off" else None)
        table6.append(row)

    gradvar = None
    try:
        pairs = pair_sweep(os.path.join(multirun, TABLE6), "ugs=off", "ugs=full")
        last, _ = compare_sweep(pairs)
        gradvar = {r["bucket"]: r for r in last}
        gradvar["_pairs"] = len(pairs)
    except GradVarError:
        pass
    return {"detectors": detectors, "table6": table6, "gradvar": gradvar}


def render(summary: Dict[str, object], command: str) -> str:
    lines = [
        "# Embedded benchmark: summary",
        "",
        f"Regenerate: `{command}` (after `projects/embedded_benchmark/run.sh`)",
        "",
        "Mean +- sample std over seeds 0-2 (`(n=k)`: only k runs finished). Δ = UGS minus baseline,",
        "paired by seed. Tables of every run: `embedded_table6.md`, `embedded_detectors.md`,",
        "`embedded_cascade.md`; gradient variance: `gradvar.md`.",
        "",
        "## Baseline (`ugs=off`) vs full UGS (`ugs=full`) per detector",
        "",
        "| detector | AP off | AP UGS | Δ AP | APs off | APs UGS | Δ APs | not worse (AP) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in summary["detectors"]:
        ap, aps = row["AP"], row["APs"]
        verdict = {None: "-", True: "yes", False: "**no**"}[row["not_worse"]]
        lines.append(
            f"| {row['detector']} | {fmt(ap[0])} | {fmt(ap[1])} | {fmt(ap[2], True)} | "
            f"{fmt(aps[0])} | {fmt(aps[1])} | {fmt(aps[2], True)} | {verdict} |"
        )
    lines += [
        "",
        "\"not worse\": mean AP(UGS) >= mean AP(baseline) - std AP(baseline).",
        "",
        "## Table 6 rows on Faster R-CNN",
        "",
        "| ugs | AP | Δ AP vs off | APs | Δ APs vs off |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in summary["table6"]:
        d_ap = fmt(row["AP"][1], True) if row["AP"][1] else ""
        d_aps = fmt(row["APs"][1], True) if row["APs"][1] else ""
        lines.append(f"| {row['ugs']} | {fmt(row['AP'][0])} | {d_ap} | {fmt(row['APs'][0])} | {d_aps} |")

    lines += ["", "## Targets (issue 6)", ""]
    faster = summary["detectors"][0]
    gain = faster["APs"][2]
    lines.append(
        f"- Faster R-CNN, UGS full vs baseline, APs gain >= {APS_GAIN_TARGET}: "
        + ("not measured" if gain[0] is None else
           f"{fmt(gain, True)} points -> **{'met' if gain[0] >= APS_GAIN_TARGET else 'missed'}**")
    )
    gradvar = summary["gradvar"]
    lt32 = gradvar.get("lt32") if gradvar else None
    if lt32 and lt32["ratio"][0] is not None:
        ratio = lt32["ratio"]
        lines.append(
            f"- Gradient-variance ratio var(smooth-L1)/var(UGS), objects < 32 px, last window, "
            f"{gradvar['_pairs']} seed pair(s): {format_mean_std(ratio)} (target >= {GRADVAR_TARGET}) "
            f"-> **{'met' if ratio[0] >= GRADVAR_TARGET else 'missed'}**; scale-free var/mean^2 ratio "
            f"{format_mean_std(lt32['cv2_ratio'])}"
        )
    else:
        lines.append("- Gradient-variance ratio: not measured (no finished off/full pair)")
    for row in summary["detectors"]:
        verdict = {None: "not measured", True: "met", False: "missed"}[row["not_worse"]]
        lines.append(f"- {row['detector']}: UGS not worse than baseline beyond one std (AP): **{verdict}**")
    return "\n".join(lines) + "\n"


def plot(summary: Dict[str, object], path: str) -> Optional[str]:
    """AP and APs, baseline vs UGS per detector (bars: mean, error bars: std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["detectors"]
    fig = pair_bars([r["detector"] for r in rows], {m: [r[m][:2] for r in rows] for m in ("AP", "APs")},
                    ("ugs=off", "ugs=full"))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multirun", default="multirun", help="where the embedded_* sweeps are")
    parser.add_argument("--out", help="write OUT.md and OUT.png (atomically) besides printing")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    summary = summarize(args.multirun)
    command = " ".join(["python projects/embedded_benchmark/summarize.py"] + [shlex.quote(a) for a in argv])
    text = render(summary, command)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text_atomic(args.out + ".md", text)
        plot(summary, args.out + ".png")
    print(text, end="")


if __name__ == "__main__":
    main()
