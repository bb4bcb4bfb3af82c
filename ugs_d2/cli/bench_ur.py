"""``ugs-bench ur``'s arguments; the benchmark is :mod:`ugs_d2.bench.ur`."""
import argparse
import os
from typing import Dict, List

from ugs_d2.bench import ur
from ugs_d2.bench.common import PROG, BenchError, progress_log, run_and_report

__all__ = ["add_parser", "run_command_line"]


def _floats(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_parser(sub) -> None:
    """Register ``ur`` on ``ugs-bench``'s subcommands."""
    p = sub.add_parser(
        "ur",
        help="UR's perturbation size and its effect on the losses, per ur_norm and rho",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=ur.__doc__.split("Example::")[0].strip(),
    )
    p.add_argument("--norms", default="image,relative,location",
                   help="comma-separated ugs.ur_norm values (default: image,relative,location)")
    p.add_argument("--rhos", default="0,0.5,1", help="comma-separated rho values (default: 0,0.5,1)")
    p.add_argument("--train-steps", type=int, default=30,
                   help="SGD steps of ugs=full on the fixed batches before measuring (default: 30)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of those steps (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=2, help="images per batch (default: 2)")
    p.add_argument("--num-batches", type=int, default=4, help="fixed batches (default: 4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", default=os.path.join("results", "ur_rho.md"),
                   help="markdown report, written atomically (default: results/ur_rho.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help=f"Hydra overrides (default: {' '.join(ur.DEFAULT_OVERRIDES)}); not ugs=...")


def run_command_line(args: argparse.Namespace, argv: List[str], invoked_as: str) -> Dict:
    """``ugs-bench ur`` for parsed ``args``: the outcome of ``run_ur_table`` plus ``report``."""
    log = progress_log(args.quiet)

    def run() -> Dict:
        try:
            norms = [n.strip() for n in args.norms.split(",") if n.strip()]
            rhos = _floats(args.rhos)
        except ValueError as e:
            raise BenchError(f"--rhos: {e}") from None
        spec = ur.UrSpec(
            norms, rhos, args.overrides or list(ur.DEFAULT_OVERRIDES), train_steps=args.train_steps,
            lr=args.lr, batch_size=args.batch_size, num_batches=args.num_batches, device=args.device,
        )
        return ur.run_ur_table(spec, log)

    return run_and_report(run, ur.format_report, args.out, argv, invoked_as, PROG, log)
