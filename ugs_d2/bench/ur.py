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
import copy
import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from ugs_d2.bench.common import BenchError, resolve_device, run_lines

__all__ = ["DEFAULT_OVERRIDES", "UrSpec", "run_ur_table", "format_report"]

DEFAULT_OVERRIDES = ("model.input.min_size_train=[128]", "model.input.max_size_train=128",
                     "model.input.min_size_test=128", "model.input.max_size_test=128")


@dataclass(frozen=True)
class UrSpec:
    """The rho table: every ``ugs.ur_norm`` in ``norms`` x rho in ``rhos``, measured on
    ``num_batches`` fixed batches of ``batch_size`` images after ``train_steps`` SGD steps (lr
    ``lr``, momentum 0.9) of ``ugs=full`` composed with the Hydra ``overrides`` on ``device``."""

    norms: Sequence[str]
    rhos: Sequence[float]
    overrides: Sequence[str] = DEFAULT_OVERRIDES
    train_steps: int = 30
    lr: float = 0.01
    batch_size: int = 2
    num_batches: int = 4
    device: str = "auto"

    def check(self) -> None:
        """A ``BenchError`` naming the option for an unknown norm, a negative rho or step count."""
        from ugs_d2.losses import UR_NORMS

        for norm in self.norms:
            if norm not in UR_NORMS:
                raise BenchError(f"--norms: unknown {norm!r}; known: {', '.join(UR_NORMS)}")
        if any(r < 0 for r in self.rhos) or not self.rhos:
            raise BenchError(f"--rhos: expected numbers >= 0, got {list(self.rhos)}")
        if self.train_steps < 0:
            raise BenchError(f"--train-steps must be >= 0, got {self.train_steps}")


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


def run_ur_table(spec: UrSpec, log: Callable[[str], None]) -> Dict:
    """Train ``ugs=full`` for ``spec.train_steps`` on fixed batches, then measure every norm x rho."""
    from ugs_d2.bench.fixed_batches import build_preset_on_fixed_batches

    spec.check()
    device = resolve_device(spec.device)
    model, train_batches, cfg = build_preset_on_fixed_batches(
        spec.overrides, "full", device, spec.batch_size, spec.num_batches, "ugs-bench-ur-", log
    )
    _train(model, train_batches, spec, log)
    rows = []
    for norm in spec.norms:
        for rho in spec.rhos:
            model.refinement.norm, model.refinement.rho = norm, rho
            row = _measure(model, train_batches, int(cfg.seed))
            row.update(norm=norm, rho=rho)
            log(f"{norm} rho={rho}: eps ratio {row['eps_ratio']:.3g}, UR - first {row['loss_delta']:.4g}")
            rows.append(row)
    setup = dict(device=device, train_steps=spec.train_steps, lr=spec.lr, batch_size=spec.batch_size,
                 num_batches=spec.num_batches, ur_losses=model.refinement.losses,
                 meta=type(model).__name__, size=list(cfg.model.input.min_size_train))
    return {"rows": rows, "setup": setup}


def _train(model, batches: List, spec: UrSpec, log: Callable[[str], None]) -> None:
    """``spec.train_steps`` SGD steps on the cycled ``batches``: the heads past their uniform
    initialisation."""
    import torch
    from detectron2.utils.events import EventStorage

    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    for step in range(spec.train_steps):
        with EventStorage(step):
            loss = sum(model(copy.deepcopy(batches[step % len(batches)])).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            log(f"warm-up training step {step}/{spec.train_steps}: loss {float(loss.detach()):.3f}")


def format_report(outcome: Dict, command: str, started: str, wall_s: float, loads: List[float]) -> str:
    s = outcome["setup"]
    lines = [
        "# UR: perturbation size and effect per `ugs.ur_norm` and rho",
        "",
        *run_lines(command, started, wall_s, loads),
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
