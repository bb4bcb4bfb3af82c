"""``ugs-bench embedded``'s arguments; the runner is :mod:`ugs_d2.bench.embedded`, the report
:mod:`ugs_d2.bench.embedded_report`."""
import argparse
from typing import Dict, List

from ugs_d2.bench import embedded, embedded_report
from ugs_d2.bench.common import PROG, BenchError, progress_log

__all__ = ["add_parser", "run_command_line"]

# overrides that change how a run is executed, never what it measures (the recipe is
# configs/experiment/embedded_v2_*.yaml, and a committed run's name does not record extras)
SAFE_OVERRIDES = ("device=", "num_workers=", "wandb.enabled=", "wandb.mode=", "wandb.project=",
                  "wandb.entity=", "wandb.group=")
_SAFE = ", ".join(s + "..." for s in SAFE_OVERRIDES)


def add_parser(sub) -> None:
    """Register ``embedded`` on ``ugs-bench``'s subcommands."""
    p = sub.add_parser(
        "embedded",
        help="the second embedded benchmark (results/embedded_v2): train what is not committed, then report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=embedded.__doc__.strip(),
    )
    p.add_argument("--parts", help=f"comma-separated parts of the plan (default: all: {','.join(embedded.PARTS)})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="only jobs with this override (repeatable), e.g. --only ugs=full")
    p.add_argument("--lanes", type=int, default=2, help="runs trained side by side (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per lane (default: 1)")
    p.add_argument("--stop-after", type=float, metavar="HOURS",
                   help="start no run after this many hours (the ones running finish)")
    p.add_argument("--git-commit", action="store_true",
                   help="make each committed run's files one git commit of that directory alone")
    p.add_argument("--status", action="store_true", help="print every job's status and exit")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: regenerate the tables, plots and summary from the committed runs")
    p.add_argument("--results-dir", default=embedded.RESULTS_DIR,
                   help=f"committed runs (RESULTS_DIR/runs) and the report (default: {embedded.RESULTS_DIR})")
    p.add_argument("--work-dir", default=embedded.WORK_DIR,
                   help=f"where runs train: checkpoints, logs (default: {embedded.WORK_DIR})")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help=f"only overrides that do not change a run's result: {_SAFE}")


def _spec(args: argparse.Namespace) -> embedded.EmbeddedSpec:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"--seeds {args.seeds}: expected comma-separated integers") from None
    for override in args.overrides:
        if not override.startswith(SAFE_OVERRIDES):
            raise BenchError(
                f"override {override}: only {_SAFE} are allowed (the recipe is "
                "configs/experiment/embedded_v2_*.yaml; a committed run records only its plan overrides)")
    if args.lanes < 1 or args.threads < 1:
        raise BenchError(f"--lanes {args.lanes} / --threads {args.threads}: expected at least 1")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else None
    jobs = embedded.select_jobs(embedded.plan(seeds), parts, args.only)
    stop = None if args.stop_after is None else args.stop_after * 3600.0
    return embedded.EmbeddedSpec(jobs, args.results_dir, args.work_dir, args.lanes, args.threads, stop,
                                 args.git_commit, tuple(args.overrides))


def run_command_line(args: argparse.Namespace, argv: List[str], invoked_as: str) -> Dict:
    """``ugs-bench embedded`` for parsed ``args``: the outcomes, plus ``report`` (the summary)."""
    log = progress_log(args.quiet)
    try:
        spec = _spec(args)
        if args.status:
            text = embedded_report.format_status(spec)
            print(text, end="")
            return {"report": text}
        outcomes = [] if args.report_only else embedded.run_plan(spec, log)
        text = embedded_report.write_report(spec.results_dir, log)
    except BenchError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    print(text, end="")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise SystemExit(f"{PROG}: {len(failed)} run(s) failed, first {failed[0].job.part} "
                         f"{failed[0].job.name}: {failed[0].detail}; rerun the same command to retry them")
    return {"outcomes": outcomes, "report": text}
