"""``ugs-bench overhead``'s arguments; the benchmark is :mod:`ugs_d2.bench.overhead`."""
import argparse
import os
from typing import Dict, List

from ugs_d2.bench.common import PROG, BenchError, progress_log, run_and_report
from ugs_d2.bench.fixed_batches import available_presets

__all__ = ["add_parser", "run_command_line"]


def add_parser(subparsers) -> None:
    """Register ``overhead`` on ``ugs-bench``'s subcommands."""
    presets = ",".join(available_presets())
    overhead = subparsers.add_parser(
        "overhead",
        help="training-step time, peak memory and inference time of each preset relative to off",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build one model per configs/ugs preset (same config, data and seed), run the same\n"
            "fixed training batches through each, and report per preset, relative to `off` in the\n"
            "same run: median training-step time (forward + backward + SGD step), peak memory of a\n"
            "training step, and median inference time per image. Presets are interleaved to\n"
            "spread the noise of a shared machine. Writes a markdown table to --out.\n\n"
            "Without a dataset.root override, a small synthetic set is generated in a temp dir.\n"
            "Targets (full vs off): step <= 1.15x, memory <= 1.13x, inference <= 1.05x (paper)."
        ),
        epilog=(
            "examples:\n"
            "  ugs-bench overhead\n"
            "  ugs-bench overhead --presets off,full --iters 5 --repeats 4\n"
            "  ugs-bench overhead --device cuda model=faster_rcnn_r50_fpn --batch-size 4\n"
            "  ugs-bench overhead 'model.input.min_size_train=[128]' model.input.max_size_train=128"
        ),
    )
    overhead.add_argument(
        "--presets", default=presets,
        help=f"comma-separated configs/ugs presets; off is always added (default: {presets})",
    )
    overhead.add_argument("--iters", type=int, default=2,
                          help="timed steps (and inference batches) per preset per round (default: 2)")
    overhead.add_argument("--repeats", type=int, default=15,
                          help="rounds over all presets; timed steps per preset = iters x repeats (default: 15)")
    overhead.add_argument("--warmup", type=int, default=3,
                          help="untimed training steps per preset before measuring (default: 3)")
    overhead.add_argument("--batch-size", type=int, default=2, help="images per batch (default: 2)")
    overhead.add_argument("--num-batches", type=int, default=4,
                          help="distinct fixed batches, cycled (default: 4)")
    overhead.add_argument("--lr", type=float, default=None,
                          help="SGD learning rate (default: schedule.base_lr x the warmup factor 0.001)")
    overhead.add_argument("--threads", type=int, default=None,
                          help="torch intra-op threads (default: torch's default, usually the CPU count)")
    overhead.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                          help="auto = cuda when a GPU is visible (default: auto)")
    overhead.add_argument("--out", default=os.path.join("results", "overhead.md"),
                          help="markdown report, written atomically (default: results/overhead.md)")
    overhead.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    overhead.add_argument(
        "overrides", nargs="*", metavar="OVERRIDE",
        help="Hydra overrides of configs/ (as for ugs-train), e.g. model.input.max_size_train=128; "
             "applied to every preset; not ugs=... (use --presets) or device=... (use --device)",
    )


def run_command_line(args: argparse.Namespace, argv: List[str], invoked_as: str) -> Dict:
    """``ugs-bench overhead`` for parsed ``args``: the outcome of ``run_overhead`` plus ``report``."""
    from ugs_d2.bench.overhead import OverheadSpec, format_report, parse_presets, run_overhead

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU memory profile's log lines are noise
    log = progress_log(args.quiet)

    def run() -> Dict:
        if args.threads is not None:
            if args.threads < 1:
                raise BenchError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        spec = OverheadSpec(
            parse_presets(args.presets), args.overrides, iters=args.iters, warmup=args.warmup,
            repeats=args.repeats, device=args.device, batch_size=args.batch_size,
            num_batches=args.num_batches, lr=args.lr,
        )
        return run_overhead(spec, log)

    return run_and_report(run, format_report, args.out, argv, invoked_as, PROG, log)
