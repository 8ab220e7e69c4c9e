"""Faster / Mask R-CNN meta-architecture: N images (3, H_i, W_i) -> per image D detections.

Inside the model only: normalise (RGB, 0..255, ``(x - mean) / std``), zero-pad the batch
to a multiple of the backbone's ``size_divisibility``, run backbone -> RPN -> RoI heads,
and map boxes to the images given (or to ``output_sizes``, the sizes the data pipeline
resized from). With a mask branch (Mask R-CNN) the box-relative masks are pasted into
those same images. Resizing and augmentation stay in the data pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from resnet_detect.engine.data.batching import batch_images

from .data.polygons import PolygonMasks
from .roi_heads import ROIHeads, paste_masks
from .rpn import RPN


class GeneralizedRCNN(nn.Module):
    """Backbone (+ FPN), RPN and RoI heads (with a mask branch: Mask R-CNN).

    Args:
        backbone: module with ``forward(x) -> dict`` of feature maps.
        rpn: the proposal generator.
        roi_heads: the RoI heads (``StandardROIHeads`` or ``Res5ROIHeads``).
        pixel_mean: per-channel mean of the 0..255 RGB input.
        pixel_std: per-channel std of the 0..255 RGB input.
        size_divisibility: pad the batch to a multiple of this (0 or 1: no padding).
        mask_threshold: pasted mask probability from which a pixel belongs to an
            instance (RoI heads with masks only).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: ROIHeads,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ArgumentError(
                f"pixel_mean/pixel_std need 3 values (std > 0), got {pixel_mean} / {pixel_std}"
            )
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False
        )
        self.size_divisibility = int(size_divisibility)
        self.mask_threshold = float(mask_threshold)

    @property
    def num_classes(self) -> int:
        """Number K of foreground classes."""
        return self.roi_heads.num_classes

    @property
    def mask_on(self) -> bool:
        """Whether the model predicts instance masks (Mask R-CNN)."""
        return self.roi_heads.mask_on

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalises and pads images into one batch.

        Args:
            images: N tensors (3, H_i, W_i), uint8 or float, RGB 0..255.

        Returns:
            (N, 3, H, W) float batch, zero-padded at the bottom and right (zero is the
            mean colour after normalisation), and the (h, w) of each image.
        """
        return batch_images(images, self.pixel_mean, self.pixel_std, self.size_divisibility,
                            owner="GeneralizedRCNN")

    def _check_targets(
        self, targets: Sequence[dict[str, Tensor]], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        if len(targets) != len(image_sizes):
            raise ValueError(f"got {len(image_sizes)} images but {len(targets)} targets")
        device = self.pixel_mean.device
        checked = []
        for i, target in enumerate(targets):
            if "gt_boxes" not in target or "gt_classes" not in target:
                raise ValueError(
                    f"target {i} needs 'gt_boxes' and 'gt_classes', got keys {sorted(target)}"
                )
            boxes = torch.as_tensor(target["gt_boxes"], dtype=torch.float32, device=device)
            classes = torch.as_tensor(target["gt_classes"], device=device)
            if boxes.numel() == 0:
                boxes = boxes.reshape(0, 4)
            if boxes.dim() != 2 or boxes.shape[1] != 4 or classes.shape != (len(boxes),):
                raise ValueError(
                    f"target {i}: gt_boxes must be (M, 4) and gt_classes (M,), got "
                    f"{tuple(boxes.shape)} and {tuple(classes.shape)}"
                )
            if classes.dtype != torch.int64:
                raise ValueError(f"target {i}: gt_classes must be int64, got {classes.dtype}")
            checked.append({**target, "gt_boxes": boxes, "gt_classes": classes})
            if self.mask_on:
                checked[-1]["gt_masks"] = self._check_masks(target, i, len(boxes), image_sizes[i])
        # the values of the whole batch in one read: one host sync per step, not three per image
        if checked and bool(torch.stack([self._bad_values(t).any() for t in checked]).any()):
            for i, target in enumerate(checked):
                self._raise_for_bad_values(i, target)
        return checked

    def _bad_values(self, target: dict[str, Tensor]) -> Tensor:
        """(M,) True for each gt with a class out of range or a box without area."""
        classes = target["gt_classes"]
        return (classes < 0) | (classes >= self.num_classes) | _without_area(target["gt_boxes"])

    def _raise_for_bad_values(self, i: int, target: dict[str, Tensor]) -> None:
        classes, boxes = target["gt_classes"], target["gt_boxes"]
        if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= self.num_classes):
            raise ValueError(
                f"target {i}: gt_classes must be in 0..{self.num_classes - 1}, got "
                f"{sorted(set(classes.tolist()))}"
            )
        bad = _without_area(boxes)
        if bad.any():
            raise ValueError(
                f"target {i}: gt box {boxes[bad][0].tolist()} has no positive width and "
                "height (xyxy expected)"
            )

    def _check_masks(
        self, target: dict[str, Tensor], i: int, num_objects: int, image_size: tuple[int, int]
    ) -> Tensor:
        """The (M, H, W) 0/1 ``gt_masks`` of target ``i``, on the model's device (or its
        objects' PolygonMasks, as they are)."""
        if "gt_masks" not in target:
            raise ValueError(
                f"target {i} needs 'gt_masks' (M, H, W) for the mask head (model.mask_on), got "
                f"keys {sorted(target)}"
            )
        if isinstance(target["gt_masks"], PolygonMasks):
            if len(target["gt_masks"]) != num_objects:
                raise ValueError(f"target {i}: gt_masks has the polygons of "
                                 f"{len(target['gt_masks'])} objects for {num_objects} gt boxes")
            return target["gt_masks"]
        masks = torch.as_tensor(target["gt_masks"], device=self.pixel_mean.device)
        if masks.numel() == 0:
            masks = masks.reshape(0, *image_size)
        if masks.shape != (num_objects, *image_size):
            raise ValueError(
                f"target {i}: gt_masks must be (M, H, W) = {(num_objects, *image_size)} (one "
                f"mask per gt box, at the image's size), got {tuple(masks.shape)}"
            )
        if masks.dtype not in (torch.uint8, torch.bool) and not masks.dtype.is_floating_point:
            raise ValueError(
                f"target {i}: gt_masks must be uint8, bool or float, got {masks.dtype}"
            )
        return masks

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in evaluation.

        Args:
            images: N tensors (3, H_i, W_i), uint8 or float, RGB 0..255.
            targets: per image ``{"gt_boxes": (M, 4) xyxy float, "gt_classes": (M,) int64 in
                0..K-1}`` in the coordinates of ``images``, plus ``"gt_masks"`` (M, H_i, W_i)
                0/1 for Mask R-CNN; required in training.
            output_sizes: (h, w) per image to map boxes to (e.g. the original size of an
                image the data pipeline resized); default: the sizes of ``images``.

        Returns:
            Training: ``{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}`` (and
            ``"loss_mask"`` for Mask R-CNN).
            Evaluation: per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)
            int64 in 0..K-1}``, by decreasing score; Mask R-CNN adds ``"masks"`` (D, h, w)
            bool pasted into the output image and ``"mask_probs"`` (D, M, M), the
            box-relative probabilities they come from.
        """
        if not self.training:
            return self.inference(images, output_sizes)
        batch, image_sizes = self.preprocess(images)
        if targets is None:
            raise ValueError("GeneralizedRCNN needs targets in training mode")
        targets = self._check_targets(targets, image_sizes)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(features, image_sizes, tuple(batch.shape[-2:]),
                                         [t["gt_boxes"] for t in targets])
        _, head_losses = self.roi_heads(features, [p["boxes"] for p in proposals], image_sizes,
                                        targets)
        return {**rpn_losses, **head_losses}

    def detect_boxes(self, images: Sequence[Tensor]
                     ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor], list[tuple[int, int]]]:
        """The box branch alone, in evaluation: per image ``{"boxes", "scores", "labels"}``
        in the coordinates of `images` (no masks), the feature maps of the batch (for the
        mask branch) and the (h, w) of each image.

        Args:
            images: N tensors (3, H_i, W_i), uint8 or float, RGB 0..255.
        """
        batch, image_sizes = self.preprocess(images)
        features = self.backbone(batch)
        proposals, _ = self.rpn(features, image_sizes, tuple(batch.shape[-2:]), None)
        detections = self.roi_heads.detect_boxes(features, [p["boxes"] for p in proposals],
                                                 image_sizes)
        return detections, features, image_sizes

    def inference(self, images: Sequence[Tensor],
                  output_sizes: Sequence[tuple[int, int]] | None = None, *,
                  pasted: bool = True) -> list[dict[str, Tensor]]:
        """The evaluation's detections (see `forward`); without `pasted`, Mask R-CNN's
        ``"mask_probs"`` alone, for a caller that pastes them otherwise (the evaluation encodes
        each from its box region: `evaluation.pasted_mask_rles`)."""
        detections, features, image_sizes = self.detect_boxes(images)
        detections = self.roi_heads.predict_masks(features, detections)
        if output_sizes is not None:
            if len(output_sizes) != len(images):
                raise ValueError(f"got {len(images)} images but {len(output_sizes)} output_sizes")
            for det, (h, w), (out_h, out_w) in zip(detections, image_sizes, output_sizes):
                scale = det["boxes"].new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
                det["boxes"] = det["boxes"] * scale
        if self.mask_on and pasted:
            for det, size in zip(detections, output_sizes or image_sizes):
                det["masks"] = paste_masks(
                    det["mask_probs"], det["boxes"], size, threshold=self.mask_threshold
                )
        return detections


def _without_area(boxes: Tensor) -> Tensor:
    """(M,) True for xyxy boxes with no positive width and height, or a non-finite value."""
    return (boxes[:, 2:] <= boxes[:, :2]).any(dim=1) | ~torch.isfinite(boxes).all(dim=1)
