"""Mask R-CNN: parity with torchvision's maskrcnn_resnet50_fpn, training, build and bad input.

Parity: torchvision's model is built with random weights (no download), randomised as in
test_torchvision_parity.py plus a mask head whose logits spread over several units (so
that few pixels sit near the 0.5 threshold), and its state dict is imported into our R50-FPN
Mask R-CNN built from configs/detection/mask_rcnn_R_50_FPN_1x.yaml. Images are 320x416
and torchvision's transform is set to min_size 320 so that it does not resize them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from resnet_detect.detection import build_model
from resnet_detect.detection.config import defaults as detection_defaults
from resnet_detect.detection.convert import load_detector_weights, weight_bound_settings
from tests.random_reference import randomize_detector
from resnet_detect.detection.roi_heads import paste_masks
from resnet_detect.engine.config import load_config
from tests.detection.test_rcnn import TINY, tiny_scene
from tests.detection.test_torchvision_parity import (
    TORCHVISION_LOSS_NAMES,
    _assert_losses_match,
    _image,
    _spread_classes,
    _train_losses,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"
BASE = detection_defaults()
SIZE = (320, 416)
DETECTIONS = 40  # detections per image on both sides (the mask head runs on each)


def _randomize_mask_head(tv: torch.nn.Module, gen: torch.Generator) -> None:
    """He-normal mask convs and a predictor whose logits have a std of a few units."""
    with torch.no_grad():
        for name, p in tv.roi_heads.named_parameters():
            if not name.startswith(("mask_head.", "mask_predictor.")):
                continue
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if "logits" in name else 0.05))
            elif "logits" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                # a deconvolution (in, out, 2, 2) with stride 2 gives each output pixel one
                # tap per input channel
                fan_in = p[0].numel() if "mask_head" in name else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module, torch.Generator]:
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        box_score_thresh=0.0,
        box_detections_per_img=DETECTIONS,
        min_size=SIZE[0],
        max_size=1333,
        _skip_resize=True,
    )
    gen = torch.Generator().manual_seed(1)
    randomize_detector(tv, gen)
    _randomize_mask_head(tv, gen)
    tv.eval()
    _spread_classes(tv, gen)
    cfg = load_config(
        CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
        [
            "model.num_classes=90",
            "model.roi_heads.score_thresh=0.0",
            f"model.roi_heads.detections_per_image={DETECTIONS}",
        ],
        defaults=BASE,
    )
    ours = build_model(cfg)
    load_detector_weights(ours, tv.state_dict())
    return tv, ours, gen


def test_same_detections_and_masks_as_torchvision(models: tuple) -> None:
    tv, ours, gen = models
    image = _image(gen, SIZE)
    tv.eval(), ours.eval()
    logits = []
    hook = tv.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: logits.append(o))
    try:
        with torch.no_grad():
            assert tv.transform([image / 255.0])[0].image_sizes == [SIZE]  # no resizing
            expected = tv([image / 255.0])[0]
            got = ours([image.to(torch.uint8)])[0]
    finally:
        hook.remove()
    assert len(expected["boxes"]) == DETECTIONS and len(expected["labels"].unique()) >= 5
    assert torch.equal(got["labels"] + 1, expected["labels"])
    assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    assert torch.allclose(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    # Probabilities, atol 5e-5: the two models normalise the input in another float order
    # ((x/255 - m/255) / (s/255) against (x - m) / s), which leaves the FPN features ~1e-5
    # apart; through the mask convs that is <= 3.4e-5 on logits of up to +-11 and <= 1e-5 on
    # the probabilities (measured). Our separable bilinear paste against torchvision's
    # F.interpolate adds ~1e-6. A different crop, paste geometry or class channel is off by
    # far more than 1e-2.
    tv_probs = logits[0].sigmoid()[torch.arange(DETECTIONS), expected["labels"]]
    assert got["mask_probs"].shape == (DETECTIONS, 28, 28)
    assert torch.allclose(got["mask_probs"], tv_probs, atol=5e-5, rtol=0)
    tv_pasted = expected["masks"][:, 0]  # (D, H, W) probabilities
    pasted = paste_masks(got["mask_probs"], expected["boxes"], SIZE, threshold=None)
    assert torch.allclose(pasted, tv_pasted, atol=5e-5, rtol=0)
    # Binary masks from our own boxes: a pixel can flip only where its probability is
    # within rounding of 0.5, or where a box corner (equal to 1e-3) truncates to another
    # integer after the padding expansion; measured: 0 of ~230k mask pixels.
    tv_masks = tv_pasted >= 0.5
    assert got["masks"].shape == (DETECTIONS, *SIZE) and got["masks"].dtype == torch.bool
    assert int(tv_masks.sum()) > 50_000
    assert int((got["masks"] != tv_masks).sum()) <= 1e-3 * int(tv_masks.sum())


def _gt_masks(boxes: torch.Tensor, size: tuple[int, int], shift_first: float = 0.0) -> torch.Tensor:
    """(M, H, W) uint8: the ellipse inscribed in each box, the first moved right by shift_first."""
    ys = torch.arange(size[0], dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(size[1], dtype=torch.float32)[None, :] + 0.5
    masks = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy = (x1 + x2) / 2 + (shift_first if i == 0 else 0.0), (y1 + y2) / 2
        rx, ry = (x2 - x1) / 2, (y2 - y1) / 2
        masks.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1)
    return torch.stack(masks).to(torch.uint8)


def test_same_losses_as_torchvision(models: tuple) -> None:
    tv, ours, gen = models
    image = _image(gen, SIZE)
    gt_boxes = torch.tensor(
        [[20.0, 30.0, 150.0, 200.0], [200.0, 60.0, 400.0, 300.0], [30.0, 240.0, 70.0, 300.0]]
    )
    gt_classes = torch.tensor([0, 16, 89])
    gt_masks = _gt_masks(gt_boxes, SIZE, shift_first=15.0)  # one mask not in its box
    # Every non-ignored proposal enters the RoI losses on both sides: the positives, which
    # the mask loss uses, are then the same.
    got, expected = _train_losses(
        tv, ours, image, {"gt_boxes": gt_boxes, "gt_classes": gt_classes, "gt_masks": gt_masks}
    )
    pairs = {**TORCHVISION_LOSS_NAMES, "loss_mask": "loss_mask"}
    assert set(got) == set(pairs)
    _assert_losses_match(got, expected, pairs)



MASK_TINY = [*TINY, "model.mask_on=true", "model.roi_heads.mask_conv_dims=[16,16]"]


def _config(overrides: list[str]) -> OmegaConf:
    return load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml", overrides, defaults=BASE)


def test_weights_of_another_mask_head_name_the_keys_to_set() -> None:
    """A trial: weights of a 7x7 mask pooler loaded under a 14x14 one without a word (mask
    AP 33.7 -> 29.6); of other convolution widths, only the mis-shaped tensors were listed."""
    trained = _config([*MASK_TINY, "model.roi_heads.mask_pooler_resolution=7",
                       "model.roi_heads.mask_conv_dims=[8]"])
    checkpoint = {"model": build_model(trained).state_dict(),
                  "provenance": {"config": OmegaConf.to_container(trained)}}
    coarse = _config([*MASK_TINY, "model.roi_heads.mask_conv_dims=[8]"])
    with pytest.raises(ValueError, match=r"model.roi_heads.mask_pooler_resolution is 14, the "
                                         r"weights need 7.*set model.roi_heads."
                                         r"mask_pooler_resolution=7$"):
        load_detector_weights(build_model(coarse), checkpoint, weight_bound_settings(coarse.model))
    # (a test-time number that shapes nothing is left out of the recorded config's line)
    wide = _config([*MASK_TINY, "model.roi_heads.score_thresh=0.3"])
    with pytest.raises(ValueError, match=r"(?s)\(its mask head's convolutions are \[8\]: set "
                                         r"model.roi_heads.mask_conv_dims=\[8\]\):.*mis-shaped "
                                         r".*roi_heads.mask_head.*\n  the config the weights "
                                         r"record differs from this one in model.roi_heads."
                                         r"mask_conv_dims \[8\] \(here \[16,16\]\), model."
                                         r"roi_heads.mask_pooler_resolution 7 \(here 14\): give "
                                         r"their run's config.yaml, or set those keys\n  and the "
                                         r"settings: .*set model.roi_heads."
                                         r"mask_pooler_resolution=7$"):
        load_detector_weights(build_model(wide), checkpoint, weight_bound_settings(wide.model),
                              model_config=wide.model)


def _scene_with_masks(seed: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """test_rcnn's two 96x128 scenes, each object's mask the disc inscribed in its box."""
    images, targets = tiny_scene(seed)
    for image, target in zip(images, targets):
        target["gt_masks"] = _gt_masks(target["gt_boxes"], tuple(image.shape[1:]))
    return images, targets


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mask_branch_is_built_only_with_mask_on() -> None:
    torch.manual_seed(0)
    faster = build_model(load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml", TINY, defaults=BASE))
    torch.manual_seed(0)
    mask = build_model(_config(MASK_TINY))
    assert not faster.mask_on and mask.mask_on
    assert not any("mask" in k for k in faster.state_dict())
    head = mask.roi_heads.mask_head
    # FPN 32 channels -> two 3x3 convs of 16 -> 2x2 deconv 16 -> 1x1 to K = 3 masks
    expected = (32 * 9 * 16 + 16) + (16 * 9 * 16 + 16) + (16 * 4 * 16 + 16) + (16 * 3 + 3)
    assert _count(head) == expected
    assert _count(mask) == _count(faster) + expected
    assert mask.roi_heads.mask_pooler.output_size == (14, 14)
    assert head.predictor.weight.shape == (3, 16, 1, 1)
    assert head(torch.zeros(5, 32, 14, 14), torch.tensor([0, 1, 2, 2, 0])).shape == (5, 28, 28)


def test_mask_keys_of_a_detector_without_masks_are_said_once(caplog) -> None:
    """A trial: a Faster R-CNN given mask keys (model.mask_on forgotten) trained without a
    word; the shipped Faster R-CNN config says nothing."""
    config = CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml"
    with caplog.at_level("WARNING", logger="resnet_detect.detection.build"):
        build_model(load_config(config, TINY, defaults=BASE))
        assert caplog.text == ""
        for _ in range(2):  # (a training builds its model twice: said once)
            build_model(load_config(config, [*TINY, "model.roi_heads.mask_loss_weight=0.5",
                                             "model.roi_heads.mask_conv_dims=[8]"], defaults=BASE))
    assert caplog.text.count("model.roi_heads.mask_conv_dims, model.roi_heads.mask_loss_weight "
                             "set, but model.mask_on is false: no mask head reads them "
                             "(a Mask R-CNN meant: model.mask_on=true; boxes alone from a "
                             "Mask R-CNN config: nothing to do)") == 1


def test_training_lowers_the_mask_loss() -> None:
    torch.manual_seed(0)
    model = build_model(_config([*MASK_TINY, "model.backbone.norm=bn"]))
    images, targets = _scene_with_masks(0)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    model.train()
    history = []
    for _ in range(20):
        losses = model(images, targets)
        assert set(losses) == {
            "loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"
        }
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(losses["loss_mask"].item())
    # the predictor starts near zero: every pixel at p = 0.5, a loss of ln 2
    assert history[0] == pytest.approx(0.6931, abs=2e-3), history
    # 0.75 ln 2 = 0.52 is about what the best constant prediction gets (the discs fill
    # pi/4 of their boxes): below it, the head has learnt where the object is in the RoI
    assert sum(history[-3:]) / 3 < 0.75 * history[0], history


def test_masks_are_pasted_at_the_output_size() -> None:
    torch.manual_seed(0)
    model = build_model(_config([*MASK_TINY, "model.roi_heads.score_thresh=0.0"])).eval()
    torch.nn.init.normal_(model.roi_heads.mask_head.predictor.weight, std=1.0)
    images, _ = tiny_scene(0)
    with torch.no_grad():
        plain = model(images)
        mapped = model(images, output_sizes=[(192, 256), (48, 64)])
    for det, size in zip(plain, [(96, 128), (96, 128)]):
        assert det["masks"].shape == (len(det["boxes"]), *size) and det["masks"].dtype == torch.bool
        assert det["mask_probs"].shape == (len(det["boxes"]), 28, 28)
    for det, ref, size in zip(mapped, plain, [(192, 256), (48, 64)]):
        assert len(det["boxes"]) == len(ref["boxes"]) > 0
        assert det["masks"].shape == (len(det["boxes"]), *size)
        assert torch.equal(det["mask_probs"], ref["mask_probs"])
        expected = paste_masks(ref["mask_probs"], det["boxes"], size, threshold=0.5)
        assert torch.equal(det["masks"], expected)
    # every pasted pixel lies within its box (plus the 1 px paste border)
    det = plain[0]
    assert det["masks"].any()
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    for mask, (x1, y1, x2, y2) in zip(det["masks"], det["boxes"].tolist()):
        pad_x, pad_y = (x2 - x1) / 28 + 1, (y2 - y1) / 28 + 1
        inside = (xs >= x1 - pad_x) & (xs <= x2 + pad_x) & (ys >= y1 - pad_y) & (ys <= y2 + pad_y)
        assert not (mask & ~inside).any()


def test_evaluation_encodes_masks_from_their_box_regions(tmp_path, monkeypatch) -> None:
    """The evaluation's results equal those of the masks pasted all at once and encoded by
    pycocotools whole, bit for bit, and no full-size mask is made (a large photo's masks
    pasted at once took gigabytes, and pasted a few at a time, most of its evaluation)."""
    from pycocotools import mask as mask_utils

    from resnet_detect.detection import rcnn
    from resnet_detect.detection.evaluation import COCOEvaluator, instances_to_coco_results
    from resnet_detect.detection.roi_heads import mask_paste
    from resnet_detect.detection.training import evaluate_all

    torch.manual_seed(0)
    model = build_model(_config([*MASK_TINY, "model.roi_heads.score_thresh=0.0"])).eval()
    torch.nn.init.normal_(model.roi_heads.mask_head.predictor.weight, std=1.0)
    images, _ = tiny_scene(0)
    sizes = [(480, 640), (300, 400)]
    batch = [{"image": image, "image_id": k + 1, "height": h, "width": w}
             for k, (image, (h, w)) in enumerate(zip(images, sizes))]
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": k + 1, "file_name": f"{k}.jpg", "height": h, "width": w}
                   for k, (h, w) in enumerate(sizes)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50],
                         "area": 2500.0, "iscrowd": 0,
                         "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]]}],
        "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(model_classes(model))]}))
    with torch.no_grad():
        whole = model(images, output_sizes=sizes)
    assert all(len(d["boxes"]) > 8 for d in whole)
    expected = [r for sample, d in zip(batch, whole) for r in instances_to_coco_results(
        sample["image_id"], d["boxes"], d["scores"], d["labels"],
        category_ids=list(range(1, model_classes(model) + 1)))]
    masks = [m for d in whole for m in d["masks"].numpy()]
    for result, mask in zip(expected, masks, strict=True):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        result["segmentation"] = {"size": [int(v) for v in rle["size"]],
                                  "counts": rle["counts"].decode("ascii")}
    # touching the image's edges: runs going on from one column to the next
    assert any(m[0].any() or m[-1].any() for m in masks)
    pasted = []
    for module in (mask_paste, rcnn):
        monkeypatch.setattr(module, "paste_masks",
                            lambda masks, *a, **k: pasted.append(len(masks)))
    evaluator = COCOEvaluator(gt_file, category_ids=list(range(1, model_classes(model) + 1)),
                              iou_types=("bbox", "segm"), output_dir=tmp_path / "out")
    evaluate_all(model, [batch], evaluator)
    written = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert written == json.loads(json.dumps(expected))
    assert not pasted


def model_classes(model: torch.nn.Module) -> int:
    return model.roi_heads.box_predictor.cls_score.out_features - 1


def test_empty_gt_gives_zero_mask_loss_with_a_graph() -> None:
    torch.manual_seed(0)
    model = build_model(_config(MASK_TINY)).train()
    images, targets = _scene_with_masks(0)
    empty = [{"gt_boxes": torch.zeros(0, 4), "gt_classes": torch.zeros(0, dtype=torch.int64),
              "gt_masks": torch.zeros(0, 96, 128, dtype=torch.uint8)}] * 2
    losses = model(images, empty)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_mask"].requires_grad
    sum(losses.values()).backward()
    grads = [p.grad for p in model.roi_heads.mask_head.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    # one image with objects, one without: the loss comes from the first alone
    model.zero_grad()
    losses = model(images, [targets[0], empty[0]])
    assert losses["loss_mask"].item() > 0


def test_bad_mask_input_errors(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = build_model(_config(MASK_TINY)).train()
    images, targets = _scene_with_masks(0)
    no_masks = [{k: v for k, v in t.items() if k != "gt_masks"} for t in targets]
    with pytest.raises(ValueError, match=r"target 0 needs 'gt_masks'.*model.mask_on"):
        model(images, no_masks)
    wrong = [dict(targets[0]), targets[1]]
    wrong[0]["gt_masks"] = torch.zeros(2, 64, 128, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"gt_masks must be \(M, H, W\) = \(2, 96, 128\)"):
        model(images, wrong)
    wrong[0]["gt_masks"] = torch.zeros(1, 96, 128, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"one mask per gt box"):
        model(images, wrong)
    with pytest.raises(ValueError, match=r"model.mask_on needs model.roi_heads.name 'standard'"):
        build_model(load_config(CONFIGS / "faster_rcnn_R_50_C4_1x.yaml",
                                ["model.num_classes=3", "model.mask_on=true"], defaults=BASE))
    with pytest.raises(ValueError, match=r"model.roi_heads.mask_threshold must be in \(0, 1\)"):
        build_model(_config([*MASK_TINY, "model.roi_heads.mask_threshold=1.5"]))
    # they named no key: "model.roi_heads: bad RoI pooler output_size=7 / sampling_ratio=-1",
    # "mask head conv widths must be positive"
    with pytest.raises(ValueError, match=r"model.roi_heads.pooler_sampling_ratio must be an "
                                         r"integer of 0 or more \(0: adaptive"):
        build_model(_config([*MASK_TINY, "model.roi_heads.pooler_sampling_ratio=-1"]))
    with pytest.raises(ValueError, match=r"model.roi_heads.mask_conv_dims must be a list of "
                                         r"positive widths .*got \[0, 64\]"):
        build_model(_config([*MASK_TINY, "model.roi_heads.mask_conv_dims=[0,64]"]))
    # Mask R-CNN weights into a Faster R-CNN: the mask head is left out, saying so (as
    # detectron2 does); everything else loads strictly
    faster = build_model(load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml", TINY, defaults=BASE))
    with caplog.at_level("WARNING", logger="resnet_detect.backbones.weights"):
        load_detector_weights(faster, model.state_dict())
    assert "its roi_heads.mask_head (8 tensors) is left out: this model has none" in caplog.text
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in faster.state_dict().items())


SCHEDULE_CHANGES = {"synthetic/mask_rcnn_R_18_FPN.yaml": {"max_iter": (300, 250)}}


def test_mask_configs_only_add_the_mask_branch() -> None:
    from resnet_detect.detection.config import load_config as load_detection_config

    root = CONFIGS.parent
    pairs = [
        ("detection/faster_rcnn_R_50_FPN_1x.yaml", "detection/mask_rcnn_R_50_FPN_1x.yaml"),
        ("synthetic/faster_rcnn_R_18_FPN.yaml", "synthetic/mask_rcnn_R_18_FPN.yaml"),
    ]
    for faster_file, mask_file in pairs:
        faster = OmegaConf.to_container(load_detection_config(root / faster_file))
        mask = OmegaConf.to_container(load_detection_config(root / mask_file))
        assert not faster["model"]["mask_on"] and mask["model"]["mask_on"]
        # GPU: cuDNN's timing at every new RoI count made Mask R-CNN steps ~4x slower
        assert not mask["train"]["cudnn_benchmark"]
        # the quickstart's one change beyond the branch: 250 steps, for make demo-seg's budget
        for key, value in SCHEDULE_CHANGES.get(mask_file, {}).items():
            assert (faster["train"][key], mask["train"][key]) == value, (mask_file, key)
            mask["train"][key] = faster["train"][key]
        for cfg in (faster, mask):
            del cfg["model"]["mask_on"], cfg["train"]["output_dir"]
            for key in [k for k in cfg["model"]["roi_heads"] if k.startswith("mask_")]:
                del cfg["model"]["roi_heads"][key]
        assert faster == mask, mask_file


def test_cudnn_benchmark_with_a_mask_head_on_a_gpu_is_warned_of() -> None:
    from resnet_detect.detection.config import load_config as load_detection_config
    from resnet_detect.engine.train_settings import cudnn_benchmark_warning

    path = CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml"
    on = ["train.cudnn_benchmark=true"]
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert "train.cudnn_benchmark=true with model.mask_on" in cudnn_benchmark_warning(
        load_detection_config(path, on), cuda)
    assert cudnn_benchmark_warning(load_detection_config(path, on), cpu) is None
    assert cudnn_benchmark_warning(load_detection_config(path), cuda) is None
    faster = CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml"
    assert cudnn_benchmark_warning(load_detection_config(faster, on), cuda) is None


def test_the_cudnn_benchmark_warning_reaches_the_log_once(tmp_path, monkeypatch) -> None:
    from resnet_detect.engine import runner
    from tests.tools.test_runner_tasks import _RegressionTask, _toy_config

    monkeypatch.setattr(runner, "cudnn_benchmark_warning", lambda cfg, device: "slow mask head")
    cfg = _toy_config(tmp_path / "out")
    runner.run_training(_RegressionTask(), cfg, torch.device("cpu"))
    assert (tmp_path / "out/log.txt").read_text().count("slow mask head") == 1


def test_the_lvis_config_is_the_coco_recipe_with_lvis_settings() -> None:
    """detectron2's LVISv1 mask_rcnn_R_50_FPN_1x: repeat factor sampling at 0.001, 300
    detections per image from score 0.0001, polygon mask targets, 180k steps with drops at
    120k and 160k; all else the COCO Mask R-CNN 1x recipe."""
    from resnet_detect.detection.config import load_config as load_detection_config

    coco = OmegaConf.to_container(load_detection_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml"))
    lvis = OmegaConf.to_container(
        load_detection_config(CONFIGS / "mask_rcnn_R_50_FPN_1x_lvis.yaml"))
    changed = {}
    for section, group, key in [("model", "roi_heads", "score_thresh"),
                                ("model", "roi_heads", "detections_per_image"),
                                ("data", "train", "repeat_threshold"),
                                ("data", "train", "mask_format"),
                                ("data", "val", "coco_backend")]:
        changed[key] = (coco[section][group].pop(key), lvis[section][group].pop(key))
    assert changed == {"score_thresh": (0.05, 0.0001), "detections_per_image": (100, 300),
                       "repeat_threshold": (None, 0.001), "mask_format": ("bitmask", "polygon"),
                       "coco_backend": ("pycocotools", "faster_coco_eval")}
    assert lvis["train"].pop("output_dir") == "output/mask_rcnn_R_50_FPN_1x_lvis"
    del coco["train"]["output_dir"]
    schedule = {k: (coco["train"].pop(k), lvis["train"].pop(k)) for k in ("max_iter", "lr_steps")}
    assert schedule == {"max_iter": (90000, 180000),
                        "lr_steps": ([60000, 80000], [120000, 160000])}
    assert lvis == coco
    assert lvis["model"]["num_classes"] is None  # read from the file: 1203 for LVIS v1


def test_bf16_autocast() -> None:
    torch.manual_seed(0)
    model = build_model(_config([*MASK_TINY, "model.roi_heads.score_thresh=0.0"]))
    images, targets = _scene_with_masks(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, targets)
        with torch.no_grad():
            (det, _) = model.eval()(images)
    assert losses["loss_mask"].dtype == torch.float32 and torch.isfinite(losses["loss_mask"])
    assert det["mask_probs"].dtype == torch.float32 and det["masks"].dtype == torch.bool
    assert det["masks"].shape == (len(det["boxes"]), 96, 128) and len(det["boxes"]) > 0


def test_coco_weights_fine_tune_to_other_classes(models: tuple, tmp_path, caplog) -> None:
    """detectron2's custom-data tutorial: COCO-trained weights start a 3-class training.
    model.weights keeps all but the three class-dependent predictors, which start afresh with
    a warning (refused before); a Predictor's or tools/eval.py's weights stay strict."""
    tv, ours, _ = models
    path = tmp_path / "maskrcnn_coco.pth"
    torch.save(tv.state_dict(), path)
    overrides = ["model.num_classes=3", f"model.weights={path}"]
    with caplog.at_level("WARNING", logger="resnet_detect.backbones.weights"):
        model = build_model(load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml", overrides,
                                        defaults=BASE))
    assert ("maskrcnn_coco.pth: roi_heads.box_predictor.cls_score.weight, "
            "roi_heads.box_predictor.cls_score.bias, roi_heads.box_predictor.bbox_pred.weight, "
            "roi_heads.box_predictor.bbox_pred.bias, roi_heads.mask_head.predictor.weight, "
            "roi_heads.mask_head.predictor.bias trained for another class count ((91, 1024) -> "
            "(4, 1024), (91,) -> (4,), (360, 1024) -> (12, 1024), (360,) -> (12,), "
            "(90, 256, 1, 1) -> (3, 256, 1, 1), (90,) -> (3,))") in caplog.text
    loaded, coco = model.state_dict(), ours.state_dict()
    kept = [k for k in coco if ".box_predictor." not in k and ".mask_head.predictor." not in k]
    assert len(kept) == len(coco) - 6 and len(loaded) == len(coco)
    assert all(torch.equal(loaded[k], coco[k]) for k in kept)
    with pytest.raises(ValueError, match=r"mis-shaped \(6\): roi_heads.box_predictor"):
        load_detector_weights(build_model(load_config(
            CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml", ["model.num_classes=3"], defaults=BASE)),
            str(path))
    # Mask R-CNN weights start a Faster R-CNN (their mask head left out), and Faster R-CNN
    # weights a Mask R-CNN (its mask head from scratch), as detectron2's loading does
    caplog.clear()
    with caplog.at_level("WARNING", logger="resnet_detect.backbones.weights"):
        faster = build_model(load_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml", overrides,
                                         defaults=BASE))
    assert "maskrcnn_coco.pth: its roi_heads.mask_head (12 tensors) is left out: this model " \
           "has none" in caplog.text
    assert all(torch.equal(faster.state_dict()[k], coco[k]) for k in kept
               if ".mask_head." not in k)
    box_only = tmp_path / "fasterrcnn_coco.pth"
    torch.save({k: v for k, v in tv.state_dict().items()
                if not k.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor."))},
               box_only)
    torch.manual_seed(3)
    fresh = build_model(load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
                                    ["model.num_classes=3"], defaults=BASE))
    torch.manual_seed(3)
    with caplog.at_level("WARNING", logger="resnet_detect.backbones.weights"):
        masks = build_model(load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
                                        ["model.num_classes=3", f"model.weights={box_only}"],
                                        defaults=BASE))
    assert "fasterrcnn_coco.pth has no roi_heads.mask_head: this model's starts from scratch" \
        in caplog.text
    fresh_mask = {k: v for k, v in fresh.state_dict().items() if ".mask_head." in k}
    assert fresh_mask and all(torch.equal(masks.state_dict()[k], v)
                              for k, v in fresh_mask.items())
    # a mask head trained on 14x14 RoIs computes something else on 7x7 ones (a trial's mask AP
    # 33.7 -> 29.6): loaded without a word, where pooler_aligned was refused; a mask head
    # that starts from scratch takes any
    coarse = ["model.num_classes=3", "model.roi_heads.mask_pooler_resolution=7"]
    with pytest.raises(ValueError, match=r"model.roi_heads.mask_pooler_resolution is 7, the "
                                         r"weights need 14.*set model.roi_heads."
                                         r"mask_pooler_resolution=14$"):
        build_model(load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
                                [*coarse, f"model.weights={path}"], defaults=BASE))
    build_model(load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
                            [*coarse, f"model.weights={box_only}"], defaults=BASE))
    # torchvision's four convolutions of 256 under two: the unexpected tensors alone were said
    with pytest.raises(ValueError, match=r"\(its mask head's convolutions are \[256, 256, 256, "
                                         r"256\]: set model.roi_heads.mask_conv_dims="
                                         r"\[256,256,256,256\]\)"):
        build_model(load_config(CONFIGS / "mask_rcnn_R_50_FPN_1x.yaml",
                                ["model.num_classes=3", f"model.weights={path}",
                                 "model.roi_heads.mask_conv_dims=[256,256]"], defaults=BASE))


@pytest.mark.parametrize("rois,convolved", [(37, 48), (32, 32), (0, 0)])
def test_rois_padded_to_a_bucket_give_the_same_logits_and_gradients(rois: int,
                                                                    convolved: int) -> None:
    """MaskRCNNHead.roi_bucket (a GPU lever: repeated shapes for cuDNN's plans): the
    convolutions see the RoIs padded to a multiple of the bucket, the logits and every
    gradient are those of the RoIs alone."""
    from resnet_detect.detection.roi_heads.mask_head import MaskRCNNHead
    torch.manual_seed(0)
    head = MaskRCNNHead(in_channels=8, num_classes=5, conv_dims=(6, 6))
    with torch.no_grad():
        head.predictor.weight.normal_()
    x = torch.randn(rois, 8, 7, 7)
    classes = torch.randint(0, 5, (rois,))
    seen = []
    head.mask_fcn1.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))

    def logits_and_grads(bucket: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        head.roi_bucket = bucket
        head.zero_grad(set_to_none=False)
        inputs = x.clone().requires_grad_()
        logits = head(inputs, classes)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        return logits.detach(), [inputs.grad, *(p.grad.clone() for p in head.parameters())]

    plain, plain_grads = logits_and_grads(0)
    padded, padded_grads = logits_and_grads(16)
    assert seen == [rois, convolved]
    assert padded.shape == plain.shape == (rois, 14, 14)
    torch.testing.assert_close(padded, plain)
    for got, expected in zip(padded_grads, plain_grads):
        torch.testing.assert_close(got, expected)
