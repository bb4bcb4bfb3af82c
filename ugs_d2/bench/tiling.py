"""``ugs-bench tiling``: the guide's tiling claim on large scenes, per model and inference mode.

    ugs-bench tiling --run full=outputs/default/RUN --run tiles=outputs/default/tiling=on \\
        --images 4 --size 3000x2000 --out results/tiling/large_images.md

Generates ``--images`` large synthetic scenes (:func:`ugs_d2.bench.scenes.make_scene`: grids of
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
import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ugs_d2.bench.common import BenchError
from ugs_d2.bench.scenes import make_scene, scene_coco

__all__ = ["MODES", "TilingBenchSpec", "whole_image_budget", "run_tiling_bench", "format_report"]

MODES = ("whole", "tiled", "tiled+full")
DEFAULT_TILE = 512  # --tile unset: for models trained on full images
METRICS = ("AP", "AP50", "APs", "APvt", "APt")

Scene = Tuple[np.ndarray, np.ndarray, np.ndarray]  # (image RGB, boxes XYXY, 0-based classes)


@dataclass(frozen=True)
class TilingBenchSpec:
    """What ``ugs-bench tiling`` measures, the command-line options of the same names.

    ``runs``: ``(label, run directory)`` pairs. ``tile=None``: a model trained on tiles gets its
    own ``TILING.TILE`` / ``OVERLAP``, the others ``DEFAULT_TILE`` px at ``overlap``.
    ``whole_size``: ``(min, max)`` test resize of the whole-image pass, None for each model's own.
    ``max_dets``: detections kept per image and COCOeval's ``maxDets``.
    """

    runs: Sequence[Tuple[str, str]]
    num_images: int = 4
    size: Tuple[int, int] = (3000, 2000)
    tile: Optional[int] = None
    overlap: float = 0.2
    whole_size: Optional[Tuple[int, int]] = None
    max_dets: int = 3000
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class _RunSettings:
    """How one model is run: its classes, the whole-image test size, its tiles."""

    num_classes: int
    test_size: Tuple[int, int]
    trained_on_tiles: bool
    tile: int
    overlap: float


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


def _run_settings(model, spec: TilingBenchSpec) -> _RunSettings:
    """Classes, whole-image test size and tiles of one loaded model (``load_model``'s ``ugs_*``)."""
    width, height = spec.size
    cfg = model.ugs_cfg
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES if cfg.MODEL.META_ARCHITECTURE != "RetinaNet"
                      else cfg.MODEL.RETINANET.NUM_CLASSES)
    test_size = tuple(spec.whole_size or model.ugs_test_size)
    if min(test_size) <= 0:  # input=native: no test resize; the whole pass then sees the scene as it is
        test_size = (min(height, width), max(height, width))
    tiling = cfg.get("TILING")
    trained_on_tiles = bool(tiling is not None and tiling.TRAIN.ENABLED)
    tile, overlap = spec.tile, spec.overlap
    if tile is None:  # a model trained on tiles gets its own tiles, others DEFAULT_TILE
        tile, overlap = ((int(tiling.TILE), float(tiling.OVERLAP)) if trained_on_tiles
                         else (DEFAULT_TILE, spec.overlap))
    return _RunSettings(num_classes, test_size, trained_on_tiles, tile, overlap)


def _predict_mode(model, mode: str, settings: _RunSettings, scenes: Sequence[Scene], max_dets: int):
    """Run one mode on every scene; returns ``(COCO detections, wall s per image, CPU s per image)``."""
    from ugs_d2.inference.tiled import TiledPredictor, TilingSpec, _to_model_tensor, predict_whole_image

    predictor = None
    if mode != "whole":
        spec = TilingSpec(tile=settings.tile, overlap=settings.overlap, full_image=mode == "tiled+full",
                          max_detections=max_dets)
        predictor = TiledPredictor(model, spec, test_size=settings.test_size)
    detections, times, cpu_times = [], [], []
    for i, (image_rgb, _, _) in enumerate(scenes, start=1):
        image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        start, cpu_start = time.perf_counter(), time.process_time()
        if predictor is None:
            tensor = _to_model_tensor(image_bgr, model.ugs_input_format)
            with whole_image_budget(model, max_dets):
                instances, _ = predict_whole_image(model, tensor, settings.test_size)
        else:
            instances = predictor(image_bgr)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        detections += _coco_results(instances, i)
    return detections, times, cpu_times


def _evaluate_run(name: str, run_dir: str, spec: TilingBenchSpec, scenes: Sequence[Scene],
                  log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """One model in every mode: a table row per mode."""
    import torch

    from ugs_d2.evaluation.small_object import evaluate_detections
    from ugs_d2.inference.tiled import load_model

    try:
        model = load_model(run_dir, device=spec.device)
    except FileNotFoundError as e:
        raise BenchError(f"--run {name}={run_dir}: {e}") from None
    settings = _run_settings(model, spec)
    gt = scene_coco(scenes, settings.num_classes)
    rows = []
    for mode in MODES:
        detections, times, cpu_times = _predict_mode(model, mode, settings, scenes, spec.max_dets)
        log(f"{name} / {mode}: {len(detections)} detections, {statistics.median(times):.2f} s/image")
        metrics = ({k: float("nan") for k in METRICS} if not detections else
                   evaluate_detections(gt, detections, bucket_sets=["aitod"], max_dets=spec.max_dets))
        rows.append({"run": name, "run_dir": run_dir, "mode": mode, "trained_on_tiles": settings.trained_on_tiles,
                     "tile": None if mode == "whole" else (settings.tile, settings.overlap),
                     "whole_size": settings.test_size,
                     "metrics": {k: metrics.get(k, float("nan")) for k in METRICS},
                     "s_per_image": statistics.median(times), "cpu_s_per_image": statistics.median(cpu_times),
                     "detections_per_image": len(detections) / spec.num_images})
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def _setup(spec: TilingBenchSpec, scenes: Sequence[Scene]) -> Dict[str, Any]:
    """The report's setup: the options, objects per image and the share of tiny ones."""
    gt_boxes = np.concatenate([b for _, b, _ in scenes]) if scenes else np.zeros((0, 4))
    sides = np.sqrt((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))
    return {
        "num_images": spec.num_images, "size": spec.size, "tile": spec.tile, "overlap": spec.overlap,
        "whole_size": spec.whole_size, "max_dets": spec.max_dets, "seed": spec.seed, "device": spec.device,
        "gt_per_image": len(gt_boxes) / max(spec.num_images, 1),
        "share_under_16": float((sides < 16).mean()) if len(sides) else float("nan"),
        "share_under_8": float((sides < 8).mean()) if len(sides) else float("nan")}


def run_tiling_bench(spec: TilingBenchSpec, log: Callable[[str], None] = lambda m: None) -> Dict[str, Any]:
    """Every (run, mode) pair on the same scenes; returns ``{"rows", "setup"}``."""
    width, height = spec.size
    log(f"{spec.num_images} scenes of {width}x{height}")
    scenes = [make_scene(width, height, spec.seed, i) for i in range(spec.num_images)]
    rows = [row for name, run_dir in spec.runs for row in _evaluate_run(name, run_dir, spec, scenes, log)]
    return {"rows": rows, "setup": _setup(spec, scenes)}
def format_report(outcome: Dict[str, Any], command: str, started: str, wall_s: float, loads: List[float]) -> str:
    """The markdown report: command, setup, a row per (model, mode), what the columns mean."""
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

