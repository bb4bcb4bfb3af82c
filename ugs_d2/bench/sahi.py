"""``ugs-bench sahi``: our batched tiled predictor against SAHI's sliced inference.

SAHI (``sahi==0.12.8``, a bench-only dependency: ``make bench-deps``) is what users pick today
for sliced inference. This benchmark runs the *same* detectron2 model (the same config yaml and
weights) on the *same* large synthetic scenes three ways:

* ``sahi_default`` -- SAHI as users run it: ``Detectron2DetectionModel`` +
  ``get_sliced_prediction`` with the tile size given and everything else at SAHI's defaults
  (overlap 0.2, an extra full-image pass ``perform_standard_pred=True``, greedy non-maximum
  *merging* ``GREEDYNMM`` under ``IOS`` at 0.5, class-aware);
* ``sahi_matched`` -- SAHI with settings matched to ours: same tile size and overlap (SAHI's
  slice windows are checked to equal ours), no full-image pass, class-aware NMS under IoU at
  0.5 (SAHI's ``batch_size`` is set to ours too; its detectron2 wrapper still runs one slice
  per forward);
* ``ours`` -- :class:`ugs_d2.inference.tiled.TiledPredictor`: the same windows, tiles run
  through the model in batches of ``--batch-size``, class-aware NMS under IoU at 0.5, no
  full-image pass; ``--extra-batch-sizes 1,2`` adds rows ``ours_bs1``, ``ours_bs2`` (does
  batching pay on this device?).

What is made equal, and how:

* **score threshold**: the run's ``detectron2_config.yaml`` is copied with
  ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` (and ``MODEL.RETINANET.SCORE_THRESH_TEST``) set to
  ``--score-thresh``; that copy is what both SAHI's ``DefaultPredictor`` and our
  ``load_model`` build from, and SAHI's own ``confidence_threshold`` is the same number, so its
  extra filter is a no-op. The default 0.3 is SAHI's default ``confidence_threshold``; below
  SAHI's ``LOW_MODEL_CONFIDENCE`` (0.1) SAHI silently switches its default merge to NMS/IoU,
  which the report then says;
* **input size**: SAHI's wrapper builds detectron2's ``DefaultPredictor``, which resizes every
  input with ``ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST)``; left at the run's
  test size (256 px for the tiny default model) it would *shrink* each 512 px slice. Both SAHI
  variants therefore get ``image_size=--tile`` (as SAHI's detectron2 example passes an
  ``image_size``), which makes the resize of a full tile an identity (Pillow returns a copy
  for an unchanged size); our predictor does not resize tiles (``upscale=False``). SAHI's
  full-image pass (``sahi_default`` only) sees the scene shrunk to ``--tile`` on its long side;
* **pixels**: SAHI takes RGB arrays (it flips them to BGR for a BGR model), ours takes BGR; the
  conversion happens before the clock starts for both;
* **threads**: every variant runs in a fresh subprocess with ``torch.set_num_threads(--threads)``
  (and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set alike).

Measured per variant (each in its own subprocess, so that the peak RSS is that variant's):
wall time and process CPU time (user + system, and the system share) per image (medians;
``--warmup`` untimed calls on a 2 x 2-window corner of the first scene come first), the process's
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its rise over the RSS just before
the first prediction (model and scenes loaded), on CUDA the peak of
``torch.cuda.max_memory_allocated``, the time inside the detectron2 model's forward (ours:
``TiledPredictor.last_timing['model_s']``; SAHI: a timer around ``DefaultPredictor.model``'s
call), and the detections. Agreement of ``sahi_matched`` and ``ours``: the share of each one's
detections that have a detection of the same class in the other at IoU >= 0.9.

Targets (issue 7): our time outside the model's forward <= 10 %; >= 1.5x faster than
``sahi_matched`` on CPU, >= 3x on a GPU. Ratios are against SAHI measured in the same run.

The scenes (:func:`ugs_d2.bench.scenes.make_scene`) are grids of 256 px scenes from the
project's synthetic generator (:func:`ugs_d2.data.synth.render_sample`), cropped to ``--size``;
each cell's image is drawn from ``numpy.random.default_rng([seed, SCENE_STREAM, image, row,
column])`` alone.

Layout: the pure parts (box matching, SAHI's arguments and windows), the run directory and its
config, the worker (one variant in a fresh process: ``python -m ugs_d2.bench.sahi --worker
SPEC.json``), the benchmark (:class:`SahiBenchSpec`, :func:`run_sahi_benchmark`) and the report
(:func:`format_report`). ``ugs_d2/cli/bench_sahi.py`` parses the command line.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ugs_d2.bench.common import PROG as BENCH_PROG
from ugs_d2.bench.common import BenchError, machine_lines, ratio
from ugs_d2.bench.scenes import make_scene
from ugs_d2.boxes import box_iou
from ugs_d2.fileio import write_json_atomic, write_text_atomic

__all__ = [
    "SAHI_VERSION",
    "VARIANTS",
    "TARGETS",
    "SahiBenchSpec",
    "matched_mask",
    "sahi_call_kwargs",
    "sahi_windows",
    "resolve_run",
    "write_bench_config",
    "run_variant",
    "agreement",
    "run_sahi_benchmark",
    "format_report",
]

PROG = f"{BENCH_PROG} sahi"
SAHI_VERSION = "0.12.8"
VARIANTS = ("sahi_default", "sahi_matched", "ours", "ours_fast")
BASELINE = "sahi_matched"
AGREEMENT_IOU = 0.9
RECALL_IOU = 0.5
MERGE_IOU = 0.5  # our merge threshold and SAHI's postprocess_match_threshold (its default)
TARGETS = {"outside_model_share": 0.10, "speedup_cpu": 1.5, "speedup_cuda": 3.0, "agreement": 0.99}
FAST = "ours_fast"  # the predictor's defaults: optimized inference copy on CPU, per-device batch size
DEFAULT_RUN_DIR = os.path.join("outputs", "sahi_bench")
#: The default tiny detector (the `make run` schedule, ~16 min on 2 CPU cores) in a fixed directory.
TRAIN_COMMAND = "ugs-train wandb.enabled=false hydra.run.dir=outputs/sahi_bench"


@dataclass(frozen=True)
class SahiBenchSpec:
    """What ``ugs-bench sahi`` measures; each field is the command-line option of the same name
    (``num_images`` is ``--images``, ``size`` the parsed ``--size``).

    ``threads=None`` means the usable CPUs and ``device="auto"`` cuda when a GPU is visible;
    :func:`run_sahi_benchmark` resolves both before the workers start. ``workdir=None`` keeps the
    scenes, the bench config and the workers' raw json in a temporary directory.
    """

    run_dir: str = DEFAULT_RUN_DIR
    weights: Optional[str] = None
    num_images: int = 4
    size: Tuple[int, int] = (4000, 3000)
    tile: int = 512
    overlap: float = 0.2
    batch_size: int = 8
    extra_batch_sizes: Sequence[int] = ()
    score_thresh: float = 0.3
    threads: Optional[int] = None
    device: str = "cpu"
    rounds: int = 1
    warmup: int = 1
    seed: int = 0
    workdir: Optional[str] = None
    quiet: bool = False


# --------------------------------------------------------------------------------------------
# pure parts


def matched_mask(
    boxes_a: np.ndarray, classes_a: np.ndarray, boxes_b: np.ndarray, classes_b: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """Which boxes of A have a box of the same class in B with IoU >= ``iou_threshold``.

    Args:
        boxes_a: (N, 4) XYXY; classes_a: (N,) ints. boxes_b: (M, 4); classes_b: (M,).

    Returns:
        (N,) bool. Not a one-to-one assignment: two boxes of A may match the same box of B
        (after NMS at IoU 0.5 two same-class boxes of one set cannot both be within IoU 0.9
        of one box, so for the agreement check the two readings coincide).
    """
    classes_a = np.asarray(classes_a).reshape(-1)
    classes_b = np.asarray(classes_b).reshape(-1)
    matched = np.zeros(len(classes_a), dtype=bool)
    if len(classes_a) == 0 or len(classes_b) == 0:
        return matched
    iou = box_iou(boxes_a, boxes_b)
    same_class = classes_a[:, None] == classes_b[None, :]
    return ((iou >= iou_threshold) & same_class).any(axis=1)


def sahi_call_kwargs(variant: str, tile: int, overlap: float, batch_size: int) -> Dict[str, Any]:
    """Keyword arguments of ``sahi.predict.get_sliced_prediction`` for a SAHI variant.

    ``sahi_default`` gives the tile size only (SAHI's defaults: overlap 0.2, full-image pass,
    GREEDYNMM/IOS at 0.5, class-aware); ``sahi_matched`` sets every merge/slicing knob to ours.
    ``verbose=0`` only silences SAHI's "Performing prediction on N slices" line.
    """
    if variant == "sahi_default":
        return {"slice_height": tile, "slice_width": tile, "verbose": 0}
    if variant == "sahi_matched":
        return {
            "slice_height": tile, "slice_width": tile,
            "overlap_height_ratio": overlap, "overlap_width_ratio": overlap,
            "perform_standard_pred": False,
            "postprocess_type": "NMS", "postprocess_match_metric": "IOU",
            "postprocess_match_threshold": MERGE_IOU, "postprocess_class_agnostic": False,
            "batch_size": batch_size, "verbose": 0,
        }
    raise ValueError(f"not a SAHI variant: {variant!r}")


def sahi_windows(width: int, height: int, tile: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """SAHI's slice windows ``(x0, y0, x1, y1)`` for an image (``sahi.slicing.get_slice_bboxes``)."""
    from sahi.slicing import get_slice_bboxes

    return [tuple(int(v) for v in w) for w in get_slice_bboxes(
        height, width, slice_height=tile, slice_width=tile, auto_slice_resolution=False,
        overlap_height_ratio=overlap, overlap_width_ratio=overlap,
    )]


# --------------------------------------------------------------------------------------------
# model and configuration


def resolve_run(run_dir: str, weights: Optional[str] = None) -> Tuple[str, str]:
    """``(detectron2 config yaml, weights)`` of a run directory (or of a config yaml + ``weights``).

    A run directory holds ``detectron2_config.yaml``; its weights are ``model_final.pth`` or
    else the checkpoint named in ``last_checkpoint``, unless ``weights`` is given.
    """
    if os.path.isdir(run_dir):
        config = os.path.join(run_dir, "detectron2_config.yaml")
        if not os.path.isfile(config):
            raise BenchError(
                f"--run-dir {run_dir}: no detectron2_config.yaml (not a ugs-train run directory); "
                f"train one with: {TRAIN_COMMAND}"
            )
        if weights is None:
            final = os.path.join(run_dir, "model_final.pth")
            last = os.path.join(run_dir, "last_checkpoint")
            if os.path.isfile(final):
                weights = final
            elif os.path.isfile(last):
                with open(last) as f:
                    weights = os.path.join(run_dir, f.read().strip())
            else:
                raise BenchError(
                    f"--run-dir {run_dir}: no model_final.pth or last_checkpoint (training unfinished?); "
                    "give --weights"
                )
    elif os.path.isfile(run_dir):
        config = run_dir
        if weights is None:
            raise BenchError(f"--run-dir {run_dir} is a config file: give --weights too")
    else:
        raise BenchError(f"--run-dir {run_dir}: no such directory; train a model first: {TRAIN_COMMAND}")
    if not os.path.isfile(weights):
        raise BenchError(f"--weights {weights}: no such file")
    return os.path.abspath(config), os.path.abspath(weights)


def write_bench_config(config_yaml: str, weights: str, score_thresh: float, device: str, out: str) -> Dict[str, Any]:
    """Copy a detectron2 config yaml to ``out`` with the benchmark's score threshold, weights and
    device; returns a summary (architecture, classes, input format, test sizes)."""
    import yaml

    with open(config_yaml) as f:
        cfg = yaml.safe_load(f)
    model = cfg.get("MODEL") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or "META_ARCHITECTURE" not in model:
        raise BenchError(f"{config_yaml}: not a detectron2 config (no MODEL.META_ARCHITECTURE)")
    for head in ("ROI_HEADS", "RETINANET"):
        model.setdefault(head, {})["SCORE_THRESH_TEST"] = float(score_thresh)
    model["WEIGHTS"] = weights
    model["DEVICE"] = device
    write_text_atomic(out, yaml.safe_dump(cfg, sort_keys=True))
    arch = model["META_ARCHITECTURE"]
    classes = model.get("RETINANET" if arch == "RetinaNet" else "ROI_HEADS", {}).get("NUM_CLASSES")
    inp = cfg.get("INPUT", {})
    return {
        "meta_architecture": arch,
        "num_classes": int(classes) if classes is not None else None,
        "input_format": inp.get("FORMAT", "BGR"),
        "test_size": (inp.get("MIN_SIZE_TEST"), inp.get("MAX_SIZE_TEST")),
        "roi_heads": model.get("ROI_HEADS", {}).get("NAME"),
        "detections_per_image": cfg.get("TEST", {}).get("DETECTIONS_PER_IMAGE"),
    }


# --------------------------------------------------------------------------------------------
# the worker: one variant in a fresh process


def _current_rss_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_rss_kb() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class _ForwardTimer:
    """Stands in for a detectron2 model inside SAHI's ``DefaultPredictor``: times each call.

    ``DefaultPredictor`` only calls ``self.model([inputs])``; other attribute reads are passed
    through. On CUDA the clock stops after a synchronize so queued kernels are counted.
    """

    def __init__(self, model, cuda: bool):
        self.model, self.cuda, self.seconds, self.calls = model, cuda, 0.0, 0

    def __call__(self, *args, **kwargs):
        import torch

        start = time.perf_counter()
        out = self.model(*args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)


class _SahiRunner:
    def __init__(self, spec: Dict[str, Any]):
        from sahi.models.detectron2 import Detectron2DetectionModel
        from sahi.predict import LOW_MODEL_CONFIDENCE, get_sliced_prediction

        import ugs_d2.modeling  # noqa: F401  registers the UGS classes before SAHI builds the model

        self._predict = get_sliced_prediction
        num_classes = spec["num_classes"]
        self.model = Detectron2DetectionModel(
            model_path=spec["weights"], config_path=spec["config"],
            confidence_threshold=spec["score_thresh"], image_size=spec["tile"], device=spec["device"],
            category_mapping={str(i): str(i) for i in range(num_classes)} if num_classes else None,
            load_at_init=True,
        )
        self.timer = _ForwardTimer(self.model.model.model, spec["device"] == "cuda")
        self.model.model.model = self.timer
        self.kwargs = sahi_call_kwargs(spec["variant"], spec["tile"], spec["overlap"], spec["batch_size"])
        postprocess = (self.kwargs.get("postprocess_type", "GREEDYNMM"),
                       self.kwargs.get("postprocess_match_metric", "IOS"))
        if spec["score_thresh"] < LOW_MODEL_CONFIDENCE and postprocess[0] != "NMS":
            postprocess = ("NMS", "IOU")  # what get_sliced_prediction switches to on its own
        self.effective_postprocess = f"{postprocess[0]}/{postprocess[1]}"
        self.durations: Dict[str, float] = {}

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        return image_rgb  # SAHI takes RGB (it flips to BGR itself for a BGR model)

    def __call__(self, image_rgb: np.ndarray):
        forward_before = self.timer.seconds
        result = self._predict(image_rgb, self.model, **self.kwargs)
        predictions = result.object_prediction_list
        boxes = np.asarray([p.bbox.to_xyxy() for p in predictions], dtype=np.float32).reshape(-1, 4)
        scores = np.asarray([p.score.value for p in predictions], dtype=np.float32)
        classes = np.asarray([p.category.id for p in predictions], dtype=np.int64)
        self.durations = dict(result.durations_in_seconds)
        return boxes, scores, classes, self.timer.seconds - forward_before


class _OursRunner:
    def __init__(self, spec: Dict[str, Any]):
        from ugs_d2.inference.tiled import TiledPredictor, TilingSpec, load_model

        model = load_model(spec["config"], weights=spec["weights"], device=spec["device"])
        fast = spec["variant"] == FAST  # the defaults; the other ours* rows: the plain model at --batch-size
        tiling = TilingSpec(tile=spec["tile"], overlap=spec["overlap"], batch_size=None if fast else spec["batch_size"],
                            full_image=False, merge="nms", metric="iou", threshold=MERGE_IOU, upscale=False)
        self.predictor = TiledPredictor(model, tiling, optimize=None if fast else False)
        del model  # the optimized copy is all the predictor needs: the original's memory is freed
        self.effective_postprocess = "NMS/IOU"
        self.durations: Dict[str, float] = {}

    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image_rgb[:, :, ::-1])  # our predictor takes BGR

    def __call__(self, image_bgr: np.ndarray):
        instances = self.predictor(image_bgr)
        boxes = instances.pred_boxes.tensor.detach().cpu().numpy().astype(np.float32).reshape(-1, 4)
        scores = instances.scores.detach().cpu().numpy().astype(np.float32)
        classes = instances.pred_classes.detach().cpu().numpy().astype(np.int64)
        self.durations = {k: float(v) for k, v in self.predictor.last_timing.items()}
        return boxes, scores, classes, float(self.predictor.last_timing["model_s"])


def run_variant(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure one variant in this process (see the module docstring); returns a json-able dict."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    cuda = spec["device"] == "cuda"
    images = [np.load(path) for path in spec["images"]]
    runner = _OursRunner(spec) if spec["variant"].startswith("ours") else _SahiRunner(spec)
    inputs = [runner.prepare(image) for image in images]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before_kb = _current_rss_kb()
    # Warm-up on a corner of the first scene, 2 x 2 windows: every code path (batching, merge)
    # runs once, at a fraction of a whole scene's cost.
    side = spec["tile"] + spec["tile"] // 2
    warmup_image = np.ascontiguousarray(inputs[0][:side, :side])
    for _ in range(int(spec["warmup"])):
        runner(warmup_image)
    times, cpu_times, sys_times, model_times, durations, detections = [], [], [], [], [], []
    progress = _progress(len(inputs), spec["variant"], spec.get("quiet", False))
    for image in inputs:
        start, cpu_start = time.perf_counter(), os.times()
        boxes, scores, classes, model_s = runner(image)
        times.append(time.perf_counter() - start)  # the runners return host arrays: synchronised
        cpu_end = os.times()
        cpu_times.append(cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system)
        sys_times.append(cpu_end.system - cpu_start.system)
        model_times.append(model_s)
        durations.append(runner.durations)
        detections.append({"boxes": boxes.tolist(), "scores": scores.tolist(), "classes": classes.tolist()})
        progress.update(1)
    progress.close()
    return {
        "variant": spec["variant"],
        "times_s": times,
        "cpu_s": cpu_times,
        "sys_s": sys_times,
        "model_s": model_times,
        "durations": durations,
        "detections": detections,
        "rss_before_kb": rss_before_kb,
        "peak_rss_kb": _peak_rss_kb(),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "effective_postprocess": runner.effective_postprocess,
        "threads": torch.get_num_threads(),
    }


def _progress(total: int, name: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"[{PROG}] {name}", unit="image", disable=quiet, file=sys.stderr)


def _worker_main(spec_path: str) -> None:
    # A terminal's Ctrl-C reaches the whole process group: the parent (``ugs-bench``) reports it
    # in one line and kills this worker, so the worker itself ignores it (no second traceback).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(spec_path) as f:
        spec = json.load(f)
    write_json_atomic(spec["out"], run_variant(spec))


# --------------------------------------------------------------------------------------------
# the benchmark


def _sahi_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("sahi")
    except importlib.metadata.PackageNotFoundError:
        raise BenchError(
            f"sahi is not installed; install the bench-only dependencies with `make bench-deps` "
            f"(launch/requirements-bench.txt: sahi=={SAHI_VERSION})"
        ) from None


def _sahi_postprocess_backend() -> str:
    try:
        from sahi.postprocess.backends import resolve_backend

        return resolve_backend()
    except ImportError:  # older SAHI: a single numpy implementation
        return "numpy"


def _run_worker(spec: Dict[str, Any], workdir: str, log: Callable[[str], None]) -> Dict[str, Any]:
    tag = f"{spec['variant']}_r{spec['round']}"
    spec = dict(spec, out=os.path.join(workdir, f"{tag}.json"))
    spec_path = os.path.join(workdir, f"{tag}.spec.json")
    write_json_atomic(spec_path, spec)
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    # SAHI prints the model-zoo lookup it tries first for a local config; stdout is kept for errors
    proc = subprocess.run(
        [sys.executable, "-m", "ugs_d2.bench.sahi", "--worker", spec_path],
        stdout=subprocess.PIPE, stderr=None if not spec["quiet"] else subprocess.PIPE, text=True, env=env,
    )
    if proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-15:])
        if tail:
            print(tail, file=sys.stderr)
        raise BenchError(f"variant {spec['variant']} failed (exit code {proc.returncode}); its output is above")
    with open(spec["out"]) as f:
        result = json.load(f)
    log(f"{spec['variant']}: median {statistics.median(result['times_s']):.2f} s/image, "
        f"peak RSS {result['peak_rss_kb'] / 1024:.0f} MB")
    return result


def _detections(result: Dict[str, Any], i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = result["detections"][i]
    return (np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4), np.asarray(d["scores"], dtype=np.float64),
            np.asarray(d["classes"], dtype=np.int64))


def agreement(a: Dict[str, Any], b: Dict[str, Any], iou_threshold: float = AGREEMENT_IOU) -> Dict[str, Any]:
    """Pooled over images: the share of ``a``'s detections matched in ``b`` and vice versa, and the
    largest score difference between a detection of ``a`` and its best same-class match in ``b``."""
    matched_ab = matched_ba = total_a = total_b = 0
    max_score_diff = 0.0
    for i in range(len(a["detections"])):
        boxes_a, scores_a, classes_a = _detections(a, i)
        boxes_b, scores_b, classes_b = _detections(b, i)
        mask_ab = matched_mask(boxes_a, classes_a, boxes_b, classes_b, iou_threshold)
        mask_ba = matched_mask(boxes_b, classes_b, boxes_a, classes_a, iou_threshold)
        matched_ab, total_a = matched_ab + int(mask_ab.sum()), total_a + len(classes_a)
        matched_ba, total_b = matched_ba + int(mask_ba.sum()), total_b + len(classes_b)
        if mask_ab.any():
            iou = box_iou(boxes_a[mask_ab], boxes_b) * (classes_a[mask_ab][:, None] == classes_b[None, :])
            best = iou.argmax(axis=1)
            max_score_diff = max(max_score_diff, float(np.abs(scores_a[mask_ab] - scores_b[best]).max()))
    return {
        "a_in_b": matched_ab / total_a if total_a else None,
        "b_in_a": matched_ba / total_b if total_b else None,
        "total_a": total_a, "total_b": total_b,
        "max_score_diff": max_score_diff,
    }


def _summarize(variant: str, results: List[Dict[str, Any]], gt: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, Any]:
    times = [t for r in results for t in r["times_s"]]
    cpu = [t for r in results for t in r["cpu_s"]]
    kernel = [t for r in results for t in r.get("sys_s", [])]
    model = [m for r in results for m in r["model_s"]]
    first = results[0]
    covered = total_gt = 0
    for i, (gt_boxes, gt_classes) in enumerate(gt):
        boxes, _, classes = _detections(first, i)
        covered += int(matched_mask(gt_boxes, gt_classes, boxes, classes, RECALL_IOU).sum())
        total_gt += len(gt_classes)
    summary = {
        "variant": variant,
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_median_s": statistics.median(cpu),
        "sys_share": sum(kernel) / sum(cpu) if kernel and sum(cpu) > 0 else None,
        "outside_model_share": (sum(times) - sum(model)) / sum(times) if sum(times) > 0 else None,
        "peak_rss_mb": max(r["peak_rss_kb"] for r in results) / 1024,
        "rss_rise_mb": max(r["peak_rss_kb"] - (r["rss_before_kb"] or 0) for r in results) / 1024,
        "cuda_peak_mb": (max(r["cuda_peak_bytes"] for r in results) / 2**20
                         if first["cuda_peak_bytes"] is not None else None),
        "detections_per_image": statistics.mean(len(d["classes"]) for d in first["detections"]),
        "gt_covered": covered / total_gt if total_gt else None,
        "effective_postprocess": first["effective_postprocess"],
        "threads": first["threads"],
    }
    if variant.startswith("ours"):
        totals = [d.get("total_s", 0.0) for r in results for d in r["durations"]]
        models = [d.get("model_s", 0.0) for r in results for d in r["durations"]]
        # the predictor's own clock (image in -> merged Instances out), without our numpy conversion
        summary["outside_model_share_last_timing"] = (
            (sum(totals) - sum(models)) / sum(totals) if sum(totals) > 0 else None)
        summary["batches"] = first["durations"][0].get("batches")
        summary["windows"] = first["durations"][0].get("windows")
    else:
        post = [d.get("postprocess", 0.0) for r in results for d in r["durations"]]
        summary["postprocess_share"] = sum(post) / sum(times) if sum(times) > 0 else None
    return summary


def _checked(spec: SahiBenchSpec) -> SahiBenchSpec:
    """``spec`` with its extra batch sizes deduplicated (and ``--batch-size`` itself dropped from
    them); a ``BenchError`` naming the option for a value out of range."""
    extra = tuple(b for b in dict.fromkeys(spec.extra_batch_sizes) if b != spec.batch_size)
    for name, value, minimum in (("images", spec.num_images, 1), ("tile", spec.tile, 1),
                                 ("batch-size", spec.batch_size, 1), ("extra-batch-sizes", min(extra, default=1), 1),
                                 ("rounds", spec.rounds, 1), ("warmup", spec.warmup, 0)):
        if value < minimum:
            raise BenchError(f"--{name} must be >= {minimum}, got {value}")
    if not 0 <= spec.overlap < 1:
        raise BenchError(f"--overlap must be in [0, 1), got {spec.overlap}")
    if not 0 <= spec.score_thresh < 1:
        raise BenchError(f"--score-thresh must be in [0, 1), got {spec.score_thresh}")
    return replace(spec, extra_batch_sizes=extra)


def _resolved(spec: SahiBenchSpec) -> SahiBenchSpec:
    """``spec`` with ``device`` ("auto" -> cpu/cuda) and ``threads`` (None -> the usable CPUs)
    resolved; also sets this process's torch threads, which the report's machine line shows."""
    import torch

    from ugs_d2.config import ConfigError, resolve_device

    try:
        device = resolve_device(spec.device)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no GPU is visible")
    threads = spec.threads
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return replace(spec, device=device, threads=threads)


def _variant_batch_sizes(spec: SahiBenchSpec) -> Dict[str, int]:
    """Variant -> tiles per forward, in run order: ``VARIANTS`` at ``--batch-size`` (``ours_fast``
    at the predictor's default for the device), then ``ours_bsN`` per extra batch size."""
    from ugs_d2.inference.tiled import DEFAULT_BATCH_SIZE

    variants = {v: spec.batch_size for v in VARIANTS}
    variants[FAST] = DEFAULT_BATCH_SIZE.get(spec.device, 1)
    variants.update({f"ours_bs{b}": b for b in spec.extra_batch_sizes})
    return variants


def _write_scenes(spec: SahiBenchSpec, workdir: str,
                  log: Callable[[str], None]) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], List[str]]:
    """Generate the scenes and save each as ``scene_I.npy`` in ``workdir`` (the workers load them).

    Returns ``(ground truth [(boxes (N, 4), classes (N,))] per scene, the .npy paths)``.
    """
    width, height = spec.size
    gt, image_paths = [], []
    for index in range(spec.num_images):
        log(f"scene {index + 1}/{spec.num_images}: {width}x{height}")
        image, boxes, classes = make_scene(width, height, spec.seed, index)
        path = os.path.join(workdir, f"scene_{index}.npy")
        np.save(path, image)
        image_paths.append(path)
        gt.append((boxes, classes))
    return gt, image_paths


def _run_rounds(base: Dict[str, Any], variants: Dict[str, int], rounds: int, workdir: str,
                log: Callable[[str], None]) -> Dict[str, List[Dict[str, Any]]]:
    """Every variant once per round, each in a fresh process; the order is reversed every other
    round (so that no variant always runs first on a warming machine). Variant -> its results."""
    order = list(variants)
    raw: Dict[str, List[Dict[str, Any]]] = {v: [] for v in order}
    for r in range(rounds):
        for variant in order if r % 2 == 0 else order[::-1]:
            log(f"round {r + 1}/{rounds}: {variant}")
            spec = dict(base, variant=variant, round=r, batch_size=variants[variant])
            raw[variant].append(_run_worker(spec, workdir, log))
    return raw


def _agreements(raw: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Agreement (first round) of matched SAHI with ours, of SAHI's defaults with ours (for
    contrast), and of matched SAHI with ``ours_fast`` and every ``ours_bsN``."""
    order = list(raw)
    return {
        "matched": agreement(raw["sahi_matched"][0], raw["ours"][0]),
        "default": agreement(raw["sahi_default"][0], raw["ours"][0]),
        **{v: agreement(raw["sahi_matched"][0], raw[v][0]) for v in order[len(VARIANTS) - 1:]},
    }


def run_sahi_benchmark(spec: SahiBenchSpec, log: Callable[[str], None] = lambda message: None) -> Dict[str, Any]:
    """Run every variant on the same scenes (see the module docstring).

    Returns ``{"summaries": variant -> summary, "variants": variant -> tiles per forward,
    "agreement", "setup"}``, what :func:`format_report` reads.
    """
    spec = _checked(spec)
    sahi_version = _sahi_version()
    spec = _resolved(spec)
    from ugs_d2.data.tiling import tile_windows

    config_yaml, weights = resolve_run(spec.run_dir, spec.weights)
    width, height = spec.size
    ours_windows = tile_windows(width, height, spec.tile, spec.overlap)
    windows_equal = sorted(sahi_windows(width, height, spec.tile, spec.overlap)) == sorted(ours_windows)
    variants = _variant_batch_sizes(spec)

    with tempfile.TemporaryDirectory(prefix="ugs-bench-sahi-") as tmp:
        workdir = spec.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        bench_config = os.path.join(workdir, "bench_config.yaml")
        model_info = write_bench_config(config_yaml, weights, spec.score_thresh, spec.device, bench_config)
        gt, image_paths = _write_scenes(spec, workdir, log)
        base = {
            "config": bench_config, "weights": weights, "num_classes": model_info["num_classes"],
            "device": spec.device, "threads": spec.threads, "tile": spec.tile, "overlap": spec.overlap,
            "batch_size": spec.batch_size, "score_thresh": spec.score_thresh, "images": image_paths,
            "warmup": spec.warmup, "quiet": spec.quiet,
        }
        raw = _run_rounds(base, variants, spec.rounds, workdir, log)
    setup = {
        "sahi_version": sahi_version, "sahi_backend": _sahi_postprocess_backend(),
        "device": spec.device, "threads": spec.threads, "rounds": spec.rounds, "warmup": spec.warmup,
        "seed": spec.seed, "num_images": spec.num_images, "size": spec.size, "tile": spec.tile,
        "overlap": spec.overlap, "batch_size": spec.batch_size, "score_thresh": spec.score_thresh,
        "windows": len(ours_windows), "windows_equal": windows_equal,
        "config": config_yaml, "weights": weights, "model": model_info,
        "gt_per_image": statistics.mean(len(c) for _, c in gt),
    }
    return {
        "summaries": {v: _summarize(v, raw[v], gt) for v in variants},
        "variants": variants,
        "agreement": _agreements(raw),
        "setup": setup,
    }


# --------------------------------------------------------------------------------------------
# report


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _header_lines(outcome: Dict[str, Any], command: str, started: str, wall_s: float,
                  loads: Sequence[float]) -> List[str]:
    """Title, command, date, machine, and the setup: SAHI, model, scenes, tiles, timing."""
    setup = outcome["setup"]
    width, height = setup["size"]
    model = setup["model"]
    load_text = f"; load average {loads[0]:.2f} -> {loads[-1]:.2f}" if loads else ""
    return [
        "# Tiled inference: ours vs SAHI",
        "",
        "```",
        command,
        "```",
        "",
        f"Started {started}, took {wall_s:.0f} s{load_text}.",
        "",
        *[f"- {line}" for line in machine_lines(setup["device"])],
        f"- SAHI {setup['sahi_version']} (postprocess backend: {setup['sahi_backend']}); every variant in a fresh "
        f"process with {setup['threads']} torch thread(s) on {setup['device']}",
        f"- model: {_display_path(setup['config'])} ({model['meta_architecture']}, {model['num_classes']} classes, "
        f"ROI heads {model['roi_heads']}), weights {_display_path(setup['weights'])}; score threshold "
        f"{setup['score_thresh']} for every variant; at most {model['detections_per_image']} detections per forward",
        f"- scenes: {setup['num_images']} synthetic {width}x{height} images (grids of 256 px `ugs_d2.data.synth` "
        f"scenes, seed {setup['seed']}), {setup['gt_per_image']:.0f} ground-truth objects per image on average",
        f"- tiles: {setup['tile']} px, overlap {setup['overlap']}: {setup['windows']} windows per image; SAHI's "
        f"slice windows {'equal ours' if setup['windows_equal'] else 'DIFFER from ours'}; our batch size "
        f"{setup['batch_size']}",
        f"- timing: median over {setup['num_images']} images x {setup['rounds']} round(s), after {setup['warmup']} "
        f"untimed call(s) per process on the first image's top-left "
        f"{setup['tile'] + setup['tile'] // 2} px square (2 x 2 windows)",
        "",
    ]


def _settings(outcome: Dict[str, Any]) -> Dict[str, str]:
    """Variant -> the table's "settings" cell."""
    setup, s = outcome["setup"], outcome["summaries"]
    cuda = setup["device"] == "cuda"
    settings = {
        "sahi_default": f"SAHI defaults: overlap 0.2, full-image pass, {s['sahi_default']['effective_postprocess']} "
                        "0.5, class-aware, 1 slice per forward",
        "sahi_matched": f"overlap {setup['overlap']}, no full-image pass, NMS/IOU 0.5, class-aware, "
                        f"batch_size={setup['batch_size']} (1 slice per forward)",
        "ours": f"overlap {setup['overlap']}, no full-image pass, NMS/IOU 0.5, class-aware, "
                f"{setup['batch_size']} tiles per forward, the model as loaded",
    }
    if FAST in outcome["variants"]:
        settings[FAST] = (f"as ours with TiledPredictor's defaults: {outcome['variants'][FAST]} tile(s) per forward, "
                          + ("optimized inference copy (BN folded, channels-last, 1x1 heads as GEMMs), "
                             if not cuda else "")
                          + "inference_mode")
    for variant, batch_size in outcome["variants"].items():
        settings.setdefault(variant, f"as ours, {batch_size} tile(s) per forward, the model as loaded")
    return settings


def _table_lines(outcome: Dict[str, Any]) -> List[str]:
    """The per-variant table: times, speed against matched SAHI, shares, memory, detections."""
    s = outcome["summaries"]
    base = s[BASELINE]
    cuda = outcome["setup"]["device"] == "cuda"
    lines = [
        "| variant | settings | s/image (median) | s/image (min) | speed vs matched SAHI | CPU s/image (median) "
        "| CPU-time speed vs matched SAHI | sys share of CPU | outside-model share | peak RSS MB | RSS rise MB |"
        + (" peak CUDA MB |" if cuda else "") + " detections/image | GT found (IoU>=0.5) |",
        "|---|---|" + "---:|" * (12 if cuda else 11),
    ]
    settings = _settings(outcome)
    for variant in outcome["variants"]:
        r = s[variant]
        cuda_cell = f" {r['cuda_peak_mb']:.0f} |" if cuda else ""
        lines.append(
            f"| {variant} | {settings[variant]} | {r['median_s']:.2f} | {r['min_s']:.2f} | "
            f"{ratio(base['median_s'], r['median_s'])} | {r['cpu_median_s']:.2f} | "
            f"{ratio(base['cpu_median_s'], r['cpu_median_s'])} | {_pct(r['sys_share'])} | "
            f"{_pct(r['outside_model_share'])} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_rise_mb']:.0f} |{cuda_cell} {r['detections_per_image']:.0f} | "
            f"{_pct(r['gt_covered'])} |"
        )
    return lines


def _agreement_lines(outcome: Dict[str, Any]) -> List[str]:
    """Matched SAHI vs ours (the one expected to agree), SAHI's defaults vs ours, and matched
    SAHI vs ``ours_fast`` and each ``ours_bsN``."""
    agree = outcome["agreement"]
    m, d = agree["matched"], agree["default"]
    return [
        "",
        f"**Agreement, matched SAHI vs ours** (same class, IoU >= {AGREEMENT_IOU}): {_pct(m['a_in_b'])} of SAHI's "
        f"{m['total_a']} detections are found in ours, {_pct(m['b_in_a'])} of our {m['total_b']} in SAHI's; "
        f"largest score difference of a matched pair {m['max_score_diff']:.2g}.",
        f"For comparison, SAHI with its defaults vs ours: {_pct(d['a_in_b'])} / {_pct(d['b_in_a'])} "
        "(different merge and an extra full-image pass: not expected to agree).",
        *[f"Matched SAHI vs {v}: {_pct(agree[v]['a_in_b'])} / {_pct(agree[v]['b_in_a'])}"
          + (f"; largest score difference of a matched pair {agree[v]['max_score_diff']:.2g}." if v == FAST else ".")
          for v in outcome["variants"] if v.startswith("ours_bs") or v == FAST],
        "",
    ]


def _fast_target_lines(outcome: Dict[str, Any], base: Dict[str, Any], target_speed: float, cuda: bool) -> List[str]:
    """The verdicts on the new path (``ours_fast``): speed, agreement, peak memory vs matched SAHI."""
    if FAST not in outcome["summaries"]:
        return []
    fast, agree = outcome["summaries"][FAST], outcome["agreement"][FAST]
    speed = base["median_s"] / fast["median_s"]
    cpu_speed = base["cpu_median_s"] / fast["cpu_median_s"] if fast["cpu_median_s"] else float("nan")
    worst = min(agree["a_in_b"], agree["b_in_a"])
    memory = "cuda_peak_mb" if cuda else "peak_rss_mb"
    ok = lambda good: "meets" if good else "misses"  # noqa: E731
    return [
        f"**Targets, new path** ({FAST}): {speed:.2f}x as fast as matched SAHI by wall time "
        f"({ok(speed >= target_speed)} >= {target_speed}x), {cpu_speed:.2f}x by CPU time "
        f"({ok(cpu_speed >= target_speed)}; on a loaded machine wall time mostly measures the scheduler, so the target "
        f"counts as met only when both meet it: {ok(min(speed, cpu_speed) >= target_speed)}); "
        f"agreement {_pct(worst)} at IoU >= {AGREEMENT_IOU} "
        f"({ok(worst >= TARGETS['agreement'])} >= {100 * TARGETS['agreement']:.0f}%); peak "
        f"{'CUDA memory' if cuda else 'RSS'} {fast[memory]:.0f} MB vs matched SAHI's {base[memory]:.0f} MB "
        f"({ok(fast[memory] <= base[memory])} no higher).",
        "",
    ]


def _previous_target_lines(outcome: Dict[str, Any], target_speed: float) -> List[str]:
    """The verdicts on the previous path (``ours`` at ``--batch-size``): speed, time outside the model."""
    setup, s = outcome["setup"], outcome["summaries"]
    ours = s["ours"]
    speedup = s[BASELINE]["median_s"] / ours["median_s"]
    share = ours["outside_model_share"]
    return [
        f"**Targets, previous path** (ours, batch size {setup['batch_size']}): {speedup:.2f}x as fast as matched SAHI "
        f"({'meets' if speedup >= target_speed else 'misses'} >= {target_speed}x on {setup['device']}); "
        f"{_pct(share)} of our time is outside the model's forward "
        f"({'meets' if share is not None and share <= TARGETS['outside_model_share'] else 'misses'} <= "
        f"{100 * TARGETS['outside_model_share']:.0f}%; {_pct(ours.get('outside_model_share_last_timing'))} by the "
        f"predictor's own `last_timing`).",
        "",
    ]


def _note_lines(outcome: Dict[str, Any]) -> List[str]:
    """What each column measures and how the two sides were made equal; warnings last."""
    setup, s = outcome["setup"], outcome["summaries"]
    model = setup["model"]
    lines = [
        "Notes:",
        "",
        "- s/image: wall time of one call, image array in -> detections as numpy arrays out (SAHI: "
        "`get_sliced_prediction`, incl. its slicing, per-slice `DefaultPredictor` calls, shifting and merge; ours: "
        "`TiledPredictor.__call__`). RGB->BGR conversion for ours happens before the clock starts. "
        "Speed ratios are matched SAHI's median over the variant's median (> 1: faster than matched SAHI).",
        "- CPU s/image: user + system CPU time (`os.times()`) of the variant's process over the same call (all "
        "its threads). Less sensitive than wall time to other load on a shared machine (see the load average "
        "above), but it counts threads that spin while waiting for each other. sys share of CPU: the kernel's "
        "part of it (page faults of freshly mapped memory: glibc serves allocations above its mmap threshold, at "
        "most 32 MiB, with new mappings, so large batched activations are faulted in on every forward).",
        "- outside-model share: 1 - (time inside the detectron2 model's forward) / (wall time), pooled over the "
        "timed images. Model time: ours from `TiledPredictor.last_timing['model_s']`, SAHI from a timer around "
        f"`DefaultPredictor.model`. SAHI's own merge step took {_pct(s[BASELINE].get('postprocess_share'))} (matched) "
        f"and {_pct(s['sahi_default'].get('postprocess_share'))} (defaults) of its wall time "
        "(`durations_in_seconds['postprocess']`).",
        "- peak RSS: `getrusage(RUSAGE_SELF).ru_maxrss` of the variant's process (model, scenes and inference); "
        "RSS rise: peak minus the RSS just before the first prediction (model and scenes already loaded).",
        "- input size: both SAHI variants get `image_size` = tile size, so `DefaultPredictor`'s "
        "`ResizeShortestEdge` leaves full tiles unchanged (left unset, it would resize every slice to the run's "
        f"test size {model['test_size'][0]}/{model['test_size'][1]}); ours does not resize tiles (`upscale=False`). "
        "The defaults' full-image pass sees the scene shrunk to the tile size on its long side.",
        "- score threshold: set in a copy of the run's detectron2 config that both sides build from "
        "(`SCORE_THRESH_TEST`), and as SAHI's `confidence_threshold`.",
        "- GT found: share of ground-truth boxes with a same-class detection at IoU >= 0.5 (not one-to-one; "
        "a sanity check that the model detects the tiny objects, not an AP).",
    ]
    if not setup["windows_equal"]:
        lines.append("- WARNING: SAHI's slice windows differ from ours (its overlap is `int(ratio * tile)` px, ours "
                     "`round(tile * (1 - overlap))` px stride); matched agreement is then not expected to be 100%.")
    if setup["sahi_version"] != SAHI_VERSION:
        lines.append(f"- WARNING: measured with sahi {setup['sahi_version']}; the comparison is specified for "
                     f"sahi=={SAHI_VERSION} (launch/requirements-bench.txt).")
    return lines


def format_report(outcome: Dict[str, Any], command: str, started: str, wall_s: float, loads: Sequence[float]) -> str:
    """The markdown report: command, setup, table, agreement, verdicts, notes."""
    cuda = outcome["setup"]["device"] == "cuda"
    target_speed = TARGETS["speedup_cuda" if cuda else "speedup_cpu"]
    lines = [
        *_header_lines(outcome, command, started, wall_s, loads),
        *_table_lines(outcome),
        *_agreement_lines(outcome),
        *_fast_target_lines(outcome, outcome["summaries"][BASELINE], target_speed, cuda),
        *_previous_target_lines(outcome, target_speed),
        *_note_lines(outcome),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # a worker: `python -m ugs_d2.bench.sahi --worker SPEC.json` (see _run_worker)
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit(f"usage: python -m ugs_d2.bench.sahi --worker SPEC.json (the benchmark: {PROG} --help)")
    _worker_main(sys.argv[2])
