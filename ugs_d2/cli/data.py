"""``ugs-data``: dataset tools.

    ugs-data synth --out datasets/synth --train 800 --val 200 --seed 0

writes the embedded synthetic small-object dataset (COCO json + PNG images, see
:mod:`ugs_d2.data.synth`) and prints its statistics. Further subcommands (converters for real
datasets) plug into the same parser.
"""
import argparse
import os
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return value


def _check_output_dir(path: str) -> None:
    """The output must be a directory (or not exist yet) under a writable parent."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"ugs-data: --out {path} exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"ugs-data: --out {path} is not writable ({parent})")


def _format_statistics(split: str, stats: dict) -> str:
    buckets = stats["area_buckets"]
    return (
        f"{split}: {stats['num_images']} images ({stats['num_empty_images']} empty), "
        f"{stats['num_annotations']} boxes, {stats['objects_per_image_mean']:.1f} per image "
        f"(max {stats['objects_per_image_max']}); longer side < 16 px: "
        f"{100 * stats['frac_max_side_lt16']:.0f}%, < 32 px: {100 * stats['frac_max_side_lt32']:.0f}%; "
        f"COCO small/medium/large: {buckets['small']}/{buckets['medium']}/{buckets['large']}"
    )


def _synth(args: argparse.Namespace) -> None:
    from ugs_d2.data import synth

    _check_output_dir(args.out)
    try:
        config = synth.SynthConfig(image_size=args.image_size)
        paths = synth.generate(
            args.out, args.train, args.val, args.seed, config, overwrite=args.force
        )
    except FileExistsError as e:
        raise SystemExit(f"ugs-data: {e} (use --force to overwrite)") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"ugs-data: {e}") from None
    print(f"[ugs-data] wrote {paths['root']}")
    for split in ("train", "val"):
        print("[ugs-data] " + _format_statistics(split, synth.dataset_statistics(paths[f"{split}_json"])))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ugs-data", description="Dataset tools of ugs_d2.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = commands.add_parser(
        "synth",
        help="write the embedded synthetic small-object dataset (COCO json + PNG)",
        description="Write a deterministic COCO-format small-object dataset: out/train, out/val, "
        "out/annotations/{train,val}.json, out/synth_config.json. The same seed gives "
        "byte-identical files.",
    )
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--train", type=_non_negative_int, default=800, help="training images (default 800)")
    synth.add_argument("--val", type=_non_negative_int, default=200, help="validation images (default 200)")
    synth.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    synth.add_argument("--image-size", type=_positive_int, default=256, help="image side in px (default 256)")
    synth.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")
    synth.set_defaults(func=_synth)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)


if __name__ == "__main__":
    main()
