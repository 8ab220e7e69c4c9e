"""tools/browse_dataset.py: a split's images drawn as the model receives them, checked pixel by
pixel on hand-made data (a grey image, one object of known place and class)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.visualize import IGNORE_COLOUR, palette
from tests.tools.test_train_eval_demo import ROOT, load_tool


GREY = 100
BOX = (10, 30, 20, 24)  # x, y, w, h in the 96x64 image: drawn at x 10..30, y 30..54


def write_grey(path: Path, height: int = 64, width: int = 96) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), GREY, dtype=np.uint8))


def coco_data(root: Path, file_names: tuple[str, ...] = ("sub/a.png",)) -> list[str]:
    """One 96x64 grey PNG per name with one 'cat' (category id 7) at BOX; the overrides of
    both splits, at the images' own size, without flips."""
    x, y, w, h = BOX
    images, annotations = [], []
    for i, name in enumerate(file_names, 1):
        write_grey(root / "img" / name)
        images.append({"id": i, "file_name": name, "height": 64, "width": 96})
        annotations.append({"id": i, "image_id": i, "category_id": 7, "bbox": list(BOX),
                            "area": w * h, "iscrowd": 0,
                            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    (root / "ann.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 7, "name": "cat"}]}))
    split = [f"data.{s}.{k}={v}" for s in ("train", "val") for k, v in (
        ("ann_file", root / "ann.json"), ("img_dir", root / "img"), ("min_size", 64),
        ("max_size", 1000))]
    return [*split, "data.train.hflip_prob=0.0", "data.num_workers=0"]


@pytest.mark.parametrize("config,split,extra", [
    ("faster_rcnn_R_18_FPN", "train", []), ("mask_rcnn_R_18_FPN", "val", []),
    ("mask_rcnn_R_18_FPN", "train", ["data.train.mask_format=polygon"])])
def test_detection_objects_are_drawn_where_they_are(tmp_path: Path, config: str,
                                                    split: str, extra: list[str]) -> None:
    overrides = [*coco_data(tmp_path / "data"), *extra]
    out = tmp_path / "out"
    written = load_tool("browse_dataset").main(
        [str(ROOT / f"configs/synthetic/{config}.yaml"), "--output", str(out), "--split", split,
         *overrides])
    assert written == [out / "sub/a.png"]  # its path inside img_dir, PNG kept
    picture = cv2.cvtColor(cv2.imread(str(written[0])), cv2.COLOR_BGR2RGB)
    assert picture.shape == (64, 96, 3)
    colour = palette(1)[0]  # the one class's colour
    assert (picture[30, 12:28] == colour).all() and (picture[54, 12:28] == colour).all()  # edges
    assert (picture[40, 10] == colour).all() and (picture[40, 30] == colour).all()
    inside = picture[36:50, 13:28].reshape(-1, 3)
    if config.startswith("mask"):  # the mask filled at half opacity
        assert (inside == (0.5 * colour + 0.5 * GREY).astype(np.uint8)).all()
    else:
        assert (inside == GREY).all()
    assert (picture[:, 40:] == GREY).all()  # nothing else drawn (the tag is above the box)
    assert (picture[5:29, 10:20] != GREY).any()  # the "cat" tag


def test_unusable_images_are_named_after_the_others_are_drawn(tmp_path: Path) -> None:
    overrides = coco_data(tmp_path / "data", ("a.png", "broken.png", "c.png"))
    (tmp_path / "data/img/broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"1 of 3 images could not be drawn[\s\S]*broken\.png"):
        load_tool("browse_dataset").main(
            [str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"), "--output", str(out),
             *overrides])
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]


def test_segmentation_classes_and_ignored_pixels_are_drawn(tmp_path: Path) -> None:
    write_grey(tmp_path / "img/a.png")
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[40:52, 30:70] = 1
    mask[54:, 80:] = 255
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks/a.png"), mask)
    out = tmp_path / "out"
    written = load_tool("browse_dataset").main(
        [str(ROOT / "configs/synthetic/deeplabv3plus_R_18_os16.yaml"), "--output", str(out),
         "--split", "val", "data.class_names=[background,thing]",
         "data.val.img_suffix=.png", f"data.val.img_dir={tmp_path / 'img'}",
         f"data.val.mask_dir={tmp_path / 'masks'}",
         f"data.train.img_dir={tmp_path / 'img'}", f"data.train.mask_dir={tmp_path / 'masks'}"])
    drawn = cv2.cvtColor(cv2.imread(str(written[0])), cv2.COLOR_BGR2RGB)
    # the legend of "thing" and "ignore" beside the image (over it, it hid the top left)
    assert drawn.shape[0] == 64 and drawn.shape[1] > 96 + 26
    picture = drawn[:, :96]
    thing = (0.5 * palette(2)[1] + 0.5 * GREY).astype(np.uint8)
    ignored = (0.5 * IGNORE_COLOUR + 0.5 * GREY).astype(np.uint8)
    assert (picture[40:52, 30:70] == thing).all()
    assert (picture[54:, 80:] == ignored).all()
    background = np.ones((64, 96), dtype=bool)
    background[40:52, 30:70] = background[54:, 80:] = False
    assert (picture[background] == GREY).all()


def test_classification_crops_are_drawn_whole_with_their_class_name(tmp_path: Path) -> None:
    """A pretraining config's crops (refused before): val the centre crop of the resized
    image, each pixel a 4x4 square (48 px crops, enlarged to 192), its class name below."""
    rng = np.random.default_rng(0)
    images = {}
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            image = rng.integers(0, 256, (54, 54, 3), dtype=np.uint8)  # val_resize 54: as is
            path = tmp_path / "data" / split / name / "a.png"
            path.parent.mkdir(parents=True)
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            images[split, name] = image
    config = str(ROOT / "configs/pretrain/synthetic_resnet18.yaml")
    tool = load_tool("browse_dataset")
    written = tool.main([config, "--output", str(tmp_path / "val"), "--split", "val",
                         f"data.root={tmp_path / 'data'}"])
    assert [p.relative_to(tmp_path / "val").as_posix() for p in written] == [
        "cat/a.png", "dog/a.png"]
    captions = []
    for path, name in zip(written, ("cat", "dog")):
        picture = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        crop = images["val", name][3:51, 3:51]  # the centre 48 of 54
        assert picture.shape == (192 + 20, 192, 3)
        assert (picture[:192] == crop.repeat(4, axis=0).repeat(4, axis=1)).all()
        captions.append(picture[192:])
        assert captions[-1].max() > 200 and captions[-1].min() == 0  # white text on black
    assert (captions[0] != captions[1]).any()  # "cat", "dog"
    # train: augmented crops of the training images, the same for the same --seed
    first = tool.main([config, "--output", str(tmp_path / "t1"), "data.root=" + str(
        tmp_path / "data"), "--seed", "3"])
    again = tool.main([config, "--output", str(tmp_path / "t2"), "data.root=" + str(
        tmp_path / "data"), "--seed", "3"])
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert cv2.imread(str(first[0])).shape == (192 + 20, 192, 3)
    # inside either split (pictures of val in train/drawn: a class "drawn" in training)
    with pytest.raises(ValueError, match=r"--output .* is inside data.root/data.train_split "
                                         r".*/data/train: the pictures would join the dataset"):
        tool.main([config, "--output", str(tmp_path / "data/train/drawn"), "--split", "val",
                   f"data.root={tmp_path / 'data'}"])
    # the classes in turn: the first two pictures are of two classes (were the first class's)
    (tmp_path / "data/val/cat/b.png").write_bytes((tmp_path / "data/val/cat/a.png").read_bytes())
    two = tool.main([config, "--output", str(tmp_path / "two"), "--split", "val", "--num", "2",
                     f"data.root={tmp_path / 'data'}"])
    assert [p.relative_to(tmp_path / "two").as_posix() for p in two] == ["cat/a.png",
                                                                          "dog/a.png"]


def test_bad_requests_are_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    tool = load_tool("browse_dataset")
    with pytest.raises(ValueError, match="--num must be >= 0"):
        tool.main([str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"), "--output",
                   str(tmp_path), "--num", "-1"])
    images = tmp_path / "images"  # (pictures of the val split were written among its images)
    for output in (images, images / "drawn"):
        with pytest.raises(ValueError, match=rf"--output {re.escape(str(output))} is inside "
                                             rf"data.val.img_dir {re.escape(str(images))}: the "
                                             r"pictures would join the dataset"):
            tool.main([str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"), "--output",
                       str(output), "--split", "val", f"data.val.img_dir={images}"])
    with pytest.raises(ValueError, match=rf"is inside data.train.img_dir "
                                         rf"{re.escape(str(images))}: the pictures would join"):
        tool.main([str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"), "--output",
                   str(images / "drawn"), "--split", "val", f"data.train.img_dir={images}"])
    assert not (images / "drawn").exists()
    with pytest.raises(ValueError, match="data.val.ann_file and data.val.img_dir are not set"):
        tool.main([str(ROOT / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml"), "--output",
                   str(tmp_path), "--split", "val", "data.val.ann_file=", "data.val.img_dir="])
