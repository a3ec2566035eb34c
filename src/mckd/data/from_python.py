"""The ``python`` dataset: data given from Python (:func:`mckd.api.arrays_bundle`), recorded in a run's config.

A run trained by :func:`mckd.api.fit` records ``data: {name: python}``: its
data were arrays in the caller's process, so the config cannot rebuild them;
building it from a config says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from mckd.data.bundle import DataBundle
from mckd.errors import ConfigError
from mckd.registry import register_dataset


@dataclass
class PythonDataOptions:
    """Options of the ``python`` dataset."""

    description: str = ""  # what the arrays were (written by mckd.api.fit)


@register_dataset("python", PythonDataOptions, "arrays given from Python (mckd.api.fit); cannot be rebuilt from a config")
def build_python_data(options: PythonDataOptions, seed: int) -> DataBundle:
    raise ConfigError("data.name 'python': this run's data were arrays given to mckd.api.fit in Python, which a "
                      "config cannot rebuild; evaluate it with mckd.api (fit returns the evaluation), or save the "
                      "arrays as files and use data.name: files")
