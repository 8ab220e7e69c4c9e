"""Data: folder (VOC / Cityscapes trees) and COCO sources, mask-aware augmentation, bad input."""
import json
import logging
import math
import random
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.visualize import palette
from omegaconf import OmegaConf

from resnet_detect.segmentation.build import defaults
from resnet_detect.segmentation.data import (SemSegDataset, build_dataset, build_test_loader,
                                             build_train_loader, build_transform,
                                             check_same_classes, coco_semantic_mask,
                                             load_coco_semantic, read_mask, scan_folder)


def _image(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def _folder(tmp_path: Path, n: int = 3, h: int = 20, w: int = 30) -> tuple[Path, Path]:
    img_dir, mask_dir = tmp_path / "img", tmp_path / "ann"
    for i in range(n):
        _image(img_dir / f"{i:03d}.jpg", h, w, seed=i)
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[5:15, 5:20] = 1 + i % 2
        mask[0, :] = 255
        _mask(mask_dir / f"{i:03d}.png", mask)
    return img_dir, mask_dir


def _config(**split) -> dict:
    cfg = OmegaConf.to_container(defaults())
    cfg["data"]["class_names"] = ["background", "a", "b"]
    cfg["data"]["num_workers"] = 0
    cfg["data"]["train"].update(split, crop_size=[16, 16], scale_range=[1.0, 1.0])
    cfg["data"]["val"].update(split)
    cfg["train"]["batch_size"] = 2
    return cfg


def test_folder_pairs_and_samples(tmp_path):
    img_dir, mask_dir = _folder(tmp_path)
    cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
    val = build_dataset(cfg, "val")
    assert len(val) == 3 and val.class_names == ["background", "a", "b"]
    sample = val[1]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 20, 30)
    assert sample["gt_sem_seg"].dtype == torch.int64 and sample["gt_sem_seg"].shape == (20, 30)
    assert sample["gt_sem_seg"][10, 10] == 2 and sample["gt_sem_seg"][0, 3] == 255
    assert sample["file_name"] == str(img_dir / "001.jpg")
    batch = next(iter(build_train_loader(cfg)))
    assert len(batch) == 2 and all(s["image"].shape == (3, 16, 16) for s in batch)
    assert len(build_test_loader(cfg)) == 3


def test_a_mask_suffix_in_another_case_pairs_as_an_images_does(tmp_path, caplog):
    """000.PNG beside data.train.mask_suffix .png: "1 of 3 images have no mask" (an image's
    suffix was taken in any case)."""
    img_dir, mask_dir = _folder(tmp_path)
    (mask_dir / "001.png").rename(mask_dir / "001.PNG")
    (mask_dir / "002.png").rename(mask_dir / "002.Png")
    (mask_dir / "x.jpg").write_bytes(b"")  # not a mask: no warning about it either
    cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset(cfg, "val")
    assert [Path(dataset.record(i)["mask_file"]).name for i in range(3)] == [
        "000.png", "001.PNG", "002.Png"]
    assert dataset[1]["gt_sem_seg"][10, 10] == 2 and caplog.text == ""
    (mask_dir / "002.Png").unlink()
    with pytest.raises(DatasetError, match=rf"1 of 3 images in {img_dir} have no mask in "
                                           rf"{mask_dir} .*\n  {img_dir}/002.jpg \(expected "
                                           rf"{mask_dir}/002.png\)"):
        build_dataset(cfg, "val")
    (mask_dir / "0020.png").write_bytes(b"")  # another image's mask: no hint
    with pytest.raises(DatasetError, match=r"\(mask name = image name with '.jpg' replaced by "
                                           r"'.png'\):\n"):
        build_dataset(cfg, "val")
    # JPEG masks beside the default .png suffix: said where they are (was "have no mask" alone)
    (mask_dir / "002.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"\(mask name = image name with '.jpg' replaced by "
                                           rf"'.png'\); {mask_dir} holds 002.jpg: the masks' "
                                           rf"suffix is data.val.mask_suffix \('.png' now\):"):
        build_dataset(cfg, "val")


def test_pad_fills_mask_with_ignore_and_crop_keeps_alignment():
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    image[:, :, 0] = np.arange(12, dtype=np.uint8)[None] * 10  # red encodes the column
    mask = np.tile(np.arange(12, dtype=np.uint8) % 3, (10, 1))
    transform = build_transform(crop_size=(16, 20), hflip_prob=1.0)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (16, 20, 3) and out["mask"].shape == (16, 20)
    # padded to 16x20 at the bottom/right (mask 255, image the mean colour), then flipped
    assert (out["mask"][10:] == 255).all() and (out["mask"][:, :8] == 255).all()
    assert (out["image"][12, 0] == (124, 116, 104)).all()
    np.testing.assert_array_equal(out["mask"][:10, 8:], mask[:, ::-1])
    np.testing.assert_array_equal(out["image"][:10, 8:, 0], image[:, ::-1, 0])


def test_random_scale_resizes_mask_with_nearest():
    mask = np.tile(np.array([0, 1, 2, 255], dtype=np.uint8), (8, 4))
    out = build_transform(scale_range=(2.0, 2.0))(image=np.zeros((8, 16, 3), np.uint8),
                                                   mask=mask)
    assert out["mask"].shape == (16, 32)
    assert set(np.unique(out["mask"]).tolist()) == {0, 1, 2, 255}  # no interpolated ids


def test_fit_size_scales_each_image_to_fit_before_the_random_factor():
    """mmsegmentation's ADE20K and VOC recipe (RandomResize scale (2048, 512), ratio_range
    (0.5, 2.0)) first scales each image to fit 2048 x 512: a 100 x 400 and a 1000 x 500
    (H x W) image are 512 x 2048 and 1024 x 512 at factor 1, half that at 0.5."""
    mask = np.tile(np.array([0, 1, 2, 255], dtype=np.uint8), (1000, 125))
    for scale, sizes in ((1.0, [(512, 2048), (1024, 512)]), (0.5, [(256, 1024), (512, 256)])):
        transform = build_transform(scale_range=(scale, scale), fit_size=(2048, 512))
        for (h, w), size in zip(((100, 400), (1000, 500)), sizes):
            out = transform(image=np.zeros((h, w, 3), np.uint8), mask=mask[:h, :w])
            assert out["image"].shape[:2] == out["mask"].shape == size
            assert set(np.unique(out["mask"]).tolist()) == {0, 1, 2, 255}


def test_voc_tree_with_split_file_and_palette_masks(tmp_path, caplog):
    root = tmp_path / "VOC2012"
    for name in ("2007_000032", "2007_000039", "2007_000063"):
        _image(root / "JPEGImages" / f"{name}.jpg", 8, 8)
    palette_mask = Image.fromarray(np.array([[0, 1], [15, 255]], dtype=np.uint8).repeat(4, 0)
                                   .repeat(4, 1), mode="P")
    palette_mask.putpalette([0, 0, 0, 128, 0, 0] + [64, 128, 0] * 254)  # colours != ids
    for name in ("2007_000032", "2007_000039"):
        (root / "SegmentationClass").mkdir(exist_ok=True)
        palette_mask.save(root / "SegmentationClass" / f"{name}.png")
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("2007_000032\n2007_000039\n")
    records = scan_folder(root / "JPEGImages", root / "SegmentationClass", split_file=split)
    assert [Path(r["mask_file"]).stem for r in records] == ["2007_000032", "2007_000039"]
    mask = read_mask(records[0]["mask_file"])
    assert mask[0, 0] == 0 and mask[0, 4] == 1 and mask[4, 0] == 15 and mask[4, 4] == 255
    # names written with their image suffix: the same images; a suffix not the images' is
    # named with what was looked for
    split.write_text("2007_000032.jpg\n2007_000039\n")
    assert scan_folder(root / "JPEGImages", root / "SegmentationClass",
                       split_file=split) == records
    # a name listed twice (an oversampling in mmsegmentation) was merged without a word
    split.write_text("2007_000032\n2007_000039\n2007_000039.jpg\n")
    with caplog.at_level(logging.WARNING):
        assert scan_folder(root / "JPEGImages", root / "SegmentationClass",
                           split_file=split, split="train") == records
    assert (f"{split} (data.train) lists images more than once, 1 of them ('2007_000039' 2 "
            f"times): each is used once") in caplog.text
    # an image whose suffix is in another case (.JPG): found, as a folder scan finds it
    (root / "JPEGImages/2007_000039.jpg").rename(root / "JPEGImages/2007_000039.JPG")
    found = scan_folder(root / "JPEGImages", root / "SegmentationClass", split_file=split)
    assert [Path(r["file_name"]).name for r in found] == ["2007_000032.jpg", "2007_000039.JPG"]
    split.write_text("2007_000032\n2007_000039.jpg\n")  # listed with its suffix too
    assert scan_folder(root / "JPEGImages", root / "SegmentationClass",
                       split_file=split) == found
    split.write_text("2007_000032.jpg\n2007_000039\n")
    (root / "JPEGImages/2007_000039.JPG").rename(root / "JPEGImages/2007_000039.jpg")
    split.write_text("2007_000032.png\n")
    with pytest.raises(DatasetError, match=r"(?s)train.txt: 1 listed images not found \(names "
                       r"are listed without their suffix, img_suffix '.jpg' added: "
                       r"'2007_000032.png' looks for '2007_000032.png.jpg'\).*"):
        scan_folder(root / "JPEGImages", root / "SegmentationClass", split_file=split)
    # DeepLab's list files pair each image with its mask: named as such
    split.write_text("/JPEGImages/2007_000032.jpg /SegmentationClass/2007_000032.png\n")
    with pytest.raises(DatasetError, match=r"train.txt: 1 listed images not found \(one image "
                       r"name per line, as VOC's ImageSets/Segmentation/train.txt: "
                       r"'/JPEGImages/2007_000032.jpg /SegmentationClass/2007_000032.png' holds "
                       r"two paths, DeepLab's list format"):
        scan_folder(root / "JPEGImages", root / "SegmentationClass", split_file=split)
    split.write_text("photo 1.png\n")  # a name with a space is not a pair of paths
    with pytest.raises(DatasetError, match=r"\(names are listed without their suffix"):
        scan_folder(root / "JPEGImages", root / "SegmentationClass", split_file=split)
    # the third image has no mask: scanning the whole folder names it
    with pytest.raises(DatasetError, match="(?s)1 of 3 images .* no mask.*2007_000063.jpg"):
        scan_folder(root / "JPEGImages", root / "SegmentationClass")


def test_images_and_masks_in_one_folder(tmp_path, caplog):
    """x.png beside x_mask.png: the masks were taken as images too ("4 of 8 images have no
    mask (expected .../v00_mask_mask.png)")."""
    for name in ("v00", "v01"):
        _image(tmp_path / f"{name}.png", 4, 8)
        _mask(tmp_path / f"{name}_mask.png", np.ones((4, 8), dtype=np.uint8))
    _image(tmp_path / "gas_mask.png", 4, 8)  # an image named so, without a gas.png
    _mask(tmp_path / "gas_mask_mask.png", np.ones((4, 8), dtype=np.uint8))
    records = scan_folder(tmp_path, tmp_path, img_suffix=".png", mask_suffix="_mask.png")
    assert [(Path(r["file_name"]).name, Path(r["mask_file"]).name) for r in records] == [
        ("gas_mask.png", "gas_mask_mask.png"), ("v00.png", "v00_mask.png"),
        ("v01.png", "v01_mask.png")]
    # the mask folder given as img_dir too (one suffix): each mask its own image, trained
    # and scored without a word
    with pytest.raises(DatasetError, match=r"are their own masks \(img_suffix '.png' = "
                                           r"mask_suffix '.png' in one folder\)"):
        scan_folder(tmp_path, tmp_path, img_suffix=".png", mask_suffix=".png")
    with pytest.raises(DatasetError, match="are their own masks"):  # the folder written twice
        scan_folder(tmp_path, tmp_path / "." / ".." / tmp_path.name, img_suffix=".png",
                    mask_suffix=".png")
    # images named x_image.png beside their masks x.png; x.jpg beside x.png: no mask is
    # taken for an image, nor named as an image left out
    other = tmp_path / "other"
    for name in ("v00", "v01"):
        _image(other / f"{name}_image.png", 4, 8)
        _mask(other / f"{name}.png", np.ones((4, 8), dtype=np.uint8))
        _image(other / f"{name}.jpg", 4, 8)
    with caplog.at_level(logging.WARNING):
        records = scan_folder(other, other, img_suffix="_image.png", mask_suffix=".png")
    assert [Path(r["mask_file"]).name for r in records] == ["v00.png", "v01.png"]
    assert caplog.text.endswith("left out (a split reads the images of one ending, "
                                "data.<split>.img_suffix: convert these to it to use them): "
                                "v00.jpg, v01.jpg\n")  # the jpgs, not the masks
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        records = scan_folder(other, other, img_suffix=".jpg", mask_suffix=".png")
    assert [Path(r["mask_file"]).name for r in records] == ["v00.png", "v01.png"]
    assert not caplog.text  # the masks were named as images left out


def test_cityscapes_tree_with_suffixes(tmp_path):
    for city, name in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        _image(tmp_path / "leftImg8bit/train" / city / f"{name}_leftImg8bit.png", 4, 8)
        _mask(tmp_path / "gtFine/train" / city / f"{name}_gtFine_labelTrainIds.png",
              np.full((4, 8), 18, dtype=np.uint8))
    records = scan_folder(tmp_path / "leftImg8bit/train", tmp_path / "gtFine/train",
                          img_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelTrainIds.png")
    assert [r["mask_file"] for r in records] == [
        str(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"),
        str(tmp_path / "gtFine/train/bonn/bonn_000001_000019_gtFine_labelTrainIds.png")]


def test_mask_size_mismatch_names_the_files(tmp_path):
    img_dir, mask_dir = _folder(tmp_path, n=1)
    _mask(mask_dir / "000.png", np.zeros((21, 30), dtype=np.uint8))
    dataset = build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)), "val")
    with pytest.raises(DatasetError, match=r"mask .*000.png is 30x21 but image .*000.jpg is 30x20"):
        dataset[0]


def test_class_ids_outside_declared_classes_name_the_file(tmp_path):
    img_dir, mask_dir = _folder(tmp_path, n=1)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[3, 3], mask[4, 4], mask[5, 5] = 3, 254, 255  # 3 classes declared: 0..2 (+255)
    _mask(mask_dir / "000.png", mask)
    dataset = build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)), "val")
    with pytest.raises(DatasetError, match=r"000.png has class ids \[3, 254\] outside the 3"):
        dataset[0]


def test_colour_mask_is_rejected(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DatasetError, match="rgb.png is an RGB image"):
        read_mask(path)


def test_masks_beyond_uint8_ids(tmp_path):
    """16-bit ids read when in range; float masks (0.7 became class 0) and values outside
    0..255 are refused."""
    Image.fromarray(np.array([[0, 3], [255, 1]], dtype=np.uint16)).save(tmp_path / "i16.png")
    assert read_mask(tmp_path / "i16.png").tolist() == [[0, 3], [255, 1]]
    Image.fromarray(np.array([[0, 300], [2, 1]], dtype=np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DatasetError, match=r"big.png \(I;16\) has values 0..300"):
        read_mask(tmp_path / "big.png")
    Image.fromarray(np.array([[0.0, 0.7], [1.0, 2.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match="f.tif .* holds float32 values; class ids must be"):
        read_mask(tmp_path / "f.tif")


def test_unreadable_image_is_skipped_and_counted(tmp_path):
    img_dir, mask_dir = _folder(tmp_path, n=2)
    (img_dir / "001.jpg").write_bytes(b"not a jpeg")
    dataset = build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)), "val")
    assert dataset[1] is None and dataset.num_skipped == 1
    assert dataset[0] is not None


def test_a_mask_cut_short_is_skipped_in_training_and_named_in_val(tmp_path, caplog):
    """A training image cut short was skipped and counted, its mask cut short stopped the run
    (after hours, on a copy interrupted mid-file). An empty one is named before training."""
    img_dir, mask_dir = _folder(tmp_path, n=3)
    mask = mask_dir / "001.png"
    mask.write_bytes(mask.read_bytes()[:60])
    train = build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)), "train")
    with caplog.at_level(logging.WARNING):
        train.check_mask_headers("train")  # its header is whole
    assert "cannot be read" not in caplog.text
    assert train[1] is None and train.num_skipped == 1
    assert train[0] is not None and train[2] is not None
    (mask_dir / "002.png").write_bytes(b"")  # (no header: named before the first step)
    with caplog.at_level(logging.WARNING):
        train.check_mask_headers("train")
    assert (f"data.train: 1 of 3 masks cannot be read (empty, or no image): their samples are "
            f"skipped, as unreadable images are:\n  {mask_dir / '002.png'}") in caplog.text
    assert train[2] is None and train.num_skipped == 2
    val = build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)), "val")
    with pytest.raises(DatasetError, match=rf"data.val: 2 of 3 masks are wrong:\n  cannot read "
                                           rf"mask {mask}: "):
        val.check_masks("val")


def _rect(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def _coco(tmp_path: Path) -> Path:
    h, w = 8, 10
    _image(tmp_path / "images" / "a.jpg", h, w)
    _image(tmp_path / "images" / "empty.jpg", 6, 6, seed=1)
    crowd = {"counts": [48, 32], "size": [h, w]}  # column-major: columns 6..9 are crowd
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0,
         "segmentation": [_rect(1, 1, 6, 6)]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [4, 3, 4, 4], "iscrowd": 0,
         "segmentation": [_rect(4, 3, 8, 7), [1.0, 1.0, 2.0, 2.0]]},  # 2nd polygon: 2 points
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [6, 0, 4, 8], "iscrowd": 1,
         "segmentation": crowd},
        # no segmentation: its pixels are unknown (they were background), its box ignored
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 1], "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [3, 3, 0, 4], "iscrowd": 0},
    ]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w},
                       {"id": 2, "file_name": "empty.jpg", "height": 6, "width": 6}],
            "annotations": anns,
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_instances_become_semantic_masks(tmp_path, caplog):
    ann_file = _coco(tmp_path)
    with caplog.at_level(logging.WARNING):
        records, names = load_coco_semantic(ann_file, tmp_path / "images")
    assert names == ["background", "three", "seven"]  # categories by id: 3 -> 1, 7 -> 2
    assert ("left out 1 polygons with fewer than 3 points; 1 annotations without a usable "
            "segmentation: their boxes are ignored (neither trained nor scored) where no other "
            "object lies, 1 without a box either left out") in caplog.text
    mask = coco_semantic_mask(records[0])
    first = mask_utils.decode(mask_utils.frPyObjects([_rect(1, 1, 6, 6)], 8, 10)).any(-1)
    second = mask_utils.decode(mask_utils.frPyObjects([_rect(4, 3, 8, 7)], 8, 10)).any(-1)
    crowd = np.zeros((8, 10), dtype=bool)
    crowd[:, 6:] = True
    expected = np.zeros((8, 10), dtype=np.uint8)
    expected[first] = 2
    expected[second] = 1  # later instance wins where they overlap
    expected[crowd & ~first & ~second] = 255
    expected[0, 0:2] = 255  # the box of the object without a segmentation
    np.testing.assert_array_equal(mask, expected)
    assert mask[2, 2] == 2 and mask[4, 5] == 1 and mask[0, 8] == 255 and mask[5, 7] == 1
    assert mask[7, 0] == 0
    assert (coco_semantic_mask(records[1]) == 0).all()  # image without annotations
    assert "LVIS" not in caplog.text
    # an LVIS file: its objects unannotated where an image was not checked for them become
    # background pixels, said (it trained and scored as a full labelling without a word)
    data = json.loads(ann_file.read_text())
    for img in data["images"]:
        img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    ann_file.write_text(json.dumps(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_coco_semantic(ann_file, tmp_path / "images")
    assert (f"{ann_file} is an LVIS file: a category is annotated only on the images checked "
            f"for it") in caplog.text


def test_coco_instances_of_normalised_polygons_are_refused(tmp_path):
    """YOLO's 0..1 coordinates: every class map all background."""
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"] = [{**a, "segmentation": [[0.1, 0.1, 0.6, 0.1, 0.6, 0.6]]}
                           for a in data["annotations"] if not a["iscrowd"]]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="all its 4 polygons lie within 0..1"):
        load_coco_semantic(path, tmp_path / "images")


def test_coco_split_from_config(tmp_path, caplog):
    ann_file = _coco(tmp_path)
    cfg = _config(img_dir=str(tmp_path / "images"), ann_file=str(ann_file))
    cfg["data"]["class_names"] = None
    dataset = build_dataset(cfg, "val")
    assert dataset.class_names == ["background", "three", "seven"]
    sample = dataset[0]
    assert sample["gt_sem_seg"].shape == (8, 10) and sample["gt_sem_seg"][4, 5] == 1
    cfg["model"]["num_classes"] = 5
    with pytest.raises(ValueError, match="model.num_classes is 5 but the data has 3"):
        build_dataset(cfg, "val")
    cfg["model"]["num_classes"] = None
    # the file's classes in another order: class 1 would be called "seven" and score threes
    cfg["data"]["class_names"] = ["background", "seven", "three"]
    with pytest.raises(ConfigError, match=r"data.class_names \['background', 'seven', "
                                          r"'three'\] names the COCO file's classes in another "
                                          r"order: .*\['background', 'three', 'seven'\]"):
        build_dataset(cfg, "val")
    cfg["data"]["class_names"] = ["bg", "3", "7"]  # other words for them: taken, said (once:
    with caplog.at_level(logging.WARNING):         # each split's dataset said it again)
        assert build_dataset(cfg, "val").class_names == ["bg", "3", "7"]
        assert build_dataset(cfg, "train").class_names == ["bg", "3", "7"]
    assert caplog.text.count("data.class_names ['bg', '3', '7'] replaces the COCO file's names "
                             "['background', 'three', 'seven']") == 1


def test_coco_file_names_with_windows_separators_find_their_images(tmp_path):
    """As detection's COCO reading does (Windows tools write "sub\\a.jpg")."""
    ann_file = _coco(tmp_path)
    data = json.loads(ann_file.read_text())
    (tmp_path / "images" / "sub dir").mkdir()
    (tmp_path / "images" / "a.jpg").rename(tmp_path / "images" / "sub dir" / "a.jpg")
    data["images"][0]["file_name"] = "sub dir\\a.jpg"
    ann_file.write_text(json.dumps(data))
    records, _ = load_coco_semantic(ann_file, tmp_path / "images")
    assert records[0]["file_name"] == str(tmp_path / "images" / "sub dir" / "a.jpg")


def test_val_coco_classes_other_than_the_trainings_are_refused(tmp_path):
    ann_file = _coco(tmp_path)
    cfg = _config(img_dir=str(tmp_path / "images"), ann_file=str(ann_file))
    cfg["data"]["class_names"] = None
    train = build_dataset(cfg, "train")
    check_same_classes(train, build_dataset(cfg, "val"), cfg)  # the same file: the same classes
    data = json.loads(ann_file.read_text())
    for name, categories in (("renamed", [{"id": 7, "name": "three"}, {"id": 3, "name": "seven"}]),
                             ("extra", [*data["categories"], {"id": 9, "name": "nine"}]),
                             ("fewer", [{"id": 7, "name": "seven"}])):
        other = tmp_path / f"{name}.json"
        anns = [a for a in data["annotations"] if a["category_id"] in
                {c["id"] for c in categories}]
        other.write_text(json.dumps({**data, "categories": categories, "annotations": anns}))
        cfg["data"]["val"]["ann_file"] = str(other)
        with pytest.raises(DatasetError, match=rf"{name}.json gives the classes \['background', "
                                               rf".*the training file \({ann_file}\) "
                                               rf"\['background', 'three', 'seven'\].*other "
                                               rf"classes"):
            check_same_classes(train, build_dataset(cfg, "val"), cfg)


def test_coco_size_differing_from_the_image_names_the_file(tmp_path):
    ann_file = _coco(tmp_path)
    data = json.loads(ann_file.read_text())
    data["images"][1]["height"] = 7
    ann_file.write_text(json.dumps(data))
    records, names = load_coco_semantic(ann_file, tmp_path / "images")
    dataset = SemSegDataset(records, transform=build_transform(), class_names=names)
    with pytest.raises(DatasetError,
                       match=r"COCO height/width is 6x7 but image .*empty.jpg is 6x6"):
        dataset[1]
    # found before a training's first step (it stopped the run when first drawn, hours in)
    with pytest.raises(DatasetError, match=r"data.train: 1 of 2 masks are wrong:"
                                           r"\n  the COCO height/width is 6x7 but image "
                                           r".*empty.jpg is 6x6"):
        dataset.check_mask_headers("train")


def test_unusable_coco_segmentations_are_named_by_annotation(tmp_path):
    """An RLE whose runs do not cover the image decoded to a mask of garbage."""
    ann_file = _coco(tmp_path)
    data = json.loads(ann_file.read_text())
    data["annotations"][2]["segmentation"] = {"size": [8, 10], "counts": [0, 80, 60, 60]}
    data["annotations"][0]["segmentation"] = [[1, 2, 3]]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"(?s)instances.json: 2 unusable segmentations:.*"
                                           r"annotation id=1 \(image id=1, .*\): a polygon "
                                           r"holds an odd count of numbers \(3\).*"
                                           r"annotation id=3 \(image id=1, .*\): RLE segmentation "
                                           r"runs cover 200 pixels, not the image's 8x10 = 80"):
        load_coco_semantic(ann_file, tmp_path / "images")


def test_split_needs_one_mask_source(tmp_path):
    cfg = _config(img_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data.val needs img_dir and exactly one of ann_file"):
        build_dataset(cfg, "val")


def test_missing_images_in_coco_are_listed(tmp_path):
    ann_file = _coco(tmp_path)
    (tmp_path / "images" / "empty.jpg").unlink()
    with pytest.raises(DatasetError, match="(?s)1 image files not found.*empty.jpg"):
        load_coco_semantic(ann_file, tmp_path / "images")


def test_dataset_rejects_too_many_classes():
    with pytest.raises(ValueError, match="number of classes"):
        SemSegDataset([], transform=build_transform(), class_names=[str(i) for i in range(256)])


def test_class_names_file_must_be_a_list_of_names(tmp_path):
    """A JSON file of names is read as the class list; anything else is refused naming the
    file (a mapping, before, gave its keys as the class names, a string one class per letter)."""
    img_dir, mask_dir = _folder(tmp_path)
    cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
    names = tmp_path / "classes.json"
    names.write_text('["background", "a", "b"]')
    cfg["data"]["class_names"] = str(names)
    assert build_dataset(cfg, "val").class_names == ["background", "a", "b"]
    for content in ['{"0": "background", "1": "a", "2": "b"}', '"abc"', '[]',
                    '["background", 1, "b"]', '[{"id": 0, "name": "background"}]']:
        names.write_text(content)
        with pytest.raises(DatasetError, match=f"data.class_names file {names} must hold a "
                                               "JSON list of names"):
            build_dataset(cfg, "val")
    names.write_text('["background", "a",')
    with pytest.raises(DatasetError, match=f"data.class_names file {names}: not valid JSON"):
        build_dataset(cfg, "val")
    text = tmp_path / "classes.txt"  # one name a line; trailing blank lines are fine
    cfg["data"]["class_names"] = str(text)
    text.write_text("background\na\nb\n\n")
    assert build_dataset(cfg, "val").class_names == ["background", "a", "b"]
    text.write_text("background\n\na\nb\n")  # silently made "a" class 1 -> refused
    with pytest.raises(DatasetError, match=f"data.class_names file {text}: line 2 is empty"):
        build_dataset(cfg, "val")
    # Notepad's UTF-8 starts with a byte-order mark: not part of the first name
    text.write_bytes("background\nMüll\nb\n".encode("utf-8-sig"))
    assert build_dataset(cfg, "val").class_names == ["background", "Müll", "b"]
    text.write_bytes("background\nMüll\nb\n".encode("cp1252"))  # "ANSI": a bare traceback
    with pytest.raises(DatasetError, match=f"data.class_names file {text}: not UTF-8 text "
                                           r"\(byte 12: b'\\xfc'\); save it as UTF-8"):
        build_dataset(cfg, "val")
    # a YAML list is read as one (its lines were the names "- background", "- a"); a CSV, one
    # line of names, was one class: refused
    listed = tmp_path / "classes.yaml"
    cfg["data"]["class_names"] = str(listed)
    listed.write_text("- background\n- a\n- b\n")
    assert build_dataset(cfg, "val").class_names == ["background", "a", "b"]
    listed.write_text("0: background\n1: a\n")
    with pytest.raises(DatasetError, match=f"data.class_names file {listed} must hold a YAML "
                                           f"list of names"):
        build_dataset(cfg, "val")
    listed.write_text("- background\n- no\n- b\n")  # YAML's "no" is False
    with pytest.raises(DatasetError, match=r"\(False is no name: YAML reads no, yes, on, off, "
                                           r"null and numbers so; quote it\)"):
        build_dataset(cfg, "val")
    lines = tmp_path / "labels.lst"  # any other suffix: one name a line, as before
    lines.write_text("background\na\nb\n")
    cfg["data"]["class_names"] = str(lines)
    assert build_dataset(cfg, "val").class_names == ["background", "a", "b"]
    csv = tmp_path / "classes.csv"
    csv.write_text("background,a,b\n")
    cfg["data"]["class_names"] = str(csv)
    with pytest.raises(DatasetError, match=r"a .json or .yaml list of names, or a text file of "
                                           r"one name per line .*, not a .csv file"):
        build_dataset(cfg, "val")


def test_val_masks_are_checked_before_training(tmp_path):
    """A wrong val mask used to surface at the evaluation after the whole training."""
    from resnet_detect.segmentation.training import SemSegTask

    img_dir, mask_dir = _folder(tmp_path)
    _image(tmp_path / "val_img/000.jpg", 20, 30)
    _image(tmp_path / "val_img/001.jpg", 20, 30)
    _image(tmp_path / "val_img/002.jpg", 20, 30)
    _mask(tmp_path / "val_ann/000.png", np.full((20, 30), 9))  # an undeclared class
    _mask(tmp_path / "val_ann/001.png", np.zeros((20, 31)))  # not the image's size
    _mask(tmp_path / "val_ann/002.png", np.zeros((20, 30)))
    cfg = OmegaConf.create(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)))
    cfg.data.val.img_dir = str(tmp_path / "val_img")
    cfg.data.val.mask_dir = str(tmp_path / "val_ann")
    with pytest.raises(DatasetError, match=r"(?s)data.val: 2 of 3 masks are wrong:.*000.png has "
                                           r"class ids \[9\].*001.png is 31x20 but image"):
        SemSegTask().prepare(cfg)
    _mask(tmp_path / "val_ann/000.png", np.ones((20, 30)))
    _mask(tmp_path / "val_ann/001.png", np.zeros((20, 30)))
    assert len(SemSegTask().prepare(cfg).val) == 3


def _prepare_warnings(cfg, caplog) -> str:
    """The warnings a training's data preparation logs."""
    from resnet_detect.segmentation.training import SemSegTask

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SemSegTask().prepare(cfg)
    return caplog.text


def test_a_class_no_val_mask_holds_is_named(tmp_path, caplog):
    """Binary masks of 0 and 255 (a common export) made the objects the ignore value: mIoU
    100 for a model that found none. A class no val mask holds is now named, with the share
    of ignored pixels (a warning: a val split without objects and a 255 border looks alike)."""

    img_dir, mask_dir = _folder(tmp_path)
    for i in range(2):
        _image(tmp_path / f"val_img/{i:03d}.jpg", 20, 30)
        binary = np.zeros((20, 30))
        binary[:, 15:] = 255  # the object, as a mask editor wrote it
        _mask(tmp_path / f"val_ann/{i:03d}.png", binary)
    cfg = OmegaConf.create(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)))
    cfg.data.val.img_dir = str(tmp_path / "val_img")
    cfg.data.val.mask_dir = str(tmp_path / "val_ann")
    assert ("data.val: no mask holds 'a' (1), 'b' (2); their IoU is n/a, or 0 where the model "
            "predicts them. 50% of the pixels are "
            "255 (model.ignore_index, not scored). The masks hold 0 and 255 only: if 255 marks "
            "the objects (a binary mask), write them as 1") in _prepare_warnings(cfg, caplog)
    binary[0, 0] = 1  # one pixel of 'a': the masks are not binary
    _mask(tmp_path / "val_ann/001.png", binary)
    assert ("data.val: no mask holds 'b' (2); their IoU is n/a, or 0 where the model "
            "predicts them. 50% of the pixels are 255 (model.ignore_index, not scored)\n"
            ) in _prepare_warnings(cfg, caplog)


def test_an_ignore_index_that_is_a_class_is_warned_of(tmp_path, caplog):
    """model.ignore_index=2 (a class's id, for 255) trained without a word: that class was
    never trained on nor scored, and the mIoU was the other classes'."""
    img_dir, mask_dir = _folder(tmp_path)
    for i in range(3):  # (255 is a class id now: the masks' border a 1 instead)
        mask = np.zeros((20, 30), dtype=np.uint8)
        mask[5:15, 5:20] = 1 + i % 2
        _mask(mask_dir / f"{i:03d}.png", mask)
    cfg = OmegaConf.create(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)))
    said = ("model.ignore_index=2 is the id of the class 'b' (data.class_names): its pixels are "
            "neither trained on nor scored, its IoU is n/a, and the mIoU is the other 2 "
            "classes'; where 2 is not the masks' unlabelled value, set model.ignore_index to "
            "that (255 in VOC's and Cityscapes' trainId masks)")
    assert "model.ignore_index=" not in _prepare_warnings(cfg, caplog)  # 255
    cfg.model.ignore_index = 2
    assert said in _prepare_warnings(cfg, caplog)


def test_training_masks_of_0_and_255_are_warned_of(tmp_path, caplog):
    """Without a val split nothing said it: the run trained on the background alone."""
    img_dir, mask_dir = _folder(tmp_path, n=40)
    cfg = OmegaConf.create(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)))
    assert "masks looked at" not in _prepare_warnings(cfg, caplog)  # 0, 1, 2 and a 255 border
    for i in range(40):
        binary = np.zeros((20, 30))
        binary[:, 15:] = 255  # the object, as a mask editor wrote it
        _mask(mask_dir / f"{i:03d}.png", binary)
    assert ("data.train: the 32 masks looked at hold 0 and 255 only, and 255 is "
            "model.ignore_index: the model would learn the background alone. If 255 marks the "
            "objects (a binary mask), write them as 1") in _prepare_warnings(cfg, caplog)
    binary[0, 0] = 2  # the last mask, looked at too, holds a class: trained on
    _mask(mask_dir / "039.png", binary)
    assert "masks looked at" not in _prepare_warnings(cfg, caplog)


def test_voc_masks_named_without_background_get_both_causes_named(tmp_path, caplog):
    """VOC masks (0 background, 1..2 objects) with the objects named only: the hint said
    0 was unlabelled (ADE20K's reduce_zero_label), and following it trained a model that
    never saw background (85% of the pixels) and scored mIoU 79 without a word."""
    from resnet_detect.segmentation.training import SemSegTask

    img_dir, mask_dir = _folder(tmp_path)  # 0 background around a 1 or 2 object
    cfg = OmegaConf.create(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)))
    cfg.data.class_names = ["a", "b"]
    with pytest.raises(DatasetError, match=r"masks of the values 0..2 are either 3 classes "
                                           r"\(VOC's: 0 is background: name it first, then "
                                           r"the 2 others\) or 2 classes with 0 unlabelled, "
                                           r"neither trained on nor scored \(ADE20K's: "
                                           r"data.reduce_zero_label: true\)"):
        SemSegTask().prepare(cfg)
    cfg.data.reduce_zero_label = True
    assert ("data.val: 75% of the pixels are 255 (model.ignore_index, and the files' 0 under "
            "data.reduce_zero_label): the model is neither trained on nor scored there: if 0 "
            "is a class in your masks (VOC's background), set data.reduce_zero_label: false "
            "and name it first") in _prepare_warnings(cfg, caplog)
    cfg.data.class_names = ["background", "a", "b"]
    cfg.model.num_classes = None  # (the first run's 2)
    # masks of 0..K-1 (Cityscapes' labelTrainIds) under an ADE config's reduce_zero_label: the
    # first class not scored, the others one off, the last never there (mIoU 0.5, the trial's)
    assert ("data.val: no mask holds 'b' (2); their IoU is n/a, or 0 where the model predicts "
            "them. 75% of the pixels are 255 (model.ignore_index, not scored). No mask holds "
            "the value 3 (class 2 under data.reduce_zero_label): if the masks' classes are "
            "0..2 (Cityscapes' labelTrainIds, VOC's), set data.reduce_zero_label: false"
            ) in _prepare_warnings(cfg, caplog)
    cfg.data.reduce_zero_label = False
    cfg.model.num_classes = None
    assert "% of the pixels" not in _prepare_warnings(cfg, caplog)


def test_too_few_names_are_counted_from_every_val_mask_and_explained_once(tmp_path):
    """Training masks of 0..2 and val masks of 0..3 (a class seen in val alone) under two
    names: the hint came from the training masks' sample, once per mask, and told to name
    3 classes; following it, the val masks asked for 4."""
    from resnet_detect.segmentation.training import SemSegTask

    train_img, train_ann = _folder(tmp_path / "train", n=6)
    val_img, val_ann = _folder(tmp_path / "val", n=4)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:8, 2:8] = 3
    _mask(val_ann / "001.png", mask)
    cfg = OmegaConf.create(_config(img_dir=str(train_img), mask_dir=str(train_ann)))
    cfg.data.val.img_dir, cfg.data.val.mask_dir = str(val_img), str(val_ann)
    cfg.data.class_names = ["background", "a"]
    with pytest.raises(DatasetError) as raised:
        SemSegTask().prepare(cfg)
    message = str(raised.value)
    assert message.startswith("data.val: 2 of 4 masks are wrong:")
    assert message.endswith("\nmasks of the values 0..3 are either 4 classes (VOC's: 0 is "
                            "background: name it first, then the 3 others) or 3 classes with "
                            "0 unlabelled, neither trained on nor scored (ADE20K's: "
                            "data.reduce_zero_label: true)")
    assert message.count("are either") == 1 and message.count("has class ids") == 2
    # ids that do not run on from the declared ones (a grey level of 128): no such hint
    mask[:] = 128
    for i in range(4):
        _mask(val_ann / f"{i:03d}.png", mask)
    with pytest.raises(DatasetError, match=r"has class ids \[128\] outside") as raised:
        SemSegTask().prepare(cfg)
    assert "are either" not in str(raised.value)


def test_ade20k_other_named_under_reduce_zero_label_is_warned_of(tmp_path, caplog):
    """ADE20K's 'other' (the files' 0) named as class 0 under reduce_zero_label shifted every
    name by one."""
    img_dir, mask_dir = _folder(tmp_path)
    cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))

    def warned() -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            build_dataset(cfg, "train")
        return caplog.text
    cfg["data"]["reduce_zero_label"] = True
    cfg["data"]["class_names"] = ["other", "a", "b"]
    assert ("data.class_names[0] is 'other', but under data.reduce_zero_label the files' 0 is "
            "unlabelled and class 0 is the files' 1") in warned()
    cfg["data"]["class_names"] = ["background", "a", "b"]  # LoveDA's 1 is background
    assert "data.class_names[0]" not in warned()
    # without reduce_zero_label: 'unlabeled' trained and scored as a class, without a word
    cfg["data"]["reduce_zero_label"] = False
    cfg["data"]["class_names"] = ["unlabeled", "a", "b"]
    assert ("data.class_names[0] is 'unlabeled': the files' 0 is trained on and scored as a "
            "class (in the mIoU); if 0 marks unlabelled pixels (ADE20K's 'other'), set "
            "data.reduce_zero_label: true") in warned()
    cfg["model"]["class_weight"] = [0, 1, 1]  # not trained on: no warning
    assert "data.class_names[0]" not in warned()
    cfg["model"]["class_weight"] = None
    cfg["data"]["class_names"] = ["background", "a", "b"]
    assert "data.class_names[0]" not in warned()


def test_cityscapes_label_ids_are_named(tmp_path):
    _image(tmp_path / "img/a_leftImg8bit.png", 4, 4)
    _mask(tmp_path / "ann/a_gtFine_labelIds.png", np.full((4, 4), 26))
    cfg = _config(img_dir=str(tmp_path / "img"), mask_dir=str(tmp_path / "ann"),
                  img_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelIds.png")
    with pytest.raises(DatasetError, match=r"class ids \[26\] outside .*; Cityscapes' "
                                           r"\*_gtFine_labelIds.png hold its 34 label ids: "
                                           r"train on \*_gtFine_labelTrainIds.png"):
        build_dataset(cfg, "val").load(0)


def test_cityscapes_other_masks_point_to_the_train_ids(tmp_path):
    """gtFine's color.png sorts first: a missing suffix named it, and its refusal advised
    saving a channel of the colours as class ids."""
    _image(tmp_path / "img/a_leftImg8bit.png", 4, 4)
    ann = tmp_path / "ann"
    _mask(ann / "a_gtFine_labelIds.png", np.full((4, 4), 26))
    Image.fromarray(np.zeros((4, 4, 4), np.uint8), mode="RGBA").save(ann / "a_gtFine_color.png")
    assert cv2.imwrite(str(ann / "a_gtFine_instanceIds.png"), np.full((4, 4), 26001, np.uint16))
    cfg = _config(img_dir=str(tmp_path / "img"), mask_dir=str(ann),
                  img_suffix="_leftImg8bit.png")
    with pytest.raises(DatasetError, match=re.escape(
            f"; {ann} holds a_gtFine_color.png, a_gtFine_instanceIds.png, a_gtFine_labelIds.png: "
            f"the masks' suffix is data.train.mask_suffix ('.png' now); Cityscapes' "
            f"*_gtFine_color.png hold colours: train on *_gtFine_labelTrainIds.png")):
        build_dataset(cfg, "train")
    _mask(ann / "a_gtFine_labelTrainIds.png", np.full((4, 4), 1))
    with pytest.raises(DatasetError, match=re.escape(
            f"; {ann} holds a_gtFine_labelTrainIds.png: set "
            f"data.train.mask_suffix=_gtFine_labelTrainIds.png (Cityscapes' 19 training "
            f"classes)")):
        build_dataset(cfg, "train")
    for name, holds in (("color", "colours"), ("instanceIds", "instance ids")):
        with pytest.raises(DatasetError, match=rf"\*_gtFine_{name}.png hold {holds}: train on "
                                               r"\*_gtFine_labelTrainIds.png"):
            read_mask(ann / f"a_gtFine_{name}.png")


def test_jpeg_masks_are_refused(tmp_path):
    """JPEG compression invents class ids along edges, silently where they stay below K."""
    img_dir, mask_dir = _folder(tmp_path, n=1)
    with pytest.raises(ValueError, match=r"data.train.mask_suffix is '.JPG': JPEG's lossy"):
        build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir),
                              mask_suffix=".JPG"), "train")
    jpeg = tmp_path / "mask.png"  # a JPEG under another name
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(jpeg, format="JPEG")
    with pytest.raises(DatasetError, match=r"mask .*mask.png is a JPEG: its lossy compression"):
        read_mask(jpeg)


def test_image_suffix_in_any_case_and_other_images_named(tmp_path, caplog):
    """001.JPG was left out without a word (a camera's upper-case suffix); a .jpeg is still
    not a .jpg, but the warning names it and the key that takes it."""
    for name in ("000.jpg", "001.JPG", "002.jpeg"):
        _image(tmp_path / "img" / name, 8, 8)
        _mask(tmp_path / "ann" / (name.split(".")[0] + ".png"), np.zeros((8, 8)))
    with caplog.at_level(logging.WARNING):
        records = scan_folder(tmp_path / "img", tmp_path / "ann")
    assert [(Path(r["file_name"]).name, Path(r["mask_file"]).name) for r in records] == [
        ("000.jpg", "000.png"), ("001.JPG", "001.png")]
    assert "1 image files do not end with '.jpg' and are left out (a split reads the images " \
           "of one ending, data.<split>.img_suffix: convert these to it to use them): " \
           "002.jpeg" in caplog.text
    # a folder of PNG images under the default .jpg: the key that reads them named
    for name in ("003.png", "004.png", "005.png"):
        _image(tmp_path / "img" / name, 8, 8)
        _mask(tmp_path / "ann" / (name.split(".")[0] + ".png"), np.zeros((8, 8)))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        scan_folder(tmp_path / "img", tmp_path / "ann", split="val")
    assert ("a split reads the images of one ending, data.val.img_suffix: convert these to "
            "it to use them, or read them: data.val.img_suffix=.png, the ending of 3 files "
            "against 2): ") in caplog.text  # the split named (it said data.<split>)
    for name in ("003.png", "004.png", "005.png"):
        (tmp_path / "img" / name).unlink()
    # 001.jpg beside 001.JPG: one was dropped without a word (both would take 001.png)
    _image(tmp_path / "img" / "001.jpg", 8, 8)
    with pytest.raises(DatasetError, match=r"img: 1 name is given twice, their endings "
                                           r"'\.jpg' differing in case alone .*rename or "
                                           r"remove one of each:\n  001\.(JPG and 001\.jpg|jpg "
                                           r"and 001\.JPG) in .*img$"):
        scan_folder(tmp_path / "img", tmp_path / "ann")
    with pytest.raises(DatasetError, match=r"name is given twice"):
        scan_folder(tmp_path / "img", None)  # a test set's predictions would meet too


def test_ignore_index_other_than_255_pads_and_checks_with_it(tmp_path):
    """model.ignore_index=0 (ADE20K's "other"): crops pad masks with 0, and 255 is then an
    undeclared class (before, the padding's 255 failed every step)."""
    for i in range(2):
        _image(tmp_path / f"img/{i}.jpg", 10, 12)
        _mask(tmp_path / f"ann/{i}.png", np.full((10, 12), 1 + i))
    cfg = _config(img_dir=str(tmp_path / "img"), mask_dir=str(tmp_path / "ann"))
    cfg["model"]["ignore_index"] = 0
    cfg["data"]["train"]["crop_size"] = [16, 16]
    train = build_dataset(cfg, "train")
    gt = train[(0, 0)]["gt_sem_seg"]
    assert gt.shape == (16, 16) and set(gt.unique().tolist()) == {0, 1}
    assert int((gt == 1).sum()) == 10 * 12  # the image's pixels; the padding is 0
    _mask(tmp_path / "ann/1.png", np.full((10, 12), 255))
    with pytest.raises(DatasetError, match=r"has class ids \[255\] outside the 3 declared "
                                           r"classes \(0..2, 0 = ignore: model.ignore_index\)"):
        build_dataset(cfg, "val").check_masks("val")
    cfg["model"]["ignore_index"] = 300
    with pytest.raises(ValueError, match="model.ignore_index must be a mask value 0..255"):
        build_dataset(cfg, "val")


def test_an_image_a_pixel_high_or_wide_is_scaled_to_a_pixel_or_more(tmp_path):
    """A thin strip among the training images (1 pixel high) scaled by less than 1 became 0
    pixels high, where OpenCV's resize failed and the run stopped; other images are scaled
    exactly as albumentations' RandomScale scales them."""
    import albumentations as A

    from resnet_detect.segmentation.data import build_transform
    _image(tmp_path / "img/0.jpg", 1, 1)
    _mask(tmp_path / "ann/0.png", np.zeros((1, 1)))
    _image(tmp_path / "img/1.jpg", 1, 128)
    _mask(tmp_path / "ann/1.png", np.ones((1, 128)))
    cfg = _config(img_dir=str(tmp_path / "img"), mask_dir=str(tmp_path / "ann"))
    cfg["data"]["train"]["scale_range"] = [0.4, 0.6]
    train = build_dataset(cfg, "train")  # (crops of 16 x 16: the image at its top left)
    for seed in range(20):
        assert int((train[(0, seed)]["gt_sem_seg"] == 0).sum()) == 1
        assert int((train[(1, seed)]["gt_sem_seg"][0] == 1).sum()) == 16
    scaled = build_transform(scale_range=(0.4, 0.6))
    for seed in range(20):
        scaled.set_random_state(np.random.default_rng(seed), random.Random(seed))
        strip = scaled(image=np.zeros((1, 128, 3), np.uint8), mask=np.ones((1, 128), np.uint8))
        assert strip["image"].shape[:2] == strip["mask"].shape
        assert strip["mask"].shape[0] == 1 and 51 <= strip["mask"].shape[1] <= 76
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    mask = np.random.default_rng(1).integers(0, 4, (37, 53), dtype=np.uint8)
    ours = build_transform(scale_range=(0.4, 1.7))
    plain = A.Compose([A.RandomScale(scale_limit=(0.4 - 1.0, 1.7 - 1.0), p=1.0,
                                     interpolation=cv2.INTER_LINEAR,
                                     mask_interpolation=cv2.INTER_NEAREST)])
    for seed in range(5):
        out = []
        for transform in (ours, plain):
            transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out.append(transform(image=image, mask=mask))
        assert out[0]["image"].shape != image.shape
        assert np.array_equal(out[0]["image"], out[1]["image"])
        assert np.array_equal(out[0]["mask"], out[1]["mask"])


def test_folder_scan_follows_linked_folders_and_skips_hidden_files(tmp_path):
    """A notebook's .ipynb_checkpoints copy and macOS's ._name files stopped the run ("no
    mask"), and the images of a symlinked subfolder were left out; the ImageFolder scan of
    pretraining and tools/demo.py's folders walk the same way (engine.data.files_under)."""
    img_dir, mask_dir = _folder(tmp_path, n=2)
    _image(tmp_path / "city/b/000.jpg", 20, 30)
    _mask(mask_dir / "b/000.png", np.zeros((20, 30)))
    (img_dir / "b").symlink_to(tmp_path / "city/b")
    _image(img_dir / ".ipynb_checkpoints/000-checkpoint.jpg", 20, 30)
    (img_dir / "._001.jpg").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble, not a JPEG
    (img_dir / "002.jpg").symlink_to(tmp_path / "gone.jpg")  # a broken link: not an image
    _image(img_dir / "z_real/000.jpg", 20, 30)
    _mask(mask_dir / "z_real/000.png", np.zeros((20, 30)))
    (img_dir / "a_link").symlink_to(img_dir / "z_real")  # the real folder names its images
    records = scan_folder(img_dir, mask_dir)
    assert [Path(r["file_name"]).relative_to(img_dir).as_posix() for r in records] == [
        "000.jpg", "001.jpg", "b/000.jpg", "z_real/000.jpg"]
    assert records[2]["mask_file"] == str(mask_dir / "b/000.png")


@pytest.mark.parametrize("key, value, message", [
    ("hflip_prob", 2, r"data.train.hflip_prob must be a probability in \[0, 1\], got 2"),
    ("crop_size", [0, 0], r"data.train.crop_size must be 2 positive integers \(pixels\), got "
                          r"\[0, 0\]"),
    ("crop_size", [512], r"data.train.crop_size must be 2 positive integers"),
    ("scale_range", [2.0, 0.5], r"data.train.scale_range must be two finite numbers 0 < min "
                                r"<= max, got \[2.0, 0.5\]"),
    # (albumentations' OverflowError at the first step)
    ("scale_range", [0.5, math.inf], r"data.train.scale_range must be two finite numbers 0 < "
                                     r"min <= max, got \[0.5, inf\]"),
    ("fit_size", [512], r"data.train.fit_size must be 2 positive integers"),
    ("fit_size", [512, 2048], r"data.train.fit_size is \[long side, short side\], got "
                              r"\[512, 2048\]: \[2048, 512\]\?")])
def test_augmentation_values_are_refused_naming_the_key_before_the_data_is_read(
        tmp_path, key, value, message):
    """They reached albumentations' validation, whose message names none of our keys, after
    the folder was read (here: a folder that does not exist is never looked at)."""
    cfg = _config(img_dir=str(tmp_path / "nowhere"), mask_dir=str(tmp_path / "nowhere"))
    cfg["data"]["train"][key] = value
    with pytest.raises(ConfigError, match=message):
        build_dataset(cfg, "train")


def test_training_masks_of_another_size_are_all_named_before_training(tmp_path):
    """A training mask of another size than its image stopped the run when its batch was
    drawn, one mask per run (val masks were checked up front)."""
    for i in range(3):
        _image(tmp_path / f"img/{i}.jpg", 10, 12)
        _mask(tmp_path / f"ann/{i}.png", np.full((10, 12) if i == 1 else (12, 10), 1))
    cfg = _config(img_dir=str(tmp_path / "img"), mask_dir=str(tmp_path / "ann"))
    train = build_dataset(cfg, "train")
    with pytest.raises(DatasetError) as raised:
        train.check_mask_headers("train")
    message = str(raised.value)
    assert message.startswith("data.train: 2 of 3 masks are wrong:")
    for i in (0, 2):
        assert (f"mask {tmp_path}/ann/{i}.png is 10x12 but image {tmp_path}/img/{i}.jpg is "
                f"12x10 (WxH") in message
    _mask(tmp_path / "ann/0.png", np.full((10, 12), 1))
    _mask(tmp_path / "ann/2.png", np.full((10, 12), 1))
    build_dataset(cfg, "train").check_mask_headers("train")  # all fit: nothing raised


def test_training_masks_of_undeclared_classes_are_all_named_before_training(tmp_path,
                                                                           monkeypatch):
    """A training mask holding a class id past the declared classes stopped the run when its
    batch was drawn, one mask per run: where a sample read at the start finds one, every mask
    is checked and all listed."""
    from resnet_detect.segmentation import data
    for i in range(6):
        _image(tmp_path / f"img/{i}.jpg", 10, 12)
        _mask(tmp_path / f"ann/{i}.png", np.full((10, 12), 9 if i in (2, 5) else 1))
    cfg = _config(img_dir=str(tmp_path / "img"), mask_dir=str(tmp_path / "ann"))
    cfg["data"]["class_names"] = ["a", "b", "c"]
    train = build_dataset(cfg, "train")
    monkeypatch.setattr(data, "MASK_SAMPLE", 2)
    sample = np.random.default_rng(0).permutation(6)[:2].tolist()
    assert 2 in sample and 5 not in sample  # the sample finds one of the two
    with pytest.raises(DatasetError) as raised:
        train.check_mask_sample("train")
    lines = str(raised.value).splitlines()
    assert lines[0] == "data.train: 2 of 6 masks are wrong:"
    assert [line.split(" has ")[0] for line in lines[1:]] == [
        f"  mask {tmp_path}/ann/{i}.png" for i in (2, 5)]
    for i in (2, 5):
        _mask(tmp_path / f"ann/{i}.png", np.full((10, 12), 2))
    build_dataset(cfg, "train").check_mask_sample("train")  # all declared: nothing raised


def test_training_masks_in_colour_or_jpeg_are_all_named_before_training(tmp_path):
    """An RGB or gray+alpha mask, or a JPEG named .png, in the training split stopped the run
    when its batch was drawn, hours in: their headers say so before the first step."""
    for i in range(5):
        _image(tmp_path / f"img/{i}.jpg", 10, 12)
        _mask(tmp_path / f"ann/{i}.png", np.ones((10, 12)))
    Image.fromarray(np.ones((10, 12, 3), np.uint8)).save(tmp_path / "ann/1.png")
    Image.fromarray(np.ones((10, 12), np.uint8)).convert("LA").save(tmp_path / "ann/2.png")
    Image.fromarray(np.ones((10, 12), np.uint8)).save(tmp_path / "ann/3.png", format="JPEG")
    Image.fromarray(np.ones((10, 12), np.uint8)).convert("P").save(tmp_path / "ann/4.png")
    train = build_dataset(_config(img_dir=str(tmp_path / "img"),
                                  mask_dir=str(tmp_path / "ann")), "train")
    with pytest.raises(DatasetError) as raised:
        train.check_mask_headers("train")
    assert str(raised.value).splitlines() == [
        "data.train: 3 of 5 masks are wrong:",
        f"  mask {tmp_path}/ann/1.png is an RGB image (colour, 3 channels); masks must hold "
        "one class id per pixel (palette or grayscale PNG): save one channel where every "
        "channel holds the ids (e.g. Image.open(f).getchannel(0).save(f)); colour-coded masks "
        "need each colour mapped to its class id",
        f"  mask {tmp_path}/ann/2.png is an LA image (grey with transparency, 2 channels); masks "
        "must hold one class id per pixel (palette or grayscale PNG): save one channel where "
        "every channel holds the ids (e.g. Image.open(f).getchannel(0).save(f)); colour-coded "
        "masks need each colour mapped to its class id",
        f"  mask {tmp_path}/ann/3.png is a JPEG: its lossy compression changes class ids along "
        "every edge; masks must be PNGs (palette or grayscale)"]
    for i, what in ((1, "an RGB image"), (2, "an LA image"), (3, "a JPEG")):  # the same words
        with pytest.raises(DatasetError, match=f"mask {tmp_path}/ann/{i}.png is {what}"):
            train[i]
    assert train.load(4)[1].tolist() == [[1] * 12] * 10  # a palette mask: its indices


def test_reduce_zero_label_makes_0_ignore_and_shifts_the_classes(tmp_path):
    """ADE20K's masks (mmsegmentation's reduce_zero_label): 0 = unlabelled, 1..K the K classes."""
    img_dir, mask_dir = tmp_path / "img", tmp_path / "ann"
    _image(img_dir / "000.jpg", 2, 5)
    _mask(mask_dir / "000.png", np.array([[0, 1, 2, 3, 255], [3, 3, 0, 1, 2]]))
    cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
    cfg["data"]["reduce_zero_label"] = True
    dataset = build_dataset(cfg, "val")
    assert dataset.load(0)[1].tolist() == [[255, 0, 1, 2, 255], [2, 2, 255, 0, 1]]
    dataset.check_masks("val")
    cfg["data"]["reduce_zero_label"] = False  # the same file as class ids: 3 is out of range
    with pytest.raises(DatasetError, match=r"000.png has class ids \[3\] outside the 3 declared"):
        build_dataset(cfg, "val").check_masks("val")
    _mask(mask_dir / "000.png", np.array([[0, 1, 2, 4, 255], [7, 3, 0, 1, 2]]))
    cfg["data"]["reduce_zero_label"] = True
    with pytest.raises(DatasetError, match=r"000.png has values \[4, 7\] over the 3 declared "
                                           r"classes \(data.reduce_zero_label: 0 = unlabelled, "
                                           r"1..3 = classes 0..2, 255 = ignore\)"):
        build_dataset(cfg, "val").load(0)


def test_reduce_zero_label_is_refused_where_it_cannot_mean_mmsegmentations(tmp_path):
    img_dir, mask_dir = _folder(tmp_path)
    cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
    cfg["data"]["reduce_zero_label"] = True
    cfg["model"]["ignore_index"] = 100
    with pytest.raises(ConfigError, match=r"model.ignore_index must be 255, got 100"):
        build_dataset(cfg, "val")
    coco = _config(img_dir=str(tmp_path / "images"), ann_file=str(_coco(tmp_path)))
    coco["data"]["reduce_zero_label"] = True
    with pytest.raises(ConfigError, match=r"data.reduce_zero_label is for mask files whose 0 "
                                          r"means unlabelled; data.val.ann_file is a COCO file"):
        build_dataset(coco, "val")
    cfg["model"]["ignore_index"] = 255
    cfg["data"]["class_names"] = [f"c{i}" for i in range(255)]  # value 255: class or ignore?
    with pytest.raises(ConfigError, match=r"data.reduce_zero_label takes at most 254 classes"):
        build_dataset(cfg, "val")
    from resnet_detect.segmentation.build import load_config
    config = Path(__file__).resolve().parents[2] / "configs/segmentation/deeplabv3_R_50_os16.yaml"
    with pytest.raises(ConfigError, match=r"data.reduce_zero_label must be true or false, got "
                                          r"'maybe'"):
        load_config(config, ["data.reduce_zero_label=maybe"])


def test_fine_tuning_weights_of_renamed_classes_is_warned_of(tmp_path, small_config, caplog):
    """A segmenter's weights trained on [background, b, a] fine-tuned on [background, a, b]
    loaded without a word (tools/eval.py refuses them): each class kept the other's training."""
    from resnet_detect.backbones.weights import save_checkpoint
    from resnet_detect.segmentation.build import build_model, provenance_from_config
    from resnet_detect.segmentation.training import SemSegTask

    img_dir, mask_dir = _folder(tmp_path)
    cfg = small_config(num_classes=3)
    cfg["data"] = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))["data"]
    weights = tmp_path / "w.pth"
    for recorded, expected in (
            (["background", "b", "a"], "w.pth was trained on the same 3 classes in another "
                                       "order: class 1 'b' -> 'a', 2 'a' -> 'b' keeps what it "
                                       "learnt as the other class"),
            (["background", "cat", "b"], "w.pth was trained on 3 other classes: the "
                                         "classifiers start from theirs, each under a new name "
                                         "(1 'cat' -> 'a')"),
            (["background", "a", "b"], None), (["class_0", "class_1", "class_2"], None)):
        save_checkpoint(weights, build_model(small_config(num_classes=3)).state_dict(),
                        provenance_from_config(cfg, recorded))
        task, run = SemSegTask(), OmegaConf.create(cfg)
        task.prepare(run)
        run.model.weights = str(weights)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            task.build_model(run)
        if expected is None:
            assert "was trained on" not in caplog.text
        else:
            assert expected in caplog.text


def test_no_class_names_is_a_config_error(tmp_path):
    """A ValueError's traceback (exit 1) for data.class_names=[] or an empty names file."""
    img_dir, mask_dir = _folder(tmp_path)
    (tmp_path / "names.txt").write_text("")
    for names in ([], str(tmp_path / "names.txt")):
        cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
        cfg["data"]["class_names"] = names
        with pytest.raises(ConfigError, match=r"the number of classes \(data.class_names, "
                                              r"background included\) must be in 1..255, got 0"):
            build_dataset(cfg, "train")


def test_crops_that_would_be_mostly_padding_are_warned_of(tmp_path, caplog):
    """Images smaller than the training crop once scaled trained on crops mostly of padding
    without a word (the base config's 512 crops of 256-pixel images)."""
    from resnet_detect.segmentation.data import padded_share
    assert padded_share((100, 100), (200, 200), (1.0, 1.0)) == 0.75
    # heights cover s/2 of the crop, widths all of it, for s uniform in [1, 2]: 1 - 0.75
    assert padded_share((100, 200), (200, 200), (1.0, 2.0)) == pytest.approx(0.25, abs=1e-3)
    assert padded_share((300, 300), (200, 200), (1.0, 2.0)) == 0.0
    # fitted to 400 x 200 (long, short) first: 200 x 200, then covering the crop
    assert padded_share((100, 100), (200, 200), (1.0, 1.0), (400, 200)) == 0.0
    img_dir, mask_dir = _folder(tmp_path, h=20, w=30)
    train = build_dataset(_config(img_dir=str(img_dir), mask_dir=str(mask_dir)), "train")
    for crop, scale, warned in (([16, 16], [1.0, 1.0], False), ([40, 40], [1.0, 1.0], True),
                                ([40, 40], [2.0, 3.0], False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            train.warn_of_padded_crops(crop, scale)
        assert ("on average 62% of each 40x40 crop (data.train.crop_size, HxW) is padding"
                in caplog.text) is warned, (crop, scale, caplog.text)
        if warned:
            assert f"{img_dir}/00" in caplog.text and ": 30x20, WxH" in caplog.text


def test_a_missing_folder_is_named_with_what_it_is_and_its_split(tmp_path):
    """'folder not found: /x' said neither which folder (images, masks) nor of which split."""
    img_dir, mask_dir = _folder(tmp_path)
    for split in ("train", "val"):
        for key, expected in (("img_dir", "image"), ("mask_dir", "mask")):
            cfg = _config(img_dir=str(img_dir), mask_dir=str(mask_dir))
            cfg["data"][split][key] = str(tmp_path / "nope")
            with pytest.raises(FileNotFoundError, match=f"^{expected} folder not found: "
                                                        f"{tmp_path}/nope \\(data.{split}\\)$"):
                build_dataset(cfg, split)


def test_the_public_datasets_classes_and_colours_are_named(tmp_path, monkeypatch, caplog):
    """Cityscapes' 19 or ADE20K's 150 names were typed by hand, in order (a wrong order trains
    silently and mislabels every per-class IoU): data.class_names=cityscapes (ade20k, voc)
    and data.palette=cityscapes (voc) name them, as mmsegmentation's datasets carry them."""
    from resnet_detect.segmentation.data import resolve_class_names, resolve_palette

    def names(value):
        return resolve_class_names({"data": {"class_names": value},
                                    "model": {"num_classes": None}})
    city = names("cityscapes")
    assert len(city) == 19 and city[:3] == ["road", "sidewalk", "building"]
    assert city[11:13] == ["person", "rider"] and city[-1] == "bicycle"
    ade = names("ADE20K")
    assert len(ade) == len(set(ade)) == 150 and ade[:3] == ["wall", "building", "sky"]
    assert ade[7] == "bed" and ade[141] == "crt screen" and ade[-1] == "flag"
    voc = names("voc")
    assert len(voc) == 21 and voc[0] == "background" and voc[15] == "person"
    colours = resolve_palette("cityscapes", 19)
    assert colours.shape == (19, 3) and colours[0].tolist() == [128, 64, 128]  # road
    assert colours[13].tolist() == [0, 0, 142] and colours[18].tolist() == [119, 11, 32]
    voc_colours = resolve_palette("voc", 21)  # the colours of VOC's SegmentationClass PNGs
    assert voc_colours[:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert voc_colours[15].tolist() == [192, 128, 128] and voc_colours[20].tolist() == [0, 64, 128]
    # the automatic colours, said (data.palette=ade20k was taken as mmsegmentation's without a
    # word)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(resolve_palette("ade20k", 150), palette(150))
    assert ("data.palette=ade20k: no colour table of ade20k is kept here: its classes take the "
            "automatic colours") in caplog.text
    with pytest.raises(ConfigError, match=r"data.palette=cityscapes has 19 colours for the 21 "):
        resolve_palette("cityscapes", 21)
    with pytest.raises(FileNotFoundError, match=r"data.class_names file not found: citiscapes "
                                                r"\(or a dataset's name: cityscapes, ade20k, "
                                                r"voc\)"):
        names("citiscapes")
    monkeypatch.chdir(tmp_path)  # a file of that name is read, as before
    (tmp_path / "voc").write_text("background\nboat\n")
    assert names("voc") == ["background", "boat"]
