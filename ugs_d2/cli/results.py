"""``ugs-results``: collect a Hydra multirun sweep into a table (DomainBed style).

Every finished job directory holds ``results.json`` and a ``done`` marker (see
``ugs_d2.evaluation.results``); this tool reads only those, so it can run while a sweep is still
going and shows what is missing. ::

    ugs-results multirun/table6                       # -> results/table6.{md,csv} + plots
    ugs-results multirun/table6 --out /tmp/t6         # -> /tmp/t6.md, /tmp/t6.csv, /tmp/t6_*.png

How jobs are found and grouped, and the statistics: :mod:`ugs_d2.analysis.results`; what the
table, the CSV and the plots show: :mod:`ugs_d2.analysis.sweep_report`.
"""
import argparse
import sys
from typing import List, Optional

from ugs_d2.analysis.results import CollectError
from ugs_d2.analysis.sweep_report import PROG, collect_and_write
from ugs_d2.interrupts import console_entry

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Collect a ugs-train multirun sweep into a markdown table, a CSV and plots "
        "(mean ± std over seeds; incomplete and failed jobs listed).",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a multirun directory, e.g. multirun/table6")
    parser.add_argument(
        "--out", default=None,
        help="output prefix: writes OUT.md, OUT.csv, OUT_<param>.png (default: results/<sweep name>)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write only the table and the CSV")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    return parser


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-results: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = collect_and_write(args.sweep_dir, args.out, plots=not args.no_plots)
    except (CollectError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    if not args.quiet:
        print(written["markdown"], end="")
    for path in [written["md"], written["csv"], *written["png"]]:
        print(f"[{PROG}] wrote {path}", file=sys.stderr)


main = console_entry(PROG, _main)


if __name__ == "__main__":
    main()
