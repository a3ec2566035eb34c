"""Training: the loop of Algorithm 1 and what it needs, one module each.

- :mod:`mckd.train.loop`: :func:`train` (set up, then :func:`~mckd.train.loop.run_loop`, the iterations);
- :mod:`mckd.train.step`: one iteration's optimiser steps (:func:`train_step`, the default inner step);
- :mod:`mckd.train.state`: :class:`TrainingState` and its tensors-only checkpoint;
- :mod:`mckd.train.callbacks`: :class:`Callback`, and the built-in ones (progress, loss records,
  validation and the best checkpoint, the divergence guard);
- :mod:`mckd.train.metrics`: :class:`MetricsLog` (``metrics.jsonl`` and the loggers);
- :mod:`mckd.train.staging`: the run directory, claimed and staged until its first checkpoint;
- :mod:`mckd.train.streams`, :mod:`mckd.train.optim`, :mod:`mckd.train.validation`: batches, the
  optimiser and schedule, scores on the meta-validation split.
"""

from mckd.train.callbacks import Callback
from mckd.train.loop import TrainingInterrupted, train
from mckd.train.metrics import MetricsLog
from mckd.train.optim import autocast_context, autocast_dtype, lr_factor, make_optimizer
from mckd.train.staging import RunStaging, claim_run_directory
from mckd.train.state import TrainingState, read_training_state
from mckd.train.step import train_step
from mckd.train.validation import validation_scores
from mckd.errors import TrainingDiverged

__all__ = ["Callback", "MetricsLog", "RunStaging", "TrainingDiverged", "TrainingInterrupted", "TrainingState",
           "autocast_context", "autocast_dtype", "claim_run_directory", "lr_factor", "make_optimizer",
           "read_training_state", "train", "train_step", "validation_scores"]
