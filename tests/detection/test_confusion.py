"""The detection confusion matrix (mmdetection's confusion_matrix.py), on hand-made cases."""
import csv
from pathlib import Path

import numpy as np

from resnet_detect.detection.confusion import (confusion_matrix, most_confused,
                                               write_confusion_matrix)


def _ann(image: int, category: int, box: list[float], crowd: int = 0) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "iscrowd": crowd}


def _det(image: int, category: int, box: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


GT = {
    "images": [{"id": i} for i in (1, 2, 3, 4)],
    # ids not in order, nor contiguous: the classes go by id (cat 3, dog 7)
    "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    "annotations": [
        _ann(1, 3, [0, 0, 10, 10]), _ann(1, 7, [20, 20, 10, 10]),
        _ann(1, 7, [50, 50, 40, 40], crowd=1),
        _ann(3, 7, [0, 0, 10, 10]),
        _ann(4, 3, [0, 0, 10, 10]), _ann(4, 3, [0, 1, 10, 10]),  # IoU 90 / 110
    ],
}
RESULTS = [
    _det(1, 3, [0, 0, 10, 10], 0.9),    # right
    _det(1, 7, [1, 0, 10, 10], 0.8),    # the cat taken for a dog too (IoU 90 / 110)
    _det(1, 3, [100, 100, 5, 5], 0.7),  # nothing there: background
    _det(1, 7, [20, 20, 10, 10], 0.2),  # below the score: the dog is missed
    _det(1, 3, [60, 60, 10, 10], 0.9),  # on the crowd region: neither right nor wrong
    _det(1, 99, [0, 0, 10, 10], 0.9),   # a category the file lacks: left out
    _det(2, 7, [0, 0, 10, 10], 0.5),    # an image without objects: background
    _det(4, 3, [0, 0, 10, 10], 0.95),   # overlaps both cats: one count for each
]


def test_every_cell_counts_as_mmdetection_counts() -> None:
    matrix, names = confusion_matrix(GT, RESULTS, score_thr=0.3, iou_thr=0.5)
    assert names == ["cat", "dog", "background"]
    assert matrix.tolist() == [[3, 1, 0],   # cat: 3 right (one detection, two cats in
                               [0, 0, 2],   # image 4), 1 as dog; dog: both missed
                               [1, 1, 0]]   # background: a cat and a dog detected
    # a lower score threshold lets image 1's dog be found
    low, _ = confusion_matrix(GT, RESULTS, score_thr=0.1)
    assert low[1].tolist() == [0, 1, 1]
    # (it listed the 3 without saying there were more)
    assert most_confused(matrix, names, 3) == [
        "the 3 largest of 4 confusions (all in the CSV):", "  dog missed: 2",
        "  cat detected as dog: 1", "  background detected as cat: 1"]
    assert most_confused(matrix, names)[0] == "the 4 confusions:"


def test_the_files_hold_the_counts(tmp_path: Path) -> None:
    matrix, names = confusion_matrix(GT, RESULTS)
    written = write_confusion_matrix(matrix, names, tmp_path)
    assert [p.name for p in written] == ["confusion_matrix.csv", "confusion_matrix.png"]
    rows = list(csv.reader((tmp_path / "confusion_matrix.csv").open()))
    assert rows[0] == ["ground truth \\ detected", "cat", "dog", "background"]
    assert [r[0] for r in rows[1:]] == names
    assert np.array([[int(v) for v in r[1:]] for r in rows[1:]]).tolist() == matrix.tolist()
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.csv",
                                                          "confusion_matrix.png"]


def test_more_than_100_classes_get_the_csv_alone(tmp_path: Path) -> None:
    """LVIS's 1203 classes made a 42,000-pixel square picture (gigabytes, a MemoryError)."""
    names = [f"c{i}" for i in range(101)] + ["background"]
    written = write_confusion_matrix(np.eye(102, dtype=np.int64), names, tmp_path)
    assert [p.name for p in written] == ["confusion_matrix.csv"]
    assert not (tmp_path / "confusion_matrix.png").exists()


def test_the_picture_leaves_out_classes_without_objects_or_detections(
        tmp_path: Path, monkeypatch) -> None:
    """A trial's file had 300 categories, 6 of them in its val images: no picture was drawn
    (over 100 classes); it is drawn of the classes that have objects or detections."""
    from resnet_detect.engine import confusion_files
    drawn = []
    monkeypatch.setattr(confusion_files, "_plot", lambda m, n, path, **_: drawn.append((m, n)))
    names = [f"c{i}" for i in range(300)] + ["background"]
    matrix = np.zeros((301, 301), dtype=np.int64)
    matrix[5, 5], matrix[5, 17], matrix[250, 300], matrix[300, 42] = 3, 1, 2, 4
    written = write_confusion_matrix(matrix, names, tmp_path)
    assert [p.name for p in written] == ["confusion_matrix.csv", "confusion_matrix.png"]
    ((shown, labels),) = drawn
    assert labels == ["c5", "c17", "c42", "c250", "background"]
    assert shown.tolist() == [[3, 1, 0, 0, 0], [0] * 5, [0] * 5, [0, 0, 0, 0, 2],
                              [0, 0, 4, 0, 0]]


def test_an_lvis_file_counts_as_its_federated_ap_scores() -> None:
    """A detection of a category the image was not checked for was "background detected as
    X" (LVIS's AP leaves it out), as was one of a category not annotated in full there; its
    files' iscrowd is no crowd region there."""
    gt = {"images": [{"id": 1, "neg_category_ids": [7], "not_exhaustive_category_ids": [3]},
                     {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
          "categories": GT["categories"],
          "annotations": [_ann(1, 3, [0, 0, 10, 10]), _ann(1, 3, [30, 30, 10, 10], crowd=1)]}
    results = [_det(1, 3, [0, 0, 10, 10], 0.9),    # right
               _det(1, 3, [50, 50, 10, 10], 0.9),  # cat not exhaustive here: nowhere
               _det(1, 7, [80, 80, 10, 10], 0.9),  # dog checked absent: background
               _det(2, 7, [0, 0, 10, 10], 0.9),    # image 2 not checked for dogs: nowhere
               _det(2, 3, [0, 0, 10, 10], 0.9)]    # nor for cats
    matrix, names = confusion_matrix(gt, results)
    assert names == ["cat", "dog", "background"]
    assert matrix.tolist() == [[1, 0, 1],   # the cat marked iscrowd is an object, missed
                               [0, 0, 0],
                               [0, 1, 0]]
    coco = {**gt, "images": [{"id": 1}, {"id": 2}]}  # the same file without LVIS's lists
    assert confusion_matrix(coco, results)[0].tolist() == [[1, 0, 0], [0, 0, 0], [2, 2, 0]]
