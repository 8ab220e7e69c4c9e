"""The base of every RoI head: per image R proposals (R, 4) -> detections, or losses on S
sampled RoIs.

``ROIHeads`` holds what every RoI head shares: matching proposals to gt boxes (IoU 0.5
by default), appending the gt boxes to the proposals, and sampling S RoIs per image (512,
a quarter foreground). K foreground classes, background is class K.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from resnet_detect.engine.config import ArgumentError
from ..matcher import BACKGROUND, FOREGROUND, IGNORE, Matcher
from ..sampler import BalancedSampler
from ..tracing import true_indices
from .fast_rcnn import FastRCNNOutputs


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
            raise ArgumentError(
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
        fields, keep = [], []  # per image: (boxes, classes, matched boxes, matched idxs), mask
        for boxes, target in zip(proposals, targets):
            gt_boxes = target["gt_boxes"].to(boxes.dtype)
            gt_classes = target["gt_classes"]
            if self.proposal_append_gt:
                boxes = torch.cat([boxes, gt_boxes])
            matched_idxs, match_labels = self.matcher(box_iou(gt_boxes, boxes))
            if len(gt_boxes):
                classes = gt_classes[matched_idxs]
                matched_boxes = gt_boxes[matched_idxs]
            else:
                classes = torch.zeros_like(matched_idxs)
                matched_boxes = torch.zeros_like(boxes)
            classes = torch.where(match_labels == BACKGROUND, self.num_classes, classes)
            classes = torch.where(match_labels == IGNORE, -1, classes)
            pos, neg = self.sampler(match_labels == FOREGROUND, match_labels == BACKGROUND)
            fields.append((boxes, classes, matched_boxes, matched_idxs))
            keep.append(pos | neg)
        if not keep:
            return []
        # the sampled rows of all images at once: one read back to the host, not one per image
        per_image = true_indices(keep)
        starts = [0, *itertools.accumulate(len(k) for k in keep)]
        rows = torch.cat([image_rows + start for image_rows, start in zip(per_image, starts)])
        counts = [len(image_rows) for image_rows in per_image]
        per_field = [torch.cat(field)[rows].split(counts) for field in zip(*fields)]
        return [SampledRoIs(*image) for image in zip(*per_field)]

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
        return self.predict_masks(features, self.detect_boxes(features, proposals, image_sizes)), {}

    def detect_boxes(
        self,
        features: dict[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes", "scores", "labels"}`` of the box branch alone (no masks).

        Args:
            features: feature maps by name.
            proposals: per image (R_i, 4) proposal boxes.
            image_sizes: (h, w) of every image before padding (boxes are clipped to it).
        """
        pred_logits, pred_deltas = self.box_predictor(self.box_features(features, proposals))
        return self.box_predictor.inference(pred_logits, pred_deltas, proposals, image_sizes)
