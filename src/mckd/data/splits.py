"""Reproducible, stratified train / meta-validation / test splits."""

from __future__ import annotations

import numpy as np

from mckd.errors import DataError


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices by class into three disjoint sets.

    Args:
        labels: ``[S]`` integer class labels.
        fractions: (train, val, test), summing to 1.
        seed: the split's random seed.

    Returns:
        Three sorted index arrays; within each class the counts follow
        ``fractions`` (rounded), so every split keeps the class balance.

    Classes are drawn in the order they first appear among the samples, not in the
    order of their codes: the same samples with the same classes get the same split
    whatever the classes are called (integers sort 2 < 10, their names "10" < "2").
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    distinct, first = np.unique(labels, return_index=True)
    for label in distinct[np.argsort(first)]:  # by first appearance
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        parts[0].extend(members[:n_train])
        parts[1].extend(members[n_train : n_train + n_val])
        parts[2].extend(members[n_train + n_val :])
    train, val, test = (np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    for name, part, fraction in zip(("train", "val", "test"), (train, val, test), fractions):
        if fraction > 0 and len(part) == 0:
            raise DataError(f"the {name} split is empty: {len(labels)} samples are too few for fractions {fractions}")
    return train, val, test


def split_codes(size: int, parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """``int64 [size]``: 0 for the indices of ``parts[0]`` (train), 1 for ``parts[1]`` (val), 2 for ``parts[2]`` (test)."""
    codes = np.full(size, -1, dtype=np.int64)
    for code, part in enumerate(parts):
        codes[np.asarray(part, dtype=np.int64)] = code
    return codes
