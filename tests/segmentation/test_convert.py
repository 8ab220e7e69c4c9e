"""torchvision parity: deeplabv3_resnet50 / fcn_resnet50 state dicts give the same logits."""

from pathlib import Path

import pytest
import torch
from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

from omegaconf import OmegaConf

from resnet_detect.backbones.weights import save_checkpoint
from resnet_detect.engine.config import ConfigError
from resnet_detect.segmentation import (build_model, convert_torchvision_segmentation,
                                        load_segmentation_weights)
from resnet_detect.segmentation.build import defaults, load_config, provenance_from_config

REFERENCES = {"deeplabv3": deeplabv3_resnet50, "fcn": fcn_resnet50}


def _randomize_norms(model: torch.nn.Module) -> None:
    """BN statistics and affine parameters away from their identity defaults, so they matter."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _reference(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = REFERENCES[head](weights=None, weights_backbone=None, num_classes=21,
                             aux_loss=True).eval()
    _randomize_norms(model)
    return model


def _torchvision_config(head: str, **model) -> dict:
    cfg = OmegaConf.to_container(defaults())
    cfg["model"].update({"num_classes": 21, **model})
    cfg["model"]["backbone"].update(name="resnet50", output_stride=8, multi_grid=None)
    cfg["model"]["head"]["name"] = head
    return cfg


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
def test_torchvision_weights_give_the_same_logits(head):
    reference = _reference(head)
    # pixel mean 0 / std 1: feed both networks the same normalized tensor
    model = build_model(_torchvision_config(head, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1]))
    load_segmentation_weights(model, reference.state_dict())
    model.eval()
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        got = model.logits(x, with_aux=True)
        per_image = model([x[0]])[0]["sem_seg"]
    assert expected["out"].abs().max() > 1.0  # the comparison is not between near-zeros
    torch.testing.assert_close(got["sem_seg"], expected["out"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["aux"], expected["aux"], rtol=0, atol=1e-5)
    # the per-image path runs NHWC (channels_last) convolutions on CPU: same arithmetic in
    # another summation order, so float32 rounding relative to the logits' scale
    scale = expected["out"].abs().max().item()
    torch.testing.assert_close(per_image, expected["out"][0], rtol=0, atol=1e-5 * scale)
    assert torch.equal(per_image.argmax(0), expected["out"][0].argmax(0))


def test_torchvision_weights_with_imagenet_normalization():
    """0..255 input with the default pixel mean/std equals torchvision on (x/255 - mean)/std."""
    reference = _reference("deeplabv3")
    model = build_model(_torchvision_config("deeplabv3", weights=None))
    load_segmentation_weights(model, reference.state_dict())
    model.eval()
    image = torch.randint(0, 256, (3, 65, 81), generator=torch.Generator().manual_seed(3))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        expected = reference(((image / 255.0 - mean) / std)[None])["out"][0]
        got = model([image])[0]["sem_seg"]
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)


def test_aux_weights_dropped_without_aux_head_and_key_mapping():
    reference = fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    state = reference.state_dict()
    converted = convert_torchvision_segmentation(state)
    assert converted["head.conv.conv.weight"].shape == (512, 2048, 3, 3)
    assert converted["aux_head.predictor.weight"].shape == (3, 256, 1, 1)
    assert converted["backbone.res5.2.norm3.running_var"] is \
        state["backbone.layer4.2.bn3.running_var"]
    cfg = _torchvision_config("fcn", num_classes=3)
    cfg["model"]["aux_head"]["enabled"] = False
    model = build_model(cfg)
    load_segmentation_weights(model, reference.state_dict())  # strict, aux keys dropped
    torch.testing.assert_close(model.head.predictor.weight,
                               reference.classifier[4].weight)


def test_mismatched_weights_are_reported():
    reference = fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    model = build_model(_torchvision_config("fcn", num_classes=5))
    with pytest.raises(ValueError, match="mis-shaped.*head.predictor.weight"):
        load_segmentation_weights(model, reference.state_dict())
    state = dict(reference.state_dict())
    state["classifier.9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="classifier.9.weight"):
        convert_torchvision_segmentation(state)
    # as the tools load it: a ConfigError (one line, exit 2) naming the file
    with pytest.raises(ConfigError, match=r"^fcn.pth: not a torchvision DeepLabV3/FCN state "
                                          r"dict: unknown keys \['classifier.9.weight'\]"):
        load_segmentation_weights(model, state, source="fcn.pth")


def test_deeplab_key_mapping():
    state = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=4).state_dict()
    converted = convert_torchvision_segmentation(state)
    pairs = {"head.aspp.branches.0.conv.weight": "classifier.0.convs.0.0.weight",
             "head.aspp.branches.3.norm.running_mean": "classifier.0.convs.3.1.running_mean",
             "head.aspp.pooling.conv.weight": "classifier.0.convs.4.1.weight",
             "head.aspp.pooling.norm.bias": "classifier.0.convs.4.2.bias",
             "head.aspp.project.conv.weight": "classifier.0.project.0.weight",
             "head.fuse.norm.weight": "classifier.2.weight",
             "head.predictor.bias": "classifier.4.bias"}
    for ours, theirs in pairs.items():
        assert converted[ours] is state[theirs], ours
    assert len(converted) == len(state)


def test_torchvision_weights_refused_by_the_multi_grid_config_they_do_not_fit(tmp_path):
    """deeplabv3_R_50_os8.yaml as shipped (multi-grid 1, 2, 4) is not torchvision's network:
    the weights load shape for shape but compute something else, so the config is refused
    with the key to set; with it set, they load."""
    reference = _reference("deeplabv3")
    path = tmp_path / "deeplabv3_resnet50.pth"
    torch.save(reference.state_dict(), path)
    shipped = "configs/segmentation/deeplabv3_R_50_os8.yaml"
    cfg = load_config(shipped, [f"model.weights={path}", "model.num_classes=21"])
    with pytest.raises(ValueError, match=rf"weights from {path} do not fit this config: "
                       r"model.backbone.multi_grid is \[1,2,4\], the weights need null.*"
                       r"set model.backbone.multi_grid=null$"):
        build_model(cfg)
    # what the refusal prevents: the same tensors in the multi-grid network give other logits
    cfg.model.weights = None
    wrong = build_model(cfg).eval()
    load_segmentation_weights(wrong, reference.state_dict())  # no settings given: not checked
    x = torch.randn(1, 3, 65, 81, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(x)["out"]
        assert not torch.allclose(wrong.logits(x)["sem_seg"], expected, atol=1e-3)
    fixed = build_model(load_config(shipped, [f"model.weights={path}", "model.num_classes=21",
                                              "model.backbone.multi_grid=null"]))
    assert torch.equal(fixed.head.predictor.weight, reference.classifier[4].weight)
    # all ones is not null in a dilated stage (its first block dilated 4, not 2): it was
    # taken as null and the weights loaded into the other network without a word
    ones = load_config(shipped, [f"model.weights={path}", "model.num_classes=21",
                                 "model.backbone.multi_grid=[1,1,1]"])
    with pytest.raises(ValueError, match=r"model.backbone.multi_grid is \[1,1,1\], the weights "
                                         r"need null"):
        build_model(ones)
    ones.model.weights = None
    wrong = build_model(ones).eval()
    load_segmentation_weights(wrong, reference.state_dict())
    with torch.no_grad():
        assert not torch.allclose(wrong.logits(x)["sem_seg"], expected, atol=1e-3)


def test_own_checkpoint_refused_by_a_config_with_another_output_stride(tmp_path, small_config):
    cfg = small_config("deeplabv3plus", output_stride=16)
    trained = build_model(cfg)
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, trained.state_dict(), provenance_from_config(cfg, ["c"] * 5))
    other = small_config("deeplabv3plus", output_stride=8, weights=str(path))
    with pytest.raises(ValueError, match=r"model.backbone.output_stride is 8, the weights need "
                       r"16; model.head.aspp_rates is \[12,24,36\], the weights need \[6,12,18\]"):
        build_model(other)
    same = small_config("deeplabv3plus", output_stride=16, weights=str(path))
    assert torch.equal(build_model(same).head.predictor.weight, trained.head.predictor.weight)
    # weights of other head widths: the mis-shaped tensors alone were listed (a trial's 41,
    # trained with model.head.channels=16); the keys the weights' config differs in are named
    narrow = small_config("deeplabv3plus", output_stride=16, weights=str(path))
    narrow["model"]["head"]["channels"] = 2 * cfg["model"]["head"]["channels"]
    with pytest.raises(ValueError, match=rf"(?s)mis-shaped .*\n  the config the weights record "
                                         rf"differs from this one in model.head.channels "
                                         rf"{cfg['model']['head']['channels']} \(here "
                                         rf"{2 * cfg['model']['head']['channels']}\): give their "
                                         rf"run's config.yaml, or set those keys$"):
        build_model(narrow)


def test_own_checkpoint_of_all_ones_multi_grid_refused_by_a_null_config(tmp_path,
                                                                         small_config):
    """A run trained with multi_grid [1, 1] at output stride 16 (res5's first block dilated 2)
    loaded into multi_grid null (that block not dilated) without a word: all ones was read
    as null."""
    cfg = small_config("deeplabv3")
    cfg["model"]["backbone"]["multi_grid"] = [1, 1]
    trained = build_model(cfg)
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, trained.state_dict(), provenance_from_config(cfg, ["c"] * 5))
    other = small_config("deeplabv3", weights=str(path))
    other["model"]["backbone"]["multi_grid"] = None
    with pytest.raises(ValueError, match=r"model.backbone.multi_grid is null, the weights need "
                                         r"\[1,1\]"):
        build_model(other)
    at_32 = small_config("fcn", output_stride=32)  # no stage dilated: all ones is null
    at_32["model"]["backbone"]["multi_grid"] = [1, 1]
    save_checkpoint(path, build_model(at_32).state_dict(),
                    provenance_from_config(at_32, ["c"] * 5))
    null_32 = small_config("fcn", output_stride=32, weights=str(path))
    null_32["model"]["backbone"]["multi_grid"] = None
    build_model(null_32)


def test_a_checkpoint_of_another_task_is_named(tmp_path, small_config):
    """A detector's checkpoint given to a segmentation config (and the reverse) failed with a
    bare KeyError ('head', 'fpn')."""
    from resnet_detect.detection import load_detector_weights
    from resnet_detect.detection.build import build_model as build_detector
    from resnet_detect.detection.config import defaults as detection_defaults
    from resnet_detect.engine.config import load_config as load_any_config
    from resnet_detect.segmentation import Predictor

    cfg = small_config("fcn")
    path = tmp_path / "segmenter.pth"
    save_checkpoint(path, build_model(cfg).state_dict(), provenance_from_config(cfg, ["c"] * 5))
    detector_cfg = load_any_config(
        Path(__file__).resolve().parents[2] / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml",
        ["model.num_classes=2", "model.backbone.name=resnet18", "model.backbone.weights=null"],
        defaults=detection_defaults())
    with pytest.raises(ValueError, match="segmenter.pth holds a sem_seg model .*not a detection"):
        load_detector_weights(build_detector(detector_cfg), path)
    detector_path = tmp_path / "detector.pth"
    save_checkpoint(detector_path, {}, {"config": {"task": "detection", "model": {}}})
    with pytest.raises(ValueError, match="detector.pth holds a detection model .*not a sem_seg"):
        load_segmentation_weights(build_model(cfg), detector_path)
    with pytest.raises(ValueError, match="detector.pth holds a detection model .*not a sem_seg"):
        Predictor(cfg, weights=detector_path)
    # bare state dicts, without a record: told by their keys (a segmenter asked for
    # model.num_classes, then listed 144 missing keys)
    bare_detector = tmp_path / "bare_detector.pth"
    torch.save(build_detector(detector_cfg).state_dict(), bare_detector)
    for load in (lambda: Predictor(cfg, weights=bare_detector),
                 lambda: load_segmentation_weights(build_model(cfg), bare_detector)):
        with pytest.raises(ValueError, match=r"bare_detector.pth holds a detection model's "
                                             r"weights \(keys \['rpn\..*not a sem_seg one"):
            load()
    bare_segmenter = tmp_path / "bare_segmenter.pth"
    torch.save(build_model(cfg).state_dict(), bare_segmenter)
    with pytest.raises(ValueError, match=r"bare_segmenter.pth holds a sem_seg model's weights "
                                         r"\(keys \['head.predictor.*not a detection one"):
        load_detector_weights(build_detector(detector_cfg), bare_segmenter)


def _fine_tuned(cfg, path, caplog):
    """(the model built with model.weights=path, logging captured; the same model built
    without them, from the same seed: what a part that starts afresh must equal)."""
    torch.manual_seed(5)
    fresh = build_model(cfg)
    torch.manual_seed(5)
    cfg["model"]["weights"] = str(path)
    with caplog.at_level("WARNING", logger="resnet_detect.backbones.weights"):
        model = build_model(cfg)
    return model, fresh


def test_torchvision_weights_fine_tune_to_other_classes(tmp_path, caplog):
    """The torchvision / mmsegmentation workflow: a 21-class model's weights start a 4-class
    training. model.weights keeps everything but the two classifiers, which start afresh
    (refused before, while the refused-resume advice named model.weights); a Predictor's or
    tools/eval.py's weights stay strict."""
    reference = _reference("deeplabv3")
    path = tmp_path / "tv_deeplabv3.pth"
    torch.save(reference.state_dict(), path)
    model, fresh = _fine_tuned(_torchvision_config("deeplabv3", num_classes=4), path, caplog)
    assert ("tv_deeplabv3.pth: head.predictor.weight, head.predictor.bias, "
            "aux_head.predictor.weight, aux_head.predictor.bias trained for another class count "
            "((21, 256, 1, 1) -> (4, 256, 1, 1), (21,) -> (4,), (21, 256, 1, 1) -> "
            "(4, 256, 1, 1), (21,) -> (4,))") in caplog.text
    assert torch.equal(model.head.predictor.weight, fresh.head.predictor.weight)
    assert torch.equal(model.aux_head.predictor.weight, fresh.aux_head.predictor.weight)
    converted = convert_torchvision_segmentation(reference.state_dict())
    loaded = model.state_dict()
    kept = [k for k in converted if ".predictor." not in k]
    assert len(kept) == len(converted) - 4
    assert all(torch.equal(loaded[k], converted[k]) for k in kept)
    with pytest.raises(ValueError, match=r"mis-shaped \(4\): head.predictor.weight"):
        load_segmentation_weights(build_model(_torchvision_config("deeplabv3", num_classes=4)),
                                  str(path))


def test_torchvision_weights_without_aux_head_fine_tune_into_a_model_with_one(tmp_path, caplog):
    """torchvision's deeplabv3_resnet50 is built without its aux classifier by default: such
    weights were refused by the configs, whose aux head is on; now the aux head starts afresh
    in training, and a Predictor's weights stay strict."""
    reference = _reference("deeplabv3")
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("aux_")}
    path = tmp_path / "tv_no_aux.pth"
    torch.save(state, path)
    model, fresh = _fine_tuned(_torchvision_config("deeplabv3", num_classes=21), path, caplog)
    assert "tv_no_aux.pth has no aux_head: this model's starts from scratch" in caplog.text
    assert torch.equal(model.aux_head.conv.conv.weight, fresh.aux_head.conv.conv.weight)
    assert torch.equal(model.head.predictor.weight, reference.classifier[4].weight)
    with pytest.raises(ValueError, match=r"missing \(\d+\): aux_head"):
        load_segmentation_weights(build_model(_torchvision_config("deeplabv3", num_classes=21)),
                                  str(path))


@pytest.mark.parametrize("aux", [False, True])
def test_a_predictor_takes_torchvision_weights_with_or_without_the_aux_classifier(
        tmp_path, caplog, aux):
    """torchvision's aux_loss=False weights (deeplabv3_resnet50's default) were refused by
    eval, demo, export and Predictor ("missing: aux_head..."), whose configs train one: an aux
    head only trains, so a Predictor builds none and takes either, without a word."""
    import logging

    from resnet_detect.segmentation import Predictor
    reference = _reference("deeplabv3")
    state = {k: v for k, v in reference.state_dict().items()
             if aux or not k.startswith("aux_")}
    torch.save(state, tmp_path / "tv.pth")
    config = _torchvision_config("deeplabv3", pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1])
    with caplog.at_level(logging.DEBUG, logger="resnet_detect"):
        predictor = Predictor(config, weights=tmp_path / "tv.pth")
    assert predictor.model.aux_head is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    x = torch.randn(1, 3, 65, 81, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)["out"]
        got = predictor.model.logits(x)["sem_seg"]
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
