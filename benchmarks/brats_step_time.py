"""CPU training-step time of the BraTS network: MCKD over no-CKD, present-only encoding over encoding zeros.

One step = forward, region Dice + BCE loss (+ alpha * CKD for MCKD), backward
and an SGD step, batch 2, four 1-channel sequences, random inputs and labels
(the step's cost does not depend on the values). "Half missing": each sample
has two of its four sequences.

- present-only (mckd): the shared encoder runs on the 4 present (sample,
  sequence) pairs, as :class:`mckd.method.MultiModalModel` gathers them;
- zeros (the authors' code): the encoder runs on all 8 pairs, missing ones as
  zero volumes, and their features are then discarded (the same output).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/brats_step_time.py [--crop 32] [--widths 8 16 32 64] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mckd.config import config_from_dict
from mckd.data.bundle import DataBundle
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.weights import ImportanceWeights
from mckd.nets.unet3d import build_unet3d, UNet3DOptions
from mckd.tasks.segmentation import SegmentationTask

MODALITIES = ("flair", "t1", "t1ce", "t2")


def make(crop: int, widths: list[int]):
    config = config_from_dict({"task": "segmentation", "data": {"name": "brats", "cache": "-"},
                               "model": {"name": "unet3d", "widths": widths}})
    bundle = DataBundle(MODALITIES, None, None, None, 3, {m: (1, crop, crop, crop) for m in MODALITIES})  # type: ignore[arg-type]
    return build_unet3d(UNet3DOptions(widths=widths), bundle, config)


def make_step(model, task, weights, inputs, present, target, alpha: float, encode_zeros: bool):
    """One training step of one condition, as a closure (conditions are timed round-robin)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)

    def step() -> None:
        if encode_zeros:
            zeroed = [x * present[:, n].reshape(-1, 1, 1, 1, 1) for n, x in enumerate(inputs)]
            levels = model.encode(zeroed, torch.ones_like(present))  # all B*N pairs through the encoder
            levels = [level * present.reshape(*present.shape, *(1,) * (level.dim() - 2)) for level in levels]
            prediction = model.decode(model.fuse(levels, present))
            features = levels[-1]
        else:
            output = model(inputs, present)
            prediction, features = output.prediction, output.features
        loss = task.loss(prediction, target)
        if alpha > 0:
            loss = loss + alpha * cross_modal_distillation_loss(features, present, weights().detach(), 1, "mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = make(args.crop, args.widths)
    task = SegmentationTask(3, roi=[args.crop] * 3)
    weights = ImportanceWeights(MODALITIES)
    shape = (2, 1, args.crop, args.crop, args.crop)
    inputs = [torch.randn(shape) for _ in MODALITIES]
    target = torch.randint(0, 4, shape, dtype=torch.uint8)
    half = torch.tensor([[True, False, True, False], [False, True, False, True]])  # two of four per sample
    full = torch.ones(2, 4, dtype=torch.bool)
    print(f"CPU threads {torch.get_num_threads()}, crop {args.crop}^3, batch 2, widths {args.widths}, "
          f"median of {args.steps} steps (s)")
    conditions = {
        "no-CKD, all 4 present": (full, 0.0, False),
        "MCKD,   all 4 present": (full, 0.1, False),
        "no-CKD, half missing, present only": (half, 0.0, False),
        "MCKD,   half missing, present only": (half, 0.1, False),
        "MCKD,   half missing, encode zeros": (half, 0.1, True),
    }
    steps = {name: make_step(model, task, weights, inputs, p, target, a, z) for name, (p, a, z) in conditions.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.steps + 1):  # round-robin, so a busy machine slows every condition alike
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    rows = [(name, statistics.median(values)) for name, values in times.items()]
    for name, seconds in rows:
        print(f"  {name:38s} {seconds:7.3f}")
    times = dict(rows)
    print(f"MCKD / no-CKD (all present):            {times['MCKD,   all 4 present'] / times['no-CKD, all 4 present']:.2f}x")
    print(f"MCKD / no-CKD (half missing):           {times['MCKD,   half missing, present only'] / times['no-CKD, half missing, present only']:.2f}x")
    print(f"present only / encode zeros (half missing): "
          f"{times['MCKD,   half missing, present only'] / times['MCKD,   half missing, encode zeros']:.2f}x")


if __name__ == "__main__":
    main()
