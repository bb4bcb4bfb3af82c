"""``ugs-bench cocoeval``'s arguments; the benchmark is :mod:`ugs_d2.bench.cocoeval`."""
import argparse
import os
from typing import Any, Dict, Sequence, Tuple

from ugs_d2.bench import cocoeval
from ugs_d2.bench.common import PROG, BenchError, progress_log, run_and_report

__all__ = ["add_parser", "run_command_line"]


def add_parser(subparsers, prog: str = PROG) -> argparse.ArgumentParser:
    """Register ``cocoeval`` on ``ugs-bench``'s subcommands."""
    parser = subparsers.add_parser(
        "cocoeval",
        help="pycocotools vs faster-coco-eval: speed and agreement on a VisDrone-sized case",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Generate a seeded VisDrone-sized synthetic evaluation (ground truth with ignore\n"
            "regions, --dets detections per image), evaluate it with both COCOeval backends\n"
            "exactly as training does (COCO + AI-TOD + SODA buckets, maxDets --max-dets),\n"
            "alternating them over --repeats rounds, and write the median times, their ratio\n"
            "and every metric of both to --out. Exits non-zero if any metric differs by more\n"
            f"than {cocoeval.AGREEMENT_TOLERANCE:g} AP points."
        ),
        epilog=(
            "examples:\n"
            f"  {prog} cocoeval                                   # 548 images x 1500 detections\n"
            f"  {prog} cocoeval --images 548 --dets 1500 --seed 0 --repeats 3\n"
            f"  {prog} cocoeval --images 50 --dets 300 --repeats 2 --out /tmp/cocoeval.md"
        ),
    )
    parser.add_argument("--images", type=int, default=548, help="images (default: 548, VisDrone-DET val)")
    parser.add_argument("--dets", type=int, default=1500, help="detections per image (default: 1500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic case (default: 0)")
    parser.add_argument("--classes", type=int, default=10, help="categories (default: 10, VisDrone)")
    parser.add_argument("--gt-per-image", default="50,100",
                        help="MIN,MAX ground-truth boxes per image (default: 50,100)")
    parser.add_argument("--max-dets", type=int, default=None,
                        help="COCOeval maxDets budget (default: --dets)")
    parser.add_argument("--buckets", default="aitod,soda",
                        help="comma-separated bucket sets besides COCO's (default: aitod,soda; '' for none)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend (default: 3)")
    parser.add_argument("--out", default=os.path.join("results", "cocoeval_backends.md"),
                        help="markdown report, written atomically (default: results/cocoeval_backends.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _gt_range(text: str) -> Tuple[int, int]:
    """``--gt-per-image MIN,MAX``."""
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise BenchError(f"--gt-per-image: expected MIN,MAX, got {text!r}") from None
    if not 0 <= low <= high:
        raise BenchError(f"--gt-per-image: expected 0 <= MIN <= MAX, got {text!r}")
    return low, high


def run_command_line(args: argparse.Namespace, argv: Sequence[str], invoked_as: str = PROG) -> Dict[str, Any]:
    """``ugs-bench cocoeval`` for parsed ``args``: a bad argument exits with one line, and so do
    backends that disagree (after the report is written)."""
    log = progress_log(args.quiet)
    try:  # before the clock starts: the report's wall time is the case and its evaluation
        spec = cocoeval.CocoevalSpec(
            images=args.images, dets=args.dets, seed=args.seed, classes=args.classes,
            gt_per_image=_gt_range(args.gt_per_image), max_dets=args.max_dets,
            buckets=[b for b in args.buckets.split(",") if b], repeats=args.repeats,
        )
        spec.check()
    except BenchError as e:
        raise SystemExit(f"{PROG}: {e}") from None

    def run() -> Dict[str, Any]:
        try:
            return cocoeval.run_cocoeval(spec, progress=not args.quiet, log=log)
        except ValueError as e:  # e.g. a backend that cannot run here (evaluation.backends)
            raise BenchError(str(e)) from None

    outcome = run_and_report(run, cocoeval.format_report, args.out, argv, invoked_as, PROG, log)
    if outcome["disagreeing"]:
        raise SystemExit(f"{PROG}: the backends disagree on {', '.join(outcome['disagreeing'])}")
    return outcome
