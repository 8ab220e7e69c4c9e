"""Meta-architecture: preprocessing, box mapping, training, C4/DC5 variants, bad input."""

import re
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from resnet_detect.detection import build_model
from resnet_detect.detection.config import defaults as detection_defaults
from resnet_detect.detection.convert import load_detector_weights, weight_bound_settings
from resnet_detect.engine.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"
BASE = detection_defaults()
TINY = [
    "model.num_classes=3",
    "model.backbone.name=resnet18",
    "model.fpn.out_channels=32",
    "model.roi_heads.fc_dims=[64,64]",
    "model.anchor_generator.sizes=[[16],[32],[64],[128],[256]]",
    "model.rpn.pre_nms_topk_train=200",
    "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=50",
    "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=64",
]


def _config(name: str, overrides: list[str]) -> OmegaConf:
    return load_config(CONFIGS / name, overrides, defaults=BASE)


def tiny_scene(seed: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 96x128 images, each with two bright squares on a dark background."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(2):
        image = torch.full((3, 96, 128), 60, dtype=torch.uint8)
        boxes, classes = [], []
        for j in range(2):
            x0, y0 = (int(torch.randint(0, hi, (1,), generator=gen)) for hi in (80, 50))
            side = int(torch.randint(20, 44, (1,), generator=gen))
            c = (i + j) % 3
            image[c, y0 : y0 + side, x0 : x0 + side] = 250
            boxes.append([x0, y0, min(x0 + side, 128), min(y0 + side, 96)])
            classes.append(c)
        images.append(image)
        targets.append(
            {
                "gt_boxes": torch.tensor(boxes, dtype=torch.float32),
                "gt_classes": torch.tensor(classes),
            }
        )
    return images, targets


def test_one_list_of_anchor_sizes_is_every_levels_as_detectron2_reads_it() -> None:
    """SIZES: [[20, 40, 80, 160]] (detectron2 broadcasts it to every FPN level) was refused
    after the message offered "one for all"."""
    model = build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", [
        *TINY, "model.anchor_generator.sizes=[[20,40,80,160]]"]))
    generator = model.rpn.anchor_generator
    assert generator.sizes == [[20, 40, 80, 160]] * 5  # p2..p6
    assert generator.num_anchors_per_location == [12] * 5
    assert model.rpn.head.objectness_logits.out_channels == 12


def test_preprocess_normalizes_and_pads() -> None:
    torch.manual_seed(0)
    model = build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY))
    a = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    b = torch.rand(3, 64, 33) * 255
    batch, sizes = model.preprocess([a, b])
    assert batch.shape == (2, 3, 64, 96) and sizes == [(50, 70), (64, 33)]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    assert torch.allclose(batch[0, :, :50, :70], (a.float() - mean) / std)
    assert torch.allclose(batch[1, :, :, :33], (b - mean) / std)
    assert batch[0, :, 50:].abs().sum() == 0 and batch[0, :, :, 70:].abs().sum() == 0
    assert batch[1, :, :, 33:].abs().sum() == 0


def test_output_sizes_rescale_boxes() -> None:
    torch.manual_seed(0)
    model = build_model(
        _config("faster_rcnn_R_50_FPN_1x.yaml", TINY + ["model.roi_heads.score_thresh=0.0"])
    ).eval()
    images, _ = tiny_scene(0)
    with torch.no_grad():
        plain = model(images)
        mapped = model(images, output_sizes=[(192, 384), (48, 64)])
    assert len(plain[0]["boxes"]) > 0
    assert torch.allclose(
        mapped[0]["boxes"], plain[0]["boxes"] * torch.tensor([3.0, 2.0, 3.0, 2.0])
    )
    assert torch.allclose(mapped[1]["boxes"], plain[1]["boxes"] * 0.5)
    assert torch.equal(mapped[0]["labels"], plain[0]["labels"])


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = build_model(
        _config("faster_rcnn_R_50_FPN_1x.yaml", TINY + ["model.backbone.norm=bn"])
    )  # random init: BN, not frozen BN
    images, targets = tiny_scene(0)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    model.train()
    history = []
    for _ in range(12):
        losses = model(images, targets)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({"total": total.item(), **{k: v.item() for k, v in losses.items()}})
    first, last = history[0], history[-3:]
    # The box loss may rise at first: better proposals bring more foreground RoIs into it.
    assert sum(h["total"] for h in last) / 3 < 0.6 * first["total"], history
    assert last[-1]["loss_rpn_cls"] < 0.8 * first["loss_rpn_cls"], history
    assert last[-1]["loss_cls"] < 0.5 * first["loss_cls"], history


def test_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = build_model(
        _config("faster_rcnn_R_50_FPN_1x.yaml", TINY + ["model.roi_heads.score_thresh=0.0"])
    )
    images, targets = tiny_scene(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        with torch.no_grad():
            detections = model.eval()(images)
    # boxes are decoded in float32 from float32 anchors/proposals
    assert detections[0]["boxes"].dtype == torch.float32 and len(detections[0]["boxes"]) > 0


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_c4_moves_res5_into_the_head() -> None:
    torch.manual_seed(0)
    k = 4
    model = build_model(
        _config(
            "faster_rcnn_R_50_C4_1x.yaml",
            [
                f"model.num_classes={k}",
                "model.rpn.pre_nms_topk_test=50",
                "model.rpn.post_nms_topk_test=10",
                "model.rpn.pre_nms_topk_train=50",
                "model.rpn.post_nms_topk_train=10",
                "model.roi_heads.batch_size_per_image=16",
            ],
        )
    )
    resnet50 = torchvision.models.resnet50()
    # frozen BN holds buffers, not parameters: the backbone's parameters are its convs
    backbone_params = sum(_count(m) for m in resnet50.modules() if isinstance(m, torch.nn.Conv2d))
    rpn_params = (
        (1024 * 1024 * 9 + 1024) + (1024 * 15 + 15) + (1024 * 60 + 60)
    )  # 15 anchors per location
    predictor_params = (2048 + 1) * (k + 1) + (2048 + 1) * 4 * k
    assert _count(model) == backbone_params + rpn_params + predictor_params
    assert not hasattr(model.backbone, "res5") and list(model.backbone.output_shape()) == ["res4"]
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)])
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(
        det["labels"]
    )
    model.train()
    images, targets = tiny_scene(1)
    for t in targets:
        t["gt_classes"] = t["gt_classes"] % k
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box_reg"].item() > 0


def test_fpn_below_res5_leaves_res5_out() -> None:
    """An FPN on res2-res4: res5 is not built (DistributedDataParallel refuses parameters
    without gradients: every one left gets one), and the batch pads to res4's stride, as
    detectron2's FPN does."""
    torch.manual_seed(0)
    levels = [
        "model.backbone.out_features=[res2,res3,res4]",
        "model.fpn.in_features=[res2,res3,res4]",
        "model.rpn.in_features=[p2,p3,p4,p5]",
        "model.roi_heads.in_features=[p2,p3,p4]",
        "model.anchor_generator.sizes=[[16],[32],[64],[128]]",
    ]
    model = build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY + levels)).train()
    assert model.backbone.bottom_up.stages == ["res2", "res3", "res4"]
    assert not any("res5" in k for k in model.state_dict())
    assert model.size_divisibility == 16
    images, targets = tiny_scene(0)
    sum(model(images, targets).values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_backbone_weights_pretrained_with_other_normalisation_are_refused(
        tmp_path: Path) -> None:
    """A backbone records the pixel mean/std it was pretrained with; a detector that would
    feed it other values (before: silently, with the defaults) is refused naming the keys."""
    from resnet_detect import backbones
    from resnet_detect.backbones.weights import make_provenance, save_checkpoint

    resnet = backbones.build("resnet18")
    path = tmp_path / "backbone_final.pth"
    save_checkpoint(path, resnet.state_dict(), make_provenance(
        "resnet18", pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0)))
    with pytest.raises(ValueError, match=r"backbone_final.pth do not fit this config: "
                                         r"model.pixel_mean is \[123.675,116.28,103.53\], the "
                                         r"weights need \[0.0,0.0,0.0\]; model.pixel_std"):
        build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY + [
            f"model.backbone.weights={path}"]))
    model = build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY + [
        f"model.backbone.weights={path}", "model.pixel_mean=[0,0,0]",
        "model.pixel_std=[255,255,255]"]))
    assert torch.equal(model.backbone.bottom_up.res2[0].conv1.weight,
                       resnet.res2[0].conv1.weight)


@pytest.mark.parametrize("config", ["faster_rcnn_R_50_FPN_1x.yaml", "faster_rcnn_R_50_C4_1x.yaml"])
def test_a_detector_of_another_backbone_names_both_nets_and_the_key_to_set(
        tmp_path: Path, config: str) -> None:
    """A ResNet-18-D detector's weights into a ResNet-18 one (a checkpoint given with the
    wrong config): the key listing alone did not say the backbone differs. (C4: its res5 in
    the RoI head.)"""
    path = tmp_path / "r18d.pth"
    tiny = [o for o in TINY if "anchor_generator" not in o]  # (C4: one level)
    torch.save(build_model(_config(config, [*tiny, "model.backbone.name=resnet18d"]))
               .state_dict(), path)
    with pytest.raises(ValueError, match=rf"do not match GeneralizedRCNN \({path} holds a "
                                         rf"resnet18d backbone, this model's is a resnet18: set "
                                         rf"model.backbone.name=resnet18d\):\n  missing"):
        load_detector_weights(build_model(_config(config, tiny)), path)


def test_dc5_single_level_stride_16() -> None:
    torch.manual_seed(0)
    model = build_model(
        _config(
            "faster_rcnn_R_50_DC5_1x.yaml",
            [
                "model.num_classes=2",
                "model.rpn.pre_nms_topk_test=50",
                "model.rpn.post_nms_topk_test=10",
            ],
        )
    )
    assert dict(model.backbone.output_shape()) == {"res5": (2048, 16)}
    # detectron2's DC5: the first res5 block too at dilation 2 (torchvision's layout keeps 1)
    res5 = [(b.conv2.dilation, b.conv2.stride) for b in model.backbone.res5]
    assert res5 == [((2, 2), (1, 1))] * 3
    with pytest.raises(ValueError, match=r"model.backbone.multi_grid \[1, 1, 1\] must have one "
                                         r"entry per block of the last stage \(2\) "
                                         r"\(backbone resnet18\)"):
        build_model(_config("faster_rcnn_R_50_DC5_1x.yaml", ["model.num_classes=2",
                                                             "model.backbone.name=resnet18"]))
    # a checkpoint of torchvision's layout (multi_grid null) does not load as detectron2's:
    # same shapes, another network
    small = ["model.num_classes=2", "model.backbone.name=resnet18"]
    before = _config("faster_rcnn_R_50_DC5_1x.yaml", [*small, "model.backbone.multi_grid=null"])
    after = _config("faster_rcnn_R_50_DC5_1x.yaml", [*small, "model.backbone.multi_grid=[1,1]"])
    checkpoint = {"model": build_model(before).state_dict(),
                  "provenance": {"config": OmegaConf.to_container(before)}}
    with pytest.raises(ValueError, match=r"model.backbone.multi_grid is \[1,1\], the weights "
                                         r"need null"):
        load_detector_weights(build_model(after), checkpoint,
                              weight_bound_settings(after.model))
    assert model.rpn.anchor_generator.num_anchors_per_location == [15]
    assert model.roi_heads.box_head.fc1.in_features == 2048 * 7 * 7
    model.eval()
    with torch.no_grad():
        features = model.backbone(model.preprocess([torch.zeros(3, 96, 128)])[0])
        (det,) = model([torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)])
    assert features["res5"].shape == (1, 2048, 6, 8)
    assert det["boxes"].shape[1] == 4 and bool((det["labels"] < 2).all())


def test_bad_input_errors() -> None:
    torch.manual_seed(0)
    model = build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY)).train()
    image = [torch.zeros(3, 64, 64)]
    with pytest.raises(ValueError, match="needs targets"):
        model(image)
    with pytest.raises(ValueError, match="gt_classes must be in 0..2"):
        model(
            image,
            [{"gt_boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "gt_classes": torch.tensor([3])}],
        )
    with pytest.raises(ValueError, match="positive width"):
        model(
            image,
            [{"gt_boxes": torch.tensor([[5.0, 1.0, 5.0, 9.0]]), "gt_classes": torch.tensor([0])}],
        )
    good = {"gt_boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "gt_classes": torch.tensor([1])}
    no_area = {"gt_boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, 7.0, 4.0, float("nan")]]),
               "gt_classes": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match=r"target 1: gt box \[2.0, 7.0, 4.0, nan\] has no "):
        model(image * 2, [good, no_area])  # the batch is checked at once, the message names 1
    with pytest.raises(ValueError, match="'gt_boxes' and 'gt_classes'"):
        model(image, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        model([torch.zeros(64, 64)])
    # one image not in a list: was "image 0 must be a (3, H, W) RGB tensor, got (64, 64)"
    with pytest.raises(ValueError, match=r"takes a list of \(3, H, W\) images or an \(N, 3, H, "
                                         r"W\) batch, got one \(3, 64, 64\) tensor: pass "
                                         r"\[image\]"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="model.num_classes"):
        build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", []))
    with pytest.raises(ValueError, match="model.roi_heads.name"):
        build_model(
            _config("faster_rcnn_R_50_FPN_1x.yaml", TINY + ["model.roi_heads.name=cascade"])
        )
    with pytest.raises(ValueError, match=r"missing \(2\): roi_heads.box_predictor"):
        state = {
            k: v
            for k, v in model.state_dict().items()
            if not k.startswith("roi_heads.box_predictor.cls")
        }
        load_detector_weights(model, state)


def test_float_images_within_0_1_are_warned_of(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """torchvision's models take 0..1 floats, this one 0..255: a torchvision habit gave other
    detections without a word."""
    from resnet_detect.engine.data import batching
    model = build_model(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY)).eval()
    message = "got float images within 0..1; it takes RGB values in 0..255"
    # the first float batch decides (one look: a GPU waits for it), but an all-black one
    for first, warnings in ((torch.rand(3, 64, 64), 1), (torch.rand(3, 64, 64) * 255, 0),
                            (torch.zeros(3, 64, 64), 1)):
        monkeypatch.setattr(batching, "_looked_at_float_images", False)
        caplog.clear()
        with caplog.at_level("WARNING", logger="resnet_detect.engine.data.batching"), \
                torch.no_grad():
            model([first])
            model([torch.rand(3, 64, 64)])
            model([torch.rand(3, 64, 64)])
        assert caplog.text.count(message) == warnings, first.max()


@pytest.mark.parametrize("override, message", [
    ("model.roi_heads.batch_size_per_image=0", "model.roi_heads: batch_size_per_image must be"),
    ("model.rpn.batch_size_per_image=0", "model.rpn / model.anchor_generator: batch_size_per"),
    ("model.anchor_generator.sizes=[[32],[64]]", "model.rpn / model.anchor_generator: "),
    ("model.roi_heads.pooler_resolution=0", "model.roi_heads.pooler_resolution must be an "
                                            "integer of 1 or more, got 0"),
    ("model.roi_heads.fc_dims=[]", "model.roi_heads: "),
    ("model.rpn.post_nms_topk_train=0", "model.rpn.post_nms_topk_train must be a positive "
                                        "integer, got 0"),
    ("model.roi_heads.detections_per_image=0", "model.roi_heads.detections_per_image must be"),
    # a negative loss weight trained by gradient ascent; a negative beta or one threshold
    # were tracebacks at the first step or after the data scan
    ("model.rpn.loss_weight=-1", "model.rpn.loss_weight must be a number >= 0, got -1"),
    ("model.roi_heads.mask_loss_weight=-1", "model.roi_heads.mask_loss_weight must be a number "
                                            ">= 0, got -1"),
    ("model.roi_heads.smooth_l1_beta=-0.1", "model.roi_heads.smooth_l1_beta must be a number >= "
                                            "0, got -0.1"),
    ("model.rpn.iou_thresholds=[0.3]", "model.rpn.iou_thresholds must be [low, high] (below "
                                       "low: background, from high: foreground), got [0.3]"),
    ("model.backbone.multi_grid=[0,1,1]", "model.backbone.multi_grid [0, 1, 1] must be "
                                          "positive integers (dilation multipliers)"),
    # a weight of 0 decoded every box to inf; a canonical size of 0 sent every RoI to the
    # coarsest level; a negative min_box_size was taken as 0
    ("model.rpn.bbox_reg_weights=[1,1,0,1]", "model.rpn / model.anchor_generator: box coder "
                                             "weights (bbox_reg_weights) must be positive"),
    ("model.roi_heads.bbox_reg_weights=[10,10,5,-5]", "model.roi_heads: box coder weights "
                                                      "(bbox_reg_weights) must be positive"),
    ("model.roi_heads.canonical_box_size=0", "model.roi_heads.canonical_box_size must be a "
                                             "positive integer, got 0"),
    ("model.roi_heads.canonical_level=0", "model.roi_heads.canonical_level must be a positive "
                                          "integer, got 0"),
    ("model.rpn.min_box_size=-1", "model.rpn.min_box_size must be a number >= 0, got -1"),
    ("model.roi_heads.min_box_size=-0.5", "model.roi_heads.min_box_size must be a number >= 0, "
                                          "got -0.5")])
def test_a_part_built_from_a_bad_value_names_its_config_section(override: str,
                                                                message: str) -> None:
    """The parts' own checks name their arguments ("batch_size_per_image must be positive"),
    the same for the RPN and the RoI heads, with a traceback; the section says which."""
    cfg = load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml",
                      ["model.backbone.weights=null", "model.num_classes=3", override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_model(cfg)


def test_a_bug_while_building_keeps_its_type_and_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the parts' argument checks become config errors (printed as one line): a bug's
    ValueError (a failed unpacking, say) was printed as "model.roi_heads: not enough values"."""
    import resnet_detect.detection.build as build

    def broken(*args: object, **kwargs: object) -> None:
        x, y = [1]  # noqa: F841

    monkeypatch.setattr(build, "build_roi_heads", broken)
    cfg = load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml",
                      ["model.backbone.weights=null", "model.num_classes=3"])
    with pytest.raises(ValueError, match="not enough values to unpack") as raised:
        build_model(cfg)
    assert type(raised.value) is ValueError
