"""RoI heads: per image R proposals (R, 4) -> detections, or losses on S sampled RoIs.

``ROIHeads`` holds what every RoI head shares: matching proposals to gt boxes (IoU 0.5
by default), appending the gt boxes to the proposals, and sampling S RoIs per image (512,
a quarter foreground). ``StandardROIHeads`` pools each RoI from the feature level that
matches its size, runs a box head (2 fc) and the Fast R-CNN outputs, and optionally the
Mask R-CNN mask branch (trained on the positive sampled RoIs, run on the final
detections). K foreground classes, background is class K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from ..matcher import BACKGROUND, FOREGROUND, IGNORE, Matcher
from ..poolers import MultiLevelRoIAlign
from ..sampler import BalancedSampler
from .fast_rcnn import FastRCNNOutputs
from .mask_head import MaskRCNNHead


class SampledRoIs(NamedTuple):
    """The RoIs of one image that enter the losses (S of them).

    Attributes:
        boxes: (S, 4) RoI boxes.
        gt_classes: (S,) int64 class of each RoI, K for background.
        gt_boxes: (S, 4) gt box matched to each RoI (meaningless for background).
        matched_idxs: (S,) int64 index of that gt box in the image's targets
            (0 for background RoIs; for heads that fetch other gt fields, e.g. masks).
    """

    boxes: Tensor
    gt_classes: Tensor
    gt_boxes: Tensor
    matched_idxs: Tensor


class ROIHeads(nn.Module):
    """Base of the RoI heads: proposal labelling and sampling.

    Subclasses define ``box_features`` (per image boxes -> (R, D) features); the box
    predictor turns those into logits and deltas, losses or detections.

    Args:
        num_classes: number K of foreground classes.
        box_predictor: Fast R-CNN outputs on D features.
        matcher: proposal-to-gt matcher (IoU 0.5 / 0.5, no low-quality matches).
        sampler: RoI sampler (512 per image, a quarter positive).
        proposal_append_gt: add the gt boxes to the proposals in training.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        box_predictor: FastRCNNOutputs,
        matcher: Matcher,
        sampler: BalancedSampler,
        proposal_append_gt: bool = True,
    ) -> None:
        super().__init__()
        if box_predictor.num_classes != num_classes:
            raise ValueError(
                f"box predictor has {box_predictor.num_classes} classes, RoI heads {num_classes}"
            )
        self.num_classes = int(num_classes)
        self.box_predictor = box_predictor
        self.matcher = matcher
        self.sampler = sampler
        self.proposal_append_gt = bool(proposal_append_gt)

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> list[SampledRoIs]:
        """Matches proposals to gt boxes and samples the RoIs of every image.

        Args:
            proposals: per image (R_i, 4) proposal boxes.
            targets: per image ``{"gt_boxes": (M_i, 4), "gt_classes": (M_i,) int64}``.

        Returns:
            Per image the sampled RoIs, in increasing proposal index (gt boxes last).
        """
        sampled = []
        for boxes, target in zip(proposals, targets):
            gt_boxes = target["gt_boxes"].to(boxes.dtype)
            gt_classes = target["gt_classes"]
            if self.proposal_append_gt:
                boxes = torch.cat([boxes, gt_boxes])
            matched_idxs, match_labels = self.matcher(box_iou(gt_boxes, boxes))
            if len(gt_boxes):
                classes = gt_classes[matched_idxs].clone()
                matched_boxes = gt_boxes[matched_idxs]
            else:
                classes = torch.zeros_like(matched_idxs)
                matched_boxes = torch.zeros_like(boxes)
            classes[match_labels == BACKGROUND] = self.num_classes
            classes[match_labels == IGNORE] = -1
            pos_idx, neg_idx = self.sampler(match_labels == FOREGROUND, match_labels == BACKGROUND)
            idx = torch.cat([pos_idx, neg_idx]).sort().values
            sampled.append(
                SampledRoIs(boxes[idx], classes[idx], matched_boxes[idx], matched_idxs[idx])
            )
        return sampled

    def box_features(self, features: dict[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Per image (R_i, 4) boxes -> (R, D) box features; defined by subclasses.

        Args:
            features: feature maps by name.
            boxes: per image (R_i, 4) RoIs.
        """
        raise NotImplementedError

    @property
    def mask_on(self) -> bool:
        """Whether the heads predict instance masks."""
        return False

    def mask_losses(
        self,
        features: dict[str, Tensor],
        sampled: Sequence[SampledRoIs],
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Mask losses on the sampled RoIs; ``{}`` for heads without masks.

        Args:
            features: feature maps by name.
            sampled: per image the sampled RoIs.
            targets: per image targets (with ``gt_masks`` when ``mask_on``).
        """
        return {}

    def predict_masks(
        self, features: dict[str, Tensor], detections: list[dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        """Adds mask predictions to the detections; unchanged for heads without masks.

        Args:
            features: feature maps by name.
            detections: per image ``{"boxes", "scores", "labels"}``.
        """
        return detections

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections in evaluation, losses in training.

        Args:
            features: feature maps by name.
            proposals: per image (R_i, 4) proposal boxes.
            image_sizes: (h, w) of every image before padding.
            targets: per image ``{"gt_boxes", "gt_classes"}`` (and ``"gt_masks"`` (M, H, W)
                when ``mask_on``); required in training.

        Returns:
            Per image ``{"boxes", "scores", "labels"}`` (plus ``"mask_probs"`` (D, M, M)
            when ``mask_on``; empty list in training) and ``{"loss_cls", "loss_box_reg"}``
            (plus ``"loss_mask"``) in training (``{}`` otherwise).
        """
        if self.training:
            if targets is None:
                raise ValueError("RoI heads need targets in training mode")
            sampled = self.label_and_sample_proposals(proposals, targets)
            pred_logits, pred_deltas = self.box_predictor(
                self.box_features(features, [s.boxes for s in sampled])
            )
            losses = self.box_predictor.losses(
                pred_logits,
                pred_deltas,
                torch.cat([s.boxes for s in sampled]),
                torch.cat([s.gt_classes for s in sampled]),
                torch.cat([s.gt_boxes for s in sampled]),
            )
            losses.update(self.mask_losses(features, sampled, targets))
            return [], losses
        pred_logits, pred_deltas = self.box_predictor(self.box_features(features, proposals))
        detections = self.box_predictor.inference(pred_logits, pred_deltas, proposals, image_sizes)
        return self.predict_masks(features, detections), {}


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
            raise ValueError(f"mask_rois_per_image must be >= 0, got {mask_rois_per_image}")
        if (mask_pooler is None) != (mask_head is None):
            raise ValueError("StandardROIHeads needs both mask_pooler and mask_head, or neither")
        if mask_head is not None and mask_head.num_classes != self.num_classes:
            raise ValueError(
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

    def mask_logits(self, features: dict[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pools and runs the mask head: per image (R_i, 4) boxes -> (R, K, M, M) logits.

        Args:
            features: feature maps by name.
            boxes: per image (R_i, 4) RoIs.
        """
        assert self.mask_pooler is not None and self.mask_head is not None
        return self.mask_head(self.mask_pooler([features[f] for f in self.in_features], boxes))

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
        positive = [
            self._mask_rois((s.gt_classes >= 0) & (s.gt_classes < self.num_classes))
            for s in sampled
        ]  # per image (P_i,) indices of the RoIs the mask loss takes
        boxes = [s.boxes[p] for s, p in zip(sampled, positive)]  # per image (P_i, 4)
        logits = self.mask_logits(features, boxes)  # (P, K, M, M)
        mask_targets = self.mask_head.label_targets(
            [t["gt_masks"] for t in targets],
            boxes,
            [s.matched_idxs[p] for s, p in zip(sampled, positive)],
            logits.shape[-1],
        )
        gt_classes = torch.cat([s.gt_classes[p] for s, p in zip(sampled, positive)])
        return self.mask_head.losses(logits, gt_classes, mask_targets)

    def _mask_rois(self, is_positive: Tensor) -> Tensor:
        """(S,) bool -> (P,) indices of the positive RoIs, at most ``mask_rois_per_image``."""
        positive = torch.nonzero(is_positive, as_tuple=True)[0]
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
        logits = self.mask_logits(features, [d["boxes"] for d in detections])
        probs = self.mask_head.inference(logits, [d["labels"] for d in detections])
        for det, prob in zip(detections, probs):
            det["mask_probs"] = prob
        return detections
