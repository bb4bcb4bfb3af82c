"""Checks for results/anchors/README.md: naive global k-means, val-split fitness, detectron2 model.

    .venv/bin/python results/anchors/check.py /tmp/anchors_synth     # run from the repository root
"""
import json
import sys

import numpy as np
import yaml

from ugs_d2 import anchors as A

root = sys.argv[1] if len(sys.argv) > 1 else "datasets/synth"

strides = A.level_strides(["p2", "p3", "p4", "p5", "p6"])
train, _ = A.boxes_at_input_scale(json.load(open(f"{root}/annotations/train.json")), 256, 256)
val, _ = A.boxes_at_input_scale(json.load(open(f"{root}/annotations/val.json")), 256, 256)
learned = yaml.safe_load(open("configs/anchors/synth256.yaml"))
tiny = ([[8], [16], [32], [64], [128]], [[0.5, 1.0, 2.0]])
d2 = ([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]])
# YOLOv5's way: one global k-means of 15 (w, h) anchors, sorted by size, 3 per level
centers, _ = A.kmeans(np.log(train), 15, seed=0)
wh = np.exp(centers)
naive = wh[np.argsort(wh.prod(axis=1))]
print("naive global k-means, 3 per level (w x h), vs stride:")
for level, stride in enumerate(strides):
    rows = naive[3 * level:3 * level + 3]
    sizes = np.sqrt(rows.prod(axis=1))
    print(f"  p{level + 2} stride {stride:g}: " + ", ".join(f"{w:.1f}x{h:.1f}" for w, h in rows)
          + f"  (sizes {', '.join(f'{s:.1f}' for s in sizes)}; below stride: {(sizes < stride).sum()}/3)")
print("| anchors | fitness train | BPR train | anchors/target train | fitness val | BPR val |")
print("|---|---:|---:|---:|---:|---:|")
for name, anchors in [("detectron2 FPN defaults (32..512)", A.cell_anchor_wh(*d2)),
                      ("tiny_r18_fpn preset (8..128)", A.cell_anchor_wh(*tiny)),
                      ("naive global k-means (free w,h)", naive),
                      ("ugs-anchors synth256", A.cell_anchor_wh(learned["sizes"], learned["aspect_ratios"]))]:
    t, v = A.anchor_metrics(train, anchors), A.anchor_metrics(val, anchors)
    print(f"| {name} | {t.fitness:.4f} | {t.bpr:.4f} | {t.anchors_per_target:.2f} | {v.fitness:.4f} | {v.bpr:.4f} |")

from detectron2.modeling import build_model  # noqa: E402 (a script: the second table's imports)

from ugs_d2.config import to_detectron2_cfg  # noqa: E402
from ugs_d2.harness.compose import compose as _compose  # noqa: E402

d2cfg = to_detectron2_cfg(_compose(["+anchors=synth256", "device=cpu"]), num_classes=6)
print("SIZES", d2cfg.MODEL.ANCHOR_GENERATOR.SIZES)
print("ASPECT_RATIOS", d2cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS)
gen = build_model(d2cfg).proposal_generator.anchor_generator
print("num_cell_anchors per level:", gen.num_cell_anchors)
