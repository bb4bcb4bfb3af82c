"""``ugs-bench overfit``: does each detector still learn to classify with UGS on? Tiny overfit
curves, baseline against full UGS.

For each ``model=`` preset: the same few synthetic images (fixed batches, seed, initial
weights where the architectures agree), ``--iters`` SGD steps at the embedded schedule's
learning rate per image (0.02 at batch 8, so 0.005 at this batch of 2 by the linear scaling
rule; 0.02 at batch 2 diverges the RetinaNet baseline itself), linear warmup, once with
``ugs=off`` and once with ``ugs=full``. The
classification losses (``loss_cls*``, ``loss_rpn_cls``, ``loss_fcos_cls``) and the total are
recorded per step; the report compares the mean of the last ``--tail`` steps and draws the
curves (``--plot``). This is the check that caught UGS stalling RetinaNet: bin CE, UM and UR
once outweighed the focal loss ~10x, and the classifier stopped learning. Example::

    ugs-bench overfit --models faster_rcnn=tiny_r18_fpn,retinanet=retinanet_r18_fpn --iters 60
"""
import argparse
import copy
import os
import statistics
from typing import Callable, Dict, List, Sequence

__all__ = ["add_parser", "overfit_curve", "run_overfit", "format_report", "classification_loss"]

#: the detectors' CPU presets (configs/model)
DEFAULT_MODELS = "tiny_r18_fpn,retinanet_r18_fpn,fcos_r18_fpn,cascade_r18_fpn"
SMALL_INPUT = ("model.input.min_size_train=[128]", "model.input.max_size_train=128",
               "model.input.min_size_test=128", "model.input.max_size_test=128")


def classification_loss(losses: Dict[str, float]) -> float:
    """Sum of the classification terms of any detector's loss dict (RPN objectness included)."""
    return sum(v for k, v in losses.items() if k.startswith(("loss_cls", "loss_rpn_cls", "loss_fcos_cls")))


def overfit_curve(
    model_preset: str,
    ugs: str,
    *,
    iters: int,
    lr: float = 0.005,
    warmup: int = 20,
    batch_size: int = 2,
    num_batches: int = 1,
    overrides: Sequence[str] = SMALL_INPUT,
    log: Callable[[str], None] = lambda m: None,
) -> Dict[str, List[float]]:
    """Per-step ``cls`` (classification losses) and ``total`` of ``iters`` SGD steps.

    Raises:
        FloatingPointError: naming the step when a loss is not finite.
    """
    import torch
    from detectron2.utils.events import EventStorage

    from ugs_d2.cli.bench import build_preset_on_fixed_batches

    model, batches, _ = build_preset_on_fixed_batches(
        [f"model={model_preset}", *overrides], ugs, "cpu", batch_size, num_batches, "ugs-overfit-", log
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    curve = {"cls": [], "total": []}
    for step in range(iters):
        for group in optimizer.param_groups:  # detectron2's linear warmup from 0.001 x lr
            group["lr"] = lr * min(1.0, 0.001 + (1 - 0.001) * step / max(warmup, 1))
        with EventStorage(step):
            losses = model(copy.deepcopy(batches[step % len(batches)]))
        total = sum(losses.values())
        if not torch.isfinite(total):
            bad = [k for k, v in losses.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"{model_preset} ugs={ugs}: {', '.join(bad)} not finite at step {step}")
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        curve["cls"].append(classification_loss({k: float(v.detach()) for k, v in losses.items()}))
        curve["total"].append(float(total.detach()))
        if step % 20 == 0:
            log(f"{model_preset} ugs={ugs} step {step}: cls {curve['cls'][-1]:.3f}, total {curve['total'][-1]:.3f}")
    return curve


def run_overfit(
    models: Sequence[str],
    *,
    iters: int,
    tail: int,
    against: str = "full",
    lr: float = 0.005,
    num_batches: int = 1,
    overrides: Sequence[str] = (),
    log,
) -> Dict:
    """``off`` and ``against`` for every model preset; see :func:`overfit_curve`."""
    curves = {}
    for model in models:
        for ugs in ("off", against):
            curves[(model, ugs)] = overfit_curve(
                model, ugs, iters=iters, lr=lr, num_batches=num_batches,
                overrides=[*SMALL_INPUT, *overrides], log=log,
            )
    return {"curves": curves, "models": list(models), "iters": iters, "tail": tail, "against": against,
            "num_batches": num_batches, "lr": lr, "overrides": list(overrides)}


def _tail_mean(values: List[float], tail: int) -> float:
    return statistics.mean(values[-tail:])


def format_report(outcome: Dict, command: str, started: str, wall_s: float, loads: List[float]) -> str:
    tail, against = outcome["tail"], outcome["against"]
    lines = [
        f"# Tiny overfit: classification loss with `ugs=off` and `ugs={against}`",
        "",
        f"- command: `{command}`",
        f"- date: {started} (wall time {wall_s:.0f} s); load average at start / end: "
        + " / ".join(f"{x:.2f}" for x in loads),
        f"- {outcome['iters']} SGD steps (lr {outcome['lr']}, momentum 0.9, 20 warmup steps) on "
        f"{outcome['num_batches']} fixed batch(es) of 2 synthetic 128 px images, same seed; mean of the last "
        f"{tail} steps; overrides: {' '.join(outcome.get('overrides') or []) or '(none)'}",
        "",
        f"| model | cls loss off | cls loss {against} | {against} / off | total off | total {against} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in outcome["models"]:
        off, full = outcome["curves"][(model, "off")], outcome["curves"][(model, against)]
        c_off, c_full = _tail_mean(off["cls"], tail), _tail_mean(full["cls"], tail)
        lines.append(
            f"| {model} | {c_off:.4f} | {c_full:.4f} | {c_full / c_off:.2f}x | "
            f"{_tail_mean(off['total'], tail):.4f} | {_tail_mean(full['total'], tail):.4f} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot_curves(outcome: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ugs_d2.fileio import write_atomic

    models = outcome["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for ugs, style in (("off", "-"), (outcome["against"], "--")):
            ax.plot(outcome["curves"][(model, ugs)]["cls"], style, label=f"ugs={ugs}")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("classification loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "overfit",
        help="tiny overfit curves per detector: classification loss with ugs=off vs ugs=full",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("Example::")[0].strip(),
    )
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"configs/model presets (default: {DEFAULT_MODELS})")
    p.add_argument("--iters", type=int, default=120, help="SGD steps per run (default: 120)")
    p.add_argument("--tail", type=int, default=20, help="steps averaged at the end (default: 20)")
    p.add_argument("--against", default="full", help="the configs/ugs preset compared with off (default: full)")
    p.add_argument("--num-batches", type=int, default=1, help="fixed batches of 2 images, cycled (default: 1)")
    p.add_argument("--lr", type=float, default=0.005,
                   help="SGD learning rate (default: 0.005 = the embedded 0.02 at batch 8, scaled to 2)")
    p.add_argument("--out", default=os.path.join("results", "overfit.md"), help="markdown report")
    p.add_argument("--plot", default=os.path.join("results", "overfit.png"), help="PNG of the curves")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides for both runs (e.g. ugs.ur_losses=loc); not ugs=... or model=...")


def run_command_line(args, argv: List[str], invoked_as: str) -> Dict:
    import sys

    from ugs_d2.bench.common import PROG, BenchError, run_and_report

    log = (lambda m: None) if args.quiet else (lambda m: print(f"[{PROG}] {m}", file=sys.stderr, flush=True))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.iters < 1 or not 1 <= args.tail <= args.iters:
        raise SystemExit(f"{PROG}: need --iters >= 1 and 1 <= --tail <= --iters")

    def run() -> Dict:
        try:
            return run_overfit(
                models, iters=args.iters, tail=args.tail, against=args.against, lr=args.lr,
                num_batches=args.num_batches, overrides=args.overrides, log=log,
            )
        except FloatingPointError as e:
            raise BenchError(str(e)) from None

    outcome = run_and_report(run, format_report, args.out, argv, invoked_as, PROG, log)
    if args.plot:
        plot_curves(outcome, args.plot)
        log(f"wrote {args.plot}")
    return outcome
