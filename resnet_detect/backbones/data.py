"""ImageFolder classification data for pretraining: OpenCV decoding, albumentations transforms.

Layout: `root/<split>/<class>/<image>` (ImageNet style), classes sorted by folder name and
taken from the training split. A sample is {"image": (3, H, W), "label": int}: float32
normalized with the 0..255 pixel mean/std, or uint8 when the transform leaves normalization to
the device (`normalize=False`, pretraining: a quarter of the bytes through the loader). `stack`
turns a list of samples into (N, 3, H, W) and (N,); `collate_images` does it in the loader
workers, giving an `ImageBatch`. An unreadable image gives None, as in every task: the loader
drops it and the runner counts it (engine.data).
"""
from __future__ import annotations

import functools
import logging
import os
import random
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from resnet_detect.engine.data import (IMAGE_SUFFIXES, NOT_DATA_FOLDERS, DatasetError,
                                       PackedRecords, UnreadableImageError, collate,
                                       file_paths_under, read_image,
                                       warn_of_unreadable)
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data.coco import MAX_LISTED
from resnet_detect.engine.files import missing_path

from .weights import PIXEL_MEAN, PIXEL_STD

logger = logging.getLogger(__name__)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def class_folders(split_dir: Path) -> list[str]:
    """The class folder names of an ImageFolder split (hidden ones and NAS/macOS metadata
    left out), in one order however the disk spells the names."""
    return sorted((d.name for d in split_dir.iterdir() if d.is_dir()
                   and not d.name.startswith(".") and d.name not in NOT_DATA_FOLDERS), key=_nfc)


def scan_image_folder(split_dir: str | os.PathLike, class_names: Sequence[str] | None = None
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """List (path, label) of `split_dir/<class>/*` images, sorted. Hidden folders are not
    classes; every training class needs an image (a class without one could never be learnt).

    Args:
        split_dir: e.g. root/train.
        class_names: the classes of the training split (for val); None reads them here.

    Raises:
        FileNotFoundError: the folder does not exist.
        DatasetError: no class folders, images outside them, no images, a training class
            without images, a class unknown to `class_names`, two folders of one class name
            (spelt composed and decomposed), or a folder inside two classes (a symlink).
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        from .studies.data import holds_cifar_alone  # (the studies' data reads this module)
        root = split_dir.parent
        hint = (f" ({root} is a file: data.root is the folder holding {split_dir.name}/ and "
                f"the other split's folder)" if root.is_file() else
                f" ({root} holds CIFAR's python batches, which tools/analyze.py reads; this "
                f"tool reads ImageFolder trees, root/{split_dir.name}/<class>/<image>)"
                if holds_cifar_alone(root) else
                f" (data.root {root} is a split's own folder? It is the folder that holds "
                f"{split_dir.name}/)" if root.name == split_dir.name else "")
        raise FileNotFoundError(f"dataset folder not found: {missing_path(split_dir)}{hint}")
    entries = [e for e in split_dir.iterdir() if not e.name.startswith(".")]
    loose = sorted(f.name for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if loose:  # ImageNet's val archive unpacks flat; a half-sorted folder looks the same
        raise DatasetError(
            f"{split_dir}: {len(loose)} images outside class folders (e.g. {loose[0]}): each "
            f"image must be in {split_dir}/<class>/, as torchvision's ImageFolder reads them "
            f"(ImageNet's val images: move each into its class's folder as "
            f"LOC_val_solution.csv lists them, or with the common valprep.sh)")
    found = class_folders(split_dir)
    # ImageNet's train archive holds an archive per class: unpacked once, they are left whole
    archives = sorted(f.name for f in entries if f.is_file() and f.name.endswith(".tar")
                      and f.name[:-len(".tar")] not in found)
    if archives:
        raise DatasetError(
            f"{split_dir} holds {len(archives)} .tar archives without their class folder "
            f"(e.g. {archives[0]}), beside {len(found)} class folders: ImageNet's training "
            f"archive holds one per class; "
            f"extract each into the folder of its name (e.g. `for f in *.tar; do mkdir "
            f"\"${{f%.tar}}\" && tar xf \"$f\" -C \"${{f%.tar}}\" && rm \"$f\"; done`)")
    if not found:
        raise DatasetError(f"no class folders in {split_dir} (expected "
                           f"{split_dir}/<class>/<image>)")
    # one spelling for names a file system may store decomposed (macOS: "café" as e + accent)
    spellings: dict[str, str] = {}
    for name in found:
        if _nfc(name) in spellings:
            raise DatasetError(f"{split_dir}: two folders spell one class name "
                               f"{_nfc(name)!r} ({spellings[_nfc(name)]!a} and {name!a}): "
                               f"merge them into one")
        spellings[_nfc(name)] = name
    if sorted(found) != found:  # (torchvision sorts the names as stored)
        decomposed = [name for name in found if name != _nfc(name)]
        logger.warning("%s: class folders whose names are stored in another Unicode form than "
                       "the composed one (NFC; macOS writes an accent apart from its letter: "
                       "%s) are sorted here as composed, and by torchvision's ImageFolder on "
                       "this disk as stored: the class numbers of weights trained with "
                       "ImageFolder here are not this order's (renamed to their composed form, "
                       "e.g. by `convmv -r --nfc --notest -f utf8 -t utf8 DIR`, both agree)",
                       split_dir, ascii(decomposed[:MAX_LISTED])[:-1]
                       + (", ...]" if len(decomposed) > MAX_LISTED else "]"))
    training = class_names is None
    if class_names is None:
        class_names = [_nfc(name) for name in found]
    label_of = {_nfc(name): i for i, name in enumerate(class_names)}
    unknown = [c for c in found if _nfc(c) not in label_of]
    if unknown:
        raise DatasetError(f"{split_dir} has classes the model was not trained on (the "
                           f"training split's, or the evaluated weights'): {', '.join(unknown)}")
    samples, empty = [], []
    class_of_folder: dict[str, str] = {}  # real folder -> the class that holds it
    others: dict[str, int] = {}  # suffix -> files of it left out
    for name in found:
        walked: dict[str, Path] = {}
        files = []
        for f in file_paths_under(split_dir / name, walked):
            suffix = os.path.splitext(f)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                files.append(f)
            else:
                others[suffix or "(none)"] = others.get(suffix or "(none)", 0) + 1
        if not files:
            empty.append(name)
        for real, folder in sorted(walked.items()):
            other = class_of_folder.setdefault(real, name)
            if other != name:  # its images would be learnt under two labels
                raise DatasetError(f"{split_dir}: the folder {folder} is in class {name} and "
                                   f"in class {other} (a symbolic link?): each image may be "
                                   f"in one class only")
        label = label_of[_nfc(name)]
        samples.extend((p, label) for p in files)
    if not samples:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {split_dir}")
    if others:  # (.jfif or .gif photos are not read, as torchvision's ImageFolder reads none)
        logger.warning("%s: left out %d files of other suffixes than an image's (%s): %s",
                       split_dir, sum(others.values()), " ".join(sorted(IMAGE_SUFFIXES)),
                       ", ".join(f"{n} {s}" for s, n in sorted(others.items())))
    if training and empty:
        raise DatasetError(f"{split_dir}: class folders without images "
                           f"({', '.join(sorted(IMAGE_SUFFIXES))}): {', '.join(empty)}")
    if empty:  # (torchvision's ImageFolder refuses them; an evaluation can go on)
        logger.warning("%s: class folders without images: %s (the accuracy is over the other "
                       "classes)", split_dir, ", ".join(empty))
    return samples, list(class_names)


# OpenCV's area filter where an image shrinks (no moire, as Pillow's antialiased filters),
# bilinear where it grows: INTER_AREA alone enlarges as nearest neighbour does (at 2x each
# pixel twice). A crop that shrinks one side and grows the other takes the area filter.
SMOOTH_RESIZE = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": "image"}


def build_train_transform(*, image_size: int, scale: Sequence[float] = (0.08, 1.0),
                          hflip: bool = True, pixel_mean: Sequence[float] = PIXEL_MEAN,
                          pixel_std: Sequence[float] = PIXEL_STD,
                          normalize: bool = True) -> A.Compose:
    """Random resized crop to image_size, horizontal flip, normalization (0..255 mean/std;
    normalize=False: uint8 out, normalized later by `normalize_images`).

    Resizing: SMOOTH_RESIZE.
    """
    return A.Compose([
        A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale), **SMOOTH_RESIZE),
        A.HorizontalFlip(p=0.5 if hflip else 0.0),
        *_normalization(pixel_mean, pixel_std, normalize),
    ])


# data.val_interpolation: OpenCV's area averaging, or Pillow's filters as torchvision's and
# timm's evaluations resize (bilinear: torchvision's references; bicubic: timm's weights that
# say so)
VAL_INTERPOLATIONS = {"area": None, "bilinear": Image.Resampling.BILINEAR,
                      "bicubic": Image.Resampling.BICUBIC}


def warn_of_another_val_transform(weights: Any, provenance: Mapping[str, Any],
                                  data: Mapping[str, Any], uses: str) -> None:
    """A classifier's weights evaluated in their run at other val sizes (or interpolation)
    than `data` (the config's) gives: said, as other sizes give another top-1. `uses`: what
    this config's values are used for ("the export resizes", "this evaluation resizes")."""
    trained = (provenance.get("config") or {}).get("data") or {}
    if trained:  # runs from before data.val_interpolation evaluated with OpenCV's area filter
        trained = {"val_interpolation": "area", **trained}
    for key in ("image_size", "val_resize", "val_interpolation"):
        if key in trained and trained[key] != data[key]:
            logger.warning("%s was evaluated with data.%s=%s; %s with this config's %s",
                           weights, key, trained[key], uses, data[key])


def build_val_transform(*, image_size: int, resize: int, pixel_mean: Sequence[float] = PIXEL_MEAN,
                        pixel_std: Sequence[float] = PIXEL_STD, normalize: bool = True,
                        interpolation: str = "area") -> A.Compose:
    """Resize the shorter side to `resize`, center crop image_size, normalize (or not: uint8).

    `interpolation` (VAL_INTERPOLATIONS): "area" is OpenCV's (SMOOTH_RESIZE); "bilinear" and
    "bicubic" are torchvision's `Resize(resize)` + `CenterCrop(image_size)` on a Pillow image,
    exactly (the longer side truncated, the crop's offsets rounded, Pillow's antialiased
    filter)."""
    if resize < image_size:
        raise ValueError(f"val resize {resize} must be >= image size {image_size}")
    check_val_interpolation(interpolation)
    if interpolation == "area":
        geometry = [A.SmallestMaxSize(max_size=resize, **SMOOTH_RESIZE),
                    A.CenterCrop(height=image_size, width=image_size)]
    else:
        # a partial, not a lambda: spawned loader workers receive the transform pickled
        geometry = [A.Lambda(image=functools.partial(
            pillow_resize_and_crop, resize=resize, size=image_size,
            resample=VAL_INTERPOLATIONS[interpolation]))]
    return A.Compose([*geometry, *_normalization(pixel_mean, pixel_std, normalize)])


def check_val_interpolation(value: Any) -> None:
    if value not in VAL_INTERPOLATIONS:
        raise ConfigError(f"data.val_interpolation must be one of "
                          f"{', '.join(VAL_INTERPOLATIONS)}, got {value!r}")


def pillow_resize_and_crop(image: np.ndarray, resize: int, size: int,
                           resample: Image.Resampling, **_: Any) -> np.ndarray:
    """torchvision's `CenterCrop(size)(Resize(resize, resample)(image))` of an RGB array."""
    height, width = image.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def _normalization(pixel_mean: Sequence[float], pixel_std: Sequence[float],
                   normalize: bool) -> list[A.BasicTransform]:
    if not normalize:
        return []
    return [A.Normalize(mean=tuple(pixel_mean), std=tuple(pixel_std), max_pixel_value=1.0)]


def normalize_images(images: torch.Tensor, pixel_mean: Sequence[float] | torch.Tensor,
                     pixel_std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> float32 normalized with the 0..255 mean/std, on images' device.

    Give mean/std as float32 tensors already on that device in a training loop: built from
    lists, they are copied from pageable host memory, which waits for the GPU at every step.
    """
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=images.device)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=images.device)
    return (images.float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class ImageFolderDataset(Dataset):
    """Classification samples from a scanned ImageFolder split.

    Indexed by `i` or by `(i, seed)`; with a seed the augmentation of that sample is
    reproducible (see engine.data.TrainingSampler).

    Args:
        samples: (path, label) pairs; kept packed (engine.data.PackedRecords), so loader
            workers share them instead of copying a list of a million tuples each.
        class_names: names of the labels.
        transform: an albumentations Compose producing the final image (normalized float32,
            or uint8).
    """

    def __init__(self, *, samples: Sequence[tuple[str, int]], class_names: Sequence[str],
                 transform: A.Compose) -> None:
        self.samples = PackedRecords(samples)
        self.class_names = list(class_names)
        self.transform = transform
        self.said_unreadable: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def contents_digest(self) -> str:
        """Its files and labels, hashed (the processes of a run compare it)."""
        return self.samples.digest((0,))

    def record(self, index: int) -> dict[str, Any]:
        """An image's file_name and label."""
        path, label = self.samples[index]
        return {"file_name": path, "label": label}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        """The sample of `key`, or None when its image cannot be decoded (logged)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = read_image(path)
        except UnreadableImageError as err:
            warn_of_unreadable(logger, str(err), self.said_unreadable)
            return None
        if seed is not None:
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        image = self.transform(image=image)["image"]
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "label": label}


def stack(batch: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 3, H, W) and labels (N,) of a list of samples."""
    return (torch.stack([s["image"] for s in batch]),
            torch.tensor([s["label"] for s in batch], dtype=torch.int64))


@dataclass
class ImageBatch:
    """A batch collated in a loader worker: images (N, 3, H, W) and labels (N,).

    `len` is the number of images, as for a list batch (the runner counts skipped images), and
    the DataLoader pins it through `pin_memory`.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def pin_memory(self) -> ImageBatch:
        return ImageBatch(self.images.pin_memory(), self.labels.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(self.images.to(device, non_blocking=non_blocking),
                          self.labels.to(device, non_blocking=non_blocking))


def collate_images(samples: list[dict[str, Any] | None]) -> ImageBatch:
    """The readable samples (None dropped) stacked into one ImageBatch (possibly empty)."""
    kept = collate(samples)
    if not kept:
        return ImageBatch(torch.empty(0, 3, 0, 0, dtype=torch.uint8),
                          torch.empty(0, dtype=torch.int64))
    return ImageBatch(*stack(kept))
