"""``ugs-health``: a health report of a COCO detection json (counts, sizes, suspicious boxes).

    ugs-health datasets/synth/annotations/train.json            # -> .../train_health/
    ugs-health train.json --out /tmp/train_health

prints the report (markdown) and writes ``DIR/health.md``, ``DIR/class_counts.png`` and
``DIR/box_sizes.png``, all atomically; the default DIR is ``<json stem>_health/`` next to the
json. What each count means: :mod:`ugs_d2.analysis.health`.
"""
import argparse
import sys
from typing import List, Optional

from ugs_d2.analysis.health import write_health
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.interrupts import console_entry

__all__ = ["main"]

PROG = "ugs-health"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Health report of a COCO detection json: boxes per class, box sizes in COCO and "
        "AI-TOD buckets, tiny, edge-touching, degenerate and duplicate boxes, empty images.",
    )
    parser.add_argument("json", metavar="DATASET_JSON", help="COCO json")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default: <json stem>_health/ next to the json)")
    parser.add_argument("--quiet", action="store_true", help="do not print the report")
    return parser


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-health: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = write_health(args.json, args.out)
    except (DatasetError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    if not args.quiet:
        print(written["markdown"], end="")
    for path in written["paths"]:
        print(f"[{PROG}] wrote {path}", file=sys.stderr)


main = console_entry(PROG, _main)


if __name__ == "__main__":
    main()
