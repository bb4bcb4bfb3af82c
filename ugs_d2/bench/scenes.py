"""Large synthetic scenes for the tiled-inference benchmarks (``ugs-bench sahi``, ``ugs-bench tiling``).

A scene is a grid of ``SCENE_CELL`` px images of the project's synthetic generator
(:func:`ugs_d2.data.synth.render_sample`) cropped to the requested size: thousands of pixels on
a side, hundreds of objects, many under 16 px. Each cell is drawn from its own seed, so a scene
is the same on every machine whatever its size.
"""
import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ugs_d2.bench.common import BenchError
from ugs_d2.boxes import clip_boxes

__all__ = ["SCENE_STREAM", "SCENE_CELL", "SCENE_MIN_VISIBLE", "parse_size", "make_scene", "scene_coco"]

#: Second word of each scene cell's seed; synth's own splits use 0, 1, 2 (``synth.SPLIT_IDS``).
SCENE_STREAM = 100
SCENE_CELL = 256
#: A ground-truth box cut by the scene's border is kept when this share of its area remains.
SCENE_MIN_VISIBLE = 0.5


def parse_size(text: str) -> Tuple[int, int]:
    """``"4000x3000"`` -> ``(4000, 3000)`` (width, height), both positive integers."""
    parts = str(text).lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise BenchError(f"--size: expected WIDTHxHEIGHT (e.g. 4000x3000), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise BenchError(f"--size: width and height must be positive, got {text!r}")
    return width, height


def make_scene(
    width: int, height: int, seed: int, index: int, cell: int = SCENE_CELL,
    min_visible: float = SCENE_MIN_VISIBLE,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A large synthetic scene: a grid of ``cell`` px synthetic images cropped to ``width`` x ``height``.

    Cell ``(row, column)`` is ``synth.render_sample(default_rng([seed, SCENE_STREAM, index, row,
    column]), SynthConfig(image_size=cell))`` pasted at ``(column * cell, row * cell)``; the grid
    has ``ceil(height / cell)`` rows and ``ceil(width / cell)`` columns and its right/bottom
    cells are cut by the crop. The same arguments give the same scene on every machine.

    Returns:
        image: (height, width, 3) uint8, RGB.
        boxes: (N, 4) float32 ground-truth boxes, XYXY in scene pixels, clipped to the scene;
            a box cut by the border is kept if at least ``min_visible`` of its area remains.
        classes: (N,) int64, 0-based (the synthetic COCO ``category_id`` - 1).
    """
    from ugs_d2.data import synth

    config = synth.SynthConfig(image_size=cell)
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    canvas = np.empty((rows * cell, cols * cell, 3), dtype=np.uint8)
    boxes: List[List[float]] = []
    classes: List[int] = []
    for row in range(rows):
        for col in range(cols):
            rng = np.random.default_rng([seed, SCENE_STREAM, index, row, col])
            image, annotations = synth.render_sample(rng, config)
            canvas[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = image
            for ann in annotations:
                x, y, w, h = ann["bbox"]
                boxes.append([x + col * cell, y + row * cell, x + w + col * cell, y + h + row * cell])
                classes.append(int(ann["category_id"]) - 1)
    boxes_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = clip_boxes(boxes_arr, width, height)
    area = (boxes_arr[:, 2] - boxes_arr[:, 0]) * (boxes_arr[:, 3] - boxes_arr[:, 1])
    kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = kept_area >= min_visible * area
    return (
        np.ascontiguousarray(canvas[:height, :width]),
        clipped[keep].astype(np.float32),
        np.asarray(classes, dtype=np.int64)[keep],
    )


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
