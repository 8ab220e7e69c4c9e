"""Semantic segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy,
mean class accuracy (mmsegmentation's aAcc, mIoU, mAcc).

Shapes: K classes; a (K, K) int64 confusion matrix M with M[g, p] = number of pixels of
ground-truth class g predicted as p, over pixels whose ground truth is not `ignore_index`.

- IoU_k = M[k, k] / (sum_p M[k, p] + sum_g M[g, k] - M[k, k])  (TP / (TP + FN + FP)).
- mIoU = mean of IoU_k over the classes that occur in the ground truth or in the
  predictions. A class absent from both has no IoU (0 / 0): it is left out of the mean and
  reported as null in `per_class_iou`. (A class that is predicted but never in the ground
  truth has IoU 0 and does count.)
- pixel_acc = trace(M) / sum(M).
- Acc_k = M[k, k] / sum_p M[k, p] (TP / (TP + FN)); mAcc = its mean over the classes that
  occur in the ground truth (null in `per_class_acc` for the others).

All are reported in percent.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet_detect.engine.confusion_files import write_confusion_files
from resnet_detect.engine.distributed import all_gather_object, is_main_process
from resnet_detect.engine.files import atomic_write_json
from resnet_detect.engine.logging import print_and_log

logger = logging.getLogger(__name__)
ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike | Mapping[str, Any]) -> np.ndarray:
    if isinstance(x, Mapping):  # a model output {"sem_seg", "mask"}
        x = x["mask"]
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """(K, K) int64 counts M[gt, pred] over pixels where gt != ignore_index.

    Raises:
        ValueError: different shapes, or ids outside 0..K-1 (ground truth: other than
            `ignore_index`).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = gt != ignore_index
    gt_v, pred_v = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    for name, values in (("ground truth", gt_v), ("prediction", pred_v)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = np.unique(values[(values < 0) | (values >= num_classes)])[:10].tolist()
            raise ValueError(f"{name} has class ids {bad} outside 0..{num_classes - 1}")
    counts = np.bincount(gt_v * num_classes + pred_v, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """{"mIoU", "pixel_acc", "mAcc", "per_class_iou": {name: IoU or None}, "per_class_acc":
    {name: Acc or None}}, in percent (see module doc).

    mIoU, pixel_acc and mAcc are None when no pixel was scored.
    """
    matrix = matrix.astype(np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    labelled = matrix.sum(axis=1)
    in_truth = labelled > 0
    acc = np.divide(tp, labelled, out=np.zeros_like(tp), where=in_truth)
    total = matrix.sum()
    keys = class_keys(class_names)
    return {
        "mIoU": 100.0 * float(iou[present].mean()) if present.any() else None,
        "pixel_acc": 100.0 * float(tp.sum() / total) if total else None,
        "mAcc": 100.0 * float(acc[in_truth].mean()) if in_truth.any() else None,
        "per_class_iou": {key: (100.0 * float(v) if ok else None)
                          for key, v, ok in zip(keys, iou, present)},
        "per_class_acc": {key: (100.0 * float(v) if ok else None)
                          for key, v, ok in zip(keys, acc, in_truth)},
    }


def class_keys(class_names: Sequence[str]) -> list[str]:
    """Each class's key in per_class_iou: its name, or "name (class k)" where classes share
    it (a COCO category named "background" beside class 0), so that none overwrites another."""
    return [f"{name} (class {k})" if list(class_names).count(name) > 1 else name
            for k, name in enumerate(class_names)]


class SemSegEvaluator:
    """Accumulates a confusion matrix over images; `evaluate` reduces it over processes.

    Args:
        num_classes: K, background included.
        class_names: K names (index = class id); None names them class_0 .. class_{K-1}.
        ignore_index: ground-truth value of pixels that are not scored.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 ignore_index: int = 255) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names or (f"class_{i}" for i in range(num_classes)))
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.num_images = 0

    def process(self, preds: Iterable[ArrayLike | Mapping[str, Any]],
                gts: Iterable[ArrayLike]) -> None:
        """Add images: predicted (H, W) class maps (or model outputs with a "mask") and
        ground-truth (H, W) class maps, pairwise."""
        preds, gts = list(preds), list(gts)
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} predictions but {len(gts)} ground truths")
        for pred, gt in zip(preds, gts):
            self.matrix += confusion_matrix(_as_numpy(pred), _as_numpy(gt), self.num_classes,
                                            self.ignore_index)
            self.num_images += 1

    def evaluate(self, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Metrics over every process's images; the main process writes DIR/metrics.json.

        Must be called on every process (the matrices are gathered).

        Returns:
            {"sem_seg": `metrics_from_confusion`'s}, percent.
        """
        gathered = all_gather_object((self.matrix, self.num_images))
        matrix = sum(m for m, _ in gathered)
        self.total = matrix  # every process's pixels (write_confusion_matrix)
        num_images = sum(n for _, n in gathered)
        if num_images == 0:
            logger.warning("SemSegEvaluator: no images were processed")
        result = {"sem_seg": metrics_from_confusion(matrix, self.class_names)}
        if is_main_process() and matrix.sum() > 0:  # else no pixel scored: n/a everywhere
            print_and_log(format_per_class(result["sem_seg"]["per_class_iou"]))
        if output_dir is not None and is_main_process():
            path = Path(output_dir) / "metrics.json"
            atomic_write_json(result, path)
            logger.info("wrote %s", path)
        return result


def format_per_class(per_class_iou: Mapping[str, float | None]) -> str:
    """The per-class IoU table (percent; n/a for classes absent from both the ground truth
    and the predictions)."""
    return "\n".join(["per-class IoU:"] + [
        f"  {name:<20} {'n/a' if iou is None else f'{iou:6.2f}'}"
        for name, iou in per_class_iou.items()])


def write_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], folder: Path
                           ) -> list[str]:
    """FOLDER/confusion_matrix.csv (pixel counts: rows the ground truth's classes, columns
    the predicted ones; mmsegmentation's analysis_tools/confusion_matrix.py, as counts) and,
    where up to PLOTTED_CLASSES classes have pixels, FOLDER/confusion_matrix.png of those
    (each row in percent of its pixels); the lines that name the files and the five largest
    confusions, each in percent of its class's pixels."""
    names = class_keys(class_names)
    written = write_confusion_files(matrix, names, folder, predicted="predicted",
                                    title="pixels of each class (% of the row)")
    totals = matrix.sum(axis=1)
    cells = sorted(((int(matrix[i, j]), i, j) for i in range(len(names))
                    for j in range(len(names)) if i != j and matrix[i, j]), reverse=True)
    lines = [f"confusion matrix (pixels): {', '.join(map(str, written))}; the "
             f"{min(len(cells), 5)} largest of {len(cells)} confusions:"]
    return lines + [f"  {names[i]} predicted as {names[j]}: {count} pixels "
                    f"({100 * count / totals[i]:.1f}% of {names[i]}'s)"
                    for count, i, j in cells[:5]]
