"""What the five segmentation peers (U-HVED, Robust-MSeg, mmFormer, RFNet, GSS) share.

Each peer runs on the network the config names (``model.name: unet3d``): its
encoder, copied once per modality with fresh weights as the peers' authors
all give every MRI sequence its own encoder (:func:`separate_encoders`), and
a decoder built here from the same MONAI blocks and widths as the unet3d
decoder (:class:`UNetPath3D`: transposed convolution, concatenation with
the skip, two 3x3x3 convolutions with instance norm and leaky ReLU, a
1x1x1 output convolution). What makes each peer is its fusion, its extra
modules and its losses, in its own file.

Differences from the authors' code that every peer shares (each file lists its own):

- **network**: the encoders are copies of the config's network encoder
  (``unet3d``: MONAI blocks, strided convolutions, instance norm) with fresh
  weights, not the authors' own (residual, pre-activation or reflection-padded
  encoders of 8 to 128 channels); the decoder path is unet3d's (transposed
  convolutions) where theirs upsample and convolve;
- **loss**: every segmentation output (fused, auxiliary, deep supervision)
  is scored by the task's loss (mckd's BraTS head: sigmoid ET, TC, WT with
  Dice + BCE), not softmax (weighted) cross-entropy + Dice over classes;
- **missing modalities in training**: the config's ``missing.policy``, the
  same for every method of a comparison (the authors draw one of the 15
  subsets per sample, or keep each modality with probability 1/2, or draw
  ``k`` then ``k`` modalities);
- **optimiser**: ``optimizer: published`` (the default) is the authors' Adam
  settings (``published_adam``) under the config's schedule and number of
  iterations; ``optimizer: config`` is the ``train:`` section's, as every
  other method;
- **what auxiliary losses read**: ``auxiliary: available`` (the default)
  reads every modality the sample has, as the authors' code does with its
  complete training cases (the drop masks the fusion only); ``kept`` reads
  only what the iteration kept. The fused prediction reads only the kept
  modalities either way, and a modality the data lack is never read.

Also here: the 1x1x1 deep-supervision heads (:class:`DeepSupervision`), the
modalities an auxiliary loss may read (:func:`auxiliary_modalities`), the
task loss of a per-modality decoder over the samples that have the
modality (:func:`per_modality_loss`), and :class:`SegmentationPeer`, the
base class that trains the method's parts with the model under one
optimiser (the config's, or the authors' Adam settings) and counts
iterations for losses that start part-way through training.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.method.base import Batch, Optimization, TrainingMethod
from mckd.method.model import ModelSpec, MultiModalModel

NORM = "instance"


def check_volumes(spec: ModelSpec, method: str) -> None:
    """A :class:`ConfigError` unless every modality is a 1-channel 3D volume ``[1, X, Y, Z]`` of one shape."""
    shapes = {tuple(shape) for shape in spec.input_shapes.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[0] != 1:
        raise ConfigError(f"method {method!r} segments 1-channel 3D volumes of one shape [1, X, Y, Z]; the data "
                          f"give {dict(spec.input_shapes)}")
    if len(spec.feature_shapes) < 2:
        raise ConfigError(f"method {method!r} needs an encoder with several levels (a U-Net); "
                          f"this network gives {len(spec.feature_shapes)}")


def separate_encoders(model: MultiModalModel) -> dict[str, nn.Module]:
    """One encoder per modality: the network's own when it has one per modality, else fresh copies of the shared one."""
    if model.encoders is not None:
        return {name: model.encoders[name] for name in model.modalities}
    shared = model.shared_encoder
    assert shared is not None
    encoders = {}
    for name in model.modalities:
        clone = copy.deepcopy(shared)
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        encoders[name] = clone
    return encoders


def conv_block(channels_in: int, channels_out: int, kernel_size: int = 3, prenorm: bool = False) -> nn.Sequential:
    """The peers' convolution unit: convolution, instance norm, leaky ReLU (0.2); ``prenorm``: norm, ReLU, convolution.

    ``[P, channels_in, *S]`` -> ``[P, channels_out, *S]`` (RFNet's ``general_conv3d``, mmFormer's pre-norm one).
    """
    conv = nn.Conv3d(channels_in, channels_out, kernel_size, padding=kernel_size // 2)
    if prenorm:
        return nn.Sequential(nn.InstanceNorm3d(channels_in, affine=True), nn.LeakyReLU(0.2), conv)
    return nn.Sequential(conv, nn.InstanceNorm3d(channels_out, affine=True), nn.LeakyReLU(0.2))


class UNetPath3D(nn.Module):
    """The U-Net path up from the bottleneck (mckd's unet3d decoder, without its fusion projections).

    Levels ``[B, widths[l], *S_l]`` (``S_l`` halving with ``l``; the last is the
    bottleneck) -> logits ``[B, out_channels, *S_0]``. ``up[i]`` is the step
    from level ``L-1-i`` to level ``L-2-i``: ``up[i].transp_conv`` doubles the
    size and maps to that level's width, ``up[i].conv_block`` reads the
    concatenation with the skip (RFNet interleaves its fusion between the two).
    """

    def __init__(self, widths: Sequence[int], out_channels: int) -> None:
        from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetUpBlock  # here: `mckd list` never loads MONAI

        super().__init__()
        self.widths = list(widths)
        self.up = nn.ModuleList(
            UnetUpBlock(3, self.widths[l + 1], self.widths[l], kernel_size=3, stride=1, upsample_kernel_size=2,
                        norm_name=NORM)
            for l in reversed(range(len(self.widths) - 1)))
        self.out = UnetOutBlock(3, self.widths[0], out_channels)

    def features(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's features from the bottleneck up: ``[levels[-1], level L-2 decoded, ..., level 0 decoded]``."""
        x = levels[-1]
        out = [x]
        for up, skip in zip(self.up, reversed(levels[:-1])):
            x = up(x, skip)  # (B, widths[l], *S_l)
            out.append(x)
        return out

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.out(self.features(levels)[-1])  # (B, out_channels, *S_0)


class DeepSupervision(nn.Module):
    """1x1x1 heads on decoder features of coarser levels, upsampled (trilinear) to the full size.

    ``channels``: the features' channels, coarsest first (the decoder's order).
    """

    def __init__(self, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv3d(c, out_channels, kernel_size=1) for c in channels)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
        """Features ``[B, C_k, *S_k]`` -> logits ``[B, out_channels, *size]`` each."""
        return [upsample(head(x), size) for head, x in zip(self.heads, features)]


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, C, *S]`` -> ``[B, C, *size]``, trilinear with aligned corners (the peers' ``nn.Upsample``)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


def auxiliary_modalities(batch: Batch, present: torch.Tensor, which: str) -> torch.Tensor:
    """bool ``[B, N]``: the modalities an auxiliary loss reads.

    ``available``: every modality the sample has (``batch["present"]``), as the
    peers' code reads all four MRI sequences of its complete training cases and
    applies the drop to the fusion only; ``kept``: only those this iteration kept.
    """
    kept = present.to(torch.bool)
    if which == "kept":
        return kept
    data = batch.get("present")
    return kept if data is None else (data.to(device=kept.device, dtype=torch.bool) | kept)


def per_modality_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      predict: Callable[[int, torch.Tensor], torch.Tensor], target: torch.Tensor,
                      available: torch.Tensor) -> torch.Tensor:
    """``sum_n loss(predict(n, rows_n), target[rows_n])`` over modalities, ``rows_n`` the samples that have ``n``.

    ``predict(n, rows)`` gives modality ``n``'s logits for the samples ``rows`` (a LongTensor).
    """
    total = target.new_zeros((), dtype=torch.float32)
    for n in range(available.shape[1]):
        rows = available[:, n].nonzero(as_tuple=True)[0]
        if rows.numel():
            total = total + loss(predict(n, rows), target[rows])
    return total


def modality_levels(levels: Sequence[torch.Tensor], n: int, rows: torch.Tensor) -> list[torch.Tensor]:
    """Modality ``n``'s own encoder levels for the samples ``rows``: ``[B, N, C_l, *S_l]`` -> ``[R, C_l, *S_l]`` each."""
    return [level[rows, n] for level in levels]


class SegmentationPeer(TrainingMethod):
    """The base of the segmentation peers.

    - One optimiser over the model and the method's parts (:attr:`parts`:
      reconstruction or per-modality decoders, deep-supervision heads), all
      trained on the one loss: the config's ``train:`` optimiser, or with
      ``method.optimizer: published`` the authors' Adam (:attr:`published_adam`:
      learning rate, weight decay, AMSGrad) under the config's schedule.
    - The iterations done (restored on resume), so a loss can start part-way
      through the run (:meth:`progress`, a fraction of ``total_iterations``).

    Options read here: ``optimizer`` and ``auxiliary`` (:func:`auxiliary_modalities`).
    """

    published_adam: ClassVar[tuple[float, float, bool]] = (1e-3, 0.0, False)

    def __init__(self, options: Any, modalities: Sequence[str], seed: int) -> None:
        super().__init__(options, modalities, seed)
        self.iterations_done = 0

    def configure_optimizers(self, model: MultiModalModel,
                             default: Callable[[Iterable[nn.Parameter]], Optimization]) -> list[Optimization]:
        params = [*model.parameters(), *self.parts.parameters()]
        optimization = default(params)
        if self.options.optimizer == "published":
            lr, weight_decay, amsgrad = self.published_adam
            optimization.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, amsgrad=amsgrad)
        return [optimization]

    def progress(self) -> float:
        """The fraction of the run's iterations done before this one (1.0 when the total is unknown)."""
        total = self.services.total_iterations if self.services is not None else 0
        return self.iterations_done / total if total > 0 else 1.0

    def auxiliary(self, batch: Batch, present: torch.Tensor) -> torch.Tensor:
        return auxiliary_modalities(batch, present, self.options.auxiliary)

    def after_iteration(self, iteration: int) -> None:
        self.iterations_done = iteration

    def state_dict(self) -> dict[str, Any]:
        return {"iterations_done": self.iterations_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.iterations_done = int(state["iterations_done"])
