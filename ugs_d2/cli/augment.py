"""``ugs-augment``: look at a small-object augmentation before training with it (a PNG grid).

    ugs-augment --aug mosaic --out mosaic.png                  # the embedded dataset
    ugs-augment train.json images/ --aug crop --crop-size 0.5 0.5 --n 12 --out crop.png
    ugs-augment --aug rotation --max-angle 30 --seed 1 --out rotation.png

Each cell is one training sample after the augmentation, drawn through the training mapper with
its boxes outlined; what the cells and captions show, and the dataset used without
``DATASET_JSON IMAGE_DIR``: :mod:`ugs_d2.data.augment_preview`. Written atomically.
"""
import argparse
import shutil
import sys
import tempfile
from typing import List, Optional

from ugs_d2.data.augment_preview import AUGMENTATIONS, DEFAULT_IMAGES, DEFAULT_JSON, PreviewAugmentation
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.fileio import write_atomic
from ugs_d2.interrupts import console_entry

__all__ = ["main"]

PROG = "ugs-augment"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a PNG grid of training samples after one small-object augmentation "
        "(mosaic, small-object-safe crop or rotation), boxes drawn, to check that boxes follow "
        "the pixels.",
        epilog="examples:\n"
        "  ugs-augment --aug mosaic --out mosaic.png\n"
        "  ugs-augment datasets/synth/annotations/train.json datasets/synth/train --aug crop --out crop.png\n"
        "  ugs-augment --aug rotation --max-angle 30 --n 12 --seed 1 --out rotation.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("json", nargs="?", metavar="DATASET_JSON",
                        help=f"COCO json (default: {DEFAULT_JSON} if it exists, else a generated set)")
    parser.add_argument("images", nargs="?", metavar="IMAGE_DIR",
                        help=f"directory the json's file names are relative to (default: {DEFAULT_IMAGES})")
    parser.add_argument("--aug", required=True, choices=AUGMENTATIONS, help="the augmentation to show")
    parser.add_argument("--out", required=True, metavar="PNG", help="output PNG")
    parser.add_argument("--n", type=int, default=8, help="samples in the grid (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cols", type=int, default=None, help="grid columns (default ceil(sqrt(n)))")
    parser.add_argument("--scale", type=int, default=2,
                        help="integer upscaling of each cell, so that small boxes are visible (default 2)")
    group = parser.add_argument_group("augmentation settings (as in the augment: config block)")
    group.add_argument("--mosaic-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="mosaic canvas in px (default: the sampled image's size)")
    group.add_argument("--min-area-ratio", type=float, default=0.5,
                       help="mosaic: keep boxes with at least this share visible (default 0.5)")
    group.add_argument("--crop-size", type=float, nargs=2, metavar=("H", "W"), default=(0.5, 0.5),
                       help="crop: fractions of the image (default 0.5 0.5)")
    group.add_argument("--small-object-max-side", type=float, default=32.0,
                       help="crop: boxes with a longer side up to this (px) are never cut (default 32)")
    group.add_argument("--max-angle", type=float, default=15.0,
                       help="rotation: angle uniform in [-a, a] degrees (default 15)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    problems = [
        (args.n < 1, f"--n: expected at least 1, got {args.n}"),
        (args.cols is not None and args.cols < 1, f"--cols: expected at least 1, got {args.cols}"),
        (args.scale < 1, f"--scale: expected at least 1, got {args.scale}"),
        (args.mosaic_size is not None and min(args.mosaic_size) < 1,
         f"--mosaic-size: expected positive pixels, got {args.mosaic_size}"),
        (not 0 <= args.min_area_ratio <= 1, f"--min-area-ratio: expected [0, 1], got {args.min_area_ratio}"),
        (not all(0 < v <= 1 for v in args.crop_size),
         f"--crop-size: expected fractions in (0, 1], got {args.crop_size}"),
        (args.small_object_max_side < 0, f"--small-object-max-side: expected >= 0, got {args.small_object_max_side}"),
        (not 0 <= args.max_angle <= 180, f"--max-angle: expected [0, 180], got {args.max_angle}"),
        ((args.json is None) != (args.images is None), "give both DATASET_JSON and IMAGE_DIR, or neither"),
        (not args.out.lower().endswith(".png"), f"--out: expected a .png path, got {args.out}"),
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"{PROG}: {message}")


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-augment: ...``)."""
    from ugs_d2.data import augment_preview as preview

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    _check_args(args)
    aug = PreviewAugmentation(args.aug, args.mosaic_size and tuple(args.mosaic_size), args.min_area_ratio,
                              tuple(args.crop_size), args.small_object_max_side, args.max_angle)
    workdir = tempfile.mkdtemp(prefix="ugs-augment-")
    try:
        json_path, image_dir = preview.preview_dataset(args.json, args.images, workdir,
                                                       log=lambda m: print(f"[{PROG}] {m}", file=sys.stderr))
        records = preview.annotated_records(json_path, image_dir)
        mapper = preview.build_preview_mapper(aug, records, args.seed)
        samples = preview.augmented_samples(mapper, records, args.n, args.seed, desc=PROG)
        grid = preview.render_grid(samples, args.aug, args.cols, args.scale)
        write_atomic(args.out, lambda f: grid.save(f, format="PNG"))
    except (DatasetError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    boxes = sum(len(s["boxes"]) for s in samples)
    print(f"[{PROG}] wrote {args.out}: {len(samples)} {args.aug} samples of {json_path}, {boxes} boxes")
    if args.aug == "crop":
        kept = sum(s["image"].shape[:2] == s["input_hw"] for s in samples)
        print(f"[{PROG}] {kept} of {len(samples)} samples left uncropped (no window avoided the small boxes)")


main = console_entry(PROG, _main)


if __name__ == "__main__":
    main()
