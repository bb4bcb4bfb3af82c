"""``ugs-train`` (also ``python -m ugs_d2.train``): train and evaluate a detector from ``configs/``.

Examples::

    ugs-train                                   # tiny R18-FPN on the embedded synthetic set
    ugs-train ugs=full schedule.max_iter=2000   # full UGS
    ugs-train -m ugs=off,full seed=0,1,2        # a Hydra multirun sweep
    ugs-train --cfg job                         # print the composed config and exit

Each run directory (``outputs/<name>/<overrides>`` or ``multirun/<name>/<overrides>``) holds
the resolved config (``.hydra/``, ``detectron2_config.yaml``), ``metrics.json``, checkpoints,
``results.json`` and, once everything is written, a ``done`` marker. Rerunning the same command
continues from the last checkpoint, or only prints the results when the run is done.
"""
import errno
import fcntl
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ugs_d2.cli.validate import CONFIG_PATH, CommandLineError, d2_overrides_as_hydra, validate_command_line
from ugs_d2.evaluation import results as results_io
from ugs_d2.fileio import run_dirname
from ugs_d2.schema import register_schemas

# ugs_d2.config, ugs_d2.data and everything else that imports torch or detectron2 is imported
# inside the functions that use them, so that `ugs-train --help` never imports torch.

logger = logging.getLogger("ugs_d2")

LOCK_FILE = "train.lock"


class RunDirLock:
    """The run directory's exclusive lock (``train.lock``, flock), held while a job trains in it.

    ``acquire()`` is False when another live process holds it: two sweeps launched over the same
    directories (the lanes of projects/embedded_benchmark/run.sh, or a rerun while the first one
    is still going) then share the work instead of training one run twice into the same files.
    The kernel drops the lock when its process dies, so a killed run never leaves it behind.
    Only the first task of a SLURM job takes it (the other nodes of a multi-node job share the
    directory by design); on a file system without flock nothing is locked (a warning).
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._file = None

    def acquire(self) -> bool:
        if os.environ.get("SLURM_PROCID", "0") != "0":
            return True
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                return False
            logger.warning("%s: no lock (%s); not guarded against a concurrent run", self.path, e)
            return True
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the flock
            self._file = None

    def holder(self) -> str:
        """The pid the holder wrote, for messages ("?" if unreadable)."""
        try:
            with open(self.path) as f:
                return f.read().strip() or "?"
        except OSError:
            return "?"


OmegaConf.register_new_resolver("run_dirname", run_dirname, replace=True)
register_schemas()  # schema/<group> in Hydra's ConfigStore (ugs_d2/schema.py)


def _setup_logging(output_dir: str) -> None:
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    # A multirun runs its jobs one after another in this process. setup_logger only ever adds
    # handlers (cached per argument tuple), so without this every earlier job's log.txt would
    # also receive each later job's lines, and the console would print each line once per job.
    for name in ("detectron2", "ugs_d2"):
        named = logging.getLogger(name)
        for handler in list(named.handlers):
            named.removeHandler(handler)
    setup_logger.cache_clear()

    rank = comm.get_rank()  # DDP: rank 0 logs to the console and log.txt, rank r to log.txt.rank<r>
    setup_logger(output_dir, distributed_rank=rank, name="detectron2", abbrev_name="d2")
    setup_logger(output_dir, distributed_rank=rank, name="ugs_d2")


def _print_results(results: Dict[str, Any], output_dir: str) -> None:
    print(f"[ugs-train] {output_dir}")
    print(f"[ugs-train] bbox: {results_io.format_metrics(results)}")
    per_class = results.get("per_class_AP") or {}
    if per_class:
        cells = ", ".join(
            f"{name} {ap:.1f}" if ap is not None else f"{name} n/a" for name, ap in per_class.items()
        )
        print(f"[ugs-train] per-class AP: {cells}")
    if "wall_time_s" in results:
        print(f"[ugs-train] {results['iterations']} iterations in {results['wall_time_s']:.0f} s")


def run(cfg: DictConfig, output_dir: str) -> Dict[str, Any]:
    """Train (unless ``eval_only``), evaluate, and write ``results.json`` + ``done``.

    Returns the results dict (Hydra's multirun keeps it as the job's return value).
    """
    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.data.datasets import check_usable_boxes, register_dataset, split_names

    os.makedirs(output_dir, exist_ok=True)
    if cfg.resume and results_io.is_done(output_dir):
        return print_done(output_dir, "resume=false")

    _setup_logging(output_dir)
    from detectron2.data import MetadataCatalog

    register_dataset(cfg.dataset, tiling=cfg.get("tiling"))  # tiling.train: the tiled train split
    if not cfg.eval_only:
        check_usable_boxes(split_names(cfg.dataset)[0])
    train_classes = MetadataCatalog.get(split_names(cfg.dataset)[0][0]).thing_classes
    d2_cfg = to_detectron2_cfg(cfg, output_dir, num_classes=len(train_classes))
    return train_and_evaluate(
        d2_cfg,
        output_dir,
        run_cfg=cfg,
        resume=bool(cfg.resume),
        eval_only=bool(cfg.eval_only),
        check_weights=bool(OmegaConf.select(cfg, "launcher.check_weights", default=False)),
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        weights_hint="model.weights=FILE",
    )


def print_done(output_dir: str, rerun_hint: str) -> Dict[str, Any]:
    """The results of a finished run directory, printed as at the end of its training."""
    results = results_io.read_results(output_dir)
    print(f"[ugs-train] already done (delete {output_dir} or set {rerun_hint} to rerun)")
    _print_results(results, output_dir)
    return results


def train_and_evaluate(
    d2_cfg,
    output_dir: str,
    *,
    run_cfg: Any,
    resume: bool,
    eval_only: bool,
    check_weights: bool = False,
    overrides: Sequence[str] = (),
    weights_hint: str = "model.weights=FILE",
) -> Dict[str, Any]:
    """The run itself, shared by ``ugs-train`` and ``ugs-train-net``: write
    ``detectron2_config.yaml``, train (unless ``eval_only``) with ``UGSTrainer``, evaluate, and
    write ``results.json`` + ``done`` (rank 0). The datasets of ``d2_cfg`` must be registered.

    Args:
        d2_cfg: the frozen detectron2 config (``OUTPUT_DIR`` = ``output_dir``).
        run_cfg: W&B settings (its ``wandb:`` block, ``resume``) and the config logged to W&B.
        overrides: the command line's overrides, recorded in ``results.json``.
        weights_hint: how to name a checkpoint on this command's line (eval-only message).
    """
    from detectron2.data import MetadataCatalog
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from ugs_d2.compat import describe_detectron2
    from ugs_d2.config import ConfigError
    from ugs_d2.engine.checkpoint import AtomicCheckpointer
    from ugs_d2.engine.trainer import UGSTrainer
    from ugs_d2.environment import run_environment

    with open(os.path.join(output_dir, "detectron2_config.yaml"), "w") as f:
        f.write(d2_cfg.dump())
    logger.info(describe_detectron2())
    seed_all_rng(d2_cfg.SEED)

    start = time.perf_counter()
    if eval_only:
        model = UGSTrainer.build_model(d2_cfg)
        checkpointer = AtomicCheckpointer(model, save_dir=output_dir)
        if resume and checkpointer.has_checkpoint():
            checkpointer.resume_or_load(d2_cfg.MODEL.WEIGHTS, resume=True)
        elif d2_cfg.MODEL.WEIGHTS:  # the whole detector must come from the file
            checkpointer.load_checked(d2_cfg.MODEL.WEIGHTS, complete=True, checkpointables=[])
        else:
            raise ConfigError(
                f"eval_only: nothing to evaluate: no checkpoint in {output_dir}; give {weights_hint}"
            )
        eval_results = UGSTrainer.test(d2_cfg, model)
        iterations = 0
    else:
        trainer = UGSTrainer(d2_cfg, run_cfg=run_cfg)  # run_cfg: W&B settings + logged config
        trainer.resume_or_load(resume=resume)
        trainer.train()
        if check_weights:
            from ugs_d2.engine.launch import write_weights_sha256

            write_weights_sha256(trainer.model, output_dir)  # DDP check: one file per rank
        eval_results = trainer.last_eval_results
        iterations = d2_cfg.SOLVER.MAX_ITER

    if not comm.is_main_process():  # only rank 0 holds the evaluation results
        return {}
    class_names = MetadataCatalog.get(d2_cfg.DATASETS.TEST[0]).thing_classes
    results = results_io.summarize_bbox(eval_results, class_names)
    results_io.write_results(
        output_dir,
        results,
        iterations=iterations,
        wall_time_s=round(time.perf_counter() - start, 1),
        dataset=d2_cfg.DATASETS.TEST[0],
        detectron2=describe_detectron2(),
        environment=run_environment(),  # detectron2 build, package versions, CPU/GPU model
        overrides=list(overrides),
    )
    results = results_io.read_results(output_dir)
    _print_results(results, output_dir)
    return results


def _launch(cfg: DictConfig, output_dir: str) -> Optional[Dict[str, Any]]:
    """``run`` in this process or in DDP ranks (launcher.*); None when ranks ran it."""
    # launcher.*: one process, or DDP on N local processes / inside a SLURM job; every
    # rank runs `run` on the same run directory, rank 0 writes results.json.
    # `run` by its module path: as __main__.run (python -m, or cloudpickled into a submitit
    # job) spawned ranks could not unpickle it
    from ugs_d2 import train as this_module
    from ugs_d2.config import resolve_device

    return launch_run(
        this_module.run, cfg.get("launcher", {}), (cfg, output_dir), "ugs-train",
        use_cuda=resolve_device(cfg.device) == "cuda",
    )


def launch_run(
    func: Callable[..., Any], launcher: Any, args: tuple, command: str, use_cuda: bool
) -> Optional[Dict[str, Any]]:
    """``func(*args)`` in this process or in DDP ranks per the ``launcher.*`` keys (None when
    ranks ran it); the known failures become one line prefixed with ``command``."""
    from torch.multiprocessing import ProcessRaisedException

    from ugs_d2.config import ConfigError
    from ugs_d2.data.datasets import DatasetError
    from ugs_d2.engine.checkpoint import CheckpointError
    from ugs_d2.engine.launch import LaunchConfigError, failure, launch_from_config
    from ugs_d2.engine.trainer import TrainingDiverged, one_line_error
    from ugs_d2.modeling.stage import GridMismatchError

    try:
        return launch_from_config(func, launcher, args, use_cuda=use_cuda)
    except (ConfigError, DatasetError, LaunchConfigError, CheckpointError, GridMismatchError, TrainingDiverged) as e:
        # SystemExit; RuntimeError in a submitit job. A DatasetError re-raised from a data-loader
        # worker carries the worker's traceback: one_line_error keeps its last line.
        raise failure(f"{command}: {one_line_error(e)}") from None
    except ProcessRaisedException as e:  # a spawned rank failed; its traceback is printed above
        last = str(e).strip().splitlines()[-1]  # "pkg.module.DatasetError: dataset.root: ..."
        if re.match(r"^[\w.]+\.(ConfigError|DatasetError|CheckpointError|GridMismatchError|TrainingDiverged): ", last):
            last = last.split(": ", 1)[1]
        raise failure(f"{command}: {last}") from None
    except Exception as e:  # an image detectron2's reader could not read, mid-training
        line = one_line_error(e, known_only=True)
        if line is None:
            raise
        raise failure(f"{command}: {line}") from None


HYDRA_SUBDIR = ".hydra"


def save_hydra_files(cfg: DictConfig, output_dir: str) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, written here instead
    (``hydra.output_subdir: null``): only after the run directory's lock is held, so that a
    refused second command never rewrites the running one's config; each file atomically."""
    from ugs_d2.fileio import write_text_atomic

    hydra_cfg = HydraConfig.get()
    directory = os.path.join(output_dir, HYDRA_SUBDIR)
    write_text_atomic(os.path.join(directory, "config.yaml"), OmegaConf.to_yaml(cfg))
    write_text_atomic(os.path.join(directory, "hydra.yaml"), OmegaConf.to_yaml({"hydra": hydra_cfg}))
    write_text_atomic(os.path.join(directory, "overrides.yaml"), OmegaConf.to_yaml(hydra_cfg.overrides.task))


def remove_stale_temp_files(output_dir: str) -> None:
    """Temporary files a killed run left in the run directory (``.tmp-*``: a checkpoint, results
    being written); only the lock holder may remove them."""
    from ugs_d2.fileio import TMP_PREFIX

    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path):
            logger.info(f"removing {path}, left by an interrupted run")
            os.remove(path)


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    output_dir = HydraConfig.get().runtime.output_dir
    lock = RunDirLock(output_dir)
    if not lock.acquire():
        message = f"{output_dir} is being trained by another process (pid {lock.holder()})"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # leave it to that process, go on
            print(f"[ugs-train] skipped: {message}")
            return None
        raise SystemExit(f"ugs-train: {message}; wait for it, or give this run another name=")
    try:
        if os.environ.get("SLURM_PROCID", "0") == "0":  # one writer per run directory
            save_hydra_files(cfg, output_dir)
            remove_stale_temp_files(output_dir)
        results = _launch(cfg, output_dir)
    finally:
        lock.release()
    if results is None:  # ran in spawned processes: rank 0 wrote the results
        results = results_io.read_results(output_dir) if results_io.is_done(output_dir) else {}
    return results


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: validate the command line (one-line errors), then hand it to Hydra."""
    argv = d2_overrides_as_hydra(sys.argv[1:] if argv is None else list(argv))  # d2.KEY=V: any detectron2 key
    from ugs_d2.interrupts import interruptible

    # Ctrl-C / SIGTERM: one line, exit 130 / 143; the checkpoints are atomic, so the same
    # command continues from the last one
    with interruptible("ugs-train", "rerun the same command to continue from the last checkpoint"):
        try:
            validate_command_line(argv)  # imports ugs_d2.config (torch) unless it asks for help
        except CommandLineError as e:
            raise SystemExit(f"ugs-train: {e}") from None
        except ValueError as e:
            from ugs_d2.config import ConfigError  # imported by validate_command_line by now

            if not isinstance(e, ConfigError):
                raise
            raise SystemExit(f"ugs-train: {e}") from None
        sys.argv = [sys.argv[0]] + argv
        hydra_main()


if __name__ == "__main__":
    main()
