"""``ugs-predict``: run a trained ``ugs-train`` model on images; COCO-format detections.

    ugs-predict outputs/default/tiling=on datasets/synth/val --out dets.json --tiled
    ugs-predict RUN_DIR big_scene.jpg --out dets.json --tiled --tile 512 --batch-size 8 --vis vis/

* the model is ``RUN_DIR/detectron2_config.yaml`` + ``RUN_DIR/model_final.pth`` (or ``--weights``);
* without ``--tiled`` each image is resized to the run's test size (as in evaluation); with
  ``--tiled`` it is cut into overlapping windows that go through the model ``--batch-size`` at a
  time at native resolution (:class:`ugs_d2.inference.tiled.TiledPredictor`); ``--tile`` and
  ``--overlap`` default to the run's ``tiling.*`` when it trained on tiles;
* a tiled image keeps at most ``--max-detections`` detections after merging; by default a
  per-area budget: the run's per-image limit (``model.roi.detections_per_image``) for every
  tile-sized area of the image, ``limit * ceil(height * width / tile^2)``; a line says when
  the budget dropped any;
* the checkpoint must fit the run's model exactly (no missing or reshaped parameter), else one
  line names the first mismatching keys;
* the output is a json list of ``{"image_id", "file_name", "category_id", "bbox": [x, y, w, h],
  "score"}`` (COCO results format), written atomically. ``category_id`` is the dataset's own id
  when the run's dataset json can be found (from ``RUN_DIR/.hydra/config.yaml``, or
  ``--dataset-json``), else the model's contiguous class index (a warning says so);
  ``image_id`` is present when the image's file name is in that json;
* ``--vis DIR`` also writes one PNG per image with the boxes drawn.
"""
import argparse
import colorsys
import io
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

from ugs_d2.fileio import output_problem

__all__ = ["main", "detection_budget", "find_images", "to_coco_results"]

PROG = "ugs-predict"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(paths: List[str]) -> List[str]:
    """Image files from files and directories (a directory: its images, sorted, not recursive).

    Raises:
        FileNotFoundError: a path does not exist, or no image was found (one line).
    """
    images = []
    for path in paths:
        if os.path.isdir(path):
            images += sorted(
                os.path.join(path, name) for name in os.listdir(path) if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or directory")
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(paths)}")
    return images


def detection_budget(image_hw: Tuple[int, int], tile: int, per_tile: int) -> int:
    """Detections a tiled image may keep by default: ``per_tile`` for every tile-sized area,
    ``per_tile * ceil(height * width / tile^2)`` (at least ``per_tile``).

    >>> detection_budget((1800, 2400), 512, 100)   # 16.5 tile areas
    1700
    """
    height, width = image_hw
    return per_tile * max(1, -(-(int(height) * int(width)) // (int(tile) * int(tile))))


def to_coco_results(instances, image_key: Dict, category_ids: Optional[List[int]]) -> List[dict]:
    """detectron2 ``Instances`` -> COCO result dicts (``bbox`` as x, y, w, h).

    Args:
        image_key: fields identifying the image (``image_id`` and/or ``file_name``).
        category_ids: contiguous class index -> dataset category id (None: keep the index).
    """
    boxes = instances.pred_boxes.tensor.detach().cpu().tolist()
    scores = instances.scores.detach().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().tolist()
    results = []
    for (x0, y0, x1, y1), score, cls in zip(boxes, scores, classes):
        results.append({
            **image_key,
            "category_id": category_ids[cls] if category_ids is not None else int(cls),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(score, 5),
        })
    return results


def _check_output(option: str, path: str, directory: bool) -> None:
    """An output must be creatable: of the right kind if it exists, under a writable directory."""
    problem = output_problem(path, directory)
    if problem:
        raise SystemExit(f"{PROG}: {option} {path} {problem}")


def _dataset_info(run_dir: str,
                  dataset_json: Optional[str]) -> Tuple[Optional[List[int]], List[str], Dict[str, int], str]:
    """``(category ids by contiguous index, class names, {file basename: image id}, note)``.

    From ``--dataset-json``, else the test split of the run's dataset when its files exist.
    """
    from ugs_d2.data.coco_json import DatasetError, read_coco_json

    if dataset_json is None:
        hydra_cfg = os.path.join(run_dir, ".hydra", "config.yaml") if os.path.isdir(run_dir) else ""
        if not os.path.isfile(hydra_cfg):
            return None, [], {}, "no .hydra/config.yaml in the run directory"
        try:
            from detectron2.data import MetadataCatalog
            from omegaconf import OmegaConf

            from ugs_d2.data.datasets import register_dataset, split_names

            cfg = OmegaConf.load(hydra_cfg)
            if not os.path.isdir(os.path.expanduser(str(cfg.dataset.root))):
                return None, [], {}, f"dataset.root {cfg.dataset.root} not found from {os.getcwd()}"
            register_dataset(cfg.dataset)
            dataset_json = MetadataCatalog.get(split_names(cfg.dataset)[1][0]).get("json_file")
        except (DatasetError, OSError, KeyError, AttributeError) as e:
            return None, [], {}, f"the run's dataset could not be read ({str(e).splitlines()[0]})"
        if not dataset_json:
            return None, [], {}, "the run's test split has no COCO json"
    data = read_coco_json(dataset_json)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    image_ids = {os.path.basename(str(i["file_name"])): i["id"] for i in data["images"]}
    return [c["id"] for c in categories], [c["name"] for c in categories], image_ids, dataset_json


def _draw(image_bgr, instances, class_names: List[str], path: str) -> None:
    """Boxes, class names and scores on the image; PNG written atomically."""
    from PIL import Image, ImageDraw

    from ugs_d2.fileio import write_atomic

    image = Image.fromarray(image_bgr[:, :, ::-1].copy())
    draw = ImageDraw.Draw(image)
    boxes = instances.pred_boxes.tensor.cpu().tolist()
    for box, score, cls in zip(boxes, instances.scores.cpu().tolist(), instances.pred_classes.cpu().tolist()):
        r, g, b = colorsys.hsv_to_rgb((cls * 0.618) % 1.0, 0.9, 1.0)  # distinct hue per class
        color = (int(r * 255), int(g * 255), int(b * 255))
        draw.rectangle(box, outline=color, width=1)
        name = class_names[cls] if cls < len(class_names) else str(cls)
        draw.text((box[0], max(0, box[1] - 10)), f"{name} {score:.2f}", fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, lambda f: f.write(buffer.getvalue()))


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


def _predict(args: argparse.Namespace) -> None:
    try:
        images = find_images(args.images)
    except FileNotFoundError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    if args.score_thresh is not None and not 0 <= args.score_thresh <= 1:
        raise SystemExit(f"{PROG}: --score-thresh: expected a number in [0, 1], got {args.score_thresh}")
    _check_output("--out", args.out, directory=False)  # before the model runs, not after
    if args.vis:
        _check_output("--vis", args.vis, directory=True)

    import torch
    from tqdm import tqdm

    from ugs_d2.config import resolve_device
    from ugs_d2.data.coco_json import DatasetError
    from ugs_d2.data.tiling import allow_large_images
    from ugs_d2.fileio import write_json_atomic
    from ugs_d2.inference.tiled import TiledPredictor, load_model, predict_whole_image

    try:
        model = load_model(args.run_dir, args.weights, device=resolve_device(args.device))
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{PROG}: {str(e).splitlines()[0]}") from None
    if args.score_thresh is not None and hasattr(model, "roi_heads"):
        # below the run's own threshold the model would have dropped the boxes already
        model.roi_heads.box_predictor.test_score_thresh = args.score_thresh
    run_tiling = model.ugs_cfg.get("TILING")
    trained_on_tiles = run_tiling is not None and bool(run_tiling.TRAIN.ENABLED)
    if args.tile is None:
        args.tile = int(run_tiling.TILE) if trained_on_tiles else 512
    if args.overlap is None:
        args.overlap = float(run_tiling.OVERLAP) if trained_on_tiles else 0.2
    if trained_on_tiles and not args.tiled:  # the guide: a model trained on tiles must see tiles
        print(f"[{PROG}] warning: the run trained on {run_tiling.TILE} px tiles; without --tiled it "
              "sees whole resized images", file=sys.stderr)
    predictor = None
    if args.max_detections is not None and args.max_detections < 1:
        raise SystemExit(f"{PROG}: --max-detections: expected a positive integer, got {args.max_detections}")
    if args.max_detections is not None and not args.tiled:
        raise SystemExit(f"{PROG}: --max-detections needs --tiled (a whole image keeps the run's own limit)")
    per_tile = int(model.ugs_cfg.TEST.DETECTIONS_PER_IMAGE)
    if args.tiled:
        try:
            predictor = TiledPredictor(  # the budget is applied below, per image
                model, args.tile, args.overlap, args.batch_size, args.full_image, args.merge,
                args.match_metric, args.match_threshold, args.upscale, max_detections=None,
            )
        except ValueError as e:
            name, _, rest = str(e).partition(":")
            raise SystemExit(f"{PROG}: --{name.replace('_', '-')}:{rest}") from None
    try:
        category_ids, class_names, image_ids, source = _dataset_info(args.run_dir, args.dataset_json)
    except DatasetError as e:
        raise SystemExit(f"{PROG}: --dataset-json: {e}") from None
    if category_ids is None:
        print(f"[{PROG}] warning: category_id is the model's class index: {source}", file=sys.stderr)
    elif len(category_ids) != model.ugs_cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise SystemExit(
            f"{PROG}: {source} has {len(category_ids)} categories, the model "
            f"{model.ugs_cfg.MODEL.ROI_HEADS.NUM_CLASSES} classes"
        )

    from detectron2.data.detection_utils import read_image

    results, total_s, model_s = [], 0.0, 0.0
    cut_images, cut_kept, cut_found = 0, 0, 0
    for path in tqdm(images, desc=PROG, unit="img"):
        try:
            with allow_large_images():
                image = read_image(path, format="BGR")
        except OSError as e:
            raise SystemExit(f"{PROG}: {path}: cannot read the image ({e})") from None
        start = time.perf_counter()
        if predictor is not None:
            instances = predictor(image)
            model_s += predictor.last_timing["model_s"]
            budget = args.max_detections or detection_budget(image.shape[:2], args.tile, per_tile)
            if len(instances) > budget:
                cut_images, cut_kept, cut_found = cut_images + 1, cut_kept + budget, cut_found + len(instances)
                top = torch.argsort(instances.scores, descending=True, stable=True)[:budget]
                instances = instances[top]
        else:
            channels = image[:, :, ::-1] if model.ugs_input_format == "RGB" else image
            tensor = torch.as_tensor(channels.transpose(2, 0, 1).astype("float32"))
            instances, seconds = predict_whole_image(model, tensor, model.ugs_test_size)
            model_s += seconds
        total_s += time.perf_counter() - start
        if args.score_thresh is not None:
            instances = instances[instances.scores >= args.score_thresh]
        key = {"file_name": os.path.abspath(path)}
        if os.path.basename(path) in image_ids:
            key = {"image_id": image_ids[os.path.basename(path)], **key}
        results += to_coco_results(instances, key, category_ids)
        if args.vis:
            stem = os.path.splitext(os.path.basename(path))[0]
            _draw(image, instances, class_names, os.path.join(args.vis, f"{stem}.png"))
    write_json_atomic(args.out, results)
    if cut_images:
        source = ("--max-detections" if args.max_detections
                  else f"{per_tile} per {args.tile} px tile area; --max-detections")
        print(f"[{PROG}] warning: the detection budget ({source}) kept {cut_kept} of {cut_found} "
              f"detections on {cut_images} image{'s' if cut_images != 1 else ''}", file=sys.stderr)
    share = 100 * (1 - model_s / total_s) if total_s > 0 else 0.0
    mode = (f"tiled {args.tile} px, overlap {args.overlap}, batch {predictor.batch_size}" if args.tiled
            else "whole image")
    print(f"[{PROG}] {len(images)} image{'s' if len(images) != 1 else ''} ({mode}): {len(results)} detections in "
          f"{total_s:.2f} s, {share:.1f}% outside the model's forward")
    print(f"[{PROG}] wrote {args.out}")


if __name__ == "__main__":
    main()
