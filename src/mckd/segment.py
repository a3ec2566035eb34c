"""Segmenting one case with a trained model, on the case's own grid: what ``mckd predict`` and ``evaluate --data`` share.

The case goes through the same steps as ``mckd prepare seg`` (the run's
plan: MONAI ``Orientation`` and ``Spacing`` to the cache's grid, a crop to the
brain's box, a z-score inside the brain, the run's ``downsample``), then:

1. sliding-window inference from the chosen sequences (the others marked
   absent), optionally averaged over the 8 mirrorings of the three axes
   (``tta``, as nnU-Net's test-time mirroring);
2. probabilities (sigmoid per region, softmax over classes) upsampled to the
   crop (trilinear, aligned with the strided grid the model saw), put back
   into the plan's grid (background outside the crop) and resampled onto the
   file's grid (MONAI ``SpatialResample`` to the file's affine and shape);
3. labels (regions decoded in the declared order, or arg-max), set to
   background outside the brain / foreground mask, then post-processing:
   connected components (``min_component_voxels``, ``largest_component``)
   and the small-ET rule (``et_min_voxels``), all on the file's grid.

So the output lies on the input's grid, voxel for voxel, whatever its
spacing and orientation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mckd.data.brats_cache import bounding_box, crop, uncrop, zscore_in_brain
from mckd.data.brats_layout import Case
from mckd.data.grid import GridPlan, same_grid, spacing_of, to_file_grid, to_plan_grid
from mckd.errors import DataError


@dataclass(frozen=True)
class SegmentOptions:
    """How a case is segmented beyond the run's own settings.

    Attributes:
        tta: average over the 8 mirrorings of the three axes (8x the inference time).
        et_min_voxels: an ET prediction under this many voxels of the file's grid becomes the region around
            it (BraTS: core); None: the run's ``task.et_min_voxels``; 0: off.
        min_component_voxels: remove connected components of the foreground (26-connected) smaller than this.
        largest_component: keep only the largest connected component of the foreground.
        probabilities: also return the probabilities on the file's grid.
    """

    tta: bool = False
    et_min_voxels: int | None = None
    min_component_voxels: int = 0
    largest_component: bool = False
    probabilities: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"tta": "8 mirrorings (every combination of the 3 axes)" if self.tta else "off",
                "et_min_voxels": self.et_min_voxels, "min_component_voxels": self.min_component_voxels,
                "largest_component": self.largest_component, "probabilities": self.probabilities}


@dataclass
class PreparedCase:
    """A case on the model's grid, ready to be segmented from any subset of its sequences.

    Attributes:
        case: the case as read (file grid).
        inputs: per present sequence, the z-scored volume the model sees ``[1, 1, x, y, z]``.
        box: the brain's box on the plan's grid; ``crop_shape`` its size.
        grid_affine, grid_shape: the plan's grid of this case.
        resampled: whether the plan's voxel size differs from the file's (an input at another spacing).
        grid_change: in words: the file's grid, reoriented, or resampled from which spacing.
    """

    case: Case
    inputs: dict[str, torch.Tensor]
    box: list[list[int]]
    crop_shape: tuple[int, ...]
    grid_affine: np.ndarray
    grid_shape: tuple[int, ...]
    resampled: bool
    grid_change: str = ""


@dataclass
class Segmentation:
    """One case segmented: internal labels ``[X, Y, Z]`` (uint8, file grid), probabilities ``[C, X, Y, Z]`` or None."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    sequences: tuple[str, ...]


def run_plan(facts: dict[str, Any]) -> GridPlan:
    """The grid a run's cache was made on (runs before plans: the files' axes at the cache's spacing)."""
    plan = facts.get("plan")
    if plan:
        return GridPlan.from_json(plan)
    step = int(facts.get("downsample", 1))
    return GridPlan("", tuple(float(s) / step for s in facts.get("spacing", (1.0, 1.0, 1.0))))


def prepare_case(case: Case, plan: GridPlan, downsample: int, device: torch.device) -> PreparedCase:
    """The cache's steps on a case read from its files (see the module docstring)."""
    images, grid_affine = {}, case.affine
    for modality, image in case.images.items():
        images[modality], grid_affine = to_plan_grid(image, case.affine, plan, "bilinear")
    brain, grid_affine = to_plan_grid(case.brain.astype(np.uint8), case.affine, plan, "nearest")
    brain = brain.astype(bool)
    if not brain.any():
        raise DataError(f"case {case.case_id}: the brain mask is empty on the run's grid ({plan.describe()})")
    box = bounding_box(brain)
    cropped_brain = crop(brain, box)
    inputs = {}
    for modality, image in images.items():
        normalised, _, _ = zscore_in_brain(crop(image, box), cropped_brain, f"case {case.case_id} {modality}")
        normalised = normalised.astype(np.float16).astype(np.float32)  # as the cache stores it
        view = normalised[::downsample, ::downsample, ::downsample]
        inputs[modality] = torch.from_numpy(np.ascontiguousarray(view))[None, None].to(device)  # (1, 1, x, y, z)
    file_spacing, grid_spacing = sorted(spacing_of(case.affine)), sorted(spacing_of(grid_affine))
    resampled = not np.allclose(file_spacing, grid_spacing, atol=1e-3)
    if resampled:
        change = (f"resampled from {'x'.join(f'{v:g}' for v in spacing_of(case.affine))} mm to "
                  f"{'x'.join(f'{v:g}' for v in spacing_of(grid_affine))} mm")
    elif same_grid(grid_affine, brain.shape, case.affine, case.brain.shape):
        change = "the file's own"
    else:
        change = f"reoriented to {plan.orientation}"
    return PreparedCase(case, inputs, box, tuple(b - a for a, b in box), grid_affine, tuple(brain.shape), resampled,
                        change)


def mirrorings(tta: bool) -> list[tuple[int, ...]]:
    """The flips of the spatial axes (2, 3, 4 of ``[B, C, X, Y, Z]``) to average over: all 8, or none."""
    if not tta:
        return [()]
    return [axes for size in range(4) for axes in itertools.combinations((2, 3, 4), size)]


def upsample_strided(values: torch.Tensor, step: int, shape: Sequence[int]) -> torch.Tensor:
    """``[B, C, *s]`` sampled at every ``step``-th voxel -> ``[B, C, *shape]``, trilinear, voxel ``j`` at ``j * step``.

    Interpolates between the samples the model saw (``align_corners``) and
    repeats the last one over the few voxels past it.
    """
    if step == 1:
        return values
    inner = [(n - 1) * step + 1 for n in values.shape[2:]]
    out = F.interpolate(values, size=inner, mode="trilinear", align_corners=True) if any(
        n > 1 for n in values.shape[2:]) else values.expand(*values.shape[:2], *inner)
    pad = []
    for have, want in zip(reversed(inner), reversed(list(shape))):
        pad += [0, max(0, want - have)]
    out = F.pad(out, pad, mode="replicate")
    return out[(..., *[slice(0, s) for s in shape])]


def remove_small_components(labels: np.ndarray, min_voxels: int, largest_only: bool) -> np.ndarray:
    """Foreground components (26-connected) under ``min_voxels``, or all but the largest, set to background."""
    if min_voxels <= 0 and not largest_only:
        return labels
    from scipy import ndimage

    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = sizes >= max(min_voxels, 1)
    if largest_only:
        keep &= np.arange(len(sizes)) == int(sizes.argmax())
    keep[0] = False
    out = labels.copy()
    out[~keep[components]] = 0
    return out


@torch.no_grad()
def segment_prepared(model: Any, task: Any, prepared: PreparedCase, sequences: Sequence[str], downsample: int,
                     options: SegmentOptions = SegmentOptions()) -> Segmentation:
    """Segment a prepared case from ``sequences`` (a non-empty subset of what it has and the model takes)."""
    chosen = [m for m in model.modalities if m in sequences]
    if not chosen or any(m not in prepared.inputs for m in chosen):
        raise DataError(f"case {prepared.case.case_id}: sequences {list(sequences)} are not among the ones it has "
                        f"({', '.join(prepared.inputs)}) and the model takes ({', '.join(model.modalities)})")
    template = prepared.inputs[chosen[0]]
    batch = [prepared.inputs[m] if m in chosen else torch.zeros_like(template) for m in model.modalities]
    present = torch.tensor([[m in chosen for m in model.modalities]], dtype=torch.bool, device=template.device)
    total = None
    passes = mirrorings(options.tta)
    for axes in passes:
        inputs = [torch.flip(x, axes) for x in batch] if axes else batch
        probabilities = task.probabilities(task.infer(lambda xs, pr: model(xs, pr).prediction, inputs, present))
        probabilities = torch.flip(probabilities, axes) if axes else probabilities
        total = probabilities if total is None else total + probabilities
    probabilities = (total / len(passes)).cpu()  # (1, C, x, y, z)
    probabilities = upsample_strided(probabilities, downsample, prepared.crop_shape)[0].numpy()  # (C, *crop)
    background = task.background_probabilities().numpy()
    on_grid = np.stack([uncrop(probabilities[c], prepared.box, prepared.grid_shape, fill=float(background[c]))
                        for c in range(probabilities.shape[0])])  # (C, *grid)
    case = prepared.case
    on_file = to_file_grid(on_grid, prepared.grid_affine, case.affine, case.brain.shape)  # (C, *file)
    labels = task.labels_from_probabilities(torch.from_numpy(on_file)[None], postprocess=False)[0].numpy()
    labels[~case.brain] = 0
    labels = remove_small_components(labels, options.min_component_voxels, options.largest_component)
    threshold = options.et_min_voxels
    labels = task.postprocess(torch.from_numpy(labels)[None], threshold)[0].numpy().astype(np.uint8)
    kept = None
    if options.probabilities:
        kept = on_file.astype(np.float32)
        kept[:, ~case.brain] = background[:, None]
    return Segmentation(labels, kept, tuple(chosen))


def case_spacing(case: Case) -> tuple[float, ...]:
    """The file grid's voxel size in mm (from its affine)."""
    return spacing_of(case.affine)


def file_grid_task(loaded: Any) -> Any:
    """A trained run's task with its post-processing threshold on the file's grid (not the downsampled one)."""
    from mckd.tasks import build_task

    return build_task(loaded.config.task, {**loaded.facts, "downsample": 1})
