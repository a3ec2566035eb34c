"""Reading one case from its files, whatever its format: images, labels, brain mask, with the input checks.

A format (:mod:`mckd.seg.formats`) lists each case as a :class:`CaseFiles`:
one file per sequence (or one channel of a 4D file, MSD), the label file and
a brain-mask file where the format has them. :func:`read_case_files` reads
and checks them into a :class:`Case` on the file's own grid: every sequence a
readable NIfTI with finite voxels on the first one's grid, an empty (constant)
sequence treated as missing where allowed, label values mapped onto the
label scheme's internal classes (:mod:`mckd.seg.labels`), and the brain the
mask file's voxels or, without one, the voxels where any sequence differs
from its background (corner) value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.errors import DataError, MckdError
from mckd.seg.labels import LabelScheme


@dataclass
class Volume:
    """A NIfTI volume as read: the array in the file's voxel order, its affine and header."""

    path: Path
    array: np.ndarray
    affine: np.ndarray
    header: Any
    zooms: tuple[float, ...] = field(default=())


def _load_nifti(path: Path, what: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """``(image, array, affine)`` of a NIfTI file, checked: readable, not empty, not too large (before its voxels
    are read), a finite affine, and real values that float32 holds (after the header's scale slope)."""
    import nibabel as nib

    from mckd.bounds import check_size
    from mckd.data.values import check_real
    from mckd.io import file_problem

    problem = file_problem(path)
    if problem:
        raise DataError(f"{path} ({what}) {problem}")
    try:
        with warnings.catch_warnings():  # a damaged header makes NumPy warn before nibabel fails or we check it
            warnings.simplefilter("ignore", RuntimeWarning)
            image = nib.load(str(path))
            if 0 in tuple(image.shape):
                raise DataError(f"{path} ({what}) has shape {tuple(image.shape)}: an empty volume; expected a 3D "
                                "volume with voxels")
            try:
                check_size("voxels", tuple(image.shape), image.get_data_dtype().itemsize, f"{path} ({what})")
            except MckdError as error:
                raise DataError(str(error)) from None
            affine = np.asarray(image.affine, dtype=np.float64)
            array = np.asanyarray(image.dataobj)
    except DataError:
        raise
    except Exception as error:  # nibabel raises many types for bad files (EOFError, zlib.error, ImageFileError...)
        raise DataError(
            f"{path} ({what}) is not a readable NIfTI file ({type(error).__name__}: {' '.join(str(error).split())[:160]}); "
            "it may be truncated or corrupt: download or extract it again"
        ) from None
    check_affine(affine, path, what)
    slope = float(getattr(image.dataobj, "slope", 1.0))  # nibabel applies the header's scl_slope as it reads
    check_real(array, f"{path} ({what})", f" (its header's scale slope scl_slope is {slope:g})" if slope != 1.0 else "")
    return image, array, affine


def check_affine(affine: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    """A NIfTI affine must be finite (a damaged header's NaN would fail deep inside a resampling)."""
    if not np.isfinite(affine).all():
        raise DataError(f"{path} ({what}) has NaN or Inf in its affine (voxel-to-world matrix) "
                        f"{affine.round(3).tolist()}; its header is damaged: fix or re-export the file")
    return affine


def read_nifti(path: Path, what: str = "image") -> Volume:
    """Read a 3D NIfTI file; an unreadable or truncated file or a non-3D one is a :class:`DataError`."""
    path = Path(path)
    image, array, affine = _load_nifti(path, what)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path} ({what}) has shape {array.shape}; expected a 3D volume")
    return Volume(path, array, affine, image.header, tuple(float(z) for z in image.header.get_zooms()[:3]))


def read_nifti_4d(path: Path, what: str = "image") -> Volume:
    """Read a 4D NIfTI file ``(X, Y, Z, C)`` (a 3D one is read as one channel); errors and checks as :func:`read_nifti`."""
    path = Path(path)
    image, array, affine = _load_nifti(path, what)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{path} ({what}) has shape {array.shape}; expected a 4D volume (X, Y, Z, channels)")
    return Volume(path, array, affine, image.header, tuple(float(z) for z in image.header.get_zooms()[:3]))


def check_finite(volume: Volume) -> None:
    if volume.array.dtype.kind == "f":
        bad = ~np.isfinite(volume.array)
        if bad.any():
            raise DataError(f"{volume.path} holds {int(bad.sum())} NaN or Inf voxels; expected finite intensities")


def check_same_grid(reference: Volume, other: Volume) -> None:
    """Shape and affine must match the case's first volume."""
    if other.array.shape != reference.array.shape:
        raise DataError(f"{other.path} has shape {other.array.shape} but {reference.path.name} has "
                        f"{reference.array.shape}; every file of a case must be on one voxel grid")
    if not np.allclose(other.affine, reference.affine, atol=1e-3):
        raise DataError(f"{other.path} has affine {other.affine.round(3).tolist()} but {reference.path.name} has "
                        f"{reference.affine.round(3).tolist()}; every file of a case must be on one voxel grid "
                        "(register or resample them first)")


@dataclass(frozen=True)
class ImageFile:
    """One sequence's voxels: a 3D NIfTI file, or one channel of a 4D one (``channel`` >= 0; MSD)."""

    path: str
    channel: int = -1

    def __str__(self) -> str:
        return self.path if self.channel < 0 else f"{self.path}[channel {self.channel}]"


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's files are, whatever the format.

    Attributes:
        case_id: the case's name (its folder, or the file name's stem).
        images: modality -> its file; a modality the case lacks is absent.
        label: the label file ("" when there is none).
        mask: a brain / foreground mask file ("": the voxels where a sequence differs from its background).
        absent: modalities the format expects but the case lacks (reported, and treated as missing).
    """

    case_id: str
    images: dict[str, ImageFile]
    label: str = ""
    mask: str = ""
    absent: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from mckd.io import name_problem

        problem = name_problem(self.case_id)  # it names the case's cache folder and its predictions' files
        if problem:
            where = next(iter(self.images.values())).path if self.images else self.label
            raise DataError(f"case id {self.case_id!r} (of {where}) {problem}")


@dataclass
class Case:
    """One case as read and checked; images in file voxel order."""

    case_id: str
    images: dict[str, np.ndarray]  # present sequences only, float32
    missing: list[str]  # sequences absent or empty (treated as missing)
    labels: np.ndarray | None  # internal labels, uint8, or None when the layout has no labels
    brain: np.ndarray  # bool brain mask
    affine: np.ndarray
    zooms: tuple[float, ...]
    files: dict[str, str]
    warnings: list[str]
    shape: tuple[int, ...] = ()  # the file grid's shape


def background_value(array: np.ndarray) -> float:
    """The intensity outside the head: the value at the volume's corner (0 for raw BraTS, -3.2 for z-scored 2013 data)."""
    return float(array[0, 0, 0])


def brain_mask(images: list[np.ndarray]) -> np.ndarray:
    """Voxels where any sequence differs from its background (corner) value."""
    brain = np.zeros(images[0].shape, dtype=bool)
    for image in images:
        brain |= image != background_value(image)
    return brain


def _read_image(image: ImageFile, what: str, opened: dict[str, Volume]) -> Volume:
    """One sequence as a 3D :class:`Volume` (a 4D file is read once per case and cut into channels)."""
    if image.channel < 0:
        return read_nifti(Path(image.path), what)
    if image.path not in opened:
        opened[image.path] = read_nifti_4d(Path(image.path), what)
    whole = opened[image.path]
    if image.channel >= whole.array.shape[3]:
        raise DataError(f"{image.path} has {whole.array.shape[3]} channels; the dataset description names channel "
                        f"{image.channel} ({what}); expected at least {image.channel + 1}")
    return Volume(whole.path, whole.array[..., image.channel], whole.affine, whole.header, whole.zooms)


def read_case_files(files: CaseFiles, modalities: Sequence[str], scheme: LabelScheme | None,
                    allow_missing: bool = False, need_labels: bool = True,
                    on_empty: str = "; pass --allow-missing to treat empty sequences as missing") -> Case:
    """Read one case and check it (whatever its format).

    Checks: every sequence's file is a readable NIfTI with finite voxels, is
    not empty (all one value: treated as missing with ``allow_missing``, an
    error otherwise), and shares the first file's shape and affine; the label
    file holds only the scheme's values; the mask is on the same grid.
    """
    images: dict[str, np.ndarray] = {}
    volumes: list[Volume] = []
    missing: list[str] = []
    paths: dict[str, str] = {}
    warnings: list[str] = []
    opened: dict[str, Volume] = {}
    for modality in modalities:
        image = files.images.get(modality)
        if image is None:
            missing.append(modality)
            warnings.append(f"case {files.case_id}: no {modality} file; treated as missing")
            continue
        volume = _read_image(image, f"{modality} sequence of case {files.case_id}", opened)
        check_finite(volume)
        if volumes:
            check_same_grid(volumes[0], volume)
        volumes.append(volume)
        flat = volume.array
        if flat.size == 0 or np.all(flat == flat.flat[0]):
            message = f"{image} ({modality}) is empty: every voxel is {float(flat.flat[0]) if flat.size else 'absent'}"
            if not allow_missing:
                raise DataError(message + on_empty)
            missing.append(modality)
            warnings.append(message + "; treated as missing")
            continue
        images[modality] = np.asarray(volume.array, dtype=np.float32)
        paths[modality] = str(image)
    if not images:
        raise DataError(f"case {files.case_id}: none of the sequences {list(modalities)} is present and non-empty")
    reference = volumes[0]
    labels = None
    if files.label and need_labels and scheme is not None:
        label_volume = read_nifti(Path(files.label), f"label map of case {files.case_id}")
        check_same_grid(reference, label_volume)
        labels = scheme.to_internal(label_volume.array, files.label)
        paths["label"] = files.label
    if files.mask:
        mask_volume = read_nifti(Path(files.mask), f"brain mask of case {files.case_id}")
        check_same_grid(reference, mask_volume)
        brain = np.asarray(mask_volume.array) > 0.5
        paths["mask"] = files.mask
        if not brain.any():
            raise DataError(f"{files.mask} (brain mask) is empty: no voxel above 0.5; give the case's brain mask, or "
                            "leave the mask out to use the voxels that differ from the background")
    else:
        brain = brain_mask(list(images.values()))
    if not brain.any():
        raise DataError(f"case {files.case_id}: the brain mask is empty; expected head voxels")
    return Case(files.case_id, images, missing, labels, brain, reference.affine, reference.zooms, paths, warnings,
                tuple(reference.array.shape))
