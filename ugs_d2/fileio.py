"""Atomic file writes: a reader (or a rerun after a kill) never sees a half-written file.

Every file that downstream tools trust (checkpoints, ``results.json``, dataset json, result
tables) is written through :func:`atomic_open` / :func:`write_atomic`: the content goes to a
temporary file in the same directory, which is then renamed over the target.

Also :func:`run_dirname`, the one safe directory name a run's overrides get (used by the
``ugs-train`` entry point for its run directories and by the W&B writer for run names).
"""
import contextlib
import hashlib
import json
import os
import tempfile
from typing import IO, Any, Callable, Iterator, Optional

__all__ = ["TMP_PREFIX", "MAX_DIRNAME", "run_dirname", "output_problem", "atomic_open", "write_atomic",
           "write_text_atomic", "write_json_atomic"]

# Temporary files start with this and never end in the target's name, so globs for
# checkpoints (``*.pth``) or results never pick one up.
TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """``with atomic_open(path) as f:`` -- a temporary file in ``path``'s directory that replaces
    ``path`` when the block ends, and is removed (``path`` untouched) when the block raises.

    Args:
        path: the target; its directory is created if missing.
        mode: ``"wb"`` or ``"w"``.
        durable: fsync the file and its directory before returning (checkpoints: survive a
            node crash, not only a killed process).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TMP_PREFIX}{os.path.basename(path)}.")
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if durable:
        _fsync_dir(directory)


def write_atomic(
    path: str, write: Callable[[IO], None], mode: str = "wb", durable: bool = False
) -> None:
    """Create or replace ``path`` atomically; ``write(file)`` fills the file (see
    :func:`atomic_open` for the arguments)."""
    with atomic_open(path, mode, durable) as f:
        write(f)


def write_text_atomic(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text), mode="w")


def write_json_atomic(path: str, obj: Any, **dumps_kwargs: Any) -> None:
    """``json.dumps(obj, **dumps_kwargs)`` plus a final newline, written atomically."""
    write_text_atomic(path, json.dumps(obj, **dumps_kwargs) + "\n")


MAX_DIRNAME = 120


def output_problem(path: str, directory: bool = False) -> Optional[str]:
    """Why ``path`` cannot be written as an output file (``directory``: created or filled as an
    output directory), or None. Checked before the work, so that a command does not run for
    minutes and then fail to write its result: the path must be of the right kind if it exists,
    and its nearest existing directory writable.

    Returns e.g. ``"exists and is not a directory"`` or ``"cannot be written (/data is not a
    writable directory)"``, for the caller to prefix with its option name.
    """
    if os.path.exists(path) and os.path.isdir(path) != directory:
        return f"exists and is not {'a directory' if directory else 'a file name'}"
    parent = os.path.abspath(path) if directory else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be written ({parent} is not a writable directory)"
    return None


def run_dirname(override_dirname: str) -> str:
    """Hydra's ``override_dirname`` as one safe path component.

    Overrides may hold paths (``dataset.root=/data/x``) and many of them exceed a file
    name's 255 bytes, so '/' is escaped and a long name keeps its start plus a hash of the rest.
    """
    name = override_dirname.replace("/", "%") or "default"
    if len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:MAX_DIRNAME - 13]}-{digest}"
    return name
