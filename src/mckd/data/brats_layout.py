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
from typing import Any

import numpy as np

from mckd.errors import DataError

REGIONS = ("ET", "TC", "WT")  # order of region channels and metric columns

# Internal labels (BraTS 2023 convention).
NECROSIS, EDEMA, ENHANCING = 1, 2, 3
INTERNAL_LABELS = (0, NECROSIS, EDEMA, ENHANCING)

# Label convention -> {file label: internal label}. Values outside a convention's keys are an error.
LABEL_CONVENTIONS: dict[str, dict[int, int]] = {
    # BraTS 2017-2021: 1 necrotic and non-enhancing core, 2 oedema, 4 enhancing
    "brats2018": {0: 0, 1: NECROSIS, 2: EDEMA, 4: ENHANCING},
    # BraTS 2023: 1 necrotic core, 2 oedema, 3 enhancing
    "brats2023": {0: 0, 1: NECROSIS, 2: EDEMA, 3: ENHANCING},
    # BraTS 2012-2016: 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing (3 joins the core)
    "brats2013": {0: 0, 1: NECROSIS, 2: EDEMA, 3: NECROSIS, 4: ENHANCING},
}

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
        labels: the label convention, a key of :data:`LABEL_CONVENTIONS`.
        cases: glob of case folders under the source folder.
    """

    name: str
    sequences: dict[str, str]
    label: str = ""
    mask: str = ""
    labels: str = "brats2018"
    cases: str = "*"

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.sequences)


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
    known = {"sequences", "label", "mask", "labels", "cases"}
    if not isinstance(raw, dict) or not isinstance(raw.get("sequences"), dict) or not raw["sequences"]:
        raise DataError(f"layout file {spec!r} must be a mapping with 'sequences: {{modality: file pattern}}'")
    unknown = set(raw) - known
    if unknown:
        raise DataError(f"layout file {spec!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    labels = str(raw.get("labels", "brats2018"))
    if labels not in LABEL_CONVENTIONS:
        raise DataError(f"layout file {spec!r}: labels {labels!r} is not one of {sorted(LABEL_CONVENTIONS)}")
    sequences = {str(k): str(v) for k, v in raw["sequences"].items()}
    return Layout(path.stem, sequences, str(raw.get("label", "") or ""), str(raw.get("mask", "") or ""),
                  labels, str(raw.get("cases", "*")))


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


def read_nifti(path: Path, what: str = "image") -> Volume:
    """Read a 3D NIfTI file; an unreadable or truncated file or a non-3D one is a :class:`DataError`."""
    import nibabel as nib

    import warnings

    from mckd.io import file_problem

    path = Path(path)
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
            affine = np.asarray(image.affine, dtype=np.float64)
            array = np.asanyarray(image.dataobj)
    except DataError:
        raise
    except Exception as error:  # nibabel raises many types for bad files (EOFError, zlib.error, ImageFileError...)
        raise DataError(
            f"{path} ({what}) is not a readable NIfTI file ({type(error).__name__}: {error}); "
            "it may be truncated or corrupt: download or extract it again"
        ) from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path} ({what}) has shape {array.shape}; expected a 3D volume")
    if not np.isfinite(affine).all():
        raise DataError(f"{path} ({what}) has NaN or Inf in its affine (voxel-to-world matrix) "
                        f"{affine.round(3).tolist()}; its header is damaged: fix or re-export the file")
    return Volume(path, array, affine, image.header,
                  tuple(float(z) for z in image.header.get_zooms()[:3]))


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


def convert_labels(array: np.ndarray, convention: str, path: Path | str = "label map") -> np.ndarray:
    """File labels of ``convention`` -> internal labels (uint8: 0, 1 core, 2 oedema, 3 enhancing).

    Values that are not integers or not in the convention are a :class:`DataError`.
    """
    mapping = LABEL_CONVENTIONS[convention]
    values, counts = np.unique(array, return_counts=True)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            odd = [float(v) for v in values if not np.isfinite(v) or v != round(float(v))][:5]
            raise DataError(f"{path}: label map holds non-integer values {odd}; expected {sorted(mapping)}")
    unexpected = {int(v): int(c) for v, c in zip(values, counts) if int(v) not in mapping}
    if unexpected:
        raise DataError(
            f"{path}: label values {sorted(unexpected)} ({sum(unexpected.values())} voxels) are not in the "
            f"{convention} convention, which has {sorted(mapping)}; is the layout's label convention right "
            f"({', '.join(sorted(LABEL_CONVENTIONS))})?"
        )
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[array.astype(np.int64)]


def labels_to_regions(labels: np.ndarray) -> np.ndarray:
    """Internal labels ``[*S]`` -> bool regions ``[3, *S]`` in the order ET, TC, WT."""
    et = labels == ENHANCING
    tc = et | (labels == NECROSIS)
    wt = labels > 0
    return np.stack([et, tc, wt])


def to_convention(labels: np.ndarray, convention: str) -> np.ndarray:
    """Internal labels -> the label values of ``convention`` (for writing predictions)."""
    inverse: dict[int, int] = {}
    for source, target in LABEL_CONVENTIONS[convention].items():
        inverse.setdefault(target, source)  # brats2013: core -> 1 (necrosis)
    lookup = np.zeros(4, dtype=np.uint8)
    for target, source in inverse.items():
        lookup[target] = source
    return lookup[labels]


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


def background_value(array: np.ndarray) -> float:
    """The intensity outside the head: the value at the volume's corner (0 for raw BraTS, -3.2 for z-scored 2013 data)."""
    return float(array[0, 0, 0])


def read_case(case: Path, layout: Layout, allow_missing: bool = False, need_labels: bool = True) -> Case:
    """Read one case folder and check it.

    Checks: every sequence file exists (or ``allow_missing``), is a readable 3D
    NIfTI with finite voxels, is not empty (all one value: treated as missing
    with ``allow_missing``, an error otherwise), and shares the first file's
    shape and affine; the label file exists and holds only the convention's labels.
    """
    images: dict[str, np.ndarray] = {}
    volumes: list[Volume] = []
    missing: list[str] = []
    files: dict[str, str] = {}
    warnings: list[str] = []
    for modality, pattern in layout.sequences.items():
        path = find_file(case, pattern, required=not allow_missing, what=f"{modality!r} sequence")
        if path is None:
            missing.append(modality)
            warnings.append(f"case {case.name}: no {modality} file; treated as missing")
            continue
        volume = read_nifti(path, f"{modality} sequence of case {case.name}")
        check_finite(volume)
        if volumes:
            check_same_grid(volumes[0], volume)
        volumes.append(volume)
        flat = volume.array
        if flat.size == 0 or np.all(flat == flat.flat[0]):
            message = f"{path} ({modality}) is empty: every voxel is {float(flat.flat[0]) if flat.size else 'absent'}"
            if not allow_missing:
                raise DataError(message + "; pass --allow-missing to treat empty sequences as missing")
            missing.append(modality)
            warnings.append(message + "; treated as missing")
            continue
        images[modality] = np.asarray(volume.array, dtype=np.float32)
        files[modality] = str(path)
    if not images:
        raise DataError(f"case {case.name}: none of the sequences {list(layout.sequences)} is present and non-empty")
    reference = volumes[0]
    labels = None
    if layout.label and need_labels:
        label_path = find_file(case, layout.label, what="label")
        assert label_path is not None
        label_volume = read_nifti(label_path, f"label map of case {case.name}")
        check_same_grid(reference, label_volume)
        labels = convert_labels(label_volume.array, layout.labels, label_path)
        files["label"] = str(label_path)
    if layout.mask:
        mask_path = find_file(case, layout.mask, what="brain mask")
        assert mask_path is not None
        mask_volume = read_nifti(mask_path, f"brain mask of case {case.name}")
        check_same_grid(reference, mask_volume)
        brain = np.asarray(mask_volume.array) > 0.5
        files["mask"] = str(mask_path)
    else:
        brain = brain_mask(list(images.values()))
    if not brain.any():
        raise DataError(f"case {case.name}: the brain mask is empty; expected head voxels")
    return Case(case.name, images, missing, labels, brain, reference.affine, reference.zooms, files, warnings)


def brain_mask(images: list[np.ndarray]) -> np.ndarray:
    """Voxels where any sequence differs from its background (corner) value."""
    brain = np.zeros(images[0].shape, dtype=bool)
    for image in images:
        brain |= image != background_value(image)
    return brain
