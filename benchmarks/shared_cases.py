"""The shared real BraTS cases as one BraTS 2018 folder: five patients, two with all four sequences.

    python benchmarks/shared_cases.py OUT [--data ../shared/data]

writes ``OUT/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``:

- ``Brats18_2013_21_1`` and ``BraTS2021_00006`` (``brats4/``): every file linked as it is;
- ``brats_2013_pat0003_1``, ``_pat0005_1``, ``_pat0006_1`` (``brats2013/``): FLAIR and T1c linked
  (the T1 and T2 files are absent: missing sequences), the labels rewritten from
  the BraTS 2013 numbering (3 = non-enhancing core) to BraTS 2018's (3 -> 1);
- ``brats_2013_pat0004_1`` is left out: it is the patient of ``Brats18_2013_21_1``
  (the same ground truth after 3 -> 1), and one patient must not sit in two splits.

Then ``mckd prepare seg OUT CACHE --allow-missing`` reads it as one BraTS 2018
set. Nothing in mckd is used here (nibabel and numpy only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOUR = ("Brats18_2013_21_1", "BraTS2021_00006")
TWO = ("brats_2013_pat0003_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1")
OLD_TO_2018 = np.array([0, 1, 2, 1, 4], dtype=np.uint8)  # BraTS 2013 value -> BraTS 2018 value


def assemble(data: Path, out: Path) -> list[str]:
    """Write the folder (links and three label files); returns the case names."""
    out.mkdir(parents=True, exist_ok=True)
    for case in FOUR:
        (out / case).mkdir(exist_ok=True)
        for source in sorted((data / "brats4" / case).glob(f"{case}_*.nii.gz")):
            link(source, out / case / source.name)
    for case in TWO:
        folder = out / case
        folder.mkdir(exist_ok=True)
        link(data / "brats2013" / case / "Flair_subtrMeanDivStd.nii.gz", folder / f"{case}_flair.nii.gz")
        link(data / "brats2013" / case / "T1c_subtrMeanDivStd.nii.gz", folder / f"{case}_t1ce.nii.gz")
        labels = nib.load(str(data / "brats2013" / case / "OTMultiClass.nii.gz"))
        values = OLD_TO_2018[np.asarray(labels.dataobj).astype(np.int64)]
        nib.save(nib.Nifti1Image(values, labels.affine), str(folder / f"{case}_seg.nii.gz"))
    return [*FOUR, *TWO]


def link(source: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    os.symlink(source.resolve(), target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    missing = [p for p in (args.data / "brats4", args.data / "brats2013") if not p.is_dir()]
    if missing:
        print(f"shared_cases: {missing[0]} not found (--data: the shared data folder)", file=sys.stderr)
        return 2
    cases = assemble(args.data, args.out)
    print(f"{len(cases)} cases in {args.out}: {', '.join(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
