"""ImageFolder classification data for pretraining: OpenCV decoding, albumentations transforms.

Layout: `root/<split>/<class>/<image>` (ImageNet style), classes sorted by folder name and
taken from the training split. A sample is {"image": (3, H, W) float32 normalized with the
0..255 pixel mean/std, "label": int, "unreadable": paths skipped to produce it}; a batch
stacks them to (N, 3, H, W) and (N,). An unreadable image is reported by path and replaced
by the next readable one; in evaluation mode the replacement gets label -1 (not scored).
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from engine.sampler import InfiniteSampler, ShardSampler

from .weights import PIXEL_MEAN, PIXEL_STD

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# OpenCV's thread pool does not survive fork: a loader worker forked after the main process
# ran a parallel cv2 call can hang in its first cv2 call. One cv2 thread per process; the
# loader workers provide the parallelism.
cv2.setNumThreads(1)

def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """RGB uint8 (H, W, 3), EXIF orientation applied (OpenCV's default); None if unreadable."""
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None or image.size == 0:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def scan_image_folder(split_dir: str | os.PathLike, class_names: Sequence[str] | None = None
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """List (path, label) of `split_dir/<class>/*` images, sorted.

    Args:
        split_dir: e.g. root/train.
        class_names: the classes of the training split (for val); None reads them here.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no class folders, no images, or a class unknown to `class_names`.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {split_dir}")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not found:
        raise ValueError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    if class_names is None:
        class_names = found
    unknown = [c for c in found if c not in class_names]
    if unknown:
        raise ValueError(f"{split_dir} has classes the training split does not: "
                         f"{', '.join(unknown)}")
    label_of = {name: i for i, name in enumerate(class_names)}
    samples = []
    for name in found:
        files = sorted(p for p in (split_dir / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        samples.extend((str(p), label_of[name]) for p in files)
    if not samples:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}")
    return samples, list(class_names)


def build_train_transform(*, image_size: int, scale: Sequence[float] = (0.08, 1.0),
                          hflip: bool = True, pixel_mean: Sequence[float] = PIXEL_MEAN,
                          pixel_std: Sequence[float] = PIXEL_STD) -> A.Compose:
    """Random resized crop to image_size, horizontal flip, normalization (0..255 mean/std).

    Resizing uses INTER_AREA: moire-free when shrinking, bilinear when enlarging (OpenCV).
    """
    return A.Compose([
        A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale),
                            interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5 if hflip else 0.0),
        A.Normalize(mean=tuple(pixel_mean), std=tuple(pixel_std), max_pixel_value=1.0),
    ])


def build_val_transform(*, image_size: int, resize: int, pixel_mean: Sequence[float] = PIXEL_MEAN,
                        pixel_std: Sequence[float] = PIXEL_STD) -> A.Compose:
    """Resize the shorter side to `resize`, center crop image_size, normalize."""
    if resize < image_size:
        raise ValueError(f"val resize {resize} must be >= image size {image_size}")
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_AREA),
        A.CenterCrop(height=image_size, width=image_size),
        A.Normalize(mean=tuple(pixel_mean), std=tuple(pixel_std), max_pixel_value=1.0),
    ])


class ImageFolderDataset(Dataset):
    """Classification samples from a scanned ImageFolder split.

    Indexed by `i` or by `(i, seed)`; with a seed the augmentation of that sample is
    reproducible (see engine.sampler.InfiniteSampler).

    Args:
        samples: (path, label) pairs.
        class_names: names of the labels.
        transform: an albumentations Compose producing the final normalized image.
        train: True replaces an unreadable image by the next readable one with its label;
            False (evaluation) keeps the slot but with label -1.
    """

    def __init__(self, *, samples: Sequence[tuple[str, int]], class_names: Sequence[str],
                 transform: A.Compose, train: bool) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.transform = transform
        self.train = train
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> tuple[np.ndarray, int, list[str]]:
        unreadable: list[str] = []
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            image = read_image(path)
            if image is not None:
                return image, label, unreadable
            unreadable.append(path)
            if path not in self._reported:
                self._reported.add(path)
                logger.warning("skipping unreadable image %s", path)
        raise RuntimeError(f"none of the {len(self.samples)} images of this split is readable "
                           f"(first: {self.samples[0][0]})")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label, unreadable = self._read(index)
        if unreadable and not self.train:
            label = -1
        if seed is not None:
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = self.transform(image=image)["image"]
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "label": label, "unreadable": unreadable}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """images (N, 3, H, W), labels (N,), unreadable: all skipped paths of the batch."""
    return {"images": torch.stack([s["image"] for s in batch]),
            "labels": torch.tensor([s["label"] for s in batch], dtype=torch.int64),
            "unreadable": [p for s in batch for p in s["unreadable"]]}


def _init_worker(worker_id: int) -> None:
    # Each loader worker is one process: avoid oversubscribing the cores with thread pools.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def build_train_loader(dataset: ImageFolderDataset, *, batch_size: int, num_workers: int,
                       seed: int, start: int = 0, pin_memory: bool = False) -> DataLoader:
    """An endless loader of this process's share, resumable at sample position `start`.

    Args:
        dataset: the training split.
        batch_size: images per step of this process.
        num_workers: loader processes.
        seed: the same on every process.
        start: samples this process already consumed (iteration * batch_size).
        pin_memory: for GPU training.
    """
    sampler = InfiniteSampler(len(dataset), shuffle=True, seed=seed, start=start,
                              with_seeds=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=True,
                      worker_init_fn=_init_worker,
                      generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


def build_val_loader(dataset: ImageFolderDataset, *, batch_size: int, num_workers: int,
                     pin_memory: bool = False) -> DataLoader:
    """Each image once over all processes (this process: every world_size-th)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset)),
                      num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                      worker_init_fn=_init_worker, generator=torch.Generator().manual_seed(0),
                      persistent_workers=num_workers > 0)
