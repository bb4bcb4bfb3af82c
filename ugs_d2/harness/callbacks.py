"""Hydra callbacks registered in ``configs/config.yaml`` under ``hydra.callbacks``.

``CollectResults`` runs the sweep collector (``ugs-results``) when a multirun ends::

    hydra:
      callbacks:
        collect_results:
          _target_: ugs_d2.harness.callbacks.CollectResults
          results_dir: null      # e.g. results: also write results/<name>.{md,csv,png}

It writes ``<sweep dir>/results.{md,csv}`` and the plots next to them and, when
``results_dir`` is set (the ``configs/experiment`` presets set ``results``), the same files as
``<results_dir>/<name>.*``. Each job that raises leaves a ``failed`` marker with the exception
in its run directory, so the table can list it. Hydra skips ``on_multirun_end`` when a job
failed (the sweeper re-raises the job's exception), so the collector is then run at interpreter
exit instead. Nothing here can fail a sweep: errors are logged as warnings.
"""
import atexit
import logging
import os
import traceback
from typing import Any, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["CollectResults"]


class CollectResults(Callback):
    """Collect a multirun's ``results.json`` files into tables and plots when it ends.

    Args:
        results_dir: also write ``<results_dir>/<name>.{md,csv}`` + plots (relative to the
            directory ``ugs-train`` was started from); None: only into the sweep directory.
        plots: write the PNG plots.
    """

    def __init__(self, results_dir: Optional[str] = None, plots: bool = True) -> None:
        self.results_dir = results_dir
        self.plots = plots
        self._pending: Optional[DictConfig] = None

    # -- every job (runs where the job runs: locally or on a cluster node) -------------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            marker = os.path.join(str(config.hydra.runtime.output_dir), "failed")
            if os.path.isfile(marker):  # a rerun of a job that failed before
                os.remove(marker)
        except Exception as e:  # never fail the job
            log.warning("CollectResults: could not clear the failed marker: %s", e)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        try:
            from ugs_d2.analysis.results import FAILED_MARKER
            from ugs_d2.compat import job_return_value

            error = job_return_value(job_return)
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            path = os.path.join(str(config.hydra.runtime.output_dir), FAILED_MARKER)
            with open(path, "w") as f:
                f.write(f"{type(error).__name__}: {error}\n\n{text}")
        except Exception as e:
            log.warning("CollectResults: could not write the failed marker: %s", e)

    # -- the sweep (runs on the machine that launched it) -------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = config
        atexit.register(self._collect_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = None
        self.collect(config)

    def _collect_at_exit(self) -> None:
        if self._pending is not None:  # the sweep ended with an exception
            config, self._pending = self._pending, None
            self.collect(config)

    def collect(self, config: DictConfig) -> None:
        """Run the collector on ``hydra.sweep.dir``; log (never raise) any error."""
        try:
            from ugs_d2.analysis.results import CollectError, collect
            from ugs_d2.analysis.sweep_report import write_outputs

            sweep_dir = str(config.hydra.sweep.dir)
            try:
                collection = collect(sweep_dir)
            except CollectError as e:  # e.g. every job failed before Hydra wrote its directory
                log.warning("CollectResults: %s", e)
                return
            outs = [os.path.join(sweep_dir, "results")]
            if self.results_dir:
                outs.append(os.path.join(str(self.results_dir), collection.name))
            for out in outs:
                written = write_outputs(collection, out, plots=self.plots)
                log.info("CollectResults: wrote %s", ", ".join([written["md"], written["csv"], *written["png"]]))
            print(f"[ugs-results] {outs[-1]}.md", flush=True)
        except Exception as e:
            try:
                where = OmegaConf.select(config, "hydra.sweep.dir", default="the sweep")
            except Exception:
                where = "the sweep"
            log.warning("CollectResults: collecting %s failed: %s", where, e, exc_info=True)
