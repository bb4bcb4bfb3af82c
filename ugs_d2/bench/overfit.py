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
import copy
import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from ugs_d2.bench.common import run_lines

__all__ = ["DEFAULT_MODELS", "SMALL_INPUT", "CurveSpec", "OverfitSpec", "classification_loss", "overfit_curve",
           "run_overfit", "format_report", "plot_curves"]

#: the detectors' CPU presets (configs/model)
DEFAULT_MODELS = "tiny_r18_fpn,retinanet_r18_fpn,fcos_r18_fpn,cascade_r18_fpn"
SMALL_INPUT = ("model.input.min_size_train=[128]", "model.input.max_size_train=128",
               "model.input.min_size_test=128", "model.input.max_size_test=128")


@dataclass(frozen=True)
class CurveSpec:
    """One curve's training: SGD (momentum 0.9, weight decay 1e-4) at ``lr`` after a linear warmup
    of ``warmup`` steps, on ``num_batches`` fixed batches of ``batch_size`` images, the model
    composed with the Hydra ``overrides``."""

    lr: float = 0.005
    warmup: int = 20
    batch_size: int = 2
    num_batches: int = 1
    overrides: Sequence[str] = SMALL_INPUT


@dataclass(frozen=True)
class OverfitSpec:
    """The benchmark: ``iters`` steps of ``off`` and of ``against`` for every preset in ``models``;
    the report compares the mean of the last ``tail`` steps. ``overrides`` come on top of
    :data:`SMALL_INPUT`."""

    models: Sequence[str]
    iters: int
    tail: int
    against: str = "full"
    lr: float = 0.005
    num_batches: int = 1
    overrides: Sequence[str] = ()

    def curve(self) -> CurveSpec:
        return CurveSpec(lr=self.lr, num_batches=self.num_batches, overrides=(*SMALL_INPUT, *self.overrides))


def classification_loss(losses: Dict[str, float]) -> float:
    """Sum of the classification terms of any detector's loss dict (RPN objectness included)."""
    return sum(v for k, v in losses.items() if k.startswith(("loss_cls", "loss_rpn_cls", "loss_fcos_cls")))


def overfit_curve(
    model_preset: str,
    ugs: str,
    *,
    iters: int,
    curve: CurveSpec = CurveSpec(),
    log: Callable[[str], None] = lambda m: None,
) -> Dict[str, List[float]]:
    """Per-step ``cls`` (classification losses) and ``total`` of ``iters`` SGD steps.

    Raises:
        FloatingPointError: naming the step when a loss is not finite.
    """
    import torch
    from detectron2.utils.events import EventStorage

    from ugs_d2.bench.fixed_batches import build_preset_on_fixed_batches

    model, batches, _ = build_preset_on_fixed_batches(
        [f"model={model_preset}", *curve.overrides], ugs, "cpu", curve.batch_size, curve.num_batches,
        "ugs-overfit-", log,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=curve.lr, momentum=0.9, weight_decay=1e-4)
    losses_per_step = {"cls": [], "total": []}
    for step in range(iters):
        for group in optimizer.param_groups:  # detectron2's linear warmup from 0.001 x lr
            group["lr"] = curve.lr * min(1.0, 0.001 + (1 - 0.001) * step / max(curve.warmup, 1))
        with EventStorage(step):
            losses = model(copy.deepcopy(batches[step % len(batches)]))
        total = sum(losses.values())
        if not torch.isfinite(total):
            bad = [k for k, v in losses.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"{model_preset} ugs={ugs}: {', '.join(bad)} not finite at step {step}")
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses_per_step["cls"].append(classification_loss({k: float(v.detach()) for k, v in losses.items()}))
        losses_per_step["total"].append(float(total.detach()))
        if step % 20 == 0:
            log(f"{model_preset} ugs={ugs} step {step}: cls {losses_per_step['cls'][-1]:.3f}, "
                f"total {losses_per_step['total'][-1]:.3f}")
    return losses_per_step


def run_overfit(spec: OverfitSpec, log: Callable[[str], None]) -> Dict:
    """``off`` and ``spec.against`` for every model preset; see :func:`overfit_curve`."""
    curves = {}
    for model in spec.models:
        for ugs in ("off", spec.against):
            curves[(model, ugs)] = overfit_curve(model, ugs, iters=spec.iters, curve=spec.curve(), log=log)
    return {"curves": curves, "models": list(spec.models), "iters": spec.iters, "tail": spec.tail,
            "against": spec.against, "num_batches": spec.num_batches, "lr": spec.lr,
            "overrides": list(spec.overrides)}


def _tail_mean(values: List[float], tail: int) -> float:
    return statistics.mean(values[-tail:])


def format_report(outcome: Dict, command: str, started: str, wall_s: float, loads: List[float]) -> str:
    tail, against = outcome["tail"], outcome["against"]
    lines = [
        f"# Tiny overfit: classification loss with `ugs=off` and `ugs={against}`",
        "",
        *run_lines(command, started, wall_s, loads),
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
