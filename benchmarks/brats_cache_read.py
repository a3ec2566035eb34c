"""Reading a BraTS case: the prepared cache (memory-mapped .npy) against decoding the NIfTI files.

Per case of ../shared/data/brats4 (four sequences and labels, 240x240x155):

- NIfTI: nibabel load and decode of the five .nii.gz files (what training would
  pay per case without a cache; it would then still crop and normalise);
- cache, whole case: every cached array read into memory as float32 / uint8;
- cache, one crop: a 48^3 training crop of every sequence and the labels
  (what a training sample reads; memory mapping touches only those pages).

    .venv/bin/python benchmarks/brats_cache_read.py [--source ../shared/data/brats4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mckd.seg.cache import read_dataset_record
from mckd.seg.dataset import SegCases
from mckd.seg.formats import detect_format
from mckd.seg.prepare import prepare_segmentation

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "brats4"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = Path(args.source)
    found = detect_format(source)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        prepare_segmentation(source, cache, workers=1, progress=False, say=lambda _: None)
        record = read_dataset_record(cache)
        print(f"prepare (once, {len(record['cases'])} cases, 1 worker): {time.perf_counter() - start:.2f} s")
        print(f"{'case':22s} {'NIfTI decode':>13s} {'cache, whole':>13s} {'cache, crop':>12s}  (median of {args.repeats}, s)")
        for case in found.cases(labelled=True):
            folder = Path(case.label).parent
            files = sorted(folder.glob("*.nii*"))

            def nifti() -> None:
                for f in files:
                    np.asanyarray(nib.load(str(f)).dataobj)

            cases = SegCases(cache, [folder.name], record["modalities"], 1)

            def whole() -> None:
                fresh = SegCases(cache, [folder.name], record["modalities"], 1)  # new memory maps each time
                fresh.read(0)

            def one_crop() -> None:
                fresh = SegCases(cache, [folder.name], record["modalities"], 1)
                fresh.read(0, [(40, 88), (60, 108), (40, 88)])

            shape = cases.shape(0)
            t_nifti, t_whole, t_crop = timed(nifti, args.repeats), timed(whole, args.repeats), timed(one_crop, args.repeats)
            print(f"{folder.name:22s} {t_nifti:13.3f} {t_whole:13.3f} {t_crop:12.4f}  cached grid {shape}; "
                  f"whole {t_nifti / t_whole:.0f}x, crop {t_nifti / t_crop:.0f}x faster than NIfTI")


if __name__ == "__main__":
    main()
