"""``ugs-bench``: measure what UGS costs, and how the harness around it performs.

One subcommand per benchmark; each parses its arguments in ``ugs_d2/cli/bench_<name>.py`` and
runs :mod:`ugs_d2.bench` (``overhead``: training-step time, peak memory and inference time of
every ``configs/ugs`` preset against ``off``; ``sahi``, ``tiling``: tiled inference; ``cocoeval``:
the COCOeval backends; ``anchors``: anchor learning; ``ur``: UR's perturbation; ``overfit``:
tiny overfit curves; ``embedded``: the second embedded benchmark, trained in lanes and
committed run by run; ``help``: ``--help`` latency). Each writes a markdown report atomically
(``--out``) and prints it. Example::

    ugs-bench overhead                                   # all presets, defaults (~3 min on 2 CPUs)
    ugs-bench overhead --presets off,full --device cuda model=faster_rcnn_r50_fpn
"""
import argparse
import os
import sys
from typing import Dict, List, Optional

from ugs_d2.bench.common import PROG, BenchError
from ugs_d2.fileio import output_problem

__all__ = ["BenchError", "main", "run_command_line"]


def _subcommands() -> Dict:
    """``{name: module}``, in the order of ``ugs-bench --help``; each module has
    ``add_parser(subparsers)`` and ``run_command_line(args, argv, invoked_as)``."""
    from ugs_d2.cli import (
        bench_anchors,
        bench_cocoeval,
        bench_embedded,
        bench_help,
        bench_overfit,
        bench_overhead,
        bench_sahi,
        bench_tiling,
        bench_ur,
    )

    return {
        "overhead": bench_overhead,
        "sahi": bench_sahi,
        "cocoeval": bench_cocoeval,
        "anchors": bench_anchors,
        "tiling": bench_tiling,
        "ur": bench_ur,
        "overfit": bench_overfit,
        "embedded": bench_embedded,
        "help": bench_help,
    }


def _parser(subcommands: Dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmarks of the UGS implementation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in subcommands.values():
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``ugs-bench``); errors are one line (``ugs-bench: ...``)."""
    invoked_as = PROG
    if argv is None and os.path.basename(sys.argv[0]) == "bench.py":
        invoked_as = "python -m ugs_d2.cli.bench"  # record the command as it was typed
    run_command_line(sys.argv[1:] if argv is None else argv, invoked_as)


def run_command_line(argv: List[str], invoked_as: str = PROG) -> Dict:
    """``main`` returning what the benchmark returned plus ``report`` (the markdown)."""
    argv = list(argv)
    subcommands = _subcommands()
    args = _parser(subcommands).parse_args(argv)
    problem = output_problem(args.out) if getattr(args, "out", None) else None
    if problem:  # before the benchmark runs (minutes to hours), not after
        raise SystemExit(f"{PROG}: --out {args.out} {problem}")
    return subcommands[args.command].run_command_line(args, argv, invoked_as)


if __name__ == "__main__":
    main()
