"""Case-folder layouts: where each file of a case folder is, and what its labels mean.

A *layout* says, for a folder of case folders, one file pattern per sequence
(the modality names), one for the label map, optionally one for a brain mask,
and the label scheme of the label files. Two are built in:

- ``brats2018`` (BraTS 2017-2021): ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``
  (``.nii`` too), labels 0/1/2/4 (4 = enhancing tumour);
- ``brats2023`` (BraTS 2023-2024): ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``,
  labels 0/1/2/3 (3 = enhancing tumour); the sequences are named
  ``flair, t1, t1ce, t2`` here, so models trained on either release share names;

and any other comes from a small YAML file (:func:`load_layout`), e.g.
``configs/brats2013_layout.yaml`` for the DeepMedic-named BraTS 2013 cases.
A layout travels with the cache and the run (:meth:`Layout.to_json`),
labels included, so a run reads more folders of its own kind as it was trained.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mckd.errors import DataError
from mckd.seg.cases import CaseFiles, ImageFile
from mckd.seg.labels import CONVENTIONS, LabelScheme, convention, from_nnunet_labels


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
        labels: a label convention's name (:data:`mckd.seg.labels.CONVENTIONS`),
            or ``declared`` when the layout declares its labels itself (``scheme``).
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

    def to_json(self) -> dict[str, Any]:
        """The layout, labels included, as the cache and the run keep it."""
        return {"name": self.name, "sequences": dict(self.sequences), "label": self.label, "mask": self.mask,
                "cases": self.cases, "labels": self.labels,
                "label_scheme": self.scheme.to_json() if self.scheme is not None else None}

    @staticmethod
    def from_json(record: Mapping[str, Any], fallback: LabelScheme | None = None) -> "Layout":
        """A layout kept by :meth:`to_json`. Records of runs before labels were kept name no labels: they are
        ``fallback`` (the run's own label scheme, which its cache read from this layout)."""
        scheme = None
        labels = str(record.get("labels") or "")
        if isinstance(record.get("label_scheme"), Mapping):
            scheme = LabelScheme.from_json(record["label_scheme"], f"layout {record.get('name', '')}'s labels")
            labels = "declared"
        elif labels not in CONVENTIONS:
            if fallback is not None and fallback.name in CONVENTIONS:
                labels = fallback.name
            elif fallback is not None:
                scheme, labels = fallback, "declared"
            else:
                labels = "brats2018"
        return Layout(str(record.get("name", "run")), {str(k): str(v) for k, v in dict(record.get("sequences", {})).items()},
                      str(record.get("label", "") or ""), str(record.get("mask", "") or ""), labels,
                      str(record.get("cases", "*") or "*"), scheme)


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
        labels: brats2013           # a convention (mckd list), or {name: value} in nnU-Net's notation
        cases: "brats_*"            # optional glob of case folders (default "*")
    """
    if spec in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[spec]
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"layout {spec!r} is neither a named format ({', '.join(BUILTIN_LAYOUTS)}, see mckd list) "
                        "nor a YAML layout file")
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
        if labels not in CONVENTIONS:
            raise DataError(f"layout file {spec!r}: labels {labels!r} is not one of {sorted(CONVENTIONS)} "
                            "nor a mapping of label names to values")
    sequences = {str(k): str(v) for k, v in raw["sequences"].items()}
    return Layout(path.stem, sequences, str(raw.get("label", "") or ""), str(raw.get("mask", "") or ""),
                  labels, str(raw.get("cases", "*")), scheme)


def case_folders(source: Path, layout: Layout) -> list[Path]:
    """The case folders under ``source`` matching the layout's ``cases`` glob, sorted."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"source folder {str(source)!r} does not exist")
    cases = sorted(p for p in source.glob(layout.cases) if p.is_dir() and not p.name.startswith("."))
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
    escaped = pattern.replace("{case}", glob.escape(case.name))  # a case named with [ ] * ? is matched as written
    for candidate in _alternatives(escaped):
        matches = sorted(glob.glob(str(Path(glob.escape(str(case))) / candidate)))
        if len(matches) > 1:
            raise DataError(f"case {case.name}: {len(matches)} files match {filled!r} for the {what}: "
                            f"{[Path(m).name for m in matches]}; the pattern must match one")
        if matches:
            return Path(matches[0])
    if required:
        raise DataError(f"case {case.name}: no {what} file matching {filled!r} in {case} "
                        f"(also tried {_alternatives(filled)[1:] or 'nothing else'})")
    return None


def holds_any_file(case: Path, layout: Layout) -> bool:
    """Whether a folder holds any file of the layout: one of its sequences, or its label file."""
    patterns = [*layout.sequences.values(), *([layout.label] if layout.label else [])]
    return any(find_file(case, pattern, required=False) is not None for pattern in patterns)


def layout_case_files(case: Path, layout: Layout, allow_missing: bool = False, need_labels: bool = True) -> CaseFiles:
    """The files of one case folder of a layout (a missing sequence is an error unless ``allow_missing``).

    The label file is listed when it is there (so that predicting never writes
    over it), and required with ``need_labels``.
    """
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
    if layout.label:
        found = find_file(case, layout.label, required=need_labels, what="label")
        label = str(found) if found is not None else ""
    mask = str(find_file(case, layout.mask, what="brain mask")) if layout.mask else ""
    return CaseFiles(case.name, images, label, mask, tuple(absent))
