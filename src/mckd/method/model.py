"""The multi-modal model: encoders (Eq. 1), filling (Eq. 2), fusion and decoder (Eq. 3).

``y_hat = D(concat_i f_i)`` with ``f_i = E_i(x_i)`` for present modalities and
``f_n`` filled by Eq. 2 for missing ones. Encoders run only on what is
present: with one shared encoder, the present (sample, modality) pairs are
gathered into one batch; with one encoder per modality, each encoder sees only
the samples where its modality is present. Missing inputs are never read.

An encoder may return one tensor or a list of tensors (one per level, as a
U-Net encoder does for its skip connections); every level is filled and
fused, and distillation uses one chosen level (the last by default: the
bottleneck, or the layer before the fully connected head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from mckd.errors import MckdError, MissingModalityError
from mckd.method.fusion import FILLS, FUSIONS, Fill, Fusion


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        prediction: the decoder's output (logits), ``[B, ...]``.
        features: ``[B, N, *F]`` features at the distillation level, before
            filling (entries of missing modalities are zero).
        levels: every encoder level, each ``[B, N, *F_l]``, before filling.
        extras: what a variant model adds (ShaSpec: shared and specific
            features, domain logits), by name; empty for the MCKD model.
    """

    prediction: torch.Tensor
    features: torch.Tensor
    levels: list[torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MultiModalModel(nn.Module):
    """Encoders + Eq. 2 filling + fusion + decoder, for any number of modalities.

    Args:
        modalities: names in the fixed order of ``inputs`` (length N).
        encoder: one module shared by all modalities (inputs of the same shape),
            or a mapping from each modality name to its own encoder. Each maps
            ``[P, *X]`` to ``[P, *F]`` or to a list of per-level tensors.
        decoder: maps the fused features (a tensor, or a list when the encoder
            returns levels) to the prediction.
        fill: a registered fill (:data:`mckd.method.fusion.FILLS`: ``"mean"``, Eq. 2;
            ``"zero"``) or a :class:`~mckd.method.fusion.Fill` module.
        fusion: a registered fusion (:data:`mckd.method.fusion.FUSIONS`: ``"concat"``, Eq. 3;
            ``"hemis"``, mean and variance over the present modalities) or a
            :class:`~mckd.method.fusion.Fusion` module.
        distill_level: which encoder level the distillation uses (default -1, the last).
        feature_channels: ``C_l`` of every encoder level, for a fill or fusion built
            by name that has parameters (:func:`mckd.build.build_model` measures them).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        encoder: nn.Module | Mapping[str, nn.Module],
        decoder: nn.Module,
        fill: str | Fill = "mean",
        fusion: str | Fusion = "concat",
        distill_level: int = -1,
        feature_channels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        if isinstance(fill, str) and fill not in FILLS:
            raise ValueError(f"fill must be one of {sorted(FILLS)}, got {fill!r}")
        if isinstance(fusion, str) and fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, got {fusion!r}")
        if isinstance(encoder, Mapping):
            missing = set(self.modalities) - set(encoder)
            extra = set(encoder) - set(self.modalities)
            if missing or extra:
                raise ValueError(
                    f"encoders are named {sorted(encoder)}; expected exactly {list(self.modalities)}"
                )
            self.encoders = nn.ModuleDict({m: encoder[m] for m in self.modalities})
            self.shared_encoder = None
        else:
            self.encoders = None
            self.shared_encoder = encoder
        self.decoder = decoder
        n, channels = len(self.modalities), tuple(feature_channels)
        self.fill_module = FILLS[fill](n, channels) if isinstance(fill, str) else fill
        self.fusion_module = FUSIONS[fusion](n, channels) if isinstance(fusion, str) else fusion
        self.fill = fill if isinstance(fill, str) else _registered_name(fill, FILLS)  # the name a config gives
        self.fusion = fusion if isinstance(fusion, str) else _registered_name(fusion, FUSIONS)
        self.distill_level = distill_level

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def _check(self, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> None:
        n = self.num_modalities
        if len(inputs) != n:
            raise ValueError(f"expected {n} inputs ({', '.join(self.modalities)}), got {len(inputs)}")
        if present.dim() != 2 or present.shape[1] != n:
            raise ValueError(f"present must be bool [B, {n}], got shape {tuple(present.shape)}")
        empty = ~present.to(torch.bool).any(dim=1)  # (B,)
        if bool(empty.any()):  # with zero filling or HeMIS fusion such a sample would pass silently
            raise MissingModalityError(
                f"sample(s) {empty.nonzero().flatten().tolist()[:5]} of the batch have no modality present; "
                f"every sample needs at least one of {list(self.modalities)}"
            )

    def encode(self, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Encode the present modalities only.

        Args:
            inputs: N tensors, each ``[B, *X_n]``; rows of missing modalities are not read.
            present: bool ``[B, N]``.

        Returns:
            One tensor per encoder level, each ``[B, N, *F_l]``, zero where missing.
        """
        self._check(inputs, present)
        present = present.to(torch.bool)
        batch = present.shape[0]
        if self.shared_encoder is not None:
            stacked = torch.stack(list(inputs), dim=1)  # (B, N, *X)
            gathered = stacked[present]  # (P, *X): only the present pairs
            levels = _as_levels(self.shared_encoder(gathered))
            out = []
            for level in levels:  # level: (P, *F)
                full = level.new_zeros((batch, self.num_modalities) + tuple(level.shape[1:]))
                full[present] = level  # (B, N, *F)
                out.append(full)
            return out
        per_modality: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        for n, name in enumerate(self.modalities):
            rows = present[:, n].nonzero(as_tuple=True)[0]  # (P_n,)
            if rows.numel() > 0:
                per_modality[n] = (rows, _as_levels(self.encoders[name](inputs[n][rows])))
        if not per_modality:
            raise MissingModalityError("encode: no modality is present in any sample")
        template = next(iter(per_modality.values()))[1]
        out = [t.new_zeros((batch, self.num_modalities) + tuple(t.shape[1:])) for t in template]
        for n, (rows, levels) in per_modality.items():
            for full, level in zip(out, levels):
                if level.shape[1:] != full.shape[2:]:
                    raise ValueError(
                        f"encoder of {self.modalities[n]!r} gives features {tuple(level.shape[1:])}; "
                        f"another gives {tuple(full.shape[2:])}: all must project to one shape"
                    )
                full[rows, n] = level  # (P_n, *F) into (B, N, *F)
        return out

    def fuse(
        self,
        levels: list[torch.Tensor],
        present: torch.Tensor,
        feature_scale: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Fill missing features (Eq. 2), optionally scale by ``w``, and fuse.

        Args:
            levels: each ``[B, N, *F_l]``.
            present: bool ``[B, N]``.
            feature_scale: optional ``[N]``; the meta step passes the normalised
                importance weights here, giving ``D(concat_i w_i * f_i)``.

        Returns:
            One fused tensor per level, ``[B, fused_channels(fusion, N, C_l), *S_l]``.
        """
        fused = []
        for index, level in enumerate(levels):
            filled = self.fill_module(level, present, index)  # (B, N, *F)
            if feature_scale is not None:
                shape = (1, self.num_modalities) + (1,) * (filled.dim() - 2)
                filled = filled * feature_scale.reshape(shape).to(filled.dtype)
            fused.append(self.fusion_module(filled, present, index))  # (B, C_fused, *S)
        return fused

    def decode(self, fused: list[torch.Tensor]) -> torch.Tensor:
        """Run the decoder on one fused tensor, or on the list of levels."""
        return self.decoder(fused[0] if len(fused) == 1 else fused)

    def forward(
        self,
        inputs: Sequence[torch.Tensor],
        present: torch.Tensor,
        feature_scale: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Full forward pass; see :class:`ModelOutput` for the shapes."""
        levels = self.encode(inputs, present)
        prediction = self.decode(self.fuse(levels, present, feature_scale))
        return ModelOutput(prediction=prediction, features=levels[self.distill_level], levels=levels)


@dataclass(frozen=True)
class ModelSpec:
    """What a training method is told about the network it wraps (:meth:`TrainingMethod.wrap_model`).

    Attributes:
        modalities: names, in the model's order (length N).
        input_shapes: per modality, one sample's input shape (``(D,)``, ``(C, H, W)``, ``(1, X, Y, Z)``).
        num_outputs: channels of the prediction (the task's classes or segmentation channels).
        feature_shapes: per encoder level, one modality's feature shape ``(C_l, *S_l)`` at ``input_shapes``
            (spatial sizes change with the input's for convolutional encoders).
        distill_level: the level that distillation uses (``features`` of :class:`ModelOutput`).
        fill, fusion: the names of the model's fill and fusion.
    """

    modalities: tuple[str, ...]
    input_shapes: Mapping[str, tuple[int, ...]]
    num_outputs: int
    feature_shapes: tuple[tuple[int, ...], ...]
    distill_level: int = -1
    fill: str = "mean"
    fusion: str = "concat"

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """``C_l`` of every encoder level."""
        return tuple(shape[0] for shape in self.feature_shapes)


@torch.no_grad()
def encoder_feature_shapes(encoder: nn.Module | Mapping[str, nn.Module], modalities: Sequence[str],
                           input_shapes: Mapping[str, Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Per encoder level, one modality's feature shape ``(C_l, *S_l)``: one sample of zeros through the encoder.

    The encoder runs in eval mode (no running statistics move, no random draws) and is put back as it was.
    """
    name = modalities[0]
    module = encoder[name] if isinstance(encoder, (Mapping, nn.ModuleDict)) else encoder
    was_training = module.training
    module.eval()
    shape = (1,) + tuple(input_shapes[name])
    try:
        levels = _as_levels(module(torch.zeros(shape)))
    except Exception as error:  # noqa: BLE001 - any failure of a network's code, named
        raise MckdError(f"the encoder of {name!r} fails on one sample of shape {shape}: {type(error).__name__}: "
                        f"{' '.join(str(error).split())[:200]}") from None
    finally:
        module.train(was_training)
    return tuple(tuple(int(size) for size in level.shape[1:]) for level in levels)


def model_spec(model: MultiModalModel, input_shapes: Mapping[str, Sequence[int]], num_outputs: int = 0) -> ModelSpec:
    """The :class:`ModelSpec` of a model made by hand (its encoders measured on ``input_shapes``)."""
    encoder = model.shared_encoder if model.shared_encoder is not None else model.encoders
    shapes = encoder_feature_shapes(encoder, model.modalities, input_shapes)
    return ModelSpec(model.modalities, {m: tuple(input_shapes[m]) for m in model.modalities}, num_outputs, shapes,
                     model.distill_level, model.fill, model.fusion)


@torch.no_grad()
def check_fusion_channels(model: MultiModalModel, spec: ModelSpec) -> None:
    """The fusion gives, at every level, the channels its ``output_channels`` promised (the decoder was sized by them).

    Raises:
        MckdError: naming the fusion, the level and both numbers.
    """
    fusion = model.fusion_module
    n = len(spec.modalities)
    was_training = fusion.training
    fusion.eval()
    try:
        for level, shape in enumerate(spec.feature_shapes):
            try:
                out = fusion(torch.zeros((1, n) + tuple(shape)), torch.ones(1, n, dtype=torch.bool), level)
            except (RuntimeError, ValueError, IndexError) as error:  # made for other features (3D maps, not vectors)
                reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
                raise MckdError(f"fusion {model.fusion!r} cannot fuse this network's features ({n} modalities of "
                                f"shape {tuple(shape)} at encoder level {level}): {reason}; choose another "
                                "model.fusion (mckd list says what each fuses)") from None
            promised = type(fusion).output_channels(n, shape[0])
            if out.dim() < 2 or out.shape[1] != promised:
                raise MckdError(f"fusion {model.fusion!r} gives {tuple(out.shape)} at encoder level {level} for "
                                f"{n} modalities of {shape[0]} channels, but its output_channels({n}, {shape[0]}) "
                                f"says {promised}: the decoder was sized by output_channels")
    finally:
        fusion.train(was_training)


def _registered_name(module: nn.Module, registered: Mapping[str, type]) -> str:
    """The name ``module``'s class is registered under, or the class's own name."""
    return next((name for name, cls in registered.items() if type(module) is cls), type(module).__name__)


def _as_levels(encoded: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [encoded] if isinstance(encoded, torch.Tensor) else list(encoded)
