"""Heads: ASPP rates per output stride, parameter counts, output sizes, the loss."""
import re

import pytest
import torch
import torch.nn.functional as F

from resnet_detect.engine.config import ConfigError
from resnet_detect.segmentation import ASPP, aspp_rates, build_model
from resnet_detect.segmentation.heads import FCNHead, ImagePooling, SeparableConvNormReLU


@pytest.mark.parametrize("output_stride, rates",
                         [(32, (3, 6, 9)), (16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_rates_follow_output_stride(output_stride, rates, small_config):
    model = build_model(small_config("deeplabv3", output_stride=output_stride))
    branches = model.head.aspp.branches
    assert branches[0].conv.kernel_size == (1, 1)
    assert [b.conv.dilation[0] for b in branches[1:]] == list(rates)
    assert [b.conv.padding[0] for b in branches[1:]] == list(rates)  # 'same' padding
    assert model.backbone.output_shape()["res5"].stride == output_stride


def test_aspp_rates_explicit_and_invalid(small_config):
    cfg = small_config("deeplabv3plus")
    cfg["model"]["head"]["aspp_rates"] = [2, 4, 6, 8]
    model = build_model(cfg)
    assert [b.conv.dilation[0] for b in model.head.aspp.branches[1:]] == [2, 4, 6, 8]
    with pytest.raises(ValueError, match="output_stride 4"):
        aspp_rates(4)
    # a single number failed in the head ("'int' object is not iterable"); a 0 was refused
    # without the key
    for wrong in (6, [0, 6, 12], "6,12"):
        cfg["model"]["head"]["aspp_rates"] = wrong
        with pytest.raises(ConfigError, match=r"^model.head.aspp_rates must be a list of "
                                              r"positive integers .*, got "
                                              + re.escape(repr(wrong)) + "$"):
            build_model(cfg)
    cfg["model"]["head"]["aspp_rates"] = []  # as null: the output stride's
    assert cfg["model"]["backbone"]["output_stride"] == 16
    assert [b.conv.dilation[0] for b in build_model(cfg).head.aspp.branches[1:]] == [6, 12, 18]


def test_aspp_parameter_count():
    aspp = ASPP(in_channels=8, rates=(1, 2, 3), out_channels=4)
    # 1x1: 8*4 + bn 2*4; three 3x3: 3 * (9*8*4 + 8); pooling 1x1: 8*4 + 8;
    # projection of 5 concatenated branches: 5*4*4 + 8
    assert sum(p.numel() for p in aspp.parameters()) == 40 + 888 + 40 + 88


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logits_have_the_input_size_for_odd_sizes(head, output_stride, small_config):
    torch.manual_seed(0)
    model = build_model(small_config(head, output_stride=output_stride)).eval()
    images = [torch.randint(0, 256, (3, 97, 131), dtype=torch.uint8),
              torch.randint(0, 256, (3, 61, 45), dtype=torch.uint8)]
    with torch.no_grad():
        out = model(images)
        raw = model.logits(model.preprocess(images[:1])[0], with_aux=True)
    assert out[0]["sem_seg"].shape == (5, 97, 131) and out[0]["mask"].shape == (97, 131)
    assert out[1]["sem_seg"].shape == (5, 61, 45) and out[1]["mask"].shape == (61, 45)
    assert raw["sem_seg"].shape == raw["aux"].shape == (1, 5, 97, 131)
    assert torch.equal(out[0]["mask"], out[0]["sem_seg"].argmax(0))


def test_deeplabv3plus_reads_res2_and_res5(small_config):
    model = build_model(small_config("deeplabv3plus", output_stride=16))
    assert model.head.in_features == ("res5", "res2")
    assert set(model.backbone.out_features) == {"res2", "res4", "res5"}
    assert model.head.low_level_project.conv.in_channels == 64  # res2 of ResNet-18
    assert model.head.fuse[0].conv.in_channels == 16 + 8


def test_deeplabv3plus_fuses_the_bilinearly_upsampled_aspp_with_the_projected_res2(
        small_config):
    """The paper's decoder: ASPP's map upsampled (bilinear) to res2's size, concatenated with
    res2 projected to 48 (here 8) channels, then the 3x3 convs."""
    model = build_model(small_config("deeplabv3plus", output_stride=16)).eval()
    head, seen = model.head, {}
    head.aspp.register_forward_hook(lambda m, i, out: seen.__setitem__("aspp", out))
    head.low_level_project.register_forward_hook(lambda m, i, out: seen.__setitem__("low", out))
    head.fuse[0].register_forward_hook(lambda m, i, out: seen.__setitem__("fused", i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 72, 88))
    low = seen["low"]
    expected = torch.cat([F.interpolate(seen["aspp"], size=low.shape[-2:], mode="bilinear",
                                        align_corners=False), low], dim=1)
    assert seen["aspp"].shape[-2:] != low.shape[-2:]
    torch.testing.assert_close(seen["fused"], expected, rtol=0, atol=0)


def test_loss_is_cross_entropy_over_non_ignored_pixels():
    head = FCNHead(in_feature="x", in_channels=4, channels=4, num_classes=3, loss_weight=0.5)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    gt = torch.randint(0, 3, (2, 5, 7))
    gt[0, :2] = 255
    expected = F.cross_entropy(logits, gt, ignore_index=255)  # mean over valid pixels
    torch.testing.assert_close(head.loss(logits, gt), expected)
    all_ignored = torch.full((2, 5, 7), 255)
    assert head.loss(logits, all_ignored).item() == 0.0
    _, losses = head({"x": torch.randn(2, 4, 5, 7)}, (5, 7), gt)
    assert set(losses) == {"loss_sem_seg"}


def test_class_weights_weigh_each_pixel_s_loss_by_its_class(small_config):
    """mmsegmentation's CrossEntropyLoss(class_weight=...) had no equivalent: an imbalanced
    user was sent to loss_weight (one factor on the whole loss)."""
    cfg = small_config("deeplabv3", num_classes=3)
    cfg["model"]["class_weight"] = [2, 0.5, 0]
    model = build_model(cfg)
    for head in (model.head, model.aux_head):
        assert head.class_weight.tolist() == [2.0, 0.5, 0.0]
    assert not any("class_weight" in k for k in model.state_dict())  # weights load alike
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    gt = torch.randint(0, 3, (2, 5, 7))
    gt[0, :2] = 255
    scored = gt != 255
    picked = -F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[scored].gather(
        1, gt[scored][:, None])[:, 0]
    weight = torch.tensor([2.0, 0.5, 0.0])[gt[scored]]
    # summed over the scored pixels, over their count (mmsegmentation's avg_non_ignore=True)
    torch.testing.assert_close(model.head.loss(logits, gt), (weight * picked).sum() / scored.sum())
    bf16 = build_model(cfg).head.to(torch.bfloat16)  # (its buffer cast with it)
    torch.testing.assert_close(bf16.loss(logits, gt), (weight * picked).sum() / scored.sum(),
                               rtol=1e-2, atol=0)
    cfg["model"]["class_weight"] = [1, 1, 1]
    torch.testing.assert_close(build_model(cfg).head.loss(logits, gt),
                               F.cross_entropy(logits, gt, ignore_index=255))
    for bad, message in (([1, 2], r"model.class_weight has 2 weights for 3 classes"),
                         ([1, -1, 2], r"must be a list of finite non-negative numbers, one per "
                                      r"class, not all 0 \(or null\), got \[1, -1, 2\]"),
                         ([1, float("inf"), 2], "finite"),
                         ("w.npy", "mmsegmentation's file of them: write the list here"),
                         ([0, 0, 0], "not all 0"), ("abc", "got 'abc'")):
        cfg["model"]["class_weight"] = bad
        with pytest.raises(ValueError, match=message):
            build_model(cfg)


def test_bad_head_name_and_feature(small_config):
    cfg = small_config("pspnet")
    with pytest.raises(ValueError, match="unknown model.head.name 'pspnet'"):
        build_model(cfg)
    cfg = small_config("deeplabv3")
    cfg["model"]["head"]["in_feature"] = "res6"
    with pytest.raises(ValueError, match=r"model.head.in_feature=res6, model.aux_head.in_feature"
                                         r"=res4: features \['res6'\] are not stages"):
        build_model(cfg)


@pytest.mark.parametrize("section, key, value, message", [
    ("head", "loss_weight", -1, "model.head.loss_weight must be a number >= 0, got -1"),
    ("aux_head", "loss_weight", -0.4, "model.aux_head.loss_weight must be a number >= 0"),
    ("head", "aspp_dropout", 1.5, "model.head.aspp_dropout must be a probability in [0, 1)"),
    ("head", "dropout", 1, "model.head.dropout must be a probability in [0, 1) (1 zeroes every "
                           "feature), got 1"),
    ("aux_head", "dropout", -0.1, "model.aux_head.dropout must be a probability in [0, 1)"),
    ("head", "channels", 0, "model.head.channels must be a positive integer (channels) or null, "
                            "got 0"),
    ("head", "low_level_channels", 0, "model.head.low_level_channels must be a positive "
                                      "integer (channels), got 0"),
    ("aux_head", "channels", -1, "model.aux_head.channels must be a positive integer")])
def test_bad_head_numbers_are_named(small_config, section, key, value, message):
    """A negative loss weight trained by gradient ascent, a dropout of 1 zeroed every feature
    and 0 channels trained on: silently; other values were tracebacks after the data scan."""
    from resnet_detect.engine.config import ConfigError

    cfg = small_config("deeplabv3plus")
    cfg["model"][section][key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_model(cfg)


def test_separable_aspp_parameter_count():
    aspp = ASPP(in_channels=8, rates=(1, 2, 3), out_channels=4, separable=True)
    # 1x1: 8*4 + bn 2*4; three separable 3x3: 3 * (depthwise 9*8 + bn 2*8 + pointwise 8*4
    # + bn 2*4); pooling 1x1: 8*4 + 8; projection of 5 concatenated branches: 5*4*4 + 8
    assert sum(p.numel() for p in aspp.parameters()) == 40 + 3 * (88 + 40) + 40 + 88


def test_separable_conv_is_depthwise_then_pointwise():
    torch.manual_seed(0)
    conv = SeparableConvNormReLU(6, 4, dilation=2).eval()
    for block in conv:
        block.norm.running_mean.normal_()
        block.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 9, 11)

    def bn(y, norm):
        return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            eps=norm.eps)

    depthwise, pointwise = conv
    y = F.relu(bn(F.conv2d(x, depthwise.conv.weight, padding=2, dilation=2, groups=6),
                  depthwise.norm))
    expected = F.relu(bn(F.conv2d(y, pointwise.conv.weight), pointwise.norm))
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected)
    assert depthwise.conv.weight.shape == (6, 1, 3, 3)
    assert pointwise.conv.weight.shape == (4, 6, 1, 1)


@pytest.mark.parametrize("head", ["deeplabv3", "deeplabv3plus"])
def test_separable_heads_train_every_parameter(head, small_config):
    torch.manual_seed(0)
    cfg = small_config(head, aux=False)
    cfg["model"]["head"]["separable"] = True
    model = build_model(cfg).train()
    fuse = model.head.fuse[0] if head == "deeplabv3plus" else model.head.fuse
    assert isinstance(fuse, SeparableConvNormReLU)
    assert all(isinstance(b, SeparableConvNormReLU) for b in model.head.aspp.branches[1:])
    images = [torch.randint(0, 256, (3, 67, 75), dtype=torch.uint8) for _ in range(2)]
    targets = [{"gt_sem_seg": torch.randint(0, 5, (67, 75))} for _ in range(2)]
    losses = model(images, targets)
    sum(losses.values()).backward()
    head_params = dict(model.head.named_parameters())
    assert [n for n, p in head_params.items() if p.grad is None] == []


def test_separable_is_checked(small_config):
    cfg = small_config("fcn")
    cfg["model"]["head"]["separable"] = True
    with pytest.raises(ValueError, match="model.head.separable is for the ASPP heads"):
        build_model(cfg)
    cfg = small_config("deeplabv3plus")
    cfg["model"]["head"]["separable"] = "yes"
    with pytest.raises(ValueError, match="model.head.separable must be true or false"):
        build_model(cfg)


def test_image_pooling_trains_on_a_batch_of_one():
    """One image per process (or the only readable one of a batch) crashed BatchNorm on the
    1x1 pooled map ("Expected more than 1 value per channel"); its running statistics are
    used instead, and not updated. Two images still train on the batch's statistics."""
    torch.manual_seed(0)
    pooling = ImagePooling(8, 4).train()
    with torch.no_grad():
        pooling.norm.running_mean.uniform_(-1, 1)
        pooling.norm.running_var.uniform_(0.5, 2)
    before = pooling.norm.running_mean.clone()
    x = torch.randn(1, 8, 5, 6)
    out = pooling(x)
    assert torch.equal(pooling.norm.running_mean, before)
    expected = pooling.eval()(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    assert pooling.conv.weight.grad is not None and pooling.norm.weight.grad is not None
    pooling.train()(torch.randn(2, 8, 5, 6))
    assert not torch.equal(pooling.norm.running_mean, before)


def test_group_norm_fits_any_channel_count(small_config):
    """DeepLabV3+'s 48-channel projection with model.head.norm=gn was torch's "num_channels
    (48) must be divisible by num_groups (32)" traceback: it takes the most groups up to 32
    that divide the channels (24 of 2), as 32 of each multiple of 32 and one per channel
    below 32."""
    from resnet_detect.backbones.layers import build_norm
    assert [build_norm("gn", c).num_groups for c in (48, 256, 16, 7, 96, 33)] == \
        [24, 32, 16, 7, 32, 11]
    cfg = small_config("deeplabv3plus")
    cfg["model"]["head"].update(norm="gn", channels=64, low_level_channels=48)
    model = build_model(cfg).eval()
    assert model.head.low_level_project.norm.num_groups == 24
    with torch.no_grad():
        assert model([torch.zeros(3, 64, 64)])[0]["sem_seg"].shape[-2:] == (64, 64)
