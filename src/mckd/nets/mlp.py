"""Small fully connected networks for vector-valued modalities (multi-view digits, user data)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mckd.errors import ConfigError
from mckd.nets.base import NetworkParts, NetworkSpec
from mckd.registry import register_network


def mlp(sizes: list[int], dropout: float, last_activation: bool) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU and dropout between them."""
    layers: list[nn.Module] = []
    for i, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0 and i < len(sizes) - 2:  # no dropout on the output (the CKD features)
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@dataclass
class MultiviewMLPOptions:
    """Options of the ``multiview_mlp`` network."""

    hidden: int = 128  # width of each view encoder's hidden layer
    feature_dim: int = 64  # the common feature size every view projects to (CKD features)
    decoder_hidden: int = 128  # width of the decoder's hidden layer
    dropout: float = 0.2

    def validate(self, path: str) -> None:
        if min(self.hidden, self.feature_dim, self.decoder_hidden) < 1:
            raise ConfigError(f"{path}: hidden, feature_dim and decoder_hidden must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout must be in [0, 1), got {self.dropout}")


@register_network("multiview_mlp", MultiviewMLPOptions, "one MLP encoder per vector modality, MLP decoder")
def build_multiview_mlp(options: MultiviewMLPOptions, spec: NetworkSpec) -> NetworkParts:
    """Encoders ``[B, D_n] -> [B, feature_dim]`` per modality; decoder ``[B, fused] -> [B, classes]``."""
    encoders = {}
    for name in spec.modalities:
        shape = spec.input_shapes[name]
        if len(shape) != 1:
            raise ConfigError(f"model multiview_mlp takes vector modalities; {name!r} has shape {shape}")
        encoders[name] = mlp([shape[0], options.hidden, options.feature_dim], options.dropout, last_activation=True)
    fused = spec.fused_channels(options.feature_dim)  # N*F for concat, 2F for hemis
    decoder = mlp([fused, options.decoder_hidden, spec.num_outputs], options.dropout, False)
    return NetworkParts(encoders, decoder)
