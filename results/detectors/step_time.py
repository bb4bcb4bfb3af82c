"""Training-step time of every detector preset, baseline and UGS, interleaved in one process.

Sizes the embedded benchmark: for each (model preset, ugs preset) the median and minimum wall
time of one SGD step (forward + backward + step, as ``ugs-bench overhead`` measures it, whose
``PresetRun`` this reuses) on the same fixed batches, with the configurations interleaved round by
round so that load from other processes spreads over all of them. Ratios are against
``tiny_r18_fpn`` / ``off`` measured in the same run.

    .venv/bin/python results/detectors/step_time.py --dataset-root DIR [--rounds 3] [--batch-size 8]

Writes ``results/detectors/step_time.md`` (atomically).
"""
import argparse
import os
import platform
import statistics
import sys
import time

MODELS = ["tiny_r18_fpn", "retinanet_r18_fpn", "fcos_r18_fpn", "cascade_r18_fpn"]
PRESETS = ["off", "full"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  .venv/bin/python results/detectors/step_time.py --dataset-root /tmp/synth256",
    )
    parser.add_argument("--dataset-root", required=True, help="a synth dataset (ugs-data synth) at 256 px")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per configuration (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration (default: 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--out", default="results/detectors/step_time.md")
    args = parser.parse_args(argv)

    import torch

    from ugs_d2.bench.fixed_batches import build_batches, compose_preset, load_dataset_dicts
    from ugs_d2.bench.overhead import PresetRun
    from ugs_d2.compat import describe_detectron2
    from ugs_d2.config import to_detectron2_cfg
    from ugs_d2.fileio import write_text_atomic

    start, load_start = time.time(), os.getloadavg()[0]
    overrides = [f"dataset.root={args.dataset_root}"]
    log = lambda m: print(f"[step_time] {m}", file=sys.stderr, flush=True)  # noqa: E731
    cfgs = {(m, p): compose_preset(overrides + [f"model={m}"], p, "cpu") for m in MODELS for p in PRESETS}
    base = cfgs[(MODELS[0], "off")]
    dicts, num_classes = load_dataset_dicts(base, overrides, args.batch_size * 2, "/tmp", log)
    d2 = {k: to_detectron2_cfg(c, num_classes=num_classes) for k, c in cfgs.items()}
    train_batches, _ = build_batches(d2[(MODELS[0], "off")], dicts, args.batch_size, int(base.seed))
    lr = d2[(MODELS[0], "off")].SOLVER.BASE_LR * d2[(MODELS[0], "off")].SOLVER.WARMUP_FACTOR

    states = {}
    for key in cfgs:
        log(f"{key}: building {d2[key].MODEL.META_ARCHITECTURE}, {args.warmup} warmup step(s)")
        states[key] = PresetRun(f"{key[0]}/{key[1]}", d2[key], int(base.seed), lr)
        for k in range(args.warmup):
            states[key].train_step(train_batches[k % len(train_batches)])
    times = {key: [] for key in states}
    order = list(states)
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}")
        for key in order if r % 2 == 0 else order[::-1]:
            times[key].append(states[key].train_step(train_batches[r % len(train_batches)]))

    ref_med = statistics.median(times[(MODELS[0], "off")])
    ref_min = min(times[(MODELS[0], "off")])
    lines = [
        "# Training-step time per detector, baseline vs UGS full (interleaved, one process)",
        "",
        f"- command: `.venv/bin/python results/detectors/step_time.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(start))} (wall time {time.time() - start:.0f} s)",
        f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}; load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}",
        "  (a shared machine: other jobs ran at the same time; compare ratios and minima, not absolute medians)",
        f"- {describe_detectron2()}",
        f"- batch {args.batch_size} images at 256 px (each preset's default input size), {num_classes} classes, "
        f"SGD lr {lr:g}; {args.warmup} warmup + {args.rounds} timed steps per configuration, configurations "
        "interleaved (reversed every other round); a step = forward + loss sum + zero_grad + backward + SGD step "
        "(no data loading)",
        "",
        "| model | ugs | meta-architecture | step s (median) | step s (min) | vs tiny_r18_fpn/off (median) | vs tiny_r18_fpn/off (min) | full / off (median) | full / off (min) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        for preset in PRESETS:
            t = times[(model, preset)]
            med, low = statistics.median(t), min(t)
            off = times[(model, "off")]
            within = "" if preset == "off" else f"{med / statistics.median(off):.2f}x | {low / min(off):.2f}x"
            lines.append(
                f"| {model} | {preset} | {d2[(model, preset)].MODEL.META_ARCHITECTURE} | {med:.2f} | {low:.2f} | "
                f"{med / ref_med:.2f}x | {low / ref_min:.2f}x | {within or '1.00x | 1.00x'} |"
            )
    lines += ["", "Raw step times (s): " + "; ".join(
        f"{m}/{p}: {', '.join(f'{x:.2f}' for x in times[(m, p)])}" for m in MODELS for p in PRESETS
    ), ""]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
