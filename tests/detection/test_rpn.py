"""RPN: empty-gt losses, proposal limits, and torchvision's RPN with the same weights."""

import math

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import remove_small_boxes

from resnet_detect.detection.anchors import AnchorGenerator
from resnet_detect.detection.box_coder import BoxCoder
from resnet_detect.detection.matcher import Matcher
from resnet_detect.detection.rpn import RPN, RPNHead
from resnet_detect.detection.sampler import BalancedSampler
from resnet_detect.detection.tracing import large_enough

SIZES = ((16,), (32,), (64,))
RATIOS = ((0.5, 1.0, 2.0),) * 3
PADDED = (64, 96)
IMAGE_SIZES = [(64, 90), (50, 96)]


def _rpn(pre: int = 300, post: int = 200) -> RPN:
    return RPN(
        in_features=["p2", "p3", "p4"],
        head=RPNHead(in_channels=8, num_anchors=3),
        anchor_generator=AnchorGenerator(sizes=SIZES, aspect_ratios=RATIOS),
        box_coder=BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matcher=Matcher(low_threshold=0.3, high_threshold=0.7, allow_low_quality_matches=True),
        sampler=BalancedSampler(batch_size_per_image=64, positive_fraction=0.5),
        pre_nms_topk=(pre, pre),
        post_nms_topk=(post, post),
        nms_thresh=0.7,
    )


def _features(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"p{k}": torch.randn(2, 8, PADDED[0] // 2**k, PADDED[1] // 2**k, generator=gen)
        for k in (2, 3, 4)
    }


def _randomize(rpn: RPN, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rpn.head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_empty_gt_gives_zero_box_loss() -> None:
    rpn = _rpn()
    _randomize(rpn)
    rpn.train()
    _, losses = rpn(_features(), IMAGE_SIZES, PADDED, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert losses["loss_rpn_loc"].item() == 0.0
    assert math.isfinite(losses["loss_rpn_cls"].item()) and losses["loss_rpn_cls"].item() > 0
    losses["loss_rpn_cls"].backward()  # the graph is intact


def test_only_negatives_sampled_without_gt() -> None:
    rpn = _rpn()
    anchors = torch.cat(rpn.anchor_generator(list(_features().values()), PADDED))
    labels, matched = rpn.label_and_sample_anchors(anchors, [torch.zeros(0, 4)])
    assert (labels[0] == 0).sum().item() == 64 and (labels[0] == 1).sum().item() == 0
    assert torch.equal(matched[0], torch.zeros_like(anchors))


def test_proposals_limits() -> None:
    rpn = _rpn(pre=50, post=30)
    _randomize(rpn)
    rpn.eval()
    proposals, losses = rpn(_features(), IMAGE_SIZES, PADDED)
    assert losses == {}
    for props, (h, w) in zip(proposals, IMAGE_SIZES):
        boxes, scores = props["boxes"], props["scores"]
        assert 0 < len(boxes) <= 30
        assert bool(
            (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        )
        assert torch.equal(scores, scores.sort(descending=True).values)


def _torchvision_rpn(ours: RPN, pre: int, post: int) -> RegionProposalNetwork:
    head = TVRPNHead(8, 3)
    head.load_state_dict(
        {
            "conv.0.0.weight": ours.head.conv.weight,
            "conv.0.0.bias": ours.head.conv.bias,
            "cls_logits.weight": ours.head.objectness_logits.weight,
            "cls_logits.bias": ours.head.objectness_logits.bias,
            "bbox_pred.weight": ours.head.anchor_deltas.weight,
            "bbox_pred.bias": ours.head.anchor_deltas.bias,
        }
    )
    return RegionProposalNetwork(
        TVAnchorGenerator(SIZES, RATIOS),
        head,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=64,
        positive_fraction=0.5,
        pre_nms_top_n={"training": pre, "testing": pre},
        post_nms_top_n={"training": post, "testing": post},
        nms_thresh=0.7,
    )


def test_equals_torchvision_rpn() -> None:
    ours = _rpn(pre=300, post=200)
    _randomize(ours)
    ref = _torchvision_rpn(ours, 300, 200)
    feats = _features()
    images = ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES)
    gt = [
        torch.tensor([[10.0, 12.0, 40.0, 50.0], [50.0, 5.0, 88.0, 30.0]]),
        torch.tensor([[20.0, 20.0, 36.0, 44.0]]),
    ]

    ours.eval(), ref.eval()
    got, _ = ours(feats, IMAGE_SIZES, PADDED)
    expected, _ = ref(images, dict(feats))
    for g, e in zip(got, expected):
        assert g["boxes"].shape == e.shape
        assert torch.allclose(g["boxes"], e, atol=1e-4)

    ours.train(), ref.train()
    # every non-ignored anchor in the loss on both sides (the two samplers draw differently)
    ours.sampler.batch_size_per_image = ref.fg_bg_sampler.batch_size_per_image = 10**7
    _, losses = ours(feats, IMAGE_SIZES, PADDED, gt)
    _, ref_losses = ref(images, dict(feats), [{"boxes": b} for b in gt])
    assert losses["loss_rpn_loc"].item() > 0
    assert torch.allclose(losses["loss_rpn_cls"], ref_losses["loss_objectness"], rtol=1e-5)
    assert torch.allclose(losses["loss_rpn_loc"], ref_losses["loss_rpn_box_reg"], rtol=1e-5)
    ours.loss_weight = 2.0  # model.rpn.loss_weight: both losses, twice torchvision's
    _, weighted = ours(feats, IMAGE_SIZES, PADDED, gt)
    assert torch.allclose(weighted["loss_rpn_cls"], 2 * ref_losses["loss_objectness"], rtol=1e-5)
    assert torch.allclose(weighted["loss_rpn_loc"], 2 * ref_losses["loss_rpn_box_reg"], rtol=1e-5)


def test_small_and_low_scoring_proposals_dropped_as_torchvision_does() -> None:
    # the filters run for the whole batch at once (one read back); torchvision filters per image
    ours = _rpn(pre=300, post=200)
    _randomize(ours)
    ours.min_box_size, ours.score_thresh = 12.0, 0.4
    ref = _torchvision_rpn(ours, 300, 200)
    ref.min_size, ref.score_thresh = 12.0, 0.4
    ours.eval(), ref.eval()
    feats = _features()
    got, _ = ours(feats, IMAGE_SIZES, PADDED)
    expected, _ = ref(ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES), dict(feats))
    unfiltered, _ = _torchvision_rpn(ours, 300, 200).eval()(
        ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES), dict(feats))
    for g, e, u in zip(got, expected, unfiltered):
        assert 0 < len(e) < len(u)  # both filters dropped some proposals here
        assert g["boxes"].shape == e.shape
        assert torch.allclose(g["boxes"], e, atol=1e-4)
        sides = g["boxes"][:, 2:] - g["boxes"][:, :2]
        assert bool((sides >= 12.0).all()) and bool((g["scores"] >= 0.4).all())


def test_a_proposal_at_a_threshold_is_kept_as_torchvision_keeps_it() -> None:
    """A score equal to score_thresh stays (torchvision's >=), as does a box exactly
    min_box_size wide or high (remove_small_boxes' >=)."""
    ours = _rpn(pre=300, post=200)
    _randomize(ours)
    with torch.no_grad():  # every objectness logit 0: every score exactly 0.5
        ours.head.objectness_logits.weight.zero_()
        ours.head.objectness_logits.bias.zero_()
    ours.score_thresh = 0.5
    ref = _torchvision_rpn(ours, 300, 200)
    ref.score_thresh = 0.5
    ours.eval(), ref.eval()
    feats = _features()
    got, _ = ours(feats, IMAGE_SIZES, PADDED)
    expected, _ = ref(ImageList(torch.zeros(2, 3, *PADDED), IMAGE_SIZES), dict(feats))
    assert [len(g["boxes"]) > 0 for g in got] == [len(e) > 0 for e in expected] == [True, True]
    boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0], [0.0, 0.0, 11.99, 12.0], [5.0, 5.0, 17.0, 30.0],
                          [5.0, 5.0, 30.0, 16.99]])
    assert large_enough(boxes, 12.0).tolist() == [True, False, True, False]
    assert remove_small_boxes(boxes, 12.0).tolist() == [0, 2]


def test_empty_gt_image_beside_one_with_gt_keeps_finite_gradients() -> None:
    # every anchor enters the box loss, the non-positive ones zeroed: the empty image's
    # all-zero matched boxes (infinite deltas) must not reach the loss or its gradient
    rpn = _rpn()
    _randomize(rpn)
    rpn.train()
    gt = [torch.tensor([[10.0, 12.0, 40.0, 50.0]]), torch.zeros(0, 4)]
    _, losses = rpn(_features(), IMAGE_SIZES, PADDED, gt)
    assert losses["loss_rpn_loc"].item() > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in rpn.head.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_nms_streams_give_the_same_proposals() -> None:
    """RPN.nms_streams (the per-image NMS on CUDA side streams) changes nothing but where the
    NMS runs: a CPU ignores it; on a GPU the same proposals come back."""
    for device in ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]:
        rpn = _rpn(pre=200, post=100).to(device)
        _randomize(rpn)
        rpn.eval()
        features = {k: v.to(device) for k, v in _features().items()}
        proposals = []
        for streams in (0, 4):
            rpn.nms_streams = streams
            proposals.append(rpn(features, IMAGE_SIZES, PADDED)[0])
        assert len(proposals[1]) == len(IMAGE_SIZES)
        for a, b in zip(*proposals):
            assert len(a["boxes"]) > 0
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_padded_nms_gives_the_same_proposals() -> None:
    """RPN.padded_nms (every image's and level's NMS as one padded batch of matrix products)
    gives the proposals of the per-image NMS, in training and at test time, with a score
    threshold and a minimum size dropping boxes of some levels, and a post-NMS top-k that cuts
    some images."""
    rpn = _rpn(pre=150, post=120)
    _randomize(rpn)
    rpn.score_thresh, rpn.min_box_size = 0.3, 6.0
    for training in (True, False):
        rpn.train(training)
        gt = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.zeros(0, 4)] if training else None
        proposals = []
        for padded in (False, True):
            rpn.padded_nms = padded
            proposals.append(rpn(_features(), IMAGE_SIZES, PADDED, gt)[0])
        counts = [len(p["boxes"]) for p in proposals[0]]
        assert 0 < min(counts) and max(counts) == 120  # one image cut by the top-k
        for a, b in zip(*proposals):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
