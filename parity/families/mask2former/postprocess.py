"""Post-processing on the port side.

Two different questions, kept apart:
- `port_outputs`: the ORIGINAL's post-processing rules (MaskFormer.forward in eval: sem_seg_postprocess,
  semantic/instance/panoptic inference, as documented by the fixture and detectron2) applied to the PORT's raw
  outputs, written here from that description; these pair with the original's `return.*` references in the model
  verdict, so a port whose logits agree only loosely but flip a threshold or a top-k pick is caught.
- `image_processor_checks`: what transformers' Mask2FormerImageProcessor.post_process_* return for the same outputs,
  compared with the original's post-processed results (reported in the processor section, not the model verdict).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parity.contracts.errors import ParityError


def _flags(cfg: dict, dump) -> tuple[bool, bool, bool]:
    """Which outputs the original computed: the config's TEST flags, plus any return.* the dump carries."""
    test = cfg["MODEL"]["MASK_FORMER"]["TEST"]
    names = set(dump.references)
    semantic = test["SEMANTIC_ON"] or "return.sem_seg" in names
    instance = test["INSTANCE_ON"] or "return.instances.scores" in names
    panoptic = test["PANOPTIC_ON"] or "return.panoptic_seg" in names
    return semantic, instance, panoptic


def _sizes(dump) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized image size inside the padded batch, original image size)."""
    image = dump.inputs["image"]
    raw = dump.raw_image()
    return (int(image.shape[-2]), int(image.shape[-1])), (raw.height, raw.width)


def _sem_seg_postprocess(result: torch.Tensor, image_size, height: int, width: int) -> torch.Tensor:
    cropped = result[:, : image_size[0], : image_size[1]][None]
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)[0]


def _semantic(mask_cls, mask_pred):
    return torch.einsum("qc,qhw->chw", F.softmax(mask_cls, dim=-1)[..., :-1], mask_pred.sigmoid())


def _thing_ids(recipe) -> set[int]:
    things = recipe.spec.thing_ids()
    if things is None:
        raise ParityError("the recipe's classes have no thing/stuff split (spec.classes[].isthing) for panoptic or "
                          "instance post-processing")
    return set(things)


def _panoptic(recipe, mask_cls, mask_pred):
    cfg = recipe.original_config
    test = cfg["MODEL"]["MASK_FORMER"]["TEST"]
    num_classes = cfg["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
    things = _thing_ids(recipe)
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_pred = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > test["OBJECT_MASK_THRESHOLD"])
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    panoptic = torch.zeros(cur_masks.shape[-2:], dtype=torch.int32)
    segments: list[tuple[int, int, int]] = []
    if cur_masks.shape[0] == 0:
        return panoptic, segments
    mask_ids = prob_masks.argmax(0)
    stuff: dict[int, int] = {}
    segment_id = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k])
        isthing = pred_class in things
        mask_area = int((mask_ids == k).sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = (mask_ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < test["OVERLAP_THRESHOLD"]:
                continue
            if not isthing:
                if pred_class in stuff:
                    panoptic[mask] = stuff[pred_class]
                    continue
                stuff[pred_class] = segment_id + 1
            segment_id += 1
            panoptic[mask] = segment_id
            segments.append((segment_id, int(isthing), pred_class))
    return panoptic, segments


def _instances(recipe, mask_cls, mask_pred, panoptic_on: bool):
    cfg = recipe.original_config
    num_classes = cfg["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
    queries = mask_cls.shape[0]
    topk = cfg["TEST"]["DETECTIONS_PER_IMAGE"]
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(queries, 1).flatten(0, 1)
    top_scores, top_index = scores.flatten(0, 1).topk(topk, sorted=False)
    top_labels = labels[top_index]
    mask_pred = mask_pred[top_index // num_classes]
    if panoptic_on:
        things = _thing_ids(recipe)
        keep = torch.tensor([int(label) in things for label in top_labels], dtype=torch.bool)
        top_scores, top_labels, mask_pred = top_scores[keep], top_labels[keep], mask_pred[keep]
    binary = (mask_pred > 0).float()
    mask_scores = (mask_pred.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return binary, top_scores * mask_scores, top_labels


def port_outputs(recipe, processor, dump, outputs) -> dict:
    cfg = recipe.original_config
    if not any(name.startswith("return.") for name in dump.references):
        return {}
    semantic_on, instance_on, panoptic_on = _flags(cfg, dump)
    test = cfg["MODEL"]["MASK_FORMER"]["TEST"]
    before = test["SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE"] or test["INSTANCE_ON"] or test["PANOPTIC_ON"]
    padded = dump.inputs["pixel_values"].shape[-2:]
    image_size, (height, width) = _sizes(dump)
    mask_pred = F.interpolate(outputs.masks_queries_logits.float().cpu(), size=tuple(padded), mode="bilinear",
                              align_corners=False)[0]
    mask_cls = outputs.class_queries_logits.float().cpu()[0]
    if before:
        mask_pred = _sem_seg_postprocess(mask_pred, image_size, height, width)
    rule = "original post-processing rules on the port's outputs"
    out = {}
    if semantic_on:
        sem = _semantic(mask_cls, mask_pred)
        if not before:
            sem = _sem_seg_postprocess(sem, image_size, height, width)
        out["return.sem_seg"] = (f"semantic_inference ({rule})", sem)
    if panoptic_on:
        panoptic, segments = _panoptic(recipe, mask_cls, mask_pred)
        out["return.panoptic_seg"] = (f"panoptic_inference ids ({rule})", panoptic.float())
        out["return.panoptic_seg.segments_info"] = (f"panoptic_inference segments [id, isthing, category] ({rule})",
                                                   torch.tensor(segments, dtype=torch.float32).reshape(-1, 3))
    if instance_on:
        masks, scores, classes = _instances(recipe, mask_cls, mask_pred, panoptic_on)
        out["return.instances.pred_masks"] = (f"instance_inference masks ({rule})", masks)
        out["return.instances.scores"] = (f"instance_inference scores ({rule})", scores)
        out["return.instances.pred_classes"] = (f"instance_inference classes ({rule})", classes.float())
    return out


def image_processor_checks(recipe, processor, dump, outputs) -> list[tuple]:
    """transformers' own post-processing (Mask2FormerImageProcessor.post_process_*, called as its docs show, with the
    config's thresholds) vs the original's post-processed results, in comparable layouts."""
    cfg = recipe.original_config
    test = cfg["MODEL"]["MASK_FORMER"]["TEST"]
    num_classes = cfg["MODEL"]["SEM_SEG_HEAD"]["NUM_CLASSES"]
    checks = []
    refs = dump.references
    _, (height, width) = _sizes(dump)
    if "return.sem_seg" in refs:
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]
        checks.append(("postprocess.semantic.label_map",
                       "post_process_semantic_segmentation label map vs argmax of the original's sem_seg",
                       refs["return.sem_seg"].argmax(0).float(), labels.float().cpu()))
    if "return.panoptic_seg" in refs:
        things = set(recipe.spec.thing_ids() or [])
        result = processor.post_process_panoptic_segmentation(
            outputs, threshold=test["OBJECT_MASK_THRESHOLD"], overlap_mask_area_threshold=test["OVERLAP_THRESHOLD"],
            label_ids_to_fuse={c for c in range(num_classes) if c not in things}, target_sizes=[(height, width)])[0]
        segmentation = result["segmentation"].float().cpu()
        segmentation[segmentation < 0] = 0  # transformers marks 'no segment' -1, detectron2 0
        checks.append(("postprocess.panoptic.segmentation",
                       "post_process_panoptic_segmentation segment ids (-1 -> 0)", refs["return.panoptic_seg"],
                       segmentation))
        rows = [[s["id"], float(s["label_id"] in things), s["label_id"]] for s in result["segments_info"]]
        checks.append(("postprocess.panoptic.segments_info", "segments_info rows [id, isthing, label_id]",
                       refs["return.panoptic_seg.segments_info"], torch.tensor(rows, dtype=torch.float32).reshape(-1, 3)))
    if "return.instances.scores" in refs:
        result = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[(height, width)], return_binary_maps=True)[0]
        order = torch.argsort(refs["return.instances.scores"], descending=True)
        theirs = sorted(((s["score"], s["label_id"]) for s in result["segments_info"]), reverse=True)
        k = len(order)
        checks.append(("postprocess.instance.top_scores",
                       f"post_process_instance_segmentation scores, best {k} (original keeps DETECTIONS_PER_IMAGE)",
                       refs["return.instances.scores"][order], torch.tensor([t[0] for t in theirs[:k]])))
        checks.append(("postprocess.instance.top_classes", "their classes, in the same score order",
                       refs["return.instances.pred_classes"][order], torch.tensor([float(t[1]) for t in theirs[:k]])))
    return checks
