"""Inference beyond detectron2's one-image path: batched tiled prediction (``tiled``)."""
