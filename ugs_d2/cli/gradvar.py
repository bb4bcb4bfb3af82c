"""``ugs-gradvar RUN_A RUN_B``: compare two runs' localization-gradient variance per GT size.

Both runs must have been trained with ``gradvar.enabled=true``; what the two probes measure and
how a run's localization loss is named: :mod:`ugs_d2.analysis.gradvar`. Examples::

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
import os
import shlex
import sys
from typing import List, Optional, Sequence

from ugs_d2.analysis.gradvar import GradVarError, compare_runs, describe_loss, report_sweep
from ugs_d2.interrupts import console_entry

__all__ = ["main"]

PROG = "ugs-gradvar"


def _parser() -> argparse.ArgumentParser:
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
    return parser


def _sweep_main(args: argparse.Namespace, argv: Sequence[str]) -> None:
    from ugs_d2.fileio import write_text_atomic

    command = " ".join([PROG] + [shlex.quote(a) for a in argv])
    text = report_sweep(args.sweep, args.baseline, args.against, command)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text_atomic(args.out, text)
        print(f"[{PROG}] wrote {args.out}")
    print(text)


def _runs_main(args: argparse.Namespace) -> None:
    tables = compare_runs(args.run_a, args.run_b, iteration=args.iteration, mean=args.mean)
    print(f"A = {args.run_a}: {describe_loss(args.run_a)}")
    print(f"B = {args.run_b}: {describe_loss(args.run_b)}")
    for title, table in tables:
        print(title)
        print(table)


def _main(argv: Optional[List[str]] = None) -> None:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.sweep is not None:
        if args.run_a or args.run_b or args.iteration is not None or args.mean or args.last:
            parser.error("--sweep takes no RUN_A/RUN_B, --iteration, --last or --mean (it reports both)")
    elif not (args.run_a and args.run_b):
        parser.error("give RUN_A and RUN_B, or --sweep SWEEP_DIR")
    try:
        if args.sweep is not None:
            _sweep_main(args, argv)
        else:
            _runs_main(args)
    except GradVarError as e:
        raise SystemExit(f"{PROG}: {e}") from None


main = console_entry(PROG, _main)


if __name__ == "__main__":
    main()
