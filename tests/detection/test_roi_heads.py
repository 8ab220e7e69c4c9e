"""RoI heads: pooling, sampling, empty-gt losses, torchvision's RoIHeads with the same weights."""

import math

import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from resnet_detect.detection.box_coder import BoxCoder
from resnet_detect.detection.convert import convert_torchvision_faster_rcnn
from resnet_detect.detection.matcher import Matcher
from resnet_detect.detection.poolers import MultiLevelRoIAlign
from resnet_detect.detection.roi_heads import FastRCNNFCHead, FastRCNNOutputs, StandardROIHeads
from resnet_detect.detection.sampler import BalancedSampler

K = 5  # foreground classes
C = 8  # feature channels
PADDED = (64, 96)
IMAGE_SIZES = [(64, 90), (50, 96)]
STRIDES = (4, 8, 16, 32)


def _features(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"p{k}": torch.randn(2, C, PADDED[0] // 2**k, PADDED[1] // 2**k, generator=gen)
        for k in (2, 3, 4, 5)
    }


def _boxes(n: int, seed: int, max_size: float = 60.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([80.0, 45.0])
    wh = torch.rand(n, 2, generator=gen) * max_size + 3
    boxes = torch.cat([xy, xy + wh], dim=1)
    return torch.minimum(boxes, torch.tensor([90.0, 50.0, 90.0, 50.0]))


def _heads(score_thresh: float = 0.05) -> StandardROIHeads:
    return StandardROIHeads(
        in_features=["p2", "p3", "p4", "p5"],
        box_pooler=MultiLevelRoIAlign(output_size=7, strides=STRIDES, sampling_ratio=2),
        box_head=FastRCNNFCHead(in_channels=C, resolution=7, fc_dims=[32, 32]),
        num_classes=K,
        box_predictor=FastRCNNOutputs(
            in_channels=32,
            num_classes=K,
            box_coder=BoxCoder(weights=(10, 10, 5, 5)),
            score_thresh=score_thresh,
        ),
        matcher=Matcher(low_threshold=0.5, high_threshold=0.5, allow_low_quality_matches=False),
        sampler=BalancedSampler(batch_size_per_image=64, positive_fraction=0.25),
    )


def test_pooler_equals_torchvision() -> None:
    feats = _features()
    # sqrt(area) < 112 -> p2 (clamped), 112..224 -> p3, 224..448 -> p4, >= 448 -> p5 (clamped)
    large = torch.tensor(
        [[0.0, 0.0, 150.0, 150.0], [5.0, 0.0, 305.0, 300.0], [0.0, 0.0, 600.0, 600.0]]
    )
    boxes = [_boxes(40, 1, max_size=30), torch.cat([_boxes(20, 2), large])]
    pooler = MultiLevelRoIAlign(output_size=7, strides=STRIDES, sampling_ratio=2)
    levels = pooler.assign_levels(boxes)
    assert levels[-3:].tolist() == [1, 2, 3] and set(levels[:-3].tolist()) == {0}
    # at a level's edge less rounding error: torchvision's epsilon decides (p4, not p3)
    edge = [torch.tensor([[0.0, 0.0, 223.99994, 223.99994], [0.0, 0.0, 111.99997, 112.0]])]
    assert pooler.assign_levels(edge).tolist() == LevelMapper(2, 5)(edge).tolist() \
        == [2, 1]
    ref = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    expected = ref(feats, boxes, [PADDED, PADDED])
    # the CPU pooler gathers whole channel vectors (detection.roi_align): float32 summation order
    torch.testing.assert_close(pooler(list(feats.values()), boxes), expected, rtol=1e-6,
                               atol=1e-5)


def test_sampling_counts_and_labels() -> None:
    heads = _heads()
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 5.0, 85.0, 45.0]])
    # 100 proposals on gt 0 (IoU >= 0.5 by construction: jitter <= 2 px), 300 far away
    gen = torch.Generator().manual_seed(0)
    near = gt[0] + (torch.rand(100, 4, generator=gen) * 4 - 2)
    far = torch.tensor([0.0, 45.0, 8.0, 50.0]).repeat(300, 1)
    torch.manual_seed(0)
    (sampled,) = heads.label_and_sample_proposals(
        [torch.cat([near, far])], [{"gt_boxes": gt, "gt_classes": torch.tensor([3, 1])}]
    )
    fg = sampled.gt_classes < K
    assert len(sampled.boxes) == 64 and int(fg.sum()) == 16  # 64 * 0.25
    assert set(sampled.gt_classes[fg].tolist()) <= {1, 3} and bool(
        (sampled.gt_classes[~fg] == K).all()
    )
    assert torch.equal(sampled.gt_boxes[fg], gt[sampled.matched_idxs[fg]])


def test_empty_gt_gives_zero_box_loss() -> None:
    heads = _heads()
    heads.train()
    proposals = [_boxes(30, 3), _boxes(20, 4)]
    targets = [{"gt_boxes": torch.zeros(0, 4), "gt_classes": torch.zeros(0, dtype=torch.int64)}] * 2
    detections, losses = heads(_features(), proposals, IMAGE_SIZES, targets)
    assert detections == []
    assert losses["loss_box_reg"].item() == 0.0
    assert math.isfinite(losses["loss_cls"].item()) and losses["loss_cls"].item() > 0
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    assert heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_inference_limits() -> None:
    heads = _heads(score_thresh=0.0)
    heads.box_predictor.detections_per_image = 7
    heads.eval()
    detections, losses = heads(_features(), [_boxes(30, 3), _boxes(20, 4)], IMAGE_SIZES)
    assert losses == {}
    for det, (h, w) in zip(detections, IMAGE_SIZES):
        assert len(det["boxes"]) == 7
        assert det["labels"].dtype == torch.int64 and int(det["labels"].max()) < K
        assert bool((det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all())


def _torchvision_heads(ours: StandardROIHeads, score_thresh: float) -> RoIHeads:
    ref = RoIHeads(
        MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2),
        TwoMLPHead(C * 49, 32),
        FastRCNNPredictor(32, K + 1),
        0.5,
        0.5,
        64,
        0.25,
        None,
        score_thresh,
        0.5,
        100,
    )
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    converted = convert_torchvision_faster_rcnn(
        {f"roi_heads.{k}": v for k, v in ref.state_dict().items()}
    )
    ours.load_state_dict({k[len("roi_heads.") :]: v for k, v in converted.items()})
    return ref


def test_equals_torchvision_roi_heads() -> None:
    ours = _heads(score_thresh=0.0)
    ref = _torchvision_heads(ours, 0.0)
    feats = _features()
    proposals = [_boxes(60, 3), _boxes(40, 4)]

    ours.eval(), ref.eval()
    got, _ = ours(feats, proposals, IMAGE_SIZES)
    expected, _ = ref(feats, proposals, IMAGE_SIZES)
    for g, e in zip(got, expected):
        assert len(g["boxes"]) == len(e["boxes"]) == 100
        assert torch.allclose(g["boxes"], e["boxes"], atol=1e-4)
        assert torch.allclose(g["scores"], e["scores"], atol=1e-6)
        assert torch.equal(g["labels"] + 1, e["labels"])

    ours.train(), ref.train()
    gt = [
        torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 5.0, 85.0, 45.0]]),
        torch.tensor([[20.0, 8.0, 60.0, 48.0]]),
    ]
    gt_classes = [torch.tensor([3, 0]), torch.tensor([4])]
    torch.manual_seed(11)
    _, losses = ours(
        feats,
        proposals,
        IMAGE_SIZES,
        [{"gt_boxes": b, "gt_classes": c} for b, c in zip(gt, gt_classes)],
    )
    torch.manual_seed(11)
    _, ref_losses = ref(
        feats,
        [p.clone() for p in proposals],
        IMAGE_SIZES,
        [{"boxes": b, "labels": c + 1} for b, c in zip(gt, gt_classes)],
    )
    assert losses["loss_box_reg"].item() > 0
    assert torch.allclose(losses["loss_cls"], ref_losses["loss_classifier"], rtol=1e-5)
    assert torch.allclose(losses["loss_box_reg"], ref_losses["loss_box_reg"], rtol=1e-5)
    ours.box_predictor.loss_weight = 2.0  # both losses, twice torchvision's
    torch.manual_seed(11)
    _, weighted = ours(feats, proposals, IMAGE_SIZES,
                       [{"gt_boxes": b, "gt_classes": c} for b, c in zip(gt, gt_classes)])
    assert torch.allclose(weighted["loss_cls"], 2 * ref_losses["loss_classifier"], rtol=1e-5)
    assert torch.allclose(weighted["loss_box_reg"], 2 * ref_losses["loss_box_reg"], rtol=1e-5)


def test_a_score_at_the_threshold_is_dropped_as_torchvision_drops_it() -> None:
    """Detections need a score above score_thresh (torchvision's >): with every class logit 0
    each score is exactly 1/(K+1); at that threshold none is kept, just below it all are."""
    boundary = float(torch.softmax(torch.zeros(K + 1), 0)[0])
    feats, proposals = _features(), [_boxes(60, 3), _boxes(40, 4)]
    kept = []
    below = float(torch.nextafter(torch.tensor(boundary), torch.tensor(0.0)))  # in float32
    for thresh in (boundary, below):
        ours = _heads(score_thresh=thresh)
        ref = _torchvision_heads(ours, thresh)
        for predictor in (ours.box_predictor, ref.box_predictor):
            with torch.no_grad():
                predictor.cls_score.weight.zero_()
                predictor.cls_score.bias.zero_()
        ours.eval(), ref.eval()
        got, _ = ours(feats, proposals, IMAGE_SIZES)
        expected, _ = ref(feats, proposals, IMAGE_SIZES)
        kept.append(([len(g["boxes"]) for g in got], [len(e["boxes"]) for e in expected]))
    assert kept[0] == ([0, 0], [0, 0])
    assert kept[1] == ([100, 100], [100, 100])


def test_box_loss_takes_each_foreground_roi_own_class_deltas() -> None:
    # written out with the foreground rows selected (torchvision's fastrcnn_loss), for
    # per-class and class-agnostic deltas; ours zeroes the background rows instead
    gen = torch.Generator().manual_seed(0)
    coder = BoxCoder(weights=(10, 10, 5, 5))
    proposals = _boxes(12, 5)
    gt_boxes = _boxes(12, 6)
    gt_classes = torch.tensor([0, K, 3, K, 4, 1, K, K, 2, 0, K, 3])  # K: background
    logits = torch.randn(12, K + 1, generator=gen)
    for agnostic in (False, True):
        outputs = FastRCNNOutputs(in_channels=4, num_classes=K, box_coder=coder,
                                  cls_agnostic_bbox_reg=agnostic)
        box_dim = 1 if agnostic else K
        deltas = torch.randn(12, box_dim * 4, generator=gen, requires_grad=True)
        losses = outputs.losses(logits, deltas, proposals, gt_classes, gt_boxes)
        fg = torch.nonzero(gt_classes < K, as_tuple=True)[0]
        own = deltas.view(12, box_dim, 4)[fg, 0 if agnostic else gt_classes[fg]]
        expected = torch.nn.functional.smooth_l1_loss(
            own, coder.encode(proposals[fg], gt_boxes[fg]), beta=1 / 9, reduction="sum") / 12
        torch.testing.assert_close(losses["loss_box_reg"], expected)
        losses["loss_box_reg"].backward()
        bg = gt_classes == K
        assert bool((deltas.grad[bg] == 0).all()) and deltas.grad[~bg].abs().sum() > 0


def test_zero_width_background_proposal_keeps_gradients_finite() -> None:
    # a proposal clipped to the padded border has no width (model.rpn.min_box_size=0): as a
    # background RoI it must not turn the box loss's gradient into NaN (0/0 in its deltas)
    outputs = FastRCNNOutputs(in_channels=4, num_classes=K, box_coder=BoxCoder((10, 10, 5, 5)))
    proposals = torch.tensor([[10.0, 10.0, 30.0, 40.0], [96.0, 20.0, 96.0, 50.0]])
    gt_boxes = torch.tensor([[12.0, 11.0, 33.0, 38.0], [0.0, 0.0, 0.0, 0.0]])
    deltas = torch.randn(2, K * 4, requires_grad=True)
    losses = outputs.losses(torch.randn(2, K + 1), deltas, proposals, torch.tensor([1, K]),
                            gt_boxes)
    losses["loss_box_reg"].backward()
    assert torch.isfinite(losses["loss_box_reg"]) and losses["loss_box_reg"].item() > 0
    assert bool(torch.isfinite(deltas.grad).all())
