"""ResNet family: parameter counts, shapes per output stride, shortcuts, plain twins, freezing."""
import math
import re

import numpy as np
import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import nn

from resnet_detect import backbones
from resnet_detect.backbones import FrozenBatchNorm2d, ShapeSpec
from resnet_detect.backbones.complexity import count_macs, count_parameters

# torchvision's resnetNN parameter counts (1000 classes), from its model documentation.
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160,
                      152: 60_192_808}
# He et al. Table 6 (CIFAR-10, option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M.
CIFAR_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_parameter_counts_equal_torchvision(depth):
    model = backbones.build_classifier(f"resnet{depth}", 1000)
    reference = getattr(torchvision.models, f"resnet{depth}")()
    assert count_parameters(model) == TORCHVISION_PARAMS[depth] == count_parameters(reference)


# timm's resnetNNd parameter counts (1000 classes; its model cards' 11.7M ... 60.2M)
TIMM_D_PARAMS = {18: 11_708_744, 34: 21_816_904, 50: 25_576_264, 101: 44_568_392,
                 152: 60_212_040}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_d_parameter_counts_equal_timm(depth):
    """ResNet-D (deep stem, average-pooled shortcuts): timm's resnetNNd, 19,232 parameters
    more than torchvision's resnetNN (the stem's three 3x3 convs over its 7x7); ResNet-C
    (the deep stem alone) as many (timm's resnet50c, 101c, 152c: the pools have none)."""
    model = backbones.build_classifier(f"resnet{depth}d", 1000)
    assert count_parameters(model) == TIMM_D_PARAMS[depth] == TORCHVISION_PARAMS[depth] + 19_232
    assert model.backbone.output_shape()["res5"] == ShapeSpec(512 * (4 if depth >= 50 else 1), 32)
    assert count_parameters(backbones.build_classifier(f"resnet{depth}c", 1000)) == \
        TIMM_D_PARAMS[depth]


def test_resnet_d_options_are_refused_where_they_mean_nothing():
    with pytest.raises(ValueError, match="avg_down pools in projection shortcuts; shortcut A has "
                                         "none: use B or C"):
        backbones.build("resnet18", avg_down=True, shortcut="A")
    with pytest.raises(ValueError, match="deep_stem is an ImageNet stem's; this net's stem is "
                                         "cifar's"):
        backbones.build("cifar_resnet20", deep_stem=True)
    with pytest.raises(ValueError, match="deep_stem halves stem_channels in its first convs: "
                                         "stem_channels must be 2 or more, got 1"):
        backbones.build("resnet18", deep_stem=True, stem_channels=1)
    with pytest.raises(ValueError, match="resnet50.deep_stem must be true or false, got 'yes'"):
        backbones.build_resnet("resnet50", config_prefix="resnet50.", deep_stem="yes")


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS_M))
def test_cifar_parameter_counts_match_paper_table6(depth):
    model = backbones.build_classifier(f"cifar_resnet{depth}", 10)
    params_m = count_parameters(model) / 1e6
    digits = 1 if depth >= 110 else 2
    assert round(params_m, digits) == CIFAR_PARAMS_M[depth]


@pytest.mark.parametrize("name,expected", [("resnext50_32x4d", 25_028_904),
                                           ("wide_resnet50_2", 68_883_240)])
def test_resnext_and_wide_counts_equal_torchvision(name, expected):
    model = backbones.build_classifier(name, 1000)
    assert count_parameters(model) == expected == count_parameters(
        getattr(torchvision.models, name)())


@pytest.mark.parametrize("depth,paper_gflops", [(18, 1.8), (34, 3.6), (50, 3.8), (101, 7.6),
                                                (152, 11.3)])
def test_multiply_adds_match_paper_table1_with_stride_in_1x1(depth, paper_gflops):
    model = backbones.build_classifier(f"resnet{depth}", 1000, stride_in_1x1=True)
    gmacs = count_macs(model, (224, 224))["total"] / 1e9
    assert abs(gmacs - paper_gflops) / paper_gflops < 0.025


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_shapes_for_every_depth_and_output_stride(depth, output_stride):
    features = ("stem", "res2", "res3", "res4", "res5")
    model = backbones.build(f"resnet{depth}", output_stride=output_stride,
                            out_features=features).eval()
    expansion = 1 if depth < 50 else 4
    channels = {"stem": 64, "res2": 64 * expansion, "res3": 128 * expansion,
                "res4": 256 * expansion, "res5": 512 * expansion}
    strides = {"stem": 4, "res2": 4, "res3": 8, "res4": min(16, output_stride),
               "res5": output_stride}
    assert model.output_shape() == {f: ShapeSpec(channels[f], strides[f]) for f in features}
    assert model.size_divisibility == output_stride
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    for f in features:
        assert out[f].shape == (1, channels[f], math.ceil(64 / strides[f]),
                                math.ceil(96 / strides[f]))


def test_dilated_resnet_equals_torchvision_replace_stride_with_dilation():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    model = backbones.build_classifier("resnet50", 1000, output_stride=8)
    backbones.load_weights(model, reference.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=1e-5)


def test_multi_grid_sets_last_stage_dilations():
    model = backbones.build("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in model.res5] == [2, 4, 8]
    assert [b.conv2.dilation[0] for b in model.res4] == [1] * 6
    with pytest.raises(ValueError, match="multi_grid"):
        backbones.build("resnet50", multi_grid=(1, 2))


def test_cifar_net_layout():
    model = backbones.build("cifar_resnet20", out_features=("res2", "res3", "res4"))
    assert model.output_shape() == {"res2": ShapeSpec(16, 1), "res3": ShapeSpec(32, 2),
                                    "res4": ShapeSpec(64, 4)}
    # 6n+2 weighted layers: the stem conv, 2 per block, and the fc of the classifier.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 20


def _shortcut_params(model):
    return sum(count_parameters(b.shortcut) for b in model.blocks())


def test_shortcut_options_a_b_c():
    a = backbones.build("resnet50", shortcut="A")
    b = backbones.build("resnet50", shortcut="B")
    c = backbones.build("resnet50", shortcut="C")
    reference = torchvision.models.resnet50()
    downsample = sum(count_parameters(m) for n, m in reference.named_modules()
                     if n.endswith("downsample"))
    assert _shortcut_params(a) == 0
    assert _shortcut_params(b) == downsample
    # Option C projects in all 16 blocks: (C*C) weights + 2*C norm per identity block.
    identity_blocks = {256: 2, 512: 3, 1024: 5, 2048: 2}
    extra = sum(n * (ch * ch + 2 * ch) for ch, n in identity_blocks.items())
    assert _shortcut_params(c) == downsample + extra
    x = torch.randn(1, 3, 64, 64)
    for model in (a, b, c):
        assert model.eval()(x)["res5"].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_starts_every_block_as_its_shortcut(name):
    model = backbones.build(name, zero_init_residual=True).eval()
    reference = getattr(torchvision.models, name)(zero_init_residual=True)
    def zero_scales(net: nn.Module) -> list[str]:
        return [n for n, p in net.named_parameters()
                if n.endswith("weight") and p.dim() == 1 and not p.any()]
    zeros = zero_scales(model)
    assert len(zeros) == len(zero_scales(reference)) == {"resnet18": 8, "resnet50": 16}[name]
    assert all(n.endswith("norm3.weight" if name == "resnet50" else "norm2.weight")
               for n in zeros)
    blocks = [m for m in model.modules() if isinstance(m, backbones.resnet.ResidualBlock)]
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        for block in blocks:
            x = x[:, :block.in_channels] if x.shape[1] >= block.in_channels else \
                torch.randn(1, block.in_channels, 16, 16)
            torch.testing.assert_close(block(x.clone()), F.relu(block.shortcut(x)))
    assert zero_scales(backbones.build(name)) == []


def test_convolutions_start_as_he_et_al_fan_out_as_torchvision():
    """kaiming_normal_(mode="fan_out"): std sqrt(2 / (out_channels * k * k))."""
    torch.manual_seed(0)
    model = backbones.build("resnet50")
    for conv in (model.res5[0].conv2, model.res4[0].conv1, model.res5[0].conv3):
        out_channels, _, kh, kw = conv.weight.shape
        expected = math.sqrt(2.0 / (out_channels * kh * kw))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05), conv


def test_plain_twin_has_same_layers_and_no_additions():
    residual = backbones.build("cifar_resnet20").eval()
    plain = backbones.build("plain_cifar_resnet20").eval()
    assert count_parameters(plain) == count_parameters(residual)
    plain.load_state_dict(residual.state_dict())
    block = plain.res3[1]
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(block.branch(x)))
    torch.testing.assert_close(residual.res3[1](x), torch.relu(block.branch(x) + x))
    assert not torch.allclose(plain(torch.randn(1, 3, 32, 32))["res4"],
                              residual(torch.randn(1, 3, 32, 32))["res4"])
    # The ImageNet plain twin has no projection shortcuts.
    assert _shortcut_params(backbones.build("plain_resnet50")) == 0


def test_freeze_at_two_freezes_stem_and_res2_with_frozen_bn():
    model = backbones.build("resnet18", freeze_at=2, out_features=("res2", "res3"))
    for name in ("stem", "res2"):
        part = getattr(model, name)
        assert all(not p.requires_grad for p in part.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in part.modules())
    assert all(p.requires_grad for p in model.res3.parameters())
    before = {k: v.clone() for k, v in model.res2.state_dict().items()}
    model.train()(torch.randn(2, 3, 64, 64))
    after = model.res2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Trainable stages update their BN statistics in train mode.
    assert model.res3[0].norm1.num_batches_tracked.item() == 1


def test_frozen_bn_equals_batchnorm_in_eval():
    bn = nn.BatchNorm2d(8).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d.convert(bn)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x))


@pytest.mark.parametrize("norm", ["bn", "frozen_bn", "gn", "syncbn"])
def test_norms_build_and_run(norm):
    model = backbones.build("resnet18", norm=norm).eval()
    assert model(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 2, 2)


def test_stochastic_depth_at_rate_zero_is_exactly_the_plain_forward():
    torch.manual_seed(0)
    reference = backbones.build("cifar_resnet20").train()
    dropping = backbones.build("cifar_resnet20", drop_path_rate=0.0).train()
    dropping.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(reference(x)["res4"], dropping(x)["res4"])
    # A positive rate drops branches while training and is the identity expectation at test.
    sd = backbones.build("cifar_resnet20", drop_path_rate=0.5)
    assert [round(b.drop_path_rate, 3) for b in sd.blocks()][::4] == [0.0, 0.25, 0.5]
    sd.load_state_dict(reference.state_dict())
    assert torch.equal(sd.eval()(x)["res4"], reference.eval()(x)["res4"])


def test_lesion_of_one_block_keeps_shape_and_changes_output():
    model = backbones.build("cifar_resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    full = model(x)["res4"]
    model.res3[1].skip_branch = True
    lesioned = model(x)["res4"]
    assert lesioned.shape == full.shape and not torch.allclose(lesioned, full)


@pytest.mark.parametrize("bad,match", [
    (dict(name="resnet51"), "unknown backbone 'resnet51'; valid: .*resnet50"),
    (dict(name="resnet50", output_stride=12), "output_stride 12 .* valid: 8, 16, 32"),
    (dict(name="resnet50", norm="ln"), "norm 'ln' is not valid; valid: bn, frozen_bn, gn, syncbn"),
    (dict(name="resnet50", shortcut="D"), "unknown shortcut 'D'; valid: A, B, C"),
    (dict(name="resnet50", freeze_at=7), "freeze_at must be in 0..5"),
    (dict(name="resnet50", out_features=("res6",)),
     r"out_features \['res6'\] are not stages of this net; valid: stem, res2, res3, res4, res5"),
    (dict(name="cifar_resnet20", depth=21), "6n\\+2"),
    (dict(name="resnet50", out_features="res4"),  # (its characters were named as the stages)
     r"out_features is a list of stage names, got the string 'res4': write \['res4'\]"),
])
def test_bad_options_raise_value_error_listing_valid_values(bad, match):
    with pytest.raises(ValueError, match=match):
        backbones.build(**bad)


@pytest.mark.parametrize("count", [0, -3, 2.0, "10", True])
def test_a_classifier_of_no_classes_is_refused(count):
    """build_classifier("resnet50", 0) built an fc of no outputs, without a word."""
    with pytest.raises(ValueError, match=r"num_classes must be a positive integer \(the classes "
                                         rf"of the fc layer\), got {re.escape(repr(count))}"):
        backbones.build_classifier("resnet18", count)
    assert backbones.build_classifier("resnet18", np.int64(7)).fc.out_features == 7
    assert backbones.build_classifier("resnet18", torch.tensor(5)).fc.out_features == 5


@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_max_pool_keeps_the_layout_and_the_values(channels_last):
    stem = backbones.build("resnet18", out_features=("stem",)).eval().stem
    x = torch.randn(2, 3, 40, 44)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = stem(x)
        expected = F.max_pool2d(F.relu(stem.norm(stem.conv(x))), 3, 2, 1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, expected)
