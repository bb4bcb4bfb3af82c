"""``ugs-bench ur``: does UR's perturbation perturb? The rho table of each norm scope.

For one model (the ``ugs=full`` preset, briefly trained on fixed batches so that its heads are
past their uniform initialisation) and each ``ugs.ur_norm`` x ``ugs.ur_rho``, it runs training
forwards on the same fixed batches with the same seed and reports, averaged over the batches:

* ``||eps|| / ||P||``: the perturbation's norm relative to the FPN level's (``ur/eps_ratio``,
  over the perturbed levels and images);
* ``UR - first``: the UR pass's detection losses minus the same terms of the first pass
  (``ur/loss_delta``), absolute and relative to the first pass's sum.

The UR pass reuses the first pass's anchor labels and sampled proposals (``ur_impl=lean``), so
``rho = 0`` gives exactly 0: every difference is the perturbation's. Example::

    ugs-bench ur                       # the tiny preset, 128 px (a few minutes on 2 CPUs)
    ugs-bench ur --rhos 0,0.5,1 --norms image,relative,location --train-steps 30
"""
import argparse
import copy
import os
import statistics
from typing import Callable, Dict, List, Sequence

__all__ = ["add_parser", "run_ur_table", "format_report", "run_command_line"]

DEFAULT_OVERRIDES = ("model.input.min_size_train=[128]", "model.input.max_size_train=128",
                     "model.input.min_size_test=128", "model.input.max_size_test=128")


def _floats(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ur",
        help="UR's perturbation size and its effect on the losses, per ur_norm and rho",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("Example::")[0].strip(),
    )
    p.add_argument("--norms", default="image,relative,location",
                   help="comma-separated ugs.ur_norm values (default: image,relative,location)")
    p.add_argument("--rhos", default="0,0.5,1", help="comma-separated rho values (default: 0,0.5,1)")
    p.add_argument("--train-steps", type=int, default=30,
                   help="SGD steps of ugs=full on the fixed batches before measuring (default: 30)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of those steps (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=2, help="images per batch (default: 2)")
    p.add_argument("--num-batches", type=int, default=4, help="fixed batches (default: 4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", default=os.path.join("results", "ur_rho.md"),
                   help="markdown report, written atomically (default: results/ur_rho.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help=f"Hydra overrides (default: {' '.join(DEFAULT_OVERRIDES)}); not ugs=...")


def _measure(model, batches, seed: int) -> Dict[str, float]:
    """Mean ur/eps_ratio, ur/loss_delta and the first pass's detection-loss sum over ``batches``."""
    import torch
    from detectron2.utils.events import EventStorage

    from ugs_d2.modeling.refinement import refinement_terms

    ratios, deltas, firsts = [], [], []
    for batch in batches:
        torch.manual_seed(seed)
        with EventStorage(0) as storage:
            losses = model(copy.deepcopy(batch))
            latest = {k: v[0] for k, v in storage.latest().items()}
        firsts.append(float(sum(refinement_terms(losses, model.refinement.losses).values())))
        deltas.append(latest["ur/loss_delta"])
        ratios.append(latest.get("ur/eps_ratio", 0.0))
    return {
        "eps_ratio": statistics.mean(ratios),
        "loss_delta": statistics.mean(deltas),
        "first": statistics.mean(firsts),
    }


def run_ur_table(
    norms: Sequence[str],
    rhos: Sequence[float],
    overrides: Sequence[str],
    *,
    train_steps: int,
    lr: float,
    batch_size: int,
    num_batches: int,
    device: str,
    log: Callable[[str], None],
) -> Dict:
    """Train ``ugs=full`` for ``train_steps`` on fixed batches, then measure every norm x rho."""
    import torch
    from detectron2.utils.events import EventStorage

    from ugs_d2.cli.bench import BenchError, build_preset_on_fixed_batches
    from ugs_d2.config import ConfigError, resolve_device
    from ugs_d2.losses import UR_NORMS

    for norm in norms:
        if norm not in UR_NORMS:
            raise BenchError(f"--norms: unknown {norm!r}; known: {', '.join(UR_NORMS)}")
    if any(r < 0 for r in rhos) or not rhos:
        raise BenchError(f"--rhos: expected numbers >= 0, got {list(rhos)}")
    if train_steps < 0:
        raise BenchError(f"--train-steps must be >= 0, got {train_steps}")
    try:
        device = resolve_device(device)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    model, train_batches, cfg = build_preset_on_fixed_batches(
        overrides, "full", device, batch_size, num_batches, "ugs-bench-ur-", log
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    for step in range(train_steps):
        with EventStorage(step):
            loss = sum(model(copy.deepcopy(train_batches[step % len(train_batches)])).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            log(f"warm-up training step {step}/{train_steps}: loss {float(loss.detach()):.3f}")
    rows = []
    for norm in norms:
        for rho in rhos:
            model.refinement.norm, model.refinement.rho = norm, rho
            row = _measure(model, train_batches, int(cfg.seed))
            row.update(norm=norm, rho=rho)
            log(f"{norm} rho={rho}: eps ratio {row['eps_ratio']:.3g}, UR - first {row['loss_delta']:.4g}")
            rows.append(row)
    setup = dict(device=device, train_steps=train_steps, lr=lr, batch_size=batch_size,
                 num_batches=num_batches, ur_losses=model.refinement.losses,
                 meta=type(model).__name__, size=list(cfg.model.input.min_size_train))
    return {"rows": rows, "setup": setup}


def format_report(outcome: Dict, command: str, started: str, wall_s: float, loads: List[float]) -> str:
    s = outcome["setup"]
    lines = [
        "# UR: perturbation size and effect per `ugs.ur_norm` and rho",
        "",
        f"- command: `{command}`",
        f"- date: {started} (wall time {wall_s:.0f} s); load average at start / end: "
        + " / ".join(f"{x:.2f}" for x in loads),
        f"- model: {s['meta']} (ugs=full), input {list(s['size'])} px, device {s['device']}; trained "
        f"{s['train_steps']} SGD steps (lr {s['lr']}) on {s['num_batches']} fixed batches of "
        f"{s['batch_size']} images, then measured on the same batches (same seed per forward)",
        f"- UR recomputes: `{s['ur_losses']}`; lean UR pass (first pass's anchor labels and "
        "samples), so rho = 0 differs by exactly 0",
        "",
        "| ur_norm | rho | ‖eps‖ / ‖P‖ | UR − first (loss) | UR − first (relative) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in outcome["rows"]:
        rel = r["loss_delta"] / r["first"] if r["first"] else float("nan")
        lines.append(
            f"| {r['norm']} | {r['rho']:g} | {r['eps_ratio']:.3g} | {r['loss_delta']:+.4g} | {rel:+.2%} |"
        )
    lines.append("")
    return "\n".join(lines)


def run_command_line(args, argv: List[str], invoked_as: str) -> Dict:
    import sys

    from ugs_d2.bench.common import PROG, BenchError, run_and_report

    log = (lambda m: None) if args.quiet else (lambda m: print(f"[{PROG}] {m}", file=sys.stderr, flush=True))

    def run() -> Dict:
        try:
            norms = [n.strip() for n in args.norms.split(",") if n.strip()]
            rhos = _floats(args.rhos)
        except ValueError as e:
            raise BenchError(f"--rhos: {e}") from None
        return run_ur_table(
            norms, rhos, args.overrides or list(DEFAULT_OVERRIDES), train_steps=args.train_steps,
            lr=args.lr, batch_size=args.batch_size, num_batches=args.num_batches,
            device=args.device, log=log,
        )

    return run_and_report(run, format_report, args.out, argv, invoked_as, PROG, log)
