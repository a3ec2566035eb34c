"""The MCKD method (Wang et al., 2024) and its peers, independent of any data, task or file.

One file per idea of the paper:

- :mod:`mckd.method.weights`: the importance weight vector (Eq. 6);
- :mod:`mckd.method.fill`: features of missing modalities (Eq. 2);
- :mod:`mckd.method.distill`: pairwise cross-modal distillation (Eq. 5, Eq. 4 inner);
- :mod:`mckd.method.model`: the multi-modal model (Eq. 1 and Eq. 3);
- :mod:`mckd.method.meta`: the meta step on the importance weights (Eq. 4 outer);
- :mod:`mckd.method.bilevel`: the bi-level meta-gradient through a look-ahead.

Fills of missing features and fusions of modalities are registered modules
(:mod:`mckd.method.fusion`). Then one file per training method behind the
interface of :mod:`mckd.method.base`, each registered under its name:
:mod:`mckd.method.mckd` (with the presets ``baseline``, ``zero_fill``,
``hemis``, ``mckd_bilevel``), :mod:`mckd.method.lckd`,
:mod:`mckd.method.shaspec`, :mod:`mckd.method.uniform_ckd`,
:mod:`mckd.method.autoencoder`, :mod:`mckd.method.gan`, :mod:`mckd.method.smil`,
:mod:`mckd.method.full2miss`; the segmentation peers of Table 1 on the parts of
:mod:`mckd.method.seg_parts`: :mod:`mckd.method.uhved`, :mod:`mckd.method.robust_mseg`,
:mod:`mckd.method.mmformer`, :mod:`mckd.method.rfnet`, :mod:`mckd.method.gss`.
A new method is one more file and one more import below.

Nothing here imports from outside ``mckd.method`` but :mod:`mckd.errors`.
"""

from mckd.method import autoencoder, full2miss, gan, lckd, mckd, shaspec, smil, uniform_ckd  # noqa: F401  (registers the methods)
from mckd.method import gss, mmformer, rfnet, robust_mseg, uhved  # noqa: F401  (the segmentation peers)
from mckd.method.base import (
    PRESETS,
    TRAINING_METHODS,
    Batch,
    MethodServices,
    Optimization,
    StepOutput,
    Term,
    TrainingMethod,
    register_preset,
    register_training_method,
)
from mckd.method.fusion import Fill, Fusion, register_fill, register_fusion
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.fill import fill_missing_features, zero_missing_features
from mckd.method.meta import meta_step
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel
from mckd.method.weights import ImportanceWeights

__all__ = [
    "PRESETS",
    "TRAINING_METHODS",
    "Batch",
    "Fill",
    "Fusion",
    "ImportanceWeights",
    "MethodServices",
    "ModelOutput",
    "ModelSpec",
    "MultiModalModel",
    "Optimization",
    "StepOutput",
    "Term",
    "TrainingMethod",
    "register_fill",
    "register_fusion",
    "register_preset",
    "register_training_method",
    "cross_modal_distillation_loss",
    "fill_missing_features",
    "meta_step",
    "zero_missing_features",
]
