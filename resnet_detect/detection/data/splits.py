"""The detection splits as configured (`data.train`, `data.val`): the annotation files loaded
and checked (errors name the file and entry) into datasets, before any model is built."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from omegaconf import DictConfig, ListConfig

from resnet_detect.engine.config import (ConfigError, as_override, check_probability, check_sizes,
                                         is_number, is_positive_int, parse_bool)
from resnet_detect.engine.data.coco import chosen_categories, only_categories
from resnet_detect.engine.data import (CategoryMapping, DatasetError, brief,
                                       check_image_sizes, load_coco_json, repeat_factors)

from ..config import check_max_size, test_resize
from ..federated import check_lvis_file, is_federated
from .dataset import DetectionDataset, check_mask_format
from .transforms import build_transforms

logger = logging.getLogger(__name__)


@dataclass
class Datasets:
    """The training and validation sets and the category mapping they share."""

    train: DetectionDataset
    val: DetectionDataset | None
    mapping: CategoryMapping


def _split_paths(cfg: DictConfig, split: str) -> tuple[str, str] | None:
    s = cfg.data[split]
    if not s.ann_file and not s.img_dir:
        return None
    if not s.ann_file or not s.img_dir:
        unset = (" (both null: no evaluations during training)" if split == "val" else "")
        raise ConfigError(f"data.{split} needs both ann_file and img_dir, got ann_file="
                          f"{s.ann_file!r}, img_dir={s.img_dir!r}{unset}")
    return str(s.ann_file), str(s.img_dir)


def chosen_classes(cfg: DictConfig) -> list[str] | None:
    """data.classes, checked: null, or category names to train and score on."""
    classes = cfg.data.get("classes")
    if classes is None:
        return None
    names = list(classes) if isinstance(classes, (list, ListConfig)) else None
    if not names or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise ConfigError(f"data.classes must be null or a list of category names (each "
                          f"once), e.g. [person, car], got {classes!r}")
    return names


def classes_subset(cfg: DictConfig, data: dict[str, Any], ann_file: Any,
                   results: list[dict[str, Any]] | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """A val file's content (and results) with data.classes' categories alone, for the
    tools that read the file themselves (--results, --confusion-matrix, --error-analysis,
    tools/analyze_results.py); unchanged without data.classes."""
    ids = chosen_category_ids(cfg, data, ann_file)
    if ids is None:
        return data, results
    return only_categories(data, ids), (None if results is None else
                                        [r for r in results if r["category_id"] in ids])


def chosen_category_ids(cfg: DictConfig, data: dict[str, Any], ann_file: Any
                        ) -> set[int] | None:
    """The ids of the file's categories that data.classes keeps; None without it."""
    classes = chosen_classes(cfg)
    if classes is None:
        return None
    _refuse_classes_with_lvis(classes, lists=False)(data, ann_file)
    return {c["id"] for c in chosen_categories(data["categories"], classes, ann_file)}


def _refuse_classes_with_lvis(classes: list[str] | None, *, lists: bool = True
                              ) -> Callable[[dict[str, Any], Any], None]:
    """A file's check: data.classes refused in an LVIS file (an LVIS training file has no
    image lists: its categories' frequencies tell it), and with `lists`, a val file's LVIS
    lists and frequencies (check_lvis_file)."""
    def check(data: dict[str, Any], ann_file: Any) -> None:
        if lists:
            check_lvis_file(data, ann_file)
        lvis = is_federated(data) or any("frequency" in c for c in data["categories"])
        if classes is not None and lvis:
            raise ConfigError(f"data.classes is not for LVIS files ({ann_file}): their "
                              f"federated AP needs every category's image lists")
    return check


def _load(paths: tuple[str, str], split: str, **options: Any) -> Any:
    """load_coco_json of a split, a missing file named by its key."""
    try:
        return load_coco_json(*paths, **options)
    except FileNotFoundError as err:  # load_coco_json's only one: the annotation file
        raise FileNotFoundError(f"data.{split}.ann_file: {err}") from None


class ValSplit(NamedTuple):
    """The validation set at test-time size, its category mapping, its JSON path and whether
    the file has objects to score against (COCO's test-dev image info has none)."""

    dataset: DetectionDataset
    mapping: CategoryMapping
    ann_file: str
    annotated: bool


def build_val_dataset(cfg: DictConfig, with_masks: bool = False,
                      resize: bool = True) -> ValSplit | None:
    """The validation split (None where data.val is not set). Every image's size (by its
    header) and, for Mask R-CNN, every object's segmentation are checked, so a wrong one stops
    the run before training, not at the evaluation after it; objects without a segmentation
    are left to the evaluation (ignored in segm). `with_masks`: samples hold gt_masks too
    (Mask R-CNN configs; zero for those objects; the evaluation reads the JSON instead).
    `resize`: False keeps each image's size (for test-time augmentation)."""
    paths = _split_paths(cfg, "val")
    if paths is None:
        return None
    classes = chosen_classes(cfg)
    records, mapping, stats = _load(paths, "val", keep_segmentation=bool(cfg.model.mask_on),
                                    evaluation=True, check=_refuse_classes_with_lvis(classes),
                                    classes=classes)
    if not records:  # (scored, it gave AP 0 or "nothing scored", exit 0)
        raise DatasetError(f"{paths[0]} lists no images: nothing to evaluate (a training "
                           f"without evaluations: data.val.ann_file=null "
                           f"data.val.img_dir=null)")
    check_image_sizes(records, paths[0])
    min_size, max_size = test_resize(cfg)
    transform = build_transforms(min_size=min_size if resize else None, max_size=max_size,
                                 flip_prob=0.0)
    dataset = DetectionDataset(records, transform=transform,
                               with_masks=with_masks and bool(cfg.model.mask_on))
    # (objects of other categories than data.classes' make it a file to score: AP n/a)
    return ValSplit(dataset, mapping, paths[0],
                    annotated=stats.annotations + stats.other_classes > 0)


def _warn_of_a_training_scale_far_from_the_tests(cfg: DictConfig) -> None:
    """data.train.min_size=32 (taken for mmdetection's filter of small images, which has no
    key here) trained at a 32 px short edge, tested at 320, without a word."""
    sizes = cfg.data.train.min_size
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    tested = test_resize(cfg)[0]
    if max(sizes) * 2 <= tested or min(sizes) >= tested * 2:
        logger.warning("data.train.min_size=%s (the short edge training images are resized to; "
                       "not a filter of small images: there is none) is far from "
                       "data.val.min_size=%d: the model trains at another scale than it is "
                       "tested at", as_override(cfg.data.train.min_size), tested)


def train_settings(cfg: DictConfig) -> tuple[bool, float, tuple[int, list[float]] | None,
                                             float | None]:
    """data.train's augmentation and sampling keys, checked before the file is read (and by
    --print-config): (scale_per_batch, the flip probability, `large_scale_jitter`, the
    repeat threshold)."""
    d = cfg.data.train
    scale_per_batch = parse_bool(d.scale_per_batch, "data.train.scale_per_batch")
    flip_prob = check_probability(d.hflip_prob, "data.train.hflip_prob")
    check_sizes(d.min_size, "data.train.min_size")
    check_max_size(d.max_size, "data.train.max_size")
    jitter = large_scale_jitter(d)
    threshold = d.repeat_threshold
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(
            threshold, (int, float)) or not 0 < threshold <= 1):
        raise ConfigError(f"data.train.repeat_threshold must be a fraction of the images in "
                          f"(0, 1] (0.001 for LVIS) or null, got {threshold!r}")
    check_mask_format(d.mask_format)
    return scale_per_batch, flip_prob, jitter, threshold


def build_train_dataset(cfg: DictConfig) -> tuple[DetectionDataset, CategoryMapping, str]:
    """The training set with its augmentation, its category mapping and its JSON path (the
    images the training will see: those without objects dropped with data.train.filter_empty).

    Raises:
        ValueError: the split is not set, or it holds no usable box.
    """
    paths = _split_paths(cfg, "train")
    if paths is None:
        raise ConfigError("data.train.ann_file and data.train.img_dir must be set")
    d = cfg.data.train
    scale_per_batch, flip_prob, jitter, threshold = train_settings(cfg)
    if jitter and scale_per_batch:
        logger.warning("data.train.scale_per_batch (one min_size drawn per batch) is not used "
                       "with data.train.jitter_size: each image draws its own factor; set "
                       "data.train.scale_per_batch=false to say so")
        scale_per_batch = False
    if not jitter:
        _warn_of_a_training_scale_far_from_the_tests(cfg)
    mask_on = bool(cfg.model.mask_on)
    classes = chosen_classes(cfg)
    records, mapping, stats = _load(paths, "train", filter_empty=d.filter_empty,
                                    keep_segmentation=mask_on, training=True, classes=classes,
                                    check=_refuse_classes_with_lvis(classes, lists=False))
    if not records or stats.boxes == 0:
        masks = (f", {stats.no_mask} without a usable polygon or RLE, which model.mask_on needs"
                 if stats.no_mask else "")
        others = (f", {stats.other_classes} objects of the categories data.classes leaves out"
                  if stats.other_classes else "")
        raise DatasetError(f"{paths[0]}: no usable object in its {stats.images} images (left "
                           f"out {stats.crowd} crowd and {stats.degenerate} degenerate boxes"
                           f"{masks}{others}; filter_empty={d.filter_empty}): a detector "
                           f"cannot learn from it")
    warn_of_mis_sized_images(records, paths[0])
    warn_of_upscaled_images(records, d)
    min_size = d.min_size if isinstance(d.min_size, int) else list(d.min_size)
    try:
        train = DetectionDataset(records, with_masks=mask_on, scale_per_batch=scale_per_batch,
                                 mask_format=d.mask_format,
                                 aligned_masks=bool(cfg.model.roi_heads.pooler_aligned),
                                 transform=build_transforms(min_size=min_size,
                                                            max_size=d.max_size,
                                                            flip_prob=flip_prob, jitter=jitter))
    except DatasetError as err:  # (its records' objects: named by their file first)
        raise DatasetError(f"{paths[0]}: {err}") from None
    if threshold is not None:
        train.repeat_factors = repeat_factors([r["classes"] for r in records], threshold)
    del records  # packed in `train`; its Python objects (GBs for COCO's polygons) go now
    return train, mapping, paths[0]


def large_scale_jitter(train: DictConfig) -> tuple[int, list[float]] | None:
    """(data.train.jitter_size, jitter_scale), checked; None where jitter_size is null."""
    if train.jitter_size is None:
        return None
    size = train.jitter_size
    if not is_positive_int(size):
        raise ConfigError(f"data.train.jitter_size must be a positive integer (pixels: the "
                          f"square's side; detectron2's LSJ: 1024), got {as_override(size)}")
    scale = train.jitter_scale
    if not (isinstance(scale, (list, tuple, ListConfig)) and len(scale) == 2
            and all(is_number(v) for v in scale) and 0 < scale[0] <= scale[1] < math.inf):
        raise ConfigError(f"data.train.jitter_scale must be [lowest, highest], two factors with "
                          f"0 < lowest <= highest (detectron2's LSJ: [0.1, 2.0]), got "
                          f"{as_override(scale)}")
    return size, [float(v) for v in scale]


SIZE_SAMPLE = 200  # training images whose headers are read at the start


def warn_of_mis_sized_images(records: list[dict[str, Any]], ann_file: str) -> None:
    """A training image whose size is not its entry's is skipped at every read: where a
    sample of them (fixed: the same file, the same sample) finds one, every image is checked
    and the mis-sized ones listed up front (photos whose EXIF turns them, written with their
    stored size: a share of a phone's pictures), not one warning per read through the run. A
    full check at every start would read COCO's 118k headers."""
    sample = np.random.default_rng(0).permutation(len(records))[:SIZE_SAMPLE]
    try:
        check_image_sizes([records[i] for i in sample], ann_file)
    except DatasetError:
        try:
            check_image_sizes(records, ann_file)
        except DatasetError as found:
            logger.warning("%s (in training, skipped at every read)", found)


def warn_of_upscaled_images(records: list[dict[str, Any]], train: DictConfig) -> None:
    """data.train.min_size far above the images' own size (COCO's 640..800 kept for 256-pixel
    pictures): each is enlarged 3x, its compute 9x, without a word."""
    if not records or train.jitter_size is not None:
        return
    shortest = min([train.min_size] if isinstance(train.min_size, int) else train.min_size)
    own = float(np.median([min(r["height"], r["width"]) for r in records]))
    if shortest >= 2 * own:
        logger.warning("data.train.min_size=%s enlarges the training images (a median short "
                       "side of %d pixels) %.1fx or more, and the compute with its square; for "
                       "images of that size set data.train.min_size near it (and "
                       "data.val.min_size alike)", as_override(train.min_size), own,
                       shortest / own)


def category_differences(train: CategoryMapping, val: CategoryMapping) -> str:
    """What differs between the training and the val categories, by name: the classes one
    file lacks, names under other ids, ids that name other classes."""
    pairs = [set(zip(m.names, m.dataset_ids)) for m in (train, val)]
    only = [pairs[0] - pairs[1], pairs[1] - pairs[0]]  # (name, id) in training / val alone
    names = [{n for n, _ in o} for o in only]
    ids = [{i for _, i in o} for o in only]
    def one(values: list[Any]) -> str:  # a value alone, or the list of several
        return str(values[0]) if len(values) == 1 else str(values)

    parts = []
    moved = sorted(names[0] & names[1])
    if moved:
        parts.append("other ids " + brief([
            f"{n}: {one(sorted(i for m, i in only[0] if m == n))} in training, "
            f"{one(sorted(i for m, i in only[1] if m == n))} in val" for n in moved]))
    renamed = sorted((ids[0] & ids[1]) - {i for n, i in only[0] | only[1] if n in moved})
    if renamed:
        parts.append("ids naming other classes " + brief([
            f"{i}: {one(sorted(n for n, j in only[0] if j == i))} in training, "
            f"{one(sorted(n for n, j in only[1] if j == i))} in val" for i in renamed]))
    for k, which in ((0, "val"), (1, "training")):
        lacking = sorted((i, n) for n, i in only[k] if n not in moved and i not in renamed)
        if lacking:
            parts.append(f"the {which} file lacks {brief([f'{n} (id {i})' for i, n in lacking])}")
    if not parts:  # the same (name, id) pairs, some given twice
        parts.append(f"training {brief(list(zip(train.dataset_ids, train.names)))}, val "
                     f"{brief(list(zip(val.dataset_ids, val.names)))}")
    return "; ".join(parts)


def build_datasets(cfg: DictConfig) -> Datasets:
    """Load and check both splits (errors name the file and entry) before any training.

    Raises:
        ValueError: a split is not set; DatasetError: the val categories (ids or names)
            differ from the training ones, or the val file has no annotations.
    """
    train, mapping, train_file = build_train_dataset(cfg)
    val = build_val_dataset(cfg)
    if val is not None and (val.mapping.dataset_ids, val.mapping.names) != (
            mapping.dataset_ids, mapping.names):
        raise DatasetError(f"{val.ann_file}: its categories are not the training file's "
                           f"({train_file}): {category_differences(mapping, val.mapping)}; "
                           f"give both files the same categories (the converters' "
                           f"--classes-from TRAIN.json does)")
    if val is not None and not val.annotated:
        raise DatasetError(f"{val.ann_file} has no annotations to score the training's "
                           "evaluations against: give an annotated val file, or leave data.val "
                           "unset (tools/eval.py writes the detections of such a file)")
    return Datasets(train=train, val=val.dataset if val else None, mapping=mapping)
