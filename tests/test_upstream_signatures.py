"""The signatures of every detectron2 (and fvcore / Hydra / submitit) method the package
overrides or calls privately, in one place: an upstream change fails here, by name, instead of
deep inside a training step.

Signatures are compared without annotations (``(self, anchors, pred_logits, ...)``, defaults
included). Where detectron2 0.6 (the registry fallback) and upstream main differ, the entry
holds one signature per build (``ugs_d2.compat.detectron2_build()["kind"]``); the upstream ones
were read from the vendored snapshot (commit 02b5c4e).

Two further checks keep the table complete: every method of a detectron2 / fvcore / Hydra
class that a class of ``ugs_d2`` or ``projects/`` overrides must be in it, and no module but
``ugs_d2/compat.py`` may touch a private (``_``-prefixed) attribute of an object other than
``self`` / ``cls`` / ``super()``, nor read on ``self`` one that only an upstream base class
defines or assigns.
"""
import ast
import dataclasses
import glob
import importlib
import inspect
import os
import pkgutil
import textwrap

import pytest

import ugs_d2
from ugs_d2 import compat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_PACKAGES = ("detectron2", "fvcore", "iopath", "hydra", "submitit")
PROJECTS = ("UGS_RetinaNet", "UGS_FCOS", "UGS_Cascade")
OUR_PACKAGES = ("ugs_d2",) + tuple(p.lower() for p in PROJECTS)

SIGNATURES = {
    # overridden by ugs_d2.modeling (UGSRCNN, UGSRPN, UGSROIHeads, UGSFastRCNNOutputLayers)
    "detectron2.modeling.meta_arch.rcnn:GeneralizedRCNN.__init__":
        "(self, *, backbone, proposal_generator, roi_heads, pixel_mean, pixel_std, input_format=None, vis_period=0)",
    "detectron2.modeling.meta_arch.rcnn:GeneralizedRCNN.from_config":
        "(cfg)",
    "detectron2.modeling.meta_arch.rcnn:GeneralizedRCNN.forward":
        "(self, batched_inputs)",
    "detectron2.modeling.roi_heads.fast_rcnn:FastRCNNOutputLayers.__init__": {
        "registry fallback": "(self, input_shape, *, box2box_transform, num_classes, test_score_thresh=0.0, test_nms_thresh=0.5, test_topk_per_image=100, cls_agnostic_bbox_reg=False, smooth_l1_beta=0.0, box_reg_loss_type='smooth_l1', loss_weight=1.0)",
        "source build": "(self, input_shape, *, box2box_transform, num_classes, test_score_thresh=0.0, test_nms_thresh=0.5, test_topk_per_image=100, cls_agnostic_bbox_reg=False, smooth_l1_beta=0.0, box_reg_loss_type='smooth_l1', loss_weight=1.0, use_fed_loss=False, use_sigmoid_ce=False, get_fed_loss_cls_weights=None, fed_loss_num_classes=50)",
    },
    "detectron2.modeling.roi_heads.fast_rcnn:FastRCNNOutputLayers.from_config":
        "(cfg, input_shape)",
    "detectron2.modeling.roi_heads.fast_rcnn:FastRCNNOutputLayers.box_reg_loss":
        "(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes)",
    "detectron2.modeling.roi_heads.fast_rcnn:FastRCNNOutputLayers.losses":
        "(self, predictions, proposals)",
    "detectron2.modeling.roi_heads.fast_rcnn:FastRCNNOutputLayers.predict_boxes":
        "(self, predictions, proposals)",
    "detectron2.modeling.roi_heads.fast_rcnn:FastRCNNOutputLayers.predict_boxes_for_gt_classes":
        "(self, predictions, proposals)",
    "detectron2.modeling.roi_heads.roi_heads:StandardROIHeads._init_box_head":
        "(cfg, input_shape)",
    "detectron2.modeling.proposal_generator.rpn:StandardRPNHead.__init__":
        "(self, *, in_channels, num_anchors, box_dim=4, conv_dims=(-1,))",
    "detectron2.modeling.proposal_generator.rpn:StandardRPNHead.from_config":
        "(cfg, input_shape)",
    "detectron2.modeling.proposal_generator.rpn:RPN.__init__":
        "(self, *, in_features, head, anchor_generator, anchor_matcher, box2box_transform, batch_size_per_image, positive_fraction, pre_nms_topk, post_nms_topk, nms_thresh=0.7, min_box_size=0.0, anchor_boundary_thresh=-1.0, loss_weight=1.0, box_reg_loss_type='smooth_l1', smooth_l1_beta=0.0)",
    "detectron2.modeling.proposal_generator.rpn:RPN.from_config":
        "(cfg, input_shape)",
    "detectron2.modeling.proposal_generator.rpn:RPN.label_and_sample_anchors":
        "(self, anchors, gt_instances)",
    "detectron2.modeling.proposal_generator.rpn:RPN.losses":
        "(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)",
    "detectron2.modeling.proposal_generator.rpn:RPN.predict_proposals":
        "(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)",
    # overridden by the dense detectors (ugs_d2.modeling.dense, projects/UGS_RetinaNet, UGS_FCOS), and the inference path they rely on: top-k first, then box2box_transform.apply_deltas (wrapped by stage.BinDecodingTransform)
    "detectron2.modeling.meta_arch.retinanet:RetinaNetHead.__init__":
        "(self, *, input_shape, num_classes, num_anchors, conv_dims, norm='', prior_prob=0.01)",
    "detectron2.modeling.meta_arch.retinanet:RetinaNetHead.from_config":
        "(cfg, input_shape)",
    "detectron2.modeling.meta_arch.retinanet:RetinaNet.__init__":
        "(self, *, backbone, head, head_in_features, anchor_generator, box2box_transform, anchor_matcher, num_classes, focal_loss_alpha=0.25, focal_loss_gamma=2.0, smooth_l1_beta=0.0, box_reg_loss_type='smooth_l1', test_score_thresh=0.05, test_topk_candidates=1000, test_nms_thresh=0.5, max_detections_per_image=100, pixel_mean, pixel_std, vis_period=0, input_format='BGR')",
    "detectron2.modeling.meta_arch.retinanet:RetinaNet.from_config":
        "(cfg)",
    "detectron2.modeling.meta_arch.retinanet:RetinaNet.forward_training":
        "(self, images, features, predictions, gt_instances)",
    "detectron2.modeling.meta_arch.retinanet:RetinaNet.losses":
        "(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)",
    "detectron2.modeling.meta_arch.retinanet:RetinaNet.label_anchors":
        "(self, anchors, gt_instances)",
    "detectron2.modeling.meta_arch.fcos:FCOSHead.__init__":
        "(self, *, input_shape, conv_dims, **kwargs)",
    "detectron2.modeling.meta_arch.fcos:FCOS.__init__":
        "(self, *, backbone, head, head_in_features=None, box2box_transform=None, num_classes, center_sampling_radius=1.5, focal_loss_alpha=0.25, focal_loss_gamma=2.0, test_score_thresh=0.2, test_topk_candidates=1000, test_nms_thresh=0.6, max_detections_per_image=100, pixel_mean, pixel_std)",
    "detectron2.modeling.meta_arch.fcos:FCOS.label_anchors":
        "(self, anchors, gt_instances)",
    "detectron2.modeling.meta_arch.fcos:FCOS.forward_training":
        "(self, images, features, predictions, gt_instances)",
    "detectron2.modeling.meta_arch.fcos:FCOS.losses":
        "(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness)",
    "detectron2.modeling.meta_arch.dense_detector:DenseDetector._transpose_dense_predictions":
        "(self, predictions, dims_per_anchor)",
    "detectron2.modeling.meta_arch.retinanet:RetinaNet.forward_inference":
        "(self, images, features, predictions)",
    "detectron2.modeling.meta_arch.fcos:FCOS.forward_inference":
        "(self, images, features, predictions)",
    "detectron2.modeling.box_regression:Box2BoxTransform.get_deltas":
        "(self, src_boxes, target_boxes)",
    "detectron2.modeling.box_regression:Box2BoxTransform.apply_deltas":
        "(self, deltas, boxes)",
    "detectron2.modeling.box_regression:Box2BoxTransformLinear.get_deltas":
        "(self, src_boxes, target_boxes)",
    "detectron2.modeling.box_regression:Box2BoxTransformLinear.apply_deltas":
        "(self, deltas, boxes)",
    # overridden by projects/UGS_Cascade
    "detectron2.modeling.roi_heads.cascade_rcnn:CascadeROIHeads._init_box_head":
        "(cfg, input_shape)",
    "detectron2.modeling.roi_heads.cascade_rcnn:CascadeROIHeads.__init__":
        "(self, *, box_in_features, box_pooler, box_heads, box_predictors, proposal_matchers, **kwargs)",
    "detectron2.modeling.roi_heads.cascade_rcnn:CascadeROIHeads._forward_box":
        "(self, features, proposals, targets=None)",
    # overridden by ugs_d2.data (AugmentingDatasetMapper, the augmentations)
    "detectron2.data.transforms.augmentation:Augmentation.get_transform":
        "(self, *args)",
    "detectron2.data.dataset_mapper:DatasetMapper.__init__":
        "(self, is_train, *, augmentations, image_format, use_instance_mask=False, use_keypoint=False, instance_mask_format='polygon', keypoint_hflip_indices=None, precomputed_proposal_topk=None, recompute_boxes=False)",
    "detectron2.data.dataset_mapper:DatasetMapper.from_config":
        "(cfg, is_train=True)",
    "detectron2.data.dataset_mapper:DatasetMapper._transform_annotations":
        "(self, dataset_dict, transforms, image_shape)",
    "detectron2.data.dataset_mapper:DatasetMapper.__call__":
        "(self, dataset_dict)",
    # overridden by ugs_d2.engine and ugs_d2.evaluation (trainer, hooks, writer, checkpointer, evaluator); AtomicCheckpointer also relies on fvcore's save/tag_last_checkpoint writing through path_manager.open
    "detectron2.checkpoint.detection_checkpoint:DetectionCheckpointer.__init__":
        "(self, model, save_dir='', *, save_to_disk=None, **checkpointables)",
    "detectron2.checkpoint.detection_checkpoint:DetectionCheckpointer._load_file":
        "(self, filename)",
    "detectron2.checkpoint.detection_checkpoint:DetectionCheckpointer.load":
        "(self, path, *args, **kwargs)",
    "detectron2.checkpoint.detection_checkpoint:DetectionCheckpointer._load_model":
        "(self, checkpoint)",
    "fvcore.common.checkpoint:Checkpointer.save":
        "(self, name, **kwargs)",
    "fvcore.common.checkpoint:Checkpointer.tag_last_checkpoint":
        "(self, last_filename_basename)",
    "fvcore.common.checkpoint:Checkpointer.resume_or_load":
        "(self, path, *, resume=True)",
    "fvcore.common.checkpoint:Checkpointer.has_checkpoint":
        "(self)",
    "fvcore.common.checkpoint:Checkpointer.get_checkpoint_file":
        "(self)",
    "detectron2.engine.train_loop:HookBase.before_train":
        "(self)",
    "detectron2.engine.train_loop:HookBase.after_train":
        "(self)",
    "detectron2.engine.train_loop:HookBase.after_step":
        "(self)",
    "detectron2.engine.defaults:DefaultTrainer.run_step":
        "(self)",
    "detectron2.engine.defaults:DefaultTrainer.train":
        "(self)",
    "detectron2.engine.defaults:DefaultTrainer.__init__":
        "(self, cfg)",
    "detectron2.engine.defaults:DefaultTrainer.build_model":
        "(cfg)",
    "detectron2.engine.defaults:DefaultTrainer.build_train_loader":
        "(cfg)",
    "detectron2.engine.defaults:DefaultTrainer.build_test_loader":
        "(cfg, dataset_name)",
    "detectron2.engine.defaults:DefaultTrainer.test":
        "(cfg, model, evaluators=None)",
    "detectron2.engine.defaults:DefaultTrainer.build_evaluator":
        "(cfg, dataset_name)",
    "detectron2.engine.defaults:DefaultTrainer.build_hooks":
        "(self)",
    "detectron2.engine.defaults:DefaultTrainer.build_writers":
        "(self)",
    "detectron2.utils.events:EventWriter.write":
        "(self)",
    "detectron2.utils.events:EventWriter.close":
        "(self)",
    "detectron2.evaluation.coco_evaluation:COCOEvaluator.__init__": {
        "registry fallback": "(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, max_dets_per_image=None, use_fast_impl=True, kpt_oks_sigmas=())",
        "source build": "(self, dataset_name, tasks=None, distributed=True, output_dir=None, *, max_dets_per_image=None, use_fast_impl=True, kpt_oks_sigmas=(), allow_cached_coco=True)",
    },
    "detectron2.evaluation.coco_evaluation:COCOEvaluator._eval_predictions":
        "(self, predictions, img_ids=None)",
    # overridden by ugs_d2.evaluation.oriented.OrientedCOCOEvaluator
    "detectron2.evaluation.evaluator:DatasetEvaluator.reset": "(self)",
    "detectron2.evaluation.evaluator:DatasetEvaluator.process": "(self, inputs, outputs)",
    "detectron2.evaluation.evaluator:DatasetEvaluator.evaluate": "(self)",
    # overridden by ugs_d2.harness.callbacks.CollectResults (a Hydra callback)
    "hydra.experimental.callback:Callback.on_job_start":
        "(self, config, *, task_function, **kwargs)",
    "hydra.experimental.callback:Callback.on_job_end":
        "(self, config, job_return, **kwargs)",
    "hydra.experimental.callback:Callback.on_multirun_start":
        "(self, config, **kwargs)",
    "hydra.experimental.callback:Callback.on_multirun_end":
        "(self, config, **kwargs)",
    # private, called from ugs_d2.compat only
    "detectron2.modeling.roi_heads.roi_heads:StandardROIHeads._forward_box":
        "(self, features, proposals)",
    "detectron2.data.datasets.builtin_meta:_get_builtin_metadata":
        "(dataset_name)",
    "hydra._internal.utils:get_args_parser":
        "()",
    "submitit.slurm.slurm:_parse_node_list":
        "(node_list)",
}

#: private attributes that may be read outside compat.py: ``where -> why``
PRIVATE_ALLOWED = {
    "nn.modules.batchnorm._BatchNorm": "torch's common base of BatchNorm1d/2d/3d (no public one)",
}


def stripped(signature: inspect.Signature) -> str:
    """``(self, x: Tensor = 1) -> T`` -> ``(self, x=1)``."""
    parameters = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def resolve(key: str):
    module, qualname = key.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def expected(key: str) -> str:
    value = SIGNATURES[key]
    return value if isinstance(value, str) else value[compat.detectron2_build()["kind"]]


@pytest.mark.parametrize("key", sorted(SIGNATURES))
def test_upstream_signature(key):
    assert stripped(inspect.signature(resolve(key))) == expected(key), (
        f"{key} changed upstream: check the ugs_d2 code that overrides or calls it"
    )


def test_stripped_by_hand():
    def f(self, x: int = 1, *, y: "str" = "a", **kw) -> None:
        pass

    assert stripped(inspect.signature(f)) == "(self, x=1, *, y='a', **kw)"


def test_hydra_job_return_keeps_the_exception_in_return_value():
    """compat.job_return_value reads ``JobReturn._return_value`` (a dataclass field)."""
    from hydra.core.utils import JobReturn

    assert "_return_value" in {f.name for f in dataclasses.fields(JobReturn)}


def test_coco_evaluator_keeps_its_ground_truth_and_results_where_compat_reads_them():
    """compat.coco_evaluator_ground_truth / set_coco_evaluator_results use ``COCOEvaluator``'s
    ``_coco_api`` (set in ``__init__``) and ``_results`` (reset by ``evaluate`` before it calls
    ``_eval_predictions``)."""
    from detectron2.evaluation import COCOEvaluator

    assert "self._coco_api = COCO(" in inspect.getsource(COCOEvaluator.__init__)
    evaluate = inspect.getsource(COCOEvaluator.evaluate)
    assert "self._results = OrderedDict()" in evaluate and "return copy.deepcopy(self._results)" in evaluate
    assert evaluate.index("self._results = OrderedDict()") < evaluate.index("self._eval_predictions(")


def _package_classes():
    """Every class defined in ugs_d2 (but its command-line modules, which define none that
    subclass detectron2) and in the projects' packages."""
    modules = [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(ugs_d2.__path__, "ugs_d2.")
        if not m.name.startswith("ugs_d2.cli")
    ]
    from ugs_d2.config import load_project

    for name in PROJECTS:
        package = load_project(name)
        modules += [importlib.import_module(m.name) for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for module in modules:
        for obj in vars(module).values():
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                yield obj


def _is_upstream(cls) -> bool:
    return cls.__module__.split(".")[0] in UPSTREAM_PACKAGES


def overridden_upstream_methods():
    """``{"module:Class.method"}`` of the upstream class that defines each method some class
    of ours (or a mixin in its MRO) redefines."""
    found = set()
    for cls in _package_classes():
        upstream = [b for b in cls.__mro__ if _is_upstream(b)]
        ours = [c for c in cls.__mro__ if c.__module__.split(".")[0] in OUR_PACKAGES]
        for own in ours:
            for name in vars(own):
                if name.startswith("__") and name not in ("__init__", "__call__"):
                    continue
                owner = next((b for b in upstream if name in vars(b)), None)
                if owner is not None and callable(getattr(owner, name)):
                    found.add(f"{owner.__module__}:{owner.__qualname__}.{name}")
    return found


def test_every_overridden_upstream_method_is_in_the_table():
    missing = sorted(overridden_upstream_methods() - set(SIGNATURES))
    assert not missing, "add these overridden methods to SIGNATURES: " + ", ".join(missing)


def private_uses(path: str):
    """``(line, expression)`` of each private attribute read on something other than
    self / cls / super(), and each private name imported from another package."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                continue  # an override calling the method it overrides: in SIGNATURES
            yield node.lineno, ast.unparse(node)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and not node.module.startswith("ugs_"):
            for alias in node.names:
                if alias.name.startswith("_") or "._" in node.module:
                    yield node.lineno, f"from {node.module} import {alias.name}"


def test_private_upstream_apis_are_called_from_compat_only():
    files = glob.glob(os.path.join(REPO, "ugs_d2", "**", "*.py"), recursive=True)
    files += glob.glob(os.path.join(REPO, "projects", "**", "*.py"), recursive=True)
    found = [
        f"{os.path.relpath(path, REPO)}:{line}: {expr}"
        for path in sorted(files)
        if not path.endswith(os.path.join("ugs_d2", "compat.py"))
        for line, expr in private_uses(path)
        if expr not in PRIVATE_ALLOWED
    ]
    assert not found, "private APIs outside ugs_d2/compat.py:\n" + "\n".join(found)


#: private attributes an upstream class defines that a subclass of ours may use on ``self``:
#: ``"module:Class.name" -> why``
INHERITED_PRIVATE_ALLOWED = {
    "detectron2.data.transforms.augmentation:Augmentation._init":
        "detectron2's helper for Augmentation subclasses (its own augmentations call it)",
    "detectron2.data.transforms.augmentation:Augmentation._rand_range":
        "detectron2's helper for Augmentation subclasses (its own augmentations call it)",
}


def _self_attributes(cls):
    """``(assigned, read)``: the ``_``-prefixed names a class's own source assigns on ``self``
    (or defines), and ``(line, name)`` of those it reads on ``self``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    assigned = {name for name in vars(cls) if name.startswith("_")}
    read = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            if isinstance(node.ctx, ast.Store):
                assigned.add(node.attr)
            else:
                read.append((node.lineno, node.attr))
    return assigned, read


def inherited_private_reads():
    """``module:Class.name`` for each private attribute that a class of ours reads on ``self``
    although no class of ours in its MRO defines or assigns it: one of an upstream class (the
    scan of :func:`private_uses` passes every ``self._...``, so it cannot see these)."""
    found = set()
    for cls in _package_classes():
        if not any(_is_upstream(b) for b in cls.__mro__):
            continue
        ours = [c for c in cls.__mro__ if c.__module__.split(".")[0] in OUR_PACKAGES]
        scanned = [_self_attributes(c) for c in ours]
        own = set().union(*(assigned for assigned, _ in scanned))
        for _, read in scanned:
            for _, name in read:
                if name not in own:
                    owner = next((b for b in cls.__mro__ if _is_upstream(b) and name in vars(b)), cls)
                    found.add(f"{owner.__module__}:{owner.__qualname__}.{name}")
    return found


def test_no_private_upstream_attribute_is_read_on_self():
    found = sorted(inherited_private_reads() - set(INHERITED_PRIVATE_ALLOWED))
    assert not found, "upstream private attributes read on self (go through ugs_d2.compat):\n" + "\n".join(found)


def test_private_use_scan_by_hand(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from hydra._internal.utils import get_args_parser\n"
        "from submitit.slurm.slurm import _parse_node_list\n"
        "class A(B):\n"
        "    def f(self, trainer):\n"
        "        self._own = super()._forward_box(1)\n"
        "        return trainer._hooks\n"
    )
    assert list(private_uses(str(path))) == [
        (1, "from hydra._internal.utils import get_args_parser"),
        (2, "from submitit.slurm.slurm import _parse_node_list"),
        (6, "trainer._hooks"),
    ]
