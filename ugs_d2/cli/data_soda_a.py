"""``ugs-data soda-a ROOT``: the SODA-A per-image jsons -> COCO json with oriented boxes
(:mod:`ugs_d2.data.soda_a`)."""
import argparse

from ugs_d2.cli.data_arguments import check_output_dir

__all__ = ["add_parser"]

DESCRIPTION = (
    "Convert the official SODA-A annotations under ROOT (Images/<split> + Annotations/<split>,\n"
    "or rawData's <split>/Images + <split>/Annotations; one json per image) to COCO json:\n"
    "OUT/annotations/{train,val,test}.json, image paths relative to ROOT.\n\n"
    "Each object's 4-corner polygon gives `rbox` (its minimum-area rectangle, detectron2's\n"
    "XYWHA_ABS: cx, cy, w, h, angle in degrees counter-clockwise), `bbox` (the axis-aligned box,\n"
    "clipped to the image) and `area` (w * h of rbox, the area of the SODA size buckets).\n"
    "As the devkit: category 9 (ignore) is dropped (--keep-ignore: iscrowd=1 regions instead),\n"
    "polygons of more than 4 points are dropped; both counted. A malformed object is one line\n"
    "naming file and index. Nothing is written unless every split converts."
)


def _soda_a(args: argparse.Namespace) -> None:
    from ugs_d2.data import soda_a
    from ugs_d2.data.coco_json import DatasetError

    out = args.root if args.out is None else args.out
    check_output_dir(out)
    splits = None if args.splits is None else [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        converted = soda_a.convert(args.root, out, splits=splits, keep_ignore=args.keep_ignore,
                                   decode=not args.no_decode, overwrite=args.force)
    except FileExistsError as e:
        raise SystemExit(f"ugs-data: {e} (use --force to overwrite)") from None
    except (DatasetError, OSError) as e:
        raise SystemExit(f"ugs-data: {e}") from None
    for split, (path, counts) in converted.items():
        print("[ugs-data] soda-a " + soda_a.format_summary(split, counts, path))


def add_parser(commands) -> None:
    """Add the ``soda-a`` subcommand to ``ugs-data``'s subparsers."""
    parser = commands.add_parser(
        "soda-a", help="convert SODA-A annotations to COCO json with oriented boxes",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION,
        epilog="examples:\n"
        "  ugs-data soda-a /data/SODA-A                    # writes /data/SODA-A/annotations/\n"
        "  ugs-data soda-a /data/SODA-A --out ~/soda-ann   # read-only ROOT\n"
        "then: ugs-train dataset=soda_a evaluation=soda_a dataset.root=/data/SODA-A",
    )
    parser.add_argument("root", metavar="ROOT", help="the SODA-A root")
    parser.add_argument("--out", default=None, help="output directory (default: ROOT itself)")
    parser.add_argument("--splits", default=None,
                        help="comma-separated subset of train,val,test (default: every split found)")
    parser.add_argument("--keep-ignore", action="store_true",
                        help="write ignore regions as iscrowd=1 regions of every class (not the devkit's rule)")
    parser.add_argument("--no-decode", action="store_true",
                        help="read image headers only (faster; corrupt images are then found only in training)")
    parser.add_argument("--force", action="store_true", help="overwrite jsons already in OUT/annotations")
    parser.set_defaults(func=_soda_a)
