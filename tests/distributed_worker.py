"""One rank of the 2-process run of tests/test_distributed.py (started by torchrun).

Usage: distributed_worker.py RUN_DIR MODE, MODE one of ``run`` (train to the
end), ``stop`` (rank 1 alone receives SIGTERM after iteration 7) and
``resume`` (continue RUN_DIR). Each rank writes what it ended with to
RUN_DIR/rank<r>.safetensors, or RUN_DIR/stopped<r>.txt when stopped.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from safetensors.torch import save_file

from mckd import distributed
from mckd.config import apply_overrides, config_from_dict, load_raw
from mckd.train import TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    run_dir, mode = Path(sys.argv[1]), sys.argv[2]
    config = config_from_dict(apply_overrides(load_raw(ROOT / "configs" / "multiview_digits.yaml"), [
        # batch 4 per rank: a view is often absent from a whole batch of one rank (unused encoder under DDP)
        "train.iterations=20", "train.batch_size=4", "train.log_every=5", "train.progress=false",
        "train.device=cpu", "train.precision=fp32", "train.deterministic=true",
        "method.meta_every=2", "missing.policy=random_subset",
    ]))
    rank = int(os.environ["RANK"])

    def sigterm_rank_1(iteration: int, experiment) -> None:
        if mode == "stop" and rank == 1 and iteration == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        experiment = train(config, run_dir, resume=mode == "resume", observers=[sigterm_rank_1])
    except TrainingInterrupted as stopped:
        (run_dir / f"stopped{rank}.txt").write_text(str(stopped.iteration))
        distributed.shutdown()
        return
    tensors = {f"model.{k}": v.contiguous() for k, v in experiment.model.state_dict().items()}
    tensors["weights.raw"] = experiment.weights.raw.detach().clone()
    save_file(tensors, str(run_dir / f"rank{rank}.safetensors"))
    distributed.shutdown()


if __name__ == "__main__":
    main()
