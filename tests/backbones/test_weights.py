"""Weight import: torchvision/timm logit parity, own checkpoints with provenance, strict errors."""
import argparse
from pathlib import Path
import logging
import re
import warnings

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

from resnet_detect import backbones
from resnet_detect.backbones import load_weights, make_provenance, save_checkpoint
from resnet_detect.backbones.weights import read_checkpoint
from resnet_detect.engine.checkpoint import UnreadableCheckpointError
from resnet_detect.engine.config import ConfigError


def _randomize_bn_stats(model):
    """Statistics and affine parameters: timm zero-initialises each block's last norm, which
    would hide its branch's last conv from the comparison."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_torchvision_file_gives_same_logits(tmp_path, name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    _randomize_bn_stats(reference)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = backbones.build_classifier(name, 1000, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)


def test_imagenet_weights_into_a_classifier_of_other_classes_say_how_to_fine_tune(tmp_path):
    """build_classifier("resnet18", 10, weights=torchvision's 1000-class file) was refused
    with "mis-shaped (2): fc.weight ..." alone; loading a new fc silently would let an
    evaluation score a random one."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'r18.pth'} is a classifier of 1000 "
                                          rf"outputs, and this one has 10: to fine-tune from "
                                          rf"its backbone with a new fc, build without weights "
                                          rf"and load them into the backbone, "
                                          rf"backbones.load_weights\(model.backbone, "):
        backbones.build_classifier("resnet18", 10, weights=tmp_path / "r18.pth")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_file_gives_same_logits(tmp_path, name):
    import timm  # (1.5 s to import: only in the tests that compare with it)
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=10).eval()
    _randomize_bn_stats(reference)
    path = tmp_path / f"timm_{name}.pth"
    torch.save(reference.state_dict(), path)
    model = backbones.build_classifier(name, 10, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18d", "resnet50d", "resnet50c"])
def test_timm_resnet_d_gives_same_logits_and_dilated_features(tmp_path, name):
    """timm's ResNet-D (resnet50d: deep stem, average-pooled shortcuts) and ResNet-C (the deep
    stem alone) read from their files: timm's logits, and (resnet50d) timm's res2-res5 at
    output stride 16 and 8, where the shortcut's pool keeps the size as timm's does."""
    import timm  # (1.5 s to import: only in the tests that compare with it)
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=10).eval()
    _randomize_bn_stats(reference)
    from resnet_detect.backbones.weights import torchvision_arch
    assert torchvision_arch(reference.state_dict()) == name
    path = tmp_path / f"timm_{name}.pth"
    torch.save(reference.state_dict(), path)
    model = backbones.build_classifier(name, 10, weights=path).eval()
    x = torch.randn(2, 3, 67, 93)  # odd sizes: the pools' ceil mode and padding
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    if name != "resnet50d":  # (dilated basic blocks: see README, Backbones)
        return
    for stride in (16, 8):
        features = timm.create_model(name, output_stride=stride, features_only=True,
                                     out_indices=(1, 2, 3, 4)).eval()
        features.load_state_dict({k: v for k, v in reference.state_dict().items()
                                  if not k.startswith("fc.")})
        ours = backbones.build(name, output_stride=stride,
                               out_features=("res2", "res3", "res4", "res5"))
        load_weights(ours, path)
        with torch.no_grad():
            got, expected = ours.eval()(x), features(x)
        for (key, value), want in zip(got.items(), expected):
            torch.testing.assert_close(value, want, rtol=0, atol=1e-5, msg=key)


def test_resnet_weights_into_resnet_d_name_both_networks(tmp_path):
    """Each net named by what its keys hold (a name's options may have changed it), and the
    registered name that builds the weights' net."""
    import timm
    files = {}
    for name in ("resnet50", "resnet50d", "resnext50d_32x4d"):
        files[name] = tmp_path / f"{name}.pth"
        torch.save(timm.create_model(name).state_dict(), files[name])
    with pytest.raises(ValueError, match=rf"do not match Classifier \({files['resnet50']} holds a "
                                         rf"resnet50, this model is a resnet50d: the backbone "
                                         rf"name resnet50 builds that net\)(.|\n)*missing(.|\n)*"
                                         rf"backbone.stem.conv.0.weight"):
        backbones.build_classifier("resnet50d", 1000, weights=files["resnet50"])
    with pytest.raises(ValueError, match=rf"\({files['resnet50d']} holds a resnet50d, this model "
                                         rf"is a resnet50c: the backbone name resnet50d builds "
                                         rf"that net\)"):
        backbones.build("resnet50", deep_stem=True, weights=files["resnet50d"])
    with pytest.raises(ValueError, match=rf"\({files['resnext50d_32x4d']} holds a "
                                         rf"resnext50d_32x4d, this model is a resnet50d\)"):
        backbones.build("resnet50d", weights=files["resnext50d_32x4d"])
    # a plain twin and its residual net, named apart (both "resnet18" by their convs alone)
    with pytest.raises(ValueError, match=r"\(the given state dict holds a plain_resnet18, this "
                                         r"model is a resnet18: the backbone name plain_resnet18 "
                                         r"builds that net\)"):
        backbones.build("resnet18", weights=backbones.build("plain_resnet18").state_dict())
    # other deep stems (timm's resnet50t) are not taken for a resnet50d; RegNet's stem.0 is
    # not mmcv's
    for other in (timm.create_model("resnet50t"), torchvision.models.regnet_y_400mf()):
        with pytest.raises(ValueError) as refused:
            backbones.build("resnet50", weights=other.state_dict())
        assert "holds a" not in str(refused.value) and "ResNetV1" not in str(refused.value)
    # mmcv's layout of the same net (mmdetection's ResNetV1d: stem.0 ... stem.7): not read
    mmcv = {re.sub(r"^conv1\.", "stem.", k).replace("bn1.", "stem.7.") if not k.startswith(
        "layer") else k: v for k, v in timm.create_model("resnet50d").state_dict().items()}
    with pytest.raises(ValueError, match=r"keys such as stem.0.weight are the deep stem of "
                                         r"mmdetection's or mmsegmentation's ResNetV1c/V1d, in "
                                         r"mmcv's layout: those checkpoints are not read here"):
        backbones.build("resnet50d", weights={"state_dict": mmcv})
    # this project's file of a resnet18 pretrained with a deep stem: what it holds, not its name
    path = tmp_path / "deep_stem_resnet18.pth"
    save_checkpoint(path, backbones.build("resnet18", deep_stem=True).state_dict(),
                    make_provenance("resnet18", {"deep_stem": True}))
    with pytest.raises(ValueError, match=rf"\({path} holds a resnet18c, this model is a "
                                         rf"resnet18d: the backbone name resnet18c builds that "
                                         rf"net\)"):
        backbones.build("resnet18d", weights=path)


def _timm_model_and_logits():
    import timm  # (1.5 s to import: only in the tests that compare with it)
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    _randomize_bn_stats(reference)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return reference, x, reference(x)


def _logits(path, x):
    with torch.no_grad():
        return backbones.build_classifier("resnet18", 10, weights=path).eval()(x)


def test_safetensors_and_the_checkpoints_of_timm_and_torchvision_training_scripts(
        tmp_path, caplog):
    """What timm's hub (model.safetensors), its train.py and torchvision's classification
    reference write: the weights read as timm's load_checkpoint reads them (the average where
    the file holds one), DDP's and torch.compile's key prefixes dropped."""
    reference, x, expected = _timm_model_and_logits()
    weights = reference.state_dict()
    other = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    safetensors.torch.save_file(weights, tmp_path / "model.safetensors")
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=90)
    files = {
        # timm's train.py: args, the weights trained and their average (model_ema)
        "timm.pth.tar": {"epoch": 3, "arch": "resnet18", "state_dict": other,
                         "state_dict_ema": weights, "optimizer": {}, "args": args},
        # torchvision's references: DDP's module. prefix, AveragedModel's in model_ema
        "tv.pth": {"model": {f"module.{k}": v for k, v in other.items()},
                   "model_ema": {"n_averaged": torch.tensor(5),
                                 **{f"module.{k}": v for k, v in weights.items()}},
                   "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": args},
        "ddp_of_compiled.pth": {"model": {f"module._orig_mod.{k}": v
                                          for k, v in weights.items()}, "args": args},
        "compiled_ddp.pth": {"model": {f"_orig_mod.module.{k}": v for k, v in weights.items()}},
    }
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    for name in ("model.safetensors", *files):
        with caplog.at_level(logging.INFO):
            torch.testing.assert_close(_logits(tmp_path / name, x), expected, rtol=0,
                                       atol=1e-5, msg=name)
    assert "tv.pth: reading the average of the weights ('model_ema') it holds" in caplog.text
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(UnreadableCheckpointError, match=r"cannot read weights file .*broken"
                                                        r".safetensors as safetensors"):
        _logits(broken, x)


def test_a_backbone_takes_a_state_dict_already_loaded_as_a_file():
    reference, _, _ = _timm_model_and_logits()
    backbone = backbones.build("resnet18", weights=reference.state_dict(), norm="bn").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["res5"], reference.forward_features(x),
                                   rtol=0, atol=1e-5)


def test_torchvision_weights_under_another_normalisation_are_warned_of(tmp_path, caplog):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    caffe = {"pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0]}
    model_cfg = {"backbone": {"name": "resnet18", "weights": str(path), "norm": "frozen_bn",
                              "freeze_at": 2, "output_stride": 32, "multi_grid": None,
                              "stride_in_1x1": None}}
    with caplog.at_level(logging.WARNING):
        backbones.build_from_config({**model_cfg, **caffe}, ["res5"])
    assert (f"weights from {path} are a torchvision or timm ResNet, trained on RGB images "
            "normalised by ImageNet's mean and std; this config has model.pixel_mean="
            "[103.53,116.28,123.675], model.pixel_std=[1.0,1.0,1.0]: unless these weights were "
            "trained so, set model.pixel_mean=[123.675,116.28,103.53] model.pixel_std=[58.395,"
            "57.12,57.375]") in caplog.text
    caplog.clear()
    imagenet = {"pixel_mean": list(backbones.PIXEL_MEAN), "pixel_std": list(backbones.PIXEL_STD)}
    with caplog.at_level(logging.WARNING):
        backbones.build_from_config({**model_cfg, **imagenet}, ["res5"])
    assert "torchvision or timm ResNet" not in caplog.text


def test_torchvision_weights_load_into_a_bare_frozen_backbone(tmp_path):
    bn_model = torchvision.models.resnet50()
    _randomize_bn_stats(bn_model)
    path = tmp_path / "r50.pth"
    torch.save(bn_model.state_dict(), path)
    reference = torchvision.models.resnet50(norm_layer=torchvision.ops.FrozenBatchNorm2d).eval()
    reference.load_state_dict(bn_model.state_dict(), strict=False)
    backbone = backbones.build("resnet50", weights=path, norm="frozen_bn", freeze_at=2).eval()
    body = IntermediateLayerGetter(reference, {"layer4": "out"})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone(x)["res5"], body(x)["out"]
        exact = IntermediateLayerGetter(reference.double(), {"layer4": "out"})(x.double())["out"]
    # ours folds the frozen statistics into the convolutions: another float32 rounding than
    # torchvision's, as close to the exact (float64) result as torchvision's own
    assert (ours.double() - exact).abs().max() <= 2 * (theirs.double() - exact).abs().max()
    assert not any(p.requires_grad for p in backbone.res2.parameters())


def test_own_checkpoint_restores_architecture_options(tmp_path):
    """tools/pretrain.py's model.options (a deep stem on a resnet50, say) are recorded: a
    detector's backbone of that name built from its file has them."""
    options = {"stride_in_1x1": True, "deep_stem": True, "avg_down": True}
    classifier = backbones.build_classifier("resnet50", 7, **options).eval()
    provenance = make_provenance("resnet50", options, class_names=list("abcdefg"))
    path = tmp_path / "backbone.pth"
    save_checkpoint(path, classifier.backbone.state_dict(), provenance)
    backbone = backbones.build("resnet50", weights=path).eval()
    assert backbone.res3[0].conv1.stride == (2, 2)
    assert isinstance(backbone.stem.conv, torch.nn.Sequential)
    assert backbone.provenance["class_names"] == list("abcdefg")
    assert backbone.provenance["pixel_mean"] == [123.675, 116.28, 103.53]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["res5"], classifier.backbone(x)["res5"])


def test_truncated_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.pth"):
        backbones.build_classifier("resnet18", 1000, weights=path)


def test_a_file_of_no_tensors_is_named_without_advice_to_run_its_code(tmp_path):
    """torch.load's text advised weights_only=False, which runs a file's code: wrong advice
    for random bytes or a file of unknown origin."""
    path = tmp_path / "random.pth"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"cannot read weights file .*random.pth: no PyTorch "
                                         r"file \(it starts with b'\\x00\\x01\\x02.*: text, or "
                                         r"another format; weights are") as refused:
        backbones.build_classifier("resnet18", 1000, weights=path)
    assert "weights_only" not in str(refused.value)


def test_missing_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        backbones.build("resnet18", weights=tmp_path / "nothere.pth")
    with pytest.raises(FileNotFoundError, match=r"is a folder, not a weights file: name a file "
                                                r"in it \(a training run's model_final.pth"):
        backbones.build("resnet18", weights=tmp_path)


def test_wrong_depth_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(ValueError) as info:
        backbones.build_classifier("resnet18", 1000, weights=path)
    message = str(info.value)
    assert "r34.pth" in message and "unexpected (80)" in message
    assert "backbone.res2.2.conv1.weight" in message and "missing (" not in message


def test_wrong_class_count_lists_mis_shaped_keys():
    model = backbones.build_classifier("resnet18", 10)
    with pytest.raises(ValueError, match=r"mis-shaped \(2\): fc.weight: checkpoint \(1000, 512\)"):
        load_weights(model, torchvision.models.resnet18().state_dict())
    # Nothing was loaded: the fc keeps its shape and the stem its values.
    assert model.fc.weight.shape == (10, 512)


def test_backbone_weights_refused_where_the_stride_sits_elsewhere(tmp_path):
    v1 = backbones.build("resnet50", stride_in_1x1=True)  # MSRA / detectron2 style
    path = tmp_path / "v1.pth"
    backbones.save_checkpoint(path, v1.state_dict(),
                              backbones.make_provenance("resnet50", {"stride_in_1x1": True}))
    with pytest.raises(ValueError, match=rf"weights from {path} do not fit this config: "
                       r"stride_in_1x1 is false, the weights need true.*set stride_in_1x1=true$"):
        backbones.build("resnet50", weights=str(path), stride_in_1x1=False)
    adapted = backbones.build("resnet50", weights=str(path))  # unset: taken from provenance
    assert backbones.weights.stride_in_1x1(adapted) is True
    tv = torchvision.models.resnet50(weights=None).state_dict()  # stride on the 3x3 conv
    with pytest.raises(ValueError, match="stride_in_1x1 is true, the weights need false"):
        backbones.load_weights(backbones.build("resnet50", stride_in_1x1=True), tv)
    # from a config: the key the refusal names is the config's
    with pytest.raises(ValueError, match=r"set model.backbone.stride_in_1x1=true$"):
        backbones.build("resnet50", weights=str(path), stride_in_1x1=False,
                        config_prefix="model.backbone.")


def test_weights_of_another_architecture_name_both(tmp_path):
    path = tmp_path / "r18.pth"
    backbones.save_checkpoint(path, backbones.build("resnet18").state_dict(),
                              backbones.make_provenance("resnet18"))
    with pytest.raises(ValueError, match=rf"do not match ResNet \({path} holds a resnet18, this "
                                         r"model is a resnet50: the backbone name resnet18 builds "
                                         r"that net\):\n  missing"):
        backbones.build("resnet50", weights=str(path))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                  "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                                  "wide_resnet50_2", "wide_resnet101_2"])
def test_torchvision_weights_of_another_architecture_are_named(name):
    """torchvision's resnet50 into a resnet18 listed 165 keys without saying what it was."""
    from resnet_detect.backbones.weights import torchvision_arch

    state_dict = getattr(torchvision.models, name)().state_dict()
    assert torchvision_arch(state_dict) == name
    other = "resnet34" if name == "resnet18" else "resnet18"
    with pytest.raises(ValueError, match=rf"do not match .*\(the given state dict holds a "
                                         rf"{name}, this model is a {other}: the backbone "
                                         rf"name {name} builds that net\):\n"):
        backbones.build(other, weights=state_dict)
    classifier = backbones.build_classifier(other, 10)
    with pytest.raises(ValueError, match=rf"holds a {name}, this model is a {other}: "):
        load_weights(classifier, state_dict)


def test_an_unknown_backbone_option_is_named_with_its_config_key():
    with pytest.raises(ValueError, match=r"unknown backbone option model.options.stride_in1x1; "
                                         r"valid: avg_down, block, deep_stem, depth, "
                                         r"drop_path_rate, .*stride_in_1x1"):
        backbones.build_classifier("resnet18", 3, config_prefix="model.options.",
                                   stride_in1x1=True)


def test_a_depth_option_of_no_resnet_is_named_with_its_config_key():
    """model.options.depth=19 was the builder's ValueError traceback."""
    from resnet_detect.engine.config import ConfigError
    with pytest.raises(ConfigError, match=r"^model.options.depth 19 is not an ImageNet ResNet's; "
                                          r"valid: 18, 34, 50, 101, 152 \(backbone resnet18\)$"):
        backbones.build_classifier("resnet18", 3, config_prefix="model.options.", depth=19)
    with pytest.raises(ConfigError, match=r"^model.options.depth 21 is not a CIFAR ResNet's: "
                                          r"6n\+2 .*\(backbone cifar_resnet20\)$"):
        backbones.build_classifier("cifar_resnet20", 3, config_prefix="model.options.", depth=21)


def test_weights_of_another_norm_say_so() -> None:
    """A checkpoint trained with norm=gn loaded into a bn config (or the reverse) listed 40
    missing running statistics and no reason."""
    from resnet_detect.backbones.weights import check_and_load
    gn, bn = backbones.build("resnet18", norm="gn"), backbones.build("resnet18")
    with pytest.raises(ConfigError, match=r"(?s)missing \(40\).*BatchNorm statistics are "
                                          r"missing: the weights were trained with another "
                                          r"norm, e.g. gn; set the model.\*.norm keys they were "
                                          r"trained with"):
        check_and_load(bn, gn.state_dict(), "gn.pth")
    with pytest.raises(ConfigError, match=r"(?s)unexpected \(40\).*hold BatchNorm statistics "
                                          r"this model has no place for: they were trained "
                                          r"with bn or frozen_bn, as torchvision's and timm's"):
        check_and_load(gn, bn.state_dict(), "bn.pth")
    with pytest.raises(ConfigError) as other:  # a missing layer: no norm hint
        check_and_load(bn, {k: v for k, v in bn.state_dict().items() if k != "stem.conv.weight"},
                       "cut.pth")
    assert "BatchNorm statistics" not in str(other.value)


def test_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path) -> None:
    """A text file was "KeyError: 101", an empty one "EOFError: ", a cut one PyTorch's four
    lines about miniz."""
    torch.save({"w": torch.zeros(10000)}, tmp_path / "whole.pth")
    whole = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.pth").write_text("epoch 12: loss 0.3\n", encoding="utf-8")
    # a config given as weights: its first byte ("#") reads as a pickle opcode, and it was
    # "more than tensors, or no PyTorch file (Unsupported operand 35)"
    (tmp_path / "config.yaml").write_text("# a config\n_base_: x.yaml\n", encoding="utf-8")
    # a safetensors file renamed .bin (read by its suffix), and a TorchScript archive: were
    # "no PyTorch file (it starts with ...)" and "a PyTorch file cut short or damaged"
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (tmp_path / "model.bin").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.jit's deprecation)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "scripted.pt"))
    with open(tmp_path / "arrays.pth", "wb") as f:  # NumPy's .npz: a zip too
        np.savez(f, weight=np.zeros(3))
    for name, said in (
            ("arrays.pth", r"a zip archive that is no PyTorch file \(weight.npy: NumPy's .npz, "),
            ("empty.pth", r"the file is empty \(0 bytes\): a failed download or copy$"),
            ("notes.pth", r"no PyTorch file \(it starts with b'epoch 12: loss 0': text, or "
                          r"another format;"),
            ("config.yaml", r"no PyTorch file \(it starts with b'# a config\\n_base': text, or "
                            r"another format;"),
            ("model.bin", r"a safetensors file under another name: weights of that format are "
                          r"read by their .safetensors suffix; rename it$"),
            ("scripted.pt", r"a TorchScript archive \(torch.jit.save\), not weights: save the "
                            r"model's state_dict\(\) with torch.save$"),
            # then torch's error, whose wording depends on where the file ends
            ("cut.pth", r"a PyTorch file cut short or damaged \(a partial download, or copied "
                        r"while a run wrote it\): \w+Error: ")):
        with pytest.raises(UnreadableCheckpointError,
                           match=rf"^cannot read weights file {tmp_path / name}: {said}") as e:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_detectron2_pickles_are_named_as_such(tmp_path) -> None:
    """detectron2's model-zoo files ({"model": {name: ndarray}, "__author__": ...}, pickled by
    Python 2 or 3) and the MSRA ImageNet weights ({"blobs": ...}) were "a damaged or partial
    download" or "a damaged PyTorch file of the legacy format"; a plain pickle of no arrays
    is named a plain pickle, and torch.save's legacy format keeps its reading."""
    import pickle
    files = {"model_final_f10217.pkl": ({"model": {"backbone.bottom_up.stem.conv1.weight":
                                                   np.zeros((64, 3, 7, 7), np.float32)},
                                         "__author__": "Detectron2 Model Zoo"}, 2),
             "R-50.pkl": ({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}}, 4)}
    for name, (content, protocol) in files.items():
        (tmp_path / name).write_bytes(pickle.dumps(content, protocol=protocol))
        with pytest.raises(UnreadableCheckpointError, match=rf"{name}: a pickle of NumPy arrays, "
                                                            r"not a PyTorch file: detectron2's"):
            read_checkpoint(tmp_path / name)
    for protocol in (2, 4):  # a dict key or a string "numpy" is no NumPy class
        (tmp_path / "words.pkl").write_bytes(pickle.dumps({"numpy": "numpy.core"},
                                                          protocol=protocol))
        # (protocol 4 was "saved with pickle protocol 4 (torch.save(..., pickle_protocol=4))",
        # 2 "a damaged PyTorch file of the legacy format")
        with pytest.raises(UnreadableCheckpointError, match=r"words.pkl: a plain pickle "
                                                            r"\(Python's pickle.dump\), not a "
                                                            r"PyTorch file: save the state dict "
                                                            r"with torch.save"):
            read_checkpoint(tmp_path / "words.pkl")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(tmp_path / "legacy.pth")["w"], torch.ones(2))
    # an export given as weights (it was "no PyTorch file (Unsupported operand 8) ... a whole
    # pickled model")
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for fields in ({"producer_name": "pytorch"}, {}, {"domain": "ai.x"},
                   {"doc_string": "mine"}, {"model_version": 3}):
        onnx.save(helper.make_model(graph, **fields), tmp_path / "model.onnx")
        with pytest.raises(UnreadableCheckpointError, match=r"model.onnx: an ONNX graph "
                                                            r"\(tools/export.py's model.onnx\), "
                                                            r"not weights"):
            read_checkpoint(tmp_path / "model.onnx")
    # a TensorFlow saved_model.pb begins alike (its schema version 1, then its graphs)
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01\x12\x05hello")
    with pytest.raises(UnreadableCheckpointError, match=r"no PyTorch file"):
        read_checkpoint(tmp_path / "saved_model.pb")


def test_detectron2_and_mmdetection_checkpoints_are_named_as_such(tmp_path) -> None:
    """Their .pth files (detectron2's {"model": ...}, mmdetection's and mmsegmentation's
    {"state_dict": ...}) gave only our key listing, or "no box classifier in the weights", or
    "model.num_classes must be a positive integer": read as a broken file of ours."""
    from resnet_detect.detection import Predictor as Detector
    from resnet_detect.segmentation import Predictor as Segmenter
    root = Path(__file__).resolve().parents[2] / "configs/synthetic"
    zeros = torch.zeros(4, 4)
    detectron2 = {"model": {"backbone.bottom_up.stem.conv1.weight": zeros,
                            "backbone.fpn_lateral2.weight": zeros,
                            "proposal_generator.rpn_head.conv.weight": zeros,
                            "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)},
                  "iteration": 89999}
    mmdetection = {"meta": {"epoch": 12}, "state_dict": {
        "backbone.conv1.weight": zeros, "neck.lateral_convs.0.conv.weight": zeros,
        "roi_head.bbox_head.fc_cls.weight": zeros}}
    mmsegmentation = {"meta": {}, "state_dict": {"backbone.stem.0.weight": zeros,
                                                 "decode_head.conv_seg.weight": zeros}}
    for name, content in (("d2.pth", detectron2), ("mmdet.pth", mmdetection),
                          ("mmseg.pth", mmsegmentation)):
        torch.save(content, tmp_path / name)
    said = r"\n  \(keys such as {} are {}: its checkpoints are not read here; start from"
    with pytest.raises(ValueError, match=said.format(r"backbone\.fpn_lateral2\.weight",
                                                     "detectron2's")):
        Detector(root / "faster_rcnn_R_18_FPN.yaml", weights=tmp_path / "d2.pth")
    with pytest.raises(ValueError, match=r"no box classifier .*\n  \(keys such as neck\."
                                         r"lateral_convs\.0\.conv\.weight are mmdetection's"):
        Detector(root / "faster_rcnn_R_18_FPN.yaml", weights=tmp_path / "mmdet.pth")
    with pytest.raises(ValueError, match=r"mmseg.pth: no segmentation predictor .*\n  \(keys such "
                                         r"as decode_head\.conv_seg\.weight are mmsegmentation's"):
        Segmenter(root / "deeplabv3_R_18_os16.yaml", weights=tmp_path / "mmseg.pth")
    with pytest.raises(ValueError, match=said.format(r"backbone\.fpn_lateral2\.weight",
                                                     "detectron2's")):
        load_weights(backbones.build_classifier("resnet18", 10),
                     {k[len("backbone."):]: v for k, v in detectron2["model"].items()
                      if k.startswith("backbone.")})
    # an mmsegmentation checkpoint as backbone weights: its decode_head keys, left out
    # before the backbone's were compared, still name it
    with pytest.raises(ValueError, match=said.format(r"decode_head\.conv_seg\.weight",
                                                     "mmsegmentation's")):
        backbones.build("resnet18", weights=tmp_path / "mmseg.pth")
    # torchvision's other models and its ImageNet classifiers: "no box classifier" or a key
    # listing alone
    torch.save({"backbone.body.conv1.weight": zeros,
                "head.classification_head.conv.0.0.weight": zeros}, tmp_path / "retina.pth")
    with pytest.raises(ValueError, match=r"\n  \(keys such as head\.classification_head\.conv"
                                         r"\.0\.0\.weight are of torchvision's RetinaNet: that "
                                         r"model is not built here"):
        Detector(root / "faster_rcnn_R_18_FPN.yaml", weights=tmp_path / "retina.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    classifier = (r"\n  \(these are an ImageNet classifier's weights, torchvision's or timm's "
                  r"ResNet: give them as model.backbone.weights=PATH")
    for predictor, config in ((Detector, "faster_rcnn_R_18_FPN.yaml"),
                              (Segmenter, "deeplabv3_R_18_os16.yaml")):
        with pytest.raises(ValueError, match=classifier):
            predictor(root / config, weights=tmp_path / "r18.pth")
    from resnet_detect.detection.build import build_model
    from resnet_detect.engine.tasks import load_task_config
    cfg = load_task_config(root / "faster_rcnn_R_18_FPN.yaml",
                           [f"model.weights={tmp_path / 'r18.pth'}", "model.num_classes=3"])[1]
    with pytest.raises(ValueError, match=classifier):  # training's model.weights
        build_model(cfg)
    with pytest.raises(ValueError) as deeper:  # as a backbone's: said of other depths alone
        backbones.build("resnet34", weights=tmp_path / "r18.pth")
    assert "classifier's weights" not in str(deeper.value)
    # ours, mis-fitting, keep the listing alone
    with pytest.raises(ValueError) as ours:
        load_weights(backbones.build_classifier("resnet18", 10),
                     torchvision.models.resnet34().state_dict())
    assert "checkpoints are not read here" not in str(ours.value)


def test_a_torch_file_of_pickle_protocol_4_or_5_says_how_to_save_it_again(tmp_path) -> None:
    """torch.save(..., pickle_protocol=4) files (either format) fail torch's weights-only
    reader at their first frame: they were "a damaged or partial download"."""
    for protocol in (2, 3, 4, 5):
        for zipped in (True, False):
            path = tmp_path / f"p{protocol}{zipped}.pth"
            torch.save({"w": torch.ones(2)}, path, pickle_protocol=protocol,
                       _use_new_zipfile_serialization=zipped)
            if protocol < 4:
                assert torch.equal(read_checkpoint(path)["w"], torch.ones(2))
                continue
            with pytest.raises(UnreadableCheckpointError,
                               match=rf"{path.name}: it was saved with pickle protocol "
                                     rf"{protocol} \(torch.save\(..., pickle_protocol="
                                     rf"{protocol}\)\), which torch's safe reader"):
                read_checkpoint(path)


def test_class_layers_of_another_width_are_refused_not_taken_for_new_classes(caplog):
    """A detector's predictor (3, 1024) into one of (3, 512) was said "trained for another
    class count" (the class count is the same; the box head's width differs)."""
    from resnet_detect.backbones.weights import check_and_load

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    other_classes = {"0.weight": torch.zeros(8, 4), "0.bias": torch.zeros(8),
                     "1.weight": torch.ones(5, 8), "1.bias": torch.ones(5)}
    with caplog.at_level(logging.WARNING):
        check_and_load(model, other_classes, "w.pth", class_layers=("1.",))
    assert "w.pth: 1.weight, 1.bias trained for another class count ((5, 8) -> (3, 8), (5,) " \
           "-> (3,))" in caplog.text
    assert not model[1].weight.eq(1).any()  # left at the model's initialisation
    other_width = {**other_classes, "1.weight": torch.ones(3, 16), "1.bias": torch.ones(3)}
    caplog.clear()
    with pytest.raises(ValueError, match=r"mis-shaped \(1\): 1.weight: checkpoint \(3, 16\)"):
        check_and_load(model, other_width, "w.pth", class_layers=("1.",))
    assert "class count" not in caplog.text


def _random_statistics(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.parametrize(("name", "options", "reference"), [
    ("resnet18", {}, lambda k: torchvision.models.resnet18(num_classes=k)),
    ("resnet50", {}, lambda k: torchvision.models.resnet50(num_classes=k)),
    ("resnext50_32x4d", {}, lambda k: torchvision.models.resnext50_32x4d(num_classes=k)),
    ("resnet50d", {}, lambda k: __import__("timm").create_model("resnet50d", num_classes=k)),
    # (refused as no net of theirs, though they compute these)
    ("resnet50", {"output_stride": 8}, lambda k: torchvision.models.resnet50(
        num_classes=k, replace_stride_with_dilation=[False, True, True])),
    ("resnet50d", {"output_stride": 16}, lambda k: __import__("timm").create_model(
        "resnet50d", num_classes=k, output_stride=16)),
    ("resnet18", {"norm": "gn"}, lambda k: torchvision.models.resnet18(
        num_classes=k, norm_layer=lambda c: torch.nn.GroupNorm(32, c))),
])
def test_weights_trained_here_load_into_torchvision_and_timm_with_their_logits(
        name, options, reference) -> None:
    """A classifier pretrained here, under torchvision's (timm's) key names: their model
    loads it strictly and computes the same logits."""
    torch.manual_seed(0)
    ours = backbones.build_classifier(name, 7, **options).eval()
    _random_statistics(ours)
    theirs = reference(7).eval()
    theirs.load_state_dict(backbones.torchvision_resnet_state_dict(ours))  # (strict)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    # a bare backbone's: all but the fc
    bare = backbones.torchvision_resnet_state_dict(ours.backbone)
    assert sorted(bare) == sorted(k for k in theirs.state_dict() if not k.startswith("fc."))
    # and back: this project's import reads them as they were
    again = backbones.build_classifier(name, 7, **options)
    load_weights(again, theirs.state_dict())
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize(("name", "options", "said"), [
    ("cifar_resnet20", {}, "a CIFAR stem"),
    ("plain_resnet18", {}, "no shortcuts"),
    ("resnet18", {"shortcut": "C"}, "shortcut option C"),
    ("resnet50", {"stride_in_1x1": True}, "strides in the bottlenecks' 1x1 convs"),
    ("resnet50", {"output_stride": 16, "multi_grid": [1, 1, 1]},
     "the dilations [2, 2, 2] in res5 (multi_grid; torchvision's: [1, 2, 2])"),
    ("resnet18", {"output_stride": 16}, "dilated basic blocks"),
])
def test_nets_no_torchvision_resnet_computes_are_refused(name, options, said) -> None:
    """Their keys would load into a torchvision ResNet (stride_in_1x1's, multi_grid's do) and
    compute something else."""
    with pytest.raises(ValueError, match=rf"torchvision's and timm's ResNets compute no net of "
                                         rf"{re.escape(said)}"):
        backbones.torchvision_resnet_state_dict(backbones.build_classifier(name, 3, **options))


def test_a_backbone_without_all_its_stages_is_refused() -> None:
    """A C4 detector's backbone (its res5 is the box head's): 52 keys of layer4 missing, which
    the strict=False load of a bare backbone left at their initial values without a word."""
    c4 = backbones.build("resnet50", out_features=("res4",)).drop_unused_stages()
    with pytest.raises(ValueError, match=r"compute no net of the stages res2, res3, res4 alone"):
        backbones.torchvision_resnet_state_dict(c4)
    lesioned = backbones.build("resnet18")
    lesioned.res3[1].skip_branch = True
    with pytest.raises(ValueError, match=r"a lesioned block \(skip_branch\)"):
        backbones.torchvision_resnet_state_dict(lesioned)
