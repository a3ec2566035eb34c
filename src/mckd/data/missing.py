"""Missing-modality policies for training.

Two kinds:

- per batch, redrawn every iteration: :func:`random_subset` (each sample keeps
  k ~ U{1..K} of the K modalities it has, a random k-subset) and
  :func:`fixed_subset` (every sample keeps the same modalities);
- per sample, drawn once for a run: :func:`availability_mask` (modality n is
  present in exactly ``round(rate_n * S)`` training samples), as in the
  AV-MNIST protocol where only 5-20% of training samples have audio.

All take and return bool ``present`` masks and never leave a sample empty.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from mckd.errors import ConfigError, DataError


def random_subset(present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each sample keeps a random non-empty subset of the modalities it has.

    Args:
        present: bool ``[B, N]``, what each sample has; each row needs a ``True``.
        generator: RNG on ``present``'s device.

    Returns:
        bool ``[B, N]``, a subset of ``present`` per row: the number kept is
        uniform on 1..K_b (K_b = modalities sample b has), then which ones is
        uniform among the K_b-choose-k subsets.
    """
    present = present.to(torch.bool)
    available = present.sum(dim=1)  # (B,)
    if bool((available == 0).any()):
        raise DataError("random_subset: a sample has no modality to keep")
    device = present.device
    uniform = torch.rand(present.shape[0], generator=generator, device=device)
    keep = (uniform * available).floor().long() + 1  # (B,): k ~ U{1..K_b}
    scores = torch.rand(present.shape, generator=generator, device=device)  # (B, N)
    scores = scores.masked_fill(~present, 2.0)  # absent ones rank last
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, N): 0 = smallest score
    return rank < keep.unsqueeze(1)


def fixed_subset(present: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Every sample keeps only the modalities in ``keep`` (bool ``[N]``)."""
    result = present.to(torch.bool) & keep.to(present.device).unsqueeze(0)
    if bool((result.sum(dim=1) == 0).any()):
        raise DataError("fixed_subset: a sample has none of the kept modalities")
    return result


def subset_mask(modalities: Sequence[str], names: Sequence[str], what: str = "missing.subset") -> torch.Tensor:
    """bool ``[N]`` with ``True`` at the named modalities; unknown names are an error."""
    unknown = [name for name in names if name not in modalities]
    if unknown:
        raise ConfigError(f"{what} names {unknown}, which are not modalities of this dataset: {list(modalities)}")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ConfigError(f"{what} names {repeated} more than once; name each modality once")
    return torch.tensor([m in names for m in modalities], dtype=torch.bool)


def availability_mask(
    num_samples: int,
    modalities: Sequence[str],
    rates: Mapping[str, float],
    seed: int,
) -> torch.Tensor:
    """Which training samples have which modality, drawn once.

    Args:
        num_samples: S.
        modalities: the N names.
        rates: modality -> fraction in [0, 1] of samples that have it; modalities
            not named have rate 1.
        seed: RNG seed of the draw.

    Returns:
        bool ``[S, N]``. Modality n is present in exactly ``round(rate_n * S)``
        samples; a sample left with nothing gets one modality back, the one
        with the highest rate, so counts can exceed the target only then.
    """
    unknown = [name for name in rates if name not in modalities]
    if unknown:
        raise ConfigError(f"missing.rates names {unknown}, which are not modalities of this dataset: {list(modalities)}")
    if all(float(rates.get(name, 1.0)) == 0.0 for name in modalities):
        raise ConfigError(f"missing.rates {dict(rates)} leaves every training sample without a modality; a sample "
                          "needs at least one (give one modality a rate above 0)")
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(num_samples, len(modalities), dtype=torch.bool)
    for n, name in enumerate(modalities):
        rate = float(rates.get(name, 1.0))
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"missing.rates.{name} must be in [0, 1], got {rate}")
        count = int(round(rate * num_samples))
        chosen = torch.randperm(num_samples, generator=generator)[:count]
        mask[chosen, n] = True
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        best = max(range(len(modalities)), key=lambda n: float(rates.get(modalities[n], 1.0)))
        mask[empty, best] = True
    return mask


class TrainingDrops:
    """The per-batch part of ``missing.policy`` in training: what each sample of a batch keeps.

    ``random_subset`` redraws a subset per sample and batch from its own
    generator (on the batch's device); ``fixed`` keeps ``missing.subset``;
    ``rates`` and ``none`` keep what the sample has (``rates`` is applied once,
    to the training split, by :func:`mckd.build.build_data`).

    Args:
        policy: ``missing.policy``.
        keep: bool ``[N]``, the kept modalities of ``fixed`` (None otherwise).
        generator: the RNG of ``random_subset``.
    """

    def __init__(self, policy: str, keep: torch.Tensor | None, generator: torch.Generator) -> None:
        self.policy = policy
        self.keep = keep
        self.generator = generator

    def __call__(self, present: torch.Tensor) -> torch.Tensor:
        """bool ``[B, N]`` -> the modalities each sample keeps in this iteration."""
        if self.policy == "random_subset":
            return random_subset(present, self.generator)
        if self.keep is not None:
            return fixed_subset(present, self.keep)
        return present
