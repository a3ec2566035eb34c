"""Encoders chosen by each modality's shape, all to one feature size, and an MLP head (``model.name: by_shape``).

One sample's shape decides (``kinds`` overrides it where the shape alone
would mislead):

- ``(D,)``, **vector** (tabular records, precomputed features): an MLP
  ``D -> vector_hidden... -> feature_dim``;
- ``(C, L)``, **sequence** (signals, time series; channels first): 1-D
  convolutions (``sequence_channels``, kernel ``sequence_kernel``, group norm,
  ReLU, max-pool 2), global average pooling, a linear layer to
  ``feature_dim``; or a GRU over the ``L`` steps (``sequence_encoder: gru``);
- ``(C, H, W)``, **image** (pathology tiles, photographs, 2-D slices):
  3x3 convolutions (``image_channels``, group norm, ReLU, max-pool 2),
  global average pooling, a linear layer;
- ``(C, D, H, W)``, **volume** (CT, MRI): the same in 3-D (``volume_channels``).

Every encoder ends in ReLU features ``[P, feature_dim]``: the CKD features.
Group norm rather than batch norm, because an encoder sees only the samples
that have its modality, sometimes one. The head maps the fused features
(``N * feature_dim`` for concatenation) through ``head_hidden`` to the
outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import nn

from mckd.errors import ConfigError
from mckd.nets.base import NetworkParts, NetworkSpec
from mckd.nets.mlp import mlp
from mckd.registry import register_network

KINDS = {1: "vector", 2: "sequence", 3: "image", 4: "volume"}  # by the number of dimensions of one sample


@dataclass
class ByShapeOptions:
    """Options of the ``by_shape`` network."""

    feature_dim: int = 64  # the feature size every encoder projects to (the CKD features)
    kinds: dict[str, Literal["vector", "sequence", "image", "volume"]] = field(default_factory=dict)  # modality -> kind, where the shape would mislead; default: 1-D vector, 2-D sequence [C, L], 3-D image [C, H, W], 4-D volume [C, D, H, W]
    vector_hidden: list[int] = field(default_factory=lambda: [128])  # hidden widths of the vector MLP
    sequence_encoder: Literal["conv", "gru"] = "conv"  # 1-D convolutions, or a GRU over the steps
    sequence_channels: list[int] = field(default_factory=lambda: [32, 64])  # conv channels per block (gru: its hidden size is the last)
    sequence_kernel: int = 5  # 1-D convolution kernel
    image_channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # 2-D conv channels per block
    volume_channels: list[int] = field(default_factory=lambda: [8, 16, 32])  # 3-D conv channels per block
    dropout: float = 0.1  # in the vector MLP and before each encoder's last layer
    head_hidden: int = 128  # the head's hidden layer
    head_dropout: float = 0.2

    def validate(self, path: str) -> None:
        widths = [self.feature_dim, self.head_hidden, self.sequence_kernel, *self.vector_hidden,
                  *self.sequence_channels, *self.image_channels, *self.volume_channels]
        if min(widths) < 1 or not (self.sequence_channels and self.image_channels and self.volume_channels):
            raise ConfigError(f"{path}: widths, channels and the kernel must be >= 1 (and the channel lists non-empty)")
        for name in ("dropout", "head_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be in [0, 1), got {getattr(self, name)}")


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def conv_encoder(dims: int, channels_in: int, channels: Sequence[int], kernel: int, feature_dim: int,
                 dropout: float) -> nn.Sequential:
    """``[P, C, *S]`` (``S`` of ``dims`` axes) -> ``[P, feature_dim]``: conv blocks, global pooling, linear + ReLU."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    average = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    layers: list[nn.Module] = []
    previous = channels_in
    for width in channels:
        layers += [conv(previous, width, kernel, padding=kernel // 2), nn.GroupNorm(_groups(width), width), nn.ReLU(),
                   pool(2, ceil_mode=True)]
        previous = width
    layers += [average(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, feature_dim), nn.ReLU()]
    return nn.Sequential(*layers)


class GRUEncoder(nn.Module):
    """``[P, C, L]`` -> ``[P, feature_dim]``: a GRU over the ``L`` steps, its last state through linear + ReLU."""

    def __init__(self, channels_in: int, hidden: int, feature_dim: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(channels_in, hidden, batch_first=True)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, feature_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(x.transpose(1, 2))  # (P, L, C) in; last: (1, P, hidden)
        return self.out(last[0])


def encoder_for(kind: str, shape: Sequence[int], options: ByShapeOptions) -> nn.Module:
    """The encoder of a modality of ``kind`` whose samples have ``shape``."""
    f, drop = options.feature_dim, options.dropout
    if kind == "vector":
        if len(shape) != 1:
            raise ConfigError(f"a vector modality has one axis, got shape {tuple(shape)}")
        return mlp([shape[0], *options.vector_hidden, f], drop, last_activation=True)
    expected = {"sequence": 2, "image": 3, "volume": 4}[kind]
    if len(shape) != expected:
        raise ConfigError(f"a {kind} modality has {expected} axes (channels first), got shape {tuple(shape)}")
    if kind == "sequence" and options.sequence_encoder == "gru":
        return GRUEncoder(shape[0], options.sequence_channels[-1], f, drop)
    channels = {"sequence": options.sequence_channels, "image": options.image_channels,
                "volume": options.volume_channels}[kind]
    kernel = options.sequence_kernel if kind == "sequence" else 3
    return conv_encoder(expected - 1, shape[0], channels, kernel, f, drop)


@register_network("by_shape", ByShapeOptions,
                  "an encoder per modality chosen by its shape (MLP, 1-D conv or GRU, 2-D or 3-D CNN), MLP head")
def build_by_shape(options: ByShapeOptions, spec: NetworkSpec) -> NetworkParts:
    """Encoders ``[P, *shape_n] -> [P, feature_dim]`` per modality; head ``[B, fused] -> [B, outputs]``."""
    unknown = sorted(set(options.kinds) - set(spec.modalities))
    if unknown:
        raise ConfigError(f"model.kinds names {unknown}, which are not modalities of this dataset: {list(spec.modalities)}")
    encoders = {}
    for name in spec.modalities:
        shape = tuple(spec.input_shapes[name])
        kind = options.kinds.get(name) or KINDS.get(len(shape))
        if kind is None:
            raise ConfigError(f"modality {name!r} has samples of shape {shape}: by_shape takes 1 to 4 axes "
                              "(vector, sequence [C, L], image [C, H, W], volume [C, D, H, W])")
        try:
            encoders[name] = encoder_for(kind, shape, options)
        except ConfigError as error:
            raise ConfigError(f"modality {name!r}: {error} (model.kinds.{name})") from None
    head = mlp([spec.fused_channels(options.feature_dim), options.head_hidden, spec.num_outputs], options.head_dropout,
               last_activation=False)
    return NetworkParts(encoders, head)
