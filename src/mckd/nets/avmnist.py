"""SMIL's Audiovision-MNIST networks (Ma et al., 2021), as MCKD used them.

- image encoder, LeNet-5 style: ``[B, 1, 28, 28]`` -> conv 1->5 k5 (24x24) ->
  max-pool 2 (12x12) -> ReLU -> conv 5->10 k5 (8x8) -> dropout 0.5 ->
  max-pool 2 (4x4) -> ReLU -> flatten: 160;
- audio encoder: ``[B, 1, 20, 20]`` MFCC -> conv 1->32 k2 (19x19) + BN + ReLU
  -> conv 32->48 k2 (18x18) + BN + ReLU -> conv 48->20 k2 (17x17) + BN + ReLU
  -> max-pool k2 s4 (4x4) -> dropout 0.25 -> flatten: 320;
- projection: a linear layer + ReLU from each encoder's size to one shared
  ``feature_dim``, so Eq. 2 (mean of present features) and Eq. 5 (CKD between
  modalities) compare vectors of one shape. These projected features are the
  CKD features: the layer before the fully connected head, as in the paper;
- fusion head: concatenation -> FC 64 -> ReLU -> dropout -> FC 10.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mckd.errors import ConfigError
from mckd.nets.base import NetworkParts, NetworkSpec
from mckd.registry import register_network

IMAGE_FLAT = 160  # 10 channels x 4 x 4
AUDIO_FLAT = 320  # 20 channels x 4 x 4


def image_encoder(feature_dim: int, dropout: float = 0.5, project: bool = True) -> nn.Sequential:
    """``[B, 1, 28, 28] -> [B, feature_dim]``: SMIL's LeNet-5 style encoder, then the projection (or ``[B, 160]``)."""
    layers = [
        nn.Conv2d(1, 5, kernel_size=5),  # (B, 5, 24, 24)
        nn.MaxPool2d(2),  # (B, 5, 12, 12)
        nn.ReLU(),
        nn.Conv2d(5, 10, kernel_size=5),  # (B, 10, 8, 8)
        nn.Dropout(dropout),
        nn.MaxPool2d(2),  # (B, 10, 4, 4)
        nn.ReLU(),
        nn.Flatten(),  # (B, 160)
    ]
    if project:
        layers += [nn.Linear(IMAGE_FLAT, feature_dim), nn.ReLU()]  # (B, F): the CKD features
    return nn.Sequential(*layers)


def audio_encoder(feature_dim: int, dropout: float = 0.25, project: bool = True) -> nn.Sequential:
    """``[B, 1, 20, 20] -> [B, feature_dim]``: SMIL's MFCC encoder, then the projection (or ``[B, 320]``)."""
    layers = [
        nn.Conv2d(1, 32, kernel_size=2),  # (B, 32, 19, 19)
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 48, kernel_size=2),  # (B, 48, 18, 18)
        nn.BatchNorm2d(48),
        nn.ReLU(),
        nn.Conv2d(48, 20, kernel_size=2),  # (B, 20, 17, 17)
        nn.BatchNorm2d(20),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=4),  # (B, 20, 4, 4)
        nn.Dropout(dropout),
        nn.Flatten(),  # (B, 320)
    ]
    if project:
        layers += [nn.Linear(AUDIO_FLAT, feature_dim), nn.ReLU()]  # (B, F): the CKD features
    return nn.Sequential(*layers)


ENCODERS = {"image": image_encoder, "audio": audio_encoder}
FLAT = {"image": IMAGE_FLAT, "audio": AUDIO_FLAT}


@dataclass
class AVMNISTNetOptions:
    """Options of the ``avmnist_smil`` network."""

    feature_dim: int = 64  # the shared feature size both encoders project to (CKD features)
    head_hidden: int = 64  # the fusion head's hidden FC layer (SMIL: 64)
    head_dropout: float = 0.5  # dropout between the head's two FC layers
    image_dropout: float = 0.5  # SMIL's dropout after the image encoder's second conv
    audio_dropout: float = 0.25  # SMIL's dropout after the audio encoder's pooling
    project: bool = True  # a linear layer + ReLU to feature_dim after each encoder; false: LeNet's 160 features used directly (one modality only: the MFCC encoder gives 320)

    def validate(self, path: str) -> None:
        if min(self.feature_dim, self.head_hidden) < 1:
            raise ConfigError(f"{path}: feature_dim and head_hidden must be >= 1")
        for name in ("head_dropout", "image_dropout", "audio_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be in [0, 1), got {getattr(self, name)}")


@register_network("avmnist_smil", AVMNISTNetOptions, "SMIL's AV-MNIST image (LeNet-5) and MFCC encoders, FC fusion head")
def build_avmnist_smil(options: AVMNISTNetOptions, spec: NetworkSpec) -> NetworkParts:
    """One encoder per modality (``image``, ``audio``, or one alone for LowerB); head ``[B, fused] -> [B, 10]``."""
    encoders = {}
    for name in spec.modalities:
        if name not in ENCODERS:
            raise ConfigError(f"model avmnist_smil has encoders for {list(ENCODERS)}; the dataset has {name!r}")
        dropout = options.image_dropout if name == "image" else options.audio_dropout
        encoders[name] = ENCODERS[name](options.feature_dim, dropout, options.project)
    sizes = {options.feature_dim} if options.project else {FLAT[name] for name in spec.modalities}
    if len(sizes) > 1:
        raise ConfigError("model.project: false leaves the image features at 160 and the audio features at 320; "
                          "Eq. 2 and the distillation need one size: keep project: true with both modalities")
    fused = spec.fused_channels(sizes.pop())  # N*F for concat
    head = nn.Sequential(
        nn.Linear(fused, options.head_hidden),
        nn.ReLU(),
        nn.Dropout(options.head_dropout),
        nn.Linear(options.head_hidden, spec.num_outputs),
    )
    return NetworkParts(encoders, head)
