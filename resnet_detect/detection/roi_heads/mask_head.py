"""Mask head: (R, C, S, S) pooled RoI features -> (R, 2S, 2S) mask logits, each RoI's of
its own class.

Mask R-CNN's FPN mask branch (S = 14, so 28x28 masks): 3x3 convs with ReLU, a 2x2
stride-2 deconvolution with ReLU, and a 1x1 conv giving one mask per foreground class
(K classes 0..K-1, no background mask), of which only the RoI's class is used: the gt
class in training, the predicted one in inference. That channel alone is computed (the
1x1 conv's row of that class), not all K: at LVIS's 1203 classes the K maps cost more than
the rest of the head. Also its targets (each positive RoI's gt mask cropped and resized to
the mask size with RoIAlign), its loss (per-pixel binary cross-entropy, averaged over pixels
and RoIs) and its inference (sigmoid).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from resnet_detect.engine.config import ArgumentError
from ..data.polygons import PolygonMasks
from ..nms import tracing
from ..tracing import split_per_image


class MaskRCNNHead(nn.Module):
    """Conv + upsample mask head with its targets, loss and inference.

    Args:
        in_channels: channels C of the pooled features.
        num_classes: number K of foreground classes (one mask channel each).
        conv_dims: output width of each 3x3 conv (four of 256 in the standard recipe); the
            deconvolution keeps the last width (C when there are no convs).
        loss_weight: multiplier of the mask loss.
        aligned: crop the gt masks with RoIAlign's half-pixel shift (detectron2's
            ROIAlignV2); torchvision's Mask R-CNN uses False. Match the mask pooler.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        conv_dims: Sequence[int] = (256, 256, 256, 256),
        loss_weight: float = 1.0,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ArgumentError(f"num_classes must be at least 1, got {num_classes}")
        if any(int(d) < 1 for d in conv_dims):
            raise ArgumentError(f"mask head conv widths must be positive, got {list(conv_dims)}")
        self.num_classes = int(num_classes)
        self.num_conv = len(conv_dims)
        dim = int(in_channels)
        for i, out_dim in enumerate(conv_dims, start=1):
            conv = nn.Conv2d(dim, int(out_dim), kernel_size=3, padding=1)
            self.add_module(f"mask_fcn{i}", conv)
            dim = int(out_dim)
        self.deconv = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(dim, self.num_classes, kernel_size=1)
        for module in self.children():
            if module is self.predictor:
                nn.init.normal_(module.weight, std=0.001)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        self.loss_weight = float(loss_weight)
        self.aligned = bool(aligned)
        # the RoIs padded to a multiple of this (0: not padded), a lever for GPUs that the GPU
        # suite's mask_bucket phase measures: the convolutions see a new RoI count at every
        # step, and cuDNN builds its plans (or with cudnn.benchmark times its algorithms) for
        # each new shape; padded, the shapes repeat. The padding's rows are sliced off before
        # the predictor: the same logits, no gradient through them.
        self.roi_bucket = 0

    def forward(self, x: Tensor, classes: Tensor) -> Tensor:
        """Args:
            x: (R, C, S, S) pooled features.
            classes: (R,) int64 class of each RoI, 0..K-1.

        Returns:
            (R, 2S, 2S) mask logits of each RoI's class: channel `classes[r]` of the 1x1
            conv over all K, up to rounding.
        """
        count = x.shape[0]
        if self.roi_bucket and count % self.roi_bucket and not tracing():
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.roi_bucket - count % self.roi_bucket))
        for i in range(1, self.num_conv + 1):
            x = F.relu(getattr(self, f"mask_fcn{i}")(x), inplace=True)
        x = F.relu(self.deconv(x), inplace=True)[:count]  # (R, D, S, S) -> (R, D, 2S, 2S)
        # an einsum, not (x * weight).sum(1) (an (R, D, 2S, 2S) product) nor a reshape to a
        # batched matmul (ONNX Runtime cannot reshape 0 RoIs to (0, D, -1))
        weight = self.predictor.weight[classes, :, 0, 0]  # (R, D)
        logits = torch.einsum("rdhw,rd->rhw", x, weight.to(x.dtype))
        return logits + self.predictor.bias[classes, None, None]

    @torch.no_grad()
    def label_targets(
        self,
        gt_masks: Sequence[Tensor],
        boxes: Sequence[Tensor],
        matched_idxs: Sequence[Tensor],
        mask_size: int,
    ) -> Tensor:
        """Crops every RoI's matched gt mask to the RoI and resizes it to the mask size.

        Bilinear RoIAlign (adaptive sampling) on the 0/1 gt bitmaps: targets are soft near
        the object's edges, as in torchvision's Mask R-CNN. Polygons are rasterised inside
        each RoI instead, 0/1, as detectron2 makes them, on the host (one read of every
        image's RoIs).

        Args:
            gt_masks: per image (M_i, H_i, W_i) 0/1 masks (uint8, bool or float) at the
                image's size, or the objects' PolygonMasks.
            boxes: per image (P_i, 4) positive RoIs, image pixels.
            matched_idxs: per image (P_i,) int64 index of each RoI's gt object.
            mask_size: side of the targets (28).

        Returns:
            (P, mask_size, mask_size) float targets in [0, 1], images one after another.
        """
        targets = []
        on_host = self._polygon_rois_on_host(gt_masks, boxes, matched_idxs)
        for masks, rois, idxs in zip(gt_masks, boxes, matched_idxs):
            if len(rois) == 0:
                continue
            if isinstance(masks, PolygonMasks):
                host = next(on_host)
                crops = masks.rasterize_within(host[:, :4], host[:, 4].astype(np.int64),
                                               mask_size)
                targets.append(torch.from_numpy(crops).to(rois.device))
                continue
            # min(P_i, M_i) float maps (G, 1, H, W): one per RoI or one per gt mask (as
            # torchvision); only the matched gt masks would take a torch.unique, which waits
            # for the GPU
            if len(rois) < len(masks):
                bitmaps, idxs = masks[idxs][:, None], torch.arange(len(rois), device=idxs.device)
            else:
                bitmaps = masks[:, None]
            rois = torch.cat([idxs[:, None].to(rois.dtype), rois], dim=1)  # (P_i, 5)
            bitmaps = bitmaps.to(rois.dtype)
            crops = roi_align(
                bitmaps, rois, (mask_size, mask_size), 1.0, sampling_ratio=0, aligned=self.aligned
            )
            targets.append(crops[:, 0])  # (P_i, 1, M, M) -> (P_i, M, M)
        if not targets:
            return torch.zeros((0, mask_size, mask_size), device=boxes[0].device)
        return torch.cat(targets)

    @staticmethod
    def _polygon_rois_on_host(gt_masks: Sequence[Any], boxes: Sequence[Tensor],
                              matched_idxs: Sequence[Tensor]) -> Iterator[np.ndarray]:
        """(P_i, 5) float64 rows (box, object index) of each image with polygons and RoIs, in
        order, read from the device at once."""
        rows = [torch.cat([b, i[:, None].to(b.dtype)], dim=1)
                for m, b, i in zip(gt_masks, boxes, matched_idxs)
                if isinstance(m, PolygonMasks) and len(b)]
        if not rows:
            return iter(())
        host = torch.cat(rows).cpu().double().numpy()
        return iter(np.split(host, np.cumsum([len(r) for r in rows])[:-1]))

    def losses(self, pred_mask_logits: Tensor, gt_mask_targets: Tensor) -> dict[str, Tensor]:
        """Binary cross-entropy, mean over pixels and RoIs.

        Exactly 0 when there is no positive RoI, and still a function of the head's
        parameters (their gradients are zero), so every process backpropagates the same
        graph.

        Args:
            pred_mask_logits: (P, M, M) logits of the positive RoIs, of their gt classes.
            gt_mask_targets: (P, M, M) targets from ``label_targets``.

        Returns:
            ``{"loss_mask": ...}``.
        """
        if len(pred_mask_logits) == 0:
            return {"loss_mask": pred_mask_logits.sum() * 0.0}
        loss = F.binary_cross_entropy_with_logits(
            pred_mask_logits.float(), gt_mask_targets.float(), reduction="mean"
        )
        return {"loss_mask": loss * self.loss_weight}

    @torch.no_grad()
    def inference(self, pred_mask_logits: Tensor, labels: Sequence[Tensor]) -> list[Tensor]:
        """Mask probabilities of the detections.

        Args:
            pred_mask_logits: (D, M, M) logits of all images' detections, of their
                predicted classes.
            labels: per image (D_i,) predicted classes (their counts split the images).

        Returns:
            Per image (D_i, M, M) probabilities, box-relative.
        """
        return split_per_image(pred_mask_logits.float().sigmoid(), labels)
