"""Detection test-time augmentation (detection.tta, the `test` section): every view's
detections mapped back to the image and merged by one per-class NMS, masks averaged."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from resnet_detect import backbones
from resnet_detect.detection import Predictor, build_model
from resnet_detect.detection.config import load_config
from resnet_detect.detection.training import export_model, make_provenance
from resnet_detect.detection.tta import image_to_view, tta_from_config, view_to_image
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import CategoryMapping

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/synthetic/mask_rcnn_R_18_FPN.yaml"
TINY = ["model.backbone.weights=null", "model.fpn.out_channels=32",
        "model.roi_heads.fc_dims=[64,64]", "model.roi_heads.mask_conv_dims=[16,16]",
        "data.val.min_size=64", "data.val.max_size=200"]
MAPPING = CategoryMapping((2, 7, 40), ("cat", "dog", "emu"))
EVERY = ["model.roi_heads.score_thresh=0.0"]


def tiny_mask_rcnn(folder: Path) -> Path:
    """FOLDER/model_final.pth: a seeded random-weight TINY Mask R-CNN of MAPPING's classes,
    its heads' weights spread so that its scores and masks vary."""
    cfg = load_config(CONFIG, TINY + ["model.num_classes=3"])
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.5)
    torch.nn.init.normal_(model.roi_heads.mask_head.predictor.weight, std=0.3)
    path = folder / "model_final.pth"
    backbones.save_checkpoint(path, model.state_dict(), make_provenance(cfg, MAPPING))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_mask_rcnn(tmp_path_factory.mktemp("ckpt"))


def _image(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _merged(parts: list[dict[str, np.ndarray]], k: int = 100) -> dict[str, np.ndarray]:
    """What one per-class NMS (IoU 0.5, torchvision's) keeps of several predictions."""
    boxes, scores, labels = (torch.from_numpy(np.concatenate([p[key] for p in parts]))
                             for key in ("boxes", "scores", "labels"))
    keep = batched_nms(boxes, scores, labels, 0.5)[:k].numpy()
    return {key: np.concatenate([p[key] for p in parts])[keep]
            for key in ("boxes", "scores", "labels")}


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert len(got["boxes"]) == len(expected["boxes"]) > 10
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-3)
    np.testing.assert_allclose(got["scores"], expected["scores"], rtol=1e-6)
    np.testing.assert_array_equal(got["labels"], expected["labels"])


def test_views_of_several_sizes_are_the_nms_of_each_sizes_predictions(checkpoint: Path) -> None:
    image = _image(0, (80, 120))
    tta = Predictor(None, weights=checkpoint, overrides=EVERY + ["test.min_sizes=[48,72]"])
    per_size = [Predictor(None, weights=checkpoint,
                          overrides=EVERY + [f"data.val.min_size={size}"])(image)
                for size in (48, 72)]
    got = tta(image)
    _assert_same(got, _merged(per_size))
    assert got["masks"].shape == (len(got["boxes"]), 80, 120)
    # both sizes' detections are among those kept
    for part in per_size:
        assert np.isin(got["scores"], part["scores"]).any()


def test_a_flipped_view_is_mapped_back_and_its_masks_flipped_back(checkpoint: Path) -> None:
    # 64 x 96 is the test size itself: the views are the image and image[:, ::-1], exactly
    image = _image(1, (64, 96))
    plain = Predictor(None, weights=checkpoint, overrides=EVERY)
    tta = Predictor(None, weights=checkpoint, overrides=EVERY + ["test.flip=true"])
    mirrored = plain(np.ascontiguousarray(image[:, ::-1]))
    mirrored["boxes"] = (mirrored["boxes"][:, [2, 1, 0, 3]] * [-1, 1, -1, 1]
                         + [96, 0, 96, 0]).astype(np.float32)
    got = tta(image)
    _assert_same(got, _merged([plain(image), mirrored]))
    # the masks of the kept boxes: seen in the image, and mirrored in the flipped image then
    # flipped back, averaged
    model = plain.model
    boxes = torch.from_numpy(got["boxes"])
    labels = torch.from_numpy(np.searchsorted([2, 7, 40], got["labels"]))
    probs = []
    for pixels, view_boxes in ((image, boxes),
                               (image[:, ::-1], boxes[:, [2, 1, 0, 3]] * torch.tensor(
                                   [-1, 1, -1, 1]) + torch.tensor([96, 0, 96, 0]))):
        view = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        with torch.no_grad():
            features = model.backbone(model.preprocess([view])[0])
            probs.append(model.roi_heads.predict_masks(
                features, [{"boxes": view_boxes.float(), "labels": labels}])[0]["mask_probs"])
    expected = (probs[0] + probs[1].flip(-1)) / 2
    detections = tta.tta(model, image)
    torch.testing.assert_close(detections["mask_probs"], expected, atol=1e-5, rtol=0)
    assert not torch.equal(probs[0], probs[1].flip(-1))  # the flip is seen


def test_one_size_twice_is_the_plain_prediction_with_its_masks(checkpoint: Path) -> None:
    """The same view twice: each box kept once, the masks' average is the view's own."""
    image = _image(2, (80, 120))
    plain = Predictor(None, weights=checkpoint, overrides=EVERY)(image)
    got = Predictor(None, weights=checkpoint, overrides=EVERY + ["test.min_sizes=[64,64]"])(image)
    _assert_same(got, plain)
    assert (got["masks"] != plain["masks"]).mean() < 1e-4
    assert plain["masks"].any(axis=(1, 2)).mean() > 0.5


def test_an_image_without_detections(checkpoint: Path) -> None:
    got = Predictor(None, weights=checkpoint, overrides=[
        "model.roi_heads.score_thresh=1.0", "test.flip=true"])(_image(3, (50, 70)))
    assert got["boxes"].shape == (0, 4) and got["masks"].shape == (0, 50, 70)


def test_views_map_boxes_both_ways() -> None:
    boxes = torch.tensor([[10.0, 4.0, 30.0, 20.0]])
    # image 40 x 100 -> view 20 x 50 (half), flipped: x -> 50 - x
    view = image_to_view(boxes, (40, 100), (20, 50), flipped=True)
    torch.testing.assert_close(view, torch.tensor([[35.0, 2.0, 45.0, 10.0]]))
    torch.testing.assert_close(view_to_image(view, (20, 50), (40, 100), flipped=True), boxes)
    torch.testing.assert_close(view_to_image(boxes, (40, 100), (80, 200), flipped=False),
                               boxes * 2)


def test_the_test_section_is_checked_and_one_view_is_plain() -> None:
    assert tta_from_config(load_config(CONFIG, TINY)) is None
    assert tta_from_config(load_config(CONFIG, TINY + ["test.min_sizes=[64]"])) is None
    tta = tta_from_config(load_config(CONFIG, TINY + ["test.flip=true"]))
    assert tta is not None and tta.views == [(64, False), (64, True)] and tta.max_size == 200
    tta = tta_from_config(load_config(CONFIG, TINY + ["test.min_sizes=[48,96]",
                                                      "test.max_size=4000"]))
    assert tta.views == [(48, False), (96, False)] and tta.max_size == 4000
    for bad, key in (("test.min_sizes=[0,64]", "test.min_sizes"), ("test.flip=1", "test.flip"),
                     ("test.max_size=-5", "test.max_size"), ("test.min_sizes=[]",
                                                             "test.min_sizes")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tta_from_config(load_config(CONFIG, TINY + [bad]))


def test_an_export_with_augmentation_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"an exported graph runs one view .*; the config "
                                          r"asks for test\.flip=true: add test\.flip=false$"):
        export_model(None, str(checkpoint), tmp_path / "onnx", overrides=["test.flip=true"])
    assert not (tmp_path / "onnx").exists()
