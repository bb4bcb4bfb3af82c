"""``ugs-anchors``: learn detectron2 FPN anchors for a COCO dataset (YOLOv5 autoanchor, per level).

    ugs-anchors datasets/synth/annotations/train.json --out configs/anchors/synth256.yaml
    ugs-train +anchors=synth256

Reads the boxes at the size the model sees them (``--input-size``, default: the ``--base``
model preset's test size), reports YOLOv5's anchors/target, best possible recall (BPR) and
fitness of the ``--base`` anchors, learns anchors per FPN level (k-means, then evolution; the
level rule and the metric are documented in :mod:`ugs_d2.anchors`), reports the same numbers for
the anchors detectron2 will generate from the result, and writes a Hydra override file
(``# @package model.anchors`` with ``sizes`` and ``aspect_ratios``). Every layout of
``--per-level`` anchors as sizes x ratios (3: 1x3 and 3x1) is tried and the fittest kept,
unless ``--layout`` fixes one. The run and its report are :mod:`ugs_d2.analysis.anchors`.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from ugs_d2 import anchors as A
from ugs_d2.analysis.anchors import (
    PROG,
    AnchorOptions,
    AnchorsError,
    base_anchors,
    check_options,
    learn_and_report,
    usage_lines,
)
from ugs_d2.cli.validate import CONFIG_DIR
from ugs_d2.data.coco_json import DatasetError
from ugs_d2.interrupts import console_entry

__all__ = ["load_base", "learn", "main"]


def load_base(base: str, base_ratios: Optional[str], strides: Sequence[float]) -> Dict[str, Any]:
    """The "before" anchors of ``--base``: a ``configs/model`` preset name, ``detectron2`` or
    explicit sizes (:func:`ugs_d2.analysis.anchors.base_anchors`)."""
    return base_anchors(base, base_ratios, strides, os.path.join(CONFIG_DIR, "model"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Learn anchors for detectron2's per-FPN-level anchor generator from a COCO json: k-means "
            "on the box sizes at input scale, then evolutionary refinement (YOLOv5 autoanchor), each "
            "level's anchor sizes kept within [stride, 8 x stride]. Reports anchors/target, best "
            "possible recall and fitness before and after, and writes a Hydra override file."
        ),
        epilog=(
            "examples:\n"
            "  ugs-anchors datasets/synth/annotations/train.json --out configs/anchors/synth256.yaml\n"
            "  ugs-train +anchors=synth256\n"
            "  ugs-anchors train.json --base faster_rcnn_r50_fpn --per-level 9 --out /tmp/a.yaml\n"
            "  ugs-anchors train.json --base '[[8],[16],[32],[64],[128]]' --input-size 512 --thr 3\n"
        ),
    )
    parser.add_argument("json", metavar="DATASET_JSON", help="COCO json (the training split)")
    parser.add_argument("--levels", default="p2..p6",
                        help="FPN levels, pA..pB or p2,p3,...; stride of pN = 2^N (default p2..p6, "
                        "what this project's models use)")
    parser.add_argument("--per-level", type=int, default=3, metavar="N", help="anchors per level (default 3)")
    parser.add_argument("--layout", default="auto",
                        help="SIZESxRATIOS per level, e.g. 3x1 or 1x3 (default auto: try each, keep the fittest)")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="SIZE",
                        help="MIN [MAX]: detectron2's ResizeShortestEdge (shorter side MIN, longer side at most MAX, "
                        "default no cap); default: the --base preset's test size")
    parser.add_argument("--base", default="tiny_r18_fpn",
                        help="the anchors to compare with: a configs/model preset (default tiny_r18_fpn), detectron2 "
                        "(its FPN defaults: 8 x stride, ratios 0.5,1,2, 800/1333), or sizes like "
                        "'[[8],[16],[32],[64],[128]]' (a flat list is used on every level, as detectron2 does)")
    parser.add_argument("--base-ratios", default=None,
                        help="aspect ratios for explicit --base sizes (default [[0.5,1.0,2.0]])")
    parser.add_argument("--generations", type=int, default=1000, help="evolution generations per layout (default 1000)")
    parser.add_argument("--thr", type=float, default=A.DEFAULT_THR,
                        help="YOLOv5 anchor_t: a side may be up to thr x off (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="k-means and evolution seed (default 0)")
    parser.add_argument("--out", default=None, metavar="FILE.yaml",
                        help="override file (default <json stem>_anchors.yaml next to the json); in configs/anchors/ "
                        "it is usable as ugs-train +anchors=<stem>")
    parser.add_argument("--objective", choices=["grid", "ratio"], default="grid",
                        help="what the evolution maximises: grid (default): detectron2's matching, the share of boxes "
                        "whose best anchor on its level's real grid (stride, --anchor-offset) reaches IoU --iou, with "
                        "no size bucket below detectron2's defaults; ratio: YOLOv5's ratio fitness (--thr)")
    parser.add_argument("--iou", type=float, default=A.DEFAULT_IOU,
                        help="grid objective: the RPN matcher's positive IoU threshold (default 0.7, detectron2's)")
    parser.add_argument("--anchor-offset", type=float, default=A.D2_OFFSET,
                        help="detectron2's MODEL.ANCHOR_GENERATOR.OFFSET (default 0.0, detectron2's default)")
    parser.add_argument("--size-divisibility", type=int, default=A.SIZE_DIVISIBILITY,
                        help="inputs are padded to a multiple of this (default 32, detectron2's FPN; 0: no padding)")
    parser.add_argument("--no-floor", action="store_true",
                        help="grid objective: allow size buckets to end below detectron2's defaults")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def learn(args: argparse.Namespace, print_line=print) -> Dict[str, Any]:
    """Everything the CLI does except argument parsing; returns the numbers and the file text."""
    options = AnchorOptions(**vars(args))
    plan = check_options(options)
    result = learn_and_report(options, plan, load_base(options.base, options.base_ratios, plan.strides), print_line)
    for line in usage_lines(plan.out, result["sizes"], result["aspect_ratios"], os.path.join(CONFIG_DIR, "anchors")):
        print_line(line)
    return result


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-anchors: ...``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        learn(args)
    except (AnchorsError, DatasetError, OSError) as e:
        raise SystemExit(f"{PROG}: {e}") from None


main = console_entry(PROG, _main)


if __name__ == "__main__":
    main()
