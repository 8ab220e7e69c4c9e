"""Box head on pooled RoI features: (R, C, S, S) -> (R, D) through fully connected layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from resnet_detect.engine.config import ArgumentError, is_positive_int


class FastRCNNFCHead(nn.Module):
    """Flatten, then ``fc1 .. fcN`` each followed by ReLU (the "2-fc" head with two).

    Args:
        in_channels: channels C of the pooled features.
        resolution: side S of the pooled features.
        fc_dims: output width of each fully connected layer (e.g. (1024, 1024)).
    """

    def __init__(self, *, in_channels: int, resolution: int, fc_dims: Sequence[int]) -> None:
        super().__init__()
        if not fc_dims:
            raise ArgumentError("FastRCNNFCHead needs at least one fully connected layer")
        if not all(is_positive_int(d) for d in fc_dims):
            raise ArgumentError(f"fully connected widths must be positive integers, got "
                                f"{list(fc_dims)}")
        dim = in_channels * resolution * resolution
        self.num_fc = len(fc_dims)
        for i, out_dim in enumerate(fc_dims, start=1):
            fc = nn.Linear(dim, out_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
            self.add_module(f"fc{i}", fc)
            dim = out_dim
        self.out_channels = dim

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (R, C, S, S) pooled features.

        Returns:
            (R, D) box features.
        """
        x = x.flatten(1)
        for i in range(1, self.num_fc + 1):
            x = F.relu(getattr(self, f"fc{i}")(x), inplace=True)
        return x
