"""What ``ugs-predict`` does with a trained run: find the images, map the run's classes to the
dataset's category ids, run each image (tiled or whole), keep a per-area detection budget and
turn ``Instances`` into COCO result dicts (and optional PNGs with the boxes drawn).

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

torch and detectron2 are imported inside the functions, so that ``ugs-predict --help`` does not
import them.
"""
import colorsys
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "IMAGE_EXTENSIONS",
    "PredictError",
    "DatasetInfo",
    "PredictSettings",
    "PredictionRun",
    "find_images",
    "detection_budget",
    "to_coco_results",
    "dataset_info",
    "load_for_prediction",
    "check_classes",
    "run_tiling",
    "draw_detections",
    "predict_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PredictError(ValueError):
    """An input of the prediction cannot be used; one line."""


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


@dataclass(frozen=True)
class DatasetInfo:
    """The dataset a run's detections refer to: category ids by contiguous class index (None:
    not found, keep the index), class names, ``{file basename: image id}``, and ``source``: the
    json read, or why none was."""

    category_ids: Optional[List[int]]
    class_names: List[str] = field(default_factory=list)
    image_ids: Dict[str, Any] = field(default_factory=dict)
    source: str = ""


def _run_test_json(run_dir: str) -> Tuple[Optional[str], str]:
    """The COCO json of the run's test split (from ``RUN_DIR/.hydra/config.yaml``), or None and why."""
    from ugs_d2.data.coco_json import DatasetError

    hydra_cfg = os.path.join(run_dir, ".hydra", "config.yaml") if os.path.isdir(run_dir) else ""
    if not os.path.isfile(hydra_cfg):
        return None, "no .hydra/config.yaml in the run directory"
    try:
        from detectron2.data import MetadataCatalog
        from omegaconf import OmegaConf

        from ugs_d2.data.datasets import register_dataset, split_names

        cfg = OmegaConf.load(hydra_cfg)
        if not os.path.isdir(os.path.expanduser(str(cfg.dataset.root))):
            return None, f"dataset.root {cfg.dataset.root} not found from {os.getcwd()}"
        register_dataset(cfg.dataset)
        dataset_json = MetadataCatalog.get(split_names(cfg.dataset)[1][0]).get("json_file")
    except (DatasetError, OSError, KeyError, AttributeError) as e:
        return None, f"the run's dataset could not be read ({str(e).splitlines()[0]})"
    if not dataset_json:
        return None, "the run's test split has no COCO json"
    return dataset_json, dataset_json


def dataset_info(run_dir: str, dataset_json: Optional[str]) -> DatasetInfo:
    """From ``dataset_json``, else the test split of the run's dataset when its files exist.

    Raises:
        DatasetError: the json (given or found) cannot be read.
    """
    from ugs_d2.data.coco_json import read_coco_json

    if dataset_json is None:
        dataset_json, why = _run_test_json(run_dir)
        if dataset_json is None:
            return DatasetInfo(None, source=why)
    data = read_coco_json(dataset_json)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    image_ids = {os.path.basename(str(i["file_name"])): i["id"] for i in data["images"]}
    return DatasetInfo([c["id"] for c in categories], [c["name"] for c in categories], image_ids, dataset_json)


def load_for_prediction(run_dir: str, weights: Optional[str], device: str, score_thresh: Optional[float]):
    """:func:`ugs_d2.inference.tiled.load_model` on ``device`` (``auto``, ``cpu`` or ``cuda``),
    with the box predictor's score threshold set to ``score_thresh`` (None: the run's).

    Raises:
        PredictError: the run or checkpoint cannot be loaded (the first line of the reason).
    """
    from ugs_d2.config import resolve_device
    from ugs_d2.inference.tiled import load_model

    try:
        model = load_model(run_dir, weights, device=resolve_device(device))
    except (OSError, ValueError, KeyError) as e:
        raise PredictError(str(e).splitlines()[0]) from None
    if score_thresh is not None and hasattr(model, "roi_heads"):
        # below the run's own threshold the model would have dropped the boxes already
        model.roi_heads.box_predictor.test_score_thresh = score_thresh
    return model


def check_classes(dataset: DatasetInfo, num_classes: int) -> None:
    """The dataset's categories must be the model's classes (when a dataset was found)."""
    if dataset.category_ids is not None and len(dataset.category_ids) != num_classes:
        raise PredictError(f"{dataset.source} has {len(dataset.category_ids)} categories, the model "
                           f"{num_classes} classes")


def run_tiling(model, tile: Optional[int], overlap: Optional[float]) -> Tuple[int, float, Any]:
    """``(tile, overlap, trained_tile)``: the given window, else the run's ``tiling.*`` when it
    trained on tiles, else 512 px and 0.2; ``trained_tile``: the run's tile side when it trained
    on tiles, else None."""
    run = model.ugs_cfg.get("TILING")
    trained_on_tiles = run is not None and bool(run.TRAIN.ENABLED)
    if tile is None:
        tile = int(run.TILE) if trained_on_tiles else 512
    if overlap is None:
        overlap = float(run.OVERLAP) if trained_on_tiles else 0.2
    return tile, overlap, run.TILE if trained_on_tiles else None


def draw_detections(image_bgr, instances, class_names: List[str], path: str) -> None:
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


@dataclass(frozen=True)
class PredictSettings:
    """How :func:`predict_images` treats each image's detections: the score threshold (None:
    the model's), the detections a tiled image keeps (None: :func:`detection_budget` of
    ``tile`` and ``per_tile``), and the directory of the drawn PNGs (None: none)."""

    tile: int
    per_tile: int
    score_thresh: Optional[float] = None
    max_detections: Optional[int] = None
    vis_dir: Optional[str] = None


@dataclass
class PredictionRun:
    """The COCO results of every image, seconds in all and in the model's forward, and how
    often the detection budget cut: images, detections kept of those found."""

    results: List[dict] = field(default_factory=list)
    total_s: float = 0.0
    model_s: float = 0.0
    cut_images: int = 0
    cut_kept: int = 0
    cut_found: int = 0


def _read_image(path: str):
    from detectron2.data.detection_utils import read_image

    from ugs_d2.data.tiling import allow_large_images

    try:
        with allow_large_images():
            return read_image(path, format="BGR")
    except OSError as e:
        raise PredictError(f"{path}: cannot read the image ({e})") from None


def _detect(model, predictor, image, settings: PredictSettings, run: PredictionRun):
    """One image's ``Instances``: tiled (the budget applied) or whole; times added to ``run``."""
    import torch

    from ugs_d2.inference.tiled import predict_whole_image

    start = time.perf_counter()
    if predictor is not None:
        instances = predictor(image)
        run.model_s += predictor.last_timing["model_s"]
        budget = settings.max_detections or detection_budget(image.shape[:2], settings.tile, settings.per_tile)
        if len(instances) > budget:
            run.cut_images, run.cut_kept, run.cut_found = (run.cut_images + 1, run.cut_kept + budget,
                                                           run.cut_found + len(instances))
            instances = instances[torch.argsort(instances.scores, descending=True, stable=True)[:budget]]
    else:
        channels = image[:, :, ::-1] if model.ugs_input_format == "RGB" else image
        tensor = torch.as_tensor(channels.transpose(2, 0, 1).astype("float32"))
        instances, seconds = predict_whole_image(model, tensor, model.ugs_test_size)
        run.model_s += seconds
    run.total_s += time.perf_counter() - start
    if settings.score_thresh is not None:
        instances = instances[instances.scores >= settings.score_thresh]
    return instances


def predict_images(model, predictor, images: Sequence[str], settings: PredictSettings, dataset: DatasetInfo,
                   desc: str = "predict") -> PredictionRun:
    """Detections of every image (a tqdm bar named ``desc``) as COCO results.

    Args:
        model: :func:`ugs_d2.inference.tiled.load_model`'s model; predictor: a
            :class:`ugs_d2.inference.tiled.TiledPredictor` of it, or None for whole images.

    Raises:
        PredictError: an image cannot be read.
    """
    from tqdm import tqdm

    run = PredictionRun()
    for path in tqdm(images, desc=desc, unit="img"):
        image = _read_image(path)
        instances = _detect(model, predictor, image, settings, run)
        key = {"file_name": os.path.abspath(path)}
        if os.path.basename(path) in dataset.image_ids:
            key = {"image_id": dataset.image_ids[os.path.basename(path)], **key}
        run.results += to_coco_results(instances, key, dataset.category_ids)
        if settings.vis_dir:
            stem = os.path.splitext(os.path.basename(path))[0]
            draw_detections(image, instances, dataset.class_names, os.path.join(settings.vis_dir, f"{stem}.png"))
    return run
