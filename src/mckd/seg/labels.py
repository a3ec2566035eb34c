"""Label schemes: what the values of a label file mean, and what segmentation evaluates.

A :class:`LabelScheme` is declared, never guessed where a wrong guess would be
silent: by a dataset's own description (MSD's ``labels``, nnU-Net v2's
``labels`` with ``regions_class_order``), by a built-in convention (the BraTS
releases and MSD Task01's numbering), or by a small YAML file in nnU-Net's
notation. It says:

- **classes**: the cached (internal) label values ``0..K-1``, 0 the
  background, each with a name; a file value maps to one class (several
  values may share one: BraTS 2013's non-enhancing tumour joins the core);
- **regions** (optional): nested unions of classes, evaluated one by one and
  predicted by sigmoid channels (nnU-Net's region-based training, BraTS's
  ET / TC / WT); each region says which class it writes when a prediction is
  turned back into labels, and ``decode_order`` the order of writing (largest
  first, so inner regions overwrite outer ones, as nnU-Net's
  ``regions_class_order`` does).

Without regions the evaluated targets are the classes other than background.

Every BraTS convention maps onto one set of classes (the BraTS 2023 order:
0 background, 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing tumour,
plus 4 resection cavity for BraTS 2024), so models and caches of any release
share them, and a prediction can be written in any release's numbering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mckd.errors import DataError

BACKGROUND = "background"

# The BraTS tissues (internal classes of every BraTS convention).
CORE, OEDEMA, ENHANCING, CAVITY = 1, 2, 3, 4
BRATS_CLASSES = (BACKGROUND, "necrotic / non-enhancing core", "oedema", "enhancing tumour")
BRATS_TISSUES = ("background", "core", "oedema", "enhancing")


@dataclass(frozen=True)
class Region:
    """A union of classes evaluated as one target.

    Attributes:
        name: as declared (``ET``, ``whole tumor``).
        classes: the internal classes it holds.
        writes: the internal class written where the region is predicted (decoding).
    """

    name: str
    classes: tuple[int, ...]
    writes: int


@dataclass(frozen=True)
class LabelScheme:
    """What label values mean (see the module docstring).

    Attributes:
        name: where the declaration came from (``brats2018``, ``dataset.json``, a file).
        classes: internal class names; the index is the cached value; 0 is the background.
        source: ``(file value, internal class)`` pairs; the file values a label file may hold.
        regions: the evaluated regions, in the order of metric columns; ``()`` evaluates the classes.
        decode_order: region indices in the order they are written when decoding.
        tissues: per internal class, the BraTS tissue it is (``""`` unknown): for the
            built-in conventions only, so that their predictions convert into each other.
        description: one line for ``mckd list`` and messages.
    """

    name: str
    classes: tuple[str, ...]
    source: tuple[tuple[int, int], ...]
    regions: tuple[Region, ...] = ()
    decode_order: tuple[int, ...] = ()
    tissues: tuple[str, ...] = ()
    description: str = ""

    # --- what is evaluated ---------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def region_based(self) -> bool:
        return bool(self.regions)

    def target_names(self) -> tuple[str, ...]:
        """The evaluated targets: the regions, or the classes other than background."""
        return tuple(r.name for r in self.regions) if self.regions else self.classes[1:]

    def metric_keys(self) -> tuple[str, ...]:
        """A metric-name part per target (``ET`` -> ``et``, ``whole tumor`` -> ``whole_tumor``)."""
        return tuple(slug(name) for name in self.target_names())

    def target_classes(self) -> tuple[tuple[int, ...], ...]:
        """Per target, the internal classes it holds."""
        if self.regions:
            return tuple(r.classes for r in self.regions)
        return tuple((k,) for k in range(1, self.num_classes))

    # --- file values <-> internal classes ------------------------------------------------

    def file_values(self) -> list[int]:
        return sorted(value for value, _ in self.source)

    def to_internal(self, array: np.ndarray, path: Path | str = "label map") -> np.ndarray:
        """File label values -> internal classes (uint8); a value the scheme does not declare is a :class:`DataError`."""
        mapping = dict(self.source)
        values, counts = np.unique(array, return_counts=True)
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                odd = [float(v) for v in values if not np.isfinite(v) or v != round(float(v))][:5]
                raise DataError(f"{path}: label map holds non-integer values {odd}; expected {sorted(mapping)}")
        unexpected = {int(v): int(c) for v, c in zip(values, counts) if int(v) not in mapping}
        if unexpected:
            raise DataError(
                f"{path}: label values {sorted(unexpected)} ({sum(unexpected.values())} voxels) are not in the "
                f"{self.name} {'convention' if self.tissues else 'labels'}, which has {sorted(mapping)}; declare "
                "the labels that fit "
                f"(--labels: {', '.join(sorted(CONVENTIONS))}, dataset or a label file)"
            )
        lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
        for value, internal in mapping.items():
            lookup[value] = internal
        return lookup[array.astype(np.int64)]

    def to_file_values(self, labels: np.ndarray) -> np.ndarray:
        """Internal classes -> this scheme's file values (the first file value of a shared class)."""
        inverse: dict[int, int] = {}
        for value, internal in sorted(self.source):
            inverse.setdefault(internal, value)
        dtype = np.uint8 if max(inverse.values()) < 256 else np.int16
        lookup = np.zeros(self.num_classes, dtype=dtype)
        for internal, value in inverse.items():
            lookup[internal] = value
        return lookup[labels]

    # --- records -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "source": [[v, k] for v, k in self.source],
            "regions": [{"name": r.name, "classes": list(r.classes), "writes": r.writes} for r in self.regions],
            "decode_order": list(self.decode_order),
            "tissues": list(self.tissues),
            "description": self.description,
        }

    @staticmethod
    def from_json(record: Mapping[str, Any], where: str = "label scheme") -> "LabelScheme":
        try:
            scheme = LabelScheme(
                name=str(record["name"]),
                classes=tuple(str(c) for c in record["classes"]),
                source=tuple((int(v), int(k)) for v, k in record["source"]),
                regions=tuple(Region(str(r["name"]), tuple(int(c) for c in r["classes"]), int(r["writes"]))
                              for r in record.get("regions", [])),
                decode_order=tuple(int(i) for i in record.get("decode_order", [])),
                tissues=tuple(str(t) for t in record.get("tissues", [])),
                description=str(record.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{where} is damaged ({type(error).__name__}: {error}); prepare the data again") from None
        scheme.check(where)
        return scheme

    def check(self, where: str) -> None:
        """The declaration is coherent: classes from 0, every region's classes and written class exist."""
        k = self.num_classes
        if k < 2 or not self.source:
            raise DataError(f"{where}: needs a background and at least one class, got {list(self.classes)}")
        if any(not 0 <= internal < k for _, internal in self.source):
            raise DataError(f"{where}: a file value maps outside the classes 0..{k - 1}")
        if len({v for v, _ in self.source}) != len(self.source):
            raise DataError(f"{where}: a file value is declared twice")
        for region in self.regions:
            if not region.classes or any(not 0 < c < k for c in region.classes) or region.writes not in region.classes:
                raise DataError(f"{where}: region {region.name!r} holds classes {list(region.classes)} and writes "
                                f"{region.writes}; expected classes among 1..{k - 1}, the written one among them")
        if self.regions and sorted(self.decode_order) != list(range(len(self.regions))):
            raise DataError(f"{where}: decode_order {list(self.decode_order)} must list each region once")
        keys = self.metric_keys()
        if len(set(keys)) != len(keys) or "mean" in keys or "" in keys:
            raise DataError(f"{where}: target names {list(self.target_names())} must differ after lower-casing and "
                            "must not be 'mean'")

    def describe(self) -> str:
        """One line: file values and names, then the regions."""
        names: dict[int, list[int]] = {}
        for value, internal in sorted(self.source):
            names.setdefault(internal, []).append(value)
        parts = [f"{'/'.join(map(str, values))} {self.classes[k]}" for k, values in sorted(names.items(),
                                                                                         key=lambda kv: kv[1][0])]
        text = ", ".join(parts)
        if self.regions:
            text += "; regions " + ", ".join(
                f"{r.name} = {{{', '.join(str(v) for v in sorted(self.file_value(c) for c in r.classes))}}}"
                for r in self.regions)
        return text

    def file_value(self, internal: int) -> int:
        return min(v for v, k in self.source if k == internal)


def slug(name: str) -> str:
    """A metric-name part: lower case, runs of other characters than letters and digits -> ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


# --- built-in conventions ------------------------------------------------------------------------

# The BraTS regions, in the order of region channels and metric columns (the one definition of their names).
BRATS_REGIONS = (Region("ET", (ENHANCING,), ENHANCING), Region("TC", (CORE, ENHANCING), CORE),
                 Region("WT", (CORE, OEDEMA, ENHANCING), OEDEMA))
BRATS_REGION_NAMES = tuple(region.name for region in BRATS_REGIONS)


def _brats(name: str, source: Mapping[int, int], description: str, cavity: bool = False) -> LabelScheme:
    classes, tissues, regions, order = BRATS_CLASSES, BRATS_TISSUES, BRATS_REGIONS, (2, 1, 0)
    if cavity:
        classes, tissues = classes + ("resection cavity",), tissues + ("cavity",)
        regions, order = regions + (Region("RC", (CAVITY,), CAVITY),), (2, 1, 0, 3)
    return LabelScheme(name, classes, tuple(sorted(source.items())), regions, order, tissues, description)


CONVENTIONS: dict[str, LabelScheme] = {
    scheme.name: scheme
    for scheme in (
        _brats("brats2018", {0: 0, 1: CORE, 2: OEDEMA, 4: ENHANCING},
               "BraTS 2017-2021: 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing; regions ET, TC, WT"),
        _brats("brats2023", {0: 0, 1: CORE, 2: OEDEMA, 3: ENHANCING},
               "BraTS 2023-2024 (GLI, MEN, MET, SSA): 1 NETC, 2 SNFH (oedema), 3 enhancing; regions ET, TC, WT"),
        _brats("brats2024", {0: 0, 1: CORE, 2: OEDEMA, 3: ENHANCING, 4: CAVITY},
               "BraTS 2024 GLI post-treatment: brats2023 + 4 resection cavity; regions ET, TC, WT, RC", cavity=True),
        _brats("brats2013", {0: 0, 1: CORE, 2: OEDEMA, 3: CORE, 4: ENHANCING},
               "BraTS 2012-2016: 1 necrosis, 2 oedema, 3 non-enhancing (joins the core), 4 enhancing; regions ET, TC, WT"),
        _brats("msd_brats", {0: 0, 1: OEDEMA, 2: CORE, 3: ENHANCING},
               "MSD Task01_BrainTumour and nnU-Net's BraTS datasets: 1 oedema, 2 non-enhancing, 3 enhancing; "
               "regions ET, TC, WT"),
    )
}


def convention(name: str) -> LabelScheme:
    """A built-in convention by name, or a :class:`DataError` listing them."""
    if name not in CONVENTIONS:
        raise DataError(f"label convention {name!r} is not one of {', '.join(sorted(CONVENTIONS))}")
    return CONVENTIONS[name]


# --- declarations in the field's notations -------------------------------------------------------


def from_msd_labels(labels: Mapping[str, Any], where: str) -> LabelScheme:
    """MSD's ``labels``: ``{"0": "background", "1": "edema", ...}`` (file value -> name): one class per value."""
    try:
        pairs = sorted((int(value), str(name)) for value, name in labels.items())
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'labels' must map label values to names, e.g. {{\"0\": \"background\"}}; "
                        f"got {dict(labels)}") from None
    if not pairs or pairs[0][0] != 0:
        raise DataError(f"{where}: 'labels' must declare 0 (the background), got {dict(labels)}")
    return _one_class_per_value(pairs, where)


def _one_class_per_value(pairs: Sequence[tuple[int, str]], where: str) -> LabelScheme:
    """Declared ``(file value, name)`` pairs, sorted by value from 0 -> one internal class per value."""
    names = tuple(name for _, name in pairs)
    scheme = LabelScheme(where, names, tuple((v, k) for k, (v, _) in enumerate(pairs)),
                         tissues=named_tissues(names), description=f"as declared in {where}")
    scheme.check(where)
    return scheme


def named_tissues(names: Sequence[str]) -> tuple[str, ...]:
    """The BraTS tissue of each declared class name, when every name plainly names a different one; else ``()``.

    ``("background", "edema", "non-enhancing tumor", "enhancing tumour")`` (MSD
    Task01's dataset.json) -> background, oedema, core, enhancing: the classes
    then convert into any BraTS convention's, by what the dataset declares
    them to be, never by their numbers.
    """
    tissues = tuple(tissue_of(name) for name in names)
    if any(t is None for t in tissues) or len(set(tissues)) != len(tissues) or tissues[0] != "background":
        return ()
    return tissues  # type: ignore[return-value]


def from_nnunet_labels(labels: Mapping[str, Any], regions_class_order: Sequence[int] | None, where: str) -> LabelScheme:
    """nnU-Net v2's ``labels`` (name -> value, or name -> values for region-based training).

    Class-based: one class per value. Region-based (any entry is a list): every
    non-background entry is a region over the file values it lists;
    ``regions_class_order`` (required then) gives, per region in the order
    declared, the file value written where it is predicted, later regions
    overwriting earlier ones.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise DataError(f"{where}: 'labels' must map names to label values, e.g. {{\"background\": 0, \"tumour\": 1}}")
    entries: list[tuple[str, tuple[int, ...]]] = []
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise DataError(f"{where}: label {name!r} is {value!r}; expected a label value or a list of them")
        entries.append((str(name), tuple(int(v) for v in values)))
    background = [name for name, values in entries if values == (0,)]
    if not background:
        raise DataError(f"{where}: 'labels' must declare the background as 0, got {dict(labels)}")
    region_based = any(isinstance(v, (list, tuple)) for v in labels.values())
    if not region_based:
        pairs = sorted((values[0], name) for name, values in entries)
        if len({v for v, _ in pairs}) != len(pairs):
            raise DataError(f"{where}: two labels share a value: {dict(labels)}")
        return _one_class_per_value(pairs, where)
    regions = [(name, values) for name, values in entries if values != (0,)]
    if regions_class_order is None or len(regions_class_order) != len(regions):
        raise DataError(f"{where}: region-based labels ({len(regions)} regions) need 'regions_class_order' with one "
                        f"label value per region, got {regions_class_order!r}")
    values = sorted({0} | {v for _, vs in regions for v in vs})
    internal = {v: k for k, v in enumerate(values)}
    single = {vs[0]: name for name, vs in regions if len(vs) == 1}
    classes = tuple(BACKGROUND if v == 0 else single.get(v, f"label {v}") for v in values)
    built = []
    for (name, vs), writes in zip(regions, regions_class_order):
        if writes not in vs:
            raise DataError(f"{where}: regions_class_order writes {writes} for region {name!r}, which holds {list(vs)}")
        built.append(Region(name, tuple(internal[v] for v in vs), internal[int(writes)]))
    tissues = region_tissues(classes, built)
    if tissues:  # name the classes the regions imply (nnU-Net's BraTS: 1 oedema, 2 core, 3 enhancing)
        named = dict(zip(BRATS_TISSUES, BRATS_CLASSES))
        classes = tuple(name if not name.startswith("label ") else f"{named[t]} ({name})"
                        for name, t in zip(classes, tissues))
    scheme = LabelScheme(where, classes, tuple((v, internal[v]) for v in values), tuple(built),
                         tuple(range(len(built))), tissues, description=f"region-based, as declared in {where}")
    scheme.check(where)
    return scheme


def region_role(name: str) -> str | None:
    """Which BraTS region a declared region name plainly names (``whole tumor`` -> WT), or None."""
    n = name.lower().replace("_", " ").replace("-", " ")
    words = set(re.split(r"[^a-z]+", n))
    if "whole" in words or "wt" in words:
        return "WT"
    if "core" in words or "tc" in words:
        return "TC"
    if ("enhancing" in words or "et" in words) and "non" not in words:
        return "ET"
    return None


def region_tissues(classes: Sequence[str], regions: Sequence[Region]) -> tuple[str, ...]:
    """The BraTS tissue of each class of region-based labels named as BraTS's WT / TC / ET, else ``()``.

    nnU-Net's own BraTS datasets declare ``whole tumor: [1, 2, 3]``,
    ``tumor core: [2, 3]``, ``enhancing tumor: 3``: then enhancing = ET,
    core = TC - ET, oedema = WT - TC, each of which must be one class.
    """
    roles = {region_role(r.name): set(r.classes) for r in regions}
    if set(roles) != {"WT", "TC", "ET"} or len(regions) != 3:
        return ()
    parts = {"enhancing": roles["ET"], "core": roles["TC"] - roles["ET"], "oedema": roles["WT"] - roles["TC"]}
    if any(len(p) != 1 for p in parts.values()) or not roles["ET"] < roles["TC"] < roles["WT"]:
        return ()
    tissues = ["background"] + [""] * (len(classes) - 1)
    for tissue, (k,) in ((t, tuple(p)) for t, p in parts.items()):
        tissues[k] = tissue
    return tuple(tissues) if "" not in tissues else ()


def load_label_file(path: str | Path) -> LabelScheme:
    """A YAML label file in nnU-Net's notation::

        labels:                     # name -> file value (classes) or list of values (regions)
          background: 0
          whole tumour: [1, 2, 3]
          tumour core: [2, 3]
          enhancing: [3]
        regions_class_order: [1, 2, 3]   # region-based only: the value each region writes
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())
        raise DataError(f"label file {str(path)!r} cannot be read as YAML: {reason}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
        raise DataError(f"label file {str(path)!r} must be a mapping with 'labels: {{name: value}}'")
    unknown = set(raw) - {"labels", "regions_class_order"}
    if unknown:
        raise DataError(f"label file {str(path)!r}: unknown keys {sorted(unknown)}; known: labels, regions_class_order")
    return from_nnunet_labels(raw["labels"], raw.get("regions_class_order"), path.name)


def resolve_declaration(spec: str) -> LabelScheme:
    """``--labels``: a built-in convention's name or a YAML label file."""
    if spec in CONVENTIONS:
        return CONVENTIONS[spec]
    if Path(spec).is_file():
        return load_label_file(spec)
    raise DataError(f"label convention {spec!r} is neither a built-in one ({', '.join(sorted(CONVENTIONS))}), "
                    "'dataset' (the dataset's own description), 'auto', nor a YAML label file")


# --- refusing contradictions ---------------------------------------------------------------------


def tissue_of(name: str) -> str | None:
    """The BraTS tissue a declared label name plainly names, or None (used only to refuse contradictions)."""
    n = name.lower().replace("_", " ").replace("-", " ")
    words = set(re.split(r"[^a-z]+", n))
    if "background" in words:
        return "background"
    if "edema" in n or "oedema" in n or words & {"snfh", "ed"}:
        return "oedema"
    if "non enhanc" in n or "nonenhanc" in n or "necro" in n or words & {"ncr", "net", "netc"}:
        return "core"
    if "enhanc" in n or "et" in words:
        return "enhancing"
    if "cavity" in n or "resection" in n or "rc" in words:
        return "cavity"
    return None


def check_declared_names(scheme: LabelScheme, declared: Mapping[int, str], where: str) -> None:
    """Refuse a convention that reads a value as another tissue than the dataset's description names.

    ``declared`` maps file values to the names a dataset description gives
    them. Only plain tissue names are compared (``edema``, ``enhancing
    tumour``, ``necrosis``...); other names are not judged.
    """
    if not scheme.tissues:
        return
    mapping = dict(scheme.source)
    for value, name in sorted(declared.items()):
        said = tissue_of(name)
        if said is None or value not in mapping:
            continue
        read = scheme.tissues[mapping[value]]
        if read != said:
            raise DataError(f"{where} declares label {value} as {name!r}, but the {scheme.name} convention reads "
                            f"{value} as {scheme.classes[mapping[value]]}: that would swap tissues silently; use the "
                            "dataset's own labels (--labels dataset) or a convention that agrees with them")


def declared_names(labels: Mapping[str, Any], notation: str) -> dict[int, str]:
    """File value -> name from a description's ``labels`` (``msd``: value -> name; ``nnunet``: name -> value)."""
    out: dict[int, str] = {}
    if notation == "msd":
        for value, name in labels.items():
            try:
                out[int(value)] = str(name)
            except (TypeError, ValueError):
                continue
    else:
        for name, value in labels.items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[value] = str(name)
            elif isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int):
                out[int(value[0])] = str(name)
    return out


def choose_brats_convention(found_in: Mapping[str, set[int]], naming: str,
                            case_names: Sequence[str] = ()) -> tuple[LabelScheme, str]:
    """The BraTS convention the label values found make certain, with the reason; a :class:`DataError` when several fit.

    Args:
        found_in: label file -> the values found in it.
        naming: ``brats2018`` (``_flair`` names, BraTS 2012-2021) or ``brats2023`` (``-t2f`` names, 2023-2024).
    """
    values = set().union(*found_in.values()) if found_in else set()
    found = " ".join(str(v) for v in sorted(values))
    for path, in_file in found_in.items():
        odd = sorted(v for v in in_file if v not in (0, 1, 2, 3, 4))
        if odd:
            default = CONVENTIONS["brats2018" if naming == "brats2018" else "brats2023"]
            raise DataError(f"{path}: label values {odd} are in no BraTS convention (the {default.name} convention "
                            f"of these names has {', '.join(map(str, default.file_values()))}); declare the labels "
                            "with a label file (--labels FILE.yaml)")
    if naming == "brats2018":
        if 3 in values and 4 in values:
            return CONVENTIONS["brats2013"], f"labels {found}: 3 and 4 together only in BraTS 2012-2016 (3 = non-enhancing)"
        if 3 in values:
            raise DataError(f"labels {found} in BraTS 2017-2021 names: label 3 is non-enhancing tumour in BraTS "
                            "2012-2016 but enhancing tumour in BraTS 2023; say which with --labels brats2013 or "
                            "--labels brats2023")
        return CONVENTIONS["brats2018"], f"labels {found}: BraTS 2017-2021 (4 = enhancing)"
    if any("-PED-" in name.upper() for name in case_names):
        raise DataError("BraTS paediatric cases (BraTS-PED) number their labels differently (1 enhancing, 2 "
                        "non-enhancing, 3 cyst, 4 oedema); declare them with a label file (--labels FILE.yaml)")
    if 4 in values:
        raise DataError(f"labels {found} in BraTS 2023-2024 names: 4 is the resection cavity of BraTS 2024 "
                        "post-treatment gliomas; say so with --labels brats2024, or declare them with a label file")
    return CONVENTIONS["brats2023"], f"labels {found}: BraTS 2023-2024 (3 = enhancing)"


def class_map(source: LabelScheme, target: LabelScheme, where: str = "the data") -> np.ndarray:
    """Lookup ``[K_source]``: ``source``'s internal classes -> ``target``'s.

    The same declaration maps to itself; BraTS conventions map by tissue
    (every BraTS release's core, oedema and enhancing tumour are the same
    classes). Anything else is a :class:`DataError`: classes are never matched
    by guessing.
    """
    if source.classes == target.classes and source.regions == target.regions and (
            not source.tissues or not target.tissues or source.tissues == target.tissues):
        return np.arange(source.num_classes, dtype=np.uint8)
    if source.tissues and target.tissues:
        index = {tissue: k for k, tissue in enumerate(target.tissues)}
        lacking = [source.classes[k] for k, t in enumerate(source.tissues) if t not in index]
        if not lacking:
            return np.array([index[t] for t in source.tissues], dtype=np.uint8)
        raise DataError(f"{where}: the {source.name} labels have {lacking}, which the {target.name} labels lack")
    raise DataError(f"{where}: labels {source.name} ({', '.join(source.classes)}) are not the run's {target.name} "
                    f"({', '.join(target.classes)}); declare them as the run's with --labels (a convention or a "
                    "label file whose classes are the run's)")
