"""``ugs-bench``: measure what UGS costs.

``ugs-bench overhead`` builds one model per ``configs/ugs`` preset from the same configuration
and seed, feeds every preset the same fixed training batches, and measures, in one run:

* **training-step time**: a full SGD step as detectron2's ``SimpleTrainer`` runs it (forward,
  loss sum, ``zero_grad``, backward, ``optimizer.step`` incl. gradient clipping where the preset
  sets it), model in train mode; warmup steps are discarded; the median (and, as a check against
  other load on the machine, the minimum) is reported. Presets are
  interleaved (round robin, the order reversed on every other round) so that slow phases of a
  shared machine hit all presets alike;
* **peak memory of a training step**: the bytes of tensors that are live at the step's peak,
  i.e. the model's parameters, buffers, gradients and optimizer state plus the largest amount
  of memory the step allocates on top of them (activations, temporaries, new gradients). On
  CUDA the step's part comes from ``torch.cuda.max_memory_allocated``; on CPU (which has no
  allocator statistics) from ``torch.profiler``'s allocation/free events of one extra step;
* **inference time**: model in eval mode under ``torch.no_grad()``, the same images, median
  time per image; the number of detections per image is shown since it drives post-processing.

Every ratio is against ``off`` measured in the same run. The markdown report goes to
``results/overhead.md`` (``--out``), written atomically. Example::

    ugs-bench overhead                                   # all presets, defaults (~3 min on 2 CPUs)
    ugs-bench overhead --presets off,full --device cuda model=faster_rcnn_r50_fpn
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ugs_d2.bench.common import PROG, BenchError, machine_lines, quartiles, ratio, run_and_report
from ugs_d2.cli.validate import CONFIG_DIR
from ugs_d2.fileio import output_problem

__all__ = [
    "BenchError",
    "PresetResult",
    "available_presets",
    "run_overhead",
    "format_report",
    "main",
    "run_command_line",
    "profile_cpu_step_peak",
]

#: Table 6 order; presets found in configs/ugs but not listed here are appended alphabetically.
PRESET_ORDER = (
    "off", "l1", "smooth_l1", "giou", "grad_clip", "kl", "ce_uniform", "ce_in", "ce_in_um", "full",
    "full_rho0", "ce_in_um_scaled",
)
#: Targets for full UGS vs off (paper, Tab. 5: 1.15x step time, 1.13x memory); on the tiny CPU
#: preset the step target is 1.4x (fixed costs weigh more there), see results/overhead*.md.
TARGETS = {"step": 1.15, "memory": 1.13, "inference": 1.05}
BENCH_PROFILE_MARK = "ugs_bench::zero_grad_backward_step"


def available_presets() -> List[str]:
    """The ``configs/ugs`` presets, in Table 6 order."""
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONFIG_DIR, "ugs")) if f.endswith(".yaml"))
    return [p for p in PRESET_ORDER if p in names] + [p for p in names if p not in PRESET_ORDER]


@dataclass
class PresetResult:
    name: str
    step_s: List[float] = field(default_factory=list)
    infer_s_per_image: List[float] = field(default_factory=list)
    peak_bytes: Optional[float] = None
    static_bytes: Optional[float] = None
    detections_per_image: List[int] = field(default_factory=list)
    last_loss: Optional[float] = None
    meta_architecture: str = ""

    @property
    def step_median(self) -> float:
        return statistics.median(self.step_s)

    @property
    def infer_median(self) -> float:
        return statistics.median(self.infer_s_per_image)

    @property
    def step_min(self) -> float:
        return min(self.step_s)

    @property
    def infer_min(self) -> float:
        return min(self.infer_s_per_image)


# --------------------------------------------------------------------------------------------
# configuration and data


def _parse_presets(text: str) -> List[str]:
    known = available_presets()
    presets = []
    for name in (p.strip() for p in text.split(",")):
        if not name:
            continue
        if name not in known:
            raise BenchError(f"unknown preset '{name}'; known: {', '.join(known)}")
        if name not in presets:
            presets.append(name)
    if not presets:
        raise BenchError(f"--presets is empty; known: {', '.join(known)}")
    if "off" not in presets:  # every ratio is against off
        presets.insert(0, "off")
    return presets


def _compose_preset(overrides: Sequence[str], preset: str, device: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ugs_d2.cli.validate import _compose, _unknown_key_message

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:
        raise BenchError(str(e).strip().splitlines()[0]) from None
    for o in parsed:
        key = o.key_or_group
        if key == "ugs":
            raise BenchError(f"override '{o.input_line}': use --presets (e.g. --presets off,full), not ugs=")
        if key == "device":
            raise BenchError(f"override '{o.input_line}': use --device")
        if o.is_sweep_override():
            raise BenchError(f"override '{o.input_line}': sweeps are not supported here")
    try:
        return _compose(list(overrides) + [f"ugs={preset}", f"device={device}"])
    except Exception as e:
        raise BenchError(_unknown_key_message(parsed, e)) from None


def _dataset_given(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") in ("dataset", "dataset.root") for o in overrides)


def _load_dataset_dicts(cfg, overrides: Sequence[str], num_images: int, workdir: str, log):
    """The first ``num_images`` training images (cycled if fewer) and the number of classes: from
    the given ``dataset.root``, or from a small synthetic set generated in ``workdir`` with
    ``dataset.generate``'s seed and image size."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from omegaconf import OmegaConf

    from ugs_d2.data.datasets import register_dataset, split_names

    dataset_cfg = copy.deepcopy(cfg.dataset)
    if not _dataset_given(overrides):
        from ugs_d2.data import synth

        generate = dataset_cfg.get("generate") or {"seed": 0, "image_size": 256}
        root = os.path.join(workdir, "synth")
        log(f"generating {num_images} synthetic training images in {root}")
        synth.generate(
            root,
            num_train=num_images,
            num_val=1,  # unused by the bench, but registration refuses an empty split
            seed=int(generate["seed"]),
            config=synth.SynthConfig(image_size=int(generate["image_size"])),
            progress=False,
        )
        OmegaConf.update(dataset_cfg, "root", root)
    register_dataset(dataset_cfg)
    name = split_names(dataset_cfg)[0][0]
    dicts = sorted(DatasetCatalog.get(name), key=lambda d: d["image_id"])
    if not dicts:
        raise BenchError(f"dataset {name} has no images")
    num_classes = len(MetadataCatalog.get(name).thing_classes)
    return [dicts[i % len(dicts)] for i in range(num_images)], num_classes


def _build_batches(d2_cfg, dicts, batch_size: int, seed: int):
    """Map the images once (detectron2's DatasetMapper, seeded): training and test batches."""
    from detectron2.data import DatasetMapper
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(seed)
    train_mapper = DatasetMapper(d2_cfg, is_train=True)
    test_mapper = DatasetMapper(d2_cfg, is_train=False)
    train = [train_mapper(copy.deepcopy(d)) for d in dicts]
    test = [test_mapper(copy.deepcopy(d)) for d in dicts]
    split = lambda xs: [xs[i:i + batch_size] for i in range(0, len(xs), batch_size)]  # noqa: E731
    return split(train), split(test)


def build_preset_on_fixed_batches(overrides: Sequence[str], preset: str, device: str, batch_size: int,
                                  num_batches: int, prefix: str, log):
    """One ``ugs=preset`` model as ugs-train builds it (seeded) and ``num_batches`` fixed training
    batches of ``batch_size`` images (see :func:`_load_dataset_dicts`). Returns (model, batches,
    composed Hydra config)."""
    import torch

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.engine.trainer import UGSTrainer

    cfg = _compose_preset(overrides, preset, device)
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        dicts, num_classes = _load_dataset_dicts(cfg, overrides, batch_size * num_batches, workdir, log)
        d2 = to_detectron2_cfg(cfg, num_classes=num_classes)
        batches, _ = _build_batches(d2, dicts, batch_size, int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    model = UGSTrainer.build_model(d2)
    model.train()
    return model, batches, cfg


# --------------------------------------------------------------------------------------------
# measurements


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storages counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        key = (storage.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _state_tensors(model, optimizer, grads: bool):
    import torch

    yield from model.parameters()
    yield from model.buffers()
    if grads:
        yield from (p.grad for p in model.parameters())
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


class _Preset:
    """One preset's model, optimizer and step functions."""

    def __init__(self, name: str, d2_cfg, seed: int, lr: float):
        from detectron2.solver import build_optimizer
        from detectron2.utils.env import seed_all_rng

        from ugs_d2.engine.trainer import UGSTrainer

        self.name, self.cfg, self.device = name, d2_cfg, d2_cfg.MODEL.DEVICE
        seed_all_rng(seed)  # identical initial weights wherever the architectures agree
        self.model = UGSTrainer.build_model(d2_cfg)  # as ugs-train builds it (with its NaN check)
        self.model.train()
        self.optimizer = build_optimizer(d2_cfg, self.model)  # incl. gradient clipping if set
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.iteration = 0
        self.result = PresetResult(name, meta_architecture=d2_cfg.MODEL.META_ARCHITECTURE)

    def _forward(self, batch):
        loss_dict = self.model(batch)
        return sum(loss_dict.values())

    def _backward_step(self, losses) -> None:
        self.optimizer.zero_grad()
        losses.backward()
        self.optimizer.step()

    def train_step(self, batch) -> float:
        """One SGD step in detectron2's order; returns its wall time in seconds."""
        from detectron2.utils.events import EventStorage

        batch = copy.deepcopy(batch)
        with EventStorage(self.iteration):
            _sync(self.device)
            start = time.perf_counter()
            losses = self._forward(batch)
            self._backward_step(losses)
            _sync(self.device)
            elapsed = time.perf_counter() - start
        self.result.last_loss = float(losses.detach())
        self.iteration += 1
        return elapsed

    def memory_step(self, batch) -> None:
        """One SGD step whose peak memory is recorded in ``self.result`` (see module docstring)."""
        from detectron2.utils.events import EventStorage

        batch = copy.deepcopy(batch)
        with EventStorage(self.iteration):
            if self.device == "cuda":
                peak, static = self._cuda_peak(batch)
            else:
                try:
                    peak, static = self._cpu_peak(batch)
                except RuntimeError as e:  # a torch build whose profiler records no memory events
                    print(f"[{PROG}] {self.name}: peak memory not measured: {e}", file=sys.stderr)
                    peak, static = None, None
        self.result.peak_bytes, self.result.static_bytes = peak, static
        self.iteration += 1

    def _cuda_peak(self, batch):
        import torch

        static = _tensor_bytes(_state_tensors(self.model, self.optimizer, grads=True))
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self._backward_step(self._forward(batch))
        torch.cuda.synchronize()
        return static + torch.cuda.max_memory_allocated() - before, static

    def _cpu_peak(self, batch):
        """Static state + the step's peak of live allocations, from profiler memory events.

        The profiler cannot see frees of blocks allocated before it started, so the previous
        step's gradients are released *before* profiling and added back for the forward phase
        (detectron2 keeps them alive until ``zero_grad``, which it calls after the forward).
        """
        grad_bytes = _tensor_bytes(p.grad for p in self.model.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        return profile_cpu_step_peak(
            lambda: self._forward(batch),
            self._backward_step,
            static_bytes=_tensor_bytes(_state_tensors(self.model, self.optimizer, grads=False)),
            grad_bytes=grad_bytes,
        )

    def infer(self, batch) -> float:
        """Eval-mode forward of one batch; returns seconds per image."""
        import torch

        self.model.eval()
        try:
            with torch.no_grad():
                _sync(self.device)
                start = time.perf_counter()
                outputs = self.model(batch)
                _sync(self.device)
                elapsed = time.perf_counter() - start
        finally:
            self.model.train()
        self.result.detections_per_image.extend(len(o["instances"]) for o in outputs)
        return elapsed / len(batch)


def profile_cpu_step_peak(forward: Callable, backward_step: Callable, static_bytes: int, grad_bytes: int):
    """Peak bytes of live CPU tensors during ``backward_step(forward())``.

    In detectron2's ``SimpleTrainer`` the previous step's gradients (``grad_bytes``) are alive
    during the forward and freed by ``zero_grad`` before the backward. The profiler cannot see
    frees of blocks allocated before it started, so the caller releases them first
    (``zero_grad(set_to_none=True)``) and they are added back here for the forward phase.

    Returns:
        ``(peak, static)``: ``static = static_bytes + grad_bytes`` (the state at the step's start)
        and ``peak = static_bytes + max(grad_bytes + forward peak, backward peak)``, the peaks
        being of the running sum of the profiler's allocation (+) and free (-) events.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        losses = forward()
        with record_function(BENCH_PROFILE_MARK):
            backward_step(losses)
    events = prof.profiler.kineto_results.events()
    marks = [e.start_ns() for e in events if e.name() == BENCH_PROFILE_MARK]
    if len(marks) != 1:
        raise RuntimeError("torch.profiler did not record the backward marker")
    memory = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    if not memory:
        raise RuntimeError("torch.profiler recorded no CPU memory events")
    live, forward_peak, backward_peak = 0, 0, 0
    for start_ns, nbytes in memory:
        live += nbytes
        if start_ns < marks[0]:
            forward_peak = max(forward_peak, live)
        else:
            backward_peak = max(backward_peak, live)
    return static_bytes + max(grad_bytes + forward_peak, backward_peak), static_bytes + grad_bytes


# --------------------------------------------------------------------------------------------
# the benchmark


def run_overhead(
    presets: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    iters: int = 2,
    warmup: int = 3,
    repeats: int = 15,
    device: str = "auto",
    batch_size: int = 2,
    num_batches: int = 4,
    lr: Optional[float] = None,
    log: Callable[[str], None] = lambda message: None,
) -> Dict:
    """Measure ``presets`` (``off`` is added when missing). Returns a dict with ``results``
    (list of ``PresetResult``, in ``presets`` order) and ``setup`` (what was run)."""
    for name, value, minimum in (("iters", iters, 1), ("warmup", warmup, 0), ("repeats", repeats, 1),
                                 ("batch_size", batch_size, 1), ("num_batches", num_batches, 1)):
        if value < minimum:
            raise BenchError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    presets = _parse_presets(",".join(presets))
    import torch

    from ugs_d2.config import ConfigError, resolve_device, to_detectron2_cfg

    try:
        device = resolve_device(device)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no GPU is visible")

    cfgs, d2_cfgs = {}, {}
    for preset in presets:
        cfgs[preset] = _compose_preset(overrides, preset, device)
        try:
            d2_cfgs[preset] = to_detectron2_cfg(cfgs[preset])
        except ConfigError as e:
            raise BenchError(f"ugs={preset}: {e}") from None
    base_cfg, base_d2 = cfgs["off"], d2_cfgs["off"]
    seed = int(base_cfg.seed)
    if lr is None:  # the first iteration's lr of the configured schedule: small, never diverges
        lr = base_d2.SOLVER.BASE_LR * base_d2.SOLVER.WARMUP_FACTOR

    with tempfile.TemporaryDirectory(prefix="ugs-bench-") as workdir:
        dicts, num_classes = _load_dataset_dicts(base_cfg, overrides, batch_size * num_batches, workdir, log)
        train_batches, test_batches = _build_batches(base_d2, dicts, batch_size, seed)
    # the box head's size (with bins: classes x 4 x bins outputs) follows the dataset's classes
    d2_cfgs = {p: to_detectron2_cfg(cfgs[p], num_classes=num_classes) for p in presets}

    states = []
    for preset in presets:
        log(f"{preset}: building {d2_cfgs[preset].MODEL.META_ARCHITECTURE}")
        states.append(_Preset(preset, d2_cfgs[preset], seed, lr))

    def batch(k: int, batches):
        return batches[k % len(batches)]

    # 1) warmup, then one step that measures memory (not timed: the profiler slows it down)
    for state in states:
        log(f"{state.name}: {warmup} warmup step(s) + 1 memory step")
        for k in range(warmup):
            state.train_step(batch(k, train_batches))
        state.memory_step(batch(warmup, train_batches))
    # 2) timed training steps, presets interleaved
    first = warmup + 1
    for r in range(repeats):
        log(f"training steps: round {r + 1}/{repeats}")
        for state in states if r % 2 == 0 else states[::-1]:
            for i in range(iters):
                state.result.step_s.append(state.train_step(batch(first + r * iters + i, train_batches)))
    # 3) inference, presets interleaved; one warmup batch each
    for state in states:
        state.infer(batch(0, test_batches))
        state.result.detections_per_image.clear()
    for r in range(repeats):
        log(f"inference: round {r + 1}/{repeats}")
        for state in states if r % 2 == 0 else states[::-1]:
            for i in range(iters):
                state.result.infer_s_per_image.append(state.infer(batch(1 + r * iters + i, test_batches)))

    model_cfg = base_cfg.model
    setup = {
        "presets": presets,
        "device": device,
        "seed": seed,
        "lr": lr,
        "iters": iters,
        "warmup": warmup,
        "repeats": repeats,
        "batch_size": batch_size,
        "num_batches": num_batches,
        "overrides": list(overrides),
        "dataset": base_cfg.dataset.root if _dataset_given(overrides) else
        "synthetic (ugs_d2.data.synth, dataset.generate seed/image_size), generated in a temp dir",
        "model": (
            f"{base_d2.MODEL.META_ARCHITECTURE} R{model_cfg.backbone.depth}-FPN "
            f"({model_cfg.backbone.norm}, {model_cfg.backbone.fpn_channels} FPN channels), "
            f"train min size {list(base_d2.INPUT.MIN_SIZE_TRAIN)}/max {base_d2.INPUT.MAX_SIZE_TRAIN}, "
            f"test {base_d2.INPUT.MIN_SIZE_TEST}/{base_d2.INPUT.MAX_SIZE_TEST}"
        ),
        "num_classes": num_classes,
        "train_image_sizes": sorted({tuple(x["image"].shape[-2:]) for b in train_batches for x in b}),
    }
    return {"results": [s.result for s in states], "setup": setup}


# --------------------------------------------------------------------------------------------
# report


def format_report(outcome: Dict, command: str, started: str, wall_s: float, loads=()) -> str:
    """The markdown report: header (command, date, machine, setup, targets), table, notes."""
    results, setup = outcome["results"], outcome["setup"]
    by_name = {r.name: r for r in results}
    off = by_name["off"]
    mb = 1024 * 1024
    lines = [
        "# UGS overhead: training step, peak memory and inference relative to `off`",
        "",
        f"- command: `{command}`",
        f"- date: {started} (wall time of the run: {wall_s:.0f} s)",
        *(f"- {line}" for line in machine_lines(setup["device"])),
    ]
    if loads:
        lines.append(f"- load average (1 min) at start / end: {loads[0]:.2f} / {loads[-1]:.2f}")
    lines += [
        f"- device: {setup['device']}; model: {setup['model']}",
        f"- data: {setup['num_batches']} fixed batches of {setup['batch_size']} images "
        f"(training inputs after augmentation: {', '.join(f'{h}x{w}' for h, w in setup['train_image_sizes'])}); "
        f"{setup['dataset']}",
        f"- classes: {setup['num_classes']} (the dataset's)",
        f"- same seed ({setup['seed']}) before building each model; SGD lr {setup['lr']:g} "
        "(the schedule's first-iteration lr); every preset sees the same batches in the same order",
        f"- per preset: {setup['warmup']} warmup step(s) + 1 memory step, then "
        f"{setup['repeats']} round(s) x {setup['iters']} timed step(s), presets interleaved; inference: "
        f"1 warmup batch, then {setup['repeats']} x {setup['iters']} timed batches",
        f"- overrides: {' '.join(setup['overrides']) if setup['overrides'] else '(none)'}",
        f"- targets (full vs off): step time <= {TARGETS['step']:.2f}x, peak memory <= "
        f"{TARGETS['memory']:.2f}x, inference <= {TARGETS['inference']:.2f}x "
        "(paper: 1.15x step time, 1.13x memory)",
        "",
        "| preset | meta-arch | step ms (median) | step ms p25-p75 | step ms (min) | step ratio "
        "| step ratio (min) | peak MB | static MB | memory ratio | inference ms/img (median) "
        "| inference ms/img (min) | inference ratio | inference ratio (min) | detections/img |",
        "|---|---|" + "---:|" * 13,
    ]
    for r in results:
        q1, q3 = quartiles(r.step_s)
        peak = f"{r.peak_bytes / mb:.1f}" if r.peak_bytes is not None else "n/a"
        static = f"{r.static_bytes / mb:.1f}" if r.static_bytes is not None else "n/a"
        dets = statistics.mean(r.detections_per_image) if r.detections_per_image else 0.0
        lines.append(
            f"| {r.name} | {r.meta_architecture} | {1000 * r.step_median:.1f} | {1000 * q1:.0f}-{1000 * q3:.0f} "
            f"| {1000 * r.step_min:.1f} | {ratio(r.step_median, off.step_median)} "
            f"| {ratio(r.step_min, off.step_min)} | {peak} | {static} "
            f"| {ratio(r.peak_bytes, off.peak_bytes)} | {1000 * r.infer_median:.1f} | {1000 * r.infer_min:.1f} "
            f"| {ratio(r.infer_median, off.infer_median)} | {ratio(r.infer_min, off.infer_min)} | {dets:.1f} |"
        )
    if "full" in by_name:
        full = by_name["full"]
        checks = [
            ("step time", full.step_median, off.step_median, full.step_min / off.step_min, TARGETS["step"]),
            ("peak memory", full.peak_bytes, off.peak_bytes, None, TARGETS["memory"]),
            ("inference", full.infer_median, off.infer_median, full.infer_min / off.infer_min,
             TARGETS["inference"]),
        ]
        verdicts = []
        for what, value, reference, min_ratio, target in checks:
            if value is None or not reference:
                verdicts.append(f"{what} n/a")
                continue
            times = value / reference
            of_mins = f", {min_ratio:.2f}x of minima" if min_ratio is not None else ""
            verdicts.append(
                f"{what} {times:.2f}x{of_mins} ({'meets' if times <= target else 'misses'} <= {target:.2f}x)"
            )
        lines += ["", f"**full vs off**: {'; '.join(verdicts)}."]
    memory_how = (
        "`torch.cuda.max_memory_allocated` during one extra training step (reset before it), minus "
        "what was allocated before it, plus the preset's static state"
        if setup["device"] == "cuda" else
        "CPU has no allocator statistics, so one extra training step runs under `torch.profiler` "
        "(`profile_memory=True`); the running sum of its allocation and free events gives the peak of "
        "live tensor bytes the step adds (activations, temporaries, new gradients). The previous "
        "step's gradients, which detectron2 keeps alive through the forward pass, are added back for "
        "that phase. This counts tensor bytes, not process RSS (allocator caching and fragmentation "
        "are not included)"
    )
    lines += [
        "",
        "Notes:",
        "",
        "- step ms: wall time of forward + loss sum + `zero_grad` + backward + `optimizer.step` "
        "(detectron2's `SimpleTrainer` order; gradient clipping inside the step for `grad_clip`), "
        "model in train mode" + (", synchronised with `torch.cuda.synchronize`" if setup["device"] == "cuda"
                                  else "") + "; `step ratio` is the ratio of medians, `(min)` the ratio of "
        "the fastest steps, which is less sensitive to other load on a shared machine (compare the "
        "p25-p75 spread and the load average above).",
        "- peak MB = static MB (parameters, buffers, gradients and SGD momentum of this preset) + the "
        f"largest amount a training step allocates on top of them. How: {memory_how}.",
        "- inference ms/img: eval mode, `torch.no_grad()`, batch time / images per batch. "
        "The weights are the briefly trained ones (a few steps from the seeded initialisation), so the "
        "number of detections, and hence the post-processing (NMS) cost, can differ between presets "
        "for reasons unrelated to UGS; detections/img shows it.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmarks of the UGS implementation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    presets = ",".join(available_presets())
    overhead = sub.add_parser(
        "overhead",
        help="training-step time, peak memory and inference time of each preset relative to off",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build one model per configs/ugs preset (same config, data and seed), run the same\n"
            "fixed training batches through each, and report per preset, relative to `off` in the\n"
            "same run: median training-step time (forward + backward + SGD step), peak memory of a\n"
            "training step, and median inference time per image. Presets are interleaved to\n"
            "spread the noise of a shared machine. Writes a markdown table to --out.\n\n"
            "Without a dataset.root override, a small synthetic set is generated in a temp dir.\n"
            "Targets (full vs off): step <= 1.15x, memory <= 1.13x, inference <= 1.05x (paper)."
        ),
        epilog=(
            "examples:\n"
            "  ugs-bench overhead\n"
            "  ugs-bench overhead --presets off,full --iters 5 --repeats 4\n"
            "  ugs-bench overhead --device cuda model=faster_rcnn_r50_fpn --batch-size 4\n"
            "  ugs-bench overhead 'model.input.min_size_train=[128]' model.input.max_size_train=128"
        ),
    )
    overhead.add_argument(
        "--presets", default=presets,
        help=f"comma-separated configs/ugs presets; off is always added (default: {presets})",
    )
    overhead.add_argument("--iters", type=int, default=2,
                          help="timed steps (and inference batches) per preset per round (default: 2)")
    overhead.add_argument("--repeats", type=int, default=15,
                          help="rounds over all presets; timed steps per preset = iters x repeats (default: 15)")
    overhead.add_argument("--warmup", type=int, default=3,
                          help="untimed training steps per preset before measuring (default: 3)")
    overhead.add_argument("--batch-size", type=int, default=2, help="images per batch (default: 2)")
    overhead.add_argument("--num-batches", type=int, default=4,
                          help="distinct fixed batches, cycled (default: 4)")
    overhead.add_argument("--lr", type=float, default=None,
                          help="SGD learning rate (default: schedule.base_lr x the warmup factor 0.001)")
    overhead.add_argument("--threads", type=int, default=None,
                          help="torch intra-op threads (default: torch's default, usually the CPU count)")
    overhead.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                          help="auto = cuda when a GPU is visible (default: auto)")
    overhead.add_argument("--out", default=os.path.join("results", "overhead.md"),
                          help="markdown report, written atomically (default: results/overhead.md)")
    overhead.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    overhead.add_argument(
        "overrides", nargs="*", metavar="OVERRIDE",
        help="Hydra overrides of configs/ (as for ugs-train), e.g. model.input.max_size_train=128; "
             "applied to every preset; not ugs=... (use --presets) or device=... (use --device)",
    )
    from ugs_d2.cli import (
        bench_anchors,
        bench_cocoeval,
        bench_help,
        bench_overfit,
        bench_sahi,  # here, not at the top: bench_sahi imports this module
        bench_tiling,
        bench_ur,
    )

    bench_sahi.add_parser(sub)
    bench_cocoeval.add_parser(sub, PROG)
    bench_anchors.add_parser(sub)
    bench_tiling.add_parser(sub)
    bench_ur.add_parser(sub)
    bench_overfit.add_parser(sub)
    bench_help.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point; errors are one line, Ctrl-C / SIGTERM too (exit 130 / 143)."""
    from ugs_d2.interrupts import interruptible

    with interruptible(PROG, "rerun the same command"):
        _main(argv)


def _main(argv: Optional[List[str]] = None) -> None:
    """Console entry point (``ugs-bench``); errors are one line (``ugs-bench: ...``)."""
    invoked_as = PROG
    if argv is None and os.path.basename(sys.argv[0]) == "bench.py":
        invoked_as = "python -m ugs_d2.cli.bench"  # record the command as it was typed
    run_command_line(sys.argv[1:] if argv is None else argv, invoked_as)


def run_command_line(argv: List[str], invoked_as: str = PROG) -> Dict:
    """``main`` returning what ``run_overhead`` returned plus ``report`` (the markdown)."""
    argv = list(argv)
    args = _parser().parse_args(argv)
    problem = output_problem(args.out) if getattr(args, "out", None) else None
    if problem:  # before the benchmark runs (minutes to hours), not after
        raise SystemExit(f"{PROG}: --out {args.out} {problem}")
    if args.command == "sahi":
        from ugs_d2.cli import bench_sahi

        return bench_sahi.run_command_line(args, argv, invoked_as)
    if args.command == "tiling":
        from ugs_d2.cli import bench_tiling

        return bench_tiling.run_command_line(args, argv, invoked_as)
    if args.command == "anchors":
        from ugs_d2.cli import bench_anchors

        return bench_anchors.run_command_line(args, argv, invoked_as)
    if args.command == "cocoeval":
        from ugs_d2.cli import bench_cocoeval

        return bench_cocoeval.run_command_line(args, argv, invoked_as)
    if args.command == "help":
        from ugs_d2.cli import bench_help

        return bench_help.run_command_line(args, argv, invoked_as)
    if args.command in ("ur", "overfit"):
        from ugs_d2.cli import bench_overfit, bench_ur

        module = bench_ur if args.command == "ur" else bench_overfit
        return module.run_command_line(args, argv, invoked_as)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU memory profile's log lines are noise
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[{PROG}] {m}", file=sys.stderr, flush=True))

    def run() -> Dict:
        if args.threads is not None:
            if args.threads < 1:
                raise BenchError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return run_overhead(
            _parse_presets(args.presets), args.overrides, iters=args.iters, warmup=args.warmup,
            repeats=args.repeats, device=args.device, batch_size=args.batch_size,
            num_batches=args.num_batches, lr=args.lr, log=log,
        )

    return run_and_report(run, format_report, args.out, argv, invoked_as, PROG, log)


if __name__ == "__main__":
    main()
