"""Semantic segmentation data: image + class-id mask pairs, checked and augmented together.

A sample (H, W after augmentation):
    {"image": uint8 (3, H, W) RGB, "gt_sem_seg": int64 (H, W) class ids, 255 = ignore,
     "file_name": str, "height": int, "width": int (the original image size)}

Each split (`data.train.*` / `data.val.*`, the keys of detection plus a few) is folder data
(`img_dir` + `mask_dir`) or COCO instances (`img_dir` + `ann_file`); see
`segmentation.records` for both layouts.

Bad data fails with the file named: an image without a mask (when the split is built), a
mask whose size differs from its image or that holds class ids outside 0..K-1 other than
255 (when the sample is read). Unreadable images are skipped and counted (as in detection).
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import yaml
from omegaconf import DictConfig, ListConfig
from torch.utils.data import DataLoader, Dataset

from resnet_detect.engine.config import (ConfigError, check_probability, check_sizes, is_number,
                                         to_plain)
from resnet_detect.engine.logging import warn_once
from resnet_detect.engine import data as engine_data
from resnet_detect.engine.data import (DatasetError, PackedRecords, UnreadableImageError, brief,
                                       decoded_size, image_size, listing, read_image,
                                       warn_of_unreadable)
from resnet_detect.engine.distributed import per_process_batch_size
from resnet_detect.engine.visualize import palette
from resnet_detect.engine.files import missing_path

from .known_datasets import CLASS_NAMES, known_palette, named_dataset
from .records import (IGNORE_INDEX, MAX_LISTED, cityscapes_hint, coco_semantic_mask,
                      load_coco_semantic, mask_header, read_mask, scan_folder)

logger = logging.getLogger(__name__)
# a first class name that says "0 is unlabelled", not the files' 1 ("background" can be
# the files' 1, as in LoveDA)
UNLABELLED_NAMES = {"other", "others", "unlabelled", "unlabeled", "void", "ignore", "__ignore__"}
DATA_SOURCES = ("ann_file", "mask_dir")  # one per split: COCO instances JSON or class-id PNGs
__all__ = ["SemSegDataset", "build_dataset", "build_test_loader", "build_train_loader",
           "build_transform", "coco_semantic_mask", "load_coco_semantic",
           "read_mask", "resolve_class_names", "scan_folder"]


class _RandomScale(A.RandomScale):
    """albumentations' RandomScale, keeping each side a pixel or more: a 1-pixel-high image
    (a thin strip among the training images) scaled by 0.7 became 0 pixels high, where
    OpenCV's resize fails and the run stopped. With `fit_size` (long, short), the factor is
    drawn for the image first scaled to fit it (`fit_factor`)."""

    def __init__(self, *args: Any, fit_size: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fit_size = fit_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]
                                     ) -> dict[str, Any]:
        if self.fit_size is None:
            return {}
        return {"scale": params["scale"] * fit_factor(params["shape"][:2], self.fit_size)}

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        size = _scaled_size(img, scale)
        return (super().apply(img, scale, **params) if size is None
                else cv2.resize(img, size, interpolation=self.interpolation))

    def apply_to_mask(self, mask: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        size = _scaled_size(mask, scale)
        return (super().apply_to_mask(mask, scale, **params) if size is None
                else cv2.resize(mask, size, interpolation=self.mask_interpolation))


def _scaled_size(array: np.ndarray, scale: float) -> tuple[int, int] | None:
    """(width, height) `array` scales to, each a pixel or more, where a side would be 0
    pixels; None otherwise."""
    height, width = (int(side * scale) for side in array.shape[:2])
    return None if min(height, width) >= 1 else (max(width, 1), max(height, 1))


def fit_factor(size: Sequence[int], fit_size: Sequence[int] | None) -> float:
    """The factor that scales an image of `size` (H, W) to fit (long side, short side)
    `fit_size`, keeping its aspect (mmsegmentation's Resize with keep_ratio); 1 without it."""
    if fit_size is None:
        return 1.0
    return min(fit_size[0] / max(size), fit_size[1] / min(size))


def build_transform(*, crop_size: Sequence[int] | None = None,
                    scale_range: Sequence[float] = (1.0, 1.0),
                    fit_size: Sequence[int] | None = None, hflip_prob: float = 0.0,
                    image_fill: Sequence[float] = (124, 116, 104),
                    ignore_index: int = IGNORE_INDEX) -> A.Compose:
    """Mask-aware augmentation: random scale, pad to the crop (mask filled with
    `ignore_index`), crop, flip.

    Args:
        crop_size: (H, W) of the training crop; None keeps the whole image (evaluation).
        scale_range: (min, max) random rescale factor, e.g. (0.5, 2.0).
        fit_size: (long side, short side) each image is scaled to fit, keeping its aspect,
            before the factor (mmsegmentation's RandomResize scale: (2048, 512) for ADE20K).
        hflip_prob: probability of a horizontal flip.
        image_fill: RGB value of padded image pixels (the mean colour: 0 after normalising).
        ignore_index: mask value of padded pixels (not scored).
    """
    low, high = (float(s) for s in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be 0 < min <= max, got {list(scale_range)}")
    transforms: list[A.BasicTransform] = []
    if (low, high) != (1.0, 1.0) or fit_size is not None:
        transforms.append(_RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0,
                                       interpolation=cv2.INTER_LINEAR,
                                       mask_interpolation=cv2.INTER_NEAREST,
                                       fit_size=fit_size))
    if crop_size is not None:
        crop_h, crop_w = (int(s) for s in crop_size)
        transforms += [A.PadIfNeeded(min_height=crop_h, min_width=crop_w,
                                     border_mode=cv2.BORDER_CONSTANT, fill=tuple(image_fill),
                                     fill_mask=ignore_index, position="top_left"),
                       A.RandomCrop(height=crop_h, width=crop_w)]
    if hflip_prob > 0:
        transforms.append(A.HorizontalFlip(p=hflip_prob))
    return A.Compose(transforms)


def _size_problem(source: str, found: Sequence[int], image: str,
                  size: Sequence[int]) -> str:
    return (f"{source} is {found[1]}x{found[0]} but image {image} is {size[1]}x{size[0]} "
            f"(WxH, after EXIF rotation of the image, if it has an orientation tag)")


# training masks whose class ids are read before the first step
MASK_SAMPLE = 32
# the share of padding in the training crops that is warned of
PADDED_SHARE = 0.5


def padded_share(size: Sequence[int], crop_size: Sequence[int],
                 scale_range: Sequence[float], fit_size: Sequence[int] | None = None,
                 steps: int = 33) -> float:
    """The expected share of padded pixels in a `crop_size` (H, W) crop of an image of `size`
    (H, W) rescaled by a factor drawn uniformly from `scale_range` (`build_transform`; after
    the scaling to `fit_size`)."""
    scales = (np.linspace(float(scale_range[0]), float(scale_range[1]), steps)
              * fit_factor(size, fit_size))
    covered = (np.minimum(1.0, np.round(size[0] * scales) / crop_size[0])
               * np.minimum(1.0, np.round(size[1] * scales) / crop_size[1]))
    return float(1.0 - covered.mean())


class SemSegDataset(Dataset):
    """Decode, check and augment (image, mask) pairs from folder or COCO records.

    Args:
        records: from `scan_folder` ({"file_name", "mask_file"}) or `load_coco_semantic`.
        transform: from `build_transform`.
        class_names: the K names (index = class id, background included); mask ids >= K
            (other than `ignore_index`) are an error.
        ignore_index: the mask value of pixels that are not scored (`model.ignore_index`).
        reduce_zero_label: mask files' 0 means unlabelled (ADE20K): 0 becomes `ignore_index`,
            1..K the classes 0..K-1, `ignore_index` stays (`data.reduce_zero_label`).
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, transform: A.Compose,
                 class_names: Sequence[str], ignore_index: int = IGNORE_INDEX,
                 reduce_zero_label: bool = False) -> None:
        if not 1 <= len(class_names) <= IGNORE_INDEX:
            raise ConfigError(f"the number of classes (data.class_names, background included) "
                              f"must be in 1..{IGNORE_INDEX}, got {len(class_names)}")
        if not (isinstance(ignore_index, int) and 0 <= ignore_index <= 255):
            raise ConfigError(f"model.ignore_index must be a mask value 0..255, got "
                              f"{ignore_index!r}")
        self.ignore_index = ignore_index
        # records without a mask source: images to predict (scan_folder without mask_dir, a
        # COCO file without annotations), every pixel `ignore_index`
        self.labelled = any("mask_file" in r or "objects" in r for r in records)
        self._records = PackedRecords(records)
        self.transform = transform
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.num_skipped = 0
        self.said_unreadable: set[str] = set()
        self.coco_names: list[str] | None = None  # a COCO file's own classes (build_dataset)
        self.reduce_zero_label = bool(reduce_zero_label)
        if self.reduce_zero_label and self.num_classes >= IGNORE_INDEX:
            raise ConfigError(f"data.reduce_zero_label takes at most {IGNORE_INDEX - 1} classes "
                              f"(values 1..{IGNORE_INDEX - 1}; {IGNORE_INDEX} is ignore), got "
                              f"{self.num_classes}")
        # file value -> class id: v - 1, 0 and the ignore value -> ignore (values over K are
        # refused before the lookup)
        self._reduced = np.arange(-1, 255, dtype=np.int64).clip(0).astype(np.uint8)
        self._reduced[[0, ignore_index]] = ignore_index

    def __len__(self) -> int:
        return len(self._records)

    def contents_digest(self) -> str:
        """Its files and labels, hashed (the processes of a run compare it)."""
        return self._records.digest(("file_name", "mask_file"))

    def record(self, index: int) -> dict[str, Any]:
        """The raw record of an image (file_name, and its mask's source)."""
        return self._records[index]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(RGB uint8 (H, W, 3) image, uint8 (H, W) mask, record), checked, not augmented.

        Raises:
            UnreadableImageError: the image cannot be decoded.
            DatasetError: mask size differs from the image, or class ids out of range.
        """
        record = self._records[index]
        image = read_image(record["file_name"])
        return image, self._checked_mask(record, image.shape[:2]), record

    def _checked_mask(self, record: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
        """The record's mask, checked against its image's (height, width) and the classes."""
        if "mask_file" in record:
            mask, source = read_mask(record["mask_file"]), f"mask {record['mask_file']}"
        elif "objects" not in record:  # unlabelled
            return np.full(size, self.ignore_index, dtype=np.uint8)
        else:
            mask = coco_semantic_mask(record, self.ignore_index)
            source = "the COCO height/width"
        if mask.shape != tuple(size):
            raise DatasetError(_size_problem(source, mask.shape, record["file_name"], size))
        ids = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # O(pixels), no sort
        from_file = "mask_file" in record
        reduce = self.reduce_zero_label and from_file
        bad = ids[(ids >= self.num_classes + reduce) & (ids != self.ignore_index)]
        if bad.size and reduce:
            raise DatasetError(f"{source} has values {bad[:MAX_LISTED].tolist()} over the "
                               f"{self.num_classes} declared classes (data.reduce_zero_label: "
                               f"0 = unlabelled, 1..{self.num_classes} = classes 0.."
                               f"{self.num_classes - 1}, {self.ignore_index} = ignore)")
        if bad.size:
            problem = (f"{source} has class ids {bad[:MAX_LISTED].tolist()} outside the "
                       f"{self.num_classes} declared classes (0..{self.num_classes - 1}, "
                       f"{self.ignore_index} = ignore: model.ignore_index)")
            outside = {int(i) for i in bad}
            err = DatasetError(problem + self._class_id_hint(
                outside, record["mask_file"] if from_file else None))
            err.problem, err.outside = problem, outside  # check_masks explains them once
            raise err
        return self._reduced[mask] if reduce else mask

    def _class_id_hint(self, outside: set[int], mask_file: str | None) -> str:
        """What masks holding the class ids `outside` beyond the declared ones may mean (""
        where nothing is known): `mask_file` is one of them, None for masks drawn from COCO
        polygons."""
        highest = max(outside)
        if self.num_classes == 1:
            return ("; binary masks (0 = background, 1 = the object) are 2 classes: name "
                    "both, e.g. data.class_names=[background,object]")
        if mask_file is not None and (hint := cityscapes_hint(mask_file)):
            return hint
        if mask_file is not None and outside == set(range(self.num_classes, highest + 1)):
            return (f"; masks of the values 0..{highest} are either {highest + 1} classes "
                    f"(VOC's: 0 is background: name it first, then the {highest} others) or "
                    f"{highest} classes with 0 unlabelled, neither trained on nor scored "
                    f"(ADE20K's: data.reduce_zero_label: true)")
        return ""

    def check_mask_headers(self, split: str) -> None:
        """Every mask file's format and size (a COCO entry's height and width) against its
        image's, from their headers (seconds for tens of thousands of pairs), all wrong ones
        listed: for the training split, whose masks are otherwise checked as their batches are
        drawn, one stopped run per mask. (Class ids are checked when a mask is read.) Masks
        without a readable header (empty, not an image) are named in a warning: their samples
        are skipped as unreadable images are."""
        problems, unreadable = [], []
        for record in self._records:
            if "mask_file" in record:
                source = f"mask {record['mask_file']}"
                found, problem = mask_header(record["mask_file"])
                if problem:
                    problems.append(problem)
                    continue
                if found is None:
                    unreadable.append(record["mask_file"])
            elif "objects" in record:  # a COCO entry: its masks are drawn at its height/width
                found, source = (record["height"], record["width"]), "the COCO height/width"
            else:
                continue
            size = image_size(record["file_name"])
            if None in (found, size) or found == size:
                continue  # unreadable files: named when read
            exact = decoded_size(record["file_name"])  # the header can mislead
            if exact not in (None, found):
                problems.append(_size_problem(source, found, record["file_name"], exact))
        if problems:
            raise DatasetError(f"data.{split}: {len(problems)} of {len(self)} masks are wrong:"
                               + listing(problems))
        if unreadable:
            logger.warning("data.%s: %d of %d masks cannot be read (empty, or no image): their "
                           "samples are skipped, as unreadable images are:%s", split,
                           len(unreadable), len(self), listing(unreadable))

    def check_mask_sample(self, split: str) -> None:
        """The class ids of a sample of `MASK_SAMPLE` masks: where one is wrong, every mask
        is checked and all wrong ones listed (`check_masks`), before the first step rather
        than one stopped run per mask (ids are otherwise checked as batches draw them)."""
        for index in self._sample():
            try:
                self._mask_against_image(index)
            except UnreadableImageError:
                continue  # skipped when read
            except DatasetError:
                self.check_masks(split)
                return

    def warn_of_padded_crops(self, crop_size: Sequence[int] | None,
                             scale_range: Sequence[float],
                             fit_size: Sequence[int] | None = None) -> None:
        """One warning where most of the training crops would be padding: images smaller
        than `crop_size` once scaled by `scale_range` (the base config's 512 crops of
        256-pixel images are more than half padding, ignored pixels that cost as much as
        the image's), from the headers of a sample of `MASK_SAMPLE` images."""
        if crop_size is None:
            return
        sizes = [(size, self._records[i]["file_name"]) for i in self._sample()
                 if (size := image_size(self._records[i]["file_name"])) is not None]
        if not sizes:
            return
        shares = [padded_share(size, crop_size, scale_range, fit_size) for size, _ in sizes]
        share = float(np.mean(shares))
        if share > PADDED_SHARE:
            (h, w), name = sizes[int(np.argmax(shares))]  # the most padded one
            logger.warning(
                "data.train: on average %.0f%% of each %dx%d crop (data.train.crop_size, HxW) "
                "is padding: the training images are smaller than it once scaled by "
                "data.train.scale_range %s%s (e.g. %s: %dx%d, WxH); padded pixels cost as "
                "much as the image's and teach nothing: a crop_size near the images' scaled "
                "size, a larger scale_range or data.train.fit_size", 100 * share, *crop_size,
                list(scale_range), "" if fit_size is None else
                f" after data.train.fit_size {list(fit_size)}", name, w, h)

    def _sample(self) -> np.ndarray:
        """The indices of the `MASK_SAMPLE` samples read before the first step (the same
        ones on every call and every process)."""
        return np.random.default_rng(0).permutation(len(self))[:MASK_SAMPLE]

    def _mask_against_image(self, index: int) -> np.ndarray | None:
        """Sample `index`'s mask, checked against its image's size (the header's, confirmed
        by decoding where they differ) and the classes; None where the image's header cannot
        be read (skipped when read, like any such image)."""
        record = self._records[index]
        size = image_size(record["file_name"])
        if size is None:
            return None
        try:
            return self._checked_mask(record, size)
        except (DatasetError, UnreadableImageError):
            exact = decoded_size(record["file_name"])  # the header can mislead
            if exact in (None, size):
                raise
            return self._checked_mask(record, exact)

    def check_masks(self, split: str) -> None:
        """Check every mask now (its size against its image's header, its class ids), all
        problems listed: for the val split, whose masks would otherwise first be read by the
        evaluation after training."""
        problems, outside, mask_file = [], set(), None
        pixels = np.zeros(256, dtype=np.int64)  # per value, over every mask
        for index in range(len(self)):
            try:
                mask = self._mask_against_image(index)
            except (DatasetError, UnreadableImageError) as err:
                problems.append(getattr(err, "problem", str(err)))
                if hasattr(err, "outside"):  # what the ids may mean: once, from all masks
                    outside |= err.outside
                    mask_file = self._records[index].get("mask_file")
                continue
            if mask is not None:
                pixels += np.bincount(mask.ravel(), minlength=256)
        if problems:
            hint = self._class_id_hint(outside, mask_file) if outside else ""
            raise DatasetError(f"data.{split}: {len(problems)} of {len(self)} masks are wrong:"
                               + listing(problems) + (f"\n{hint[2:]}" if hint else ""))
        absent = [f"{self.class_names[i]!r} ({i})" for i in range(self.num_classes)
                  if pixels[i] == 0]
        ignored = pixels[self.ignore_index]
        share = round(100 * ignored / max(pixels.sum(), 1))
        # binary masks of 0 and 255: the objects are the ignore value, never trained or scored
        # (warned of, not refused: a val split without objects and a 255 border looks alike)
        binary = (ignored and pixels[0] and pixels.sum() == pixels[0] + ignored
                  and self.ignore_index == IGNORE_INDEX and not self.reduce_zero_label)
        # Cityscapes' labelTrainIds (0..K-1) under reduce_zero_label: its first class not
        # scored, the others one off, and the value K of the last never there
        last = self.num_classes - 1
        shifted = self.reduce_zero_label and pixels[last] == 0
        if absent:
            logger.warning("data.%s: no mask holds %s; their IoU is n/a, or 0 where the model "
                           "predicts them. %d%% of the pixels are "
                           "%d (model.ignore_index, not scored)%s", split, ", ".join(absent),
                           share, self.ignore_index,
                           ". The masks hold 0 and 255 only: if 255 marks the objects (a "
                           "binary mask), write them as 1" if binary else
                           f". No mask holds the value {last + 1} (class {last} under "
                           f"data.reduce_zero_label): if the masks' classes are 0..{last} "
                           f"(Cityscapes' labelTrainIds, VOC's), set data.reduce_zero_label: "
                           f"false (a split of a few images may just lack that class)"
                           if shifted else "")
        if share > 50:  # VOC's masks under reduce_zero_label: its background left out
            logger.warning("data.%s: %d%% of the pixels are %d (model.ignore_index%s): the "
                           "model is neither trained on nor scored there%s", split, share,
                           self.ignore_index,
                           ", and the files' 0 under data.reduce_zero_label" if
                           self.reduce_zero_label else "",
                           ": if 0 is a class in your masks (VOC's background), set "
                           "data.reduce_zero_label: false and name it first" if
                           self.reduce_zero_label else "")

    def warn_of_objects_as_ignore(self, split: str, looked_at: int = 32) -> None:
        """Binary masks written 0 and 255 (the object as 255, the ignore value) train on the
        background alone, without an error: a look at up to `looked_at` mask files spread
        over the split (the val split's are all checked by `check_masks`)."""
        if self.ignore_index != IGNORE_INDEX or self.reduce_zero_label:
            return
        files = [r for r in self._records if "mask_file" in r]
        picked = sorted({round(i) for i in np.linspace(0, len(files) - 1,
                                                       min(looked_at, len(files)))})
        values: set[int] = set()
        for i in picked:
            size = image_size(files[i]["file_name"])
            if size is None:
                continue
            try:
                mask = self._checked_mask(files[i], size)
            except (DatasetError, UnreadableImageError):
                continue  # named when its batch is drawn
            values.update(np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist())
            if values - {0, IGNORE_INDEX}:
                return
        if values == {0, IGNORE_INDEX}:
            logger.warning("data.%s: the %d masks looked at hold 0 and %d only, and %d is "
                           "model.ignore_index: the model would learn the background alone. "
                           "If %d marks the objects (a binary mask), write them as 1", split,
                           len(picked), IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        """The sample of `key` (an index, augmented with the index as its seed, or (index,
        augmentation seed)); None if unreadable."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        try:
            image, mask, record = self.load(index)
        except UnreadableImageError as err:
            self.num_skipped += 1
            warn_of_unreadable(logger, str(err), self.said_unreadable)
            return None
        if seed is None:  # drawing one would move the training's torch generator
            seed = index
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        try:
            out = self.transform(image=image, mask=mask)
        except cv2.error as err:
            raise DatasetError(f"{record['file_name']} ({image.shape[1]}x{image.shape[0]}) "
                               f"cannot be augmented (OpenCV's {err.func}: {err.err})"
                               ) from None
        return {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
                "gt_sem_seg": torch.from_numpy(out["mask"].astype(np.int64)),
                "file_name": record["file_name"],
                "height": int(image.shape[0]), "width": int(image.shape[1])}


_AUTOMATIC_SAID: set[str] = set()  # (the datasets named whose colours are not kept: said once)


def resolve_palette(value: Any, num_classes: int | None) -> np.ndarray | None:
    """data.palette as (K, 3) uint8 RGB colours, index = class id (None: automatic colours).

    Args:
        value: a list of [r, g, b] (whole numbers 0..255), one per class, a .json file of
            that list, or a dataset's name (cityscapes, voc; ade20k: the automatic colours).
        num_classes: K (None: the count is not checked, e.g. before the data is read).

    Raises:
        FileNotFoundError / DatasetError / ConfigError: a missing or malformed file, a
            colour that is not three numbers 0..255, or not one colour per class.
    """
    if value is None:
        return None
    where = "data.palette"
    dataset = named_dataset(value)
    if dataset is not None:
        where, named = f"data.palette={value}", known_palette(dataset)
        if named is None and dataset not in _AUTOMATIC_SAID:
            _AUTOMATIC_SAID.add(dataset)
            logger.warning("%s: no colour table of %s is kept here: its classes take the "
                           "automatic colours (a list or JSON file of [r, g, b] colours gives "
                           "mmsegmentation's)", where, dataset)
        value = (palette(len(CLASS_NAMES[dataset])) if named is None else named).tolist()
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"data.palette file not found: {missing_path(path)} (or a "
                                    f"dataset's name: {', '.join(CLASS_NAMES)})")
        where = f"data.palette file {path}"
        try:
            value = json.loads(engine_data.read_user_text(path, "data.palette file"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{where}: not valid JSON ({err})") from None
    value = to_plain(value) if isinstance(value, ListConfig) else value
    if not isinstance(value, list) or not value or not all(
            isinstance(c, list) and len(c) == 3 and all(
                is_number(v) and 0 <= v <= 255 and float(v).is_integer() for v in c)
            for c in value):
        fractions = isinstance(value, list) and all(
            isinstance(c, list) and all(is_number(v) and 0 <= v <= 1 for v in c) for c in value)
        raise ConfigError(f"{where} must be a list of [r, g, b] colours, whole numbers 0..255, "
                          f"one per class, got {str(value)[:80]}"
                          + (" (colours as fractions 0..1: times 255)" if fractions else ""))
    if num_classes is not None and len(value) != num_classes:
        raise ConfigError(f"{where} has {len(value)} colours for the {num_classes} classes "
                          f"(one per class, index = class id)")
    return np.asarray(value, dtype=np.uint8).reshape(-1, 3)


def overlay_colours(value: Any, num_classes: int) -> np.ndarray:
    """The overlays' (K, 3) uint8 colours: data.palette's (`resolve_palette`), else
    automatic ones (engine.visualize.palette)."""
    colours = resolve_palette(value, num_classes)
    return palette(num_classes) if colours is None else colours


def resolve_class_names(cfg: Mapping[str, Any], coco_names: Sequence[str] | None = None
                        ) -> list[str]:
    """The K class names (index = class id, background included) of a config's data.

    `data.class_names` (a list, a .json / .yaml list, a text file with one name per line,
    or a dataset's name: cityscapes, ade20k, voc) wins;
    otherwise COCO data gives "background" + its category names, and folder data
    `class_0..` from `model.num_classes`.

    Args:
        cfg: the full config.
        coco_names: the names a COCO split gives (None for folder data).

    Raises:
        ValueError: nothing says how many classes there are, or two sources disagree.
    """
    names = cfg["data"]["class_names"]
    dataset = named_dataset(names)
    if dataset is not None:
        names = list(CLASS_NAMES[dataset])
    if isinstance(names, str):
        path = Path(names)
        if not path.is_file():
            raise FileNotFoundError(f"data.class_names file not found: {path} (or a "
                                    f"dataset's name: {', '.join(CLASS_NAMES)})")
        suffix = path.suffix.lower()
        if suffix in (".csv", ".tsv"):  # (its one line of names was one class)
            raise DatasetError(f"data.class_names file {path}: a .json or .yaml list of names, "
                               f"or a text file of one name per line (line k: class id k - 1), "
                               f"not a {suffix} file")
        text = engine_data.read_user_text(path, "data.class_names file")
        if suffix in (".json", ".yaml", ".yml"):
            kind = "JSON" if suffix == ".json" else "YAML"
            try:
                names = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as err:
                raise DatasetError(f"data.class_names file {path}: not valid {kind} ({err})"
                                   ) from None
            odd = [n for n in names if not (isinstance(n, str) and n)] \
                if isinstance(names, list) else []
            if not (isinstance(names, list) and names) or odd:
                quote = (f" ({odd[0]!r} is no name: YAML reads no, yes, on, off, null and "
                         f"numbers so; quote it)" if odd and kind == "YAML" else "")
                raise DatasetError(f"data.class_names file {path} must hold a {kind} list of "
                                   f"names, index = class id (e.g. [\"background\", \"cat\"]), "
                                   f"got {text.strip()[:80]!r}{quote}")
        else:
            names = [line.strip() for line in text.splitlines()]
            while names and not names[-1]:
                names.pop()
            if "" in names:  # dropping it would renumber every class after it
                raise DatasetError(f"data.class_names file {path}: line {names.index('') + 1} "
                                   "is empty; line k names class id k - 1")
    if coco_names is not None:
        if names is not None and len(names) != len(coco_names):
            raise ConfigError(f"data.class_names has {len(names)} names but the COCO file gives "
                              f"{len(coco_names)} classes (background + categories)")
        if names is not None and list(names) != list(coco_names):
            if sorted(map(str, names)) == sorted(map(str, coco_names)):
                raise ConfigError(f"data.class_names {brief(list(names))} names the COCO "
                                  f"file's classes in another order: class k is its k-th "
                                  f"(background, then the categories by id: "
                                  f"{brief(list(coco_names))}); leave data.class_names null "
                                  f"where every split is COCO, else write the file with the "
                                  f"classes' order (the converters' --classes)")
            warn_once(logger, f"data.class_names {brief(list(names))} replaces the COCO "
                              f"file's names {brief(list(coco_names))} (class k: background, "
                              f"then the categories by id)")
        names = list(names) if names is not None else list(coco_names)
    num_classes = cfg["model"]["num_classes"]
    if names is None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError("folder data needs data.class_names (or model.num_classes)")
        names = [f"class_{i}" for i in range(num_classes)]
    if num_classes is not None and num_classes != len(names):
        raise ConfigError(f"model.num_classes is {num_classes} but the data has {len(names)} "
                          f"classes: {list(names)[:MAX_LISTED]}")
    return [str(n) for n in names]


def prefer_command_line_sources(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Let a data source given on the command line replace the config file's other source.

    `data.<split>.ann_file=...` given as an override to a config whose file sets
    `data.<split>.mask_dir` (or the reverse) selects the given source and drops the other; a
    COCO source chosen this way also drops the file's `data.class_names` (the COCO categories
    name the classes) unless that key is given too. Each change is logged in one line.
    """
    given = {item.split("=", 1)[0].strip() for item in overrides}
    for split in ("train", "val"):
        s = cfg.data[split]
        chosen = [k for k in DATA_SOURCES if f"data.{split}.{k}" in given and s[k]]
        dropped = [k for k in DATA_SOURCES if k not in chosen and s[k]]
        if len(chosen) != 1 or not dropped:
            continue
        logger.warning("data.%s.%s given on the command line: using it instead of %s of the "
                       "config", split, chosen[0],
                       ", ".join(f"data.{split}.{k}={s[k]}" for k in dropped))
        for key in dropped:
            s[key] = None
        if chosen[0] == "ann_file" and cfg.data.class_names and "data.class_names" not in given:
            logger.warning("data.class_names=%s of the config dropped: the COCO categories of "
                           "data.%s.ann_file name the classes", cfg.data.class_names, split)
            cfg.data.class_names = None


def build_dataset(cfg: Mapping[str, Any], split: str, *, unlabelled: bool = False
                  ) -> SemSegDataset:
    """The `data.<split>` dataset ("train": augmented crops; other splits: whole images).

    Its `class_names` come from `resolve_class_names`. `unlabelled`: img_dir alone is a split
    too (images to predict, without labels; see `SemSegDataset.labelled`).

    Raises:
        ValueError: the split sets neither `ann_file` nor `mask_dir` (or both).
    """
    s = cfg["data"][split]
    if not s["img_dir"] or (s["ann_file"] and s["mask_dir"]) or not (
            s["ann_file"] or s["mask_dir"] or unlabelled):
        raise ConfigError(f"data.{split} needs img_dir and exactly one of ann_file (COCO) or "
                          f"mask_dir (class-id PNGs); got img_dir={s['img_dir']!r}, "
                          f"ann_file={s['ann_file']!r}, mask_dir={s['mask_dir']!r}"
                          + ("" if split == "train" else " (images without labels: tools/"
                            "eval.py --save-predictions predicts them)"))
    if split == "train":  # before the data is read
        crop_size = (None if s["crop_size"] is None
                     else check_sizes(s["crop_size"], "data.train.crop_size", 2))
        hflip_prob = check_probability(s["hflip_prob"], "data.train.hflip_prob")
        scale = list(s["scale_range"])
        if (len(scale) != 2 or not all(isinstance(v, (int, float)) for v in scale)
                or not 0 < scale[0] <= scale[1] < math.inf):
            raise ConfigError(f"data.train.scale_range must be two finite numbers 0 < min <= "
                              f"max, got {scale}")
        fit_size = (None if s["fit_size"] is None
                    else check_sizes(s["fit_size"], "data.train.fit_size", 2))
        if fit_size is not None and fit_size[0] < fit_size[1]:
            raise ConfigError(f"data.train.fit_size is [long side, short side], got "
                              f"{list(fit_size)}: [{fit_size[1]}, {fit_size[0]}]?")
    coco_names = None
    if s["ann_file"]:
        records, coco_names = load_coco_semantic(s["ann_file"], s["img_dir"])
    else:
        examples = {"img_suffix": "'.jpg', '_leftImg8bit.png'",
                    "mask_suffix": "'.png', '_gtFine_labelTrainIds.png'"}
        for key in examples if s["mask_dir"] else ["img_suffix"]:
            if not isinstance(s[key], str) or not s[key]:
                raise ConfigError(f"data.{split}.{key} must be one file-name ending (e.g. "
                                  f"{examples[key]}), got "
                                  + ("null (an empty value is null)" if s[key] is None
                                     else repr(s[key])))
        if s["mask_dir"] and s["mask_suffix"].lower().endswith((".jpg", ".jpeg")):
            raise ConfigError(f"data.{split}.mask_suffix is {s['mask_suffix']!r}: JPEG's lossy "
                              "compression changes class ids along every edge; masks must be "
                              "PNGs (palette or grayscale)")
        records = scan_folder(s["img_dir"], s["mask_dir"] or None, img_suffix=s["img_suffix"],
                              mask_suffix=s["mask_suffix"], split_file=s["split_file"], split=split)
    ignore_index = cfg["model"]["ignore_index"]
    reduce_zero_label = cfg["data"]["reduce_zero_label"]
    if reduce_zero_label and s["ann_file"]:
        raise ConfigError(f"data.reduce_zero_label is for mask files whose 0 means unlabelled; "
                          f"data.{split}.ann_file is a COCO file, whose masks this project "
                          f"makes (0 = background, a class)")
    if reduce_zero_label and ignore_index != IGNORE_INDEX:
        raise ConfigError(f"data.reduce_zero_label maps 0 to the ignore value {IGNORE_INDEX} "
                          f"and keeps {IGNORE_INDEX}, as mmsegmentation does: "
                          f"model.ignore_index must be {IGNORE_INDEX}, got {ignore_index!r}")
    if split == "train":
        transform = build_transform(crop_size=crop_size, scale_range=s["scale_range"],
                                    fit_size=fit_size, hflip_prob=hflip_prob,
                                    ignore_index=ignore_index)
    else:
        transform = build_transform()
    dataset = SemSegDataset(records, transform=transform, ignore_index=ignore_index,
                            class_names=resolve_class_names(cfg, coco_names),
                            reduce_zero_label=reduce_zero_label)
    dataset.coco_names = coco_names  # (data.class_names may rename them)
    first = dataset.class_names[0]
    if reduce_zero_label and split == "train" and first.strip().lower() in UNLABELLED_NAMES:
        logger.warning("data.class_names[0] is %r, but under data.reduce_zero_label the files' "
                       "0 is unlabelled and class 0 is the files' 1: name the classes of the "
                       "values 1..K only (ADE20K: without 'other'), or every name is one "
                       "class off", first)
    elif (not reduce_zero_label and split == "train" and not s["ann_file"]
          and first.strip().lower() in UNLABELLED_NAMES
          and (cfg["model"].get("class_weight") or [1])[0] != 0):  # (weight 0: not trained)
        logger.warning("data.class_names[0] is %r: the files' 0 is trained on and scored as a "
                       "class (in the mIoU); if 0 marks unlabelled pixels (ADE20K's 'other'), "
                       "set data.reduce_zero_label: true (0 is then neither trained on nor "
                       "scored) and name the classes of the values 1..K alone", first)
    return dataset


def warn_of_an_ignored_class(class_names: Sequence[str], ignore_index: int) -> None:
    """model.ignore_index set to a class's id (a wrong key, 3 for 255): the class is neither
    trained nor scored, and the mIoU is the other classes' (ADE20K's "other" as 0 is so on
    purpose)."""
    if ignore_index < len(class_names):
        logger.warning("model.ignore_index=%d is the id of the class %r (data.class_names): its "
                       "pixels are neither trained on nor scored, its IoU is n/a, and the mIoU "
                       "is the other %d classes'; where %d is not the masks' unlabelled value, "
                       "set model.ignore_index to that (255 in VOC's and Cityscapes' trainId "
                       "masks)", ignore_index, class_names[ignore_index], len(class_names) - 1,
                       ignore_index)


def check_same_classes(train: SemSegDataset, val: SemSegDataset, cfg: Mapping[str, Any]
                       ) -> None:
    """Class k of the val data must be class k of the training data: two COCO files give
    the same categories, other data as many classes (DatasetError before training)."""
    files = cfg["data"]["train"]["ann_file"], cfg["data"]["val"]["ann_file"]
    if train.coco_names is not None and val.coco_names is not None:
        if train.coco_names != val.coco_names:
            brief = engine_data.brief
            raise DatasetError(
                f"{files[1]} gives the classes {brief(val.coco_names)}, the training file "
                f"({files[0]}) {brief(train.coco_names)} (background, then the categories by "
                f"id): class ids would mean other classes; give both files the same "
                f"categories")
    elif len(train.class_names) != len(val.class_names):
        raise DatasetError(f"the val data has {len(val.class_names)} classes, the training data "
                           f"{len(train.class_names)}: class ids would mean other classes")


def build_train_loader(cfg: Mapping[str, Any], *, start_iter: int = 0) -> DataLoader:
    """Endless loader of this process's share of `train.batch_size`, resumable at a step.

    Args:
        cfg: the full config.
        start_iter: steps already done.
    """
    batch_size = per_process_batch_size(cfg["train"]["batch_size"], "train.batch_size")
    return engine_data.build_train_loader(
        build_dataset(cfg, "train"), batch_size=batch_size, seed=cfg["train"]["seed"],
        num_workers=cfg["data"]["num_workers"], start_iter=start_iter)


def build_test_loader(cfg: Mapping[str, Any], split: str = "val", *,
                      unlabelled: bool = False) -> DataLoader:
    """Each image of `data.<split>` once over all processes, one whole image per batch
    (`unlabelled`: as in `build_dataset`)."""
    return engine_data.build_test_loader(build_dataset(cfg, split, unlabelled=unlabelled),
                                         num_workers=cfg["data"]["num_workers"])
