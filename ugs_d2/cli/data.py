"""``ugs-data``: dataset tools.

    ugs-data synth --out datasets/synth --train 800 --val 200 --seed 0

writes the embedded synthetic small-object dataset (COCO json + PNG images, see
:mod:`ugs_d2.data.synth`) and prints its statistics.

    ugs-data visdrone /data/VisDrone [--out DIR] [--keep-others]

converts the official VisDrone2019-DET split folders to COCO json (see
:mod:`ugs_d2.data.visdrone`) for ``ugs-train dataset=visdrone``.
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
    from ugs_d2.fileio import output_problem

    problem = output_problem(path, directory=True)
    if problem:
        raise SystemExit(f"ugs-data: --out {path} {problem}")


def _synth(args: argparse.Namespace) -> None:
    from ugs_d2.analysis.health import format_statistics
    from ugs_d2.data import synth

    _check_output_dir(args.out)
    try:
        config = synth.SynthConfig(image_size=args.image_size)
        paths = synth.generate(args.out, args.train, args.val, args.seed, config, overwrite=args.force)
    except FileExistsError as e:
        raise SystemExit(f"ugs-data: {e} (use --force to overwrite)") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"ugs-data: {e}") from None
    print(f"[ugs-data] wrote {paths['root']}")
    for split in ("train", "val"):
        print("[ugs-data] " + format_statistics(split, synth.dataset_statistics(paths[f"{split}_json"])))


def _visdrone(args: argparse.Namespace) -> None:
    from ugs_d2.data import visdrone
    from ugs_d2.data.coco_json import DatasetError

    out = args.root if args.out is None else args.out
    _check_output_dir(out)
    splits = None if args.splits is None else [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        converted = visdrone.convert(
            args.root, out, splits=splits, keep_others=args.keep_others, decode=not args.no_decode,
            workers=args.workers, overwrite=args.force,
        )
    except FileExistsError as e:
        raise SystemExit(f"ugs-data: {e} (use --force to overwrite)") from None
    except (DatasetError, OSError) as e:
        raise SystemExit(f"ugs-data: {e}") from None
    for split, (path, counts) in converted.items():
        print("[ugs-data] visdrone " + visdrone.format_summary(split, counts, path))
    missing = [s for s in visdrone.SPLITS if s not in converted]
    if splits is None and missing:
        print(f"[ugs-data] visdrone: no folder for {', '.join(missing)} under {args.root} (skipped)")


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

    vis = commands.add_parser(
        "visdrone",
        help="convert VisDrone2019-DET annotations to COCO json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Convert the official VisDrone2019-DET folders under ROOT\n"
            "(VisDrone2019-DET-{train,val,test-dev}/{images,annotations}) to COCO json:\n"
            "OUT/annotations/{train,val,test_dev}.json, image paths relative to ROOT.\n\n"
            "Classes 1..10 keep their ids; category 0 (ignored regions) and score-0 boxes\n"
            "become iscrowd=1 ignore areas (one per class); category 11 (others) is dropped\n"
            "unless --keep-others. Boxes are clipped to the image and zero-size boxes dropped\n"
            "(both counted); every image is decoded once so corrupt files fail here, not in\n"
            "training. Nothing is written unless every split converts."
        ),
        epilog="examples:\n"
        "  ugs-data visdrone /data/VisDrone                       # writes /data/VisDrone/annotations/\n"
        "  ugs-data visdrone /data/VisDrone --out ~/visdrone-ann  # read-only ROOT\n"
        "  ugs-data visdrone /data/VisDrone --splits train,val --keep-others\n"
        "then: ugs-train dataset=visdrone dataset.root=/data/VisDrone [dataset.annotations=~/visdrone-ann]",
    )
    vis.add_argument("root", metavar="ROOT", help="folder holding the VisDrone2019-DET-* folders")
    vis.add_argument("--out", default=None, help="output directory (default: ROOT itself)")
    vis.add_argument("--splits", default=None,
                     help="comma-separated subset of train,val,test_dev (default: every split found)")
    vis.add_argument("--keep-others", action="store_true",
                     help="keep category 11 as an 11th class 'others' (default: drop it)")
    vis.add_argument("--no-decode", action="store_true",
                     help="read image headers only (faster; corrupt images are then found only in training)")
    vis.add_argument("--workers", type=_positive_int, default=min(8, os.cpu_count() or 1),
                     help="threads reading images (default: min(8, CPUs))")
    vis.add_argument("--force", action="store_true", help="overwrite jsons already in OUT/annotations")
    vis.set_defaults(func=_visdrone)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    from ugs_d2.interrupts import interruptible

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with interruptible("ugs-data", "nothing was written; rerun the same command"):
        args.func(args)


if __name__ == "__main__":
    main()
