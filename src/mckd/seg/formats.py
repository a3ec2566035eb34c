"""The dataset formats users bring, each a registered detector, read into one list of cases (:class:`~mckd.seg.cases.CaseFiles`).

- **nnU-Net v2 raw** (``DatasetXXX_Name/``): ``imagesTr/{case}_{XXXX}{file_ending}``
  (one file per channel, 4 digits), ``labelsTr/{case}{file_ending}``,
  ``imagesTs/``, and ``dataset.json`` with ``channel_names``, ``labels``
  (name -> value, or name -> values for region-based training, with
  ``regions_class_order``), ``numTraining``, ``file_ending``. A folder of
  ``{case}_{XXXX}`` files alone (what ``nnUNetv2_predict -i`` reads) works
  too; its channels are named by the dataset.json beside it or by the run.
- **Medical Segmentation Decathlon** (``TaskXX_Name/``): ``imagesTr/{case}.nii.gz``
  one 4D NIfTI per case ``(X, Y, Z, C)``, ``labelsTr/``, ``imagesTs/``, and
  ``dataset.json`` with ``modality`` (index -> name), ``labels`` (value -> name),
  ``training`` and ``test`` lists. nnU-Net v1's tasks (the same dataset.json,
  channels split into ``{case}_{XXXX}`` files) are read too.
- **BraTS layouts** (a folder of case folders): 2017-2021 names
  ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` and 2023-2024 names
  ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``, or any layout of a YAML file
  (:func:`mckd.seg.layouts.load_layout`). A case folder is recognised from
  any one of its sequence files or its label file, so a case without FLAIR is
  still a BraTS case.

Each named format is registered (:func:`register_format`) with its
description (``mckd list``), how ``--format NAME`` opens a folder, and how
``--format auto`` recognises one; auto tries them in registration order
(described datasets first, then case-folder layouts), then the layout a run
was trained on, then a flat folder of images.

Predictions are named as each format names them: ``{case}{file_ending}``
(nnU-Net, MSD) and ``{case}.nii.gz`` for case-folder layouts (BraTS's
submission name), never a case's own label file.

Sequence names come from the dataset's description; the usual names of the
four MRI sequences are written as BraTS's (``FLAIR``, ``T2f`` -> ``flair``;
``T1w``, ``T1n`` -> ``t1``; ``t1gd``, ``T1c`` -> ``t1ce``; ``T2w`` -> ``t2``), so
a model trained in one format reads the others; any other name is kept
(lower case). Labels come from the description (MSD, nnU-Net), the layout,
or ``--labels``; see :mod:`mckd.seg.labels`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mckd.errors import DataError
from mckd.seg.cases import CaseFiles, ImageFile
from mckd.seg.labels import LabelScheme, declared_names, from_msd_labels, from_nnunet_labels, slug
from mckd.seg.layouts import BUILTIN_LAYOUTS, Layout, case_folders, holds_any_file, layout_case_files, load_layout

DESCRIPTION = "dataset.json"
NIFTI_ENDINGS = (".nii.gz", ".nii")

# The usual names of the four MRI sequences (letters and digits only, lower case) -> BraTS's names.
SEQUENCE_SYNONYMS: dict[str, frozenset[str]] = {
    "flair": frozenset({"flair", "t2f", "t2flair", "flairt2"}),
    "t1": frozenset({"t1", "t1w", "t1n", "t1native"}),
    "t1ce": frozenset({"t1ce", "t1c", "t1gd", "t1wce", "t1post", "t1contrast", "t1wgd"}),
    "t2": frozenset({"t2", "t2w"}),
}

def canonical_sequence(name: str) -> str:
    """A sequence's name in mckd: BraTS's for the usual names of the four MRI sequences, else lower case."""
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    for canonical, names in SEQUENCE_SYNONYMS.items():
        if key in names:
            return canonical
    out = slug(name)
    if not out:
        raise DataError(f"channel name {name!r} has no letters or digits")
    return out


def _strip_nifti(name: str) -> str | None:
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def _label_beside(images: Path, root: Path, case_id: str, ending: str) -> str:
    """A case's label file in the ``labelsTr`` beside its images (or the dataset's), when there is one; else ""."""
    for folder in (images.parent / "labelsTr", root / "labelsTr"):
        path = folder / f"{case_id}{ending}"
        if path.is_file():
            return str(path)
    return ""


def _visible_files(folder: Path) -> list[Path]:
    """Files of ``folder``, sorted, without hidden ones (MSD's archives carry macOS ``._*`` files)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_description(path: Path) -> dict[str, Any]:
    """A ``dataset.json`` mapping; unreadable or not a mapping is a :class:`DataError` naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not a readable JSON file ({error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a {type(value).__name__}; expected a JSON mapping (a dataset description)")
    return value


def channel_modalities(channels: Mapping[str, Any], where: str) -> list[tuple[int, str, str]]:
    """``(index, mckd name, name as declared)`` per channel of a description's ``modality`` / ``channel_names``."""
    try:
        pairs = sorted((int(k), str(v)) for k, v in channels.items())
    except (TypeError, ValueError, AttributeError):
        raise DataError(f"{where}: channels must map indices to names, e.g. {{\"0\": \"FLAIR\"}}; got {channels!r}") from None
    if not pairs or [i for i, _ in pairs] != list(range(len(pairs))):
        raise DataError(f"{where}: channel indices must be 0..N-1, got {[i for i, _ in pairs]}")
    out = [(i, canonical_sequence(name), name) for i, name in pairs]
    names = [m for _, m, _ in out]
    if len(set(names)) != len(names):
        raise DataError(f"{where}: channels {[n for _, _, n in out]} give the names {names}, which repeat; rename "
                        "them in the dataset description")
    return out


@dataclass
class SourceFormat:
    """A dataset in one of the formats, ready to list its cases.

    Attributes:
        kind: ``nnunet``, ``msd``, ``brats2018``, ``brats2023`` or ``layout``.
        root: the folder given.
        title: what was found, for the messages.
        modalities: the sequences, in the description's order.
        channels: modality -> the name the description gives it (with its channel number).
        declared: the labels the description or layout declares (None: a BraTS layout's labels are
            decided from the values found, see :func:`mckd.seg.labels.choose_brats_convention`).
        label_names: file value -> name as the description gives them (to refuse contradicting conventions).
    """

    kind: str
    root: Path
    title: str
    modalities: tuple[str, ...]
    channels: dict[str, str]
    declared: LabelScheme | None = None
    label_names: dict[int, str] = field(default_factory=dict)

    def cases(self, labelled: bool, allow_missing: bool = True) -> list[CaseFiles]:
        """The cases: with their label files (``labelled``) for preparing and evaluating, or every image to predict."""
        raise NotImplementedError

    def output_name(self, case_id: str) -> str:
        """Where a case's prediction goes, relative to the output folder, named as the format names predictions."""
        return f"{case_id}.nii.gz"

    def record(self) -> dict[str, Any]:
        """What the cache and the run keep of the format (to read more data of the same kind)."""
        return {"kind": self.kind, "modalities": list(self.modalities), "channels": dict(self.channels)}

    def files_used(self, cases: Sequence[CaseFiles]) -> dict[Path, str]:
        """Every file the dataset's ``cases`` read (images, labels, masks) and its description, with what it is."""
        used: dict[Path, str] = {}
        description = self.root / DESCRIPTION
        if description.is_file():
            used[description.resolve()] = "the dataset's description"
        for case in cases:
            for modality, image in case.images.items():
                used.setdefault(Path(image.path).resolve(), f"case {case.case_id}'s {modality} image")
            if case.label:
                used[Path(case.label).resolve()] = f"case {case.case_id}'s label file (its ground truth)"
            if case.mask:
                used.setdefault(Path(case.mask).resolve(), f"case {case.case_id}'s brain mask")
        return used


@dataclass
class LayoutFormat(SourceFormat):
    """Case folders in a layout (BraTS 2017-2021, 2023-2024, or a YAML layout)."""

    layout: Layout = field(default_factory=lambda: BUILTIN_LAYOUTS["brats2018"])

    def cases(self, labelled: bool, allow_missing: bool = True) -> list[CaseFiles]:
        folders = case_folders(self.root, self.layout)
        return [layout_case_files(case, self.layout, allow_missing, need_labels=labelled and bool(self.layout.label))
                for case in folders]

    def output_name(self, case_id: str) -> str:
        return f"{case_id}.nii.gz"  # BraTS's submission name: never the case's own label file

    def record(self) -> dict[str, Any]:
        return {**super().record(), "layout": self.layout.to_json()}


@dataclass
class DecathlonFormat(SourceFormat):
    """MSD: one 4D NIfTI per case (or nnU-Net v1's per-channel files), dataset.json with ``modality``."""

    description: dict[str, Any] = field(default_factory=dict)
    images: Path | None = None  # a folder of images to predict (imagesTs, or a flat folder); None: the root's
    split_channels: bool = False  # nnU-Net v1: {case}_{XXXX}.nii.gz per channel

    def _case(self, case_id: str, image: Path, label: str) -> CaseFiles:
        if self.split_channels:
            images = {}
            for index, modality in enumerate(self.modalities):
                path = image.parent / f"{case_id}_{index:04d}.nii.gz"
                if path.is_file():
                    images[modality] = ImageFile(str(path))
            absent = tuple(m for m in self.modalities if m not in images)
            return CaseFiles(case_id, images, label, "", absent)
        return CaseFiles(case_id, {m: ImageFile(str(image), i) for i, m in enumerate(self.modalities)}, label)

    def cases(self, labelled: bool, allow_missing: bool = True) -> list[CaseFiles]:
        if labelled:
            entries = self.description.get("training")
            if not isinstance(entries, list) or not entries:
                raise DataError(f"{self.root / DESCRIPTION} lists no 'training' cases (image and label); "
                                "expected [{\"image\": \"./imagesTr/x.nii.gz\", \"label\": \"./labelsTr/x.nii.gz\"}]")
            out = []
            for entry in entries:
                if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                    raise DataError(f"{self.root / DESCRIPTION}: a 'training' entry is {entry!r}; expected "
                                    "{\"image\": ..., \"label\": ...}")
                image, label = self.root / str(entry["image"]), self.root / str(entry["label"])
                case_id = _strip_nifti(image.name) or image.name
                if not label.is_file():
                    raise DataError(f"case {case_id}: label file {label} (listed in {DESCRIPTION}) does not exist")
                if not self.split_channels and not image.is_file():
                    raise DataError(f"case {case_id}: image {image} (listed in {DESCRIPTION}) does not exist")
                out.append(self._case(case_id, image, str(label)))
            return out
        folder = self.images or (self.root / "imagesTs" if (self.root / "imagesTs").is_dir() else self.root / "imagesTr")
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; expected a folder of images to predict")
        out, seen = [], set()
        for path in _visible_files(folder):
            stem = _strip_nifti(path.name)
            if stem is None:
                continue
            if self.split_channels:
                match = re.fullmatch(r"(.+)_(\d{4})", stem)
                if not match or match.group(1) in seen:
                    continue
                stem = match.group(1)
                seen.add(stem)
            out.append(self._case(stem, path, _label_beside(folder, self.root, stem, ".nii.gz")))
        if not out:
            raise DataError(f"{folder} holds no NIfTI images to predict")
        return out


@dataclass
class NnUNetFormat(SourceFormat):
    """nnU-Net v2 raw: per-channel files ``{case}_{XXXX}{file_ending}``, dataset.json with ``channel_names``."""

    file_ending: str = ".nii.gz"
    images: Path | None = None  # a folder of images to predict; None: the root's imagesTs (else imagesTr)

    def _grouped(self, folder: Path) -> dict[str, dict[str, ImageFile]]:
        pattern = re.compile(r"(.+)_(\d{4})" + re.escape(self.file_ending))
        cases: dict[str, dict[str, ImageFile]] = {}
        for path in _visible_files(folder):
            match = pattern.fullmatch(path.name)
            if not match:
                continue
            index = int(match.group(2))
            if index >= len(self.modalities):
                raise DataError(f"{path}: channel {index:04d}, but the dataset declares {len(self.modalities)} "
                                f"channels ({', '.join(self.channels.values())})")
            cases.setdefault(match.group(1), {})[self.modalities[index]] = ImageFile(str(path))
        return cases

    def _case(self, case_id: str, images: dict[str, ImageFile], label: str) -> CaseFiles:
        ordered = {m: images[m] for m in self.modalities if m in images}
        return CaseFiles(case_id, ordered, label, "", tuple(m for m in self.modalities if m not in images))

    def cases(self, labelled: bool, allow_missing: bool = True) -> list[CaseFiles]:
        if labelled:
            images, labels = self.root / "imagesTr", self.root / "labelsTr"
            for folder in (images, labels):
                if not folder.is_dir():
                    raise DataError(f"{folder} does not exist; an nnU-Net dataset keeps its training cases in "
                                    "imagesTr/ and labelsTr/")
            grouped = self._grouped(images)
            out = []
            for path in _visible_files(labels):
                if not path.name.endswith(self.file_ending):
                    continue
                case_id = path.name[: -len(self.file_ending)]
                if case_id not in grouped:
                    raise DataError(f"label {path} has no image {case_id}_XXXX{self.file_ending} in {images}")
                out.append(self._case(case_id, grouped[case_id], str(path)))
            lacking = sorted(set(grouped) - {c.case_id for c in out})
            if lacking:
                raise DataError(f"{images} has cases without a label in {labels}: {lacking[:5]}")
            if not out:
                raise DataError(f"{labels} holds no label files ending in {self.file_ending}")
            return out
        folder = self.images or (self.root / "imagesTs" if (self.root / "imagesTs").is_dir() else self.root / "imagesTr")
        grouped = self._grouped(folder) if folder.is_dir() else {}
        if not grouped:
            raise DataError(f"{folder} holds no images named {{case}}_{{XXXX}}{self.file_ending}")
        return [self._case(case_id, images, _label_beside(folder, self.root, case_id, self.file_ending))
                for case_id, images in sorted(grouped.items())]

    def output_name(self, case_id: str) -> str:
        return f"{case_id}{self.file_ending}"  # as nnUNetv2_predict names its outputs


# --- reading descriptions --------------------------------------------------------------------------


def _nnunet(root: Path, description: dict[str, Any], where: Path, images: Path | None = None) -> NnUNetFormat:
    channels = channel_modalities(description.get("channel_names") or {}, str(where))
    labels = description.get("labels")
    declared = None
    if labels is not None:
        declared = from_nnunet_labels(labels, description.get("regions_class_order"), str(where))
    ending = str(description.get("file_ending", ".nii.gz"))
    if ending not in NIFTI_ENDINGS:
        raise DataError(f"{where}: file_ending {ending!r}; mckd reads NIfTI only ({', '.join(NIFTI_ENDINGS)})")
    return NnUNetFormat("nnunet", root, f"nnU-Net v2 raw ({where.name}: channel_names, labels, file_ending {ending})",
                        tuple(m for _, m, _ in channels), {m: f"{n} (channel {i:04d})" for i, m, n in channels},
                        declared, declared_names(labels or {}, "nnunet"), ending, images)


def _decathlon(root: Path, description: dict[str, Any], where: Path, images: Path | None = None) -> DecathlonFormat:
    channels = channel_modalities(description.get("modality") or description.get("channel_names") or {}, str(where))
    labels = description.get("labels")
    declared = from_msd_labels(labels, str(where)) if isinstance(labels, dict) else None
    training = description.get("training") or []
    first = Path(root / str(training[0]["image"])) if training and isinstance(training[0], dict) and "image" in training[0] else None
    split = bool(first is not None and not first.is_file()
                 and (first.parent / f"{_strip_nifti(first.name)}_0000.nii.gz").is_file())
    if images is not None and not split:
        split = any(re.fullmatch(r".+_\d{4}", _strip_nifti(p.name) or "") for p in _visible_files(images))
    title = ("nnU-Net v1 task (dataset.json with modality/labels, {case}_{XXXX} files)" if split else
             f"Medical Segmentation Decathlon ({where.name}: modality, labels; one 4D NIfTI per case)")
    return DecathlonFormat("msd", root, title, tuple(m for _, m, _ in channels),
                           {m: f"{n} (channel {i})" for i, m, n in channels}, declared,
                           declared_names(labels or {}, "msd"), description, images, split)


def _from_description(root: Path, where: Path, images: Path | None = None) -> SourceFormat:
    description = read_description(where)
    if "channel_names" in description and "file_ending" in description:
        return _nnunet(root, description, where, images)
    if "modality" in description or "channel_names" in description:
        return _decathlon(root, description, where, images)
    raise DataError(f"{where} has neither 'channel_names' with 'file_ending' (nnU-Net v2) nor 'modality' (MSD); "
                    "expected a dataset description of one of them")


def _layout_format(root: Path, layout: Layout, kind: str) -> LayoutFormat:
    names = {"brats2018": "BraTS 2017-2021 layout (<case>/<case>_flair.nii.gz ...)",
             "brats2023": "BraTS 2023-2024 layout (<case>/<case>-t2f.nii.gz ...)"}
    title = names.get(kind, f"layout {layout.name} (case folders, {', '.join(layout.sequences)})")
    declared = layout.scheme
    if kind == "layout" and declared is None:
        declared = layout.label_scheme  # a layout file names its convention (brats2018 when it says nothing)
    return LayoutFormat(kind, root, title, layout.modalities, {m: p for m, p in layout.sequences.items()}, declared,
                        {}, layout)


def layout_from_record(record: Mapping[str, Any], fallback: LabelScheme | None = None) -> Layout | None:
    """The layout a run's record kept (to read case folders of the same kind), labels included, or None.

    ``fallback``: the labels of runs whose record kept no labels (before
    mckd 0.2): the run's own label scheme, which its cache read from this layout.
    """
    saved = record.get("layout")
    if not isinstance(saved, Mapping):
        return None
    return Layout.from_json(saved, fallback)


def _flat_format(folder: Path, record: Mapping[str, Any] | None, explicit_channels: bool) -> SourceFormat:
    """A folder of images to predict, without a description: nnU-Net's {case}_{XXXX} files or MSD's 4D files.

    The channels are named by the dataset.json of the parent folder (an
    ``imagesTs`` beside its description), else by ``--channels`` or the run.
    """
    files = [p for p in _visible_files(folder) if _strip_nifti(p.name) is not None]
    if not files:
        raise DataError(f"{folder} holds no case folders and no NIfTI files; expected one of the formats of `mckd list`")
    if not explicit_channels and (folder.parent / DESCRIPTION).is_file():
        return _from_description(folder.parent, folder.parent / DESCRIPTION, images=folder)
    split = all(re.fullmatch(r".+_\d{4}", _strip_nifti(p.name) or "") for p in files)
    # the run's channel order names the channels only if it was trained on channels (MSD, nnU-Net) or told them
    told = explicit_channels or (record or {}).get("kind") in ("msd", "nnunet")
    channels = list((record or {}).get("modalities") or []) if told else []
    if not channels:
        raise DataError(f"{folder} holds images but no {DESCRIPTION} beside it names their channels; put the "
                        "dataset.json in its parent folder or pass --channels NAME,NAME,... (in channel order)")
    names = {m: f"{m} (channel {i})" for i, m in enumerate(channels)}
    if split:
        ending = ".nii.gz" if files[0].name.endswith(".nii.gz") else ".nii"
        return NnUNetFormat("nnunet", folder, f"a folder of nnU-Net {{case}}_{{XXXX}}{ending} files", tuple(channels),
                            names, None, {}, ending, folder)
    return DecathlonFormat("msd", folder, "a folder of 4D NIfTI images (MSD)", tuple(channels), names, None, {}, {},
                           folder, False)


# --- the registry of formats -----------------------------------------------------------------------


@dataclass(frozen=True)
class FormatEntry:
    """A named format: what ``mckd list`` says, how ``--format NAME`` opens a folder, how auto recognises one.

    Attributes:
        name: the ``--format`` name.
        description: one line for ``mckd list``.
        open: (folder, the run's record or None) -> the format (``--format NAME``); a :class:`DataError`
            when the folder is not one.
        recognise: folder -> the format, or None when the folder is not recognisably one (auto).
    """

    name: str
    description: str
    open: Callable[[Path, Mapping[str, Any] | None], SourceFormat]
    recognise: Callable[[Path], SourceFormat | None]


FORMATS: dict[str, FormatEntry] = {}  # in the order auto tries them


def register_format(name: str, description: str, recognise: Callable[[Path], SourceFormat | None]) -> Callable:
    """Register ``open`` (the decorated function) as format ``name``, recognised by ``recognise``."""

    def decorate(open_folder: Callable[..., SourceFormat]) -> Callable[..., SourceFormat]:
        FORMATS[name] = FormatEntry(name, description, open_folder, recognise)
        return open_folder

    return decorate


def _open_described(kind: str) -> Callable[..., SourceFormat]:
    def open_folder(root: Path, record: Mapping[str, Any] | None = None) -> SourceFormat:
        description = root / DESCRIPTION
        if description.is_file():
            found = _from_description(root, description)
            if found.kind != kind:
                raise DataError(f"{description} describes a {found.kind} dataset, not {kind}")
            return found
        flat = _flat_format(root, record, bool(record and record.get("told")))
        if flat.kind != kind:
            raise DataError(f"{root} looks like a {flat.kind} folder, not {kind}")
        return flat
    return open_folder


def _recognise_described(kind: str) -> Callable[[Path], SourceFormat | None]:
    def recognise(root: Path) -> SourceFormat | None:
        description = root / DESCRIPTION
        if not description.is_file():
            return None
        found = _from_description(root, description)
        return found if found.kind == kind else None
    return recognise


def _case_folders_of(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _recognise_layout(name: str) -> Callable[[Path], SourceFormat | None]:
    """Case folders of a built-in layout: a case holding any of its sequence files or its label file."""

    def recognise(root: Path) -> SourceFormat | None:
        if (root / DESCRIPTION).is_file():
            return None
        layout = BUILTIN_LAYOUTS[name]
        folders = _case_folders_of(root)
        if any(holds_any_file(case, layout) for case in folders[:3]):
            return _layout_format(root, layout, name)
        # BraTS 2018-2019 ship HGG/ and LGG/ folders of case folders: the cases are one level down
        nested = [c for group in folders[:3] for c in sorted(group.iterdir())[:2] if c.is_dir()]
        if nested and all(holds_any_file(c, layout) for c in nested):
            return _layout_format(root, replace(layout, cases="*/*"), name)
        return None

    return recognise


def _open_layout(name: str) -> Callable[..., SourceFormat]:
    def open_folder(root: Path, record: Mapping[str, Any] | None = None) -> SourceFormat:
        return _recognise_layout(name)(root) or _layout_format(root, BUILTIN_LAYOUTS[name], name)
    return open_folder


register_format("nnunet", "nnU-Net v2 raw: dataset.json with channel_names/labels/file_ending, "
                "imagesTr/{case}_{XXXX}.nii.gz, labelsTr/ (region-based labels too); a folder of {case}_{XXXX} "
                "files to predict", _recognise_described("nnunet"))(_open_described("nnunet"))
register_format("msd", "Medical Segmentation Decathlon: dataset.json with modality/labels/training, one 4D NIfTI "
                "per case (nnU-Net v1 tasks with {case}_{XXXX} files too); a folder of 4D files to predict",
                _recognise_described("msd"))(_open_described("msd"))
register_format("brats2018", "BraTS 2017-2021 case folders: <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz "
                "(recognised from any one of them)", _recognise_layout("brats2018"))(_open_layout("brats2018"))
register_format("brats2023", "BraTS 2023-2024 case folders: <case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz "
                "(recognised from any one of them)", _recognise_layout("brats2023"))(_open_layout("brats2023"))

LAYOUT_FILE = ("FILE.yaml", "a layout file: sequence -> file pattern in each case folder, label, mask, labels "
                            "(e.g. configs/brats2013_layout.yaml)")


def format_descriptions() -> list[tuple[str, str]]:
    """``(name, description)`` of every format ``--format`` takes, for ``mckd list``."""
    return [(entry.name, entry.description) for entry in FORMATS.values()] + [LAYOUT_FILE]


def detect_format(path: str | Path, hint: str = "auto", record: Mapping[str, Any] | None = None,
                  channels: Sequence[str] | None = None, run_labels: LabelScheme | None = None) -> SourceFormat:
    """The format of the dataset at ``path``.

    Args:
        hint: ``auto`` (recognise it), a registered format's name (:data:`FORMATS`), or a YAML layout file.
        record: a run's record of the format it was trained on (:meth:`SourceFormat.record`): names the
            channels of a folder of images without a description, and gives the layout of case folders
            that no named format recognises.
        channels: sequence names in channel order (``--channels``), for a folder without a description.
        run_labels: the run's label scheme (the labels of a layout its record kept without them).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} does not exist or is not a folder")
    if channels:
        record = {**(record or {}), "modalities": [canonical_sequence(c) for c in channels], "told": True}
    if hint in FORMATS:
        return FORMATS[hint].open(root, record)
    if hint != "auto":
        return _layout_format(root, load_layout(hint), "layout")
    for entry in FORMATS.values():
        found = entry.recognise(root)
        if found is not None:
            return found
    folders = _case_folders_of(root)
    if folders:
        for kept in [record or {}, *((record or {}).get("others") or [])]:  # the run's own layouts, after the named ones
            saved = layout_from_record(kept, run_labels)
            if saved is not None and any(holds_any_file(case, saved) for case in folders[:3]):
                return _layout_format(root, saved, "layout")
        listed = sorted(p.name for p in folders[0].iterdir())[:8]
        named = ", ".join(f"{name} ({entry.description.split(':')[0]})" for name, entry in FORMATS.items())
        raise DataError(
            f"cannot tell the format of {root}: no {DESCRIPTION}, and case folder {folders[0].name!r} holds {listed}, "
            f"which no named format's file names match; if it is one of them, say which with --format NAME "
            f"({named}), else describe its files with --format FILE.yaml (a layout: sequence -> file pattern, labels)")
    return _flat_format(root, record, bool(channels))
