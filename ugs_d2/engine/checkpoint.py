"""Checkpoints that a crash never leaves half-written.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``model_XXXXXXX.pth`` and then
rewrites ``last_checkpoint`` in place. A job killed in between (``kill -9``, a SLURM preemption,
an out-of-memory kill) can leave a truncated checkpoint that ``last_checkpoint`` already names,
or an empty ``last_checkpoint``, and the requeued job then fails to resume. Here both files are
written to a temporary file in the same directory and moved into place with ``os.replace``
(atomic on POSIX), the checkpoint before the tag that names it, so ``last_checkpoint`` only
ever names a complete checkpoint.

Loading is checked too (every message one line naming the file):

* a file that is not a checkpoint (not a torch/pickle file, truncated, not a state dict) is a
  :class:`CheckpointError` instead of an ``UnpicklingError``/``PytorchStreamReader`` traceback;
* resuming, a ``last_checkpoint`` that names such a file falls back to the newest intact
  ``model_*.pth`` beside it (a warning names the broken one), or to the start of training;
* :func:`check_loaded` compares what was loaded with the model. The tolerance, for initial
  weights (``model.weights`` of a training run): parameters the checkpoint lacks start from
  their initialisation (a backbone-only ImageNet checkpoint, a detector of another head), and
  class-dependent predictor layers (``cls_score``, ``bbox_pred``, ``cls_logits``, ``bbox_reg``
  and everything under ``box_predictor``) may differ in shape (another number of classes); any
  other shape mismatch, or a checkpoint that shares no parameter with the model, is an error.
  For a model that must be complete (``eval_only``, ``ugs-predict``) nothing may be missing or
  of another shape.
"""
import contextlib
import logging
import os
import re
from typing import Any, List, Optional

from detectron2.checkpoint import DetectionCheckpointer

from ugs_d2.compat import reset_checkpointer_load_state
from ugs_d2.fileio import TMP_PREFIX, atomic_open
from ugs_d2.interrupts import reraise_if_interrupted
from ugs_d2.modeling.stage import check_grids

__all__ = [
    "AtomicCheckpointer",
    "CheckpointError",
    "LAST_CHECKPOINT",
    "TMP_PREFIX",
    "check_loaded",
    "load_weights",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


#: parameters whose shape follows the number of classes (or of UGS bins): a checkpoint of the
#: same detector trained on other classes differs there, and they are re-initialised
CLASS_DEPENDENT = re.compile(r"(^|\.)(box_predictor|cls_score|bbox_pred|cls_logits|bbox_reg)(\.|$)")
_CHECKPOINT_NAME = re.compile(r"^model_(\d+|final)\.pth$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model (one line)."""


def _first(keys: List[str], n: int = 3) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_loaded(incompatible, model_keys: List[str], path: str, complete: bool) -> Optional[str]:
    """Judge fvcore's ``_IncompatibleKeys`` of a load (see the module docstring's tolerance).

    Args:
        incompatible: ``missing_keys``, ``unexpected_keys``, ``incorrect_shapes``
            ((key, checkpoint shape, model shape) triples).
        model_keys: the model's ``state_dict`` keys.
        path: the checkpoint, for the messages.
        complete: every model parameter must come from the checkpoint.

    Returns:
        A one-line note on what starts from its initialisation (None: everything loaded).

    Raises:
        CheckpointError: naming the first missing / unexpected / mismatched keys.
    """
    missing = list(incompatible.missing_keys)
    unexpected = list(incompatible.unexpected_keys)
    shapes = list(incompatible.incorrect_shapes)
    shape_text = lambda items: _first(  # noqa: E731
        [f"{k} {tuple(c)} in the file vs {tuple(m)} in the model" for k, c, m in items], 2
    )
    # never reported missing: pixel_mean/pixel_std (detectron2: from the config) and BatchNorm's
    # num_batches_tracked (fvcore), so they do not count as loaded either
    unreported = {k for k in model_keys if k in ("pixel_mean", "pixel_std") or k.endswith("num_batches_tracked")}
    loaded = len(set(model_keys) - set(missing) - {k for k, _, _ in shapes} - unreported)
    if loaded == 0:
        raise CheckpointError(
            f"{path}: no parameter of the model is in this checkpoint (a checkpoint of another "
            f"model?); the model expects e.g. {_first(sorted(model_keys))}, the file has "
            f"{_first(unexpected) or 'no matching keys'}"
        )
    if complete and (missing or shapes):
        parts = []
        if missing:
            parts.append(f"{len(missing)} model parameters missing ({_first(missing)})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({shape_text(shapes)})")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        raise CheckpointError(
            f"{path}: does not match the model: {'; '.join(parts)} (trained with another config?)"
        )
    foreign = [item for item in shapes if not CLASS_DEPENDENT.search(item[0])]
    if foreign:
        raise CheckpointError(
            f"{path}: {len(foreign)} parameters have another shape than the model's "
            f"({shape_text(foreign)}): a checkpoint of another architecture?"
        )
    fresh = sorted(set(missing) | {k for k, _, _ in shapes})
    if not fresh:
        return None
    return (
        f"{path}: loaded {loaded} of {len(model_keys) - len(unreported)} parameters; {len(fresh)} start from their "
        f"initialisation ({_first(fresh)})"
    )


def _is_local(path: str) -> bool:
    return "://" not in path


class _RecordingWriter:
    """The file object given to ``torch.save``, keeping the exception a ``write`` raised."""

    def __init__(self):
        self.error = None
        self._file = None

    def wrap(self, file):
        self._file = file
        return self

    def write(self, data):
        try:
            return self._file.write(data)
        except BaseException as e:
            self.error = e
            raise

    def flush(self):
        return self._file.flush()


class _AtomicLocalWrites:
    """A view of a checkpointer's ``path_manager`` whose writes to local files are atomic.

    fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` write through
    ``self.path_manager.open(path, "wb" | "w")``: that one call is the hook. Local writes go
    through :func:`ugs_d2.fileio.atomic_open` (durable); everything else (reads, ``ls``,
    ``s3://`` / ``manifold://`` save directories) is the wrapped path manager's.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager
        self.failed_write = None  # (path, the exception its write raised) of the last failure

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path: str, mode: str = "r", **kwargs):
        if _is_local(path) and mode in ("w", "wb") and not kwargs:
            return self._atomic(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    @contextlib.contextmanager
    def _atomic(self, path: str, mode: str):
        writer = _RecordingWriter()
        try:
            with atomic_open(path, mode, durable=True) as f:
                yield writer.wrap(f)
        except BaseException as e:
            self.failed_write = (path, writer.error if writer.error is not None else e)
            raise


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` and ``tag_last_checkpoint`` are atomic.

    Both are fvcore's, writing through :class:`_AtomicLocalWrites`; non-local save directories
    (``s3://``, ``manifold://``) keep fvcore's behaviour. A checkpoint that cannot be written
    (a full disk) is a one-line :class:`CheckpointError`. ``resume_or_load`` logs where a
    resumed run continues from. Loading refuses a checkpoint whose UGS grids differ from the
    model's (:func:`ugs_d2.modeling.stage.check_grids`) before any weight is copied.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicLocalWrites(self.path_manager)

    @classmethod
    def replacing(cls, checkpointer: DetectionCheckpointer) -> "AtomicCheckpointer":
        """An AtomicCheckpointer of the same model, directory and checkpointables (for
        ``DefaultTrainer``'s, which detectron2 builds in its ``__init__``)."""
        return cls(
            checkpointer.model, checkpointer.save_dir, save_to_disk=checkpointer.save_to_disk,
            **checkpointer.checkpointables,
        )

    def save(self, name: str, **kwargs: Any) -> None:
        self.path_manager.failed_write = None
        try:
            return super().save(name, **kwargs)
        except (OSError, RuntimeError) as e:  # a full disk: ENOSPC, or torch's "file write failed"
            save_file = os.path.join(self.save_dir, f"{name}.pth")
            failed = self.path_manager.failed_write
            if failed is None or failed[0] != save_file:
                raise  # not the checkpoint's own write
            self._raise_not_written(save_file, failed[1], e)

    def _raise_not_written(self, save_file: str, error: BaseException, raised: BaseException) -> None:
        # torch.save reports what its write callback raised as a RuntimeError ("unexpected
        # pos ..."): the writer kept the original (a Ctrl-C / SIGTERM, or the OSError)
        if isinstance(error, KeyboardInterrupt):
            raise error from None
        reraise_if_interrupted()
        error = error if isinstance(error, OSError) else raised
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).strip().splitlines()[0]
        previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
        kept = f"{previous} is intact" if previous else "no earlier checkpoint"
        raise CheckpointError(
            f"{save_file}: checkpoint not written ({reason}); {kept}: free space and rerun "
            "the same command to continue"
        ) from None

    def _load_file(self, filename: str):
        """detectron2's reader; anything unreadable is a one-line ``CheckpointError``."""
        try:
            loaded = super()._load_file(filename)
        except CheckpointError:
            raise
        except Exception as e:  # UnpicklingError, RuntimeError (zip reader), EOFError, ...
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{filename}: not a readable checkpoint ({type(e).__name__}: {reason})") from None
        if not isinstance(loaded.get("model"), dict):
            raise CheckpointError(f"{filename}: not a checkpoint (no state dict in it)")
        check_grids(self.model.state_dict(), loaded["model"], source=filename)  # GridMismatchError
        return loaded

    def load(self, path, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        except Exception:
            reset_checkpointer_load_state(self)  # so that the fallback's next load can run
            raise

    def _load_model(self, checkpoint: Any):
        self.last_incompatible = super()._load_model(checkpoint)
        return self.last_incompatible

    def load_checked(self, path: str, complete: bool, checkpointables: Optional[List[str]] = None):
        """``load`` that raises ``CheckpointError`` unless the weights fit the model
        (:func:`check_loaded`); logs a one-line note on parameters left at their initialisation."""
        if _is_local(path) and not os.path.isfile(path):
            raise CheckpointError(f"{path}: checkpoint file not found")
        self.last_incompatible = None
        ret = self.load(path, checkpointables=checkpointables)
        if self.last_incompatible is not None:
            note = check_loaded(
                self.last_incompatible, list(self.model.state_dict().keys()), path, complete
            )
            if note:
                logger.warning(note)
        return ret

    def _intact_candidates(self, broken: str) -> List[str]:
        """The other ``model_*.pth`` of the save directory, newest (highest iteration) first."""
        def order(name: str) -> float:
            number = _CHECKPOINT_NAME.match(name).group(1)
            return float("inf") if number == "final" else int(number)

        names = [n for n in os.listdir(self.save_dir) if _CHECKPOINT_NAME.match(n)]
        paths = [os.path.join(self.save_dir, n) for n in sorted(names, key=order, reverse=True)]
        return [p for p in paths if os.path.abspath(p) != os.path.abspath(broken)]

    def _resume_intact(self, path: str):
        """Load the tagged checkpoint, or the newest intact one beside it (a warning names the
        broken file); none intact: drop the tag and load ``path`` (the initial weights)."""
        tagged = self.get_checkpoint_file()
        try:
            return tagged, self.load(tagged)
        except CheckpointError as e:
            broken = str(e)
        if not _is_local(self.save_dir):
            raise CheckpointError(broken)
        for candidate in self._intact_candidates(tagged):
            try:
                ret = self.load(candidate)
            except CheckpointError:
                continue
            logger.warning(f"{broken}; resuming from {candidate}, the newest intact checkpoint")
            self.tag_last_checkpoint(os.path.basename(candidate))
            return candidate, ret
        logger.warning(f"{broken}; no intact checkpoint beside it: training from the start")
        os.remove(os.path.join(self.save_dir, LAST_CHECKPOINT))  # has_checkpoint() is now False
        return None, self.load_checked(path, complete=False, checkpointables=[]) if path else {}

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            trainer = self.checkpointables.get("trainer")
            checkpoint, ret = self._resume_intact(path)
            if checkpoint is None:
                return ret
            iteration = getattr(trainer, "iter", None) if trainer is not None else None
            if iteration is not None:
                logger.info(
                    f"Resuming from {checkpoint}: iteration {iteration} was the last one trained, "
                    f"continuing at iteration {iteration + 1}"
                )
            else:
                logger.info(f"Resuming from {checkpoint}")
            return ret
        if not path:
            return super().resume_or_load(path, resume=resume)
        return self.load_checked(path, complete=False, checkpointables=[])


def load_weights(model, path: str, complete: bool = True):
    """Load ``path`` into ``model`` (no optimizer state), checked: ``CheckpointError`` (one line)
    when it is missing, unreadable or does not fit (:func:`check_loaded`; ``complete``: nothing
    may be missing). Returns the checkpoint's remaining data."""
    return AtomicCheckpointer(model, save_dir="").load_checked(path, complete=complete, checkpointables=[])
