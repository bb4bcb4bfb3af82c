"""ugs_d2: uncertainty-guided small-object detection (UGS) for detectron2, plus a research harness.

Modules: ``bins`` and ``losses`` (the paper's equations as pure tensor functions),
``modeling`` (registered detectron2 heads and meta-architecture), ``config`` (Hydra -> CfgNode
bridge), ``data`` (embedded synthetic dataset, dataset registration), ``engine`` (trainer),
``evaluation`` (results files).
"""
__version__ = "0.1.0"
