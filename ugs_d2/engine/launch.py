"""Multi-process (DDP) training: on local processes and inside SLURM jobs.

``launch(main_func, world, ...)`` is detectron2's ``launch`` made device-aware: each of
``world.num_processes`` spawned processes joins one process group (NCCL on GPUs, gloo on CPU,
so DDP also runs and is tested on a laptop), gets detectron2's per-machine group, then calls
``main_func(*args)``. detectron2 0.6's own ``launch`` hard-codes NCCL and asserts CUDA, so one
implementation is used for both detectron2 builds (version differences in ``ugs_d2.compat``).

``resolve_world(cfg.launcher)`` turns the ``launcher.*`` keys into a ``World``:

* locally: ``launcher.num_gpus`` processes (``auto`` = 1) on a free localhost port;
* in a SLURM job started by submitit (``hydra/launcher=slurm_*``):

  - ``tasks_per_node=1`` (the presets): one task per node spawns ``num_gpus`` processes
    (``auto`` = the GPUs SLURM gave the node); machines = nodes, machine rank = node id;
  - ``tasks_per_node>1`` (one task per GPU): each task is one rank
    (``SLURM_PROCID``/``SLURM_LOCALID``), nothing is spawned;

  and the rendezvous is ``tcp://<first node of the job>:<slurm_port(SLURM_JOB_ID)>``.

``slurm_port`` is deterministic per job, so all nodes agree on it without talking, and two jobs
sharing a node get different ports (detectron2's fixed default port collides there).
"""
import dataclasses
import hashlib
import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = [
    "LaunchConfigError",
    "World",
    "failure",
    "in_slurm_job",
    "launch",
    "launch_from_config",
    "resolve_world",
    "slurm_port",
    "weights_sha256",
    "write_weights_sha256",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
PORT_BASE = 15000
PORT_SPAN = 15000


class LaunchConfigError(ValueError):
    """A ``launcher.*`` value is unusable (one line naming the key)."""


def slurm_port(job_id: str) -> int:
    """The rendezvous port of a SLURM job: ``15000 + SLURM_JOB_ID % 15000``.

    ``SLURM_JOB_ID`` is unique per job (each array task has its own), so jobs sharing a node
    get different ports unless their ids differ by a multiple of 15000. The range
    15000-29999 lies below Linux's ephemeral ports (32768+), which client sockets take.
    """
    digits = "".join(c for c in str(job_id).split("_")[0] if c.isdigit())
    if not digits:
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    return PORT_BASE + int(digits) % PORT_SPAN


@dataclass(frozen=True)
class World:
    """Where this process sits in a distributed run.

    Attributes:
        num_processes: processes (ranks) per machine.
        num_machines: machines (SLURM nodes).
        machine_rank: this machine's index, 0..num_machines-1.
        dist_url: the rendezvous, e.g. ``tcp://node17:16234``; ``auto`` = a free localhost port.
        local_rank: None: spawn ``num_processes`` processes here; an int: this process is
            already that local rank (one SLURM task per GPU) and nothing is spawned.
    """

    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    local_rank: Optional[int] = None

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines


def _is_auto(value: Any) -> bool:
    return value is None or str(value).lower() == "auto"


def _count(name: str, value: Any, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = minimum - 1
    if number < minimum:
        raise LaunchConfigError(f"launcher.{name}: expected an integer >= {minimum} or auto, got {value!r}")
    return number


def _slurm_first_host(env: Mapping[str, str]) -> str:
    """The first host of the job's node list, e.g. ``node[3-4,7]`` -> ``node3``."""
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if not nodes:
        return socket.gethostname()
    try:
        from ugs_d2.compat import slurm_node_list

        return slurm_node_list(nodes)[0]
    except Exception:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True)
        return out.stdout.split()[0]


def _slurm_gpus_on_node(env: Mapping[str, str]) -> int:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key, "").split(":")[-1]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, torch.cuda.device_count())


def in_slurm_job(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a SLURM job that submitit started (``hydra/launcher=slurm_*``).

    A shell inside ``salloc`` is not one: there the local rules apply.
    """
    return env.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in env


def failure(message: str) -> BaseException:
    """The exception that ends a run with a one-line ``message``.

    ``SystemExit`` on the command line. Inside a submitit job a ``RuntimeError`` instead:
    submitit records only ``Exception``s in the job's result file, and without one the
    submitting ``ugs-train -m`` would wait for the job forever where SLURM has no accounting.
    """
    return RuntimeError(message) if in_slurm_job() else SystemExit(message)


def resolve_world(launcher: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> World:
    """The ``World`` of this process from the ``launcher`` config node and the environment.

    Explicit values (``launcher.num_gpus=2``) always win over what SLURM says; ``auto`` takes
    the defaults in this module's docstring.
    """
    num_gpus = launcher.get("num_gpus", "auto")
    num_machines = launcher.get("num_machines", "auto")
    machine_rank = launcher.get("machine_rank", "auto")
    dist_url = launcher.get("dist_url", "auto")
    if not in_slurm_job(env):
        num_machines = 1 if _is_auto(num_machines) else _count("num_machines", num_machines)
        if num_machines > 1 and _is_auto(dist_url):
            raise LaunchConfigError("launcher.dist_url: a multi-machine run outside SLURM needs tcp://HOST:PORT")
        return World(
            num_processes=1 if _is_auto(num_gpus) else _count("num_gpus", num_gpus),
            num_machines=num_machines,
            machine_rank=0 if _is_auto(machine_rank) else _count("machine_rank", machine_rank, minimum=0),
            dist_url="auto" if _is_auto(dist_url) else str(dist_url),
        )

    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    tasks = int(env.get("SLURM_NTASKS", nodes))
    if _is_auto(dist_url):
        dist_url = f"tcp://{_slurm_first_host(env)}:{slurm_port(env['SLURM_JOB_ID'])}"
    if tasks > nodes:  # one task per GPU: this process is one rank
        return World(
            num_processes=tasks // nodes,
            num_machines=nodes,
            machine_rank=int(env.get("SLURM_NODEID", 0)),
            dist_url=str(dist_url),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
        )
    return World(
        num_processes=_slurm_gpus_on_node(env) if _is_auto(num_gpus) else _count("num_gpus", num_gpus),
        num_machines=nodes if _is_auto(num_machines) else _count("num_machines", num_machines),
        machine_rank=(
            int(env.get("SLURM_NODEID", 0)) if _is_auto(machine_rank)
            else _count("machine_rank", machine_rank, minimum=0)
        ),
        dist_url=str(dist_url),
    )


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _backend(use_cuda: Optional[bool]) -> str:
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    return "nccl" if use_cuda else "gloo"


def launch(
    main_func: Callable[..., Any],
    world: World,
    args: Sequence[Any] = (),
    use_cuda: Optional[bool] = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` on ``world.num_processes`` processes per machine, all in one
    process group.

    Call it on every machine (the same ``world`` but ``machine_rank``). With one process in
    total ``main_func`` runs here, undistributed.

    Args:
        main_func: a picklable (module-level) function; runs in each spawned process.
        world: the processes per machine (GPUs, or CPU processes with gloo), the machines and
            this machine's index, the rendezvous (``tcp://HOST:PORT`` of machine 0, or ``auto``:
            a free localhost port, one machine only), and ``local_rank``: None spawns
            ``num_processes`` processes; an int makes this process that local rank itself
            (SLURM's one-task-per-GPU layout).
        args: the arguments of ``main_func``.
        use_cuda: NCCL and one GPU per process if true, gloo on CPU if false; None: whether
            CUDA is available.
        timeout: of the process group's collectives.
    """
    if world.world_size == 1:
        main_func(*args)
        return
    if world.dist_url is None or world.dist_url == "auto":
        if world.num_machines > 1:
            raise ValueError("dist_url=auto only works on one machine; pass tcp://HOST:PORT")
        world = dataclasses.replace(world, dist_url=f"tcp://127.0.0.1:{_find_free_port()}")
    logger.info(
        "DDP: %d process(es) here (machine %d of %d, world size %d), %s, rendezvous %s",
        1 if world.local_rank is not None else world.num_processes, world.machine_rank,
        world.num_machines, world.world_size, _backend(use_cuda), world.dist_url,
    )
    worker_args = (main_func, world, tuple(args), _backend(use_cuda), timeout)
    if world.local_rank is not None:
        _distributed_worker(world.local_rank, *worker_args)
        return
    mp.spawn(_distributed_worker, nprocs=world.num_processes, args=worker_args, daemon=False)


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world: World,
    args: Sequence[Any],
    backend: str,
    timeout: timedelta,
) -> None:
    """One rank: join the process group at ``world.dist_url``, run ``main_func(*args)``, leave."""
    from detectron2.utils import comm

    from ugs_d2 import compat

    num_processes = world.num_processes
    rank = world.machine_rank * num_processes + local_rank
    if in_slurm_job() and mp.parent_process() is not None:
        _leave_preemption_to_submitit()
    if backend == "nccl":
        assert num_processes <= torch.cuda.device_count(), (
            f"{num_processes} processes per machine but {torch.cuda.device_count()} GPUs"
        )
        torch.cuda.set_device(local_rank)
    else:  # share the CPU cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes))
    try:
        dist.init_process_group(
            backend=backend, init_method=world.dist_url, world_size=world.world_size, rank=rank, timeout=timeout
        )
    except Exception:
        logger.error("process group rendezvous %s failed (rank %d of %d)", world.dist_url, rank, world.world_size)
        raise
    compat.create_local_process_group(num_processes)
    compat.use_device_aware_ddp()
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        comm.synchronize()
        dist.destroy_process_group()


def _leave_preemption_to_submitit() -> None:
    """In a process spawned inside a SLURM job: ignore SIGTERM and submitit's preemption signal.

    On preemption, timeout or ``scontrol requeue`` SLURM signals every process of the job. The
    submitit task (the parent) handles them: it requeues the job on a timeout and otherwise
    waits for SLURM's SIGKILL. A spawned rank that died of the signal first would make the
    parent's ``mp.spawn`` raise, and submitit would record the job as failed although SLURM is
    about to rerun it (resuming from its last checkpoint).
    """
    import signal

    names = {"SIGTERM", "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")}
    for name in names:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's parameters (names, shapes and values; DDP wrapper unwrapped).

    Parameters only: DDP keeps them identical on every rank. Buffers (BatchNorm running
    statistics) are per-rank in plain BN and are deliberately not included.
    """
    model = getattr(model, "module", model)
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        tensor = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def write_weights_sha256(model: torch.nn.Module, output_dir: str) -> str:
    """Write ``weights_rank<r>.sha256`` (``weights_sha256`` of this rank) into ``output_dir``."""
    from detectron2.utils import comm

    path = os.path.join(output_dir, f"weights_rank{comm.get_rank()}.sha256")
    digest = weights_sha256(model)
    with open(path, "w") as f:
        f.write(digest + "\n")
    return path


def _hydra_state() -> Optional[Dict[str, Any]]:
    """This process's ``HydraConfig`` as plain (picklable) containers, resolved where possible.

    The structured config itself does not pickle inside a submitit job (the plugin's config
    classes are imported twice there).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    node = HydraConfig.get()
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation that only resolves in Hydra's own context
        return OmegaConf.to_container(node, resolve=False)


def _with_hydra_config(main_func: Callable[..., Any], hydra_state: Any, *args: Any) -> Any:
    """In a spawned process: make the parent's ``HydraConfig`` (overrides, output dir, job)
    available, then run ``main_func``; Hydra itself only ran in the parent."""
    if hydra_state is not None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        if not HydraConfig.initialized():
            cfg = OmegaConf.create({"hydra": hydra_state})
            OmegaConf.set_readonly(cfg, True)
            # set_config() insists on Hydra's structured node type; HydraConfig.get() only
            # needs `.cfg.hydra`
            HydraConfig.instance().cfg = cfg
    return main_func(*args)


def launch_from_config(
    main_func: Callable[..., Any], launcher: Mapping[str, Any], args: Sequence[Any] = (),
    use_cuda: Optional[bool] = None,
) -> Optional[Any]:
    """``launch`` with the world of ``resolve_world(launcher)``; for a Hydra task function.

    Every rank runs ``main_func(*args)`` with the same arguments (so the same Hydra run
    directory) and sees the parent's ``HydraConfig``. Returns ``main_func``'s value when it ran
    in this process (a single process, or one SLURM task per GPU), None when it ran in spawned
    processes.
    """
    world = resolve_world(launcher)
    if world.world_size == 1:
        return main_func(*args)
    hydra_state = _hydra_state()
    result = []
    launch(
        _with_hydra_config if world.local_rank is None else (lambda *a: result.append(_with_hydra_config(*a))),
        world,
        args=(main_func, hydra_state, *args),
        use_cuda=use_cuda,
    )
    return result[0] if result else None
