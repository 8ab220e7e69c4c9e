"""Mask head: shapes, targets, loss, inference, and pasting masks back into the image."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from resnet_detect.detection.box_coder import BoxCoder
from resnet_detect.detection.matcher import Matcher
from resnet_detect.detection.poolers import MultiLevelRoIAlign
from resnet_detect.detection.roi_heads import (FastRCNNFCHead, FastRCNNOutputs, MaskRCNNHead,
                                               StandardROIHeads, paste_masks)
from resnet_detect.detection.sampler import BalancedSampler

K = 4


def _rectangle(size: tuple[int, int], x1: int, y1: int, x2: int, y2: int) -> torch.Tensor:
    """(H, W) uint8 with ones on pixels x1..x2-1, y1..y2-1."""
    mask = torch.zeros(size, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


@pytest.mark.parametrize(
    "box",
    [
        (10.0, 20.0, 38.0, 48.0),
        (5.3, 7.8, 61.1, 29.6),
        (0.0, 0.0, 40.0, 30.0),  # on the image border
        (70.2, 50.5, 96.0, 64.0),  # the expanded box leaves the image
    ],
)
def test_paste_of_full_mask_is_the_box(box: tuple[float, float, float, float]) -> None:
    """An all-ones box-relative mask pastes to the box's pixels, up to a 1 px border."""
    height, width = 64, 96
    pasted = paste_masks(torch.ones(1, 28, 28), torch.tensor([box]), (height, width))[0]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    x1, y1, x2, y2 = box
    inside = (xs > x1 + 1) & (xs < x2 - 1) & (ys > y1 + 1) & (ys < y2 - 1)
    outside = (xs < x1 - 1) | (xs > x2 + 1) | (ys < y1 - 1) | (ys > y2 + 1)
    assert pasted.dtype == torch.bool and pasted.shape == (height, width)
    assert bool(pasted[inside].all()) and int(inside.sum()) > 100
    assert not pasted[outside].any()


def test_paste_equals_torchvision() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(60, 28, 28, generator=gen)
    xy = torch.rand(60, 2, generator=gen) * torch.tensor([200.0, 150.0]) - 20
    boxes = torch.cat([xy, xy + torch.rand(60, 2, generator=gen) * 120 + 0.5], dim=1)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([190.0, 140.0, 190.0, 140.0]))
    expected = paste_masks_in_image(probs[:, None], boxes, (140, 190))[:, 0]
    got = paste_masks(probs, boxes, (140, 190), threshold=None)
    # same sampling, our separable matrix form against F.interpolate: float32 rounding only
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(paste_masks(probs, boxes, (140, 190), threshold=0.3), got >= 0.3)
    # pixels at exactly the threshold are in the mask (torchvision's and detectron2's >=):
    # the edge of a mask of ones, pasted, is 0.5
    edge = paste_masks_in_image(torch.ones(1, 1, 28, 28), torch.tensor([[4.0, 4, 17, 17]]),
                                (80, 80))[0, 0]
    assert int((edge == 0.5).sum()) > 0
    assert torch.equal(paste_masks(torch.ones(1, 28, 28), torch.tensor([[4.0, 4, 17, 17]]),
                                   (80, 80), threshold=0.5)[0], edge >= 0.5)


@pytest.mark.parametrize("aligned", [False, True])
def test_gt_mask_cropped_to_28_and_pasted_back_is_the_direct_crop(aligned: bool) -> None:
    """A shape's training target (its gt mask cropped to the box at 28 x 28) pasted back
    with the same box gives the shape's own pixels: all of them away from the outline."""
    height, width = 90, 120
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    # an ellipse with an L-shaped notch: not symmetric in x, y or under transposition
    shape = ((xs - 62) / 30) ** 2 + ((ys - 41) / 18) ** 2 <= 1
    shape &= ~((xs > 62) & (ys < 36))
    box = torch.tensor([[32.0, 23.0, 92.0, 59.0]])  # the ellipse's bounding box
    head = MaskRCNNHead(in_channels=8, num_classes=K, conv_dims=[8], aligned=aligned)
    target = head.label_targets([shape[None].to(torch.uint8)], [box], [torch.tensor([0])], 28)
    pasted = paste_masks(target, box, (height, width))[0]
    # distance to the outline: a pixel is "near" when a neighbour within 2 px differs
    kernel = torch.ones(1, 1, 5, 5)
    shape_f = shape[None, None].float()
    neighbours = torch.nn.functional.conv2d(shape_f, kernel, padding=2)[0, 0]
    far = (neighbours == 0) | (neighbours == 25)
    assert int((far & shape).sum()) > 800 and int((far & ~shape).sum()) > 8000
    assert torch.equal(pasted[far], shape[far])
    iou = (pasted & shape).sum() / (pasted | shape).sum()
    assert iou > 0.93
    # a box shifted by 3 px is caught away from the outline
    moved = paste_masks(target, box + 3.0, (height, width))[0]
    assert not torch.equal(moved[far], shape[far])


def test_paste_nothing() -> None:
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (20, 30))
    assert out.shape == (0, 20, 30) and out.dtype == torch.bool
    with pytest.raises(ValueError, match=r"\(D, M, M\) masks and \(D, 4\) boxes"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (20, 30))
    # refused before the (D, h, w) output is made (here a terabyte each)
    with pytest.raises(ValueError, match=r"\(D, M, M\) masks and \(D, 4\) boxes"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (1_000_000, 1_000_000))


def test_targets_of_a_rectangle() -> None:
    head = MaskRCNNHead(in_channels=8, num_classes=K, conv_dims=[8])
    gt = torch.stack([_rectangle((60, 80), 10, 20, 50, 40), _rectangle((60, 80), 60, 0, 80, 10)])
    rois = torch.tensor(
        [
            [12.0, 22.0, 47.0, 37.0],  # inside gt 0 by >= 2 px
            [10.0, 20.0, 50.0, 40.0],  # exactly gt 0
            [30.0, 20.0, 70.0, 40.0],  # left half on gt 0
            [62.0, 1.0, 78.0, 8.0],  # inside gt 1
            [12.0, 22.0, 47.0, 37.0],  # inside gt 0's area, but matched to gt 1
        ]
    )
    targets = head.label_targets([gt], [rois], [torch.tensor([0, 0, 0, 1, 1])], 28)
    assert targets.shape == (5, 28, 28)
    assert torch.equal(targets[0], torch.ones(28, 28))
    # Exact box: ones but in the last row and column, whose samples fall between the last
    # pixel of the rectangle and the zero after it (aligned=False: pixel j sits at j).
    # Last row: 1 sample per bin (ceil(20 / 28)) at y = 20 + 27.5 * 20/28 = 39.643 -> 5/14.
    # Last column: 2 per bin (ceil(40 / 28)) at x = 10 + 27.25 * 40/28 = 48.93 -> 1 and
    # 10 + 27.75 * 40/28 = 49.64 -> 5/14, mean 19/28; the corner (5/14 + 25/196) / 2.
    assert torch.equal(targets[1][:-1, :-1], torch.ones(27, 27))
    assert torch.allclose(targets[1][-1, :-1], torch.full((27,), 5 / 14))
    assert torch.allclose(targets[1][:-1, -1], torch.full((27,), 19 / 28))
    assert targets[1][-1, -1].item() == pytest.approx((5 / 14 + 25 / 196) / 2)
    # half on: columns 0..12 sample x < 49.5 (ones), column 13 as the last one above, the
    # rest x >= 50.36 (zeros); the last row is cut by the rectangle's bottom edge as above
    assert torch.equal(targets[2][:-1, :13], torch.ones(27, 13))
    assert torch.allclose(targets[2][:-1, 13], torch.full((27,), 19 / 28))
    assert torch.equal(targets[2][:, 14:], torch.zeros(28, 14))
    assert torch.equal(targets[3], torch.ones(28, 28))
    assert torch.equal(targets[4], torch.zeros(28, 28))


def test_targets_the_same_with_fewer_rois_than_gt_masks() -> None:
    # fewer RoIs than gt masks: one float map per RoI, not one per gt mask
    head = MaskRCNNHead(in_channels=8, num_classes=K, conv_dims=[8])
    gt = torch.stack([_rectangle((60, 80), 10, 20, 50, 40), _rectangle((60, 80), 60, 0, 80, 10),
                      _rectangle((60, 80), 0, 45, 30, 60)])
    rois = torch.tensor([[2.0, 47.0, 28.0, 58.0], [30.0, 20.0, 70.0, 40.0]])
    targets = head.label_targets([gt], [rois], [torch.tensor([2, 0])], 28)
    torch.testing.assert_close(targets[0], torch.ones(28, 28))  # inside gt 2
    for i, idx in enumerate((2, 0)):  # each alone: as many RoIs as gt masks
        alone = head.label_targets([gt[idx:idx + 1]], [rois[i:i + 1]], [torch.tensor([0])], 28)
        assert torch.equal(targets[i], alone[0])
    assert targets[1].sum() > 0 and not torch.equal(targets[1], torch.ones(28, 28))


def test_the_head_gives_the_channel_of_each_rois_class_of_the_full_1x1_conv() -> None:
    """Only the RoI's class is computed: the same numbers as that channel of the 1x1 conv
    over all K classes (torchvision's and detectron2's head), and its gradients."""
    torch.manual_seed(0)
    head = MaskRCNNHead(in_channels=8, num_classes=K, conv_dims=[8, 8])
    nn.init.normal_(head.predictor.weight)
    nn.init.normal_(head.predictor.bias)
    x = torch.randn(5, 8, 14, 14)
    classes = torch.tensor([2, 0, 2, 2, 1])
    features = x
    for conv in (head.mask_fcn1, head.mask_fcn2):
        features = F.relu(conv(features))
    full = head.predictor(F.relu(head.deconv(features)))  # (5, K, 28, 28)
    expected = full[torch.arange(5), classes]
    ours = head(x, classes)
    assert ours.shape == (5, 28, 28)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    expected.square().sum().backward()
    reference = {n: p.grad.clone() for n, p in head.named_parameters()}
    head.zero_grad()
    ours.square().sum().backward()
    for name, param in head.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], rtol=1e-4, atol=1e-5,
                                   msg=name)
    assert reference["predictor.weight"][3].abs().sum() == 0  # class 3: no RoI, no gradient
    assert head(x[:0], classes[:0]).shape == (0, 28, 28)


def test_loss_is_the_binary_cross_entropy_of_the_given_logits() -> None:
    head = MaskRCNNHead(in_channels=8, num_classes=K, conv_dims=[8])
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(3, 28, 28, generator=gen) > 0.5).float()
    logits = torch.zeros(3, 28, 28)  # p = 0.5: BCE = ln 2 everywhere
    assert head.losses(logits, targets)["loss_mask"].item() == pytest.approx(math.log(2))
    logits = (targets * 2 - 1) * 3.0  # right side, |logit| = 3
    expected = math.log1p(math.exp(-3.0))
    assert head.losses(logits, targets)["loss_mask"].item() == pytest.approx(expected)
    head.loss_weight = 2.0
    assert head.losses(logits, targets)["loss_mask"].item() == pytest.approx(2 * expected)


def test_inference_is_the_sigmoid_split_per_image() -> None:
    head = MaskRCNNHead(in_channels=8, num_classes=K, conv_dims=[8])
    logits = torch.tensor([1.5, -1.5, 0.5]).view(3, 1, 1).expand(3, 28, 28)
    probs = head.inference(logits, [torch.tensor([3, 0]), torch.tensor([1])])
    assert [p.shape for p in probs] == [(2, 28, 28), (1, 28, 28)]
    assert torch.allclose(probs[0][0], torch.full((28, 28), 1 / (1 + math.exp(-1.5))))
    assert torch.allclose(probs[0][1], torch.full((28, 28), 1 / (1 + math.exp(1.5))))
    assert torch.allclose(probs[1][0], torch.full((28, 28), 1 / (1 + math.exp(-0.5))))


def _heads() -> StandardROIHeads:
    c = 8
    return StandardROIHeads(
        in_features=["p2", "p3"],
        box_pooler=MultiLevelRoIAlign(output_size=7, strides=(4, 8)),
        box_head=FastRCNNFCHead(in_channels=c, resolution=7, fc_dims=[16]),
        mask_pooler=MultiLevelRoIAlign(output_size=14, strides=(4, 8)),
        mask_head=MaskRCNNHead(in_channels=c, num_classes=K, conv_dims=[8, 8]),
        num_classes=K,
        box_predictor=FastRCNNOutputs(
            in_channels=16, num_classes=K, box_coder=BoxCoder(weights=(10, 10, 5, 5))
        ),
        matcher=Matcher(low_threshold=0.5, high_threshold=0.5, allow_low_quality_matches=False),
        sampler=BalancedSampler(batch_size_per_image=32, positive_fraction=0.25),
    )


def test_roi_heads_train_masks_on_positive_rois_only() -> None:
    torch.manual_seed(0)
    heads = _heads().train()
    feats = {"p2": torch.randn(1, 8, 16, 24), "p3": torch.randn(1, 8, 8, 12)}
    gt_boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    proposals = [
        torch.tensor([[8.0, 8.0, 40.0, 40.0], [9.0, 9.0, 41.0, 39.0], [60.0, 40.0, 90.0, 60.0]])
    ]
    target = {"gt_boxes": gt_boxes, "gt_classes": torch.tensor([2]),
              "gt_masks": _rectangle((64, 96), 8, 8, 40, 40)[None]}
    seen = []
    hook = heads.mask_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    _, losses = heads(feats, proposals, [(64, 96)], [target])
    hook.remove()
    assert seen == [3]  # two positive proposals and the appended gt box; not the far one
    assert losses["loss_mask"].item() > 0
    heads.mask_rois_per_image = 2  # a random two of the three
    hook = heads.mask_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    _, capped = heads(feats, proposals, [(64, 96)], [target])
    hook.remove()
    assert seen == [3, 2] and capped["loss_mask"].item() > 0
    heads.mask_rois_per_image = 0
    with pytest.raises(ValueError, match="target 0 needs 'gt_masks'"):
        no_masks = {"gt_boxes": gt_boxes, "gt_classes": torch.tensor([2])}
        heads(feats, proposals, [(64, 96)], [no_masks])
    with pytest.raises(ValueError, match="mask head has 3 classes, RoI heads 4"):
        StandardROIHeads(
            in_features=["p2"], box_pooler=heads.box_pooler, box_head=heads.box_head,
            mask_pooler=heads.mask_pooler, mask_head=MaskRCNNHead(in_channels=8, num_classes=3),
            num_classes=K, box_predictor=heads.box_predictor, matcher=heads.matcher,
            sampler=heads.sampler,
        )
