"""``ugs-bench tiling``: the command line of :mod:`ugs_d2.bench.tiling` (whole image vs tiles vs
tiles + whole image on large synthetic scenes, per model)."""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ugs_d2.bench import tiling
from ugs_d2.bench.common import PROG, BenchError, run_and_report
from ugs_d2.bench.scenes import parse_size

__all__ = ["add_parser", "run_command_line"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tiling`` on ``ugs-bench``'s subcommands."""
    parser = subparsers.add_parser(
        "tiling",
        help="large synthetic scenes: whole image vs tiled vs tiled+full, per model (AP, APs, tiny buckets, time)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=tiling.__doc__.split("\n\n", 2)[2] if tiling.__doc__ else None,
        epilog=("examples:\n"
                "  ugs-bench tiling --run full=outputs/default/RUN --run tiles=outputs/default/tiling=on\n"
                "  ugs-bench tiling --run m=RUN --images 1 --size 1024x768 --out /tmp/t.md"),
    )
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="a ugs-train run directory (detectron2_config.yaml + model_final.pth) and its label; "
                        "repeatable")
    parser.add_argument("--images", type=int, default=4, help="number of scenes (default 4)")
    parser.add_argument("--size", default="3000x2000", help="scene size WIDTHxHEIGHT (default 3000x2000)")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile side in px for every model (default: a model trained on tiles uses its own "
                        "tiling.tile and overlap, the others 512)")
    parser.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    parser.add_argument("--whole-size", default=None, metavar="MIN,MAX",
                        help="test resize of the whole-image pass (default: each model's test size)")
    parser.add_argument("--max-dets", type=int, default=3000,
                        help="COCOeval maxDets and detections kept per image (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument("--out", default=os.path.join("results", "tiling", "large_images.md"),
                        help="markdown report, written atomically (default results/tiling/large_images.md)")
    return parser


def _parse_runs(specs: List[str]) -> List[Tuple[str, str]]:
    """``["NAME=RUN_DIR", ...]`` -> ``[(NAME, RUN_DIR), ...]``, at least one."""
    runs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise BenchError(f"--run: expected NAME=RUN_DIR, got {spec!r}")
        runs.append((name, path))
    if not runs:
        raise BenchError("--run: give at least one NAME=RUN_DIR")
    return runs


def _parse_whole_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"800,1333"`` -> ``(800, 1333)``; None stays None (each model's own test size)."""
    if text is None:
        return None
    try:
        whole = tuple(int(v) for v in text.split(","))
        if len(whole) != 2 or min(whole) < 1:
            raise ValueError
    except ValueError:
        raise BenchError(f"--whole-size: expected MIN,MAX like 800,1333, got {text!r}") from None
    return whole


def _spec(args: argparse.Namespace) -> tiling.TilingBenchSpec:
    """The benchmark's spec from the parsed options; a bad one raises ``BenchError`` naming it."""
    runs = _parse_runs(args.run)
    if args.images < 1:
        raise BenchError(f"--images must be >= 1, got {args.images}")
    size = parse_size(args.size)
    whole = _parse_whole_size(args.whole_size)
    if not 0 <= args.overlap < 1:
        raise BenchError(f"--overlap must be in [0, 1), got {args.overlap}")
    return tiling.TilingBenchSpec(runs=runs, num_images=args.images, size=size, tile=args.tile, overlap=args.overlap,
                                  whole_size=whole, max_dets=args.max_dets, seed=args.seed, device=args.device)


def run_command_line(args: argparse.Namespace, argv: Sequence[str], invoked_as: str) -> Dict[str, Any]:
    """Run ``ugs-bench tiling`` from parsed ``args``; writes and prints the report; returns the outcome."""
    log = lambda m: print(f"[{PROG} tiling] {m}", file=sys.stderr, flush=True)  # noqa: E731
    return run_and_report(lambda: tiling.run_tiling_bench(_spec(args), log), tiling.format_report, args.out, argv,
                          invoked_as, PROG, log)
