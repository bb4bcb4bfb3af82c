"""Read detectron2's ``metrics.json`` with one record per iteration.

detectron2's ``JSONWriter`` appends one json line per written iteration. After a resume (a rerun
of the same command, a SLURM requeue) the iterations between the last checkpoint and the crash
are trained and written again, so the file holds some iterations twice; a ``kill -9`` can also
leave its last line half-written. :func:`read_metrics` is what everything downstream reads: per
iteration the record written last (the one from the run that continued), sorted by iteration.
"""
import json
import logging
import os
from typing import Any, Dict, List

__all__ = ["METRICS_FILE", "read_metrics", "metrics_path", "repair_truncated_tail"]

METRICS_FILE = "metrics.json"

logger = logging.getLogger(__name__)


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS_FILE)


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """The records of a ``metrics.json`` (a file, or a run directory holding one).

    Returns:
        one dict per iteration, sorted by ``iteration``: the last record written for it (a
        record written after a resume supersedes the one from before the crash). Lines that are
        not complete json objects with an integer ``iteration`` (a line cut by a crash) are
        skipped; a missing file gives ``[]``.
    """
    if os.path.isdir(path):
        path = metrics_path(path)
    if not os.path.isfile(path):
        return []
    by_iteration: Dict[int, Dict[str, Any]] = {}
    skipped = 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a truncated (or otherwise garbled) line
                skipped += 1
                continue
            iteration = record.get("iteration") if isinstance(record, dict) else None
            if not isinstance(iteration, int) or isinstance(iteration, bool):
                skipped += 1
                continue
            # a record for an iteration seen before replaces it (and moves to its sorted place)
            by_iteration[iteration] = record
    if skipped:
        logger.warning("%s: skipped %d incomplete line(s)", path, skipped)
    return [by_iteration[i] for i in sorted(by_iteration)]


def repair_truncated_tail(path: str) -> bool:
    """Cut a last line that a crash left without its newline (and so incomplete).

    Called before a resumed run appends to ``metrics.json``: otherwise its first record would be
    glued to the partial line and lost. Returns whether the file was changed.
    """
    if not os.path.isfile(path):
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # find the end of the last complete line
        block = 1 << 16
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        f.truncate(keep)
    logger.warning("%s: removed an incomplete last line (%d bytes) left by an interrupted run",
                   path, size - keep)
    return True
