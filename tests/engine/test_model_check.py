"""A model config's mistakes are named before the training data is read (engine.model_check):
each case points the data at files that do not exist, so reading the data first would fail
on the data instead."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from resnet_detect.engine.checkpoint import UnreadableCheckpointError
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import DatasetError
from resnet_detect.engine.model_check import warn_of_random_backbone
from resnet_detect.engine.tasks import config_task, load_task_config, task_module

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
SEGMENTER = REPO / "configs/synthetic/deeplabv3plus_R_18_os16.yaml"
CLASSIFIER = REPO / "configs/pretrain/synthetic_resnet18.yaml"


def _no_data(config: Path, tmp_path: Path) -> list[str]:
    if config == CLASSIFIER:
        return [f"data.root={tmp_path / 'none'}"]
    if config == SEGMENTER:
        return [f"data.train.img_dir={tmp_path / 'none'}", f"data.train.mask_dir={tmp_path}",
                "model.backbone.weights=null"]
    return [f"data.train.ann_file={tmp_path / 'no.json'}", "model.backbone.weights=null"]


def _prepare(config: Path, overrides: list[str]) -> None:
    name, cfg = load_task_config(config, overrides)
    task_module(name).TASK().prepare(cfg)


@pytest.mark.parametrize("config,override,message", [
    (DETECTOR, "model.fpn.out_channels=0", "model.backbone / model.fpn: FPN out_channels must be "
                                           "a positive integer, got 0"),
    (DETECTOR, "model.backbone.name=resnet37", "model.backbone / model.fpn: unknown backbone "
                                               "'resnet37'; valid: "),
    (DETECTOR, "model.backbone.norm=ln", r"model.backbone.norm 'ln' is not valid; valid: bn, "
                                         r"frozen_bn, gn, syncbn \(backbone resnet18\)"),
    (DETECTOR, "model.backbone.out_features=[res6]", r"model.backbone.out_features \['res6'\] "
                                                     "are not stages of this net"),
    (DETECTOR, "model.rpn.in_features=[p9]", r"model.rpn.in_features \['p9'\] are not all "
                                             "backbone outputs"),
    (DETECTOR, "model.roi_heads.in_features=[p3,p7]", r"model.roi_heads.in_features \['p7'\] "
                                                      "are not backbone outputs"),
    (DETECTOR, "model.roi_heads.name=StandardROIHeadz", "unknown model.roi_heads.name "
                                                        "'StandardROIHeadz'; valid: "),
    (DETECTOR, "model.fpn.top_block=p7", "unknown model.fpn.top_block 'p7'"),
    (DETECTOR, "model.anchor_generator.sizes=[[32],[64]]", "has 4 levels but the anchor "
                                                           "generator has 2"),
    (DETECTOR, "model.roi_heads.fc_dims=[1024,0]", "model.roi_heads: fully connected widths "
                                                   r"must be positive integers, got \[1024, 0\]"),
    (DETECTOR, "model.rpn.nms_thresh=1.5", r"model.rpn.nms_thresh must be an overlap \(IoU\) "
                                           r"in \[0, 1\], got 1.5"),
    (DETECTOR, "model.roi_heads.score_thresh=-0.1", "model.roi_heads.score_thresh must be"),
    (DETECTOR, "model.roi_heads.batch_size_per_image=0", "model.roi_heads: batch_size_per_image "
                                                         "must be positive, got 0"),
    (SEGMENTER, "model.backbone.norm=ln", "model.backbone.norm 'ln' is not valid"),
    (SEGMENTER, "model.head.name=unet", "unknown model.head.name 'unet'"),
    (SEGMENTER, "model.head.in_feature=res6", r"model.head.in_feature=res6, "
                                              r"model.head.low_level_feature=res2: features "
                                              r"\['res6'\] are not stages of this net"),
    (CLASSIFIER, "model.options.bogus=1", "unknown backbone option model.options.bogus"),
    # (a trial: the valid list alone, drop_path_rate among it)
    (CLASSIFIER, "model.options={drop_path_rate:0.1}", r"unknown backbone option "
                                                       r"model.options.drop_path_rate:0.1; .* "
                                                       r"\(YAML needs a space after a colon: "
                                                       r"\{drop_path_rate: 0.1\}\)$"),
    (CLASSIFIER, "model.name=resnet37", "model: unknown backbone 'resnet37'"),
    (CLASSIFIER, "model.options.norm=ln", "model.options.norm 'ln' is not valid"),
])
def test_a_model_config_error_is_named_before_the_data_is_read(config, override, message,
                                                               tmp_path):
    with pytest.raises(ConfigError, match=message):
        _prepare(config, [override, *_no_data(config, tmp_path)])


@pytest.mark.parametrize("config,key", [(DETECTOR, "model.backbone.weights"),
                                        (DETECTOR, "model.weights"),
                                        (SEGMENTER, "model.weights"),
                                        (CLASSIFIER, "model.weights")])
def test_a_missing_weights_file_is_named_before_the_data_is_read(config, key, tmp_path):
    overrides = [*_no_data(config, tmp_path), f"{key}={tmp_path / 'gone.pth'}"]
    with pytest.raises(FileNotFoundError, match=f"{key}: weights file not found: .*gone.pth"):
        _prepare(config, overrides)
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{key}: .*folder.pth is a folder"):
        _prepare(config, [*overrides, f"{key}={tmp_path / 'folder.pth'}"])


@pytest.mark.parametrize("config,key", [(DETECTOR, "model.backbone.weights"),
                                        (DETECTOR, "model.weights"),
                                        (SEGMENTER, "model.weights"),
                                        (CLASSIFIER, "model.weights")])
def test_a_damaged_weights_file_is_named_before_the_data_is_read(config, key, tmp_path):
    """A download cut short: told before minutes of reading COCO or scanning ImageNet."""
    whole = tmp_path / "whole.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, whole)
    (tmp_path / "cut.pth").write_bytes(whole.read_bytes()[:200])
    with pytest.raises(UnreadableCheckpointError, match=r"cannot read weights file .*cut.pth"):
        _prepare(config, [*_no_data(config, tmp_path), f"{key}={tmp_path / 'cut.pth'}"])


@pytest.mark.parametrize("config,key", [(DETECTOR, "model.backbone.weights"),
                                        (SEGMENTER, "model.backbone.weights"),
                                        (CLASSIFIER, "model.weights")])
def test_backbone_weights_of_another_architecture_are_named_before_the_data_is_read(
        config, key, tmp_path):
    """A ResNet-34 file for the config's ResNet-18 backbone: the data was read first (minutes
    at COCO scale), then the build said it; torchvision's own ResNet-18 file loads."""
    import torchvision
    for name in ("resnet18", "resnet34"):
        torch.save(getattr(torchvision.models, name)().state_dict(), tmp_path / f"{name}.pth")
    with pytest.raises(ConfigError, match=r"weights from .*resnet34.pth do not match ResNet"):
        _prepare(config, [*_no_data(config, tmp_path), f"{key}={tmp_path / 'resnet34.pth'}"])
    with pytest.raises((DatasetError, FileNotFoundError), match=f"{tmp_path}/(no.json|none)"):
        _prepare(config, [*_no_data(config, tmp_path), f"{key}={tmp_path / 'resnet18.pth'}"])


def test_a_classifier_of_other_classes_recording_none_is_no_refusal(tmp_path):
    """A 1000-class classifier whose provenance names no classes counted as "these classes"
    against the check's stand-in (none yet) and its fc was refused; training loads its
    backbone and a new fc."""
    from resnet_detect.backbones import build_classifier, make_provenance, save_checkpoint
    save_checkpoint(tmp_path / "c.pth", build_classifier("resnet18", 1000).state_dict(),
                    make_provenance("resnet18"))
    with pytest.raises((DatasetError, FileNotFoundError), match=f"{tmp_path}/none"):
        _prepare(CLASSIFIER, [*_no_data(CLASSIFIER, tmp_path), f"model.weights={tmp_path}/c.pth"])


SHIPPED = sorted(p for p in glob.glob(str(REPO / "configs/*/*.yaml"))
                 if "base" not in Path(p).name and "/analyze/" not in p)
NO_DATA = {"detection": ["data.train.ann_file={}/no.json", "data.train.img_dir={}",
                         "model.backbone.weights=null"],
           "sem_seg": ["data.train.img_dir={}/none", "data.train.mask_dir={}",
                       "model.backbone.weights=null"],
           "classification": ["data.root={}/none"]}


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: Path(p).name)
def test_every_shipped_config_passes_the_check_and_goes_on_to_the_data(config, tmp_path):
    name = config_task(config)
    name, cfg = load_task_config(config, [o.format(tmp_path) for o in NO_DATA[name]])
    with pytest.raises((DatasetError, FileNotFoundError), match=f"{tmp_path}/(no.json|none)"):
        task_module(name).TASK().prepare(cfg)


def test_a_missing_backbone_file_says_how_to_make_one_or_start_without(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.backbone.weights: weights file not "
                                                r"found: .*gone.pth.*tools/pretrain.py trains "
                                                r"one.*; model.backbone.weights=null starts "
                                                r"from random weights"):
        _prepare(DETECTOR, [*_no_data(DETECTOR, tmp_path),
                            f"model.backbone.weights={tmp_path / 'gone.pth'}"])


def test_whole_model_weights_need_no_backbone_file(tmp_path, caplog):
    """Fine-tuning a detector (model.weights) in a fresh clone was refused for the quickstart's
    backbone file, whose tensors the detector's replace all: it is not needed, and said so
    (where it is there it is read still: its provenance may set the architecture)."""
    from resnet_detect import backbones
    from resnet_detect.detection import build_model
    from resnet_detect.detection.training import make_provenance
    from resnet_detect.engine.data import CategoryMapping
    _, cfg = load_task_config(DETECTOR, ["model.backbone.weights=null", "model.num_classes=3"])
    trained = build_model(cfg)
    path = tmp_path / "detector.pth"
    backbones.save_checkpoint(path, trained.state_dict(), make_provenance(
        cfg, CategoryMapping((1, 2, 3), ("a", "b", "c"))))
    gone = tmp_path / "gone.pth"
    overrides = [*_no_data(DETECTOR, tmp_path), f"model.weights={path}",
                 f"model.backbone.weights={gone}"]
    with caplog.at_level("INFO"), pytest.raises(FileNotFoundError, match="no.json"):
        _prepare(DETECTOR, overrides)  # on to the data
    assert (f"model.backbone.weights ({gone}) is not there and not needed: model.weights "
            f"({path}) gives the whole model's, the backbone's included") in caplog.text
    _, cfg = load_task_config(DETECTOR, [*overrides, "model.num_classes=3"])
    built = build_model(cfg)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in built.state_dict().items())


def test_a_random_backbone_with_frozen_parts_is_warned_of(caplog):
    """From scratch (no weights), freeze_at and frozen_bn keep random layers as they start."""
    _, cfg = load_task_config(DETECTOR, ["model.backbone.weights=null",
                                         "model.backbone.freeze_at=2",
                                         "model.backbone.norm=frozen_bn"])
    with caplog.at_level("WARNING"):
        warn_of_random_backbone(cfg)
    assert ("no weights are given (model.weights, model.backbone.weights null): the backbone "
            "starts from random weights, and model.backbone.freeze_at=2 never trains the stem "
            "and res2; model.backbone.norm=frozen_bn normalises with the initial statistics; "
            "from scratch, set model.backbone.freeze_at=0 model.backbone.norm=gn") in caplog.text
    caplog.clear()
    _, cfg = load_task_config(DETECTOR, ["model.backbone.weights=null",
                                         "model.backbone.freeze_at=0", "model.backbone.norm=gn"])
    with caplog.at_level("WARNING"):
        warn_of_random_backbone(cfg)
    assert ("no weights are given (model.weights, model.backbone.weights null): the backbone "
            "starts from random weights (ImageNet weights: model.backbone.weights=PATH)"
            ) in caplog.text


def test_class_weights_with_the_class_count_read_from_the_data(tmp_path):
    """model.class_weight of the data's 7 classes was refused against the check's stand-in
    count of 2 ("7 weights for 2 classes"): no list passed where model.num_classes is null."""
    with pytest.raises((DatasetError, FileNotFoundError), match=f"{tmp_path}/none"):
        _prepare(SEGMENTER, [*_no_data(SEGMENTER, tmp_path), "model.class_weight=[1,2,3,4,5,6,7]"])
    with pytest.raises(ConfigError, match=r"model.class_weight must be a list of finite "
                                          r"non-negative numbers"):
        _prepare(SEGMENTER, [*_no_data(SEGMENTER, tmp_path), "model.class_weight=[1,.inf,1]"])
