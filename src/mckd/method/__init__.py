"""The MCKD method (Wang et al., 2024), independent of any data or task.

One file per idea of the paper:

- :mod:`mckd.method.weights`: the importance weight vector (Eq. 6);
- :mod:`mckd.method.fill`: features of missing modalities (Eq. 2);
- :mod:`mckd.method.distill`: pairwise cross-modal distillation (Eq. 5, Eq. 4 inner);
- :mod:`mckd.method.model`: the multi-modal model (Eq. 1 and Eq. 3);
- :mod:`mckd.method.meta`: the meta step on the importance weights (Eq. 4 outer).

Nothing here imports from ``mckd.data``, ``mckd.nets`` or ``mckd.tasks``.
"""

from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.fill import fill_missing_features, zero_missing_features
from mckd.method.meta import meta_step
from mckd.method.model import ModelOutput, MultiModalModel
from mckd.method.weights import ImportanceWeights

__all__ = [
    "ImportanceWeights",
    "ModelOutput",
    "MultiModalModel",
    "cross_modal_distillation_loss",
    "fill_missing_features",
    "meta_step",
    "zero_missing_features",
]
