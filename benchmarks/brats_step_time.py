"""CPU training-step time of the BraTS network: MCKD over no-CKD, present-only encoding over encoding zeros.

One step = forward, region Dice + BCE loss (+ alpha * CKD for MCKD), backward
and an SGD step (:func:`mckd.train.train_step`), batch 2, four 1-channel sequences, random inputs and labels
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

from mckd.build import build_method, build_model
from mckd.config import config_from_dict
from mckd.method import MethodServices
from mckd.method.base import combine
from mckd.method.model import ModelOutput
from mckd.tasks.segmentation import SegmentationTask
from mckd.train import train_step

MODALITIES = ("flair", "t1", "t1ce", "t2")


def make(crop: int, widths: list[int], alpha: float):
    """The unet3d model and the MCKD method (``alpha`` 0: no CKD) of the BraTS configs, for random volumes."""
    config = config_from_dict({"task": {"name": "segmentation"}, "data": {"name": "brats", "cache": "-"},
                               "model": {"name": "unet3d", "widths": widths},
                               "method": {"name": "mckd", "alpha": alpha, "meta": False}})
    method = build_method(config, MODALITIES)
    return build_model(config, MODALITIES, {m: (1, crop, crop, crop) for m in MODALITIES}, 3, method), method


def make_step(model, method, task, inputs, present, target, encode_zeros: bool):
    """One training step of one condition, as a closure (conditions are timed round-robin)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    method.setup(MethodServices(task_loss=task.loss))
    batch = {"inputs": inputs, "target": target}

    def step() -> None:
        if not encode_zeros:  # what mckd trains: train_step encodes the present pairs only
            train_step(model, method, task, optimizer, batch, present)
            return
        zeroed = [x * present[:, n].reshape(-1, 1, 1, 1, 1) for n, x in enumerate(inputs)]
        levels = model.encode(zeroed, torch.ones_like(present))  # all B*N pairs through the encoder
        levels = [level * present.reshape(*present.shape, *(1,) * (level.dim() - 2)) for level in levels]
        prediction = model.decode(model.fuse(levels, present))
        output = ModelOutput(prediction=prediction, features=levels[-1], levels=levels)
        loss = combine(task.loss(prediction, target), method.loss_terms(output, present))
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
    task = SegmentationTask(3, roi=[args.crop] * 3)
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
    steps = {name: make_step(*make(args.crop, args.widths, a), task, inputs, p, target, z)
             for name, (p, a, z) in conditions.items()}
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
