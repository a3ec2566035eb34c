"""A 3D U-Net for multi-modal MRI: one encoder shared by every sequence, one decoder on the fused levels.

Encoder (Eq. 1): each MRI sequence is a 1-channel volume ``[P, 1, X, Y, Z]``
through the same encoder, which returns every level ``l`` as
``[P, widths[l], X / 2^l, Y / 2^l, Z / 2^l]`` (the last is the bottleneck).
:class:`mckd.method.MultiModalModel` runs it on the present (sample,
sequence) pairs only, fills missing features at every level by Eq. 2 and
fuses them (concatenation: ``N * widths[l]`` channels). CKD uses the
bottleneck (``distill_level = -1``).

Decoder (Eq. 3): a 1x1x1 convolution projects each fused level back to
``widths[l]`` channels; then the usual U-Net path up from the bottleneck
(transposed convolution, concatenation with the projected skip, two
convolutions) and a 1x1x1 output convolution.

Blocks are MONAI's (``UnetBasicBlock`` / ``UnetResBlock``, ``UnetUpBlock``,
``UnetOutBlock``): convolution, instance norm, leaky ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mckd.errors import ConfigError
from mckd.nets.base import NetworkParts, NetworkSpec
from mckd.registry import register_network

NORM = "instance"


class SharedEncoder3D(nn.Module):
    """``[P, 1, X, Y, Z]`` -> one tensor per level, ``[P, widths[l], X / 2^l, ...]``."""

    def __init__(self, widths: list[int], residual: bool = False) -> None:
        super().__init__()
        # MONAI is imported when a U-Net is built, not when the registry is filled (mckd list answers sooner)
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock

        block = UnetResBlock if residual else UnetBasicBlock
        self.levels = nn.ModuleList()
        channels = 1
        for level, width in enumerate(widths):
            self.levels.append(block(3, channels, width, kernel_size=3, stride=1 if level == 0 else 2, norm_name=NORM))
            channels = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.levels:
            x = block(x)
            out.append(x)  # (P, C_l, X/2^l, Y/2^l, Z/2^l)
        return out


class FusedUNetDecoder3D(nn.Module):
    """Fused levels ``[B, F_l, ...]`` (``F_l`` = fused channels of level l) -> logits ``[B, out_channels, X, Y, Z]``."""

    def __init__(self, widths: list[int], fused: list[int], out_channels: int) -> None:
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock

        self.project = nn.ModuleList(
            UnetBasicBlock(3, f, w, kernel_size=1, stride=1, norm_name=NORM) for f, w in zip(fused, widths)
        )
        self.up = nn.ModuleList(
            UnetUpBlock(3, widths[l + 1], widths[l], kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=NORM)
            for l in reversed(range(len(widths) - 1))
        )
        self.out = UnetOutBlock(3, widths[0], out_channels)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        skips = [project(level) for project, level in zip(self.project, levels)]  # each (B, C_l, ...)
        x = skips[-1]  # the bottleneck
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = up(x, skip)  # (B, C_l, 2x the size)
        return self.out(x)  # (B, out_channels, X, Y, Z)


@dataclass
class UNet3DOptions:
    """Options of the ``unet3d`` network."""

    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 320])  # channels per level; its length is the depth (crop divisible by 2^(depth-1))
    residual: bool = False  # residual blocks (UnetResBlock) instead of plain double convolutions

    def validate(self, path: str) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError(f"{path}.widths must list >= 2 positive channel counts, got {self.widths}")


@register_network("unet3d", UNet3DOptions, "3D U-Net: one encoder shared by all MRI sequences, fusion at every level")
def build_unet3d(options: UNet3DOptions, spec: NetworkSpec) -> NetworkParts:
    """The shared encoder and fused decoder for 1-channel 3D modalities."""
    factor = 2 ** (len(options.widths) - 1)
    for name, shape in spec.input_shapes.items():
        if len(shape) != 4 or shape[0] != 1:
            raise ConfigError(f"model unet3d takes 1-channel 3D volumes [1, X, Y, Z]; {name!r} has shape {shape}")
        if any(s % factor for s in shape[1:]):
            raise ConfigError(f"model unet3d with {len(options.widths)} levels needs crops divisible by {factor}; "
                              f"{name!r} has {list(shape[1:])} (data.crop)")
    fused = [spec.fused_channels(w) for w in options.widths]
    encoder = SharedEncoder3D(options.widths, options.residual)
    decoder = FusedUNetDecoder3D(options.widths, fused, spec.num_outputs)
    return NetworkParts(encoder, decoder)
