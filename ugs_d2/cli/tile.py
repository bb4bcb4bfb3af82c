"""``ugs-tile``: cut a COCO detection dataset into overlapping tiles.

    ugs-tile dataset datasets/synth/annotations/train.json datasets/synth/train \\
        --out datasets/synth_tiles --tile 128 --overlap 0.25 --min-area-ratio 0.1

writes ``DIR/images/<stem>_<x0>_<y0>.<ext>`` and ``DIR/annotations.json`` (COCO; each image
record has ``source_image_id``, ``source_file_name``, ``tile_x0``, ``tile_y0``) and prints one
summary line. One source image is in memory at a time. See :mod:`ugs_d2.data.tiling`.
Training with ``ugs-train tiling=on`` tiles the train split itself (cached); this command is
for inspecting tiles or tiling a dataset once for other tools.
"""
import argparse
import os
import sys
from typing import List, Optional

from ugs_d2.data.tiling import format_counts, tile_coco_dataset
from ugs_d2.interrupts import console_entry

__all__ = ["main"]

PROG = "ugs-tile"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cut images and their COCO boxes into overlapping tiles (boxes clipped to each "
        "tile, kept if they retain --min-area-ratio of their area; the last row/column of tiles "
        "is aligned to the image edge; images smaller than a tile stay whole).",
        epilog="example: ugs-tile dataset datasets/synth/annotations/train.json datasets/synth/train "
        "--out datasets/synth_tiles --tile 128 --overlap 0.25",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dataset = commands.add_parser(
        "dataset",
        help="tile a COCO json and its images",
        description="Tile every image of IN_JSON (files under IMAGE_DIR) into DIR/images and write "
        "DIR/annotations.json.",
    )
    dataset.add_argument("json", metavar="IN_JSON", help="COCO detection json")
    dataset.add_argument("image_dir", metavar="IMAGE_DIR", help="directory images[*].file_name is relative to")
    dataset.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    dataset.add_argument("--tile", type=int, default=512, help="tile side in pixels (default: 512)")
    dataset.add_argument("--overlap", type=float, default=0.2,
                         help="share of a tile shared with its neighbour, in [0, 1) (default: 0.2)")
    dataset.add_argument("--min-area-ratio", type=float, default=0.1,
                         help="keep a clipped box if it retains at least this share of its area, "
                         "in (0, 1] (default: 0.1)")
    dataset.add_argument("--drop-empty", action="store_true", help="leave out tiles without boxes")
    dataset.add_argument("--force", action="store_true",
                         help="overwrite an existing DIR/annotations.json (and same-named tiles)")
    return parser


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-tile: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.image_dir):
        raise SystemExit(f"{PROG}: IMAGE_DIR {args.image_dir}: directory not found")
    out_json = os.path.join(args.out, "annotations.json")
    if os.path.exists(out_json) and not args.force:
        raise SystemExit(f"{PROG}: {out_json} exists (use --force to overwrite)")
    if os.path.abspath(args.out) == os.path.abspath(args.image_dir):
        raise SystemExit(f"{PROG}: --out must not be IMAGE_DIR")
    try:
        counts = tile_coco_dataset(
            args.json, args.image_dir, args.out, args.tile, args.overlap, args.min_area_ratio,
            drop_empty=args.drop_empty,
        )
    except ValueError as e:  # DatasetError, and bad --tile/--overlap/--min-area-ratio
        message = str(e)
        for name in ("tile", "overlap", "min_area_ratio"):
            if message.startswith(f"{name}:"):
                message = f"--{name.replace('_', '-')}{message[len(name):]}"
        raise SystemExit(f"{PROG}: {message}") from None
    except OSError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    print(f"[{PROG}] {format_counts(counts)}")
    print(f"[{PROG}] wrote {out_json}")


main = console_entry(PROG, _main, "the annotation json is written last: rerun the same command")


if __name__ == "__main__":
    main()
