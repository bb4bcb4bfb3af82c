"""``ugs-predict``: run a trained ``ugs-train`` model on images; COCO-format detections.

    ugs-predict outputs/default/tiling=on datasets/synth/val --out dets.json --tiled
    ugs-predict RUN_DIR big_scene.jpg --out dets.json --tiled --tile 512 --batch-size 8 --vis vis/

The model, the tiling, the detection budget, the category ids and the output format:
:mod:`ugs_d2.inference.predict`. Errors are one line; the json is written atomically.
"""
import argparse
import sys
from typing import List, Optional

from ugs_d2.data.coco_json import DatasetError
from ugs_d2.fileio import output_problem, write_json_atomic
from ugs_d2.inference import predict as P

__all__ = ["main"]

PROG = "ugs-predict"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Detect objects with a trained ugs-train run; write COCO-format detections "
        "(optionally tiled: overlapping windows, batched through the model, merged).",
        epilog="examples:\n"
        "  ugs-predict outputs/default/default datasets/synth/val --out dets.json\n"
        "  ugs-predict RUN_DIR scene.jpg --out dets.json --tiled --tile 512 --overlap 0.2 "
        "--batch-size 8 --merge nmm --match-metric ios --vis vis/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="ugs-train run directory (detectron2_config.yaml)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or directories of images")
    parser.add_argument("--out", required=True, metavar="JSON", help="detections (COCO results list)")
    parser.add_argument("--weights", default=None, help="checkpoint (default: RUN_DIR/model_final.pth)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--dataset-json", default=None, metavar="JSON",
                        help="COCO json whose category ids (and image ids) to use "
                        "(default: the run's test split, if found)")
    parser.add_argument("--score-thresh", type=float, default=None,
                        help="keep detections scoring at least this (default: the run's score_thresh_test)")
    parser.add_argument("--vis", default=None, metavar="DIR", help="also write one PNG per image with boxes")
    tiled = parser.add_argument_group("tiled inference")
    tiled.add_argument("--tiled", action="store_true", help="cut each image into overlapping windows")
    tiled.add_argument("--tile", type=int, default=None,
                       help="window side in pixels (default: the run's tiling.tile if it trained on "
                       "tiles, else 512)")
    tiled.add_argument("--overlap", type=float, default=None,
                       help="in [0, 1) (default: the run's tiling.overlap if it trained on tiles, else 0.2)")
    tiled.add_argument("--batch-size", type=int, default=None,
                       help="windows per forward call (default: 1 on CPU, 8 on CUDA)")
    tiled.add_argument("--max-detections", type=int, default=None, metavar="N",
                       help="detections kept per whole image after merging (default: the run's "
                       "per-image limit for every tile-sized area of the image)")
    tiled.add_argument("--full-image", action="store_true",
                       help="add a pass of the whole image at the run's test size")
    tiled.add_argument("--upscale", action="store_true", help="resize windows to the run's test size")
    tiled.add_argument("--merge", default="nms", choices=("nms", "nmm"),
                       help="nms, or nmm: greedy non-maximum merging (default: nms)")
    tiled.add_argument("--match-metric", default="iou", choices=("iou", "ios"),
                       help="iou, or ios: intersection over the smaller box (default: iou)")
    tiled.add_argument("--match-threshold", type=float, default=0.5, help="default: 0.5")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line (``ugs-predict: ...``), Ctrl-C too."""
    from ugs_d2.interrupts import interruptible

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    with interruptible(PROG, "nothing was written"):
        _predict(args)


def _check_args(args: argparse.Namespace) -> List[str]:
    """The images; every option that can be checked before the model loads."""
    try:
        images = P.find_images(args.images)
    except FileNotFoundError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    if args.score_thresh is not None and not 0 <= args.score_thresh <= 1:
        raise SystemExit(f"{PROG}: --score-thresh: expected a number in [0, 1], got {args.score_thresh}")
    for option, path, directory in (("--out", args.out, False), ("--vis", args.vis, True)):
        problem = path and output_problem(path, directory)  # before the model runs, not after
        if problem:
            raise SystemExit(f"{PROG}: {option} {path} {problem}")
    return images


def _load(args: argparse.Namespace):
    """The run's model (``--score-thresh`` set on it) and, with ``--tiled``, its TiledPredictor."""
    from ugs_d2.inference.tiled import TiledPredictor, TilingSpec

    try:
        model = P.load_for_prediction(args.run_dir, args.weights, args.device, args.score_thresh)
    except P.PredictError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    args.tile, args.overlap, trained_tile = P.run_tiling(model, args.tile, args.overlap)
    if trained_tile is not None and not args.tiled:  # the guide: a model trained on tiles must see tiles
        print(f"[{PROG}] warning: the run trained on {trained_tile} px tiles; without --tiled it "
              "sees whole resized images", file=sys.stderr)
    if args.max_detections is not None and args.max_detections < 1:
        raise SystemExit(f"{PROG}: --max-detections: expected a positive integer, got {args.max_detections}")
    if args.max_detections is not None and not args.tiled:
        raise SystemExit(f"{PROG}: --max-detections needs --tiled (a whole image keeps the run's own limit)")
    if not args.tiled:
        return model, None
    try:
        return model, TiledPredictor(model, TilingSpec(  # the budget is applied per image by predict_images
            args.tile, args.overlap, args.batch_size, args.full_image, args.merge,
            args.match_metric, args.match_threshold, args.upscale, max_detections=None,
        ))
    except ValueError as e:
        name, _, rest = str(e).partition(":")
        raise SystemExit(f"{PROG}: --{name.replace('_', '-')}:{rest}") from None


def _predict(args: argparse.Namespace) -> None:
    images = _check_args(args)
    model, predictor = _load(args)
    try:
        dataset = P.dataset_info(args.run_dir, args.dataset_json)
    except DatasetError as e:
        raise SystemExit(f"{PROG}: --dataset-json: {e}") from None
    if dataset.category_ids is None:
        print(f"[{PROG}] warning: category_id is the model's class index: {dataset.source}", file=sys.stderr)
    per_tile = int(model.ugs_cfg.TEST.DETECTIONS_PER_IMAGE)
    settings = P.PredictSettings(args.tile, per_tile, args.score_thresh, args.max_detections, args.vis)
    try:
        P.check_classes(dataset, model.ugs_cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        run = P.predict_images(model, predictor, images, settings, dataset, desc=PROG)
    except P.PredictError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    write_json_atomic(args.out, run.results)
    if run.cut_images:
        source = ("--max-detections" if args.max_detections
                  else f"{per_tile} per {args.tile} px tile area; --max-detections")
        print(f"[{PROG}] warning: the detection budget ({source}) kept {run.cut_kept} of {run.cut_found} "
              f"detections on {run.cut_images} image{'s' if run.cut_images != 1 else ''}", file=sys.stderr)
    share = 100 * (1 - run.model_s / run.total_s) if run.total_s > 0 else 0.0
    mode = (f"tiled {args.tile} px, overlap {args.overlap}, batch {predictor.batch_size}" if args.tiled
            else "whole image")
    print(f"[{PROG}] {len(images)} image{'s' if len(images) != 1 else ''} ({mode}): {len(run.results)} detections in "
          f"{run.total_s:.2f} s, {share:.1f}% outside the model's forward")
    print(f"[{PROG}] wrote {args.out}")


if __name__ == "__main__":
    main()
