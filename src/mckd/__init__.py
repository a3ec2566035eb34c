"""mckd: multi-modal learning that stays accurate when modalities are missing.

The method (Wang et al., 2024, "Meta-learned Cross-modal Knowledge
Distillation") lives in :mod:`mckd.method`; :mod:`mckd.train` and
:mod:`mckd.evaluate` run it on any registered dataset and network.
"""

__version__ = "0.1.0"
