"""``ugs-bench anchors``'s arguments; the benchmark is :mod:`ugs_d2.bench.anchors`."""
import argparse
import os
from typing import Any, Dict, Sequence

from ugs_d2 import anchors as A
from ugs_d2.bench import anchors
from ugs_d2.bench.common import PROG, BenchError, progress_log, run_and_report

__all__ = ["add_parser", "run_command_line"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``anchors`` on ``ugs-bench``'s subcommands."""
    parser = subparsers.add_parser(
        "anchors", help="ugs-anchors (grid / ratio objective) vs YOLOv5-style anchors: grid-IoU recall and fit time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=anchors.__doc__.split("\n\n", 2)[2] if anchors.__doc__ else None,
        epilog=("examples:\n"
                "  ugs-bench anchors --dataset datasets/synth/annotations/train.json:256\n"
                "  ugs-bench anchors --no-skewed --dataset train.json:800 --generations 300 --out /tmp/a.md"),
    )
    parser.add_argument("--dataset", action="append", default=[], metavar="JSON:INPUT_SIZE",
                        help="a COCO json and the shorter input side its images are resized to (repeatable)")
    parser.add_argument("--no-skewed", action="store_true", help="leave out the generated skewed box set")
    parser.add_argument("--skewed-boxes", type=int, default=20_000, help="boxes of the skewed set (default 20000)")
    parser.add_argument("--generations", type=int, default=1000, help="generations per evolution (default 1000)")
    parser.add_argument("--iou", type=float, default=A.DEFAULT_IOU,
                        help="positive IoU of the grid objective (default 0.7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the skewed set, k-means and evolution (default 0)")
    parser.add_argument("--out", default=os.path.join("results", "anchors", "benchmark.md"),
                        help="markdown report, written atomically (default results/anchors/benchmark.md)")
    return parser


def run_command_line(args: argparse.Namespace, argv: Sequence[str], invoked_as: str) -> Dict[str, Any]:
    """``ugs-bench anchors`` for parsed ``args``: the outcome of ``run_anchors_bench`` plus ``report``."""
    log = progress_log(False, f"{PROG} anchors")

    def run() -> Dict[str, Any]:
        if args.generations < 0:
            raise BenchError(f"--generations: expected >= 0, got {args.generations}")
        datasets = []
        for spec in args.dataset:
            path, _, size = spec.rpartition(":")
            if not path or not size.isdigit() or int(size) < 1:
                raise BenchError(f"--dataset: expected JSON:INPUT_SIZE like train.json:256, got {spec!r}")
            datasets.append((path, int(size)))
        box_sets = anchors.box_sets(datasets, None if args.no_skewed else args.skewed_boxes, args.seed)
        return anchors.run_anchors_bench(box_sets, args.generations, args.seed, args.iou, log)

    return run_and_report(run, anchors.format_report, args.out, argv, invoked_as, PROG, log)
