"""Backbone + global average pooling + fc: the model that pretraining trains.

(N, 3, H, W) -> backbone last stage (N, C, h, w) -> pool (N, C) -> logits (N, K).
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from .resnet import ResNet


class Classifier(nn.Module):
    """Image classifier; its state dict is `backbone.*` plus `fc.*`."""

    def __init__(self, *, backbone: ResNet, num_classes: int) -> None:
        super().__init__()
        try:  # (NumPy's and torch's integer scalars too, as nn.Linear takes them)
            count = None if isinstance(num_classes, bool) else operator.index(num_classes)
        except TypeError:
            count = None
        if count is None or count < 1:
            raise ValueError(f"num_classes must be a positive integer (the classes of the "
                             f"fc layer), got {num_classes!r}")
        num_classes = count
        self.backbone = backbone
        self.feature_name = backbone.stages[-1]
        if backbone.out_features != (self.feature_name,):
            raise ValueError(f"a classifier needs out_features=({self.feature_name!r},), "
                             f"got {backbone.out_features}")
        channels = backbone.output_shape()[self.feature_name].channels
        self.fc = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[self.feature_name]
        return self.fc(torch.flatten(features.mean(dim=(2, 3)), 1))
