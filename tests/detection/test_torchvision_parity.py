"""Parity with torchvision's fasterrcnn_resnet50_fpn: imported weights, same detections and losses.

torchvision's model is built with random weights (no download), its BatchNorm statistics
randomised so that they matter, its RPN and box head weights made non-trivial, and its
state dict imported into our R50-FPN built from configs/detection/faster_rcnn_R_50_FPN_1x.yaml.
Labels: ours are 0..89, torchvision's 1..90 (COCO ids), so ours + 1 must equal theirs.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from resnet_detect.detection import build_model
from resnet_detect.detection.config import defaults as detection_defaults
from resnet_detect.detection.convert import load_detector_weights
from tests.random_reference import PROBE_SIZE, randomize_detector, spread_classes
from resnet_detect.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"

pytestmark = pytest.mark.slow


def _image(gen: torch.Generator, size: tuple[int, int]) -> torch.Tensor:
    """Smooth colour fields plus noise, 0..255 float: features vary over the image."""
    low = torch.rand(1, 3, 10, 14, generator=gen) * 255
    image = F.interpolate(low, size=size, mode="bilinear", align_corners=False)[0]
    return (image + torch.randn(3, *size, generator=gen) * 20).clamp(0, 255).round()


def _spread_classes(tv: torch.nn.Module, gen: torch.Generator) -> None:
    spread_classes(tv, _image(gen, PROBE_SIZE) / 255.0, gen)


def _train_losses(
    tv: torch.nn.Module, ours: torch.nn.Module, image: torch.Tensor, gt: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Training losses of ours and of torchvision on one image, every candidate sampled.

    Args:
        gt: our targets (``gt_boxes``, ``gt_classes`` and optionally ``gt_masks``).
    """
    target = {"boxes": gt["gt_boxes"], "labels": gt["gt_classes"] + 1}
    if "gt_masks" in gt:
        target["masks"] = gt["gt_masks"]
    tv.train(), ours.train()
    for m in tv.modules():  # torchvision's random-weight model has BatchNorm; ours frozen BN
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    # Take every non-ignored anchor and proposal into the losses on both sides: the samplers
    # draw differently (ours without host syncs), and the RoI sampler would otherwise depend on
    # the order of proposals whose scores tie to 1 ulp.
    samplers = [tv.rpn.fg_bg_sampler, ours.rpn.sampler, tv.roi_heads.fg_bg_sampler,
                ours.roi_heads.sampler]
    sizes = [s.batch_size_per_image for s in samplers]
    for sampler in samplers:
        sampler.batch_size_per_image = 10**7
    try:
        expected = tv([image / 255.0], [target])
        got = ours([image], [gt])
    finally:
        for sampler, size in zip(samplers, sizes):
            sampler.batch_size_per_image = size
    return got, expected


# our loss names -> torchvision's
TORCHVISION_LOSS_NAMES = {
    "loss_rpn_cls": "loss_objectness",
    "loss_rpn_loc": "loss_rpn_box_reg",
    "loss_cls": "loss_classifier",
    "loss_box_reg": "loss_box_reg",
}


def _assert_losses_match(
    got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], names: dict[str, str]
) -> None:
    """Each of our losses (``names``: ours -> torchvision's) is positive and within 1e-4."""
    for ours_key, tv_key in names.items():
        assert got[ours_key].item() > 0
        assert torch.allclose(got[ours_key], expected[tv_key], rtol=1e-4, atol=0), (
            ours_key,
            got,
            expected,
        )


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module, torch.Generator]:
    torch.manual_seed(0)
    # _skip_resize: in training torchvision would draw a random scale (and consume RNG);
    # evaluation still resizes (a no-op at 800x1067).
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0, _skip_resize=True
    )
    gen = torch.Generator().manual_seed(1)
    randomize_detector(tv, gen)
    tv.eval()
    _spread_classes(tv, gen)
    cfg = load_config(
        CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml",
        ["model.num_classes=90", "model.roi_heads.score_thresh=0.0"],
        defaults=detection_defaults(),
    )
    ours = build_model(cfg)
    load_detector_weights(ours, tv.state_dict())
    return tv, ours, gen


def test_same_detections_as_torchvision(models: tuple) -> None:
    tv, ours, gen = models
    image = _image(gen, (800, 1067))
    tv.eval(), ours.eval()
    with torch.no_grad():
        assert tv.transform([image / 255.0])[0].image_sizes == [
            (800, 1067)
        ]  # no resizing on their side
        expected = tv([image / 255.0])[0]
        got = ours([image.to(torch.uint8)])[0]
    assert len(expected["boxes"]) == 100 and len(expected["labels"].unique()) >= 5
    assert got["boxes"].shape == expected["boxes"].shape
    assert torch.equal(got["labels"] + 1, expected["labels"])
    assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    assert torch.allclose(got["scores"], expected["scores"], atol=1e-5, rtol=0)


def test_same_losses_as_torchvision(models: tuple) -> None:
    tv, ours, gen = models
    image = _image(gen, (320, 448))
    gt_boxes = torch.tensor(
        [[20.0, 30.0, 150.0, 200.0], [200.0, 60.0, 420.0, 300.0], [30.0, 240.0, 70.0, 300.0]]
    )
    gt_classes = torch.tensor([0, 16, 89])
    got, expected = _train_losses(tv, ours, image, {"gt_boxes": gt_boxes, "gt_classes": gt_classes})
    _assert_losses_match(got, expected, TORCHVISION_LOSS_NAMES)


def test_torchvision_weights_refused_by_detectron2_style_settings(tmp_path: Path) -> None:
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "fasterrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml",
                      ["model.num_classes=90", f"model.weights={path}",
                       "model.backbone.stride_in_1x1=true", "model.roi_heads.pooler_aligned=true"],
                      defaults=detection_defaults())
    with pytest.raises(ValueError, match=r"model.backbone.stride_in_1x1 is true, the weights "
                       r"need false; model.roi_heads.pooler_aligned is true, the weights need "
                       r"false.*set model.backbone.stride_in_1x1=false "
                       r"model.roi_heads.pooler_aligned=false$"):
        build_model(cfg)
    # another network's (an R-18 config): its keys named first, not an anchor setting whose
    # fix only led to the shapes
    small = load_config(CONFIGS.parent / "synthetic/faster_rcnn_R_18_FPN.yaml",
                        ["model.num_classes=90", f"model.weights={path}",
                         "model.backbone.weights=null"], defaults=detection_defaults())
    with pytest.raises(ValueError, match=r"(?s)do not match GeneralizedRCNN \(\S+ holds a "
                                         r"resnet50 backbone, this model's is a resnet18: set "
                                         r"model.backbone.name=resnet50\):\n  unexpected .*"
                                         r"res2.0.conv3.weight.*\n  mis-shaped .*res2.0.conv1."
                                         r"weight: checkpoint \(64, 64, 1, 1\) vs model "
                                         r"\(64, 64, 3, 3\).*\n  and the settings: weights from "
                                         r".* model.anchor_generator.sizes is"):
        build_model(small)
    # a setting that decides a shape (the anchors per location): still named, with the keys
    ratios = load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml",
                         ["model.num_classes=90", f"model.weights={path}",
                          "model.anchor_generator.aspect_ratios=[[0.5,1.0,2.0,4.0]]"],
                         defaults=detection_defaults())
    with pytest.raises(ValueError, match=r"(?s)mis-shaped .*rpn.head.*and the settings: .*"
                                         r"model.anchor_generator.aspect_ratios is "
                                         r"\[\[0.5,1.0,2.0,4.0\]\], the weights need"):
        build_model(ratios)


def test_torchvision_coco_weights_fine_tuned_on_coco_categories_keep_their_rows(
        tmp_path: Path) -> None:
    """torchvision's COCO detector fine-tuned on COCO's categories (all 80, or a few by
    data.classes) restarted its whole classifier ("another class count": 91 slots against
    81): the rows of the data's ids are kept where the data names them as COCO does."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "maskrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
                      ["model.num_classes=2", f"model.weights={path}",
                       "model.backbone.weights=null"], defaults=detection_defaults())
    ours = build_model(cfg, class_names=["bicycle", "dog"], category_ids=[2, 18])
    tv_state, state = tv.state_dict(), ours.state_dict()
    cls = tv_state["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(state["roi_heads.box_predictor.cls_score.weight"], cls[[2, 18, 0]])
    deltas = tv_state["roi_heads.box_predictor.bbox_pred.weight"].view(91, 4, -1)
    assert torch.equal(state["roi_heads.box_predictor.bbox_pred.weight"].view(2, 4, -1),
                       deltas[[2, 18]])
    masks = tv_state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(state["roi_heads.mask_head.predictor.weight"], masks[[2, 18]])
    # other names at those ids (a dataset of its own): the predictors start afresh
    other = build_model(cfg, class_names=["cat", "dog"], category_ids=[2, 18]).state_dict()
    assert not torch.equal(other["roi_heads.box_predictor.cls_score.weight"], cls[[2, 18, 0]])
