"""What every case goes through before a model sees it, in ``mckd prepare seg`` and in inference alike.

1. the plan's grid (:mod:`mckd.seg.grid`: MONAI ``Orientation`` and
   ``Spacing``; images trilinear, labels and brain nearest);
2. a crop to the brain's bounding box;
3. a z-score of each sequence inside the brain (0 outside), stored as
   float16 (what the cache keeps, and what inference rounds to, so a case
   predicted from its files sees the values the model trained on).

:func:`preprocess_case` does all three; the cache writes its result
(:mod:`mckd.seg.cache`) and :mod:`mckd.seg.segment` feeds it to the model
(then strides it by the run's ``downsample``). :func:`uncrop` and the grid's
way back undo steps 2 and 1 for a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from mckd.errors import DataError
from mckd.seg.cases import Case
from mckd.seg.grid import GridPlan, spacing_of, to_plan_grid


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """``[[start, stop], ...]`` per axis of the ``True`` voxels (stop exclusive)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop(array: np.ndarray, box: Sequence[Sequence[int]]) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


def uncrop(cropped: np.ndarray, box: Sequence[Sequence[int]], shape: Sequence[int], fill: Any = 0) -> np.ndarray:
    """Put an array on the cropped grid back into a volume of the original ``shape``."""
    expected = tuple(b - a for a, b in box)
    if tuple(cropped.shape) != expected:
        raise DataError(f"uncrop: array has shape {tuple(cropped.shape)}, the crop box {list(box)} has {expected}")
    out = np.full(tuple(shape), fill, dtype=cropped.dtype)
    out[tuple(slice(a, b) for a, b in box)] = cropped
    return out


def zscore_in_brain(image: np.ndarray, brain: np.ndarray, name: str) -> tuple[np.ndarray, float, float]:
    """``(image - mean) / std`` over the brain voxels, 0 outside; returns (float32 array, mean, std)."""
    values = image[brain].astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    if std < 1e-8:
        raise DataError(f"{name}: constant inside the brain (value {mean}); cannot z-score it")
    out = ((image - mean) / std).astype(np.float32)
    out[~brain] = 0.0
    return out, mean, std


def to_plan(case: Case, plan: GridPlan) -> Case:
    """The case on the plan's grid (images trilinear, labels and brain nearest)."""
    images = {}
    grid_affine = case.affine
    for modality, image in case.images.items():
        images[modality], grid_affine = to_plan_grid(image, case.affine, plan, "bilinear")
    brain, grid_affine = to_plan_grid(case.brain.astype(np.uint8), case.affine, plan, "nearest")
    labels = None
    if case.labels is not None:
        labels, _ = to_plan_grid(case.labels, case.affine, plan, "nearest")
    moved = replace(case, images=images, labels=labels, brain=brain.astype(bool), affine=grid_affine,
                    zooms=spacing_of(grid_affine), shape=tuple(brain.shape))
    if not moved.brain.any():
        raise DataError(f"case {case.case_id}: the brain mask is empty on the {plan.describe()} grid")
    return moved


@dataclass
class PreprocessedCase:
    """A case on the plan's grid, cropped to the brain's box, z-scored.

    Attributes:
        case: as read, on its file's grid.
        images: per present sequence, float16 ``[x, y, z]`` z-scores inside the brain, 0 outside.
        labels: uint8 internal classes ``[x, y, z]``, or None.
        brain: bool ``[x, y, z]``.
        box: the brain's box on the plan's grid (``[[start, stop]] * 3``).
        grid_affine, grid_shape: the plan's grid of this case.
        zscore: per sequence, the mean and standard deviation inside the brain.
    """

    case: Case
    images: dict[str, np.ndarray]
    labels: np.ndarray | None
    brain: np.ndarray
    box: list[list[int]]
    grid_affine: np.ndarray
    grid_shape: tuple[int, ...]
    zscore: dict[str, dict[str, float]]

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)

    @property
    def resampled(self) -> bool:
        """Whether the plan's voxel size differs from the file's (not only a reorientation)."""
        return not np.allclose(sorted(spacing_of(self.case.affine)), sorted(spacing_of(self.grid_affine)), atol=1e-3)

    def grid_change(self, plan: GridPlan) -> str:
        """In words: the file's own grid, reoriented, or resampled from which spacing."""
        from mckd.seg.grid import same_grid

        if self.resampled:
            return (f"resampled from {'x'.join(f'{v:g}' for v in spacing_of(self.case.affine))} mm to "
                    f"{'x'.join(f'{v:g}' for v in spacing_of(self.grid_affine))} mm")
        if same_grid(self.grid_affine, self.grid_shape, self.case.affine, self.case.brain.shape):
            return "the file's own"
        return f"reoriented to {plan.orientation}"


def preprocess_case(case: Case, plan: GridPlan | None = None) -> PreprocessedCase:
    """Put the case on the plan's grid, crop it to the brain's box, z-score each sequence inside the brain.

    Args:
        case: as read, on its file's grid.
        plan: the grid (None: the file's own, as version 1 caches did).
    """
    on_grid = to_plan(case, plan) if plan is not None else case
    box = bounding_box(on_grid.brain)
    brain = crop(on_grid.brain, box)
    images, stats = {}, {}
    for modality, image in on_grid.images.items():
        normalised, mean, std = zscore_in_brain(crop(image, box), brain, f"case {case.case_id} {modality}")
        if np.abs(normalised).max() > 60000:
            raise DataError(f"case {case.case_id} {modality}: z-scores beyond float16 range; check the image")
        images[modality] = normalised.astype(np.float16)
        stats[modality] = {"mean": mean, "std": std}
    labels = crop(on_grid.labels, box).astype(np.uint8) if on_grid.labels is not None else None
    return PreprocessedCase(case, images, labels, brain, box, np.asarray(on_grid.affine, dtype=np.float64),
                            tuple(on_grid.brain.shape), stats)
