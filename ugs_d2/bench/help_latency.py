"""``ugs-bench help``: how long ``--help`` takes for every console script, against ``python -c pass``.

Each command runs as its console script would (``from MODULE import FUNC; FUNC()`` with
``sys.argv = [NAME, "--help"]``) in a fresh interpreter, ``--repeats`` times, interleaved
round robin with the baseline ``python -c pass`` so that load on a shared machine hits all of
them alike. Reported per command: the median and minimum wall time, the ratio of the medians
against the baseline of the same run, the exit code, whether the output holds a warning, and
whether torch was imported (one extra, untimed run that reports ``sys.modules``). Example::

    ugs-bench help                       # every command, 5 repeats -> results/help_latency.md
    ugs-bench help --repeats 10 --commands ugs-train,ugs-train-net
"""
import configparser
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ugs_d2.bench.common import run_lines

__all__ = ["console_scripts", "Probe", "probe", "time_help", "format_report"]

SETUP_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.cfg")
TORCH_MARK = "@@ugs-bench-help torch imported: "


def console_scripts(setup_cfg: str = SETUP_CFG) -> List[Tuple[str, str]]:
    """``[(name, "module:function"), ...]`` of the package's console scripts: from setup.cfg
    in a source tree, else from the installed distribution's entry points."""
    if os.path.isfile(setup_cfg):
        parser = configparser.ConfigParser()
        parser.read(setup_cfg)
        lines = parser.get("options.entry_points", "console_scripts").strip().splitlines()
        pairs = [line.split("=", 1) for line in lines if line.strip()]
        return [(name.strip(), target.strip()) for name, target in pairs]
    from importlib.metadata import entry_points

    return sorted(
        (e.name, e.value) for e in entry_points(group="console_scripts") if e.value.startswith("ugs_d2.")
    )


def _script(name: str, target: str, report_torch: bool = False) -> str:
    module, function = target.split(":")
    lines = ["import sys", f"sys.argv = [{name!r}, '--help']", f"from {module} import {function}"]
    if not report_torch:
        return "\n".join(lines + [f"{function}()"])
    return "\n".join(lines + [
        "try:",
        f"    {function}()",
        "finally:",  # also when it raised: the exit code tells that
        f"    print({TORCH_MARK!r} + str('torch' in sys.modules), file=sys.stderr)",
    ])


@dataclass
class Probe:
    """One untimed ``--help`` run: exit code, its output, whether torch got imported."""

    returncode: int
    output: str
    torch_imported: bool

    @property
    def warned(self) -> bool:
        return "warning" in self.output.lower()


def probe(name: str, target: str, cwd: Optional[str] = None) -> Probe:
    """Run ``NAME --help`` once (as its console script) and report what it did."""
    proc = subprocess.run(
        [sys.executable, "-c", _script(name, target, report_torch=True)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )
    marks = [line for line in proc.stderr.splitlines() if line.startswith(TORCH_MARK)]
    output = proc.stdout + "\n".join(line for line in proc.stderr.splitlines() if not line.startswith(TORCH_MARK))
    return Probe(proc.returncode, output, bool(marks) and marks[-1].endswith("True"))


def _wall(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - start


def time_help(
    commands: Sequence[Tuple[str, str]], repeats: int, log: Callable[[str], None] = lambda m: None
) -> Dict:
    """``{"baseline": [s, ...], "rows": [{name, times, returncode, warned, torch}, ...]}``."""
    baseline: List[float] = []
    times: Dict[str, List[float]] = {name: [] for name, _ in commands}
    for r in range(repeats):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))
        baseline.append(_wall([sys.executable, "-c", "pass"]))
        for name, target in order:
            times[name].append(_wall([sys.executable, "-c", _script(name, target)]))
        log(f"round {r + 1}/{repeats}")
    rows = []
    for name, target in commands:
        checked = probe(name, target)
        rows.append({"name": name, "times": times[name], "returncode": checked.returncode,
                     "warned": checked.warned, "torch": checked.torch_imported})
    return {"baseline": baseline, "rows": rows, "repeats": repeats}


def format_report(outcome: Dict, command: str, started: str, wall_s: float, loads: List[float]) -> str:
    base = statistics.median(outcome["baseline"])
    lines = [
        "# `--help` latency of every command",
        "",
        *run_lines(command, started, wall_s, loads),
        f"- {outcome['repeats']} repeats each, interleaved with the baseline `python -c pass`: "
        f"median {base:.3f} s, min {min(outcome['baseline']):.3f} s ({sys.executable})",
        "- ratio: median against the baseline's median; torch: imported by `--help` (an extra run)",
        "",
        "| command | median (s) | min (s) | ratio | exit | warning | torch |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in outcome["rows"]:
        median = statistics.median(r["times"])
        lines.append(
            f"| {r['name']} | {median:.3f} | {min(r['times']):.3f} | {median / base:.1f}x | "
            f"{r['returncode']} | {'yes' if r['warned'] else 'no'} | {'yes' if r['torch'] else 'no'} |"
        )
    lines.append("")
    return "\n".join(lines)
