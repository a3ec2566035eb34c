"""Reading BraTS cases from NIfTI files: layouts, label conventions, input checks.

A *layout* says where a case's files are: one file pattern per MRI sequence
(the modality names), one for the label map, optionally one for a brain mask,
and the label convention of the label files. Three are built in:

- ``brats2018`` (BraTS 2017-2021): ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``
  (``.nii`` too), labels 0/1/2/4 (4 = enhancing tumour);
- ``brats2023``: ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``, labels 0/1/2/3
  (3 = enhancing tumour); the sequences are named ``flair, t1, t1ce, t2`` here
  so models trained on either release use the same names;
- any other layout from a small YAML mapping (see :func:`load_layout`), e.g.
  ``configs/brats2013_layout.yaml`` for the DeepMedic-named BraTS 2013 cases.

Every label convention is mapped to one internal convention, the BraTS 2023
one: 0 background, 1 necrotic / non-enhancing tumour core, 2 oedema,
3 enhancing tumour. The BraTS regions are then ET = {3}, TC = {1, 3},
WT = {1, 2, 3}.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.data.labels import CONVENTIONS, LabelScheme, convention, from_nnunet_labels
from mckd.errors import DataError, MckdError

REGIONS = ("ET", "TC", "WT")  # order of region channels and metric columns

# Internal labels (BraTS 2023 convention).
NECROSIS, EDEMA, ENHANCING = 1, 2, 3
INTERNAL_LABELS = (0, NECROSIS, EDEMA, ENHANCING)

# Label convention -> {file label: internal label} (the conventions of :mod:`mckd.data.labels`).
LABEL_CONVENTIONS: dict[str, dict[int, int]] = {name: dict(scheme.source) for name, scheme in CONVENTIONS.items()}

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Layout:
    """Where a case's files are and what its labels mean.

    Attributes:
        name: the layout's name (for messages and the cache's record).
        sequences: modality name -> file pattern relative to the case folder;
            ``{case}`` is the case folder's name; glob characters are allowed;
            a ``.nii.gz`` pattern also matches ``.nii`` and the other way round.
        label: pattern of the label file ("" when there are no labels).
        mask: pattern of a brain-mask file ("" to use the voxels where any
            sequence differs from its background value).
        labels: the label convention, a key of :data:`LABEL_CONVENTIONS`, or ``declared``
            when the layout file declares its labels itself (``scheme``).
        cases: glob of case folders under the source folder.
        scheme: the labels a layout file declares in nnU-Net's notation (``labels: {name: value}``).
    """

    name: str
    sequences: dict[str, str]
    label: str = ""
    mask: str = ""
    labels: str = "brats2018"
    cases: str = "*"
    scheme: LabelScheme | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.sequences)

    @property
    def label_scheme(self) -> LabelScheme:
        """What the label files' values mean."""
        return self.scheme if self.scheme is not None else convention(self.labels)


BUILTIN_LAYOUTS: dict[str, Layout] = {
    "brats2018": Layout(
        "brats2018",
        {m: f"{{case}}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")},
        label="{case}_seg.nii.gz",
        labels="brats2018",
    ),
    "brats2023": Layout(
        "brats2023",
        {"flair": "{case}-t2f.nii.gz", "t1": "{case}-t1n.nii.gz", "t1ce": "{case}-t1c.nii.gz", "t2": "{case}-t2w.nii.gz"},
        label="{case}-seg.nii.gz",
        labels="brats2023",
    ),
}


def load_layout(spec: str) -> Layout:
    """A built-in layout by name, or a layout from a YAML mapping file.

    The file holds::

        sequences:            # modality name -> file pattern in a case folder
          flair: Flair_subtrMeanDivStd.nii.gz
          t1ce: T1c_subtrMeanDivStd.nii.gz
        label: OTMultiClass.nii.gz
        mask: brainmask.nii.gz      # optional
        labels: brats2013           # brats2018 | brats2023 | brats2013
        cases: "brats_*"            # optional glob of case folders (default "*")
    """
    if spec in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[spec]
    path = Path(spec)
    if not path.is_file():
        raise DataError(
            f"layout {spec!r} is neither a built-in layout ({', '.join(BUILTIN_LAYOUTS)}, auto) nor a YAML file"
        )
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())  # YAML errors span several lines; the CLI prints one
        raise DataError(f"layout file {spec!r} is not valid YAML: {reason}") from None
    known = {"sequences", "label", "mask", "labels", "regions_class_order", "cases"}
    if not isinstance(raw, dict) or not isinstance(raw.get("sequences"), dict) or not raw["sequences"]:
        raise DataError(f"layout file {spec!r} must be a mapping with 'sequences: {{modality: file pattern}}'")
    unknown = set(raw) - known
    if unknown:
        raise DataError(f"layout file {spec!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    declared = raw.get("labels", "brats2018")
    scheme = None
    if isinstance(declared, dict):  # the labels themselves, in nnU-Net's notation
        scheme = from_nnunet_labels(declared, raw.get("regions_class_order"), f"layout file {path.name}")
        labels = "declared"
    else:
        labels = str(declared)
        if labels not in LABEL_CONVENTIONS:
            raise DataError(f"layout file {spec!r}: labels {labels!r} is not one of {sorted(LABEL_CONVENTIONS)} "
                            "nor a mapping of label names to values")
    sequences = {str(k): str(v) for k, v in raw["sequences"].items()}
    return Layout(path.stem, sequences, str(raw.get("label", "") or ""), str(raw.get("mask", "") or ""),
                  labels, str(raw.get("cases", "*")), scheme)


def detect_layout(source: Path) -> Layout:
    """Guess a built-in layout from the file names in the first case folder."""
    if not Path(source).is_dir():
        raise DataError(f"BraTS source folder {str(source)!r} does not exist")
    for case in sorted(p for p in Path(source).iterdir() if p.is_dir()):
        names = [p.name for p in case.iterdir()]
        for layout in BUILTIN_LAYOUTS.values():
            pattern = layout.sequences[next(iter(layout.sequences))]
            if find_file(case, pattern, required=False) is not None:
                return layout
        raise DataError(
            f"cannot tell the layout of {source}: case folder {case.name!r} holds {sorted(names)[:8]}, which match "
            f"neither BraTS 2018-2021 (<case>_flair.nii.gz) nor BraTS 2023 (<case>-t2f.nii.gz) names; "
            "pass --layout with a YAML mapping (modality -> file pattern, label convention)"
        )
    raise DataError(f"{source} holds no case folders")


def case_folders(source: Path, layout: Layout) -> list[Path]:
    """The case folders under ``source`` matching the layout's ``cases`` glob, sorted."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"BraTS source folder {str(source)!r} does not exist")
    cases = sorted(p for p in source.glob(layout.cases) if p.is_dir())
    if not cases:
        raise DataError(f"no case folders matching {layout.cases!r} in {source}")
    return cases


def _alternatives(pattern: str) -> list[str]:
    for suffix, other in ((".nii.gz", ".nii"), (".nii", ".nii.gz")):
        if pattern.endswith(suffix):
            return [pattern, pattern[: -len(suffix)] + other]
    return [pattern]


def find_file(case: Path, pattern: str, required: bool = True, what: str = "file") -> Path | None:
    """The one file in ``case`` matching ``pattern`` (``{case}`` filled in, ``.nii``/``.nii.gz`` both tried)."""
    filled = pattern.replace("{case}", case.name)
    for candidate in _alternatives(filled):
        matches = sorted(glob.glob(str(case / candidate)))
        if len(matches) > 1:
            raise DataError(f"case {case.name}: {len(matches)} files match {candidate!r} for the {what}: "
                            f"{[Path(m).name for m in matches]}; the pattern must match one")
        if matches:
            return Path(matches[0])
    if required:
        raise DataError(f"case {case.name}: no {what} file matching {filled!r} in {case} "
                        f"(also tried {_alternatives(filled)[1:] or 'nothing else'})")
    return None


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
    import warnings

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


def convert_labels(array: np.ndarray, labels: str | LabelScheme, path: Path | str = "label map") -> np.ndarray:
    """File labels of a convention (or scheme) -> internal labels (uint8; BraTS: 0, 1 core, 2 oedema, 3 enhancing).

    Values that are not integers or not in the convention are a :class:`DataError`.
    """
    scheme = convention(labels) if isinstance(labels, str) else labels
    return scheme.to_internal(array, path)


def labels_to_regions(labels: np.ndarray) -> np.ndarray:
    """Internal labels ``[*S]`` -> bool regions ``[3, *S]`` in the order ET, TC, WT."""
    et = labels == ENHANCING
    tc = et | (labels == NECROSIS)
    wt = labels > 0
    return np.stack([et, tc, wt])


def to_convention(labels: np.ndarray, labels_of: str | LabelScheme) -> np.ndarray:
    """Internal labels -> the label values of a convention (or scheme), for writing predictions."""
    scheme = convention(labels_of) if isinstance(labels_of, str) else labels_of
    return scheme.to_file_values(labels)


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


def layout_case_files(case: Path, layout: Layout, allow_missing: bool = False, need_labels: bool = True) -> CaseFiles:
    """The files of one case folder of a layout (a missing sequence is an error unless ``allow_missing``)."""
    images: dict[str, ImageFile] = {}
    absent: list[str] = []
    for modality, pattern in layout.sequences.items():
        path = find_file(case, pattern, required=False, what=f"{modality!r} sequence")
        if path is None and not allow_missing:
            filled = pattern.replace("{case}", case.name)
            raise DataError(f"case {case.name}: no {modality!r} sequence file matching {filled!r} in {case} (also "
                            f"tried {_alternatives(filled)[1:] or 'nothing else'}); pass --allow-missing to treat "
                            "absent sequences as missing")
        if path is None:
            absent.append(modality)
        else:
            images[modality] = ImageFile(str(path))
    label = ""
    if layout.label and need_labels:
        found = find_file(case, layout.label, what="label")
        label = str(found)
    mask = str(find_file(case, layout.mask, what="brain mask")) if layout.mask else ""
    return CaseFiles(case.name, images, label, mask, tuple(absent))


def read_nifti_4d(path: Path, what: str = "image") -> Volume:
    """Read a 4D NIfTI file ``(X, Y, Z, C)`` (a 3D one is read as one channel); errors and checks as :func:`read_nifti`."""
    path = Path(path)
    image, array, affine = _load_nifti(path, what)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{path} ({what}) has shape {array.shape}; expected a 4D volume (X, Y, Z, channels)")
    return Volume(path, array, affine, image.header, tuple(float(z) for z in image.header.get_zooms()[:3]))


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


def read_case(case: Path, layout: Layout, allow_missing: bool = False, need_labels: bool = True) -> Case:
    """Read one case folder of a layout and check it (see :func:`read_case_files`).

    Checks: every sequence file exists (or ``allow_missing``), is a readable 3D
    NIfTI with finite voxels, is not empty (all one value: treated as missing
    with ``allow_missing``, an error otherwise), and shares the first file's
    shape and affine; the label file exists and holds only the convention's labels.
    """
    files = layout_case_files(Path(case), layout, allow_missing, need_labels)
    return read_case_files(files, layout.modalities, layout.label_scheme, allow_missing, need_labels)


def brain_mask(images: list[np.ndarray]) -> np.ndarray:
    """Voxels where any sequence differs from its background (corner) value."""
    brain = np.zeros(images[0].shape, dtype=bool)
    for image in images:
        brain |= image != background_value(image)
    return brain
