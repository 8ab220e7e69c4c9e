"""data.train.mask_format=polygon: Mask R-CNN targets rasterised from each object's polygons
inside its RoI (detectron2's), moved with the image's resize and flip."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from resnet_detect.detection.data import build_train_dataset
from resnet_detect.detection.data.polygons import PolygonMasks
from resnet_detect.detection.roi_heads import MaskRCNNHead
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.tasks import load_task_config
from tests.tools.test_train_eval_demo import (ROOT, data, data_overrides,
                                              load_tool)

CONFIG = ROOT / "configs/synthetic/mask_rcnn_R_18_FPN.yaml"
# fixtures imported to apply here too: the autouse log clean-up and the tiny synthetic set
__all__ = ["data"]


def test_a_rectangle_fills_its_own_box_and_half_of_a_box_twice_as_wide() -> None:
    rectangle = PolygonMasks([[np.array([10, 20, 38, 20, 38, 48, 10, 48.0])]])
    targets = rectangle.rasterize_within(np.array([[10, 20, 38, 48], [10, 20, 66, 48],
                                                   [24, 20, 52, 48]], dtype=np.float32),
                                         np.array([0, 0, 0]), 28)
    assert targets.dtype == np.float32 and targets.shape == (3, 28, 28)
    assert (targets[0] == 1).all()
    assert (targets[1][:, :14] == 1).all() and (targets[1][:, 14:] == 0).all()
    assert (targets[2][:, :14] == 1).all() and (targets[2][:, 14:] == 0).all()


def _datasets(root: Path, *extra: str):
    common = [f"data.train.ann_file={root}/coco/train.json",
              f"data.train.img_dir={root}/images/train", "model.backbone.weights=null", *extra]
    return [build_train_dataset(load_task_config(CONFIG, [*common, *fmt])[1])[0]
            for fmt in ([], ["data.train.mask_format=polygon"])]


def _centre(targets: np.ndarray) -> np.ndarray:
    """(P, 2) x, y centroid of each (P, 28, 28) target, in its bins."""
    weights = targets / np.maximum(targets.sum((1, 2), keepdims=True), 1e-9)
    ys, xs = np.mgrid[:targets.shape[1], :targets.shape[2]]
    return np.stack([(weights * xs).sum((1, 2)), (weights * ys).sum((1, 2))], axis=1)


@pytest.mark.parametrize("aligned", [False, True])
def test_polygon_and_bitmask_targets_agree_and_a_flip_does_not_move_them(
        data: Path, aligned: bool) -> None:
    """Each object's polygon target in its own box against the RoIAlign of its resized
    bitmap, unaligned (the configs' default, torchvision's) or aligned: the same shape up to
    the bitmap's soft edges, and flipped images' targets where the others' are. Before, the
    flipped bitmaps were a pixel left (the resize's half pixel mirrored by a flip after it),
    and an aligned RoIAlign's half a pixel right and down (that half pixel, which only an
    unaligned RoIAlign takes back)."""
    offsets, ious, sizes = {}, [], set()
    for flip in (0.0, 1.0):
        bitmask, polygon = _datasets(data, f"data.train.hflip_prob={flip}",
                                     f"model.roi_heads.pooler_aligned={aligned}")
        offsets[flip] = []
        for index in range(len(bitmask)):
            for seed in range(3):
                a, b = bitmask[(index, seed)], polygon[(index, seed)]
                assert torch.equal(a["gt_boxes"], b["gt_boxes"])
                assert torch.equal(a["image"], b["image"])
                assert len(b["gt_masks"]) == len(a["gt_masks"])
                sizes.add(tuple(a["image"].shape))
                boxes = a["gt_boxes"]
                rois = torch.cat([torch.arange(len(boxes))[:, None].float(), boxes], dim=1)
                soft = roi_align(a["gt_masks"][:, None].float(), rois, (28, 28), 1.0, 0,
                                 aligned=aligned)[:, 0].numpy()
                hard = b["gt_masks"].rasterize_within(boxes.numpy(), np.arange(len(boxes)), 28)
                assert np.abs(soft - hard).mean() < 0.055
                both = ((soft >= 0.5) & (hard >= 0.5)).sum((1, 2))
                either = ((soft >= 0.5) | (hard >= 0.5)).sum((1, 2))
                ious.extend(both / np.maximum(either, 1))
                bin_size = (boxes[:, 2:] - boxes[:, :2]).numpy() / 28  # pixels per bin, x, y
                offsets[flip].extend((_centre(soft) - _centre(hard)) * bin_size)
    assert min(ious) > 0.88 and np.mean(ious) > 0.96
    moved = np.mean(offsets[1.0], axis=0) - np.mean(offsets[0.0], axis=0)
    assert np.abs(moved).max() < 0.1, moved
    if aligned:  # (unaligned: torchvision's targets, off where a resize keeps the scale)
        assert np.abs(np.mean(offsets[0.0] + offsets[1.0], axis=0)).max() < 0.05
    assert len(sizes) > 1  # resized to several training scales


def test_large_scale_jitter_moves_both_mask_formats_with_the_image(data: Path) -> None:
    """data.train.jitter_size: the masks follow the drawn resize, the flip and the crop; an
    object the crop cut takes the tight box of what is left of its mask (detectron2's
    recompute_boxes), one of which nothing is left is dropped; the polygon targets (moved by
    the crop too) are the bitmaps' shapes."""
    # 96 x 128 images resized to 77..128 wide (at most their size: each bitmap's pixels stay
    # within a pixel of the polygon's), then cut to 64 x 64
    bitmask, polygon = _datasets(data, "data.train.jitter_size=64",
                                 "data.train.jitter_scale=[1.2,2.0]")
    ious, cropped, refitted = [], 0, 0
    for index in range(len(bitmask)):
        record = bitmask.record(index)
        for seed in range(3):
            a, b = bitmask[(index, seed)], polygon[(index, seed)]
            assert torch.equal(a["image"], b["image"])
            height, width = a["image"].shape[1:]
            assert height <= 64 and width <= 64 and a["gt_masks"].shape[1:] == (height, width)
            cropped += max(record["height"], record["width"]) * 1.2 * 64 / 128 > 64
            for sample in (a, b):
                masks = sample["gt_masks"]
                pixels = (masks.numpy() if isinstance(masks, torch.Tensor)
                          else masks.bitmasks(height, width))
                assert len(pixels) == len(sample["gt_boxes"]) == len(sample["gt_classes"])
                for mask, box in zip(pixels, sample["gt_boxes"].numpy()):
                    ys, xs = np.nonzero(mask)  # every object keeps some of its mask, in its box
                    tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    assert (tight[:2] >= np.floor(box[:2]) - 1).all()
                    assert (tight[2:] <= np.ceil(box[2:]) + 1).all()
                    if sample is a and ((box[0] == 0) | (box[1] == 0) | (box[2] == width)
                                        | (box[3] == height)):
                        refitted += np.array_equal(tight, box)
            if len(a["gt_boxes"]) != len(b["gt_boxes"]):  # a sliver in one rasterisation alone
                continue
            edge = ((a["gt_boxes"][:, :2] == 0).any(1) | (a["gt_boxes"][:, 2] == width)
                    | (a["gt_boxes"][:, 3] == height))
            assert torch.equal(a["gt_boxes"][~edge], b["gt_boxes"][~edge])  # the file's boxes
            # refitted to two rasterisations of the object, a pixel apart at each side
            assert ((a["gt_boxes"][edge] - b["gt_boxes"][edge]).abs() <= 2).all()
            boxes = a["gt_boxes"]
            rois = torch.cat([torch.arange(len(boxes))[:, None].float(), boxes], dim=1)
            soft = roi_align(a["gt_masks"][:, None].float(), rois, (28, 28), 1.0, 0)[:, 0].numpy()
            hard = b["gt_masks"].rasterize_within(boxes.numpy(), np.arange(len(boxes)), 28)
            both = ((soft >= 0.5) & (hard >= 0.5)).sum((1, 2))
            ious.extend(both / np.maximum(((soft >= 0.5) | (hard >= 0.5)).sum((1, 2)), 1))
    assert cropped > 0 and refitted > 0  # the crop did cut objects, whose boxes were refitted
    assert len(ious) > 50 and np.mean(ious) > 0.9


@pytest.mark.parametrize("override, message", [
    ("data.train.jitter_size=0", r"data.train.jitter_size must be a positive integer \(pixels: "
                                 r"the square's side; detectron2's LSJ: 1024\), got 0"),
    ("data.train.jitter_size=[512]", r"data.train.jitter_size must be a positive integer .*got "
                                     r"\[512\]"),
    ("data.train.jitter_scale=[2.0,0.1]", r"data.train.jitter_scale must be \[lowest, highest\].*"
                                          r"got \[2.0,0.1\]"),
    ("data.train.jitter_scale=0.5", r"data.train.jitter_scale must be .*got 0.5"),
])
def test_large_scale_jitter_keys_are_checked(data: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _datasets(data, "data.train.jitter_size=64", override)


def test_scale_per_batch_is_not_used_with_large_scale_jitter(data: Path, caplog) -> None:
    """The quickstart configs set scale_per_batch (a min_size per batch), which jitter has not:
    said, and each image draws its own factor."""
    with caplog.at_level(logging.WARNING):
        datasets = _datasets(data, "data.train.jitter_size=64",
                             "data.train.scale_per_batch=true")
    assert ("data.train.scale_per_batch (one min_size drawn per batch) is not used with "
            "data.train.jitter_size" in caplog.text)
    assert datasets[0].batch_keys([(0, 1), (1, 2)]) == [(0, 1), (1, 2)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _datasets(data, "data.train.jitter_size=64", "data.train.scale_per_batch=false")
    assert "scale_per_batch" not in caplog.text


def test_polygon_targets_lie_where_the_polygon_does_for_either_pooler() -> None:
    """An unaligned mask head's polygon targets were moved half a pixel up and left, where
    its bitmask targets (the resize's half pixel taken back by the RoIAlign) are not."""
    rectangle = PolygonMasks([[np.array([10, 20, 38, 20, 38, 48, 10, 48.0])]])
    # a 7 x 7 pixel RoI over its right edge, 4 bins a pixel: the edge 4 pixels in, at bin 16
    box = torch.tensor([[34.0, 20.0, 41.0, 27.0]])
    for aligned in (False, True):
        head = MaskRCNNHead(in_channels=4, num_classes=1, conv_dims=[4], aligned=aligned)
        targets = head.label_targets([rectangle], [box], [torch.tensor([0])], 28)[0]
        assert (targets[:, :16] == 1).all() and (targets[:, 16:] == 0).all()


def test_a_mask_rcnn_trains_on_polygon_targets(data: Path, tmp_path: Path) -> None:
    result = load_tool("train").main([str(CONFIG), *data_overrides(data),
                                      "model.roi_heads.mask_conv_dims=[32,32]",
                                      "data.train.mask_format=polygon", "train.max_iter=2",
                                      "data.train.jitter_size=160",  # and cropped ones
                                      "train.log_period=1", f"train.output_dir={tmp_path}"])
    assert result["iteration"] == 2
    logged = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert all(0 < line["train/loss_mask"] < 2 for line in logged if "train/loss_mask" in line)


def test_rle_objects_and_unknown_formats_are_refused_before_training(data: Path,
                                                                     tmp_path: Path) -> None:
    content = json.loads((data / "coco/train.json").read_text())
    first = content["annotations"][0]
    image = next(i for i in content["images"] if i["id"] == first["image_id"])
    first["segmentation"] = {"size": [image["height"], image["width"]],
                             "counts": [10, 5, image["height"] * image["width"] - 15]}
    (tmp_path / "rle.json").write_text(json.dumps(content))
    # (the file named first: the message named the annotation ids alone)
    with pytest.raises(DatasetError, match=rf"^{tmp_path / 'rle.json'}: "
                                           r"data.train.mask_format=polygon: 1 objects have an "
                                           rf"RLE segmentation, not polygons \(annotation "
                                           rf"id={first['id']} \(image id={image['id']}\)\)"
                                           r".*mask_format=bitmask"):
        _datasets(data, f"data.train.ann_file={tmp_path / 'rle.json'}")
    with pytest.raises(ConfigError, match="data.train.mask_format must be one of bitmask, "
                                          "polygon, got 'rle'"):
        _datasets(data, "data.train.mask_format=rle")
