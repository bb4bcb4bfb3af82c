"""``ugs-augment``: look at a small-object augmentation before training with it (a PNG grid).

    ugs-augment --aug mosaic --out mosaic.png                  # the embedded dataset
    ugs-augment train.json images/ --aug crop --crop-size 0.5 0.5 --n 12 --out crop.png
    ugs-augment --aug rotation --max-angle 30 --seed 1 --out rotation.png

Each cell is one training sample after the augmentation (always applied: probability 1), drawn
through the same mapper as training (:class:`ugs_d2.data.mapper.AugmentingDatasetMapper`, without
resize or flip) with its boxes outlined in one colour per class. The caption names the source
image id(s); ``(no crop)`` marks a sample where no window avoided the small boxes. Without
``DATASET_JSON IMAGE_DIR`` it uses ``datasets/synth`` (``annotations/train.json``, ``train/``)
when that exists, else a 16-image synthetic set generated into a temporary directory. The same
``--seed`` gives the same grid. Written atomically.
"""
import argparse
import math
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ugs_d2.data.coco_json import DatasetError
from ugs_d2.fileio import write_atomic

__all__ = ["AUGMENTATIONS", "augmented_samples", "render_grid", "main"]

PROG = "ugs-augment"
AUGMENTATIONS = ("mosaic", "crop", "rotation")
DEFAULT_JSON = os.path.join("datasets", "synth", "annotations", "train.json")
DEFAULT_IMAGES = os.path.join("datasets", "synth", "train")
FALLBACK_IMAGES = 16  # images of the synthetic set generated when no dataset is given
# one outline colour per class (RGB), cycled
PALETTE = ((0, 255, 0), (255, 64, 64), (64, 160, 255), (255, 220, 0), (255, 0, 255), (0, 255, 255),
           (255, 140, 0), (180, 120, 255))


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


def _build_mapper(args: argparse.Namespace, records: Sequence[Dict]):
    """The training mapper with only the chosen augmentation, always applied."""
    from ugs_d2.data.augment import MosaicSettings, RandomRotationWithBoxes, SmallObjectSafeCrop
    from ugs_d2.data.mapper import MIN_BOX_SIDE, AugmentingDatasetMapper

    augmentations, mosaic = [], None
    if args.aug == "crop":
        augmentations.append(
            SmallObjectSafeCrop(tuple(args.crop_size), "relative", args.small_object_max_side)
        )
    elif args.aug == "rotation":
        augmentations.append(RandomRotationWithBoxes(args.max_angle))
    else:
        mosaic = MosaicSettings(
            prob=1.0,
            size=tuple(args.mosaic_size) if args.mosaic_size else None,
            min_area_ratio=args.min_area_ratio,
        )
    return AugmentingDatasetMapper(
        True,
        augmentations=augmentations,
        image_format="RGB",
        mosaic=mosaic,
        mosaic_pool=records if mosaic else None,
        seed=args.seed,
        min_box_side=MIN_BOX_SIDE,
    )


def augmented_samples(mapper, records: Sequence[Dict], n: int, seed: int, progress: bool = True) -> List[Dict]:
    """Map ``n`` records drawn (with ``seed``) from ``records``.

    Returns dicts with ``image`` (H, W, 3 uint8, the mapper's channel order), ``boxes`` (M, 4)
    XYXY, ``classes`` (M,), ``source_ids`` (the image ids it came from) and ``input_hw``.
    """
    from tqdm import tqdm

    np.random.seed(seed)  # detectron2-style augmentations draw from np.random
    picks = np.random.default_rng(seed).integers(len(records), size=n)
    samples = []
    for index in tqdm(picks, desc=PROG, unit="sample", disable=not progress):
        record = records[int(index)]
        out = mapper(record)
        instances = out["instances"]
        samples.append(
            {
                "image": out["image"].permute(1, 2, 0).numpy(),
                "boxes": instances.gt_boxes.tensor.numpy().astype(np.float64),
                "classes": instances.gt_classes.numpy(),
                "source_ids": out.get("mosaic_of", [record.get("image_id")]),
                "input_hw": (int(record["height"]), int(record["width"])),
            }
        )
    return samples


def _caption(sample: Dict, aug: str) -> str:
    ids = ",".join(str(i) for i in sample["source_ids"])
    text = f"{'mosaic ' if aug == 'mosaic' else 'image '}{ids}: {len(sample['boxes'])} boxes"
    if aug == "crop" and sample["image"].shape[:2] == sample["input_hw"]:
        text += " (no crop)"
    return text


def render_grid(samples: Sequence[Dict], aug: str, cols: Optional[int] = None, scale: int = 2):
    """A PIL image: one cell per sample (upscaled ``scale`` x, boxes outlined, a caption),
    ``cols`` per row (default ``ceil(sqrt(n))``)."""
    from PIL import Image, ImageDraw

    cols = cols or math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / cols)
    caption_h, pad = 14, 4
    cell_h = max(s["image"].shape[0] for s in samples) * scale + caption_h
    cell_w = max(s["image"].shape[1] for s in samples) * scale
    grid = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(grid)
    for k, sample in enumerate(samples):
        x0 = pad + (k % cols) * (cell_w + pad)
        y0 = pad + (k // cols) * (cell_h + pad)
        image = Image.fromarray(np.ascontiguousarray(sample["image"]))
        grid.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST), (x0, y0 + caption_h))
        for box, cls in zip(sample["boxes"], sample["classes"]):
            bx0, by0, bx1, by1 = (float(v) * scale for v in box)
            draw.rectangle(
                [x0 + bx0, y0 + caption_h + by0, x0 + bx1 - 1, y0 + caption_h + by1 - 1],
                outline=PALETTE[int(cls) % len(PALETTE)],
            )
        draw.text((x0 + 2, y0 + 1), _caption(sample, aug), fill=(230, 230, 230))
    return grid


def _dataset(args: argparse.Namespace, workdir: str) -> Tuple[str, str]:
    """(json, image dir): the given ones, datasets/synth, or a small generated set in workdir."""
    if args.json is not None:
        return args.json, args.images
    if os.path.isfile(DEFAULT_JSON) and os.path.isdir(DEFAULT_IMAGES):
        return DEFAULT_JSON, DEFAULT_IMAGES
    from ugs_d2.data import synth

    print(f"[{PROG}] no {DEFAULT_JSON}: generating {FALLBACK_IMAGES} synthetic images in {workdir}",
          file=sys.stderr)
    paths = synth.generate(os.path.join(workdir, "synth"), FALLBACK_IMAGES, 0, seed=0, progress=False)
    return paths["train_json"], paths["train_images"]


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-augment: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    _check_args(args)
    from ugs_d2.data.datasets import load_coco_detection

    workdir = tempfile.mkdtemp(prefix="ugs-augment-")
    try:
        json_path, image_dir = _dataset(args, workdir)
        if not os.path.isdir(image_dir):
            raise DatasetError(f"IMAGE_DIR {image_dir} is not a directory")
        records = [r for r in load_coco_detection(json_path, image_dir) if r["annotations"]]
        if not records:
            raise DatasetError(f"{json_path}: no image with annotations")
        mapper = _build_mapper(args, records)
        samples = augmented_samples(mapper, records, args.n, args.seed)
        grid = render_grid(samples, args.aug, args.cols, args.scale)
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


if __name__ == "__main__":
    main()
