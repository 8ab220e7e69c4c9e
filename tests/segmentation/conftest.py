"""Shared helpers: small segmentation configs (ResNet-18, few channels) for fast CPU tests."""
from typing import Any

import pytest
import torch

from omegaconf import OmegaConf

from resnet_detect.segmentation.build import defaults


def _small_config(head: str = "deeplabv3", *, output_stride: int = 16, num_classes: int = 5,
                 aux: bool = True, **model: Any) -> dict[str, Any]:
    """A ResNet-18 segmenter config with 16-channel heads."""
    cfg = OmegaConf.to_container(defaults())
    m = cfg["model"]
    m.update(num_classes=num_classes, **model)
    m["backbone"].update(name="resnet18", output_stride=output_stride, multi_grid=[1, 2])
    m["head"].update(name=head, channels=16, low_level_channels=8)
    m["aux_head"].update(enabled=aux, channels=8)
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_config():
    """`small_config(head, output_stride=16, num_classes=5, aux=True, **model) -> config dict`."""
    return _small_config
