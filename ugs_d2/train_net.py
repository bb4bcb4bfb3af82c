"""``ugs-train-net`` (also ``python -m ugs_d2.train_net``): detectron2's ``train_net.py`` convention.

Examples::

    ugs-train-net --config-file configs/Base-UGS.yaml SOLVER.MAX_ITER 200 OUTPUT_DIR out/base
    ugs-train-net --config-file projects/UGS_RetinaNet/configs/ugs_retinanet_R_18_FPN.yaml
    ugs-train-net --config-file X.yaml --resume                 # continue from out's last checkpoint
    ugs-train-net --config-file X.yaml --eval-only MODEL.WEIGHTS out/base/model_final.pth
    ugs-train-net --config-file X.yaml --num-gpus 4

The config is detectron2's own: ``get_cfg()``, ``add_ugs_config`` and the keys ``ugs-train``'s
bridge adds (``AUGMENT``, ``GRADVAR``, ``TILING``, ``UGS_EVAL``, ``INPUT.RESIZE``,
``UGS_PROJECT``) at their ``ugs-train`` defaults, then ``merge_from_file`` (``_BASE_`` chains,
e.g. to ``configs/Base-UGS.yaml``) and ``merge_from_list`` (the trailing ``KEY VALUE`` pairs),
then the class selection (``apply_ugs_architecture`` or the project's ``apply_*_architecture``).
The run is ``ugs-train``'s (``ugs_d2.train.train_and_evaluate``): the same trainer and the same
run directory (``OUTPUT_DIR``): ``detectron2_config.yaml``, ``metrics.json``, checkpoints,
W&B offline files, ``results.json`` and ``done``. See docs/detectron2_entry.md.

Only argparse is imported before the arguments are parsed, so ``--help`` is instant.
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["argument_parser", "setup", "main", "dataset_preset_for", "project_of"]

COMMAND = "ugs-train-net"
#: detectron2 architectures whose class count lives outside MODEL.ROI_HEADS
NUM_CLASSES_KEYS = {"UGSRetinaNet": "RETINANET", "RetinaNet": "RETINANET", "UGSFCOS": "FCOS"}


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` (same flags and defaults, except ``--dist-url``
    which defaults to ``auto``: a free port, or the SLURM job's), without importing detectron2."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Train/evaluate a UGS detector from a detectron2 YAML (train_net.py convention). "
        "Docs: docs/detectron2_entry.md",
        epilog="Trailing KEY VALUE pairs override the config (detectron2's merge_from_list), e.g. "
        "SOLVER.MAX_ITER 100 MODEL.UGS.ROI.ENABLED True OUTPUT_DIR out/x. UGS_PROJECT NAME selects "
        "a projects/ detector for a YAML outside projects/NAME/configs/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR's last checkpoint (a finished run only prints its results)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate MODEL.WEIGHTS (with --resume: OUTPUT_DIR's last checkpoint)")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 (auto: a free port)")
    parser.add_argument("--wandb", default="offline", choices=("offline", "online", "off"),
                        help="W&B logging, as ugs-train's wandb.mode (off: wandb.enabled=false)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs overriding the config (merge_from_list)")
    return parser


def _root_config():
    """``ugs-train``'s default Hydra config (configs/config.yaml): its bridge's detectron2 keys
    and its ``wandb:`` block are ugs-train-net's defaults."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ugs_d2.cli.validate import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config")
    GlobalHydra.instance().clear()
    return cfg


def _add_missing(cfg, source) -> None:
    """Copy every key of ``source`` that ``cfg`` lacks (recursively), in place."""
    from detectron2.config import CfgNode

    for key, value in source.items():
        if key not in cfg:
            cfg[key] = value.clone() if isinstance(value, CfgNode) else value
        elif isinstance(value, CfgNode) and isinstance(cfg[key], CfgNode):
            _add_missing(cfg[key], value)


def default_cfg():
    """``get_cfg()`` + ``add_ugs_config`` + the keys ``ugs-train``'s bridge adds, at their
    ``ugs-train`` defaults; ``MODEL.DEVICE`` as ``device=auto`` (cuda if visible, else cpu)."""
    from detectron2.config import get_cfg

    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.modeling import add_ugs_config

    cfg = get_cfg()
    add_ugs_config(cfg)
    bridged = to_detectron2_cfg(_root_config())  # no output dir: checks only, writes nothing
    _add_missing(cfg, bridged)
    cfg.MODEL.DEVICE = bridged.MODEL.DEVICE
    return cfg


def _opts_value(opts: Sequence[str], key: str) -> Optional[str]:
    pairs = dict(zip(opts[0::2], opts[1::2]))
    return pairs.get(key)


def project_of(config_file: str, opts: Sequence[str]) -> str:
    """The ``projects/`` detector a run uses ("" = the core Faster R-CNN): ``UGS_PROJECT`` from
    the trailing options, else from the YAML chain, else ``NAME`` when the file lies in
    ``projects/NAME/configs/`` (each project's configs go with its package, as in detectron2)."""
    from detectron2.config import CfgNode

    from ugs_d2.projects import get_project

    given = _opts_value(opts, "UGS_PROJECT")
    if given is not None:
        return given
    if config_file:
        chained = CfgNode.load_yaml_with_base(config_file, allow_unsafe=False)
        if chained.get("UGS_PROJECT"):
            return str(chained["UGS_PROJECT"])
        parts = os.path.abspath(config_file).split(os.sep)  # .../NAME/configs/FILE.yaml
        if len(parts) >= 3 and parts[-2] == "configs":
            try:
                return get_project(parts[-3]).name  # a folder named after a registered project
            except LookupError:
                pass
    return ""


def _project_function(module, prefix: str, suffix: str):
    names = [n for n in getattr(module, "__all__", dir(module)) if n.startswith(prefix) and n.endswith(suffix)]
    if len(names) != 1:
        raise ValueError(f"UGS_PROJECT: package {module.__name__} exports no single {prefix}*{suffix} ({names})")
    return getattr(module, names[0])


def _flat_keys(cfg, prefix: str = "") -> List[str]:
    from detectron2.config import CfgNode

    keys = []
    for key, value in cfg.items():
        keys += _flat_keys(value, f"{prefix}{key}.") if isinstance(value, CfgNode) else [f"{prefix}{key}"]
    return keys


def _check_keys(cfg, keys: Sequence[str]) -> None:
    """An unknown KEY of the trailing options: one line with the closest keys (detectron2's own
    message names the key only)."""
    import difflib

    known = _flat_keys(cfg)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown config key '{key}' in the KEY VALUE options{hint}")


def setup(args: argparse.Namespace):
    """The frozen detectron2 config of the command line (detectron2's ``setup(args)``).

    Raises:
        ValueError/KeyError: detectron2's (an unknown key, a wrong type) or the class selection's.
    """
    from ugs_d2.config import load_project
    from ugs_d2.modeling import apply_ugs_architecture, validate_ugs_config

    if args.config_file and not os.path.isfile(args.config_file):
        raise ValueError(f"--config-file: no such file {args.config_file}")
    if len(args.opts) % 2:
        raise ValueError(f"KEY VALUE options: an odd number of items ({' '.join(args.opts)})")
    cfg = default_cfg()
    project = project_of(args.config_file, args.opts)
    module = load_project(project) if project else None  # importing it registers its classes
    if module is not None:
        _project_function(module, "add_", "_config")(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    _check_keys(cfg, args.opts[0::2])
    cfg.merge_from_list(args.opts)
    cfg.UGS_PROJECT = project
    if module is not None:
        _project_function(module, "apply_", "_architecture")(cfg)
    else:
        validate_ugs_config(cfg)
        apply_ugs_architecture(cfg)
    if cfg.TILING.TRAIN.ENABLED:
        raise ValueError("TILING.TRAIN.ENABLED: training on tiles needs ugs-train tiling=on (it builds the tile cache)")
    cfg.freeze()
    return cfg


def _dataset_presets() -> List[str]:
    from ugs_d2.cli.validate import CONFIG_DIR

    directory = os.path.join(CONFIG_DIR, "dataset")
    return sorted(f[: -len(".yaml")] for f in os.listdir(directory) if f.endswith(".yaml"))


def dataset_preset_for(train: Sequence[str], test: Sequence[str]):
    """The ``configs/dataset/`` preset that registers every name of ``DATASETS.TRAIN/TEST``,
    as a Hydra ``dataset`` node whose ``train``/``test`` are those names (``synth_train`` ->
    dataset=synth; ``visdrone_val`` -> dataset=visdrone with ``test: visdrone_val``).

    Raises:
        ValueError: naming DATASETS.TRAIN/TEST when no preset has them all.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ugs_d2.cli.validate import CONFIG_DIR

    wanted = list(train) + list(test)
    known = []
    for preset in _dataset_presets():
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            dataset = compose(config_name="config", overrides=[f"dataset={preset}"]).dataset
        GlobalHydra.instance().clear()
        name = dataset.name
        pairs = {f"{name}_train": "train", f"{name}_test": "test"}  # the {json, images} layout
        splits = list(dataset.get("splits") or {})
        known += splits or list(pairs)
        if splits and set(wanted) <= set(splits):
            OmegaConf.set_struct(dataset, False)
            dataset.train = list(train)
            dataset.test = test[0] if len(test) == 1 else list(test)
            return dataset
        if not splits and list(train) == [f"{name}_train"] and list(test) == [f"{name}_test"]:
            return dataset
    raise ValueError(
        f"DATASETS.TRAIN/TEST: no configs/dataset/ preset registers {', '.join(wanted)} "
        f"(known: {', '.join(known)})"
    )


def _check_num_classes(cfg, num_classes: int) -> None:
    head = NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, "ROI_HEADS")
    given = cfg.MODEL[head].NUM_CLASSES
    if given != num_classes:
        raise ValueError(
            f"MODEL.{head}.NUM_CLASSES: {given}, but {cfg.DATASETS.TRAIN[0]} has {num_classes} "
            f"categories (set MODEL.{head}.NUM_CLASSES {num_classes})"
        )


def run_config(args: argparse.Namespace, cfg) -> Any:
    """What ``UGSTrainer`` reads from ``ugs-train``'s Hydra config (its ``wandb:`` block and
    ``resume``), here built from the command line; logged to W&B as the run's config."""
    from omegaconf import OmegaConf

    wandb = OmegaConf.to_container(_root_config().wandb, resolve=True)
    wandb["enabled"] = args.wandb != "off"
    wandb["mode"] = args.wandb if args.wandb != "off" else wandb["mode"]
    return OmegaConf.create({
        "name": "train_net",
        "resume": bool(args.resume),
        "config_file": args.config_file,
        "opts": list(args.opts),
        "wandb": wandb,
        "detectron2": OmegaConf.create(cfg.dump()),  # the whole detectron2 config, as YAML
    })


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """One process's run (every DDP rank calls it, as detectron2's ``main(args)``)."""
    from detectron2.data import MetadataCatalog

    from ugs_d2.data.datasets import check_usable_boxes, register_dataset
    from ugs_d2.evaluation import results as results_io
    from ugs_d2.train import _setup_logging, print_done, train_and_evaluate

    cfg = setup(args)
    output_dir = cfg.OUTPUT_DIR
    os.makedirs(output_dir, exist_ok=True)
    if args.resume and results_io.is_done(output_dir):
        return print_done(output_dir, "no --resume")
    _setup_logging(output_dir)
    register_dataset(dataset_preset_for(cfg.DATASETS.TRAIN, cfg.DATASETS.TEST))
    if not args.eval_only:
        check_usable_boxes(cfg.DATASETS.TRAIN)
    _check_num_classes(cfg, len(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes))
    overrides = ([f"--config-file={args.config_file}"] if args.config_file else []) + [
        f"{k}={v}" for k, v in zip(args.opts[0::2], args.opts[1::2])
    ]
    return train_and_evaluate(
        cfg,
        output_dir,
        run_cfg=run_config(args, cfg),
        resume=bool(args.resume),
        eval_only=bool(args.eval_only),
        overrides=overrides,
        weights_hint="MODEL.WEIGHTS FILE",
    )


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: parse (argparse only), then train in this process or in DDP ranks."""
    args = argument_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from ugs_d2.interrupts import interruptible
    from ugs_d2.train import RunDirLock, launch_run

    with interruptible(COMMAND, "rerun the same command with --resume to continue from the last checkpoint"):
        from ugs_d2 import train_net as this_module  # by module path: spawned ranks unpickle it

        try:  # in this process first: a config mistake is one line before any rank starts
            cfg = setup(args)
        except (ValueError, KeyError, AssertionError) as e:  # detectron2's merge errors included
            message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise SystemExit(f"{COMMAND}: {message.strip().splitlines()[0]}") from None
        output_dir = cfg.OUTPUT_DIR
        lock = RunDirLock(output_dir)
        if not lock.acquire():
            raise SystemExit(f"{COMMAND}: {output_dir} is being trained by another process (pid {lock.holder()})")
        try:
            launcher = {
                "num_gpus": args.num_gpus,
                "num_machines": args.num_machines,
                "machine_rank": args.machine_rank,
                "dist_url": args.dist_url,
            }
            launch_run(this_module.run, launcher, (args,), COMMAND, use_cuda=cfg.MODEL.DEVICE == "cuda")
        finally:
            lock.release()


if __name__ == "__main__":
    main()
