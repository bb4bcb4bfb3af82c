"""``ugs-bench tiling``: the guide's tiling claim on large scenes, per model and inference mode.

    ugs-bench tiling --run full=outputs/default/RUN --run tiles=outputs/default/tiling=on \\
        --images 4 --size 3000x2000 --out results/tiling/large_images.md

Generates ``--images`` large synthetic scenes (:func:`ugs_d2.cli.bench_sahi.make_scene`: grids of
256 px scenes of the embedded generator, many objects under 16 px) with COCO ground truth, and
evaluates every ``--run`` model three ways:

* ``whole``: the whole scene resized to the model's test size (``--whole-size`` overrides it),
  one forward (:func:`ugs_d2.inference.tiled.predict_whole_image`);
* ``tiled``: ``--tile`` px windows at native resolution, ``--overlap``, NMS/IoU 0.5
  (:class:`~ugs_d2.inference.tiled.TiledPredictor`);
* ``tiled+full``: the same plus a whole-image pass, merged.

Reports COCO AP, AP50, APs and the AI-TOD tiny buckets (APvt < 8 px, APt 8-16 px) of every
(model, mode) pair, detections per image and wall time per image. The guide's claims are that a
model trained on tiles (``tiling=on``) must be run on tiles, and that tiling helps small objects
on large images: compare ``tiled`` against ``whole`` per model, and the two models per mode.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["MODES", "scene_coco", "run_tiling_bench", "format_report", "add_parser", "run_command_line"]

MODES = ("whole", "tiled", "tiled+full")
DEFAULT_TILE = 512  # --tile unset: for models trained on full images
METRICS = ("AP", "AP50", "APs", "APvt", "APt")


def scene_coco(scenes: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int) -> Dict[str, Any]:
    """COCO ground truth of ``(image, boxes XYXY, 0-based classes)`` scenes; image ids 1..N,
    category ids ``class + 1``."""
    images, annotations = [], []
    for i, (image, boxes, classes) in enumerate(scenes, start=1):
        images.append({"id": i, "file_name": f"scene_{i}.png", "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        for (x0, y0, x1, y1), c in zip(boxes.tolist(), classes.tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c) + 1,
                                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": f"class{k}"} for k in range(num_classes)]}


def _coco_results(instances, image_id: int) -> List[Dict[str, Any]]:
    boxes = instances.pred_boxes.tensor.detach().cpu().numpy().astype(np.float64)
    scores = instances.scores.detach().cpu().numpy().tolist()
    classes = instances.pred_classes.detach().cpu().numpy().tolist()
    return [{"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for b, s, c in zip(boxes, scores, classes)]


@contextlib.contextmanager
def whole_image_budget(model, max_dets: int):
    """Let one whole-image forward return up to ``max_dets`` detections (R-CNN models).

    A detectron2 model keeps ``TEST.DETECTIONS_PER_IMAGE`` (100 here) detections and
    ``RPN.POST_NMS_TOPK_TEST`` proposals per forward: fine for a tile, too few for a whole large
    scene with hundreds of objects. Inside the block the ROI heads keep ``max_dets`` and the RPN
    keeps at least ``max_dets`` proposals (``2 x max_dets`` before NMS); restored afterwards.
    Models without these attributes (RetinaNet, FCOS) are left as they are.
    """
    saved = []
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if predictor is not None and hasattr(predictor, "test_topk_per_image"):
        saved.append((predictor, "test_topk_per_image", predictor.test_topk_per_image))
        predictor.test_topk_per_image = max_dets
    rpn = getattr(model, "proposal_generator", None)
    for name, value in (("post_nms_topk", max_dets), ("pre_nms_topk", 2 * max_dets)):
        topk = getattr(rpn, name, None)
        if isinstance(topk, dict) and False in topk:
            saved.append((topk, False, topk[False]))
            topk[False] = max(topk[False], value)
    try:
        yield
    finally:
        for obj, key, value in reversed(saved):
            if isinstance(obj, dict):
                obj[key] = value
            else:
                setattr(obj, key, value)


def run_tiling_bench(runs: Sequence[Tuple[str, str]], num_images: int, size: Tuple[int, int], tile: int, overlap: float,
                     whole_size: Optional[Tuple[int, int]], max_dets: int, seed: int, device: str = "cpu",
                     log=lambda m: None) -> Dict[str, Any]:
    """Every (run, mode) pair on the same scenes; returns ``{"rows", "setup"}``."""
    import torch

    from ugs_d2.bench.common import BenchError
    from ugs_d2.cli.bench_sahi import make_scene
    from ugs_d2.evaluation.small_object import evaluate_detections
    from ugs_d2.inference.tiled import TiledPredictor, _to_model_tensor, load_model, predict_whole_image

    width, height = size
    log(f"{num_images} scenes of {width}x{height}")
    scenes = [make_scene(width, height, seed, i) for i in range(num_images)]
    rows = []
    for name, run_dir in runs:
        try:
            model = load_model(run_dir, device=device)
        except FileNotFoundError as e:
            raise BenchError(f"--run {name}={run_dir}: {e}") from None
        cfg = model.ugs_cfg
        num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE != "RetinaNet"
                          else cfg.MODEL.RETINANET.NUM_CLASSES)
        gt = scene_coco(scenes, num_classes)
        test_size = tuple(whole_size or model.ugs_test_size)
        if min(test_size) <= 0:  # input=native: no test resize; the whole pass then sees the scene as it is
            test_size = (min(height, width), max(height, width))
        tiling = cfg.get("TILING")
        trained_on_tiles = bool(tiling is not None and tiling.TRAIN.ENABLED)
        run_tile, run_overlap = tile, overlap
        if tile is None:  # a model trained on tiles gets its own tiles, others DEFAULT_TILE
            run_tile, run_overlap = ((int(tiling.TILE), float(tiling.OVERLAP)) if trained_on_tiles
                                     else (DEFAULT_TILE, overlap))
        for mode in MODES:
            predictor = None
            if mode != "whole":
                predictor = TiledPredictor(model, tile=run_tile, overlap=run_overlap, full_image=mode == "tiled+full",
                                           test_size=test_size, max_detections=max_dets)
            detections, times, cpu_times = [], [], []
            for i, (image_rgb, _, _) in enumerate(scenes, start=1):
                image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
                start, cpu_start = time.perf_counter(), time.process_time()
                if predictor is None:
                    tensor = _to_model_tensor(image_bgr, model.ugs_input_format)
                    with whole_image_budget(model, max_dets):
                        instances, _ = predict_whole_image(model, tensor, test_size)
                else:
                    instances = predictor(image_bgr)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
                detections += _coco_results(instances, i)
            log(f"{name} / {mode}: {len(detections)} detections, {statistics.median(times):.2f} s/image")
            metrics = ({k: float("nan") for k in METRICS} if not detections else
                       evaluate_detections(gt, detections, bucket_sets=["aitod"], max_dets=max_dets))
            rows.append({"run": name, "run_dir": run_dir, "mode": mode, "trained_on_tiles": trained_on_tiles,
                         "tile": None if mode == "whole" else (run_tile, run_overlap), "whole_size": test_size,
                         "metrics": {k: metrics.get(k, float("nan")) for k in METRICS},
                         "s_per_image": statistics.median(times), "cpu_s_per_image": statistics.median(cpu_times),
                         "detections_per_image": len(detections) / num_images})
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    gt_boxes = np.concatenate([b for _, b, _ in scenes]) if scenes else np.zeros((0, 4))
    sides = np.sqrt((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))
    return {"rows": rows, "setup": {
        "num_images": num_images, "size": size, "tile": tile, "overlap": overlap, "whole_size": whole_size,
        "max_dets": max_dets, "seed": seed, "device": device, "gt_per_image": len(gt_boxes) / max(num_images, 1),
        "share_under_16": float((sides < 16).mean()) if len(sides) else float("nan"),
        "share_under_8": float((sides < 8).mean()) if len(sides) else float("nan")}}


def format_report(outcome: Dict[str, Any], command: str, started: str, wall_s: float, loads: List[float]) -> str:
    s = outcome["setup"]
    width, height = s["size"]
    tiles = (f"per model (its own tiling.tile if trained on tiles, else {DEFAULT_TILE} px)"
             if s["tile"] is None else f"{s['tile']} px")
    lines = ["# Large scenes: whole image vs tiles vs tiles + whole image", "", "```", command, "```", "",
             f"Started {started}, took {wall_s:.0f} s"
             + (f"; load average {loads[0]:.2f} -> {loads[-1]:.2f}" if loads else "") + ".", "",
             f"- scenes: {s['num_images']} synthetic {width}x{height} images (grids of 256 px embedded scenes, seed "
             f"{s['seed']}), {s['gt_per_image']:.0f} objects per image, {100 * s['share_under_16']:.0f}% under 16 px "
             f"(sqrt of area), {100 * s['share_under_8']:.0f}% under 8 px",
             f"- tiles {tiles}"
             f", overlap {s['overlap']} unless the model's own, NMS/IoU 0.5; whole-image pass at "
             f"{'the model test size' if s['whole_size'] is None else s['whole_size']}; "
             f"COCOeval maxDets {s['max_dets']}; device {s['device']}", "",
             "| model | trained on tiles | mode | tiles | AP | AP50 | APs | APvt (<8 px) | APt (8-16 px) "
             "| detections/image | s/image | CPU s/image |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in outcome["rows"]:
        m = r["metrics"]
        cells = " | ".join("n/a" if v != v else f"{v:.2f}" for v in (m[k] for k in METRICS))
        tiles = "-" if r["tile"] is None else f"{r['tile'][0]} px, overlap {r['tile'][1]:g}"
        lines.append(f"| {r['run']} | {'yes' if r['trained_on_tiles'] else 'no'} | {r['mode']} | {tiles} | {cells} | "
                     f"{r['detections_per_image']:.0f} | {r['s_per_image']:.2f} | {r['cpu_s_per_image']:.2f} |")
    lines += ["", "AP values in percent (COCO, pooled over classes); APvt/APt: AI-TOD's area ranges. s/image: median "
              "wall time of one call (image array in, detections out); CPU s/image: this process's CPU time over it "
              "(steadier on a shared machine). Every mode keeps at most maxDets detections per image; the whole-image "
              "pass gets that budget too (`whole_image_budget`: ROI heads' top-k and the RPN's test proposals raised "
              "for the call), the tiles keep the model's own per-forward budget and are capped after merging."]
    return "\n".join(lines) + "\n"


def _parse_size(text: str) -> Tuple[int, int]:
    from ugs_d2.cli.bench_sahi import parse_size

    return parse_size(text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tiling`` on ``ugs-bench``'s subcommands."""
    parser = subparsers.add_parser(
        "tiling",
        help="large synthetic scenes: whole image vs tiled vs tiled+full, per model (AP, APs, tiny buckets, time)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        epilog=("examples:\n"
                "  ugs-bench tiling --run full=outputs/default/RUN --run tiles=outputs/default/tiling=on\n"
                "  ugs-bench tiling --run m=RUN --images 1 --size 1024x768 --out /tmp/t.md"),
    )
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="a ugs-train run directory (detectron2_config.yaml + model_final.pth) and its label; "
                        "repeatable")
    parser.add_argument("--images", type=int, default=4, help="number of scenes (default 4)")
    parser.add_argument("--size", default="3000x2000", help="scene size WIDTHxHEIGHT (default 3000x2000)")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile side in px for every model (default: a model trained on tiles uses its own "
                        "tiling.tile and overlap, the others 512)")
    parser.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default 0.2)")
    parser.add_argument("--whole-size", default=None, metavar="MIN,MAX",
                        help="test resize of the whole-image pass (default: each model's test size)")
    parser.add_argument("--max-dets", type=int, default=3000,
                        help="COCOeval maxDets and detections kept per image (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument("--out", default=os.path.join("results", "tiling", "large_images.md"),
                        help="markdown report, written atomically (default results/tiling/large_images.md)")
    return parser


def run_command_line(args: argparse.Namespace, argv: Sequence[str], invoked_as: str) -> Dict[str, Any]:
    from ugs_d2.bench.common import PROG, BenchError, run_and_report

    log = lambda m: print(f"[{PROG} tiling] {m}", file=sys.stderr, flush=True)  # noqa: E731

    def run() -> Dict[str, Any]:
        runs = []
        for spec in args.run:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise BenchError(f"--run: expected NAME=RUN_DIR, got {spec!r}")
            runs.append((name, path))
        if not runs:
            raise BenchError("--run: give at least one NAME=RUN_DIR")
        if args.images < 1:
            raise BenchError(f"--images must be >= 1, got {args.images}")
        size = _parse_size(args.size)  # BenchError naming --size
        whole = None
        if args.whole_size is not None:
            try:
                whole = tuple(int(v) for v in args.whole_size.split(","))
                if len(whole) != 2 or min(whole) < 1:
                    raise ValueError
            except ValueError:
                raise BenchError(f"--whole-size: expected MIN,MAX like 800,1333, got {args.whole_size!r}") from None
        if not 0 <= args.overlap < 1:
            raise BenchError(f"--overlap must be in [0, 1), got {args.overlap}")
        return run_tiling_bench(runs, args.images, size, args.tile, args.overlap, whole, args.max_dets, args.seed,
                                args.device, log)

    return run_and_report(run, format_report, args.out, argv, invoked_as, PROG, log)
