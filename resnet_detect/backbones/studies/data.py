"""Small classification sets held in memory for the studies, and the dataset they train on.

Shapes: N images of S x S pixels. A split is `images` (N, 3, S, S) uint8 RGB and `labels`
(N,) int64; `normalize` turns images into float (N, 3, S, S) with the 0..255 mean/std.

Sources: the CIFAR-10 or CIFAR-100 python batches (`root` holding data_batch_1..5 and
test_batch, or CIFAR-100's train and test; or the folder above them, torchvision's root; the
training split is the training batches, every other split the test batch), or any ImageFolder
tree `root/<split>/<class>/<image>` read by `backbones.data` and resized (shorter side to S,
centre crop S x S).
"""
from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.files import missing_path

from ..data import SMOOTH_RESIZE, ImageFolderDataset, scan_image_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarLayout:
    """The files and keys of one CIFAR python distribution."""

    archive: str  # as downloaded
    folder: str  # what its archive unpacks to
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str


CIFAR_LAYOUTS = (
    CifarLayout("cifar-10-python.tar.gz", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                "label_names", "labels"),
    CifarLayout("cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
                "fine_label_names", "fine_labels"),
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass
class ClassificationSplit:
    """One split in memory: images (N, 3, S, S) uint8, labels (N,) int64, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def classes_only(cls, class_names: list[str], image_size: int,
                     source: str) -> ClassificationSplit:
        """A split of no image: its class names alone."""
        return cls(torch.empty(0, 3, image_size, image_size, dtype=torch.uint8),
                   torch.empty(0, dtype=torch.int64), class_names, source)

    def subset(self, max_items: int, seed: int) -> ClassificationSplit:
        """A seeded random subset of at most `max_items` samples (0: all), in original order."""
        if max_items <= 0 or max_items >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        keep = keep[:max_items].sort().values
        return ClassificationSplit(self.images[keep], self.labels[keep], self.class_names,
                                   self.source)


def cifar_layout(root: str | os.PathLike) -> CifarLayout | None:
    """The CIFAR distribution whose batches `root` holds (its test or first training batch
    file; files, where an ImageFolder tree's splits are folders), or None."""
    root = Path(root)
    for layout in CIFAR_LAYOUTS:
        if (root / layout.test_file).is_file() or (root / layout.train_files[0]).is_file():
            return layout
    return None


def cifar_folder(root: str | os.PathLike, train_split: str = "train") -> Path | None:
    """`root` where it holds CIFAR batches, or its cifar-10-batches-py / cifar-100-python
    (torchvision's datasets take the folder above) where it has no ImageFolder split
    `train_split`, else None.

    Raises:
        DatasetError: `root` holds both CIFAR-10's and CIFAR-100's folders.
    """
    root = Path(root)
    if cifar_layout(root) is not None:
        return root
    if (root / train_split).is_dir():
        return None
    found = [root / layout.folder for layout in CIFAR_LAYOUTS
             if cifar_layout(root / layout.folder) is not None]
    if len(found) > 1:
        raise DatasetError(f"data.root {root} holds both {' and '.join(f.name for f in found)}: "
                           f"set data.root to the one to read")
    return found[0] if found else None


def holds_cifar_alone(root: Path) -> bool:
    """Whether `root` holds CIFAR batches, or folders of them alone (no ImageFolder split)."""
    folders = ([d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
               if root.is_dir() else [])
    return cifar_layout(root) is not None or (bool(folders) and all(
        cifar_layout(d) is not None for d in folders))


def _unpickle(path: Path) -> dict[Any, Any]:
    # The CIFAR distribution format is a pickle; only open files the user points at.
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise DatasetError(f"cannot read CIFAR batch file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR batch file {path} holds a {type(obj).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar_class_names(root: Path) -> list[str]:
    """The class names of the CIFAR batches in `root` (its meta file's)."""
    layout = cifar_layout(root) or CIFAR_LAYOUTS[0]
    meta_path = root / layout.meta_file
    meta = _unpickle(meta_path)
    if layout.names_key not in meta:
        raise DatasetError(f"{meta_path} has no {layout.names_key}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]


def load_cifar_batches(root: str | os.PathLike, split: str, image_size: int = 32
                       ) -> ClassificationSplit:
    """Read the CIFAR python batches of `split` ("train": CIFAR-10's data_batch_1..5 or
    CIFAR-100's train, else the test batch; CIFAR-100's labels are its 100 fine classes).

    Args:
        root: the cifar-10-batches-py or cifar-100-python folder.
        split: "train" or the evaluation split's name.
        image_size: S; other than 32 resizes with antialiasing.

    Raises:
        FileNotFoundError: a batch file is missing.
        DatasetError: a batch file is not a CIFAR batch (missing data/labels, wrong sizes).
    """
    root = Path(root)
    layout = cifar_layout(root) or CIFAR_LAYOUTS[0]
    meta_path = root / layout.meta_file
    class_names = cifar_class_names(root)
    files = layout.train_files if split == "train" else (layout.test_file,)
    images, labels = [], []
    for name in files:
        batch = _unpickle(root / name)
        data, batch_labels = batch.get("data"), batch.get(layout.labels_key)
        if data is None or batch_labels is None:
            raise DatasetError(f"{root / name} is not a CIFAR batch (needs 'data' and "
                               f"{layout.labels_key!r})")
        data = np.asarray(data)
        # (a cast made 300.7 44 and 0..1 floats black; lists of ints are read)
        if not np.issubdtype(data.dtype, np.integer) or (
                data.size and not 0 <= int(data.min()) <= int(data.max()) <= 255):
            raise DatasetError(f"{root / name}: data must be pixel values 0..255 (uint8, as "
                               f"CIFAR's batches hold them), got {data.dtype}"
                               + (f" {data.min()}..{data.max()}" if data.size
                                  and np.issubdtype(data.dtype, np.number) else ""))
        data = data.astype(np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != len(data):
            raise DatasetError(f"{root / name}: data must be (N, 3072) with N labels, got "
                               f"{data.shape} and {len(batch_labels)} labels")
        batch_tensor = torch.as_tensor(list(batch_labels), dtype=torch.int64)
        outside = batch_tensor[(batch_tensor < 0) | (batch_tensor >= len(class_names))]
        if outside.numel():
            raise DatasetError(f"{root / name}: label {int(outside[0])} is not a class of "
                               f"{meta_path} (labels lie in 0..{len(class_names) - 1}: "
                               f"{len(class_names)} {layout.names_key})")
        # each row is RRR..GGG..BBB
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(batch_tensor)
    image_tensor, label_tensor = torch.cat(images), torch.cat(labels)
    if image_size != 32:  # in chunks: a float copy of the whole of CIFAR is 700 MB
        image_tensor = torch.cat([
            F.interpolate(chunk.float(), size=(image_size, image_size), mode="bilinear",
                          antialias=True, align_corners=False).round().clamp(0, 255)
            .to(torch.uint8) for chunk in image_tensor.split(4096)])
    return ClassificationSplit(image_tensor, label_tensor, class_names, str(root))


def load_image_folder(split_dir: str | os.PathLike, image_size: int, *,
                      class_names: Sequence[str] | None = None, max_items: int = 0,
                      seed: int = 0) -> ClassificationSplit:
    """Read an ImageFolder split, resized to S x S (shorter side to S, centre crop).

    Args:
        split_dir: root/<split>.
        image_size: S.
        class_names: the training split's classes (for an evaluation split).
        max_items: read a seeded random subset of this many images (0: all).
        seed: of that subset.
    """
    samples, names = scan_image_folder(split_dir, class_names)
    subset = 0 < max_items < len(samples)
    if subset:
        keep = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
        samples = [samples[i] for i in sorted(keep[:max_items].tolist())]
    transform = A.Compose([A.SmallestMaxSize(max_size=image_size, **SMOOTH_RESIZE),
                           A.CenterCrop(height=image_size, width=image_size)])
    dataset = ImageFolderDataset(samples=samples, class_names=names, transform=transform)
    items = [dataset[i] for i in range(len(dataset))]
    items = [item for item in items if item is not None]  # unreadable images (warned)
    if not items:
        raise DatasetError(f"no readable images under {split_dir}")
    unlearnt = sorted(set(range(len(names))) - {item["label"] for item in items})
    if class_names is None and not subset and unlearnt:
        # as a training class folder without images is refused: it could never be learnt
        raise DatasetError(f"{split_dir}: no readable image of class "
                           f"{', '.join(names[i] for i in unlearnt)} (the warnings above name "
                           f"its unreadable files)")
    return ClassificationSplit(torch.stack([item["image"] for item in items]),
                               torch.tensor([item["label"] for item in items]), names,
                               str(split_dir))


def load_splits(root: str | os.PathLike, *, train_split: str, val_split: str, image_size: int,
                max_train: int = 0, max_val: int = 0, seed: int = 0, train_images: bool = True
                ) -> tuple[ClassificationSplit, ClassificationSplit]:
    """(train, val) from CIFAR batches or an ImageFolder tree, each cut to a seeded subset;
    without `train_images`, the training split's class names alone (no image read)."""
    if Path(root).is_file() and root_is_archive(root):
        raise FileNotFoundError(f"data.root {root} is an archive: {extract_hint(root)}")
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"data.root folder not found: {missing_path(root)} (the synthetic set is made by "
            f"`python tools/make_synthetic.py`; CIFAR-10 is the cifar-10-batches-py folder)")
    cifar = cifar_folder(root, train_split)
    if cifar is not None:
        train = (load_cifar_batches(cifar, "train", image_size).subset(max_train, seed)
                 if train_images else ClassificationSplit.classes_only(
                     cifar_class_names(cifar), image_size, str(cifar)))
        val = load_cifar_batches(cifar, val_split, image_size).subset(max_val, seed + 1)
    else:
        train = (load_image_folder(Path(root) / train_split, image_size, max_items=max_train,
                                   seed=seed) if train_images else ClassificationSplit.classes_only(
            scan_image_folder(Path(root) / train_split)[1], image_size, str(root)))
        val = load_image_folder(Path(root) / val_split, image_size,
                                class_names=train.class_names, max_items=max_val, seed=seed + 1)
    logger.info("data %s: %d train / %d val images, %d classes, %dx%d", root, len(train),
                len(val), len(train.class_names), image_size, image_size)
    return train, val


def root_is_archive(root: str | os.PathLike) -> bool:
    """Whether `root` is named as a downloaded archive is (cifar-10-python.tar.gz)."""
    return str(root).lower().endswith(ARCHIVE_SUFFIXES)


def extract_hint(archive: str | os.PathLike) -> str:
    """How to extract `archive` (one of ARCHIVE_SUFFIXES) and what data.root becomes."""
    name = Path(archive).name.lower()
    command = (f"unzip {archive}" if name.endswith(".zip") else f"tar xf {archive}"
               if name.endswith(".tar") else f"tar xzf {archive}")
    folder = next((layout.folder for layout in CIFAR_LAYOUTS if name == layout.archive), None)
    return (f"extract it (`{command}`) and set data.root to the folder it makes"
            + (f" ({folder})" if folder else ""))


def normalize(images: torch.Tensor, pixel_mean: Sequence[float],
              pixel_std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float (N, 3, S, S): (x - mean) / std on 0..255 values."""
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """CIFAR augmentation: zero-pad by `pad`, random S x S crop, random horizontal flip."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets)])
    out[flips] = out[flips].flip(-1)
    return out


class SplitDataset(Dataset):
    """A split in memory as the training runner's dataset: key -> {"image": float (3, S, S)
    normalized, "label": int}.

    A key is an index or, in training, `(index, augmentation seed)`: with `augment`, that seed
    draws the pad-and-crop (pad S / 8) and the flip, so a key always gives the same sample.

    Args:
        split: the images and labels.
        pixel_mean, pixel_std: normalization on 0..255 values.
        augment: pad-and-crop and flip for keys that carry a seed.
    """

    def __init__(self, split: ClassificationSplit, *, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], augment: bool) -> None:
        self.split = split
        self.pixel_mean, self.pixel_std = list(pixel_mean), list(pixel_std)
        self.pad = max(split.images.shape[-1] // 8, 1) if augment else 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.split.images[index:index + 1]
        if self.pad and seed is not None:
            image = random_crop_flip(image, self.pad, torch.Generator().manual_seed(seed))
        return {"image": normalize(image, self.pixel_mean, self.pixel_std)[0],
                "label": int(self.split.labels[index])}
