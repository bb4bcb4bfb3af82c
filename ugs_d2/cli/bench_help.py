"""``ugs-bench help``'s arguments; the benchmark is :mod:`ugs_d2.bench.help_latency`."""
import argparse
import os
from typing import Dict, List

from ugs_d2.bench import help_latency
from ugs_d2.bench.common import PROG, BenchError, progress_log, run_and_report

__all__ = ["add_parser", "run_command_line"]


def add_parser(sub) -> None:
    """Register ``help`` on ``ugs-bench``'s subcommands."""
    p = sub.add_parser(
        "help",
        help="--help wall time of every console script, against python -c pass",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=help_latency.__doc__.split("Example::")[0].strip(),
    )
    p.add_argument("--repeats", type=int, default=5, help="runs per command (default: 5)")
    p.add_argument("--commands", default="", help="comma-separated names (default: all console scripts)")
    p.add_argument("--out", default=os.path.join("results", "help_latency.md"),
                   help="markdown report, written atomically (default: results/help_latency.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run_command_line(args: argparse.Namespace, argv: List[str], invoked_as: str) -> Dict:
    """``ugs-bench help`` for parsed ``args``: the outcome of ``time_help`` plus ``report``."""
    log = progress_log(args.quiet)

    def run() -> Dict:
        if args.repeats < 1:
            raise BenchError(f"--repeats must be >= 1, got {args.repeats}")
        commands = help_latency.console_scripts()
        wanted = [c.strip() for c in args.commands.split(",") if c.strip()]
        unknown = sorted(set(wanted) - {name for name, _ in commands})
        if unknown:
            raise BenchError(f"--commands: unknown {', '.join(unknown)} (have: {', '.join(n for n, _ in commands)})")
        if wanted:
            commands = [c for c in commands if c[0] in wanted]
        return help_latency.time_help(commands, args.repeats, log)

    return run_and_report(run, help_latency.format_report, args.out, argv, invoked_as, PROG, log)
