"""Segmenting one case with a trained model, on the case's own grid: what ``mckd predict`` and ``evaluate --data`` share.

The case goes through the steps of ``mckd prepare seg``, by the same code
(:func:`mckd.seg.preprocess.preprocess_case`: the run's plan, MONAI
``Orientation`` and ``Spacing`` to the cache's grid, a crop to the brain's
box, a z-score inside the brain), then the run's ``downsample``, and:

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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mckd.errors import DataError
from mckd.seg.cases import Case
from mckd.seg.grid import GridPlan, to_file_grid
from mckd.seg.preprocess import PreprocessedCase, preprocess_case, uncrop


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
        pre: the case preprocessed (:class:`mckd.seg.preprocess.PreprocessedCase`: plan's grid, box, z-scores).
        inputs: per present sequence, what the model sees ``[1, 1, x, y, z]`` (float32, strided by ``downsample``).
        grid_change: in words: the file's grid, reoriented, or resampled from which spacing.
    """

    pre: PreprocessedCase
    inputs: dict[str, torch.Tensor]
    grid_change: str = ""

    @property
    def case(self) -> Case:
        return self.pre.case

    @property
    def resampled(self) -> bool:
        return self.pre.resampled


@dataclass
class Segmentation:
    """One case segmented: internal labels ``[X, Y, Z]`` (uint8, file grid), probabilities ``[C, X, Y, Z]`` or None."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    sequences: tuple[str, ...]


def no_usable_sequence(case_id: str, has: Sequence[str], takes: Sequence[str]) -> DataError:
    """The one error for a case that has none of the sequences the model takes (or ``--sequences`` chose)."""
    return DataError(f"case {case_id} has none of the sequences the model takes ({', '.join(takes)}); it has "
                     f"{', '.join(has) if has else 'no sequence that is present and non-empty'}")


def run_plan(facts: dict[str, Any]) -> GridPlan:
    """The grid a run's cache was made on (runs before plans: the files' axes at the cache's spacing)."""
    plan = facts.get("plan")
    if plan:
        return GridPlan.from_json(plan)
    step = int(facts.get("downsample", 1))
    return GridPlan("", tuple(float(s) / step for s in facts.get("spacing", (1.0, 1.0, 1.0))))


def run_format_record(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The format record of the data a run was trained on, or {} (:func:`mckd.seg.formats.detect_format`'s ``record``).

    A cache of several sources keeps each one's (``others``), so the run reads
    more folders of any of their kinds.
    """
    plan = facts.get("plan") or {}
    first = dict(plan.get("source_format") or {})
    others = [dict(record) for record in plan.get("other_source_formats") or [] if isinstance(record, Mapping)]
    return {**first, "others": others} if others else first


def prepare_case(case: Case, plan: GridPlan, downsample: int, device: torch.device) -> PreparedCase:
    """The cache's steps on a case read from its files, then the run's ``downsample`` (see the module docstring)."""
    from dataclasses import replace

    pre = preprocess_case(replace(case, labels=None), plan)  # the labels stay on the file's grid, to score there
    pre.case = case
    inputs = {}
    for modality, image in pre.images.items():
        view = image.astype(np.float32)[::downsample, ::downsample, ::downsample]
        inputs[modality] = torch.from_numpy(np.ascontiguousarray(view))[None, None].to(device)  # (1, 1, x, y, z)
    return PreparedCase(pre, inputs, pre.grid_change(plan))


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
    chosen = [m for m in model.modalities if m in sequences and m in prepared.inputs]
    if not chosen:
        raise no_usable_sequence(prepared.case.case_id, list(prepared.inputs), [m for m in model.modalities
                                                                               if m in sequences])
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
    pre = prepared.pre
    probabilities = upsample_strided(probabilities, downsample, pre.crop_shape)[0].numpy()  # (C, *crop)
    background = task.background_probabilities().numpy()
    on_grid = np.stack([uncrop(probabilities[c], pre.box, pre.grid_shape, fill=float(background[c]))
                        for c in range(probabilities.shape[0])])  # (C, *grid)
    case = prepared.case
    on_file = to_file_grid(on_grid, pre.grid_affine, case.affine, case.brain.shape)  # (C, *file)
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


def file_grid_task(loaded: Any) -> Any:
    """A trained run's task with its post-processing threshold on the file's grid (not the downsampled one)."""
    from mckd.tasks import build_task

    return build_task(loaded.config.task, {**loaded.facts, "downsample": 1})
