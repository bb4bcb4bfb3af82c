"""The files a finished run leaves behind: ``results.json`` and the ``done`` marker.

Downstream tools (the sweep collector, ``make run``'s summary) read only these, so they are
written atomically: a crash never leaves a half-written file that looks complete.
"""
import json
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from ugs_d2.fileio import write_json_atomic

__all__ = [
    "COCO_KEYS",
    "DONE_MARKER",
    "RESULTS_FILE",
    "summarize_bbox",
    "write_json_atomic",
    "write_results",
    "read_results",
    "is_done",
    "format_metrics",
]

RESULTS_FILE = "results.json"
DONE_MARKER = "done"
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _finite_or_none(value: Any) -> Optional[float]:
    """JSON has no NaN: a metric with no objects to measure (e.g. APl on tiny data) is null."""
    value = float(value)
    return value if math.isfinite(value) else None


def summarize_bbox(
    eval_results: Mapping[str, Mapping[str, float]], class_names: Sequence[str]
) -> Dict[str, Any]:
    """Flatten detectron2's ``{"bbox": {"AP": .., "AP-cls": ..}}`` into the results schema.

    Returns:
        ``{"AP": .., "AP50": .., ..., "APl": .., "per_class_AP": {class: AP}}`` (percent;
        None where the metric is undefined, e.g. every class when the model predicted nothing,
        or a COCO key the evaluator does not report, e.g. APs from Pascal VOC's evaluator),
        plus any extra bucket keys (``APvt``, ...) and ``metric_order``: the metric keys in
        the evaluator's order (results.json sorts its keys; tables and logs use this order).
    """
    bbox = eval_results["bbox"]
    summary: Dict[str, Any] = {key: _finite_or_none(bbox.get(key, math.nan)) for key in COCO_KEYS}
    summary["per_class_AP"] = {
        name: _finite_or_none(bbox.get(f"AP-{name}", math.nan)) for name in class_names
    }
    # any extra buckets an evaluator adds (e.g. tiny-object areas) are kept as they are
    for key, value in bbox.items():
        if key not in summary and not key.startswith("AP-"):
            summary[key] = _finite_or_none(value)
    metrics = [k for k in bbox if not k.startswith("AP-")]
    summary["metric_order"] = metrics + [k for k in COCO_KEYS if k not in metrics]
    return summary


def write_results(output_dir: str, metrics: Mapping[str, Any], **info: Any) -> str:
    """Write ``results.json`` (metrics plus run info) and then the ``done`` marker."""
    path = os.path.join(output_dir, RESULTS_FILE)
    write_json_atomic(path, {**metrics, **info}, indent=2, sort_keys=True, allow_nan=False)
    with open(os.path.join(output_dir, DONE_MARKER), "w") as f:
        f.write("done\n")
    return path


def is_done(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, DONE_MARKER)) and os.path.isfile(
        os.path.join(output_dir, RESULTS_FILE)
    )


def read_results(output_dir: str) -> Dict[str, Any]:
    with open(os.path.join(output_dir, RESULTS_FILE)) as f:
        return json.load(f)


def format_metrics(results: Mapping[str, Any]) -> str:
    """One line of the COCO metrics, e.g. ``AP 31.2 | AP50 55.0 | ... | APl n/a``, followed by
    the extra area buckets of ``metric_order`` when the run has them (``... | APvt 3.1 | ...``)."""
    extra = [k for k in results.get("metric_order") or () if k not in COCO_KEYS and k in results]
    cells = []
    for key in list(COCO_KEYS) + extra:
        value = results.get(key)
        cells.append(f"{key} {value:.1f}" if value is not None else f"{key} n/a")
    return " | ".join(cells)
