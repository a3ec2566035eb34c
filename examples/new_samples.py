"""Write a trained own-data run's test digits as new, unlabelled samples, with their views missing afresh.

The test split of ``RUN`` (``mckd train configs/own_data.yaml --out RUN`` on
the files of ``examples/digits_as_files.py``) was never trained on; its
samples are written under new ids, without labels, as three of the six
views, each missing for a seeded share of them:

| view | file | how it is missing |
|---|---|---|
| ``pix`` | ``pix.npz`` (``id``, ``data``) | 40% of the rows all NaN |
| ``fou``, ``mor`` | columns ``fou_*``, ``mor_*`` of ``records.csv`` | ``fou``: 30% of the rows NaN; ``mor``: complete |

``truth.csv`` keeps each new id's digit, to score the predictions::

    .venv/bin/python examples/new_samples.py runs/own_data runs/new_digits
    .venv/bin/mckd predict runs/own_data --output runs/new_digits/predictions.csv \\
        --data pix=runs/new_digits/pix.npz fou=runs/new_digits/records.csv mor=runs/new_digits/records.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the working tree's mckd, installed or not

from mckd.data.multiview import default_csv_dir, read_view  # noqa: E402


def write(run: Path, out: Path, seed: int = 1) -> int:
    """Write the files into ``out``; return the number of samples."""
    split = json.loads((run / "data.json").read_text())
    rows = np.array([int(i.removeprefix("digit")) for i in split["split_ids"]["test"]])  # ids digit0000 ...
    rng = np.random.default_rng(seed)
    views = {view: read_view(default_csv_dir(), view)[0][rows] for view in ("pix", "fou", "mor")}
    views["pix"][rng.random(len(rows)) < 0.4] = np.nan
    views["fou"][rng.random(len(rows)) < 0.3] = np.nan
    ids = np.array([f"patient{k:03d}" for k in range(len(rows))])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "pix.npz", id=ids, data=views["pix"])
    columns = ["id"] + [f"{view}_{k}" for view in ("fou", "mor") for k in range(views[view].shape[1])]
    with (out / "records.csv").open("w") as stream:
        stream.write(",".join(columns) + "\n")
        for k, sample in enumerate(ids):
            values = np.concatenate([views["fou"][k], views["mor"][k]])
            stream.write(sample + "," + ",".join("" if np.isnan(v) else f"{v:.6g}" for v in values) + "\n")
    labels = read_view(default_csv_dir(), "pix")[1][rows]
    (out / "truth.csv").write_text("id,label\n" + "".join(f"{i},{d}\n" for i, d in zip(ids, labels)))
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run of configs/own_data.yaml")
    parser.add_argument("out", type=Path, help="folder to write pix.npz, records.csv and truth.csv into")
    args = parser.parse_args()
    print(f"{write(args.run, args.out)} new samples written to {args.out}")


if __name__ == "__main__":
    main()
