"""One rank of the 2-process run of tests/test_distributed.py (started by torchrun).

Usage: distributed_worker.py OUT [METHOD]. In one process group, three runs of the same
config: ``OUT/straight`` to the end; ``OUT/stopped``, where rank 1 alone
receives SIGTERM after iteration 7; then ``OUT/stopped`` resumed to the end.
Each rank writes the model and weights it ended with to
``<run>/rank<r>.safetensors``, and the iteration it stopped at to
``OUT/stopped/stopped<r>.txt``; ``OUT/stopped_copy`` keeps the stopped run.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from safetensors.torch import save_file

from mckd import distributed
from mckd.config import config_from_dict, load_raw
from mckd.experiment import method_config
from mckd.train import Callback, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]


def dump(experiment, run_dir: Path, rank: int) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in experiment.model.state_dict().items()}
    tensors.update({f"parts.{k}": v.contiguous() for k, v in experiment.method.parts.state_dict().items()})
    if hasattr(experiment.method, "weights"):
        tensors["method.weights.raw"] = experiment.method.weights.raw.detach().clone()
    save_file(tensors, str(run_dir / f"rank{rank}.safetensors"))


def main() -> None:
    out = Path(sys.argv[1])
    method = sys.argv[2] if len(sys.argv) > 2 else "mckd"
    config = config_from_dict(method_config(load_raw(ROOT / "configs" / "multiview_digits.yaml"), method, [
        # batch 4 per rank: a view is often absent from a whole batch of one rank (unused encoder under DDP)
        "train.iterations=20", "train.batch_size=4", "train.log_every=5", "train.progress=false",
        "train.device=cpu", "train.precision=fp32", "train.deterministic=true",
        "method.meta_every=2", "method.disc_every=2", "missing.policy=random_subset",
    ]))
    rank = int(os.environ["RANK"])

    dump(train(config, out / "straight"), out / "straight", rank)

    class SigtermRank1(Callback):
        def on_iteration_end(self, iteration: int, experiment) -> None:
            if rank == 1 and iteration == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        train(config, out / "stopped", callbacks=[SigtermRank1()])
    except TrainingInterrupted as stopped:
        (out / "stopped" / f"stopped{rank}.txt").write_text(str(stopped.iteration))
    if rank == 0:  # for the test to resume it with one process
        shutil.copytree(out / "stopped", out / "stopped_copy")
    distributed.barrier()
    dump(train(config, out / "stopped", resume=True), out / "stopped", rank)
    distributed.shutdown()


if __name__ == "__main__":
    main()
