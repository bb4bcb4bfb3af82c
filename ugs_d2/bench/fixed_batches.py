"""The same configuration and data for every preset a benchmark compares: the ``configs/ugs``
presets, one preset composed with the benchmark's overrides, the first training images of the
dataset (or of a small generated one) mapped once into fixed batches, and a preset's model built
as ``ugs-train`` builds it. ``ugs-bench overhead``, ``ur`` and ``overfit`` use these."""
import copy
import os
import tempfile
from typing import List, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

from ugs_d2.bench.common import BenchError
from ugs_d2.harness.compose import CONFIG_DIR, compose, unknown_key_message

__all__ = [
    "PRESET_ORDER",
    "available_presets",
    "compose_preset",
    "dataset_given",
    "load_dataset_dicts",
    "build_batches",
    "build_preset_on_fixed_batches",
]

#: Table 6 order; presets found in configs/ugs but not listed here are appended alphabetically.
PRESET_ORDER = (
    "off", "l1", "smooth_l1", "giou", "grad_clip", "kl", "ce_uniform", "ce_in", "ce_in_um", "full",
    "full_rho0", "ce_in_um_scaled",
)


def available_presets() -> List[str]:
    """The ``configs/ugs`` presets, in Table 6 order."""
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONFIG_DIR, "ugs")) if f.endswith(".yaml"))
    return [p for p in PRESET_ORDER if p in names] + [p for p in names if p not in PRESET_ORDER]


def compose_preset(overrides: Sequence[str], preset: str, device: str):
    """The Hydra config of ``overrides`` + ``ugs=preset`` + ``device=device``. The benchmark sets
    the preset and the device itself, so ``overrides`` may name neither, nor sweep; a bad override
    is a one-line ``BenchError``."""
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
        return compose(list(overrides) + [f"ugs={preset}", f"device={device}"])
    except Exception as e:
        raise BenchError(unknown_key_message(parsed, e)) from None


def dataset_given(overrides: Sequence[str]) -> bool:
    """Whether ``overrides`` choose a dataset (else the benchmark generates a synthetic one)."""
    return any(o.split("=", 1)[0].lstrip("+~") in ("dataset", "dataset.root") for o in overrides)


def load_dataset_dicts(cfg, overrides: Sequence[str], num_images: int, workdir: str, log):
    """The first ``num_images`` training images (cycled if fewer) and the number of classes: from
    the given ``dataset.root``, or from a small synthetic set generated in ``workdir`` with
    ``dataset.generate``'s seed and image size."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from omegaconf import OmegaConf

    from ugs_d2.data.datasets import register_dataset, split_names

    dataset_cfg = copy.deepcopy(cfg.dataset)
    if not dataset_given(overrides):
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


def build_batches(d2_cfg, dicts, batch_size: int, seed: int):
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
    batches of ``batch_size`` images (see :func:`load_dataset_dicts`). Returns (model, batches,
    composed Hydra config)."""
    import torch

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.engine.trainer import UGSTrainer

    cfg = compose_preset(overrides, preset, device)
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        dicts, num_classes = load_dataset_dicts(cfg, overrides, batch_size * num_batches, workdir, log)
        d2 = to_detectron2_cfg(cfg, num_classes=num_classes)
        batches, _ = build_batches(d2, dicts, batch_size, int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    model = UGSTrainer.build_model(d2)
    model.train()
    return model, batches, cfg
