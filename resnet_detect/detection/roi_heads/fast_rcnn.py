"""Fast R-CNN outputs: (R, D) box features -> (R, K+1) class logits and (R, K*4) deltas.

K foreground classes numbered 0..K-1; index K of the logits is background. Also the
losses (cross-entropy over sampled RoIs, smooth L1 on the foreground RoIs' class-specific
deltas, both normalised by the number of sampled RoIs as in torchvision) and the
post-processing (softmax, per-class decode, clip, score threshold, per-class NMS,
top detections).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from ..box_coder import BoxCoder
from ..nms import batched_nms_top
from ..tracing import clip_to_image, large_enough, split_per_image, true_indices


class FastRCNNOutputs(nn.Module):
    """Classification and class-specific box regression layers, losses and inference.

    Args:
        in_channels: width D of the box features.
        num_classes: number K of foreground classes.
        box_coder: delta transform (weights (10, 10, 5, 5) in the standard recipe).
        cls_agnostic_bbox_reg: predict one box per RoI instead of one per class.
        smooth_l1_beta: beta of the smooth L1 box loss (0 gives L1).
        score_thresh: detections with a score not above this are dropped.
        nms_thresh: IoU of the per-class NMS.
        detections_per_image: detections kept per image, best first.
        min_box_size: detections narrower or lower than this (pixels) are dropped.
        loss_weight: multiplier of both losses.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        box_coder: BoxCoder,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 1.0 / 9,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 1e-2,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ArgumentError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 if cls_agnostic_bbox_reg else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.box_coder = box_coder
        self.cls_agnostic_bbox_reg = bool(cls_agnostic_bbox_reg)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_image = int(detections_per_image)
        self.min_box_size = float(min_box_size)
        self.loss_weight = float(loss_weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            x: (R, D) box features.

        Returns:
            (R, K+1) class logits and (R, K*4) (or (R, 4) class-agnostic) deltas.
        """
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        proposal_boxes: Tensor,
        gt_classes: Tensor,
        gt_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """Cross-entropy over all sampled RoIs and smooth L1 over the foreground ones.

        The box loss is a sum over foreground RoIs divided by the number of sampled RoIs,
        so it is exactly 0 when a batch has no foreground (e.g. no gt boxes).

        Args:
            pred_logits: (R, K+1) logits of the sampled RoIs.
            pred_deltas: (R, K*4) or (R, 4) deltas.
            proposal_boxes: (R, 4) the sampled RoIs.
            gt_classes: (R,) int64 class of each RoI, K for background.
            gt_boxes: (R, 4) gt box matched to each RoI (ignored for background).

        Returns:
            ``{"loss_cls": ..., "loss_box_reg": ...}``.
        """
        num_rois = len(gt_classes)
        if num_rois == 0:
            zero = pred_logits.sum() * 0.0 + pred_deltas.sum() * 0.0
            return {"loss_cls": zero, "loss_box_reg": zero.clone()}
        loss_cls = F.cross_entropy(pred_logits.float(), gt_classes, reduction="mean")

        # Over every RoI, the background ones zeroed: selecting the foreground rows instead
        # would make the host wait for the GPU (a nonzero).
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        box_dim = 1 if self.cls_agnostic_bbox_reg else self.num_classes
        classes = gt_classes.clamp(0, box_dim - 1)  # any class for background rows
        # (R, K*4) -> (R, K, 4) -> (R, 4): the deltas of each RoI's own class
        own_deltas = pred_deltas.view(num_rois, box_dim, 4).gather(
            1, classes.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1).float()
        # zero, not log(0) or 0/0 (a zero-width proposal), where no gt counts: the loss's
        # gradient stays finite
        gt_deltas = torch.where(fg[:, None], self.box_coder.encode(proposal_boxes, gt_boxes), 0.0)
        loss_box = F.smooth_l1_loss(own_deltas, gt_deltas, beta=self.smooth_l1_beta,
                                    reduction="none").sum(dim=1)
        loss_box = torch.where(fg, loss_box, 0.0).sum() / num_rois
        return {
            "loss_cls": loss_cls * self.loss_weight,
            "loss_box_reg": loss_box * self.loss_weight,
        }

    def predict_boxes(self, pred_deltas: Tensor, proposal_boxes: Tensor) -> Tensor:
        """Decodes the deltas of every class.

        Args:
            pred_deltas: (R, K*4) or (R, 4) deltas.
            proposal_boxes: (R, 4) RoIs.

        Returns:
            (R, K, 4) boxes, one per class.
        """
        boxes = self.box_coder.decode(pred_deltas, proposal_boxes)
        # not -1, which R = 0 leaves undefined; k as a Python int (see BoxCoder.decode)
        boxes = boxes.view(boxes.shape[0], int(boxes.shape[1]) // 4, 4)
        return boxes.expand(-1, self.num_classes, -1) if self.cls_agnostic_bbox_reg else boxes

    @torch.no_grad()
    def inference(
        self,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        proposal_boxes: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Turns head outputs into detections, per image.

        Args:
            pred_logits: (R, K+1) logits of all images' RoIs, image after image.
            pred_deltas: (R, K*4) or (R, 4) deltas.
            proposal_boxes: per image (R_i, 4) RoIs.
            image_sizes: (h, w) per image; boxes are clipped to it.

        Returns:
            Per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,) int64 in 0..K-1}``,
            by decreasing score.
        """
        boxes_all = self.predict_boxes(pred_deltas.float(), torch.cat(list(proposal_boxes)))
        scores_all = F.softmax(pred_logits.float(), dim=-1)[:, : self.num_classes]
        candidates = []
        for boxes, scores, image_size in zip(
            split_per_image(boxes_all, proposal_boxes), split_per_image(scores_all, proposal_boxes),
            image_sizes
        ):
            boxes = clip_to_image(boxes, image_size)
            labels = torch.arange(self.num_classes, device=scores.device).expand_as(scores)
            # every (RoI, class) pair is a candidate: (R, K, 4) -> (R*K, 4)
            boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            valid = (scores > self.score_thresh) & large_enough(boxes, self.min_box_size)
            candidates.append((boxes, scores, labels, valid))
        # the candidates above the score and size limits, every image's in one read back
        rows = true_indices([c[3] for c in candidates])
        results = []
        for (boxes, scores, labels, _), keep in zip(candidates, rows):
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms_top(boxes, scores, labels, self.nms_thresh,
                                   self.detections_per_image)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
