"""A confusion matrix's files, the same for detection (objects) and segmentation (pixels), as
mmdetection's and mmsegmentation's analysis_tools/confusion_matrix.py write them:
confusion_matrix.csv of the counts (rows the ground truth's classes, columns the predicted
ones) and confusion_matrix.png of each row in percent of its total."""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_write_figure, atomic_write_text

logger = logging.getLogger(__name__)

CSV_FILE, PNG_FILE = "confusion_matrix.csv", "confusion_matrix.png"
PLOTTED_CLASSES = 100  # more (LVIS's 1203): the CSV alone, a picture would take gigabytes


def write_confusion_files(matrix: np.ndarray, names: Sequence[str], folder: Path, *,
                          predicted: str, title: str, always_drawn: Sequence[int] = ()
                          ) -> list[Path]:
    """FOLDER/confusion_matrix.csv and, where up to PLOTTED_CLASSES classes are in the ground
    truth or the predictions, FOLDER/confusion_matrix.png of those (and of `always_drawn`).

    Args:
        matrix: (K, K) counts, matrix[g, p] = ground truth g `predicted` as p.
        names: the K classes' names.
        predicted: the columns' word ("detected", "predicted").
        title: the picture's title.
        always_drawn: classes drawn even without counts (detection's background).
    """
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow([f"ground truth \\ {predicted}", *names])
    for name, row in zip(names, matrix):
        writer.writerow([name, *row.tolist()])
    atomic_write_text(rows.getvalue(), folder / CSV_FILE)
    if not matrix.any():  # nothing counted (no object or pixel scored): nothing to draw
        return [folder / CSV_FILE]
    # the picture leaves out the classes without counts (a file's 300 categories of which 6
    # are in the val images drew nothing)
    used = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    used[list(always_drawn)] = True
    if used.sum() > PLOTTED_CLASSES + len(always_drawn):
        logger.info("%d classes in the ground truth or the predictions: %s not drawn (up to "
                    "%d), the counts are in %s", used.sum() - len(always_drawn), PNG_FILE,
                    PLOTTED_CLASSES, CSV_FILE)
        return [folder / CSV_FILE]
    kept = np.flatnonzero(used)
    _plot(matrix[np.ix_(kept, kept)], [names[i] for i in kept], folder / PNG_FILE,
          predicted=predicted, title=title)
    return [folder / CSV_FILE, folder / PNG_FILE]


def _plot(matrix: np.ndarray, names: Sequence[str], path: Path, *, predicted: str,
          title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    totals = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    side = max(5.0, 0.35 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    axes.set_xticks(range(len(names)), names, rotation=90)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel(predicted)
    axes.set_ylabel("ground truth")
    if len(names) <= 30:  # the numbers, where they fit
        for (i, j), value in np.ndenumerate(percent):
            if matrix[i, j]:
                axes.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if value > 50 else "black")
    axes.set_title(title)
    figure.tight_layout()
    atomic_write_figure(figure, path)
    plt.close(figure)
