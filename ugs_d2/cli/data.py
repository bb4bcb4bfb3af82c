"""``ugs-data``: dataset tools.

    ugs-data synth --out datasets/synth --train 800 --val 200 --seed 0

writes the embedded synthetic small-object dataset (COCO json + PNG images, see
:mod:`ugs_d2.data.synth`) and prints its statistics.

    ugs-data visdrone /data/VisDrone [--out DIR] [--keep-others]

converts the official VisDrone2019-DET split folders to COCO json (see
:mod:`ugs_d2.data.visdrone`) for ``ugs-train dataset=visdrone``;

    ugs-data soda-a /data/SODA-A [--out DIR] [--keep-ignore]

the SODA-A per-image jsons to COCO json with oriented boxes (:mod:`ugs_d2.data.soda_a`).
Each converter's arguments are in its own module (``cli/data_visdrone.py``, ``cli/data_soda_a.py``).
"""
import argparse
import sys
from typing import List, Optional

from ugs_d2.cli import data_soda_a, data_visdrone
from ugs_d2.cli.data_arguments import check_output_dir, non_negative_int, positive_int

__all__ = ["main", "build_parser"]


def _synth(args: argparse.Namespace) -> None:
    from ugs_d2.analysis.health import format_statistics
    from ugs_d2.data import synth

    check_output_dir(args.out)
    try:
        config = synth.SynthConfig(image_size=args.image_size, oriented=args.oriented)
        paths = synth.generate(args.out, args.train, args.val, args.seed, config, overwrite=args.force)
    except FileExistsError as e:
        raise SystemExit(f"ugs-data: {e} (use --force to overwrite)") from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"ugs-data: {e}") from None
    print(f"[ugs-data] wrote {paths['root']}")
    for split in ("train", "val"):
        print("[ugs-data] " + format_statistics(split, synth.dataset_statistics(paths[f"{split}_json"])))


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
    synth.add_argument("--train", type=non_negative_int, default=800, help="training images (default 800)")
    synth.add_argument("--val", type=non_negative_int, default=200, help="validation images (default 200)")
    synth.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    synth.add_argument("--image-size", type=positive_int, default=256, help="image side in px (default 256)")
    synth.add_argument("--oriented", action="store_true",
                       help="oriented objects: shapes turned by U(-90, 90) degrees, and rbox (XYWHA) per object")
    synth.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")
    synth.set_defaults(func=_synth)

    data_visdrone.add_parser(commands)
    data_soda_a.add_parser(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    from ugs_d2.interrupts import interruptible

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with interruptible("ugs-data", "nothing was written; rerun the same command"):
        args.func(args)


if __name__ == "__main__":
    main()
