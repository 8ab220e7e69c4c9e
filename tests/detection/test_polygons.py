"""data.train.mask_format=polygon: Mask R-CNN targets rasterised from each object's polygons
inside its RoI (detectron2's), moved with the image's resize and flip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from resnet_detect.detection.data import build_train_dataset
from resnet_detect.detection.data.polygons import PolygonMasks
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


@pytest.mark.parametrize("flip,aligned", [(0.0, True), (1.0, True), (0.0, False),
                                          (1.0, False)])
def test_polygon_targets_follow_the_resize_and_flip_as_the_bitmaps_do(
        data: Path, flip: float, aligned: bool) -> None:
    """Each object's polygon target in its own box against RoIAlign of its (resized, maybe
    flipped) bitmap, aligned or not (torchvision's, the configs' default, samples half a
    pixel off): the same shape up to the bitmap's soft edges. A flip, a scale or the half
    pixel applied to one and not the other is off."""
    bitmask, polygon = _datasets(data, f"data.train.hflip_prob={flip}")
    ious, sizes = [], set()
    for index in range(len(bitmask)):
        for seed in range(3):
            a, b = bitmask[(index, seed)], polygon[(index, seed)]
            assert torch.equal(a["gt_boxes"], b["gt_boxes"])
            assert torch.equal(a["image"], b["image"]) and len(b["gt_masks"]) == len(a["gt_masks"])
            sizes.add(tuple(a["image"].shape))
            boxes = a["gt_boxes"]
            rois = torch.cat([torch.arange(len(boxes))[:, None].float(), boxes], dim=1)
            soft = roi_align(a["gt_masks"][:, None].float(), rois, (28, 28), 1.0, 0,
                             aligned=aligned)[:, 0].numpy()
            hard = b["gt_masks"].rasterize_within(boxes.numpy(), np.arange(len(boxes)), 28,
                                                  aligned=aligned)
            assert np.abs(soft - hard).mean() < 0.055
            both = ((soft >= 0.5) & (hard >= 0.5)).sum((1, 2))
            either = ((soft >= 0.5) | (hard >= 0.5)).sum((1, 2))
            ious.extend(both / np.maximum(either, 1))
    assert min(ious) > 0.9 and np.mean(ious) > 0.96
    assert len(sizes) > 1  # resized to several training scales


def test_a_mask_rcnn_trains_on_polygon_targets(data: Path, tmp_path: Path) -> None:
    result = load_tool("train").main([str(CONFIG), *data_overrides(data),
                                      "model.roi_heads.mask_conv_dims=[32,32]",
                                      "data.train.mask_format=polygon", "train.max_iter=2",
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
    with pytest.raises(DatasetError, match=r"data.train.mask_format=polygon: 1 objects have an "
                                           rf"RLE segmentation, not polygons \(image id "
                                           rf"{image['id']}, object \d+\).*mask_format="
                                           r"bitmask"):
        _datasets(data, f"data.train.ann_file={tmp_path / 'rle.json'}")
    with pytest.raises(ConfigError, match="data.train.mask_format must be one of bitmask, "
                                          "polygon, got 'rle'"):
        _datasets(data, "data.train.mask_format=rle")
