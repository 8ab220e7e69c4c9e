"""Semantic segmentation meta-architecture: N images (3, H_i, W_i) -> K-class logits per pixel.

Inside the model only: normalise (RGB, 0..255, `(x - mean) / std`), zero-pad the batch at
the bottom and right to a multiple of `size_divisibility`, run the backbone and the head(s),
upsample the logits bilinearly to the padded size and crop every image back out. Resizing,
cropping and augmentation stay in the data pipeline.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError
from resnet_detect.engine.data.batching import batch_images

from .heads import SemSegHead


class SemanticSegmentor(nn.Module):
    """Backbone + segmentation head (+ auxiliary head, used in training only).

    Args:
        backbone: module with `forward(x) -> {name: (N, C, h, w)}` giving every map the
            heads read.
        head: the main head; its loss is "loss_sem_seg".
        aux_head: optional auxiliary head (e.g. FCN on res4); its loss key is its own
            `loss_name` ("loss_aux").
        pixel_mean: per-channel mean of the 0..255 RGB input.
        pixel_std: per-channel std of the 0..255 RGB input.
        size_divisibility: pad the batch to a multiple of this (0 or 1: no padding).
        ignore_index: ground-truth value of pixels that are not scored (also the padding).
    """

    # train.compile / test.compile: the heads too (fixed crops; BENCHMARKS.md, seg_compile)
    compiled_parts = ("backbone", "head", "aux_head")

    def __init__(self, *, backbone: nn.Module, head: SemSegHead, aux_head: SemSegHead | None = None,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 size_divisibility: int = 0, ignore_index: int = 255) -> None:
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ArgumentError(f"pixel_mean/pixel_std need 3 values (std > 0), got {pixel_mean} / "
                                f"{pixel_std}")
        if (isinstance(size_divisibility, bool) or not isinstance(size_divisibility, int)
                or size_divisibility < 0):
            raise ArgumentError(f"size_divisibility must be an integer >= 0 (0 or 1: no "
                                f"padding) or null (the backbone's), got {size_divisibility!r}")
        if aux_head is not None and aux_head.num_classes != head.num_classes:
            raise ArgumentError(f"aux_head predicts {aux_head.num_classes} classes, head "
                                f"{head.num_classes}")
        if aux_head is not None and aux_head.loss_name == head.loss_name:
            raise ArgumentError(f"head and aux_head share the loss name {head.loss_name!r}")
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32)
                             .view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32)
                             .view(3, 1, 1), False)
        self.size_divisibility = int(size_divisibility)
        self.ignore_index = int(ignore_index)

    @property
    def num_classes(self) -> int:
        """Number K of classes, background included."""
        return self.head.num_classes

    def preprocess(self, images: Sequence[Tensor] | Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise and pad images into one batch.

        Args:
            images: N tensors (3, H_i, W_i) or one (N, 3, H, W) tensor, uint8 or float,
                RGB 0..255.

        Returns:
            (N, 3, H, W) float batch, zero-padded at the bottom and right (zero is the mean
            colour after normalisation), and the (h, w) of each image.
        """
        return batch_images(images, self.pixel_mean, self.pixel_std, self.size_divisibility,
                            owner="SemanticSegmentor")

    @torch.no_grad()
    def prepare_targets(self, targets: Sequence[Mapping[str, Tensor]],
                        image_sizes: Sequence[tuple[int, int]],
                        padded_size: tuple[int, int]) -> Tensor:
        """Stack per-image masks into (N, H, W) int64, padded with `ignore_index`.

        Raises:
            ValueError: a target without "gt_sem_seg", a mask whose size is not its
                image's, or class ids outside 0..K-1 other than `ignore_index`.
        """
        if len(targets) != len(image_sizes):
            raise ValueError(f"got {len(image_sizes)} images but {len(targets)} targets")
        gt = torch.full((len(targets), *padded_size), self.ignore_index, dtype=torch.int64,
                        device=self.pixel_mean.device)
        for i, (target, (h, w)) in enumerate(zip(targets, image_sizes)):
            if "gt_sem_seg" not in target:
                raise ValueError(f"target {i} needs 'gt_sem_seg', got keys {sorted(target)}")
            mask = torch.as_tensor(target["gt_sem_seg"], device=gt.device)
            if tuple(mask.shape) != (h, w):
                raise ValueError(f"target {i}: gt_sem_seg is {tuple(mask.shape)}, its image "
                                 f"({h}, {w})")
            gt[i, :h, :w] = mask.long()
        # one read for the whole batch (a GPU waits for each read), not one per image
        unknown = (gt != self.ignore_index) & ((gt < 0) | (gt >= self.num_classes))
        if unknown.any():
            i = int(unknown.flatten(1).any(dim=1).int().argmax())
            bad = sorted(set(gt[i][unknown[i]].tolist()))
            raise ValueError(f"target {i}: gt_sem_seg has class ids {bad[:10]} outside "
                             f"0..{self.num_classes - 1} (and {self.ignore_index} = ignore)")
        return gt

    def logits(self, batch: Tensor, *, with_aux: bool = False) -> dict[str, Tensor]:
        """Raw network: normalised, padded (N, 3, H, W) -> {"sem_seg"(, "aux"): (N, K, H, W)}."""
        features = self.backbone(batch)
        size = batch.shape[-2:]  # not ints: an ONNX export keeps the size symbolic
        out = {"sem_seg": self.head(features, size)[0]}
        if with_aux and self.aux_head is not None:
            out["aux"] = self.aux_head(features, size)[0]
        return out

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[Mapping[str, Tensor]] | None = None,
                output_sizes: Sequence[tuple[int, int]] | None = None,
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, per-image logits and class maps in evaluation.

        Args:
            images: N tensors (3, H_i, W_i) (or one (N, 3, H, W) tensor), RGB 0..255.
            targets: per image {"gt_sem_seg": (H_i, W_i) int class ids, `ignore_index` where
                not scored}; required in training.
            output_sizes: (h, w) per image to resize the logits to (bilinearly), e.g. the
                original size of an image the data pipeline resized; default: input sizes.

        Returns:
            Training: {"loss_sem_seg"(, "loss_aux")}.
            Evaluation: per image {"sem_seg": (K, h, w) float logits, "mask": (h, w) int64
            argmax class ids}.
        """
        batch, image_sizes = self.preprocess(images)
        padded = (int(batch.shape[-2]), int(batch.shape[-1]))
        features = self.backbone(batch)
        if self.training:
            if targets is None:
                raise ValueError("SemanticSegmentor needs targets in training mode")
            gt = self.prepare_targets(targets, image_sizes, padded)
            _, losses = self.head(features, padded, gt)
            if self.aux_head is not None:
                losses.update(self.aux_head(features, padded, gt)[1])
            return losses
        logits, _ = self.head(features, padded)
        if output_sizes is not None and len(output_sizes) != len(image_sizes):
            raise ValueError(f"got {len(image_sizes)} images but {len(output_sizes)} "
                             f"output_sizes")
        results = []
        for i, (h, w) in enumerate(image_sizes):
            pred = logits[i:i + 1, :, :h, :w]
            if output_sizes is not None and tuple(output_sizes[i]) != (h, w):
                pred = F.interpolate(pred, size=tuple(output_sizes[i]), mode="bilinear",
                                     align_corners=False)
            results.append({"sem_seg": pred[0], "mask": pred[0].argmax(dim=0)})
        return results
