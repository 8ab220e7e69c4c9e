"""Configs: the base file lists exactly the defaults; every shipped config loads and builds."""
from pathlib import Path

import pytest

from resnet_detect.engine.config import ConfigError
from resnet_detect.segmentation import build_model, load_config

from resnet_detect.segmentation.heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead
from resnet_detect.segmentation.training import SemSegTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# config -> (head class, blocks of res4, res5 3x3 dilations (None: res5 not built), ASPP rates)
EXPECTED = {
    "segmentation/deeplabv3_R_50_os8.yaml": (DeepLabV3Head, 6, [4, 8, 16], [12, 24, 36]),
    "segmentation/deeplabv3_R_101_os8.yaml": (DeepLabV3Head, 23, [4, 8, 16], [12, 24, 36]),
    "segmentation/deeplabv3_R_50_os16.yaml": (DeepLabV3Head, 6, [2, 4, 8], [6, 12, 18]),
    "segmentation/deeplabv3plus_R_50_os16.yaml": (DeepLabV3PlusHead, 6, [2, 4, 8], [6, 12, 18]),
    "segmentation/fcn_R_50_os8.yaml": (FCNHead, 6, [2, 4, 4], None),  # torchvision's dilations
    "synthetic/deeplabv3_R_18_os16.yaml": (DeepLabV3Head, 2, [2, 4], [6, 12, 18]),
    "synthetic/deeplabv3plus_R_18_os16.yaml": (DeepLabV3PlusHead, 2, None, [6, 12, 18]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_configs_build(name):
    cfg = load_config(CONFIGS / name, ["model.num_classes=21", "model.backbone.weights=null"])
    head_cls, res4_blocks, dilations, rates = EXPECTED[name]
    model = build_model(cfg)
    assert type(model.head) is head_cls
    assert len(model.backbone.res4) == res4_blocks
    if dilations is None:  # ASPP on res4, no auxiliary head
        assert model.backbone.stages[-1] == "res4" and model.aux_head is None
        assert model.head.in_features[0] == "res4"
        assert [b.conv2.dilation[0] for b in model.backbone.res4] == [1] * res4_blocks
    else:
        assert [b.conv2.dilation[0] for b in model.backbone.res5] == dilations
        assert model.aux_head is not None and model.aux_head.in_features == ("res4",)
    if rates is not None:
        assert [b.conv.dilation[0] for b in model.head.aspp.branches[1:]] == rates
    assert model.num_classes == 21


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="model.head.nmae"):
        load_config(CONFIGS / "segmentation" / "deeplabv3_R_50_os16.yaml",
                    ["model.head.nmae=fcn"])


def test_num_classes_is_required():
    cfg = load_config(CONFIGS / "segmentation" / "fcn_R_50_os8.yaml")
    with pytest.raises(ValueError, match="model.num_classes must be a positive integer"):
        build_model(cfg)
    # one class: its softmax is 1 everywhere; the run learnt nothing and scored mIoU 100
    cfg.model.num_classes = 1
    with pytest.raises(ConfigError, match=r"a segmenter needs at least 2 classes .*got 1: "
                                          r"binary masks .* e.g. data.class_names="
                                          r"\[background,object\]"):
        build_model(cfg)


def test_a_negative_size_divisibility_is_named():
    """It padded nothing, as 0 does, without a word."""
    cfg = load_config(CONFIGS / "synthetic" / "deeplabv3_R_18_os16.yaml",
                      ["model.num_classes=3", "model.backbone.weights=null",
                       "model.size_divisibility=-32"])
    with pytest.raises(ConfigError, match=r"model: size_divisibility must be an integer >= 0 "
                                          r"\(0 or 1: no padding\) or null \(the backbone's\), "
                                          r"got -32"):
        build_model(cfg)


def test_a_bad_test_section_is_named_before_the_data_is_read(tmp_path):
    """`test.window: 512` (for [512, 512]) failed with int()'s message at the evaluation after
    the whole training; `test.scales: 1.0` now fails as the config loads; a head's name is
    checked before the data is read too."""
    config = CONFIGS / "synthetic" / "deeplabv3plus_R_18_os16.yaml"
    no_data = [f"data.train.img_dir={tmp_path / 'no_such_folder'}", "model.backbone.weights=null"]
    for overrides, expected in ((["test.window=512"], r"test.window is \[h, w\], got 512: "
                                 r"write test.window=\[512,512\]"),
                                (["test.window=[64,64]", "test.stride=32"],
                                 r"test.stride is \[h, w\], got 32: write test.stride=\[32,32\]"),
                                (["test.max_size=512.5"], "max_size must be a positive number "
                                                          "of pixels or null, got 512.5"),
                                (["test.window=[512,0]"], "window and stride must be two "
                                                          "positive sizes"),
                                (["test.window=[64,64]", "test.stride=[100,64]"],
                                 r"a stride longer than the window leaves pixels out: window "
                                 r"\[64, 64\], stride \[100, 64\]"),
                                (["test.stride=[64,64]"], r"a stride \[64, 64\] needs a "
                                 r"window \(test.window: \[height, width\]"),
                                (["test.scales=[0]"], "scales must be positive"),
                                (["test.scales=[]"], "scales must be positive"),
                                # (NaN and infinity crashed at the first evaluation; a bool or
                                # a fraction became 1-pixel windows or a cut size silently)
                                (["test.scales=[1.0,.nan]"], "scales must be positive"),
                                (["test.scales=[.inf]"], "scales must be positive"),
                                # sizes for ratios: images grown 512 times (no word before)
                                (["test.scales=[512,1024]"], r"test.scales are ratios of each "
                                                             r"image's size .*got 512: a size "
                                                             r"in pixels\?"),
                                (["test.window=[true,64]"], r"window must be two whole numbers "
                                                            r"of pixels, \[height, width\], got "
                                                            r"\[True, 64\]"),
                                (["test.window=[64.5,64]"], "window must be two whole numbers"),
                                (["test.window=[48,48]", "test.stride=[16.9,16]"],
                                 "stride must be two whole numbers"),
                                (["test.window=[0,0]"], r"window and stride must be two positive "
                                                        r"sizes, got \[0, 0\]$"),
                                (["model.head.name=deeplabv3plsu"], "unknown model.head.name "
                                 "'deeplabv3plsu'; valid: "),
                                (["test.compile=inductr"], r"test.compile must be false, true "
                                 r"or a torch.compile backend \(.*\), got 'inductr'"),
                                (["test.compile_mode=reduce-overhead"], "test.compile_mode="
                                 "reduce-overhead needs test.compile: true")):
        with pytest.raises(ConfigError, match=expected):  # one line from the tools
            SemSegTask().prepare(load_config(config, overrides + no_data))
    # the config's own values before the weights are read (seconds at ImageNet's size)
    with pytest.raises(ConfigError, match="test.compile must be false, true"):
        SemSegTask().prepare(load_config(config, [no_data[0], "test.compile=inductr",
                                                  f"model.backbone.weights={tmp_path}/no.pth"]))
    with pytest.raises(ConfigError, match="test.scales must be a list of numbers, got 1.0"):
        load_config(config, ["test.scales=1.0"])
    with pytest.raises(ConfigError, match=r"data.train.img_suffix must be one file-name ending "
                                          r"\(e.g. '.jpg', '_leftImg8bit.png'\), got \['.jpg', "
                                          r"'.png'\]"):
        SemSegTask().prepare(load_config(config, [*no_data, "data.train.img_suffix=[.jpg,.png]"]))
    with pytest.raises(ConfigError, match=r"data.train.img_suffix must be one file-name ending "
                                          r".*, got null \(an empty value is null\)$"):
        SemSegTask().prepare(load_config(config, [*no_data, "data.train.img_suffix="]))
