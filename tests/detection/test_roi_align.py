"""detection.roi_align: torchvision's RoIAlign values, gathered on the CPU, with a sparse-matrix
backward."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

import resnet_detect.detection.roi_align as roi_align_module
from resnet_detect.detection.roi_align import roi_align


def random_rois(num: int, n_images: int, height: int, width: int, stride: int,
                seed: int) -> torch.Tensor:
    """Boxes of every kind: inside, crossing and beyond the border, thinner than one cell."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height]) * stride
    centre = torch.rand(num, 2, generator=g) * size * 1.2 - 0.1 * size
    wh = torch.rand(num, 2, generator=g) * size * 0.6
    wh[: num // 8] = torch.rand(num // 8, 2, generator=g) * stride * 0.8  # below one cell
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=1)
    return torch.cat([torch.randint(0, n_images, (num, 1), generator=g).float(), boxes], 1)


@pytest.mark.parametrize(("sampling_ratio", "aligned", "output_size", "channels_last"), [
    (2, False, (7, 7), True), (1, True, (14, 14), False), (3, False, (5, 3), False),
    (2, True, (7, 7), True)])
def test_forward_and_input_gradient_match_torchvision(
        sampling_ratio: int, aligned: bool, output_size: tuple[int, int],
        channels_last: bool) -> None:
    n, c, h, w, stride = 3, 16, 13, 17, 8
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n, c, h, w, generator=g)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    rois = random_rois(200, n, h, w, stride, seed=1)
    ours_in = features.clone().requires_grad_()
    ref_in = features.clone().requires_grad_()
    ours = roi_align(ours_in, rois, output_size, 1 / stride, sampling_ratio, aligned)
    ref = tv_roi_align(ref_in, rois, output_size, 1 / stride, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)  # float32 summation order
    upstream = torch.randn(ref.shape, generator=g)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert ref_in.grad.abs().max() > 1.0  # the gradient is not trivially zero
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)


def test_samples_exactly_at_the_bounds_count_as_torchvision_counts_them() -> None:
    """A sample at x = width (the map's far edge) and one at x = -1 are still read (and
    clamped), one past them not: RoIs whose single sample lands on each bound."""
    features = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    rois = torch.tensor([[0.0, 7.0, 3.0, 9.0, 5.0],     # one sample at x 8 (= width), y 4
                         [0.0, -2.0, 3.0, 0.0, 5.0],    # at x -1, y 4
                         [0.0, 7.5, 3.0, 9.5, 5.0]])    # at x 8.5: outside, nothing
    ours = roi_align(features, rois, (1, 1), 1.0, 1, False)
    ref = tv_roi_align(features, rois, (1, 1), 1.0, 1, False)
    assert ref.flatten().tolist() == [39.0, 32.0, 0.0]
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_bf16_features_under_autocast_get_a_bf16_gradient_close_to_float32() -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 8, 10, 12, generator=g)
    rois = random_rois(64, 2, 10, 12, 4, seed=3)
    half = features.to(torch.bfloat16).requires_grad_()
    full = features.to(torch.bfloat16).float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(half, rois, (7, 7), 0.25, 2, False)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    tv_roi_align(full, rois, (7, 7), 0.25, 2, False).sum().backward()
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(half.grad.float(), full.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_gathers_torchvision_values_with_the_adaptive_sampling_ratio_too(
        aligned: bool, channels_last: bool) -> None:
    n, c, h, w, stride = 2, 24, 19, 23, 4
    features = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(5))
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    rois = random_rois(300, n, h, w, stride, seed=6)
    rois[:5, 3:] = rois[:5, 1:3] - 3.0  # inverted boxes: no samples when aligned
    with torch.no_grad():
        for sampling_ratio in (0, 2):
            ours = roi_align(features, rois, (7, 6), 1 / stride, sampling_ratio, aligned)
            ref = tv_roi_align(features, rois, (7, 6), 1 / stride, sampling_ratio, aligned)
            assert ours.grad_fn is None
            torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
        assert roi_align(features, rois[:0], (7, 7), 0.25, 0, aligned).shape == (0, c, 7, 7)


def test_adaptive_sampling_keeps_torchvision_for_its_gradient() -> None:
    features = torch.randn(1, 4, 9, 9, requires_grad=True)
    rois = random_rois(10, 1, 9, 9, 2, seed=4)
    adaptive = roi_align(features, rois, (7, 7), 0.5, 0, False)
    # torchvision's autograd node: "torchvision_roi_align" in 0.29, "ROIAlignFunction" in 0.26
    assert any(n in adaptive.grad_fn.name() for n in ("torchvision_roi_align", "ROIAlignFunction"))
    sparse = roi_align(features, rois, (7, 7), 0.5, 2, False)
    assert "RoIAlignSparseBackward" in sparse.grad_fn.name()


def test_gathers_in_chunks_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    features = torch.randn(2, 8, 21, 25, generator=torch.Generator().manual_seed(7))
    rois = random_rois(120, 2, 21, 25, 4, seed=8)
    with torch.no_grad():
        whole = roi_align(features, rois, (7, 7), 0.25, 0, True)
        # three RoIs per call where a bin has one sample, one RoI per call where it has more
        monkeypatch.setattr(roi_align_module, "MAX_TAPS", 7 * 7 * 4 * 3)
        chunked = roi_align(features, rois, (7, 7), 0.25, 0, True)
    assert torch.equal(chunked, whole)
    torch.testing.assert_close(whole, tv_roi_align(features, rois, (7, 7), 0.25, 0, True),
                               rtol=1e-6, atol=1e-5)


def test_float64_features_keep_double_precision_and_a_negative_ratio_is_adaptive() -> None:
    features = torch.randn(2, 3, 9, 11, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(9))
    rois = random_rois(12, 2, 9, 11, 2, seed=10).double()
    with torch.no_grad():
        torch.testing.assert_close(roi_align(features, rois, (3, 3), 0.5, 0, True),
                                   tv_roi_align(features, rois, (3, 3), 0.5, 0, True),
                                   rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, rois, (3, 3), 0.5, 2, True), (features.requires_grad_(),))
    adaptive = roi_align(features, rois, (3, 3), 0.5, -1, True)  # torchvision: < 1 is adaptive
    adaptive.sum().backward()
    # torchvision's autograd node: "torchvision_roi_align" in 0.29, "ROIAlignFunction" in 0.26
    assert any(n in adaptive.grad_fn.name() for n in ("torchvision_roi_align", "ROIAlignFunction"))


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_several_levels_give_each_level_torchvision_values_and_gradient(
        sampling_ratio: int) -> None:
    """multilevel_roi_align against torchvision's roi_align per level, one level without RoIs
    (no gradient there) and RoIs of the levels interleaved."""
    g = torch.Generator().manual_seed(4)
    strides, c, n = (4, 8, 16), 8, 2
    features = [torch.randn(n, c, 48 // s, 64 // s, generator=g) for s in strides]
    features[0] = features[0].contiguous(memory_format=torch.channels_last)
    rois = random_rois(90, n, 12, 16, 4, seed=5)
    level = torch.randint(0, 2, (90,), generator=g) * 2  # levels 0 and 2; level 1 empty
    rows = [torch.nonzero(level == k).squeeze(1) for k in range(3)]
    ours_in = [f.clone().requires_grad_() for f in features]
    ref_in = [f.clone().requires_grad_() for f in features]
    ours = roi_align_module.multilevel_roi_align(ours_in, rois, rows, (7, 7),
                                                 [1 / s for s in strides], sampling_ratio, True)
    ref = torch.zeros(90, c, 7, 7)
    for k, s in enumerate(strides):
        ref[rows[k]] = tv_roi_align(ref_in[k], rois[rows[k]], (7, 7), 1 / s, sampling_ratio,
                                    True)
    assert ours.is_contiguous() and ours.shape == (90, c, 7, 7)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    upstream = torch.randn(ref.shape, generator=g)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for k in (0, 2):
        assert ref_in[k].grad.abs().max() > 1.0
        torch.testing.assert_close(ours_in[k].grad, ref_in[k].grad, rtol=1e-5, atol=1e-5)
    assert ours_in[1].grad is None or not ours_in[1].grad.any()
