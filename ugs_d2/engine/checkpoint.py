"""Checkpoints that a crash never leaves half-written.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``model_XXXXXXX.pth`` and then
rewrites ``last_checkpoint`` in place. A job killed in between (``kill -9``, a SLURM preemption,
an out-of-memory kill) can leave a truncated checkpoint that ``last_checkpoint`` already names,
or an empty ``last_checkpoint``, and the requeued job then fails to resume. Here both files are
written to a temporary file in the same directory and moved into place with ``os.replace``
(atomic on POSIX), the checkpoint before the tag that names it, so ``last_checkpoint`` only
ever names a complete checkpoint.
"""
import logging
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ugs_d2.fileio import TMP_PREFIX, write_atomic
from ugs_d2.modeling.stage import check_grids

__all__ = ["AtomicCheckpointer", "TMP_PREFIX", "LAST_CHECKPOINT"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


def _is_local(path: str) -> bool:
    return "://" not in path


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` and ``tag_last_checkpoint`` are atomic.

    Non-local save directories (``s3://``, ``manifold://``; written through the path manager)
    keep fvcore's behaviour. ``resume_or_load`` logs where a resumed run continues from.
    Loading refuses a checkpoint whose UGS grids differ from the model's
    (:func:`ugs_d2.modeling.stage.check_grids`) before any weight is copied.
    """

    def _load_file(self, f: str):
        loaded = super()._load_file(f)
        model_state = loaded.get("model") if isinstance(loaded, dict) else None
        if isinstance(model_state, dict):
            check_grids(self.model.state_dict(), model_state, source=f)
        return loaded

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            return super().save(name, **kwargs)

        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        write_atomic(save_file, lambda f: torch.save(data, f), durable=True)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, LAST_CHECKPOINT)
        write_atomic(save_file, lambda f: f.write(last_filename_basename), mode="w", durable=True)

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            checkpoint = self.get_checkpoint_file()
            trainer = self.checkpointables.get("trainer")
            ret = super().resume_or_load(path, resume=resume)
            iteration = getattr(trainer, "iter", None) if trainer is not None else None
            if iteration is not None:
                logger.info(
                    f"Resuming from {checkpoint}: iteration {iteration} was the last one trained, "
                    f"continuing at iteration {iteration + 1}"
                )
            else:
                logger.info(f"Resuming from {checkpoint}")
            return ret
        return super().resume_or_load(path, resume=resume)
