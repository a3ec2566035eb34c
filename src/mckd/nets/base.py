"""What a network builder is given and what it returns.

A network builder (``@register_network``) makes the encoders and the decoder
for one dataset's modalities; :func:`mckd.build.build_model` puts them in a
:class:`mckd.method.MultiModalModel` with the config's ``model.fill`` and
``model.fusion``, so no network has to know about either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    """What the data asks of a network.

    Attributes:
        modalities: names, in the model's order (length N).
        input_shapes: per modality, the shape of one sample's input (``(D,)``, ``(C, H, W)``, ``(1, X, Y, Z)``).
        num_outputs: channels of the prediction (classes, or segmentation channels: the task's).
        fused_channels: channels the decoder receives for features of ``C`` channels per modality
            (``N * C`` for concatenation, ``2 * C`` for HeMIS fusion).
    """

    modalities: tuple[str, ...]
    input_shapes: Mapping[str, Sequence[int]]
    num_outputs: int
    fused_channels: Callable[[int], int]


@dataclass
class NetworkParts:
    """A network: one encoder shared by every modality or one per modality, a decoder, the distillation level."""

    encoder: nn.Module | Mapping[str, nn.Module]
    decoder: nn.Module
    distill_level: int = -1
