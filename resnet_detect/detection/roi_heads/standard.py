"""The standard (FPN / DC5) RoI heads: ``StandardROIHeads`` pools each RoI from the feature
level that matches its size, runs a box head (2 fc) and the Fast R-CNN outputs, and optionally
the Mask R-CNN mask branch (trained on the positive sampled RoIs, run on the final
detections). Matching and sampling come from ``ROIHeads`` (roi_heads/base.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from ..poolers import MultiLevelRoIAlign
from ..tracing import true_indices
from .base import ROIHeads, SampledRoIs
from .mask_head import MaskRCNNHead


class StandardROIHeads(ROIHeads):
    """Multi-level RoIAlign + fully connected box head + Fast R-CNN outputs (+ mask branch).

    Args:
        in_features: feature maps pooled from, finest first (e.g. p2..p5).
        box_pooler: RoIAlign over those maps.
        box_head: (R, C, S, S) -> (R, D) module.
        mask_pooler: RoIAlign for the mask head (14x14 in the standard recipe), or None
            for no masks (Faster R-CNN).
        mask_head: the mask head, given together with ``mask_pooler``.
        mask_rois_per_image: most positive RoIs per image the mask loss takes, drawn at
            random (0: all of them, the standard recipe; a cap makes CPU training cheaper).
        **kwargs: ``ROIHeads`` arguments (num_classes, box_predictor, matcher, sampler,
            proposal_append_gt).
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        box_pooler: MultiLevelRoIAlign,
        box_head: nn.Module,
        mask_pooler: MultiLevelRoIAlign | None = None,
        mask_head: MaskRCNNHead | None = None,
        mask_rois_per_image: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mask_rois_per_image < 0:
            raise ArgumentError(f"mask_rois_per_image must be >= 0, got {mask_rois_per_image}")
        if (mask_pooler is None) != (mask_head is None):
            raise ArgumentError("StandardROIHeads needs both mask_pooler and mask_head, or neither")
        if mask_head is not None and mask_head.num_classes != self.num_classes:
            raise ArgumentError(
                f"mask head has {mask_head.num_classes} classes, RoI heads {self.num_classes}"
            )
        self.in_features = list(in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.mask_rois_per_image = int(mask_rois_per_image)

    @property
    def mask_on(self) -> bool:
        """Whether the heads predict instance masks."""
        return self.mask_head is not None

    def box_features(self, features: dict[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pools and runs the box head: per image (R_i, 4) boxes -> (R, D).

        Args:
            features: feature maps by name.
            boxes: per image (R_i, 4) RoIs.
        """
        return self.box_head(self.box_pooler([features[f] for f in self.in_features], boxes))

    def mask_logits(self, features: dict[str, Tensor], boxes: Sequence[Tensor],
                    classes: Tensor) -> Tensor:
        """Pools and runs the mask head: per image (R_i, 4) boxes -> (R, M, M) logits, each
        RoI's of its class in `classes` (R,).

        Args:
            features: feature maps by name.
            boxes: per image (R_i, 4) RoIs.
            classes: (R,) int64, the RoIs of all images one after another.
        """
        assert self.mask_pooler is not None and self.mask_head is not None
        pooled = self.mask_pooler([features[f] for f in self.in_features], boxes)
        return self.mask_head(pooled, classes)

    def mask_losses(
        self,
        features: dict[str, Tensor],
        sampled: Sequence[SampledRoIs],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``{"loss_mask"}`` over the positive sampled RoIs, at most ``mask_rois_per_image``
        of them per image (``{}`` without a mask head).

        Args:
            features: feature maps by name.
            sampled: per image the sampled RoIs.
            targets: per image targets with ``"gt_masks"`` (M_i, H_i, W_i).
        """
        if self.mask_head is None:
            return {}
        for i, target in enumerate(targets):
            if "gt_masks" not in target:
                raise ValueError(f"target {i} needs 'gt_masks' to train the mask head")
        is_positive = [(s.gt_classes >= 0) & (s.gt_classes < self.num_classes) for s in sampled]
        # per image (P_i,) indices of the RoIs the mask loss takes
        positive = [self._cap_mask_rois(rows) for rows in true_indices(is_positive)]
        boxes = [s.boxes[p] for s, p in zip(sampled, positive)]  # per image (P_i, 4)
        gt_classes = torch.cat([s.gt_classes[p] for s, p in zip(sampled, positive)])
        logits = self.mask_logits(features, boxes, gt_classes)  # (P, M, M)
        mask_targets = self.mask_head.label_targets(
            [t["gt_masks"] for t in targets],
            boxes,
            [s.matched_idxs[p] for s, p in zip(sampled, positive)],
            logits.shape[-1],
        )
        return self.mask_head.losses(logits, mask_targets)

    def _cap_mask_rois(self, positive: Tensor) -> Tensor:
        """(P,) indices of an image's positive RoIs -> a random ``mask_rois_per_image`` of them
        (all when that is 0 or more than P), in increasing order."""
        cap = self.mask_rois_per_image
        if cap and len(positive) > cap:
            keep = torch.randperm(len(positive), device=positive.device)[:cap]
            positive = positive[keep.sort().values]
        return positive

    def predict_masks(
        self, features: dict[str, Tensor], detections: list[dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        """Adds ``"mask_probs"`` (D_i, M, M), box-relative, to each image's detections.

        Args:
            features: feature maps by name.
            detections: per image ``{"boxes", "scores", "labels"}``.
        """
        if self.mask_head is None:
            return detections
        labels = [d["labels"] for d in detections]
        logits = self.mask_logits(features, [d["boxes"] for d in detections], torch.cat(labels))
        probs = self.mask_head.inference(logits, labels)
        for det, prob in zip(detections, probs):
            det["mask_probs"] = prob
        return detections
