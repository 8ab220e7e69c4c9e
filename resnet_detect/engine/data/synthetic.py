"""Write the synthetic shapes dataset: COCO detection, semantic masks, ImageFolder classification.

Layout under `out_dir`:

    images/{train,val}/000000.jpg           scenes, RGB JPEG (quality 90)
    coco/{train,val}.json                   COCO instances; file_name is relative to images/<split>/
    semantic/{train,val}/000000.png         uint8: 0 background, i+1 = CLASS_NAMES[i], 255 ignore
    semantic/classes.json                   ["background", "circle", ...]: index = pixel value
    classification/{train,val}/<class>/000000.png   one object, 64-96 px square
    meta.json                               arguments and code digest; written last, marks a
                                            complete dataset

Annotations describe the *visible* part of each object (COCO's convention): `segmentation` is
a list of polygons, one per visible piece, tracing pixel edges, so pycocotools rasterizes them
back to exactly the object's pixels in the semantic mask; `bbox` [x, y, w, h] is the extent of
those pixels (= of the polygons) and `area` their count. Category ids are 1, 3, 5, ... on
purpose, so loaders must map them to contiguous labels. Semantic value 255 (ignore) marks only
specks of fewer than 10 visible pixels, which get no polygon.

Every image is a pure function of (seed, split, index): the same arguments give byte-identical
files, and image i does not depend on how many images are generated.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .synthetic_shapes import CLASS_NAMES, SceneObject, classification_sample, compose_scene

CATEGORY_IDS: tuple[int, ...] = tuple(2 * i + 1 for i in range(len(CLASS_NAMES)))
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((320, 320), (288, 384), (384, 288))  # (H, W)
IGNORE_LABEL = 255
_MIN_PART_AREA = 10  # visible pieces smaller than this get no polygon (and are ignored)
_SPLIT_CODES = {"train": 0, "val": 1, "classification/train": 2, "classification/val": 3}
_OUTPUTS = ("images", "coco", "semantic", "classification", "meta.json")


def _generator_version() -> str:
    """Digest of the drawing code, so a dataset made by older code is not taken as current."""
    digest = hashlib.sha256()
    for module in ("synthetic.py", "synthetic_shapes.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()[:16]


def _rng(seed: int, split: str, *index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], *index]))


def pixel_outline(piece: np.ndarray) -> np.ndarray:
    """Corner vertices (V, 2) int (x, y) of the pixel-edge outline of one 8-connected,
    hole-free region, clockwise on screen.

    Pixel (r, c) covers [c, c + 1] x [r, r + 1], so the outline encloses exactly the region's
    pixels and pycocotools rasterizes it back to the same mask. Where two pixels touch only
    at a corner the outline passes through that corner (8-connectivity).

    Args:
        piece: H x W bool mask.
    """
    padded = np.pad(piece.astype(bool), 1)
    inside, above, left = padded[1:, 1:], padded[:-1, 1:], padded[1:, :-1]
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # Directed unit edges with the region on their right (screen coordinates, y down).
    for (rows, cols), step, offset in (
            (np.nonzero(inside & ~above), (1, 0), (0, 0)),   # top edge of a pixel: east
            (np.nonzero(~inside & above), (-1, 0), (1, 0)),  # bottom edge: west
            (np.nonzero(~inside & left), (0, 1), (0, 0)),    # right edge of a pixel: south
            (np.nonzero(inside & ~left), (0, -1), (0, 1))):  # left edge: north
        for r, c in zip(rows.tolist(), cols.tolist()):
            start = (c + offset[0], r + offset[1])
            outgoing.setdefault(start, []).append(step)
    ys, xs = np.nonzero(piece)
    first = int(np.argmin(ys * piece.shape[1] + xs))  # top-left pixel: its corner is no saddle
    vertex, heading = (int(xs[first]), int(ys[first])), (1, 0)
    corners = []
    while outgoing.get(vertex):
        options = outgoing[vertex]
        # at a saddle keep the diagonal neighbour: turn left, i.e. (dy, -dx) in y-down coords
        step = (heading[1], -heading[0]) if len(options) > 1 and \
            (heading[1], -heading[0]) in options else options[0]
        options.remove(step)
        if step != heading or not corners:
            corners.append(vertex)
        heading = step
        vertex = (vertex[0] + step[0], vertex[1] + step[1])
    if any(outgoing.values()):
        raise ValueError("region has a hole or several 8-connected parts")
    return np.asarray(corners, dtype=np.int64)


def instance_geometry(obj: SceneObject) -> tuple[list[list[float]], np.ndarray]:
    """Polygons of an object's visible mask and the pixels they stand for.

    Args:
        obj: a scene object (its visible mask is hole-free).

    Returns:
        (COCO polygons [[x0, y0, x1, y1, ...], ...], H x W bool mask of the pieces kept,
        which the polygons cover exactly). Pieces under _MIN_PART_AREA pixels are left out.
    """
    rows, cols = obj.window
    visible = obj.visible[rows, cols].astype(np.uint8)
    n, components, stats, _ = cv2.connectedComponentsWithStats(visible, connectivity=8)
    kept = np.zeros_like(obj.visible)
    polygons: list[list[float]] = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < _MIN_PART_AREA:
            continue
        piece = components[y:y + h, x:x + w] == k
        x, y = x + cols.start, y + rows.start  # window -> image coordinates
        outline = pixel_outline(piece) + (x, y)
        polygons.append(outline.astype(np.float64).ravel().tolist())
        kept[y:y + h, x:x + w] |= piece
    return polygons, kept


def semantic_mask(objects: list[SceneObject], kept: list[np.ndarray],
                  height: int, width: int) -> np.ndarray:
    """uint8 (H, W) class map: 0 background, label + 1 per object, IGNORE_LABEL on the few
    visible pixels that no polygon stands for (specks under _MIN_PART_AREA).

    Args:
        objects: the scene's objects (visible masks are disjoint).
        kept: per object, the pixels its polygons stand for.
        height: image height.
        width: image width.
    """
    labels = np.zeros((height, width), dtype=np.uint8)
    dropped = np.zeros((height, width), dtype=bool)
    for obj, keep in zip(objects, kept):
        labels[keep] = obj.label + 1
        dropped |= obj.visible & ~keep
    labels[dropped] = IGNORE_LABEL
    return labels


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _write_detection_split(out: Path, split: str, count: int, seed: int,
                           size: tuple[int, int] | None) -> dict[str, int]:
    img_dir, sem_dir = out / "images" / split, out / "semantic" / split
    img_dir.mkdir(parents=True)
    sem_dir.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        rng = _rng(seed, split, index)
        height, width = (size if size is not None
                         else DEFAULT_SIZES[rng.integers(len(DEFAULT_SIZES))])
        image, objects = compose_scene(rng, height, width)
        name = f"{index:06d}"
        if not cv2.imwrite(str(img_dir / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"could not write {img_dir / name}.jpg")
        images.append({"id": index + 1, "file_name": f"{name}.jpg",
                       "height": height, "width": width})
        kept_masks = []
        for obj in objects:
            polygons, kept = instance_geometry(obj)
            kept_masks.append(kept)
            if not polygons:
                continue
            ys, xs = np.nonzero(kept[obj.window])
            x0, y0 = int(xs.min()) + obj.window[1].start, int(ys.min()) + obj.window[0].start
            x1, y1 = int(xs.max()) + obj.window[1].start, int(ys.max()) + obj.window[0].start
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1,
                "category_id": CATEGORY_IDS[obj.label],
                "bbox": [float(x0), float(y0), float(x1 + 1 - x0), float(y1 + 1 - y0)],
                "area": float(kept.sum()), "iscrowd": 0, "segmentation": polygons,
            })
        _write_png(sem_dir / f"{name}.png", semantic_mask(objects, kept_masks, height, width))
    coco = {
        "info": {"description": f"synthetic shapes, {split} split, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"}
                       for cid, name in zip(CATEGORY_IDS, CLASS_NAMES)],
    }
    (out / "coco").mkdir(exist_ok=True)
    (out / "coco" / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")),
                                                  encoding="utf-8")
    return {"images": len(images), "annotations": len(annotations)}


def _write_classification_split(out: Path, split: str, per_class: int, seed: int) -> int:
    code = f"classification/{split}"
    for label, name in enumerate(CLASS_NAMES):
        class_dir = out / "classification" / split / name
        class_dir.mkdir(parents=True)
        for i in range(per_class):
            rng = _rng(seed, code, label, i)
            image = classification_sample(rng, label, int(rng.integers(64, 97)))
            _write_png(class_dir / f"{i:06d}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return per_class * len(CLASS_NAMES)


def generate(out_dir: str | Path, *, seed: int = 0, num_train: int = 600, num_val: int = 150,
             size: tuple[int, int] | None = None, cls_train_per_class: int = 400,
             cls_val_per_class: int = 100, overwrite: bool = False) -> dict[str, Any]:
    """Write the dataset (see the module docstring for the layout).

    Args:
        out_dir: output folder.
        seed: dataset seed.
        num_train: detection training images.
        num_val: detection validation images.
        size: (H, W) of every scene; None mixes DEFAULT_SIZES (square, landscape, portrait).
        cls_train_per_class: classification training images per class.
        cls_val_per_class: classification validation images per class.
        overwrite: replace an existing dataset written with other arguments or older code.

    Returns:
        Summary counts, with "skipped": True when `out_dir` already held this exact dataset.

    Raises:
        FileExistsError: `out_dir` holds dataset files from other arguments, older code or an
            unfinished run, and `overwrite` is False.
    """
    out = Path(out_dir)
    meta = {"generator": _generator_version(), "seed": seed, "num_train": num_train,
            "num_val": num_val, "size": list(size) if size is not None else None,
            "cls_train_per_class": cls_train_per_class, "cls_val_per_class": cls_val_per_class,
            "classes": list(CLASS_NAMES), "category_ids": list(CATEGORY_IDS)}
    meta_path = out / "meta.json"
    if not overwrite and meta_path.is_file() and json.loads(meta_path.read_bytes()) == meta:
        return {"skipped": True, **meta}
    existing = [name for name in _OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)} from another or "
                              "unfinished run; pass overwrite=True (--overwrite) to replace them")
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"skipped": False}
    for split, count in (("train", num_train), ("val", num_val)):
        summary[split] = _write_detection_split(out, split, count, seed, size)
    (out / "semantic" / "classes.json").write_text(json.dumps(["background", *CLASS_NAMES]),
                                                      encoding="utf-8")
    for split, per_class in (("train", cls_train_per_class), ("val", cls_val_per_class)):
        summary[f"classification_{split}"] = _write_classification_split(out, split, per_class,
                                                                         seed)
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return summary
