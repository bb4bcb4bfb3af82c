"""What every benchmark shares: its one-line error, its progress lines, the machine description
of a report's header, ratios and quartiles of the tables, and ``run_and_report`` (time the run,
write the report atomically, print it)."""
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from ugs_d2.fileio import write_text_atomic

__all__ = [
    "PROG", "BenchError", "progress_log", "resolve_device", "run_lines", "machine_lines", "quartiles", "ratio",
    "run_and_report",
]

PROG = "ugs-bench"


class BenchError(ValueError):
    """A benchmark argument or configuration is unusable; the message is one line."""


def progress_log(quiet: bool, tag: str = PROG) -> Callable[[str], None]:
    """``log(message)``: ``[tag] message`` on stderr, flushed (the progress of a long run); nothing
    when ``quiet``."""
    if quiet:
        return lambda message: None
    return lambda message: print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def resolve_device(device: str) -> str:
    """``auto`` / ``cpu`` / ``cuda`` -> ``cpu`` or ``cuda`` (``ugs_d2.config.resolve_device``); a
    ``BenchError`` for an unknown one or for cuda without a GPU."""
    import torch

    from ugs_d2.config import ConfigError
    from ugs_d2.config import resolve_device as resolve

    try:
        device = resolve(device)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no GPU is visible")
    return device


def run_lines(command: str, started: str, wall_s: float, loads: Sequence[float]) -> List[str]:
    """A report header's ``- command`` and ``- date`` lines (wall time, load averages at start / end)."""
    return [
        f"- command: `{command}`",
        f"- date: {started} (wall time {wall_s:.0f} s); load average at start / end: "
        + " / ".join(f"{x:.2f}" for x in loads),
    ]


def machine_lines(device: str) -> List[str]:
    """The report header's machine lines: CPU (and usable cores), torch threads, versions, GPU."""
    import torch

    from ugs_d2.compat import describe_detectron2

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = [
        f"CPU: {cpu}; {os.cpu_count()} logical CPUs ({usable} usable), torch threads {torch.get_num_threads()}",
        f"python {platform.python_version()}, torch {torch.__version__}, {describe_detectron2()}",
    ]
    if device == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    return lines


def ratio(value: Optional[float], reference: Optional[float]) -> str:
    """``"1.23x"``, or ``"n/a"`` without a value or a non-zero reference."""
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:.2f}x"


def quartiles(values: List[float]):
    """(first, third) quartile, inclusive method; a single value is both."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def run_and_report(
    run: Callable[[], Dict],
    format_report: Callable[[Dict, str, str, float, List[float]], str],
    out: str,
    argv: Sequence[str],
    invoked_as: str,
    prog: str,
    log: Callable[[str], None],
) -> Dict:
    """Time ``run()`` (a ``BenchError`` exits with one line), then write ``out`` atomically from
    ``format_report(outcome, command, started, wall_s, load averages before/after)`` and print it.

    Returns the outcome plus ``report`` (the markdown).
    """
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    loads = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    start = time.perf_counter()
    try:
        outcome = run()
    except BenchError as e:
        raise SystemExit(f"{prog}: {e}") from None
    wall_s = time.perf_counter() - start
    if loads:
        loads.append(os.getloadavg()[0])
    command = " ".join([invoked_as, shlex.join(list(argv))]).strip()
    report = format_report(outcome, command, started, wall_s, loads)
    write_text_atomic(out, report)
    print(report)
    log(f"wrote {out} ({wall_s:.0f} s)")
    outcome["report"] = report
    return outcome
