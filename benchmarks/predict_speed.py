"""Cases per minute of `mckd predict --input DIR` on the CPU with the small config (configs/brats_small_cpu.yaml).

Prepares the four BraTS 2013 cases of ../shared/data (the config's data),
trains the small config for one iteration (the speed of prediction does not
depend on the weights), then predicts folders of full-size cases
(240 x 240 x 155 at 1 mm): the BraTS 2013 folder (FLAIR + T1c, a layout
file) and the BraTS 2018/2021 folder (four sequences; the model uses FLAIR
and T1c), without and with test-time mirroring. Prints seconds per case and
cases per minute (wall clock, and this process's CPU time), best of
``--repeats``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_speed.py
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("MCKD_SHARED_DATA", ROOT.parent / "shared" / "data"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting; the best is printed")
    parser.add_argument("--work", help="folder for the cache, run and predictions (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.seg.predict import predict_folder
    from mckd.seg.prepare import prepare_segmentation
    from mckd.seg.segment import SegmentOptions
    from mckd.train import train

    work = Path(args.work or tempfile.mkdtemp(prefix="mckd_predict_speed_"))
    cache, run = work / "cache2013", work / "run"
    layout = str(ROOT / "configs" / "brats2013_layout.yaml")
    if not (cache / "dataset.json").is_file():
        prepare_segmentation(SHARED / "brats2013", cache, layout, workers=1, progress=False, say=lambda _: None)
    if not (run / "checkpoint.safetensors").is_file():
        raw = load_raw(ROOT / "configs" / "brats_small_cpu.yaml")
        train(config_from_dict(apply_overrides(raw, [f"data.cache={cache}", "train.iterations=1", "train.progress=false",
                                                     "method.meta=false"])), run)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads: {torch.get_num_threads()}; config: configs/brats_small_cpu.yaml (2 mm, 48^3 windows, "
          "overlap 0.25, widths 8..64)")
    print("| folder | cases | TTA | s / case (wall) | cases / min (wall) | s / case (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, folder, data_format in (("brats2013 (FLAIR, T1c)", SHARED / "brats2013", layout),
                                      ("brats4 (4 sequences, uses FLAIR, T1c)", SHARED / "brats4", "auto")):
        for tta in (False, True):
            best_wall, best_cpu, cases = float("inf"), float("inf"), 0
            for repeat in range(args.repeats):
                out = work / f"pred_{folder.name}_{int(tta)}_{repeat}"
                started, cpu = time.perf_counter(), cpu_seconds()
                result = predict_folder(run, folder, out, data_format=data_format, options=SegmentOptions(tta=tta),
                                        device="cpu", force=True, progress=False, say=lambda _: None)
                wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
                cases = len(result.cases)
                best_wall, best_cpu = min(best_wall, wall / cases), min(best_cpu, cpu / cases)
            print(f"| {name} | {cases} | {'8 mirrorings' if tta else 'off'} | {best_wall:.2f} | {60 / best_wall:.1f} "
                  f"| {best_cpu:.2f} |")


if __name__ == "__main__":
    main()
