"""Check an ``ugs-train`` command line before Hydra runs it, and say what is wrong in one line.

Hydra's own messages for a mistyped key are several lines without suggestions, and a wrong
value type would only surface inside the job (on a cluster: after queueing). Here the command
line is composed with Hydra's compose API and converted with ``to_detectron2_cfg`` first, so
``schedule.max_iterr=10`` fails at once with ``did you mean schedule.max_iter?``. Sweeps
(``a=1,2``) are checked value by value. The composition and the hint are
:mod:`ugs_d2.harness.compose`'s (the benchmarks compose presets with them too).
"""
import os
from typing import Iterable, List, Optional

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig

from ugs_d2.compat import hydra_args_parser
from ugs_d2.fileio import output_problem
from ugs_d2.harness.compose import CONFIG_DIR, CONFIG_PATH, compose, unknown_key_message

__all__ = ["CONFIG_DIR", "CONFIG_PATH", "CommandLineError", "validate_command_line", "d2_overrides_as_hydra"]


class CommandLineError(ValueError):
    """An override names an unknown key or group option, or an output directory is unusable."""


def d2_overrides_as_hydra(argv: List[str]) -> List[str]:
    """``d2.KEY=VALUE`` -> ``++d2.KEY=VALUE``: Hydra adds a key to the (empty) ``d2`` node only
    with a ``+``/``++`` prefix; ``++`` also replaces one that a preset set. Other arguments as they are."""
    return ["++" + a if a.startswith("d2.") and "=" in a else a for a in argv]


def _check_writable(overrides: List[Override]) -> None:
    """The run/sweep directory's nearest existing parent must be writable."""
    chosen = {o.key_or_group: o.value() for o in overrides if not o.is_sweep_override()}
    for key, default in (("hydra.run.dir", "outputs"), ("hydra.sweep.dir", "multirun")):
        path = os.path.abspath(str(chosen.get(key, default)))
        problem = output_problem(path, directory=True)
        if problem:
            raise CommandLineError(f"{key}: output directory {path} {problem}")


def _combinations(overrides: List[Override]) -> Iterable[List[str]]:
    """The first value of every sweep, then each further value of one sweep at a time."""
    values = [
        list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in overrides
    ]
    lines = [
        [f"{o.get_key_element()}={v}" for v in vs] if o.is_sweep_override() else vs
        for o, vs in zip(overrides, values)
    ]
    base = [vs[0] for vs in lines]
    yield base
    for i, vs in enumerate(lines):
        for v in vs[1:]:
            yield base[:i] + [v] + base[i + 1:]


def validate_command_line(argv: List[str]) -> Optional[DictConfig]:
    """Raise ``CommandLineError``/``ConfigError`` (one line) if ``argv`` cannot run.

    Returns the composed config of the first sweep combination, or None when the command only
    asks Hydra for help/information or uses another config.
    """
    argv = d2_overrides_as_hydra(argv)
    args, _ = hydra_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return None
    if args.config_name or args.config_path or args.config_dir:
        return None
    from ugs_d2.config import to_detectron2_cfg  # imports torch and detectron2: not for --help
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception as e:
        raise CommandLineError(str(e).strip().splitlines()[0]) from None
    _check_writable(overrides)

    job_overrides = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    first = None
    for combination in _combinations(job_overrides):
        try:
            cfg = compose(combination)
        except Exception as e:
            raise CommandLineError(unknown_key_message(job_overrides, e)) from None
        to_detectron2_cfg(cfg)
        first = cfg if first is None else first
    GlobalHydra.instance().clear()
    return first
