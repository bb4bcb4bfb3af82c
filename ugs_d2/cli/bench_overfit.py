"""``ugs-bench overfit``'s arguments; the benchmark is :mod:`ugs_d2.bench.overfit`."""
import argparse
import os
from typing import Dict, List

from ugs_d2.bench import overfit
from ugs_d2.bench.common import PROG, BenchError, progress_log, run_and_report

__all__ = ["add_parser", "run_command_line"]


def add_parser(sub) -> None:
    """Register ``overfit`` on ``ugs-bench``'s subcommands."""
    p = sub.add_parser(
        "overfit",
        help="tiny overfit curves per detector: classification loss with ugs=off vs ugs=full",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=overfit.__doc__.split("Example::")[0].strip(),
    )
    p.add_argument("--models", default=overfit.DEFAULT_MODELS,
                   help=f"configs/model presets (default: {overfit.DEFAULT_MODELS})")
    p.add_argument("--iters", type=int, default=120, help="SGD steps per run (default: 120)")
    p.add_argument("--tail", type=int, default=20, help="steps averaged at the end (default: 20)")
    p.add_argument("--against", default="full", help="the configs/ugs preset compared with off (default: full)")
    p.add_argument("--num-batches", type=int, default=1, help="fixed batches of 2 images, cycled (default: 1)")
    p.add_argument("--lr", type=float, default=0.005,
                   help="SGD learning rate (default: 0.005 = the embedded 0.02 at batch 8, scaled to 2)")
    p.add_argument("--out", default=os.path.join("results", "overfit.md"), help="markdown report")
    p.add_argument("--plot", default=os.path.join("results", "overfit.png"), help="PNG of the curves")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides for both runs (e.g. ugs.ur_losses=loc); not ugs=... or model=...")


def run_command_line(args: argparse.Namespace, argv: List[str], invoked_as: str) -> Dict:
    """``ugs-bench overfit`` for parsed ``args``: the report, then the plot of the curves."""
    log = progress_log(args.quiet)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.iters < 1 or not 1 <= args.tail <= args.iters:
        raise SystemExit(f"{PROG}: need --iters >= 1 and 1 <= --tail <= --iters")
    spec = overfit.OverfitSpec(models, iters=args.iters, tail=args.tail, against=args.against, lr=args.lr,
                               num_batches=args.num_batches, overrides=args.overrides)

    def run() -> Dict:
        try:
            return overfit.run_overfit(spec, log)
        except FloatingPointError as e:
            raise BenchError(str(e)) from None

    outcome = run_and_report(run, overfit.format_report, args.out, argv, invoked_as, PROG, log)
    if args.plot:
        overfit.plot_curves(outcome, args.plot)
        log(f"wrote {args.plot}")
    return outcome
