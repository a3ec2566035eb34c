"""GPU check: the BraTS network at the paper's crop and batch, bf16 and fp32, MCKD against its baseline.

For the rare minutes a GPU is available (``benchmarks/gpu_check.sh`` sets up
and calls this). The network is built by name from the registry with the
``model`` section of ``--config`` (default ``configs/brats_paper_gpu.yaml``:
``unet3d``, crop 160x160x80 in the NIfTI order, i.e. the paper's
80x160x160, batch 2); the data are random volumes of that crop from an
in-memory dataset registered here (``synthetic_volumes``), so no BraTS files
are needed. Each variant runs the real loop, :func:`mckd.train.train`:

- ``baseline``: no CKD, no meta step;
- ``ckd``: MCKD's CKD term over all ordered pairs, no meta step;
- ``mckd``: CKD plus a meta step every ``--meta-every`` iterations (10 by
  default, so that a short run has some; the cost is then amortised over the
  config's interval, 100 for the paper).

For each precision (bf16 autocast, fp32) it prints the time per iteration
(measured after ``--warmup`` iterations, which include cuDNN autotuning),
samples per second, peak GPU memory, the ratio ckd / baseline and the MCKD /
baseline ratio with the meta step amortised over the config's interval.
``--budget-s`` shortens later runs if the first ones are slow, so the whole
check stays under about 5 minutes.

    python3 benchmarks/gpu_check.py                   # on a GPU
    python3 benchmarks/gpu_check.py --tiny            # the same code on the CPU at a tiny crop (a test of the script)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the working tree's mckd, installed or not

from mckd.config import apply_overrides, config_from_dict, load_raw  # noqa: E402
from mckd.data.bundle import DataBundle, MultiModalTensorDataset  # noqa: E402
from mckd.registry import register_dataset  # noqa: E402
from mckd.train import train  # noqa: E402


@dataclass
class SyntheticVolumesOptions:
    """Options of the ``synthetic_volumes`` dataset (speed checks only)."""

    modalities: list[str] = field(default_factory=lambda: ["flair", "t1", "t1ce", "t2"])
    crop: list[int] = field(default_factory=lambda: [160, 160, 80])  # [X, Y, Z]
    samples: int = 8  # distinct random samples per split (reused every epoch)


@register_dataset("synthetic_volumes", SyntheticVolumesOptions, "random 1-channel volumes and BraTS labels (speed checks)")
def build_synthetic_volumes(options: SyntheticVolumesOptions, seed: int) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    shape = (options.samples, 1, *options.crop)

    def split() -> MultiModalTensorDataset:
        inputs = [torch.randn(shape, generator=generator) for _ in options.modalities]
        target = torch.randint(0, 4, shape, generator=generator, dtype=torch.uint8)  # internal labels 0..3
        return MultiModalTensorDataset(inputs, target)

    return DataBundle(
        modalities=tuple(options.modalities), train=split(), val=split(), test=split(),
        num_classes=4, input_shapes={m: (1, *options.crop) for m in options.modalities},
        facts={"target": "label_map", "roi": list(options.crop), "spacing": [1.0, 1.0, 1.0], "downsample": 1},
    )


VARIANTS = {"baseline": ["method.alpha=0", "method.meta=false"], "ckd": ["method.meta=false"], "mckd": []}


def seconds_per_iteration(run_dir: Path, warmup: int) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train" and r["iteration"] >= warmup]
    first, last = rows[0], rows[-1]
    return (last["seconds"] - first["seconds"]) / (last["iteration"] - first["iteration"])


def syncs_per_iteration(raw: dict[str, Any], overrides: list[str], batch: int) -> float:
    """Synchronising CUDA calls per training iteration, from torch's sync debug mode.

    Two runs of 4 and 8 iterations (one log record and one checkpoint each, at
    the end); the difference over 4 is what one iteration costs.
    """
    import warnings

    counts = []
    for total in (4, 8):
        config = config_from_dict(apply_overrides(raw, [
            *overrides, f"train.iterations={total}", f"train.batch_size={batch}", f"train.log_every={total}",
            "train.progress=false", "train.device=cuda", "train.precision=bf16", "train.num_workers=0",
            "method.meta_every=1000",
        ]))
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(config, tmp)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return (counts[1] - counts[0]) / 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "brats_paper_gpu.yaml"))
    parser.add_argument("--crop", type=int, nargs=3, help="[X, Y, Z] (default: the config's data.crop)")
    parser.add_argument("--batch", type=int, help="per-GPU batch (default: the config's)")
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=20, help="iterations before timing (cuDNN autotuning)")
    parser.add_argument("--meta-every", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--budget-s", type=float, default=240.0, help="shorten later runs to end within this")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--tiny", action="store_true", help="CPU, crop 32x32x16, a small network, a few iterations")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    raw = load_raw(args.config)
    crop = args.crop or raw.get("data", {}).get("crop", [160, 160, 80])
    batch = args.batch or raw.get("train", {}).get("batch_size", 2)
    device = "cuda"
    overrides = []
    if args.tiny:
        crop, device, args.workers = [32, 32, 16], "cpu", 0
        args.iterations, args.warmup, args.meta_every = min(args.iterations, 4), min(args.warmup, 2), 2
        overrides.append("model.widths=[8,16,32]")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --tiny to test the script on the CPU", file=sys.stderr)
        return 2
    paper_meta_every = int(raw.get("method", {}).get("meta_every", 100))
    raw["data"] = {"name": "synthetic_volumes", "modalities": raw.get("data", {}).get("modalities", ["flair", "t1", "t1ce", "t2"]),
                   "crop": list(crop), "samples": 8}
    log_every = max(1, min(args.warmup, 10))

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    print(f"network: {raw['model']} from {args.config}{' with ' + ', '.join(overrides) if overrides else ''}; crop {list(crop)} ([X, Y, Z]), batch {batch}, "
          f"4 modalities, random missing subsets")

    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    runs = len(args.precisions) * len(VARIANTS)
    iterations = args.iterations
    with tempfile.TemporaryDirectory() as tmp:
        over_budget = False
        for precision in args.precisions:
            if over_budget:
                break
            for name, variant in VARIANTS.items():
                done = len(results)
                if done:  # keep within the budget: what is left, shared by the runs left
                    per_iteration = (time.perf_counter() - start) / sum(r["iterations"] for r in results)
                    left = args.budget_s - (time.perf_counter() - start)
                    affordable = int(left / (runs - done) / per_iteration) - args.warmup
                    if affordable < log_every:
                        print(f"  budget of {args.budget_s:.0f} s spent: {precision} {name} and later runs skipped")
                        over_budget = True
                        break
                    iterations = min(args.iterations, affordable)
                total = args.warmup + iterations
                config = config_from_dict(apply_overrides(raw, [
                    *overrides, *variant, f"train.iterations={total}", f"train.batch_size={batch}",
                    f"train.log_every={log_every}", "train.progress=false", "train.checkpoint_every=0",
                    f"train.device={device}", f"train.precision={precision}", f"train.num_workers={args.workers}",
                    f"method.meta_every={args.meta_every}", "missing.policy=random_subset", "train.deterministic=false",
                ]))
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                run_dir = Path(tmp) / f"{precision}_{name}"
                train(config, run_dir)
                seconds = seconds_per_iteration(run_dir, args.warmup)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
                results.append({"precision": precision, "variant": name, "iterations": total,
                                "ms_per_iteration": 1000 * seconds, "samples_per_s": batch / seconds, "peak_gib": peak})
                print(f"  {precision} {name}: {1000 * seconds:.1f} ms/iteration over {total - args.warmup} timed "
                      f"iterations, peak {peak:.1f} GiB", flush=True)

    print()
    print("| precision | variant | ms / iteration | samples / s | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['precision']} | {r['variant']} | {r['ms_per_iteration']:.1f} | {r['samples_per_s']:.2f} | {r['peak_gib']:.1f} |")
    print()
    for precision in args.precisions:
        t = {r["variant"]: r["ms_per_iteration"] for r in results if r["precision"] == precision}
        if len(t) < len(VARIANTS):
            continue
        meta_ms = max(0.0, (t["mckd"] - t["ckd"]) * args.meta_every)
        amortised = t["ckd"] + meta_ms / paper_meta_every
        print(f"{precision}: CKD step / baseline {t['ckd'] / t['baseline']:.3f}x; meta step {meta_ms:.0f} ms, "
              f"{100 * meta_ms / paper_meta_every / amortised:.1f}% of training at one every {paper_meta_every}; "
              f"MCKD / baseline {amortised / t['baseline']:.3f}x")
    if len(results) == runs and len(args.precisions) == 2:
        bf16 = {r["variant"]: r["ms_per_iteration"] for r in results if r["precision"] == "bf16"}
        fp32 = {r["variant"]: r["ms_per_iteration"] for r in results if r["precision"] == "fp32"}
        print(f"bf16 speed-up over fp32 (MCKD with meta every {args.meta_every}): {fp32['mckd'] / bf16['mckd']:.2f}x")
    if device == "cuda" and time.perf_counter() - start < args.budget_s + 20:
        print(f"host-device synchronisations per MCKD iteration (bf16): {syncs_per_iteration(raw, overrides, batch):.1f}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
