"""Region Proposal Network: L feature maps (N, C, H_l, W_l) -> per image R proposals (R, 4).

Shapes: N images, A anchors per location, L levels, and A_all = sum_l H_l * W_l * A the
anchors of one image over all levels. The head predicts an objectness logit and 4
deltas per anchor; proposals are the top-k anchors per level (pre-NMS), decoded,
clipped, NMSed per level, and the top-k of the union (post-NMS). Training adds a
binary cross-entropy over sampled anchors and a smooth L1 over the positive ones, with
torchvision's normalisation (both divided by the number of sampled anchors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from resnet_detect.backbones.conv import Conv2d
from resnet_detect.backbones.fused_conv import conv_norm_relu

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .tracing import clamped_count, clip_to_image, large_enough, true_indices
from .matcher import BACKGROUND, FOREGROUND, Matcher
from .nms import per_image_batched_nms, tracing
from .padded_nms import padded_greedy_nms
from .sampler import BalancedSampler


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs for A objectness logits and A*4 deltas.

    Args:
        in_channels: channels C of every input level (and of the shared conv).
        num_anchors: anchors per location A (the same on every level).
    """

    def __init__(self, *, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Args:
            features: L maps (N, C, H_l, W_l).

        Returns:
            L objectness maps (N, A, H_l, W_l) and L delta maps (N, A*4, H_l, W_l).
        """
        logits, deltas = [], []
        for x in features:
            t = conv_norm_relu(self.conv, None, x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def _flatten_logits(x: Tensor) -> Tensor:
    # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A), the anchor order of AnchorGenerator
    return x.permute(0, 2, 3, 1).flatten(1)


def _flatten_deltas(x: Tensor) -> Tensor:
    n, _, h, w = x.shape
    # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
    return x.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)


class RPN(nn.Module):
    """Proposal generator.

    Args:
        in_features: names of the feature maps used, finest first (e.g. p2..p6).
        head: module mapping L maps to (objectness, deltas) lists.
        anchor_generator: anchors for the same L levels.
        box_coder: delta transform (weights (1, 1, 1, 1) in the standard recipe).
        matcher: anchor-to-gt matcher (IoU 0.3 / 0.7, low-quality matches allowed).
        sampler: anchor sampler (256 per image, half positive).
        pre_nms_topk: (train, test) anchors kept per level and image before NMS.
        post_nms_topk: (train, test) proposals kept per image after NMS.
        nms_thresh: IoU of the per-level NMS.
        min_box_size: proposals narrower or lower than this (pixels) are dropped.
        score_thresh: proposals with a lower objectness probability are dropped.
        smooth_l1_beta: beta of the smooth L1 box loss (0 gives L1).
        loss_weight: multiplier of both RPN losses.
        nms_streams: on a GPU, run the images' NMS on this many CUDA side streams at once
            (``nms.per_image_batched_nms``; 0 or 1: one after another on the current stream,
            as on a CPU). The same proposals either way. A lever to measure, not yet a config
            key.
        padded_nms: run the per-level NMS of every image and level at once as matrix
            products (``padded_nms.padded_greedy_nms``) instead of one torchvision NMS call
            per image; the same proposals but where an IoU lies within float32 rounding of
            nms_thresh (``padded_nms``). A lever to measure on a GPU, not yet a config key;
            not while tracing.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedSampler,
        pre_nms_topk: tuple[int, int] = (2000, 1000),
        post_nms_topk: tuple[int, int] = (2000, 1000),
        nms_thresh: float = 0.7,
        min_box_size: float = 1e-3,
        score_thresh: float = 0.0,
        smooth_l1_beta: float = 1.0 / 9,
        loss_weight: float = 1.0,
        nms_streams: int = 0,
        padded_nms: bool = False,
    ) -> None:
        super().__init__()
        if len(in_features) != anchor_generator.num_levels:
            raise ArgumentError(
                f"RPN in_features {list(in_features)} has {len(in_features)} levels but the anchor "
                f"generator has {anchor_generator.num_levels}"
            )
        if len(set(anchor_generator.num_anchors_per_location)) != 1:
            raise ArgumentError(
                "the RPN head is shared across levels: every level needs the same number "
                f"of anchors, got {anchor_generator.num_anchors_per_location}"
            )
        self.in_features = list(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.pre_nms_topk = tuple(int(k) for k in pre_nms_topk)
        self.post_nms_topk = tuple(int(k) for k in post_nms_topk)
        self.nms_thresh = float(nms_thresh)
        self.min_box_size = float(min_box_size)
        self.score_thresh = float(score_thresh)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.loss_weight = float(loss_weight)
        self.nms_streams = int(nms_streams)
        self.padded_nms = bool(padded_nms)

    def forward(
        self,
        features: dict[str, Tensor],
        image_sizes: Sequence[tuple[int, int]],
        padded_size: tuple[int, int],
        gt_boxes: Sequence[Tensor] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Proposes boxes, and computes the RPN losses in training.

        Args:
            features: feature maps by name; ``in_features`` are used.
            image_sizes: (h, w) of every image before padding (proposals are clipped to it).
            padded_size: (H, W) of the padded batch.
            gt_boxes: per image (M_i, 4) xyxy gt boxes; required in training.

        Returns:
            Per image ``{"boxes": (R, 4), "scores": (R,) objectness probability}``,
            sorted by decreasing score; and ``{"loss_rpn_cls", "loss_rpn_loc"}`` in
            training, ``{}`` otherwise.
        """
        maps = [features[f] for f in self.in_features]
        pred_logits, pred_deltas = self.head(maps)
        anchors = self.anchor_generator(maps, padded_size)
        pred_logits = [_flatten_logits(x) for x in pred_logits]  # L x (N, H*W*A)
        pred_deltas = [_flatten_deltas(x) for x in pred_deltas]  # L x (N, H*W*A, 4)

        proposals = self.select_proposals(anchors, pred_logits, pred_deltas, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None:
                raise ValueError("RPN needs gt_boxes in training mode")
            all_anchors = torch.cat(anchors)
            labels, matched_gt = self.label_and_sample_anchors(all_anchors, gt_boxes)
            losses = self.losses(
                all_anchors,
                torch.cat(pred_logits, 1),
                torch.cat(pred_deltas, 1),
                labels,
                matched_gt,
            )
        return proposals, losses

    @torch.no_grad()
    def select_proposals(
        self,
        anchors: Sequence[Tensor],
        pred_logits: Sequence[Tensor],
        pred_deltas: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Top-k per level, decode, clip, drop tiny boxes, per-level NMS, top-k per image.

        Args:
            anchors: L tensors (H_l*W_l*A, 4).
            pred_logits: L tensors (N, H_l*W_l*A).
            pred_deltas: L tensors (N, H_l*W_l*A, 4).
            image_sizes: (h, w) per image.

        Returns:
            Per image ``{"boxes": (R, 4), "scores": (R,)}``.
        """
        pre_topk = self.pre_nms_topk[0 if self.training else 1]
        post_topk = self.post_nms_topk[0 if self.training else 1]
        num_images = len(image_sizes)
        batch_idx = torch.arange(num_images, device=anchors[0].device)[:, None]
        topk_logits, topk_boxes, topk_levels = [], [], []
        for level, (level_anchors, logits, deltas) in enumerate(
            zip(anchors, pred_logits, pred_deltas)
        ):
            k = clamped_count(logits.shape[1], pre_topk)
            logits, idx = logits.detach().float().topk(k, dim=1)  # (N, k)
            # Decode only the kept anchors: (N*k, 4) deltas on (N*k, 4) anchors, in float32.
            boxes = self.box_coder.decode(
                deltas.detach()[batch_idx, idx].reshape(-1, 4).float(),
                level_anchors[idx.reshape(-1)],
            )
            topk_logits.append(logits)
            topk_boxes.append(boxes.view(num_images, -1, 4))
            topk_levels.append(torch.full_like(idx[0], level))
        logits = torch.cat(topk_logits, dim=1)
        boxes = torch.cat(topk_boxes, dim=1)
        levels = torch.cat(topk_levels)
        scores = torch.sigmoid(logits)

        boxes = torch.stack([clip_to_image(boxes[i], size) for i, size in enumerate(image_sizes)])
        valid = large_enough(boxes, self.min_box_size)
        if self.score_thresh > 0:
            valid = valid & (scores >= self.score_thresh)  # not &=: ONNX has no in-place and
        if self.padded_nms and not tracing():
            return self._padded_nms_proposals(boxes, scores, valid,
                                              [t.shape[1] for t in topk_logits], post_topk)
        rows = true_indices(valid)
        img_boxes = [boxes[i][r] for i, r in enumerate(rows)]
        img_scores = [scores[i][r] for i, r in enumerate(rows)]
        keeps = per_image_batched_nms(img_boxes, img_scores, [levels[r] for r in rows],
                                      self.nms_thresh, streams=self.nms_streams)
        proposals = []
        for img_b, img_s, keep in zip(img_boxes, img_scores, keeps):
            keep = keep[:post_topk]
            proposals.append({"boxes": img_b[keep], "scores": img_s[keep]})
        return proposals

    def _padded_nms_proposals(self, boxes: Tensor, scores: Tensor, valid: Tensor,
                              level_sizes: Sequence[int], post_topk: int
                              ) -> list[dict[str, Tensor]]:
        """select_proposals' NMS and top-k with every image and level in one padded batch:
        `boxes` (N, T, 4), `scores` and `valid` (N, T), the levels' top-k one after another
        (`level_sizes`), each sorted by decreasing score. Host reads: one per check of the
        products (usually one) and the counts kept."""
        num_images, longest = boxes.shape[0], max(level_sizes)
        padded_boxes = boxes.new_zeros(len(level_sizes), num_images, longest, 4)
        padded_valid = valid.new_zeros(len(level_sizes), num_images, longest)
        for level, (b, v) in enumerate(zip(boxes.split(level_sizes, dim=1),
                                           valid.split(level_sizes, dim=1))):
            padded_boxes[level, :, :b.shape[1]] = b
            padded_valid[level, :, :v.shape[1]] = v
        keep = padded_greedy_nms(padded_boxes.flatten(0, 1), padded_valid.flatten(0, 1),
                                 self.nms_thresh).view(len(level_sizes), num_images, longest)
        keep = torch.cat([keep[level, :, :k] for level, k in enumerate(level_sizes)], dim=1)
        # by decreasing score over the levels, as batched_nms returns them
        ranked = scores.masked_fill(~keep, -1.0).sort(dim=1, descending=True, stable=True)[1]
        counts = keep.sum(dim=1).clamp_(max=post_topk).tolist()
        return [{"boxes": boxes[i][ranked[i, :count]], "scores": scores[i][ranked[i, :count]]}
                for i, count in enumerate(counts)]

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: Tensor, gt_boxes: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Matches anchors to gt boxes and samples the anchors that enter the loss.

        Args:
            anchors: (A_all, 4) anchors of one image (the same for every image).
            gt_boxes: per image (M_i, 4) gt boxes.

        Returns:
            (N, A_all) float labels: 1 sampled positive, 0 sampled negative, -1 not
            sampled; and (N, A_all, 4) the gt box matched to each anchor (zeros for an
            image without gt).
        """
        match_labels, matched_gt = [], []
        for boxes in gt_boxes:
            boxes = boxes.to(anchors.dtype)
            matched_idxs, image_match_labels = self.matcher.match_boxes(boxes, anchors)
            match_labels.append(image_match_labels)
            matched_gt.append(boxes[matched_idxs] if len(boxes) else torch.zeros_like(anchors))
        if not match_labels:
            return anchors.new_zeros((0, len(anchors))), anchors.new_zeros((0, len(anchors), 4))
        match_labels = torch.stack(match_labels)  # (N, A_all): all images sampled at once
        pos, neg = self.sampler(match_labels == FOREGROUND, match_labels == BACKGROUND)
        labels = torch.where(pos, 1.0, torch.where(neg, 0.0, -1.0)).to(anchors.dtype)
        return labels, torch.stack(matched_gt)

    def losses(
        self,
        anchors: Tensor,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        labels: Tensor,
        matched_gt: Tensor,
    ) -> dict[str, Tensor]:
        """Objectness BCE over sampled anchors, smooth L1 over sampled positives.

        Both are divided by the number of sampled anchors of the batch.

        Args:
            anchors: (A_all, 4).
            pred_logits: (N, A_all) objectness logits.
            pred_deltas: (N, A_all, 4) predicted deltas.
            labels: (N, A_all) from ``label_and_sample_anchors``.
            matched_gt: (N, A_all, 4) matched gt boxes.

        Returns:
            ``{"loss_rpn_cls": ..., "loss_rpn_loc": ...}``.
        """
        # Over every anchor, the unsampled ones zeroed: selecting the sampled rows instead
        # would make the host wait for the GPU (a nonzero) five times per step.
        pos = labels == 1
        sampled = labels >= 0
        num_sampled = sampled.sum().clamp(min=1)
        gt_deltas = self.box_coder.encode(anchors.expand_as(pred_deltas).reshape(-1, 4),
                                          matched_gt.reshape(-1, 4)).view_as(pred_deltas)
        # zero, not log(0) or 0/0, where no gt counts: the loss's gradient stays finite
        gt_deltas = torch.where(pos[..., None], gt_deltas, 0.0)
        loss_loc = F.smooth_l1_loss(pred_deltas.float(), gt_deltas, beta=self.smooth_l1_beta,
                                    reduction="none").sum(dim=-1)
        loss_loc = torch.where(pos, loss_loc, 0.0).sum() / num_sampled
        loss_cls = F.binary_cross_entropy_with_logits(
            pred_logits.float(), labels.clamp(min=0), reduction="none")
        loss_cls = torch.where(sampled, loss_cls, 0.0).sum() / num_sampled
        return {
            "loss_rpn_cls": loss_cls * self.loss_weight,
            "loss_rpn_loc": loss_loc * self.loss_weight,
        }
