"""tools/model_info.py: parameters and MACs per stage, options as key=value."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("model_info_tool", ROOT / "tools/model_info.py")
model_info = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_info)


def test_prints_torchvisions_parameter_count_and_refuses_a_bare_option(capsys) -> None:
    model_info.main(["resnet18", "--size", "64", "64"])
    out = capsys.readouterr().out
    assert "\ntotal       11,689,512 " in out  # torchvision resnet18
    model_info.main(["resnet18", "--shape", "64", "64"])  # (mmdetection's get_flops.py's)
    assert capsys.readouterr().out == out
    # one number is a square there: it was argparse's "expected 2 arguments"
    model_info.main(["resnet18", "--shape", "64"])
    assert capsys.readouterr().out == out
    model_info.main(["resnet18", "--size=64"])
    assert capsys.readouterr().out == out
    model_info.main(["resnet18", "--size", "64", "zero_init_residual=false"])
    assert capsys.readouterr().out.replace("{'zero_init_residual': False}", "") == out
    with pytest.raises(SystemExit):  # was read as output_stride=None: the default, silently
        model_info.main(["resnet18", "output_stride"])
    assert "options must be key=value, got output_stride" in capsys.readouterr().err


def test_an_unknown_name_or_option_is_a_usage_error(capsys) -> None:
    """They were tracebacks (exit 1)."""
    for argv, message in ((["resnet51"], "unknown backbone 'resnet51'; valid: "),
                          (["resnet50", "foo=1"], "unknown backbone option foo; valid: "),
                          (["resnet50", "output_stride=7"],
                           "output_stride 7 is not valid for this net; valid: 8, 16, 32"),
                          (["resnet50", "groups=0"], "groups must be a positive integer, got 0"),
                          (["resnet50", "width=0"], "width must be a number > 0"),
                          (["resnet50", "shortcut=D"], "unknown shortcut 'D'; valid: A, B, C"),
                          # a string, taken as true (v1's counts under a typo)
                          (["resnet50", "stride_in_1x1=flase"],
                           "stride_in_1x1 must be true or false, got 'flase'"),
                          # a traceback, and 0 became 1000 classes
                          (["resnet50", "--num-classes", "-3"], "--num-classes must be a "
                           "positive number of classes, got -3"),
                          (["resnet50", "--num-classes", "0"], "--num-classes must be a "
                           "positive number of classes, got 0")):
        with pytest.raises(SystemExit) as exit_info:
            model_info.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err



def test_any_input_size_is_counted_without_allocating_it(capsys) -> None:
    """--size 89600 89600 was the allocator's traceback (a 96 GB input). Each stage's MACs
    scale with the input's area where every stride divides the size: 400**2 times 224x224's."""
    from resnet_detect import backbones
    from resnet_detect.backbones.complexity import count_macs
    model = backbones.build_classifier("resnet50", 1000)
    small, large = count_macs(model, (224, 224)), count_macs(model, (89600, 89600))
    assert small["total"] == 4_089_184_256  # He et al.'s 4.1 GFLOPs (multiply-adds)
    for stage in ("stem", "res2", "res3", "res4", "res5"):
        assert large[stage] == small[stage] * 400 ** 2
    assert large["fc"] == small["fc"] == 2048 * 1000
    model_info.main(["resnet50", "--size", "89600", "89600"])
    total = capsys.readouterr().out.splitlines()[-1].split()
    assert total == ["total", "25,557,032", f"{large['total'] / 1e9:.3f}"]


def _torchvision_macs(*calls) -> int:
    """Multiply-adds of torchvision modules called on meta tensors, counted by torch's
    FlopCounterMode (torchvision's own convention for its published `_ops`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for module, *args in calls:
            module(*args)
    return counter.get_total_flops() // 2


def _rows(capsys) -> dict[str, tuple[int, float]]:
    lines = capsys.readouterr().out.splitlines()[2:]
    return {line.rsplit(None, 2)[0]: (int(line.split()[-2].replace(",", "")),
                                      float(line.split()[-1])) for line in lines}


def test_a_mask_rcnn_config_counts_torchvisions_model_part_by_part(capsys) -> None:
    """Our R50-FPN Mask R-CNN of 90 classes is torchvision's maskrcnn_resnet50_fpn (91 with
    the background) but for two things torchvision computes for the background too: a box
    regression (4 outputs of 1024 inputs per RoI) and a mask (a 1x1 conv over 28x28 per RoI);
    our mask head also computes each RoI's own class only. Counted on 1000 RoIs and 100 masks."""
    import torch
    from torchvision.models.detection import (FasterRCNN_ResNet50_FPN_Weights,
                                              MaskRCNN_ResNet50_FPN_Weights,
                                              maskrcnn_resnet50_fpn)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval().to("meta")
    features = reference.backbone(torch.zeros(1, 3, 800, 800, device="meta"))
    dense = _torchvision_macs((reference.backbone, torch.zeros(1, 3, 800, 800, device="meta")),
                              (reference.rpn.head, list(features.values())))
    pooled = torch.zeros(1000, 256, 7, 7, device="meta")
    box = _torchvision_macs((reference.roi_heads.box_head, pooled),
                            (reference.roi_heads.box_predictor, torch.zeros(1000, 1024,
                                                                            device="meta")))
    mask_features = torch.zeros(100, 256, 14, 14, device="meta")
    mask_logits = reference.roi_heads.mask_head(mask_features)
    mask = _torchvision_macs((reference.roi_heads.mask_head, mask_features),
                             (reference.roi_heads.mask_predictor, mask_logits))

    model_info.main([str(ROOT / "configs/detection/mask_rcnn_R_50_FPN_1x.yaml"),
                     "--size", "800", "800", "model.num_classes=90"])
    rows = _rows(capsys)
    ours_dense = sum(round(rows[part][1] * 1e9) for part in ("backbone", "fpn", "rpn"))
    assert abs(ours_dense - dense) < 1e6  # printed to 1e6
    assert abs(rows["roi_heads (1000 RoIs)"][1] * 1e9 - (box - 1000 * 1024 * 4)) < 1e6
    assert abs(rows["mask_head (100 RoIs)"][1] * 1e9 - (mask - 100 * 28 * 28 * 256 * 90)) < 1e6
    # torchvision's published parameter counts, less the background's box regression
    # (4 x 1025) and mask channel (257)
    params = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["num_params"]
    assert rows["total"][0] == params - 4 * 1025 - 257 == 44_397_036
    # torchvision's published GFLOPs of Faster R-CNN (an image without detections for Mask
    # R-CNN's, its mask head uncounted) to its two decimals
    box_total = ours_dense + rows["roi_heads (1000 RoIs)"][1] * 1e9
    assert round(box_total / 1e9, 2) == FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["_ops"]


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
def test_a_segmentation_config_counts_torchvisions_model(head, capsys) -> None:
    """DeepLabV3 / FCN R50 OS8 of 21 classes at 520x520 with the aux head: torchvision's
    published parameter count and GFLOPs (torchvision's counted the aux head: its model runs
    it in evaluation too); ours leaves the aux head out of the inference total."""
    from torchvision.models.segmentation import (DeepLabV3_ResNet50_Weights,
                                                 FCN_ResNet50_Weights)
    published = {"deeplabv3": DeepLabV3_ResNet50_Weights, "fcn": FCN_ResNet50_Weights}[head]
    published = published.COCO_WITH_VOC_LABELS_V1.meta
    config = {"deeplabv3": "deeplabv3_R_50_os8.yaml", "fcn": "fcn_R_50_os8.yaml"}[head]
    model_info.main([str(ROOT / "configs/segmentation" / config), "--size", "520", "520",
                     "model.num_classes=21", "model.backbone.multi_grid=null"])
    rows = _rows(capsys)
    assert rows["total"][0] == published["num_params"]
    with_aux = sum(macs for name, (_, macs) in rows.items() if name != "total")
    assert round(with_aux, 3) == published["_ops"]
    assert rows["total"][1] == round(with_aux - rows["aux_head (training only)"][1], 3)


def test_a_pretraining_config_needs_no_data_folder(capsys) -> None:
    """data.root is mandatory for training; counting does not read it."""
    model_info.main([str(ROOT / "configs/pretrain/resnet50_imagenet.yaml")])
    out = capsys.readouterr().out
    assert "classification, 1000 classes" in out and "input 224x224" in out
    assert "\ntotal       25,557,032      4.089" in out


def test_a_pretraining_config_counts_the_class_folders_of_its_data(tmp_path, capsys) -> None:
    """It counted 1000 classes (ImageNet's) for the 6 of the synthetic set."""
    for name in ("cat", "dog", "bird", ".cache", "__MACOSX"):
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train/readme.txt").write_text("not a class")
    config = str(ROOT / "configs/pretrain/resnet50_imagenet.yaml")
    model_info.main([config, f"data.root={tmp_path}"])
    out = capsys.readouterr().out
    assert f"classification, 3 classes (the class folders of {tmp_path / 'train'})" in out
    # ResNet-50's 25,557,032 with an fc of 3 outputs in place of 1000: 2048 * 997 + 997 fewer
    assert f"\ntotal {25_557_032 - 2048 * 997 - 997:>16,}" in out
    model_info.main([config, f"data.root={tmp_path / 'gone'}"])
    assert capsys.readouterr().out.startswith(
        f"note: data.root's {tmp_path / 'gone/train'} is not a folder; counting the default "
        f"classes\n{config}: classification, 1000 classes")


def test_a_config_without_an_input_size_asks_for_one(capsys) -> None:
    """data.train.crop_size=null (whole images) and data.val.max_size=null (no cap) were
    TypeErrors; a list of test sizes counts the largest; a short side above the cap counts
    the largest image the resize makes (the cap's square)."""
    from resnet_detect.engine.config import ConfigError
    config = str(ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml")
    with pytest.raises(ConfigError, match=r"data.train.crop_size is null \(whole images\): no "
                                          r"input size to count at: pass --size H W"):
        model_info.main([config, "data.train.crop_size=null"])
    model_info.main([config, "data.train.crop_size=null", "--size", "64", "96"])
    assert "input 64x96\n" in capsys.readouterr().out
    detector = str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml")
    with pytest.raises(ConfigError, match=r"data.val.max_size is null \(no cap\).*pass --size"):
        model_info.main([detector, "data.val.max_size=null"])
    model_info.main([detector, "data.val.min_size=[200,320]", "data.val.max_size=400"])
    assert "input 320x400 (padded to 320x416)\n" in capsys.readouterr().out
    model_info.main([detector, "data.val.min_size=1000", "data.val.max_size=600"])
    assert "input 600x600 (padded to 608x608)\n" in capsys.readouterr().out


def test_a_small_input_counts_the_rois_its_anchors_allow(capsys) -> None:
    """A 32x32 input has 3 anchors at each of 16 x 16 + 8 x 8 + ... places: 258 at most
    survive, not the config's 1000 (300 in the quickstart)."""
    model_info.main([str(ROOT / "configs/detection/mask_rcnn_R_50_FPN_1x.yaml"),
                     "--size", "1", "1", "model.num_classes=80"])
    rows = _rows(capsys)
    anchors = 3 * sum((32 // stride) ** 2 for stride in (4, 8, 16, 32)) + 3  # p6: 1 x 1
    assert anchors == 258 and "roi_heads (258 RoIs)" in rows
    assert "mask_head (100 RoIs)" in rows


def test_a_folder_is_said_to_be_one(capsys) -> None:
    with pytest.raises(SystemExit):
        model_info.main([str(ROOT / "configs")])
    assert "configs is a folder: give a config file (a run's config.yaml)" in \
        capsys.readouterr().err


def test_a_configs_training_file_gives_the_classes(tmp_path, capsys) -> None:
    """model.num_classes null: the categories of data.train.ann_file (COCO's 80 were counted
    whatever the data); a file that is missing or no COCO file: the default, said in a line."""
    ann_file = tmp_path / "three.json"
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 2, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]}))
    detector = str(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml")
    args = [detector, "--size", "64", "64", f"data.train.ann_file={ann_file}"]
    model_info.main(args)
    out = capsys.readouterr().out
    assert out.startswith(f"{detector}: detection, 3 classes (the categories of "
                          f"data.train.ann_file {ann_file}), input 64x64\n")
    three = _roi_heads_parameters(out)
    model_info.main([*args, "--num-classes", "1"])  # given: the file is not read
    one = _roi_heads_parameters(capsys.readouterr().out)

    def box_predictor(k: int, features: int = 512) -> int:  # after fc_dims [512, 512]
        cls_score = features * (k + 1) + (k + 1)  # K classes and the background
        bbox_pred = features * 4 * k + 4 * k  # a box per class
        return cls_score + bbox_pred
    assert three - one == box_predictor(3) - box_predictor(1)
    segmenter = str(ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml")
    model_info.main([segmenter, f"data.train.ann_file={ann_file}", "data.train.mask_dir=null",
                     "data.class_names=null"])
    assert ", 4 classes (the categories of data.train.ann_file " in capsys.readouterr().out
    # a segmenter's data.class_names first, as its training reads them
    names = tmp_path / "classes.json"
    names.write_text(json.dumps(["bg", "a", "b", "c", "d", "e"]))
    model_info.main([segmenter, f"data.train.ann_file={ann_file}", "data.train.mask_dir=null",
                     f"data.class_names={names}"])
    assert f", 6 classes (data.class_names {names})" in capsys.readouterr().out
    model_info.main([segmenter, "data.class_names=[bg,a,b,c,d]"])
    assert ", 5 classes (data.class_names " in capsys.readouterr().out
    for content, reason in ((None, "not found"),
                            ('{"categories": [', "not a COCO file with categories "
                                                 "(JSONDecodeError: "),
                            ('{"images": []}', "not a COCO file with categories (KeyError: ")):
        if content is not None:
            ann_file.write_text(content)
        else:
            ann_file.unlink()
        model_info.main(args)
        note, header = capsys.readouterr().out.splitlines()[:2]
        assert note.startswith(f"note: data.train.ann_file {ann_file}: {reason}")
        assert note.endswith("; counting the default classes")
        assert header.startswith(f"{detector}: detection, 80 classes (the data's at training")


def _roi_heads_parameters(out: str) -> int:
    """The parameters of the "roi_heads (N RoIs)" row: the box head's and box predictor's."""
    row = next(line for line in out.splitlines() if line.startswith("roi_heads ("))
    return int(row.split()[-2].replace(",", ""))
