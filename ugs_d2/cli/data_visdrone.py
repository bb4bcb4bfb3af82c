"""``ugs-data visdrone ROOT``: the official VisDrone2019-DET folders -> COCO json
(:mod:`ugs_d2.data.visdrone`)."""
import argparse
import os

from ugs_d2.cli.data_arguments import check_output_dir, positive_int

__all__ = ["add_parser"]


def _visdrone(args: argparse.Namespace) -> None:
    from ugs_d2.data import visdrone
    from ugs_d2.data.coco_json import DatasetError

    out = args.root if args.out is None else args.out
    check_output_dir(out)
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


def add_parser(commands) -> None:
    """Add the ``visdrone`` subcommand to ``ugs-data``'s subparsers."""
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
    vis.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                     help="threads reading images (default: min(8, CPUs))")
    vis.add_argument("--force", action="store_true", help="overwrite jsons already in OUT/annotations")
    vis.set_defaults(func=_visdrone)
