"""Where masks come from: folder trees of class-id PNGs, or COCO instances drawn on the fly.

A record describes one image before decoding:
    folder data: {"file_name": image path, "mask_file": mask path}
    COCO data:   {"file_name", "height", "width", "objects": [(class 1..K, segmentation)],
                  "crowd": [segmentation]}

Folder data: the mask of `img_dir/NAME + img_suffix` is `mask_dir/NAME + mask_suffix`, NAME
a relative path, so the VOC tree (JPEGImages, SegmentationClass, `split_file`
ImageSets/Segmentation/train.txt) and the Cityscapes tree (`img_suffix: _leftImg8bit.png`,
`mask_suffix: _gtFine_labelTrainIds.png`) both work. Masks are single-channel PNGs (palette
indices or gray values, read with PIL: OpenCV would turn a palette into colours).

COCO data: categories, sorted by id, become classes 1..K and 0 is background; instances are
painted in file order (a later one wins where they overlap); crowd regions become 255 where
no non-crowd instance lies. Polygons with fewer than three points and annotations without a
segmentation are left out and counted.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from resnet_detect.engine.data import (IMAGE_SUFFIXES, CategoryMapping, DatasetError,
                                       UnreadableImageError, check_segmentation, files_under,
                                       listing, read_coco_json, box_polygon, read_user_text,
                                       refuse_normalised_polygons, segmentation_to_mask)
from resnet_detect.engine.data.coco import MAX_LISTED, image_path, is_federated
from resnet_detect.engine.files import atomic_write, missing_path, unicode_twin_hint

logger = logging.getLogger(__name__)
IGNORE_INDEX = 255
TRAIN_IDS = "_gtFine_labelTrainIds.png"
# Cityscapes' other gtFine files, none a map of its 19 training classes
CITYSCAPES_OTHER_MASKS = {"_gtFine_color": "colours", "_gtFine_instanceIds": "instance ids",
                          "_gtFine_labelIds": "its 34 label ids"}
__all__ = ["IGNORE_INDEX", "MAX_LISTED", "coco_semantic_mask", "load_coco_semantic",
           "read_mask", "scan_folder", "write_label_map"]


def scan_folder(img_dir: str | os.PathLike, mask_dir: str | os.PathLike | None, *,
                img_suffix: str = ".jpg", mask_suffix: str = ".png",
                split_file: str | os.PathLike | None = None,
                split: str | None = None) -> list[dict[str, str]]:
    """Pair each image `img_dir/NAME + img_suffix` with its mask `mask_dir/NAME + mask_suffix`.

    Args:
        img_dir: image folder (searched recursively unless `split_file` is given).
        mask_dir: mask folder with the same tree; None: images without labels (records
            {"file_name"} alone: a test set to predict).
        img_suffix: end of image file names (".jpg", "_leftImg8bit.png").
        mask_suffix: end of mask file names (".png", "_gtFine_labelTrainIds.png").
        split_file: text file with one NAME per line (VOC ImageSets); None takes all images.
        split: the config's split ("train", "val") the folders are of, for the messages.

    Returns:
        Records {"file_name", "mask_file"} sorted by NAME.

    Raises:
        FileNotFoundError: a folder or the split file does not exist.
        DatasetError: no images, listed images missing, or images without a mask (listed).
    """
    img_dir = Path(img_dir)
    suffix_key = f"data.{split or '<split>'}.img_suffix"
    mask_key = f"data.{split or '<split>'}.mask_suffix"
    split = f" (data.{split})" if split else ""
    for folder, what in ((img_dir, "image"), (mask_dir, "mask")):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{what} folder not found: {missing_path(folder)}{split}")
    if split_file is not None:
        split_file = Path(split_file)
        if not split_file.is_file():
            raise FileNotFoundError(f"split file not found: {missing_path(split_file)}{split}")
        lines = read_user_text(split_file, "split file").splitlines()
        names = [_without_suffix(line.strip(), img_dir, img_suffix) for line in lines
                 if line.strip()]
        repeated = [(name, count) for name, count in Counter(names).items() if count > 1]
        if repeated:  # (mmsegmentation's list reader keeps each line: an oversampling there)
            shown = ", ".join(f"{name!r} {count} times" for name, count in repeated[:5])
            logger.warning("%s%s lists images more than once, %d of them (%s%s): each is used "
                           "once", split_file, split, len(repeated), shown,
                           ", ..." if len(repeated) > 5 else "")
        files = _named_in_any_case(img_dir, names, img_suffix)
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            suffixed = [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
            paired = [n for n in names  # DeepLab's "image mask" lists
                      if len(n.split()) == 2 and all(Path(t).suffix.lower() in IMAGE_SUFFIXES
                                                     for t in n.split())]
            hint = (f" (one image name per line, as VOC's ImageSets/Segmentation/train.txt: "
                    f"{paired[0]!r} holds two paths, DeepLab's list format; list each image's "
                    f"path under img_dir without its suffix)" if paired else
                    f" (names are listed without their suffix, img_suffix {img_suffix!r} "
                    f"added: {suffixed[0]!r} looks for {suffixed[0] + img_suffix!r})"
                    if suffixed else "")
            raise DatasetError(f"{split_file}: {len(missing)} listed images not found{hint}:"
                               + listing(missing))
    else:
        one_folder = mask_dir is not None and Path(mask_dir).resolve() == img_dir.resolve()
        files = _images_named(img_dir, img_suffix, masks=mask_suffix if one_folder else None,
                              suffix_key=suffix_key)
        stem = mask_suffix[:len(mask_suffix) - len(img_suffix)]
        if one_folder and stem and mask_suffix.lower().endswith(img_suffix.lower()):
            # images and masks in one folder (x.png beside x_mask.png): an image's mask is
            # no image (gas_mask.png without a gas.png is one)
            files = {n: f for n, f in files.items()
                     if not (n.lower().endswith(stem.lower()) and n[:len(n) - len(stem)] in files)}
    if not files:
        raise DatasetError(f"no images named *{img_suffix} in {img_dir}"
                           + (f" (split file {split_file})" if split_file else ""))
    if mask_dir is None:
        return [{"file_name": str(files[n])} for n in sorted(files)]
    mask_dir = Path(mask_dir)
    masks = _named_in_any_case(mask_dir, files, mask_suffix)
    records = [{"file_name": str(files[n]), "mask_file": str(masks[n])} for n in sorted(files)]
    # (each image its own mask: trained and scored; one folder and suffix for all: the first
    # tells, however the folders were written, ./a or a)
    if Path(records[0]["file_name"]).resolve() == Path(records[0]["mask_file"]).resolve():
        raise DatasetError(f"the images of {img_dir} are their own masks (img_suffix "
                           f"{img_suffix!r} = mask_suffix {mask_suffix!r} in one folder): "
                           f"img_dir names the photos' folder, mask_dir the class-id PNGs'")
    missing = [r for r in records if not Path(r["mask_file"]).is_file()]
    if missing:
        naming = (f"image name with {img_suffix!r} replaced by {mask_suffix!r}"
                  if img_suffix != mask_suffix else "image name")
        hint = _other_suffix(missing[0], mask_suffix, mask_key)
        raise DatasetError(f"{len(missing)} of {len(records)} images in {img_dir} have no mask "
                           f"in {mask_dir} (mask name = {naming}){hint}:" + listing(
                               [f"{r['file_name']} (expected {r['mask_file']})"
                                for r in missing]))
    return records


def _other_suffix(record: dict[str, str], mask_suffix: str, mask_key: str) -> str:
    """Where a missing mask's folder holds a file of its name with another suffix (JPEG
    masks, or masks named _mask.png): a hint naming it; else "". (1.jpg's mask 1.png is
    missing beside 10.png: no hint.)"""
    expected = Path(record["mask_file"])
    stem = expected.name[:len(expected.name) - len(mask_suffix)]
    try:
        found = sorted(f.name for f in expected.parent.iterdir()
                       if f.name.startswith(stem) and f.name[len(stem):][:1] in ("_", "-", ".")
                       and f.name != expected.name and f.is_file())
    except OSError:
        return ""
    if not found:
        return ""
    train_ids = [name for name in found if name.endswith(TRAIN_IDS)]
    if train_ids:  # (Cityscapes' color.png sorts first)
        return (f"; {expected.parent} holds {train_ids[0]}: set {mask_key}={TRAIN_IDS} "
                f"(Cityscapes' 19 training classes)")
    return (f"; {expected.parent} holds {', '.join(found[:4])}: the masks' suffix is "
            f"{mask_key} ({mask_suffix!r} now){cityscapes_hint(found[0])}")


def cityscapes_hint(mask_file: str | os.PathLike) -> str:
    """Where `mask_file` is one of Cityscapes' gtFine files that are no class map of its
    training classes: which one to train on; else ""."""
    name = Path(mask_file).name
    for part, holds in CITYSCAPES_OTHER_MASKS.items():
        if part in name:
            return (f"; Cityscapes' *{part}.png hold {holds}: train on *{TRAIN_IDS} "
                    f"(data.<split>.mask_suffix; cityscapesscripts' csCreateTrainIdLabelImgs "
                    f"writes them)")
    return ""


def _named_in_any_case(folder: Path, names: Iterable[str], suffix: str) -> dict[str, Path]:
    """{NAME: folder/NAME + suffix}, or the file of that name whose suffix is in another case
    (x.JPG for .jpg, as a folder scan takes it) where that one is not there."""
    files = {n: folder / (n + suffix) for n in names}
    if folder.is_dir() and not all(f.is_file() for f in files.values()):
        other_case = _images_named(folder, suffix, warn=False)
        files = {n: f if f.is_file() else other_case.get(n, f) for n, f in files.items()}
    return files


def _without_suffix(name: str, img_dir: Path, img_suffix: str) -> str:
    """A split file's NAME, or a name written with its image suffix (`x.jpg` or `x.JPG` for
    `x`)."""
    if (name.lower().endswith(img_suffix.lower())
            and not (img_dir / (name + img_suffix)).is_file()):
        return name[:len(name) - len(img_suffix)]
    return name


def _images_named(img_dir: Path, img_suffix: str, *, warn: bool = True,
                  masks: str | None = None,
                  suffix_key: str = "data.<split>.img_suffix") -> dict[str, Path]:
    """{NAME: file} of the files under `img_dir` named NAME + `img_suffix`, the suffix in any
    case (.jpg and .JPG); the other image files there are left out (with a warning naming
    `suffix_key`, but for those ending with `masks`: the masks of a folder of both)."""
    suffix = img_suffix.lower()
    files, others, twins = {}, [], []
    for p in files_under(img_dir):
        if not p.is_file():  # a broken link
            continue
        relative = str(p.relative_to(img_dir))
        if relative.lower().endswith(suffix):
            name = relative[: len(relative) - len(suffix)]
            if name in files:  # x.jpg beside x.JPG: one would be dropped without a word
                twins.append(f"{files[name].name} and {p.name} in {p.parent}")
            files[name] = p
        elif p.suffix.lower() in IMAGE_SUFFIXES and not (
                masks and relative.lower().endswith(masks.lower())):
            others.append(relative)
    if twins:
        raise DatasetError(f"{img_dir}: {len(twins)} name{'s are' if len(twins) > 1 else ' is'} "
                           f"given twice, their endings "
                           f"{img_suffix!r} differing in case alone (one image, mask or "
                           f"prediction name each): rename or remove one of each:"
                           + listing(twins))
    if others and warn:
        endings = Counter(Path(name).suffix for name in others)
        (common, _), = endings.most_common(1)
        logger.warning("%s: %d image files do not end with %r and are left out (a split "
                       "reads the images of one ending, %s: convert these to it to use "
                       "them%s): %s", img_dir, len(others), img_suffix, suffix_key,
                       f", or read them: {suffix_key}={common}, the ending of "
                       f"{endings[common]} files against {len(files)}"
                       if endings[common] > len(files) else "", ", ".join(others[:MAX_LISTED]))
    return files


def load_coco_semantic(ann_file: str | os.PathLike, img_dir: str | os.PathLike
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """COCO instances -> records from which `SemSegDataset` draws semantic masks.

    Args:
        ann_file: COCO instances JSON (checked by `engine.data.read_coco_json`).
        img_dir: folder the `file_name` entries are relative to.

    Returns:
        (records {"file_name", "height", "width", "objects": [(class 1..K, segmentation)],
        "crowd": [segmentation]}: without "objects" and "crowd" where the file has no
        annotations at all (COCO's test-dev image info), class names ["background", category
        names by id]).

    Raises:
        DatasetError: invalid JSON content, missing image files or malformed segmentations
            (listed).
    """
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    data = read_coco_json(ann_file, annotations_optional=True)
    if is_federated(data) or any("frequency" in c for c in data["categories"]):
        logger.warning("%s is an LVIS file: a category is annotated only on the images checked "
                       "for it (LVIS's federated design), so its objects elsewhere are "
                       "background pixels here, in training and in the mIoU", ann_file)
    if not img_dir.is_dir():
        raise DatasetError(f"image folder not found: {missing_path(img_dir)} (for {ann_file})")
    paths = [image_path(img_dir, im["file_name"]) for im in data["images"]]
    missing = [f"{path}{unicode_twin_hint(path)}" for path in paths if not path.is_file()]
    if missing:
        raise DatasetError(f"{ann_file}: {len(missing)} image files not found:"
                           + listing(missing))
    refuse_normalised_polygons(data, ann_file)
    mapping = CategoryMapping.from_categories(data["categories"])
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    records, no_segmentation, boxed, short_polygons, problems = [], 0, 0, 0, []
    for im, path in zip(data["images"], paths):
        objects, crowd = [], []
        for ann in by_image[im["id"]]:
            segmentation = None
            if ann.get("segmentation") is not None:
                try:
                    segmentation, dropped = check_segmentation(ann["segmentation"],
                                                               im["height"], im["width"])
                except (TypeError, ValueError) as err:
                    problems.append(f"annotation id={ann['id']} (image id={im['id']}, "
                                    f"{im['file_name']}): {err}")
                    continue
                short_polygons += dropped
            if not segmentation:  # an object whose pixels are unknown: its box not scored
                box = box_polygon(ann.get("bbox"), width=im["width"], height=im["height"])
                if box is None:
                    no_segmentation += 1
                else:
                    boxed += 1
                    crowd.append([box])
                continue
            if ann.get("iscrowd", 0):
                crowd.append(segmentation)
            else:
                objects.append((mapping.to_contiguous(ann["category_id"]) + 1, segmentation))
        records.append({"file_name": str(path), "height": im["height"],
                        "width": im["width"], "objects": objects, "crowd": crowd})
        if not data["annotations"]:  # test-dev style: images to predict, nothing to score
            del records[-1]["objects"], records[-1]["crowd"]
    if problems:
        raise DatasetError(f"{ann_file}: {len(problems)} unusable segmentations:"
                           + listing(problems))
    if no_segmentation or boxed or short_polygons:
        logger.warning("%s: left out %d polygons with fewer than 3 points; %d annotations "
                       "without a usable segmentation: their boxes are ignored (neither "
                       "trained nor scored) where no other object lies, %d without a box "
                       "either left out", ann_file, short_polygons, boxed, no_segmentation)
    return records, ["background", *mapping.names]


def coco_semantic_mask(record: Mapping[str, Any], ignore_index: int = IGNORE_INDEX
                       ) -> np.ndarray:
    """uint8 (H, W): 0 background, class ids where instances are, `ignore_index` on crowd-only
    pixels."""
    h, w = record["height"], record["width"]
    mask = np.zeros((h, w), dtype=np.uint8)
    painted = np.zeros((h, w), dtype=bool)
    def decode(segmentation: Any) -> np.ndarray:
        pixels = segmentation_to_mask(segmentation, h, w).astype(bool)
        if pixels.shape != (h, w):  # an RLE whose "size" is not the image's
            raise DatasetError(f"{record['file_name']}: an RLE segmentation is "
                               f"{pixels.shape[1]}x{pixels.shape[0]}, the image {w}x{h} (WxH)")
        return pixels

    for class_id, segmentation in record["objects"]:
        pixels = decode(segmentation)
        mask[pixels] = class_id
        painted |= pixels
    for segmentation in record["crowd"]:
        mask[decode(segmentation) & ~painted] = ignore_index
    return mask


def mask_header(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str | None]:
    """(height, width) of a mask as `read_mask` returns it and what `read_mask` would refuse
    in its format (a JPEG, colours), from its header alone; (None, None) when the header
    cannot be read (`read_mask` then says why)."""
    try:
        with Image.open(path) as im:
            (width, height), problem = im.size, _format_problem(path, im.mode, im.format)
    except (OSError, ValueError, SyntaxError):
        return None, None
    return (height, width), problem


def _format_problem(path: str | os.PathLike, mode: str, kind: str | None) -> str | None:
    if kind == "JPEG":
        return (f"mask {path} is a JPEG: its lossy compression changes class ids along every "
                "edge; masks must be PNGs (palette or grayscale)")
    if Image.getmodebands(mode) > 1:
        what = {"LA": "grey with transparency", "La": "grey with transparency",
                "PA": "palette with transparency"}.get(mode, "colour")
        article = "an" if mode[0] in "AEFHILMNORSX" else "a"  # (by the letter's sound)
        return (f"mask {path} is {article} {mode} image ({what}, {Image.getmodebands(mode)} "
                f"channels); masks must hold one class id per pixel (palette or grayscale "
                f"PNG): save one channel where every channel holds the ids (e.g. "
                f"Image.open(f).getchannel(0).save(f)); colour-coded masks need each colour "
                f"mapped to its class id{cityscapes_hint(path)}")
    return None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A class-id PNG as uint8 (H, W): palette indices or gray values, not colours.

    Raises:
        UnreadableImageError: missing, cut short, no image (its sample is skipped, as for an
            unreadable image).
        DatasetError: a colour image or a JPEG (masks must be single-channel ids), values
            that are no class ids.
    """
    try:
        with Image.open(path) as im:
            problem = _format_problem(path, im.mode, im.format)
            mode, mask = im.mode, None if problem else np.asarray(im)
    except (OSError, ValueError) as err:
        raise UnreadableImageError(f"cannot read mask {path}: {err}") from None
    if problem:
        raise DatasetError(problem)
    if mask.dtype != np.uint8:
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise DatasetError(f"mask {path} ({mode}) holds {mask.dtype} values; class ids "
                               "must be integers 0..255")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise DatasetError(f"mask {path} ({mode}) has values {mask.min()}..{mask.max()}; "
                               f"class ids must be 0..255{cityscapes_hint(path)}")
        mask = mask.astype(np.uint8)
    return mask


def write_label_map(mask: np.ndarray, path: str | os.PathLike, *, atomic: bool = False) -> Path:
    """Write a uint8 (H, W) class-id map as a grayscale PNG that `read_mask` reads back;
    `atomic`: through a temporary file, never a truncated PNG (`atomic_write`)."""
    path = Path(path)
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
    if atomic:
        atomic_write(path, lambda f: image.save(f, format="PNG"), binary=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
