"""``ugs-bench sahi``: the command line of :mod:`ugs_d2.bench.sahi` (our batched tiled predictor
against SAHI's sliced inference; what is measured and how is that module's docstring).

``python -m ugs_d2.cli.bench_sahi ARGS`` is ``ugs-bench sahi ARGS``.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Sequence

from ugs_d2.bench.common import run_and_report
from ugs_d2.bench.sahi import DEFAULT_RUN_DIR, PROG, TRAIN_COMMAND, SahiBenchSpec, format_report, run_sahi_benchmark
from ugs_d2.bench.scenes import parse_size

__all__ = ["add_parser", "run_command_line"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sahi`` under ``ugs-bench``'s subcommands."""
    parser = subparsers.add_parser(
        "sahi",
        help="our batched tiled predictor vs SAHI 0.12.8 (wall time, peak memory, agreement)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run one detectron2 model (a ugs-train run directory) on large synthetic scenes with\n"
            "SAHI's sliced inference (its defaults, and settings matched to ours) and with our\n"
            "batched TiledPredictor, each in a fresh process. Reports wall time per image, peak\n"
            "RSS, the share of our time outside the model's forward, and how well matched SAHI and\n"
            "ours agree (same class, IoU >= 0.9). Writes a markdown report to --out (atomically).\n\n"
            "Needs the bench-only dependencies: make bench-deps (sahi==0.12.8).\n"
            "Targets: outside-model share <= 10%; >= 1.5x faster than matched SAHI on CPU, >= 3x on GPU."
        ),
        epilog=(
            "examples:\n"
            f"  {TRAIN_COMMAND}\n"
            "  ugs-bench sahi --run-dir outputs/sahi_bench\n"
            "  ugs-bench sahi --images 3 --size 4000x3000 --tile 512 --overlap 0.2 --batch-size 8 \\\n"
            "      --run-dir outputs/sahi_bench --out results/sahi_benchmark.md\n"
            "  ugs-bench sahi --device cuda --batch-size 16 --rounds 2"
        ),
    )
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                        help="ugs-train run directory (detectron2_config.yaml + model_final.pth), or a detectron2 "
                             f"config yaml with --weights (default: {DEFAULT_RUN_DIR})")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (default: the run's model_final.pth, else its last checkpoint)")
    parser.add_argument("--images", type=int, default=4, help="number of scenes (default: 4)")
    parser.add_argument("--size", default="4000x3000", help="scene size WIDTHxHEIGHT (default: 4000x3000)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in px (default: 512)")
    parser.add_argument("--overlap", type=float, default=0.2,
                        help="tile overlap for sahi_matched and ours (default: 0.2, also SAHI's default)")
    parser.add_argument("--batch-size", type=int, default=8, help="our tiles per forward (default: 8)")
    parser.add_argument("--extra-batch-sizes", default="",
                        help="comma-separated batch sizes to run ours with as well (rows ours_bsN), e.g. 1,2: "
                             "does batching pay on this device? (default: none)")
    parser.add_argument("--score-thresh", type=float, default=0.3,
                        help="score threshold of every variant (default: 0.3, SAHI's default confidence_threshold)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every variant's process (default: the usable CPUs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                        help="auto = cuda when a GPU is visible (default: cpu)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="fresh processes per variant, run round robin; times are pooled (default: 1)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls per process on a 2 x 2-window corner of the first scene "
                             "before timing (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default: 0)")
    parser.add_argument("--workdir", default=None,
                        help="keep the scenes, the bench config and each variant's raw json here (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join("results", "sahi_benchmark.md"),
                        help="markdown report, written atomically (default: results/sahi_benchmark.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _parse_batch_sizes(text: str) -> List[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{PROG}: --extra-batch-sizes: expected comma-separated integers, got {text!r}") from None


def _spec(args: argparse.Namespace) -> SahiBenchSpec:
    """The benchmark's spec from the parsed options (a bad ``--size`` raises ``BenchError``)."""
    return SahiBenchSpec(
        run_dir=args.run_dir, weights=args.weights, num_images=args.images, size=parse_size(args.size),
        tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
        extra_batch_sizes=_parse_batch_sizes(args.extra_batch_sizes), score_thresh=args.score_thresh,
        threads=args.threads, device=args.device, rounds=args.rounds, warmup=args.warmup, seed=args.seed,
        workdir=args.workdir, quiet=args.quiet,
    )


def run_command_line(args: argparse.Namespace, argv: Sequence[str], invoked_as: str = "ugs-bench") -> Dict[str, Any]:
    """Run ``ugs-bench sahi`` from parsed ``args``; writes and prints the report; returns the outcome."""
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[{PROG}] {m}", file=sys.stderr, flush=True))
    return run_and_report(lambda: run_sahi_benchmark(_spec(args), log), format_report, args.out, argv, invoked_as,
                          PROG, log)

