"""mIoU, per-class IoU and pixel accuracy on confusion cases worked out by hand."""
import json

import numpy as np
import pytest
import torch

from resnet_detect.segmentation import SemSegEvaluator
from resnet_detect.segmentation.evaluation import confusion_matrix

GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 2, 2]])
# scored pixels (gt != 255): 5. Confusion M[gt, pred] = [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
# IoU0 = 1 / (2 + 1 - 1) = 1/2, IoU1 = 2 / (2 + 3 - 2) = 2/3, IoU2 = 1 / (1 + 1 - 1) = 1
# mIoU = (1/2 + 2/3 + 1) / 3 = 13/18; pixel accuracy = 4/5
# class accuracy (TP / ground-truth pixels): Acc0 = 1/2, Acc1 = 2/2, Acc2 = 1/1; mAcc = 5/6


def test_confusion_matrix_by_hand():
    assert confusion_matrix(PRED, GT, 3).tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]


def test_metrics_by_hand(tmp_path):
    ev = SemSegEvaluator(3, ["bg", "a", "b"])
    ev.process([torch.from_numpy(PRED)], [torch.from_numpy(GT)])
    result = ev.evaluate(tmp_path)
    m = result["sem_seg"]
    assert m["mIoU"] == pytest.approx(100 * 13 / 18)
    assert m["pixel_acc"] == pytest.approx(80.0)
    assert m["per_class_iou"] == pytest.approx({"bg": 50.0, "a": 100 * 2 / 3, "b": 100.0})
    assert m["mAcc"] == pytest.approx(100 * 5 / 6)  # mmsegmentation's mAcc
    assert m["per_class_acc"] == pytest.approx({"bg": 50.0, "a": 100.0, "b": 100.0})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == result and set(written["sem_seg"]) == {
        "mIoU", "pixel_acc", "mAcc", "per_class_iou", "per_class_acc"}


def test_class_absent_from_gt_and_prediction_is_left_out():
    ev = SemSegEvaluator(4, ["bg", "a", "b", "c"])
    ev.process([PRED], [GT])
    m = ev.evaluate()["sem_seg"]
    assert m["per_class_iou"]["c"] is None
    assert m["mIoU"] == pytest.approx(100 * 13 / 18)  # mean over bg, a, b only


def test_class_predicted_but_not_in_gt_counts_as_zero():
    gt = np.zeros((2, 2), dtype=np.int64)
    pred = np.array([[0, 0], [0, 3]])
    ev = SemSegEvaluator(4)
    ev.process([{"mask": torch.from_numpy(pred)}], [gt])  # model outputs are accepted
    m = ev.evaluate()["sem_seg"]
    # IoU0 = 3 / (4 + 3 - 3) = 3/4, IoU3 = 0 / (0 + 1 - 0) = 0; classes 1 and 2 absent
    assert m["per_class_iou"] == {"class_0": 75.0, "class_1": None, "class_2": None,
                                  "class_3": 0.0}
    assert m["mIoU"] == pytest.approx(37.5)
    assert m["pixel_acc"] == pytest.approx(75.0)
    # a class only predicted has no accuracy (no ground-truth pixel): left out of mAcc
    assert m["per_class_acc"] == {"class_0": 75.0, "class_1": None, "class_2": None,
                                  "class_3": None}
    assert m["mAcc"] == pytest.approx(75.0)


def test_accumulates_over_images():
    ev = SemSegEvaluator(3)
    ev.process([PRED, np.zeros((1, 4), dtype=np.int64)], [GT, np.array([[0, 1, 1, 255]])])
    # second image adds M[0,0] += 1, M[1,0] += 2 -> [[2, 1, 0], [2, 2, 0], [0, 0, 1]]
    np.testing.assert_array_equal(ev.matrix, [[2, 1, 0], [2, 2, 0], [0, 0, 1]])
    m = ev.evaluate()["sem_seg"]
    # IoU0 = 2 / (3 + 4 - 2) = 2/5, IoU1 = 2 / (4 + 3 - 2) = 2/5, IoU2 = 1; acc = 5/8
    assert m["mIoU"] == pytest.approx(100 * (0.4 + 0.4 + 1) / 3)
    assert m["pixel_acc"] == pytest.approx(62.5)


def test_bad_inputs():
    ev = SemSegEvaluator(3)
    with pytest.raises(ValueError, match=r"prediction has class ids \[3\]"):
        ev.process([np.array([[3]])], [np.array([[0]])])
    with pytest.raises(ValueError, match=r"ground truth has class ids \[7\]"):
        ev.process([np.array([[0]])], [np.array([[7]])])
    with pytest.raises(ValueError, match="differ in shape"):
        ev.process([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        SemSegEvaluator(3, ["a", "b"])


def test_classes_sharing_a_name_each_keep_their_iou():
    """A COCO category named "background" beside class 0: its empty entry overwrote class 0's
    IoU (the table showed 2 classes of 3, "background n/a" for a perfect prediction)."""
    ev = SemSegEvaluator(3, ["background", "background", "car"])
    gt = np.array([[0, 0, 2], [2, 2, 0]])
    ev.process([gt], [gt])
    assert ev.evaluate()["sem_seg"]["per_class_iou"] == {
        "background (class 0)": 100.0, "background (class 1)": None, "car": 100.0}


def test_the_confusion_picture_draws_the_classes_with_pixels(tmp_path, monkeypatch):
    """--confusion-matrix wrote a CSV alone for segmentation (detection's has a picture too);
    ADE20K's 150 classes are drawn where up to 100 have pixels, the CSV alone beyond."""
    from resnet_detect.engine import confusion_files
    from resnet_detect.segmentation.evaluation import write_confusion_matrix
    drawn = []
    monkeypatch.setattr(confusion_files, "_plot",
                        lambda m, n, path, **kw: drawn.append((m.tolist(), n, kw)))
    names = [f"c{i}" for i in range(150)]
    matrix = np.zeros((150, 150), dtype=np.int64)
    matrix[3, 3], matrix[3, 140], matrix[7, 7] = 90, 10, 5
    lines = write_confusion_matrix(matrix, names, tmp_path)
    assert lines == [f"confusion matrix (pixels): {tmp_path / 'confusion_matrix.csv'}, "
                     f"{tmp_path / 'confusion_matrix.png'}; the 1 largest of 1 confusions:",
                     "  c3 predicted as c140: 10 pixels (10.0% of c3's)"]
    ((shown, labels, options),) = drawn
    assert labels == ["c3", "c7", "c140"] and shown == [[90, 0, 10], [0, 5, 0], [0, 0, 0]]
    assert options["predicted"] == "predicted"
    np.fill_diagonal(matrix, 1)  # every class has pixels: no picture
    assert write_confusion_matrix(matrix, names, tmp_path)[0] == (
        f"confusion matrix (pixels): {tmp_path / 'confusion_matrix.csv'}; the 1 largest of 1 "
        f"confusions:")
    assert len(drawn) == 1
    lines = write_confusion_matrix(np.zeros((3, 3), dtype=np.int64), names[:3], tmp_path)
    assert lines[0].startswith(f"confusion matrix (pixels): {tmp_path / 'confusion_matrix.csv'}; ")
    assert len(drawn) == 1  # nothing counted: no empty picture
