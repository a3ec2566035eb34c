"""``mckd predict``: a trained BraTS model on new NIfTI files -> a label map on the input's grid.

The sequences given (any subset of the model's) go through the same steps as
``mckd prepare brats``: a brain mask (given, or the voxels that differ from
the background), a crop to its bounding box, a z-score inside the brain,
the training run's ``downsample``; then sliding-window inference with the
missing sequences marked absent, logits back to full resolution (trilinear),
labels (with the run's post-processing), and the crop undone. The output is
NIfTI with the first input's affine and header, labels in a BraTS convention
(default ``brats2018``: 1 core, 2 oedema, 4 enhancing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from mckd.errors import DataError, MckdError


def load_segmentation_model(checkpoint: str | Path, device: torch.device) -> Any:
    """The trained model of a BraTS segmentation run (:func:`mckd.runs.load_model`); no dataset is read."""
    from mckd.runs import load_model

    loaded = load_model(checkpoint, device)
    config = loaded.config
    if config.task.name != "segmentation" or config.data.name != "brats":
        raise MckdError(f"checkpoint {str(loaded.path)!r} is a {config.task.name} model on {config.data.name!r}; "
                        "mckd predict needs a BraTS segmentation run")
    return loaded


@torch.no_grad()
def predict_labels(
    loaded: Any,
    images: Mapping[str, np.ndarray],
    brain: np.ndarray | None,
    spacing: tuple[float, ...],
    device: torch.device,
) -> np.ndarray:
    """Internal labels (uint8, the input grid) from raw images ``{modality: [X, Y, Z]}`` on one grid."""
    from mckd.data.brats import data_facts
    from mckd.data.brats_cache import bounding_box, crop, uncrop, zscore_in_brain
    from mckd.data.brats_layout import brain_mask
    from mckd.tasks import build_task

    model, config = loaded.model, loaded.config
    options = config.data.options
    unknown = [m for m in images if m not in model.modalities]
    if unknown or not images:
        raise DataError(f"sequences {unknown or '(none)'} given; this model takes a subset of {list(model.modalities)}")
    if brain is None:
        brain = brain_mask(list(images.values()))
    if not brain.any():
        raise DataError("the brain mask is empty: every input is all background")
    box = bounding_box(brain)
    cropped_brain = crop(brain, box)
    shape = tuple(b - a for a, b in box)
    step = options.downsample
    inputs, present = [], []
    for modality in model.modalities:
        if modality in images:
            normalised, _, _ = zscore_in_brain(crop(images[modality], box), cropped_brain, modality)
            normalised = normalised.astype(np.float16).astype(np.float32)  # as the cache stores it
            view = normalised[::step, ::step, ::step]
            inputs.append(torch.from_numpy(np.ascontiguousarray(view))[None, None].to(device))  # (1, 1, x, y, z)
            present.append(True)
        else:
            present.append(False)
    template = next(t for t in inputs)
    inputs = iter(inputs)
    batch = [next(inputs) if p else torch.zeros_like(template) for p in present]
    mask = torch.tensor([present], dtype=torch.bool, device=device)  # (1, N)
    facts = {**loaded.facts, **data_facts(options, spacing),
             "downsample": 1}  # post-processing is applied after upsampling, on the input grid
    task = build_task(config.task, facts)
    logits = task.infer(lambda xs, pr: model(xs, pr).prediction, batch, mask)  # (1, C, x, y, z)
    if step > 1:
        logits = F.interpolate(logits, size=shape, mode="trilinear", align_corners=False)  # (1, C, *shape)
    labels = task.to_labels(logits)[0].cpu().numpy().astype(np.uint8)  # (*shape)
    return uncrop(labels, box, brain.shape)


def predict_files(
    checkpoint: str | Path,
    inputs: Mapping[str, str | Path],
    out: str | Path,
    device: str = "auto",
    mask: str | Path | None = None,
    convention: str = "brats2018",
    force: bool = False,
) -> Path:
    """Segment the NIfTI ``inputs`` (``{modality: path}``) with a trained run and write ``out``."""
    from mckd.data.brats_cache import write_nifti_like
    from mckd.data.brats_layout import LABEL_CONVENTIONS, check_finite, check_same_grid, read_nifti, to_convention

    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"{out} exists; pass --force to overwrite it")
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise DataError(f"output {out} must end in .nii.gz or .nii")
    if convention not in LABEL_CONVENTIONS:
        raise DataError(f"label convention {convention!r} is not one of {sorted(LABEL_CONVENTIONS)}")
    if not inputs:
        raise DataError("give at least one sequence, e.g. --flair case_flair.nii.gz")
    from mckd.distributed import resolve_device

    torch_device = resolve_device(device)
    loaded = load_segmentation_model(checkpoint, torch_device)
    model = loaded.model
    unknown = [m for m in inputs if m not in model.modalities]
    if unknown:
        raise DataError(f"this model takes {list(model.modalities)}; {unknown} are not among them")
    volumes = {}
    for modality, path in inputs.items():
        volume = read_nifti(Path(path), f"{modality} sequence")
        check_finite(volume)
        if volumes:
            check_same_grid(next(iter(volumes.values())), volume)
        if np.all(volume.array == volume.array.flat[0]):
            raise DataError(f"{path} ({modality}) is empty (every voxel {float(volume.array.flat[0])}); "
                            "leave it out to predict without that sequence")
        volumes[modality] = volume
    first = next(iter(volumes.values()))
    brain = None
    if mask is not None:
        mask_volume = read_nifti(Path(mask), "brain mask")
        check_same_grid(first, mask_volume)
        brain = np.asarray(mask_volume.array) > 0.5
        if not brain.any():
            raise DataError(f"{mask} (brain mask) is empty: no voxel above 0.5; give the case's brain mask, or "
                            "leave --mask out to use the voxels that differ from the background")
    images = {m: np.asarray(v.array, dtype=np.float32) for m, v in volumes.items()}
    labels = predict_labels(loaded, images, brain, first.zooms, torch_device)
    return write_nifti_like(to_convention(labels, convention), first.path, out, force=force)
