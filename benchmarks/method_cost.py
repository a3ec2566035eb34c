"""What each training method adds per iteration: time and the memory its backward passes keep, beside MCKD's.

Each method trains the same config (default: the multi-view digits) through
:func:`mckd.train.train`, the real loop: its every optimiser, its meta step
or election when due, its batches of complete samples. Per method and round,
``--iterations`` iterations run after as many of warm-up; the time per
iteration is the loop's own record over the timed ones (data loading
included, validation off), and the methods run interleaved in rounds, in a
rotating order, so that a busy machine slows them alike: the median over
rounds and its ratio to MCKD's are reported.

Memory: the tensors autograd keeps for the backward passes of an iteration
(activations, the graph of SMIL's inner step kept for its second-order
gradient), counted by :func:`torch.autograd.graph.saved_tensors_hooks`: the
peak over training of the bytes of distinct storages alive at once,
parameters and buffers left out. It is what grows with batch and network
size (what the SMIL paper calls its memory complexity) and is measured the
same on a CPU and a GPU.

    .venv/bin/python benchmarks/method_cost.py                                   # digits
    .venv/bin/python benchmarks/method_cost.py --config configs/avmnist_missing_audio.yaml \\
        --set 'missing.rates={audio: 0.2}'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the working tree's mckd, installed or not

from mckd.config import config_from_dict, load_raw  # noqa: E402
from mckd.experiment import method_config  # noqa: E402
from mckd.train import Callback, train  # noqa: E402

METHODS = ["mckd", "baseline", "shaspec", "lckd", "smil", "full2miss", "autoencoder", "gan"]


class SavedTensors:
    """Bytes of distinct storages that autograd keeps for backward, alive at once; the peak since the last reset.

    Use as a context manager around training; tensors whose storage belongs to
    ``excluded`` (the parameters and buffers) are not counted.
    """

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]
        self.current = 0
        self.peak = 0
        self.excluded: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def exclude(self, modules: Any) -> None:
        self.excluded = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}

    def _pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.excluded or storage.nbytes() == 0:
            return tensor
        entry = self.live.setdefault(key, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        holder = _Held(tensor.detach())  # detached: a saved output would otherwise hold its own node in a cycle
        weakref.finalize(holder, self._release, key)
        return holder

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Held) else packed

    def __enter__(self) -> "SavedTensors":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Held:
    """A saved tensor, held by the graph: freed with it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class PeakAfterWarmup(Callback):
    """Resets the saved-tensor peak after the warm-up iterations and excludes the model's and parts' tensors."""

    name = "peak_after_warmup"

    def __init__(self, counter: SavedTensors, warmup: int) -> None:
        self.counter, self.warmup = counter, warmup

    def on_iteration_end(self, iteration: int, experiment: Any) -> None:
        if iteration == 1:
            self.counter.exclude([experiment.model, experiment.method.parts])
        if iteration == self.warmup:
            self.counter.peak = self.counter.current


def measure(raw: dict, method: str, overrides: list[str], iterations: int, folder: Path) -> tuple[float, int]:
    """``(seconds per iteration over the timed iterations, peak saved bytes)`` of one short run of ``method``."""
    config = config_from_dict(method_config(raw, method, [
        *overrides, f"train.iterations={2 * iterations}", f"train.log_every={iterations}", "train.eval_every=0",
        "train.progress=false", "train.checkpoint_every=0"]))
    counter = SavedTensors()
    with counter:
        train(config, folder / method, force=True, callbacks=[PeakAfterWarmup(counter, iterations)])
    records = [json.loads(line) for line in (folder / method / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r.get("kind") == "train"][-1]
    return 1.0 / float(timed["iterations_per_s"]), counter.peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "multiview_digits.yaml"))
    parser.add_argument("--methods", nargs="+", default=METHODS, help=f"(default: {' '.join(METHODS)}); mckd first")
    parser.add_argument("--iterations", type=int, default=60, help="timed iterations per method and round (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each method once per round (default 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    raw = load_raw(args.config)
    seconds: dict[str, list[float]] = {m: [] for m in args.methods}
    memory: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            order = args.methods[round_ % len(args.methods):] + args.methods[:round_ % len(args.methods)]
            for method in order:
                per_iteration, peak = measure(raw, method, args.overrides, args.iterations, Path(folder))
                seconds[method].append(per_iteration)
                memory[method] = max(memory.get(method, 0), peak)
    reference = args.methods[0]
    median = {m: statistics.median(v) for m, v in seconds.items()}
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"config {args.config} {' '.join(args.overrides)}; {torch.get_num_threads()} thread(s); load average {load}; "
          f"{args.rounds} rounds x {args.iterations} timed iterations after {args.iterations} of warm-up per method")
    print()
    print(f"| method | ms per iteration (median over rounds) | x {reference} | saved for backward, peak (MiB) "
          f"| x {reference} |")
    print("|---|---|---|---|---|")
    for m in args.methods:
        print(f"| {m} | {1000 * median[m]:.1f} | {median[m] / median[reference]:.2f} | {memory[m] / 2**20:.2f} "
              f"| {memory[m] / max(memory[reference], 1):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
