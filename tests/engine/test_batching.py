"""to_batch_layout: channels_last weights on the CPU (as the batches are), same numbers."""
import copy

import torch

from engine.data.batching import to_batch_layout
from segmentation.build import build_model as build_segmentor
from tests.detection.test_rcnn import TINY, _config, tiny_scene
from tests.segmentation.conftest import _small_config
from detection import build_model as build_detector

CHANNELS_LAST = torch.channels_last


def _kernels(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The k x k (k > 1) convolution weights: the ones whose two layouts differ in memory."""
    return {n: p for n, p in model.named_parameters() if p.dim() == 4 and p.shape[-1] > 1}


def test_detector_weights_go_channels_last_with_the_same_losses_and_gradients() -> None:
    torch.manual_seed(0)
    nchw = build_detector(_config("faster_rcnn_R_50_FPN_1x.yaml", TINY)).train()
    placed = to_batch_layout(copy.deepcopy(nchw), "cpu")
    assert placed is not nchw
    kernels = _kernels(placed)
    assert len(kernels) > 20
    for name, weight in kernels.items():
        assert weight.is_contiguous(memory_format=CHANNELS_LAST), name
        assert not weight.is_contiguous(), name
        assert _kernels(nchw)[name].is_contiguous(), name
    images, targets = tiny_scene(0)
    results = []
    for model in (nchw, placed):
        torch.manual_seed(1)  # the same anchor and RoI sampling draws
        losses = model(images, targets)
        model.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters()
                                 if p.grad is not None}))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert set(grads_a) == set(grads_b) and len(grads_a) > 20
    for key in losses_a:
        torch.testing.assert_close(losses_b[key], losses_a[key], rtol=1e-5, atol=1e-6)
    for name, grad in grads_a.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=1e-4 * scale + 1e-8,
                                   msg=name)
    assert sum(g.abs().sum() for g in grads_a.values()) > 0


def test_segmentor_outputs_are_the_same_with_channels_last_weights() -> None:
    torch.manual_seed(0)
    nchw = build_segmentor(_small_config("deeplabv3plus")).eval()
    placed = to_batch_layout(copy.deepcopy(nchw), torch.device("cpu"))
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in _kernels(placed).values())
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        expected, got = nchw([image])[0]["sem_seg"], placed([image])[0]["sem_seg"]
    scale = expected.abs().max().item()
    assert scale > 0.1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)


def test_other_devices_keep_nchw_weights() -> None:
    model = build_segmentor(_small_config("deeplabv3", aux=False))
    to_batch_layout(model, "meta")
    kernels = _kernels(model)
    assert kernels and all(w.device.type == "meta" for w in kernels.values())
    assert all(w.is_contiguous() and not w.is_contiguous(memory_format=CHANNELS_LAST)
               for w in kernels.values())
