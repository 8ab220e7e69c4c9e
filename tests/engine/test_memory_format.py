"""engine.memory_format: `model.channels_last` on a CPU (the GPU side: benchmarks/gpu_suite.py)."""
from __future__ import annotations

from torch import nn

from resnet_detect.engine.memory_format import place_model


def test_cpu_weights_keep_their_layout_whatever_model_channels_last_says() -> None:
    """The CPU convolution paths (backbones/conv.py) were measured on NCHW weights; the
    batches there are channels_last already."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    place_model(model, "cpu", channels_last=True)
    assert all(p.is_contiguous() for p in model.parameters())
